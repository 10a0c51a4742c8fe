//! OTLP export of finished spans, off the request path.
//!
//! A request only pushes a finished [`SpanData`] into the SDK's `BatchSpanProcessor` (a bounded
//! channel drained by its own thread); that thread batches spans and hands them to the
//! `opentelemetry-otlp` HTTP/protobuf exporter. The exporter's HTTP client is
//! `opentelemetry-http`'s hyper 1 client (the gateway's own HTTP stack, no reqwest), driven by a
//! one-thread tokio runtime owned here, because the processor thread runs exports with a plain
//! `block_on` and has no reactor of its own.
//!
//! A collector that is down or slow never reaches a request: exports fail on the processor
//! thread (counted, logged sparingly), and when the queue is full new spans are dropped and
//! counted instead of waited for.
//!
//! Not owned here: the span records themselves (`span.rs`) and the sampling decision's use
//! (`Trace::start`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::config::RawTracing;
use super::Sampler;

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The runtime driving the HTTP client could not start.
    #[error("cannot start the OTLP exporter's thread: {0}")]
    Runtime(#[from] std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
}

/// Counts shared between the request path and the processor thread.
#[derive(Debug, Default)]
struct Counts {
    /// Spans handed to the processor and not yet taken into an export.
    pending: AtomicUsize,
    /// Spans in exports the collector accepted.
    exported: AtomicU64,
    /// Spans in exports that failed (collector down, refused, timed out).
    failed: AtomicU64,
    /// Failed export requests (for sparse logging).
    failed_exports: AtomicU64,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
}

/// What happened to exported spans so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost to failed exports.
    pub failed: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
}

/// The configured OTLP export: one per plan whose `tracing.otlp` is set, shared by every
/// worker, reused across reloads that leave `tracing:` unchanged.
pub struct Exporter {
    /// Always `Some` until dropped (taken by `drop` to shut down on a thread of its own).
    processor: Option<BatchSpanProcessor>,
    counts: Arc<Counts>,
    max_queue: usize,
    sampler: Sampler,
    scope: InstrumentationScope,
    settings: RawTracing,
    timeout: Duration,
    /// Drives the HTTP client; shut down after the processor.
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts export as `settings` say; `None` when `tracing.otlp` is absent.
    pub fn start(settings: &RawTracing) -> Result<Option<Arc<Self>>, ExportError> {
        let Some(otlp) = &settings.otlp else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portico-otlp")
            .enable_all()
            .build()?;
        let client = RuntimeClient {
            handle: runtime.handle().clone(),
            inner: opentelemetry_http::hyper::HyperClient::with_default_connector(
                otlp.timeout.0,
                None,
            ),
        };
        let headers: HashMap<String, String> = otlp
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(otlp.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(otlp.timeout.0)
            .with_headers(headers)
            .build()
            .map_err(|e| ExportError::Build(e.to_string()))?;
        let counts = Arc::new(Counts::default());
        let exporter = Counting {
            inner: exporter,
            counts: Arc::clone(&counts),
        };
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(otlp.max_queue_size)
            .with_max_export_batch_size(otlp.max_export_batch_size)
            .with_scheduled_delay(otlp.export_interval.0)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(settings.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
        Ok(Some(Arc::new(Self {
            processor: Some(processor),
            counts,
            max_queue: otlp.max_queue_size,
            sampler: Sampler::ratio(settings.sampling_ratio),
            scope: InstrumentationScope::builder("portico")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            settings: settings.clone(),
            timeout: otlp.timeout.0,
            runtime: Some(runtime),
        })))
    }

    /// The settings this exporter was started with (a reload reuses it when they are unchanged).
    pub fn settings(&self) -> &RawTracing {
        &self.settings
    }

    /// Decides for traces the gateway starts.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The instrumentation scope of the gateway's spans.
    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Queues a finished span, or drops and counts it when the queue is full. Never blocks.
    pub fn submit(&self, span: SpanData) {
        // Our own count of queued spans is never below the processor's channel occupancy, so a
        // span let through here finds room there; the drop is counted where it can be read.
        if self.counts.pending.fetch_add(1, Ordering::Relaxed) >= self.max_queue {
            self.counts.pending.fetch_sub(1, Ordering::Relaxed);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(p) = &self.processor {
            p.on_end(span);
        }
    }

    /// Exports what is queued now and waits for it (graceful shutdown, tests).
    pub fn flush(&self) {
        if let Some(Err(e)) = self.processor.as_ref().map(|p| p.force_flush()) {
            tracing::warn!(error = %e, "flushing spans to the OTLP collector failed");
        }
    }

    /// Exported, failed and dropped span counts.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.counts.exported.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
            dropped: self.counts.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Exporter {
    /// Exports what is still queued (bounded by the export timeout), then stops the threads. On
    /// a thread of its own: the last reference may be dropped by a request on a worker (after a
    /// reload), which must not wait for a slow collector.
    fn drop(&mut self) {
        let (processor, runtime) = (self.processor.take(), self.runtime.take());
        let (counts, timeout) = (Arc::clone(&self.counts), self.timeout);
        let stop = move || {
            if let Some(p) = processor {
                let _ = p.shutdown_with_timeout(timeout);
            }
            let (failed, dropped) = (
                counts.failed.load(Ordering::Relaxed),
                counts.dropped.load(Ordering::Relaxed),
            );
            if dropped > 0 || failed > 0 {
                tracing::warn!(
                    exported = counts.exported.load(Ordering::Relaxed),
                    failed,
                    dropped,
                    "spans were lost: the OTLP collector was unreachable or too slow"
                );
            }
            if let Some(rt) = runtime {
                rt.shutdown_background();
            }
        };
        if std::thread::Builder::new()
            .name("portico-otlp-stop".into())
            .spawn(stop)
            .is_err()
        {
            tracing::warn!("cannot start a thread to flush the last spans; they are dropped");
        }
    }
}

/// The OTLP exporter, counting what it sends and what fails.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    counts: Arc<Counts>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        self.counts.pending.fetch_sub(n, Ordering::Relaxed);
        let sent = self.inner.export(batch);
        let counts = &self.counts;
        async move {
            let result = sent.await;
            match &result {
                Ok(()) => {
                    counts.exported.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    counts.failed.fetch_add(n as u64, Ordering::Relaxed);
                    let failures = counts.failed_exports.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first failure, then ever more rarely: a collector that stays down
                    // must not flood the log.
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "exporting spans to the OTLP collector failed");
                    }
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `opentelemetry-http`'s hyper client, run on the exporter's own runtime: the processor thread
/// awaits the spawned request's handle, which needs no reactor.
#[derive(Debug)]
struct RuntimeClient {
    handle: tokio::runtime::Handle,
    inner: opentelemetry_http::hyper::HyperClient,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.handle
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}
