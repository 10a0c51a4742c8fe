//! Separate hosts for fleet tests: network namespaces joined by veth pairs and two bridges in
//! the test's own namespace (iproute2's `ip`; the tests run as root, as CI does).
//!
//! Each gateway node gets two links: a client link on the `client` bridge (the test process
//! has an address there and sends its requests to the nodes over it) and a store link on the
//! `store` bridge, where the Redis host is. Cutting a node's store link partitions it from
//! Redis while the test can still reach it. Everything is removed on drop.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Namespaces for `nodes` gateway hosts and one Redis host.
pub struct Fleet {
    tag: String,
    /// Second octet of every address of this fleet.
    net: u8,
    /// Third octet of the client subnet (the store subnet is the next one).
    sub: u8,
    nodes: usize,
    made: Vec<String>,
    redis: Option<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}): install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Fleet {
    /// Makes the namespaces, or says why not (the caller skips the test with that message).
    pub fn create(nodes: usize) -> Result<Fleet, String> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let mut fleet = Fleet {
            tag: format!("pf{}x{n}", pid % 100_000),
            net: 100 + (pid % 100) as u8,
            sub: (2 * (n % 120)) as u8,
            nodes,
            made: Vec::new(),
            redis: None,
        };
        fleet.build()?;
        Ok(fleet)
    }

    fn build(&mut self) -> Result<(), String> {
        let (net, sub, tag) = (self.net, self.sub, self.tag.clone());
        for (bridge, third) in [("bc", sub), ("bs", sub + 1)] {
            let name = format!("{tag}{bridge}");
            ip(&["link", "add", &name, "type", "bridge"])?;
            self.made.push(format!("link:{name}"));
            ip(&["link", "set", &name, "up"])?;
            ip(&[
                "addr",
                "add",
                &format!("10.{net}.{third}.1/24"),
                "dev",
                &name,
            ])?;
        }
        // Hosts 0..nodes are gateways; host `nodes` is Redis (store link only).
        for host in 0..=self.nodes {
            let ns = self.ns(host);
            ip(&["netns", "add", &ns])?;
            self.made.push(format!("netns:{ns}"));
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let links: &[(&str, u8)] = if host < self.nodes {
                &[("c", sub), ("s", sub + 1)]
            } else {
                &[("s", sub + 1)]
            };
            for (side, third) in links {
                let outer = format!("{tag}{side}{host}");
                let inner = format!("{tag}{}{host}", side.to_uppercase());
                ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ])?;
                ip(&["link", "set", &inner, "netns", &ns])?;
                let bridge = format!("{tag}b{side}");
                ip(&["link", "set", &outer, "master", &bridge, "up"])?;
                let addr = format!("10.{net}.{third}.{}/24", 10 + host);
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(())
    }

    /// The namespace of host `i` (`nodes()` is the Redis host).
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address on the client bridge (where it listens).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, self.sub, 10 + i as u8)
    }

    /// The Redis host's address.
    pub fn redis_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, self.sub + 1, 10 + self.nodes as u8)
    }

    /// The test process's own address on the store bridge (for a relay of its own).
    pub fn store_side_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, self.sub + 1, 1)
    }

    /// `redis://REDIS_IP:6379`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}:6379", self.redis_ip())
    }

    /// Cuts node `i` off from Redis (its store link down); the test still reaches it.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &format!("{}s{i}", self.tag), "down"]).expect("link down");
    }

    /// Gives node `i` its store link back.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &format!("{}s{i}", self.tag), "up"]).expect("link up");
    }

    /// Starts (or restarts) Redis on its host and waits for `PING`.
    pub fn start_redis(&mut self) {
        self.kill_redis();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(self.nodes), "redis-server"])
            .args(["--port", "6379", "--bind", &self.redis_ip().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--dir", "/tmp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server");
        self.redis = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.redis_cmd(&["PING"]).is_some_and(|r| r == "+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server in {} did not answer", self.ns(self.nodes));
    }

    /// Kills Redis (SIGKILL).
    pub fn kill_redis(&mut self) {
        if let Some(mut c) = self.redis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command to Redis; the reply's first line, or a bulk string's contents.
    pub fn redis_cmd(&self, args: &[&str]) -> Option<String> {
        super::redis::command((self.redis_ip(), 6379).into(), args)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_redis();
        for thing in self.made.iter().rev() {
            let _ = match thing.split_once(':') {
                Some(("netns", ns)) => ip(&["netns", "del", ns]),
                Some(("link", link)) => ip(&["link", "del", link]),
                _ => Ok(()),
            };
        }
    }
}
