//! The listener's hold on its clients, over real loopback connections: how many may be
//! connected at once, and how long a connection may stay without a request in flight.
//! (Deadlines on slow handshakes and header sections are tested in `wimse-workload`'s
//! `mtls.rs`, over its mutual TLS.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wimse_listen::{ConnectionLimits, no_facts, serve_until};

/// A plain-HTTP listener on loopback held to `limits`: `/` answers `ok`, `/slow` streams
/// four chunks a second apart.
async fn listener(limits: ConnectionLimits) -> SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route(
            "/slow",
            axum::routing::get(|| async {
                let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
                tokio::spawn(async move {
                    for i in 0..4 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = send.send(Ok(Bytes::from(format!("{i}")))).await;
                    }
                });
                axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receive))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_until(
        listener,
        None,
        app,
        limits,
        std::future::pending(),
        no_facts,
    ));
    addr
}

fn limits(idle: u64, max_connections: u32) -> ConnectionLimits {
    ConnectionLimits {
        idle: Duration::from_secs(idle),
        max_connections,
        ..ConnectionLimits::default()
    }
}

/// Sends a keep-alive HTTP/1.1 `GET /` on `tcp`; the response's head and body, once it
/// has come in full (`ok` is the body's end).
async fn get_keep_alive(tcp: &mut tokio::net::TcpStream) -> String {
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tcp.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn at_the_connection_limit_the_next_client_waits_for_a_free_slot() {
    let addr = listener(limits(300, 1)).await;
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get_keep_alive(&mut first).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the second connection, but the listener does not take it up
    // while the first is open: its request waits.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(700), get_keep_alive(&mut second));
    assert!(waiting.await.is_err(), "served past the limit");

    // The first goes; the second is taken up and its request (already sent) answered.
    drop(first);
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.ends_with(b"ok") {
            let n = second.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("served once a slot is free");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

/// An HTTP/2 (h2c) connection to `addr`: its sender and the task driving it, which ends
/// when the connection closes.
async fn h2(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Bytes {
    let request = http::Request::get(format!("http://svc.test{path}"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_one_streaming_a_response() {
    // HTTP/2 clients answer pings, so only the idle limit ends a connection they keep.
    let addr = listener(limits(1, 100)).await;

    // A response that takes four seconds, four times the idle limit, arrives whole.
    let (mut sender, driver) = h2(addr).await;
    assert_eq!(h2_get(&mut sender, "/slow").await, "0123");
    assert!(!driver.is_finished(), "closed right after a response");

    // With nothing in flight, the connection goes within two idle periods (GOAWAY, then
    // close), and its client sees it closed.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("an idle connection is closed")
        .unwrap();
    assert!(sender.is_closed());

    // A connection that keeps asking stays.
    let (mut sender, driver) = h2(addr).await;
    for _ in 0..6 {
        assert_eq!(h2_get(&mut sender, "/").await, "ok");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!driver.is_finished(), "a busy connection was closed");
}
