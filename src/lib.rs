//! Portico: a lightweight, fast API gateway.
//!
//! The crate is a library with a thin binary (`main.rs`) so integration tests can start a real
//! gateway in-process on ephemeral ports. See `docs/architecture.md` for the request's path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use config::Plan;
use runtime::{ReloadError, ReloadOutcome, Runtime};
use server::Server;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    /// The runtime could not be set up (access log destination).
    #[error("{0}")]
    Runtime(#[from] ReloadError),
    /// A listener could not be bound.
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

// Not `#[from]`: the message already carries the I/O error, and a `source()` as well would
// print it twice in the CLI's error chain.
impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Listen(e)
    }
}

/// A running gateway: its shared state and its workers.
pub struct Gateway {
    /// Shared state: the current plan, reloads, shutdown.
    pub runtime: Arc<Runtime>,
    server: Server,
}

impl Gateway {
    /// Starts workers serving `plan`. `config_path` is what `reload` re-reads.
    pub fn start(plan: Plan, config_path: Option<PathBuf>) -> Result<Gateway, StartError> {
        let runtime = Runtime::new(plan, config_path)?;
        let server = Server::start(Arc::clone(&runtime))?;
        Ok(Gateway { runtime, server })
    }

    /// The addresses the public listeners are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.server.local_addrs
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and waits.
    pub fn shutdown(self) {
        self.runtime.begin_shutdown();
        self.server.join();
    }
}

/// Logs the outcome of a reload in one line.
pub fn log_reload(result: &Result<ReloadOutcome, ReloadError>) {
    match result {
        Ok(ReloadOutcome::Applied { revision }) => tracing::info!(revision, "config reloaded"),
        Ok(ReloadOutcome::Unchanged) => tracing::info!("config unchanged; nothing to reload"),
        Err(e) => {
            tracing::error!("config reload rejected; the previous config keeps serving:\n{e}")
        }
    }
}

/// Serves `config` until SIGTERM or SIGINT; reloads on SIGHUP and, with `watch`, when the file
/// changes. Returns once every connection has drained.
pub fn run(config_path: &Path, watch: bool) -> Result<(), StartError> {
    // Stamp before reading, so an edit made while starting up is picked up by the first poll.
    let stamp = file_stamp(config_path);
    let plan = config::load_file(config_path)?;
    let routes = plan.routes.len();
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers go in before the listeners exist: the default action of SIGHUP and SIGTERM is to
    // kill the process, so a reload sent as soon as "listening on" is logged must find them.
    let signals = {
        let _in_runtime = control.enter();
        Signals::install()?
    };
    let gateway = Gateway::start(plan, Some(config_path.to_path_buf()))?;
    tracing::info!(routes, config = %config_path.display(), "portico started");
    control.block_on(control_loop(
        &gateway.runtime,
        config_path,
        watch.then_some(stamp),
        signals,
    ));
    tracing::info!("shutting down: draining connections");
    gateway.shutdown();
    tracing::info!("bye");
    Ok(())
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Reloads on SIGHUP (and on file changes when `watch` holds the file's stamp at startup);
/// returns on SIGTERM or SIGINT.
async fn control_loop(
    runtime: &Arc<Runtime>,
    path: &Path,
    watch: Option<Option<(SystemTime, u64)>>,
    mut signals: Signals,
) {
    let watching = watch.is_some();
    let mut last_seen = watch.flatten();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    prefetch_in_background(runtime);
    loop {
        tokio::select! {
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                let result = runtime.reload();
                log_reload(&result);
                if matches!(result, Ok(ReloadOutcome::Applied { .. })) {
                    prefetch_in_background(runtime);
                }
            }
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = tick.tick(), if watching => {
                let stamp = file_stamp(path);
                if stamp != last_seen {
                    last_seen = stamp;
                    tracing::info!("config file changed: reloading");
                    let result = runtime.reload();
                    log_reload(&result);
                    if matches!(result, Ok(ReloadOutcome::Applied { .. })) {
                        prefetch_in_background(runtime);
                    }
                }
            }
        }
    }
}

/// Fetches JWKS documents of the serving plan without holding up signal handling.
fn prefetch_in_background(runtime: &Arc<Runtime>) {
    let active = runtime.active();
    tokio::spawn(async move { policy::auth::prefetch_keys(&active.plan).await });
}

/// Modification time and size: enough to notice an edit, including an atomic rename over it.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
