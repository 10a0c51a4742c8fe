//! The verified client certificate of a connection (mutual TLS): subject, SANs, and the value
//! forwarded upstream, all computed once per connection, never per request.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as an RFC 4514 string, e.g. `CN=alice,O=Acme`.
    pub subject: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names, URIs (SPIFFE ids) and e-mail addresses.
    pub sans: Vec<String>,
    /// Hex SHA-256 of the DER certificate.
    pub sha256: String,
}

impl ClientCert {
    /// Parses the leaf certificate the handshake verified. `None` for DER that does not parse
    /// (rustls already verified it, so that does not happen with a real handshake).
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject().to_string();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                    _ => {}
                }
            }
        }
        let sha256 = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Self {
            subject,
            common_name,
            sans,
            sha256,
        })
    }

    /// Whether `name` identifies this certificate: its common name, its full subject, or one of
    /// its SANs written with or without the type prefix (`spiffe://...` or `URI:spiffe://...`).
    pub fn matches(&self, name: &str) -> bool {
        self.common_name.as_deref() == Some(name)
            || self.subject == name
            || self
                .sans
                .iter()
                .any(|s| s == name || s.split_once(':').is_some_and(|(_, v)| v == name))
    }

    /// The value of the forwarded header, in the format of Envoy's `x-forwarded-client-cert`:
    /// `Hash=<hex>;Subject="CN=alice";URI=spiffe://x;DNS=a.example`.
    pub fn forward_value(&self) -> Option<HeaderValue> {
        let mut v = format!("Hash={};Subject=\"", self.sha256);
        for c in self.subject.chars() {
            if c == '"' || c == '\\' {
                v.push('\\');
            }
            v.push(c);
        }
        v.push('"');
        for san in &self.sans {
            let (kind, value) = san.split_once(':').unwrap_or(("DNS", san));
            let kind = match kind {
                "URI" => "URI",
                "email" => "Email",
                _ => "DNS",
            };
            v.push(';');
            v.push_str(kind);
            v.push('=');
            v.push_str(value);
        }
        HeaderValue::from_str(&v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_and_sans_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.internal".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/alice".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = ClientCert::parse(cert.der()).unwrap();
        assert_eq!(c.common_name.as_deref(), Some("alice"));
        assert_eq!(c.subject, "CN=alice");
        assert!(c.matches("alice"));
        assert!(c.matches("spiffe://example.org/alice"));
        assert!(c.matches("DNS:svc.internal"));
        assert!(!c.matches("bob"));
        let v = c.forward_value().unwrap();
        let v = v.to_str().unwrap();
        assert!(v.starts_with("Hash="), "{v}");
        assert!(
            v.ends_with(";Subject=\"CN=alice\";DNS=svc.internal;URI=spiffe://example.org/alice"),
            "{v}"
        );
    }
}
