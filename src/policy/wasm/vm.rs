//! One filter's virtual machines: one instance per worker thread, reused by every request
//! that worker serves, each behind a mutex held only for the length of one callback (the
//! request never holds it across an await, so a paused request blocks nobody).
//!
//! What a callback may not do to the gateway: run past its deadline (wasmtime's epoch
//! interruption traps it), grow its memory past the cap (the store's limiter refuses, and the
//! filter's own allocator then traps), or crash it (a trap is an error value here). A trapped
//! instance is marked broken and the worker makes a new one for the next request.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Notify;
use wasmtime::{
    Config, Engine, InstancePre, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, Trap,
    TypedFunc,
};

use super::abi;
use crate::upstream::Service;

/// How often the epoch advances: the resolution of the per-callback deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A compiler and what goes with it: the host functions linked to it, the thread advancing
/// its epoch, and the on-disk cache of compiled modules it was made with, if any.
pub struct Runtime {
    /// Compiler settings and the epoch counter.
    pub engine: Engine,
    /// The host functions.
    pub linker: Linker<HostState>,
    cache: Option<wasmtime::Cache>,
}

impl Runtime {
    /// How many modules the on-disk cache has given so far (none without one).
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, wasmtime::Cache::cache_hits)
    }
}

/// The runtime every filter loaded with the compilation cache `cache_dir` (or without one)
/// shares: one per setting, made when a filter first needs it and kept for the process's
/// life. The cache is wasmtime's own: entries are keyed by the module's bytes, the compiler's
/// settings and wasmtime's version, so a stale or foreign entry is never loaded.
pub fn runtime(cache_dir: Option<&Path>) -> Result<&'static Runtime, String> {
    static RUNTIMES: Mutex<Vec<(Option<PathBuf>, &'static Runtime)>> = Mutex::new(Vec::new());
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = runtimes.iter().find(|(d, _)| d.as_deref() == cache_dir) {
        return Ok(r);
    }
    let mut config = Config::new();
    config.epoch_interruption(true);
    // A filter's recursion ends in a trap long before the worker's own stack is at risk.
    config.max_wasm_stack(512 * 1024);
    let cache = match cache_dir {
        Some(dir) => {
            let mut settings = wasmtime::CacheConfig::new();
            settings.with_directory(dir);
            let cache = wasmtime::Cache::new(settings).map_err(|e| {
                format!(
                    "cannot use {} as the compilation cache: {e:#}",
                    dir.display()
                )
            })?;
            config.cache(Some(cache.clone()));
            Some(cache)
        }
        None => None,
    };
    let engine = Engine::new(&config).map_err(|e| e.to_string())?;
    let mut linker = Linker::new(&engine);
    super::host::add_to(&mut linker).map_err(|e| e.to_string())?;
    let ticking = engine.clone();
    std::thread::Builder::new()
        .name("portico-wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            ticking.increment_epoch();
        })
        .map_err(|e| format!("cannot start the wasm deadline thread: {e}"))?;
    let made: &'static Runtime = Box::leak(Box::new(Runtime {
        engine,
        linker,
        cache,
    }));
    runtimes.push((cache_dir.map(Path::to_path_buf), made));
    Ok(made)
}

/// What every instance of one filter shares: its compiled module and its settings.
pub struct FilterSpec {
    /// The filter's name (its VM id for shared data and queues, its `plugin` label).
    pub name: Arc<str>,
    /// The `configuration` string handed to `on_configure`.
    pub configuration: Bytes,
    /// Linear memory cap per instance, in bytes.
    pub max_memory: usize,
    /// The per-callback deadline, in epoch ticks.
    pub deadline_ticks: u64,
    /// The per-callback deadline, as configured (for messages).
    pub max_cpu: Duration,
    /// Most body bytes buffered for the filter.
    pub max_body: usize,
    /// The services `proxy_http_call` may name.
    pub http_calls: Vec<Arc<str>>,
    /// The module, linked against the host's functions and ready to instantiate.
    pub pre: InstancePre<HostState>,
    /// The module exports a callback of the response side (`on_response_headers`,
    /// `on_response_body`, `on_log`): without one, the response is not shown to the filter.
    pub sees_responses: bool,
    /// The module has a callback that runs once the answer is known (`on_log`, `on_done`,
    /// `on_delete`, a response callback): only then is the answer's code kept for it.
    pub sees_end: bool,
    /// Process-wide id, keying each worker's instance.
    pub uid: u64,
    /// Callbacks that failed (trap, deadline, memory), for `/metrics`.
    pub failures: Arc<AtomicU64>,
    /// When a failure was last logged (ms since the process's first filter), and how many
    /// went unlogged since: a crash loop logs once per interval, not per request.
    last_logged: AtomicU64,
    unlogged: AtomicU64,
}

/// How often a failing filter is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

fn process_clock() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

impl FilterSpec {
    /// Everything but the module, which [`Self::link`] adds.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: Arc<str>,
        configuration: Bytes,
        max_memory: usize,
        max_cpu: Duration,
        max_body: usize,
        http_calls: Vec<Arc<str>>,
        pre: InstancePre<HostState>,
    ) -> Self {
        static NEXT_UID: AtomicU64 = AtomicU64::new(1);
        let ticks = max_cpu.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64;
        let failures = super::shared::shared().metrics.failures(&name);
        let sees_responses = pre.module().exports().any(|e| {
            matches!(
                e.name(),
                "proxy_on_response_headers"
                    | "proxy_on_response_body"
                    | "proxy_on_response_trailers"
                    | "proxy_on_log"
            )
        });
        let sees_end = sees_responses
            || pre
                .module()
                .exports()
                .any(|e| matches!(e.name(), "proxy_on_done" | "proxy_on_delete"));
        Self {
            sees_responses,
            sees_end,
            name,
            configuration,
            max_memory,
            // One tick more: the epoch may advance just after the deadline is set.
            deadline_ticks: ticks.max(1) + 1,
            max_cpu,
            max_body,
            http_calls,
            pre,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            failures,
            last_logged: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts a failure and logs it, at most once per interval.
    pub fn failed(&self, what: &str, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = process_clock().as_millis() as u64 + LOG_INTERVAL.as_millis() as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::error!(
                plugin = %self.name,
                callback = what,
                suppressed,
                "wasm filter failed: {error}; its instance is replaced"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request's head as a filter sees it: the fields and the pseudo-headers (kept in their
/// parsed forms, which clone without copying; text is made only when the filter edits).
pub struct RequestHead {
    pub headers: HeaderMap,
    pub method: http::Method,
    pub path: http::uri::PathAndQuery,
    pub authority: HeaderValue,
    pub scheme: &'static str,
    /// The filter edited the method, path or authority (or the `host` field): only then is
    /// the request line compared with what the filter left.
    pub line_edited: bool,
}

/// A response's head as a filter sees it.
pub struct ResponseHead {
    pub headers: HeaderMap,
    pub status: u16,
}

/// An answer a filter made instead of the upstream's.
#[derive(Clone)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The request facts the properties expose.
pub struct Facts {
    pub route: Arc<str>,
    pub service: Option<Arc<str>>,
    pub source: SocketAddr,
    pub client_ip: IpAddr,
    /// The gateway's own address of the connection, when known.
    pub destination: Option<SocketAddr>,
    pub request_id: HeaderValue,
    pub consumer: Option<Arc<str>>,
    pub trace_id: [u8; 16],
    pub protocol: &'static str,
    /// The request line as it arrived (filters read the edited one while they hold the head).
    pub path: http::uri::PathAndQuery,
    pub method: http::Method,
    pub host: Option<HeaderValue>,
    pub scheme: &'static str,
}

/// One request's state inside an instance.
pub struct StreamData {
    /// The request head, lent to the instance while a request phase runs or is paused.
    pub request: Option<RequestHead>,
    /// The response head, lent while a response phase runs.
    pub response: Option<ResponseHead>,
    /// The body of the phase in progress (request or response), as buffered so far.
    pub body: Option<BytesMut>,
    /// Which body `body` is (`abi::buffer::REQUEST_BODY` or `RESPONSE_BODY`).
    pub body_kind: i32,
    /// The trailers lent to the filter while its trailers callback runs or is paused.
    pub trailers: Option<HeaderMap>,
    /// Which trailers `trailers` are (`abi::map::REQUEST_TRAILERS` or `RESPONSE_TRAILERS`).
    pub trailers_kind: i32,
    /// An answer the filter made.
    pub local: Option<LocalReply>,
    /// `proxy_continue_stream` was called since the last pause.
    pub resumed: bool,
    /// Why the request must fail (a callback of it failed outside its own phase).
    pub failure: Option<String>,
    /// Woken when a paused request may go on (resumed, answered or failed); made when the
    /// request first waits (most never do).
    pub wake: Option<Arc<Notify>>,
    pub facts: Facts,
    /// `response.code`, once known.
    pub response_code: u16,
    /// `upstream.address`, once known.
    pub upstream: Option<HeaderValue>,
    /// Properties the filter set.
    pub custom: Vec<(Vec<u8>, Bytes)>,
    /// `on_done` said not yet; `proxy_done` finishes the context.
    pub done_pending: bool,
    /// The request's handles on the context ([`super::stream::Stream`]s): it ends with the
    /// last.
    pub handles: u32,
}

impl StreamData {
    /// Wakes the request if it waits.
    pub fn wake(&self) {
        if let Some(w) = &self.wake {
            w.notify_one();
        }
    }
}

/// An HTTP call a filter asked for, to be sent when its callback returns.
pub struct OutCall {
    pub token: u32,
    /// The context that made it, whose `on_http_call_response` gets the answer.
    pub context: u32,
    /// Index into the filter's `http_calls`.
    pub service: usize,
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
}

/// An HTTP call's answer, readable during `on_http_call_response`.
pub struct CallAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The store's data: what host functions reach through their `Caller`.
pub struct HostState {
    pub spec: Arc<FilterSpec>,
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    pub alloc: Option<Arc<TypedFunc<i32, i32>>>,
    pub root: u32,
    /// The context host calls act on.
    pub effective: u32,
    pub streams: rustc_hash::FxHashMap<u32, StreamData>,
    /// Calls made during the callback in progress.
    pub calls: Vec<OutCall>,
    next_token: u32,
    /// The answer `on_http_call_response` is reading.
    pub answer: Option<CallAnswer>,
    /// The configuration buffer `on_vm_start`/`on_configure` is reading.
    pub configuring: bool,
    /// The tick period the filter asked for; `tick_changed` until a ticker honours it.
    pub tick: Duration,
    pub tick_changed: bool,
    /// Contexts whose `proxy_done` came: finished when the callback returns.
    pub finishing: Vec<u32>,
    /// Instances to tell about queued items, when the callback returns.
    pub queue_ready: Vec<(Weak<VmCell>, u32)>,
    /// This instance, for queues it registers.
    pub me: Weak<VmCell>,
    /// Metrics the filter defined, by id.
    pub metrics: Vec<Arc<super::shared::Metric>>,
    /// A buffer reused for values copied into the filter (no allocation per call).
    pub scratch: Vec<u8>,
    /// Header names and values the filter used lately.
    pub recent: super::host::Recent,
}

impl HostState {
    /// The next call token.
    pub fn token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }
}

/// `proxy_on_http_call_response`'s arguments.
type CallResponseArgs = (i32, i32, i32, i32, i32);

/// This worker's instances: filter uid → (the filter's liveness token, its instance).
type Instances = rustc_hash::FxHashMap<u64, (Weak<()>, Arc<VmCell>)>;

/// The callbacks a module exports (each optional, per the spec).
#[derive(Clone)]
struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    log: Option<TypedFunc<i32, ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    call_response: Option<TypedFunc<CallResponseArgs, ()>>,
}

/// A stream callback's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Why a callback did not return normally.
#[derive(Debug)]
pub struct Failure(pub String);

/// One instance behind its lock.
pub struct VmCell {
    vm: Mutex<Vm>,
    /// Set with the instance's own flag, so a request finds a broken instance without the lock.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl VmCell {
    /// Locks the instance (never poisoned for good: a panic cannot happen inside, and a poisoned
    /// lock's instance is marked broken and replaced).
    pub fn lock(&self) -> MutexGuard<'_, Vm> {
        self.vm.lock().unwrap_or_else(|e| {
            let mut vm = e.into_inner();
            vm.broken = true;
            vm.flag.store(true, Ordering::Relaxed);
            vm
        })
    }
}

/// One instance of a filter.
pub struct Vm {
    pub store: Store<HostState>,
    /// Shared so a call holds its function while the store is borrowed (cloning a `TypedFunc`
    /// takes its type's reference count, an atomic pair per call).
    cb: Arc<Callbacks>,
    pub broken: bool,
    /// The cell's copy of `broken`.
    flag: Arc<std::sync::atomic::AtomicBool>,
    /// Alive while a config uses the filter: its timer stops with it.
    pub alive: Weak<()>,
    next_context: u32,
    /// Changes when a ticker must stop (the period changed).
    ticker: u64,
    /// The services calls go to, by index of the filter's `http_calls`, from the newest plan
    /// a request brought.
    pub targets: Vec<Option<Arc<Service>>>,
    targets_from: usize,
}

const ROOT_CONTEXT: u32 = 1;

impl Vm {
    /// Instantiates the filter and runs its start-up: `_initialize` or `_start`, the root
    /// context, `on_vm_start` and `on_configure`.
    pub fn start(spec: &Arc<FilterSpec>) -> Result<Arc<VmCell>, Failure> {
        let engine = spec.pre.module().engine();
        let limits = StoreLimitsBuilder::new()
            .memory_size(spec.max_memory)
            .instances(1)
            .tables(4)
            .memories(1)
            .build();
        let state = HostState {
            spec: Arc::clone(spec),
            limits,
            memory: None,
            alloc: None,
            root: ROOT_CONTEXT,
            effective: ROOT_CONTEXT,
            streams: Default::default(),
            calls: Vec::new(),
            next_token: 0,
            answer: None,
            configuring: false,
            tick: Duration::ZERO,
            tick_changed: false,
            finishing: Vec::new(),
            queue_ready: Vec::new(),
            me: Weak::new(),
            metrics: Vec::new(),
            scratch: Vec::new(),
            recent: Default::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(spec.deadline_ticks);
        let instance = spec
            .pre
            .instantiate(&mut store)
            .map_err(|e| Failure(format!("cannot instantiate: {e:#}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .ok();
        macro_rules! func {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let cb = Callbacks {
            context_create: func!("proxy_on_context_create"),
            vm_start: func!("proxy_on_vm_start"),
            configure: func!("proxy_on_configure"),
            request_headers: func!("proxy_on_request_headers"),
            request_body: func!("proxy_on_request_body"),
            response_headers: func!("proxy_on_response_headers"),
            response_body: func!("proxy_on_response_body"),
            request_trailers: func!("proxy_on_request_trailers"),
            response_trailers: func!("proxy_on_response_trailers"),
            log: func!("proxy_on_log"),
            done: func!("proxy_on_done"),
            delete: func!("proxy_on_delete"),
            tick: func!("proxy_on_tick"),
            queue_ready: func!("proxy_on_queue_ready"),
            call_response: func!("proxy_on_http_call_response"),
        };
        let initialize: Option<TypedFunc<(), ()>> = func!("_initialize");
        let start: Option<TypedFunc<(), ()>> = func!("_start");
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc.clone().map(Arc::new);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cell = Arc::new_cyclic(|me| {
            store.data_mut().me = me.clone();
            VmCell {
                broken: Arc::clone(&flag),
                vm: Mutex::new(Vm {
                    flag,
                    alive: Weak::new(),
                    store,
                    cb: Arc::new(cb.clone()),
                    broken: false,
                    next_context: ROOT_CONTEXT,
                    ticker: 0,
                    targets: Vec::new(),
                    targets_from: 0,
                }),
            }
        });
        {
            let mut vm = cell.lock();
            if memory.is_none() {
                return Err(Failure("the module exports no `memory`".into()));
            }
            if alloc.is_none() {
                return Err(Failure(
                    "the module exports neither `proxy_on_memory_allocate` nor `malloc`".into(),
                ));
            }
            match (initialize, start) {
                (Some(f), _) | (None, Some(f)) => vm.run("_initialize", |s| f.call(s, ()))?,
                (None, None) => {}
            }
            let root = ROOT_CONTEXT as i32;
            if let Some(f) = cb.context_create {
                vm.run("proxy_on_context_create", |s| f.call(s, (root, 0)))?;
            }
            vm.store.data_mut().configuring = true;
            if let Some(f) = cb.vm_start {
                if vm.run("proxy_on_vm_start", |s| f.call(s, (root, 0)))? == 0 {
                    return Err(Failure("on_vm_start returned false".into()));
                }
            }
            if let Some(f) = cb.configure {
                let size = spec.configuration.len() as i32;
                if vm.run("proxy_on_configure", |s| f.call(s, (root, size)))? == 0 {
                    return Err(Failure(
                        "on_configure returned false (the filter refused its configuration)".into(),
                    ));
                }
            }
            vm.store.data_mut().configuring = false;
        }
        Ok(cell)
    }

    /// Runs one callback under the deadline; a failure marks the instance broken.
    fn run<R>(
        &mut self,
        what: &str,
        call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        if self.broken {
            return Err(Failure("the filter's instance failed earlier".into()));
        }
        let deadline = self.store.data().spec.deadline_ticks;
        self.store.set_epoch_deadline(deadline);
        match call(&mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.broken = true;
                self.flag.store(true, Ordering::Relaxed);
                // Requests paused on this instance will not be resumed by it: wake them to fail.
                for stream in self.store.data().streams.values() {
                    stream.wake();
                }
                let spec = Arc::clone(&self.store.data().spec);
                let message = match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        format!("{what} ran past its deadline of {:?}", spec.max_cpu)
                    }
                    Some(trap) => format!("{what} trapped: {trap}"),
                    None => format!("{what} failed: {e:#}"),
                };
                spec.failed(what, &message);
                Err(Failure(message))
            }
        }
    }

    /// Points calls at the services of the plan serving this request.
    pub fn refresh_targets(&mut self, services: &[Arc<Service>]) {
        let from = services.as_ptr() as usize;
        if self.targets_from == from && !self.targets.is_empty() {
            return;
        }
        let names = &self.store.data().spec.http_calls;
        self.targets = names
            .iter()
            .map(|n| services.iter().find(|s| *s.name == **n).cloned())
            .collect();
        self.targets_from = from;
    }

    /// Creates a request's context.
    pub fn open(&mut self, facts: Facts) -> Result<u32, Failure> {
        let cb = Arc::clone(&self.cb);
        let mut id = self.next_context;
        loop {
            id = id.wrapping_add(1);
            if id > ROOT_CONTEXT && !self.store.data().streams.contains_key(&id) {
                break;
            }
        }
        self.next_context = id;
        self.store.data_mut().streams.insert(
            id,
            StreamData {
                request: None,
                response: None,
                body: None,
                body_kind: abi::buffer::REQUEST_BODY,
                trailers: None,
                trailers_kind: 0,
                local: None,
                resumed: false,
                failure: None,
                wake: None,
                facts,
                response_code: 0,
                upstream: None,
                custom: Vec::new(),
                done_pending: false,
                handles: 1,
            },
        );
        if let Some(f) = cb.context_create.as_ref() {
            self.store.data_mut().effective = id;
            if let Err(e) = self.run("proxy_on_context_create", |s| {
                f.call(s, (id as i32, ROOT_CONTEXT as i32))
            }) {
                self.store.data_mut().streams.remove(&id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// The stream's state.
    pub fn stream(&mut self, id: u32) -> Option<&mut StreamData> {
        self.store.data_mut().streams.get_mut(&id)
    }

    /// Calls a stream callback (`on_request_headers` and the like) on context `id`.
    pub fn stream_call(
        &mut self,
        which: StreamCallback,
        id: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<Action, Failure> {
        let cb = Arc::clone(&self.cb);
        // Header and body callbacks take `end_of_stream`; trailers callbacks do not.
        let (with_end, without_end, name) = match which {
            StreamCallback::RequestHeaders => (
                cb.request_headers.as_ref(),
                None,
                "proxy_on_request_headers",
            ),
            StreamCallback::RequestBody => {
                (cb.request_body.as_ref(), None, "proxy_on_request_body")
            }
            StreamCallback::ResponseHeaders => (
                cb.response_headers.as_ref(),
                None,
                "proxy_on_response_headers",
            ),
            StreamCallback::ResponseBody => {
                (cb.response_body.as_ref(), None, "proxy_on_response_body")
            }
            StreamCallback::RequestTrailers => (
                None,
                cb.request_trailers.as_ref(),
                "proxy_on_request_trailers",
            ),
            StreamCallback::ResponseTrailers => (
                None,
                cb.response_trailers.as_ref(),
                "proxy_on_response_trailers",
            ),
        };
        if with_end.is_none() && without_end.is_none() {
            return Ok(Action::Continue);
        }
        self.store.data_mut().effective = id;
        if let Some(s) = self.stream(id) {
            s.resumed = false;
        }
        let (context, size) = (id as i32, size as i32);
        let action = self.run(name, |s| match (with_end, without_end) {
            (Some(f), _) => f.call(s, (context, size, end_of_stream as i32)),
            (None, Some(f)) => f.call(s, (context, size)),
            (None, None) => Ok(0),
        })?;
        Ok(if action == abi::ACTION_PAUSE {
            Action::Pause
        } else {
            Action::Continue
        })
    }

    /// Whether the module exports a stream callback (filters without a body callback never
    /// make a body wait for them).
    pub fn has(&self, which: StreamCallback) -> bool {
        match which {
            StreamCallback::RequestHeaders => self.cb.request_headers.is_some(),
            StreamCallback::RequestBody => self.cb.request_body.is_some(),
            StreamCallback::ResponseHeaders => self.cb.response_headers.is_some(),
            StreamCallback::ResponseBody => self.cb.response_body.is_some(),
            StreamCallback::RequestTrailers => self.cb.request_trailers.is_some(),
            StreamCallback::ResponseTrailers => self.cb.response_trailers.is_some(),
        }
    }

    /// Ends a request's context: `on_done`, then (unless the filter holds it open for a
    /// `proxy_done`) `on_log` and `on_delete`.
    pub fn close(&mut self, id: u32) {
        let cb = Arc::clone(&self.cb);
        if self.broken {
            self.store.data_mut().streams.remove(&id);
            return;
        }
        self.store.data_mut().effective = id;
        let done = match cb.done.as_ref() {
            Some(f) => self.run("proxy_on_done", |s| f.call(s, id as i32)),
            None => Ok(1),
        };
        match done {
            Ok(0) => {
                if let Some(s) = self.stream(id) {
                    s.done_pending = true;
                }
            }
            Ok(_) => self.finish(id),
            Err(_) => {
                self.store.data_mut().streams.remove(&id);
            }
        }
    }

    /// `on_log` and `on_delete` for a context that is done.
    fn finish(&mut self, id: u32) {
        let cb = Arc::clone(&self.cb);
        self.store.data_mut().effective = id;
        if let Some(f) = cb.log.as_ref() {
            let _ = self.run("proxy_on_log", |s| f.call(s, id as i32));
        }
        if let Some(f) = cb.delete.as_ref() {
            let _ = self.run("proxy_on_delete", |s| f.call(s, id as i32));
        }
        self.store.data_mut().streams.remove(&id);
    }

    /// Work a callback left for after it: contexts to finish, calls to send, a timer to
    /// (re)start, queues to announce. `cell` is this instance.
    pub fn after(&mut self, cell: &Arc<VmCell>) {
        let state = self.store.data();
        if state.finishing.is_empty()
            && state.calls.is_empty()
            && state.queue_ready.is_empty()
            && !state.tick_changed
        {
            return;
        }
        let finishing = std::mem::take(&mut self.store.data_mut().finishing);
        for id in finishing {
            self.finish(id);
        }
        let calls = std::mem::take(&mut self.store.data_mut().calls);
        let ready = std::mem::take(&mut self.store.data_mut().queue_ready);
        let runtime = tokio::runtime::Handle::try_current().ok();
        for call in calls {
            let target = self.targets.get(call.service).cloned().flatten();
            match (&runtime, target) {
                (Some(rt), Some(service)) => {
                    rt.spawn(super::stream::run_call(Arc::clone(cell), call, service));
                }
                // No runtime (a filter calling out while being validated) or the service
                // is gone from the plan: the call fails, as the spec's "failed call".
                _ => {
                    let answer = None;
                    self.deliver_answer(cell, call.context, call.token, answer);
                }
            }
        }
        if let Some(rt) = &runtime {
            for (owner, queue) in ready {
                if let Some(owner) = owner.upgrade() {
                    rt.spawn(async move {
                        let mut vm = owner.lock();
                        vm.queue_ready(&owner, queue);
                    });
                }
            }
            if self.store.data().tick_changed {
                self.store.data_mut().tick_changed = false;
                self.ticker = self.ticker.wrapping_add(1);
                let period = self.store.data().tick;
                if !period.is_zero() {
                    rt.spawn(tick(Arc::downgrade(cell), period, self.ticker));
                }
            }
        }
    }

    fn queue_ready(&mut self, cell: &Arc<VmCell>, queue: u32) {
        let cb = Arc::clone(&self.cb);
        let Some(f) = cb.queue_ready.as_ref() else {
            return;
        };
        self.store.data_mut().effective = ROOT_CONTEXT;
        let _ = self.run("proxy_on_queue_ready", |s| {
            f.call(s, (ROOT_CONTEXT as i32, queue as i32))
        });
        self.after(cell);
    }

    /// Hands an HTTP call's answer (`None`: it failed) to the context that made it, and wakes
    /// that context's request.
    pub fn deliver_answer(
        &mut self,
        cell: &Arc<VmCell>,
        context: u32,
        token: u32,
        answer: Option<CallAnswer>,
    ) {
        let cb = Arc::clone(&self.cb);
        let Some(f) = cb.call_response.as_ref() else {
            return;
        };
        let known = context == ROOT_CONTEXT || self.store.data().streams.contains_key(&context);
        if self.broken || !known {
            if let Some(stream) = self.stream(context) {
                stream.wake();
            }
            return;
        }
        let (headers, body) = answer.as_ref().map_or((0, 0), |a| {
            // `:status` is one of the headers the filter can read.
            (a.headers.len() + 1, a.body.len())
        });
        self.store.data_mut().answer = answer;
        self.store.data_mut().effective = context;
        let result = self.run("proxy_on_http_call_response", |s| {
            f.call(
                s,
                (context as i32, token as i32, headers as i32, body as i32, 0),
            )
        });
        self.store.data_mut().answer = None;
        if let Some(stream) = self.stream(context) {
            if let Err(Failure(message)) = result {
                stream.failure = Some(message);
            }
            stream.wake();
        }
        self.after(cell);
    }
}

/// The stream callbacks.
#[derive(Debug, Clone, Copy)]
pub enum StreamCallback {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// Calls `on_tick` every `period` until the instance is gone, broken, or its period changes.
async fn tick(cell: Weak<VmCell>, period: Duration, generation: u64) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(cell) = cell.upgrade() else { return };
        let mut vm = cell.lock();
        if vm.broken || vm.ticker != generation || vm.alive.strong_count() == 0 {
            return;
        }
        let cb = Arc::clone(&vm.cb);
        let Some(f) = cb.tick.as_ref() else { return };
        vm.store.data_mut().effective = ROOT_CONTEXT;
        if vm
            .run("proxy_on_tick", |s| f.call(s, ROOT_CONTEXT as i32))
            .is_err()
        {
            return;
        }
        vm.after(&cell);
    }
}

thread_local! {
    /// This worker's instance of each filter, by the filter's uid, with a token telling
    /// whether any config still uses the filter.
    static INSTANCES: RefCell<Instances> = RefCell::new(Default::default());
}

/// This worker's instance of the filter: made on first use, and again after one failed.
/// `alive` lives as long as a config uses the filter.
pub fn instance(spec: &Arc<FilterSpec>, alive: &Arc<()>) -> Result<Arc<VmCell>, Failure> {
    let found = INSTANCES.with(|m| m.borrow().get(&spec.uid).map(|(_, c)| Arc::clone(c)));
    if let Some(cell) = found {
        if !cell.broken.load(Ordering::Relaxed) {
            return Ok(cell);
        }
    }
    let cell = match Vm::start(spec) {
        Ok(cell) => cell,
        Err(Failure(message)) => {
            spec.failed("start", &message);
            return Err(Failure(message));
        }
    };
    {
        let mut vm = cell.lock();
        vm.alive = Arc::downgrade(alive);
        vm.after(&cell);
    }
    INSTANCES.with(|m| {
        let mut m = m.borrow_mut();
        // Instances of filters a reload dropped go with them.
        m.retain(|_, (alive, _)| alive.strong_count() > 0);
        m.insert(spec.uid, (Arc::downgrade(alive), Arc::clone(&cell)));
    });
    Ok(cell)
}
