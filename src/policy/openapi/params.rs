//! Parameters: reading a path, query, header or cookie parameter out of the request in its
//! `style`/`explode` serialization, and turning the text into the JSON its schema expects
//! (`"7"` → `7` for an integer) before the schema checks it.
//!
//! Styles handled: path `simple`, `label`, `matrix`; query `form` (exploded or not),
//! `spaceDelimited`, `pipeDelimited`, `deepObject`; header `simple`; cookie `form`; and
//! parameters described with `content: {application/json: ...}` (the text is JSON).

use serde_json::{Map, Value};

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A path template variable.
    Path,
    /// The query string.
    Query,
    /// A header.
    Header,
    /// A cookie.
    Cookie,
}

impl Place {
    /// The name used in error locations.
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Path => "path",
            Place::Query => "query",
            Place::Header => "header",
            Place::Cookie => "cookie",
        }
    }

    /// From the spec's `in`.
    pub fn parse(s: &str) -> Option<Place> {
        Some(match s {
            "path" => Place::Path,
            "query" => Place::Query,
            "header" => Place::Header,
            "cookie" => Place::Cookie,
            _ => return None,
        })
    }
}

/// How a parameter is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `1,2,3` (path, header).
    Simple,
    /// `.1.2.3` (path).
    Label,
    /// `;id=1,2` (path).
    Matrix,
    /// `id=1&id=2` or `id=1,2` (query, cookie).
    Form,
    /// `id=1%202` (query arrays).
    SpaceDelimited,
    /// `id=1|2` (query arrays).
    PipeDelimited,
    /// `id[a]=1&id[b]=2` (query objects).
    DeepObject,
    /// The value is JSON (`content:` instead of `schema:`).
    Json,
}

impl Style {
    /// From the spec's `style`, or the default of `place`.
    pub fn parse(s: Option<&str>, place: Place) -> Option<Style> {
        Some(match s {
            None => match place {
                Place::Path | Place::Header => Style::Simple,
                Place::Query | Place::Cookie => Style::Form,
            },
            Some("simple") => Style::Simple,
            Some("label") => Style::Label,
            Some("matrix") => Style::Matrix,
            Some("form") => Style::Form,
            Some("spaceDelimited") => Style::SpaceDelimited,
            Some("pipeDelimited") => Style::PipeDelimited,
            Some("deepObject") => Style::DeepObject,
            Some(_) => return None,
        })
    }
}

/// The JSON type text is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    /// Kept as text.
    String,
    /// `7`; beyond 64 bits, a float (JSON Schema's integers have no size).
    Integer,
    /// `7` with `format: int32` or `int64`: beyond 64 bits stays text, refused as such (as a
    /// float it would round onto the format's bound and pass it).
    Integer64,
    /// `7.5`.
    Number,
    /// `true`/`false`.
    Boolean,
    /// No single type: a number or boolean if it reads as one, else text.
    Any,
}

/// The shape of a parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Scalar(Prim),
    /// A list.
    Array(Prim),
    /// A map; its known properties with their types.
    Object(Vec<(String, Prim)>),
}

impl Shape {
    /// The shape a (dereferenced) schema describes.
    pub fn of(schema: &Value, items: Option<&Value>, props: &[(String, Option<&Value>)]) -> Shape {
        match type_of(schema) {
            Some("array") => Shape::Array(items.map_or(Prim::Any, prim_of)),
            Some("object") => Shape::Object(
                props
                    .iter()
                    .map(|(n, s)| (n.clone(), s.map_or(Prim::Any, prim_of)))
                    .collect(),
            ),
            _ => Shape::Scalar(prim_of(schema)),
        }
    }
}

fn type_of(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => {
            let mut non_null = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null");
            let first = non_null.next();
            non_null.next().is_none().then_some(first).flatten()
        }
        _ => None,
    }
}

fn prim_of(schema: &Value) -> Prim {
    let format = schema.get("format").and_then(Value::as_str);
    match type_of(schema) {
        Some("integer") if matches!(format, Some("int32" | "int64")) => Prim::Integer64,
        Some("integer") => Prim::Integer,
        Some("number") => Prim::Number,
        Some("boolean") => Prim::Boolean,
        Some("string") => Prim::String,
        _ => Prim::Any,
    }
}

/// Text to JSON of type `p`; text that does not read as the type stays text, so the schema
/// reports it ("is not of type integer").
pub fn coerce(text: &str, p: Prim) -> Value {
    // 64-bit integers exactly, other numbers as floats.
    let float = || {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
    };
    let number = || {
        text.parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .ok()
            .or_else(float)
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let big_integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    match p {
        Prim::String => Value::String(text.to_string()),
        Prim::Integer64 if big_integer => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(text.into())),
        Prim::Integer | Prim::Integer64 | Prim::Number => {
            number().unwrap_or_else(|| Value::String(text.into()))
        }
        Prim::Boolean => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.into()),
        },
        Prim::Any => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => number().unwrap_or_else(|| Value::String(text.into())),
        },
    }
}

/// The value of a simple-style (or comma-separated) text.
fn split_value(text: &str, sep: char, shape: &Shape, explode_pairs: bool) -> Value {
    match shape {
        Shape::Scalar(p) => coerce(text, *p),
        Shape::Array(p) => {
            if text.is_empty() {
                return Value::Array(Vec::new());
            }
            let trim = |t: &'_ str| {
                if sep == ',' {
                    t.trim().to_string()
                } else {
                    t.to_string()
                }
            };
            Value::Array(text.split(sep).map(|t| coerce(&trim(t), *p)).collect())
        }
        Shape::Object(props) => {
            let mut out = Map::new();
            if explode_pairs {
                for pair in text.split(sep).filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    out.insert(k.to_string(), coerce(v, prop_prim(props, k)));
                }
            } else {
                let mut it = text.split(sep);
                while let Some(k) = it.next() {
                    if k.is_empty() {
                        continue;
                    }
                    let v = it.next().unwrap_or("");
                    out.insert(k.to_string(), coerce(v, prop_prim(props, k)));
                }
            }
            Value::Object(out)
        }
    }
}

fn prop_prim(props: &[(String, Prim)], name: &str) -> Prim {
    props
        .iter()
        .find(|(n, _)| n == name)
        .map_or(Prim::Any, |(_, p)| *p)
}

/// A path parameter's value from its (percent-decoded) segment text.
pub fn path_value(
    text: &str,
    name: &str,
    style: Style,
    explode: bool,
    shape: &Shape,
) -> Result<Value, String> {
    match style {
        Style::Simple => Ok(split_value(text, ',', shape, explode)),
        Style::Label => {
            let rest = text
                .strip_prefix('.')
                .ok_or("a label-style value starts with `.`")?;
            let sep = if explode { '.' } else { ',' };
            Ok(split_value(rest, sep, shape, explode))
        }
        Style::Matrix => {
            let prefix = format!(";{name}");
            match shape {
                Shape::Array(p) if explode => {
                    let mut items = Vec::new();
                    for part in text.split(';').filter(|p| !p.is_empty()) {
                        let (k, v) = part.split_once('=').unwrap_or((part, ""));
                        if k != name {
                            return Err(format!("`{part}` is not `{name}=...`"));
                        }
                        items.push(coerce(v, *p));
                    }
                    Ok(Value::Array(items))
                }
                Shape::Object(_) if explode => {
                    let rest = text
                        .strip_prefix(';')
                        .ok_or("a matrix value starts with `;`")?;
                    Ok(split_value(rest, ';', shape, true))
                }
                _ => {
                    let rest = text
                        .strip_prefix(&prefix)
                        .ok_or_else(|| format!("a matrix value starts with `{prefix}`"))?;
                    let rest = rest.strip_prefix('=').unwrap_or(rest);
                    Ok(split_value(rest, ',', shape, false))
                }
            }
        }
        Style::Json => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        _ => Ok(split_value(text, ',', shape, explode)),
    }
}

/// A query (or cookie) parameter's value from the decoded pairs, `None` when absent.
pub fn query_value(
    pairs: &[(String, String)],
    name: &str,
    style: Style,
    explode: bool,
    shape: &Shape,
) -> Result<Option<Value>, String> {
    let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    match (style, shape) {
        (Style::DeepObject, Shape::Object(_) | Shape::Scalar(_)) => {
            let props: &[(String, Prim)] = match shape {
                Shape::Object(p) => p,
                _ => &[],
            };
            let mut out = Map::new();
            for (k, v) in pairs {
                let Some(prop) = k
                    .strip_prefix(name)
                    .and_then(|r| r.strip_prefix('['))
                    .and_then(|r| r.strip_suffix(']'))
                else {
                    continue;
                };
                out.insert(prop.to_string(), coerce(v, prop_prim(props, prop)));
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
        (Style::Form, Shape::Object(props)) if explode => {
            // Each property is its own parameter: the object is what of them is present.
            let mut out = Map::new();
            for (prop, p) in props {
                if let Some((_, v)) = pairs.iter().find(|(k, _)| k == prop) {
                    out.insert(prop.clone(), coerce(v, *p));
                }
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
        (Style::Form, Shape::Array(p)) if explode => {
            let items: Vec<Value> = values.map(|v| coerce(v, *p)).collect();
            Ok((!items.is_empty()).then_some(Value::Array(items)))
        }
        _ => {
            let Some(text) = values.next() else {
                return Ok(None);
            };
            let v = match style {
                Style::SpaceDelimited => split_value(text, ' ', shape, false),
                Style::PipeDelimited => split_value(text, '|', shape, false),
                Style::Json => {
                    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?
                }
                _ => split_value(text, ',', shape, false),
            };
            Ok(Some(v))
        }
    }
}

/// A header parameter's value.
pub fn header_value(
    text: &str,
    style: Style,
    explode: bool,
    shape: &Shape,
) -> Result<Value, String> {
    if style == Style::Json {
        return serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"));
    }
    Ok(split_value(text.trim(), ',', shape, explode))
}

/// The `name=value` pairs of a `Cookie` header.
pub fn cookies(header: &str) -> Vec<(String, String)> {
    header
        .split(';')
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(s.as_bytes()).into_owned().collect()
    }

    #[test]
    fn path_styles() {
        let ints = Shape::Array(Prim::Integer);
        assert_eq!(
            path_value("3,4", "id", Style::Simple, false, &ints).unwrap(),
            json!([3, 4])
        );
        assert_eq!(
            path_value(".3.4", "id", Style::Label, true, &ints).unwrap(),
            json!([3, 4])
        );
        assert_eq!(
            path_value(".3,4", "id", Style::Label, false, &ints).unwrap(),
            json!([3, 4])
        );
        assert_eq!(
            path_value(";id=3;id=4", "id", Style::Matrix, true, &ints).unwrap(),
            json!([3, 4])
        );
        assert_eq!(
            path_value(";id=3,4", "id", Style::Matrix, false, &ints).unwrap(),
            json!([3, 4])
        );
        let obj = Shape::Object(vec![("a".into(), Prim::Integer)]);
        assert_eq!(
            path_value("a=1,b=x", "o", Style::Simple, true, &obj).unwrap(),
            json!({"a": 1, "b": "x"})
        );
        assert_eq!(
            path_value("a,1", "o", Style::Simple, false, &obj).unwrap(),
            json!({"a": 1})
        );
        assert!(path_value("3", "id", Style::Label, false, &ints).is_err());
    }

    #[test]
    fn query_styles() {
        let ints = Shape::Array(Prim::Integer);
        let get = |s, style, explode, shape: &Shape| {
            query_value(&q(s), "id", style, explode, shape).unwrap()
        };
        assert_eq!(
            get("id=1&id=2", Style::Form, true, &ints),
            Some(json!([1, 2]))
        );
        assert_eq!(
            get("id=1,2", Style::Form, false, &ints),
            Some(json!([1, 2]))
        );
        assert_eq!(
            get("id=1%202", Style::SpaceDelimited, false, &ints),
            Some(json!([1, 2]))
        );
        assert_eq!(
            get("id=1|2", Style::PipeDelimited, false, &ints),
            Some(json!([1, 2]))
        );
        let obj = Shape::Object(vec![
            ("role".into(), Prim::String),
            ("n".into(), Prim::Integer),
        ]);
        assert_eq!(
            get("id[role]=admin&id[n]=2", Style::DeepObject, true, &obj),
            Some(json!({"role": "admin", "n": 2}))
        );
        assert_eq!(
            get("role=admin&n=2", Style::Form, true, &obj),
            Some(json!({"role": "admin", "n": 2}))
        );
        assert_eq!(
            get("id=role,admin", Style::Form, false, &obj),
            Some(json!({"role": "admin"}))
        );
        assert_eq!(
            get("x=1", Style::Form, true, &Shape::Scalar(Prim::Integer)),
            None
        );
        assert_eq!(
            get("id=abc", Style::Form, true, &Shape::Scalar(Prim::Integer)),
            Some(json!("abc"))
        );
    }

    #[test]
    fn integers_beyond_64_bits() {
        assert_eq!(
            coerce("18446744073709551615", Prim::Integer64),
            json!(u64::MAX)
        );
        assert_eq!(
            coerce("-9223372036854775809", Prim::Integer64),
            json!("-9223372036854775809")
        );
        assert!(coerce("-9223372036854775809", Prim::Integer).is_f64());
        assert_eq!(coerce("1.5", Prim::Integer64), json!(1.5));
    }

    #[test]
    fn cookies_and_headers() {
        assert_eq!(
            cookies("a=1; b=\"x\""),
            vec![("a".into(), "1".into()), ("b".into(), "x".into())]
        );
        assert_eq!(
            header_value(" 1, 2", Style::Simple, false, &Shape::Array(Prim::Integer)).unwrap(),
            json!([1, 2])
        );
    }
}
