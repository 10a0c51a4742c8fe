//! Serving HTTPS connections (handshake, then HTTP/1.1 or HTTP/2 by ALPN) and the plain
//! listeners' redirect to HTTPS.
//!
//! The handshake runs under the header-read timeout (one timer per TLS connection: a handshake
//! costs far more than the timer); after it, the connection is served exactly like a plain one,
//! watchdog and graceful shutdown included. The `ServerConfig` is taken from the plan at each
//! accept, so a reload with renewed certificates applies to new connections only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conn::{drive, Builders, ConnIo, Watched, H1_CLOSE_WINDOW};
use crate::pipeline::{ConnCtx, ProxyService};
use crate::runtime::Runtime;
use crate::tls::{ClientCert, TlsConn};

/// Serves one accepted connection on an HTTPS listener.
pub async fn serve_tls(
    runtime: Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    builders: &Builders,
    mut shutdown: watch::Receiver<bool>,
) {
    let active = runtime.active();
    let Some(tls) = active.plan.tls.as_ref() else {
        return;
    };
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.config));
    let forward = tls.forward_header.is_some();
    let timeout = active.plan.header_read_timeout;
    drop(active);
    // Like the plain path, an accepted connection is not abandoned when shutdown begins.
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no TLS handshake within the header read timeout: closing");
            return;
        }
    };
    let draining = *shutdown.borrow_and_update();
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let client_cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ClientCert::parse(leaf));
    let forward_value = client_cert
        .as_ref()
        .filter(|_| forward)
        .and_then(ClientCert::forward_value);
    let mut ctx = ConnCtx::new(runtime, peer);
    ctx.tls = Some(Box::new(TlsConn {
        client_cert,
        forward_value,
    }));
    let ctx = Arc::new(ctx);
    let _watched = Watched::register(&ctx);
    let service = ProxyService(Arc::clone(&ctx));
    if h2 {
        let io = TokioIo::new(stream);
        let conn = Box::pin(builders.h2.serve_connection(io, service));
        drive(conn, &ctx, &mut shutdown, draining, None, |c| {
            c.as_mut().graceful_shutdown()
        })
        .await;
    } else {
        let h1 = builders.h1(draining);
        let io = TokioIo::new(ConnIo::http1(stream, &ctx));
        let conn = Box::pin(h1.serve_connection(io, service).with_upgrades());
        drive(
            conn,
            &ctx,
            &mut shutdown,
            false,
            Some(H1_CLOSE_WINDOW),
            |c| c.as_mut().graceful_shutdown(),
        )
        .await;
    }
}

/// Serves one connection on a plain listener that only redirects to HTTPS (308, method and
/// body kept by the client).
pub async fn serve_redirect(
    runtime: Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    builders: &Builders,
    port: u16,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ConnCtx::new(runtime, peer));
    let _watched = Watched::register(&ctx);
    let counted = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // The watchdog closes connections that start no request: count this one.
        counted.state.requests.fetch_add(1, Ordering::Relaxed);
        let resp = crate::pipeline::https_redirect(&req, port).unwrap_or_else(|e| {
            let id = crate::proxy::headers::new_request_id();
            e.to_response(Some(&id))
        });
        async move { Ok::<_, Infallible>(resp) }
    });
    let io = TokioIo::new(ConnIo::http1(stream, &ctx));
    let conn = Box::pin(builders.h1.serve_connection(io, service));
    drive(conn, &ctx, &mut shutdown, false, None, |c| {
        c.as_mut().graceful_shutdown()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn location(host: Option<&str>, target: &str, port: u16) -> (u16, String) {
        let mut req = Request::get(target);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let resp = crate::pipeline::https_redirect(&req.body(()).unwrap(), port)
            .unwrap_or_else(|e| e.to_response(None));
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn redirects_keep_host_path_and_query_and_drop_port_443() {
        assert_eq!(
            location(Some("shop.test:8080"), "/a/b?x=1", 443),
            (308, "https://shop.test/a/b?x=1".to_string())
        );
        assert_eq!(
            location(Some("[::1]:8080"), "/", 8443),
            (308, "https://[::1]:8443/".to_string())
        );
        assert_eq!(location(None, "/", 443).0, 400);
        assert_eq!(location(Some("bad host"), "/", 443).0, 400);
    }
}
