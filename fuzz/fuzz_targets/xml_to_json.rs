//! XML → JSON as an XML upstream's response body is converted (`from_xml`), then back.
//!
//! Invariants besides "no panic": an accepted document gives a one-key object (its root
//! element); converting that JSON back to XML gives a document that converts again, to the
//! same root key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::policy::transform::xml::{json_to_xml, xml_to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = xml_to_json(data) else {
        return;
    };
    let obj = value.as_object().expect("the document is an object");
    assert_eq!(obj.len(), 1, "one root element: {value}");
    let root = obj.keys().next().cloned().unwrap_or_default();
    let _ = serde_json::to_vec(&value).expect("serializes");

    let xml = json_to_xml(&value, "response");
    match xml_to_json(xml.as_bytes()) {
        Ok(back) => {
            let back_root = back.as_object().and_then(|o| o.keys().next().cloned());
            // A root whose name JSON → XML will not write (not an XML name) ends up under
            // the default root instead.
            assert!(
                back_root.as_deref() == Some(root.as_str())
                    || back_root.as_deref() == Some("response"),
                "root {root:?} came back as {back_root:?}"
            );
        }
        Err(e) => {
            // A root that is not a valid element name is dropped entirely: nothing to read.
            assert!(
                e.contains("no root element"),
                "json_to_xml made XML its own reader refuses ({e}): {xml}"
            );
        }
    }
});
