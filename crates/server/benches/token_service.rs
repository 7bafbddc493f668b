//! What the token service's decisions cost, next to the signature work they cannot avoid,
//! measured in the same run.
//!
//! `cargo bench -p wimse-server --bench token_service` runs each decision of
//! [`TokenService`] in-process on one thread (no HTTP, TLS or datastore: those are the
//! endpoint's, measured by the `issuance` bench for the agent API) and prints its rate and
//! its cost as a multiple of the **baseline**: one ES256 verification plus one ES256
//! signature with in-memory keys, which every one of these decisions performs at least
//! once (verify the subject token, sign the new one):
//!
//! - **start**: an outside access token (ES256) exchanged for a Txn-Token;
//! - **replace**: a Txn-Token narrowed into a new one;
//! - **delegate**: a Txn-Token exchanged for a delegation;
//! - **resume**: a delegation exchanged for a fresh Txn-Token naming the actor.
//!
//! A plain harness (no criterion), in the style of `crates/core/benches/verify.rs`.

mod support;
use support::OrFail;

use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use wimse_core::bundle::{KeyUse, TrustBundle};
use wimse_core::jose::{Algorithm, JwkSet, PublicKey, SigningKey, jws};
use wimse_core::token::access::TrustedIssuer;
use wimse_core::token::exchange::{ExchangeRequest, Scope, token_type};
use wimse_core::{TrustDomain, WorkloadId};
use wimse_server::config::DelegationRule;
use wimse_server::token_service::{Requester, TokenService, TxnSigner};

/// How long each case runs after its warm-up.
const MEASURE: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(300);
const ISSUER: &str = "https://login.example.com";

/// Runs `op` for [`MEASURE`] after a warm-up; operations per second.
fn rate(mut op: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        op();
    }
    let started = Instant::now();
    let mut count = 0u32;
    while started.elapsed() < MEASURE {
        op();
        count += 1;
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}

/// One ES256 verification (with `verifier`'s public key) plus one ES256 signature (with
/// `signer`) per second.
fn baseline(verifier: &SigningKey, signer: &SigningKey) -> f64 {
    let key = PublicKey::from_jwk(verifier.public_jwk()).or_fail();
    let message = [7u8; 256];
    let signature = verifier.sign(&message).or_fail();
    rate(|| {
        key.verify(Algorithm::Es256, black_box(&message), black_box(&signature))
            .or_fail();
        black_box(signer.sign(black_box(&message)).or_fail());
    })
}

fn id(path: &str) -> WorkloadId {
    WorkloadId::parse(&format!("spiffe://example.org{path}")).or_fail()
}

/// The token service of `example.org` trusting `login`'s access tokens (starting
/// transactions for `/gateway`) and delegating to `/worker`, with the trust domain's
/// bundle holding `jwt_key`.
fn service(login: &SigningKey, jwt_key: &SigningKey) -> (TrustDomain, TrustBundle, TokenService) {
    let td = TrustDomain::new("example.org").or_fail();
    let mut bundle = TrustBundle::new(td.clone());
    bundle
        .add_authority(KeyUse::JwtSvid, "jwt-1", jwt_key.public_key().clone())
        .or_fail();
    let mut jwk = login.public_jwk().clone();
    jwk.kid = Some("login-1".into());
    let issuer = TrustedIssuer::new(
        ISSUER.into(),
        "wimse".into(),
        "user:".into(),
        &JwkSet { keys: vec![jwk] },
    )
    .or_fail();
    let service = TokenService::new(300, 8, [id("/gateway")], vec![issuer]).with_delegation(vec![
        DelegationRule {
            actor: id("/worker"),
            max_scope: Scope::parse("orders").or_fail(),
            lifetime: 3600,
        },
    ]);
    (td, bundle, service)
}

fn main() {
    let login = SigningKey::generate(Algorithm::Es256).or_fail();
    let jwt_key = SigningKey::generate(Algorithm::Es256).or_fail();
    let (td, bundle, service) = service(&login, &jwt_key);
    // Far enough ahead of every token's `iat` and within every lifetime.
    let now = wimse_core::token::unix_now();
    let signer = TxnSigner {
        key: &jwt_key,
        kid: "jwt-1",
        not_after: now + 86_400,
    };
    let access_token = jws::sign(
        &login,
        Some("at+jwt"),
        Some("login-1"),
        &json!({
            "iss": ISSUER, "sub": "alice", "aud": "wimse", "iat": now, "exp": now + 3600,
            "scope": "orders refunds",
        }),
    )
    .or_fail();
    let request = |subject: &str, kind: &str, requested: &str| ExchangeRequest {
        audience: vec![td.to_string()],
        resource: Vec::new(),
        scope: Some(Scope::parse("orders").or_fail()),
        requested_token_type: Some(requested.into()),
        subject_token: subject.to_owned(),
        subject_token_type: kind.into(),
        actor_token: None,
        actor_token_type: None,
        request_context: json!({"req_ip": "192.0.2.7"}).as_object().cloned(),
        request_details: None,
    };
    let (gateway, worker) = (id("/gateway"), id("/worker"));
    let as_gateway = Requester {
        id: &gateway,
        key: None,
    };
    let as_worker = Requester {
        id: &worker,
        key: None,
    };
    let start = request(
        &access_token,
        token_type::ACCESS_TOKEN,
        token_type::TXN_TOKEN,
    );
    let (txn, _) = service
        .exchange(&as_gateway, &start, &td, &bundle, &signer, now)
        .or_fail();
    let replace = request(&txn, token_type::TXN_TOKEN, token_type::TXN_TOKEN);
    let delegate = request(&txn, token_type::TXN_TOKEN, token_type::DELEGATION);
    let (delegation, _) = service
        .delegate(&worker, &delegate, &td, &bundle, &signer, now)
        .or_fail();
    let resume = request(&delegation, token_type::DELEGATION, token_type::TXN_TOKEN);

    let baseline = baseline(&login, &jwt_key);
    println!("token service decisions, one thread (baseline: one ES256 verify + one ES256 sign)");
    println!("{:<10} {:>12.0}/s  1.00x", "baseline", baseline);
    let exchange = |who: &Requester<'_>, request: &ExchangeRequest| {
        black_box(
            service
                .exchange(who, request, &td, &bundle, &signer, now)
                .or_fail(),
        );
    };
    let cases: [(&str, &dyn Fn()); 4] = [
        ("start", &|| exchange(&as_gateway, &start)),
        ("replace", &|| exchange(&as_worker, &replace)),
        ("delegate", &|| {
            black_box(
                service
                    .delegate(&worker, &delegate, &td, &bundle, &signer, now)
                    .or_fail(),
            );
        }),
        ("resume", &|| exchange(&as_worker, &resume)),
    ];
    for (name, op) in cases {
        let per_second = rate(op);
        println!(
            "{name:<10} {per_second:>12.0}/s  {:.2}x the baseline's cost",
            baseline / per_second
        );
    }
}
