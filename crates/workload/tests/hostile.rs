//! The hostile-request suite: requests an attacker could send to a service behind the
//! `WimseLayer` (or the inbound proxy), each refused with a specific reason.
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
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;
use wimse_core::token::unix_now;
use wimse_core::token::wpt::{RequestBinding, issue_wpt};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, Credentials, MtlsPeer, PeerIdentity, Policy,
    ProofMethod, Transaction, WimseLayer, attach_proof,
};

const PUBLIC: &str = "http://svc.test";
const POLICY: &str = r#"
permit(principal == Workload::"spiffe://good.test/w1", action == Action::"GET", resource)
when { context.path like "/api/orders*" };
permit(principal == Workload::"spiffe://good.test/w1", action == Action::"POST", resource)
when { context.path like "/api/orders*" };
permit(principal == Workload::"spiffe://good.test/w1", action == Action::"POST", resource)
when { context.path == "/api/pay" && context has txn && context.txn.scopes.contains("pay") };
"#;

struct Setup {
    good: Domain,
    evil: Domain,
    app: axum::Router,
    client: Credentials,
}

fn setup_with(config: impl FnOnce(&mut AuthConfig)) -> Setup {
    let good = Domain::new("good.test");
    let evil = Domain::new("evil.test");
    let server = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let mut cfg = AuthConfig::new(PUBLIC);
    config(&mut cfg);
    let authn = Arc::new(Authenticator::new(cfg, server));
    let layer = WimseLayer::new(authn, Arc::new(Policy::from_text(POLICY).unwrap()));
    let app = axum::Router::new()
        .fallback(
            |axum::Extension(peer): axum::Extension<PeerIdentity>,
             txn: Option<axum::Extension<Transaction>>| async move {
                let txn = txn
                    .map(|t| format!(" txn={} sub={}", t.0.0.txn, t.0.0.sub))
                    .unwrap_or_default();
                format!("{} {}{txn}", peer.id, peer.method.name())
            },
        )
        .layer(layer);
    let client = good.credentials("/w1", &[&good]);
    Setup {
        good,
        evil,
        app,
        client,
    }
}

fn setup() -> Setup {
    setup_with(|_| {})
}

/// A request to `PUBLIC{path}` with the client's proof attached (URI made relative after
/// signing, as the server sees it).
fn signed(
    creds: &Credentials,
    method: &str,
    path: &str,
    body: &str,
    proof: ProofMethod,
) -> Request<Body> {
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(format!("{PUBLIC}{path}"))
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, body.as_bytes(), creds, proof, unix_now()).unwrap();
    parts.uri = path.parse().unwrap();
    Request::from_parts(parts, Body::from(body.to_owned()))
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, Option<String>) {
    let response: Response<Body> = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let ctype = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), ctype)
}

/// Asserts a 400 RFC 9457 problem with `code`.
async fn refused(app: &axum::Router, req: Request<Body>, code: &str) {
    let (status, body, ctype) = send(app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        problem["type"],
        format!("urn:wimse:problem:{code}"),
        "{body}"
    );
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn a_valid_wit_wpt_request_is_admitted_with_the_peer_identity() {
    let s = setup();
    let (status, body, _) = send(
        &s.app,
        signed(&s.client, "GET", "/api/orders?x=1", "", ProofMethod::WitWpt),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1 wit-wpt");
}

#[tokio::test]
async fn a_valid_signed_request_with_a_body_is_admitted() {
    let s = setup();
    let (status, body, _) = send(
        &s.app,
        signed(
            &s.client,
            "POST",
            "/api/orders",
            "{\"n\":1}",
            ProofMethod::HttpSig,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1 http-sig");
}

#[tokio::test]
async fn a_request_without_credentials_is_refused() {
    let s = setup();
    let req = Request::get("/api/orders").body(Body::empty()).unwrap();
    refused(&s.app, req, "missing-credentials").await;
}

#[tokio::test]
async fn a_wit_without_proof_is_refused() {
    let s = setup();
    let mut req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    req.headers_mut().remove("workload-proof-token");
    refused(&s.app, req, "missing-proof").await;
}

#[tokio::test]
async fn a_replayed_wpt_is_refused() {
    let s = setup();
    let req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    let mut again = Request::get("/api/orders").body(Body::empty()).unwrap();
    *again.headers_mut() = req.headers().clone();
    assert_eq!(send(&s.app, req).await.0, StatusCode::OK);
    refused(&s.app, again, "replayed-proof").await;
}

#[tokio::test]
async fn a_wpt_for_another_audience_is_refused() {
    let s = setup();
    let (mut parts, ()) = Request::get("http://other.test/api/orders")
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", &s.client, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = "/api/orders".parse().unwrap();
    refused(
        &s.app,
        Request::from_parts(parts, Body::empty()),
        "wrong-audience",
    )
    .await;
}

#[tokio::test]
async fn a_wpt_audience_is_compared_in_normal_form_but_never_loosely() {
    // What another implementation may write for this service: default port, host case.
    let s = setup();
    let wit = s.client.wit.as_ref().unwrap();
    let request = |aud: &str| {
        let binding = RequestBinding {
            audience: aud,
            ..Default::default()
        };
        let wpt = issue_wpt(&wit.key, &wit.token, &binding, unix_now(), 60).unwrap();
        Request::get("/api/orders")
            .header("workload-identity-token", &wit.token)
            .header("workload-proof-token", wpt)
            .body(Body::empty())
            .unwrap()
    };
    for aud in [
        "http://svc.test:80/api/orders",
        "HTTP://SVC.test/api/orders",
    ] {
        let (status, body, _) = send(&s.app, request(aud)).await;
        assert_eq!(status, StatusCode::OK, "{aud}: {body}");
    }
    for aud in [
        "http://svc.test:8080/api/orders",
        "https://svc.test/api/orders",
        "http://svc.test/API/orders",
    ] {
        refused(&s.app, request(aud), "wrong-audience").await;
    }
}

#[tokio::test]
async fn a_wpt_for_another_path_of_this_service_is_refused() {
    let s = setup();
    let mut req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    *req.uri_mut() = "/api/orders/admin".parse().unwrap();
    refused(&s.app, req, "wrong-audience").await;
}

#[tokio::test]
async fn a_wpt_signed_by_a_key_other_than_the_wit_cnf_is_refused() {
    let s = setup();
    let wit = s.client.wit.as_ref().unwrap();
    let other = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    let wpt = issue_wpt(
        &other,
        &wit.token,
        &RequestBinding {
            audience: &format!("{PUBLIC}/api/orders"),
            ..Default::default()
        },
        unix_now(),
        60,
    )
    .unwrap();
    let req = Request::get("/api/orders")
        .header("workload-identity-token", &wit.token)
        .header("workload-proof-token", wpt)
        .body(Body::empty())
        .unwrap();
    refused(&s.app, req, "proof-signature-invalid").await;
}

#[tokio::test]
async fn an_expired_wit_is_refused() {
    let s = setup();
    let mut creds = s.client.clone();
    let key = Arc::new(
        wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap(),
    );
    creds.wit = Some(s.good.wit_with_key("/w1", key, -3600));
    refused(
        &s.app,
        signed(&creds, "GET", "/api/orders", "", ProofMethod::WitWpt),
        "wit-expired",
    )
    .await;
}

#[tokio::test]
async fn a_wit_from_an_untrusted_trust_domain_is_refused() {
    let s = setup();
    let creds = s.evil.credentials("/w1", &[&s.evil]);
    refused(
        &s.app,
        signed(&creds, "GET", "/api/orders", "", ProofMethod::WitWpt),
        "untrusted-trust-domain",
    )
    .await;
}

#[tokio::test]
async fn a_wit_forged_by_another_issuer_for_a_trusted_domain_is_refused() {
    let s = setup();
    // The attacker runs its own issuer and names the trusted domain in `sub`.
    let forger = Domain {
        td: s.good.td.clone(),
        ..Domain::new("good.test")
    };
    let creds = forger.credentials("/w1", &[&forger]);
    refused(
        &s.app,
        signed(&creds, "GET", "/api/orders", "", ProofMethod::WitWpt),
        "invalid-wit",
    )
    .await;
}

#[tokio::test]
async fn a_wpt_moved_to_another_wit_of_the_same_key_is_refused() {
    // Two WITs for the same holder key: a proof made for one must not pass with the other.
    let s = setup();
    let key = Arc::clone(&s.client.wit.as_ref().unwrap().key);
    let first = s.good.wit_with_key("/w1", Arc::clone(&key), 3600);
    let second = s.good.wit_with_key("/w1", key, 3600);
    let mut creds = s.client.clone();
    creds.wit = Some(first);
    let mut req = signed(&creds, "GET", "/api/orders", "", ProofMethod::WitWpt);
    req.headers_mut()
        .insert("workload-identity-token", second.token.parse().unwrap());
    refused(&s.app, req, "proof-binding-mismatch").await;
}

#[tokio::test]
async fn a_wit_and_wpt_swapped_between_two_workloads_requests_are_refused() {
    let s = setup();
    let other = s.good.credentials("/w2", &[&s.good]);
    let a = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    let b = signed(&other, "GET", "/api/orders", "", ProofMethod::WitWpt);
    let req = Request::get("/api/orders")
        .header(
            "workload-identity-token",
            a.headers()["workload-identity-token"].clone(),
        )
        .header(
            "workload-proof-token",
            b.headers()["workload-proof-token"].clone(),
        )
        .body(Body::empty())
        .unwrap();
    refused(&s.app, req, "proof-signature-invalid").await;
}

#[tokio::test]
async fn a_wpt_bound_to_another_txn_token_is_refused() {
    let s = setup();
    let (mut parts, ()) = Request::get(format!("{PUBLIC}/api/orders"))
        .header("txn-token", "a.b.c")
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", &s.client, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = "/api/orders".parse().unwrap();
    parts.headers.insert("txn-token", "x.y.z".parse().unwrap());
    refused(
        &s.app,
        Request::from_parts(parts, Body::empty()),
        "proof-binding-mismatch",
    )
    .await;
}

#[tokio::test]
async fn an_access_token_added_after_signing_is_refused() {
    let s = setup();
    let mut req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    req.headers_mut()
        .insert("authorization", "Bearer stolen".parse().unwrap());
    refused(&s.app, req, "proof-binding-mismatch").await;
}

#[tokio::test]
async fn a_repeated_wit_header_is_refused() {
    let s = setup();
    let mut req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    let wit = req.headers()["workload-identity-token"].clone();
    req.headers_mut().append("workload-identity-token", wit);
    refused(&s.app, req, "malformed-header").await;
}

#[tokio::test]
async fn a_signed_request_with_a_tampered_or_stripped_body_is_refused() {
    let s = setup();
    // A stripped body must fail too: the signed digest is checked even against nothing.
    for body in ["{\"n\":1000}", ""] {
        let req = signed(
            &s.client,
            "POST",
            "/api/orders",
            "{\"n\":1}",
            ProofMethod::HttpSig,
        );
        let (parts, _) = req.into_parts();
        let req = Request::from_parts(parts, Body::from(body));
        refused(&s.app, req, "content-digest-mismatch").await;
    }
}

/// A request signed over `components` with these `created`/`expires`, by the client's WIT
/// key, with its WIT attached: what a peer that builds its own signatures would send.
fn hand_signed(s: &Setup, created: i64, expires: i64, body: &str, digest: &str) -> Request<Body> {
    hand_signed_over(s, (created, expires), body, digest, &[])
}

/// [`hand_signed`], also covering `extra` components with the values the signer saw.
fn hand_signed_over(
    s: &Setup,
    (created, expires): (i64, i64),
    body: &str,
    digest: &str,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let wit = s.client.wit.as_ref().unwrap();
    let mut components = vec![
        ("@method", "POST"),
        ("@request-target", "/api/orders"),
        ("workload-identity-token", wit.token.as_str()),
    ];
    components.extend_from_slice(extra);
    if !digest.is_empty() {
        components.push(("content-digest", digest));
    }
    let list = components
        .iter()
        .map(|(c, _)| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(" ");
    let params = format!(
        "({list});created={created};expires={expires};nonce=\"n-{created}-{expires}\";\
         tag=\"wimse-workload-to-workload\";wimse-aud=\"{PUBLIC}/api/orders\""
    );
    let mut base = String::new();
    for (c, v) in &components {
        for part in ["\"", c, "\": ", v, "\n"] {
            base.push_str(part);
        }
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&params);
    let sig = wit.key.sign(base.as_bytes()).unwrap();
    let sig = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sig);
    let mut req = Request::post("/api/orders")
        .header("host", "SVC.test:80")
        .header("workload-identity-token", &wit.token)
        .header("signature-input", format!("wimse={params}"))
        .header("signature", format!("wimse=:{sig}:"));
    if !digest.is_empty() {
        req = req.header("content-digest", digest);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_hand_built_signature_is_admitted_and_so_is_a_sha_512_digest() {
    let s = setup();
    let now = unix_now();
    let body = "{\"n\":1}";
    let sha256 = wimse_workload::httpsig::content_digest(body.as_bytes());
    let (status, text, _) = send(&s.app, hand_signed(&s, now, now + 60, body, &sha256)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // RFC 9530 allows sha-512; every known digest present must match, unknown ones are
    // ignored, and at least one known one must be there.
    let b64 = |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d);
    let sha512 = format!(
        "sha-512=:{}:",
        b64(&wimse_core::digest::sha512(body.as_bytes()))
    );
    let (status, text, _) = send(&s.app, hand_signed(&s, now, now + 61, body, &sha512)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let wrong_512 = format!("{sha256}, sha-512=:{}:", b64(&[0; 64]));
    let req = hand_signed(&s, now, now + 62, body, &wrong_512);
    refused(&s.app, req, "content-digest-mismatch").await;
    let unknown_only = format!("md5=:{}:", b64(&[0; 16]));
    let req = hand_signed(&s, now, now + 63, body, &unknown_only);
    refused(&s.app, req, "content-digest-mismatch").await;
}

#[tokio::test]
async fn a_signature_may_cover_more_than_the_profile_asks_but_not_misstate_it() {
    // `@authority` and `@target-uri` in normal form from the `Host` the client sent, and
    // `@scheme` this service's own (http here).
    let s = setup();
    let now = unix_now();
    let extra = [
        ("@authority", "svc.test"),
        ("@scheme", "http"),
        ("@target-uri", "http://svc.test/api/orders"),
    ];
    let req = hand_signed_over(&s, (now, now + 60), "", "", &extra);
    let (status, text, _) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let misstated = [("@authority", "other.test")];
    let req = hand_signed_over(&s, (now, now + 61), "", "", &misstated);
    refused(&s.app, req, "signature-invalid").await;
}

#[tokio::test]
async fn among_several_signatures_the_one_with_the_profiles_tag_is_verified() {
    let s = setup();
    let now = unix_now();
    // `label` for ours, and another signature (an intermediary's) beside it.
    let relabelled = |expires: i64, label: &str, other_input: &str| {
        let mut req = hand_signed(&s, now, expires, "", "");
        let headers = req.headers_mut();
        for (name, other) in [
            ("signature-input", other_input),
            ("signature", "proxy=:AAAA:"),
        ] {
            let ours = headers[name].to_str().unwrap().replacen("wimse=", label, 1);
            headers.insert(name, format!("{other}, {ours}").parse().unwrap());
        }
        req
    };
    let unrelated = r#"proxy=("@method");created=1"#;
    let (status, text, _) = send(&s.app, relabelled(now + 60, "sig1=", unrelated)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // Two signatures with the profile's tag and no `wimse` label: which one is ours?
    let tagged = r#"proxy=("@method");tag="wimse-workload-to-workload""#;
    refused(
        &s.app,
        relabelled(now + 61, "sig1=", tagged),
        "invalid-signature",
    )
    .await;
}

#[tokio::test]
async fn an_old_signature_kept_alive_by_a_far_expiry_is_refused() {
    let s = setup();
    let now = unix_now();
    // Created an hour ago, expires in a minute: within the window from now, but it has
    // lived far longer than any proof may.
    let req = hand_signed(&s, now - 3_600, now + 60, "", "");
    refused(&s.app, req, "invalid-signature").await;
    let (status, text, _) = send(&s.app, hand_signed(&s, now - 30, now + 60, "", "")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn a_body_is_not_read_before_the_wit_is_verified_and_its_peer_allowed() {
    // A body that never ends: were it read before the WIT is checked, the request would
    // hang (or hold up to 16 MiB per request) for anyone who merely names the headers.
    let never_ending =
        || Body::from_stream(tokio_stream::pending::<Result<bytes::Bytes, std::io::Error>>());
    let s = setup_with(|c| {
        c.allow
            .ids
            .insert(wimse_core::WorkloadId::parse("spiffe://good.test/w2").unwrap());
    });
    let garbage = Request::post("/api/orders")
        .header("workload-identity-token", "not.a.wit")
        .header("signature-input", "wimse=()")
        .header("signature", "wimse=:AA==:")
        .body(never_ending())
        .unwrap();
    let refusal = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        refused(&s.app, garbage, "invalid-wit"),
    );
    refusal.await.expect("refused before reading the body");
    let (parts, _) =
        signed(&s.client, "POST", "/api/orders", "{}", ProofMethod::HttpSig).into_parts();
    let not_allowed = Request::from_parts(parts, never_ending());
    let refusal = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        refused(&s.app, not_allowed, "peer-not-allowed"),
    );
    refusal.await.expect("refused before reading the body");
    let disabled = setup_with(|c| c.methods.http_sig = false);
    let (parts, _) =
        signed(&s.client, "POST", "/api/orders", "{}", ProofMethod::HttpSig).into_parts();
    let refusal = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        refused(
            &disabled.app,
            Request::from_parts(parts, never_ending()),
            "method-disabled",
        ),
    );
    refusal.await.expect("refused before reading the body");
}

#[tokio::test]
async fn a_path_with_dot_segments_or_encoded_separators_is_refused_before_the_policy() {
    // The policy lets w1 reach `/api/orders*`; an upstream that normalizes would serve
    // each of these as `/admin` (or a file outside the API).
    let s = setup();
    for path in [
        "/api/orders/../../admin",
        "/api/orders/%2e%2E/admin",
        "/api/orders/..;/admin",
        "/api/orders/.%2e/admin",
        "/api/orders/./x",
        "/api/orders%2f..%2fadmin",
        "/api/orders%5C..%5Cadmin",
        "/api/orders/x%00",
        "/api/orders//x",
        "/api/%6frders/x",
    ] {
        for proof in [ProofMethod::WitWpt, ProofMethod::HttpSig] {
            let req = signed(&s.client, "GET", path, "", proof);
            refused(&s.app, req, "ambiguous-path").await;
        }
    }
    // Dots inside a segment, and encoded characters other than separators, are fine.
    for path in [
        "/api/orders/v1.2..3",
        "/api/orders/.well",
        "/api/orders/a%20b",
    ] {
        let req = signed(&s.client, "GET", path, "", ProofMethod::WitWpt);
        assert_eq!(send(&s.app, req).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_wpt_in_the_authorization_header_with_the_wpt_scheme_is_accepted_once() {
    // The WG's later text moves the WPT to `Authorization: WPT <jwt>`; such a peer is
    // understood, the proof checked the same way, and one proof per request.
    let s = setup();
    let moved = || {
        let mut req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt);
        let wpt = req.headers_mut().remove("workload-proof-token").unwrap();
        let value = format!("WPT {}", wpt.to_str().unwrap());
        req.headers_mut()
            .insert("authorization", value.parse().unwrap());
        (req, wpt)
    };
    let (req, _) = moved();
    let (status, body, _) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1 wit-wpt");
    let (mut both, wpt) = moved();
    both.headers_mut().insert("workload-proof-token", wpt);
    refused(&s.app, both, "malformed-header").await;
    let (req, _) = moved();
    let mut again = Request::get("/api/orders").body(Body::empty()).unwrap();
    *again.headers_mut() = req.headers().clone();
    assert_eq!(send(&s.app, req).await.0, StatusCode::OK);
    refused(&s.app, again, "replayed-proof").await;
}

#[tokio::test]
async fn a_signed_request_replayed_is_refused() {
    let s = setup();
    let req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::HttpSig);
    let mut again = Request::get("/api/orders").body(Body::empty()).unwrap();
    *again.headers_mut() = req.headers().clone();
    assert_eq!(send(&s.app, req).await.0, StatusCode::OK);
    refused(&s.app, again, "replayed-signature").await;
}

#[tokio::test]
async fn a_signature_moved_to_another_method_is_refused() {
    let s = setup();
    let req = signed(&s.client, "GET", "/api/orders", "", ProofMethod::HttpSig);
    let (mut parts, body) = req.into_parts();
    parts.method = http::Method::DELETE;
    refused(
        &s.app,
        Request::from_parts(parts, body),
        "signature-invalid",
    )
    .await;
}

#[tokio::test]
async fn an_unauthorized_operation_is_forbidden_with_403() {
    let s = setup();
    let (status, body, ctype) = send(
        &s.app,
        signed(&s.client, "DELETE", "/api/orders", "", ProofMethod::WitWpt),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    assert!(
        body.contains("no policy permits DELETE /api/orders"),
        "{body}"
    );
    let other = s.good.credentials("/w2", &[&s.good]);
    let (status, _, _) = send(
        &s.app,
        signed(&other, "GET", "/api/orders", "", ProofMethod::WitWpt),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn jwt_svid(d: &Domain, path: &str, aud: &str) -> String {
    use wimse_core::token::Audience;
    use wimse_core::token::jwt_svid::{JwtSvidClaims, issue_jwt_svid};
    issue_jwt_svid(
        &d.issuer,
        "jwt-1",
        &JwtSvidClaims {
            sub: d.id(path),
            aud: Audience::One(aud.into()),
            exp: unix_now() + 300,
            iat: Some(unix_now()),
            iss: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_bearer_jwt_svid_is_refused_unless_the_legacy_mode_is_enabled() {
    let s = setup();
    let token = jwt_svid(&s.good, "/w1", PUBLIC);
    let req = || {
        Request::get("/api/orders")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    refused(&s.app, req(), "missing-credentials").await;
    let legacy = setup_with(|c| c.methods.jwt_svid = true);
    let token = jwt_svid(&legacy.good, "/w1", PUBLIC);
    let req = Request::get("/api/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body, _) = send(&legacy.app, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "spiffe://good.test/w1 jwt-svid");
}

#[tokio::test]
async fn a_peer_outside_the_allow_list_is_refused() {
    let s = setup_with(|c| {
        c.allow
            .ids
            .insert(wimse_core::WorkloadId::parse("spiffe://good.test/w2").unwrap());
    });
    refused(
        &s.app,
        signed(&s.client, "GET", "/api/orders", "", ProofMethod::WitWpt),
        "peer-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn the_proxy_passes_an_access_token_on_but_not_a_bearer_jwt_svid_it_verified() {
    let good = Domain::new("good.test");
    let upstream = echo_upstream().await;
    let server = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let mut config = AuthConfig::new(PUBLIC);
    config.methods.jwt_svid = true;
    let authn = Arc::new(Authenticator::new(config, server));
    let layer = WimseLayer::new(authn, Arc::new(Policy::from_text(POLICY).unwrap()));
    let proxy = wimse_workload::proxy::inbound_router(
        &format!("http://{upstream}").parse().unwrap(),
        layer,
    );
    let token = jwt_svid(&good, "/w1", PUBLIC);
    let req = Request::get("/api/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body, _) = send(&proxy, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "peer=spiffe://good.test/w1 method=jwt-svid wit= wpt= others="
    );
    // An access token next to a WIT and WPT is for the service: it goes on.
    let client = good.credentials("/w1", &[&good]);
    let (mut parts, ()) = Request::get(format!("{PUBLIC}/api/orders"))
        .header("authorization", "Bearer at-for-orders")
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", &client, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = "/api/orders".parse().unwrap();
    let (status, body, _) = send(&proxy, Request::from_parts(parts, Body::empty())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("others=Bearer at-for-orders"), "{body}");
    // A WPT sent as `Authorization: WPT` is a credential: it stays at the proxy.
    let mut req = signed(&client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    let wpt = req.headers_mut().remove("workload-proof-token").unwrap();
    let value = format!("wpt {}", wpt.to_str().unwrap());
    req.headers_mut()
        .insert("authorization", value.parse().unwrap());
    let (status, body, _) = send(&proxy, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("wpt= others="), "{body}");
}

/// An upstream that echoes the identity headers it received.
async fn echo_upstream() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let get = |n: &str| {
            headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join("|")
        };
        let others = [
            "x_wimse_peer_id",
            "x_wimse-peer-auth_method",
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "authorization",
        ]
        .iter()
        .map(|n| get(n))
        .collect::<String>();
        format!(
            "peer={} method={} wit={} wpt={} others={others}",
            get("x-wimse-peer-id"),
            get("x-wimse-peer-auth-method"),
            get("workload-identity-token"),
            get("workload-proof-token")
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn an_identity_header_smuggled_through_the_proxy_is_replaced() {
    let good = Domain::new("good.test");
    let upstream = echo_upstream().await;
    let server = CredentialSource::fixed(good.credentials("/w3", &[&good]));
    let authn = Arc::new(Authenticator::new(AuthConfig::new(PUBLIC), server));
    let layer = WimseLayer::new(authn, Arc::new(Policy::from_text(POLICY).unwrap()));
    let proxy = wimse_workload::proxy::inbound_router(
        &format!("http://{upstream}").parse().unwrap(),
        layer,
    );
    let client = good.credentials("/w1", &[&good]);

    // With valid credentials, the smuggled headers (any case, repeated) are replaced.
    let mut req = signed(&client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    req.headers_mut().append(
        "X-Wimse-Peer-Id",
        "spiffe://good.test/admin".parse().unwrap(),
    );
    req.headers_mut().append(
        "x-wimse-peer-id",
        "spiffe://good.test/root".parse().unwrap(),
    );
    req.headers_mut()
        .append("X-WIMSE-PEER-AUTH-METHOD", "mtls".parse().unwrap());
    // Spelled with `_`, which CGI-style servers read as the same header; and the header
    // Envoy and Istio put the caller's certificate in.
    req.headers_mut().append(
        "x_wimse_peer_id",
        "spiffe://good.test/admin".parse().unwrap(),
    );
    req.headers_mut()
        .append("X_Wimse-Peer-Auth_Method", "mtls".parse().unwrap());
    req.headers_mut().append(
        "x_forwarded_client_cert",
        "URI=spiffe://good.test/admin".parse().unwrap(),
    );
    req.headers_mut().append(
        "x-forwarded-client-cert",
        "By=spiffe://good.test/w3;URI=spiffe://good.test/admin"
            .parse()
            .unwrap(),
    );
    let (status, body, _) = send(&proxy, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "peer=spiffe://good.test/w1 method=wit-wpt wit= wpt= others="
    );

    // Without credentials, the header alone gets nothing through.
    let req = Request::get("/api/orders")
        .header("x-wimse-peer-id", "spiffe://good.test/w1")
        .body(Body::empty())
        .unwrap();
    refused(&proxy, req, "missing-credentials").await;

    // Connection-named hop-by-hop headers cannot be used to drop the identity header.
    let mut req = signed(&client, "GET", "/api/orders", "", ProofMethod::WitWpt);
    req.headers_mut()
        .insert("connection", "x-wimse-peer-id".parse().unwrap());
    let (status, body, _) = send(&proxy, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("peer=spiffe://good.test/w1 "), "{body}");
}

// --- Transaction tokens -------------------------------------------------------------------

/// A Txn-Token signed by `signer`'s token-service key (`jwt-1`) for trust domain `aud`.
fn txn_token(signer: &Domain, aud: &str, exp_in: i64, scope: &str) -> String {
    use wimse_core::token::Audience;
    use wimse_core::token::txn::{TxnTokenClaims, issue_txn_token};
    let now = unix_now();
    issue_txn_token(
        &signer.issuer,
        "jwt-1",
        &TxnTokenClaims {
            iss: None,
            iat: now - 10,
            aud: Audience::One(aud.into()),
            exp: now + exp_in,
            txn: "97053963-771d-49cc-a4e3-20aad399c312".into(),
            sub: "user:alice".into(),
            scope: scope.into(),
            tctx: None,
            rctx: None,
            req_wl: "spiffe://good.test/gateway".into(),
            act: None,
        },
    )
    .unwrap()
}

/// A request carrying `txn` (the proof bound to it).
fn with_txn(creds: &Credentials, method: &str, path: &str, txn: &str) -> Request<Body> {
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(format!("{PUBLIC}{path}"))
        .header("txn-token", txn)
        .body(())
        .unwrap()
        .into_parts();
    attach_proof(&mut parts, b"", creds, ProofMethod::WitWpt, unix_now()).unwrap();
    parts.uri = path.parse().unwrap();
    Request::from_parts(parts, Body::empty())
}

#[tokio::test]
async fn a_valid_txn_token_reaches_the_service_and_the_policy() {
    let s = setup();
    let txn = txn_token(&s.good, "good.test", 300, "read pay");
    let (status, body, _) = send(&s.app, with_txn(&s.client, "POST", "/api/pay", &txn)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "spiffe://good.test/w1 wit-wpt txn=97053963-771d-49cc-a4e3-20aad399c312 sub=user:alice"
    );
    // The same call inside a transaction whose scope does not allow it, or outside any.
    let narrow = txn_token(&s.good, "good.test", 300, "read");
    let (status, _, _) = send(&s.app, with_txn(&s.client, "POST", "/api/pay", &narrow)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &s.app,
        signed(&s.client, "POST", "/api/pay", "", ProofMethod::WitWpt),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_txn_token_for_another_trust_domain_is_refused() {
    let s = setup();
    // Signed by this trust domain's token service, but for another trust domain.
    let elsewhere = txn_token(&s.good, "evil.test", 300, "pay");
    refused(
        &s.app,
        with_txn(&s.client, "POST", "/api/pay", &elsewhere),
        "invalid-txn-token",
    )
    .await;
    // Issued by another trust domain's token service, naming this one.
    let foreign = txn_token(&s.evil, "good.test", 300, "pay");
    refused(
        &s.app,
        with_txn(&s.client, "POST", "/api/pay", &foreign),
        "invalid-txn-token",
    )
    .await;
}

#[tokio::test]
async fn an_expired_or_malformed_txn_token_is_refused() {
    let s = setup();
    let expired = txn_token(&s.good, "good.test", -120, "pay");
    refused(
        &s.app,
        with_txn(&s.client, "POST", "/api/pay", &expired),
        "txn-token-expired",
    )
    .await;
    refused(
        &s.app,
        with_txn(&s.client, "POST", "/api/pay", "a.b.c"),
        "invalid-txn-token",
    )
    .await;
    // A token of another kind (a JWT-SVID from the same key) is not a Txn-Token.
    let svid = jwt_svid(&s.good, "/w1", "good.test");
    refused(
        &s.app,
        with_txn(&s.client, "POST", "/api/pay", &svid),
        "invalid-txn-token",
    )
    .await;
}

#[tokio::test]
async fn a_txn_token_is_checked_whatever_the_authentication_method() {
    let s = setup();
    let mtls = |txn: &str| {
        let mut req = Request::post("/api/pay")
            .header("txn-token", txn)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(MtlsPeer(s.good.id("/w1")));
        req
    };
    let (status, body, _) = send(&s.app, mtls(&txn_token(&s.good, "good.test", 300, "pay"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("spiffe://good.test/w1 mtls txn="),
        "{body}"
    );
    refused(
        &s.app,
        mtls(&txn_token(&s.evil, "good.test", 300, "pay")),
        "invalid-txn-token",
    )
    .await;
}

#[tokio::test]
async fn a_service_that_requires_a_txn_token_refuses_a_call_without_one() {
    let s = setup_with(|c| c.require_txn_token = true);
    refused(
        &s.app,
        signed(&s.client, "POST", "/api/pay", "", ProofMethod::WitWpt),
        "missing-txn-token",
    )
    .await;
    let txn = txn_token(&s.good, "good.test", 300, "pay");
    let (status, body, _) = send(&s.app, with_txn(&s.client, "POST", "/api/pay", &txn)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
