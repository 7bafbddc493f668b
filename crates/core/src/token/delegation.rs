//! Delegation of a transaction to a workload that carries it on later: the architecture's
//! asynchronous and batch requests (draft-ietf-wimse-arch, "Asynchronous and Batch
//! Requests"), where a workload must act for a source after the source's credentials
//! have expired.
//!
//! 1. A workload that takes on a job (a queue consumer, a batch worker) receives the
//!    job's Txn-Token while it is still valid and exchanges it at its trust domain's
//!    token service (`requested_token_type` [`token_type::DELEGATION`]) for a
//!    **delegation** ([`DelegationClaims`], `typ` `delegation+jwt`): the same subject,
//!    transaction and context, a scope no wider than the Txn-Token's, the workload named
//!    as the actor (`act`, RFC 8693 §4.1), and a life of hours rather than minutes.
//! 2. Whenever the work needs to call on, the workload presents the delegation to the
//!    token service (`subject_token_type` [`token_type::DELEGATION`]) and gets a fresh,
//!    short-lived Txn-Token of that transaction that names it as the actor, so every
//!    workload downstream sees who acts for whom.
//!
//! The delegation is addressed to the token service alone (`iss` and `aud` are both
//! [`service_id`] of the trust domain), so no workload ever takes it as a credential. It is
//! bound to the actor's identity rather than to one key: the token service redeems it only
//! over mutual TLS with an X509-SVID of the actor's SPIFFE ID. A key binding would end the
//! delegation at the actor's next certificate rotation, which comes sooner than the work
//! it was made for may finish; the identity binding still makes a stolen delegation
//! useless to anyone without the actor's credentials.
//!
//! [`token_type::DELEGATION`]: super::exchange::token_type::DELEGATION

use super::chain::{Actor, ServiceEnvelope, require_claims, service_id, signed_by_service};
use super::{TokenError, Validation};
use crate::bundle::TrustBundle;
use crate::jose::{SigningKey, jws};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `typ` of a delegation.
pub const DELEGATION_TYP: &str = "delegation+jwt";
/// The longest a delegation may live, whatever it says.
pub const MAX_DELEGATION_LIFETIME: i64 = 86_400;
pub use super::chain::MAX_ACTORS;

/// The claims of a delegation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationClaims {
    /// The issuing token service ([`service_id`] of its trust domain).
    pub iss: String,
    /// The same token service: the only party that accepts a delegation.
    pub aud: String,
    /// The subject of the transaction (the Txn-Token's `sub`).
    pub sub: String,
    /// Issued at.
    #[serde(deserialize_with = "super::numeric_date")]
    pub iat: i64,
    /// Expiry.
    #[serde(deserialize_with = "super::numeric_date")]
    pub exp: i64,
    /// Unique ID.
    pub jti: String,
    /// The transaction delegated: every Txn-Token redeemed from it keeps this `txn`.
    pub txn: String,
    /// The scope delegated, never wider than the Txn-Token's.
    pub scope: String,
    /// The workload the delegation is for, and alone may redeem it, with the actors
    /// before it.
    pub act: Actor,
    /// The transaction's authorization context, as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tctx: Option<Map<String, Value>>,
    /// The transaction's request context, as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rctx: Option<Map<String, Value>>,
}

/// Signs a delegation with `kid`, a `jwt-svid` authority of the issuer's trust domain.
pub fn issue_delegation(
    key: &SigningKey,
    kid: &str,
    claims: &DelegationClaims,
) -> Result<String, TokenError> {
    if [&claims.sub, &claims.jti, &claims.txn, &claims.scope]
        .iter()
        .any(|v| v.is_empty())
    {
        return Err(TokenError::Issue(
            "a delegation needs a subject, a `jti`, a transaction and a scope".into(),
        ));
    }
    if claims.act.chain().count() > MAX_ACTORS {
        return Err(TokenError::Issue(format!(
            "a delegation names at most {MAX_ACTORS} actors"
        )));
    }
    Ok(jws::sign(key, Some(DELEGATION_TYP), Some(kid), claims)?)
}

/// Verifies a delegation at the token service of `bundle`'s trust domain: `typ`, `kid`,
/// the signature with one of its `jwt-svid` keys, `iss` and one `aud` both exactly its
/// [`service_id`], `exp` (and no more than [`MAX_DELEGATION_LIFETIME`] ahead), `iat`,
/// the required claims, the scope's syntax, and an actor chain of at most
/// [`MAX_ACTORS`] whose current actor is a workload of the trust domain. Whether the
/// caller is that actor is the token service's check.
pub fn verify_delegation(
    token: &str,
    bundle: &TrustBundle,
    validation: &Validation,
) -> Result<DelegationClaims, TokenError> {
    let claims: DelegationClaims = signed_by_service(token, DELEGATION_TYP, bundle)?;
    ServiceEnvelope {
        iss: &claims.iss,
        aud: &claims.aud,
        iat: claims.iat,
        exp: claims.exp,
    }
    .check(
        bundle,
        &service_id(bundle.trust_domain()),
        MAX_DELEGATION_LIFETIME,
        validation,
    )?;
    require_claims(
        &[
            ("sub", &claims.sub),
            ("jti", &claims.jti),
            ("txn", &claims.txn),
            ("scope", &claims.scope),
        ],
        &claims.scope,
    )?;
    claims.act.check(bundle.trust_domain())?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::KeyUse;
    use crate::id::TrustDomain;
    use crate::jose::Algorithm;
    use crate::token::Audience;
    use crate::token::txn::{TxnTokenClaims, issue_txn_token};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const TTS: &str = "spiffe://example.org";

    struct World {
        key: SigningKey,
        bundle: TrustBundle,
    }

    fn world() -> World {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(TrustDomain::new("example.org").unwrap());
        bundle
            .add_authority(KeyUse::JwtSvid, "jwt-1", key.public_key().clone())
            .unwrap();
        World { key, bundle }
    }

    fn claims() -> DelegationClaims {
        DelegationClaims {
            iss: TTS.into(),
            aud: TTS.into(),
            sub: "user:alice".into(),
            iat: NOW,
            exp: NOW + 3600,
            jti: "d-1".into(),
            txn: "txn-1".into(),
            scope: "orders.read".into(),
            act: Actor::after(
                "spiffe://example.org/worker",
                Some(&Actor::new("spiffe://example.org/intake")),
            ),
            tctx: Some(Map::from_iter([("order".into(), json!(42))])),
            rctx: None,
        }
    }

    #[test]
    fn a_delegation_round_trips_with_its_actor_chain() {
        let w = world();
        let token = issue_delegation(&w.key, "jwt-1", &claims()).unwrap();
        let verified = verify_delegation(&token, &w.bundle, &Validation::at(NOW)).unwrap();
        assert_eq!(verified, claims());
        assert_eq!(
            verified.act.chain().collect::<Vec<_>>(),
            ["spiffe://example.org/worker", "spiffe://example.org/intake"]
        );
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of hostile tokens")]
    fn hostile_delegations_are_refused() {
        let w = world();
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let with = |change: &dyn Fn(&mut Value)| {
            let mut c = serde_json::to_value(claims()).unwrap();
            change(&mut c);
            jws::sign(&w.key, Some(DELEGATION_TYP), Some("jwt-1"), &c).unwrap()
        };
        let txn = issue_txn_token(
            &w.key,
            "jwt-1",
            &TxnTokenClaims {
                iss: None,
                iat: NOW,
                aud: Audience::One("example.org".into()),
                exp: NOW + 300,
                txn: "txn-1".into(),
                sub: "user:alice".into(),
                scope: "orders.read".into(),
                tctx: None,
                rctx: None,
                req_wl: "spiffe://example.org/worker".into(),
                act: None,
            },
        )
        .unwrap();
        let mut deep = Actor::new("spiffe://example.org/a0");
        for i in 1..=MAX_ACTORS {
            deep = Actor::after(format!("spiffe://example.org/a{i}"), Some(&deep));
        }
        let cases: Vec<(&str, String, &str)> = vec![
            ("a Txn-Token", txn, "typ"),
            (
                "a grant's type",
                jws::sign(
                    &w.key,
                    Some("authorization-grant+jwt"),
                    Some("jwt-1"),
                    &claims(),
                )
                .unwrap(),
                "typ",
            ),
            (
                "a key outside the bundle",
                jws::sign(&other, Some(DELEGATION_TYP), Some("jwt-1"), &claims()).unwrap(),
                "signature",
            ),
            (
                "no kid",
                jws::sign(&w.key, Some(DELEGATION_TYP), None, &claims()).unwrap(),
                "kid",
            ),
            (
                "another issuer",
                with(&|c| c["iss"] = json!("spiffe://b.example")),
                "iss",
            ),
            (
                "another audience",
                with(&|c| c["aud"] = json!("spiffe://b.example")),
                "audience",
            ),
            ("an audience list", with(&|c| c["aud"] = json!([TTS])), ""),
            ("expired", with(&|c| c["exp"] = json!(NOW - 600)), "expired"),
            (
                "longer than a day",
                with(&|c| c["exp"] = json!(NOW + MAX_DELEGATION_LIFETIME + 600)),
                "more than",
            ),
            (
                "issued later",
                with(&|c| c["iat"] = json!(NOW + 600)),
                "future",
            ),
            ("empty txn", with(&|c| c["txn"] = json!("")), "txn"),
            (
                "no act",
                with(&|c| drop(c.as_object_mut().unwrap().remove("act"))),
                "",
            ),
            ("bad scope", with(&|c| c["scope"] = json!("a  b")), "scope"),
            (
                "an actor of another domain",
                with(&|c| c["act"] = json!({"sub": "spiffe://b.example/worker"})),
                "not a workload of",
            ),
            (
                "the trust domain as actor",
                with(&|c| c["act"] = json!({"sub": TTS})),
                "not a workload of",
            ),
            (
                "too many actors",
                with(&|c| c["act"] = serde_json::to_value(&deep).unwrap()),
                "actors",
            ),
        ];
        for (name, token, expected) in cases {
            let refused =
                verify_delegation(&token, &w.bundle, &Validation::at(NOW)).expect_err(name);
            assert!(refused.to_string().contains(expected), "{name}: {refused}");
        }
    }

    #[test]
    fn issuing_refuses_what_verification_would() {
        let w = world();
        let mut c = claims();
        c.txn.clear();
        assert!(issue_delegation(&w.key, "jwt-1", &c).is_err());
        let mut c = claims();
        for i in 0..MAX_ACTORS {
            c.act = Actor::after(format!("spiffe://example.org/a{i}"), Some(&c.act));
        }
        assert!(issue_delegation(&w.key, "jwt-1", &c).is_err());
    }
}
