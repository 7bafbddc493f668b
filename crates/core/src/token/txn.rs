//! Transaction Tokens (draft-ietf-oauth-transaction-tokens): the signed, immutable context
//! of one call chain inside one trust domain, carried in the `Txn-Token` header.
//!
//! Issued by the trust domain's token service (the server) with its JWT key and verified
//! by every workload on the chain with [`verify_txn_token`]: `typ` `txntoken+jwt`, `kid`
//! required, the key from the `jwt-svid` authorities of the verifier's own trust domain,
//! `aud` naming that trust domain (a Txn-Token is never accepted outside it), `exp`, and
//! the required claims `iat`, `txn`, `sub`, `scope`, `req_wl`.

use super::cache::{Expiring, VerifiedCache};
use super::chain::Actor;
use super::{Audience, TokenError, Validation, require_typ};
use crate::bundle::{BundleError, BundleSet, KeyUse, TrustBundle};
use crate::id::TrustDomain;
use crate::jose::{Jws, SigningKey, jws};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The `typ` of a Txn-Token.
pub const TXN_TYP: &str = "txntoken+jwt";

/// The HTTP header that carries a Txn-Token.
pub const TXN_HEADER: &str = "Txn-Token";

/// The claims of a Txn-Token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnTokenClaims {
    /// The issuing token service (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Issued at.
    #[serde(deserialize_with = "super::numeric_date")]
    pub iat: i64,
    /// The trust domain the token is valid in.
    pub aud: Audience,
    /// Expiry (minutes or less).
    #[serde(deserialize_with = "super::numeric_date")]
    pub exp: i64,
    /// The transaction ID, unique in the trust domain.
    pub txn: String,
    /// The principal the transaction acts for.
    pub sub: String,
    /// The purpose of the transaction (space-separated scopes).
    pub scope: String,
    /// Immutable authorization context, as decided by the token service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tctx: Option<serde_json::Map<String, serde_json::Value>>,
    /// The request environment (`req_ip`, `authn`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rctx: Option<serde_json::Map<String, serde_json::Value>>,
    /// The workload that requested the token.
    pub req_wl: String,
    /// The workload acting for `sub` when the token was redeemed from a delegation
    /// ([`super::delegation`]), with the actors before it (RFC 8693 §4.1). Absent for a
    /// transaction carried out on the subject's own request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

impl TxnTokenClaims {
    /// The first required string claim that is empty, if any.
    fn empty_required_claim(&self) -> Option<&'static str> {
        [
            ("txn", &self.txn),
            ("sub", &self.sub),
            ("scope", &self.scope),
            ("req_wl", &self.req_wl),
        ]
        .into_iter()
        .find_map(|(name, value)| value.is_empty().then_some(name))
    }
}

/// Signs a Txn-Token.
pub fn issue_txn_token(
    key: &SigningKey,
    kid: &str,
    claims: &TxnTokenClaims,
) -> Result<String, TokenError> {
    if let Some(name) = claims.empty_required_claim() {
        return Err(TokenError::Issue(format!("claim `{name}` is empty")));
    }
    Ok(jws::sign(key, Some(TXN_TYP), Some(kid), claims)?)
}

/// Verifies a Txn-Token for a workload in `trust_domain`.
pub fn verify_txn_token(
    token: &str,
    bundles: &BundleSet,
    trust_domain: &TrustDomain,
    validation: &Validation,
) -> Result<TxnTokenClaims, TokenError> {
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| BundleError::UntrustedTrustDomain(trust_domain.to_string()))?;
    verify_txn_token_in(token, bundle, validation)
}

/// [`verify_txn_token`] against the bundle of the verifier's own trust domain (the token
/// service, which holds just that one).
pub fn verify_txn_token_in(
    token: &str,
    bundle: &TrustBundle,
    validation: &Validation,
) -> Result<TxnTokenClaims, TokenError> {
    let trust_domain = bundle.trust_domain();
    let jws = Jws::parse(token)?;
    let header = jws.header();
    require_typ(header, TXN_TYP)?;
    let kid = header.kid.as_deref().ok_or(TokenError::MissingKid)?;
    let key = bundle.authority(KeyUse::JwtSvid, Some(kid))?;
    jws.verify(key)?;
    let claims: TxnTokenClaims = jws.claims()?;
    if !claims.aud.contains(trust_domain.as_str()) {
        return Err(TokenError::WrongAudience {
            expected: trust_domain.to_string(),
            found: claims.aud.values().join(" "),
        });
    }
    validation.check_exp(claims.exp)?;
    validation.check_iat(Some(claims.iat))?;
    if let Some(name) = claims.empty_required_claim() {
        return Err(TokenError::BadClaim {
            claim: name,
            reason: "empty".into(),
        });
    }
    Ok(claims)
}

/// A bounded cache of verified Txn-Tokens (see [`VerifiedCache`]): a Txn-Token travels
/// unchanged along its call chain, so a workload that gets many calls of one transaction
/// verifies its signature once.
pub type TxnCache = VerifiedCache<TxnTokenClaims>;

impl Expiring for TxnTokenClaims {
    fn exp(&self) -> i64 {
        self.exp
    }
}

impl VerifiedCache<TxnTokenClaims> {
    /// Returns the verified claims, from the cache or by [`verify_txn_token`]. A hit is
    /// checked again for expiry and for naming `trust_domain`. `generation` is that of
    /// `bundles` (see [`VerifiedCache`]).
    pub fn verify(
        &self,
        token: &str,
        bundles: &BundleSet,
        generation: u64,
        trust_domain: &TrustDomain,
        validation: &Validation,
    ) -> Result<Arc<TxnTokenClaims>, TokenError> {
        let claims = self.get_or_verify(token, generation, validation, |_| {
            verify_txn_token(token, bundles, trust_domain, validation)
        })?;
        if !claims.aud.contains(trust_domain.as_str()) {
            return Err(TokenError::WrongAudience {
                expected: trust_domain.to_string(),
                found: claims.aud.values().join(" "),
            });
        }
        Ok(claims)
    }
}
