//! Fixtures shared by the token test suites: a trust domain with WIT and JWT keys, a
//! workload key, and a way to craft arbitrary (even malformed) signed tokens.
#![allow(dead_code, reason = "each test binary uses a different part")]

use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{Algorithm, SigningKey, b64};
use wimse_core::token::wit::{Confirmation, WitClaims, WitProfile, issue_wit};

pub const NOW: i64 = 1_800_000_000;
pub const TD: &str = "example.org";
pub const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/frontend";
pub const TARGET: &str = "https://backend.example.org/api/orders";

pub struct Fixture {
    pub wit_issuer: SigningKey,
    pub jwt_issuer: SigningKey,
    pub holder: SigningKey,
    pub bundles: BundleSet,
    /// A WIT for the holder key, minted once (ECDSA signatures differ on every signing).
    wit: String,
}

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(uri: &str) -> WorkloadId {
    WorkloadId::parse(uri).unwrap()
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_holder(Algorithm::Es256)
    }

    pub fn with_holder(alg: Algorithm) -> Self {
        let wit_issuer = SigningKey::generate(Algorithm::Es256).unwrap();
        let jwt_issuer = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(td(TD));
        bundle
            .add_authority(KeyUse::WitSvid, "wit-1", wit_issuer.public_key().clone())
            .unwrap();
        bundle
            .add_authority(KeyUse::JwtSvid, "jwt-1", jwt_issuer.public_key().clone())
            .unwrap();
        let mut bundles = BundleSet::new();
        bundles.insert(bundle);
        let mut fixture = Fixture {
            wit_issuer,
            jwt_issuer,
            holder: SigningKey::generate(alg).unwrap(),
            bundles,
            wit: String::new(),
        };
        fixture.wit = issue_wit(
            &fixture.wit_issuer,
            Some("wit-1"),
            &fixture.wit_claims(),
            WitProfile::Wimse,
        )
        .unwrap();
        fixture
    }

    pub fn wit_claims(&self) -> WitClaims {
        WitClaims {
            iss: Some("https://wimse.example.org".into()),
            sub: id(WORKLOAD),
            exp: NOW + 3600,
            iat: Some(NOW - 10),
            nbf: None,
            jti: Some("wit-jti".into()),
            cnf: Confirmation {
                jwk: self.holder.public_jwk().bare(),
            },
            aud: None,
        }
    }

    pub fn wit(&self) -> String {
        self.wit.clone()
    }
}

/// Signs arbitrary header and claims JSON text with `key`, exactly as given.
pub fn craft(header: &str, claims: &str, key: &SigningKey) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(claims));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(sig))
}

/// Claims JSON of `claims` with `edit` applied.
pub fn edit_json<T: serde::Serialize>(
    claims: &T,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let mut value = serde_json::to_value(claims).unwrap();
    edit(&mut value);
    value.to_string()
}
