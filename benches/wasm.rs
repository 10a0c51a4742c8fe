//! Cost of a proxy-wasm callback: `on_request_headers` of a filter that does nothing (the
//! call into the instance: lock, deadline, entry and exit), and of the benchmark profile's
//! filter, which reads one header and sets one (two host calls, the value copied into the
//! filter's memory). The difference is what the host calls cost.

use criterion::{criterion_group, criterion_main, Criterion};
use portico::policy::wasm::BenchHarness;

const EMPTY: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

fn callbacks(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wat");
    std::fs::write(&empty, EMPTY).unwrap();
    let header = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/wasm-header.wat");
    let mut group = c.benchmark_group("wasm_on_request_headers");
    for (name, path) in [
        ("empty", empty.to_str().unwrap()),
        ("get_and_set_header", header),
    ] {
        let mut harness = BenchHarness::new(path).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", http::HeaderValue::from_static("wrk"));
        headers.insert("accept", http::HeaderValue::from_static("*/*"));
        group.bench_function(name, |b| {
            b.iter(|| harness.request_headers(std::hint::black_box(&mut headers)))
        });
    }
    group.finish();
}

criterion_group!(benches, callbacks);
criterion_main!(benches);
