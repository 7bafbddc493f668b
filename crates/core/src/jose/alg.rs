//! JWS algorithms (RFC 7518 §3, RFC 8037) that wimse signs or verifies.
//!
//! The set is closed: `none` and every symmetric (`HS*`) algorithm are not members, so a
//! token that names them can never reach signature verification (RFC 8725 §3.1, the
//! RS→HS key-confusion class). Names compare case-sensitively (`noNE` is not `none`).

use std::fmt;

/// An asymmetric JWS signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256; the default for WIT-SVIDs.
    Es256,
    /// ECDSA with P-384 and SHA-384.
    Es384,
    /// ECDSA with P-521 and SHA-512.
    Es512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (verification only).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (verification only).
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (verification only).
    Rs512,
    /// RSASSA-PSS with SHA-256 (verification only).
    Ps256,
    /// RSASSA-PSS with SHA-384 (verification only).
    Ps384,
    /// RSASSA-PSS with SHA-512 (verification only).
    Ps512,
    /// Ed25519 (RFC 8037 `EdDSA`); allowed by the generic WIMSE profile, not by SPIFFE.
    EdDsa,
}

/// Why an `alg` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    /// The unsecured `none` algorithm, refused everywhere (RFC 8725 §3.2).
    #[error("algorithm `none` is never accepted")]
    None,
    /// A symmetric MAC algorithm; a public key must never be used as an HMAC secret.
    #[error("symmetric algorithm `{0}` is never accepted")]
    Symmetric(String),
    /// Any other name, including case variants of known names.
    #[error("unsupported algorithm `{0}`")]
    Unsupported(String),
}

impl Algorithm {
    /// Every algorithm the SPIFFE JWT-SVID and WIT-SVID standards allow (`EdDSA` is not one).
    pub const SPIFFE: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
    ];

    /// Parses an `alg` value exactly (case-sensitive).
    pub fn from_name(name: &str) -> Result<Self, AlgorithmError> {
        Ok(match name {
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "EdDSA" => Self::EdDsa,
            "none" => return Err(AlgorithmError::None),
            n if n.eq_ignore_ascii_case("none") => {
                return Err(AlgorithmError::Unsupported(n.to_owned()));
            }
            n if n.starts_with("HS") => return Err(AlgorithmError::Symmetric(n.to_owned())),
            n => return Err(AlgorithmError::Unsupported(n.to_owned())),
        })
    }

    /// The registered JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Whether the SPIFFE standards (JWT-SVID, WIT-SVID) allow this algorithm.
    pub fn is_spiffe(self) -> bool {
        Self::SPIFFE.contains(&self)
    }

    /// Whether this is one of the RSA algorithms (PKCS#1 v1.5 or PSS).
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_name(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for alg in Algorithm::SPIFFE.iter().chain([Algorithm::EdDsa].iter()) {
            assert_eq!(Algorithm::from_name(alg.name()).unwrap(), *alg);
        }
    }

    #[test]
    fn none_is_refused_in_every_spelling() {
        assert_eq!(Algorithm::from_name("none"), Err(AlgorithmError::None));
        assert!(matches!(
            Algorithm::from_name("noNE"),
            Err(AlgorithmError::Unsupported(_))
        ));
        assert!(matches!(
            Algorithm::from_name("NONE"),
            Err(AlgorithmError::Unsupported(_))
        ));
    }

    #[test]
    fn hmac_is_refused() {
        for name in ["HS256", "HS384", "HS512"] {
            assert!(matches!(
                Algorithm::from_name(name),
                Err(AlgorithmError::Symmetric(_))
            ));
        }
    }

    #[test]
    fn names_are_case_sensitive() {
        assert!(Algorithm::from_name("es256").is_err());
        assert!(Algorithm::from_name("EDDSA").is_err());
        assert!(Algorithm::from_name("Ed25519").is_err());
    }

    #[test]
    fn eddsa_is_not_a_spiffe_algorithm() {
        assert!(!Algorithm::EdDsa.is_spiffe());
        assert!(Algorithm::Es256.is_spiffe());
    }
}
