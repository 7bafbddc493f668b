//! Workload listeners over real loopback connections: mutual TLS (what the handshake
//! decides, and that it decides it on every connection) and the limits on slow clients.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod fixture;

use fixture::Domain;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wimse_workload::listen::{ConnectionLimits, mtls_peer, serve, serve_until};
use wimse_workload::tls::{
    ClientCerts, MtlsConnector, ServerNames, client_config, server_auth_config, server_config,
    server_config_with,
};
use wimse_workload::{CredentialSource, MtlsPeer, PeerAllowList};

/// A TLS server on loopback that answers every request with the peer ID it saw.
async fn server(source: &CredentialSource) -> std::net::SocketAddr {
    server_with(source, ClientCerts::Required).await
}

/// [`server`], asking clients for certificates as `clients` says.
async fn server_with(source: &CredentialSource, clients: ClientCerts) -> std::net::SocketAddr {
    let config = Arc::new(server_config_with(source, PeerAllowList::default(), clients).unwrap());
    let app = axum::Router::new().fallback(|peer: Option<axum::Extension<MtlsPeer>>| async move {
        peer.map_or_else(|| "none".to_owned(), |p| p.0.0.to_string())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, config, app));
    addr
}

/// One HTTP/1.1 request over a new TLS connection; how the handshake went and the answer.
async fn call(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect("w3.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: w3.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    (kind, answer)
}

#[tokio::test]
async fn every_connection_is_a_full_handshake_so_the_verifier_always_runs() {
    // A resumed TLS 1.3 session restores the peer's certificate from the first handshake
    // without verifying it again: an SVID expired or a CA dropped from the bundle since
    // would stay accepted for the ticket's life. Neither side resumes.
    let good = Domain::new("good.test");
    let addr = server(&CredentialSource::fixed(good.credentials("/w3", &[&good]))).await;
    let client = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let config = Arc::new(client_config(&client, PeerAllowList::default()).unwrap());
    for _ in 0..3 {
        let (kind, answer) = call(addr, &config).await;
        assert_eq!(kind, rustls::HandshakeKind::Full);
        assert!(answer.ends_with("spiffe://good.test/w1"), "{answer}");
    }
    let server = server_config(
        &CredentialSource::fixed(good.credentials("/w3", &[&good])),
        PeerAllowList::default(),
    )
    .unwrap();
    assert_eq!(server.send_tls13_tickets, 0);
}

#[tokio::test]
async fn a_client_does_not_resume_even_with_a_server_that_offers_it() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    // A server that keeps sessions and sends tickets, as rustls does by default.
    let mut offering = server_config(&source, PeerAllowList::default()).unwrap();
    offering.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    offering.send_tls13_tickets = 2;
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(offering), app));

    let client = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let ours = Arc::new(client_config(&client, PeerAllowList::default()).unwrap());
    for _ in 0..2 {
        assert_eq!(call(addr, &ours).await.0, rustls::HandshakeKind::Full);
    }
    // The same client with rustls' default resumption would resume: the test can tell.
    let mut resuming = client_config(&client, PeerAllowList::default()).unwrap();
    resuming.resumption = rustls::client::Resumption::default();
    let resuming = Arc::new(resuming);
    call(addr, &resuming).await;
    assert_eq!(
        call(addr, &resuming).await.0,
        rustls::HandshakeKind::Resumed
    );
}

#[tokio::test]
async fn with_optional_client_certificates_a_caller_may_connect_without_one() {
    let good = Domain::new("good.test");
    let w3 = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let w1 = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let with_svid = Arc::new(client_config(&w1, PeerAllowList::default()).unwrap());
    let without = Arc::new(server_auth_config(&w1, PeerAllowList::default()).unwrap());
    let optional = server_with(&w3, ClientCerts::Optional).await;
    // No certificate: the connection is served, with no mTLS peer (the request itself
    // must then prove who sent it).
    let (_, answer) = call(optional, &without).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("none"), "{answer}");
    // A certificate that is presented is still verified and names the peer.
    let (_, answer) = call(optional, &with_svid).await;
    assert!(answer.ends_with("spiffe://good.test/w1"), "{answer}");
    // One from an untrusted domain is refused, as with required certificates.
    let evil = Domain::new("evil.test");
    let outsider = CredentialSource::fixed(evil.credentials("/w1", &[&evil, &good]));
    let outsider = Arc::new(client_config(&outsider, PeerAllowList::default()).unwrap());
    assert!(!served(optional, &outsider).await);
    // Where they are required, a caller without one is not served at all.
    let required = server_with(&w3, ClientCerts::Required).await;
    assert!(!served(required, &without).await);
    assert!(served(required, &with_svid).await);
}

/// Whether a request over a new TLS connection made with `config` gets an answer.
async fn served(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config.clone())
        .connect("w3.test".try_into().unwrap(), tcp)
        .await
    else {
        return false;
    };
    // In TLS 1.3 the client's certificate is checked after the client has finished its
    // handshake: a refusal arrives as an alert in place of the answer.
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nhost: w3.test\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200")
}

/// Reads until the server closes the connection; how long that took, at most `within`.
async fn closed_within(mut stream: impl tokio::io::AsyncRead + Unpin, within: u64) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(within),
        stream.read_to_end(&mut sink),
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_a_stopped_listener_drains() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let limits = ConnectionLimits {
        handshake: std::time::Duration::from_secs(1),
        header_read: std::time::Duration::from_secs(1),
        drain: std::time::Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let app = axum::Router::new().fallback(|| async { "ok" });
    let start = |tls: Option<Arc<rustls::ServerConfig>>| {
        let app = app.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let until = async {
                let _ = stopped.await;
            };
            let server = tokio::spawn(serve_until(listener, tls, app, limits, until, mtls_peer));
            (addr, stop, server)
        }
    };

    // Plain HTTP: half a header section, then silence (slowloris).
    let (addr, stop, server) = start(None).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: w3.test\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(slow, 10).await,
        "a slow header section is cut off"
    );
    // Nothing at all, or a trickle of the HTTP/2 preface: no request ever begins.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(silent, 10).await,
        "a silent connection is cut off"
    );
    let mut preface = tokio::net::TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(preface, 10).await,
        "a stalled preface is cut off"
    );
    // A complete request is still served.
    let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET / HTTP/1.1\r\nhost: w3.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).await.unwrap();
    assert!(answer.ends_with("ok"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the listener stops and drains")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // TLS: a client that never starts its handshake.
    let tls = Arc::new(server_config(&source, PeerAllowList::default()).unwrap());
    let (addr, _stop, _server) = start(Some(tls)).await;
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(silent, 10).await,
        "a silent handshake is cut off"
    );
    // A handshake, then nothing.
    let client = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let config = Arc::new(client_config(&client, PeerAllowList::default()).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let quiet = tokio_rustls::TlsConnector::from(config)
        .connect("w3.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert!(
        closed_within(quiet, 10).await,
        "a quiet TLS connection is cut off"
    );
}

#[tokio::test]
async fn a_connector_offers_its_alpn_protocols_at_pinned_destinations_too() {
    use tower::Service;
    // A gRPC server over TLS wants `h2` negotiated by ALPN; the server here says what the
    // client offered and it chose.
    let good = Domain::new("good.test");
    let w3 = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let config = server_config_with(&w3, PeerAllowList::default(), ClientCerts::Required).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (chosen_tx, mut chosen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            chosen_tx.send(alpn).unwrap();
        }
    });
    let w1 = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
    for pins in [
        std::collections::HashMap::new(),
        [(addr.to_string(), good.id("/w3"))].into(),
    ] {
        let plain = MtlsConnector::new(&w1, PeerAllowList::default(), ServerNames::Checked)
            .unwrap()
            .pinned(&w1, pins.clone())
            .unwrap();
        let mut h2 = plain.clone().offering(&[b"h2"]);
        h2.call(uri.clone()).await.unwrap();
        assert_eq!(
            chosen.recv().await.unwrap().as_deref(),
            Some(&b"h2"[..]),
            "{pins:?}"
        );
        // Without an offer, none is chosen (and the server takes HTTP/1.1).
        plain.clone().call(uri.clone()).await.unwrap();
        assert_eq!(chosen.recv().await.unwrap(), None, "{pins:?}");
    }
}
