//! Request and response signature verification on hostile `Signature-Input`, `Signature`
//! and `Content-Digest` values and bodies: never panics, whatever the components
//! (`;req` and other parameters included), parameters or digests say.
//!
//! Input: up to three lines (the three field values), then the body.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_workload::httpsig::{
    RequestView, ResponsePolicy, ResponseView, SigPolicy, verify_request, verify_response,
};

static KEY: LazyLock<Option<SigningKey>> =
    LazyLock::new(|| SigningKey::generate(Algorithm::Es256).ok());

fuzz_target!(|data: &[u8]| {
    let Some(key) = KEY.as_ref() else { return };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\n');
    let mut headers = HeaderMap::new();
    for name in ["signature-input", "signature", "content-digest"] {
        if let Some(Ok(value)) = parts.next().map(HeaderValue::from_str) {
            headers.insert(name, value);
        }
    }
    headers.insert("workload-identity-token", HeaderValue::from_static("e30.e30.AA"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    // Fields for `sf`, `key` and `bs` to work on.
    headers.insert("priority", HeaderValue::from_static("u=1,   i"));
    headers.append("example-header", HeaderValue::from_static("a, b"));
    headers.append("example-header", HeaderValue::from_static("c"));
    let body = parts.next().unwrap_or("").as_bytes();

    let request = RequestView {
        method: "GET",
        request_target: "/gimme-ice-cream?flavor=vanilla&a+b=%C3%A7&flavor=x",
        headers: &headers,
        scheme: Some("https"),
        authority: Some("svcb.example.com"),
    };
    let policy = SigPolicy {
        audience: "https://svcb.example.com/gimme-ice-cream",
        now: 1_785_155_800,
        leeway: 60,
        max_lifetime: 300,
    };
    let _ = verify_request(&request, body, key.public_key(), Algorithm::Es256, &policy);

    let response = ResponseView {
        status: 404,
        headers: &headers,
        request,
    };
    let policy = ResponsePolicy {
        req_nonce: Some("abcd1111"),
        require_req_nonce: true,
        now: 1_785_155_800,
        leeway: 60,
        max_lifetime: 300,
    };
    let _ = verify_response(&response, body, key.public_key(), Algorithm::Es256, &policy);
});
