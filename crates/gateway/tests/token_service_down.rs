//! The gateway in process, with workload credentials from the workload library's test
//! fixture, against a token service that is not there or does not answer.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "../../workload/tests/fixture/mod.rs"]
mod fixture;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use wimse_core::jose::{Algorithm, JwkSet, SigningKey};
use wimse_core::token::access::TrustedIssuer;
use wimse_core::token::exchange::Scope;
use wimse_gateway::Gateway;
use wimse_gateway::route::{Route, Routes};
use wimse_workload::token_service::TokenServiceClient;
use wimse_workload::{CredentialSource, ProofMethod};

/// A gateway whose token service is at `server`, and an access token it admits.
fn gateway(server: &str, timeout: Duration) -> (Gateway, String) {
    let domain = fixture::Domain::new("example.org");
    let source = CredentialSource::fixed(domain.credentials("/gw", &[&domain]));
    let login = SigningKey::generate(Algorithm::Es256).unwrap();
    let mut jwk = login.public_jwk().clone();
    jwk.kid = Some("l1".into());
    let issuer = TrustedIssuer::new(
        "https://login.example".into(),
        "api".into(),
        String::new(),
        &JwkSet { keys: vec![jwk] },
    )
    .unwrap();
    let now = wimse_core::token::unix_now();
    let claims = serde_json::json!({
        "iss": "https://login.example", "aud": "api", "sub": "alice",
        "iat": now, "exp": now + 60, "scope": "orders",
    });
    let token = wimse_core::jose::jws::sign(&login, Some("at+jwt"), Some("l1"), &claims).unwrap();
    let route = Route::new(
        "/api",
        "http://127.0.0.1:9",
        Scope::parse("orders").unwrap(),
        false,
    )
    .unwrap();
    let tts = TokenServiceClient::new(&source, server).unwrap();
    let gateway = Gateway::new(
        Routes::new(vec![route]).unwrap(),
        std::sync::Arc::new(wimse_gateway::IssuerKeys::fixed(vec![issuer])),
        tts,
        source,
        ProofMethod::WitWpt,
    )
    .with_exchange_timeout(timeout);
    (gateway, token)
}

async fn call(gateway: Gateway, token: &str) -> (StatusCode, String) {
    let request = Request::get("/api/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = gateway.router().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_token_service_that_never_answers_costs_a_503_not_a_hung_client() {
    // Accepts connections and never says a word (not even a TLS handshake).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let (gateway, token) = gateway(&address.to_string(), Duration::from_millis(300));
    let started = Instant::now();
    let (status, body) = call(gateway, &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("urn:wimse:problem:token-service-unavailable"),
        "{body}"
    );
    assert!(body.contains("no answer within 300 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_token_service_that_is_not_there_costs_a_503() {
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = free.local_addr().unwrap();
    drop(free);
    let (gateway, token) = gateway(&address.to_string(), Duration::from_secs(10));
    let (status, body) = call(gateway, &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("urn:wimse:problem:token-service-unavailable"),
        "{body}"
    );
}
