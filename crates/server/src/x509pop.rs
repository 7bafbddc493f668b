//! x509pop node attestation: an agent proves that it holds the private key of a certificate
//! that chains to a CA the operator configured (`x509pop_ca_bundle`), as SPIRE's `x509pop`
//! node attestor does.
//!
//! # Protocol (over the agent API, server-authenticated TLS, no client certificate yet)
//!
//! 1. `POST /agent/v1/attest/x509pop/challenge` with the agent's chain (leaf first, DER,
//!    base64url). The server verifies the chain ([`X509PopCa::verify_chain`]) and answers a
//!    fresh 32-byte random nonce that expires after [`CHALLENGE_TTL`] seconds.
//! 2. `POST /agent/v1/attest` with the same chain, the nonce, a CSR for the agent's new SVID
//!    key, and the leaf key's signature over [`signed_message`]`(nonce, csr)`: a context label,
//!    the nonce, and SHA-256 of the CSR. Binding the CSR means a captured answer cannot be
//!    replayed with another key; the label keeps the signature from meaning anything in
//!    another protocol that the same certificate key might be used for.
//!
//! # Where challenges live, and why
//!
//! Challenges are stored in the datastore ([`crate::datastore::X509PopChallenge`]): only the
//! SHA-256 of the nonce, the SHA-256 fingerprint of the leaf it was issued to, and the
//! expiry. Every replica on the same database can therefore answer step 2 for a challenge
//! issued by another, without sharing anything else. A stored challenge can be *consumed*
//! (deleted in the same statement that reads it), so it is one-time: a stateless signed
//! challenge could be answered again until it expired. It also keeps the trust domain's
//! JWT keys for JWT-SVIDs only, instead of having them sign a second kind of token. The cost
//! (one row written and one deleted per attestation) is nothing next to issuing the SVID,
//! and expired rows are pruned by the maintenance tick. Since certificates are often public,
//! anyone may ask for challenges for one: a new challenge replaces the certificate's previous
//! one, so the table holds at most one row per valid certificate. (Whoever does that for
//! another node's certificate can only make that node ask again; without the key no
//! challenge can be answered.)
//!
//! A challenge is refused when it is unknown or already used, when it has expired, when it
//! is answered with a chain whose leaf is not the one it was issued to, and when the
//! signature does not verify with that leaf's key. The chain is verified again at step 2.
//!
//! # Chain policy
//!
//! RFC 5280 path validation by rustls-webpki against the configured roots only: signatures,
//! validity of the leaf and of every intermediate at the current time, basic constraints
//! (the leaf must not be a CA), path length and name constraints. EKU: `clientAuth`
//! required *if present* (webpki's `KeyUsage::client_auth`): node certificates without any
//! EKU (common for device certificates) are accepted, while a certificate restricted to
//! other purposes — say a TLS server certificate from the same CA — cannot attest a node.
//!
//! # Agent identity
//!
//! `spiffe://<trust domain>/wimse/agent/x509pop/<hex SHA-256 of the leaf's DER>`. SPIRE uses
//! `/spire/agent/x509pop/<SHA-1 fingerprint>`; we keep SPIRE's shape under our `/wimse/agent`
//! prefix and use SHA-256. The same certificate always yields the same ID, so an agent may
//! attest again with it (unlike a join token), unless the agent is banned.

use crate::datastore::hex;
use aws_lc_rs::signature as sig;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    UnixTime, alg_id,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wimse_core::x509::Certificate;
use wimse_core::{IdError, TrustDomain, WorkloadId};

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL: i64 = 60;

/// The most certificates accepted in a presented chain (leaf and intermediates).
pub const MAX_CHAIN_LEN: usize = 8;

/// The attestation type recorded for agents attested this way.
pub const ATTESTATION_TYPE: &str = "x509pop";

/// Prefix of every signed x509pop answer (see the [module docs](self)).
const SIGNATURE_CONTEXT: &[u8] = b"wimse x509pop v1\0";

/// Why x509pop evidence or its configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum X509PopError {
    /// The CA bundle file could not be read.
    #[error("cannot read x509pop CA bundle `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA bundle holds no usable certificate.
    #[error("x509pop CA bundle `{path}` is unusable: {message}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// No certificate was presented.
    #[error("the x509pop certificate chain is empty")]
    EmptyChain,
    /// More certificates than [`MAX_CHAIN_LEN`] were presented.
    #[error(
        "the x509pop certificate chain has {0} certificates, at most {MAX_CHAIN_LEN} are accepted"
    )]
    ChainTooLong(usize),
    /// A presented certificate is not DER X.509.
    #[error("x509pop certificate {index} is malformed: {message}")]
    Malformed {
        /// Its position in the chain (0: the leaf).
        index: usize,
        /// What was wrong.
        message: String,
    },
    /// The chain does not verify against the configured CA.
    #[error("the x509pop certificate does not chain to the configured CA: {0}")]
    Untrusted(String),
    /// The signature over the challenge does not verify with the leaf's key.
    #[error("the x509pop signature does not verify with the certificate's key")]
    BadSignature,
}

/// The trust anchors x509pop certificates must chain to.
#[derive(Clone, Debug)]
pub struct X509PopCa {
    roots: Vec<CertificateDer<'static>>,
}

impl X509PopCa {
    /// Reads PEM CA certificates from `path`.
    pub fn load(path: &Path) -> Result<Self, X509PopError> {
        let text = std::fs::read_to_string(path).map_err(|source| X509PopError::Read {
            path: path.to_owned(),
            source,
        })?;
        let unusable = |message: String| X509PopError::Bundle {
            path: path.to_owned(),
            message,
        };
        let certs = wimse_core::x509::certs_from_pem(&text).map_err(|e| unusable(e.to_string()))?;
        Self::from_certificates(&certs).map_err(|e| unusable(e.to_string()))
    }

    /// Trusts `certs` (at least one, each usable as a trust anchor).
    pub fn from_certificates(certs: &[Certificate]) -> Result<Self, X509PopError> {
        if certs.is_empty() {
            return Err(X509PopError::Untrusted("no CA certificate".into()));
        }
        let roots: Vec<CertificateDer<'static>> = certs
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect();
        for root in &roots {
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| X509PopError::Untrusted(format!("unusable CA certificate: {e}")))?;
        }
        Ok(Self { roots })
    }

    /// Verifies a presented chain (leaf first, DER) at `now` (see the [module docs](self)
    /// for the policy) and returns the leaf's fingerprint (lowercase hex SHA-256 of its DER).
    pub fn verify_chain(&self, chain: &[Vec<u8>], now: i64) -> Result<String, X509PopError> {
        let (leaf, intermediates) = chain.split_first().ok_or(X509PopError::EmptyChain)?;
        if chain.len() > MAX_CHAIN_LEN {
            return Err(X509PopError::ChainTooLong(chain.len()));
        }
        for (index, der) in chain.iter().enumerate() {
            Certificate::from_der(der.clone()).map_err(|e| X509PopError::Malformed {
                index,
                message: e.to_string(),
            })?;
        }
        let anchors = self
            .roots
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| X509PopError::Untrusted(e.to_string()))?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let end_entity =
            webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| X509PopError::Malformed {
                index: 0,
                message: e.to_string(),
            })?;
        let time =
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or_default()));
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| X509PopError::Untrusted(e.to_string()))?;
        Ok(fingerprint(leaf))
    }
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&wimse_core::digest::sha256(der))
}

/// The agent ID an x509pop certificate with this fingerprint yields.
pub fn agent_id(trust_domain: &TrustDomain, fingerprint: &str) -> Result<WorkloadId, IdError> {
    WorkloadId::from_parts(
        "spiffe",
        trust_domain,
        &format!("/wimse/agent/x509pop/{fingerprint}"),
    )
}

/// What the agent signs with its certificate's key: a context label, the nonce, and SHA-256
/// of the CSR it sends along.
pub fn signed_message(nonce: &[u8], csr: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + nonce.len() + 32);
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(nonce);
    message.extend_from_slice(&wimse_core::digest::sha256(csr));
    message
}

/// Verifies `signature`, made by [`wimse_core::jose::SigningKey::sign`] (ECDSA in the
/// fixed-length JWS form, or Ed25519), over `message` with the public key of the DER
/// certificate `leaf`. The algorithm follows from the certificate's key type.
pub fn verify_signature(leaf: &[u8], message: &[u8], signature: &[u8]) -> Result<(), X509PopError> {
    let leaf_der = CertificateDer::from(leaf);
    let cert = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| X509PopError::Malformed {
        index: 0,
        message: e.to_string(),
    })?;
    // webpki matches each algorithm's public-key identifier against the certificate's
    // key, so at most one of these can verify; the others fail before verifying anything.
    let verified = JOSE_ALGORITHMS
        .iter()
        .any(|alg| cert.verify_signature(alg, message, signature).is_ok());
    if verified {
        Ok(())
    } else {
        Err(X509PopError::BadSignature)
    }
}

/// A signature algorithm in the encoding [`wimse_core::jose::SigningKey`] signs in, for
/// webpki's [`webpki::EndEntityCert::verify_signature`] (whose own ECDSA algorithms expect
/// ASN.1 signatures).
#[derive(Debug)]
struct JoseAlgorithm {
    public_key: AlgorithmIdentifier,
    signature: AlgorithmIdentifier,
    verification: &'static dyn sig::VerificationAlgorithm,
}

const JOSE_ALGORITHMS: [JoseAlgorithm; 4] = [
    JoseAlgorithm {
        public_key: alg_id::ECDSA_P256,
        signature: alg_id::ECDSA_SHA256,
        verification: &sig::ECDSA_P256_SHA256_FIXED,
    },
    JoseAlgorithm {
        public_key: alg_id::ECDSA_P384,
        signature: alg_id::ECDSA_SHA384,
        verification: &sig::ECDSA_P384_SHA384_FIXED,
    },
    JoseAlgorithm {
        public_key: alg_id::ECDSA_P521,
        signature: alg_id::ECDSA_SHA512,
        verification: &sig::ECDSA_P521_SHA512_FIXED,
    },
    JoseAlgorithm {
        public_key: alg_id::ED25519,
        signature: alg_id::ED25519,
        verification: &sig::ED25519,
    },
];

impl SignatureVerificationAlgorithm for JoseAlgorithm {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        sig::UnparsedPublicKey::new(self.verification, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.public_key
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature
    }
}
