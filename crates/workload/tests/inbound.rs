//! gRPC through the sidecars: HTTP/2 to the upstream, `TE: trailers` passed on, response
//! trailers passed back; the inbound sidecar in front of a gRPC-style service, and the
//! outbound one dialled by a gRPC client as if it were the server.
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
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use wimse_core::token::unix_now;
use wimse_workload::listen::{ConnectionLimits, mtls_peer, serve_until};
use wimse_workload::proxy::{
    OutboundOptions, OutboundProof, UpstreamProtocol, inbound_router_with, outbound_router,
};
use wimse_workload::tls::{ClientCerts, server_config_with};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, Credentials, PeerAllowList, Policy, ProofMethod,
    WimseLayer, attach_proof,
};

const PUBLIC: &str = "http://svc.test";

/// An h2c upstream answering with the protocol, `TE` and path it saw and the caller the
/// sidecar in front of it named, then a `grpc-status` trailer.
async fn grpc_like_upstream() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|req: Request<Body>| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map_or("-", |v| v.to_str().unwrap())
                .to_owned()
        };
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = [
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!(
                "{:?} te={} {} by {}",
                req.version(),
                header("te"),
                req.uri().path(),
                header("x-wimse-peer-id"),
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

/// Workload 3's inbound sidecar on loopback in front of a gRPC-like service, with
/// `policy`: over h2c at the public URL [`PUBLIC`], or with `tls` over TLS (HTTP/2 by
/// ALPN; callers may also present a certificate) at `https://<its address>`. Its address.
async fn inbound_sidecar(good: &Domain, policy: &str, tls: bool) -> std::net::SocketAddr {
    let upstream = grpc_like_upstream().await;
    inbound_sidecar_to(good, policy, tls, upstream, UpstreamProtocol::Http2).await
}

/// [`inbound_sidecar`] in front of the service at `upstream`, speaking `protocol` to it.
async fn inbound_sidecar_to(
    good: &Domain,
    policy: &str,
    tls: bool,
    upstream: std::net::SocketAddr,
    protocol: UpstreamProtocol,
) -> std::net::SocketAddr {
    let w3 = CredentialSource::fixed(good.credentials("/w3", &[good]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar = listener.local_addr().unwrap();
    let public = if tls {
        format!("https://{sidecar}")
    } else {
        PUBLIC.to_owned()
    };
    let authn = Authenticator::new(AuthConfig::new(public), w3.clone());
    let proxy = inbound_router_with(
        &format!("http://{upstream}").parse().unwrap(),
        protocol,
        WimseLayer::new(
            Arc::new(authn),
            Arc::new(Policy::from_text(policy).unwrap()),
        ),
    );
    let tls = tls.then(|| {
        let config = server_config_with(&w3, PeerAllowList::default(), ClientCerts::Optional);
        Arc::new(config.unwrap())
    });
    tokio::spawn(serve_until(
        listener,
        tls,
        proxy,
        ConnectionLimits::default(),
        std::future::pending(),
        mtls_peer,
    ));
    sidecar
}

#[tokio::test]
async fn a_grpc_call_reaches_an_http2_upstream_with_te_and_its_trailers_come_back() {
    let good = Domain::new("good.test");
    // The sidecar on a real listener, called over h2c as a gRPC client would.
    let sidecar = inbound_sidecar(&good, "permit(principal, action, resource);", false).await;
    let mut sender = h2c(sidecar).await;

    let client = good.credentials("/w1", &[&good]);
    let request = grpc_call(
        sidecar,
        "/orders.v1.Orders/Get",
        Some(&client),
        "application/grpc",
    );
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers passed back");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        collected.to_bytes(),
        "HTTP/2.0 te=trailers /orders.v1.Orders/Get by spiffe://good.test/w1"
    );
}

/// An HTTP/2 POST of `path` to the sidecar at `sidecar`, with `TE: trailers` and
/// `content_type`, proven with a WIT and WPT for [`PUBLIC`] when `client` is given.
fn grpc_call(
    sidecar: std::net::SocketAddr,
    path: &str,
    client: Option<&Credentials>,
    content_type: &str,
) -> Request<Empty<Bytes>> {
    let (mut parts, ()) = Request::post(format!("{PUBLIC}{path}"))
        .header("te", "trailers")
        .header("content-type", content_type)
        .body(())
        .unwrap()
        .into_parts();
    if let Some(client) = client {
        attach_proof(&mut parts, b"", client, ProofMethod::WitWpt, unix_now()).unwrap();
    }
    parts.uri = format!("http://{sidecar}{path}").parse().unwrap();
    parts.version = http::Version::HTTP_2;
    Request::from_parts(parts, Empty::<Bytes>::new())
}

/// Opens an h2c connection to `addr`, as a gRPC client does.
async fn h2c<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn a_grpc_client_dials_its_outbound_sidecar_and_the_call_crosses_tls_to_the_server() {
    let good = Domain::new("good.test");
    let policy = "permit(principal, action == Action::\"POST\", resource) \
                  when { context.path == \"/orders.v1.Orders/Get\" };";
    let inbound = inbound_sidecar(&good, policy, true).await;

    let w1 = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    for (proof, method) in [
        (
            OutboundProof::AttachOverTls(ProofMethod::WitWpt, PeerAllowList::default()),
            "wit-wpt",
        ),
        (OutboundProof::Mtls(PeerAllowList::default()), "mtls"),
    ] {
        // Workload 1's outbound sidecar, which sends everything to workload 3.
        let mut options = OutboundOptions::new(proof);
        options.upstream = Some(inbound.to_string().parse().unwrap());
        options.upstream_protocol = UpstreamProtocol::Http2;
        let router = outbound_router(w1.clone(), options).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbound = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        // The gRPC client's channel targets the sidecar: its requests name the sidecar.
        let mut sender = h2c(outbound).await;
        let request = Request::post(format!("http://{outbound}/orders.v1.Orders/Get"))
            .version(http::Version::HTTP_2)
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(
            response.headers()["x-wimse-peer-id"],
            "spiffe://good.test/w3"
        );
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers passed back");
        assert_eq!(trailers["grpc-status"], "0", "{method}");
        assert_eq!(
            collected.to_bytes(),
            "HTTP/2.0 te=trailers /orders.v1.Orders/Get by spiffe://good.test/w1",
            "{method}"
        );
        // Another method is refused by workload 3's policy, and the refusal comes back.
        let request = Request::post(format!("http://{outbound}/orders.v1.Orders/Delete"))
            .version(http::Version::HTTP_2)
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method}");
    }
}

#[tokio::test]
async fn a_grpc_caller_is_refused_with_a_grpc_status_it_can_read() {
    let good = Domain::new("good.test");
    let policy = "permit(principal, action, resource) when { context.path == \"/ok\" };";
    let sidecar = inbound_sidecar(&good, policy, false).await;
    let mut sender = h2c(sidecar).await;
    let client = good.credentials("/w1", &[&good]);
    let call = |path: &str, proven: bool, content_type: &str| {
        grpc_call(sidecar, path, proven.then_some(&client), content_type)
    };
    // No credentials: UNAUTHENTICATED; a path the policy does not grant: PERMISSION_DENIED.
    // Both as a trailers-only response naming the problem, as gRPC clients read it.
    for (path, proven, status, problem) in [
        (
            "/ok",
            false,
            "16",
            "urn:wimse:problem:missing-credentials: ",
        ),
        ("/other", true, "7", "urn:wimse:problem:forbidden: "),
    ] {
        let response = sender
            .send_request(call(path, proven, "application/grpc"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["grpc-status"], status, "{path}");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.starts_with(problem), "{path}: {message}");
        assert!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }
    // The same refusal to a caller that is not gRPC: the RFC 9457 problem.
    let response = sender
        .send_request(call("/ok", false, "application/json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // And an allowed call still reaches the service.
    let response = sender
        .send_request(call("/ok", true, "application/grpc"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("grpc-status"));
}

#[tokio::test]
async fn identity_headers_smuggled_in_request_trailers_do_not_reach_the_service() {
    // A service that answers with the names of the request trailers it received.
    let app = axum::Router::new().fallback(|body: Body| async move {
        let collected = body.collect().await.unwrap();
        let mut names: Vec<String> = collected
            .trailers()
            .map(|t| t.keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names.join(" ")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let good = Domain::new("good.test");
    let policy = "permit(principal, action, resource);";
    let sidecar = inbound_sidecar_to(&good, policy, false, upstream, UpstreamProtocol::Http2).await;

    let client = good.credentials("/w1", &[&good]);
    let (mut parts, ()) = Request::post(format!("{PUBLIC}/upload"))
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", &client, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = format!("http://{sidecar}/upload").parse().unwrap();
    parts.version = http::Version::HTTP_2;
    let mut trailers = http::HeaderMap::new();
    for (name, value) in [
        ("x-wimse-peer-id", "spiffe://good.test/admin"),
        ("X-Wimse-Peer-Auth-Method", "mtls"),
        ("x-forwarded-client-cert", "By=spiffe://good.test/admin"),
        ("workload-identity-token", "e30.e30.e30"),
        ("x-checksum", "kept"),
    ] {
        trailers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let frames = [
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"data"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(tokio_stream::iter(frames));
    let mut sender = h2c(sidecar).await;
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(seen, "x-checksum");
}

#[tokio::test]
async fn a_sidecar_that_speaks_http1_to_its_server_refuses_grpc_calls_saying_why() {
    // Left as it is, the call would go out as HTTP/1.1 and fail with no `grpc-status`.
    let good = Domain::new("good.test");
    let upstream = grpc_like_upstream().await;
    let policy = "permit(principal, action, resource);";
    let inbound = inbound_sidecar_to(&good, policy, false, upstream, UpstreamProtocol::Http1).await;
    let mut options = OutboundOptions::new(OutboundProof::Attach(ProofMethod::WitWpt));
    options.upstream = Some(upstream.to_string().parse().unwrap());
    let router = outbound_router(
        CredentialSource::fixed(good.credentials("/w1", &[&good])),
        options,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let client = good.credentials("/w1", &[&good]);
    for (sidecar, request) in [
        (
            inbound,
            grpc_call(
                inbound,
                "/orders.v1.Orders/Get",
                Some(&client),
                "application/grpc",
            ),
        ),
        (
            outbound,
            grpc_call(outbound, "/orders.v1.Orders/Get", None, "application/grpc"),
        ),
    ] {
        let response = h2c(sidecar).await.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{sidecar}");
        assert_eq!(response.headers()["grpc-status"], "12", "{sidecar}");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(
            message.starts_with("urn:wimse:problem:grpc-needs-http2: ")
                && message.contains("--upstream-http2"),
            "{sidecar}: {message}"
        );
    }
    // Calls that are not gRPC still go through as HTTP/1.1.
    let response = h2c(inbound)
        .await
        .send_request(grpc_call(
            inbound,
            "/orders.v1.Orders/Get",
            Some(&client),
            "application/json",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"HTTP/1.1 "), "{body:?}");
}
