//! Human-friendly units in the config: durations (`250ms`, `30s`, `5m`, `1h`) and byte sizes
//! (`512`, `64KiB`, `10MB`).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration the config accepts anywhere: 365 days. Nothing a gateway times needs
/// longer, and libraries given far longer ones panic (moka refuses a cache TTL over 1000 years)
/// or overflow when adding them to an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The largest byte size the config accepts anywhere: 1 TiB. Sizes bound bodies and caches; a
/// larger one is a typo, and it would overflow arithmetic on 32-bit `usize` counts elsewhere.
pub const MAX_BYTE_SIZE: u64 = 1 << 40;

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`, at most
/// [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }

    /// A duration of whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `1d`; `None` on anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().ok()?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        // Days: for quota windows (`rate_limit` limits per `1d`).
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms_per_unit)?))
}

/// `1` followed by the unit of `text` (`99999999999d` → `1d`), to tell a number too large for
/// its unit from a malformed one.
fn one_of_unit(text: &str) -> String {
    let text = text.trim();
    match text.find(|c: char| !c.is_ascii_digit()) {
        Some(0) => String::new(),
        Some(at) => format!("1{}", &text[at..]),
        None if text.is_empty() => String::new(),
        None => "1".to_string(),
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 30s, 5m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                match parse_duration(v) {
                    Some(d) if d <= MAX_DURATION => Ok(Dur(d)),
                    // Too many digits for a u64 of milliseconds is too long, not malformed.
                    Some(_) | None if parse_duration(&one_of_unit(v)).is_some() => {
                        Err(E::custom(format!(
                            "`{}` is longer than 365d, the longest duration the config accepts",
                            v.trim()
                        )))
                    }
                    _ => Err(E::custom(
                        "expected a duration such as 250ms, 30s, 5m or 1h",
                    )),
                }
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Dur, E> {
                Err(E::custom("a duration needs a unit: 250ms, 30s, 5m or 1h"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": "A duration: 250ms, 30s, 5m, 1h, 1d"
        })
    }
}

/// A byte count written as a plain integer or with a unit: `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), at most [`MAX_BYTE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses `1024`, `64KiB`, `10MB`; `None` on anything else.
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as 16384, 64KiB or 10MB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                match parse_byte_size(v) {
                    Some(n) => self.visit_u64(n),
                    None if parse_byte_size(&one_of_unit(v)).is_some() => Err(E::custom(format!(
                        "`{}` is more than 1TiB, the largest size the config accepts",
                        v.trim()
                    ))),
                    None => Err(E::custom(
                        "expected a byte size such as 16384, 64KiB or 10MB",
                    )),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                if v > MAX_BYTE_SIZE {
                    return Err(E::custom(format!(
                        "{v} bytes is more than 1TiB, the largest size the config accepts"
                    )));
                }
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+ ?(B|KB|kB|MB|GB|KiB|MiB|GiB)?$"}
            ],
            "description": "A byte size: 16384, 64KiB, 10MB"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_bare_numbers() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn byte_sizes_parse_decimal_and_binary_units() {
        assert_eq!(parse_byte_size("1024"), Some(1024));
        assert_eq!(parse_byte_size("64KiB"), Some(65536));
        assert_eq!(parse_byte_size("10MB"), Some(10_000_000));
        assert_eq!(parse_byte_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_byte_size("12XB"), None);
        assert_eq!(parse_byte_size("99999999999999999999GiB"), None);
    }

    fn dur(text: &str) -> Result<Dur, String> {
        serde_yaml_ng::from_str::<Dur>(text).map_err(|e| e.to_string())
    }

    fn size(text: &str) -> Result<ByteSize, String> {
        serde_yaml_ng::from_str::<ByteSize>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_over_365_days_are_refused_with_the_limit_named() {
        assert_eq!(dur("365d"), Ok(Dur(MAX_DURATION)));
        for long in ["366d", "400000d", "99999999999999999999d", "8761h"] {
            let err = dur(long).unwrap_err();
            assert!(err.contains("longer than 365d"), "{long}: {err}");
        }
        assert!(dur("3x").unwrap_err().contains("expected a duration"));
    }

    #[test]
    fn sizes_over_one_tib_are_refused_with_the_limit_named() {
        assert_eq!(size("1024GiB"), Ok(ByteSize(MAX_BYTE_SIZE)));
        for big in ["1025GiB", "99999999999999999999GiB", "1099511627777"] {
            let err = size(big).unwrap_err();
            assert!(err.contains("more than 1TiB"), "{big}: {err}");
        }
        assert!(size("-1").unwrap_err().contains("negative"));
        assert!(size("12XB").unwrap_err().contains("expected a byte size"));
    }
}
