//! Cost of one local-store rate-limit check (target: under 300 ns), for a hot key and for keys
//! spread over many entries.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portico::policy::rate_limit::config::Algorithm;
use portico::policy::rate_limit::local::{Limit, LocalStore};

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_local_check");
    for (name, algorithm) in [
        ("sliding_window", Algorithm::SlidingWindow),
        ("gcra", Algorithm::Gcra),
    ] {
        let store = LocalStore::new(
            vec![Limit::new(
                u64::MAX / 2,
                Duration::from_secs(60),
                algorithm,
                None,
            )],
            100_000,
        );
        let key = *b"4\x7f\x00\x00\x01";
        group.bench_function(format!("{name}/one_key"), |b| {
            b.iter(|| std::hint::black_box(store.check(std::hint::black_box(&key))))
        });
        let keys: Vec<[u8; 5]> = (0u32..10_000)
            .map(|i| {
                let o = i.to_be_bytes();
                [b'4', o[0], o[1], o[2], o[3]]
            })
            .collect();
        let mut i = 0;
        group.bench_function(format!("{name}/10k_keys"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                std::hint::black_box(store.check(&keys[i]))
            })
        });
    }
    let two = LocalStore::new(
        vec![
            Limit::new(
                1 << 40,
                Duration::from_secs(60),
                Algorithm::SlidingWindow,
                None,
            ),
            Limit::new(
                1 << 40,
                Duration::from_secs(86_400),
                Algorithm::SlidingWindow,
                None,
            ),
        ],
        100_000,
    );
    group.bench_function("two_limits/one_key", |b| {
        b.iter(|| std::hint::black_box(two.check(b"4\x7f\x00\x00\x01")))
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
