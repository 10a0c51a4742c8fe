//! Route lookup cost with 10 and 10,000 routes: it must stay nearly flat.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portico::router::{Match, PathSpec, RouteSpec, Router};

fn routes(n: usize) -> Vec<RouteSpec> {
    (0..n)
        .map(|i| {
            let path = match i % 3 {
                0 => PathSpec::Prefix(format!("/svc{i}/api")),
                1 => PathSpec::Template(format!("/svc{i}/items/{{id}}")),
                _ => PathSpec::Exact(format!("/svc{i}/health")),
            };
            RouteSpec {
                hosts: if i % 2 == 0 {
                    vec![format!("host{}.example.com", i % 50)]
                } else {
                    vec![]
                },
                path,
                methods: vec![Method::GET, Method::POST],
                headers: vec![],
            }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 10_000] {
        let router = Router::build(&routes(n)).expect("router");
        let headers = HeaderMap::new();
        // Hit a route in the middle of the table, on each kind of path.
        let mid = n / 2 - (n / 2) % 6;
        let cases = [
            (
                format!("host{}.example.com", mid % 50),
                format!("/svc{mid}/api/orders/17"),
            ),
            (
                "other.example.com".to_string(),
                format!("/svc{}/items/42", mid + 1),
            ),
            (
                "other.example.com".to_string(),
                format!("/svc{}/health", mid + 5),
            ),
        ];
        for (host, path) in &cases {
            assert!(
                matches!(
                    router.find(host, path, &Method::GET, &headers),
                    Match::Found(_)
                ),
                "{host}{path}"
            );
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (host, path) in &cases {
                    std::hint::black_box(router.find(host, path, &Method::GET, &headers));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
