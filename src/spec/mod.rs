//! The leaf of the crate: what every module may use to read its own config. Units (durations,
//! sizes), positions in the YAML text, the reading limits, `${}` expansion, the config error
//! type and CIDR parsing. Nothing here imports another module of the crate.

pub mod expand;
pub mod limits;
pub mod position;
pub mod suggest;
pub mod units;

use position::Position;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `routes[3].match.hosts[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Where, when known.
    pub position: Option<Position>,
}

impl ConfigError {
    /// An error at `path`; its position is filled in later from the document index.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }
}

/// An IP block (`10.0.0.0/8`) or a single address (`10.0.0.1`, as a /32 or /128).
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}
