//! Portico: a lightweight, fast API gateway.
//!
//! The crate is a library with a thin binary (`main.rs`) so integration tests can start a real
//! gateway in-process on ephemeral ports. See `docs/architecture.md` for the request's path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod openapi;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use config::Loaded;
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
    /// The admin listener could not be bound.
    #[error("cannot listen for the admin API on {addr}: {error}")]
    Admin {
        /// The configured `admin.listen`.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
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
    admin: Option<admin::AdminServer>,
}

impl Gateway {
    /// Starts workers serving `loaded`. `config_path` is what `reload` re-reads.
    pub fn start(loaded: Loaded, config_path: Option<PathBuf>) -> Result<Gateway, StartError> {
        let admin_listen = admin_listen(&loaded);
        let runtime = Runtime::new(loaded, config_path)?;
        // The admin port first: when it is taken, nothing has started serving yet.
        let admin = start_admin(&runtime, admin_listen, None, false)?;
        let server = Server::start(Arc::clone(&runtime))?;
        Ok(Gateway {
            runtime,
            server,
            admin,
        })
    }

    /// The address of the admin API, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Like `start`, on sockets inherited from a predecessor (when any), keeping copies of the
    /// sockets so that SIGUSR2 can hand them to a successor.
    pub fn start_upgradable(
        loaded: Loaded,
        config_path: Option<PathBuf>,
        mut inherited: server::handoff::Inherited,
    ) -> Result<Gateway, StartError> {
        let admin_listen = admin_listen(&loaded);
        let runtime = Runtime::new(loaded, config_path)?;
        // Taken before the server claims the rest: it closes what nobody claimed.
        let admin_socket = admin_listen
            .as_deref()
            .and_then(|l| inherited.take(&server::handoff::admin_entry(l)).pop());
        let admin = start_admin(&runtime, admin_listen, admin_socket, true)?;
        let server = Server::start_with(Arc::clone(&runtime), inherited, true)?;
        Ok(Gateway {
            runtime,
            server,
            admin,
        })
    }

    /// The addresses the public listeners are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.server.local_addrs
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and waits.
    pub fn shutdown(self) {
        self.server.release_handoff();
        server::handoff::release_kept();
        self.runtime.begin_shutdown();
        self.server.join();
        if let Some(admin) = self.admin {
            admin.join();
        }
        // Spans of the last requests go out before the process exits (the exporter's own drop
        // may never run: the runtime can outlive this call).
        if let Some(tracer) = &self.runtime.active().tracer {
            tracer.flush();
        }
    }
}

fn admin_listen(loaded: &Loaded) -> Option<String> {
    let admin = &loaded.raw.admin;
    admin.enabled.then(|| admin.listen.clone())
}

/// Starts the admin API on `listen` (on `inherited` when a predecessor handed it over), keeping
/// a copy of its socket for a successor when `upgradable`.
fn start_admin(
    runtime: &Arc<Runtime>,
    listen: Option<String>,
    inherited: Option<std::net::TcpListener>,
    upgradable: bool,
) -> Result<Option<admin::AdminServer>, StartError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let error = |error| StartError::Admin {
        addr: listen.clone(),
        error,
    };
    let addr = listen
        .parse()
        .map_err(|_| error(std::io::Error::other("not an IP:port")))?;
    let socket = match inherited {
        Some(socket) => socket,
        None => admin::bind_exclusive(addr).map_err(error)?,
    };
    if upgradable {
        server::handoff::keep_for_successor(server::handoff::admin_entry(&listen), &socket)
            .map_err(error)?;
    }
    admin::AdminServer::start(Arc::clone(runtime), socket)
        .map(Some)
        .map_err(error)
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
    // Before any thread exists: this reads and clears the handoff's environment variables.
    let inherited = server::handoff::Inherited::from_env();
    // Stamp before reading, so an edit made while starting up is picked up by the first poll.
    let stamp = file_stamp(config_path);
    let loaded = config::load_file(config_path)?;
    // Certificate stamps before the listeners exist, so a renewal that lands as soon as
    // "listening on" is logged is seen by the first poll.
    let pem_stamps = config::file_stamps(&loaded.raw);
    let routes = loaded.plan.routes.len();
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers go in before the listeners exist: the default action of SIGHUP and SIGTERM is to
    // kill the process, so a reload sent as soon as "listening on" is logged must find them.
    let signals = {
        let _in_runtime = control.enter();
        Signals::install()?
    };
    let gateway = Gateway::start_upgradable(loaded, Some(config_path.to_path_buf()), inherited)?;
    tracing::info!(routes, config = %config_path.display(), pid = std::process::id(), "portico started");
    control.block_on(control_loop(
        &gateway,
        config_path,
        watch.then_some(stamp),
        pem_stamps,
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
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Reloads on SIGHUP (and on file changes when `watch` holds the file's stamp at startup);
/// returns on SIGTERM or SIGINT.
async fn control_loop(
    gateway: &Gateway,
    path: &Path,
    watch: Option<Option<(SystemTime, u64)>>,
    mut pem_stamps: Vec<Option<(SystemTime, u64)>>,
    mut signals: Signals,
) {
    let runtime = &gateway.runtime;
    let watching = watch.is_some();
    let mut last_seen = watch.flatten();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Certificate files are watched always (renewals land without a config edit).
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
            _ = signals.usr2.recv() => {
                // The successor takes the sockets and sends us SIGTERM once it serves.
                match gateway.server.spawn_successor() {
                    Ok(mut child) => {
                        tracing::info!(successor = child.id(), "SIGUSR2: started a successor on the listening sockets");
                        std::thread::spawn(move || {
                            if let Ok(status) = child.wait() {
                                if !status.success() {
                                    tracing::error!(%status, "the successor exited; this process keeps serving");
                                }
                            }
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "SIGUSR2: cannot start a successor"),
                }
            }
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = tick.tick() => {
                let pems = config::file_stamps(&runtime.active().raw);
                if pems != pem_stamps {
                    pem_stamps = pems;
                    tracing::info!("certificate or OpenAPI spec files changed: reloading");
                    let result = runtime.reload();
                    log_reload(&result);
                    continue;
                }
                let stamp = if watching { file_stamp(path) } else { last_seen };
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
    let policies = active
        .plan
        .routes
        .iter()
        .filter_map(|r| r.policies.auth.clone())
        .collect();
    tokio::spawn(policy::auth::prefetch_keys(policies));
}

/// Modification time and size: enough to notice an edit, including an atomic rename over it.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
