//! Basic authentication (STUB: the basic-auth work fills this in — argon2/bcrypt verification
//! off the event loop, verified-credential cache).

use std::sync::Arc;

use http::request::Parts;

use super::config::RawBasicSettings;
use super::{AuthFailure, Consumer, ConsumerRegistry};

/// Basic-auth verifier.
pub struct BasicAuth {}

impl BasicAuth {
    /// From the `auth.basic` settings.
    pub fn build(_raw: &RawBasicSettings) -> Self {
        Self {}
    }

    /// The user and password of an `Authorization: Basic` header; `None` without one.
    pub fn credentials(parts: &Parts) -> Option<Result<(String, String), AuthFailure>> {
        let v = parts
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, _) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| {
            Err(AuthFailure::Invalid(
                "basic authentication is not implemented yet".into(),
            ))
        })
    }

    /// Checks `password` against the consumer's hash.
    pub async fn verify(
        &self,
        _registry: &ConsumerRegistry,
        _user: &str,
        _password: &str,
    ) -> Result<Arc<Consumer>, AuthFailure> {
        Err(AuthFailure::Invalid(
            "basic authentication is not implemented yet".into(),
        ))
    }
}
