//! The WIMSE HTTP Message Signatures profile's request and response examples
//! (`tests/data/sigs-*.txt`, from the draft): our signature bases are byte-identical, the
//! published Ed25519 signatures verify, and signing with svc-a's / svc-b's published keys
//! reproduces them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use base64::Engine;
use wimse_core::jose::{Algorithm, Jwk, PublicKey, SigningKey};
use wimse_workload::httpsig::{
    RequestSigning, RequestView, ResponsePolicy, ResponseView, SigError, response_signature_base,
    sign_request, sign_response, signature_base, verify_response,
};
use wimse_workload::sf::{BareItem, Member, parse_dictionary};

const REQUEST: &str = include_str!("data/sigs-request.txt");
const BASE: &str = include_str!("data/sigs-request.base.txt");
const SVC_A: &str = include_str!("data/sigs-svca-jwk.txt");
const RESPONSE: &str = include_str!("data/sigs-response.txt");
const RESPONSE_BASE: &str = include_str!("data/sigs-response.base.txt");
const SVC_B: &str = include_str!("data/sigs-svcb-jwk.txt");

/// The Ed25519 public key of a published private JWK.
fn public_of(private_jwk: &str) -> PublicKey {
    let jwk: Jwk = serde_json::from_str(
        &serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
            "x": serde_json::from_str::<serde_json::Value>(private_jwk).unwrap()["x"]})
        .to_string(),
    )
    .unwrap();
    PublicKey::from_jwk_with_alg(&jwk, Algorithm::EdDsa).unwrap()
}

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
        scheme: None,
        authority: None,
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
    public_of(SVC_A)
        .verify(Algorithm::EdDsa, base.as_bytes(), sig)
        .unwrap();
    // Ed25519 is deterministic: our signer reproduces the published signature, and our
    // request signing reproduces both header values, `wimse-sign-response` included.
    assert_eq!(&private.sign(base.as_bytes()).unwrap(), sig);
    let signing = RequestSigning {
        audience: "https://svcb.example.com/gimme-ice-cream?flavor=vanilla",
        created: 1_785_155_797,
        lifetime: 300,
        nonce: "abcd1111",
        sign_response: true,
    };
    let (input, signature) = sign_request(&view, &private, &signing).unwrap();
    assert_eq!(input, header("Signature-Input"));
    assert_eq!(signature, header("Signature"));
    assert!(
        base64::engine::general_purpose::STANDARD
            .encode(sig)
            .starts_with("zSK+kx5E")
    );
}

fn response_header<'a>(name: &str) -> &'a str {
    RESPONSE
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap()
}

#[test]
fn the_profile_response_example_verifies_and_is_reproduced_byte_for_byte() {
    let mut headers = http::HeaderMap::new();
    for name in [
        "Content-Digest",
        "Content-Type",
        "Signature",
        "Signature-Input",
        "Workload-Identity-Token",
    ] {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            response_header(name).parse().unwrap(),
        );
    }
    let no_headers = http::HeaderMap::new();
    let view = ResponseView {
        status: 404,
        headers: &headers,
        request: RequestView {
            method: "GET",
            request_target: "/gimme-ice-cream?flavor=vanilla",
            headers: &no_headers,
            scheme: None,
            authority: None,
        },
    };
    let input = parse_dictionary(response_header("Signature-Input")).unwrap();
    let Member::InnerList(components, params) = &input[0].1 else {
        panic!()
    };
    let base = response_signature_base(&view, components, params).unwrap();
    assert_eq!(base, RESPONSE_BASE.trim_end_matches('\n'));

    // The published signature verifies with svc-b's key, as the client would check it
    // (the body's digest, the request's nonce, the lifetime).
    let body = b"No ice cream today.\n\n";
    let public = public_of(SVC_B);
    let policy = ResponsePolicy {
        req_nonce: Some("abcd1111"),
        require_req_nonce: true,
        now: 1_785_155_800,
        leeway: 60,
        max_lifetime: 300,
    };
    let params = verify_response(&view, body, &public, Algorithm::EdDsa, &policy).unwrap();
    assert_eq!(params.nonce, "abcd2222");
    assert_eq!(params.req_nonce.as_deref(), Some("abcd1111"));

    // The same response as the answer to another request, or with another body, fails.
    let other = ResponsePolicy {
        req_nonce: Some("abcd9999"),
        ..policy
    };
    assert_eq!(
        verify_response(&view, body, &public, Algorithm::EdDsa, &other),
        Err(SigError::ResponseNonce)
    );
    assert_eq!(
        verify_response(
            &view,
            b"Plenty of ice cream.\n",
            &public,
            Algorithm::EdDsa,
            &policy
        ),
        Err(SigError::ContentDigest)
    );
    let moved = ResponseView {
        request: RequestView {
            request_target: "/gimme-ice-cream?flavor=chocolate",
            ..view.request
        },
        ..view
    };
    assert_eq!(
        verify_response(&moved, body, &public, Algorithm::EdDsa, &policy),
        Err(SigError::BadSignature)
    );

    // Ed25519 is deterministic: our signer reproduces both header values.
    let private = SigningKey::from_private_jwk(SVC_B).unwrap();
    let (input, signature) = sign_response(
        &view,
        &private,
        1_785_155_797,
        1_785_156_099 - 1_785_155_797,
        "abcd2222",
        Some("abcd1111"),
    )
    .unwrap();
    assert_eq!(input, response_header("Signature-Input"));
    assert_eq!(signature, response_header("Signature"));
}

/// RFC 9421 Appendix B.2.6: the test request (B.2) signed with the Ed25519 test key
/// (B.1.4) over `date`, `@method`, `@path`, `@authority`, `content-type` and
/// `content-length`. The published signature verifies over our signature base, which
/// shows the derived components a WIMSE peer may add beyond the profile's minimum.
#[test]
fn rfc9421_b26_verifies_over_our_base_with_the_derived_components() {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("host", "example.com"),
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        ("content-length", "18"),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    let view = RequestView {
        method: "POST",
        request_target: "/foo?param=Value&Pet=dog",
        headers: &headers,
        scheme: Some("https"),
        authority: Some("example.com"),
    };
    let input = parse_dictionary(
        r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
    )
    .unwrap();
    let Member::InnerList(components, params) = &input[0].1 else {
        panic!()
    };
    let base = signature_base(&view, components, params).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
         \"@authority\": example.com\n\"content-type\": application/json\n\
         \"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \
         \"@authority\" \"content-type\" \"content-length\");created=1618884473;\
         keyid=\"test-key-ed25519\""
    );
    let signature = base64::engine::general_purpose::STANDARD
        .decode(
            "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
        )
        .unwrap();
    let public = public_of(r#"{"x":"JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"}"#);
    public
        .verify(Algorithm::EdDsa, base.as_bytes(), &signature)
        .unwrap();

    // `@scheme` and `@target-uri` (RFC 9421 §2.2.4, §2.2.2), and `@authority` in normal
    // form whatever case and default port the client wrote.
    let components = parse_dictionary(r#"s=("@scheme" "@target-uri" "@authority")"#).unwrap();
    let Member::InnerList(components, params) = &components[0].1 else {
        panic!()
    };
    let written = RequestView {
        authority: Some("Example.COM:443"),
        ..view
    };
    let base = signature_base(&written, components, params).unwrap();
    assert!(base.starts_with(
        "\"@scheme\": https\n\"@target-uri\": https://example.com/foo?param=Value&Pet=dog\n\
         \"@authority\": example.com\n"
    ));
    // Unknown where they are not known: refused, not guessed.
    let unknown = RequestView {
        scheme: None,
        authority: None,
        ..view
    };
    assert!(matches!(
        signature_base(&unknown, components, params),
        Err(SigError::Component(_))
    ));
}
