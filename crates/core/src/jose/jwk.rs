//! JSON Web Keys (RFC 7517) and their RFC 7638 thumbprints.
//!
//! A [`Jwk`] here is always a *public* key description: parsing refuses any private
//! member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`), so a private key can never ride
//! in through a bundle or a `cnf` claim and nothing that holds a `Jwk` can leak one.
//! Coordinates are kept decoded; their base64url spelling was checked to be canonical.
//! Turning a `Jwk` into something that verifies is [`crate::jose::PublicKey::from_jwk`].

use super::b64;
use serde::{Deserialize, Serialize};

/// The key material of a public JWK, by key type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyParams {
    /// `kty` `EC`: a point on a named curve.
    Ec {
        /// `crv`, e.g. `P-256`.
        crv: String,
        /// `x` coordinate, big-endian.
        x: Vec<u8>,
        /// `y` coordinate, big-endian.
        y: Vec<u8>,
    },
    /// `kty` `OKP` (RFC 8037): an octet key pair such as Ed25519.
    Okp {
        /// `crv`, e.g. `Ed25519`.
        crv: String,
        /// The public key bytes.
        x: Vec<u8>,
    },
    /// `kty` `RSA`.
    Rsa {
        /// Modulus, big-endian.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
    /// A key type this crate does not use; kept so that a bundle can skip it (SPIFFE bundle §4.2).
    Unknown {
        /// The `kty` value.
        kty: String,
    },
}

/// A public JSON Web Key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJwk", into = "RawJwk")]
pub struct Jwk {
    /// The key material.
    pub params: KeyParams,
    /// `alg`, if the key names the one algorithm it is for.
    pub alg: Option<String>,
    /// `kid`, an opaque, case-sensitive key identifier.
    pub kid: Option<String>,
    /// `use`, e.g. `x509-svid`, `jwt-svid`, `wit-svid` in a SPIFFE bundle.
    pub key_use: Option<String>,
    /// `x5c`, base64 (standard alphabet, padded) DER certificates.
    pub x5c: Vec<String>,
}

/// Why a JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// The JWK carries private key material where only a public key belongs.
    #[error("jwk contains private key member `{0}`")]
    PrivateMember(&'static str),
    /// A member the key type requires is absent.
    #[error("jwk of type `{kty}` lacks member `{member}`")]
    Missing {
        /// The key type.
        kty: String,
        /// The absent member.
        member: &'static str,
    },
    /// A member is not canonical unpadded base64url.
    #[error("jwk member `{0}` is not canonical base64url")]
    Base64(&'static str),
}

/// The wire form, used only to parse and print.
#[derive(Serialize, Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x5c: Vec<String>,
    // Private members: only their presence matters, and their values are never kept.
    #[serde(default, skip_serializing)]
    d: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    p: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    q: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    dp: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    dq: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    qi: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    oth: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    k: Option<serde::de::IgnoredAny>,
}

fn member(kty: &str, name: &'static str, value: Option<&String>) -> Result<Vec<u8>, JwkError> {
    let text = value.ok_or_else(|| JwkError::Missing {
        kty: kty.to_owned(),
        member: name,
    })?;
    b64::decode(text).map_err(|_| JwkError::Base64(name))
}

impl TryFrom<RawJwk> for Jwk {
    type Error = JwkError;

    fn try_from(raw: RawJwk) -> Result<Self, JwkError> {
        let private = [
            ("d", raw.d.is_some()),
            ("p", raw.p.is_some()),
            ("q", raw.q.is_some()),
            ("dp", raw.dp.is_some()),
            ("dq", raw.dq.is_some()),
            ("qi", raw.qi.is_some()),
            ("oth", raw.oth.is_some()),
            ("k", raw.k.is_some()),
        ];
        if let Some((name, _)) = private.iter().find(|(_, present)| *present) {
            return Err(JwkError::PrivateMember(name));
        }
        let kty = raw.kty.as_str();
        let params = match kty {
            "EC" => KeyParams::Ec {
                crv: raw.crv.clone().ok_or_else(|| JwkError::Missing {
                    kty: kty.to_owned(),
                    member: "crv",
                })?,
                x: member(kty, "x", raw.x.as_ref())?,
                y: member(kty, "y", raw.y.as_ref())?,
            },
            "OKP" => KeyParams::Okp {
                crv: raw.crv.clone().ok_or_else(|| JwkError::Missing {
                    kty: kty.to_owned(),
                    member: "crv",
                })?,
                x: member(kty, "x", raw.x.as_ref())?,
            },
            "RSA" => KeyParams::Rsa {
                n: member(kty, "n", raw.n.as_ref())?,
                e: member(kty, "e", raw.e.as_ref())?,
            },
            other => KeyParams::Unknown {
                kty: other.to_owned(),
            },
        };
        Ok(Jwk {
            params,
            alg: raw.alg,
            kid: raw.kid,
            key_use: raw.key_use,
            x5c: raw.x5c,
        })
    }
}

impl From<Jwk> for RawJwk {
    fn from(jwk: Jwk) -> Self {
        let mut raw = RawJwk {
            kty: jwk.kty().to_owned(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            alg: jwk.alg,
            kid: jwk.kid,
            key_use: jwk.key_use,
            x5c: jwk.x5c,
            d: None,
            p: None,
            q: None,
            dp: None,
            dq: None,
            qi: None,
            oth: None,
            k: None,
        };
        match jwk.params {
            KeyParams::Ec { crv, x, y } => {
                raw.crv = Some(crv);
                raw.x = Some(b64::encode(x));
                raw.y = Some(b64::encode(y));
            }
            KeyParams::Okp { crv, x } => {
                raw.crv = Some(crv);
                raw.x = Some(b64::encode(x));
            }
            KeyParams::Rsa { n, e } => {
                raw.n = Some(b64::encode(n));
                raw.e = Some(b64::encode(e));
            }
            KeyParams::Unknown { .. } => {}
        }
        raw
    }
}

impl Jwk {
    /// A JWK with only key material set.
    pub fn new(params: KeyParams) -> Self {
        Jwk {
            params,
            alg: None,
            kid: None,
            key_use: None,
            x5c: Vec::new(),
        }
    }

    /// The `kty` value.
    pub fn kty(&self) -> &str {
        match &self.params {
            KeyParams::Ec { .. } => "EC",
            KeyParams::Okp { .. } => "OKP",
            KeyParams::Rsa { .. } => "RSA",
            KeyParams::Unknown { kty } => kty,
        }
    }

    /// The RFC 7638 SHA-256 thumbprint, base64url. `None` for unknown key types.
    pub fn thumbprint(&self) -> Option<String> {
        // RFC 7638 §3.2: only the required members, lexicographic order, no whitespace.
        // Every value is base64url or a registered name, so none needs JSON escaping
        // except `crv`, which is escaped by serde_json to stay canonical.
        let text = match &self.params {
            KeyParams::Ec { crv, x, y } => format!(
                r#"{{"crv":{},"kty":"EC","x":"{}","y":"{}"}}"#,
                serde_json::Value::from(crv.as_str()),
                b64::encode(x),
                b64::encode(y)
            ),
            KeyParams::Okp { crv, x } => format!(
                r#"{{"crv":{},"kty":"OKP","x":"{}"}}"#,
                serde_json::Value::from(crv.as_str()),
                b64::encode(x)
            ),
            KeyParams::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64::encode(e),
                b64::encode(n)
            ),
            KeyParams::Unknown { .. } => return None,
        };
        Some(b64::encode(crate::digest::sha256(text.as_bytes())))
    }

    /// The same key without `kid`, `use`, `x5c` (what goes into a `cnf` claim).
    #[must_use]
    pub fn bare(&self) -> Jwk {
        Jwk {
            params: self.params.clone(),
            alg: self.alg.clone(),
            kid: None,
            key_use: None,
            x5c: Vec::new(),
        }
    }
}

/// A JWK Set (RFC 7517 §5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint().unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn private_members_are_refused() {
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            let text = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"AAAA","{member}":"AAAA"}}"#);
            let err = serde_json::from_str::<Jwk>(&text).unwrap_err();
            assert!(
                err.to_string().contains("private key member"),
                "{member}: {err}"
            );
        }
    }

    #[test]
    fn missing_coordinate_is_refused() {
        let err =
            serde_json::from_str::<Jwk>(r#"{"kty":"EC","crv":"P-256","x":"AAAA"}"#).unwrap_err();
        assert!(err.to_string().contains("lacks member `y`"));
    }

    #[test]
    fn padded_coordinate_is_refused() {
        assert!(
            serde_json::from_str::<Jwk>(r#"{"kty":"OKP","crv":"Ed25519","x":"AA=="}"#).is_err()
        );
    }

    #[test]
    fn unknown_key_type_is_kept_for_skipping() {
        let jwk: Jwk = serde_json::from_str(r#"{"kty":"oct2","use":"x"}"#).unwrap();
        assert_eq!(jwk.kty(), "oct2");
        assert!(jwk.thumbprint().is_none());
    }

    #[test]
    fn serialization_round_trips() {
        let text = r#"{"kty":"EC","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo","kid":"June 5","use":"wit-svid"}"#;
        let jwk: Jwk = serde_json::from_str(text).unwrap();
        let again: Jwk = serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
        assert_eq!(jwk, again);
        assert_eq!(again.kid.as_deref(), Some("June 5"));
    }
}
