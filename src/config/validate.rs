//! Cross-field checks on the raw config. Collects every error with its key path; never panics.
//!
//! What passes here compiles: `compile.rs` may rely on every reference resolving, every URL,
//! regex, CIDR, method and header name parsing.

use std::collections::HashSet;
use std::net::SocketAddr;

use http::{HeaderName, Method};

use super::raw::{RawConfig, RawHeaderMatch, RawLoadBalancing, RawRoute, RawService};
use super::ConfigError;

/// A timeout cannot be switched off; the message says what to write instead.
const NO_ZERO_TIMEOUT: &str =
    "must be greater than 0 (a timeout cannot be off; the longest accepted is 365d)";

/// Every problem in `raw`, in no particular order (the caller sorts by position).
pub fn validate(raw: &RawConfig) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    if raw.listen.is_empty() {
        errs.push(ConfigError::new(
            "listen",
            "at least one listen address is required",
        ));
    }
    for (i, addr) in raw.listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            errs.push(ConfigError::new(
                format!("listen[{i}]"),
                format!("`{addr}` is not an IP:port address such as 0.0.0.0:8080"),
            ));
        }
    }
    if raw.workers > 1024 {
        errs.push(ConfigError::new("workers", "at most 1024 workers"));
    }
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    if !LEVELS.contains(&raw.log_level.as_str()) {
        errs.push(ConfigError::new(
            "log_level",
            super::suggest::unknown("log level", &raw.log_level, &LEVELS),
        ));
    }
    if raw.admin.enabled {
        match raw.admin.listen.parse::<std::net::SocketAddr>() {
            Err(_) => errs.push(ConfigError::new(
                "admin.listen",
                "must be IP:port, e.g. 127.0.0.1:9901",
            )),
            Ok(addr) if !addr.ip().is_loopback() && raw.admin.token.is_none() => {
                errs.push(ConfigError::new(
                    "admin.token",
                    "an admin API listening beyond loopback needs a token",
                ))
            }
            Ok(_) => {}
        }
    }
    if raw.admin.token.as_ref().is_some_and(|t| t.len() < 16) {
        errs.push(ConfigError::new(
            "admin.token",
            "use at least 16 characters",
        ));
    }
    let l = &raw.limits;
    if l.max_header_bytes.0 < 1024 || l.max_header_bytes.0 > 1024 * 1024 {
        errs.push(ConfigError::new(
            "limits.max_header_bytes",
            "must be between 1KiB and 1MiB",
        ));
    }
    if l.max_uri_bytes.0 < 64 || l.max_uri_bytes.0 > 64 * 1024 {
        errs.push(ConfigError::new(
            "limits.max_uri_bytes",
            "must be between 64 and 64KiB",
        ));
    }
    if raw.timeouts.header_read.0.is_zero() {
        errs.push(ConfigError::new(
            "timeouts.header_read",
            "must be greater than 0",
        ));
    }
    for (i, cidr) in raw.trusted_proxies.iter().enumerate() {
        if parse_cidr(cidr).is_none() {
            errs.push(ConfigError::new(
                format!("trusted_proxies[{i}]"),
                format!("`{cidr}` is not an IP address or CIDR range such as 10.0.0.0/8"),
            ));
        }
    }
    if raw.access_log.path.is_empty() {
        errs.push(ConfigError::new(
            "access_log.path",
            "must be stdout, stderr or a file path",
        ));
    }
    crate::telemetry::trace::config::validate(&raw.tracing, &mut errs);
    if let Some(tls) = &raw.tls {
        crate::tls::validate(tls, &mut errs);
    }
    validate_mtls_policies(raw, &mut errs);
    for (path, message) in raw.http2.validate() {
        errs.push(ConfigError::new(path, message));
    }
    for (name, svc) in &raw.services {
        validate_service(name, svc, &mut errs);
    }
    let mut names = HashSet::new();
    for (i, route) in raw.routes.iter().enumerate() {
        if !names.insert(route.name.as_str()) {
            errs.push(ConfigError::new(
                format!("routes[{i}].name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        validate_route(i, route, raw, &mut errs);
    }
    errs
}

/// `auth: {mtls: true}` only means something when HTTPS listeners ask for client certificates.
fn validate_mtls_policies(raw: &RawConfig, errs: &mut Vec<ConfigError>) {
    if raw.tls.as_ref().is_some_and(|t| t.client_auth.is_some()) {
        return;
    }
    let lists = std::iter::once(("policies".to_string(), &raw.policies))
        .chain(
            raw.services
                .iter()
                .map(|(n, s)| (format!("services.{n}.policies"), &s.policies)),
        )
        .chain(
            raw.routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}].policies"), &r.policies)),
        );
    for (at, list) in lists {
        for (i, p) in list.iter().enumerate() {
            if matches!(p, crate::policy::RawPolicy::Auth(a) if a.mtls) {
                errs.push(ConfigError::new(
                    format!("{at}[{i}].auth.mtls"),
                    "needs tls.client_auth: without it no client certificate is asked for",
                ));
            }
        }
    }
}

pub use crate::spec::parse_cidr;

fn validate_service(name: &str, svc: &RawService, errs: &mut Vec<ConfigError>) {
    let at = |field: &str| format!("services.{name}.{field}");
    if svc.targets.is_empty() {
        errs.push(ConfigError::new(
            at("targets"),
            "a service needs at least one target",
        ));
    }
    for (i, t) in svc.targets.iter().enumerate() {
        if let Err(message) = parse_target_url(&t.url) {
            errs.push(ConfigError::new(at(&format!("targets[{i}].url")), message));
        }
        if !(1..=1000).contains(&t.weight) {
            errs.push(ConfigError::new(
                at(&format!("targets[{i}].weight")),
                "weight must be between 1 and 1000",
            ));
        }
    }
    if svc.tls.is_some() && !svc.targets.iter().any(|t| t.url.starts_with("https://")) {
        errs.push(ConfigError::new(
            at("tls"),
            "tls applies to https:// targets, and this service has none",
        ));
    }
    if let RawLoadBalancing::ConsistentHash(on) = &svc.load_balancing {
        let set = usize::from(on.header.is_some())
            + usize::from(on.cookie.is_some())
            + usize::from(on.client_ip);
        if set != 1 {
            errs.push(ConfigError::new(
                at("load_balancing.consistent_hash"),
                "set exactly one of header, cookie, client_ip",
            ));
        }
        if let Some(h) = &on.header {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    at("load_balancing.consistent_hash.header"),
                    format!("`{h}` is not a valid header name"),
                ));
            }
        }
    }
    for (field, d) in [
        ("timeouts.connect", svc.timeouts.connect),
        ("timeouts.request", svc.timeouts.request),
        ("timeouts.idle", svc.timeouts.idle),
    ] {
        if d.0.is_zero() {
            errs.push(ConfigError::new(at(field), NO_ZERO_TIMEOUT));
        }
    }
    crate::upstream::config::validate_service(
        svc.health_check.as_ref(),
        svc.outlier_detection.as_ref(),
        svc.circuit_breaker.as_ref(),
        svc.max_concurrent_requests,
        svc.retry.as_ref(),
        &at,
        errs,
    );
}

/// Scheme, host and port of a target URL (`http://h:p` or `h2c://h:p`, no path).
pub fn parse_target_url(url: &str) -> Result<(bool, String, u16), String> {
    let (h2c, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("h2c://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        return Err(format!(
            "`{url}` must start with http://, https:// or h2c://"
        ));
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('?') {
        return Err(format!(
            "`{url}`: a target is scheme://host:port, without a path"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("`{url}`: `{authority}` is not a valid host:port"))?;
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: credentials in target URLs are not supported"
        ));
    }
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    let host = uri
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok((h2c, host, port))
}

fn validate_route(i: usize, r: &RawRoute, raw: &RawConfig, errs: &mut Vec<ConfigError>) {
    let at = |field: &str| format!("routes[{i}].{field}");
    if r.name.trim().is_empty() {
        errs.push(ConfigError::new(at("name"), "a route needs a name"));
    }
    if !raw.services.contains_key(&r.service) {
        let known: Vec<&str> = raw.services.keys().map(String::as_str).collect();
        errs.push(ConfigError::new(
            at("service"),
            format!(
                "unknown service `{}`{} (defined: {})",
                r.service,
                super::suggest::did_you_mean(&r.service, known.iter().copied()),
                known.join(", ")
            ),
        ));
    }
    for (j, token) in r.upgrades.iter().enumerate() {
        let name = token.split('/').next().unwrap_or(token);
        if name.eq_ignore_ascii_case("h2c") {
            errs.push(ConfigError::new(
                at(&format!("upgrades[{j}]")),
                "`h2c` upgrades are never relayed (RFC 9113 §3.1 deprecates them, and the \
                 upgraded connection would bypass routing and policies); clients use HTTP/2 \
                 with prior knowledge or over TLS instead",
            ));
        } else if name.is_empty() || !name.bytes().all(is_tchar) {
            errs.push(ConfigError::new(
                at(&format!("upgrades[{j}]")),
                format!("`{token}` is not a protocol name such as `websocket`"),
            ));
        }
    }
    let m = &r.matcher;
    for (j, host) in m.hosts.iter().enumerate() {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        let ok = !bare.is_empty()
            && !bare.contains('*')
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !ok {
            errs.push(ConfigError::new(
                at(&format!("match.hosts[{j}]")),
                format!("`{host}` is not a host name or `*.` wildcard"),
            ));
        }
    }
    let path = m.path.as_deref().unwrap_or("/");
    if !path.starts_with('/') {
        errs.push(ConfigError::new(
            at("match.path"),
            "a path must start with `/`",
        ));
    }
    if raw.paths.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
        errs.push(ConfigError::new(
            at("match.path"),
            "with `paths.case_insensitive: true` requests are routed lowercased: write the \
             path in lowercase",
        ));
    }
    let is_template = path.contains('{');
    if is_template && m.path_type.is_some() {
        errs.push(ConfigError::new(
            at("match.path_type"),
            "a template path (with `{...}`) takes no path_type",
        ));
    }
    for (j, method) in m.methods.iter().enumerate() {
        if Method::from_bytes(method.as_bytes()).is_err() || method.to_uppercase() != *method {
            errs.push(ConfigError::new(
                at(&format!("match.methods[{j}]")),
                format!("`{method}` is not an upper-case HTTP method"),
            ));
        }
    }
    for (name, cond) in &m.headers {
        let key = at(&format!("match.headers.{name}"));
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(ConfigError::new(
                key.clone(),
                format!("`{name}` is not a valid header name"),
            ));
        }
        match cond {
            RawHeaderMatch::Exact(v) => {
                if http::HeaderValue::from_str(v).is_err() {
                    errs.push(ConfigError::new(key, "not a valid header value"));
                }
            }
            RawHeaderMatch::Rule(rule) => {
                if usize::from(rule.present.is_some()) + usize::from(rule.regex.is_some()) != 1 {
                    errs.push(ConfigError::new(key, "set exactly one of present, regex"));
                } else if let Some(re) = &rule.regex {
                    if let Err(e) = regex::Regex::new(re) {
                        // The regex crate's message spans several lines (pattern, caret,
                        // reason); an error here is one line, so keep the reason.
                        let text = e.to_string();
                        let reason = text.lines().last().unwrap_or_default();
                        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                        errs.push(ConfigError::new(
                            format!("{key}.regex"),
                            format!("invalid regex: {reason}"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        let set = [&rw.strip_prefix, &rw.replace_prefix, &rw.path]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if set != 1 {
            errs.push(ConfigError::new(
                at("rewrite"),
                "set exactly one of strip_prefix, replace_prefix, path",
            ));
        }
        for (field, v) in [
            ("strip_prefix", &rw.strip_prefix),
            ("replace_prefix", &rw.replace_prefix),
            ("path", &rw.path),
        ] {
            if let Some(v) = v {
                if !v.starts_with('/') {
                    errs.push(ConfigError::new(
                        at(&format!("rewrite.{field}")),
                        "must start with `/`",
                    ));
                }
            }
        }
        if rw.replace_prefix.is_some() && is_template {
            errs.push(ConfigError::new(
                at("rewrite.replace_prefix"),
                "replace_prefix needs a prefix or exact path; use rewrite.path with a template route",
            ));
        }
        if let Some(tpl) = &rw.path {
            for name in template_captures(tpl) {
                if !template_captures(path).contains(&name) {
                    errs.push(ConfigError::new(
                        at("rewrite.path"),
                        format!("`{{{name}}}` is not captured by match.path `{path}`"),
                    ));
                }
            }
        }
    }
    if r.https_redirect && raw.tls.is_none() {
        errs.push(ConfigError::new(
            at("https_redirect"),
            "redirecting to https needs a `tls:` section with HTTPS listeners",
        ));
    }
    if let Some(t) = r.timeout {
        if t.0.is_zero() {
            errs.push(ConfigError::new(at("timeout"), NO_ZERO_TIMEOUT));
        }
    }
    crate::upstream::config::validate_route(
        r.circuit_breaker.as_ref(),
        r.retry.as_ref(),
        r.fallback.as_ref(),
        r.deadline_header.as_deref(),
        &at,
        errs,
    );
}

/// Capture names in a template path (`{id}`, `{*rest}` gives `rest`).
pub fn template_captures(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(
            rest[start + 1..start + len]
                .trim_start_matches('*')
                .to_string(),
        );
        rest = &rest[start + len + 1..];
    }
    out
}

/// An RFC 9110 `tchar`: what a token (a protocol or header name) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
