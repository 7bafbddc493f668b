//! Fuzzes the SPIFFE trust bundle parsers (single bundle and bundle map): no input may
//! panic, and an accepted bundle must read back identical from its own serialization.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::TrustDomain;

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
});
