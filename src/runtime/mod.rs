//! The live state shared by every worker: the current [`Plan`] behind an `ArcSwap`, reloads, and
//! the shutdown signal.
//!
//! A reload builds the new plan off to the side and publishes it with one atomic store; requests
//! in flight keep the `Arc` they loaded. A failed build changes nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::config::{self, ConfigErrors, Plan};
use crate::telemetry::access_log::AccessLogger;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::export::{ExportError, Exporter};
use crate::upstream::health::Checker;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config was published.
    Applied {
        /// The new revision number.
        revision: u64,
    },
    /// The file compiles to the plan already serving.
    Unchanged,
}

/// Why a reload was refused (the old plan keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process was started without a config file.
    #[error("no config file to reload from")]
    NoConfigFile,
    /// The new config is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// The access log destination could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// The OTLP span exporter could not be started.
    #[error("{0}")]
    Tracing(#[from] ExportError),
    /// Publishing the new config panicked (a bug); the old config keeps serving.
    #[error("internal error while applying the new config ({0}); this is a bug in Portico")]
    Internal(String),
}

/// A plan together with the runtime parts built for it.
pub struct Active {
    /// The compiled config.
    pub plan: Plan,
    /// The access log writer, when enabled.
    pub access_log: Option<Arc<AccessLogger>>,
    /// The OTLP span exporter, when `tracing.otlp` is set.
    pub tracer: Option<Arc<Exporter>>,
    /// Monotonic revision, starting at 1.
    pub revision: u64,
}

/// Shared gateway state.
pub struct Runtime {
    active: ArcSwap<Active>,
    config_path: Option<PathBuf>,
    revision: AtomicU64,
    /// Open client connections across all workers.
    pub connections: AtomicUsize,
    /// Woken whenever a connection closes (shutdown waits on it).
    pub connection_closed: Notify,
    shutdown: watch::Sender<bool>,
    /// When the runtime started.
    pub started: Instant,
    startup: StartupSettings,
    /// Health-check probes and the health and breaker state carried across reloads.
    pub health: crate::upstream::health::Checker,
    /// Prometheus metrics (series survive reloads).
    pub metrics: crate::telemetry::metrics::Metrics,
}

/// Gives the services and routes of `plan` the state the runtime keeps across reloads: health
/// and breaker state of unchanged targets (with their probes), and their metric series.
fn adopt(health: &Checker, metrics: &Metrics, plan: &mut Plan) {
    let Plan {
        routes, services, ..
    } = plan;
    let route_breakers = routes
        .iter_mut()
        .map(|r| (format!("route {}", r.name), &mut r.resilience.breaker))
        .collect();
    health.adopt(services, route_breakers);
    let route_names: Vec<(Arc<str>, Arc<str>)> = routes
        .iter()
        .map(|r| {
            let service = services
                .get(r.service)
                .map_or_else(|| Arc::from(""), |s| Arc::clone(&s.name));
            (Arc::clone(&r.name), service)
        })
        .collect();
    let service_names: Vec<Arc<str>> = services.iter().map(|s| Arc::clone(&s.name)).collect();
    let (route_series, service_series) = metrics.adopt(&route_names, &service_names);
    for (route, series) in routes.iter_mut().zip(route_series) {
        route.metrics = series;
    }
    for (svc, series) in services.iter_mut().zip(service_series) {
        if let Some(service) = Arc::get_mut(svc) {
            service.metrics = series;
        }
    }
}

/// Hands each policy of `new` its predecessor in `old`: rate-limit counters and cache entries
/// of policies written the same way survive the reload.
fn carry_over(old: &Plan, new: &mut Plan) {
    use crate::policy::{cache, rate_limit};
    let rate_limits: Vec<_> = old
        .routes
        .iter()
        .filter_map(|r| r.policies.rate_limit.as_ref())
        .collect();
    let caches: Vec<_> = old
        .routes
        .iter()
        .filter_map(|r| r.policies.cache.as_ref())
        .collect();
    for route in &mut new.routes {
        if let Some(p) = &mut route.policies.rate_limit {
            rate_limit::carry_over(&rate_limits, p);
        }
        if let Some(p) = &mut route.policies.cache {
            cache::carry_over(&caches, p);
        }
    }
}

impl Runtime {
    /// Wraps an initial plan.
    pub fn new(plan: Plan, config_path: Option<PathBuf>) -> Result<Arc<Self>, ReloadError> {
        let access_log = start_access_log(&plan, None)?;
        let tracer = start_tracer(&plan, None)?;
        let health = crate::upstream::health::Checker::default();
        let mut plan = plan;
        let metrics = crate::telemetry::metrics::Metrics::new();
        adopt(&health, &metrics, &mut plan);
        let (shutdown, _) = watch::channel(false);
        let startup = StartupSettings::of(&plan);
        Ok(Arc::new(Self {
            active: ArcSwap::from_pointee(Active {
                plan,
                access_log,
                tracer,
                revision: 1,
            }),
            config_path,
            revision: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            connection_closed: Notify::new(),
            shutdown,
            started: Instant::now(),
            startup,
            health,
            metrics,
        }))
    }

    /// The plan serving now. One atomic load and reference-count increment.
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// Re-reads the config file and publishes it when it is valid and different. Neither step
    /// can end the process: loading is contained by `config::load_file` and publishing here,
    /// each reporting a panic as a failed reload.
    pub fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let result = config::load_file(path)
            .map_err(ReloadError::from)
            .and_then(|plan| {
                config::guard::contained(|| self.publish(plan))
                    .unwrap_or_else(|panic| Err(ReloadError::Internal(panic)))
            });
        self.metrics.reload(match &result {
            Ok(ReloadOutcome::Applied { .. }) => "applied",
            Ok(ReloadOutcome::Unchanged) => "unchanged",
            Err(_) => "rejected",
        });
        result
    }

    /// Publishes `plan` unless it equals the one serving.
    pub fn publish(&self, mut plan: Plan) -> Result<ReloadOutcome, ReloadError> {
        let current = self.active.load();
        if current.plan.fingerprint == plan.fingerprint {
            return Ok(ReloadOutcome::Unchanged);
        }
        carry_over(&current.plan, &mut plan);
        let restart_only = self.startup.restart_only_changes(&plan);
        if !restart_only.is_empty() {
            tracing::warn!(
                "changes to {} take effect only after a restart; the rest of the new config is \
                 applied",
                restart_only.join(", ")
            );
        }
        let access_log = start_access_log(&plan, current.access_log.as_ref())?;
        let tracer = start_tracer(&plan, current.tracer.as_ref())?;
        // Last before publishing: a plan refused above must not have touched the probes.
        adopt(&self.health, &self.metrics, &mut plan);
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        self.active.store(Arc::new(Active {
            plan,
            access_log,
            tracer,
            revision,
        }));
        Ok(ReloadOutcome::Applied { revision })
    }

    /// Asks every worker to stop accepting and drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that turns `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The settings the running listeners were built with and cannot change: the sockets, the
/// worker threads and the HTTP connection builders (read buffer size, HTTP/2 header list size)
/// are made at startup, and the log filter and format are installed once. (The header-read timeout is read
/// by each worker's watchdog on every sweep, so it reloads.)
#[derive(Debug, Clone, PartialEq)]
struct StartupSettings {
    listen: Vec<String>,
    tls_listen: Vec<String>,
    redirect_port: Option<u16>,
    http2: crate::config::http2::RawHttp2,
    workers: usize,
    log_level: String,
    log_format: crate::telemetry::app_log::LogFormat,
    max_header_bytes: usize,
    max_uri_bytes: usize,
    admin: (bool, String),
}

impl StartupSettings {
    fn of(plan: &Plan) -> Self {
        Self {
            listen: plan.listen.clone(),
            tls_listen: plan
                .tls
                .as_ref()
                .map(|t| t.listen.clone())
                .unwrap_or_default(),
            redirect_port: plan.tls.as_ref().and_then(|t| t.redirect_port),
            http2: plan.raw.http2.clone(),
            workers: plan.workers,
            log_level: plan.raw.log_level.clone(),
            log_format: plan.raw.log_format,
            max_header_bytes: plan.limits.max_header_bytes,
            max_uri_bytes: plan.limits.max_uri_bytes,
            admin: (plan.raw.admin.enabled, plan.raw.admin.listen.clone()),
        }
    }

    /// Keys of `new` that differ from what the process started with and so wait for a restart.
    /// Lowering a header or URI limit works at once (every request is checked against the live
    /// plan); raising one past the read buffer sized at startup does not.
    fn restart_only_changes(&self, new: &Plan) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.tls_listen
            != new
                .tls
                .as_ref()
                .map(|t| t.listen.clone())
                .unwrap_or_default()
        {
            keys.push("tls.listen");
        }
        if self.redirect_port != new.tls.as_ref().and_then(|t| t.redirect_port) {
            keys.push("tls.redirect_http");
        }
        if self.http2 != new.raw.http2 {
            keys.push("http2");
        }
        if self.workers != new.workers {
            keys.push("workers");
        }
        if self.admin != (new.raw.admin.enabled, new.raw.admin.listen.clone()) {
            keys.push("admin.enabled/admin.listen");
        }
        if self.log_level != new.raw.log_level {
            keys.push("log_level");
        }
        if self.log_format != new.raw.log_format {
            keys.push("log_format");
        }
        if new.limits.max_header_bytes > self.max_header_bytes {
            keys.push("limits.max_header_bytes (raised)");
        }
        if new.limits.max_uri_bytes > self.max_uri_bytes {
            keys.push("limits.max_uri_bytes (raised)");
        }
        keys
    }
}

fn start_access_log(
    plan: &Plan,
    previous: Option<&Arc<AccessLogger>>,
) -> Result<Option<Arc<AccessLogger>>, ReloadError> {
    if !plan.access_log.enabled {
        return Ok(None);
    }
    if let Some(prev) = previous {
        if *prev.settings() == plan.access_log {
            return Ok(Some(Arc::clone(prev)));
        }
    }
    AccessLogger::start(&plan.access_log)
        .map(Some)
        .map_err(ReloadError::AccessLog)
}

/// The exporter for `plan`: the previous one when `tracing:` did not change (its queue and
/// connections carry on), else a new one.
fn start_tracer(
    plan: &Plan,
    previous: Option<&Arc<Exporter>>,
) -> Result<Option<Arc<Exporter>>, ReloadError> {
    if let Some(prev) = previous {
        if *prev.settings() == plan.raw.tracing {
            return Ok(Some(Arc::clone(prev)));
        }
    }
    Ok(Exporter::start(&plan.raw.tracing)?)
}
