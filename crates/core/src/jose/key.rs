//! Signing keys and verification keys, over aws-lc-rs.
//!
//! A [`PublicKey`] is bound to its algorithm when it is made: an EC key to the one ECDSA
//! algorithm of its curve, an Ed25519 key to `EdDSA`, an RSA key to its JWK `alg` (or,
//! when a bundle leaves `alg` out, to the RSA family only). Verification with any other
//! algorithm fails before any cryptography runs (RFC 8725 §3.1, one key ↔ one algorithm).
//! EC points are parsed and checked to be on the curve once, when the key is made; ECDSA
//! signatures must be the fixed-length `r‖s` form with `0 < r, s < n` (JWS §3.4, the
//! "psychic signature" class), and Ed25519 verification refuses non-canonical `S`.
//!
//! A [`SigningKey`] holds a private key. It never prints its secret: `Debug` shows the
//! algorithm and thumbprint only, and PKCS#8 exports are wiped from memory on drop.

use super::alg::Algorithm;
use super::b64;
use super::jwk::{Jwk, KeyParams};
use aws_lc_rs::signature::{self as sig, KeyPair, ParsedPublicKey, UnparsedPublicKey};
use std::fmt;
use zeroize::Zeroizing;

/// Why a key could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The JWK's key type or curve is not one this crate verifies.
    #[error("unsupported key type `{kty}` with curve `{crv}`")]
    UnsupportedKey {
        /// `kty`.
        kty: String,
        /// `crv`, or empty.
        crv: String,
    },
    /// The JWK's `alg` names an algorithm that does not fit its key type.
    #[error("algorithm `{alg}` does not fit a `{kty}` key")]
    AlgorithmMismatch {
        /// The requested algorithm.
        alg: String,
        /// The key type.
        kty: String,
    },
    /// The JWK's `alg` is not an accepted algorithm.
    #[error(transparent)]
    Algorithm(#[from] super::alg::AlgorithmError),
    /// The key material is malformed (bad length, point not on the curve, short RSA modulus).
    #[error("malformed {0} key")]
    Malformed(&'static str),
    /// The signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// This crate cannot sign with this algorithm (RSA is verify-only).
    #[error("signing with `{0}` is not supported")]
    CannotSign(Algorithm),
    /// A private key could not be read.
    #[error("private key rejected: {0}")]
    PrivateKey(&'static str),
    /// The system's random generator or signer failed.
    #[error("signing failed")]
    Signing,
}

/// How a public key verifies.
#[derive(Clone)]
enum Verifier {
    /// EC and Ed25519 keys, parsed once.
    Parsed(ParsedPublicKey),
    /// RSA keys as a PKCS#1 `RSAPublicKey` DER, parsed per use (RSA is for interop only).
    Rsa(Vec<u8>),
}

/// A public key bound to the algorithm(s) it may verify.
#[derive(Clone)]
pub struct PublicKey {
    jwk: Jwk,
    /// `None` only for an RSA key whose JWK had no `alg`: then any RSA algorithm.
    alg: Option<Algorithm>,
    verifier: Verifier,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("kid", &self.jwk.kid)
            .field("thumbprint", &self.jwk.thumbprint())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg && self.jwk.params == other.jwk.params
    }
}

fn ec_algorithm(crv: &str) -> Option<(Algorithm, usize)> {
    match crv {
        "P-256" => Some((Algorithm::Es256, 32)),
        "P-384" => Some((Algorithm::Es384, 48)),
        "P-521" => Some((Algorithm::Es512, 66)),
        _ => None,
    }
}

fn verification_algorithm(alg: Algorithm) -> &'static dyn sig::VerificationAlgorithm {
    match alg {
        Algorithm::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::Es512 => &sig::ECDSA_P521_SHA512_FIXED,
        Algorithm::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::EdDsa => &sig::ED25519,
    }
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    crate::der::unsigned_integer_pair(n, e)
}

impl PublicKey {
    /// Makes a verification key from a public JWK, binding it to the JWK's `alg` if set,
    /// else to the only algorithm its curve allows.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let alg = jwk.alg.as_deref().map(Algorithm::from_name).transpose()?;
        Self::build(jwk, alg)
    }

    /// Makes a verification key that must verify with exactly `alg`.
    pub fn from_jwk_with_alg(jwk: &Jwk, alg: Algorithm) -> Result<Self, KeyError> {
        if let Some(named) = jwk.alg.as_deref()
            && Algorithm::from_name(named)? != alg
        {
            return Err(KeyError::AlgorithmMismatch {
                alg: alg.name().to_owned(),
                kty: jwk.kty().to_owned(),
            });
        }
        Self::build(jwk, Some(alg))
    }

    fn build(jwk: &Jwk, alg: Option<Algorithm>) -> Result<Self, KeyError> {
        let mismatch = |alg: Algorithm| KeyError::AlgorithmMismatch {
            alg: alg.name().to_owned(),
            kty: jwk.kty().to_owned(),
        };
        let (alg, verifier) = match &jwk.params {
            KeyParams::Ec { crv, x, y } => {
                let (curve_alg, len) =
                    ec_algorithm(crv).ok_or_else(|| KeyError::UnsupportedKey {
                        kty: "EC".into(),
                        crv: crv.clone(),
                    })?;
                if let Some(alg) = alg.filter(|a| *a != curve_alg) {
                    return Err(mismatch(alg));
                }
                if x.len() != len || y.len() != len {
                    return Err(KeyError::Malformed("EC"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                // Parsing checks that the point is on the curve (invalid-curve attacks).
                let parsed = ParsedPublicKey::new(verification_algorithm(curve_alg), point)
                    .map_err(|_| KeyError::Malformed("EC"))?;
                (Some(curve_alg), Verifier::Parsed(parsed))
            }
            KeyParams::Okp { crv, x } => {
                if crv != "Ed25519" {
                    return Err(KeyError::UnsupportedKey {
                        kty: "OKP".into(),
                        crv: crv.clone(),
                    });
                }
                if let Some(alg) = alg.filter(|a| *a != Algorithm::EdDsa) {
                    return Err(mismatch(alg));
                }
                if x.len() != 32 {
                    return Err(KeyError::Malformed("Ed25519"));
                }
                let parsed = ParsedPublicKey::new(&sig::ED25519, x)
                    .map_err(|_| KeyError::Malformed("Ed25519"))?;
                (Some(Algorithm::EdDsa), Verifier::Parsed(parsed))
            }
            KeyParams::Rsa { n, e } => {
                if let Some(alg) = alg.filter(|a| !a.is_rsa()) {
                    return Err(mismatch(alg));
                }
                // aws-lc-rs checks the modulus size only when verifying; refuse a key
                // outside 2048..=8192 bits now, so that a bad bundle entry fails loudly.
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if !(2048..=8192).contains(&bits) {
                    return Err(KeyError::Malformed("RSA"));
                }
                let der = rsa_public_key_der(n, e);
                UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, &der)
                    .parse()
                    .map_err(|_| KeyError::Malformed("RSA"))?;
                (alg, Verifier::Rsa(der))
            }
            KeyParams::Unknown { kty } => {
                return Err(KeyError::UnsupportedKey {
                    kty: kty.clone(),
                    crv: String::new(),
                });
            }
        };
        let mut jwk = jwk.clone();
        if jwk.alg.is_none() {
            jwk.alg = alg.map(|a| a.name().to_owned());
        }
        Ok(PublicKey { jwk, alg, verifier })
    }

    /// The algorithm this key verifies, if it is bound to exactly one.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.alg
    }

    /// Whether this key may verify a signature made with `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        match self.alg {
            Some(bound) => bound == alg,
            None => alg.is_rsa(),
        }
    }

    /// The key as a JWK (with `alg` filled in when the key is bound to one algorithm).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Verifies `signature` over `message` with `alg`, which the key must allow.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        if !self.allows(alg) {
            return Err(KeyError::AlgorithmMismatch {
                alg: alg.name().to_owned(),
                kty: self.jwk.kty().to_owned(),
            });
        }
        let result = match &self.verifier {
            Verifier::Parsed(key) => key.verify_sig(message, signature),
            Verifier::Rsa(der) => {
                UnparsedPublicKey::new(verification_algorithm(alg), der).verify(message, signature)
            }
        };
        result.map_err(|_| KeyError::BadSignature)
    }
}

/// The private half of a key pair.
enum Pair {
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

/// A private signing key (`ES256`, `ES384`, `ES512` or `EdDSA`) and its public key.
pub struct SigningKey {
    alg: Algorithm,
    pair: Pair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key: the algorithm and public thumbprint identify it enough.
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.public.jwk.thumbprint())
            .finish_non_exhaustive()
    }
}

fn ecdsa_signing(alg: Algorithm) -> Option<&'static sig::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::Es256 => Some(&sig::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::Es384 => Some(&sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        Algorithm::Es512 => Some(&sig::ECDSA_P521_SHA512_FIXED_SIGNING),
        _ => None,
    }
}

/// The private members of a JWK, read only to import a key (test vectors, key files).
#[derive(serde::Deserialize)]
struct PrivateJwk {
    kty: String,
    crv: String,
    x: String,
    #[serde(default)]
    y: Option<String>,
    d: Zeroizing<String>,
}

impl SigningKey {
    /// Generates a fresh key pair for `alg` (`ES256`, `ES384`, `ES512` or `EdDSA`).
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let pair = if alg == Algorithm::EdDsa {
            Pair::Ed25519(sig::Ed25519KeyPair::generate().map_err(|_| KeyError::Signing)?)
        } else {
            let signing = ecdsa_signing(alg).ok_or(KeyError::CannotSign(alg))?;
            Pair::Ecdsa(sig::EcdsaKeyPair::generate(signing).map_err(|_| KeyError::Signing)?)
        };
        Self::from_pair(alg, pair)
    }

    fn from_pair(alg: Algorithm, pair: Pair) -> Result<Self, KeyError> {
        let public_bytes = match &pair {
            Pair::Ecdsa(p) => p.public_key().as_ref().to_vec(),
            Pair::Ed25519(p) => p.public_key().as_ref().to_vec(),
        };
        let params = if alg == Algorithm::EdDsa {
            KeyParams::Okp {
                crv: "Ed25519".into(),
                x: public_bytes,
            }
        } else {
            let (crv, len) = match alg {
                Algorithm::Es256 => ("P-256", 32),
                Algorithm::Es384 => ("P-384", 48),
                Algorithm::Es512 => ("P-521", 66),
                other => return Err(KeyError::CannotSign(other)),
            };
            // Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
            let x = public_bytes.get(1..=len).ok_or(KeyError::Malformed("EC"))?;
            let y = public_bytes
                .get(1 + len..)
                .ok_or(KeyError::Malformed("EC"))?;
            KeyParams::Ec {
                crv: crv.into(),
                x: x.to_vec(),
                y: y.to_vec(),
            }
        };
        let mut jwk = Jwk::new(params);
        jwk.alg = Some(alg.name().to_owned());
        let public = PublicKey::from_jwk(&jwk)?;
        Ok(SigningKey { alg, pair, public })
    }

    /// Reads an unencrypted PKCS#8 DER private key (P-256, P-384, P-521 or Ed25519).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        if let Ok(pair) = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Self::from_pair(Algorithm::EdDsa, Pair::Ed25519(pair));
        }
        for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::Es512] {
            if let Some(signing) = ecdsa_signing(alg)
                && let Ok(pair) = sig::EcdsaKeyPair::from_pkcs8(signing, der)
            {
                return Self::from_pair(alg, Pair::Ecdsa(pair));
            }
        }
        Err(KeyError::PrivateKey(
            "not an unencrypted PKCS#8 EC or Ed25519 key",
        ))
    }

    /// Reads a `PRIVATE KEY` PEM block (PKCS#8).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|_| KeyError::PrivateKey("not PEM"))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::PrivateKey("PEM block is not `PRIVATE KEY`"));
        }
        let der = Zeroizing::new(block.into_contents());
        Self::from_pkcs8_der(&der)
    }

    /// Imports a private JWK (EC with `d`, or OKP `Ed25519` with `d`), e.g. a published test key.
    pub fn from_private_jwk(json: &str) -> Result<Self, KeyError> {
        let jwk: PrivateJwk =
            serde_json::from_str(json).map_err(|_| KeyError::PrivateKey("not a private JWK"))?;
        let bad = || KeyError::PrivateKey("bad base64url in private JWK");
        let d = Zeroizing::new(b64::decode(&jwk.d).map_err(|_| bad())?);
        let x = b64::decode(&jwk.x).map_err(|_| bad())?;
        match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("OKP", "Ed25519") => {
                let pair = sig::Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                    .map_err(|_| KeyError::PrivateKey("Ed25519 seed does not match `x`"))?;
                Self::from_pair(Algorithm::EdDsa, Pair::Ed25519(pair))
            }
            ("EC", crv) => {
                let (alg, _) = ec_algorithm(crv).ok_or(KeyError::UnsupportedKey {
                    kty: "EC".into(),
                    crv: crv.into(),
                })?;
                let y = b64::decode(jwk.y.as_deref().unwrap_or_default()).map_err(|_| bad())?;
                let mut point = vec![0x04];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let signing = ecdsa_signing(alg).ok_or(KeyError::CannotSign(alg))?;
                let pair = sig::EcdsaKeyPair::from_private_key_and_public_key(signing, &d, &point)
                    .map_err(|_| KeyError::PrivateKey("EC private key does not match `x`/`y`"))?;
                Self::from_pair(alg, Pair::Ecdsa(pair))
            }
            (kty, crv) => Err(KeyError::UnsupportedKey {
                kty: kty.into(),
                crv: crv.into(),
            }),
        }
    }

    /// The unencrypted PKCS#8 DER encoding; wiped from memory when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc = match &self.pair {
            Pair::Ecdsa(p) => p.to_pkcs8v1(),
            Pair::Ed25519(p) => p.to_pkcs8v1(),
        }
        .map_err(|_| KeyError::Signing)?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The PKCS#8 `PRIVATE KEY` PEM encoding; wiped from memory when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = self.to_pkcs8_der()?;
        let block = pem::Pem::new("PRIVATE KEY", der.to_vec());
        let text = Zeroizing::new(pem::encode(&block));
        // `block` owns a copy of the key bytes; wipe it too.
        let mut contents = block.into_contents();
        zeroize::Zeroize::zeroize(&mut contents);
        Ok(text)
    }

    /// The private key as a JWK (the public JWK's members plus `d`), as the SPIFFE WIT
    /// profile hands it to workloads; wiped from memory when dropped.
    pub fn to_private_jwk(&self) -> Result<Zeroizing<String>, KeyError> {
        use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin, EcPrivateKeyBin};
        let d = match &self.pair {
            Pair::Ecdsa(p) => {
                let bin: EcPrivateKeyBin<'_> = p
                    .private_key()
                    .as_be_bytes()
                    .map_err(|_| KeyError::Signing)?;
                Zeroizing::new(b64::encode(bin.as_ref()))
            }
            Pair::Ed25519(p) => {
                let seed = p.seed().map_err(|_| KeyError::Signing)?;
                let bin: Curve25519SeedBin<'_> =
                    seed.as_be_bytes().map_err(|_| KeyError::Signing)?;
                Zeroizing::new(b64::encode(bin.as_ref()))
            }
        };
        let value = serde_json::to_value(self.public_jwk()).map_err(|_| KeyError::Signing)?;
        let serde_json::Value::Object(mut members) = value else {
            return Err(KeyError::Signing);
        };
        members.insert("d".into(), serde_json::Value::String(d.to_string()));
        // Written into a buffer of exactly the right size, measured first: a growing buffer
        // would leave copies of `d` behind in the memory it frees, and a roomy one would
        // waste what the agent keeps one of per workload.
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, &members).map_err(|_| KeyError::Signing)?;
        let mut bytes = Vec::with_capacity(counter.0);
        serde_json::to_writer(&mut bytes, &members).map_err(|_| KeyError::Signing)?;
        let text = Zeroizing::new(String::from_utf8(bytes).map_err(|e| {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            KeyError::Signing
        })?);
        // The map holds a copy of `d`; overwrite it before it is dropped.
        if let Some(serde_json::Value::String(copy)) = members.get_mut("d") {
            zeroize::Zeroize::zeroize(copy);
        }
        Ok(text)
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public half as a JWK (with `alg`).
    pub fn public_jwk(&self) -> &Jwk {
        &self.public.jwk
    }

    /// Signs `message` (ECDSA in the fixed-length JWS form).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ecdsa(p) => p
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Signing),
            Pair::Ed25519(p) => Ok(p.sign(message).as_ref().to_vec()),
        }
    }
}

/// A writer that only counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = r#"{"kty":"EC","kid":"June 5","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo","d":"NRHs9bfMUcF49AV_NIoeh3UGopW4AXZLfv5G2px1WcY"}"#;

    #[test]
    fn private_jwk_round_trips_for_each_signing_algorithm() {
        for alg in [
            Algorithm::Es256,
            Algorithm::Es384,
            Algorithm::Es512,
            Algorithm::EdDsa,
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = key.to_private_jwk().unwrap();
            // Written in place, never grown (a grown buffer leaves copies of `d` behind).
            assert_eq!(jwk.capacity(), jwk.len());
            let back = SigningKey::from_private_jwk(&jwk).unwrap();
            assert_eq!(back.public_jwk(), key.public_jwk());
            let signature = back.sign(b"m").unwrap();
            key.public_key().verify(alg, b"m", &signature).unwrap();
        }
    }

    #[test]
    fn sign_then_verify_for_each_signing_algorithm() {
        for alg in [
            Algorithm::Es256,
            Algorithm::Es384,
            Algorithm::Es512,
            Algorithm::EdDsa,
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let sig = key.sign(b"msg").unwrap();
            key.public_key().verify(alg, b"msg", &sig).unwrap();
            assert_eq!(
                key.public_key().verify(alg, b"other", &sig),
                Err(KeyError::BadSignature)
            );
        }
    }

    #[test]
    fn key_refuses_an_algorithm_it_is_not_bound_to() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let sig = key.sign(b"m").unwrap();
        assert!(matches!(
            key.public_key().verify(Algorithm::Es384, b"m", &sig),
            Err(KeyError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn der_encoded_ecdsa_signature_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let sig = key.sign(b"m").unwrap();
        let (r, s) = sig.split_at(32);
        let mut der = vec![0x30, 0x44, 0x02, 0x20];
        der.extend_from_slice(r);
        der.extend_from_slice(&[0x02, 0x20]);
        der.extend_from_slice(s);
        assert_eq!(
            key.public_key().verify(Algorithm::Es256, b"m", &der),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn zero_ecdsa_signature_is_refused() {
        // CVE-2022-21449: r = s = 0 must never verify.
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        assert_eq!(
            key.public_key().verify(Algorithm::Es256, b"m", &[0u8; 64]),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn point_not_on_curve_is_refused() {
        let mut jwk: Jwk = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo"}"#,
        )
        .unwrap();
        assert!(PublicKey::from_jwk(&jwk).is_ok());
        if let KeyParams::Ec { y, .. } = &mut jwk.params {
            y[31] ^= 1;
        }
        assert_eq!(PublicKey::from_jwk(&jwk), Err(KeyError::Malformed("EC")));
    }

    #[test]
    fn jwk_alg_that_does_not_fit_the_curve_is_refused() {
        let mut jwk = SigningKey::generate(Algorithm::Es256)
            .unwrap()
            .public_jwk()
            .clone();
        jwk.alg = Some("ES384".into());
        assert!(matches!(
            PublicKey::from_jwk(&jwk),
            Err(KeyError::AlgorithmMismatch { .. })
        ));
        jwk.alg = Some("HS256".into());
        assert!(matches!(
            PublicKey::from_jwk(&jwk),
            Err(KeyError::Algorithm(_))
        ));
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let again = SigningKey::from_pkcs8_pem(&pem).unwrap();
            assert_eq!(again.public_key(), key.public_key());
            assert_eq!(again.algorithm(), alg);
        }
    }

    #[test]
    fn published_issuer_key_imports_and_matches_its_public_half() {
        let key = SigningKey::from_private_jwk(ISSUER).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Es256);
        let mut mismatched = ISSUER.replace("n__V", "m__V");
        assert!(SigningKey::from_private_jwk(&mismatched).is_err());
        mismatched = ISSUER.replace("\"d\"", "\"e\"");
        assert!(SigningKey::from_private_jwk(&mismatched).is_err());
    }

    #[test]
    fn debug_output_never_shows_private_material() {
        let key = SigningKey::from_private_jwk(ISSUER).unwrap();
        let text = format!("{key:?}");
        assert!(!text.contains("NRHs9bfMUcF49AV_NIoeh3UGopW4AXZLfv5G2px1WcY"));
        assert!(text.contains("Es256"));
    }

    #[test]
    fn rsa_public_key_der_pads_high_bit_integers() {
        let der = rsa_public_key_der(&[0x80, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            der,
            vec![
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
    }

    #[test]
    fn rsa_keys_verify_rs256_and_ps256() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
        // Reads one DER TLV, returning (contents, rest).
        fn tlv(der: &[u8]) -> (&[u8], &[u8]) {
            let (len, start) = match der[1] {
                l if l < 0x80 => (usize::from(l), 2),
                0x81 => (usize::from(der[2]), 3),
                0x82 => (usize::from(der[2]) << 8 | usize::from(der[3]), 4),
                _ => panic!("unexpected length"),
            };
            (&der[start..start + len], &der[start + len..])
        }
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        // PKCS#1 RSAPublicKey: SEQUENCE { n INTEGER, e INTEGER }.
        let (seq, _) = tlv(pair.public_key().as_ref());
        let (n, rest) = tlv(seq);
        let (e, _) = tlv(rest);
        let jwk = Jwk::new(KeyParams::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        });
        // Without `alg`, an RSA key verifies the RSA family and nothing else.
        let key = PublicKey::from_jwk(&jwk).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for (alg, padding) in [
            (
                Algorithm::Rs256,
                &RSA_PKCS1_SHA256 as &dyn aws_lc_rs::signature::RsaEncoding,
            ),
            (Algorithm::Ps256, &RSA_PSS_SHA256),
        ] {
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(padding, &rng, b"msg", &mut sig).unwrap();
            key.verify(alg, b"msg", &sig).unwrap();
            assert_eq!(key.verify(alg, b"other", &sig), Err(KeyError::BadSignature));
        }
        assert!(!key.allows(Algorithm::Es256));
        // With `alg`, exactly that algorithm.
        let mut pinned = jwk.clone();
        pinned.alg = Some("PS256".into());
        let key = PublicKey::from_jwk(&pinned).unwrap();
        assert!(key.allows(Algorithm::Ps256));
        assert!(!key.allows(Algorithm::Rs256));
    }

    #[test]
    fn short_rsa_modulus_is_refused() {
        let jwk = Jwk::new(KeyParams::Rsa {
            n: vec![0xc5; 128],
            e: vec![1, 0, 1],
        });
        assert_eq!(PublicKey::from_jwk(&jwk), Err(KeyError::Malformed("RSA")));
    }
}
