//! The WIMSE drafts' example WIT and WPT (data/vectors.json), verified with the clock
//! pinned, and new WITs minted with the published example issuer key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

use serde_json::Value;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{Algorithm, Jwk, PublicKey, SigningKey};
use wimse_core::token::replay::ReplayCache;
use wimse_core::token::wit::{Confirmation, WitClaims, WitProfile, issue_wit, verify_wit};
use wimse_core::token::wpt::{RequestBinding, issue_wpt, verify_wpt};
use wimse_core::token::{TokenError, Validation};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn example() -> Value {
    vectors()["wimse_wit_wpt_example"].clone()
}

/// The example's trust anchors: the issuer key "June 5" as the WIT key of example.com.
fn example_bundles(issuer_private: &Value) -> BundleSet {
    let mut public = issuer_private.clone();
    public.as_object_mut().unwrap().remove("d");
    let jwk: Jwk = serde_json::from_value(public).unwrap();
    let mut bundle = TrustBundle::new(TrustDomain::new("example.com").unwrap());
    bundle
        .add_authority(
            KeyUse::WitSvid,
            "June 5",
            PublicKey::from_jwk(&jwk).unwrap(),
        )
        .unwrap();
    let mut set = BundleSet::new();
    set.insert(bundle);
    set
}

fn pinned(ex: &Value) -> Validation {
    Validation::at(ex["suggested_verify_now"].as_i64().unwrap())
}

#[test]
fn example_wit_verifies_under_the_wimse_profile() {
    let ex = example();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let wit = verify_wit(
        ex["wit"].as_str().unwrap(),
        &bundles,
        WitProfile::Wimse,
        &pinned(&ex),
    )
    .unwrap();
    assert_eq!(
        wit.workload_id().as_str(),
        "wimse://example.com/specific-workload"
    );
    assert_eq!(wit.holder_alg, Algorithm::EdDsa);
    assert_eq!(wit.wth, ex["expected"]["wth"].as_str().unwrap());
    assert_eq!(
        wit.sha256(),
        Some(wimse_core::digest::sha256(
            ex["wit"].as_str().unwrap().as_bytes()
        ))
    );
    assert_eq!(wit.claims.exp, ex["expected"]["wit_exp"].as_i64().unwrap());
    assert_eq!(wit.claims.iat, ex["expected"]["wit_iat"].as_i64());
}

#[test]
fn example_wit_is_refused_by_the_spiffe_profile() {
    // Its subject is a wimse:// ID and its cnf key is EdDSA; SPIFFE WIT-SVID allows neither.
    let ex = example();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let err = verify_wit(
        ex["wit"].as_str().unwrap(),
        &bundles,
        WitProfile::Spiffe,
        &pinned(&ex),
    )
    .unwrap_err();
    assert!(
        matches!(err, TokenError::BadClaim { claim: "sub", .. }),
        "{err}"
    );
}

#[test]
fn example_wpt_verifies_for_the_example_request() {
    let ex = example();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let v = pinned(&ex);
    let wit = verify_wit(ex["wit"].as_str().unwrap(), &bundles, WitProfile::Wimse, &v).unwrap();
    let binding = RequestBinding {
        audience: "https://workload.example.com/path",
        access_token: Some(ex["access_token_in_request"].as_str().unwrap()),
        ..Default::default()
    };
    let replay = ReplayCache::new(100);
    let wpt = verify_wpt(ex["wpt"].as_str().unwrap(), &wit, &binding, &v, &replay).unwrap();
    assert_eq!(wpt.claims.ath.as_deref(), ex["expected"]["ath"].as_str());
    assert_eq!(wpt.claims.exp, ex["expected"]["wpt_exp"].as_i64().unwrap());
    // The same proof a second time is a replay.
    assert_eq!(
        verify_wpt(ex["wpt"].as_str().unwrap(), &wit, &binding, &v, &replay).unwrap_err(),
        TokenError::Replay
    );
}

#[test]
fn example_wpt_without_the_access_token_is_refused() {
    let ex = example();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let v = pinned(&ex);
    let wit = verify_wit(ex["wit"].as_str().unwrap(), &bundles, WitProfile::Wimse, &v).unwrap();
    let binding = RequestBinding {
        audience: "https://workload.example.com/path",
        ..Default::default()
    };
    let err = verify_wpt(
        ex["wpt"].as_str().unwrap(),
        &wit,
        &binding,
        &v,
        &ReplayCache::new(10),
    )
    .unwrap_err();
    assert_eq!(err, TokenError::BindingMismatch("ath".into()));
}

#[test]
fn example_wit_expires_on_time() {
    let ex = example();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let late = Validation::at(ex["expected"]["wit_exp"].as_i64().unwrap() + 61);
    assert!(matches!(
        verify_wit(
            ex["wit"].as_str().unwrap(),
            &bundles,
            WitProfile::Wimse,
            &late
        ),
        Err(TokenError::Expired { .. })
    ));
}

#[test]
fn new_wit_minted_with_the_published_issuer_key_verifies() {
    let ex = example();
    let issuer = SigningKey::from_private_jwk(&ex["issuer_jwk_private"].to_string()).unwrap();
    let workload = SigningKey::from_private_jwk(&ex["workload_jwk_private"].to_string()).unwrap();
    let bundles = example_bundles(&ex["issuer_jwk_private"]);
    let now = 1_900_000_000;
    let claims = WitClaims {
        iss: None,
        sub: WorkloadId::parse("wimse://example.com/another-workload").unwrap(),
        exp: now + 600,
        iat: Some(now),
        nbf: None,
        jti: None,
        cnf: Confirmation {
            jwk: workload.public_jwk().bare(),
        },
        aud: None,
    };
    let wit = issue_wit(&issuer, Some("June 5"), &claims, WitProfile::Wimse).unwrap();
    let v = Validation::at(now + 1);
    let verified = verify_wit(&wit, &bundles, WitProfile::Wimse, &v).unwrap();
    assert_eq!(
        verified.workload_id().as_str(),
        "wimse://example.com/another-workload"
    );
    // And the example's workload key proves possession of it.
    let binding = RequestBinding {
        audience: "https://workload.example.com/path",
        ..Default::default()
    };
    let wpt = issue_wpt(&workload, &wit, &binding, now, 60).unwrap();
    verify_wpt(&wpt, &verified, &binding, &v, &ReplayCache::new(10)).unwrap();
}

#[test]
fn identity_chaining_grant_signature_verifies() {
    // RFC 8725-style reader on a third-party ES256 JWT (no typ): the signature checks out.
    let v = vectors()["oauth_identity_chaining_grant"].clone();
    let jwk: Jwk = serde_json::from_value(v["issuer_public_jwk"].clone()).unwrap();
    let key = PublicKey::from_jwk(&jwk).unwrap();
    let jws = wimse_core::jose::Jws::parse(v["jwt"].as_str().unwrap()).unwrap();
    jws.verify(&key).unwrap();
    assert!(jws.header().typ.is_none());
}
