//! The `wasm` policy over real sockets: proxy-wasm filters (written in the WebAssembly text
//! format under `tests/plugins/wat/`, compiled here with the `wat` crate) on real requests to
//! real upstreams.

use crate::support::config::{Config, Route, Service};
#[allow(unused_imports)]
use crate::support::{get, seen, send, upstream, TestGateway};

/// Compiles `tests/plugins/wat/NAME.wat` (or the text given) to a `.wasm` file and returns its
/// path.
fn module_from(name: &str, text: &str) -> String {
    let bytes = wat::parse_str(text).unwrap_or_else(|e| panic!("{name}.wat: {e}"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

fn module(name: &str) -> String {
    let file = format!(
        "{}/tests/plugins/wat/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    module_from(name, &text)
}

/// One route `r` on service `a` (the upstream) with a `wasm` policy with `settings` added to
/// the module's path.
fn config(up: &str, module: &str, settings: &str) -> String {
    let policy = format!("{{module: {module:?}{settings}}}");
    Config::new()
        .service(Service::new("a").target(up))
        .route(Route::new("r").service("a").policy("wasm", policy))
        .to_yaml()
}

#[tokio::test]
async fn smoke() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("smoke"), ""));
    let r = get(&gw.url("/hello?x=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-smoke"), ["yes"], "{echo}");
    assert_eq!(seen(&echo, "x-path"), ["/hello?x=1"], "{echo}");
    assert_eq!(r.header("x-smoke"), "yes");
}

/// The filter built with a real SDK (AssemblyScript, `tests/plugins/assemblyscript/`).
fn tenant_gate() -> String {
    format!(
        "{}/tests/plugins/assemblyscript/tenant-gate.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn a_filter_built_with_the_assemblyscript_sdk_refuses_and_adds_headers() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &tenant_gate(),
        ", configuration: '{\"header\": \"x-tenant-id\"}'",
    ));
    let r = get(&gw.url("/orders")).await;
    let body = r.assert_error(403, "refused_by_plugin");
    assert!(
        body["message"].as_str().unwrap().contains("tenant"),
        "{body}"
    );
    assert_eq!(up.hits(), 0);
    let r = send("GET", &gw.url("/orders"), &[("x-tenant-id", "acme")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-tenant"), ["acme"]);
    assert_eq!(r.header("x-plugin"), "tenant-gate");
}
