//! Zero-downtime restart and binary upgrade: handing the listening sockets to a successor.
//!
//! On SIGUSR2 the running gateway starts a new copy of itself (the binary now at the path it
//! was started from, with the same arguments), passing every listening socket to it
//! (systemd's `LISTEN_FDS` protocol, plus `PORTICO_LISTEN_ADDRS` naming each socket's
//! `listen` entry). The successor serves on those very sockets, so no connection waiting in
//! an accept queue is lost, then sends SIGTERM to its predecessor, which stops accepting and
//! drains. Closing the old process's copies of the sockets does not close them: the successor
//! holds them. (Binding fresh `SO_REUSEPORT` sockets instead would work too, but the kernel
//! resets the connections still queued on a socket when it closes.)
//!
//! The admin listener goes along the same way, under the entry `admin:<admin.listen>`: it binds
//! exclusively (no `SO_REUSEPORT`), so a successor could not bind it while the predecessor holds
//! it. It is not the server's socket, so it is registered here ([`keep_for_successor`]) rather
//! than in the server's list.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener as StdListener;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::Mutex;

use command_fds::{CommandFdExt, FdMapping};

const ADDRS_ENV: &str = "PORTICO_LISTEN_ADDRS";
const PREDECESSOR_ENV: &str = "PORTICO_PREDECESSOR_PID";

/// Sockets inherited from a predecessor, by the `listen` entry they were bound for.
#[derive(Default)]
pub struct Inherited {
    by_address: HashMap<String, Vec<StdListener>>,
    predecessor: Option<i32>,
}

impl Inherited {
    /// Takes the sockets passed by a predecessor, if this process was started as one's
    /// successor. Must run before any thread starts (it clears environment variables).
    pub fn from_env() -> Self {
        let Ok(addrs) = std::env::var(ADDRS_ENV) else {
            return Self::default();
        };
        let predecessor = std::env::var(PREDECESSOR_ENV)
            .ok()
            .and_then(|p| p.parse().ok());
        // Not passed on to anything this process starts (a successor gets fresh values).
        std::env::remove_var(ADDRS_ENV);
        std::env::remove_var(PREDECESSOR_ENV);
        let mut fds = listenfd::ListenFd::from_env();
        let mut by_address: HashMap<String, Vec<StdListener>> = HashMap::new();
        for (i, addr) in addrs.split(',').enumerate() {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => by_address.entry(addr.to_string()).or_default().push(l),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "inherited socket {i} is unusable"),
            }
        }
        Self {
            by_address,
            predecessor,
        }
    }

    /// The inherited sockets of `listen` entry `address` (empty when there are none).
    pub fn take(&mut self, address: &str) -> Vec<StdListener> {
        self.by_address.remove(address).unwrap_or_default()
    }

    /// Once serving: tells the predecessor to stop accepting and drain. Sockets inherited
    /// for addresses the new config no longer lists are closed here.
    pub fn finish(self) {
        for (addr, _) in self.by_address {
            tracing::info!("closing inherited socket for {addr}: no longer configured");
        }
        if let Some(pid) = self.predecessor {
            tracing::info!(
                predecessor = pid,
                "took over the listening sockets; asking the predecessor to drain"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Sockets besides the public listeners that a successor gets too, with their entries. One
/// upgradable gateway runs per process (`run`), so a process-wide list is the gateway's.
static KEPT: Mutex<Vec<(String, StdListener)>> = Mutex::new(Vec::new());

/// The handoff entry of the admin listener configured as `listen`.
pub fn admin_entry(listen: &str) -> String {
    format!("admin:{listen}")
}

/// Keeps a copy of `socket` to hand to a successor under `entry`, until [`release_kept`].
pub fn keep_for_successor(entry: String, socket: &StdListener) -> io::Result<()> {
    let copy = socket.try_clone()?;
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((entry, copy));
    Ok(())
}

/// Closes the copies kept by [`keep_for_successor`] (when shutdown begins), so that a socket
/// nobody serves any more refuses connections instead of queueing them.
pub fn release_kept() {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Starts the successor, handing it `sockets` (each with the `listen` entry it serves) and the
/// sockets kept by [`keep_for_successor`].
pub fn spawn_successor(mut sockets: Vec<(String, OwnedFd)>) -> io::Result<Child> {
    for (entry, socket) in KEPT.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        sockets.push((entry.clone(), OwnedFd::from(socket.try_clone()?)));
    }
    let mut args = std::env::args_os();
    // The path the binary was started from, not /proc/self/exe: after an upgrade that path
    // holds the new binary, while /proc/self/exe is still the old, replaced one.
    let argv0 = args.next().unwrap_or_default();
    let program = if std::path::Path::new(&argv0).components().count() > 1 {
        std::path::PathBuf::from(argv0)
    } else {
        std::env::current_exe()?
    };
    let addrs: Vec<String> = sockets.iter().map(|(a, _)| a.clone()).collect();
    let mappings = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, fd))| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LISTEN_FDS", addrs.len().to_string())
        .env("LISTEN_FDS_FIRST_FD", "3")
        .env_remove("LISTEN_PID")
        .env(ADDRS_ENV, addrs.join(","))
        .env(PREDECESSOR_ENV, std::process::id().to_string());
    cmd.fd_mappings(mappings)
        .map_err(|e| io::Error::other(e.to_string()))?;
    cmd.spawn()
}
