//! The parts of RFC 9111 (HTTP caching) and RFC 9110 (conditional requests) the cache needs,
//! as pure functions over header maps: `Cache-Control` directives, freshness lifetime, and
//! `If-None-Match` / `If-Modified-Since` evaluation.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};

/// The `Cache-Control` directives the cache acts on (all `Cache-Control` lines combined).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (also its qualified form, treated like the plain one: conservative).
    pub no_cache: bool,
    /// `private` (also qualified).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861), seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861), seconds.
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` value of `headers`. Unknown directives are ignored; a
    /// malformed number makes that directive count as absent, except `max-age`/`s-maxage`,
    /// which then count as 0 (stale), as RFC 9111 section 4.2.1 asks.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in split_list(text) {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "max-age" => d.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(secs().unwrap_or(0)),
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        d
    }

    /// Request side: `Cache-Control: no-cache` or, without any `Cache-Control`, the HTTP/1.0
    /// `Pragma: no-cache`.
    pub fn request_no_cache(&self, headers: &HeaderMap) -> bool {
        self.no_cache
            || self.max_age == Some(0)
            || (!headers.contains_key(header::CACHE_CONTROL)
                && headers
                    .get(header::PRAGMA)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache")))
    }

    /// Whether a stale response may be served at all (RFC 9111 section 4.2.4): not after
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` (which implies the latter), nor
    /// `no-cache` (which asks for validation on every use).
    pub fn allows_stale(&self) -> bool {
        !(self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() || self.no_cache)
    }

    /// Whether a response to a request with credentials may be stored and reused by a shared
    /// cache (RFC 9111 section 3.5).
    pub fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }
}

/// The explicit freshness lifetime of a response (RFC 9111 section 4.2.1): `s-maxage`, else
/// `max-age`, else `Expires` minus `Date` (an invalid `Expires` means already expired).
/// `None`: the response states none.
pub fn freshness_lifetime(d: &Directives, headers: &HeaderMap) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's `Age`, in seconds (0 when absent or malformed).
pub fn age(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An HTTP date (IMF-fixdate and the two obsolete formats).
pub fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// Whether a client's conditional headers make `stored` (status 2xx, headers `stored`)
/// answerable with 304 Not Modified (RFC 9110 section 13.2.2: `If-None-Match` first, with weak
/// comparison; `If-Modified-Since` only without it).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG) else {
            return false;
        };
        let Ok(list) = inm.to_str() else { return false };
        let mine = weak(etag.as_bytes());
        return split_list(list).any(|t| t == "*" || weak(t.as_bytes()) == mine);
    }
    if let Some(ims) = request.get(header::IF_MODIFIED_SINCE).and_then(http_date) {
        if let Some(lm) = stored.get(header::LAST_MODIFIED).and_then(http_date) {
            return lm <= ims;
        }
    }
    false
}

/// The opaque part of an entity tag, for weak comparison (`W/"x"` equals `"x"`).
fn weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Items of a comma-separated header list, trimmed, empty ones skipped. (Commas inside quoted
/// strings do not occur in the directives and tags read here.)
fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The header names a `Vary` lists, lower-cased; `None` for `Vary: *` (never matches) or a
/// malformed list.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<http::HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        let Ok(text) = v.to_str() else { return None };
        for name in split_list(text) {
            if name == "*" {
                return None;
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) if !names.contains(&n) => names.push(n),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn directives_and_lifetime() {
        let h = map(&[
            ("cache-control", "public, max-age=60"),
            ("cache-control", "S-MAXAGE=\"30\", stale-while-revalidate=5"),
        ]);
        let d = Directives::parse(&h);
        assert!(d.public && !d.private);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.stale_while_revalidate, Some(5));
        // s-maxage wins for a shared cache, and forbids serving stale.
        assert_eq!(freshness_lifetime(&d, &h), Some(Duration::from_secs(30)));
        assert!(!d.allows_stale());
        let bad = map(&[("cache-control", "max-age=soon")]);
        assert_eq!(
            freshness_lifetime(&Directives::parse(&bad), &bad),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn expires_relative_to_date() {
        let h = map(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ]);
        let d = Directives::parse(&h);
        assert_eq!(freshness_lifetime(&d, &h), Some(Duration::from_secs(60)));
        let invalid = map(&[("expires", "0")]);
        assert_eq!(
            freshness_lifetime(&Directives::default(), &invalid),
            Some(Duration::ZERO)
        );
        assert_eq!(freshness_lifetime(&Directives::default(), &map(&[])), None);
    }

    #[test]
    fn conditionals() {
        let stored = map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(
            &map(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored
        ));
        assert!(!not_modified(&map(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(&map(&[("if-none-match", "*")]), &stored));
        assert!(not_modified(
            &map(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &map(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &stored
        ));
    }

    #[test]
    fn vary() {
        let h = map(&[
            ("vary", "Accept-Encoding, accept-encoding"),
            ("vary", "X-A"),
        ]);
        let names = vary_names(&h).unwrap();
        assert_eq!(names, vec!["accept-encoding", "x-a"]);
        assert!(vary_names(&map(&[("vary", "*")])).is_none());
    }
}
