//! The inbound sidecar in front of a gRPC-style service: HTTP/2 to the upstream,
//! `TE: trailers` passed on, response trailers passed back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod fixture;

use axum::body::Body;
use bytes::Bytes;
use fixture::Domain;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use wimse_core::token::unix_now;
use wimse_workload::listen::{ConnectionLimits, mtls_peer, serve_until};
use wimse_workload::proxy::{UpstreamProtocol, inbound_router_with};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, Policy, ProofMethod, WimseLayer, attach_proof,
};

const PUBLIC: &str = "http://svc.test";

/// An h2c upstream answering with the protocol and `TE` it saw, then a `grpc-status`
/// trailer.
async fn grpc_like_upstream() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|req: Request<Body>| async move {
        let te = req
            .headers()
            .get("te")
            .map_or("-", |v| v.to_str().unwrap())
            .to_owned();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = [
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!(
                "{:?} te={te}",
                req.version()
            )))),
            Ok(Frame::trailers(trailers)),
        ];
        Body::new(StreamBody::new(tokio_stream::iter(frames)))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_grpc_call_reaches_an_http2_upstream_with_te_and_its_trailers_come_back() {
    let good = Domain::new("good.test");
    let upstream = grpc_like_upstream().await;
    let server = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let authn = Arc::new(Authenticator::new(AuthConfig::new(PUBLIC), server));
    let policy = Policy::from_text("permit(principal, action, resource);").unwrap();
    let proxy = inbound_router_with(
        &format!("http://{upstream}").parse().unwrap(),
        UpstreamProtocol::Http2,
        WimseLayer::new(authn, Arc::new(policy)),
    );
    // The sidecar on a real listener, called over h2c as a gRPC client would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar = listener.local_addr().unwrap();
    tokio::spawn(serve_until(
        listener,
        None,
        proxy,
        ConnectionLimits::default(),
        std::future::pending(),
        mtls_peer,
    ));
    let tcp = tokio::net::TcpStream::connect(sidecar).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);

    let client = good.credentials("/w1", &[&good]);
    let (mut parts, ()) = Request::post(format!("{PUBLIC}/orders.v1.Orders/Get"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", &client, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = format!("http://{sidecar}/orders.v1.Orders/Get")
        .parse()
        .unwrap();
    parts.version = http::Version::HTTP_2;
    let request = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers passed back");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "HTTP/2.0 te=trailers");
}
