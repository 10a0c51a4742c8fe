//! Zero-downtime restart of the real binary under load: SIGUSR2 starts a successor on the same
//! listening sockets, the successor asks the old process to drain, and no client request fails
//! (new connections, keep-alive connections and requests in flight during the switch).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, upstream, GatewayProcess};

/// Kills a process by pid when dropped (the successor is not our child).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

fn pid_in(line: &str, key: &str) -> u32 {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_sockets_to_a_successor_without_failing_a_request() {
    let up = upstream::http1("up")
        .route(
            "/slow",
            upstream::handler(|_req| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                http::Response::new(upstream::full("slow"))
            }),
        )
        .spawn()
        .await;
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nworkers: 2\nservices:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: a}}\n",
        up.url()
    );
    let mut old = GatewayProcess::spawn(&yaml, &[]);
    let addr = old.addr;
    let admin = old.admin.expect("admin API enabled");
    assert_eq!(support::get(&old.admin_url("/healthz")).await.status, 200);
    old.wait_for_line("portico started", Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    // Four clients on a new connection per request, two on keep-alive connections, and one
    // sending slow requests that are in flight when the old process starts draining.
    for kind in ["new", "new", "new", "new", "keepalive", "keepalive", "slow"] {
        let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
        load.push(tokio::spawn(async move {
            let pooled = support::client();
            while !stop.load(Ordering::SeqCst) {
                let result = match kind {
                    "keepalive" => request(&pooled, addr, "/fast", false).await,
                    "slow" => request(&pooled, addr, "/slow", false).await,
                    _ => request(&support::client(), addr, "/fast", true).await,
                };
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{kind}: {e}")),
                }
            }
        }));
    }
    // Let the load reach the old process first.
    while ok.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.signal("USR2");
    let started = old.wait_for_line("SIGUSR2: started a successor", Duration::from_secs(10));
    let _successor = KillOnDrop(pid_in(&started, "successor"));
    old.wait_for_line("took over the listening sockets", Duration::from_secs(20));
    let before_exit = ok.load(Ordering::SeqCst);
    let code = tokio::task::spawn_blocking(move || {
        let code = old.wait_exit(Duration::from_secs(20));
        (code, old)
    })
    .await
    .unwrap();
    let (code, _old) = code;
    assert_eq!(code, Some(0), "the old process drained and exited cleanly");
    // The successor serves the admin API on the socket it was handed (the old process, which
    // bound it exclusively, is gone).
    let status = support::get(&format!("http://{admin}/status")).await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["config"]["revision"], 1, "{}", status.text());
    // The successor alone serves the load for a while.
    let after_exit = ok.load(Ordering::SeqCst);
    while ok.load(Ordering::SeqCst) < after_exit + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok.load(Ordering::SeqCst) + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(before_exit > 50 && after_exit >= before_exit);
}

async fn request(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    addr: std::net::SocketAddr,
    path: &str,
    close: bool,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    if close {
        req = req.header("connection", "close");
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_a_taken_admin_port_fails_to_start_with_a_clear_message() {
    let up = upstream::http1("up").spawn().await;
    let routes = format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: a}}\n",
        up.url()
    );
    let first = GatewayProcess::spawn(&routes, &[]);
    let admin = first.admin.expect("admin API enabled");

    // Before the fix both bound the port with SO_REUSEPORT and the second started silently.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("second.yaml");
    std::fs::write(
        &config,
        support::with_defaults(&format!("admin: {{listen: \"{admin}\"}}\n{routes}")),
    )
    .expect("write config");
    let second = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn portico");
        let _guard = KillOnDrop(child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second gateway kept running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen for the admin API on {admin}: the port is already in use by another process"
        )),
        "{stderr}"
    );
    // The first gateway still owns its admin API.
    assert_eq!(support::get(&first.admin_url("/healthz")).await.status, 200);
}
