//! The dashboard in a real browser: headless Chromium (Debian's `chromium`), driven through
//! `chromedriver`'s W3C WebDriver HTTP API with the test's own hyper client, against the real
//! gateway and real upstreams. The page's own state is read from the DOM (data attributes, table
//! rows, the SVG paths of its charts), polled with a deadline: no sleeps stand in for a signal.
//!
//! Chromium is required: without it these tests fail with the install command (`.ci/run`
//! installs it), they do not skip.
//!
//! The end-to-end test also takes the README's screenshot: it always writes
//! `target/tmp/dashboard.png`, and `docs/dashboard.png` too when `PORTICO_UPDATE_SCREENSHOT=1`
//! (so an ordinary test run leaves the work tree clean).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::{self, send, upstream, TestGateway};
use base64::Engine;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";

// === WebDriver ===

/// A chromedriver process with one Chromium session; both end when this is dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session with a fresh profile.
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "the dashboard tests need headless Chromium at {CHROMIUM} and chromedriver: \
             `apt-get install chromium chromium-driver` (scripts/test installs them)"
        );
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): `apt-get install chromium-driver` \
                     (scripts/test installs it)"
                )
            });
        // "ChromeDriver was started successfully on port 39175."
        let stdout = driver.stdout.take().expect("stdout");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.split("successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
            });
            // Keep draining so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("reader thread")
        .expect("chromedriver printed its port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = tempfile::tempdir().expect("profile dir");
        // The flags this machine's Chromium needs: no sandbox as root, no GPU, and nothing that
        // phones home (the closed network refuses those connections).
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value` (panics on a WebDriver error).
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("http://{}{}", self.addr, path);
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let r = send(
            method,
            &url,
            &[("content-type", "application/json; charset=utf-8")],
            body,
        )
        .await;
        let v = r.json();
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments[0..]` are `args`) in the page; its return value.
    async fn eval(&self, script: &str, args: Value) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, json!({"script": script, "args": args}))
            .await
    }

    /// Evaluates `script` until it returns something truthy; panics with `what` and the last
    /// value after `timeout`.
    async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script, json!([])).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            let state = self.eval(STATE, json!([])).await;
            assert!(
                Instant::now() < deadline,
                "dashboard: {what} not seen within {timeout:?}; page state: {state:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page at 1280 CSS pixels wide (the viewport is grown to the page's
    /// height first, through chromedriver's DevTools passthrough).
    async fn screenshot(&self) -> Vec<u8> {
        let height = self
            .eval("return document.documentElement.scrollHeight", json!([]))
            .await;
        let metrics = json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
            "width": 1280, "height": height.as_u64().unwrap_or(900).clamp(600, 1600),
            "deviceScaleFactor": 1, "mobile": false,
        }});
        let cdp = format!("/session/{}/goog/cdp/execute", self.session);
        self.call("POST", &cdp, metrics).await;
        let path = format!("/session/{}/screenshot", self.session);
        let b64 = self.call("GET", &path, Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; a killed chromedriver alone would orphan it.
        if !self.session.is_empty() {
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            support::raw_blocking(self.addr, req.as_bytes(), Duration::from_secs(10));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the page shows, for failure messages.
const STATE: &str = "const b = document.body; return {
    ticks: b.dataset.ticks, metrics: b.dataset.metrics, auth: b.dataset.auth, rps: b.dataset.rps,
    notice: document.getElementById('notice').textContent,
    routes: [...document.querySelectorAll('#routes tbody tr')].map(r => r.textContent),
    errors: [...document.querySelectorAll('#errors tbody tr')].map(r => r.textContent).slice(0, 3),
};";

// === the tests ===

fn config(api: &str, refused: u16) -> String {
    Config::new()
        .set(
            "admin",
            format!("{{listen: \"127.0.0.1:0\", token: \"{TOKEN}\"}}"),
        )
        .service(Service::new("api").target(api))
        .service(Service::new("gone").target(format!("http://127.0.0.1:{refused}")))
        .route(Route::new("users").path("/users").service("api"))
        .route(Route::new("slow").path("/slow").service("api"))
        .route(Route::new("broken").path("/broken").service("gone"))
        .to_yaml()
}

#[tokio::test]
async fn the_dashboard_shows_live_traffic_errors_and_targets() {
    let api = upstream::http1("api")
        .route(
            "/slow",
            upstream::handler(|_req| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                http::Response::new(upstream::full("slow"))
            }),
        )
        .route("/users/missing", upstream::reply(404, "no such user"))
        .spawn()
        .await;
    let (refused, _guard) = support::refusing_port();
    let gw = TestGateway::start(&config(&api.url(), refused));
    let browser = Browser::start().await;

    // Without the token the page loads but asks for it, and does not poll with nothing.
    browser.open(&gw.admin_url("/")).await;
    browser
        .wait_for(
            "the token form",
            "return document.body.dataset.auth === 'needed' \
             && !document.getElementById('login').hidden",
            Duration::from_secs(20),
        )
        .await;
    // Typed into the form: polling resumes with it.
    browser
        .eval(
            "document.getElementById('token').value = arguments[0]; \
             document.getElementById('login').requestSubmit()",
            json!([TOKEN]),
        )
        .await;
    browser
        .wait_for(
            "a refresh with the typed token",
            "return document.body.dataset.auth === 'ok' && document.body.dataset.ticks > 0 \
                && document.getElementById('login').hidden",
            Duration::from_secs(20),
        )
        .await;
    // `#token=` in a fresh load (the tab forgot the typed one): accepted, and gone from the
    // address bar at once.
    browser.eval("sessionStorage.clear()", json!([])).await;
    browser.open("about:blank").await;
    browser
        .open(&gw.admin_url(&format!("/#token={TOKEN}")))
        .await;
    browser
        .wait_for(
            "the first refresh with the token",
            "return document.body.dataset.auth === 'ok' && document.body.dataset.ticks > 0",
            Duration::from_secs(20),
        )
        .await;
    let href = browser.eval("return location.href", json!([])).await;
    assert!(!href.as_str().unwrap().contains(TOKEN), "{href}");

    // Header from /status, targets from /services.
    let header = browser
        .eval(
            "return [document.getElementById('version').textContent, \
                     document.getElementById('revision').textContent]",
            json!([]),
        )
        .await;
    assert_eq!(header[0], env!("CARGO_PKG_VERSION"));
    assert!(header[1].as_str().unwrap().starts_with("rev 1"), "{header}");
    let targets = browser
        .eval(
            "return [...document.querySelectorAll('#services li')] \
                .map(li => [li.closest('[data-service]').dataset.service, \
                            li.querySelector('.url').textContent, li.dataset.state])",
            json!([]),
        )
        .await;
    assert!(
        targets
            .as_array()
            .unwrap()
            .contains(&json!(["api", api.url(), "healthy"])),
        "{targets}"
    );

    // Traffic until the checks below have passed: 200s, a slower route, 404s and 502s.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = Arc::clone(&stop);
        let (users, slow, missing, broken) = (
            gw.url("/users/1"),
            gw.url("/slow"),
            gw.url("/users/missing"),
            gw.url("/broken"),
        );
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = vec![support::get(&users), support::get(&users)];
                if n.is_multiple_of(2) {
                    batch.push(support::get(&slow));
                }
                if n.is_multiple_of(5) {
                    batch.push(support::get(&missing));
                }
                if n.is_multiple_of(7) {
                    batch.push(support::get(&broken));
                }
                for reply in batch {
                    reply.await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let long = Duration::from_secs(30);
    browser
        .wait_for(
            "metrics from GET /metrics",
            "return document.body.dataset.metrics === 'ok'",
            long,
        )
        .await;
    let rps = browser
        .wait_for(
            "requests/s above zero",
            "return Number(document.body.dataset.rps) > 0 \
             && document.getElementById('rps').textContent",
            long,
        )
        .await;
    assert!(rps.as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{rps}");
    browser
        .wait_for(
            "the routes users, slow and broken in the table",
            "const r = [...document.querySelectorAll('#routes tbody tr')].map(t => t.dataset.route); \
             return ['users', 'slow', 'broken'].every(n => r.includes(n))",
            long,
        )
        .await;
    browser
        .wait_for(
            "a 502 of the broken route among the recent errors",
            "return [...document.querySelectorAll('#errors tbody tr[data-status=\"502\"]')] \
                .some(tr => tr.textContent.includes('/broken'))",
            long,
        )
        .await;
    browser
        .wait_for(
            "a 5xx and a 4xx share above zero",
            "const t = s => document.querySelector(`#routes tr[data-route=\"${s}\"]`); \
             return t('broken').children[3].textContent.startsWith('100') \
                && document.getElementById('rate5xx').textContent !== '–' \
                && parseFloat(document.getElementById('rate4xx').textContent) > 0",
            long,
        )
        .await;
    browser
        .wait_for(
            "latency percentiles, the slow route's p50 of at least 25 ms",
            "const p = document.querySelector('#routes tr[data-route=\"slow\"]').children[5]; \
             return p.textContent.endsWith(' ms') && parseFloat(p.textContent) >= 25 \
                && document.getElementById('p99').textContent !== '–'",
            long,
        )
        .await;
    browser
        .wait_for(
            "the api service's upstream latency",
            "const l = document.querySelector('[data-service=\"api\"] .latency'); \
             return l && l.textContent.startsWith('upstream p50 ')",
            long,
        )
        .await;
    // The charts move: their lines gain points with every refresh.
    let points = "return ['chart-rps', 'chart-errors', 'chart-latency'].map(id => \
        Math.max(...[...document.querySelectorAll(`#${id} path`)].map(p => +p.dataset.points)))";
    let before = browser.eval(points, json!([])).await;
    let grown = format!(
        "const before = {before}; const now = (() => {{ {} }})(); \
         return now.every((n, i) => n >= 3 && n > before[i]) && now",
        points.trim_end_matches(';')
    );
    browser
        .wait_for("every chart gaining points", &grown, long)
        .await;
    // Selecting a route charts that route.
    browser
        .eval(
            "document.querySelector('#routes tr[data-route=\"slow\"]').click()",
            json!([]),
        )
        .await;
    let scope = browser
        .eval(
            "return document.getElementById('scope').textContent",
            json!([]),
        )
        .await;
    assert_eq!(scope, "route slow");
    browser
        .eval("document.getElementById('all').click()", json!([]))
        .await;

    // A screenshot with some history on the charts; the README's copy gets half a minute.
    let update = std::env::var_os("PORTICO_UPDATE_SCREENSHOT").is_some_and(|v| v == "1");
    let history = if update { 30 } else { 10 };
    browser
        .wait_for(
            &format!("{history} points on the requests/s chart"),
            &format!(
                "return +document.querySelector('#chart-rps path').dataset.points >= {history}"
            ),
            Duration::from_secs(history + 30),
        )
        .await;
    let png = browser.screenshot().await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&tmp, &png).expect("write screenshot");
    if update {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::write(docs, &png).expect("write docs/dashboard.png");
    }
}

/// The page's parser and arithmetic (`/dashboard/metrics.js`), run by Chromium on fixtures:
/// exposition-format details, counter resets and histogram_quantile's interpolation.
#[tokio::test]
async fn the_metrics_code_parses_and_computes_like_prometheus() {
    let gw = TestGateway::start(
        "services:\n  a: {targets: [{url: \"http://127.0.0.1:1\"}]}\n\
         routes:\n  - name: a\n    match: {path: /a}\n    service: a\n",
    );
    let browser = Browser::start().await;
    browser.open(&gw.admin_url("/")).await;
    browser
        .wait_for(
            "the page script",
            "return typeof PorticoMetrics === 'object'",
            Duration::from_secs(20),
        )
        .await;

    // OpenMetrics flavour: TYPE without `_total`, escaped quotes and commas in a label, a
    // timestamp, +Inf and NaN values, # EOF.
    let text = "# HELP portico_requests Requests.\n\
        # TYPE portico_requests counter\n\
        portico_requests_total{route=\"a\",service=\"s\",method=\"GET\",status_class=\"2xx\"} 90\n\
        portico_requests_total{route=\"we\\\"ird, {x}\",service=\"s\",method=\"GET\",status_class=\"5xx\"} 10 1700000000000\n\
        portico_requests_total{route=\"a\",service=\"s\",method=\"GET\",status_class=\"4xx\"} 0\n\
        portico_request_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 50\n\
        portico_request_duration_seconds_bucket{route=\"a\",le=\"0.2\"} 90\n\
        portico_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 100\n\
        portico_request_duration_seconds_sum{route=\"a\"} 12.5\n\
        portico_request_duration_seconds_count{route=\"a\"} 100\n\
        odd_value NaN\n\
        portico_connections_active{side=\"client\"} 7\n\
        # EOF\n";
    let parsed = browser
        .eval("return PorticoMetrics.parse(arguments[0])", json!([text]))
        .await;
    let samples = parsed.as_array().unwrap();
    assert_eq!(samples.len(), 10, "{parsed:#}");
    assert_eq!(samples[1]["labels"]["route"], "we\"ird, {x}");
    assert_eq!(samples[1]["value"], 10);
    // JSON has no NaN: WebDriver hands it back as null.
    assert_eq!(samples[8]["name"], "odd_value");
    assert_eq!(samples[8]["value"], Value::Null);

    // histogram_quantile: rank 50 of 100 ends bucket (0, 0.1]; rank 95 is in (0.2, +Inf], so
    // the largest finite bound; rank 70 is halfway into (0.1, 0.2].
    let q = browser
        .eval(
            "const l = [[0.1, 50], [0.2, 90], [Infinity, 100]]; \
             return [0.5, 0.7, 0.95].map(q => PorticoMetrics.quantile(q, l)) \
                .concat([PorticoMetrics.quantile(0.5, [[0.1, 0], [Infinity, 0]])])",
            json!([]),
        )
        .await;
    let q: Vec<Option<f64>> = serde_json::from_value(q).unwrap();
    assert_eq!(q[0], Some(0.1));
    assert!((q[1].unwrap() - 0.15).abs() < 1e-9, "{q:?}");
    assert_eq!(q[2], Some(0.2));
    assert_eq!(q[3], None, "no observations, no quantile");

    // Rates between snapshots 2 s apart: 20 more 2xx and 10 more 5xx on route a, whose
    // histogram grew by 30 observations all in (0.1, 0.2]. Then a restart: counters start over.
    let later = text
        .replace("status_class=\"2xx\"} 90", "status_class=\"2xx\"} 110")
        .replace("route=\"a\",le=\"0.2\"} 90", "route=\"a\",le=\"0.2\"} 120")
        .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 130")
        .replace("_count{route=\"a\"} 100", "_count{route=\"a\"} 130")
        .replace(
            "portico_requests_total{route=\"a\",service=\"s\",method=\"GET\",status_class=\"4xx\"} 0",
            "portico_requests_total{route=\"a\",service=\"s\",method=\"GET\",status_class=\"4xx\"} 0\n\
             portico_requests_total{route=\"a\",service=\"s\",method=\"POST\",status_class=\"5xx\"} 10",
        );
    let restarted =
        "portico_requests_total{route=\"a\",service=\"s\",method=\"GET\",status_class=\"2xx\"} 4\n\
        portico_request_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 4\n\
        portico_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 4\n\
        portico_request_duration_seconds_count{route=\"a\"} 4\n";
    let r = browser
        .eval(
            "const M = PorticoMetrics; const s = t => M.snapshot(M.parse(t)); \
             const [a, b, c] = [...arguments].map(s); \
             return [M.rates(a, b, 2), M.rates(b, c, 1)]",
            json!([text, later, restarted]),
        )
        .await;
    let (up, reset) = (&r[0], &r[1]);
    assert_eq!(up["total"]["requests"], 30, "{up:#}");
    assert_eq!(up["total"]["rps"], 15);
    let share = up["routes"]["a"]["rate5xx"].as_f64().unwrap();
    assert!((share - 1.0 / 3.0).abs() < 1e-9, "{up:#}");
    assert_eq!(up["routes"]["a"]["rate4xx"], 0);
    // All 30 new observations are in (0.1, 0.2]: the median is halfway in.
    assert!((up["routes"]["a"]["p50"].as_f64().unwrap() - 0.15).abs() < 1e-9);
    assert_eq!(up["total"]["p99"], up["routes"]["a"]["p99"]);
    assert_eq!(
        up["services"],
        json!({}),
        "no upstream histogram in the fixture"
    );
    // The restarted process: 4 requests, not 4 - 110.
    assert_eq!(reset["total"]["requests"], 4, "{reset:#}");
    assert_eq!(reset["total"]["rps"], 4);
    assert!((reset["total"]["p50"].as_f64().unwrap() - 0.05).abs() < 1e-9);
    // Without traffic there is no error share (not 0 %) and no latency.
    let idle = browser
        .eval(
            "const M = PorticoMetrics; const a = M.snapshot(M.parse(arguments[0])); \
             return M.rates(a, a, 1).total",
            json!([text]),
        )
        .await;
    assert_eq!(idle["rps"], 0);
    assert_eq!(idle["rate5xx"], Value::Null);
    assert_eq!(idle["p50"], Value::Null);
}

/// The page's files are public (the page asks for the token itself) and sent with a strict
/// content security policy; the API behind them still needs the token.
#[tokio::test]
async fn the_dashboard_files_are_served_without_the_token_and_the_api_is_not() {
    let gw = TestGateway::start(&config("http://127.0.0.1:1", 1));
    let page = support::get(&gw.admin_url("/")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page
        .header("content-security-policy")
        .contains("script-src 'self'"));
    assert!(!page.text().contains(TOKEN));
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/metrics.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let r = support::get(&gw.admin_url(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").starts_with(kind), "{path}");
        assert!(page.text().contains(path), "index.html links {path}");
    }
    assert_eq!(support::get(&gw.admin_url("/status")).await.status, 401);
    assert_eq!(
        support::get(&gw.admin_url("/dashboard/other.js"))
            .await
            .status,
        401
    );
    let post = send("POST", &gw.admin_url("/"), &[], "").await;
    assert_eq!(post.status, 405);
}
