//! The WIMSE HTTP Message Signatures profile's request example (`tests/data/sigs-*.txt`,
//! from the draft): our signature base is byte-identical, the published Ed25519 signature
//! verifies, and signing the base with svc-a's published key reproduces it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use base64::Engine;
use wimse_core::jose::{Algorithm, Jwk, PublicKey, SigningKey};
use wimse_workload::httpsig::{RequestView, signature_base};
use wimse_workload::sf::{BareItem, Member, parse_dictionary};

const REQUEST: &str = include_str!("data/sigs-request.txt");
const BASE: &str = include_str!("data/sigs-request.base.txt");
const SVC_A: &str = include_str!("data/sigs-svca-jwk.txt");

fn header<'a>(name: &str) -> &'a str {
    REQUEST
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap()
}

#[test]
fn the_profile_request_example_verifies_byte_for_byte() {
    let mut headers = http::HeaderMap::new();
    for name in [
        "Signature",
        "Signature-Input",
        "Workload-Identity-Token",
        "Host",
    ] {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            header(name).parse().unwrap(),
        );
    }
    let view = RequestView {
        method: "GET",
        request_target: "/gimme-ice-cream?flavor=vanilla",
        headers: &headers,
    };
    let input = parse_dictionary(header("Signature-Input")).unwrap();
    let Member::InnerList(components, params) = &input[0].1 else {
        panic!()
    };
    let base = signature_base(&view, components, params).unwrap();
    assert_eq!(base, BASE.trim_end_matches('\n'));

    let sig = parse_dictionary(header("Signature")).unwrap();
    let Member::Item(item) = &sig[0].1 else {
        panic!()
    };
    let BareItem::Bytes(sig) = &item.bare else {
        panic!()
    };

    let private = SigningKey::from_private_jwk(SVC_A).unwrap();
    let jwk: Jwk = serde_json::from_str(
        &serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
            "x": serde_json::from_str::<serde_json::Value>(SVC_A).unwrap()["x"]})
        .to_string(),
    )
    .unwrap();
    let public = PublicKey::from_jwk_with_alg(&jwk, Algorithm::EdDsa).unwrap();
    public
        .verify(Algorithm::EdDsa, base.as_bytes(), sig)
        .unwrap();
    // Ed25519 is deterministic: our signer reproduces the published signature.
    assert_eq!(&private.sign(base.as_bytes()).unwrap(), sig);
    assert!(
        base64::engine::general_purpose::STANDARD
            .encode(sig)
            .starts_with("zSK+kx5E")
    );
}
