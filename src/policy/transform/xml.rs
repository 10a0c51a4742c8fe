//! XML ↔ JSON conversion for routes whose upstream speaks XML (quick-xml).
//!
//! The mapping, meant to lose as little as possible:
//! - the document `<order id="7"><item>a</item><item>b</item><note/></order>` becomes
//!   `{"order": {"@id": "7", "item": ["a", "b"], "note": null}}`: the root element is the one
//!   top-level key;
//! - attributes become keys prefixed with `@`;
//! - an element with only text becomes a string; text next to attributes or child elements is
//!   kept under `#text` (whitespace-only text between elements is dropped);
//! - an element that repeats becomes an array, in document order; an empty element is `null`;
//! - values stay strings (XML has no types); comments, processing instructions and the
//!   declaration are dropped; CDATA is text.
//!
//! JSON → XML is the reverse: an object's `@` keys become attributes, `#text` text, arrays
//! repeat their key, scalars become text, `null` an empty element. A body that is not one
//! object with one key is put under the configured root element.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::{Map, Value};

/// Deepest nesting accepted from an upstream (a guard against pathological documents).
const MAX_DEPTH: usize = 256;

struct Frame {
    name: String,
    map: Map<String, Value>,
    text: String,
}

fn start(e: &BytesStart<'_>) -> Result<Frame, String> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut map = Map::new();
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = format!("@{}", String::from_utf8_lossy(a.key.as_ref()));
        let value = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
        map.insert(key, Value::String(value));
    }
    Ok(Frame {
        name,
        map,
        text: String::new(),
    })
}

fn finish(frame: Frame) -> (String, Value) {
    let text = frame.text.trim();
    let value = if frame.map.is_empty() {
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text.to_string())
        }
    } else {
        let mut map = frame.map;
        if !text.is_empty() {
            map.insert("#text".into(), Value::String(text.to_string()));
        }
        Value::Object(map)
    };
    (frame.name, value)
}

fn insert(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        Some(Value::Array(a)) => a.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            map.insert(key, value);
        }
    }
}

/// Converts an XML document to JSON; the error says what is wrong and where (byte offset).
pub fn xml_to_json(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = Reader::from_reader(bytes);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("{e} at byte {}", reader.error_position()))?;
        match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                stack.push(start(&e)?);
            }
            Event::Empty(e) => {
                let (k, v) = finish(start(&e)?);
                match stack.last_mut() {
                    Some(parent) => insert(&mut parent.map, k, v),
                    None if root.is_none() => root = Some((k, v)),
                    None => return Err("more than one root element".into()),
                }
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or("an end tag without a start tag")?;
                let (k, v) = finish(frame);
                match stack.last_mut() {
                    Some(parent) => insert(&mut parent.map, k, v),
                    None => root = Some((k, v)),
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|e| e.to_string())?;
                let text = quick_xml::escape::unescape(&text).map_err(|e| e.to_string())?;
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(t) => {
                if let Some(f) = stack.last_mut() {
                    f.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(r) => {
                // An entity or character reference in text (`&amp;`, `&#233;`).
                let name = String::from_utf8_lossy(&r).into_owned();
                let text = quick_xml::escape::unescape(&format!("&{name};"))
                    .map_err(|e| e.to_string())?
                    .into_owned();
                if let Some(f) = stack.last_mut() {
                    f.text.push_str(&text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(format!(
            "the document ends inside <{}>",
            stack.last().map_or("", |f| f.name.as_str())
        ));
    }
    let (k, v) = root.ok_or("no root element")?;
    let mut m = Map::new();
    m.insert(k, v);
    Ok(Value::Object(m))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn element(out: &mut String, name: &str, v: &Value) {
    // A key that cannot be an element name is skipped rather than producing broken XML.
    if !valid_name(name) {
        return;
    }
    match v {
        Value::Array(items) => {
            for item in items {
                element(out, name, item);
            }
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        Value::Object(map) => {
            out.push('<');
            out.push_str(name);
            for (k, v) in map {
                if let Some(attr) = k.strip_prefix('@').filter(|a| valid_name(a)) {
                    out.push(' ');
                    out.push_str(attr);
                    out.push_str("=\"");
                    out.push_str(&quick_xml::escape::escape(scalar(v).as_str()));
                    out.push('"');
                }
            }
            out.push('>');
            for (k, v) in map {
                if k == "#text" {
                    out.push_str(&quick_xml::escape::escape(scalar(v).as_str()));
                } else if !k.starts_with('@') {
                    element(out, k, v);
                }
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        scalar_value => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&quick_xml::escape::escape(scalar(scalar_value).as_str()));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

/// Converts JSON to an XML document. A one-key object whose key is a valid element name gives
/// the root element, unless its value is an array; anything else is put under `root`, and the
/// entries of a top-level array become `<item>` elements in it.
///
/// An array repeats its key, so it can never be the root itself: `{"a": [1, 2]}` as the root
/// would be `<a>1</a><a>2</a>`, two root elements, which no XML parser accepts.
pub fn json_to_xml(v: &Value, root: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    match v {
        Value::Object(m)
            if m.len() == 1 && m.iter().all(|(k, v)| valid_name(k) && !v.is_array()) =>
        {
            for (k, v) in m {
                element(&mut out, k, v);
            }
        }
        Value::Array(_) => {
            let mut items = Map::new();
            items.insert("item".into(), v.clone());
            element(&mut out, root, &Value::Object(items));
        }
        other => element(&mut out, root, other),
    }
    out
}

/// Whether a content type is XML (`application/xml`, `text/xml`, `*/*+xml`).
pub fn is_xml(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/xml" || mime == "text/xml" || mime.ends_with("+xml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_mapping() {
        let xml = br#"<?xml version="1.0"?>
            <order id="7" state="new">
              <item sku="a1">Apple &amp; pear</item>
              <item>Banana</item>
              <note/>
              <total currency="EUR">12.50</total>
              <![CDATA[raw <text>]]>
              <!-- dropped -->
            </order>"#;
        let v = xml_to_json(xml).unwrap();
        assert_eq!(
            v,
            json!({"order": {"@id": "7", "@state": "new",
                "item": [{"@sku": "a1", "#text": "Apple & pear"}, "Banana"],
                "note": null,
                "total": {"@currency": "EUR", "#text": "12.50"},
                "#text": "raw <text>"}})
        );
        // And back: the same document, modulo whitespace and order of keys.
        let back = json_to_xml(&v, "root");
        assert_eq!(xml_to_json(back.as_bytes()).unwrap(), v);
    }

    #[test]
    fn malformed_documents_are_errors_with_a_reason() {
        for (doc, why) in [
            ("<a><b></a>", ""),
            ("<a>", "ends inside <a>"),
            ("", "no root element"),
            ("<a/><b/>", "more than one root"),
            ("not xml", "outside the root"),
        ] {
            let e = xml_to_json(doc.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{doc}: {e}");
        }
    }

    #[test]
    fn arrays_at_the_top_never_make_two_root_elements() {
        // Found by fuzz/fuzz_targets/json_body.rs: both used to give `<x>1</x><x>2</x>`.
        assert_eq!(
            json_to_xml(&json!([1, {"b": true}]), "request"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><request><item>1</item><item><b>true</b></item></request>"
        );
        assert_eq!(
            json_to_xml(&json!({"items": [1, 2]}), "request"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><request><items>1</items><items>2</items></request>"
        );
        for v in [json!([]), json!([[1, 2], null]), json!({"a": []})] {
            let xml = json_to_xml(&v, "request");
            assert!(xml_to_json(xml.as_bytes()).is_ok(), "{v} gave {xml}");
        }
    }

    #[test]
    fn json_that_is_not_one_keyed_object_goes_under_the_root() {
        assert_eq!(
            json_to_xml(&json!({"a": 1, "b": [true, null], "<bad>": 2}), "request"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><request><a>1</a><b>true</b><b/></request>"
        );
    }
}
