//! `portico demo` as a user runs it: the real binary, its printed token and commands, and the
//! answers of the JWT and API-key routes with and without credentials.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::send;

/// Kills the demo process this test started when the test ends, pass or fail.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `portico demo` on a free port; its stdout lines arrive on the receiver.
fn start_demo() -> (Demo, mpsc::Receiver<String>) {
    start_demo_with(&[])
}

/// `start_demo` with extra arguments.
fn start_demo_with(extra: &[&str]) -> (Demo, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn portico demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Demo(child), rx)
}

#[tokio::test]
async fn the_demo_prints_a_working_token_and_protects_its_jwt_and_api_key_routes() {
    let (_demo, rx) = start_demo();
    // Read the banner up to the last printed command.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("demo banner");
        let last = line.contains("curl -si") && line.contains("/partner/products");
        lines.push(line);
        if last {
            break;
        }
    }
    let text = lines.join("\n");
    let base = text
        .split("Portico demo gateway on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("base URL")
        .to_string();
    // The printed dashboard URL serves the page (the admin listener of this demo).
    let dashboard = text
        .split("dashboard: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("dashboard URL");
    let page = support::get(dashboard).await;
    assert_eq!(page.status, 200, "{dashboard}");
    assert!(
        page.text().contains("<title>Portico dashboard"),
        "{}",
        page.text()
    );
    let token_line = lines
        .iter()
        .position(|l| l.starts_with("demo JWT"))
        .expect("token line");
    let token = lines[token_line + 1].trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(
        text.contains(&format!("authorization: Bearer {token}")),
        "{text}"
    );

    // The JWT route with the printed token: the backend sees who called.
    let auth = format!("Bearer {token}");
    let r = send(
        "GET",
        &format!("{base}/secure/users/echo"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-consumer-name"], "ada", "{echo}");
    assert_eq!(echo["headers"]["x-user-id"], "ada", "{echo}");
    let r = send(
        "GET",
        &format!("{base}/secure/users"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Ada Lovelace"), "{}", r.text());

    // Without it: 401 with a Bearer challenge.
    let r = send("GET", &format!("{base}/secure/users"), &[], "").await;
    r.assert_error(401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"portico-demo\""
    );
    // A token of another key (or tampered) is refused.
    let tampered = format!("Bearer {}x", token);
    let r = send(
        "GET",
        &format!("{base}/secure/users"),
        &[("authorization", tampered.as_str())],
        "",
    )
    .await;
    r.assert_error(401, "unauthorized");

    // The API-key route.
    let r = send(
        "GET",
        &format!("{base}/partner/products"),
        &[("x-api-key", portico::demo::DEMO_API_KEY)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send("GET", &format!("{base}/partner/products"), &[], "").await;
    r.assert_error(401, "unauthorized");
}

/// Every curl command the demo prints, run as printed (through `sh`), answers with the status
/// its comment promises; the aggregation and versioning ones also show what they say.
/// Fails in one line naming the package when curl is missing (instead of a shell's exit 127
/// on the first printed command).
fn require_curl() {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the demo tests run the printed commands with curl: `apt-get install curl` \
         (scripts/test installs it)"
    );
}

#[test]
fn every_printed_curl_command_works_as_printed() {
    require_curl();
    let (_demo, rx) = start_demo();
    // (comment, command) pairs, up to the last printed command.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut comment = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo banner")
            .trim()
            .to_string();
        if let Some(c) = line.strip_prefix("# ") {
            comment = c.to_string();
        } else if line.starts_with("curl ")
            || line.starts_with("for ")
            || line.starts_with("sleep ")
        {
            let last = line.contains("/limited/");
            pairs.push((comment.clone(), line));
            if last {
                break;
            }
        }
    }
    assert!(pairs.len() >= 8, "{pairs:?}");
    for needle in ["/api/profile/1", "/v1/catalog/2", "/v2/catalog/2"] {
        assert!(
            pairs.iter().any(|(_, c)| c.contains(needle)),
            "no printed command for {needle}: {pairs:?}"
        );
    }
    for (comment, command) in pairs {
        if command.contains("x-cache") {
            // The cache loop prints the X-Cache header of two requests.
            let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            let seen: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(
                seen,
                ["x-cache:", "miss", "x-cache:", "hit"],
                "{comment}: {command}"
            );
            continue;
        }
        if command.starts_with("for ") || command.starts_with("sleep ") {
            // The loops print one status per request.
            let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
            let statuses = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let expected = if command.contains("/limited/") {
                "200 200 200 200 200 429 429"
            } else if command.contains("x-demo-heal") {
                "200 200 200"
            } else if command.contains("/unstable") {
                "500 500 500 503 503 503"
            } else {
                "200 200 200 200 200 200"
            };
            assert_eq!(statuses, expected, "{comment}: {command}");
            continue;
        }
        if command.contains("/api/profile/") || command.contains("/catalog/") {
            check_aggregate_or_version(&comment, &command);
        }
        if command.contains("/plugin/") {
            check_plugin(&comment, &command);
        }
        let expected = if comment.contains("405") {
            405
        } else if comment.contains("400") {
            400
        } else if comment.contains("404") {
            404
        } else if comment.contains("401") {
            401
        } else if comment.contains("403") {
            403
        } else if comment.starts_with("Create") {
            201
        } else {
            200
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{command} -o /dev/null -w '%{{http_code}}'"))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(status, expected.to_string(), "{comment}: {command}");
    }
}

/// Runs a printed plugin command and checks the headers the demo's filter adds.
fn check_plugin(comment: &str, command: &str) {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    if command.contains("x-demo-tenant") {
        assert!(text.contains("x-plugin: tenant-gate"), "{comment}: {text}");
        assert!(text.contains("\"x-tenant\""), "{comment}: {text}");
    } else {
        assert!(text.contains("refused_by_plugin"), "{comment}: {text}");
    }
}

/// Runs a printed aggregation or versioning command and checks what it shows.
fn check_aggregate_or_version(comment: &str, command: &str) {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lower = text.to_ascii_lowercase();
    if command.contains("/api/profile/1") {
        // Ada (user 1), her one order (100, products 1 and 3), and those two products: the
        // second and third calls used values from the earlier answers.
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(
            v["user"],
            serde_json::json!({"id": 1, "name": "Ada Lovelace"}),
            "{comment}"
        );
        let orders = v["orders"]["items"].as_array().expect(&text);
        assert_eq!(orders.len(), 1, "{text}");
        assert_eq!(orders[0]["id"], 100, "{text}");
        let names: Vec<&str> = v["products"]["items"]
            .as_array()
            .expect(&text)
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Keyboard", "Mouse"], "{text}");
        assert!(v.get("errors").is_none(), "{text}");
    } else if command.contains("/v1/catalog/2") {
        assert!(
            lower.contains("\r\ndeprecation: @1767225600"),
            "{comment}: {text}"
        );
        assert!(
            lower.contains("\r\nsunset: thu, 31 dec 2026"),
            "{comment}: {text}"
        );
        assert!(text.contains("\"price\":199.0"), "{text}");
    } else if command.contains("/v2/catalog/2") {
        assert!(!lower.contains("deprecation:"), "{comment}: {text}");
        assert!(text.contains("\"currency\":\"EUR\""), "{text}");
    }
}

/// `portico demo --tls`: HTTPS with the self-signed certificate it made; the printed commands
/// (curl with `--cacert`) work as printed, HTTP/2 included.
#[test]
fn the_tls_demo_serves_https_and_its_printed_commands_work() {
    require_curl();
    let (_demo, rx) = start_demo_with(&["--tls", "--tls-listen", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo banner")
            .trim()
            .to_string();
        let last = line.contains("--http2");
        lines.push(line);
        if last {
            break;
        }
    }
    let banner = lines
        .iter()
        .find(|l| l.starts_with("Portico demo gateway on https://"))
        .expect("an https banner");
    assert!(banner.contains("self-signed certificate"), "{banner}");
    let commands: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 8, "{lines:?}");
    for command in &commands {
        assert!(
            command.contains("--cacert ") && command.contains("https://"),
            "{command}"
        );
    }
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = commands.iter().find(|c| c.ends_with("/api/users")).unwrap();
    assert!(run(list).contains("Ada Lovelace"));
    let echo = commands
        .iter()
        .find(|c| c.contains("x-request-id: demo-123"))
        .unwrap();
    assert!(
        run(echo).contains("\"x-forwarded-proto\":\"https\""),
        "{}",
        run(echo)
    );
    let h2 = commands.iter().find(|c| c.contains("--http2")).unwrap();
    assert!(run(h2).starts_with("HTTP/2 200"), "{}", run(h2));
}
