//! TLS for tests: a throwaway CA issuing server and client certificates (rcgen) into a temp
//! directory, TLS clients (HTTP/1.1 or HTTP/2 by ALPN) and a TLS upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::Reply;

/// A certificate authority writing PEM files into its own temp directory.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// PEM files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate chain (leaf only).
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl Issued {
    /// `cert` as a YAML-ready string.
    pub fn cert_str(&self) -> String {
        self.cert.display().to_string()
    }
    /// `key` as a YAML-ready string.
    pub fn key_str(&self) -> String {
        self.key.display().to_string()
    }
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("ca");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        Self { ca, dir }
    }

    /// The CA certificate's PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate's PEM file as a string.
    pub fn ca_str(&self) -> String {
        self.ca_path().display().to_string()
    }

    /// Issues a certificate for `sans` with common name `cn`, written as `<file>.pem` and
    /// `<file>.key`.
    pub fn issue(&self, file: &str, cn: &str, sans: &[&str]) -> Issued {
        self.issue_with(file, cn, sans, |_| {})
    }

    /// Like `issue`, but expired since yesterday.
    pub fn issue_expired(&self, file: &str, sans: &[&str]) -> Issued {
        self.issue_with(file, "expired", sans, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    /// Issues with `edit` applied to the parameters first.
    pub fn issue_with(
        &self,
        file: &str,
        cn: &str,
        sans: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        write_atomically(&issued.cert, cert.pem().as_bytes());
        write_atomically(&issued.key, key.serialize_pem().as_bytes());
        issued
    }
}

/// Writes through a temporary file and a rename, as certificate tools do, so a reader never
/// sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Client settings for a TLS request.
#[derive(Clone)]
pub struct ClientTls {
    /// Trusted CA files.
    pub roots: Vec<PathBuf>,
    /// ALPN protocols offered.
    pub alpn: Vec<&'static str>,
    /// Client certificate to present.
    pub identity: Option<Issued>,
}

impl ClientTls {
    /// Trusting `pki`'s CA, offering h2 and http/1.1.
    pub fn trusting(pki: &Pki) -> Self {
        Self {
            roots: vec![pki.ca_path()],
            alpn: vec!["h2", "http/1.1"],
            identity: None,
        }
    }

    /// Offering only these ALPN protocols.
    pub fn alpn(mut self, alpn: &[&'static str]) -> Self {
        self.alpn = alpn.to_vec();
        self
    }

    /// Presenting a client certificate.
    pub fn identity(mut self, issued: &Issued) -> Self {
        self.identity = Some(issued.clone());
        self
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for r in &self.roots {
            for c in CertificateDer::pem_file_iter(r).expect("ca file") {
                roots.add(c.expect("ca pem")).expect("add root");
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(i) => builder
                .with_client_auth_cert(load_chain(&i.cert), load_key(&i.key))
                .expect("client cert"),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

fn load_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("cert file")
        .map(|c| c.expect("cert pem"))
        .collect()
}

fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key file")
}

/// Connects and handshakes with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    tls: &ClientTls,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(tls.config());
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    connector.connect(name, tcp).await
}

/// What a TLS exchange showed besides the reply.
pub struct Negotiated {
    /// The ALPN protocol agreed on.
    pub alpn: Option<String>,
    /// The server's leaf certificate.
    pub peer_cert: CertificateDer<'static>,
}

impl Negotiated {
    /// Of an established stream.
    pub fn of(stream: &TlsStream<TcpStream>) -> Self {
        let (_, session) = stream.get_ref();
        Self {
            alpn: session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_cert: session.peer_certificates().expect("peer certs")[0].clone(),
        }
    }

    /// Whether the server presented exactly the certificate in `cert`.
    pub fn presented(&self, issued: &Issued) -> bool {
        load_chain(&issued.cert)[0] == self.peer_cert
    }
}

/// One GET over a new TLS connection, HTTP/2 when ALPN picked h2, else HTTP/1.1.
pub async fn get(addr: SocketAddr, sni: &str, tls: &ClientTls, path: &str) -> (Reply, Negotiated) {
    let stream = connect(addr, sni, tls).await.expect("TLS handshake");
    let negotiated = Negotiated::of(&stream);
    let mut conn = Conn::over(stream).await;
    let reply = conn.get(sni, path).await;
    (reply, negotiated)
}

/// An HTTP connection over TLS, HTTP/2 or HTTP/1.1 as negotiated.
pub enum Conn {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Starts HTTP on an established TLS stream.
    pub async fn over(stream: TlsStream<TcpStream>) -> Self {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    /// Sends `req` and reads the whole reply.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let resp = match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        Reply::try_read(resp).await
    }

    /// `GET https://host/path`.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let req = match self {
            Conn::H1(_) => Request::get(path).header("host", host),
            Conn::H2(_) => Request::get(format!("https://{host}{path}")),
        };
        self.send(req.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("reply")
    }
}

/// A TLS upstream echoing requests (like `upstream::echo`), HTTP/1.1 or HTTP/2 by ALPN;
/// with `client_ca`, it requires a client certificate signed by that CA.
pub async fn tls_upstream(
    name: &str,
    issued: &Issued,
    client_ca: Option<&Path>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_chain(ca) {
                roots.add(c).expect("root");
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(v)
        }
    };
    let mut config = builder
        .with_single_cert(load_chain(&issued.cert), load_key(&issued.key))
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let name = Arc::clone(&name);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer_cn = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.len())
                    .unwrap_or(0);
                let svc = hyper::service::service_fn(move |req| {
                    let name = Arc::clone(&name);
                    async move {
                        let mut r = super::upstream::echo(&name, req).await;
                        r.headers_mut()
                            .insert("x-upstream-client-certs", http::HeaderValue::from(peer_cn));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}
