//! RFC 9110 proxy header hygiene: hop-by-hop stripping, forwarding headers, request ids, and
//! the client IP as seen through trusted proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// `X-Request-Id`.
pub use crate::error::X_REQUEST_ID;
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The settings of an `h2c` upgrade (RFC 7540 §3.2.1): meaningful on one hop only, and the
/// gateway never relays that upgrade, so it goes even when `Connection` does not name it.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Header maps kept per worker thread for the next message head. A map of a request's size
/// is two allocations (its index table and its entries, a few KiB), made and freed for every
/// request and every answer; a cleared map keeps both.
const SPARE_MAPS_KEPT: usize = 8;
/// A map that grew past this many fields (a large head) is freed, not kept.
const SPARE_MAP_MAX_CAPACITY: usize = 96;

thread_local! {
    static SPARE_MAPS: std::cell::RefCell<Vec<HeaderMap>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `fields`: one this worker kept, or a new one.
pub fn take_map(fields: usize) -> HeaderMap {
    match SPARE_MAPS.with(|s| s.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Keeps `map`, emptied, for [`take_map`]. Its values are dropped here: a map never holds on
/// to a read buffer (its values share it) past the message it carried.
pub fn give_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_MAX_CAPACITY {
        return;
    }
    // `clear` also puts a map that switched to its collision-resistant hasher back to the fast
    // one: a hostile head does not slow the next message down.
    map.clear();
    SPARE_MAPS.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_MAPS_KEPT {
            spare.push(map);
        }
    });
}

/// Up to this many names, a name is looked for by comparing it with each (a few instructions
/// each) rather than by hashing it and probing the table (70 to 200, more for a long
/// non-standard name).
const SCAN_NAMES_UP_TO: usize = 16;
/// The same for a walk over the fields with their values, which costs more per field.
const SCAN_FIELDS_UP_TO: usize = 8;

/// Removes `name`, looking for it first in a map of a usual size: a `remove` of an absent
/// name still hashes it and probes the table, several times the cost of comparing a few names.
pub fn remove_present(headers: &mut HeaderMap, name: &HeaderName) {
    if headers.keys_len() > SCAN_NAMES_UP_TO || headers.keys().any(|k| k == name) {
        headers.remove(name);
    }
}

/// The first value of `name`, as `HeaderMap::get` finds it. In a map of a usual size the
/// names are compared in order instead: `get` hashes the name (all of its bytes, for a
/// non-standard one) and probes the table, which costs more than comparing a dozen names, and
/// the request path looks up several fields that most requests do not carry.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() > SCAN_FIELDS_UP_TO {
        return headers.get(name);
    }
    headers.iter().find_map(|(k, v)| (k == name).then_some(v))
}

/// The first value of `name` and whether there is another, as `get_all` would tell, comparing
/// names in order in a map of a usual size (see [`first`]).
pub fn first_and_repeated<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> (Option<&'a HeaderValue>, bool) {
    if headers.keys_len() > SCAN_FIELDS_UP_TO {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        return (first, values.next().is_some());
    }
    let mut values = headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v);
    let first = values.next();
    (first, first.is_some() && values.next().is_some())
}

/// The hop-by-hop fields a message loses whatever its `Connection` names (RFC 9110 §7.6.1,
/// with the proxy and h2c-upgrade ones every proxy drops).
const FIXED: [HeaderName; 9] = [
    KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    PROXY_CONNECTION,
    header::UPGRADE,
    HTTP2_SETTINGS,
];

/// Whether `name` is always hop-by-hop (`Connection` itself aside): an answer head kept as its
/// own bytes leaves these out as [`strip_hop_by_hop`] removes them from a map.
pub fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    FIXED.contains(name)
}

/// Appends the fields of an answer head kept as its bytes to `headers`, for a path that reads
/// or rewrites them after all. The fields were checked when the head was read, so none fails
/// here; one that did would be left out.
pub fn fill_from_raw(headers: &mut HeaderMap, raw: Option<Box<crate::body::head::RawHead>>) {
    let Some(raw) = raw else {
        return;
    };
    for (name, value) in raw.shared_fields() {
        let (Ok(name), Ok(value)) = (
            super::field_name::parse(name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade` (unless `keep_upgrade`), `HTTP2-Settings`, and
/// `Proxy-*`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names marks which hop-by-hop headers are present; only those are
    // removed. Most messages carry none or just `Connection: keep-alive`, and each `remove` of
    // an absent name would still cost a hash and a probe.
    let mut present = 0u16;
    let mut connection = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if let Some(i) = FIXED.iter().position(|f| f == name) {
            present |= 1 << i;
        }
    }
    if keep_upgrade {
        present &= !(1 << 7);
    }
    if !connection && present == 0 {
        return;
    }
    if present & (1 << 3) != 0 {
        // The body was framed by Transfer-Encoding on the hop it came in on (RFC 9112 §6.3:
        // it wins over Content-Length), and is re-framed on the next: a Content-Length beside
        // it (which hyper's client leaves in an answer's head) would lie about the body there.
        headers.remove(header::CONTENT_LENGTH);
    }
    if connection {
        // `Connection: keep-alive` / `close` name nothing else: skip the parse for them.
        let plain = headers
            .get_all(header::CONNECTION)
            .iter()
            .all(|v| is_token(v.as_bytes(), b"keep-alive") || is_token(v.as_bytes(), b"close"));
        if !plain {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE))
                .collect();
            for n in named {
                headers.remove(n);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for (i, name) in FIXED.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

fn is_token(value: &[u8], token: &[u8]) -> bool {
    value.eq_ignore_ascii_case(token)
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Keeps only the `Upgrade` protocols that `allowed` names (compared by protocol name, without
/// its `/version`, ignoring case) and says whether any is left. `h2c` never is: RFC 9113 §3.1
/// deprecates it, and relaying it would hand the client a raw tunnel to the upstream past
/// routing, authentication and rate limits. Without an allowed protocol the `Upgrade` header
/// goes and the request is answered as an ordinary one.
pub fn allow_upgrades(headers: &mut HeaderMap, allowed: &[Box<str>]) -> bool {
    let mut kept = String::new();
    let mut dropped = false;
    for token in headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let name = token.split('/').next().unwrap_or(token);
        let ok = !name.eq_ignore_ascii_case("h2c")
            && allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
        if !ok {
            dropped = true;
            continue;
        }
        if !kept.is_empty() {
            kept.push_str(", ");
        }
        kept.push_str(token);
    }
    if kept.is_empty() {
        headers.remove(header::UPGRADE);
        return false;
    }
    if dropped {
        match HeaderValue::from_str(&kept) {
            Ok(v) => {
                headers.insert(header::UPGRADE, v);
            }
            Err(_) => {
                headers.remove(header::UPGRADE);
                return false;
            }
        }
    }
    true
}

/// The client's IP: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    for value in entries.iter().rev() {
        for entry in value.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted.iter().any(|n| n.contains(&ip)) {
                        return ip;
                    }
                }
                // Garbage in the chain: stop believing anything left of it.
                Err(_) => return client,
            }
        }
    }
    client
}

/// Whether a client-supplied request id is safe to pass on: 1 to 128 visible ASCII characters
/// from a conservative set.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'+' | b'=')
        })
}

/// A new request id: a UUIDv7 (time-ordered, so ids sort by arrival).
pub fn new_request_id() -> HeaderValue {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rand = fastrand::u128(..);
    // Two 64-bit halves: 128-bit shifts cost several instructions each, and this runs for
    // every request that brings no id of its own.
    let high = (ms & 0xFFFF_FFFF_FFFF) << 16 | 0x7 << 12 | (rand as u64 & 0xFFF); // version 7
    let low = 0b10 << 62 | (rand >> 66) as u64; // variant, rand_b (62 bits)
    let mut out = *b"00000000-0000-0000-0000-000000000000";
    const AT: [usize; 8] = [0, 2, 4, 6, 9, 11, 14, 16];
    const AT_LOW: [usize; 8] = [19, 21, 24, 26, 28, 30, 32, 34];
    for i in 0..8 {
        let shift = 56 - i * 8;
        let [a, b] = crate::telemetry::trace::HEX_PAIRS[(high >> shift) as u8 as usize];
        out[AT[i]] = a;
        out[AT[i] + 1] = b;
        let [a, b] = crate::telemetry::trace::HEX_PAIRS[(low >> shift) as u8 as usize];
        out[AT_LOW[i]] = a;
        out[AT_LOW[i] + 1] = b;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// Appends `ip` to `X-Forwarded-For` (keeping earlier entries in one comma list).
pub fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    use http::header::Entry;
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(v) => {
            v.insert(ip.clone());
        }
        Entry::Occupied(mut o) => {
            let mut joined = Vec::with_capacity(64);
            for (i, v) in o.iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                o.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_repeated_answer_as_get_and_get_all_in_small_and_large_maps() {
        let names = [
            header::HOST,
            header::CONTENT_LENGTH,
            X_REQUEST_ID,
            HeaderName::from_static("x-absent"),
            header::ACCEPT,
        ];
        for filler in [0, 3, 20] {
            let mut h = HeaderMap::new();
            for i in 0..filler {
                h.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("f"),
                );
            }
            h.append(header::ACCEPT, HeaderValue::from_static("a1"));
            h.append(header::HOST, HeaderValue::from_static("h1"));
            h.append(header::ACCEPT, HeaderValue::from_static("a2"));
            h.append(X_REQUEST_ID, HeaderValue::from_static("r1"));
            h.append(header::HOST, HeaderValue::from_static("h2"));
            h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            for name in &names {
                assert_eq!(first(&h, name), h.get(name), "{name} with {filler} more");
                let mut all = h.get_all(name).iter();
                let expected = (all.next(), all.next().is_some());
                assert_eq!(
                    first_and_repeated(&h, name),
                    expected,
                    "{name} with {filler} more"
                );
            }
        }
    }

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room_and_a_huge_one_is_not_kept() {
        // A fresh thread: its own spare maps, none yet.
        std::thread::spawn(|| {
            let mut used = take_map(20);
            let room = used.capacity();
            assert!(room >= 20);
            let shared = bytes::Bytes::from_static(b"read buffer");
            used.insert("x-one", HeaderValue::from_maybe_shared(shared).unwrap());
            used.append(header::VIA, HeaderValue::from_static("1.1 a"));
            give_map(used);
            let again = take_map(10);
            assert!(again.is_empty(), "{again:?}");
            assert_eq!(again.capacity(), room, "the same map, its room kept");
            assert!(again.get("x-one").is_none());
            // More room asked than a kept map has: it grows.
            give_map(again);
            assert!(take_map(60).capacity() >= 60);

            let mut huge = HeaderMap::with_capacity(SPARE_MAP_MAX_CAPACITY + 1);
            huge.insert("x-big", HeaderValue::from_static("1"));
            give_map(huge);
            assert_eq!(SPARE_MAPS.with(|s| s.borrow().len()), 0);
            for _ in 0..SPARE_MAPS_KEPT + 3 {
                give_map(HeaderMap::with_capacity(4));
            }
            assert_eq!(SPARE_MAPS.with(|s| s.borrow().len()), SPARE_MAPS_KEPT);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn content_length_beside_transfer_encoding_goes_with_it() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("100"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upgrade_kept_for_upgrade_requests() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key("upgrade"));
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn only_allowed_upgrades_are_kept_and_h2c_never() {
        let allowed: Vec<Box<str>> = vec!["websocket".into(), "h2c".into()];
        let mut h = HeaderMap::new();
        h.insert("upgrade", "h2c".parse().unwrap());
        assert!(!allow_upgrades(&mut h, &allowed));
        assert!(!h.contains_key("upgrade"));
        h.insert("upgrade", "foo/1, WebSocket/13, h2c".parse().unwrap());
        assert!(allow_upgrades(&mut h, &allowed));
        assert_eq!(h["upgrade"], "WebSocket/13");
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(allow_upgrades(&mut h, &allowed));
        assert_eq!(h["upgrade"], "websocket");
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(!allow_upgrades(&mut h, &[]));
    }

    #[test]
    fn http2_settings_is_always_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "http2-settings",
            "AAMAAABkAAQAoAAAAAIAAAAA".parse().unwrap(),
        );
        h.insert("upgrade", "h2c".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            "6.6.6.6, 1.2.3.4, 10.0.0.5".parse().unwrap(),
        );
        let from_proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(from_proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(direct, &h, &trusted), direct);
        assert_eq!(client_ip(from_proxy, &h, &[]), from_proxy);
        h.insert(X_FORWARDED_FOR, "garbage, 10.0.0.7".parse().unwrap());
        assert_eq!(
            client_ip(from_proxy, &h, &trusted),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn request_ids_are_uuid_v7_and_validated() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "7");
        // 8-4-4-4-12 lowercase hex, the variant's top bits 10 (8, 9, a or b).
        let groups: Vec<usize> = s.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{s}");
        assert!(s
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        // The first 48 bits are the time in milliseconds.
        let ms = u64::from_str_radix(&s[..8], 16).unwrap() << 16
            | u64::from_str_radix(&s[9..13], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(ms) < 60_000, "{ms} vs {now}");
        assert!(valid_request_id(&id));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &HeaderValue::from_static("1.1.1.1"));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1");
        h.append(X_FORWARDED_FOR, "2.2.2.2".parse().unwrap());
        append_forwarded_for(&mut h, &HeaderValue::from_static("3.3.3.3"));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3");
    }
}
