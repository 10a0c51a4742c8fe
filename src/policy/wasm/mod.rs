//! The `wasm` policy: proxy-wasm (ABI 0.2.1) filters running on wasmtime, so users extend
//! the gateway without forking it. Filters written for Envoy with the Rust, Go (TinyGo), C++
//! or AssemblyScript SDKs run unchanged, within the gaps `docs/plugins.md` lists.
//!
//! Config load compiles the module once (and starts one probe instance, so a filter that
//! refuses its configuration or lacks an export is a config error with its position); each
//! worker then makes its own instance on first use and keeps it across requests. A reload that
//! leaves a filter's module and settings unchanged keeps the same compiled filter, and so its
//! instances and their state.
//!
//! The runtime is behind the default-on cargo feature `wasm`; without it the key still parses
//! (so a config stays readable) and loading one is an error saying so.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::{ByteSize, Dur};
use crate::spec::ConfigError;

#[cfg(feature = "wasm")]
pub(crate) mod abi;
#[cfg(feature = "wasm")]
mod host;
#[cfg(feature = "wasm")]
pub(crate) mod shared;
#[cfg(feature = "wasm")]
pub(crate) mod stream;
#[cfg(feature = "wasm")]
pub(crate) mod vm;

/// `- wasm: {module: plugins/tenant-gate.wasm, configuration: '{"header": "x-tenant"}'}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWasm {
    /// The compiled filter (`.wasm`, proxy-wasm ABI 0.2.1 or 0.2.0), or its text (`.wat`,
    /// compiled at load), relative to the working directory like every file the config names.
    pub module: String,
    /// The filter's name: its `plugin` label on `/metrics`, its log field, and the scope of
    /// its shared data and queues. Default: the module's file name without `.wasm`.
    #[serde(default)]
    pub name: Option<String>,
    /// Handed to the filter's `on_configure`: a string as it is, any other YAML value as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// When the filter fails (trap, deadline, memory cap): `fail_closed` answers 500 with the
    /// JSON error (default); `fail_open` lets the request go on without the filter.
    #[serde(default)]
    pub on_error: OnError,
    /// Linear memory cap per instance. Default 16MiB; at least 64KiB (one page).
    #[serde(default = "default_memory")]
    pub max_memory: ByteSize,
    /// Deadline per callback (wasmtime epoch interruption, 5 ms resolution). Default 100ms.
    #[serde(default = "default_cpu")]
    pub max_cpu: Dur,
    /// Most body bytes buffered while the filter asks to see a body: beyond it, 413 for a
    /// request body, 502 for a response body. Default 1MiB.
    #[serde(default = "default_body")]
    pub max_body_bytes: ByteSize,
    /// The services the filter may call with `dispatch_http_call` (by service name, through
    /// their pools, breaker and retries). Default: none.
    #[serde(default)]
    pub http_calls: Vec<String>,
}

fn default_memory() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}

fn default_cpu() -> Dur {
    Dur(Duration::from_millis(100))
}

fn default_body() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// `on_error`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Answer 500 (`plugin_failed`).
    #[default]
    FailClosed,
    /// Skip the filter for that request.
    FailOpen,
}

/// A compiled `wasm` policy.
pub struct WasmPolicy {
    /// The filter's name.
    pub name: Arc<str>,
    /// What a failure does.
    pub on_error: OnError,
    #[cfg(feature = "wasm")]
    pub(crate) spec: Arc<vm::FilterSpec>,
    /// Lives as long as a config uses the filter: the workers' instances go with it.
    #[cfg(feature = "wasm")]
    pub(crate) alive: Arc<()>,
}

impl WasmPolicy {
    /// Whether the filter has a callback on the response side; without one the response goes
    /// its usual way, not shown to the filter.
    pub fn sees_responses(&self) -> bool {
        #[cfg(feature = "wasm")]
        return self.spec.sees_responses;
        #[cfg(not(feature = "wasm"))]
        false
    }

    /// Compiles the policy written at `b.path`.
    pub fn compile(raw: &RawWasm, b: &mut super::Build<'_>) -> Option<Arc<Self>> {
        let errors_before = b.errors.len();
        for (i, service) in raw.http_calls.iter().enumerate() {
            if !b.services.contains(&service) {
                b.errors.push(ConfigError::new(
                    format!("{}.http_calls[{i}]", b.path),
                    format!("no service is named `{service}`"),
                ));
            }
        }
        if raw.max_memory.0 < 64 * 1024 {
            b.errors.push(ConfigError::new(
                format!("{}.max_memory", b.path),
                "at least 64KiB (one WebAssembly page)",
            ));
        }
        if raw.max_cpu.0 < Duration::from_millis(1) || raw.max_cpu.0 > Duration::from_secs(10) {
            b.errors.push(ConfigError::new(
                format!("{}.max_cpu", b.path),
                "between 1ms and 10s",
            ));
        }
        if b.errors.len() > errors_before {
            return None;
        }
        match load(raw, b.shared.plugin_cache_dir.as_deref()) {
            Ok(policy) => Some(policy),
            Err(message) => {
                b.errors
                    .push(ConfigError::new(format!("{}.module", b.path), message));
                None
            }
        }
    }
}

/// The filter's name: configured, or the module's file name without `.wasm`.
#[cfg(feature = "wasm")]
fn name_of(raw: &RawWasm) -> String {
    raw.name.clone().unwrap_or_else(|| {
        let file = std::path::Path::new(&raw.module)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("wasm");
        file.to_owned()
    })
}

/// The configuration handed to `on_configure`: a string as it is, another value as JSON.
#[cfg(feature = "wasm")]
fn configuration_of(raw: &RawWasm) -> Vec<u8> {
    match &raw.configuration {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    }
}

#[cfg(not(feature = "wasm"))]
fn load(_raw: &RawWasm, _cache_dir: Option<&std::path::Path>) -> Result<Arc<WasmPolicy>, String> {
    Err("this build of Portico has no wasm support (built without the `wasm` feature)".into())
}

#[cfg(feature = "wasm")]
fn load(raw: &RawWasm, cache_dir: Option<&std::path::Path>) -> Result<Arc<WasmPolicy>, String> {
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, Weak};

    let mut bytes =
        std::fs::read(&raw.module).map_err(|e| format!("cannot read {}: {e}", raw.module))?;
    if raw.module.ends_with(".wat") {
        bytes = wat::parse_bytes(&bytes)
            .map_err(|e| format!("{}: {e}", raw.module))?
            .into_owned();
    }
    let name: Arc<str> = name_of(raw).into();
    let configuration = configuration_of(raw);
    // A filter whose module and settings a reload left alone is the same filter: its
    // instances, and the state they keep, carry on.
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    hasher.update(serde_json::to_vec(&(raw, &configuration)).unwrap_or_default());
    let key: [u8; 32] = hasher.finalize().into();
    static LOADED: OnceLock<Mutex<HashMap<[u8; 32], Weak<WasmPolicy>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(existing) = loaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .and_then(Weak::upgrade)
    {
        return Ok(existing);
    }

    let runtime = vm::runtime(cache_dir)?;
    let started = std::time::Instant::now();
    let hits = runtime.cache_hits();
    let module = wasmtime::Module::from_binary(&runtime.engine, &bytes)
        .map_err(|e| format!("{} is not a valid WebAssembly module: {e:#}", raw.module))?;
    let from_cache = runtime.cache_hits() > hits;
    COMPILATIONS[usize::from(from_cache)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        plugin = %name,
        module = %raw.module,
        "filter {} in {} ms",
        if from_cache {
            "loaded from the compilation cache"
        } else {
            "compiled"
        },
        started.elapsed().as_millis()
    );
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    if !abi::ABI_MARKERS.iter().any(|m| exports.contains(m)) {
        return Err(format!(
            "{} is not a proxy-wasm filter of a supported ABI: it exports neither {}",
            raw.module,
            abi::ABI_MARKERS.join(" nor ")
        ));
    }
    let pre = runtime.linker.instantiate_pre(&module).map_err(|e| {
        format!(
            "{} imports what Portico does not provide: {e:#}",
            raw.module
        )
    })?;
    let spec = Arc::new(vm::FilterSpec::new(
        Arc::clone(&name),
        configuration.into(),
        raw.max_memory.0 as usize,
        raw.max_cpu.0,
        raw.max_body_bytes.0 as usize,
        raw.http_calls
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect(),
        pre,
    ));
    // One instance now, so a filter that traps on start or refuses its configuration is
    // refused with the config, not on the first request.
    vm::Vm::start(&spec).map_err(|vm::Failure(message)| format!("filter `{name}`: {message}"))?;
    let policy = Arc::new(WasmPolicy {
        name,
        on_error: raw.on_error,
        spec,
        alive: Arc::new(()),
    });
    let mut map = loaded.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(key, Arc::downgrade(&policy));
    Ok(policy)
}

/// Modules made ready to run since the start: compiled (`[0]`) or read from the compilation
/// cache (`[1]`).
#[cfg(feature = "wasm")]
static COMPILATIONS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Appends the metrics filters defined (and their failure counts) to a `/metrics` answer.
pub fn encode_metrics(out: &mut String) {
    #[cfg(feature = "wasm")]
    {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering;
        shared::encode_metrics(out);
        let [compiled, cached] = &COMPILATIONS;
        let (compiled, cached) = (
            compiled.load(Ordering::Relaxed),
            cached.load(Ordering::Relaxed),
        );
        if compiled + cached > 0 {
            out.push_str("# HELP portico_plugin_compilations Wasm filter modules made ready to run, by where their code came from.\n");
            out.push_str("# TYPE portico_plugin_compilations counter\n");
            let _ = writeln!(
                out,
                "portico_plugin_compilations_total{{source=\"compiler\"}} {compiled}"
            );
            let _ = writeln!(
                out,
                "portico_plugin_compilations_total{{source=\"cache\"}} {cached}"
            );
        }
    }
    #[cfg(not(feature = "wasm"))]
    let _ = out;
}

/// For `benches/wasm.rs`: one filter instance and one request context, to time callbacks
/// without the network around them.
#[cfg(feature = "wasm")]
#[doc(hidden)]
pub struct BenchHarness {
    cell: Arc<vm::VmCell>,
    id: u32,
}

#[cfg(feature = "wasm")]
impl BenchHarness {
    /// Loads `module` (a `.wasm` or `.wat` file) and opens one request context.
    pub fn new(module: &str) -> Result<Self, String> {
        let raw: RawWasm = serde_json::from_value(serde_json::json!({ "module": module }))
            .map_err(|e| e.to_string())?;
        let policy = load(&raw, None)?;
        let cell = vm::Vm::start(&policy.spec).map_err(|f| f.0)?;
        let facts = vm::Facts {
            route: "bench".into(),
            service: None,
            source: ([127, 0, 0, 1], 40000).into(),
            client_ip: [127, 0, 0, 1].into(),
            destination: None,
            request_id: http::HeaderValue::from_static("bench"),
            consumer: None,
            trace_id: [0; 16],
            protocol: "HTTP/1.1",
            path: http::uri::PathAndQuery::from_static("/"),
            method: http::Method::GET,
            host: None,
            scheme: "http",
        };
        let id = cell.lock().open(facts).map_err(|f| f.0)?;
        Ok(Self { cell, id })
    }

    /// One `on_request_headers` on `headers` (lent to the filter and taken back), as the
    /// request path makes it.
    pub fn request_headers(&mut self, headers: &mut http::HeaderMap) {
        let mut vm = self.cell.lock();
        if let Some(s) = vm.stream(self.id) {
            s.request = Some(vm::RequestHead {
                headers: std::mem::take(headers),
                method: http::Method::GET,
                path: http::uri::PathAndQuery::from_static("/"),
                authority: http::HeaderValue::from_static("bench"),
                scheme: "http",
                line_edited: false,
            });
        }
        let _ = vm.stream_call(vm::StreamCallback::RequestHeaders, self.id, 4, true);
        if let Some(head) = vm.stream(self.id).and_then(|s| s.request.take()) {
            *headers = head.headers;
        }
    }
}
