//! The live dashboard: one HTML page with its script and style sheet, compiled into the binary
//! and served by the admin listener at `/` and `/dashboard/*`.
//!
//! The page itself draws everything in the browser from the admin API (`/status`, `/services`,
//! `/metrics`, `/errors`), so this module only owns the static assets and the headers they are
//! sent with. The assets hold no data and no secret, which is why they are served without the
//! admin token: the page asks for the token (or takes it from `#token=`) and sends it as
//! `Authorization: Bearer` on its own API calls.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

/// An embedded file: its URL path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        path: "/dashboard/metrics.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("metrics.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
];

/// The page only talks to the admin listener it came from: no inline script, no other origin,
/// and no framing (the admin API may sit behind a token an attacker's page must not click with).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's files (served without the admin token).
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The response for a dashboard file, or `None` when `path` is not one.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let a = ASSETS.iter().find(|a| a.path == path)?;
    let mut resp = Response::new(Full::new(Bytes::from_static(a.body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // Revalidate every time: after an upgrade the page and its script must match.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(resp)
}
