//! Test support: real upstream HTTP servers, the gateway (in-process or as the real binary), and
//! clients, all on ephemeral 127.0.0.1 ports. Nothing here mocks what a user runs.

pub mod config;
pub mod jwt;
pub mod netns;
pub mod otlp;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use upstream::Upstream;

/// A gateway running in this process, serving a YAML config written to a temp file.
pub struct TestGateway {
    /// The public listener.
    pub addr: SocketAddr,
    gateway: Option<portico::Gateway>,
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from `yaml` (listen and workers are filled in when absent).
    pub fn start(yaml: &str) -> Self {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("gateway did not start:\n{e}"))
    }

    /// Like `start`, returning the error text instead of panicking.
    pub fn try_start(yaml: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("portico.yaml");
        std::fs::write(&path, with_defaults(yaml)).map_err(|e| e.to_string())?;
        let plan = portico::config::load_file(&path).map_err(|e| e.to_string())?;
        let gateway = portico::Gateway::start(plan, Some(path)).map_err(|e| e.to_string())?;
        Ok(Self {
            addr: gateway.local_addrs()[0],
            gateway: Some(gateway),
            dir,
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every bound address: the plain `listen` ones first, then `tls.listen`.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.gateway
            .as_ref()
            .expect("running")
            .local_addrs()
            .to_vec()
    }

    /// The config file path (for reload tests).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portico.yaml")
    }

    /// Writes `yaml` over the config file and reloads it.
    pub fn reload(
        &self,
        yaml: &str,
    ) -> Result<portico::runtime::ReloadOutcome, portico::runtime::ReloadError> {
        std::fs::write(self.config_path(), with_defaults(yaml)).expect("write config");
        self.runtime().reload()
    }

    /// `http://ADMIN_ADDR{path}` (the admin API; on a free port unless the config sets it).
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self
            .gateway
            .as_ref()
            .and_then(|g| g.admin_addr())
            .expect("the admin API is enabled");
        format!("http://{addr}{path}")
    }

    /// The shared runtime.
    pub fn runtime(&self) -> &std::sync::Arc<portico::runtime::Runtime> {
        &self.gateway.as_ref().expect("running").runtime
    }

    /// Stops accepting and drains (blocking); returns when every worker exited.
    pub fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(g) = &self.gateway {
            // Don't join: a test that failed may leave connections open.
            g.runtime.begin_shutdown();
        }
    }
}

/// Adds `listen: 127.0.0.1:0`, one worker, no access log and a short grace when not set.
pub fn with_defaults(yaml: &str) -> String {
    let mut out = String::new();
    if !yaml.starts_with("listen:") && !yaml.contains("\nlisten:") {
        out.push_str("listen: [\"127.0.0.1:0\"]\n");
    }
    if !yaml.contains("workers:") {
        out.push_str("workers: 1\n");
    }
    if !yaml.contains("\nadmin:") && !yaml.starts_with("admin:") {
        // Tests run many gateways at once: the admin API on a free port, not on 9901.
        out.push_str("admin: {listen: \"127.0.0.1:0\"}\n");
    }
    if !yaml.contains("access_log:") {
        out.push_str("access_log: {enabled: false}\n");
    }
    if !yaml.contains("timeouts:\n  header_read")
        && !yaml.starts_with("timeouts:")
        && !yaml.contains("\ntimeouts:")
    {
        out.push_str("timeouts: {shutdown_grace: 5s}\n");
    }
    out.push_str(yaml);
    out
}

/// A response read whole: by a client ([`send`], [`get`], [`Reply::read`]) or off the wire
/// ([`raw_reply`], [`Reply::parse`]), for byte-exact and malformed exchanges.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes (read off the wire: as sent, a chunked body still chunked; see
    /// [`Reply::json_chunked`]).
    pub body: Bytes,
    /// Read off the wire: the whole text as received (empty for a client's reply).
    pub wire: String,
}

impl Reply {
    /// Reads the whole of `resp` (panics when the body fails).
    pub async fn read<B>(resp: http::Response<B>) -> Self
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        Self::try_read(resp).await.expect("body")
    }

    /// Reads the whole of `resp`, or the body's error.
    pub async fn try_read<B: http_body::Body>(resp: http::Response<B>) -> Result<Self, B::Error> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Self {
            status: parts.status,
            headers: parts.headers,
            body,
            wire: String::new(),
        })
    }

    /// Parses the first response in `text` as read off the wire (panics when there is no status
    /// line: nothing came back).
    pub fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| StatusCode::from_bytes(s.as_bytes()).ok())
            .unwrap_or_else(|| panic!("no HTTP response in {text:?}"));
        let mut headers = HeaderMap::new();
        for (name, value) in lines.filter_map(|l| l.split_once(':')) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_bytes(value.trim().as_bytes()),
            ) {
                headers.append(name, value);
            }
        }
        Self {
            status,
            headers,
            body: Bytes::copy_from_slice(body.as_bytes()),
            wire: text.to_string(),
        }
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The whole reply for failure messages: the wire text when read raw, else the body.
    fn shown(&self) -> String {
        if self.wire.is_empty() {
            self.text()
        } else {
            format!("{:?}", self.wire)
        }
    }

    /// The body as JSON (panics with the reply when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.body.trim_ascii())
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.shown()))
    }

    /// The body as JSON, de-chunking it first when a reply read off the wire was chunked.
    pub fn json_chunked(&self) -> serde_json::Value {
        if !self
            .header("transfer-encoding")
            .eq_ignore_ascii_case("chunked")
        {
            return self.json();
        }
        let body = self.text();
        let mut rest = body.as_str();
        let mut out = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.shown()))
    }

    /// The first value of header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// Asserts the gateway's JSON error shape with this status and `error` code; returns the
    /// body.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "reply: {}", self.shown());
        assert_eq!(
            self.header("content-type"),
            "application/json",
            "reply: {}",
            self.shown()
        );
        let v = self.json();
        assert_eq!(v["error"], code, "reply: {}", self.shown());
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            v["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v
    }
}

/// The values of header `name` an echo upstream saw (from its JSON reply).
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A pooled HTTP/1.1 client (hyper's).
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with the given method, URL, headers and body; reads the whole reply.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("reply within 20s")
        .expect("request failed");
    Reply::read(resp).await
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    send("GET", url, &[], Bytes::new()).await
}

/// Writes raw bytes to `addr` and reads until the server closes or `wait` passes.
/// Runs on a blocking thread so tests can send byte-exact (and malformed) requests.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let request = request.to_vec();
    tokio::task::spawn_blocking(move || raw_blocking(addr, &request, wait))
        .await
        .expect("raw client thread")
}

/// Blocking version of [`raw`].
pub fn raw_blocking(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real `portico` binary running a config file, with its stderr captured line by line.
pub struct GatewayProcess {
    /// The child process.
    pub child: Child,
    /// The public listener, parsed from the "listening on" log line.
    pub addr: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    /// The admin API, parsed from its "admin API at" log line (when enabled).
    pub admin: Option<SocketAddr>,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `portico run --config <yaml>` and waits for its "listening on" line.
    pub fn spawn(yaml: &str, extra_args: &[&str]) -> Self {
        Self::spawn_in(None, yaml, extra_args)
    }

    /// Like `spawn`, inside network namespace `netns` (`ip netns exec`, which execs the
    /// binary itself: the child is the gateway).
    pub fn spawn_in(netns: Option<&str>, yaml: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("portico.yaml");
        std::fs::write(&config, with_defaults(yaml)).expect("write config");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_portico")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_portico")),
        };
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portico");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = GatewayProcess {
            child,
            addr: "127.0.0.1:1".parse().expect("addr"),
            config,
            admin: None,
            lines: rx,
            _dir: dir,
        };
        // The admin API is bound (and logged) before the public listeners.
        let line = loop {
            let line = proc.wait_for_line("http://", Duration::from_secs(20));
            if let Some(admin) = address_after(&line, "admin API at http://") {
                proc.admin = Some(admin);
            }
            if let Some(addr) = address_after(&line, "listening on http://") {
                break addr;
            }
        };
        proc.addr = line;
        proc
    }

    /// `http://ADMIN_ADDR{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("the admin API is enabled")
        )
    }

    /// Waits for a stderr line containing `needle`; panics after `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return strip_ansi(&line),
                Ok(_) => continue,
                Err(_) => panic!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The stderr lines printed so far and not yet read.
    pub fn lines_so_far(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.lines.try_recv().ok())
            .map(|l| strip_ansi(&l))
            .collect()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// TCP connections the gateway holds on its listening port (its clients' connections), from
    /// /proc: its socket inodes matched against the kernel's IPv4 TCP table.
    pub fn client_connections(&self) -> usize {
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
                .map(|d| {
                    d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .filter_map(|l| {
                            let l = l.to_string_lossy().into_owned();
                            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
        let port = format!(":{:04X}", self.addr.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // local address, state (0A = listening), inode
                f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A" && inodes.contains(f[9])
            })
            .count()
    }

    /// Peak resident set size ("high water mark") in KiB, from /proc.
    pub fn hwm_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// A `/proc/PID/status` field given in kB, e.g. `"VmRSS:"`.
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 1-based line and column of `needle` in a config `text`, where it must occur exactly once.
pub fn pos_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must be unique in the config"
    );
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The `IP:port` that follows `prefix` in a log line.
fn address_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.split(prefix).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// [`raw`] and parse the reply.
pub async fn raw_reply(addr: SocketAddr, request: &[u8]) -> Reply {
    Reply::parse(&raw(addr, request, Duration::from_secs(5)).await)
}

/// A loopback port that refuses connections and stays reserved while the guard lives (a
/// socket bound but not listening), so no other test's server can take it meanwhile.
pub fn refusing_port() -> (u16, socket2::Socket) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
        .port();
    (port, socket)
}

// === Tests that must not overlap ===

/// The kernel's TCP memory is shared by every test in the binary. Hundreds of stalled sockets with
/// full buffers push it past `net.ipv4.tcp_mem`'s pressure mark, and under pressure the kernel
/// delays other sockets' segments, an idle upstream's FIN among them. See [`tcp_memory_hog`].
static TCP_MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held for the whole of a test that drives the machine's TCP memory into pressure; waits for
/// the [`prompt_tcp`] tests running now, and keeps new ones waiting until it ends.
pub async fn tcp_memory_hog() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    TCP_MEMORY.write().await
}

/// Held for the whole of a test that needs the kernel to deliver a peer's FIN at once (and so
/// must not run while a [`tcp_memory_hog`] test does); such tests still run alongside each other.
pub async fn prompt_tcp() -> tokio::sync::RwLockReadGuard<'static, ()> {
    TCP_MEMORY.read().await
}
