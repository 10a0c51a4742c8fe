//! Header field names as both HTTP/1.1 engines read them off the wire: the names nearly every
//! message carries are found by a lowercase compare against a table, and only other names go
//! through `HeaderName::from_bytes` (which lowercases into a scratch buffer, then matches its
//! whole standard list, and allocates for a name outside it, `X-Forwarded-For` among them).

use http::header::{self, HeaderName, InvalidHeaderName};

use super::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::telemetry::trace::TRACEPARENT;

/// A usual name: its key (see [`key`]) and its `HeaderName`.
type Known = ([u64; 3], fn() -> HeaderName);

/// The usual names by length (index = length): the key of each lowercase name, with its
/// `HeaderName` (made by a function: a name outside http's standard list holds `Bytes`, which a
/// static cannot).
static BY_LENGTH: [&[Known]; 18] = [
    &[],
    &[],
    &[(key(b"te"), || header::TE)],
    &[(key(b"age"), || header::AGE), (key(b"via"), || header::VIA)],
    &[
        (key(b"host"), || header::HOST),
        (key(b"date"), || header::DATE),
        (key(b"etag"), || header::ETAG),
        (key(b"vary"), || header::VARY),
    ],
    &[
        (key(b"allow"), || header::ALLOW),
        (key(b"range"), || header::RANGE),
    ],
    &[
        (key(b"accept"), || header::ACCEPT),
        (key(b"cookie"), || header::COOKIE),
        (key(b"server"), || header::SERVER),
        (key(b"origin"), || header::ORIGIN),
        (key(b"expect"), || header::EXPECT),
        (key(b"pragma"), || header::PRAGMA),
    ],
    &[
        (key(b"referer"), || header::REFERER),
        (key(b"expires"), || header::EXPIRES),
        (key(b"upgrade"), || header::UPGRADE),
    ],
    &[
        (key(b"location"), || header::LOCATION),
        (key(b"if-match"), || header::IF_MATCH),
    ],
    &[],
    &[
        (key(b"user-agent"), || header::USER_AGENT),
        (key(b"connection"), || header::CONNECTION),
        (key(b"set-cookie"), || header::SET_COOKIE),
    ],
    &[
        (key(b"traceparent"), || TRACEPARENT),
        (key(b"retry-after"), || header::RETRY_AFTER),
    ],
    &[
        (key(b"content-type"), || header::CONTENT_TYPE),
        (key(b"x-request-id"), || X_REQUEST_ID),
    ],
    &[
        (key(b"cache-control"), || header::CACHE_CONTROL),
        (key(b"authorization"), || header::AUTHORIZATION),
        (key(b"last-modified"), || header::LAST_MODIFIED),
        (key(b"accept-ranges"), || header::ACCEPT_RANGES),
        (key(b"if-none-match"), || header::IF_NONE_MATCH),
    ],
    &[(key(b"content-length"), || header::CONTENT_LENGTH)],
    &[
        (key(b"accept-encoding"), || header::ACCEPT_ENCODING),
        (key(b"accept-language"), || header::ACCEPT_LANGUAGE),
        (key(b"x-forwarded-for"), || X_FORWARDED_FOR),
    ],
    &[
        (key(b"content-encoding"), || header::CONTENT_ENCODING),
        (key(b"x-forwarded-host"), || X_FORWARDED_HOST),
    ],
    &[
        (key(b"transfer-encoding"), || header::TRANSFER_ENCODING),
        (key(b"if-modified-since"), || header::IF_MODIFIED_SINCE),
        (key(b"x-forwarded-proto"), || X_FORWARDED_PROTO),
    ],
];

/// The name `raw`, as `HeaderName::from_bytes` makes it (the same answer for any bytes), a
/// usual name without its scratch copy, its standard-list search or its allocation.
pub fn parse(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if let Some(known) = BY_LENGTH.get(raw.len()).filter(|k| !k.is_empty()) {
        let words = words(raw);
        // Setting a byte's 0x20 bit lowercases a letter and leaves a digit or `-` as it is;
        // only a control byte (0x0D, 0x10-0x19) could also turn into one of those, and a name
        // with one is left to `from_bytes` (which refuses it).
        if !words.iter().any(|&w| has_control(w)) {
            let wanted = words.map(|w| w | LOWER);
            for (key, name) in known.iter() {
                if *key == wanted {
                    return Ok(name());
                }
            }
        }
    }
    HeaderName::from_bytes(raw)
}

const LOWER: u64 = 0x2020_2020_2020_2020;

/// A name of up to 24 bytes as three words that cover it: eight bytes from its start, from
/// the eighth (or its end) and from its end (overlapping below 24 bytes); below eight bytes,
/// the name padded with spaces, three times. Fixed-size loads: a copy of a variable length
/// would call `memcpy` three times per name.
fn words(raw: &[u8]) -> [u64; 3] {
    let load = |at: usize| {
        raw.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    if raw.len() >= 8 {
        let last = raw.len() - 8;
        return [load(0), load(last.min(8)), load(last)];
    }
    let mut w = u64::from_le_bytes([b' '; 8]);
    for (i, &b) in raw.iter().enumerate() {
        w = w & !(0xff << (8 * i)) | u64::from(b) << (8 * i);
    }
    [w, w, w]
}

/// [`words`] of a lowercase name, with the 0x20 bits set, at compile time.
const fn key(lower: &[u8]) -> [u64; 3] {
    const fn word(bytes: &[u8], at: usize) -> u64 {
        let mut w = 0u64;
        let mut i = 0;
        while i < 8 {
            let b = if at + i < bytes.len() {
                bytes[at + i]
            } else {
                b' '
            };
            w |= (b as u64) << (8 * i);
            i += 1;
        }
        w | LOWER
    }
    let last = lower.len().saturating_sub(8);
    let middle = if last < 8 { last } else { 8 };
    [word(lower, 0), word(lower, middle), word(lower, last)]
}

/// Whether a byte of `w` is below 0x20 (the "has a byte less than n" bit trick, exact for the
/// question of whether any is).
fn has_control(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_found_in_any_case_as_http_names_it() {
        for (len, names) in BY_LENGTH.iter().enumerate() {
            for (key_of, name) in names.iter() {
                let lower = name().as_str().as_bytes().to_vec();
                assert_eq!(lower.len(), len);
                assert_eq!(*key_of, key(&lower));
                assert_eq!(HeaderName::from_bytes(&lower).unwrap(), name());
                let upper = lower.to_ascii_uppercase();
                let mut title = lower.to_vec();
                title[0] = title[0].to_ascii_uppercase();
                for raw in [lower.to_vec(), upper, title] {
                    assert_eq!(parse(&raw).unwrap(), name());
                }
            }
        }
    }

    #[test]
    fn any_one_byte_changed_gets_the_answer_http_gives() {
        for names in BY_LENGTH.iter() {
            for (_, name) in names.iter() {
                let lower = name().as_str().as_bytes().to_vec();
                for at in 0..lower.len() {
                    for b in 0..=255u8 {
                        let mut raw = lower.to_vec();
                        raw[at] = b;
                        let ours = parse(&raw).ok();
                        let theirs = HeaderName::from_bytes(&raw).ok();
                        assert_eq!(ours, theirs, "{raw:?}");
                    }
                }
            }
        }
    }
}
