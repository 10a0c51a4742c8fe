//! Router lookup on random host, path, method and headers, through the same steps as the
//! proxy: `normalize_host`, `normalize`, `routing_key`, `Router::find`.
//!
//! Invariants checked besides "no panic":
//! - `normalize` is idempotent on its own output and, with `merge_slashes`, leaves no `//`;
//! - `routing_key` of a path without `;` is the path itself, and never contains `;`;
//! - a route that is found exists, and its path condition really holds for the looked-up key.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portico::config::expand::Source;
use portico::config::Plan;
use portico::router::normalize::{self, EscapedSlashes, RawPaths};
use portico::router::{normalize_host, Match, PathSpec};

/// Every kind of condition the router has: exact and wildcard hosts, prefix, exact and template
/// paths (with a catch-all), method lists and the three header conditions.
const CONFIG: &str = r#"
listen: ["127.0.0.1:0"]
services:
  s: {targets: [{url: "http://127.0.0.1:9"}]}
routes:
  - {name: static, service: s, match: {path: /static/}}
  - {name: api, service: s, match: {path: /api, methods: [GET, HEAD]}}
  - {name: api-write, service: s, match: {path: /api, methods: [POST, PUT, DELETE]}}
  - {name: exact, service: s, match: {path: /health, path_type: exact}}
  - {name: user, service: s, match: {path: "/users/{id}", methods: [GET]}}
  - {name: user-posts, service: s, match: {path: "/users/{id}/posts/{post}"}}
  - {name: files, service: s, match: {path: "/files/{*rest}"}}
  - {name: host, service: s, match: {hosts: [api.example.com], path: /v1}}
  - {name: wild, service: s, match: {hosts: ["*.example.com"], path: /v1}}
  - {name: wild-deep, service: s, match: {hosts: ["*.eu.example.com"], path: /v1/orders}}
  - {name: tenant, service: s, match: {path: /h, headers: {x-tenant: acme}}}
  - {name: debug, service: s, match: {path: /h, headers: {x-debug: {present: true}}}}
  - {name: version, service: s, match: {path: /h, headers: {x-version: {regex: "^v[0-9]+$"}}}}
  - {name: nodebug, service: s, match: {path: /h/quiet, headers: {x-debug: {present: false}}}}
  - {name: unicode, service: s, match: {path: "/caf%C3%A9"}}
  - {name: tilde, service: s, match: {path: "/~user/a-b_c.d"}}
"#;

struct NoEnv;

impl Source for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, _: &str) -> std::io::Result<String> {
        Err(std::io::Error::other("no files while fuzzing"))
    }
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        portico::config::load_str(CONFIG, "router.yaml", &NoEnv)
            .unwrap_or_else(|e| panic!("the fixed router config is invalid: {e}"))
            .plan
    })
}

/// `METHOD PATH` on the first line, then `name: value` header lines (`host` gives the host).
/// The input's length picks the normalisation rules checked besides the plan's own.
struct Input<'a> {
    host: &'a str,
    path: &'a str,
    method: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    merge_slashes: bool,
    case_insensitive: bool,
}

fn parse(text: &str) -> Option<Input<'_>> {
    let mut lines = text.split('\n');
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut input = Input {
        host: "",
        path,
        method,
        headers: Vec::new(),
        merge_slashes: text.len() % 2 == 0,
        case_insensitive: text.len() % 4 >= 2,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_start();
        if name.eq_ignore_ascii_case("host") {
            input.host = value;
        } else {
            input.headers.push((name, value));
        }
    }
    Some(input)
}

fn check_normalize(path: &str, rules: &RawPaths) {
    let Ok(once) = normalize::normalize(path, rules) else {
        return;
    };
    let twice = normalize::normalize(&once, rules)
        .unwrap_or_else(|e| panic!("normalize({once:?}) of its own output failed: {e}"));
    assert_eq!(once, twice, "normalize is not idempotent on {path:?}");
    if rules.merge_slashes {
        assert!(!once.contains("//"), "{path:?} normalized to {once:?}");
    }
    let key = normalize::routing_key(&once);
    assert!(!key.contains(';'), "routing key {key:?} of {once:?}");
    if !once.contains(';') {
        assert_eq!(key, once);
    }
    let _ = normalize::has_escaped_slash(&once);
}

fn holds(spec: &PathSpec, key: &str, matched_len: usize) -> bool {
    match spec {
        PathSpec::Exact(p) => key == p,
        PathSpec::Prefix(p) if p == "/" => true,
        PathSpec::Prefix(p) => {
            matched_len == p.len()
                && key.starts_with(p.as_str())
                && matches!(key.as_bytes().get(p.len()), None | Some(b'/'))
        }
        // matchit's own business; the lookup consumed the whole path.
        PathSpec::Template(_) => matched_len == key.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(input) = parse(text) else {
        return;
    };
    let plan = plan();
    let rules = RawPaths {
        merge_slashes: input.merge_slashes,
        case_insensitive: input.case_insensitive,
        escaped_slashes: EscapedSlashes::Reject,
    };
    check_normalize(input.path, &rules);
    check_normalize(input.path, &plan.paths);

    // As the proxy does: the plan's rules, then the host, then the key without `;params`.
    let Ok(path) = normalize::normalize(input.path, &plan.paths) else {
        return;
    };
    let host = normalize_host(input.host);
    let key = normalize::routing_key(&path);
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    match plan.router.find(&host, &key, &method, &headers) {
        Match::Found(found) => {
            let route = plan
                .routes
                .get(found.route)
                .unwrap_or_else(|| panic!("route index {} out of range", found.route));
            assert!(found.matched_len <= key.len());
            assert!(
                holds(&route.path, &key, found.matched_len),
                "route {} ({:?}) found for {key:?} (matched {})",
                route.name,
                route.path,
                found.matched_len
            );
            for (name, value) in found.params.iter() {
                assert!(!name.is_empty());
                let _ = value.len();
            }
        }
        Match::MethodNotAllowed(allowed) => {
            assert!(!allowed.is_empty());
            assert!(
                !allowed.contains(&method),
                "{method} is allowed yet refused"
            );
        }
        Match::NotFound => {}
    }
});
