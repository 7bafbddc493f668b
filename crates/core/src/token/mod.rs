//! The token kinds wimse issues and accepts, each parsed and verified in exactly one place:
//!
//! | kind | `typ` | module |
//! | --- | --- | --- |
//! | Workload Identity Token | `wit+jwt` | [`wit`] |
//! | Workload Proof Token | `wpt+jwt` | [`wpt`] |
//! | JWT-SVID | `JWT`/`JOSE`/absent | [`jwt_svid`] |
//! | Transaction Token | `txntoken+jwt` | [`txn`] |
//! | OAuth access token (from a trusted outside issuer) | `at+jwt`/`JWT`/absent | [`access`] |
//! | OAuth access token (our own, for a chained grant) | `at+jwt` | [`chain`], [`access`] |
//! | JWT authorization grant (identity chaining) | `authorization-grant+jwt` | [`chain`] |
//! | Delegation of a transaction (asynchronous work) | `delegation+jwt` | [`delegation`] |
//! | Self-signed subject token | `JWT`/absent | [`self_signed`] |
//! | Unsigned subject token (base64url JSON, no signature) | — | [`unsigned`] |
//!
//! Every verifier checks `typ` first, so one kind can never pass as another (cross-JWT
//! confusion, RFC 8725 §3.11), then finds the key only in the bundle of the trust domain
//! the token speaks for, verifies the signature, and only then trusts any claim.
//! All times are Unix seconds; verifiers take the current time in [`Validation`] and
//! never read the clock themselves.

pub mod access;
pub mod cache;
pub mod chain;
pub mod delegation;
pub mod exchange;
pub mod jwt_svid;
pub mod replay;
pub mod self_signed;
pub mod txn;
pub mod unsigned;
pub mod wit;
pub mod wpt;

use crate::bundle::BundleError;
use crate::id::IdError;
use crate::jose::JwsError;
use serde::{Deserialize, Deserializer, Serialize};

/// The time and tolerances a verification runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validation {
    /// Now, in Unix seconds.
    pub now: i64,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds (default 60, as go-spiffe).
    pub leeway: i64,
    /// How far in the future a proof (WPT) may expire, in seconds (default 300).
    pub max_proof_lifetime: i64,
}

impl Validation {
    /// Defaults at time `now`.
    pub fn at(now: i64) -> Self {
        Validation {
            now,
            leeway: 60,
            max_proof_lifetime: 300,
        }
    }

    /// At time `now` with no clock-skew allowance: for the issuer's own tokens, which are
    /// never carried on once expired.
    pub fn strict_at(now: i64) -> Self {
        Validation {
            leeway: 0,
            ..Self::at(now)
        }
    }

    /// Defaults at the system clock's current time.
    pub fn now() -> Self {
        Self::at(unix_now())
    }

    /// Refuses an `exp` that has passed (with leeway).
    pub fn check_exp(&self, exp: i64) -> Result<(), TokenError> {
        if exp.saturating_add(self.leeway) <= self.now {
            return Err(TokenError::Expired { exp, now: self.now });
        }
        Ok(())
    }

    /// Refuses an `nbf` still in the future (with leeway).
    pub fn check_nbf(&self, nbf: Option<i64>) -> Result<(), TokenError> {
        match nbf {
            Some(nbf) if nbf > self.now.saturating_add(self.leeway) => {
                Err(TokenError::NotYetValid { nbf, now: self.now })
            }
            _ => Ok(()),
        }
    }

    /// Refuses an `exp` further ahead than `max` seconds (with leeway, for the issuer's
    /// clock): for tokens made just before they are sent, whatever they claim.
    pub fn check_lifetime(&self, exp: i64, max: i64) -> Result<(), TokenError> {
        if exp > self.now.saturating_add(max).saturating_add(self.leeway) {
            return Err(TokenError::LifetimeTooLong {
                exp,
                now: self.now,
                max,
            });
        }
        Ok(())
    }

    /// Refuses an `iat` in the future (with leeway).
    pub fn check_iat(&self, iat: Option<i64>) -> Result<(), TokenError> {
        match iat {
            Some(iat) if iat > self.now.saturating_add(self.leeway) => {
                Err(TokenError::IssuedInFuture { iat, now: self.now })
            }
            _ => Ok(()),
        }
    }
}

/// The system clock in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The JWS itself is malformed, uses a refused algorithm or header, or fails its signature.
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// `typ` is not the one this token kind requires.
    #[error("token `typ` is `{found}`, expected `{expected}`")]
    WrongType {
        /// The required type.
        expected: &'static str,
        /// What the token had (empty if none).
        found: String,
    },
    /// The issuer's keys held here include none the token names (keys named by URL may
    /// have rotated since they were fetched).
    #[error("token claim `kid` is invalid: {reason}")]
    UnknownKey {
        /// Which key of which issuer.
        reason: String,
    },
    /// The header has `kid` missing where the profile requires it.
    #[error("token header lacks `kid`")]
    MissingKid,
    /// The header has a parameter this token kind does not allow.
    #[error("token header parameter `{0}` is not allowed for this token kind")]
    HeaderNotAllowed(String),
    /// The algorithm is valid JOSE but not allowed by this token kind's profile.
    #[error("algorithm `{0}` is not allowed for this token kind")]
    AlgorithmNotAllowed(String),
    /// The subject is not a valid workload identifier.
    #[error("token subject is invalid: {0}")]
    Subject(IdError),
    /// The signing key could not be found in the trust domain's bundle.
    #[error(transparent)]
    Key(#[from] BundleError),
    /// A required claim is absent.
    #[error("token lacks required claim `{0}`")]
    MissingClaim(&'static str),
    /// A claim has a value this profile refuses.
    #[error("token claim `{claim}` is invalid: {reason}")]
    BadClaim {
        /// The claim.
        claim: &'static str,
        /// Why.
        reason: String,
    },
    /// A claim that must not be present is present.
    #[error("token has claim `{0}`, which this token kind must not carry")]
    ForbiddenClaim(&'static str),
    /// `exp` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The verifier's time.
        now: i64,
    },
    /// `nbf` is in the future.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The verifier's time.
        now: i64,
    },
    /// `iat` is in the future.
    #[error("token issued in the future at {iat} (now {now})")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: i64,
        /// The verifier's time.
        now: i64,
    },
    /// A proof's `exp` is further ahead than proofs may live.
    #[error("proof expires at {exp}, more than {max} s after now ({now})")]
    LifetimeTooLong {
        /// The proof's `exp`.
        exp: i64,
        /// The verifier's time.
        now: i64,
        /// The largest lifetime accepted.
        max: i64,
    },
    /// The audience does not name this verifier.
    #[error("token audience `{found}` does not match `{expected}`")]
    WrongAudience {
        /// What the verifier is.
        expected: String,
        /// What the token names.
        found: String,
    },
    /// The proof is bound to a different WIT (`wth`) or other token (`ath`, `tth`, `oth`).
    #[error("proof is not bound to the request's `{0}`")]
    BindingMismatch(String),
    /// The proof's `jti` was already used.
    #[error("proof `jti` was already used (replay)")]
    Replay,
    /// The replay cache is full of unexpired entries; refuse rather than forget one.
    #[error("replay cache is full; proof refused")]
    ReplayCacheFull,
    /// Issuing a token failed because the inputs break the profile.
    #[error("cannot issue token: {0}")]
    Issue(String),
}

/// A JSON value that is either one string or an array of strings (`aud`, RFC 7519 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Every audience value.
    pub fn values(&self) -> &[String] {
        match self {
            Audience::One(a) => std::slice::from_ref(a),
            Audience::Many(v) => v,
        }
    }

    /// Whether `audience` is one of the values.
    pub fn contains(&self, audience: &str) -> bool {
        self.values().iter().any(|a| a == audience)
    }
}

/// Deserializes a `NumericDate` (RFC 7519 §2): an integer, or a finite non-integer that is
/// floored; anything else is refused.
pub(crate) fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation, reason = "range checked just above")]
        Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(f.floor() as i64),
        _ => Err(serde::de::Error::custom("NumericDate out of range")),
    }
}

/// [`numeric_date`] for an optional claim.
pub(crate) fn opt_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "numeric_date")] i64);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// Refuses a token whose `typ` is not `application/<expected>`.
pub(crate) fn require_typ(
    header: &crate::jose::Header,
    expected: &'static str,
) -> Result<(), TokenError> {
    if header.typ_is(expected) {
        Ok(())
    } else {
        Err(TokenError::WrongType {
            expected,
            found: header.typ.clone().unwrap_or_default(),
        })
    }
}

/// The normal form of an `http(s)` target URI used as an audience (a WPT's `aud`, a
/// message signature's `wimse-aud`): scheme and host lowercased, the scheme's default
/// port dropped, an empty path made `/` (RFC 9110 §4.2.3). `None` for anything else
/// (other schemes, user info, no authority), which is then compared only as written.
pub fn normal_target_uri(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    let path = if path.is_empty() { "/" } else { path };
    Some(format!("{scheme}://{authority}{path}"))
}

/// Whether a received audience names `expected`, the target URI this service is: the same
/// text, or the same in [`normal_target_uri`] form (the drafts accept "an acceptable alias
/// or normalization").
pub fn same_audience(received: &str, expected: &str) -> bool {
    received == expected
        || normal_target_uri(received).is_some_and(|r| Some(r) == normal_target_uri(expected))
}

/// 128 random bits, base64url: a fresh `jti`.
pub fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not recoverable for a token issuer; an all-zero jti would
    // be caught as a replay by any verifier, so this fails closed.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    crate::jose::b64::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_respects_leeway() {
        let v = Validation::at(1000);
        assert!(v.check_exp(1001).is_ok());
        assert!(v.check_exp(950).is_ok());
        assert!(v.check_exp(940).is_err());
    }

    #[test]
    fn not_before_respects_leeway() {
        let v = Validation::at(1000);
        assert!(v.check_nbf(Some(1060)).is_ok());
        assert!(v.check_nbf(Some(1061)).is_err());
        assert!(v.check_nbf(None).is_ok());
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let v = Validation::at(i64::MAX - 100);
        assert!(v.check_exp(i64::MAX).is_ok());
        let v = Validation::at(i64::MIN);
        assert!(v.check_nbf(Some(i64::MAX)).is_err());
    }

    #[test]
    fn numeric_date_accepts_fractions_and_refuses_strings() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "numeric_date")]
            exp: i64,
        }
        assert_eq!(
            serde_json::from_str::<T>(r#"{"exp":12.9}"#).unwrap().exp,
            12
        );
        assert!(serde_json::from_str::<T>(r#"{"exp":"12"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"exp":1e300}"#).is_err());
    }

    #[test]
    fn audiences_match_as_written_or_in_normal_form() {
        let expected = "https://svc.test/api/orders";
        for same in [
            expected,
            "https://svc.test:443/api/orders",
            "HTTPS://SVC.Test/api/orders",
        ] {
            assert!(same_audience(same, expected), "{same}");
        }
        for other in [
            "https://svc.test/API/orders",
            "https://svc.test:8443/api/orders",
            "http://svc.test/api/orders",
            "https://svc.test.evil/api/orders",
            "https://user@svc.test/api/orders",
            "https://svc.test/api/orders/",
        ] {
            assert!(!same_audience(other, expected), "{other}");
        }
        assert!(same_audience("http://a:80", "http://a/"));
        assert_eq!(normal_target_uri("spiffe://td/x"), None);
        assert_eq!(
            normal_target_uri("http://[::1]:80/p").as_deref(),
            Some("http://[::1]/p")
        );
    }

    #[test]
    fn jti_is_random() {
        assert_ne!(random_jti(), random_jti());
        assert_eq!(random_jti().len(), 22);
    }
}
