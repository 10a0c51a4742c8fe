//! A fleet on separate hosts: three gateway processes and one Redis, each in a network
//! namespace of its own (`support::netns`), talking over veth links. Propagation of a key and
//! of its revocation to every node, a node cut off from Redis (keeps serving, rate limits by
//! `on_store_error`, converges when the link returns), Redis restarted and flushed under load,
//! an exact fleet-wide rate limit, a rolling restart by SIGUSR2 under load, and the cost of a
//! rate-limit check with Redis 20 ms away.
//!
//! Each test prints what it measured (`cargo test --test it fleet:: -- --nocapture`). Skipped,
//! with a message, where namespaces cannot be made (not root, no iproute2).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::netns::Fleet;
use crate::support::{send, GatewayProcess, Reply};

const TOKEN: &str = "fleet-admin-token-123";
const NODES: usize = 3;

/// A fleet of three nodes serving `extra` beside the common config, or `None` (skip).
struct Nodes {
    fleet: Fleet,
    procs: Vec<GatewayProcess>,
    /// Successors started by SIGUSR2 (not our children): killed on drop.
    successors: Vec<u32>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for pid in &self.successors {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn node_yaml(fleet: &Fleet, i: usize, redis_url: &str) -> String {
    let ip = fleet.node_ip(i);
    format!(
        r#"listen: ["{ip}:8080"]
workers: 1
admin: {{listen: "{ip}:9901", token: {TOKEN}}}
access_log: {{enabled: false}}
redis: {{url: "{redis_url}", timeout: 1s, retry_interval: 200ms}}
consumers: {{store: redis, check_interval: 500ms}}
plans:
  metered: {{rate_limit: {{limits: [{{requests: 100, per: 1m}}], key: consumer, store: redis, on_store_error: deny}}}}
  roomy: {{rate_limit: {{limits: [{{requests: 100000, per: 1m}}], key: consumer, store: redis, on_store_error: local}}}}
services:
  unused: {{targets: [{{url: "http://127.0.0.1:9"}}]}}
routes:
  - name: all
    service: unused
    policies:
      - auth: {{api_key: true}}
      - request_termination: {{status: 200, body: "ok"}}
"#
    )
}

fn start(relay_for_node0: Option<String>) -> Option<Nodes> {
    let mut fleet = match Fleet::create(NODES) {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces for the fleet tests: {why}");
            return None;
        }
    };
    fleet.start_redis();
    let procs = (0..NODES)
        .map(|i| {
            let url = match (&relay_for_node0, i) {
                (Some(relay), 0) => relay.clone(),
                _ => fleet.redis_url(),
            };
            GatewayProcess::spawn_in(Some(&fleet.ns(i)), &node_yaml(&fleet, i, &url), &[])
        })
        .collect();
    Some(Nodes {
        fleet,
        procs,
        successors: Vec::new(),
    })
}

impl Nodes {
    fn url(&self, i: usize) -> String {
        format!("http://{}:8080/", self.fleet.node_ip(i))
    }

    async fn admin(&self, i: usize, method: &str, path: &str, body: Value) -> Reply {
        let url = format!("http://{}:9901{path}", self.fleet.node_ip(i));
        let auth = format!("Bearer {TOKEN}");
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        send(method, &url, &[("authorization", &auth)], body).await
    }

    /// A consumer (with `plan`) and a key, made on node `i`: (consumer id, key id, key).
    async fn consumer(&self, i: usize, name: &str, plan: Option<&str>) -> (String, String, String) {
        let c = self
            .admin(i, "POST", "/consumers", json!({"name": name, "plan": plan}))
            .await;
        assert_eq!(c.status, 201, "{}", c.text());
        let id = c.json()["id"].as_str().unwrap().to_string();
        let (key_id, key) = self.key(i, &id).await;
        (id, key_id, key)
    }

    async fn key(&self, i: usize, id: &str) -> (String, String) {
        let k = self
            .admin(i, "POST", &format!("/consumers/{id}/keys"), json!({}))
            .await;
        assert_eq!(k.status, 201, "{}", k.text());
        let k = k.json();
        (
            k["id"].as_str().unwrap().to_string(),
            k["key"].as_str().unwrap().to_string(),
        )
    }

    async fn status_with(&self, i: usize, key: &str) -> u16 {
        send("GET", &self.url(i), &[("x-api-key", key)], "")
            .await
            .status
            .as_u16()
    }

    /// Asserts that `key` works on every node within a second.
    async fn usable_everywhere(&self, key: &str) {
        for node in 0..NODES {
            let t = self.until(node, key, 200, Duration::from_secs(1)).await;
            assert!(t.is_some(), "the key does not work on node {node}");
        }
    }

    /// How long until `GET /` with `key` answers `want` on node `i` (polling every 5 ms).
    async fn until(&self, i: usize, key: &str, want: u16, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.status_with(i, key).await == want {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_node_a_works_on_b_and_c_within_a_second_and_so_does_its_revocation() {
    let Some(nodes) = start(None) else { return };
    let (id, _, _) = nodes.consumer(0, "acme", None).await;
    let mut reach = Vec::new();
    let mut revoke = Vec::new();
    for _ in 0..5 {
        let (key_id, key) = nodes.key(0, &id).await;
        for node in 1..NODES {
            let t = nodes.until(node, &key, 200, Duration::from_secs(1)).await;
            reach.push(t.unwrap_or_else(|| panic!("key not usable on node {node} within 1s")));
        }
        let r = nodes
            .admin(
                0,
                "DELETE",
                &format!("/consumers/{id}/keys/{key_id}"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        for node in 0..NODES {
            let t = nodes.until(node, &key, 401, Duration::from_secs(1)).await;
            revoke.push(
                t.unwrap_or_else(|| panic!("revoked key still served by node {node} after 1s")),
            );
        }
    }
    let max = |v: &[Duration]| v.iter().max().copied().map_or(0.0, ms);
    println!(
        "fleet propagation over {} samples: key usable on B/C after at most {:.1} ms; revocation refused on A/B/C after at most {:.1} ms",
        reach.len(),
        max(&reach),
        max(&revoke)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_keeps_serving_follows_on_store_error_and_converges_without_restart(
) {
    let Some(nodes) = start(None) else { return };
    let (_, _, plain) = nodes.consumer(0, "plain", None).await;
    let (_, _, metered) = nodes.consumer(0, "metered", Some("metered")).await;
    nodes.usable_everywhere(&metered).await;
    nodes.fleet.cut(2);
    let cut = Instant::now();
    // C keeps its last copy: the key made before the cut works...
    for _ in 0..5 {
        assert_eq!(nodes.status_with(2, &plain).await, 200);
    }
    // ...and the metered consumer's limit, `on_store_error: deny`, refuses with 503 on C only.
    let r = send("GET", &nodes.url(2), &[("x-api-key", &metered)], "").await;
    r.assert_error(503, "rate_limit_unavailable");
    assert_eq!(nodes.status_with(0, &metered).await, 200);
    // A key made during the partition cannot reach C.
    let (id, _, _) = nodes.consumer(0, "late", None).await;
    let (_, late) = nodes.key(1, &id).await;
    assert_eq!(nodes.status_with(1, &late).await, 200);
    // C's /status says its copy is out of step with Redis, and how old it is.
    let cut_seen = loop {
        let s = nodes.admin(2, "GET", "/status", Value::Null).await.json();
        if s["consumers"]["store"]["in_sync"] == false {
            break s;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "C never noticed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let noticed = cut.elapsed();
    assert_eq!(nodes.status_with(2, &late).await, 401);
    nodes.fleet.heal(2);
    let converged = nodes.until(2, &late, 200, Duration::from_secs(5)).await;
    assert!(
        converged.is_some(),
        "C did not converge after the link returned"
    );
    assert_eq!(nodes.status_with(2, &metered).await, 200);
    println!(
        "partition: C noticed after {:.0} ms (store age then {}s); converged {:.0} ms after the link returned",
        ms(noticed),
        cut_seen["consumers"]["store"]["age_seconds"],
        ms(converged.unwrap())
    );
}

/// Requests with one key sent round-robin to every node until `stop`, counted.
struct Load {
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(nodes: &Nodes, key: &str, stop: &Arc<AtomicBool>) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let urls: Vec<String> = (0..NODES).map(|i| nodes.url(i)).collect();
            let (key, stop, ok, failures) = (
                key.to_string(),
                Arc::clone(stop),
                Arc::clone(&ok),
                Arc::clone(&failures),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = worker;
                while !stop.load(Ordering::SeqCst) {
                    let url = &urls[n % urls.len()];
                    n += 1;
                    let r = send("GET", url, &[("x-api-key", &key)], "").await;
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let failure = format!("{url}: {} {}", r.status, r.text());
                        failures.lock().unwrap().push(failure);
                    }
                }
            }));
        }
        Load {
            ok,
            failures,
            tasks,
        }
    }

    /// Waits for `n` more successful requests.
    async fn more(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        while self.ok.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops (after `stop` was set) and asserts that no request failed; the count served.
    async fn finish(self) -> usize {
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        self.ok.load(Ordering::SeqCst)
    }
}

/// How long until consumer `id` is back in Redis (a node wrote its copy back) after the `what`.
async fn written_back(fleet: &Fleet, id: &str, what: &str) -> Duration {
    let start = Instant::now();
    while !fleet
        .redis_cmd(&["HGET", "portico:{consumers}:records", id])
        .is_some_and(|r| r.contains("steady"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the set was not written back after the {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_and_a_flush_fail_no_request_and_the_set_comes_back() {
    let Some(mut nodes) = start(None) else { return };
    let (id, _, key) = nodes.consumer(0, "steady", Some("roomy")).await;
    nodes.usable_everywhere(&key).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&nodes, &key, &stop);
    load.more(50).await;
    nodes.fleet.start_redis(); // kills and starts it again, empty
    let after_restart = written_back(&nodes.fleet, &id, "restart").await;
    load.more(50).await;
    nodes.fleet.redis_cmd(&["FLUSHALL"]);
    let after_flush = written_back(&nodes.fleet, &id, "flush").await;
    load.more(100).await;
    stop.store(true, Ordering::SeqCst);
    let served = load.finish().await;
    // Writes work again and reach every node.
    let (_, fresh) = nodes.key(1, &id).await;
    nodes.usable_everywhere(&fresh).await;
    println!(
        "redis restart: set written back after {:.0} ms; flush: after {:.0} ms; {} requests, none failed",
        ms(after_restart),
        ms(after_flush),
        served
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_over_three_nodes_let_exactly_the_plans_hundred_through() {
    let Some(nodes) = start(None) else { return };
    let (id, _, key) = nodes.consumer(0, "metered", Some("metered")).await;
    // Every node has the consumer (asked on the admin API: a request would use quota).
    for node in 0..NODES {
        let start = Instant::now();
        while nodes
            .admin(node, "GET", &format!("/consumers/{id}"), Value::Null)
            .await
            .status
            != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "node {node} lacks the consumer"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let urls: Arc<Vec<String>> = Arc::new((0..NODES).map(|i| nodes.url(i)).collect());
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (urls, counts, sent, key) = (
            Arc::clone(&urls),
            Arc::clone(&counts),
            Arc::clone(&sent),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n >= 500 {
                    return;
                }
                let r = send("GET", &urls[n % 3], &[("x-api-key", &key)], "").await;
                let mut c = counts.lock().unwrap();
                match r.status.as_u16() {
                    200 => c.0 += 1,
                    429 => c.1 += 1,
                    s => panic!("unexpected {s}: {}", r.text()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (passed, limited) = *counts.lock().unwrap();
    assert_eq!((passed, limited), (100, 400));
    println!("fleet-wide limit: {passed} of 500 requests over 3 nodes passed, {limited} got 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_by_sigusr2_under_load_fails_no_request() {
    let Some(mut nodes) = start(None) else { return };
    let (_, _, key) = nodes.consumer(0, "steady", None).await;
    nodes.usable_everywhere(&key).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&nodes, &key, &stop);
    let procs = std::mem::take(&mut nodes.procs);
    let mut took = Vec::new();
    for mut old in procs {
        load.more(30).await;
        let t = Instant::now();
        old.signal("USR2");
        let line = old.wait_for_line("SIGUSR2: started a successor", Duration::from_secs(10));
        let pid: u32 = line
            .split("successor=")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("successor pid");
        nodes.successors.push(pid);
        old.wait_for_line("took over the listening sockets", Duration::from_secs(20));
        let (code, _old) =
            tokio::task::spawn_blocking(move || (old.wait_exit(Duration::from_secs(20)), old))
                .await
                .unwrap();
        assert_eq!(code, Some(0), "the old process drained and exited");
        took.push(t.elapsed());
    }
    load.more(100).await;
    stop.store(true, Ordering::SeqCst);
    let served = load.finish().await;
    println!(
        "rolling restart: 3 nodes, each handed over in {:?} ms; {} requests, none failed",
        took.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
        served
    );
}

/// A TCP relay on `listen` to `to` that holds every chunk for `one_way` in each direction (this
/// kernel has no netem qdisc): a round trip through it takes two `one_way` more.
async fn delaying_relay(
    listen: std::net::SocketAddr,
    to: std::net::SocketAddr,
    one_way: Duration,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut into: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((at, chunk)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if into.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = into.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind relay");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, one_way));
            tokio::spawn(pipe(sr, cw, one_way));
        }
    });
    addr
}

/// The `q` quantile of `samples` (sorted here).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_20ms_away_a_rate_limited_request_costs_at_most_one_round_trip_more() {
    let rtt = Duration::from_millis(20);
    let Some(mut nodes) = start(None) else { return };
    let relay = delaying_relay(
        (nodes.fleet.store_side_ip(), 0).into(),
        (nodes.fleet.redis_ip(), 6379).into(),
        rtt / 2,
    )
    .await;
    // Node A again, its Redis behind the relay.
    let a = nodes.procs.remove(0);
    drop(a);
    let yaml = node_yaml(&nodes.fleet, 0, &format!("redis://{relay}"));
    let ns = nodes.fleet.ns(0);
    // Blocking (it waits for the log lines) while the relay runs on this runtime: off it.
    let a = tokio::task::spawn_blocking(move || GatewayProcess::spawn_in(Some(&ns), &yaml, &[]))
        .await
        .unwrap();
    nodes.procs.insert(0, a);
    let (_, _, limited) = nodes.consumer(0, "limited", Some("roomy")).await;
    let (_, _, free) = nodes.consumer(0, "free", None).await;
    // Interleaved, so the machine's noise falls on the three alike: a PING through the relay
    // (one round trip to Redis, the reference), a rate-limited request, one without a limit.
    let (mut pings, mut with_limit, mut without) = (Vec::new(), Vec::new(), Vec::new());
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(relay).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let mut buf = [0u8; 16];
        let url = nodes.url(0);
        for _ in 0..200 {
            let t = Instant::now();
            conn.write_all(b"PING\r\n").await.unwrap();
            let n = conn.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"+PONG\r\n");
            pings.push(t.elapsed());
            for (key, out) in [(&limited, &mut with_limit), (&free, &mut without)] {
                let t = Instant::now();
                let r = send("GET", &url, &[("x-api-key", key)], "").await;
                assert_eq!(r.status, 200, "{}", r.text());
                out.push(t.elapsed());
            }
        }
    }
    let round_trip = quantile(&mut pings, 0.99);
    let (p50_l, p99_l) = (
        quantile(&mut with_limit, 0.5),
        quantile(&mut with_limit, 0.99),
    );
    let (p50_f, p99_f) = (quantile(&mut without, 0.5), quantile(&mut without, 0.99));
    let added_p99 = p99_l.saturating_sub(p99_f);
    let added_p50 = p50_l.saturating_sub(p50_f);
    println!(
        "redis {rtt:?} away (PING through the relay: p50 {:.1} ms, p99 {:.1} ms): rate-limited p50 {:.1} ms, p99 {:.1} ms; not limited p50 {:.1} ms, p99 {:.1} ms; added p50 {:.1} ms, p99 {:.1} ms",
        ms(quantile(&mut pings, 0.5)),
        ms(round_trip),
        ms(p50_l), ms(p99_l), ms(p50_f), ms(p99_f), ms(added_p50), ms(added_p99)
    );
    // The relay is in the path (the check pays the round trip)...
    assert!(
        added_p50 >= rtt * 9 / 10,
        "the check did not cross the relay: {added_p50:?}"
    );
    // ...once: not two round trips (two would add over 45 ms; the slack, half a round trip and
    // at least 10 ms, is the debug build's own work and this 2-core machine's noise), and the
    // stored consumer costs none (no per-request lookup).
    assert!(
        added_p99 <= round_trip + (round_trip / 2).max(Duration::from_millis(10)),
        "p99 added {added_p99:?}, a round trip {round_trip:?}"
    );
    assert!(
        p50_f < rtt,
        "a request without a rate limit waited for redis: {p50_f:?}"
    );
}
