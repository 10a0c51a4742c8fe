//! What an operator sets and reads around the traffic (issue 15, items 6 and 7): the
//! application log's format and colour on the real binary, and `0` meaning "no limit" where a
//! limit can sensibly be off (or the error saying how to write "unlimited" where it cannot).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::{self, upstream, TestGateway};

/// A config with one route to `up`, on a free port, with the harness defaults.
fn routes(up: &str) -> String {
    Config::new()
        .service(Service::new("up").target(up))
        .route(Route::new("r").service("up"))
        .to_yaml()
}

/// Writes `yaml` (with the harness defaults) to a temp file.
fn config_file(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portico.yaml");
    std::fs::write(&path, support::with_defaults(yaml)).expect("write config");
    (dir, path)
}

/// Kills the child when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `portico run` on `config` with stderr piped (not a terminal) and `env`; returns the
/// stderr lines up to and including the first that contains `until`.
fn run_until(config: &std::path::Path, env: &[(&str, &str)], until: &str) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Running(cmd.spawn().expect("spawn portico"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line with {until:?} in {lines:#?}"));
        let done = line.contains(until);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line_with_time_level_message_and_fields() {
    let up = upstream::http1("up").spawn().await;
    let (_dir, config) = config_file(&format!("log_format: json\n{}", routes(&up.url())));
    let lines = tokio::task::block_in_place(|| run_until(&config, &[], "portico started"));
    assert!(lines.len() >= 3, "{lines:#?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
    let started: serde_json::Value =
        serde_json::from_str(lines.last().expect("a line")).expect("json");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["message"], "portico started");
    assert_eq!(started["routes"], 1, "{started}");
    assert!(started["pid"].is_u64(), "{started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_log_has_no_colour_when_stderr_is_not_a_terminal() {
    let up = upstream::http1("up").spawn().await;
    let (_dir, config) = config_file(&routes(&up.url()));
    // NO_COLOR is removed: only "not a terminal" may turn the colour off here.
    let lines = tokio::task::block_in_place(|| run_until(&config, &[], "portico started"));
    let text = lines.join("\n");
    assert!(text.contains(" INFO "), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a pipe: {text:?}");
}

/// Runs `portico run` under a pseudo-terminal (`script`) on a config whose listen port is taken,
/// so the process logs its first lines and exits at once; returns what the terminal showed.
fn run_at_a_terminal(no_color: Option<&str>) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (_dir, config) = config_file(&format!(
        "listen: [\"127.0.0.1:{port}\"]\nservices:\n  up: {{targets: [{{url: \"http://127.0.0.1:1\"}}]}}\nroutes:\n  - {{name: r, service: up}}\n"
    ));
    let command = format!(
        "{} run --config {}",
        env!("CARGO_BIN_EXE_portico"),
        config.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run script(1)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("admin API at"), "{text:?}");
    assert!(text.contains("already in use"), "{text:?}");
    text
}

#[test]
fn the_text_log_is_coloured_at_a_terminal_unless_no_color_is_set() {
    assert!(
        run_at_a_terminal(None).contains("\u{1b}["),
        "no colour at a terminal"
    );
    let plain = run_at_a_terminal(Some("1"));
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

// === 0 means "no limit" ===

#[tokio::test]
async fn max_body_bytes_zero_means_no_limit_globally_and_per_route() {
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&format!(
        "limits: {{max_body_bytes: 0}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: open, match: {{path: /open}}, service: up}}\n  - {{name: small, match: {{path: /small}}, service: up, max_body_bytes: 1KiB}}\n",
        up.url()
    ));
    // Above the 10 MiB default: accepted whole.
    let big = vec![b'x'; 11 * 1024 * 1024];
    let r = support::send("POST", &gw.url("/open"), &[], big.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], big.len());
    support::send("POST", &gw.url("/small"), &[], vec![b'x'; 2048])
        .await
        .assert_error(413, "payload_too_large");

    // A route's own 0 lifts a global limit.
    let gw = TestGateway::start(&format!(
        "limits: {{max_body_bytes: 1KiB}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: open, match: {{path: /open}}, service: up, max_body_bytes: 0}}\n  - {{name: rest, service: up}}\n",
        up.url()
    ));
    let r = support::send("POST", &gw.url("/open"), &[], vec![b'x'; 64 * 1024]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    support::send("POST", &gw.url("/other"), &[], vec![b'x'; 2048])
        .await
        .assert_error(413, "payload_too_large");
}

#[test]
fn max_connections_zero_means_no_limit_and_explain_says_unlimited() {
    let yaml = support::with_defaults(
        "limits: {max_connections: 0, max_body_bytes: 0}\nservices:\n  up: {targets: [{url: \"http://127.0.0.1:1\"}]}\nroutes:\n  - {name: r, service: up}\n",
    );
    let plan = portico::config::load_str(&yaml, "t.yaml", &portico::config::expand::ProcessEnv)
        .expect("valid");
    assert_eq!(plan.plan.limits.max_connections, usize::MAX);
    assert_eq!(plan.plan.routes[0].max_body_bytes, u64::MAX);
    let explained = portico::explain::explain(&plan, "POST", "http://a/x", &[]).expect("explain");
    assert!(explained.contains("max body unlimited"), "{explained}");
}

#[test]
fn where_a_limit_cannot_be_off_the_error_says_what_to_write() {
    let yaml = support::with_defaults(
        "services:\n  up:\n    targets: [{url: \"http://127.0.0.1:1\"}]\n    max_concurrent_requests: 0\n    timeouts: {request: 0s}\nroutes:\n  - {name: r, service: up, timeout: 0ms}\n",
    );
    let errors = portico::config::load_str(&yaml, "t.yaml", &portico::config::expand::ProcessEnv)
        .err()
        .expect("invalid")
        .to_string();
    for (path, advice) in [
        (
            "services.up.max_concurrent_requests",
            "leave the key out for no limit",
        ),
        (
            "services.up.timeouts.request",
            "a timeout cannot be off; the longest accepted is 365d",
        ),
        (
            "routes[0].timeout",
            "a timeout cannot be off; the longest accepted is 365d",
        ),
    ] {
        assert!(
            errors
                .lines()
                .any(|l| l.contains(&format!("{path}: ")) && l.contains(advice)),
            "{path}: {advice:?} not in\n{errors}"
        );
    }
}

#[test]
fn a_transformed_body_cannot_be_unlimited_and_the_error_says_so() {
    for size in ["0", "65MiB"] {
        let yaml = support::with_defaults(&format!(
            "services:\n  up: {{targets: [{{url: \"http://127.0.0.1:1\"}}]}}\nroutes:\n  - name: r\n    service: up\n    policies:\n      - transform:\n          request:\n            body: {{set: {{/x: 1}}, max_bytes: {size}}}\n"
        ));
        let errors =
            portico::config::load_str(&yaml, "t.yaml", &portico::config::expand::ProcessEnv)
                .err()
                .expect("invalid")
                .to_string();
        assert_eq!(errors.lines().count(), 1, "{errors}");
        assert!(
            errors.contains(
                "routes[0].policies[0].transform.request.body.max_bytes: must be between 1 and \
                 64MiB: a transformed body is buffered whole, so there is no unlimited"
            ),
            "{size}: {errors}"
        );
    }
}
