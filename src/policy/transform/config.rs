//! The `transform` policy's YAML.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `- transform: {request: {...}, response: {...}}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTransformPolicy {
    /// What to change on the way to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RawRequestTransform>,
    /// What to change on the upstream's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RawResponseTransform>,
}

/// Request changes, applied after authentication and the core path rewrite.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequestTransform {
    /// Header operations.
    #[serde(default)]
    pub headers: RawHeaderOps,
    /// Query parameter operations.
    #[serde(default)]
    pub query: RawQueryOps,
    /// A regex rewrite of the upstream path (after the route's `rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RawPathRewrite>,
    /// Send the request upstream with this method instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// JSON body operations (JSON content types under `max_bytes` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<super::json::RawJsonOps>,
    /// A JSON Schema the request body must satisfy (checked before `body` operations);
    /// failures are answered 400 with every error listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// Send a JSON request body to the upstream as XML (see `policy/transform/xml.rs` for the
    /// mapping), under this root element when the body is not a one-key object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_xml: Option<RawToXml>,
}

/// `to_xml: {root: request}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawToXml {
    /// Root element name for bodies that are not a one-key object. Default `request`.
    #[serde(default = "default_root")]
    pub root: String,
}

fn default_root() -> String {
    "request".into()
}

/// Response changes, applied to upstream responses (not to the gateway's own errors).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawResponseTransform {
    /// Header operations; templates read the request.
    #[serde(default)]
    pub headers: RawHeaderOps,
    /// JSON body operations (no templates: string values are literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<super::json::RawJsonOps>,
    /// Convert an XML upstream response to JSON (before `body` operations); malformed XML is
    /// answered 502.
    #[serde(default)]
    pub from_xml: bool,
}

/// Header operations, applied in this order: remove, rename, set, add, append.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Headers to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// `old: new`: move every value of `old` to `new` (replacing `new`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Replace the header (or create it) with this template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Create the header only if it is absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Add one more value, keeping existing ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append: BTreeMap<String, String>,
}

/// Query parameter operations, applied in this order: remove, rename, set, add.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawQueryOps {
    /// Parameters to delete (every occurrence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// `old: new`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Replace every occurrence (or create it) with this template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Create the parameter only if it is absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl RawHeaderOps {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

impl RawQueryOps {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// `path: {regex: "^/api/(?<rest>.*)$", replacement: "/v2/$rest"}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPathRewrite {
    /// A regex matched against the upstream path (without the query).
    pub regex: String,
    /// The replacement; `$1`, `$name` or `${name}` insert captures. A path the regex does
    /// not match is left as it is.
    pub replacement: String,
}
