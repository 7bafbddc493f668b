//! Property tests: round trips hold for generated inputs, and no parser of untrusted
//! input panics on arbitrary bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::*;
use proptest::prelude::*;
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::jose::{Jwk, Jws, b64};
use wimse_core::token::replay::ReplayCache;
use wimse_core::token::wit::{WitProfile, issue_wit, verify_wit};
use wimse_core::token::wpt::{RequestBinding, issue_wpt, verify_wpt};
use wimse_core::token::{Validation, jwt_svid, txn};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert_eq!(b64::decode(&b64::encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn jws_reader_never_panics(text in ".{0,400}") {
        let _ = Jws::parse(&text);
    }

    #[test]
    fn jws_reader_never_panics_on_token_shaped_input(
        h in "[A-Za-z0-9_-]{0,80}", p in "[A-Za-z0-9_-]{0,80}", s in "[A-Za-z0-9_-]{0,90}"
    ) {
        if let Ok(jws) = Jws::parse(&format!("{h}.{p}.{s}")) {
            let _ = jws.claims::<serde_json::Value>();
        }
    }

    #[test]
    fn jws_reader_never_panics_on_encoded_json(header in any::<String>(), claims in any::<String>()) {
        let token = format!("{}.{}.AAAA", b64::encode(&header), b64::encode(&claims));
        if let Ok(jws) = Jws::parse(&token) {
            let _ = jws.claims::<serde_json::Value>();
        }
    }

    #[test]
    fn bundle_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = TrustBundle::from_spiffe_json(td(TD), &bytes);
        let _ = BundleSet::from_map_json(&bytes);
    }

    #[test]
    fn jwk_parser_never_panics(text in r#"\{("(kty|crv|x|y|n|e|alg|kid|use|d)":("[A-Za-z0-9_-]{0,50}"|1|null),?){0,8}\}"#) {
        if let Ok(jwk) = serde_json::from_str::<Jwk>(&text) {
            let _ = wimse_core::jose::PublicKey::from_jwk(&jwk);
            let _ = jwk.thumbprint();
        }
    }

    #[test]
    fn verifiers_never_panic_and_never_accept_garbage(text in "[A-Za-z0-9_.-]{0,300}") {
        let f = Fixture::new();
        let v = Validation::at(NOW);
        prop_assert!(verify_wit(&text, &f.bundles, WitProfile::Wimse, &v).is_err());
        prop_assert!(jwt_svid::verify_jwt_svid(&text, &f.bundles, "x", &v).is_err());
        prop_assert!(txn::verify_txn_token(&text, &f.bundles, &td(TD), &v).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn wit_and_wpt_round_trip_for_any_path_and_lifetime(
        path in "(/[a-zA-Z0-9._-]{1,12}){1,4}",
        lifetime in 1i64..86_400,
        proof_lifetime in 1i64..300,
        access_token in proptest::option::of("[ -~]{1,40}"),
    ) {
        // Dot-only segments are not valid SPIFFE path segments.
        prop_assume!(!path.split('/').any(|s| s == "." || s == ".."));
        let f = Fixture::new();
        let mut claims = f.wit_claims();
        claims.sub = id(&format!("spiffe://{TD}{path}"));
        claims.exp = NOW + lifetime;
        let wit = issue_wit(&f.wit_issuer, Some("wit-1"), &claims, WitProfile::Spiffe).unwrap();
        let v = Validation::at(NOW);
        let verified = verify_wit(&wit, &f.bundles, WitProfile::Spiffe, &v).unwrap();
        prop_assert_eq!(&verified.claims, &claims);
        let binding = RequestBinding { audience: TARGET, access_token: access_token.as_deref(), ..Default::default() };
        let wpt = issue_wpt(&f.holder, &wit, &binding, NOW, proof_lifetime).unwrap();
        prop_assert!(verify_wpt(&wpt, &verified, &binding, &v, &ReplayCache::new(4)).is_ok());
    }

    #[test]
    fn any_single_byte_change_to_a_wit_is_refused(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let f = Fixture::new();
        let wit = f.wit();
        let mut bytes = wit.clone().into_bytes();
        let i = position.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(text) = String::from_utf8(bytes) {
            prop_assert!(verify_wit(&text, &f.bundles, WitProfile::Wimse, &Validation::at(NOW)).is_err());
        }
    }
}
