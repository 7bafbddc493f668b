//! Workload Proof Tokens (draft-ietf-wimse-wpt): a short-lived JWT, signed with the key
//! in the WIT's `cnf`, that binds one request to the WIT and to any other token it carries.
//!
//! [`verify_wpt`] runs the draft's validation list in order: `typ` `wpt+jwt`; `alg`
//! string-equal to the WIT's `cnf.jwk.alg`; the signature with the WIT's holder key;
//! `aud` equal to the target URI the verifier expects (from its own configuration, never
//! from `Host`); `exp` not passed and not too far ahead; `wth` equal to the WIT's hash;
//! `ath`/`tth`/`oth` present and equal exactly when the request carries those tokens (and
//! refused when it does not: a proof made for other tokens belongs to another request);
//! and `jti` not seen before from this sender.

use super::replay::{ReplayCache, ReplayError};
use super::wit::VerifiedWit;
use super::{TokenError, Validation, require_typ};
use crate::digest::sha256_b64;
use crate::jose::{Jws, SigningKey, jws};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `typ` of a WPT.
pub const WPT_TYP: &str = "wpt+jwt";

/// The claims of a WPT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WptClaims {
    /// The target URI without query and fragment.
    pub aud: String,
    /// Expiry (seconds to minutes ahead).
    #[serde(deserialize_with = "super::numeric_date")]
    pub exp: i64,
    /// A unique ID for replay detection.
    pub jti: String,
    /// base64url(SHA-256(WIT)).
    pub wth: String,
    /// base64url(SHA-256(access token)), when the request carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
    /// base64url(SHA-256(Txn-Token)), when the request carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tth: Option<String>,
    /// Lower-cased header name → base64url(SHA-256(trimmed value)) for other tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oth: Option<BTreeMap<String, String>>,
}

/// What in the request a proof is bound to.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestBinding<'a> {
    /// The audience: the target URI without query and fragment, as configured for the
    /// service (never taken from `Host` or `X-Forwarded-Host`).
    pub audience: &'a str,
    /// The OAuth access token in `Authorization`, if any.
    pub access_token: Option<&'a str>,
    /// The `Txn-Token` header value, if any.
    pub txn_token: Option<&'a str>,
    /// Other context tokens as (header name, value).
    pub other_tokens: &'a [(&'a str, &'a str)],
}

/// A verified proof.
#[derive(Clone, Debug)]
pub struct VerifiedWpt {
    /// The claims.
    pub claims: WptClaims,
}

/// The audience of a request: its target URI without query or fragment (WPT §`aud`).
pub fn audience_of(target_uri: &str) -> &str {
    let end = target_uri.find(['?', '#']).unwrap_or(target_uri.len());
    target_uri.get(..end).unwrap_or(target_uri)
}

fn other_hashes(tokens: &[(&str, &str)]) -> BTreeMap<String, String> {
    tokens
        .iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                sha256_b64(value.trim().as_bytes()),
            )
        })
        .collect()
}

/// Signs a proof for one request with the WIT holder's key.
pub fn issue_wpt(
    holder: &SigningKey,
    wit: &str,
    binding: &RequestBinding<'_>,
    now: i64,
    lifetime: i64,
) -> Result<String, TokenError> {
    let claims = WptClaims {
        aud: audience_of(binding.audience).to_owned(),
        exp: now.saturating_add(lifetime),
        jti: super::random_jti(),
        wth: sha256_b64(wit.as_bytes()),
        ath: binding.access_token.map(|t| sha256_b64(t.as_bytes())),
        tth: binding.txn_token.map(|t| sha256_b64(t.as_bytes())),
        oth: (!binding.other_tokens.is_empty()).then(|| other_hashes(binding.other_tokens)),
    };
    Ok(jws::sign(holder, Some(WPT_TYP), None, &claims)?)
}

/// Compares a bound hash claim with the token the request carries.
fn check_bound(
    claim: &'static str,
    bound: Option<&String>,
    token: Option<&str>,
) -> Result<(), TokenError> {
    match (bound, token) {
        (None, None) => Ok(()),
        (Some(hash), Some(token)) if *hash == sha256_b64(token.as_bytes()) => Ok(()),
        (None, Some(_)) => Err(TokenError::MissingClaim(claim)),
        _ => Err(TokenError::BindingMismatch(claim.to_owned())),
    }
}

/// Verifies a WPT for a request presenting `wit` (see the module doc for the order).
pub fn verify_wpt(
    token: &str,
    wit: &VerifiedWit,
    binding: &RequestBinding<'_>,
    validation: &Validation,
    replay: &ReplayCache,
) -> Result<VerifiedWpt, TokenError> {
    let jws = Jws::parse(token)?;
    let header = jws.header();
    require_typ(header, WPT_TYP)?;
    // The proof's alg must be exactly the one the WIT bound the key to.
    if header.alg != wit.holder_alg {
        return Err(TokenError::AlgorithmNotAllowed(
            header.alg.name().to_owned(),
        ));
    }
    jws.verify(&wit.holder_key)?;
    let claims: WptClaims = jws.claims()?;
    if !super::same_audience(&claims.aud, binding.audience) {
        return Err(TokenError::WrongAudience {
            expected: binding.audience.to_owned(),
            found: claims.aud,
        });
    }
    validation.check_exp(claims.exp)?;
    validation.check_lifetime(claims.exp, validation.max_proof_lifetime)?;
    if claims.wth != wit.wth {
        return Err(TokenError::BindingMismatch("wth".into()));
    }
    check_bound("ath", claims.ath.as_ref(), binding.access_token)?;
    check_bound("tth", claims.tth.as_ref(), binding.txn_token)?;
    match (&claims.oth, binding.other_tokens) {
        (None, []) => {}
        (None, _) => return Err(TokenError::MissingClaim("oth")),
        // Every entry must name a token in the request and match it; entries we cannot
        // match are refused (draft: `oth` entries not understood → reject).
        (Some(oth), tokens) if *oth == other_hashes(tokens) => {}
        (Some(_), _) => return Err(TokenError::BindingMismatch("oth".into())),
    }
    if claims.jti.is_empty() {
        return Err(TokenError::BadClaim {
            claim: "jti",
            reason: "empty".into(),
        });
    }
    replay
        .check_and_insert(
            wit.claims.sub.as_str(),
            &claims.jti,
            claims.exp.saturating_add(validation.leeway),
            validation.now,
        )
        .map_err(|e| match e {
            ReplayError::Replayed => TokenError::Replay,
            ReplayError::Full => TokenError::ReplayCacheFull,
        })?;
    Ok(VerifiedWpt { claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_drops_query_and_fragment() {
        assert_eq!(
            audience_of("https://a.example/p?q=1"),
            "https://a.example/p"
        );
        assert_eq!(audience_of("https://a.example/p#f"), "https://a.example/p");
        assert_eq!(audience_of("https://a.example/p"), "https://a.example/p");
    }
}
