//! Workload Identity Tokens (draft-ietf-wimse-workload-creds §3; SPIFFE WIT-SVID).
//!
//! [`verify_wit`] is the one function that decides whether a WIT is genuine. It follows
//! SPECS §3.2: `typ` `wit+jwt`; `alg` allowed by the profile; `sub` a valid workload
//! identifier; the key chosen by `kid` from the WIT authorities of the trust domain in
//! `sub` (never from `iss`, never from the token); signature; `exp`/`nbf`/`iat`; a public
//! `cnf.jwk` whose `alg` is present, allowed and fits the key. Only a WIT that passes all
//! of these yields a [`VerifiedWit`], whose holder key then verifies the proof.
//!
//! Two profiles: [`WitProfile::Spiffe`] (the default; SPIFFE WIT-SVID: `kid` required,
//! the nine SPIFFE algorithms only, `spiffe://` subjects, no `aud`) and
//! [`WitProfile::Wimse`] (the IETF drafts: also `EdDSA`, any WIMSE identifier scheme,
//! `kid` optional when the trust domain has a single WIT key).
//!
//! [`WitCache`] keeps verified WITs by the SHA-256 of their text, so a service verifying a
//! stream of requests from the same caller pays one signature (the WPT's) per request.

use super::cache::{Expiring, VerifiedCache};
use super::{TokenError, Validation, require_typ};
use crate::bundle::{BundleSet, KeyUse};
use crate::id::WorkloadId;
use crate::jose::{Algorithm, Jwk, Jws, PublicKey, SigningKey, jws};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The `typ` of a WIT.
pub const WIT_TYP: &str = "wit+jwt";

/// Which rules a WIT must meet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WitProfile {
    /// SPIFFE WIT-SVID: `kid` required; `alg` and `cnf.jwk.alg` from the SPIFFE list
    /// (no `EdDSA`); `sub` a SPIFFE ID; `aud` must not be present.
    #[default]
    Spiffe,
    /// Generic WIMSE: any supported asymmetric algorithm including `EdDSA`; any WIMSE
    /// identifier; `kid` optional.
    Wimse,
}

impl WitProfile {
    fn allows(self, alg: Algorithm) -> bool {
        match self {
            WitProfile::Spiffe => alg.is_spiffe(),
            WitProfile::Wimse => true,
        }
    }
}

/// The `cnf` claim (RFC 7800): the key the workload proves possession of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The workload's public key; `alg` is required.
    pub jwk: Jwk,
}

/// The claims of a WIT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitClaims {
    /// The issuer (for audit; never used to find keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The workload identifier.
    pub sub: WorkloadId,
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
    /// Not before.
    #[serde(
        default,
        deserialize_with = "super::opt_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<i64>,
    /// Token ID (audit only; never replay detection, since a WIT may serve several instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The key binding.
    pub cnf: Confirmation,
    /// Present only so that its presence can be refused (WIT-SVID: `aud` MUST NOT be present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

/// A WIT whose signature, lifetime and key binding have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedWit {
    /// The claims.
    pub claims: WitClaims,
    /// The workload's key, bound to `cnf.jwk.alg`; proofs must verify with it.
    pub holder_key: PublicKey,
    /// `cnf.jwk.alg`: a proof's `alg` must string-equal it.
    pub holder_alg: Algorithm,
    /// base64url(SHA-256(WIT)): what a WPT's `wth` must equal.
    pub wth: String,
    /// The issuer key's `kid`, if any (for audit).
    pub kid: Option<String>,
}

impl VerifiedWit {
    /// The authenticated workload identifier.
    pub fn workload_id(&self) -> &WorkloadId {
        &self.claims.sub
    }

    /// SHA-256 of the WIT, read back from `wth` (the token was hashed once, when it was
    /// verified or looked up in a [`WitCache`]; callers need not hash it again).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        crate::jose::b64::decode(&self.wth)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
    }
}

/// Checks that `cnf.jwk` is a usable public key with an allowed `alg` (SPECS §3.2 step 8).
fn holder_key(
    cnf: &Confirmation,
    profile: WitProfile,
) -> Result<(PublicKey, Algorithm), TokenError> {
    let bad = |reason: String| TokenError::BadClaim {
        claim: "cnf",
        reason,
    };
    let name = cnf
        .jwk
        .alg
        .as_deref()
        .ok_or_else(|| bad("`cnf.jwk.alg` is missing".into()))?;
    // Algorithm::from_name refuses `none` and HS*; encryption algorithms are not members.
    let alg = Algorithm::from_name(name).map_err(|e| bad(e.to_string()))?;
    if !profile.allows(alg) {
        return Err(bad(format!(
            "`cnf.jwk.alg` `{alg}` is not allowed by the profile"
        )));
    }
    let key = PublicKey::from_jwk_with_alg(&cnf.jwk, alg).map_err(|e| bad(e.to_string()))?;
    Ok((key, alg))
}

/// Verifies a WIT against the trust bundles (see the module doc for the order of checks).
pub fn verify_wit(
    token: &str,
    bundles: &BundleSet,
    profile: WitProfile,
    validation: &Validation,
) -> Result<VerifiedWit, TokenError> {
    let hash = crate::digest::sha256(token.as_bytes());
    verify_wit_hashed(token, &hash, bundles, profile, validation)
}

/// [`verify_wit`] for a caller that already has SHA-256(`token`) (the cache key).
fn verify_wit_hashed(
    token: &str,
    hash: &[u8; 32],
    bundles: &BundleSet,
    profile: WitProfile,
    validation: &Validation,
) -> Result<VerifiedWit, TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    require_typ(header, WIT_TYP)?;
    if !profile.allows(header.alg) {
        return Err(TokenError::AlgorithmNotAllowed(
            header.alg.name().to_owned(),
        ));
    }
    if profile == WitProfile::Spiffe && header.kid.is_none() {
        return Err(TokenError::MissingKid);
    }
    // The claims are read before the signature only to learn whose trust domain's keys
    // apply; nothing in them is trusted until the signature verifies.
    let claims: WitClaims = jws.claims()?;
    if profile == WitProfile::Spiffe && !claims.sub.is_spiffe() {
        return Err(TokenError::BadClaim {
            claim: "sub",
            reason: format!("`{}` is not a SPIFFE ID", claims.sub),
        });
    }
    let key = bundles.jwt_authority(
        claims.sub.trust_domain(),
        KeyUse::WitSvid,
        header.kid.as_deref(),
    )?;
    jws.verify(key)?;
    validation.check_exp(claims.exp)?;
    validation.check_nbf(claims.nbf)?;
    validation.check_iat(claims.iat)?;
    if profile == WitProfile::Spiffe && claims.aud.is_some() {
        return Err(TokenError::ForbiddenClaim("aud"));
    }
    let (holder_key, holder_alg) = holder_key(&claims.cnf, profile)?;
    Ok(VerifiedWit {
        wth: crate::jose::b64::encode(hash),
        kid: header.kid.clone(),
        claims,
        holder_key,
        holder_alg,
    })
}

/// Signs a WIT after checking that the claims meet `profile`.
pub fn issue_wit(
    issuer: &SigningKey,
    kid: Option<&str>,
    claims: &WitClaims,
    profile: WitProfile,
) -> Result<String, TokenError> {
    if !profile.allows(issuer.algorithm()) {
        return Err(TokenError::Issue(format!(
            "issuer algorithm `{}` is not allowed by the profile",
            issuer.algorithm()
        )));
    }
    if profile == WitProfile::Spiffe {
        if kid.is_none() {
            return Err(TokenError::Issue("a WIT-SVID needs a `kid`".into()));
        }
        if !claims.sub.is_spiffe() {
            return Err(TokenError::Issue(
                "a WIT-SVID subject must be a SPIFFE ID".into(),
            ));
        }
        if claims.aud.is_some() {
            return Err(TokenError::Issue("a WIT-SVID must not carry `aud`".into()));
        }
    }
    holder_key(&claims.cnf, profile).map_err(|e| TokenError::Issue(e.to_string()))?;
    Ok(jws::sign(issuer, Some(WIT_TYP), kid, claims)?)
}

/// A bounded cache of verified WITs (see [`VerifiedCache`]).
pub type WitCache = VerifiedCache<VerifiedWit>;

impl Expiring for VerifiedWit {
    fn exp(&self) -> i64 {
        self.claims.exp
    }
}

impl VerifiedCache<VerifiedWit> {
    /// Returns the verified WIT, from the cache or by [`verify_wit`]. `generation` is that
    /// of `bundles` (see [`VerifiedCache`]).
    pub fn verify(
        &self,
        token: &str,
        bundles: &BundleSet,
        generation: u64,
        profile: WitProfile,
        validation: &Validation,
    ) -> Result<Arc<VerifiedWit>, TokenError> {
        self.get_or_verify(token, generation, validation, |hash| {
            verify_wit_hashed(token, hash, bundles, profile, validation)
        })
    }
}
