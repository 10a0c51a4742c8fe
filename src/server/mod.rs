//! Listeners and connections: one thread per worker, each with a single-threaded tokio runtime
//! and its own `SO_REUSEPORT` socket per listen address, so the kernel spreads connections and
//! workers share nothing on the hot path. Also the connection limit and graceful drain.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::pipeline::conn::Signals;
use crate::runtime::Runtime;

mod conn;
pub mod h1;
pub mod handoff;
mod tls;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain HTTP/1.1 and h2c.
    Plain,
    /// Plain HTTP answering every request with a 308 to this HTTPS port.
    Redirect(u16),
    /// HTTPS.
    Tls,
}

/// Running workers and the addresses they listen on.
pub struct Server {
    /// The bound addresses (port 0 in the config is resolved here).
    pub local_addrs: Vec<SocketAddr>,
    workers: Vec<JoinHandle<()>>,
    /// Copies of every listening socket with its `listen` entry, kept only by a process that
    /// may hand them to a successor (`run`); released when shutdown begins.
    handoff: std::sync::Mutex<Vec<(String, StdListener)>>,
}

impl Server {
    /// Binds every listen address once per worker and starts the workers.
    pub fn start(runtime: Arc<Runtime>) -> io::Result<Server> {
        Self::start_with(runtime, handoff::Inherited::default(), false)
    }

    /// Like `start`, serving on sockets inherited from a predecessor where there are some, and
    /// keeping copies of the sockets for a successor when `keep_for_handoff`.
    pub fn start_with(
        runtime: Arc<Runtime>,
        mut inherited: handoff::Inherited,
        keep_for_handoff: bool,
    ) -> io::Result<Server> {
        let mut handoff = Vec::new();
        let active = runtime.active();
        let plan = &active.plan;
        let workers = plan.workers.max(1);
        let mut per_worker: Vec<Vec<(StdListener, Kind)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        let plain = match plan.tls.as_ref().and_then(|t| t.redirect_port) {
            Some(port) => Kind::Redirect(port),
            None => Kind::Plain,
        };
        let tls_listen = plan.tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
        let all = plan.listen.iter().map(|a| (a, plain));
        for (text, kind) in all.chain(tls_listen.iter().map(|a| (a, Kind::Tls))) {
            let addr: SocketAddr = text.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad listen address {text}"),
                )
            })?;
            let mut sockets = inherited.take(text);
            if sockets.is_empty() {
                ensure_port_free(addr)?;
                sockets.push(bind_reuseport(addr)?);
            }
            let actual = sockets[0].local_addr()?;
            local_addrs.push(actual);
            // Every inherited socket must be served (connections are queued on each), and
            // every worker needs one.
            while sockets.len() < workers {
                sockets.push(bind_reuseport(actual)?);
            }
            for (i, socket) in sockets.into_iter().enumerate() {
                socket.set_nonblocking(true)?;
                if keep_for_handoff {
                    handoff.push((text.clone(), socket.try_clone()?));
                }
                per_worker[i % workers].push((socket, kind));
            }
        }
        let mut handles = Vec::with_capacity(workers);
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let runtime = Arc::clone(&runtime);
            let handle = std::thread::Builder::new()
                .name(format!("portico-worker-{i}"))
                .spawn(move || run_worker(runtime, listeners))?;
            handles.push(handle);
        }
        let plain_count = plan.listen.len();
        for (i, addr) in local_addrs.iter().enumerate() {
            let scheme = if i < plain_count { "http" } else { "https" };
            tracing::info!(workers, "portico listening on {scheme}://{addr}");
        }
        inherited.finish();
        Ok(Server {
            local_addrs,
            workers: handles,
            handoff: std::sync::Mutex::new(handoff),
        })
    }

    /// Starts a successor process on copies of the listening sockets (see `handoff`).
    pub fn spawn_successor(&self) -> io::Result<std::process::Child> {
        let sockets = self.handoff.lock().unwrap_or_else(|e| e.into_inner());
        if sockets.is_empty() {
            return Err(io::Error::other(
                "this process keeps no sockets to hand over",
            ));
        }
        let mut fds = Vec::with_capacity(sockets.len());
        for (addr, socket) in sockets.iter() {
            fds.push((
                addr.clone(),
                std::os::fd::OwnedFd::from(socket.try_clone()?),
            ));
        }
        handoff::spawn_successor(fds)
    }

    /// Closes the copies kept for a successor, so that once the workers stop accepting, new
    /// connections are refused rather than queued on a socket nobody serves.
    pub fn release_handoff(&self) {
        self.handoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Waits for every worker to finish draining.
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Fails when another process already listens on `addr`. The workers' sockets use
/// `SO_REUSEPORT`, which would otherwise let a second gateway start silently and take part of
/// the traffic; a plain bind without it is refused while anyone holds the port.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{addr} is already in use by another process"),
        )
    })
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: set it once here.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn run_worker(runtime: Arc<Runtime>, listeners: Vec<(StdListener, Kind)>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let builders = Arc::new(conn::Builders::new(&runtime.active()));
        let watchdog = tokio::spawn(conn::watchdog(Arc::clone(&runtime)));
        let mut accepting = Vec::new();
        for (l, kind) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => accepting.push(tokio::spawn(accept_loop(
                    Arc::clone(&runtime),
                    l,
                    kind,
                    Arc::clone(&builders),
                ))),
                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
            }
        }
        for a in accepting {
            let _ = a.await;
        }
        drain(&runtime).await;
        watchdog.abort();
    });
}

/// Waits until every connection has closed or the shutdown grace period ran out.
async fn drain(runtime: &Runtime) {
    let grace = runtime.active().plan.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let closed = runtime.connection_closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if runtime.connections.load(Ordering::Acquire) == 0 {
            return;
        }
        tokio::select! {
            _ = closed => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    open = runtime.connections.load(Ordering::Acquire),
                    "shutdown grace period over; closing remaining connections"
                );
                return;
            }
        }
    }
}

async fn accept_loop(
    runtime: Arc<Runtime>,
    listener: TcpListener,
    kind: Kind,
    builders: Arc<conn::Builders>,
) {
    // One receiver to hand each connection a copy of. The loop itself waits on a flag a small
    // task sets when shutdown begins: polling the `watch` wait on every accept took its waiter
    // list's lock each time (about 350 instructions per connection).
    let shutdown = runtime.shutdown_signal();
    let stop = Arc::new(Signals::default());
    let mut watched = runtime.shutdown_signal();
    let stopper = Arc::clone(&stop);
    let stop_watch = tokio::spawn(async move {
        // An error (the sender gone) ends accepting too, as the runtime is going away.
        let _ = watched.wait_for(|&down| down).await;
        stopper.drain();
    });
    loop {
        // The loop is the listener's one acceptor: its waker goes in the socket's own slot
        // (`accept()` puts a waiter into a list under a lock, every time).
        let accepted = std::future::poll_fn(|cx| {
            if stop.poll_drain(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else {
            conn::order_drain();
            // Close the socket before saying so: from this line on, connects are refused.
            let addr = listener.local_addr().ok();
            drop(listener);
            if let Some(addr) = addr {
                tracing::info!("stopped accepting on {addr}");
            }
            stop_watch.abort();
            return;
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let max = runtime.active().plan.limits.max_connections;
        let open = runtime.connections.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard(Arc::clone(&runtime));
        if open >= max {
            tokio::spawn(refuse(stream, guard));
            continue;
        }
        let runtime = Arc::clone(&runtime);
        let builders = Arc::clone(&builders);
        let shutdown = shutdown.clone();
        // The connection's future is boxed: it holds the HTTP/1 engine with a request's
        // pipeline pinned in it (kilobytes), and tokio moves a spawned future several times
        // (into the task, through its stages) where a box moves as a pointer. One allocation
        // per connection instead of about 6,000 instructions of copying.
        tokio::spawn(async move {
            let _guard = guard;
            match kind {
                Kind::Plain => {
                    Box::pin(conn::serve(runtime, stream, peer, &builders, shutdown)).await
                }
                Kind::Tls => {
                    Box::pin(tls::serve_tls(runtime, stream, peer, &builders, shutdown)).await
                }
                // Boxed too, though rare: inline, its future would set the size of every
                // connection's task, which tokio moves several times while spawning it.
                Kind::Redirect(port) => {
                    Box::pin(tls::serve_redirect(
                        runtime, stream, peer, &builders, port, shutdown,
                    ))
                    .await
                }
            }
        });
    }
}

/// Over the connection limit: a short 503 and close, without reading the request.
async fn refuse(mut stream: TcpStream, _guard: ConnGuard) {
    // Like every error answer, this one carries a request id (in the body and `x-request-id`)
    // so a client report can be matched with the gateway's logs.
    let id = crate::proxy::headers::new_request_id();
    let answer = crate::error::GatewayError::TooManyConnections.to_http1_bytes(&id);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

struct ConnGuard(Arc<Runtime>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.connection_closed.notify_waiters();
    }
}
