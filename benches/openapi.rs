//! Cost of the `openapi` policy's request check as the gateway runs it: the operation looked
//! up, five parameters (path, two query, header, cookie) read and checked, and a 1 KiB JSON body
//! parsed and checked against its schema; the lookup alone beside it. Also the compile of a
//! large real spec (DigitalOcean's, 659 operations in 2,900 files) at config load, when its
//! tarball can be unpacked.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Method;
use portico::policy::openapi::{Lookup, OpenApiPolicy, RawOpenApi};
use serde_json::json;

fn raw(spec: &str) -> RawOpenApi {
    serde_yaml_ng::from_str(&format!("{{spec: {spec:?}}}")).expect("raw")
}

/// An order of about `bytes` bytes.
fn order(bytes: usize) -> Vec<u8> {
    let mut items = Vec::new();
    loop {
        let i = items.len();
        items.push(
            json!({"sku": format!("SKU-{i:06}"), "qty": i + 1, "price": 9.5 + i as f64,
                          "tags": ["home", "light"]}),
        );
        let doc = json!({"customer": {"name": "Ann Example", "email": "ann@example.com"},
                         "currency": "EUR", "note": null, "items": items});
        let out = serde_json::to_vec(&doc).unwrap();
        if out.len() >= bytes {
            return out;
        }
    }
}

/// The order operation and its path variables.
fn find(api: &OpenApiPolicy) -> (usize, Vec<(&str, String)>) {
    match api.find(&Method::POST, "/stores/42/orders") {
        Lookup::Found(i, vars) => (i, vars),
        other => panic!("{other:?}"),
    }
}

fn request_check(c: &mut Criterion) {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/openapi-spec.yaml");
    let api = OpenApiPolicy::build(&raw(spec)).expect("spec");
    let req = http::Request::post("/stores/42/orders?limit=10&mode=fast")
        .header("content-type", "application/json")
        .header("x-tenant", "acme-eu")
        .header("cookie", "theme=dark; session=0123456789abcdef")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let body = order(1024);
    let (i, vars) = find(&api);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert!(api
        .check_buffered(&api.operations[i], &parts, &vars, &body)
        .is_empty());

    let mut g = c.benchmark_group("openapi");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("lookup", |b| b.iter(|| find(&api)));
    g.bench_function("five_params_and_1KiB_body", |b| {
        b.iter(|| {
            let (i, vars) = find(&api);
            let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
            api.check_buffered(&api.operations[i], &parts, &vars, &body)
        })
    });
    // What the `openapi` peers profile pays per request: GET /small, its two optional
    // parameters absent.
    let small = http::Request::get("/small")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    g.bench_function("lookup_and_absent_params", |b| {
        b.iter(|| match api.find(&Method::GET, "/small") {
            Lookup::Found(i, _) => api.check_params(&api.operations[i], &small, &[]),
            other => panic!("{other:?}"),
        })
    });
    // The operation's request counter (resolved on the first request).
    let metrics = portico::telemetry::metrics::Metrics::new();
    let route = metrics.route(&"all".into(), &"origin".into());
    let op = api.operations[i].id.clone();
    let count = api.operations.len();
    g.bench_function("operation_metric", |b| {
        b.iter(|| route.operation(i, count, &op, 200))
    });
    g.finish();
}

fn large_spec_compile(c: &mut Criterion) {
    let tarball = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/digitalocean.tar.gz"
    );
    let dir = std::env::temp_dir().join(format!("portico-bench-do-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("tar")
        .args(["xzf", tarball, "-C"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("tar could not unpack {tarball}: large_spec_compile skipped");
        return;
    }
    let spec = dir.join("specification/DigitalOcean-public.v2.yaml");
    let raw = raw(spec.to_str().unwrap());
    let mut g = c.benchmark_group("openapi_compile");
    g.sample_size(10);
    g.bench_function("digitalocean_659_operations", |b| {
        b.iter(|| OpenApiPolicy::build(&raw).expect("compiles"))
    });
    g.finish();
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

criterion_group!(benches, request_check, large_spec_compile);
criterion_main!(benches);
