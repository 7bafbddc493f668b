//! The outbound sidecar's destinations: where this workload's credentials may go, and
//! which server identity is accepted at each over mutual TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod fixture;

use axum::body::Body;
use fixture::Domain;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;
use wimse_workload::listen::serve;
use wimse_workload::proxy::{OutboundOptions, OutboundProof, outbound_router};
use wimse_workload::tls::server_config;
use wimse_workload::{CredentialSource, MtlsPeer, PeerAllowList, ProofMethod};

/// An upstream on loopback answering with the caller it saw: the mTLS peer when `tls`
/// is its source, else whether a WIT arrived.
async fn upstream(tls: Option<&CredentialSource>) -> SocketAddr {
    let app = axum::Router::new()
        .fallback(
            |peer: Option<axum::Extension<MtlsPeer>>,
             headers: http::HeaderMap,
             body: axum::body::Bytes| async move {
                match peer {
                    Some(p) => p.0.0.to_string(),
                    None if !body.is_empty() => format!("bytes={}", body.len()),
                    None => format!("wit={}", headers.contains_key("workload-identity-token")),
                }
            },
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match tls {
        Some(source) => {
            let config = server_config(source, PeerAllowList::default()).unwrap();
            tokio::spawn(serve(listener, Arc::new(config), app));
        }
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    addr
}

async fn get(proxy: &axum::Router, url: &str) -> (StatusCode, String) {
    send(proxy, Request::get(url).body(Body::empty()).unwrap()).await
}

async fn send(proxy: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = proxy.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn credentials_go_only_to_the_listed_destinations() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let up = upstream(None).await;
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    options
        .destinations
        .insert(format!("127.0.0.1:{}", up.port()), None);
    let proxy = outbound_router(source, options).unwrap();
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", up.port())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "wit=true"));
    // The same server by another name, or any other host: refused, nothing sent.
    for other in [
        format!("http://localhost:{}/x", up.port()),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let (status, body) = get(&proxy, &other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{other}: {body}");
        assert!(body.contains("destination-not-allowed"), "{body}");
    }
}

#[tokio::test]
async fn over_mutual_tls_each_destination_accepts_only_the_server_named_for_it() {
    let good = Domain::new("good.test");
    let w2 = upstream(Some(&CredentialSource::fixed(
        good.credentials("/w2", &[&good]),
    )))
    .await;
    let w3 = upstream(Some(&CredentialSource::fixed(
        good.credentials("/w3", &[&good]),
    )))
    .await;
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let mut allow = PeerAllowList::default();
    allow.trust_domains.insert(good.td.clone());
    let mut options = OutboundOptions::new(OutboundProof::Mtls(allow));
    // Both addresses are expected to be w3: w2 answering at one of them (a spoofed
    // address, a wrong route) is refused although the allow-list takes its trust domain.
    for addr in [w2, w3] {
        options
            .destinations
            .insert(format!("127.0.0.1:{}", addr.port()), Some(good.id("/w3")));
    }
    let proxy = outbound_router(source, options).unwrap();
    // The upstream answers with its own view of the caller (w1 over mTLS).
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", w3.port())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1");
    let (status, body) = get(&proxy, &format!("http://127.0.0.1:{}/x", w2.port())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn a_body_streams_through_when_no_signature_covers_it() {
    // Larger than what a message signature's digest makes the proxy buffer (16 MiB).
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let up = upstream(None).await;
    let options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    let proxy = outbound_router(source, options).unwrap();
    let size = wimse_workload::proxy::MAX_OUTBOUND_BODY + 1;
    let request = Request::post(format!("http://127.0.0.1:{}/upload", up.port()))
        .body(Body::from(vec![7u8; size]))
        .unwrap();
    let (status, body) = send(&proxy, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("bytes={size}"));
}
