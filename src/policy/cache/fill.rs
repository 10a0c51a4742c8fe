//! The upstream half of a cacheable request: what the response does to the cache (store when
//! complete, refresh after a 304, stale on errors, invalidate after unsafe methods), and the
//! stale-while-revalidate refresh sent from a task of its own.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::entry::Stored;
use super::{rfc, CachePolicy, CacheStatus, Fill, Mode, Pending, CACHEABLE};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::proxy::record::Recorder;

impl Fill {
    /// Stale-while-revalidate: whether this request is the background refresh of a stale
    /// entry, whose stale answer goes to the client now (then send the upstream request with
    /// [`Fill::refresh_in_background`]).
    pub fn has_background(&self) -> bool {
        matches!(&self.mode, Mode::Store(p) if p.background.is_some())
    }

    /// The stale answer to give now while the request goes on as the background refresh.
    pub fn take_background(&mut self) -> Option<Response<GatewayBody>> {
        match &mut self.mode {
            Mode::Store(p) => p.background.take(),
            _ => None,
        }
    }

    /// Sends `req` upstream from a task of its own and lets the answer refresh the cache.
    pub fn refresh_in_background(
        self,
        service: Arc<crate::upstream::Service>,
        target: Arc<crate::upstream::Target>,
        req: http::Request<crate::body::RequestBody>,
        timeout: Duration,
    ) {
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let in_flight = crate::upstream::InFlight::start(&target);
            let attempt = crate::proxy::client::Attempt::now(timeout);
            let Ok(sent) = crate::proxy::client::send(&service, &target, req, attempt).await else {
                // Dropping `self` lets another request try the refresh.
                return;
            };
            let (mut parts, incoming) = sent.response.into_parts();
            crate::proxy::headers::strip_hop_by_hop(&mut parts.headers, false);
            let body = crate::proxy::exchange::Exchange {
                pooled: sent.pooled,
                in_flight: Some(in_flight),
                ..Default::default()
            }
            .owed_by(GatewayBody::upstream(incoming, service.timeouts.idle));
            // Reading the body to its end stores it.
            let resp = self.respond(Response::from_parts(parts, body));
            let _ = resp.into_body().collect().await;
        });
    }

    /// The upstream failed: a stale entry within its `stale-if-error` window answers instead.
    pub fn upstream_failed(
        self,
        error: GatewayError,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        if let Mode::Store(p) = &self.mode {
            if let (true, Some(stale)) = (p.stale_if_error, &p.stale) {
                return Ok(self.policy.answer(
                    stale,
                    CacheStatus::Stale,
                    Instant::now(),
                    &p.request,
                    p.head,
                ));
            }
        }
        Err(error)
    }

    /// Takes the upstream's response: passes it on (marked), stores it when it is complete and
    /// cacheable, answers from the refreshed entry after a 304, or from the stale entry after
    /// a 5xx within `stale-if-error`.
    pub fn respond(self, mut resp: Response<GatewayBody>) -> Response<GatewayBody> {
        let policy = self.policy;
        let p = match self.mode {
            Mode::Bypass => {
                policy.mark(&mut resp, CacheStatus::Bypass);
                return resp;
            }
            Mode::Invalidate(key) => {
                let s = resp.status();
                if s.is_success() || s.is_redirection() {
                    policy.invalidate(&key);
                }
                policy.mark(&mut resp, CacheStatus::Bypass);
                return resp;
            }
            Mode::Store(p) => p,
        };
        let now = Instant::now();
        let status = resp.status();
        if let Some(stale) = &p.stale {
            if status == StatusCode::NOT_MODIFIED && stale.has_validators() {
                // The upstream confirmed the entry: refresh its metadata from the 304 and
                // answer from it (RFC 9111 section 4.3.4).
                let mut headers = stale.headers.clone();
                for (name, value) in resp.headers() {
                    if name != header::CONTENT_LENGTH && !is_hop_or_age(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                let d = rfc::Directives::parse(&headers);
                let fresh = policy
                    .ttl
                    .or_else(|| rfc::freshness_lifetime(&d, &headers))
                    .or(policy.default_ttl)
                    .unwrap_or(Duration::ZERO);
                let born = now
                    .checked_sub(Duration::from_secs(rfc::age(resp.headers())))
                    .unwrap_or(now);
                let refreshed = stale.refreshed(headers, born, fresh);
                let answer = policy.answer(
                    &refreshed,
                    CacheStatus::Revalidated,
                    now,
                    &p.request,
                    p.head,
                );
                let vary = rfc::vary_names(&refreshed.headers);
                policy.insert(
                    &p.base,
                    vary.filter(|v| !v.is_empty()).map(|v| (v, &p.request)),
                    refreshed,
                );
                drop(p.flight);
                return answer;
            }
            if status.is_server_error() && p.stale_if_error && p.background.is_none() {
                return policy.answer(stale, CacheStatus::Stale, now, &p.request, p.head);
            }
        }
        let storable = policy.storable(&resp, &p, now);
        policy.mark(&mut resp, CacheStatus::Miss);
        if let Some((stored, vary)) = storable {
            resp.body_mut().tap(Box::new(Recorder::new(
                policy.max_entry,
                Box::new(move |body: Bytes| {
                    let mut stored = Stored { body, ..stored };
                    // A chunked origin response gets its length, so HEAD answers carry it.
                    stored
                        .headers
                        .insert(header::CONTENT_LENGTH, stored.body.len().into());
                    policy.insert(&p.base, vary.map(|v| (v, &p.request)), stored);
                    // Wake the waiting requests only once the entry is there.
                    drop(p);
                }),
            )));
        }
        resp
    }
}

fn is_hop_or_age(name: &HeaderName) -> bool {
    name == header::AGE || name == header::CONNECTION || name == header::TRANSFER_ENCODING
}

impl CachePolicy {
    /// Whether a response may be stored, and if so the entry (without its body yet) and the
    /// request headers it varies on.
    fn storable(
        &self,
        resp: &Response<GatewayBody>,
        p: &Pending,
        now: Instant,
    ) -> Option<(Stored, Option<Vec<HeaderName>>)> {
        use http_body::Body as _;
        let headers = resp.headers();
        if p.head
            || !CACHEABLE.contains(&resp.status().as_u16())
            || headers.contains_key(header::SET_COOKIE)
        {
            return None;
        }
        let d = rfc::Directives::parse(headers);
        if (d.no_store && !self.ignore_no_store) || (d.private && !self.ignore_private) {
            return None;
        }
        if p.credentials && !d.allows_authorized() {
            return None;
        }
        let vary = rfc::vary_names(headers)?;
        if resp
            .body()
            .size_hint()
            .exact()
            .or_else(|| {
                headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| crate::body::framing::decimal(v.as_bytes().trim_ascii()))
            })
            .is_some_and(|len| len > self.max_entry)
        {
            return None;
        }
        let validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let fresh = match self
            .ttl
            .or_else(|| rfc::freshness_lifetime(&d, headers))
            .or(self.default_ttl)
        {
            Some(f) => f,
            None if d.no_cache && validators => Duration::ZERO,
            None => return None,
        };
        let allows_stale = d.allows_stale();
        let swr = d
            .stale_while_revalidate
            .map_or(self.swr, Duration::from_secs);
        let sie = d.stale_if_error.map_or(self.sie, Duration::from_secs);
        let mut keep = Duration::ZERO;
        if allows_stale {
            keep = swr.max(sie);
        }
        if validators {
            keep = keep.max(self.keep_stale);
        }
        let born = now
            .checked_sub(Duration::from_secs(rfc::age(headers)))
            .unwrap_or(now);
        if (fresh + keep)
            .saturating_sub(now.saturating_duration_since(born))
            .is_zero()
        {
            return None;
        }
        // Values are copied, not cloned: a parsed value is a slice of the connection's read
        // buffer, which a long-lived entry would otherwise keep alive (8 KiB or more each).
        let mut stored_headers = http::HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            if let Ok(v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                stored_headers.append(name.clone(), v);
            }
        }
        stored_headers.remove(header::AGE);
        // Rate-limit headers describe this request's quota, not the resource: a hit gets its own.
        for h in [
            crate::policy::rate_limit::RATELIMIT,
            crate::policy::rate_limit::RATELIMIT_POLICY,
            crate::policy::rate_limit::X_RATELIMIT_LIMIT,
            crate::policy::rate_limit::X_RATELIMIT_REMAINING,
            crate::policy::rate_limit::X_RATELIMIT_RESET,
        ] {
            stored_headers.remove(h);
        }
        if let Some(h) = &self.status_header {
            stored_headers.remove(h);
        }
        Some((
            Stored {
                status: resp.status(),
                headers: stored_headers,
                body: Bytes::new(),
                born,
                fresh,
                swr,
                sie,
                keep,
                allows_stale,
                no_cache: d.no_cache,
                authorized_ok: d.allows_authorized(),
                refreshing: AtomicBool::new(false),
            },
            (!vary.is_empty()).then_some(vary),
        ))
    }
}
