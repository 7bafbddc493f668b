//! The listener's hold on its clients, over real loopback connections: how many may be
//! connected at once, how long a connection may stay without a request in flight, and
//! how a stopped listener drains. (Deadlines on slow handshakes and header sections are
//! tested in `wimse-workload`'s `mtls.rs`, over its mutual TLS.)
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wimse_listen::{ConnectionLimits, no_facts, serve_until};

/// A plain-HTTP listener on loopback held to `limits`: `/` answers `ok`, `/slow` streams
/// four chunks, half a second and then a second apart, `/upload` counts a body,
/// `/hold` keeps a body unread for 30 s, `/download` answers [`DOWNLOAD`] bytes in one piece
/// and `/stream` in chunks. Stops when the sender is used or
/// dropped; the handle ends when it has drained.
async fn listener(limits: ConnectionLimits) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route(
            "/upload",
            axum::routing::post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .route(
            "/hold",
            // Keeps the request's body unread for a while, as a busy service might.
            axum::routing::post(|body: axum::body::Body| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(body);
                "held"
            }),
        )
        .route(
            "/download",
            axum::routing::get(|| async { vec![b'x'; DOWNLOAD] }),
        )
        .route(
            "/stream",
            axum::routing::get(|| async {
                // DOWNLOAD bytes in 64 KiB chunks, made as they are asked for.
                let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
                tokio::spawn(async move {
                    for _ in 0..DOWNLOAD / CHUNK {
                        if send.send(Ok(Bytes::from(vec![b'x'; CHUNK]))).await.is_err() {
                            return;
                        }
                    }
                });
                axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receive))
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    for i in 0..4 {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let _ = send.send(Ok(Bytes::from(format!("{i}")))).await;
                    }
                });
                axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receive))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_until(
        listener,
        None,
        app,
        limits,
        async {
            let _ = stopped.await;
        },
        no_facts,
    ));
    (addr, stop, server)
}

/// More than loopback's socket buffers hold, so the server must wait for its client.
const DOWNLOAD: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

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
    read_answer(tcp).await
}

/// Reads until the body `ok` has come.
async fn read_answer(tcp: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tcp.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// Whether the server closes `tcp` within `seconds`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, seconds: u64) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(seconds), tcp.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test]
async fn at_the_connection_limit_the_next_client_waits_for_a_free_slot() {
    let (addr, _stop, _server) = listener(limits(300, 1)).await;
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get_keep_alive(&mut first).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the second connection, but the listener does not take it up
    // while the first is open: its request waits.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(700), get_keep_alive(&mut second));
    assert!(waiting.await.is_err(), "served past the limit");

    // The first goes; the second is taken up and its request (already sent) answered.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut second))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"));
}

/// A TCP connection to `addr` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((std::net::Ipv4Addr::from(from), 0)))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether a keep-alive `GET /` on `tcp` is answered; `false` if the server closes it.
async fn answered(tcp: &mut tokio::net::TcpStream) -> bool {
    if tcp
        .write_all(b"GET / HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    let reading = async {
        while !answer.ends_with(b"ok") {
            match tcp.read(&mut buffer).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&buffer[..n]),
                _ => return false,
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("neither answered nor closed")
}

#[tokio::test]
async fn one_client_may_hold_only_its_share_of_the_connections() {
    // Four connections in all; by default a client may hold half of them.
    let (addr, _stop, _server) = listener(limits(300, 4)).await;
    let mut first = connect_from([127, 0, 0, 1], addr).await;
    let mut second = connect_from([127, 0, 0, 1], addr).await;
    assert!(answered(&mut first).await && answered(&mut second).await);

    // A third from the same address is closed at once, not left waiting ...
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        !answered(&mut third).await,
        "served past the client's share"
    );
    // ... while another client is served: the first could not shut it out.
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    assert!(answered(&mut other).await, "another client was shut out");

    // Once one of the first client's connections goes, it may open another.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from([127, 0, 0, 1], addr).await;
        if answered(&mut again).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client's share was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered(&mut second).await);

    // A share set explicitly is kept to.
    let (addr, _stop, _server) = listener(ConnectionLimits {
        max_per_client: Some(1),
        ..limits(300, 4)
    })
    .await;
    let mut only = connect_from([127, 0, 0, 1], addr).await;
    assert!(answered(&mut only).await);
    let mut more = connect_from([127, 0, 0, 1], addr).await;
    assert!(!answered(&mut more).await, "served past an explicit share");
}

/// An HTTP/2 (h2c) connection to `addr`: its sender and the task driving it, which ends
/// when the connection closes.
async fn h2<B>(addr: SocketAddr) -> (hyper::client::conn::http2::SendRequest<B>, JoinHandle<()>)
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
) -> Result<Bytes, String> {
    let request = http::Request::get(format!("http://svc.test{path}"))
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await;
    body.map(http_body_util::Collected::to_bytes)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_one_streaming_a_response() {
    // HTTP/2 clients answer pings, so only the idle limit ends a connection they keep.
    let (addr, _stop, _server) = listener(limits(1, 100)).await;

    // A response that takes three and a half seconds, more than three times the idle
    // limit, arrives whole, and the connection still takes the next request at once.
    let (mut sender, driver) = h2(addr).await;
    assert_eq!(h2_get(&mut sender, "/slow").await.unwrap(), "0123");
    assert_eq!(h2_get(&mut sender, "/").await.unwrap(), "ok");

    // With nothing in flight, the connection goes a second after its last response
    // (GOAWAY, then close), and its client sees it closed.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("an idle connection is closed")
        .unwrap();
    assert!(sender.is_closed());

    // A connection that keeps asking stays.
    let (mut sender, driver) = h2(addr).await;
    for _ in 0..15 {
        assert_eq!(h2_get(&mut sender, "/").await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!driver.is_finished(), "a busy connection was closed");
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_idle_limit() {
    // Header-read deadline far off: only the idle limit can close it.
    let (addr, _stop, _server) = listener(ConnectionLimits {
        header_read: Duration::from_secs(60),
        ..limits(1, 100)
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get_keep_alive(&mut tcp).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut tcp, 10).await,
        "an idle keep-alive stays"
    );
}

#[tokio::test]
async fn a_stopped_listener_lets_a_request_in_flight_finish_within_the_drain() {
    let (addr, stop, server) = listener(limits(300, 100)).await;
    let (mut sender, _driver) = h2(addr).await;
    let slow = tokio::spawn(async move { h2_get(&mut sender, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), "0123");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the listener ends once drained")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_request_outlasting_the_drain_is_cut_off() {
    let (addr, stop, server) = listener(ConnectionLimits {
        drain: Duration::from_secs(1),
        ..limits(300, 100)
    })
    .await;
    let (mut sender, driver) = h2(addr).await;
    let slow = tokio::spawn(async move { h2_get(&mut sender, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the listener ends after the drain")
        .unwrap();
    // The response (3.5 s) could not finish in the one second given.
    assert!(slow.await.unwrap().is_err(), "outlasted the drain");
    tokio::time::timeout(Duration::from_secs(3), driver)
        .await
        .expect("the connection is closed")
        .unwrap();
}

#[tokio::test]
async fn a_body_that_stops_coming_fails_and_a_response_not_read_is_dropped() {
    let (addr, _stop, _server) = listener(ConnectionLimits {
        stall: Duration::from_secs(1),
        ..limits(300, 100)
    })
    .await;

    // Ten bytes promised, two sent, then nothing: the service's read fails (axum answers
    // 400) instead of waiting for ever.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 10\r\n\r\nab")
        .await
        .unwrap();
    let mut head = [0_u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .expect("answered once the body stalled")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");

    // A slow body that keeps coming passes (a byte every 0.3 s, 1.2 s in all).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    for byte in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(byte).await.unwrap();
    }
    let mut answer = vec![0_u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    // A download the client does not read: the server gives up on it. (A small receive
    // buffer, so that the kernel cannot take the whole response in the client's stead.)
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(b"GET /download HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut received)).await;
    assert!(
        received.len() < DOWNLOAD,
        "the whole response waited for a client that did not read"
    );
}

#[tokio::test]
async fn a_grpc_request_stream_may_pause_as_long_as_a_connection_may_idle() {
    // The client of a bidirectional gRPC call may send nothing for a while, waiting for
    // answers: its request stream is held to the idle limit (here 5 s), not the stall
    // limit (1 s) that holds an ordinary upload.
    let (addr, _stop, _server) = listener(ConnectionLimits {
        stall: Duration::from_secs(1),
        ..limits(5, 100)
    })
    .await;
    for (content_type, paused_for, status) in [
        ("application/grpc", 2_500, http::StatusCode::OK),
        (
            "application/octet-stream",
            2_500,
            http::StatusCode::BAD_REQUEST,
        ),
    ] {
        let (send, receive) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(2);
        let body =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receive));
        let (mut sender, _driver) = h2(addr).await;
        let request = http::Request::post("http://svc.test/upload")
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        let response = tokio::spawn(async move { sender.send_request(request).await });
        let piece =
            |text: &'static str| Ok(http_body::Frame::data(Bytes::from_static(text.as_bytes())));
        send.send(piece("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(paused_for)).await;
        // Sent into the void if the server has given up on the body.
        let _ = send.send(piece("b")).await;
        drop(send);
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered")
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
        if status == http::StatusCode::OK {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "2 bytes");
        }
    }
}

#[tokio::test]
async fn an_http2_client_that_keeps_its_window_shut_is_dropped() {
    // Over HTTP/2 a client can stop taking a response without blocking any socket write:
    // it leaves the stream's flow-control window shut (here: it never reads the body, so
    // its HTTP/2 library never opens the window again), and answers pings. The response
    // is then not asked for more, which the listener sees: a streamed one (`/stream`), and
    // one the service made whole (`/download`, 64 MiB), which the listener hands to hyper
    // in pieces so that it is not all passed to the HTTP/2 layer at once and left there
    // unwatched until the idle limit.
    let (addr, _stop, _server) = listener(ConnectionLimits {
        stall: Duration::from_secs(1),
        ..limits(300, 100)
    })
    .await;
    for path in ["/stream", "/download"] {
        let (mut sender, driver) = h2(addr).await;
        let request = http::Request::get(format!("http://svc.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .unwrap_or_else(|_| panic!("a client that takes nothing of {path} is dropped"))
            .unwrap();
        let body = response.into_body().collect().await;
        assert!(body.map_or(true, |b| b.to_bytes().len() < DOWNLOAD));
    }
}

#[tokio::test]
async fn an_http2_body_left_unread_does_not_hold_up_the_connections_other_requests() {
    // One connection, two uploads: the first to a service that leaves its body unread,
    // the second to one that reads it. The first's unread bytes count against the
    // connection's flow-control window until read; were that window no larger than one
    // stream's, the second's body could not be sent at all until the first's stalled out.
    let (addr, _stop, _server) = listener(limits(300, 100)).await;
    let (mut sender, _driver) = h2(addr).await;
    let upload = |path: &str, size: usize| {
        http::Request::post(format!("http://svc.test{path}"))
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap()
    };
    let held = sender.send_request(upload("/hold", 4 << 20));
    let held = tokio::spawn(held);
    // Time for the held upload to fill what the server lets it send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(upload("/upload", 512 << 10)),
    )
    .await
    .expect("the second upload was held up by the first's unread body")
    .unwrap();
    let body = read.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{} bytes", 512 << 10));
    held.abort();
}
