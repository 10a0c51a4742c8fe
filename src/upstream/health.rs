//! Active health checks: one background probe task per target of every service that configures
//! `health_check`, and the [`Checker`] that owns those tasks across reloads.
//!
//! Probes run on one dedicated thread with its own current-thread runtime, started only when
//! some service has a health check: the workers' runtimes stay free for client traffic, and the
//! probes do not depend on which worker happens to be alive. A probe opens its own connection
//! (never a pooled one), so it tests what a new request would meet: the connect, the response
//! head and, with `body_contains`, the body.
//!
//! A new plan inherits the [`TargetState`] of every target whose service name, URL and health
//! settings are unchanged when it is compiled ([`super::inherit`]); when it is published,
//! [`Checker::watch`] keeps the probe task of each inherited state, starts tasks for new ones
//! and aborts the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::config::RawHealthCheck;

use super::state::TargetState;
use super::{Protocol, Service, Target};

/// Most body bytes a probe reads when it looks for `body_contains`.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Compiled `health_check`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Probe method.
    pub method: Method,
    /// Probe path and query.
    pub path: PathAndQuery,
    /// Healthy statuses, inclusive ranges.
    pub expected: Vec<(u16, u16)>,
    /// Text a healthy body contains.
    pub body_contains: Option<String>,
    /// Pause between probes.
    pub interval: Duration,
    /// Bound on one probe.
    pub timeout: Duration,
    /// Largest random extra pause.
    pub jitter: Duration,
    /// Passes in a row that make a target healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make it unhealthy.
    pub unhealthy_threshold: u32,
    /// gRPC health checking: the `HealthCheckRequest` message for this service name.
    pub grpc: Option<Bytes>,
}

impl HealthCheck {
    /// From the YAML (validated).
    pub fn compile(raw: &RawHealthCheck) -> Self {
        Self {
            method: Method::from_bytes(raw.method.as_bytes()).unwrap_or(Method::GET),
            path: raw
                .path
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            expected: raw
                .expected_statuses
                .iter()
                .filter_map(|s| s.bounds())
                .collect(),
            body_contains: raw.body_contains.clone(),
            interval: raw.interval.0,
            timeout: raw.timeout.0,
            jitter: raw.jitter.map_or(raw.interval.0 / 10, |j| j.0),
            healthy_threshold: raw.healthy_threshold,
            unhealthy_threshold: raw.unhealthy_threshold,
            grpc: raw.grpc_service.as_deref().map(grpc_health_request),
        }
    }
}

/// A length-prefixed gRPC message: `HealthCheckRequest { service = 1 }` in protobuf.
fn grpc_health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

/// Judges a gRPC health answer: `grpc-status` 0 (in the trailers, or the head of a
/// trailers-only answer) and `HealthCheckResponse.status` SERVING (1).
async fn grpc_verdict(response: http::Response<hyper::body::Incoming>) -> Result<(), String> {
    if response.status() != http::StatusCode::OK {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut grpc_status = status_of(response.headers());
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(d) = frame.data_ref() {
            if data.len() + d.len() > MAX_PROBE_BODY {
                return Err("gRPC health answer too large".into());
            }
            data.extend_from_slice(d);
        } else if let Some(t) = frame.trailers_ref() {
            grpc_status = status_of(t).or(grpc_status);
        }
    }
    match grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => return Err(format!("grpc-status {code}")),
        None => return Err("no grpc-status".into()),
    }
    // 5-byte prefix, then field 1 (varint) = status; an empty message means UNKNOWN (0).
    let serving = data.len() >= 7 && data[5] == 0x08 && data[6] == 1;
    if serving {
        Ok(())
    } else {
        Err("gRPC health status is not SERVING".into())
    }
}

/// Owns the probe tasks and the health state that outlives a plan.
#[derive(Default)]
pub struct Checker {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    runner: Option<Runner>,
    targets: Vec<Entry>,
}

struct Runner {
    handle: tokio::runtime::Handle,
    /// Dropping it ends the probe thread and with it every task.
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Entry {
    state: Arc<TargetState>,
    task: Option<AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Checker {
    /// Makes the targets of `services` the ones being probed. A target whose state the new plan
    /// inherited (see [`super::inherit`]) keeps its probe task; new targets get one, and the
    /// tasks of targets no longer served are aborted, so a reload neither leaks tasks nor
    /// forgets that a target is sick. Called when a plan is published, never for one that is
    /// only compiled (`portico validate`, a refused reload).
    pub fn watch(&self, services: &[Arc<Service>]) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let mut old = std::mem::take(&mut inner.targets);
        for service in services {
            for target in &service.targets {
                if let Some(pos) = old
                    .iter()
                    .position(|e| Arc::ptr_eq(&e.state, &target.state))
                {
                    inner.targets.push(old.swap_remove(pos));
                    continue;
                }
                let task = service.health_check.as_ref().map(|hc| {
                    let runner = inner.runner.get_or_insert_with(start_runner);
                    runner
                        .handle
                        .spawn(probe_loop(
                            hc.clone(),
                            Arc::clone(&service.name),
                            Arc::clone(target),
                        ))
                        .abort_handle()
                });
                inner.targets.push(Entry {
                    state: Arc::clone(&target.state),
                    task,
                });
            }
        }
        // What is left of `old` was removed or changed: dropping it aborts its probes.
        drop(old);
        if inner.targets.iter().all(|e| e.task.is_none()) {
            inner.runner = None;
        }
    }

    /// Probe tasks running now.
    pub fn probes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.targets.iter().filter(|e| e.task.is_some()).count()
    }
}

fn start_runner() -> Runner {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for health checks");
    let handle = rt.handle().clone();
    let spawned = std::thread::Builder::new()
        .name("portico-health".into())
        .spawn(move || {
            rt.block_on(async move {
                let _ = stopped.await;
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the health-check thread; targets stay healthy");
    }
    Runner {
        handle,
        _stop: stop,
    }
}

async fn probe_loop(hc: HealthCheck, service: Arc<str>, target: Arc<Target>) {
    let jitter = |max: Duration| Duration::from_nanos(fastrand::u64(..=max.as_nanos() as u64));
    tokio::time::sleep(jitter(hc.jitter)).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let result = match tokio::time::timeout(hc.timeout, probe(&hc, &target)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete answer within {:?}", hc.timeout)),
        };
        let healthy = target
            .state
            .healthy
            .load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if !healthy && passes >= hc.healthy_threshold {
                    target
                        .state
                        .healthy
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        service = &*service,
                        target_url = %target.url,
                        "target passed {passes} health checks in a row; back in rotation"
                    );
                }
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if healthy && failures >= hc.unhealthy_threshold {
                    target
                        .state
                        .healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        service = &*service,
                        target_url = %target.url,
                        "target failed {failures} health checks in a row; out of rotation: {why}"
                    );
                }
            }
        }
        tokio::time::sleep(hc.interval + jitter(hc.jitter)).await;
    }
}

/// Sends the probe request over `io` (plain or TLS) in the target's protocol: the configured
/// HTTP request, or with `grpc_service` a gRPC health `Check` (HTTP/2 only).
async fn exchange<IO>(
    hc: &HealthCheck,
    target: &Target,
    io: TokioIo<IO>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let req = Request::builder().header(
        header::USER_AGENT,
        HeaderValue::from_static("portico-health-check"),
    );
    let (req, path, body) = match &hc.grpc {
        Some(message) => (
            req.method(http::Method::POST)
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                )
                .header(header::TE, HeaderValue::from_static("trailers")),
            "/grpc.health.v1.Health/Check",
            message.clone(),
        ),
        None => (
            req.method(hc.method.clone()),
            hc.path.as_str(),
            Bytes::new(),
        ),
    };
    let body = http_body_util::Full::new(body);
    let sent = match target.protocol {
        Protocol::Http1 if hc.grpc.is_some() => {
            return Err(
                "gRPC health checks need an HTTP/2 target (h2c://, or https:// with tls.http2)"
                    .into(),
            )
        }
        Protocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = req
                .uri(path)
                .header(header::HOST, target.authority.clone())
                .header(header::CONNECTION, HeaderValue::from_static("close"))
                .body(body)
                .map_err(|e| e.to_string())?;
            sender.send_request(req).await
        }
        Protocol::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let scheme = if target.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let uri = format!(
                "{scheme}://{}{path}",
                target.authority.to_str().unwrap_or("localhost"),
            );
            let req = req.uri(uri).body(body).map_err(|e| e.to_string())?;
            sender.send_request(req).await
        }
    };
    sent.map_err(|e| format!("bad response: {e}"))
}

/// One probe: connect, send, check the status and (if asked) the body.
async fn probe(hc: &HealthCheck, target: &Target) -> Result<(), String> {
    let addrs = target.resolve().await.map_err(|e| e.to_string())?;
    let mut stream = None;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    // https:// targets are probed over TLS, as requests reach them.
    let response = match &target.tls {
        Some(tls) => {
            let stream = tls
                .connect(&target.url, stream)
                .await
                .map_err(|e| e.to_string())?;
            exchange(hc, target, TokioIo::new(stream)).await
        }
        None => exchange(hc, target, TokioIo::new(stream)).await,
    }?;
    if hc.grpc.is_some() {
        return grpc_verdict(response).await;
    }
    let status = response.status().as_u16();
    if !hc
        .expected
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    {
        return Err(format!("status {status}"));
    }
    if let Some(needle) = &hc.body_contains {
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < MAX_PROBE_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        seen.extend_from_slice(d);
                    }
                }
                Some(Err(e)) => return Err(format!("body: {e}")),
                None => break,
            }
        }
        let found = seen
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if !found {
            return Err(format!("body lacks {needle:?}"));
        }
    }
    Ok(())
}

/// The health of each of `service`'s targets, in config order (for status output).
pub fn service_health(service: &Service) -> Vec<(&str, super::state::HealthSnapshot)> {
    service
        .targets
        .iter()
        .map(|t| (&*t.url, t.state.snapshot()))
        .collect()
}
