//! JWT-SVIDs (SPIFFE JWT-SVID standard): bearer tokens for legacy peers and OIDC consumers.
//!
//! [`verify_jwt_svid`] applies the standard's rules: only `alg`, `kid` and `typ` in the
//! header; `typ`, when present, `JWT` or `JOSE`; `kid` required (as go-spiffe, SPIRE and
//! rust-spiffe require); `alg` from the nine SPIFFE algorithms; the key from the
//! `jwt-svid` authorities of the subject's trust domain; `aud` present and containing the
//! verifier's audience; `exp` required and not passed.

use super::{Audience, TokenError, Validation};
use crate::bundle::{BundleSet, KeyUse};
use crate::id::WorkloadId;
use crate::jose::{Jws, SigningKey, jws};
use serde::{Deserialize, Serialize};

/// The claims wimse puts in a JWT-SVID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSvidClaims {
    /// The SPIFFE ID.
    pub sub: WorkloadId,
    /// One or more audiences.
    pub aud: Audience,
    /// Expiry.
    #[serde(deserialize_with = "super::numeric_date")]
    pub exp: i64,
    /// Issued at.
    #[serde(
        default,
        deserialize_with = "super::opt_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<i64>,
    /// Issuer (optional in the standard; set to the server's URL for OIDC consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A verified JWT-SVID.
#[derive(Clone, Debug)]
pub struct VerifiedJwtSvid {
    /// The typed claims.
    pub claims: JwtSvidClaims,
    /// Every claim as sent (for the Workload API's `ValidateJWTSVID`, which returns them).
    pub all_claims: serde_json::Map<String, serde_json::Value>,
}

/// Signs a JWT-SVID with `typ` `JWT`.
pub fn issue_jwt_svid(
    key: &SigningKey,
    kid: &str,
    claims: &JwtSvidClaims,
) -> Result<String, TokenError> {
    if !key.algorithm().is_spiffe() {
        return Err(TokenError::Issue(format!(
            "algorithm `{}` is not allowed for JWT-SVIDs",
            key.algorithm()
        )));
    }
    if !claims.sub.is_spiffe() || claims.sub.is_trust_domain_id() {
        return Err(TokenError::Issue(
            "a JWT-SVID subject must be a SPIFFE ID with a path".into(),
        ));
    }
    if claims.aud.values().is_empty() {
        return Err(TokenError::Issue("a JWT-SVID needs an audience".into()));
    }
    Ok(jws::sign(key, Some("JWT"), Some(kid), claims)?)
}

/// Verifies a JWT-SVID for `audience` (see the module doc).
pub fn verify_jwt_svid(
    token: &str,
    bundles: &BundleSet,
    audience: &str,
    validation: &Validation,
) -> Result<VerifiedJwtSvid, TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    if let Some(other) = header.other.first() {
        return Err(TokenError::HeaderNotAllowed(other.clone()));
    }
    if let Some(typ) = &header.typ
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(TokenError::WrongType {
            expected: "JWT",
            found: typ.clone(),
        });
    }
    if !header.alg.is_spiffe() {
        return Err(TokenError::AlgorithmNotAllowed(
            header.alg.name().to_owned(),
        ));
    }
    let kid = header.kid.as_deref().ok_or(TokenError::MissingKid)?;
    let all_claims: serde_json::Map<String, serde_json::Value> = jws.claims()?;
    let claims: JwtSvidClaims =
        serde_json::from_value(serde_json::Value::Object(all_claims.clone())).map_err(|e| {
            TokenError::BadClaim {
                claim: "claims",
                reason: e.to_string(),
            }
        })?;
    if !claims.sub.is_spiffe() {
        return Err(TokenError::BadClaim {
            claim: "sub",
            reason: format!("`{}` is not a SPIFFE ID", claims.sub),
        });
    }
    let key = bundles.jwt_authority(claims.sub.trust_domain(), KeyUse::JwtSvid, Some(kid))?;
    jws.verify(key)?;
    validation.check_exp(claims.exp)?;
    validation.check_iat(claims.iat)?;
    if let Some(nbf) = all_claims.get("nbf").and_then(serde_json::Value::as_i64) {
        validation.check_nbf(Some(nbf))?;
    }
    if !claims.aud.contains(audience) {
        return Err(TokenError::WrongAudience {
            expected: audience.to_owned(),
            found: claims.aud.values().join(" "),
        });
    }
    Ok(VerifiedJwtSvid { claims, all_claims })
}
