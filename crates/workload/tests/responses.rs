//! Signed responses (the HTTP Message Signatures profile): the layer signs a response
//! when the caller asks (`wimse-sign-response`) or when configured to sign every one, and
//! the client side refuses a response whose signature is missing, moved, or tampered with.
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
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use tower::{Layer, ServiceExt};
use wimse_core::token::unix_now;
use wimse_core::token::wit::WitCache;
use wimse_workload::client::{ResponseError, SentRequest, attach, check_response};
use wimse_workload::httpsig::SigError;
use wimse_workload::{
    AuthConfig, AuthMethod, Authenticator, ClientError, CredentialSource, Credentials, Policy,
    ProofMethod, WimseClientLayer, WimseLayer, http_client,
};

const PUBLIC: &str = "http://svc.test";
const POLICY: &str = r#"
permit(principal, action == Action::"GET", resource) when { context.path == "/hello" };
"#;

fn app(layer: WimseLayer) -> axum::Router {
    axum::Router::new()
        .fallback(|| async { ([("content-type", "text/plain")], "hello") })
        .layer(layer)
}

fn layer(good: &Domain) -> WimseLayer {
    layer_at(good, PUBLIC)
}

fn layer_at(good: &Domain, public_url: &str) -> WimseLayer {
    let server = CredentialSource::fixed(good.credentials("/w3", &[good]));
    WimseLayer::new(
        Arc::new(Authenticator::new(AuthConfig::new(public_url), server)),
        Arc::new(Policy::from_text(POLICY).unwrap()),
    )
}

/// A request to `PUBLIC{path}` with `client`'s proof; what was sent, and the request as
/// the server sees it.
fn request(
    client: &Credentials,
    path: &str,
    proof: ProofMethod,
    sign_response: bool,
) -> (SentRequest, Request<Body>) {
    let (mut parts, ()) = Request::get(format!("{PUBLIC}{path}"))
        .body(())
        .unwrap()
        .into_parts();
    let sent = attach(&mut parts, b"", client, proof, sign_response, unix_now()).unwrap();
    parts.uri = path.parse().unwrap();
    (sent, Request::from_parts(parts, Body::empty()))
}

async fn call(app: &axum::Router, req: Request<Body>) -> (http::response::Parts, Bytes) {
    let (parts, body) = app.clone().oneshot(req).await.unwrap().into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

fn check(
    sent: &SentRequest,
    parts: &http::response::Parts,
    body: &[u8],
    client: &Credentials,
) -> Result<Option<wimse_workload::PeerIdentity>, ResponseError> {
    check_response(sent, parts, body, client, &WitCache::new(16), unix_now())
}

#[tokio::test]
async fn a_caller_that_asks_gets_a_response_signed_by_the_service() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good));
    let (sent, req) = request(&client, "/hello", ProofMethod::HttpSig, true);
    let (parts, body) = call(&app, req).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello");
    assert!(parts.headers.contains_key("content-digest"));
    assert!(parts.headers.contains_key("workload-identity-token"));
    let responder = check(&sent, &parts, &body, &client).unwrap().unwrap();
    assert_eq!(responder.id, good.id("/w3"));
    assert_eq!(responder.method, AuthMethod::HttpSig);

    // A caller that did not ask gets no signature (and its client accepts that).
    let (sent, req) = request(&client, "/hello", ProofMethod::HttpSig, false);
    let (parts, body) = call(&app, req).await;
    assert!(!parts.headers.contains_key("signature"));
    assert_eq!(check(&sent, &parts, &body, &client), Ok(None));
}

#[tokio::test]
async fn a_tampered_signed_response_is_refused() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good));
    let (sent, req) = request(&client, "/hello", ProofMethod::HttpSig, true);
    let (mut parts, body) = call(&app, req).await;
    assert_eq!(
        check(&sent, &parts, b"goodbye", &client),
        Err(ResponseError::Signature(SigError::ContentDigest))
    );
    parts.status = StatusCode::NOT_FOUND;
    assert_eq!(
        check(&sent, &parts, &body, &client),
        Err(ResponseError::Signature(SigError::BadSignature))
    );
}

#[tokio::test]
async fn a_signed_response_moved_to_another_request_is_refused() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good));
    let (first, req) = request(&client, "/hello", ProofMethod::HttpSig, true);
    let (parts, body) = call(&app, req).await;
    let (second, _) = request(&client, "/hello", ProofMethod::HttpSig, true);
    assert_eq!(
        check(&second, &parts, &body, &client),
        Err(ResponseError::Signature(SigError::ResponseNonce))
    );
    // Same nonce, other target: the `;req` components no longer match.
    let moved = SentRequest {
        target: "/other".into(),
        ..first
    };
    assert_eq!(
        check(&moved, &parts, &body, &client),
        Err(ResponseError::Signature(SigError::BadSignature))
    );
}

#[tokio::test]
async fn an_unsigned_or_wrongly_signed_response_is_refused_when_one_was_asked_for() {
    let good = Domain::new("good.test");
    let evil = Domain::new("evil.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good));
    let (sent, req) = request(&client, "/hello", ProofMethod::HttpSig, true);
    let (parts, body) = call(&app, req).await;

    let mut unsigned = parts.headers.clone();
    unsigned.remove("signature");
    unsigned.remove("signature-input");
    let mut stripped = http::Response::new(()).into_parts().0;
    stripped.headers = unsigned;
    assert_eq!(
        check(&sent, &stripped, &body, &client),
        Err(ResponseError::Unsigned)
    );

    // Another workload's WIT in place of the signer's: the key does not match.
    let mut swapped = http::Response::new(()).into_parts().0;
    swapped.headers = parts.headers.clone();
    swapped.headers.insert(
        "workload-identity-token",
        good.wit("/w2").token.parse().unwrap(),
    );
    assert_eq!(
        check(&sent, &swapped, &body, &client),
        Err(ResponseError::Signature(SigError::BadSignature))
    );

    // A client that does not trust the signer's trust domain.
    let elsewhere = evil.credentials("/w1", &[&evil]);
    assert!(matches!(
        check(&sent, &parts, &body, &elsewhere),
        Err(ResponseError::Wit(_))
    ));
}

#[tokio::test]
async fn a_forbidden_answer_to_a_caller_that_asked_is_signed_too() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good));
    let (sent, req) = request(&client, "/admin", ProofMethod::HttpSig, true);
    let (parts, body) = call(&app, req).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert!(check(&sent, &parts, &body, &client).unwrap().is_some());
}

#[tokio::test]
async fn a_service_that_signs_every_response_signs_the_answer_to_a_wpt() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let app = app(layer(&good).sign_all_responses());
    let (sent, req) = request(&client, "/hello", ProofMethod::WitWpt, false);
    let (parts, body) = call(&app, req).await;
    assert_eq!(parts.status, StatusCode::OK);
    let responder = check(&sent, &parts, &body, &client).unwrap().unwrap();
    assert_eq!(responder.id, good.id("/w3"));
    // A WPT has no nonce for the response to name.
    let (parts, _) = (parts, body);
    let input = parts.headers["signature-input"].to_str().unwrap();
    assert!(!input.contains("wimse-req-nonce"), "{input}");
}

#[test]
fn a_wpt_request_cannot_ask_for_a_signed_response() {
    let good = Domain::new("good.test");
    let client = good.credentials("/w1", &[&good]);
    let (mut parts, ()) = Request::get(format!("{PUBLIC}/hello"))
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(
        attach(
            &mut parts,
            b"",
            &client,
            ProofMethod::WitWpt,
            true,
            unix_now()
        ),
        Err(ClientError::Sign(_))
    ));
}

/// Serves the app `make` builds for the address it listens on.
async fn serve(make: impl FnOnce(std::net::SocketAddr) -> axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = make(addr);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_client_layer_requires_and_checks_signed_responses_over_the_network() {
    let good = Domain::new("good.test");
    let source = CredentialSource::fixed(good.credentials("/w1", &[&good]));
    let signing = serve(|addr| app(layer_at(&good, &format!("http://{addr}")))).await;
    let plain = serve(|_| axum::Router::new().fallback(|| async { "hello" })).await;
    let client = WimseClientLayer::new(source, ProofMethod::HttpSig)
        .require_signed_responses()
        .layer(http_client());

    let get = |addr: std::net::SocketAddr| {
        Request::get(format!("http://{addr}/hello"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let response = client.clone().oneshot(get(signing)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");

    let refused = client.oneshot(get(plain)).await;
    assert!(
        matches!(refused, Err(ClientError::Response(ResponseError::Unsigned))),
        "{refused:?}"
    );
}
