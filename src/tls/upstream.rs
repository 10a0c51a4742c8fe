//! TLS towards `https://` targets: trust (the system's roots or a configured CA), the SNI name,
//! an optional client certificate, ALPN, and the explicit `insecure_skip_verify`.

use std::sync::{Arc, OnceLock};

use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::certs::{load_certs, load_key, load_roots, provider};
use super::config::RawUpstreamTls;
use crate::error::GatewayError;

/// How to open TLS to one target.
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Runs the handshake over a connected socket. Certificate problems (expired, untrusted,
    /// wrong name) become `UpstreamTls` errors that say which target and why.
    pub async fn connect(
        &self,
        url: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, GatewayError> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| GatewayError::UpstreamTls(format!("{url}: {e}")))
    }
}

/// A service's TLS settings, built once and shared by its targets (each with its own name).
pub struct ServiceTls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl ServiceTls {
    /// Reads the files of `raw`; errors are (field, message) under the service's `tls`.
    pub fn build(raw: &RawUpstreamTls) -> Result<Self, (&'static str, String)> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls", e.to_string()))?;
        let builder = if raw.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify))
        } else {
            let roots = match &raw.ca {
                Some(ca) => load_roots(std::slice::from_ref(ca)).map_err(|e| ("ca", e))?,
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&raw.client_cert, &raw.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert).map_err(|e| ("client_cert", e))?;
                let key = load_key(key).map_err(|e| ("client_key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("client_key", e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(("client_key", "client_cert needs client_key".into())),
            (None, Some(_)) => return Err(("client_cert", "client_key needs client_cert".into())),
        };
        config.alpn_protocols = vec![if raw.http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        if let Some(name) = &raw.server_name {
            ServerName::try_from(name.as_str())
                .map_err(|_| ("server_name", format!("`{name}` is not a DNS name or IP")))?;
        }
        Ok(Self {
            config: Arc::new(config),
            server_name: raw.server_name.clone(),
        })
    }

    /// The connector for a target on `host` (the SNI name unless `server_name` overrides it).
    pub fn for_host(&self, host: &str) -> Option<Arc<UpstreamTls>> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string()).ok()?;
        Some(Arc::new(UpstreamTls {
            connector: TlsConnector::from(Arc::clone(&self.config)),
            server_name,
        }))
    }
}

/// The operating system's trust store, read once per process; Mozilla's roots (compiled in)
/// when the system has none.
fn system_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no system CA certificates found; using the compiled-in Mozilla roots"
                );
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            roots
        })
        .clone()
}

/// `insecure_skip_verify`: accepts any certificate, but still checks that the handshake was
/// signed by the key in it (so the connection is at least not trivially broken).
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServiceTls {
    /// The TLS of a service with `https://` targets (default settings when it has no `tls:`);
    /// `None` when it has none or its files do not load (reported in `errors`).
    pub fn for_service(
        name: &str,
        has_https_targets: bool,
        tls: Option<&RawUpstreamTls>,
        errors: &mut Vec<crate::spec::ConfigError>,
    ) -> Option<Self> {
        if !has_https_targets {
            return None;
        }
        let default = RawUpstreamTls::default();
        let raw = tls.unwrap_or(&default);
        if raw.insecure_skip_verify {
            tracing::warn!(
                service = name,
                "services.{name}.tls.insecure_skip_verify is on: upstream certificates are NOT \
                 verified, so anyone on the path can read and change this traffic"
            );
        }
        match Self::build(raw) {
            Ok(t) => Some(t),
            Err((field, message)) => {
                let at = if field == "tls" {
                    format!("services.{name}.tls")
                } else {
                    format!("services.{name}.tls.{field}")
                };
                errors.push(crate::spec::ConfigError::new(at, message));
                None
            }
        }
    }
}
