//! The host side of proxy-wasm ABI 0.2.1: every function a filter may import, from module
//! `env` (and the few WASI ones SDKs link), each checking the filter's pointers against its
//! memory. A bad pointer or length answers `INVALID_MEMORY_ACCESS`, never reads the host's
//! memory; only a trap inside the filter's own allocator (or its deadline) ends the callback.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasmtime::{Caller, Linker};

use super::abi::{self, buffer, errno, map, status};
use super::shared::{shared, MetricKind};
use super::vm::{CallAnswer, HostState, LocalReply, OutCall, RequestHead, ResponseHead};

type C<'a> = Caller<'a, HostState>;

/// Most bytes a filter's log line keeps (the rest is cut, not refused).
const MAX_LOG_LINE: usize = 4096;

/// Reads `len` bytes at `ptr` of the filter's memory.
fn read(c: &C, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let memory = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let end = p.checked_add(l).ok_or(status::INVALID_MEMORY_ACCESS)?;
    memory
        .data(c)
        .get(p..end)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

/// The `len` bytes at `ptr` of the filter's memory `mem`, where they are.
fn slice(mem: &[u8], ptr: i32, len: i32) -> Result<&[u8], i32> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let end = p.checked_add(l).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.get(p..end).ok_or(status::INVALID_MEMORY_ACCESS)
}

/// An edit of map `id` with the key and value read where they are in the filter's memory.
fn edit_at(c: &mut C, id: i32, key: (i32, i32), value: (i32, i32), how: Edit) -> i32 {
    let Some(memory) = c.data().memory else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let (mem, state) = memory.data_and_store_mut(&mut *c);
    let (key, value) = match (slice(mem, key.0, key.1), slice(mem, value.0, value.1)) {
        (Ok(k), Ok(v)) => (k, v),
        (Err(s), _) | (_, Err(s)) => return s,
    };
    let mut recent = std::mem::take(&mut state.recent);
    let s = match map_of(state, id) {
        Ok(mut m) => edit(&mut m, &mut recent, key, value, how),
        Err(s) => s,
    };
    state.recent = recent;
    s
}

/// Writes `bytes` at `ptr` of the filter's memory.
fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let memory = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let p = ptr as u32 as usize;
    let end = p
        .checked_add(bytes.len())
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    memory
        .data_mut(c)
        .get_mut(p..end)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(c: &mut C, ptr: i32, v: u32) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `data` into memory the filter allocates and stores its address and size at
/// `ret_ptr`/`ret_len`. An error is a trap inside the filter's allocator.
fn give(c: &mut C, data: &[u8], ret_ptr: i32, ret_len: i32) -> wasmtime::Result<i32> {
    // An empty value is a null pointer and size 0, without an allocation, as Envoy's host
    // answers: SDKs (AssemblyScript's) never free an allocation they get back empty.
    if data.is_empty() {
        let done = write_u32(c, ret_ptr, 0).and_then(|()| write_u32(c, ret_len, 0));
        return Ok(done.map_or_else(|s| s, |()| status::OK));
    }
    let Some(alloc) = c.data().alloc.clone() else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let ptr = alloc.call(&mut *c, data.len() as i32)?;
    if ptr == 0 {
        return Ok(status::INTERNAL_FAILURE);
    }
    let done = write(c, ptr, data)
        .and_then(|()| write_u32(c, ret_ptr, ptr as u32))
        .and_then(|()| write_u32(c, ret_len, data.len() as u32));
    Ok(match done {
        Ok(()) => status::OK,
        Err(s) => s,
    })
}

/// `Ok(status)` from a computation that fails with a status.
fn code(r: Result<i32, i32>) -> i32 {
    r.unwrap_or_else(|s| s)
}

/// The header map `id` of the effective context.
enum Map<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
    Answer(&'a mut CallAnswer),
    /// The trailers lent to the filter while its trailers callback runs.
    Trailers(&'a mut HeaderMap),
    /// Trailers at any other time (or an HTTP call's, which Portico does not keep): the filter
    /// sees none and edits go nowhere.
    Empty,
}

fn map_of(state: &mut HostState, id: i32) -> Result<Map<'_>, i32> {
    match id {
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS => {
            let effective = state.effective;
            return Ok(
                match state
                    .streams
                    .get_mut(&effective)
                    .filter(|s| s.trailers_kind == id)
                    .and_then(|s| s.trailers.as_mut())
                {
                    Some(t) => Map::Trailers(t),
                    None => Map::Empty,
                },
            );
        }
        map::CALL_RESPONSE_TRAILERS => return Ok(Map::Empty),
        map::CALL_RESPONSE_HEADERS => {
            return state
                .answer
                .as_mut()
                .map(Map::Answer)
                .ok_or(status::NOT_FOUND)
        }
        map::REQUEST_HEADERS | map::RESPONSE_HEADERS => {}
        _ => return Err(status::BAD_ARGUMENT),
    }
    let effective = state.effective;
    let stream = state.streams.get_mut(&effective).ok_or(status::NOT_FOUND)?;
    if id == map::REQUEST_HEADERS {
        stream
            .request
            .as_mut()
            .map(Map::Request)
            .ok_or(status::NOT_FOUND)
    } else {
        stream
            .response
            .as_mut()
            .map(Map::Response)
            .ok_or(status::NOT_FOUND)
    }
}

fn status_text(code: u16) -> Vec<u8> {
    code.to_string().into_bytes()
}

/// Every pair of a map, pseudo-headers first.
fn pairs(m: &Map<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let headers: &HeaderMap = match m {
        Map::Request(r) => {
            out.push((b":authority".to_vec(), r.authority.as_bytes().to_vec()));
            out.push((b":path".to_vec(), r.path.as_str().as_bytes().to_vec()));
            out.push((b":method".to_vec(), r.method.as_str().as_bytes().to_vec()));
            out.push((b":scheme".to_vec(), r.scheme.as_bytes().to_vec()));
            &r.headers
        }
        Map::Response(r) => {
            out.push((b":status".to_vec(), status_text(r.status)));
            &r.headers
        }
        Map::Answer(a) => {
            out.push((b":status".to_vec(), status_text(a.status)));
            &a.headers
        }
        Map::Trailers(t) => t,
        Map::Empty => return out,
    };
    for (k, v) in headers {
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    out
}

fn serialized(m: &Map<'_>) -> Vec<u8> {
    let pairs = pairs(m);
    abi::serialize_pairs(pairs.iter().map(|(k, v)| (&k[..], &v[..])))
}

/// Copies the value of `key` in `m` into `out`; false when there is none.
fn value_into(m: &Map<'_>, recent: &mut Recent, key: &[u8], out: &mut Vec<u8>) -> bool {
    let mut put = |v: &[u8]| {
        out.extend_from_slice(v);
        true
    };
    let headers = match (m, key) {
        (Map::Request(r), b":authority") => return put(r.authority.as_bytes()),
        (Map::Request(r), b":path") => return put(r.path.as_str().as_bytes()),
        (Map::Request(r), b":method") => return put(r.method.as_str().as_bytes()),
        (Map::Request(r), b":scheme") => return put(r.scheme.as_bytes()),
        (Map::Response(r), b":status") => return put(&status_text(r.status)),
        (Map::Answer(a), b":status") => return put(&status_text(a.status)),
        (Map::Request(r), _) => &r.headers,
        (Map::Response(r), _) => &r.headers,
        (Map::Answer(a), _) => &a.headers,
        (Map::Trailers(t), _) => &**t,
        (Map::Empty, _) => return false,
    };
    // By a name kept from earlier lookups: a filter reads the same fields on every request
    // (at most `Recent::NAMES` different names are kept, whether the request has them or not).
    let Some(name) = recent.name(key) else {
        return false;
    };
    match headers.get(&name) {
        Some(v) => put(v.as_bytes()),
        None => false,
    }
}

/// Header names and values the filter used lately, so a filter that reads and sets the same
/// fields on every request neither parses a name nor copies a value each time. Fixed rings:
/// a filter using many different ones only replaces entries.
#[derive(Default)]
pub struct Recent {
    names: Vec<HeaderName>,
    next_name: usize,
    values: Vec<HeaderValue>,
    next_value: usize,
}

impl Recent {
    const NAMES: usize = 32;
    const VALUES: usize = 8;
    /// Longer values are made afresh each time (they are rarely the same twice).
    const VALUE_BYTES: usize = 64;

    /// The header name `key`.
    fn name(&mut self, key: &[u8]) -> Option<HeaderName> {
        if let Some(n) = self.names.iter().find(|n| n.as_str().as_bytes() == key) {
            return Some(n.clone());
        }
        let name = HeaderName::from_bytes(key).ok()?;
        // Only a name written as it is kept (lowercase) is found again by its bytes.
        if name.as_str().as_bytes() == key {
            keep(&mut self.names, &mut self.next_name, Self::NAMES, &name);
        }
        Some(name)
    }

    /// The header value `bytes`, `None` when it is not a valid value.
    fn value(&mut self, bytes: &[u8]) -> Option<HeaderValue> {
        if let Some(v) = self.values.iter().find(|v| v.as_bytes() == bytes) {
            return Some(v.clone());
        }
        let value = HeaderValue::from_bytes(bytes).ok()?;
        if bytes.len() <= Self::VALUE_BYTES {
            keep(&mut self.values, &mut self.next_value, Self::VALUES, &value);
        }
        Some(value)
    }
}

/// Puts `item` in the ring `ring` of at most `cap` entries, over the oldest once it is full.
fn keep<T: Clone>(ring: &mut Vec<T>, next: &mut usize, cap: usize, item: &T) {
    if ring.len() < cap {
        ring.push(item.clone());
    } else {
        ring[*next] = item.clone();
        *next = (*next + 1) % cap;
    }
}

/// Whether `name` frames the message: the gateway frames a body from what it sends, so a
/// filter's edits of these are ignored (a `Content-Length` set on a chunked request would
/// otherwise go upstream beside `Transfer-Encoding`, a smuggling vector).
fn frames(name: &HeaderName) -> bool {
    name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING
}

/// How an edit changes a map.
#[derive(Clone, Copy, PartialEq)]
enum Edit {
    Add,
    Replace,
    Remove,
}

fn edit(m: &mut Map<'_>, recent: &mut Recent, key: &[u8], value: &[u8], how: Edit) -> i32 {
    let as_text = || String::from_utf8(value.to_vec()).ok();
    if key.first() == Some(&b':') {
        // Pseudo-headers are the request line and status: replaced, never removed.
        let ok = match (&mut *m, key) {
            (_, _) if how == Edit::Remove => true,
            (Map::Request(r), b":path") => as_text()
                .filter(|p| p.starts_with('/'))
                .and_then(|p| http::uri::PathAndQuery::try_from(p).ok())
                .map(|p| r.path = p)
                .is_some(),
            (Map::Request(r), b":method") => Method::from_bytes(value)
                .ok()
                .map(|m| r.method = m)
                .is_some(),
            (Map::Request(r), b":authority") => HeaderValue::from_bytes(value)
                .ok()
                .map(|a| r.authority = a)
                .is_some(),
            // The scheme is the connection's: set back with the rest of a map, it is kept.
            (Map::Request(_), b":scheme") => true,
            // No interim or switching status: the gateway relays no protocol switch.
            (Map::Response(r), b":status") => as_text()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| (200..=599).contains(s))
                .map(|s| r.status = s)
                .is_some(),
            _ => false,
        };
        if !ok {
            return status::BAD_ARGUMENT;
        }
        if let Map::Request(r) = m {
            r.line_edited = true;
        }
        return status::OK;
    }
    let (headers, head, line_edited) = match m {
        Map::Request(r) => (&mut r.headers, true, Some(&mut r.line_edited)),
        Map::Response(r) => (&mut r.headers, true, None),
        Map::Trailers(t) => (&mut **t, false, None),
        Map::Answer(_) => return status::BAD_ARGUMENT,
        Map::Empty => return status::OK,
    };
    let Some(name) = recent.name(key) else {
        return status::BAD_ARGUMENT;
    };
    if head && frames(&name) {
        return status::OK;
    }
    if let Some(edited) = line_edited.filter(|_| name == http::header::HOST) {
        *edited = true;
    }
    if how == Edit::Remove {
        headers.remove(name);
        return status::OK;
    }
    let Some(value) = recent.value(value) else {
        return status::BAD_ARGUMENT;
    };
    match how {
        Edit::Add => {
            headers.append(name, value);
        }
        _ => {
            headers.insert(name, value);
        }
    }
    status::OK
}

/// Empties a message head but for its framing fields, which stay as they were (see `frames`).
fn clear_but_framing(headers: &mut HeaderMap) {
    let mut kept = HeaderMap::new();
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ] {
        for v in headers.get_all(&name) {
            kept.append(name.clone(), v.clone());
        }
    }
    headers.clear();
    headers.extend(kept);
}

fn set_pairs(m: &mut Map<'_>, recent: &mut Recent, data: &[u8]) -> i32 {
    let Some(pairs) = abi::deserialize_pairs(data) else {
        return status::BAD_ARGUMENT;
    };
    match m {
        Map::Request(r) => {
            // The `host` field goes with the rest: compared again with the authority.
            r.line_edited = true;
            clear_but_framing(&mut r.headers);
        }
        Map::Response(r) => clear_but_framing(&mut r.headers),
        Map::Trailers(t) => t.clear(),
        Map::Answer(_) => return status::BAD_ARGUMENT,
        Map::Empty => return status::OK,
    }
    for (k, v) in pairs {
        let s = edit(m, recent, k, v, Edit::Add);
        if s != status::OK {
            return s;
        }
    }
    status::OK
}

/// Headers from a serialized map, pseudo-headers apart.
type Parsed = (HeaderMap, Vec<(Vec<u8>, Vec<u8>)>);

fn headers_from(data: &[u8]) -> Result<Parsed, i32> {
    let pairs = abi::deserialize_pairs(data).ok_or(status::BAD_ARGUMENT)?;
    let mut headers = HeaderMap::new();
    let mut pseudo = Vec::new();
    for (k, v) in pairs {
        if k.first() == Some(&b':') {
            pseudo.push((k.to_vec(), v.to_vec()));
            continue;
        }
        let name = HeaderName::from_bytes(k).map_err(|_| status::BAD_ARGUMENT)?;
        let value = HeaderValue::from_bytes(v).map_err(|_| status::BAD_ARGUMENT)?;
        headers.append(name, value);
    }
    Ok((headers, pseudo))
}

/// A property's value: strings as their bytes, integers as 8 little-endian bytes (as Envoy
/// answers, so filters written for it read them unchanged).
fn property(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let path: Vec<u8> = path
        .iter()
        .map(|&b| if b == 0 { b'.' } else { b })
        .collect();
    let path = path.strip_suffix(b".").unwrap_or(&path);
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let int = |v: u64| Some(v.to_le_bytes().to_vec());
    match path {
        b"plugin_name" | b"plugin_vm_id" => return text(&state.spec.name),
        b"plugin_root_id" => return text(""),
        _ => {}
    }
    let stream = state.streams.get(&state.effective)?;
    if let Some((_, v)) = stream.custom.iter().find(|(k, _)| k == path) {
        return Some(v.to_vec());
    }
    let f = &stream.facts;
    let request = stream.request.as_ref();
    match path {
        b"request.path" => text(request.map_or(&f.path, |r| &r.path).as_str()),
        b"request.url_path" => text(request.map_or(&f.path, |r| &r.path).path()),
        b"request.query" => text(request.map_or(&f.path, |r| &r.path).query().unwrap_or("")),
        b"request.method" => text(request.map_or(&f.method, |r| &r.method).as_str()),
        b"request.host" => match request {
            Some(r) => Some(r.authority.as_bytes().to_vec()),
            None => f.host.as_ref().map(|h| h.as_bytes().to_vec()),
        },
        b"request.scheme" => text(f.scheme),
        b"request.protocol" => text(f.protocol),
        b"request.id" | b"portico.request_id" => Some(f.request_id.as_bytes().to_vec()),
        b"request.headers" => {
            let r = request?;
            let pairs: Vec<_> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                .collect();
            Some(abi::serialize_pairs(pairs.into_iter()))
        }
        b"source.address" => text(&f.source.to_string()),
        b"source.port" => int(f.source.port().into()),
        b"destination.address" => f.destination.and_then(|d| text(&d.to_string())),
        b"destination.port" => f.destination.and_then(|d| int(d.port().into())),
        b"route_name" | b"portico.route" => text(&f.route),
        b"cluster_name" | b"portico.service" => f.service.as_deref().and_then(text),
        b"upstream.address" => stream.upstream.as_ref().map(|v| v.as_bytes().to_vec()),
        b"response.code" => (stream.response_code != 0)
            .then(|| stream.response_code.into())
            .and_then(int),
        b"portico.consumer" => f.consumer.as_deref().and_then(text),
        b"portico.trace_id" => {
            let mut hex = [0u8; 32];
            crate::telemetry::trace::hex_encode(&f.trace_id, &mut hex);
            Some(hex.to_vec())
        }
        b"portico.client_ip" => text(&f.client_ip.to_string()),
        _ => None,
    }
}

fn level_of(level: i32) -> Option<tracing::Level> {
    Some(match level {
        0 => tracing::Level::TRACE,
        1 => tracing::Level::DEBUG,
        2 => tracing::Level::INFO,
        3 => tracing::Level::WARN,
        4 | 5 => tracing::Level::ERROR,
        _ => return None,
    })
}

fn log(plugin: &str, level: tracing::Level, message: &[u8]) {
    let cut = &message[..message.len().min(MAX_LOG_LINE)];
    let message = String::from_utf8_lossy(cut);
    let message = message.trim_end();
    match level {
        tracing::Level::TRACE => tracing::trace!(target: "portico::plugin", plugin, "{message}"),
        tracing::Level::DEBUG => tracing::debug!(target: "portico::plugin", plugin, "{message}"),
        tracing::Level::INFO => tracing::info!(target: "portico::plugin", plugin, "{message}"),
        tracing::Level::WARN => tracing::warn!(target: "portico::plugin", plugin, "{message}"),
        _ => tracing::error!(target: "portico::plugin", plugin, "{message}"),
    }
}

/// The body buffer `id` of the effective context, when it is the one in progress.
fn body_of(state: &mut HostState, id: i32) -> Result<&mut BytesMut, i32> {
    let effective = state.effective;
    let stream = state.streams.get_mut(&effective).ok_or(status::NOT_FOUND)?;
    if stream.body_kind != id {
        return Err(status::NOT_FOUND);
    }
    stream.body.as_mut().ok_or(status::NOT_FOUND)
}

/// A readable buffer's bytes.
fn buffer_bytes(state: &mut HostState, id: i32) -> Result<Bytes, i32> {
    match id {
        buffer::REQUEST_BODY | buffer::RESPONSE_BODY => {
            body_of(state, id).map(|b| Bytes::copy_from_slice(b))
        }
        buffer::CALL_RESPONSE_BODY => state
            .answer
            .as_ref()
            .map(|a| a.body.clone())
            .ok_or(status::NOT_FOUND),
        buffer::VM_CONFIGURATION => Ok(Bytes::new()),
        buffer::PLUGIN_CONFIGURATION => Ok(state.spec.configuration.clone()),
        2 | 3 | 5 | 8 => Err(status::NOT_FOUND),
        _ => Err(status::BAD_ARGUMENT),
    }
}

/// Registers every host function on `linker`.
pub fn add_to(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Logging.
    linker.func_wrap(
        "env",
        "proxy_log",
        |c: C, level: i32, ptr: i32, len: i32| {
            let Some(level) = level_of(level) else {
                return status::BAD_ARGUMENT;
            };
            // SDKs log at debug on every request: a line the log would drop is not copied.
            if level > tracing::level_filters::LevelFilter::current() {
                return status::OK;
            }
            match read(&c, ptr, len) {
                Ok(message) => {
                    log(&c.data().spec.name, level, &message);
                    status::OK
                }
                Err(s) => s,
            }
        },
    )?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: C, ret: i32| {
        use tracing::level_filters::LevelFilter;
        let level = match LevelFilter::current() {
            LevelFilter::TRACE => 0,
            LevelFilter::DEBUG => 1,
            LevelFilter::INFO => 2,
            LevelFilter::WARN => 3,
            _ => 4,
        };
        code(write_u32(&mut c, ret, level).map(|()| status::OK))
    })?;

    // Clocks and timers.
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ret: i32| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            code(write(&mut c, ret, &now.to_le_bytes()).map(|()| status::OK))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, ms: i32| {
            let state = c.data_mut();
            state.tick = Duration::from_millis(ms as u32 as u64);
            state.tick_changed = true;
            status::OK
        },
    )?;

    // Contexts.
    linker.func_wrap("env", "proxy_set_effective_context", |mut c: C, id: i32| {
        let state = c.data_mut();
        let id = id as u32;
        if id == state.root || state.streams.contains_key(&id) {
            state.effective = id;
            status::OK
        } else {
            status::BAD_ARGUMENT
        }
    })?;
    linker.func_wrap("env", "proxy_done", |mut c: C| {
        let state = c.data_mut();
        let id = state.effective;
        match state.streams.get_mut(&id) {
            Some(s) if s.done_pending => {
                s.done_pending = false;
                state.finishing.push(id);
                status::OK
            }
            _ => status::NOT_FOUND,
        }
    })?;

    // Buffers.
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C, id: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| {
            let bytes = match buffer_bytes(c.data_mut(), id) {
                Ok(b) => b,
                Err(s) => return Ok(s),
            };
            let start = start as u32 as usize;
            if start > bytes.len() {
                return Ok(status::BAD_ARGUMENT);
            }
            let end = start.saturating_add(max as u32 as usize).min(bytes.len());
            give(&mut c, &bytes[start..end], ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C, id: i32, ret_size: i32, ret_flags: i32| {
            let len = match buffer_bytes(c.data_mut(), id) {
                Ok(b) => b.len(),
                Err(s) => return s,
            };
            code(
                write_u32(&mut c, ret_size, len as u32)
                    .and_then(|()| write_u32(&mut c, ret_flags, 0))
                    .map(|()| status::OK),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, id: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let data = match read(&c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s,
            };
            if id != buffer::REQUEST_BODY && id != buffer::RESPONSE_BODY {
                return if (0..=8).contains(&id) {
                    status::NOT_FOUND
                } else {
                    status::BAD_ARGUMENT
                };
            }
            let max = c.data().spec.max_body;
            let body = match body_of(c.data_mut(), id) {
                Ok(b) => b,
                Err(s) => return s,
            };
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            if body.len() - (end - start) + data.len() > max {
                return status::BAD_ARGUMENT;
            }
            let tail = body.split_off(end);
            body.truncate(start);
            body.extend_from_slice(&data);
            body.extend_from_slice(&tail);
            status::OK
        },
    )?;

    // Header maps.
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, id: i32, ret: i32| {
            let size = match map_of(c.data_mut(), id) {
                Ok(m) => serialized(&m).len(),
                Err(s) => return s,
            };
            code(write_u32(&mut c, ret, size as u32).map(|()| status::OK))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, id: i32, ret_ptr: i32, ret_len: i32| {
            let bytes = match map_of(c.data_mut(), id) {
                Ok(m) => serialized(&m),
                Err(s) => return Ok(s),
            };
            give(&mut c, &bytes, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, id: i32, ptr: i32, len: i32| {
            let data = match read(&c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s,
            };
            let state = c.data_mut();
            let mut recent = std::mem::take(&mut state.recent);
            let s = match map_of(state, id) {
                Ok(mut m) => set_pairs(&mut m, &mut recent, &data),
                Err(s) => s,
            };
            c.data_mut().recent = recent;
            s
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, id: i32, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32| {
            let Some(memory) = c.data().memory else {
                return Ok(status::INVALID_MEMORY_ACCESS);
            };
            // The key is read where it is, the value copied through a reused buffer.
            let (mem, state) = memory.data_and_store_mut(&mut c);
            let mut value = std::mem::take(&mut state.scratch);
            let mut recent = std::mem::take(&mut state.recent);
            value.clear();
            let found = match (slice(mem, kptr, klen), map_of(state, id)) {
                (Ok(key), Ok(m)) => Ok(value_into(&m, &mut recent, key, &mut value)),
                (Err(s), _) | (_, Err(s)) => Err(s),
            };
            state.recent = recent;
            let answer = match found {
                Ok(true) => give(&mut c, &value, ret_ptr, ret_len),
                Ok(false) => Ok(status::NOT_FOUND),
                Err(s) => Ok(s),
            };
            c.data_mut().scratch = value;
            answer
        },
    )?;
    for (name, how) in [
        ("proxy_add_header_map_value", Edit::Add),
        ("proxy_replace_header_map_value", Edit::Replace),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: C, id: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
                edit_at(&mut c, id, (kptr, klen), (vptr, vlen), how)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, id: i32, kptr: i32, klen: i32| {
            edit_at(&mut c, id, (kptr, klen), (0, 0), Edit::Remove)
        },
    )?;

    // Streams.
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         _grpc: i32| {
            let (details, body, headers) = match (
                read(&c, dptr, dlen),
                read(&c, bptr, blen),
                read(&c, hptr, hlen),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s,
            };
            let Ok(code) = u16::try_from(code) else {
                return status::BAD_ARGUMENT;
            };
            if !(200..=599).contains(&code) {
                return status::BAD_ARGUMENT;
            }
            let headers = match headers_from(&headers) {
                Ok((h, _)) => h,
                Err(s) => return s,
            };
            let state = c.data_mut();
            let effective = state.effective;
            let Some(stream) = state.streams.get_mut(&effective) else {
                return status::NOT_FOUND;
            };
            let mut list = Vec::with_capacity(headers.len());
            let mut last = None;
            for (k, v) in headers {
                if let Some(k) = k {
                    last = Some(k);
                }
                if let Some(k) = &last {
                    list.push((k.clone(), v));
                }
            }
            stream.local = Some(LocalReply {
                status: code,
                details: String::from_utf8_lossy(&details).into_owned(),
                body: Bytes::from(body),
                headers: list,
            });
            stream.wake();
            status::OK
        },
    )?;
    let resume = |mut c: C| {
        let state = c.data_mut();
        let effective = state.effective;
        match state.streams.get_mut(&effective) {
            Some(s) => {
                s.resumed = true;
                s.wake();
                status::OK
            }
            None => status::NOT_FOUND,
        }
    };
    linker.func_wrap("env", "proxy_continue_stream", move |c: C, _kind: i32| {
        resume(c)
    })?;
    // The 0.1.0 names, which some SDKs (AssemblyScript's) still import.
    linker.func_wrap("env", "proxy_continue_request", resume)?;
    linker.func_wrap("env", "proxy_continue_response", resume)?;
    linker.func_wrap("env", "proxy_close_stream", |mut c: C, _kind: i32| {
        let state = c.data_mut();
        let effective = state.effective;
        match state.streams.get_mut(&effective) {
            Some(s) => {
                s.failure = Some("the filter closed the request".into());
                s.wake();
                status::OK
            }
            None => status::NOT_FOUND,
        }
    })?;
    linker.func_wrap("env", "proxy_clear_route_cache", |_: C| status::OK)?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C, ret_code: i32, ret_ptr: i32, ret_len: i32| {
            code(
                write_u32(&mut c, ret_code, 0)
                    .and_then(|()| write_u32(&mut c, ret_ptr, 0))
                    .and_then(|()| write_u32(&mut c, ret_len, 0))
                    .map(|()| status::OK),
            )
        },
    )?;

    // HTTP calls.
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         _tptr: i32,
         _tlen: i32,
         timeout: i32,
         ret_token: i32| {
            let (upstream, headers, body) = match (
                read(&c, uptr, ulen),
                read(&c, hptr, hlen),
                read(&c, bptr, blen),
            ) {
                (Ok(u), Ok(h), Ok(b)) => (u, h, b),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s,
            };
            let state = c.data_mut();
            let Some(service) = state
                .spec
                .http_calls
                .iter()
                .position(|n| n.as_bytes() == upstream)
            else {
                return status::BAD_ARGUMENT;
            };
            let Ok((headers, pseudo)) = headers_from(&headers) else {
                return status::BAD_ARGUMENT;
            };
            let get = |name: &[u8]| {
                pseudo
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            };
            let (Some(method), Some(path), Some(_authority)) =
                (get(b":method"), get(b":path"), get(b":authority"))
            else {
                return status::BAD_ARGUMENT;
            };
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return status::BAD_ARGUMENT;
            };
            if !path.starts_with('/') {
                return status::BAD_ARGUMENT;
            }
            let token = state.token();
            let context = state.effective;
            // At most ten minutes: a negative or huge value must not keep the call (and the
            // instance it holds) alive for weeks.
            let timeout = match timeout as u32 {
                0 => Duration::from_secs(60),
                ms => Duration::from_millis(ms.into()).min(Duration::from_secs(600)),
            };
            state.calls.push(OutCall {
                token,
                context,
                service,
                method,
                path,
                headers,
                body: Bytes::from(body),
                timeout,
            });
            code(write_u32(&mut c, ret_token, token).map(|()| status::OK))
        },
    )?;

    // Properties.
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C, pptr: i32, plen: i32, ret_ptr: i32, ret_len: i32| {
            let path = match read(&c, pptr, plen) {
                Ok(p) => p,
                Err(s) => return Ok(s),
            };
            match property(c.data(), &path) {
                Some(v) => give(&mut c, &v, ret_ptr, ret_len),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            let (path, value) = match (read(&c, pptr, plen), read(&c, vptr, vlen)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            let path: Vec<u8> = path
                .iter()
                .map(|&b| if b == 0 { b'.' } else { b })
                .collect();
            let state = c.data_mut();
            let effective = state.effective;
            let Some(stream) = state.streams.get_mut(&effective) else {
                return status::NOT_FOUND;
            };
            // A bounded list: a filter setting properties in a loop must not grow the request.
            if let Some(slot) = stream.custom.iter_mut().find(|(k, _)| *k == path) {
                slot.1 = Bytes::from(value);
            } else if stream.custom.len() < 64 {
                stream.custom.push((path, Bytes::from(value)));
            } else {
                return status::INTERNAL_FAILURE;
            }
            status::OK
        },
    )?;

    // Shared data and queues.
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| {
            let key = match read(&c, kptr, klen) {
                Ok(k) => k,
                Err(s) => return Ok(s),
            };
            let name = std::sync::Arc::clone(&c.data().spec.name);
            let Some((value, cas)) = shared().data.get(&name, &key) else {
                return Ok(status::NOT_FOUND);
            };
            if let Err(s) = write_u32(&mut c, ret_cas, cas) {
                return Ok(s);
            }
            give(&mut c, &value, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            let (key, value) = match (read(&c, kptr, klen), read(&c, vptr, vlen)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            shared()
                .data
                .set(&c.data().spec.name, &key, &value, cas as u32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, nptr: i32, nlen: i32, ret: i32| {
            let name = match read(&c, nptr, nlen) {
                Ok(n) => n,
                Err(s) => return s,
            };
            let state = c.data();
            let id = shared()
                .queues
                .register(&state.spec.name, &name, state.me.clone());
            code(write_u32(&mut c, ret, id).map(|()| status::OK))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret: i32| {
            let (vm, name) = match (read(&c, vptr, vlen), read(&c, nptr, nlen)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            let vm = if vm.is_empty() {
                c.data().spec.name.as_bytes().to_vec()
            } else {
                vm
            };
            match shared().queues.resolve(&vm, &name) {
                Some(id) => code(write_u32(&mut c, ret, id).map(|()| status::OK)),
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C, id: i32, vptr: i32, vlen: i32| {
            let value = match read(&c, vptr, vlen) {
                Ok(v) => v,
                Err(s) => return s,
            };
            match shared().queues.enqueue(id as u32, &value) {
                Ok(owner) => {
                    if let Some(owner) = owner {
                        c.data_mut()
                            .queue_ready
                            .push((std::sync::Arc::downgrade(&owner), id as u32));
                    }
                    status::OK
                }
                Err(s) => s,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, ret_ptr: i32, ret_len: i32| match shared().queues.dequeue(id as u32) {
            Ok(item) => give(&mut c, &item, ret_ptr, ret_len),
            Err(s) => Ok(s),
        },
    )?;

    // Metrics.
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, kind: i32, nptr: i32, nlen: i32, ret: i32| {
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return status::BAD_ARGUMENT,
            };
            let name = match read(&c, nptr, nlen).map(String::from_utf8) {
                Ok(Ok(n)) if !n.is_empty() && n.len() <= 128 => n,
                Ok(_) => return status::BAD_ARGUMENT,
                Err(s) => return s,
            };
            let state = c.data_mut();
            // Defined again by the same instance (a filter defining per request): same id.
            let id = match state
                .metrics
                .iter()
                .position(|m| m.name == name && m.kind == kind)
            {
                Some(i) => i,
                None if state.metrics.len() >= 1024 => return status::INTERNAL_FAILURE,
                None => {
                    let metric = shared().metrics.define(&state.spec.name, &name, kind);
                    state.metrics.push(metric);
                    state.metrics.len() - 1
                }
            };
            code(write_u32(&mut c, ret, id as u32 + 1).map(|()| status::OK))
        },
    )?;
    fn metric(c: &C, id: i32) -> Option<std::sync::Arc<super::shared::Metric>> {
        c.data()
            .metrics
            .get((id as u32 as usize).wrapping_sub(1))
            .cloned()
    }
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C, id: i32, delta: i64| match metric(&c, id) {
            Some(m) if m.increment(delta) => status::OK,
            Some(_) => status::BAD_ARGUMENT,
            None => status::NOT_FOUND,
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C, id: i32, value: i64| match metric(&c, id) {
            Some(m) => {
                m.record(value as u64);
                status::OK
            }
            None => status::NOT_FOUND,
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C, id: i32, ret: i32| match metric(&c, id) {
            Some(m) => code(write(&mut c, ret, &m.read().to_le_bytes()).map(|()| status::OK)),
            None => status::NOT_FOUND,
        },
    )?;

    // Not provided: gRPC calls and foreign functions.
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: C,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| status::UNIMPLEMENTED,
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            status::UNIMPLEMENTED
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: C, _: i32, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: C, _: i32| {
        status::UNIMPLEMENTED
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |_: C, _: i32| {
        status::UNIMPLEMENTED
    })?;

    // AssemblyScript's runtime reports a failed assertion here: a trap.
    linker.func_wrap(
        "env",
        "abort",
        |_: C, _msg: i32, _file: i32, line: i32, col: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "abort() called at line {line}, column {col}"
            )))
        },
    )?;

    // Older toolchains (AssemblyScript's WASI shim among them) link the same calls under the
    // snapshot's earlier name.
    add_wasi(linker, "wasi_snapshot_preview1")?;
    add_wasi(linker, "wasi_unstable")
}

/// The WASI calls SDK runtimes link (Rust's and TinyGo's standard libraries): output goes to
/// the log, no arguments or environment, no files.
fn add_wasi(linker: &mut Linker<HostState>, wasi: &str) -> wasmtime::Result<()> {
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, count: i32, ret: i32| {
            let level = match fd {
                1 => tracing::Level::INFO,
                2 => tracing::Level::ERROR,
                _ => return errno::BADF,
            };
            let mut text = Vec::new();
            for i in 0..count.clamp(0, 64) {
                let Ok(iov) = read(&c, iovs.wrapping_add(i * 8), 8) else {
                    return errno::FAULT;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&c, ptr, len) {
                    Ok(b) => text.extend_from_slice(&b),
                    Err(_) => return errno::FAULT,
                }
            }
            log(&c.data().spec.name, level, &text);
            match write_u32(&mut c, ret, text.len() as u32) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut c: C, clock: i32, _precision: i64, ret: i32| {
            let now = match clock {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1 => {
                    static START: std::sync::OnceLock<std::time::Instant> =
                        std::sync::OnceLock::new();
                    START
                        .get_or_init(std::time::Instant::now)
                        .elapsed()
                        .as_nanos() as u64
                }
                _ => return errno::NOTSUP,
            };
            match write(&mut c, ret, &now.to_le_bytes()) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    linker.func_wrap(wasi, "random_get", |mut c: C, ptr: i32, len: i32| {
        if len as u32 > 64 * 1024 {
            return errno::INVAL;
        }
        let mut buf = vec![0u8; len as u32 as usize];
        if getrandom::fill(&mut buf).is_err() {
            return errno::INVAL;
        }
        match write(&mut c, ptr, &buf) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::FAULT,
        }
    })?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(
            wasi,
            name,
            |mut c: C, ret_count: i32, ret_size: i32| match write_u32(&mut c, ret_count, 0)
                .and_then(|()| write_u32(&mut c, ret_size, 0))
            {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(wasi, name, |_: C, _: i32, _: i32| errno::SUCCESS)?;
    }
    linker.func_wrap(
        wasi,
        "proc_exit",
        |_: C, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!("proc_exit({code}) called")))
        },
    )?;
    linker.func_wrap(wasi, "sched_yield", |_: C| errno::SUCCESS)?;
    linker.func_wrap(wasi, "fd_close", |_: C, _: i32| errno::BADF)?;
    linker.func_wrap(wasi, "fd_fdstat_get", |_: C, _: i32, _: i32| errno::BADF)?;
    linker.func_wrap(wasi, "fd_prestat_get", |_: C, _: i32, _: i32| errno::BADF)?;
    linker.func_wrap(
        wasi,
        "fd_prestat_dir_name",
        |_: C, _: i32, _: i32, _: i32| errno::BADF,
    )?;
    linker.func_wrap(wasi, "fd_read", |_: C, _: i32, _: i32, _: i32, _: i32| {
        errno::BADF
    })?;
    linker.func_wrap(wasi, "fd_seek", |_: C, _: i32, _: i64, _: i32, _: i32| {
        errno::BADF
    })?;
    linker.func_wrap(
        wasi,
        "poll_oneoff",
        |_: C, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP,
    )?;
    Ok(())
}
