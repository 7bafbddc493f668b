//! Fuzzes the token service's input: the form reader for RFC 8693 exchanges and RFC 7523
//! jwt-bearer grants (no input may panic; what it accepts must survive a round trip
//! through the client's encoder) and the outside access-token verifier (no arbitrary
//! input may verify against an issuer whose private key the fuzzer never sees), and the
//! unsigned JSON subject token reader (no panic; what it accepts has a subject and reads
//! back the same once encoded again).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wimse_core::jose::{Algorithm, JwkSet, SigningKey};
use wimse_core::token::Validation;
use wimse_core::token::access::{TrustedIssuer, verify_access_token};
use wimse_core::token::exchange::{ExchangeRequest, JwtBearerRequest, TokenRequest};
use wimse_core::token::unsigned::{encode_unsigned, parse_unsigned};

fn issuers() -> &'static [TrustedIssuer] {
    static ISSUERS: OnceLock<Vec<TrustedIssuer>> = OnceLock::new();
    ISSUERS.get_or_init(|| {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut jwk = key.public_jwk().clone();
        jwk.kid = Some("login-1".into());
        let jwks = JwkSet { keys: vec![jwk] };
        vec![TrustedIssuer::new(
            "https://login.example.com".into(),
            "wimse".into(),
            String::new(),
            &jwks,
        )
        .unwrap()]
    })
}

fuzz_target!(|data: &[u8]| {
    match TokenRequest::parse(data) {
        Ok(TokenRequest::Exchange(request)) => {
            let again = ExchangeRequest::parse(request.to_form().as_bytes());
            assert!(again.as_ref() == Ok(&*request), "round trip changed the request");
        }
        Ok(TokenRequest::JwtBearer(request)) => {
            let again = JwtBearerRequest::parse(request.to_form().as_bytes());
            assert!(again.as_ref() == Ok(&request), "round trip changed the request");
        }
        Err(_) => {}
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let v = Validation::at(1_800_000_000);
        assert!(verify_access_token(token, issuers(), &v).is_err());
        if let Ok(subject) = parse_unsigned(token) {
            assert!(!subject.sub.is_empty());
            let again = encode_unsigned(&subject).expect("an accepted subject encodes");
            assert!(parse_unsigned(&again).ok() == Some(subject), "round trip changed it");
        }
    }
});
