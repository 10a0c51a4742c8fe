//! `Cache-Control` and the rest of RFC 9111 / RFC 9110 header handling the cache does:
//! directives, freshness lifetime, `Age`, HTTP dates, conditional requests (`If-None-Match`,
//! `If-Modified-Since`), `Vary`, and the cache keys built from a request.
//!
//! Invariants besides "no panic": directives spread over several `Cache-Control` lines read the
//! same as one comma-joined line; keys are deterministic and start with host and path; query
//! parameters in another order give the same key.

#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::policy::cache::key::{base_key, variant_key, KeyPart};
use portico::policy::cache::rfc::{
    age, freshness_lifetime, http_date, not_modified, vary_names, Directives,
};

/// Written like an exchange: a request line `GET /path?query` with `name: value` header
/// lines (`host` gives the key's host, `x-consumer` the consumer), an empty line, then the stored
/// response's header lines.
struct Input<'a> {
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    consumer: Option<&'a str>,
    request: HeaderMap,
    response: HeaderMap,
}

/// Query parameters a cache policy might be told to leave out of its key.
const IGNORED: [&str; 2] = ["utm_source", "fbclid"];

fn parse(text: &str) -> Option<Input<'_>> {
    let (request, response) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = request.split('\n');
    let (_method, target) = lines.next()?.split_once(' ')?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut input = Input {
        host: "",
        path,
        query,
        consumer: None,
        request: HeaderMap::new(),
        response: HeaderMap::new(),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_start();
        if name.eq_ignore_ascii_case("host") {
            input.host = value;
        } else if name.eq_ignore_ascii_case("x-consumer") {
            input.consumer = Some(value);
        }
        append(&mut input.request, name, value);
    }
    for line in response.split('\n') {
        if let Some((name, value)) = line.split_once(':') {
            append(&mut input.response, name, value.trim_start());
        }
    }
    Some(input)
}

fn append(map: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        map.append(n, v);
    }
}

fn check_directives(map: &HeaderMap) -> Directives {
    let d = Directives::parse(map);
    let lines: Vec<&str> = map
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !lines.is_empty() {
        let mut one = HeaderMap::new();
        one.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&lines.join(", ")).expect("joined visible text"),
        );
        assert_eq!(Directives::parse(&one), d, "lines {lines:?}");
    }
    let _ = d.request_no_cache(map);
    let _ = d.allows_stale();
    let _ = d.allows_authorized();
    let _ = freshness_lifetime(&d, map);
    let _ = age(map);
    for v in map.get_all(header::EXPIRES) {
        let _ = http_date(v);
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(input) = parse(text) else {
        return;
    };
    let (request, response) = (&input.request, &input.response);
    check_directives(request);
    check_directives(response);
    let _ = not_modified(request, response);
    let names = vary_names(response);

    let ignore: Vec<String> = IGNORED.iter().map(|s| s.to_string()).collect();
    let parts = [
        KeyPart::Consumer,
        KeyPart::Header(header::ACCEPT_ENCODING),
        KeyPart::Header(header::AUTHORIZATION),
    ];
    let key = |query: Option<&str>| {
        base_key(
            input.host,
            input.path,
            query,
            &ignore,
            &parts,
            request,
            input.consumer,
        )
    };
    let base = key(input.query);
    assert!(base.starts_with(&format!("{}{}", input.host, input.path)));
    assert_eq!(base, key(input.query), "the key is not deterministic");
    if let Some(q) = input.query {
        // Parameters of distinct names, reversed, name the same resource.
        let pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
        let name = |p: &&str| p.split_once('=').map_or(*p, |(n, _)| n).to_string();
        let mut seen: Vec<String> = pairs.iter().map(name).collect();
        seen.sort();
        seen.dedup();
        if seen.len() == pairs.len() {
            let reversed: Vec<&str> = pairs.iter().rev().copied().collect();
            assert_eq!(base, key(Some(&reversed.join("&"))), "query {q:?}");
        }
    }
    if let Some(names) = names {
        let generation = data.len() as u64;
        let v = variant_key(&base, generation, &names, request);
        assert!(v.starts_with(&base));
    }
});
