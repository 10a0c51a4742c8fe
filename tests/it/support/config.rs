//! A typed builder for the gateway's YAML config, so tests say what they set up instead of
//! copying YAML templates around:
//!
//! ```ignore
//! let yaml = Config::new()
//!     .service(Service::new("api").target(up.url()))
//!     .route(Route::new("r").path("/api").service("api").policy("cache", "{ttl: 10s}"))
//!     .to_yaml();
//! ```
//!
//! It writes YAML text (what `TestGateway::start` and the real binary read) and knows only the
//! shape of `consumers`, `services` and `routes`; everything else is a top-level `set(key,
//! value)` or verbatim `yaml(..)`. A value is YAML text: a flow value on one line (`{allow:
//! [127.0.0.0/8]}`) or a block over several lines, which is re-indented under its key.
//!
//! Tests about YAML text itself (positions in config errors, the examples) keep their YAML.

use std::fmt::Display;

/// A whole config file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    top: Vec<(String, String)>,
    consumers: Vec<Consumer>,
    services: Vec<Service>,
    routes: Vec<Route>,
    tail: String,
}

impl Config {
    /// An empty config (the harness adds `listen`, `workers`, `admin`, ... when absent).
    pub fn new() -> Self {
        Self::default()
    }

    /// A top-level `key: value`, written before consumers, services and routes.
    pub fn set(mut self, key: &str, value: impl Display) -> Self {
        self.top.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, consumer: Consumer) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Adds a service.
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// Adds a route (routes keep their order: it decides ties).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// YAML appended verbatim after everything else (top-level sections, or `routes:` written
    /// out by hand when the builder has none).
    pub fn yaml(mut self, text: &str) -> Self {
        self.tail.push_str(text);
        if !self.tail.is_empty() && !self.tail.ends_with('\n') {
            self.tail.push('\n');
        }
        self
    }

    /// The config as YAML text.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.top {
            field(&mut out, 0, key, value);
        }
        if !self.consumers.is_empty() {
            out.push_str("consumers:\n");
            for c in &self.consumers {
                item(&mut out, "name", &c.name, &c.fields);
            }
        }
        if !self.services.is_empty() {
            out.push_str("services:\n");
            for s in &self.services {
                out.push_str(&format!("  {}:\n", s.name));
                let targets = s.targets.join(", ");
                field(&mut out, 4, "targets", &format!("[{targets}]"));
                for (key, value) in &s.fields {
                    field(&mut out, 4, key, value);
                }
                indented(&mut out, 4, &s.raw);
            }
        }
        if !self.routes.is_empty() {
            out.push_str("routes:\n");
            for r in &self.routes {
                item(&mut out, "name", &r.name, &[]);
                if !r.matches.is_empty() {
                    let m: Vec<String> =
                        r.matches.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    field(&mut out, 4, "match", &format!("{{{}}}", m.join(", ")));
                }
                for (key, value) in &r.fields {
                    field(&mut out, 4, key, value);
                }
                indented(&mut out, 4, &r.raw);
                if !r.policies.is_empty() {
                    out.push_str("    policies:\n");
                    for (name, value) in &r.policies {
                        let mut p = String::new();
                        field(&mut p, 0, name, value);
                        for (i, line) in p.lines().enumerate() {
                            out.push_str(if i == 0 { "      - " } else { "        " });
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                }
            }
        }
        out.push_str(&self.tail);
        out
    }
}

impl Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_yaml())
    }
}

/// A consumer: `name`, plus fields such as `api_keys`, `groups`, `basic`.
#[derive(Debug, Clone)]
pub struct Consumer {
    name: String,
    fields: Vec<(String, String)>,
}

impl Consumer {
    /// A consumer called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            fields: Vec::new(),
        }
    }

    /// `api_keys: [key]`.
    pub fn api_key(self, key: &str) -> Self {
        self.set("api_keys", format!("[{}]", quoted(key)))
    }

    /// Any other field, as YAML.
    pub fn set(mut self, key: &str, value: impl Display) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }
}

/// A service: its targets and settings (`load_balancing`, `health_check`, `timeouts`, ...).
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    targets: Vec<String>,
    fields: Vec<(String, String)>,
    raw: String,
}

impl Service {
    /// A service called `name` (with no targets yet).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            targets: Vec::new(),
            fields: Vec::new(),
            raw: String::new(),
        }
    }

    /// Adds a target by URL.
    pub fn target(mut self, url: impl Display) -> Self {
        self.targets
            .push(format!("{{url: {}}}", quoted(&url.to_string())));
        self
    }

    /// Adds a target by URL, with a weight.
    pub fn weighted_target(mut self, url: impl Display, weight: u32) -> Self {
        let url = quoted(&url.to_string());
        self.targets
            .push(format!("{{url: {url}, weight: {weight}}}"));
        self
    }

    /// Adds one target per URL.
    pub fn targets<U: Display>(self, urls: impl IntoIterator<Item = U>) -> Self {
        urls.into_iter().fold(self, Self::target)
    }

    /// Any other field, as YAML (`set("health_check", "{path: /health, interval: 50ms}")`).
    pub fn set(mut self, key: &str, value: impl Display) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// Fields written out as YAML lines (`key: value` per line, any indentation: re-indented
    /// under the service).
    pub fn yaml(mut self, lines: &str) -> Self {
        self.raw.push_str(lines);
        if !self.raw.is_empty() && !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }
}

/// A route: what it matches, its service, settings and policies (in order).
#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    matches: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    raw: String,
    policies: Vec<(String, String)>,
}

impl Route {
    /// A route called `name` (matching every request until given conditions).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            matches: Vec::new(),
            fields: Vec::new(),
            raw: String::new(),
            policies: Vec::new(),
        }
    }

    /// `match: {path: ...}` (a prefix, or a template such as `/users/{id}`).
    pub fn path(self, path: &str) -> Self {
        self.matching("path", quoted(path))
    }

    /// Another condition under `match:`, as YAML (`matching("methods", "[GET, POST]")`).
    pub fn matching(mut self, key: &str, value: impl Display) -> Self {
        self.matches.push((key.to_string(), value.to_string()));
        self
    }

    /// `service: name`.
    pub fn service(self, name: &str) -> Self {
        self.set("service", name)
    }

    /// Any other field, as YAML (`set("timeout", "500ms")`).
    pub fn set(mut self, key: &str, value: impl Display) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// Fields written out as YAML lines (`key: value` per line, any indentation: re-indented
    /// under the route).
    pub fn yaml(mut self, lines: &str) -> Self {
        self.raw.push_str(lines);
        if !self.raw.is_empty() && !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }

    /// Appends a policy, e.g. `policy("rate_limit", "{requests: 5, per: 1s}")`.
    pub fn policy(mut self, name: &str, value: impl Display) -> Self {
        self.policies.push((name.to_string(), value.to_string()));
        self
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `- first_key: first_value` followed by `fields`, as an item of a top-level list.
fn item(out: &mut String, first_key: &str, first_value: &str, fields: &[(String, String)]) {
    out.push_str(&format!("  - {first_key}: {first_value}\n"));
    for (key, value) in fields {
        field(out, 4, key, value);
    }
}

/// `key: value` at `indent`: a one-line value follows the key; a block goes below it, its own
/// indentation replaced by `indent + 2`.
fn field(out: &mut String, indent: usize, key: &str, value: &str) {
    let pad = " ".repeat(indent);
    let value = value.trim_end();
    if !value.contains('\n') {
        out.push_str(&format!("{pad}{key}: {}\n", value.trim_start()));
        return;
    }
    out.push_str(&format!("{pad}{key}:\n"));
    indented(out, indent + 2, value);
}

/// The lines of `text` with their common indentation replaced by `indent` spaces.
fn indented(out: &mut String, indent: usize, text: &str) {
    let pad = " ".repeat(indent);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let common = lines
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for line in lines {
        out.push_str(&format!("{pad}{}\n", &line[common..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_services_routes_policies_and_blocks() {
        let yaml = Config::new()
            .set("redis", "{url: \"redis://127.0.0.1:1\"}")
            .consumer(Consumer::new("app").api_key("k-1"))
            .service(
                Service::new("a")
                    .target("http://127.0.0.1:1")
                    .set("timeouts", "{connect: 1s}"),
            )
            .route(
                Route::new("r")
                    .path("/t/{id}")
                    .matching("methods", "[GET]")
                    .service("a")
                    .policy("auth", "{api_key: true}")
                    .policy("transform", "\n    request:\n      set_headers: {x-a: b}\n"),
            )
            .to_yaml();
        assert_eq!(
            yaml,
            "redis: {url: \"redis://127.0.0.1:1\"}\n\
             consumers:\n  - name: app\n    api_keys: [\"k-1\"]\n\
             services:\n  a:\n    targets: [{url: \"http://127.0.0.1:1\"}]\n    timeouts: {connect: 1s}\n\
             routes:\n  - name: r\n    match: {path: \"/t/{id}\", methods: [GET]}\n    service: a\n    policies:\n\
             \x20     - auth: {api_key: true}\n      - transform:\n          request:\n            set_headers: {x-a: b}\n"
        );
    }
}
