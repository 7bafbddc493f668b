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

/// The covered components of `input` (one `Signature-Input` member).
fn covered(input: &str) -> (Vec<wimse_workload::sf::Item>, wimse_workload::sf::Params) {
    let input = parse_dictionary(input).unwrap();
    let Member::InnerList(components, params) = &input[0].1 else {
        panic!("not an inner list")
    };
    (components.clone(), params.clone())
}

/// The lines of the signature base of `input` over `view`, without its last.
fn base_lines(view: &RequestView<'_>, input: &str) -> Result<Vec<String>, SigError> {
    let (components, params) = covered(input);
    let base = signature_base(view, &components, &params)?;
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    lines.pop();
    Ok(lines)
}

/// RFC 9421 §2.1.1–§2.1.3 and §2.2.8: the component parameters `key`, `sf`, `bs` and
/// `name`, with the RFC's own examples (the `sf` one on a field whose structured type is
/// registered, which `sf` needs).
#[test]
fn rfc9421_component_parameters_give_the_rfc_s_values() {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "example-dict",
        "a=1, b=2;x=1;y=2, c=(a   b    c), d".parse().unwrap(),
    );
    headers.append("example-header", "value, with, lots".parse().unwrap());
    headers.append("example-header", "of, commas".parse().unwrap());
    headers.insert("priority", "u=1,   i".parse().unwrap());
    headers.insert(
        "content-type",
        http::HeaderValue::from_bytes(b"text/plain; charset=\"caf\xc3\xa9\"").unwrap(),
    );
    let view = RequestView {
        method: "GET",
        request_target: "/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something&qux=",
        headers: &headers,
        scheme: Some("https"),
        authority: Some("example.com"),
    };
    let lines = base_lines(
        &view,
        r#"s=("example-dict";key="a" "example-dict";key="d" "example-dict";key="b" "example-dict";key="c" "example-header" "example-header";bs "priority";sf "@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20" "@query-param";name="qux" "content-type";bs)"#,
    )
    .unwrap();
    assert_eq!(
        lines,
        [
            r#""example-dict";key="a": 1"#,
            r#""example-dict";key="d": ?1"#,
            r#""example-dict";key="b": 2;x=1;y=2"#,
            r#""example-dict";key="c": (a b c)"#,
            r#""example-header": value, with, lots, of, commas"#,
            r#""example-header";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"#,
            r#""priority";sf: u=1, i"#,
            r#""@query-param";name="var": this%20is%20a%20big%0Amultiline%20value"#,
            r#""@query-param";name="bar": with%20plus%20whitespace"#,
            r#""@query-param";name="fa%C3%A7ade%22%3A%20": something"#,
            r#""@query-param";name="qux": "#,
            // A value that is not ASCII is covered as its bytes.
            r#""content-type";bs: :dGV4dC9wbGFpbjsgY2hhcnNldD0iY2Fmw6ki:"#,
        ]
    );

    // What cannot be canonicalized, or is not there, fails the base: no guessing.
    for refused in [
        r#"s=("example-dict";key="z")"#,
        r#"s=("example-header";sf)"#,
        r#"s=("example-dict";bs;key="a")"#,
        r#"s=("priority";sf;bs)"#,
        r#"s=("example-dict";tr)"#,
        r#"s=("example-dict";req)"#,
        r#"s=("example-dict";name="a")"#,
        r#"s=("example-dict";what)"#,
        r#"s=("@method";sf)"#,
        r#"s=("@query-param")"#,
        r#"s=("@query-param";name="nope")"#,
        r#"s=("@path";name="var")"#,
        r#"s=("content-type")"#,
        r#"s=("content-type";key="charset")"#,
    ] {
        assert!(
            matches!(base_lines(&view, refused), Err(SigError::Component(_))),
            "{refused}"
        );
    }
    // A query parameter that appears twice cannot be covered (RFC 9421 §2.2.8).
    let twice = RequestView {
        request_target: "/p?a=1&b=2&a=3",
        ..view
    };
    assert!(base_lines(&twice, r#"s=("@query-param";name="b")"#).is_ok());
    assert!(matches!(
        base_lines(&twice, r#"s=("@query-param";name="a")"#),
        Err(SigError::Component(_))
    ));
}

/// RFC 9421 §2.4: a response's signature covers the request's signature by `key`, and
/// request components with `req`.
#[test]
fn rfc9421_a_response_covers_request_components_with_req() {
    let mut request_headers = http::HeaderMap::new();
    request_headers.insert(
        "signature",
        "sig1=:LAH8BjcfcOcLojiuOBFWn0P5keD3xAOuJRGziCLuD8r5MW9S0RoXXLzLSRfGY/3SF8kVIkHjE13SEFdTo4Af/fJ/Pu9wheqoLVdwXyY/UkBIS1M8Brc8IODsn5DFIrG0IrburbLi0uCc+E2ZIIb6HbUJ+o+jP58JelMTe0QE3IpWINTEzpxjqDf5/Df+InHCAkQCTuKsamjWXUpyOT1Wkxi7YPVNOjW4MfNuTZ9HdbD2Tr65+BXeTG9ZS/9SWuXAc+BZ8WyPz0QRz//ec3uWXd7bYYODSjRAxHqX+S1ag3LZElYyUKaAIjZ8MGOt4gXEwCSLDv/zqxZeWLj/PDkn6w==:"
            .parse()
            .unwrap(),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("content-length", "62".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let response = ResponseView {
        status: 503,
        headers: &headers,
        request: RequestView {
            method: "POST",
            request_target: "/foo?param=Value&Pet=dog",
            headers: &request_headers,
            scheme: Some("https"),
            authority: Some("example.com"),
        },
    };
    let (components, params) = covered(
        r#"reqres=("@status" "content-length" "content-type" "signature";req;key="sig1" "@authority";req "@method";req "@query-param";req;name="Pet");created=1618884479;keyid="test-key-ecc-p256""#,
    );
    let base = response_signature_base(&response, &components, &params).unwrap();
    let lines: Vec<&str> = base.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "\"@status\": 503",
            "\"content-length\": 62",
            "\"content-type\": application/json",
            "\"signature\";req;key=\"sig1\": :LAH8BjcfcOcLojiuOBFWn0P5keD3xAOuJRGziCLuD8r5MW9S0RoXXLzLSRfGY/3SF8kVIkHjE13SEFdTo4Af/fJ/Pu9wheqoLVdwXyY/UkBIS1M8Brc8IODsn5DFIrG0IrburbLi0uCc+E2ZIIb6HbUJ+o+jP58JelMTe0QE3IpWINTEzpxjqDf5/Df+InHCAkQCTuKsamjWXUpyOT1Wkxi7YPVNOjW4MfNuTZ9HdbD2Tr65+BXeTG9ZS/9SWuXAc+BZ8WyPz0QRz//ec3uWXd7bYYODSjRAxHqX+S1ag3LZElYyUKaAIjZ8MGOt4gXEwCSLDv/zqxZeWLj/PDkn6w==:",
            "\"@authority\";req: example.com",
            "\"@method\";req: POST",
            "\"@query-param\";req;name=\"Pet\": dog",
        ]
    );
    // `@status` belongs to the response alone.
    let (components, params) = covered(r#"r=("@status";req)"#);
    assert!(matches!(
        response_signature_base(&response, &components, &params),
        Err(SigError::Component(_))
    ));
}
