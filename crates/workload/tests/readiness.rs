//! When a workload counts as ready: credentials present and not expired.
#![allow(clippy::unwrap_used, reason = "tests")]

mod fixture;

use fixture::Domain;
use std::sync::Arc;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::token::unix_now;
use wimse_workload::Credentials;

#[test]
fn credentials_are_ready_only_when_complete_and_unexpired() {
    let good = Domain::new("good.test");
    let now = unix_now();
    let fresh = good.credentials("/w1", &[&good]);
    assert_eq!(fresh.readiness(now), Ok(()));
    assert!(
        Credentials::default()
            .readiness(now)
            .is_err_and(|e| e.contains("no credentials"))
    );
    // The agent went away and the WIT ran out: not ready, although everything is there.
    let mut stale_wit = fresh.clone();
    let key = Arc::new(SigningKey::generate(Algorithm::Es256).unwrap());
    stale_wit.wit = Some(good.wit_with_key("/w1", key, -10));
    assert!(stale_wit.is_complete());
    assert!(
        stale_wit
            .readiness(now)
            .is_err_and(|e| e.contains("WIT has expired"))
    );
    let mut garbled = fresh.clone();
    if let Some(wit) = garbled.wit.as_mut() {
        wit.token = "not.a.jwt".into();
    }
    assert!(
        garbled
            .readiness(now)
            .is_err_and(|e| e.contains("cannot be read"))
    );
    // The fixture's X509-SVID lives an hour.
    assert!(
        fresh
            .readiness(now + 7_200)
            .is_err_and(|e| e.contains("X509-SVID has expired"))
    );
}
