//! Fuzzes the strict compact-JWS reader and the token verifiers behind it: no input may
//! panic, and no arbitrary input may verify as a WIT, WPT-bearing request, JWT-SVID,
//! Txn-Token, identity-chaining grant, delegation or self-signed subject token against trust anchors
//! and keys whose private halves the fuzzer never sees.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::jose::{Algorithm, Jws, SigningKey};
use wimse_core::token::wit::{WitProfile, verify_wit};
use wimse_core::token::{Validation, chain, delegation, jwt_svid, self_signed, txn};
use wimse_core::{TrustDomain, WorkloadId};

fn anchors() -> &'static BundleSet {
    static ANCHORS: OnceLock<BundleSet> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        let mut bundle = TrustBundle::new(TrustDomain::new("example.org").unwrap());
        for (use_, kid, alg) in [
            (KeyUse::WitSvid, "wit-1", Algorithm::Es256),
            (KeyUse::WitSvid, "wit-2", Algorithm::EdDsa),
            (KeyUse::JwtSvid, "jwt-1", Algorithm::Es256),
        ] {
            let key = SigningKey::generate(alg).unwrap();
            bundle.add_authority(use_, kid, key.public_key().clone()).unwrap();
        }
        let mut set = BundleSet::new();
        set.insert(bundle);
        set
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jws) = Jws::parse(token) {
        let _ = jws.claims::<serde_json::Value>();
    }
    let v = Validation::at(1_800_000_000);
    let td = TrustDomain::new("example.org").unwrap();
    assert!(verify_wit(token, anchors(), WitProfile::Spiffe, &v).is_err());
    assert!(verify_wit(token, anchors(), WitProfile::Wimse, &v).is_err());
    assert!(jwt_svid::verify_jwt_svid(token, anchors(), "aud", &v).is_err());
    assert!(txn::verify_txn_token(token, anchors(), &td, &v).is_err());
    let _ = chain::grant_issuer(token);
    if let Some(bundle) = anchors().get(&td) {
        assert!(chain::verify_grant(token, bundle, "spiffe://partner.example", &v).is_err());
        assert!(delegation::verify_delegation(token, bundle, &v).is_err());
        let requester = WorkloadId::parse("spiffe://example.org/batch").unwrap();
        if let Ok(key) = bundle.authority(KeyUse::JwtSvid, Some("jwt-1")) {
            assert!(self_signed::verify_self_signed(token, &requester, key, "spiffe://example.org", &v).is_err());
        }
    }
});
