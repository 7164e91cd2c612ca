//! The HTTP accept loop: one HTTP/1.1 connection per client, a deadline for every request head, and
//! a graceful shutdown that stops accepting and lets open connections finish their requests.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires there: a client that
//! opens connections and sends its headers a byte at a time would hold them (and a task each)
//! forever. Here the head of every request (the first one on a connection and each kept-alive one
//! after it) must arrive within the read timeout, or the connection is closed. The body's deadline
//! is [`super::handlers::read_body`]'s.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Sets up an accepted connection: `TCP_NODELAY`.
///
/// Streamed tokens are small writes. With Nagle's algorithm on, each waits until the client has
/// acknowledged the previous one, and a kept-alive client (the OpenAI SDKs keep their connections)
/// delays its acknowledgements by up to ~40 ms: measured on SmolLM2 through `serve`, a kept-alive
/// streaming client saw its first token after 47-49 ms p50 instead of 12.5 ms, and a tenth of the
/// tokens arrive in bursts behind gaps of up to ~110 ms.
fn configure(stream: &tokio::net::TcpStream, peer: std::net::SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!("TCP_NODELAY on the connection from {peer}: {e}");
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for open connections to end.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        configure(&stream, peer);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
        );
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let ((stream, peer), _client) =
            tokio::join!(async { listener.accept().await.unwrap() }, client);
        assert!(
            !stream.nodelay().unwrap(),
            "the default this guards against"
        );
        configure(&stream, peer);
        assert!(stream.nodelay().unwrap());
    }
}
