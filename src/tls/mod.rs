//! TLS: HTTPS listeners (certificates by SNI, ALPN, versions, client certificates, reload of
//! the PEM files), the HTTP-to-HTTPS redirect, and TLS towards `https://` upstream targets.
//!
//! Owns turning the `tls:` YAML into rustls configurations and what a connection's TLS says
//! about its client. Serving a TLS connection lives with the other connection code in
//! `server::tls`; sending over an upstream TLS connection in `proxy::client`.

pub mod certs;
pub mod config;
pub mod identity;
pub mod upstream;

use std::sync::Arc;

use http::HeaderName;

use crate::spec::ConfigError;
use config::RawTls;
pub use identity::ClientCert;

/// The compiled `tls:` section.
pub struct ListenerTls {
    /// Addresses served with TLS.
    pub listen: Vec<String>,
    /// What new handshakes use. A reload builds a new one; established connections keep theirs.
    pub config: Arc<rustls::ServerConfig>,
    /// The port of `https://` redirects from the plain listeners, when `redirect_http` is on.
    pub redirect_port: Option<u16>,
    /// Where the client certificate goes upstream, when configured.
    pub forward_header: Option<HeaderName>,
    /// The port of `https://` redirects (a route's `https_redirect`): `redirect_port`, else the
    /// first `tls.listen` port.
    pub https_port: u16,
}

impl ListenerTls {
    /// Reads the certificate files and builds the rustls configuration.
    pub fn build(raw: &RawTls, errors: &mut Vec<ConfigError>) -> Option<Arc<Self>> {
        let config = match certs::server_config(raw) {
            Ok(c) => c,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|(p, m)| ConfigError::new(p, m)));
                return None;
            }
        };
        let forward_header = match raw
            .client_auth
            .as_ref()
            .and_then(|c| c.forward_header.as_ref())
        {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(ConfigError::new(
                        "tls.client_auth.forward_header",
                        format!("`{h}` is not a valid header name"),
                    ));
                    return None;
                }
            },
        };
        let first_port = raw
            .listen
            .first()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map_or(443, |a| a.port());
        Some(Arc::new(Self {
            listen: raw.listen.clone(),
            config: Arc::new(config),
            redirect_port: raw
                .redirect_http
                .then(|| raw.redirect_port.unwrap_or(first_port)),
            forward_header,
            https_port: raw.redirect_port.unwrap_or(first_port),
        }))
    }
}

/// Checks of the `tls:` section that need no file access.
pub fn validate(raw: &RawTls, errors: &mut Vec<ConfigError>) {
    if raw.listen.is_empty() {
        errors.push(ConfigError::new(
            "tls.listen",
            "at least one listen address is required",
        ));
    }
    for (i, addr) in raw.listen.iter().enumerate() {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                format!("tls.listen[{i}]"),
                format!("`{addr}` is not an IP:port address such as 0.0.0.0:8443"),
            ));
        }
    }
    if raw.alpn.is_empty() {
        errors.push(ConfigError::new(
            "tls.alpn",
            "offer at least one of h2, http/1.1",
        ));
    }
}

/// What a connection's TLS handshake established, kept with the connection.
#[derive(Debug, Default)]
pub struct TlsConn {
    /// The client certificate the handshake verified (mutual TLS).
    pub client_cert: Option<ClientCert>,
    /// Its forwarded-header value, computed once per connection.
    pub forward_value: Option<http::HeaderValue>,
}
