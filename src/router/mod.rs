//! Route matching: host, path, method and headers to a route index.
//!
//! Pure data and a pure function: [`Router::find`] does no I/O and allocates nothing. Its cost
//! does not grow with the number of routes: hosts are hash lookups (exact, then each wildcard
//! suffix), exact and template paths go through a radix tree (matchit), and prefixes are one hash
//! lookup per `/` boundary of the request path.
//!
//! Precedence, from the first thing compared to the last:
//! 1. host: exact host, then the longest matching `*.` wildcard, then routes without hosts;
//! 2. path: exact path, then template (static segments beat `{param}`, which beats `{*rest}`),
//!    then the longest prefix;
//! 3. more conditions (methods + headers) first;
//! 4. declaration order.
//!
//! A host or path that matches only routes whose method does not fit gives `MethodNotAllowed`
//! with the methods that would have matched.

pub mod normalize;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use rustc_hash::FxHashMap;

/// How a route's path is compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSpec {
    /// The path itself or anything below it on a `/` boundary. Stored without a trailing `/`
    /// (the root prefix is `/`).
    Prefix(String),
    /// Only this path.
    Exact(String),
    /// A matchit template such as `/users/{id}` or `/files/{*rest}`.
    Template(String),
}

/// A header condition.
#[derive(Debug, Clone)]
pub enum HeaderCond {
    /// Exactly this value.
    Exact(HeaderValue),
    /// Present (`true`) or absent (`false`).
    Present(bool),
    /// Value is valid UTF-8 matching the regex.
    Regex(Regex),
}

impl HeaderCond {
    fn holds(&self, value: Option<&HeaderValue>) -> bool {
        match (self, value) {
            (HeaderCond::Exact(want), Some(v)) => want == v,
            (HeaderCond::Present(want), v) => *want == v.is_some(),
            (HeaderCond::Regex(re), Some(v)) => v.to_str().is_ok_and(|s| re.is_match(s)),
            (_, None) => false,
        }
    }

    /// A comparable description, used to detect routes that can never be told apart.
    pub fn describe(&self) -> String {
        match self {
            HeaderCond::Exact(v) => format!("= {}", String::from_utf8_lossy(v.as_bytes())),
            HeaderCond::Present(p) => format!("present {p}"),
            HeaderCond::Regex(r) => format!("~ {}", r.as_str()),
        }
    }
}

/// Everything a route matches on.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Exact hosts (lowercase) and wildcards (`*.example.com`). Empty: any host.
    pub hosts: Vec<String>,
    /// The path condition.
    pub path: PathSpec,
    /// Allowed methods. Empty: any.
    pub methods: Vec<Method>,
    /// Header conditions, all of which must hold.
    pub headers: Vec<(HeaderName, HeaderCond)>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match<'r, 'p> {
    /// A route matched.
    Found(Found<'r, 'p>),
    /// Routes matched host and path, but none allows this method.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// A matched route.
#[derive(Debug)]
pub struct Found<'r, 'p> {
    /// Index into the route list the router was built from.
    pub route: usize,
    /// Template captures (empty for prefix and exact routes).
    pub params: matchit::Params<'r, 'p>,
    /// Length of the path that the route's path condition consumed (for prefix rewrites).
    pub matched_len: usize,
}

/// Why two routes were rejected while building the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The route whose insertion failed.
    pub route: usize,
    /// What is wrong.
    pub message: String,
}

struct Candidate {
    route: usize,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderCond)>,
}

#[derive(Default)]
struct HostTable {
    /// Exact and template paths to an index into `lists`.
    tree: matchit::Router<usize>,
    /// Candidates per exact/template pattern.
    lists: Vec<Vec<usize>>,
    /// Pattern text (capture names erased) to its index in `lists` and its original text.
    by_shape: FxHashMap<String, (usize, String)>,
    /// Prefix (without trailing slash; root is "/") to candidates.
    prefixes: FxHashMap<Box<str>, Vec<usize>>,
}
/// The compiled routing table.
#[derive(Default)]
pub struct Router {
    exact_hosts: FxHashMap<Box<str>, HostTable>,
    wildcard_hosts: FxHashMap<Box<str>, HostTable>,
    any_host: HostTable,
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.candidates.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish()
    }
}

impl Router {
    /// Builds a router; route `i` of `specs` is reported as `Found { route: i, .. }`.
    pub fn build(specs: &[RouteSpec]) -> Result<Router, Vec<BuildError>> {
        let mut router = Router::default();
        let mut errors = Vec::new();
        let mut seen: FxHashMap<String, usize> = FxHashMap::default();
        for (i, spec) in specs.iter().enumerate() {
            let signature = signature(spec);
            if let Some(&first) = seen.get(&signature) {
                errors.push(BuildError {
                    route: i,
                    message: format!(
                        "matches exactly the same requests as route {first}; it could never be chosen"
                    ),
                });
                continue;
            }
            seen.insert(signature, i);
            router.candidates.push(Candidate {
                route: i,
                methods: spec.methods.clone(),
                headers: spec.headers.clone(),
            });
            let hosts: Vec<Option<&str>> = if spec.hosts.is_empty() {
                vec![None]
            } else {
                spec.hosts.iter().map(|h| Some(h.as_str())).collect()
            };
            for host in hosts {
                if let Err(message) = router.insert(host, &spec.path) {
                    errors.push(BuildError { route: i, message });
                }
            }
        }
        // Most conditions first, then declaration order; sorting by a stable key keeps lookups
        // deterministic whatever order the inserts came in.
        let weight: Vec<(usize, usize)> = router
            .candidates
            .iter()
            .map(|c| {
                (
                    usize::MAX - (c.methods.len().min(1) + c.headers.len()),
                    c.route,
                )
            })
            .collect();
        let sort = |list: &mut Vec<usize>| list.sort_by_key(|&idx| weight[idx]);
        for table in router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut router.any_host))
        {
            table.prefixes.values_mut().for_each(sort);
            table.lists.iter_mut().for_each(sort);
        }
        if errors.is_empty() {
            Ok(router)
        } else {
            Err(errors)
        }
    }

    fn insert(&mut self, host: Option<&str>, path: &PathSpec) -> Result<(), String> {
        let table = match host {
            None => &mut self.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard_hosts.entry(suffix.into()).or_default(),
                None => self.exact_hosts.entry(h.into()).or_default(),
            },
        };
        let candidate_index = self.candidates.len() - 1;
        match path {
            PathSpec::Prefix(p) => {
                table
                    .prefixes
                    .entry(p.as_str().into())
                    .or_default()
                    .push(candidate_index);
                Ok(())
            }
            PathSpec::Exact(p) | PathSpec::Template(p) => {
                let pattern = match path {
                    PathSpec::Exact(p) => p.replace('{', "{{").replace('}', "}}"),
                    _ => p.clone(),
                };
                let shape = template_shape(&pattern);
                if let Some((slot, existing)) = table.by_shape.get(&shape) {
                    if *existing != pattern {
                        return Err(format!(
                            "path `{p}` conflicts with `{existing}`: the same shape with other capture names"
                        ));
                    }
                    table.lists[*slot].push(candidate_index);
                    return Ok(());
                }
                let slot = table.lists.len();
                table
                    .tree
                    .insert(pattern.clone(), slot)
                    .map_err(|e| format!("path `{p}` cannot be routed: {e}"))?;
                table.lists.push(vec![candidate_index]);
                table.by_shape.insert(shape, (slot, pattern));
                Ok(())
            }
        }
    }

    /// Finds the route for a request. `host` must be lowercase without port; `path` is the
    /// request path without query.
    pub fn find<'r, 'p>(
        &'r self,
        host: &str,
        path: &'p str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Match<'r, 'p> {
        let mut allowed: Vec<Method> = Vec::new();
        let mut any_path_matched = false;
        if let Some(table) = self.exact_hosts.get(host) {
            if let Some(found) = self.find_in(
                table,
                path,
                method,
                headers,
                &mut allowed,
                &mut any_path_matched,
            ) {
                return Match::Found(found);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(table) = self.wildcard_hosts.get(rest) {
                    if let Some(found) = self.find_in(
                        table,
                        path,
                        method,
                        headers,
                        &mut allowed,
                        &mut any_path_matched,
                    ) {
                        return Match::Found(found);
                    }
                }
            }
        }
        if let Some(found) = self.find_in(
            &self.any_host,
            path,
            method,
            headers,
            &mut allowed,
            &mut any_path_matched,
        ) {
            return Match::Found(found);
        }
        if any_path_matched && !allowed.is_empty() {
            allowed.dedup();
            Match::MethodNotAllowed(allowed)
        } else {
            Match::NotFound
        }
    }

    fn find_in<'r, 'p>(
        &'r self,
        table: &'r HostTable,
        path: &'p str,
        method: &Method,
        headers: &HeaderMap,
        allowed: &mut Vec<Method>,
        any_path_matched: &mut bool,
    ) -> Option<Found<'r, 'p>> {
        if !table.lists.is_empty() {
            if let Ok(m) = table.tree.at(path) {
                if let Some(route) = self.pick(
                    &table.lists[*m.value],
                    method,
                    headers,
                    allowed,
                    any_path_matched,
                ) {
                    return Some(Found {
                        route,
                        params: m.params,
                        matched_len: path.len(),
                    });
                }
            }
        }
        if table.prefixes.is_empty() {
            return None;
        }
        let mut end = path.len();
        loop {
            let prefix = if end == 0 { "/" } else { &path[..end] };
            if let Some(list) = table.prefixes.get(prefix) {
                if let Some(route) = self.pick(list, method, headers, allowed, any_path_matched) {
                    return Some(Found {
                        route,
                        params: matchit::Params::new(),
                        matched_len: if end == 0 { 0 } else { end },
                    });
                }
            }
            if end == 0 {
                return None;
            }
            // A byte loop: `rfind` of a char goes through `memrchr`, whose setup costs more
            // than these few bytes.
            end = path.as_bytes()[..end]
                .iter()
                .rposition(|&b| b == b'/')
                .unwrap_or(0);
        }
    }

    fn pick(
        &self,
        list: &[usize],
        method: &Method,
        headers: &HeaderMap,
        allowed: &mut Vec<Method>,
        any_path_matched: &mut bool,
    ) -> Option<usize> {
        for &idx in list {
            let c = &self.candidates[idx];
            if !c
                .headers
                .iter()
                .all(|(name, cond)| cond.holds(headers.get(name)))
            {
                continue;
            }
            *any_path_matched = true;
            if c.methods.is_empty() || c.methods.contains(method) {
                return Some(c.route);
            }
            for m in &c.methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
        None
    }
}

/// The pattern with capture names erased: `/users/{id}` and `/users/{uid}` share a shape.
fn template_shape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '{' {
            if chars.peek() == Some(&'{') {
                out.push_str("{{");
                chars.next();
                continue;
            }
            let catch_all = chars.peek() == Some(&'*');
            for n in chars.by_ref() {
                if n == '}' {
                    break;
                }
            }
            out.push_str(if catch_all { "{*}" } else { "{}" });
        } else {
            out.push(c);
        }
    }
    out
}

fn signature(spec: &RouteSpec) -> String {
    let mut hosts = spec.hosts.clone();
    hosts.sort();
    let mut methods: Vec<&str> = spec.methods.iter().map(Method::as_str).collect();
    methods.sort_unstable();
    let mut headers: Vec<String> = spec
        .headers
        .iter()
        .map(|(n, c)| format!("{n} {}", c.describe()))
        .collect();
    headers.sort();
    let path = match &spec.path {
        PathSpec::Template(t) => format!("T {}", template_shape(t)),
        other => format!("{other:?}"),
    };
    format!("{hosts:?}|{path}|{methods:?}|{headers:?}")
}

/// Lowercases a `Host` value and drops its port and a trailing dot; borrows when it can.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        // As `rsplit_once(':')`, without `memrchr`'s setup for a short value.
        raw.as_bytes()
            .iter()
            .rposition(|&b| b == b':')
            .map_or(raw, |i| &raw[..i])
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests;
