//! Self-signed subject tokens (Txn-Token draft, `subject_token_type`
//! `urn:ietf:params:oauth:token-type:self_signed`): a workload that starts a transaction
//! with no outside access token behind it (a batch job, a scheduled task) states the
//! subject itself.
//!
//! The draft requires `iss` (the requesting workload), `sub`, `aud` (the token service,
//! which checks it), `iat` and `exp`. Here the token is signed with the private key of
//! the X509-SVID the workload authenticates to the token service with (mutual TLS), and
//! verified with the public key of the certificate presented on that very connection: the
//! signature and the connection then prove the same workload, and a token taken from one
//! workload is worthless on another's connection. [`verify_self_signed`] checks, in order:
//! `typ` absent or `JWT`; the signature with that key; `iss` equal to the authenticated
//! workload; one `aud`, the token service ([`super::chain::service_id`]); `exp` and `iat`,
//! with a lifetime of at most [`MAX_SELF_SIGNED_LIFETIME`]; a non-empty `sub`; and a valid
//! `scope` (the token service may not start a transaction wider than the token states).
//! What a workload may name as its subject and scope is the token service's policy.

use super::exchange::Scope;
use super::{TokenError, Validation};
use crate::id::WorkloadId;
use crate::jose::{Jws, PublicKey, SigningKey, jws};
use serde::{Deserialize, Serialize};

/// The longest a self-signed subject token may live: it is made just before it is sent.
pub const MAX_SELF_SIGNED_LIFETIME: i64 = 300;

/// The claims of a self-signed subject token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfSignedClaims {
    /// The requesting workload.
    pub iss: String,
    /// The subject of the transaction.
    pub sub: String,
    /// The token service.
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
    /// What the transaction is for.
    pub scope: String,
}

/// Signs `claims` with `key` (the requesting workload's X509-SVID key).
pub fn issue_self_signed(
    key: &SigningKey,
    claims: &SelfSignedClaims,
) -> Result<String, TokenError> {
    jws::sign(key, Some("JWT"), None, claims).map_err(|e| TokenError::Issue(e.to_string()))
}

/// Verifies a self-signed subject token from `requester`, whose certificate's public key
/// is `key`, addressed to the token service `audience` (see the module doc).
pub fn verify_self_signed(
    token: &str,
    requester: &WorkloadId,
    key: &PublicKey,
    audience: &str,
    validation: &Validation,
) -> Result<SelfSignedClaims, TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    if header.typ.is_some() && !header.typ_is("JWT") {
        return Err(TokenError::WrongType {
            expected: "JWT",
            found: header.typ.clone().unwrap_or_default(),
        });
    }
    jws.verify(key)?;
    let claims: SelfSignedClaims = jws.claims()?;
    if claims.iss != requester.as_str() {
        return Err(TokenError::BadClaim {
            claim: "iss",
            reason: format!(
                "`{}` is not the requesting workload `{requester}`",
                claims.iss
            ),
        });
    }
    if claims.aud != audience {
        return Err(TokenError::WrongAudience {
            expected: audience.to_owned(),
            found: claims.aud,
        });
    }
    validation.check_exp(claims.exp)?;
    validation.check_iat(Some(claims.iat))?;
    validation.check_lifetime(claims.exp, MAX_SELF_SIGNED_LIFETIME)?;
    if claims.sub.is_empty() {
        return Err(TokenError::BadClaim {
            claim: "sub",
            reason: "empty".into(),
        });
    }
    Scope::parse(&claims.scope).map_err(|e| TokenError::BadClaim {
        claim: "scope",
        reason: e.description().to_owned(),
    })?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Algorithm;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const TTS: &str = "spiffe://example.org";

    fn requester() -> WorkloadId {
        WorkloadId::parse("spiffe://example.org/batch").unwrap()
    }

    fn claims() -> SelfSignedClaims {
        SelfSignedClaims {
            iss: requester().to_string(),
            sub: "nightly-report".into(),
            aud: TTS.into(),
            iat: NOW,
            exp: NOW + 60,
            scope: "reports.read".into(),
        }
    }

    fn verify(token: &str, key: &SigningKey) -> Result<SelfSignedClaims, TokenError> {
        let public = PublicKey::from_jwk(key.public_jwk()).unwrap();
        verify_self_signed(token, &requester(), &public, TTS, &Validation::at(NOW))
    }

    #[test]
    fn a_token_signed_with_the_requesters_key_verifies() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let token = issue_self_signed(&key, &claims()).unwrap();
        assert_eq!(verify(&token, &key).unwrap(), claims());
    }

    #[test]
    fn hostile_self_signed_tokens_are_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut c = serde_json::to_value(claims()).unwrap();
            change(&mut c);
            jws::sign(&key, Some("JWT"), None, &c).unwrap()
        };
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "another workload's key",
                issue_self_signed(&other, &claims()).unwrap(),
                "signature",
            ),
            (
                "typed as something else",
                jws::sign(&key, Some("wpt+jwt"), None, &claims()).unwrap(),
                "typ",
            ),
            (
                "another workload as iss",
                with(&|c| c["iss"] = json!("spiffe://example.org/other")),
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
                "too long",
                with(&|c| c["exp"] = json!(NOW + 3600)),
                "more than",
            ),
            (
                "issued later",
                with(&|c| c["iat"] = json!(NOW + 600)),
                "future",
            ),
            (
                "no iat",
                with(&|c| drop(c.as_object_mut().unwrap().remove("iat"))),
                "",
            ),
            ("empty sub", with(&|c| c["sub"] = json!("")), "sub"),
            (
                "no scope",
                with(&|c| drop(c.as_object_mut().unwrap().remove("scope"))),
                "",
            ),
            ("bad scope", with(&|c| c["scope"] = json!("a  b")), "scope"),
        ];
        for (name, token, expected) in cases {
            let refused = verify(&token, &key).expect_err(name);
            assert!(refused.to_string().contains(expected), "{name}: {refused}");
        }
    }
}
