//! OAuth2 token introspection, RFC 7662 (STUB: the introspection work fills this in — endpoint
//! call with client credentials, positive/negative cache, timeout, on_error).

use std::borrow::Cow;

use http::request::Parts;
use http::HeaderName;

use super::config::RawIntrospectionProvider;
use super::{AuthFailure, Verified};
use crate::config::ConfigError;

/// A configured introspection endpoint.
pub struct Introspector {
    name: String,
}

impl Introspector {
    /// Builds the provider; problems are reported under `path`.
    pub fn build(
        name: &str,
        _raw: &RawIntrospectionProvider,
        _path: &str,
        _errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        Some(Self {
            name: name.to_string(),
        })
    }

    /// Upstream header names this provider may set (from `claim_headers`).
    pub fn header_names(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    /// The token in this provider's location, `None` when absent.
    pub fn token<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        let v = parts
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(token.trim()))
    }

    /// Asks the endpoint whether `token` is active.
    pub async fn introspect(&self, _token: &str) -> Result<Verified, AuthFailure> {
        Err(AuthFailure::Unavailable(format!(
            "introspection `{}` is not implemented yet",
            self.name
        )))
    }
}
