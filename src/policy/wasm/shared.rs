//! What filters share across workers and requests: the key-value store (with CAS), the
//! queues, and the metrics they define. Process-wide, scoped by the filter's name (its VM id):
//! two filters of different names never see each other's keys or queues, and the instances
//! of one filter on different workers see the same ones, as in Envoy.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;

use super::abi::status;
use super::vm::VmCell;

/// (filter name, key).
type DataKey = (Arc<str>, Vec<u8>);

/// One value and its CAS version (never 0: a CAS of 0 means "no check").
struct Entry {
    value: Bytes,
    cas: u32,
}

/// The shared key-value store of every filter, keyed by (filter name, key).
#[derive(Default)]
pub struct SharedData {
    entries: Mutex<HashMap<DataKey, Entry>>,
}

impl SharedData {
    /// The value under `key` and its CAS version.
    pub fn get(&self, vm: &Arc<str>, key: &[u8]) -> Option<(Bytes, u32)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(Arc::clone(vm), key.to_vec()))
            .map(|e| (e.value.clone(), e.cas))
    }

    /// Sets `key`; with a non-zero `cas`, only when it is still the version the caller read.
    pub fn set(&self, vm: &Arc<str>, key: &[u8], value: &[u8], cas: u32) -> i32 {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let slot = entries.entry((Arc::clone(vm), key.to_vec()));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if cas != 0 && cas != e.cas {
                    return status::CAS_MISMATCH;
                }
                e.value = Bytes::copy_from_slice(value);
                e.cas = e.cas.wrapping_add(1).max(1);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                // A CAS write to a key nobody wrote expects a version that does not exist.
                if cas != 0 {
                    return status::CAS_MISMATCH;
                }
                v.insert(Entry {
                    value: Bytes::copy_from_slice(value),
                    cas: 1,
                });
            }
        }
        status::OK
    }
}

/// A shared queue: items, and the instances to tell when one arrives.
struct Queue {
    vm: Arc<str>,
    name: Vec<u8>,
    items: VecDeque<Bytes>,
    /// The instances that registered it (each worker's instance of the filter does), told in
    /// turn so the work spreads; dead ones are skipped.
    owners: Vec<Weak<VmCell>>,
    next_owner: usize,
}

/// The most items a queue holds: past it, enqueueing fails (a filter nobody dequeues from must
/// not grow the gateway without bound).
const QUEUE_CAP: usize = 10_000;

/// Every shared queue; a queue's id is its index + 1.
#[derive(Default)]
pub struct Queues {
    queues: Mutex<Vec<Queue>>,
}

impl Queues {
    /// Opens (or creates) the queue `name` of filter `vm`, and makes `owner` one of the
    /// instances told about new items.
    pub fn register(&self, vm: &Arc<str>, name: &[u8], owner: Weak<VmCell>) -> u32 {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = queues.iter().position(|q| q.vm == *vm && q.name == name) {
            let q = &mut queues[i];
            q.owners.retain(|o| o.strong_count() > 0);
            if !q.owners.iter().any(|o| o.ptr_eq(&owner)) {
                q.owners.push(owner);
            }
            return i as u32 + 1;
        }
        queues.push(Queue {
            vm: Arc::clone(vm),
            name: name.to_vec(),
            items: VecDeque::new(),
            owners: vec![owner],
            next_owner: 0,
        });
        queues.len() as u32
    }

    /// The id of queue `name` of filter `vm`, if registered.
    pub fn resolve(&self, vm: &[u8], name: &[u8]) -> Option<u32> {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .iter()
            .position(|q| q.vm.as_bytes() == vm && q.name == name)
            .map(|i| i as u32 + 1)
    }

    /// Adds an item; the instance to tell (and the queue id), or the status of the failure.
    pub fn enqueue(&self, id: u32, item: &[u8]) -> Result<Option<Arc<VmCell>>, i32> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let q = queues
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or(status::NOT_FOUND)?;
        if q.items.len() >= QUEUE_CAP {
            return Err(status::INTERNAL_FAILURE);
        }
        q.items.push_back(Bytes::copy_from_slice(item));
        q.owners.retain(|o| o.strong_count() > 0);
        if q.owners.is_empty() {
            return Ok(None);
        }
        let i = q.next_owner % q.owners.len();
        q.next_owner = q.next_owner.wrapping_add(1);
        Ok(q.owners[i].upgrade())
    }

    /// Takes the oldest item.
    pub fn dequeue(&self, id: u32) -> Result<Bytes, i32> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let q = queues
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or(status::NOT_FOUND)?;
        q.items.pop_front().ok_or(status::EMPTY)
    }
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The histogram's bucket bounds: filters record sizes, counts and durations of any unit.
const BUCKETS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 100_000];

/// One metric a filter defined.
pub struct Metric {
    pub plugin: Arc<str>,
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value; a histogram's sum.
    pub value: AtomicI64,
    /// A histogram's observations per bucket (the last: above every bound).
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl Metric {
    /// Sets a gauge (or counter) or records a histogram observation.
    pub fn record(&self, value: u64) {
        match self.kind {
            MetricKind::Histogram => {
                let i = BUCKETS
                    .iter()
                    .position(|b| value <= *b)
                    .unwrap_or(BUCKETS.len());
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
                self.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            _ => self.value.store(value as i64, Ordering::Relaxed),
        }
    }

    /// Adds `delta`: false when it cannot apply (a counter going down, a histogram).
    pub fn increment(&self, delta: i64) -> bool {
        match self.kind {
            MetricKind::Counter if delta < 0 => false,
            MetricKind::Histogram => false,
            _ => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                true
            }
        }
    }

    /// The value `proxy_get_metric` reads (a histogram: its observation count).
    pub fn read(&self) -> u64 {
        match self.kind {
            MetricKind::Histogram => self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum(),
            _ => self.value.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

/// Every metric filters defined, exported on `/metrics`, and each filter's failure count.
#[derive(Default)]
pub struct Metrics {
    all: Mutex<Vec<Arc<Metric>>>,
    failures: Mutex<Vec<(Arc<str>, Arc<AtomicU64>)>>,
}

impl Metrics {
    /// The failure counter of filter `plugin` (one per name, kept across reloads).
    pub fn failures(&self, plugin: &Arc<str>) -> Arc<AtomicU64> {
        let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = all.iter().find(|(p, _)| p == plugin) {
            return Arc::clone(c);
        }
        let c = Arc::new(AtomicU64::new(0));
        all.push((Arc::clone(plugin), Arc::clone(&c)));
        c
    }

    /// Defines (or finds, when the filter's instance on another worker defined it) a metric.
    pub fn define(&self, plugin: &Arc<str>, name: &str, kind: MetricKind) -> Arc<Metric> {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = all
            .iter()
            .find(|m| m.plugin == *plugin && m.name == name && m.kind == kind)
        {
            return Arc::clone(m);
        }
        let m = Arc::new(Metric {
            plugin: Arc::clone(plugin),
            name: name.to_owned(),
            kind,
            value: AtomicI64::new(0),
            buckets: Default::default(),
        });
        all.push(Arc::clone(&m));
        m
    }

    /// Writes every metric in the OpenMetrics text format, as
    /// `portico_plugin_<name>{plugin="<filter>"}`; one family per name.
    pub fn encode(&self, out: &mut String) {
        {
            let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if !failures.is_empty() {
                out.push_str("# HELP portico_plugin_failures Wasm filter callbacks that trapped, ran past their deadline or hit their memory cap.\n");
                out.push_str("# TYPE portico_plugin_failures counter\n");
                for (plugin, count) in failures.iter() {
                    let plugin = escape_label(plugin);
                    let v = count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "portico_plugin_failures_total{{plugin=\"{plugin}\"}} {v}"
                    );
                }
            }
        }
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let mut families: Vec<(String, MetricKind)> = Vec::new();
        for m in all.iter() {
            let family = family_name(&m.name, m.kind);
            if !families.iter().any(|(f, _)| *f == family) {
                families.push((family, m.kind));
            }
        }
        for (family, kind) in families {
            let type_name = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {family} Defined by a wasm filter.");
            let _ = writeln!(out, "# TYPE {family} {type_name}");
            for m in all
                .iter()
                .filter(|m| family_name(&m.name, m.kind) == family && m.kind == kind)
            {
                let plugin = escape_label(&m.plugin);
                match kind {
                    MetricKind::Counter => {
                        let v = m.value.load(Ordering::Relaxed).max(0);
                        let _ = writeln!(out, "{family}_total{{plugin=\"{plugin}\"}} {v}");
                    }
                    MetricKind::Gauge => {
                        let v = m.value.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{family}{{plugin=\"{plugin}\"}} {v}");
                    }
                    MetricKind::Histogram => {
                        let mut seen = 0u64;
                        for (i, bound) in BUCKETS.iter().enumerate() {
                            seen += m.buckets[i].load(Ordering::Relaxed);
                            let _ = writeln!(
                                out,
                                "{family}_bucket{{plugin=\"{plugin}\",le=\"{bound}\"}} {seen}"
                            );
                        }
                        seen += m.buckets[BUCKETS.len()].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{family}_bucket{{plugin=\"{plugin}\",le=\"+Inf\"}} {seen}"
                        );
                        let sum = m.value.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{family}_sum{{plugin=\"{plugin}\"}} {sum}");
                        let _ = writeln!(out, "{family}_count{{plugin=\"{plugin}\"}} {seen}");
                    }
                }
            }
        }
    }
}

/// `portico_plugin_` and the filter's name with every character Prometheus does not allow
/// made `_` (and a counter's `_total` left to the sample).
fn family_name(name: &str, kind: MetricKind) -> String {
    let base = match kind {
        MetricKind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let mut out = String::from("portico_plugin_");
    out.extend(base.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's shared state for filters.
#[derive(Default)]
pub struct Shared {
    pub data: SharedData,
    pub queues: Queues,
    pub metrics: Metrics,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The one instance of [`Shared`].
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(Shared::default)
}

/// Appends every filter-defined metric to a `/metrics` answer (nothing before a filter ran).
pub fn encode_metrics(out: &mut String) {
    if let Some(s) = SHARED.get() {
        s.metrics.encode(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_writes_succeed_once_per_version() {
        let data = SharedData::default();
        let vm: Arc<str> = "f".into();
        assert_eq!(data.set(&vm, b"k", b"1", 7), status::CAS_MISMATCH);
        assert_eq!(data.set(&vm, b"k", b"1", 0), status::OK);
        let (v, cas) = data.get(&vm, b"k").unwrap();
        assert_eq!(&v[..], b"1");
        assert_eq!(data.set(&vm, b"k", b"2", cas), status::OK);
        assert_eq!(data.set(&vm, b"k", b"3", cas), status::CAS_MISMATCH);
        assert_eq!(&data.get(&vm, b"k").unwrap().0[..], b"2");
        // Another filter's key of the same name is another key.
        assert!(data.get(&"g".into(), b"k").is_none());
    }

    #[test]
    fn metrics_export_one_family_per_name_with_the_plugin_label() {
        let metrics = Metrics::default();
        let a: Arc<str> = "a".into();
        let c = metrics.define(&a, "requests_total", MetricKind::Counter);
        assert!(c.increment(2));
        assert!(!c.increment(-1));
        let h = metrics.define(&a, "size", MetricKind::Histogram);
        h.record(7);
        let mut out = String::new();
        metrics.encode(&mut out);
        assert!(
            out.contains("# TYPE portico_plugin_requests counter"),
            "{out}"
        );
        assert!(
            out.contains("portico_plugin_requests_total{plugin=\"a\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("portico_plugin_size_bucket{plugin=\"a\",le=\"10\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("portico_plugin_size_count{plugin=\"a\"} 1"),
            "{out}"
        );
    }
}
