//! Config text → plan: the whole loader (YAML, `${}` expansion, serde, validation, compile).
//!
//! Any input must come back as `Ok` or a list of errors, within the budget issue 15 sets for
//! loading a config: 1 s and 256 MiB. An alias bomb must be refused, not expanded.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use portico::config::expand::Source;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

const TIME_BUDGET: Duration = Duration::from_secs(1);
const MEMORY_BUDGET: usize = 256 << 20;

/// Environment variables exist (so `${X}` expands) but secret files never do: a fuzz input must
/// not read the machine's files through `${file:...}`.
struct FakeEnv;

impl Source for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name.len() % 2 == 0).then(|| format!("value-of-{name}"))
    }
    fn file(&self, _path: &str) -> std::io::Result<String> {
        Err(std::io::Error::other("no files while fuzzing"))
    }
}

fn load(text: &str) -> (Duration, usize, bool) {
    let base = common::start_measuring();
    let started = Instant::now();
    let result = portico::config::load_str(text, "fuzz.yaml", &FakeEnv);
    let elapsed = started.elapsed();
    let ok = match &result {
        Ok(_) => true,
        Err(errors) => {
            // Every error renders (positions, paths) without panicking.
            let _ = errors.to_string();
            assert!(!errors.errors.is_empty(), "an Err without any error");
            false
        }
    };
    drop(result);
    (elapsed, common::peak_since(base), ok)
}

/// Once per process: the billion-laughs document (nine levels of nine aliases, 387 million
/// scalars expanded) is refused with an error, within the budget.
fn alias_bomb_is_refused() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut bomb = String::from(
            "services: {s: {targets: [{url: \"http://127.0.0.1:9\"}]}}\n\
             x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("x-{i}: &a{i} [{refs}]\n"));
        }
        let base = common::start_measuring();
        let started = Instant::now();
        let errors = portico::config::load_str(&bomb, "bomb.yaml", &FakeEnv)
            .err()
            .expect("an alias bomb must be refused");
        let (elapsed, peak) = (started.elapsed(), common::peak_since(base));
        assert!(
            errors.to_string().contains("counting every alias"),
            "refused for another reason: {errors}"
        );
        assert!(
            elapsed <= TIME_BUDGET && peak <= MEMORY_BUDGET,
            "{elapsed:?}, {peak} bytes"
        );
    });
}

fuzz_target!(|data: &[u8]| {
    alias_bomb_is_refused();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (elapsed, peak, _) = load(text);
    // One slow run can be the shared machine; only a second slow run of the same input counts.
    if elapsed > TIME_BUDGET {
        let (again, _, _) = load(text);
        assert!(
            again <= TIME_BUDGET,
            "loading took {elapsed:?} and then {again:?} (budget {TIME_BUDGET:?})"
        );
    }
    assert!(
        peak <= MEMORY_BUDGET,
        "loading peaked at {} MiB above its start (budget {} MiB)",
        peak >> 20,
        MEMORY_BUDGET >> 20
    );
});
