//! Mutual TLS between workloads over real loopback connections: what the handshake
//! decides, and that it decides it on every connection.
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
use wimse_workload::tls::{client_config, serve, server_config};
use wimse_workload::{CredentialSource, MtlsPeer, PeerAllowList};

/// A TLS server on loopback that answers every request with the peer ID it saw.
async fn server(source: &CredentialSource) -> std::net::SocketAddr {
    let config = Arc::new(server_config(source, PeerAllowList::default()).unwrap());
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
