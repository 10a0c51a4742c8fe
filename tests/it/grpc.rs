//! gRPC through the gateway against a real tonic server (h2c upstream, HTTP/2 client): unary
//! and bidirectional streaming calls, statuses and metadata carried in trailers, gRPC-shaped
//! gateway errors, and the gRPC status in the access log.

use std::pin::Pin;
use std::time::Duration;

use crate::support;
use crate::support::config::{quoted, Config, Route, Service};
use crate::support::TestGateway;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

type Codec = tonic_prost::ProstCodec<Msg, Msg>;
type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// `/test.Echo/Say`: answers "hello, <text>", or NOT_FOUND for "missing".
struct Say;

impl tonic::server::UnaryService<Msg> for Say {
    type Response = Msg;
    type Future = BoxFut<Result<Response<Msg>, Status>>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let text = req.into_inner().text;
            if text == "missing" {
                return Err(Status::not_found("no such greeting"));
            }
            Ok(Response::new(Msg {
                text: format!("hello, {text}"),
            }))
        })
    }
}

/// `/test.Echo/Chat`: answers each message as it arrives; "bye" ends the call with
/// DATA_LOSS and a metadata entry, both in the trailers after the messages.
struct Chat;

impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let out = async_stream(move |tx| async move {
                while let Some(Ok(m)) = incoming.next().await {
                    if m.text == "bye" {
                        let mut status = Status::data_loss("the chat ended badly");
                        status
                            .metadata_mut()
                            .insert("x-chat-turns", "3".parse().unwrap());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    let reply = Msg {
                        text: format!("echo: {}", m.text),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(out))
        })
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> MsgStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Msg, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves the test service over h2c on 127.0.0.1:0.
async fn tonic_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut grpc = tonic::server::Grpc::new(Codec::default());
                        let resp = match req.uri().path() {
                            "/test.Echo/Say" => grpc.unary(Say, req).await,
                            "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
                            _ => Status::unimplemented("unknown method").into_http(),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

type Channel = Client<HttpConnector, tonic::body::Body>;

/// A gRPC client speaking HTTP/2 with prior knowledge to `addr`.
fn grpc_client(addr: std::net::SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    tonic::client::Grpc::with_origin(channel, format!("http://{addr}").parse().unwrap())
}

async fn say(addr: std::net::SocketAddr, text: &str) -> Result<Response<Msg>, Status> {
    let mut client = grpc_client(addr);
    client.ready().await.unwrap();
    client
        .unary(
            Request::new(Msg { text: text.into() }),
            PathAndQuery::from_static("/test.Echo/Say"),
            Codec::default(),
        )
        .await
}

fn gateway(upstream: std::net::SocketAddr, log: &std::path::Path) -> TestGateway {
    let access_log = format!(
        "{{enabled: true, path: {}}}",
        quoted(&log.display().to_string())
    );
    TestGateway::start(
        &Config::new()
            .set("access_log", access_log)
            .service(Service::new("grpc").target(format!("h2c://{upstream}")))
            .service(Service::new("down").target("h2c://127.0.0.1:9"))
            .route(Route::new("echo").path("/test.Echo").service("grpc"))
            .route(Route::new("broken").path("/test.Down").service("down"))
            .to_yaml(),
    )
}

#[tokio::test]
async fn unary_calls_and_their_error_statuses_pass_through() {
    let (up, _task) = tonic_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(up, &dir.path().join("access.log"));
    let r = say(gw.addr, "grpc").await.expect("unary call");
    assert_eq!(r.get_ref().text, "hello, grpc");
    let err = say(gw.addr, "missing").await.expect_err("NOT_FOUND");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such greeting");
}

#[tokio::test]
async fn bidirectional_streaming_interleaves_and_keeps_the_trailers() {
    let (up, _task) = tonic_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(up, &dir.path().join("access.log"));
    let mut client = grpc_client(gw.addr);
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(Msg { text: "one".into() }).await.unwrap();
    let mut inbound = client
        .streaming(
            Request::new(outbound),
            PathAndQuery::from_static("/test.Echo/Chat"),
            Codec::default(),
        )
        .await
        .expect("call starts")
        .into_inner();
    // Each answer arrives before the next message is sent: nothing is buffered whole.
    for text in ["one", "two", "three"] {
        if text != "one" {
            tx.send(Msg { text: text.into() }).await.unwrap();
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("reply in time")
            .expect("a message")
            .expect("not the end");
        assert_eq!(reply.text, format!("echo: {text}"));
    }
    tx.send(Msg { text: "bye".into() }).await.unwrap();
    let end = inbound.message().await.expect_err("ends with a status");
    assert_eq!(end.code(), Code::DataLoss);
    assert_eq!(end.message(), "the chat ended badly");
    assert_eq!(end.metadata().get("x-chat-turns").unwrap(), "3");
}

#[tokio::test]
async fn gateway_errors_are_grpc_statuses_in_the_access_log_and_the_metrics() {
    let (up, _task) = tonic_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = gateway(up, &log);
    let mut client = grpc_client(gw.addr);
    client.ready().await.unwrap();
    let no_route = client
        .unary(
            Request::new(Msg::default()),
            PathAndQuery::from_static("/test.Nothing/Here"),
            Codec::default(),
        )
        .await
        .expect_err("no route");
    assert_eq!(no_route.code(), Code::Unimplemented, "{no_route:?}");
    assert!(no_route.message().starts_with("no_route:"), "{no_route:?}");
    let down = client
        .unary(
            Request::new(Msg::default()),
            PathAndQuery::from_static("/test.Down/Call"),
            Codec::default(),
        )
        .await
        .expect_err("upstream down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(
        down.message().starts_with("upstream_unreachable:"),
        "{down:?}"
    );
    say(gw.addr, "logged").await.unwrap();
    let _ = say(gw.addr, "missing").await;

    // The writer thread flushes in the background: wait (bounded) for four lines.
    let lines = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 4 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("four access log lines");
    let statuses: Vec<(String, serde_json::Value)> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["grpc_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("/test.Nothing/Here".to_string(), 12.into()),
            ("/test.Down/Call".to_string(), 14.into()),
            ("/test.Echo/Say".to_string(), 0.into()),
            ("/test.Echo/Say".to_string(), 5.into()),
        ]
    );
    // The same statuses, counted in the metrics by route (trailers-only answers from the head,
    // the others from the trailers).
    let metrics = support::get(&gw.admin_url("/metrics")).await.text();
    for (series, want) in [
        ("route=\"_unmatched\",grpc_status=\"12\"", 1),
        ("route=\"broken\",grpc_status=\"14\"", 1),
        ("route=\"echo\",grpc_status=\"0\"", 1),
        ("route=\"echo\",grpc_status=\"5\"", 1),
    ] {
        let line = format!("portico_grpc_responses_total{{{series}}} {want}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
}

/// A gRPC channel over one HTTP/2 connection of our own (here: TLS with ALPN h2).
#[derive(Clone)]
struct H2Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFut<Result<Self::Response, hyper::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

#[tokio::test]
async fn grpc_over_tls_with_alpn_h2_to_the_gateway() {
    let (up, _task) = tonic_upstream().await;
    let pki = support::tls::Pki::new("test CA");
    let cert = pki.issue("gw", "gw", &["gw.test"]);
    let gw = TestGateway::start(&format!(
        "listen: [\"127.0.0.1:0\"]\nservices:\n  grpc: {{targets: [{{url: \"h2c://{up}\"}}]}}\nroutes:\n  - {{name: echo, service: grpc, match: {{path: /test.Echo}}}}\ntls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n",
        cert.cert_str(),
        cert.key_str()
    ));
    let stream = support::tls::connect(
        gw.local_addrs()[1],
        "gw.test",
        &support::tls::ClientTls::trusting(&pki),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut client =
        tonic::client::Grpc::with_origin(H2Channel(send), "https://gw.test".parse().unwrap());
    client.ready().await.unwrap();
    let r = client
        .unary(
            Request::new(Msg { text: "tls".into() }),
            PathAndQuery::from_static("/test.Echo/Say"),
            Codec::default(),
        )
        .await
        .expect("unary over TLS");
    assert_eq!(r.get_ref().text, "hello, tls");
}
