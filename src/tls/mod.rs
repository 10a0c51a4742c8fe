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

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::error::GatewayError;
use crate::proxy::body::GatewayBody;

use crate::config::ConfigError;
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

/// The PEM files a config refers to (listener and upstream), for the reload fingerprint.
pub fn referenced_files(raw: &crate::config::raw::RawConfig) -> Vec<&str> {
    let mut files = Vec::new();
    if let Some(tls) = &raw.tls {
        for c in &tls.certificates {
            files.push(c.cert.as_str());
            files.push(c.key.as_str());
        }
        if let Some(ca) = &tls.client_auth {
            files.extend(ca.ca.iter().map(String::as_str));
        }
    }
    for svc in raw.services.values() {
        if let Some(t) = &svc.tls {
            files.extend(
                [&t.ca, &t.client_cert, &t.client_key]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
    }
    files
}

/// What a connection's TLS handshake established, kept with the connection.
#[derive(Debug, Default)]
pub struct TlsConn {
    /// The client certificate the handshake verified (mutual TLS).
    pub client_cert: Option<ClientCert>,
    /// Its forwarded-header value, computed once per connection.
    pub forward_value: Option<http::HeaderValue>,
}

/// Modification time and size of every PEM file the config refers to: the control loop
/// compares them once a second and reloads when a certificate was renewed in place.
pub fn file_stamps(
    raw: &crate::config::raw::RawConfig,
) -> Vec<Option<(std::time::SystemTime, u64)>> {
    referenced_files(raw)
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// The 308 answer for `req`: same host (its port replaced), path and query, on `https://`.
/// Without a Host (HTTP/1.0) there is nowhere to send the client: 400.
pub fn https_redirect<B>(
    req: &Request<B>,
    port: u16,
) -> Result<Response<GatewayBody>, GatewayError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return Err(GatewayError::BadRequest(
            "a Host header is required to redirect to https",
        ));
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{}{path}", host.host())
    } else {
        format!("https://{}:{port}{path}", host.host())
    };
    let mut resp = Response::new(GatewayBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}
