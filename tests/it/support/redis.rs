//! A real `redis-server` for tests, on a free loopback port, with no persistence.
//! `scripts/test` installs the package; the server is killed when the value drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or killed, to be restarted) `redis-server`.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Plain,
    /// A one-node Redis Cluster holding every slot.
    Cluster,
    /// A sentinel monitoring the primary `name` on `port`.
    Sentinel {
        name: String,
        primary: u16,
    },
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_as(Mode::Plain)
    }

    /// A one-node Redis Cluster (every slot on this node), ready when `cluster_state:ok`.
    pub fn start_cluster() -> Self {
        Self::start_as(Mode::Cluster)
    }

    /// A Redis Sentinel monitoring the primary `name` at `127.0.0.1:primary`.
    pub fn start_sentinel(name: &str, primary: u16) -> Self {
        Self::start_as(Mode::Sentinel {
            name: name.to_string(),
            primary,
        })
    }

    fn start_as(mode: Mode) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        // A port freed just now can be taken by someone else before redis binds it: retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = RedisServer {
                port,
                child: None,
                dir,
                mode: mode.clone(),
            };
            if server.launch() {
                return server;
            }
            dir = server.take_dir();
        }
        panic!("redis-server did not start on any of five free ports");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Starts the server on `self.port`; false if it exited (port taken).
    fn launch(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if let Mode::Sentinel { name, primary } = &self.mode {
            // A sentinel rewrites its config file, so it gets one of its own.
            let conf = self.dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {primary} 1\n",
                    self.port,
                    self.dir.path().display()
                ),
            )
            .unwrap();
            command.arg(&conf).arg("--sentinel");
        }
        if let Mode::Cluster = self.mode {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-announce-ip",
                "127.0.0.1",
            ]);
            command
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"));
        }
        let child = command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it (`apt-get install redis-server`; scripts/test does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.try_cmd(&["PING"]).is_some_and(|r| r == "+PONG") && self.ready() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10s",
            self.port
        );
    }

    /// Beyond PING: the cluster serves every slot; the sentinel knows its primary.
    fn ready(&self) -> bool {
        match &self.mode {
            Mode::Plain => true,
            Mode::Cluster => {
                let info = self.cmd(&["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok") {
                    return true;
                }
                if info.contains("cluster_slots_assigned:0") {
                    self.cmd(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
                }
                false
            }
            Mode::Sentinel { name, .. } => {
                self.cmd(&["SENTINEL", "get-master-addr-by-name", name]) == "*2"
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch(),
            "port {} was taken while redis was down",
            self.port
        );
    }

    /// Sends one command; the reply's first line (`+PONG`, `:42`, `$5`...), or for a bulk
    /// string its contents.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis on port {} did not answer {args:?}", self.port))
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        command(([127, 0, 0, 1], self.port).into(), args)
    }

    /// Calls of `command` served since start (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let needle = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        info.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl RedisServer {
    /// Error replies of kind `prefix` (e.g. `NOSCRIPT`) since start (`INFO errorstats`).
    pub fn errors(&self, prefix: &str) -> u64 {
        let info = self.cmd(&["INFO", "errorstats"]);
        let needle = format!("errorstat_{prefix}:count=");
        info.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command to the Redis at `addr`; the reply's first line (`+PONG`, `:42`, `$5`...),
/// or for a bulk string its contents. `None` when it does not answer.
pub fn command(addr: std::net::SocketAddr, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.parse().ok()?;
        if len < 0 {
            return Some(String::new());
        }
        let mut buf = vec![0; len as usize + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len as usize);
        return String::from_utf8(buf).ok();
    }
    Some(line)
}
