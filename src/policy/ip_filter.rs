//! The `ip_filter` policy: allow and deny lists of CIDR blocks (or single addresses) per route.
//!
//! Owns the decision only. The client IP it judges is the proxy's, computed with the global
//! `trusted_proxies` (so a client behind a trusted load balancer is judged by its own address,
//! and a forged `X-Forwarded-For` from an untrusted peer is ignored); the 403 is `error.rs`'s.

use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::spec::parse_cidr;
use crate::spec::ConfigError;

/// `- ip_filter: {allow: [10.0.0.0/8], deny: [10.0.0.13]}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIpFilter {
    /// When not empty, only these addresses or blocks may use the route.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These addresses or blocks may not use the route (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A compiled `ip_filter` policy.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// Compiles an `ip_filter` entry.
    pub fn compile(
        raw: &RawIpFilter,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<std::sync::Arc<Self>> {
        Self::build(raw, b.path, b.errors).map(std::sync::Arc::new)
    }

    /// Compiles the lists; errors at `path.allow[i]` / `path.deny[i]`.
    pub fn build(raw: &RawIpFilter, path: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let before = errors.len();
        if raw.allow.is_empty() && raw.deny.is_empty() {
            errors.push(ConfigError::new(path, "needs `allow`, `deny` or both"));
        }
        let mut parse = |list: &[String], key: &str| -> Vec<IpNet> {
            let mut out = Vec::new();
            for (i, text) in list.iter().enumerate() {
                match parse_cidr(text.trim()) {
                    Some(net) => out.push(net),
                    None => errors.push(ConfigError::new(
                        format!("{path}.{key}[{i}]"),
                        format!("`{text}` is not an IP address or CIDR block"),
                    )),
                }
            }
            out
        };
        let allow = parse(&raw.allow, "allow");
        let deny = parse(&raw.deny, "deny");
        (errors.len() == before).then_some(Self { allow, deny })
    }

    /// Refuses `ip` when it is denied, or not allowed while an allow list exists.
    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        // An IPv4 client seen on a dual-stack socket (`::ffff:10.0.0.1`) is judged as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let denied = self.deny.iter().any(|n| n.contains(&ip))
            || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)));
        if denied {
            return Err(GatewayError::Forbidden {
                message: "your IP address is not allowed on this route",
                by: crate::error::Refuser::IpFilter,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let raw = RawIpFilter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        IpFilter::build(&raw, "p", &mut Vec::new()).unwrap()
    }

    #[test]
    fn deny_wins_and_an_allow_list_excludes_the_rest() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.0.0.13"]);
        assert!(f.check("10.1.2.3".parse().unwrap()).is_ok());
        assert!(f.check("::ffff:10.1.2.3".parse().unwrap()).is_ok());
        assert!(f.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(f.check("10.0.0.13".parse().unwrap()).is_err());
        assert!(f.check("192.168.1.1".parse().unwrap()).is_err());
        let f = filter(&[], &["192.168.0.0/16"]);
        assert!(f.check("192.168.1.1".parse().unwrap()).is_err());
        assert!(f.check("8.8.8.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_entries_are_reported_each_at_its_index() {
        let raw = RawIpFilter {
            allow: vec!["10.0.0.0/8".into(), "nope".into()],
            deny: vec!["1.2.3.4/99".into()],
        };
        let mut errors = Vec::new();
        assert!(IpFilter::build(&raw, "routes[0].policies[0].ip_filter", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].policies[0].ip_filter.allow[1]",
                "routes[0].policies[0].ip_filter.deny[0]"
            ]
        );
    }
}
