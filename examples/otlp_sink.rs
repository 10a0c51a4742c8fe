//! A minimal OTLP/HTTP trace receiver that decodes and discards: the collector of the `tracing`
//! bench profile (bench/tracing.yaml), and a quick way to see that a gateway exports.
//!
//!     cargo run --example otlp_sink -- 127.0.0.1:4318
//!
//! Answers `POST /v1/traces` with an empty `ExportTraceServiceResponse` (200) and prints the
//! running span count every 100 export requests and when stopped (Ctrl-C or SIGTERM).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    spans: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4318".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp_sink: listening on {}", listener.local_addr()?);
    let totals = Arc::new(Totals::default());
    let report = Arc::clone(&totals);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "otlp_sink: {} export requests, {} spans",
            report.requests.load(Ordering::Relaxed),
            report.spans.load(Ordering::Relaxed)
        );
        std::process::exit(0);
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let totals = Arc::clone(&totals);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let totals = Arc::clone(&totals);
                    async move {
                        let mut status = StatusCode::OK;
                        if req.uri().path() != "/v1/traces" {
                            status = StatusCode::NOT_FOUND;
                        } else if let Ok(body) = req.into_body().collect().await {
                            match ExportTraceServiceRequest::decode(body.to_bytes()) {
                                Ok(export) => count(&totals, &export),
                                Err(_) => status = StatusCode::BAD_REQUEST,
                            }
                        }
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn count(totals: &Totals, export: &ExportTraceServiceRequest) {
    let spans: usize = export
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let spans = totals.spans.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
    let requests = totals.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if requests.is_multiple_of(100) {
        eprintln!("otlp_sink: {requests} export requests, {spans} spans");
    }
}
