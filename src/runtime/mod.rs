//! The live state shared by every worker: the current [`Plan`] behind an `ArcSwap`, reloads, and
//! the shutdown signal.
//!
//! A reload builds the new plan off to the side and publishes it with one atomic store; requests
//! in flight keep the `Arc` they loaded. A failed build changes nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::config::{self, ConfigErrors, Loaded, Plan, RawConfig};
use crate::telemetry::access_log::AccessLogger;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::export::{ExportError, Exporter};

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
    /// The config it was compiled from, for the control plane (never read per request).
    pub raw: RawConfig,
    /// The access log writer, when enabled.
    pub access_log: Option<Arc<AccessLogger>>,
    /// The OTLP span exporter, when `tracing.otlp` is set.
    pub tracer: Option<Arc<Exporter>>,
    /// Monotonic revision, starting at 1.
    pub revision: u64,
}

/// Tells the registry which routes and services `plan` serves, so it forgets the series of
/// those gone (renaming routes over many reloads must not grow the scrape without bound).
fn retire_old_series(plan: &Plan) {
    let routes: Vec<(Arc<str>, Arc<str>)> = plan
        .routes
        .iter()
        .map(|r| {
            (
                Arc::clone(r.metrics.route()),
                Arc::clone(r.metrics.service()),
            )
        })
        .collect();
    let services: Vec<Arc<str>> = plan.services.iter().map(|s| Arc::clone(&s.name)).collect();
    plan.registry.serving(&routes, &services);
}

/// Shared gateway state.
pub struct Runtime {
    active: ArcSwap<Active>,
    config_path: Option<PathBuf>,
    revision: AtomicU64,
    /// Held while a reload compiles and publishes: two at once would both inherit from the same
    /// plan, and the later one would drop what the earlier one kept.
    reloading: Mutex<()>,
    /// Open client connections across all workers.
    pub connections: AtomicUsize,
    /// Woken whenever a connection closes (shutdown waits on it).
    pub connection_closed: Notify,
    shutdown: watch::Sender<bool>,
    /// When the runtime started.
    pub started: Instant,
    startup: StartupSettings,
    /// Health-check probes of the published plan's targets.
    pub health: crate::upstream::health::Checker,
    /// Prometheus metrics: the registry of the first plan, which every later plan inherits.
    pub metrics: Arc<Metrics>,
}

impl Runtime {
    /// Wraps an initial plan.
    pub fn new(loaded: Loaded, config_path: Option<PathBuf>) -> Result<Arc<Self>, ReloadError> {
        let Loaded { plan, raw } = loaded;
        let access_log = start_access_log(&plan, None)?;
        let tracer = start_tracer(&raw, None)?;
        let health = crate::upstream::health::Checker::default();
        health.watch(&plan.services);
        start_consumer_store(&plan);
        retire_old_series(&plan);
        let metrics = Arc::clone(&plan.registry);
        let (shutdown, _) = watch::channel(false);
        let startup = StartupSettings::of(&plan, &raw);
        Ok(Arc::new(Self {
            active: ArcSwap::from_pointee(Active {
                plan,
                raw,
                access_log,
                tracer,
                revision: 1,
            }),
            config_path,
            revision: AtomicU64::new(1),
            reloading: Mutex::new(()),
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
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.active.load_full();
        let result = config::load_file_after(path, Some(&current.plan))
            .map_err(ReloadError::from)
            .and_then(|loaded| {
                config::guard::contained(|| self.publish(loaded))
                    .unwrap_or_else(|panic| Err(ReloadError::Internal(panic)))
            });
        if result.is_err() {
            // The refused plan may have minted series for names that never served.
            retire_old_series(&current.plan);
        }
        self.metrics.reload(match &result {
            Ok(ReloadOutcome::Applied { .. }) => "applied",
            Ok(ReloadOutcome::Unchanged) => "unchanged",
            Err(_) => "rejected",
        });
        result
    }

    /// Publishes `loaded`, compiled after the plan serving now, unless it equals it.
    fn publish(&self, loaded: Loaded) -> Result<ReloadOutcome, ReloadError> {
        let Loaded { plan, raw } = loaded;
        let current = self.active.load();
        if current.plan.fingerprint == plan.fingerprint {
            return Ok(ReloadOutcome::Unchanged);
        }
        let restart_only = self.startup.restart_only_changes(&plan, &raw);
        if !restart_only.is_empty() {
            tracing::warn!(
                "changes to {} take effect only after a restart; the rest of the new config is \
                 applied",
                restart_only.join(", ")
            );
        }
        let access_log = start_access_log(&plan, current.access_log.as_ref())?;
        let tracer = start_tracer(&raw, current.tracer.as_ref())?;
        // Last before publishing: a plan refused above must not have touched the probes.
        self.health.watch(&plan.services);
        start_consumer_store(&plan);
        retire_old_series(&plan);
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        self.active.store(Arc::new(Active {
            plan,
            raw,
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
    fn of(plan: &Plan, raw: &RawConfig) -> Self {
        Self {
            listen: plan.listen.clone(),
            tls_listen: plan
                .tls
                .as_ref()
                .map(|t| t.listen.clone())
                .unwrap_or_default(),
            redirect_port: plan.tls.as_ref().and_then(|t| t.redirect_port),
            http2: raw.http2.clone(),
            workers: plan.workers,
            log_level: raw.log_level.clone(),
            log_format: raw.log_format,
            max_header_bytes: plan.limits.max_header_bytes,
            max_uri_bytes: plan.limits.max_uri_bytes,
            admin: (raw.admin.enabled, raw.admin.listen.clone()),
        }
    }

    /// Keys of `new` that differ from what the process started with and so wait for a restart.
    /// Lowering a header or URI limit works at once (every request is checked against the live
    /// plan); raising one past the read buffer sized at startup does not.
    fn restart_only_changes(&self, new: &Plan, raw: &RawConfig) -> Vec<&'static str> {
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
        if self.http2 != raw.http2 {
            keys.push("http2");
        }
        if self.workers != new.workers {
            keys.push("workers");
        }
        if self.admin != (raw.admin.enabled, raw.admin.listen.clone()) {
            keys.push("admin.enabled/admin.listen");
        }
        if self.log_level != raw.log_level {
            keys.push("log_level");
        }
        if self.log_format != raw.log_format {
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

/// Starts the plan's consumer store following Redis (a store inherited from the previous plan
/// is running already), waiting a little for its first load so the stored consumers are
/// served from the first request.
fn start_consumer_store(plan: &Plan) {
    if let Some(store) = &plan.consumer_store {
        store.start(std::time::Duration::from_secs(5));
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
    raw: &RawConfig,
    previous: Option<&Arc<Exporter>>,
) -> Result<Option<Arc<Exporter>>, ReloadError> {
    if let Some(prev) = previous {
        if *prev.settings() == raw.tracing {
            return Ok(Some(Arc::clone(prev)));
        }
    }
    Ok(Exporter::start(&raw.tracing)?)
}
