//! Fuzzes the parsers of fetched trust material: SPIFFE trust bundles (single bundle and
//! bundle map), an outside issuer's JWK Set, and the `Cache-Control` that schedules the
//! next fetch. No input may panic, and an accepted bundle must read back identical from
//! its own serialization.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::TrustDomain;
use wimse_core::token::access::TrustedIssuer;

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").unwrap();
    if let Ok(bundle) = TrustBundle::from_spiffe_json(td.clone(), data) {
        let again = TrustBundle::from_spiffe_json(td.clone(), bundle.to_spiffe_json().as_bytes())
            .expect("a bundle we wrote must parse");
        assert_eq!(again, bundle);
    }
    if let Ok(set) = BundleSet::from_map_json(data) {
        let written = set.to_map_json();
        let again = BundleSet::from_map_json(written.as_bytes()).expect("a map we wrote must parse");
        assert_eq!(again.to_map_json(), written);
    }
    let mut empty = TrustBundle::new(td);
    let _ = empty.add_jwks(KeyUse::JwtSvid, data);
    let issuer = TrustedIssuer::awaiting_keys("https://login.test".into(), "a".into(), String::new());
    if let Ok(ready) = issuer.with_jwks_json(data) {
        assert!(ready.key_count() > 0, "an issuer is never left without keys");
    }
    let _ = wimse_remote::fetch::max_age(&String::from_utf8_lossy(data));
});
