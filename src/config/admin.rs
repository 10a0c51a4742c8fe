//! The `admin:` section (the admin listener lives in `admin/`, which reads this).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The admin listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Serve the admin API at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it listens. Default `127.0.0.1:9901` (loopback only: expose it elsewhere only on
    /// purpose, and then with a `token`). **Restart to change.**
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`. Use
    /// `${ENV}` or `${file:...}`.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            token: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:9901".to_string()
}
