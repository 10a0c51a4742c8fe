//! Reading PEM files and building the listeners' rustls `ServerConfig`: the SNI certificate
//! resolver (exact names, then one-label wildcards, then the default), protocol versions, ALPN
//! and client-certificate verification.
//!
//! Built once per plan: a reload re-reads every file and publishes a new `ServerConfig`, which
//! new handshakes pick up while established connections keep the session they negotiated.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use rustc_hash::FxHashMap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::config::{RawTls, TlsVersion};

/// The crypto provider every TLS configuration of the gateway uses (explicit, so no
/// process-wide default has to be installed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of a PEM file: only a regular file, of at most 1 MiB (a CA bundle is a few hundred
/// KiB), so a path to a FIFO or `/dev/zero` fails the load instead of hanging or filling memory.
fn read_pem(path: &str) -> Result<Vec<u8>, String> {
    crate::spec::expand::read_regular_bytes(path, crate::spec::expand::MAX_FILE_BYTES)
        .map_err(|e| format!("cannot read `{path}`: {e}"))
}

/// Reads a PEM certificate chain; fails when the file has none.
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("`{path}` holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("cannot read a private key from `{path}`: {}", pem_error(e)))
}

fn pem_error(e: pki_types::pem::Error) -> String {
    match e {
        pki_types::pem::Error::Io(io) => io.to_string(),
        pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind".to_string(),
        other => format!("{other:?}"),
    }
}

/// A certificate chain with its signing key, checked to belong together.
pub fn certified_key(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Arc::new(ck))
}

/// Reads CA certificates into a root store.
pub fn load_roots(paths: &[String]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("`{path}`: not a usable CA certificate: {e}"))?;
        }
    }
    Ok(roots)
}

/// Hash of the contents of `paths` (missing files hash as empty): mixed into the plan's
/// fingerprint so that a reload notices a renewed certificate behind an unchanged config.
pub fn files_hash(paths: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in paths {
        p.hash(&mut h);
        // Bounded like the loads: an unreadable file hashes as empty and fails the load anyway.
        read_pem(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

// === the SNI resolver ===

/// Picks the certificate for a handshake from its SNI name.
#[derive(Debug)]
pub struct SniResolver {
    exact: FxHashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.com` is stored as `example.com`.
    wildcard: FxHashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate for `name` (already lower-case, as rustls hands it over).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        // A wildcard covers exactly one label (RFC 6125 section 6.4.3): `a.example.com`, not
        // `b.a.example.com` and not `example.com` itself.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.pick(hello.server_name())))
    }
}

/// What building the listener TLS produced, with errors as (config path, message).
pub fn server_config(raw: &RawTls) -> Result<ServerConfig, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut exact = FxHashMap::default();
    let mut wildcard = FxHashMap::default();
    let mut default = None;
    if raw.certificates.is_empty() {
        errors.push((
            "tls.certificates".to_string(),
            "at least one certificate is required".to_string(),
        ));
    }
    for (i, c) in raw.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        let key = match certified_key(&c.cert, &c.key) {
            Ok(k) => k,
            Err(e) => {
                errors.push((at, e));
                continue;
            }
        };
        default.get_or_insert_with(|| Arc::clone(&key));
        for (j, host) in c.hosts.iter().enumerate() {
            let host = host.to_ascii_lowercase();
            let (map, name) = match host.strip_prefix("*.") {
                Some(parent) => (&mut wildcard, parent.to_string()),
                None => (&mut exact, host.clone()),
            };
            if name.is_empty() || name.contains('*') {
                errors.push((
                    format!("{at}.hosts[{j}]"),
                    format!("`{host}` is not a host name or `*.` wildcard"),
                ));
            } else if map.insert(name, Arc::clone(&key)).is_some() {
                errors.push((
                    format!("{at}.hosts[{j}]"),
                    format!("`{host}` is already listed by another certificate"),
                ));
            }
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match raw.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        match ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions) {
            Ok(b) => b,
            Err(e) => {
                errors.push(("tls.min_version".to_string(), e.to_string()));
                return Err(errors);
            }
        };
    let builder = match &raw.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => match client_verifier(ca) {
            Ok(v) => builder.with_client_cert_verifier(v),
            Err(e) => {
                errors.push(("tls.client_auth.ca".to_string(), e));
                builder.with_no_client_auth()
            }
        },
    };
    let mut alpn = Vec::new();
    for (i, p) in raw.alpn.iter().enumerate() {
        match p.as_str() {
            "h2" | "http/1.1" => alpn.push(p.as_bytes().to_vec()),
            _ => errors.push((
                format!("tls.alpn[{i}]"),
                format!("`{p}`: only h2 and http/1.1 are served"),
            )),
        }
    }
    let (Some(default), true) = (default, errors.is_empty()) else {
        return Err(errors);
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    }));
    config.alpn_protocols = alpn;
    // Tickets let a returning client skip the full handshake (rustls rotates the keys).
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(config)
}

fn client_verifier(
    raw: &super::config::RawClientAuth,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    if raw.ca.is_empty() {
        return Err("at least one CA file is required".to_string());
    }
    let roots = Arc::new(load_roots(&raw.ca)?);
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = match raw.mode {
        super::config::ClientAuthMode::Optional => builder.allow_unauthenticated(),
        super::config::ClientAuthMode::Required => builder,
    };
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let c = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let der = PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let signer = provider().key_provider.load_private_key(der).unwrap();
        Arc::new(CertifiedKey::new(vec![c.cert.der().clone()], signer))
    }

    #[test]
    fn sni_prefers_exact_then_one_label_wildcard_then_default() {
        let (d, e, w) = (key(), key(), key());
        let r = SniResolver {
            exact: [("api.example.com".to_string(), Arc::clone(&e))]
                .into_iter()
                .collect(),
            wildcard: [("example.com".to_string(), Arc::clone(&w))]
                .into_iter()
                .collect(),
            default: Arc::clone(&d),
        };
        assert!(Arc::ptr_eq(r.pick(Some("api.example.com")), &e));
        assert!(Arc::ptr_eq(r.pick(Some("shop.example.com")), &w));
        assert!(Arc::ptr_eq(r.pick(Some("a.shop.example.com")), &d));
        assert!(Arc::ptr_eq(r.pick(Some("example.com")), &d));
        assert!(Arc::ptr_eq(r.pick(None), &d));
    }
}
