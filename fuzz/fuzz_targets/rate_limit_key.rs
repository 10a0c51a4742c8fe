//! Rate-limit keys: a policy keyed on any combination of consumer, client IP, route, headers and
//! claims, checked with two requests built by the fuzzer.
//!
//! The key bytes are private to the policy, so they are checked through what they decide: with
//! a limit of one request per hour, the second request is refused exactly when its key equals
//! the first one's. A model of the documented key (each part's value, or the `missing_key`
//! fallback) says when that is; so two different combinations that collide in the real key, or
//! one request whose key is not stable, show up as a wrong decision.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::error::GatewayError;
use portico::policy::auth::Identity;
use portico::policy::rate_limit::RateLimitPolicy;
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;

#[derive(Debug, Clone, Copy)]
enum Missing {
    ClientIp,
    Deny,
    Allow,
}

#[derive(Debug)]
enum Part<'a> {
    Consumer,
    ClientIp,
    Route,
    Header(&'a str),
    Claim(&'a str),
}

#[derive(Debug, Default)]
struct Req<'a> {
    route: &'a str,
    /// Consumer name; `None`: no identity at all.
    consumer: Option<&'a str>,
    anonymous: bool,
    /// Claims as JSON text.
    claims: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    ip: &'a str,
}

/// The key's parts on the first line (`consumer client_ip route header:NAME claim:NAME`), the
/// `missing_key` answer on the second (`client_ip`, `deny`, `allow`), then the two requests,
/// separated by an empty line, one fact per line: `route NAME`, `consumer NAME`, `anonymous`,
/// `ip ADDR`, `claims {json}`, `name: value` (a header).
struct Input<'a> {
    parts: Vec<Part<'a>>,
    /// One part written alone (`key: consumer`) rather than as a list.
    single: bool,
    missing: Missing,
    a: Req<'a>,
    b: Req<'a>,
}

fn parse(text: &str) -> Option<Input<'_>> {
    let (head, requests) = text.split_once("\n\n")?;
    let (a, b) = requests.split_once("\n\n").unwrap_or((requests, ""));
    let (parts, missing) = head.split_once('\n').unwrap_or((head, ""));
    let parts = parts
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once(':') {
            Some(("header", h)) => Some(Part::Header(h)),
            Some(("claim", c)) => Some(Part::Claim(c)),
            None if p == "consumer" => Some(Part::Consumer),
            None if p == "client_ip" => Some(Part::ClientIp),
            None if p == "route" => Some(Part::Route),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Input {
        single: text.len() % 2 == 0,
        missing: match missing.trim() {
            "deny" => Missing::Deny,
            "allow" => Missing::Allow,
            _ => Missing::ClientIp,
        },
        parts,
        a: request(a),
        b: request(b),
    })
}

fn request(block: &str) -> Req<'_> {
    let mut r = Req::default();
    for line in block.split('\n') {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "route" => r.route = rest,
            "consumer" => r.consumer = Some(rest),
            "anonymous" => r.anonymous = true,
            "ip" => r.ip = rest,
            "claims" => r.claims = Some(rest),
            _ => {
                if let Some((n, v)) = line.split_once(':') {
                    r.headers.push((n, v.trim_start()));
                }
            }
        }
    }
    r
}

/// A request in the form the policy takes.
struct Built {
    route: String,
    identity: Option<Identity>,
    headers: HeaderMap,
    ip: IpAddr,
}

fn build(r: &Req<'_>) -> Built {
    let mut headers = HeaderMap::new();
    for (name, value) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let claims = r
        .claims
        .and_then(|c| serde_json::from_str::<serde_json::Map<String, Value>>(c).ok());
    Built {
        route: r.route.to_string(),
        identity: r.consumer.map(|name| Identity {
            consumer: None,
            name: Some(Arc::from(name)),
            anonymous: r.anonymous,
            headers: Vec::new(),
            claims: claims.map(Arc::new),
        }),
        headers,
        ip: r.ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// What the documented key says about a request.
#[derive(Debug, PartialEq, Eq)]
enum Model {
    /// Counted under these part values.
    Key(Vec<Vec<u8>>),
    /// A part had no value: counted by client IP, apart from requests keyed on purpose.
    Fallback(IpAddr),
    /// A part had no value: not limited.
    Unlimited,
    /// A part had no value: 403.
    Denied,
}

fn model(parts: &[Part<'_>], missing: Missing, r: &Built) -> Model {
    let mut values = Vec::new();
    for part in parts {
        let value = match part {
            Part::Consumer => r
                .identity
                .as_ref()
                .filter(|i| !i.anonymous)
                .and_then(|i| i.name.as_deref())
                .map(|n| n.as_bytes().to_vec()),
            Part::ClientIp => Some(r.ip.to_string().into_bytes()),
            Part::Route => Some(r.route.as_bytes().to_vec()),
            Part::Header(name) => {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("checked at build");
                r.headers.get(name).map(|v| v.as_bytes().to_vec())
            }
            Part::Claim(name) => r
                .identity
                .as_ref()
                .and_then(|i| i.claim_text(name))
                .map(String::into_bytes),
        };
        match value {
            Some(v) => values.push(v),
            None => {
                return match missing {
                    Missing::ClientIp => Model::Fallback(r.ip),
                    Missing::Allow => Model::Unlimited,
                    Missing::Deny => Model::Denied,
                }
            }
        }
    }
    Model::Key(values)
}

fn raw_part(p: &Part<'_>) -> Value {
    match p {
        Part::Consumer => json!("consumer"),
        Part::ClientIp => json!("client_ip"),
        Part::Route => json!("route"),
        Part::Header(h) => json!({"header": h}),
        Part::Claim(c) => json!({"claim": c}),
    }
}

enum Outcome {
    Admitted,
    Limited,
    Forbidden,
}

fn check(policy: &RateLimitPolicy, r: &Built) -> Outcome {
    let result =
        common::runtime().block_on(policy.check(&r.route, r.identity.as_ref(), &r.headers, r.ip));
    match result {
        Ok(_) => Outcome::Admitted,
        Err(GatewayError::RateLimited { .. }) => Outcome::Limited,
        Err(GatewayError::Forbidden { .. }) => Outcome::Forbidden,
        Err(e) => panic!("unexpected rate-limit error: {e:?}"),
    }
}

fn expect(model: &Model, first_key: Option<&Model>) -> &'static str {
    match model {
        Model::Denied => "forbidden",
        Model::Unlimited => "admitted",
        m if first_key == Some(m) => "limited",
        _ => "admitted",
    }
}

fn name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Admitted => "admitted",
        Outcome::Limited => "limited",
        Outcome::Forbidden => "forbidden",
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(input) = parse(text) else {
        return;
    };
    if input.parts.is_empty() || input.parts.len() > 8 {
        return;
    }
    let key = if input.single && input.parts.len() == 1 {
        raw_part(&input.parts[0])
    } else {
        Value::Array(input.parts.iter().map(raw_part).collect())
    };
    let raw = json!({
        "limits": [{"requests": 1, "per": "1h", "algorithm": "gcra"}],
        "key": key,
        "missing_key": match input.missing {
            Missing::ClientIp => "client_ip",
            Missing::Deny => "deny",
            Missing::Allow => "allow",
        },
        "headers": "both",
    });
    let Ok(raw) = serde_json::from_value(raw) else {
        return;
    };
    let mut errors = Vec::new();
    let Some(policy) = RateLimitPolicy::build(&raw, "rate_limit", "route:fuzz", None, &mut errors)
    else {
        assert!(!errors.is_empty(), "no policy and no error");
        return;
    };

    let a = build(&input.a);
    let b = build(&input.b);
    let model_a = model(&input.parts, input.missing, &a);
    let model_b = model(&input.parts, input.missing, &b);

    let first = check(&policy, &a);
    assert_eq!(
        name(&first),
        expect(&model_a, None),
        "first request, {model_a:?}"
    );
    let counted = matches!(model_a, Model::Key(_) | Model::Fallback(_)).then_some(&model_a);
    let second = check(&policy, &b);
    assert_eq!(
        name(&second),
        expect(&model_b, counted),
        "second request: {model_b:?} after {model_a:?}"
    );
    // The first request again: its key is stable.
    let again = check(&policy, &a);
    assert_eq!(
        name(&again),
        expect(&model_a, counted),
        "the first request again"
    );
});
