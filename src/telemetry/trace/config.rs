//! The `tracing:` section: span export over OTLP and its sampling. Propagation of
//! `traceparent`/`tracestate` needs no config (it is always on).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::Dur;
use crate::spec::ConfigError;

/// Distributed tracing.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Export spans to an OpenTelemetry collector. Absent (the default): nothing is exported,
    /// and `traceparent` is still propagated.
    pub otlp: Option<RawOtlp>,
    /// Share of new traces (requests without a `traceparent`) that are sampled and exported,
    /// 0.0 to 1.0. Default 1.0. A caller's sampled flag is always followed (parent-based).
    pub sampling_ratio: f64,
    /// `service.name` of the exported spans. Default `portico`.
    pub service_name: String,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp: None,
            sampling_ratio: 1.0,
            service_name: "portico".into(),
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (sent as is: include
    /// the `/v1/traces` path).
    pub endpoint: String,
    /// `http/protobuf` (the only one supported now).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Time allowed for one export request. Default 10s.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Extra request headers (e.g. an `authorization` for a hosted collector; use `${ENV}`).
    /// Redacted by the admin API's `/config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Finished spans waiting for export; when full, new spans are dropped and counted, never
    /// waited for. Default 2048, at most 65536.
    #[serde(default = "default_queue")]
    pub max_queue_size: usize,
    /// Most spans in one export request. Default 512.
    #[serde(default = "default_batch")]
    pub max_export_batch_size: usize,
    /// How often queued spans are sent (sooner when a batch is full). Default 1s.
    #[serde(default = "default_interval")]
    pub export_interval: Dur,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP POST.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over gRPC: accepted by the parser so the error can say what to use instead.
    #[serde(rename = "grpc")]
    Grpc,
}

fn default_timeout() -> Dur {
    Dur::from_secs(10)
}
/// The largest `max_queue_size`: the exporter allocates the whole queue when it starts (about
/// 370 bytes a slot, so 24 MiB here), and a far larger one aborts the process on a failed
/// allocation, which no reload may do.
const MAX_QUEUE: usize = 65_536;

fn default_queue() -> usize {
    2048
}
fn default_batch() -> usize {
    512
}
fn default_interval() -> Dur {
    Dur::from_secs(1)
}

/// Checks the section; every problem is reported with its key path.
pub fn validate(raw: &RawTracing, errs: &mut Vec<ConfigError>) {
    if !(0.0..=1.0).contains(&raw.sampling_ratio) {
        errs.push(ConfigError::new(
            "tracing.sampling_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    if raw.service_name.trim().is_empty() {
        errs.push(ConfigError::new(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    let Some(otlp) = &raw.otlp else {
        return;
    };
    match otlp.endpoint.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
        Ok(uri) if uri.scheme_str() == Some("https") => errs.push(ConfigError::new(
            "tracing.otlp.endpoint",
            "https collectors are not supported yet: use an http:// endpoint (a local collector \
             or agent)",
        )),
        _ => errs.push(ConfigError::new(
            "tracing.otlp.endpoint",
            format!(
                "`{}` is not an http:// URL such as http://127.0.0.1:4318/v1/traces",
                otlp.endpoint
            ),
        )),
    }
    if otlp.protocol == OtlpProtocol::Grpc {
        errs.push(ConfigError::new(
            "tracing.otlp.protocol",
            "grpc is not supported: use http/protobuf (collectors accept it on port 4318)",
        ));
    }
    if otlp.timeout.0.is_zero() {
        errs.push(ConfigError::new(
            "tracing.otlp.timeout",
            "must be greater than 0",
        ));
    }
    if otlp.export_interval.0.is_zero() {
        errs.push(ConfigError::new(
            "tracing.otlp.export_interval",
            "must be greater than 0",
        ));
    }
    if otlp.max_queue_size == 0 || otlp.max_queue_size > MAX_QUEUE {
        errs.push(ConfigError::new(
            "tracing.otlp.max_queue_size",
            format!("must be between 1 and {MAX_QUEUE}"),
        ));
    }
    if otlp.max_export_batch_size == 0 || otlp.max_export_batch_size > otlp.max_queue_size {
        errs.push(ConfigError::new(
            "tracing.otlp.max_export_batch_size",
            "must be between 1 and max_queue_size",
        ));
    }
    for (name, value) in &otlp.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(ConfigError::new(
                format!("tracing.otlp.headers.{name}"),
                "not a valid header name",
            ));
        } else if http::HeaderValue::from_str(value).is_err() {
            errs.push(ConfigError::new(
                format!("tracing.otlp.headers.{name}"),
                "not a valid header value",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let raw: RawTracing = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errs = Vec::new();
        validate(&raw, &mut errs);
        errs.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn defaults_export_nothing_and_are_valid() {
        let raw = RawTracing::default();
        assert!(raw.otlp.is_none());
        assert!(errors("{}").is_empty());
        assert!(errors("otlp: {endpoint: 'http://127.0.0.1:4318/v1/traces'}").is_empty());
    }

    #[test]
    fn a_queue_the_exporter_could_not_allocate_is_refused() {
        let got = errors(
            "{otlp: {endpoint: 'http://127.0.0.1:4318/v1/traces', max_queue_size: 100000000000}}",
        );
        assert_eq!(got, ["tracing.otlp.max_queue_size"]);
        assert!(errors(
            "{otlp: {endpoint: 'http://127.0.0.1:4318/v1/traces', max_queue_size: 65536}}"
        )
        .is_empty());
    }

    #[test]
    fn bad_values_are_reported_by_key_path() {
        let got = errors(
            "{sampling_ratio: 1.5, service_name: '', otlp: {endpoint: 'ftp://x', protocol: grpc, \
             timeout: 0s, max_queue_size: 4, max_export_batch_size: 8, headers: {'a b': x}}}",
        );
        assert_eq!(
            got,
            [
                "tracing.sampling_ratio",
                "tracing.service_name",
                "tracing.otlp.endpoint",
                "tracing.otlp.protocol",
                "tracing.otlp.timeout",
                "tracing.otlp.max_export_batch_size",
                "tracing.otlp.headers.a b",
            ]
        );
    }
}
