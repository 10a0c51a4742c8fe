//! JWT verification (STUB: the JWT work fills this in — jsonwebtoken, JWKS with refresh and
//! unknown-kid refetch, claim rules, verified-token cache).

use std::borrow::Cow;

use http::request::Parts;
use http::HeaderName;

use super::config::RawJwtProvider;
use super::{AuthFailure, Verified};
use crate::config::ConfigError;

/// A configured JWT issuer.
pub struct JwtProvider {
    name: String,
}

impl JwtProvider {
    /// Builds the provider; problems are reported under `path`.
    pub fn build(
        name: &str,
        _raw: &RawJwtProvider,
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

    /// Verifies `token`.
    pub async fn verify(&self, _token: &str) -> Result<Verified, AuthFailure> {
        Err(AuthFailure::Invalid(format!(
            "JWT provider `{}` is not implemented yet",
            self.name
        )))
    }
}
