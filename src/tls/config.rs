//! The YAML of TLS: the top-level `tls:` section (HTTPS listeners, certificates, client
//! certificates, the HTTP-to-HTTPS redirect) and a service's `tls:` (upstream TLS).
//!
//! Shapes and defaults only; `tls::certs` and `tls::upstream` read the files and build the
//! rustls configurations.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// HTTPS listeners and what they present.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Addresses served with TLS, e.g. `["0.0.0.0:8443"]`. Port 0 picks a free port.
    pub listen: Vec<String>,
    /// Certificates, chosen by the SNI name the client sends. The first one is served when the
    /// client sends no SNI or a name no certificate lists.
    pub certificates: Vec<RawCertificate>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference: `h2` and/or `http/1.1`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Client certificates (mutual TLS). Absent: none are asked for.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
    /// Answer every request on the plain `listen` addresses with a 308 redirect to `https://`.
    #[serde(default)]
    pub redirect_http: bool,
    /// The port written into redirects; default: the port of the first `tls.listen` address
    /// (left out of the URL when it is 443).
    #[serde(default)]
    pub redirect_port: Option<u16>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}

/// A certificate chain and its private key, PEM files re-read on every reload.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate answers: exact (`api.example.com`) or one-label wildcards
    /// (`*.example.com`). Empty: only the default (when it is the first certificate).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Lowest accepted TLS version.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificate verification on the HTTPS listeners.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// `required`: the handshake fails without a certificate signed by one of `ca`;
    /// `optional`: a certificate is asked for, and verified when sent.
    pub mode: ClientAuthMode,
    /// PEM files with the CA certificates client certificates must chain to.
    pub ca: Vec<String>,
    /// Send the verified client certificate's subject and SANs upstream in this header
    /// (Envoy's `x-forwarded-client-cert` format). A client's own header of that name is
    /// always removed. Absent: nothing is forwarded.
    #[serde(default)]
    pub forward_header: Option<String>,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// Asked for and verified when sent; a client without one is still served.
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// TLS towards a service's `https://` targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM file of CA certificates to trust instead of the system's root store.
    pub ca: Option<String>,
    /// The name sent in SNI and verified in the certificate; default: the target's host.
    pub server_name: Option<String>,
    /// PEM certificate chain presented to the upstream (mTLS); needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// Speak HTTP/2 to the targets (ALPN `h2`) instead of HTTP/1.1.
    pub http2: bool,
    /// Accept any certificate. Only for tests against throwaway upstreams: it disables the
    /// protection TLS exists for, and the gateway logs a warning on every load.
    pub insecure_skip_verify: bool,
}
