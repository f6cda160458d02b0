//! The bot's HTTP listeners (webhook, monitoring): hyper with the limits `axum::serve` does not
//! set. A request's headers must arrive within `header_read_timeout` (slow-loris headers: the
//! connection is closed), a whole request within `request_timeout` (a body dripped in: 408 and
//! the connection closed), at most `max_connections` connections are served at once (more wait
//! in the kernel's backlog), and bodies are refused past the limit while they are read (a
//! declared `Content-Length` over it at once, without reading).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::HttpLimits;

/// How long open connections may finish their request after the bot is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` with `limits` until `cancel` fires; bodies over `max_body` bytes are
/// refused with 413 while they are read.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    max_body: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let router = router
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        // A slot first: past the limit, connections wait in the backlog, not in memory.
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("HTTP connections still open at shutdown were dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(10);

    fn limits(header_ms: u64, request_ms: u64, max_connections: usize) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(header_ms),
            request_timeout: Duration::from_millis(request_ms),
            max_connections,
        }
    }

    /// A listener on 127.0.0.1:0 serving `GET /ok` and `POST /hook` (reads the whole body, like
    /// the webhook), with a 1 KiB body limit.
    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, CancellationToken) {
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/hook", post(|body: Bytes| async move { body.len().to_string() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        tokio::spawn(serve_with(listener, router, limits, 1024, cancel.clone()));
        (addr, cancel)
    }

    /// A plain request on a fresh connection: its whole answer.
    async fn request(addr: std::net::SocketAddr, raw: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw.as_bytes()).await.expect("write");
        read_all(&mut stream).await
    }

    /// Everything the server sends until it closes the connection (or resets it).
    async fn read_all(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("the server closes the connection in time");
        String::from_utf8_lossy(&got).into_owned()
    }

    const GET_OK: &str = "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    /// Sends `bytes` one at a time, 20 ms apart, until done or the server hangs up.
    fn drip(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for b in bytes {
                tick.tick().await;
                if writer.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        });
    }

    #[tokio::test]
    async fn headers_sent_byte_by_byte_are_cut_and_others_are_served() {
        let (addr, _cancel) = start(limits(300, 60_000, 64)).await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, writer) = stream.into_split();
        // 500 bytes at 20 ms each would take 10 s.
        let head = format!("POST /hook HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n", "a".repeat(450));
        let started = tokio::time::Instant::now();
        drip(writer, head.into_bytes());
        // Meanwhile the listener answers others.
        for _ in 0..3 {
            let answer = request(addr, GET_OK).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, reader.read_to_end(&mut got))
            .await
            .expect("the slow client is cut")
            .ok();
        assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}", started.elapsed());
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    }

    #[tokio::test]
    async fn a_body_sent_slowly_gets_408_and_others_are_served() {
        let (addr, _cancel) = start(limits(60_000, 300, 64)).await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(b"POST /hook HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n")
            .await
            .expect("headers");
        let started = tokio::time::Instant::now();
        drip(writer, vec![b'x'; 500]);
        let answer = request(addr, GET_OK).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, reader.read_to_end(&mut got))
            .await
            .expect("the slow body is cut")
            .ok();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
        let (addr, _cancel) = start(limits(60_000, 60_000, 64)).await;
        // Headers only: the body never comes, the answer does.
        let answer = request(
            addr,
            "POST /hook HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let fits = request(
            addr,
            "POST /hook HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await;
        assert!(fits.starts_with("HTTP/1.1 200") && fits.ends_with("\r\n\r\n3"), "{fits}");
    }

    #[tokio::test]
    async fn a_chunked_body_is_refused_once_it_passes_the_limit() {
        let (addr, _cancel) = start(limits(60_000, 60_000, 64)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let chunk = "y".repeat(2048);
        // No last chunk: the server answers as soon as the limit is passed.
        let raw = format!(
            "POST /hook HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{chunk}\r\n"
        );
        stream.write_all(raw.as_bytes()).await.expect("write");
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, stream.read_exact(&mut head))
            .await
            .expect("answered while the body is still open")
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 413");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_slot() {
        let (addr, _cancel) = start(limits(60_000, 60_000, 1)).await;
        let idle = TcpStream::connect(addr).await.expect("connect");
        // The idle connection holds the only slot: the next request is not answered...
        let waiting = tokio::spawn(async move { request(addr, GET_OK).await });
        let mut waiting = std::pin::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
        assert!(early.is_err(), "served past the connection limit");
        // ...until it goes.
        drop(idle);
        let answer = tokio::time::timeout(WAIT, waiting).await.expect("served").expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
