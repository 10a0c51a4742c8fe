//! The `openapi` policy's YAML.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `- openapi: {spec: ./petstore.yaml, validate_requests: true, validate_responses: log}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOpenApi {
    /// The OpenAPI 3.0 or 3.1 document (JSON or YAML), relative to the working directory like
    /// every file the config names. `$ref`s to relative files are read too.
    pub spec: String,
    /// Refuse requests whose parameters or JSON body break the operation (400 with an
    /// `errors` list). Default true.
    #[serde(default = "yes")]
    pub validate_requests: bool,
    /// What to do with upstream answers that break the operation: `off` (default), `log`
    /// (a warning and `portico_openapi_response_mismatch_total`) or `enforce` (502).
    #[serde(default)]
    pub validate_responses: ResponseMode,
    /// The spec is the route's contract: a path it does not describe is answered 404, a method
    /// it does not describe on a known path 405. Default false (such requests pass unchecked).
    #[serde(default)]
    pub strict: bool,
    /// Answer from the spec's examples (or a minimal instance of the response schema) and never
    /// call the upstream; `Prefer: code=404, example=name` picks the answer.
    #[serde(default)]
    pub mock: bool,
    /// A path prefix the routes add in front of the spec's paths (`/api` when `/pets` is served
    /// as `/api/pets`); removed before the operation is looked up.
    #[serde(default)]
    pub prefix: Option<String>,
}

fn yes() -> bool {
    true
}

/// `validate_responses`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// Not checked.
    #[default]
    Off,
    /// Counted and logged; the answer goes to the client unchanged.
    Log,
    /// A mismatching answer becomes a 502.
    Enforce,
}
