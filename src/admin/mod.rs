//! The admin listener: a separate port (default `127.0.0.1:9901`, never the public listener)
//! answering operators in JSON: liveness, readiness, status, routes, services with their
//! health and breaker state, the effective config with secrets redacted, and reloads.
//!
//! It runs on its own thread with its own small runtime, so a saturated public listener does
//! not make the gateway look dead to its orchestrator, and the admin API costs the request
//! path nothing. With `admin.token` set, every endpoint but `/healthz` and the dashboard's static
//! files needs `Authorization: Bearer <token>` (compared in constant time).
//!
//! `/consumers` is the consumer store's write API (`consumers.rs`), which needs `admin.token` set
//! even on loopback; `portico consumers` (`cli.rs`) calls it.
//!
//! `GET /` is the live dashboard ([`dashboard`]): static files that poll this API from the browser.

pub mod cli;
pub mod config;
pub mod consumers;
pub mod dashboard;
mod scrape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::proxy::headers::{new_request_id, valid_request_id, X_REQUEST_ID};
use crate::runtime::{ReloadError, ReloadOutcome, Runtime};
use crate::upstream::breaker::BreakerState;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A running admin listener.
pub struct AdminServer {
    /// Where it listens.
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Serves on `listener` (from [`bind_exclusive`], or handed over by a predecessor in a
    /// zero-downtime restart) on a thread of its own until the runtime shuts down.
    pub fn start(runtime: Arc<Runtime>, listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("portico-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("admin listener: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(serve(runtime, listener));
            })?;
        tracing::info!("admin API at http://{addr}");
        Ok(Self {
            addr,
            thread: Some(thread),
        })
    }

    /// Waits for the listener thread (after the runtime began shutting down).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the admin listener now, so a taken port fails the start. Without `SO_REUSEPORT`: with it, a second gateway on the same machine would share the
/// port and admin calls (`POST /reload` included) would land on either at random. A successor
/// in a restart gets the socket itself instead of binding (see `server::handoff`).
pub fn bind_exclusive(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    // Only lets the bind reuse connections in TIME_WAIT; a socket still listening refuses it.
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            std::io::Error::new(e.kind(), "the port is already in use by another process")
        }
        _ => e,
    })?;
    socket.listen(128)?;
    Ok(socket.into())
}

async fn serve(runtime: Arc<Runtime>, listener: std::net::TcpListener) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut shutdown = runtime.shutdown_signal();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|down| *down) => return,
        };
        let (stream, peer) = stream;
        let runtime = Arc::clone(&runtime);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let runtime = Arc::clone(&runtime);
                // For the consumer audit log: who changed what, from where.
                req.extensions_mut().insert(peer);
                async move { Ok::<_, Infallible>(handle(&runtime, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

/// Largest request body the admin API reads (a purge request).
const MAX_BODY: usize = 64 * 1024;

/// Answers one admin request, with the request id (the caller's `X-Request-Id` when valid, else
/// a new one) in an `X-Request-Id` header and in every error body, as on the public listener.
async fn handle(runtime: &Runtime, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| valid_request_id(v))
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut resp = match answer(runtime, req, &id).await {
        Ok(resp) => resp,
        Err(e) => e.render(Some(&id)).map(Full::new),
    };
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}

async fn answer(
    runtime: &Runtime,
    req: Request<Incoming>,
    id: &HeaderValue,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // The dashboard's files carry no data: the page asks for the token and sends it on its API
    // calls, so an operator can open it before typing the token.
    let public = path == "/healthz" || dashboard::is_asset(&path);
    if !public && !authorized(runtime, &req) {
        return Err(GatewayError::Unauthorized {
            message: "this admin API needs `Authorization: Bearer <admin.token>`".into(),
            challenges: vec![HeaderValue::from_static("Bearer realm=\"portico-admin\"")],
            presented: req.headers().contains_key(header::AUTHORIZATION),
        });
    }
    let caller = consumers::Caller {
        remote: req.extensions().get::<SocketAddr>().copied(),
        actor: req
            .headers()
            .get("x-portico-actor")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 100)
            .map_or_else(|| "admin-token".to_string(), |v| format!("admin-token:{v}")),
        request_id: id.to_str().unwrap_or("").to_string(),
    };
    let query = req.uri().query().map(str::to_string);
    // Read (bounded) even when unused, so keep-alive works.
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(GatewayError::PayloadTooLarge {
                limit: MAX_BODY as u64,
            })
        }
    };
    if method == Method::GET {
        if let Some(resp) = dashboard::asset(&path) {
            return Ok(resp);
        }
    }
    if consumers::allowed(&path).is_some() {
        return consumers::answer(runtime, &method, &path, query.as_deref(), &body, &caller).await;
    }
    let not_allowed = |allow: &str| GatewayError::MethodNotAllowed {
        method: method.clone(),
        allow: allow.into(),
    };
    Ok(match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => ok(json!({"status": "live"})),
        (Method::GET, "/readyz") => readyz(runtime).await,
        (Method::GET, "/status") => ok(status(runtime)),
        (Method::GET, "/routes") => ok(routes(runtime)),
        (Method::GET, "/services") => ok(services(runtime)),
        (Method::GET, "/config") => ok(config::redacted(&runtime.active().raw)),
        (Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(scrape::scrape(runtime))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (Method::GET, "/errors") => ok(json!({"errors": runtime.metrics.recent_errors()})),
        (Method::POST, "/reload") => reload(runtime)?,
        (Method::POST, "/cache/purge") => purge(runtime, &body).await?,
        (Method::GET, "/openapi.json") => {
            let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        (
            _,
            "/healthz" | "/readyz" | "/status" | "/routes" | "/services" | "/config"
            | "/openapi.json" | "/metrics" | "/errors",
        ) => return Err(not_allowed("GET")),
        (_, p) if dashboard::is_asset(p) => return Err(not_allowed("GET")),
        (Method::GET, p) if p.starts_with("/openapi/") => route_spec(runtime, &p[9..])?,
        (_, p) if p.starts_with("/openapi/") => return Err(not_allowed("GET")),
        (_, "/reload" | "/cache/purge") => return Err(not_allowed("POST")),
        _ => {
            return Err(GatewayError::NotFound(
                "no such admin endpoint; see /openapi.json",
            ))
        }
    })
}

fn authorized(runtime: &Runtime, req: &Request<Incoming>) -> bool {
    let active = runtime.active();
    let Some(token) = active.raw.admin.token.as_deref() else {
        return true;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

async fn readyz(runtime: &Runtime) -> Response<Full<Bytes>> {
    let active = runtime.active();
    let mut checks = serde_json::Map::new();
    let mut ready = !runtime.shutting_down();
    checks.insert(
        "config".into(),
        json!({"ok": true, "revision": active.revision}),
    );
    checks.insert(
        "listeners".into(),
        json!({"ok": !runtime.shutting_down(), "shutting_down": runtime.shutting_down()}),
    );
    if let Some(redis) = &active.plan.redis {
        let required = active.raw.redis.as_ref().is_some_and(|r| r.required);
        let reachable = redis.ping().await.is_ok();
        if required && !reachable {
            ready = false;
        }
        checks.insert(
            "redis".into(),
            json!({"ok": reachable || !required, "reachable": reachable, "required": required}),
        );
    }
    if let Some(store) = &active.plan.consumer_store {
        let s = store.status();
        // Ready once the stored set was loaded; a node that lost Redis later keeps serving
        // its last copy and stays ready.
        let ok = s.loaded || !s.required;
        ready &= ok;
        checks.insert(
            "consumers".into(),
            json!({
                "ok": ok,
                "loaded": s.loaded,
                "required": s.required,
                "stored": s.consumers,
                "note": (!s.loaded).then_some("serving the file-defined consumers only: the consumer store has not been loaded from redis"),
            }),
        );
    }
    let body = json!({"status": if ready { "ready" } else { "unready" }, "checks": checks});
    let mut resp = ok(body);
    if !ready {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

fn status(runtime: &Runtime) -> Value {
    let active = runtime.active();
    let plan = &active.plan;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": runtime.started.elapsed().as_secs(),
        "config": {
            "revision": active.revision,
            "hash": format!("{:016x}", plan.fingerprint),
        },
        "listeners": plan.listen,
        "workers": plan.workers,
        "connections": runtime.connections.load(std::sync::atomic::Ordering::Relaxed),
        "routes": plan.routes.len(),
        "services": plan.services.len(),
        "shutting_down": runtime.shutting_down(),
        "consumers": {
            "file": plan.file_consumers.len(),
            "store": plan.consumer_store.as_ref().map(|s| s.status()),
        },
    })
}

fn routes(runtime: &Runtime) -> Value {
    let active = runtime.active();
    let plan = &active.plan;
    let list: Vec<Value> = active
        .raw
        .routes
        .iter()
        .zip(&plan.routes)
        .map(|(raw, route)| {
            let policies = route.policies.names();
            json!({
                "name": &*route.name,
                "service": &*plan.services[route.service].name,
                "hosts": raw.matcher.hosts,
                "path": raw.matcher.path,
                "methods": raw.matcher.methods,
                "timeout_ms": route.timeout.as_millis() as u64,
                "policies": policies,
                "openapi": route.policies.openapi.as_ref().map(|_| format!("/openapi/{}", route.name)),
            })
        })
        .collect();
    json!({"routes": list})
}

/// The OpenAPI document of route `name`'s `openapi` policy (for Swagger UI or a portal).
fn route_spec(runtime: &Runtime, name: &str) -> Result<Response<Full<Bytes>>, GatewayError> {
    let active = runtime.active();
    let name = crate::openapi::percent_decode(name);
    let spec = active
        .plan
        .routes
        .iter()
        .find(|r| *r.name == *name)
        .and_then(|r| r.policies.openapi.as_ref())
        .ok_or(GatewayError::NotFound(
            "no route of that name has an `openapi` policy; see /routes",
        ))?;
    let mut resp = Response::new(Full::new(spec.document.clone()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn services(runtime: &Runtime) -> Value {
    let active = runtime.active();
    let list: Vec<Value> = active
        .plan
        .services
        .iter()
        .map(|s| {
            let targets: Vec<Value> = crate::upstream::health::service_health(s)
                .into_iter()
                .zip(&s.targets)
                .map(|((url, h), t)| {
                    json!({
                        "url": url,
                        "weight": t.weight,
                        "healthy": h.healthy,
                        "ejected_for_ms": h.ejected_for.map(|d| d.as_millis() as u64),
                        "ejections": h.ejections,
                        "in_flight": t.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    })
                })
                .collect();
            let breaker = s.breaker.as_ref().map(|b| match b.state() {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            });
            json!({
                "name": &*s.name,
                "health_checked": s.health_check.is_some(),
                "breaker": breaker,
                "targets": targets,
            })
        })
        .collect();
    json!({"services": list})
}

fn reload(runtime: &Runtime) -> Result<Response<Full<Bytes>>, GatewayError> {
    match runtime.reload() {
        Ok(ReloadOutcome::Applied { revision }) => {
            crate::log_reload(&Ok(ReloadOutcome::Applied { revision }));
            Ok(ok(json!({"result": "applied", "revision": revision})))
        }
        Ok(ReloadOutcome::Unchanged) => Ok(ok(json!({"result": "unchanged"}))),
        Err(ReloadError::Invalid(errors)) => {
            tracing::error!(
                "config reload (admin API) rejected; the previous config keeps serving:\n{errors}"
            );
            let list: Vec<Value> = errors
                .errors
                .iter()
                .map(|e| {
                    json!({
                        "path": e.path,
                        "message": e.message,
                        "line": e.position.map(|p| p.line),
                        "column": e.position.map(|p| p.column),
                    })
                })
                .collect();
            Err(GatewayError::ConfigRejected {
                file: errors.file.clone(),
                errors: list,
            })
        }
        Err(e) => Err(GatewayError::ReloadFailed(e.to_string())),
    }
}

/// `{"key": K}` purges that cache key (with its variants), `{"prefix": P}` every key starting
/// with P, from every cache policy (memory and Redis).
async fn purge(runtime: &Runtime, body: &[u8]) -> Result<Response<Full<Bytes>>, GatewayError> {
    use crate::policy::cache::{purge, Purge};
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        key: Option<String>,
        prefix: Option<String>,
    }
    let what: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Err(GatewayError::InvalidRequest(format!(
                "expected {{\"key\": ...}} or {{\"prefix\": ...}}: {e}"
            )))
        }
    };
    let active = runtime.active();
    let caches = || active.plan.cache_policies();
    let count = match (&what.key, &what.prefix) {
        (Some(k), None) => purge(caches(), Purge::Key(k)).await,
        (None, Some(p)) if !p.is_empty() => purge(caches(), Purge::Prefix(p)).await,
        _ => {
            return Err(GatewayError::InvalidRequest(
                "give exactly one of `key` or a non-empty `prefix`".into(),
            ))
        }
    };
    tracing::info!(key = ?what.key, prefix = ?what.prefix, memory = count.memory, redis = ?count.redis, "cache purged (admin API)");
    Ok(ok(
        json!({"purged": {"memory": count.memory, "redis": count.redis}}),
    ))
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
