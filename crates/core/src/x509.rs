//! The X509-SVID profile: building CA and workload certificates, reading certificate
//! signing requests, and verifying a presented chain against a trust domain's roots.
//!
//! # What this module owns
//!
//! * [`Certificate`], a DER certificate parsed once on the way in, with the few facts the
//!   rest of wimse reads (validity, URI and DNS SANs, public key, CA flag, serial).
//! * Issuing: [`self_signed_ca`] and [`intermediate_ca`] make X509-SVID signing
//!   certificates, [`workload_certificate`] makes X509-SVID leaves for a public key taken
//!   from a CSR. The issuer's private key never leaves [`SigningKey`]: rcgen asks us for a
//!   signature over the TBS bytes and we hand back an X.509 (DER) signature.
//! * Requests: [`build_csr`] for the agent side, [`parse_csr`] for the server side, which
//!   verifies the proof of possession before anything else reads the request.
//! * Verification: [`verify_svid_chain`] (and [`verify_svid_for_trust_domain`], which adds
//!   the trust-domain check) is the one place an X509-SVID is accepted.
//!
//! # Which crate does what
//!
//! * **rcgen** serialises certificates and CSRs. It never sees a private key: the
//!   `rcgen::SigningKey` it calls is a thin adapter over our [`SigningKey`].
//! * **rustls-webpki** does RFC 5280 path validation (signatures with aws-lc-rs, validity,
//!   basic constraints, path length, name constraints, EKU chaining).
//! * **x509-parser** reads what webpki does not expose: SANs, key usage, basic constraints,
//!   subject key identifiers, and CSRs. CSR signatures are verified here with aws-lc-rs,
//!   over an explicit list of (key, signature algorithm) pairs.
//!
//! # Rules implemented (SPIFFE X509-SVID, WIMSE workload credentials)
//!
//! * Identifiers are [`WorkloadId`]s and [`TrustDomain`]s: a URI SAN is parsed with
//!   [`WorkloadId::parse`], so every generic SPIFFE-ID rule is [`crate::id`]'s. This module
//!   adds only what X509-SVID says on top: the scheme is `spiffe`, a leaf's ID has a path,
//!   a signing certificate's has none.
//! * Exactly one URI SAN, holding the SPIFFE ID; more than one is refused (X509-SVID §2,
//!   WIC: "MUST NOT contain more than one URI SAN").
//! * Leaves: the ID has a non-root path (§3.1); `CA=false` (§4.1); key usage present with
//!   `digitalSignature` and without `keyCertSign`/`cRLSign` (§4.3); EKU, when we issue,
//!   carries both `serverAuth` and `clientAuth` (§4.4).
//! * Signing certificates: `CA=true`, key usage critical with `keyCertSign` (§3.2, §4.3),
//!   and a SPIFFE ID without a path (§3.2, SPIFFE-ID §3.1).
//! * Validation: RFC 5280 path validation, then the leaf checks of §5, in that order.
//! * A relying party checks that the ID is in the trust domain whose roots it used
//!   (WIC, mutual-TLS binding): [`verify_svid_for_trust_domain`].
//!
//! Times are Unix seconds passed in by the caller; nothing here reads the clock.

use crate::der;
use crate::id::{IdError, TrustDomain, WorkloadId};
use crate::jose::{Algorithm, KeyParams, SigningKey};
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::fmt;
use std::time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

/// The largest CSR [`parse_csr`] reads. A CSR for one key and one ID is a few hundred bytes.
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// The largest certificate [`Certificate::from_der`] reads.
pub const MAX_CERTIFICATE_LEN: usize = 64 * 1024;

/// 9999-12-31T23:59:59Z, the last second a four-digit `GeneralizedTime` can hold.
const MAX_CERT_TIME: i64 = 253_402_300_799;

/// The organisation written in the subject of every certificate this module issues.
const SUBJECT_ORGANIZATION: &str = "SPIFFE";

/// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1), DER contents.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// `id-kp-clientAuth` (1.3.6.1.5.5.7.3.2), DER contents.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Context tag of `uniformResourceIdentifier` in `GeneralName` (RFC 5280 §4.2.1.6).
const GENERAL_NAME_URI_TAG: u32 = 6;

/// Why a certificate or CSR could not be built, read or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    /// The bytes are not one well-formed DER certificate.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// The bytes are not one well-formed PKCS#10 certificate signing request.
    #[error("malformed certificate signing request: {0}")]
    MalformedCsr(String),
    /// The input is larger than this module reads.
    #[error("{what} is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// What was too large (`certificate`, `certificate signing request`).
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The text is not PEM, or holds a block other than `CERTIFICATE`.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// The PEM text holds no `CERTIFICATE` block.
    #[error("no certificate in PEM text")]
    NoCertificate,
    /// The public key is not one this profile accepts (EC P-256, P-384, P-521 with an
    /// uncompressed point, or Ed25519).
    #[error("unsupported public key: {0}")]
    UnsupportedKey(&'static str),
    /// The public key has a supported type but invalid contents (e.g. a point off the curve).
    #[error("malformed {0} public key")]
    MalformedKey(&'static str),
    /// The CSR is signed with an algorithm that does not fit its key.
    #[error("certificate signing request signature algorithm does not fit its {0} key")]
    CsrAlgorithm(&'static str),
    /// The CSR's self-signature does not verify: no proof of possession of the key.
    #[error("certificate signing request signature does not verify")]
    CsrSignature,
    /// A certificate's URI SAN is not a valid identifier (SPIFFE-ID §2), as
    /// [`WorkloadId::parse`] judged it; `source` names the rule and quotes the URI.
    #[error("certificate URI SAN is not a valid SPIFFE ID")]
    InvalidSpiffeId {
        /// The URI SAN as the certificate holds it.
        id: String,
        /// Which rule it breaks.
        #[source]
        source: IdError,
    },
    /// A DNS name for a SAN is not a valid host name.
    #[error("`{0}` is not a valid DNS name")]
    InvalidDnsName(String),
    /// A time is before 1970 or after 9999, or `not_before` is after `not_after`.
    #[error("invalid validity: {0}")]
    InvalidValidity(&'static str),
    /// The issuing certificate is not a CA allowed to sign certificates.
    #[error("issuer certificate cannot sign certificates: {0}")]
    IssuerNotCa(&'static str),
    /// The issuer's private key is not the key of the issuer certificate.
    #[error("issuer private key does not match the issuer certificate")]
    IssuerKeyMismatch,
    /// The issuer's subject name cannot be reproduced byte for byte, so the issued
    /// certificate would not chain to it.
    #[error("issuer subject name cannot be reproduced exactly: {0}")]
    IssuerName(&'static str),
    /// The ID is not in the trust domain of the issuer or of the roots used.
    #[error("`{id}` is not in trust domain `{trust_domain}`")]
    TrustDomainMismatch {
        /// The ID.
        id: String,
        /// The expected trust domain.
        trust_domain: String,
    },
    /// rcgen refused to build the certificate or CSR.
    #[error("cannot build certificate: {0}")]
    Build(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The verification time is before 1970.
    #[error("verification time {0} is before the unix epoch")]
    InvalidTime(i64),
    /// A root certificate cannot be used as a trust anchor.
    #[error("root certificate is not a usable trust anchor: {0}")]
    BadTrustAnchor(String),
    /// A certificate in the chain has expired.
    #[error("certificate expired at {not_after} (now {now})")]
    Expired {
        /// The certificate's `notAfter`.
        not_after: i64,
        /// The verification time.
        now: i64,
    },
    /// A certificate in the chain is not valid yet.
    #[error("certificate not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The certificate's `notBefore`.
        not_before: i64,
        /// The verification time.
        now: i64,
    },
    /// No chain leads from the leaf to one of the given roots.
    #[error("certificate chain does not lead to a trusted root")]
    UnknownIssuer,
    /// A signature in the chain does not verify.
    #[error("certificate signature does not verify")]
    BadSignature,
    /// A certificate is signed with an algorithm that is not accepted.
    #[error("unsupported certificate signature algorithm")]
    UnsupportedSignatureAlgorithm,
    /// A certificate used as an issuer is not a CA.
    #[error("a certificate used as an issuer is not a CA")]
    IntermediateNotCa,
    /// The chain is longer than a CA's path length constraint allows.
    #[error("path length constraint violated")]
    PathLenConstraint,
    /// A name in the chain is outside a CA's name constraints.
    #[error("name constraints violated")]
    NameConstraint,
    /// A certificate's EKU allows neither `serverAuth` nor `clientAuth`.
    #[error("extended key usage allows neither serverAuth nor clientAuth")]
    ExtendedKeyUsage,
    /// Path validation failed for another reason (the webpki error is kept for logs).
    #[error("certificate chain rejected: {0}")]
    InvalidChain(String),
    /// The leaf has no URI SAN (X509-SVID §2).
    #[error("leaf has no URI SAN")]
    NoUriSan,
    /// The leaf has more than one URI SAN (X509-SVID §2: validators MUST reject it).
    #[error("leaf has {0} URI SANs, exactly one is allowed")]
    MultipleUriSans(usize),
    /// The ID is not a SPIFFE ID (X509-SVID §2): a valid identifier of another scheme, or
    /// a URI SAN that is not UTF-8 text.
    #[error("URI SAN `{0}` is not a SPIFFE ID")]
    NotSpiffe(String),
    /// The leaf's ID has no path; only signing certificates carry a trust-domain ID (§3.1).
    #[error("leaf ID `{0}` has no path")]
    RootPathLeaf(String),
    /// The leaf is a CA certificate (X509-SVID §4.1).
    #[error("leaf is a CA certificate")]
    LeafIsCa,
    /// A key usage rule of X509-SVID §4.3 is broken.
    #[error("key usage: {0}")]
    KeyUsage(&'static str),
    /// The certificate has no DNS-ID for the name the server was reached by (RFC 9525
    /// §6.3).
    #[error("certificate does not name `{name}` (its DNS names: {presented})")]
    NameMismatch {
        /// The name the server was reached by.
        name: String,
        /// The certificate's DNS SANs, comma-separated, or `none`.
        presented: String,
    },
}

// ---------------------------------------------------------------------------------------
// Certificate

/// One DER certificate, parsed when it is made.
///
/// Equality is equality of the DER bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Certificate {
    der: Vec<u8>,
    not_before: i64,
    not_after: i64,
    /// URI SANs that are valid UTF-8, in order.
    uri_sans: Vec<String>,
    /// Every URI SAN, including ones x509-parser could not read as text.
    uri_san_count: usize,
    dns_sans: Vec<String>,
    spki: Vec<u8>,
    /// `(cA, pathLenConstraint)` when basic constraints are present.
    basic_constraints: Option<(bool, Option<u32>)>,
    /// Key usage bits, x509-parser order (bit 0 `digitalSignature`, bit 5 `keyCertSign`).
    key_usage: Option<u16>,
    subject_key_id: Option<Vec<u8>>,
    /// The issuer's first common name, when it is text.
    issuer_cn: Option<String>,
    /// The serial's magnitude, big-endian, without leading zero bytes.
    serial: Vec<u8>,
}

/// How a wimse CA's subject common name begins: `wimse CA <authority ID>`, so that a
/// certificate it signed names its signing authority in its issuer (agents replace what a
/// tainted CA signed by it).
pub const CA_COMMON_NAME_PREFIX: &str = "wimse CA ";

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("serial", &self.serial_hex())
            .field("uri_sans", &self.uri_sans)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("is_ca", &self.is_ca())
            .finish_non_exhaustive()
    }
}

const KU_DIGITAL_SIGNATURE: u16 = 1;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;
const KU_CRL_SIGN: u16 = 1 << 6;

impl Certificate {
    /// Parses one DER certificate; trailing bytes are refused.
    pub fn from_der(der: Vec<u8>) -> Result<Self, X509Error> {
        if der.len() > MAX_CERTIFICATE_LEN {
            return Err(X509Error::TooLarge {
                what: "certificate",
                len: der.len(),
                limit: MAX_CERTIFICATE_LEN,
            });
        }
        let malformed = |e: &dyn fmt::Display| X509Error::MalformedCertificate(e.to_string());
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|e| malformed(&e))?;
        if !rest.is_empty() {
            return Err(X509Error::MalformedCertificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        let validity = cert.validity();
        let mut uri_sans = Vec::new();
        let mut uri_san_count = 0;
        let mut dns_sans = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| malformed(&e))? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => {
                        uri_san_count += 1;
                        uri_sans.push((*uri).to_owned());
                    }
                    // A URI SAN that is not UTF-8 still counts towards "exactly one URI
                    // SAN": otherwise a second, unreadable URI would slip past the rule.
                    GeneralName::Invalid(tag, _) if tag.0 == GENERAL_NAME_URI_TAG => {
                        uri_san_count += 1;
                    }
                    GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        let basic_constraints = cert
            .basic_constraints()
            .map_err(|e| malformed(&e))?
            .map(|bc| (bc.value.ca, bc.value.path_len_constraint));
        let key_usage = cert
            .key_usage()
            .map_err(|e| malformed(&e))?
            .map(|ku| ku.value.flags);
        let mut subject_key_id = None;
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
                if subject_key_id.is_some() {
                    return Err(X509Error::MalformedCertificate(
                        "duplicate subject key identifier".into(),
                    ));
                }
                subject_key_id = Some(id.0.to_vec());
            }
        }
        let raw_serial = cert.raw_serial();
        let serial = raw_serial
            .iter()
            .position(|b| *b != 0)
            .and_then(|start| raw_serial.get(start..))
            .unwrap_or_default()
            .to_vec();
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();
        let spki = cert.public_key().raw.to_vec();
        let issuer_cn = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        drop(cert);
        Ok(Certificate {
            der,
            not_before,
            not_after,
            uri_sans,
            uri_san_count,
            dns_sans,
            spki,
            basic_constraints,
            key_usage,
            subject_key_id,
            issuer_cn,
            serial,
        })
    }

    /// The ID of the wimse signing authority that issued this certificate, read from its
    /// issuer's common name ([`CA_COMMON_NAME_PREFIX`]); `None` for another issuer.
    pub fn wimse_authority(&self) -> Option<&str> {
        self.issuer_cn
            .as_deref()?
            .strip_prefix(CA_COMMON_NAME_PREFIX)
            .filter(|id| !id.is_empty())
    }

    /// Reads exactly one `CERTIFICATE` PEM block.
    pub fn from_pem(text: &str) -> Result<Self, X509Error> {
        let mut certs = certs_from_pem(text)?;
        match (certs.pop(), certs.is_empty()) {
            (Some(cert), true) => Ok(cert),
            (Some(_), false) => Err(X509Error::Pem(
                "expected one certificate, found several".into(),
            )),
            (None, _) => Err(X509Error::NoCertificate),
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The DER encoding, by value.
    pub fn into_der(self) -> Vec<u8> {
        self.der
    }

    /// The `CERTIFICATE` PEM encoding (LF line endings).
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// `notBefore`, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The URI SANs, in certificate order.
    pub fn uri_sans(&self) -> Vec<String> {
        self.uri_sans.clone()
    }

    /// The DNS SANs, in certificate order.
    pub fn dns_sans(&self) -> Vec<String> {
        self.dns_sans.clone()
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// The certificate's public key as a JOSE verification key, bound to the one
    /// algorithm its curve allows (EC and Ed25519 keys; `None` for others, RSA included,
    /// whose algorithm the key alone does not fix).
    pub fn public_key(&self) -> Option<crate::jose::PublicKey> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.spki).ok()?;
        let jwk = crate::bundle::spki_jwk(&spki)?;
        crate::jose::PublicKey::from_jwk(&jwk).ok()
    }

    /// Whether basic constraints say `cA=TRUE`.
    pub fn is_ca(&self) -> bool {
        matches!(self.basic_constraints, Some((true, _)))
    }

    /// The serial number as lowercase hex, without leading zero bytes (`00` for zero).
    pub fn serial_hex(&self) -> String {
        if self.serial.is_empty() {
            return "00".into();
        }
        crate::digest::hex(&self.serial)
    }

    /// The identifier in this certificate's one URI SAN (X509-SVID §2: exactly one).
    fn uri_san_id(&self) -> Result<WorkloadId, X509Error> {
        let uri = match (self.uri_san_count, self.uri_sans.as_slice()) {
            (0, _) => return Err(X509Error::NoUriSan),
            (1, [uri]) => uri,
            (1, _) => return Err(X509Error::NotSpiffe("(not valid UTF-8)".into())),
            (n, _) => return Err(X509Error::MultipleUriSans(n)),
        };
        WorkloadId::parse(uri).map_err(|source| X509Error::InvalidSpiffeId {
            id: uri.clone(),
            source,
        })
    }

    /// Whether key usage is present with any of the bits in `mask`.
    fn has_key_usage(&self, mask: u16) -> bool {
        self.key_usage.is_some_and(|ku| ku & mask != 0)
    }
}

/// Reads every `CERTIFICATE` block of a PEM text (a chain, or a set of roots).
///
/// Any other block (a private key pasted by mistake, say) is refused rather than skipped,
/// and so is text with no certificate at all.
pub fn certs_from_pem(text: &str) -> Result<Vec<Certificate>, X509Error> {
    let blocks = pem::parse_many(text).map_err(|e| {
        // Not `e.to_string()`: a base64 error names an input byte, and the text may be a key.
        X509Error::Pem(
            match e {
                pem::PemError::MismatchedTags(..) => "BEGIN and END labels differ",
                pem::PemError::MissingEndTag => "missing END line",
                pem::PemError::InvalidData(_) => "invalid base64",
                pem::PemError::InvalidHeader(_) => "invalid header",
                _ => "malformed PEM framing",
            }
            .into(),
        )
    })?;
    if blocks.is_empty() {
        return Err(X509Error::NoCertificate);
    }
    blocks
        .into_iter()
        .map(|block| {
            if block.tag() == "CERTIFICATE" {
                Certificate::from_der(block.into_contents())
            } else {
                // Only the label: the block may hold a private key.
                Err(X509Error::Pem(format!(
                    "unexpected PEM block `{}`",
                    block.tag()
                )))
            }
        })
        .collect()
}

/// Encodes certificates as consecutive `CERTIFICATE` PEM blocks, in order.
pub fn certs_to_pem(certs: &[Certificate]) -> String {
    certs.iter().map(Certificate::to_pem).collect()
}

// ---------------------------------------------------------------------------------------
// Key types

/// The public key types this profile issues for and accepts in CSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    P521,
    Ed25519,
}

impl KeyKind {
    const ALL: [KeyKind; 4] = [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::P521,
        KeyKind::Ed25519,
    ];

    fn name(self) -> &'static str {
        match self {
            KeyKind::P256 => "P-256",
            KeyKind::P384 => "P-384",
            KeyKind::P521 => "P-521",
            KeyKind::Ed25519 => "Ed25519",
        }
    }

    /// The exact DER of a `SubjectPublicKeyInfo` of this kind, up to the key bytes:
    /// SEQUENCE, `AlgorithmIdentifier` (`id-ecPublicKey` + named curve, or `id-Ed25519`
    /// without parameters), and the BIT STRING header with zero unused bits.
    ///
    /// Matching the whole prefix, and the key length below, leaves no room for explicit
    /// curve parameters, compressed points or stray parameters.
    fn spki_prefix(self) -> &'static [u8] {
        match self {
            KeyKind::P256 => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            KeyKind::P384 => &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
            KeyKind::P521 => &[
                0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
                0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00,
            ],
            KeyKind::Ed25519 => &[
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ],
        }
    }

    /// Length of the raw key: an uncompressed SEC1 point, or the Ed25519 public key.
    fn key_len(self) -> usize {
        match self {
            KeyKind::P256 => 65,
            KeyKind::P384 => 97,
            KeyKind::P521 => 133,
            KeyKind::Ed25519 => 32,
        }
    }

    /// The rcgen algorithm, used for the `SubjectPublicKeyInfo` it writes and, for an
    /// issuer, the signature algorithm (ECDSA with the curve's own hash, or Ed25519).
    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::P521 => &rcgen::PKCS_ECDSA_P521_SHA512,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The DER-signature verifier for a CSR signed by this kind of key. Each curve is
    /// paired with its own hash only, the pairing every mainstream CSR producer uses.
    fn csr_verification(self) -> &'static dyn sig::VerificationAlgorithm {
        match self {
            KeyKind::P256 => &sig::ECDSA_P256_SHA256_ASN1,
            KeyKind::P384 => &sig::ECDSA_P384_SHA384_ASN1,
            KeyKind::P521 => &sig::ECDSA_P521_SHA512_ASN1,
            KeyKind::Ed25519 => &sig::ED25519,
        }
    }

    /// The exact DER `AlgorithmIdentifier` of the signature algorithm a CSR for this kind
    /// of key must use: `ecdsa-with-SHA256/384/512` or `id-Ed25519`, parameters absent
    /// (RFC 5758 §3.2, RFC 8410 §3).
    fn csr_signature_algorithm_der(self) -> &'static [u8] {
        match self {
            KeyKind::P256 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
            ],
            KeyKind::P384 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
            ],
            KeyKind::P521 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04,
            ],
            KeyKind::Ed25519 => &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70],
        }
    }

    fn csr_signature_oid(self) -> x509_parser::oid_registry::Oid<'static> {
        match self {
            KeyKind::P256 => OID_SIG_ECDSA_WITH_SHA256,
            KeyKind::P384 => OID_SIG_ECDSA_WITH_SHA384,
            KeyKind::P521 => OID_SIG_ECDSA_WITH_SHA512,
            KeyKind::Ed25519 => OID_SIG_ED25519,
        }
    }

    fn of_signing_key(key: &SigningKey) -> Result<Self, X509Error> {
        match key.algorithm() {
            Algorithm::Es256 => Ok(KeyKind::P256),
            Algorithm::Es384 => Ok(KeyKind::P384),
            Algorithm::Es512 => Ok(KeyKind::P521),
            Algorithm::EdDsa => Ok(KeyKind::Ed25519),
            _ => Err(X509Error::UnsupportedKey(
                "signing key is not EC or Ed25519",
            )),
        }
    }
}

/// A public key read from a DER `SubjectPublicKeyInfo`, checked to be a supported kind
/// with a valid key (EC points are checked to be on the curve).
struct PublicKeyInfo {
    kind: KeyKind,
    raw: Vec<u8>,
}

impl PublicKeyInfo {
    fn from_spki_der(spki: &[u8]) -> Result<Self, X509Error> {
        let kind = KeyKind::ALL
            .into_iter()
            .find(|kind| spki.starts_with(kind.spki_prefix()))
            .ok_or(X509Error::UnsupportedKey(
                "only EC P-256, P-384, P-521 (uncompressed) and Ed25519 keys are accepted",
            ))?;
        let raw = spki
            .get(kind.spki_prefix().len()..)
            .filter(|raw| raw.len() == kind.key_len())
            .ok_or(X509Error::MalformedKey(kind.name()))?;
        sig::ParsedPublicKey::new(kind.csr_verification(), raw)
            .map_err(|_| X509Error::MalformedKey(kind.name()))?;
        Ok(PublicKeyInfo {
            kind,
            raw: raw.to_vec(),
        })
    }
}

impl rcgen::PublicKeyData for PublicKeyInfo {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.kind.rcgen_algorithm()
    }
}

/// Lets rcgen sign with a [`SigningKey`] without ever holding the private key.
struct RcgenSigner<'k> {
    key: &'k SigningKey,
    kind: KeyKind,
    /// The raw public key (SEC1 uncompressed point, or Ed25519 bytes).
    public: Vec<u8>,
}

impl<'k> RcgenSigner<'k> {
    fn new(key: &'k SigningKey) -> Result<Self, X509Error> {
        let kind = KeyKind::of_signing_key(key)?;
        let public = match &key.public_jwk().params {
            KeyParams::Ec { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                point
            }
            KeyParams::Okp { x, .. } => x.clone(),
            _ => {
                return Err(X509Error::UnsupportedKey(
                    "signing key is not EC or Ed25519",
                ));
            }
        };
        Ok(RcgenSigner { key, kind, public })
    }
}

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.kind.rcgen_algorithm()
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature = self
            .key
            .sign(msg)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        match self.kind {
            KeyKind::Ed25519 => Ok(signature),
            // SigningKey signs in the JOSE form r‖s; X.509 wants ECDSA-Sig-Value (RFC 3279).
            _ => ecdsa_fixed_to_der(&signature).ok_or(rcgen::Error::RingUnspecified),
        }
    }
}

/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from the fixed-length `r‖s`.
fn ecdsa_fixed_to_der(fixed: &[u8]) -> Option<Vec<u8>> {
    if fixed.is_empty() || !fixed.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    Some(der::unsigned_integer_pair(r, s))
}

/// The DER `SubjectPublicKeyInfo` of a signing key, as it appears in certificates this
/// module issues for it and in CSRs from [`build_csr`].
pub fn subject_public_key_info(key: &SigningKey) -> Result<Vec<u8>, X509Error> {
    Ok(rcgen::PublicKeyData::subject_public_key_info(
        &RcgenSigner::new(key)?,
    ))
}

// ---------------------------------------------------------------------------------------
// Issuing

/// What goes into an X509-SVID signing (CA) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// The trust domain (e.g. `example.org`); the certificate carries its SPIFFE ID
    /// `spiffe://<trust_domain>`, without a path, as URI SAN.
    pub trust_domain: TrustDomain,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds; clamped to the issuer's for an intermediate.
    pub not_after: i64,
    /// Subject common name; empty for none. The subject is always `O=SPIFFE[, CN=...]`.
    pub subject_cn: String,
    /// Basic constraints `pathLenConstraint`: how many CAs may follow below this one.
    pub path_len: Option<u8>,
}

/// What goes into an X509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafParams {
    /// The workload's SPIFFE ID: scheme `spiffe` and a non-root path, or the leaf is not
    /// issued.
    pub spiffe_id: WorkloadId,
    /// DNS SANs, for workloads that serve TLS to hostname-validating clients (WIC).
    /// A leading `*.` wildcard label is allowed.
    pub dns_names: Vec<String>,
    /// Start of validity, Unix seconds; raised to the issuer's `notBefore` if earlier.
    pub not_before: i64,
    /// End of validity, Unix seconds; lowered to the issuer's `notAfter` if later.
    pub not_after: i64,
}

/// Makes a self-signed X509-SVID signing certificate for `key` (a trust domain's root).
///
/// `CA=true` (critical), key usage `keyCertSign` + `cRLSign` (critical), URI SAN
/// `spiffe://<trust domain>` without a path (X509-SVID §3.2), a random serial, and a
/// subject key identifier (truncated SHA-256, RFC 7093 method 1). No authority key
/// identifier: RFC 5280 §4.2.1.1 lets a self-signed certificate omit it.
pub fn self_signed_ca(key: &SigningKey, params: &CaParams) -> Result<Certificate, X509Error> {
    let signer = RcgenSigner::new(key)?;
    let cert_params = ca_certificate_params(params, params.not_before, params.not_after)?;
    let cert = cert_params
        .self_signed(&signer)
        .map_err(|e| build_error(&e))?;
    Certificate::from_der(cert.der().to_vec())
}

/// Makes an X509-SVID signing certificate for `key`, signed by an upstream CA.
///
/// Used when the server has an upstream CA, and for each server replica's own signing CA
/// under a shared root. Same profile as [`self_signed_ca`], plus an authority key
/// identifier equal to the issuer's subject key identifier. The validity is clamped to the
/// issuer's, as a CA must not outlive the CA above it. When the issuer carries a SPIFFE ID
/// its trust domain must be `params.trust_domain`.
pub fn intermediate_ca(
    key: &SigningKey,
    params: &CaParams,
    issuer_cert: &Certificate,
    issuer_key: &SigningKey,
) -> Result<Certificate, X509Error> {
    let issuer = IssuerContext::new(issuer_cert, issuer_key)?;
    issuer.require_own_trust_domain(
        &params.trust_domain.spiffe_id_string(),
        &params.trust_domain,
    )?;
    if let Some((_, Some(0))) = issuer_cert.basic_constraints {
        return Err(X509Error::IssuerNotCa(
            "its path length constraint allows no CA below it",
        ));
    }
    let (not_before, not_after) = issuer.clamp(params.not_before, params.not_after)?;
    let cert_params = ca_certificate_params(params, not_before, not_after)?;
    issuer.sign(cert_params, &RcgenSigner::new(key)?)
}

/// Makes an X509-SVID leaf for the public key `subject_spki_der` (from the agent's CSR,
/// see [`parse_csr`]), signed by `issuer_cert`/`issuer_key`.
///
/// Exactly one URI SAN (the ID, which must have a non-root path), DNS SANs from
/// `params`, `CA=false`, key usage `digitalSignature` only (critical), EKU `serverAuth` +
/// `clientAuth` (X509-SVID §4.4: both when present), a random serial, subject and
/// authority key identifiers.
///
/// The validity is clamped into the issuer's: a leaf must never outlive its CA, since it
/// would fail path validation from the moment the CA expires, and a rotation schedule
/// computed from the leaf's `notAfter` would then be wrong. The ID's trust domain must be
/// the issuer's when the issuer carries a SPIFFE ID.
pub fn workload_certificate(
    subject_spki_der: &[u8],
    params: &LeafParams,
    issuer_cert: &Certificate,
    issuer_key: &SigningKey,
) -> Result<Certificate, X509Error> {
    let issuer = IssuerContext::new(issuer_cert, issuer_key)?;
    let id = &params.spiffe_id;
    check_leaf_id(id)?;
    issuer.require_own_trust_domain(id.as_str(), id.trust_domain())?;
    let subject = PublicKeyInfo::from_spki_der(subject_spki_der)?;
    let (not_before, not_after) = issuer.clamp(params.not_before, params.not_after)?;

    let mut cert_params = CertificateParams::default();
    cert_params.distinguished_name = subject_name("");
    cert_params.subject_alt_names = leaf_sans(id, &params.dns_names)?;
    cert_params.is_ca = IsCa::ExplicitNoCa;
    cert_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    cert_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    cert_params.serial_number = Some(random_serial()?);
    set_validity(&mut cert_params, not_before, not_after)?;
    issuer.sign(cert_params, &subject)
}

fn build_error(e: &rcgen::Error) -> X509Error {
    X509Error::Build(e.to_string())
}

fn ca_certificate_params(
    params: &CaParams,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, X509Error> {
    let mut cert_params = CertificateParams::default();
    cert_params.distinguished_name = subject_name(&params.subject_cn);
    // X509-SVID §3.2: a signing certificate's SPIFFE ID is its trust domain's, with no path.
    cert_params.subject_alt_names =
        vec![SanType::URI(ia5(params.trust_domain.spiffe_id_string())?)];
    cert_params.is_ca = IsCa::Ca(match params.path_len {
        Some(len) => BasicConstraints::Constrained(len),
        None => BasicConstraints::Unconstrained,
    });
    cert_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    cert_params.serial_number = Some(random_serial()?);
    cert_params.key_identifier_method = KeyIdMethod::Sha256;
    set_validity(&mut cert_params, not_before, not_after)?;
    Ok(cert_params)
}

fn subject_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, SUBJECT_ORGANIZATION);
    if !common_name.is_empty() {
        name.push(DnType::CommonName, common_name);
    }
    name
}

fn ia5(text: String) -> Result<rcgen::string::Ia5String, X509Error> {
    rcgen::string::Ia5String::try_from(text).map_err(|e| X509Error::Build(e.to_string()))
}

fn leaf_sans(spiffe_id: &WorkloadId, dns_names: &[String]) -> Result<Vec<SanType>, X509Error> {
    let mut sans = Vec::with_capacity(1 + dns_names.len());
    sans.push(SanType::URI(ia5(spiffe_id.to_string())?));
    for name in dns_names {
        let host = name.strip_prefix("*.").unwrap_or(name);
        // pki-types accepts an absolute name (`host.`); a dNSName SAN must not end in a dot.
        if rustls_pki_types::DnsName::try_from(host).is_err()
            || host.contains('*')
            || host.ends_with('.')
        {
            return Err(X509Error::InvalidDnsName(name.clone()));
        }
        sans.push(SanType::DnsName(ia5(name.clone())?));
    }
    Ok(sans)
}

/// 128 random bits as a positive serial (RFC 5280 §4.1.2.2: positive, at most 20 octets).
/// rcgen writes the bytes as an unsigned magnitude, adding a 0x00 when the top bit is set.
fn random_serial() -> Result<SerialNumber, X509Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| X509Error::Random)?;
    // Never zero, which is not a positive integer.
    if bytes.iter().all(|b| *b == 0) {
        return Err(X509Error::Random);
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Unix seconds as a non-negative count that rcgen can write.
fn cert_time_secs(t: i64) -> Result<u64, X509Error> {
    if t > MAX_CERT_TIME {
        return Err(X509Error::InvalidValidity("time is after 9999-12-31"));
    }
    u64::try_from(t).map_err(|_| X509Error::InvalidValidity("time is before 1970"))
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), X509Error> {
    if not_before > not_after {
        return Err(X509Error::InvalidValidity("not_before is after not_after"));
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    // In range by construction (0 ..= year 9999), so the additions cannot overflow.
    params.not_before = epoch + Duration::from_secs(cert_time_secs(not_before)?);
    params.not_after = epoch + Duration::from_secs(cert_time_secs(not_after)?);
    Ok(())
}

/// An issuing CA as rcgen needs it, checked before anything is signed.
struct IssuerContext<'k> {
    issuer: rcgen::Issuer<'static, RcgenSigner<'k>>,
    /// The raw subject of the issuer certificate: the issuer name of what we sign.
    subject_der: Vec<u8>,
    not_before: i64,
    not_after: i64,
    /// The trust domain of the issuer's SPIFFE ID; `None` for an upstream CA without one.
    trust_domain: Option<TrustDomain>,
    has_subject_key_id: bool,
}

impl<'k> IssuerContext<'k> {
    fn new(cert: &Certificate, key: &'k SigningKey) -> Result<Self, X509Error> {
        if !cert.is_ca() {
            return Err(X509Error::IssuerNotCa("basic constraints do not say cA"));
        }
        if cert.key_usage.is_some() && !cert.has_key_usage(KU_KEY_CERT_SIGN) {
            return Err(X509Error::IssuerNotCa("key usage lacks keyCertSign"));
        }
        let signer = RcgenSigner::new(key)?;
        if rcgen::PublicKeyData::subject_public_key_info(&signer) != cert.spki {
            return Err(X509Error::IssuerKeyMismatch);
        }
        let (_, parsed) = X509Certificate::from_der(&cert.der)
            .map_err(|e| X509Error::MalformedCertificate(e.to_string()))?;
        let subject_der = parsed.subject().as_raw().to_vec();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(parsed.subject())?;
        params.key_identifier_method = match &cert.subject_key_id {
            // AKI keyIdentifier = the issuer's SKI, whatever method made it.
            Some(id) => KeyIdMethod::PreSpecified(id.clone()),
            None => KeyIdMethod::Sha256,
        };
        Ok(IssuerContext {
            issuer: rcgen::Issuer::new(params, signer),
            subject_der,
            not_before: cert.not_before,
            not_after: cert.not_after,
            trust_domain: cert
                .uri_san_id()
                .ok()
                .filter(WorkloadId::is_spiffe)
                .map(|id| id.trust_domain().clone()),
            has_subject_key_id: cert.subject_key_id.is_some(),
        })
    }

    /// A CA signs only inside its own trust domain (WIC: an ID outside the trust domain
    /// of the chain's anchors must be rejected, so it must not be issued either).
    fn require_own_trust_domain(
        &self,
        id: &str,
        trust_domain: &TrustDomain,
    ) -> Result<(), X509Error> {
        match &self.trust_domain {
            Some(issuer_td) => require_trust_domain(id, trust_domain, issuer_td),
            None => Ok(()),
        }
    }

    fn clamp(&self, not_before: i64, not_after: i64) -> Result<(i64, i64), X509Error> {
        let not_before = not_before.max(self.not_before);
        let not_after = not_after.min(self.not_after);
        if not_before > not_after {
            return Err(X509Error::InvalidValidity(
                "validity does not overlap the issuer's",
            ));
        }
        Ok((not_before, not_after))
    }

    /// Signs `params` for the public key `subject`, with an authority key identifier when
    /// the issuer has a subject key identifier to point to.
    fn sign(
        &self,
        mut params: CertificateParams,
        subject: &impl rcgen::PublicKeyData,
    ) -> Result<Certificate, X509Error> {
        params.use_authority_key_identifier_extension = self.has_subject_key_id;
        let cert = params
            .signed_by(subject, &self.issuer)
            .map_err(|e| build_error(&e))?;
        self.finish(cert.der())
    }

    /// Parses what rcgen produced and checks it names its issuer byte for byte: webpki
    /// (like most validators) matches issuer to subject by exact DER, and rcgen rebuilds
    /// the name from parts, which cannot reproduce every encoding an upstream CA may use.
    fn finish(&self, der: &[u8]) -> Result<Certificate, X509Error> {
        let (_, parsed) = X509Certificate::from_der(der)
            .map_err(|e| X509Error::MalformedCertificate(e.to_string()))?;
        if parsed.issuer().as_raw() != self.subject_der.as_slice() {
            return Err(X509Error::IssuerName("re-encoded name differs"));
        }
        drop(parsed);
        Certificate::from_der(der.to_vec())
    }
}

/// Rebuilds an X.509 name for rcgen, keeping each attribute's string type.
fn distinguished_name(
    name: &x509_parser::x509::X509Name<'_>,
) -> Result<DistinguishedName, X509Error> {
    use rcgen::string::{BmpString, PrintableString, TeletexString, UniversalString};
    use x509_parser::asn1_rs::Tag;

    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(X509Error::IssuerName(
                "a relative distinguished name is empty or multi-valued",
            ));
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or(X509Error::IssuerName("attribute type is not representable"))?
            .collect();
        let dn_type = DnType::from_oid(&oid);
        if dn.get(&dn_type).is_some() {
            // rcgen keeps one value per attribute type (e.g. `DC=example, DC=com` is lost).
            return Err(X509Error::IssuerName("an attribute type repeats"));
        }
        let value = attribute.attr_value();
        let data = value.data.to_vec();
        let text = || {
            String::from_utf8(data.clone())
                .map_err(|_| X509Error::IssuerName("attribute value is not text"))
        };
        let bad = |_| X509Error::IssuerName("attribute value does not fit its string type");
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => {
                DnValue::PrintableString(PrintableString::try_from(text()?).map_err(bad)?)
            }
            Tag::Ia5String => {
                DnValue::Ia5String(rcgen::string::Ia5String::try_from(text()?).map_err(bad)?)
            }
            Tag::T61String => {
                DnValue::TeletexString(TeletexString::try_from(text()?).map_err(bad)?)
            }
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.clone()).map_err(bad)?)
            }
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.clone()).map_err(bad)?)
            }
            _ => return Err(X509Error::IssuerName("attribute value is not a string")),
        };
        dn.push(dn_type, dn_value);
    }
    Ok(dn)
}

// ---------------------------------------------------------------------------------------
// Certificate signing requests

/// What the server takes from a CSR whose signature verified.
///
/// Only the public key is used to issue: the ID comes from the server's registration
/// entries, never from the request, and no requested extension is copied. The SANs are
/// kept so the server can compare and log what the agent asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// The requester's DER `SubjectPublicKeyInfo`, proven by the CSR's signature.
    pub spki_der: Vec<u8>,
    /// URI SANs the request asks for.
    pub uri_sans: Vec<String>,
    /// DNS SANs the request asks for.
    pub dns_names: Vec<String>,
}

/// Parses a DER PKCS#10 CSR and verifies its self-signature (proof of possession).
///
/// Refused: more than [`MAX_CSR_LEN`] bytes, trailing bytes, keys other than EC P-256,
/// P-384, P-521 (uncompressed) and Ed25519, a signature algorithm that is not the key's
/// own (ECDSA with the curve's hash, or Ed25519), and a signature that does not verify.
pub fn parse_csr(der: &[u8]) -> Result<Csr, X509Error> {
    if der.len() > MAX_CSR_LEN {
        return Err(X509Error::TooLarge {
            what: "certificate signing request",
            len: der.len(),
            limit: MAX_CSR_LEN,
        });
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| X509Error::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::MalformedCsr(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(X509Error::MalformedCsr("version is not v1".into()));
    }
    let key = PublicKeyInfo::from_spki_der(info.subject_pki.raw)?;

    // Verify before reading anything else from the request.
    let algorithm = &csr.signature_algorithm;
    if algorithm.algorithm != key.kind.csr_signature_oid() || algorithm.parameters.is_some() {
        return Err(X509Error::CsrAlgorithm(key.kind.name()));
    }
    if csr.signature_value.unused_bits != 0 {
        return Err(X509Error::CsrSignature);
    }
    // x509-parser is lenient with the tags of the outer structure (which the signature does
    // not cover); insist that it is the one DER encoding of what was parsed.
    if der != canonical_csr(info.raw, key.kind, &csr.signature_value.data).as_slice() {
        return Err(X509Error::MalformedCsr("not canonical DER".into()));
    }
    UnparsedPublicKey::new(key.kind.csr_verification(), &key.raw)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| X509Error::CsrSignature)?;

    let mut uri_sans = Vec::new();
    let mut dns_names = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for extension in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = extension {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                        GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(Csr {
        spki_der: info.subject_pki.raw.to_vec(),
        uri_sans,
        dns_names,
    })
}

/// `CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature BIT STRING }`.
fn canonical_csr(info: &[u8], kind: KeyKind, signature: &[u8]) -> Vec<u8> {
    let algorithm = kind.csr_signature_algorithm_der();
    let mut body = Vec::with_capacity(info.len() + algorithm.len() + signature.len() + 8);
    body.extend_from_slice(info);
    body.extend_from_slice(algorithm);
    body.push(0x03);
    der::push_length(&mut body, signature.len() + 1);
    body.push(0x00);
    body.extend_from_slice(signature);
    der::sequence(&body)
}

/// Builds a DER PKCS#10 CSR for `key`, asking for `spiffe_id` (the agent side).
///
/// The subject is empty (so the SAN is marked critical, RFC 5280 §4.1.2.6); the ID must
/// be a leaf ID (scheme `spiffe`, non-root path).
pub fn build_csr(key: &SigningKey, spiffe_id: &WorkloadId) -> Result<Vec<u8>, X509Error> {
    check_leaf_id(spiffe_id)?;
    let signer = RcgenSigner::new(key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(ia5(spiffe_id.to_string())?)];
    let csr = params
        .serialize_request(&signer)
        .map_err(|e| build_error(&e))?;
    Ok(csr.der().to_vec())
}

// ---------------------------------------------------------------------------------------
// Verification

/// The EKU policy for SVIDs: no EKU extension, or one that includes `serverAuth` or
/// `clientAuth`.
///
/// webpki's `KeyUsage::required_if_present` takes a single purpose, and the same SVID
/// authenticates clients and servers alike; so this validator accepts either. An EKU
/// extension is only a SHOULD for X509-SVID leaves (§4.4), hence no EKU is accepted too.
/// webpki applies the policy to every certificate of the path, so an intermediate
/// restricted to other purposes is refused (EKU chaining).
struct SvidExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for SvidExtendedKeyUsage {
    fn validate(&self, purposes: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let server = webpki::KeyPurposeId::new(EKU_SERVER_AUTH);
        let client = webpki::KeyPurposeId::new(EKU_CLIENT_AUTH);
        let mut present = Vec::new();
        for purpose in purposes {
            let purpose = purpose?;
            if purpose == server || purpose == client {
                return Ok(());
            }
            present.push(purpose.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::client_auth(),
                present,
            },
        ))
    }
}

/// Verifies an X509-SVID chain and returns its SPIFFE ID.
///
/// `chain` is the presented chain, leaf first; `chain[1..]` are candidate intermediates.
/// `roots` are the trust anchors of one trust domain.
///
/// First RFC 5280 path validation by rustls-webpki at `now`: signatures, the validity of
/// every certificate, basic constraints, path length, name constraints, and EKU (no EKU
/// extension, or one that includes `serverAuth` or `clientAuth`: the same SVID serves as
/// client and server certificate, and X509-SVID §4.4 makes EKU only a SHOULD). Then
/// X509-SVID §5: key usage of the intermediates in the path allows `keyCertSign` when
/// present, and the leaf has exactly one URI SAN, a `spiffe://` ID with a non-root path,
/// `CA=false`, and key usage with `digitalSignature` and without `keyCertSign`/`cRLSign`.
///
/// Roots are trust anchors, so their own validity and constraints are not checked (RFC
/// 5280 §6.1.1). This does not check that the ID belongs to the roots' trust domain: use
/// [`verify_svid_for_trust_domain`] when the roots were chosen for one.
pub fn verify_svid_chain(
    chain: &[Certificate],
    roots: &[Certificate],
    now: i64,
) -> Result<WorkloadId, X509Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(X509Error::EmptyChain)?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now).map_err(|_| X509Error::InvalidTime(now))?,
    ));

    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|c| CertificateDer::from(c.der()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(der)
                .map_err(|e| X509Error::BadTrustAnchor(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der()))
        .collect();
    let leaf_der = CertificateDer::from(leaf.der());
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| webpki_error(&e, now))?;
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediate_ders,
            time,
            SvidExtendedKeyUsage,
            None,
            None,
        )
        .map_err(|e| webpki_error(&e, now))?;

    // webpki ignores key usage on CAs; RFC 5280 §4.2.1.3 and X509-SVID §4.3 do not.
    for used in path.intermediate_certificates() {
        let der = used.der();
        let signing = chain
            .iter()
            .find(|c| c.der() == der.as_ref())
            .ok_or(X509Error::UnknownIssuer)?;
        if signing.key_usage.is_some() && !signing.has_key_usage(KU_KEY_CERT_SIGN) {
            return Err(X509Error::KeyUsage(
                "an intermediate's key usage lacks keyCertSign",
            ));
        }
    }

    check_leaf(leaf)
}

/// [`verify_svid_chain`], then checks the ID is in `trust_domain`, the trust domain whose
/// roots were passed (WIC and the mutual-TLS binding: reject an identifier outside the
/// trust domain of the anchors used).
pub fn verify_svid_for_trust_domain(
    chain: &[Certificate],
    trust_domain: &TrustDomain,
    roots: &[Certificate],
    now: i64,
) -> Result<WorkloadId, X509Error> {
    let id = verify_svid_chain(chain, roots, now)?;
    require_trust_domain(id.as_str(), id.trust_domain(), trust_domain)?;
    Ok(id)
}

/// Refuses `id`, whose trust domain is `id_trust_domain`, unless that is `expected`.
fn require_trust_domain(
    id: &str,
    id_trust_domain: &TrustDomain,
    expected: &TrustDomain,
) -> Result<(), X509Error> {
    if id_trust_domain != expected {
        return Err(X509Error::TrustDomainMismatch {
            id: id.to_owned(),
            trust_domain: expected.to_string(),
        });
    }
    Ok(())
}

/// X509-SVID §2 and §3.1: a leaf carries a SPIFFE ID with a non-root path. The ID's own
/// syntax was checked when it became a [`WorkloadId`].
fn check_leaf_id(id: &WorkloadId) -> Result<(), X509Error> {
    if !id.is_spiffe() {
        return Err(X509Error::NotSpiffe(id.to_string()));
    }
    if id.is_trust_domain_id() {
        return Err(X509Error::RootPathLeaf(id.to_string()));
    }
    Ok(())
}

/// X509-SVID §5 leaf checks, on a leaf whose path already validated.
fn check_leaf(leaf: &Certificate) -> Result<WorkloadId, X509Error> {
    if leaf.is_ca() {
        return Err(X509Error::LeafIsCa);
    }
    match leaf.key_usage {
        None => return Err(X509Error::KeyUsage("leaf has no key usage extension")),
        Some(_) if !leaf.has_key_usage(KU_DIGITAL_SIGNATURE) => {
            return Err(X509Error::KeyUsage("leaf lacks digitalSignature"));
        }
        Some(_) if leaf.has_key_usage(KU_KEY_CERT_SIGN | KU_CRL_SIGN) => {
            return Err(X509Error::KeyUsage("leaf has keyCertSign or cRLSign"));
        }
        Some(_) => {}
    }
    let id = leaf.uri_san_id()?;
    check_leaf_id(&id)?;
    Ok(id)
}

/// RFC 9525 §6.3 hostname validation, which the mutual-TLS binding requires of a client
/// that reached its server by DNS name (SPECS §6): the leaf `cert` must hold `dns_name`
/// as a DNS-ID (a DNS SAN; the subject's CN is never used), compared without regard to
/// ASCII case, with a wildcard only as the whole leftmost label and standing for exactly
/// one label. rustls-webpki implements these rules; this names the failure.
///
/// The chain and the SPIFFE ID are checked apart ([`verify_svid_for_trust_domain`]).
pub fn verify_dns_name(cert: &Certificate, dns_name: &str) -> Result<(), X509Error> {
    let mismatch = || {
        let sans = cert.dns_sans();
        X509Error::NameMismatch {
            name: dns_name.to_owned(),
            presented: if sans.is_empty() {
                "none".to_owned()
            } else {
                sans.join(", ")
            },
        }
    };
    let reference = rustls_pki_types::DnsName::try_from(dns_name)
        .map_err(|_| X509Error::InvalidDnsName(dns_name.to_owned()))?;
    let der = CertificateDer::from(cert.der());
    let end_entity = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| X509Error::MalformedCertificate(e.to_string()))?;
    end_entity
        .verify_is_valid_for_subject_name(&rustls_pki_types::ServerName::DnsName(reference))
        .map_err(|_| mismatch())
}

fn webpki_secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

fn webpki_error(e: &webpki::Error, now: i64) -> X509Error {
    use webpki::Error as E;
    match e {
        E::CertExpired { not_after, .. } => X509Error::Expired {
            not_after: webpki_secs(*not_after),
            now,
        },
        E::CertNotValidYet { not_before, .. } => X509Error::NotYetValid {
            not_before: webpki_secs(*not_before),
            now,
        },
        E::UnknownIssuer => X509Error::UnknownIssuer,
        E::InvalidSignatureForPublicKey => X509Error::BadSignature,
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch => X509Error::UnsupportedSignatureAlgorithm,
        E::CaUsedAsEndEntity => X509Error::LeafIsCa,
        E::EndEntityUsedAsCa => X509Error::IntermediateNotCa,
        E::PathLenConstraintViolated => X509Error::PathLenConstraint,
        E::NameConstraintViolation => X509Error::NameConstraint,
        E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => X509Error::ExtendedKeyUsage,
        other => X509Error::InvalidChain(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use x509_parser::extensions::ParsedExtension as Ext;

    const NOW: i64 = 1_800_000_000;
    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    const TD: &str = "example.org";
    const ID: &str = "spiffe://example.org/ns/prod/sa/web";
    /// Every key algorithm this profile issues for and accepts in CSRs.
    const KEY_ALGORITHMS: [Algorithm; 4] = [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
        Algorithm::EdDsa,
    ];

    fn workload_id(uri: &str) -> WorkloadId {
        WorkloadId::parse(uri).unwrap()
    }

    fn trust_domain(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn ca_params(name: &str, cn: &str) -> CaParams {
        CaParams {
            trust_domain: trust_domain(name),
            not_before: NOW - DAY,
            not_after: NOW + 30 * DAY,
            subject_cn: cn.into(),
            path_len: None,
        }
    }

    fn root(alg: Algorithm, cn: &str) -> (SigningKey, Certificate) {
        let key = SigningKey::generate(alg).unwrap();
        let cert = self_signed_ca(&key, &ca_params(TD, cn)).unwrap();
        (key, cert)
    }

    fn leaf_params(id: &str) -> LeafParams {
        LeafParams {
            spiffe_id: workload_id(id),
            dns_names: vec![],
            not_before: NOW - HOUR,
            not_after: NOW + HOUR,
        }
    }

    /// The agent makes a key and CSR; the server reads the CSR and issues.
    fn issue_leaf(
        alg: Algorithm,
        params: &LeafParams,
        issuer_cert: &Certificate,
        issuer_key: &SigningKey,
    ) -> Result<Certificate, X509Error> {
        let key = SigningKey::generate(alg).unwrap();
        let csr = parse_csr(&build_csr(&key, &workload_id(ID)).unwrap()).unwrap();
        workload_certificate(&csr.spki_der, params, issuer_cert, issuer_key)
    }

    /// Signs arbitrary rcgen parameters with a CA, for leaves this module would not issue.
    fn sign_raw(
        params: &CertificateParams,
        issuer_cert: &Certificate,
        issuer_key: &SigningKey,
    ) -> Certificate {
        let subject = SigningKey::generate(Algorithm::Es256).unwrap();
        let subject = RcgenSigner::new(&subject).unwrap();
        let issuer = IssuerContext::new(issuer_cert, issuer_key).unwrap();
        issuer.sign(params.clone(), &subject).unwrap()
    }

    fn raw_leaf_params(uris: &[&str]) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject_name("");
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(ia5((*u).to_owned()).unwrap()))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, NOW - HOUR, NOW + HOUR).unwrap();
        params
    }

    #[test]
    fn a_server_reached_by_dns_name_must_hold_it_as_a_dns_id() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = leaf_params(ID);
        params.dns_names = vec!["orders.prod.example".into(), "*.api.example".into()];
        let leaf = issue_leaf(Algorithm::Es256, &params, &ca, &key).unwrap();
        // RFC 9525 §6.3: exact, ASCII case folded; a wildcard is the whole leftmost label
        // and stands for exactly one label.
        for name in [
            "orders.prod.example",
            "ORDERS.Prod.example",
            "x.api.example",
        ] {
            verify_dns_name(&leaf, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in [
            "prod.example",
            "a.orders.prod.example",
            "api.example",
            "a.b.api.example",
            "orders.prod.example.evil",
        ] {
            let err = verify_dns_name(&leaf, name).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "certificate does not name `{name}` (its DNS names: orders.prod.example, \
                     *.api.example)"
                )
            );
        }
        // The subject's CN is never a DNS-ID, and an SVID without DNS SANs names nothing.
        let mut raw = raw_leaf_params(&[ID]);
        raw.distinguished_name = subject_name("orders.prod.example");
        let cn_only = sign_raw(&raw, &ca, &key);
        assert!(matches!(
            verify_dns_name(&cn_only, "orders.prod.example"),
            Err(X509Error::NameMismatch { presented, .. }) if presented == "none"
        ));
        // A reference that is not a DNS name (an IP address, a wildcard) is refused as such.
        for name in ["127.0.0.1", "*.api.example", ""] {
            assert!(
                matches!(
                    verify_dns_name(&leaf, name),
                    Err(X509Error::InvalidDnsName(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn a_leaf_names_the_wimse_authority_that_signed_it() {
        let (key, ca) = root(Algorithm::Es256, &format!("{CA_COMMON_NAME_PREFIX}k7_-Q"));
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        assert_eq!(leaf.wimse_authority(), Some("k7_-Q"));
        // Also under an intermediate: the leaf names the CA right above it.
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mid = intermediate_ca(
            &mid_key,
            &ca_params(TD, &format!("{CA_COMMON_NAME_PREFIX}mid")),
            &ca,
            &key,
        )
        .unwrap();
        let under = issue_leaf(Algorithm::Es256, &leaf_params(ID), &mid, &mid_key).unwrap();
        assert_eq!(under.wimse_authority(), Some("mid"));
        assert_eq!(mid.wimse_authority(), Some("k7_-Q"));
        // Another issuer's name, or the bare prefix, names none.
        for cn in ["Other CA", CA_COMMON_NAME_PREFIX, "wimse CAk"] {
            let (key, ca) = root(Algorithm::Es256, cn);
            let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
            assert_eq!(leaf.wimse_authority(), None, "{cn}");
        }
    }

    const SUBJECT_KEY_ID_OID: &str = "2.5.29.14";
    const KEY_USAGE_OID: &str = "2.5.29.15";
    const BASIC_CONSTRAINTS_OID: &str = "2.5.29.19";
    const EXTENDED_KEY_USAGE_OID: &str = "2.5.29.37";

    /// `None` when `cert` lacks the extension `oid`, else whether it is critical.
    fn criticality(cert: &Certificate, oid: &str) -> Option<bool> {
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .map(|e| e.critical)
    }

    fn authority_key_id(cert: &Certificate) -> Option<Vec<u8>> {
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                Ext::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
    }

    #[test]
    fn ca_signed_leaf_verifies_and_yields_its_id_for_every_key_type() {
        for ca_alg in KEY_ALGORITHMS {
            let (ca_key, ca) = root(ca_alg, "root");
            for leaf_alg in KEY_ALGORITHMS {
                let leaf = issue_leaf(leaf_alg, &leaf_params(ID), &ca, &ca_key).unwrap();
                assert_eq!(
                    verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW).unwrap(),
                    workload_id(ID),
                    "{ca_alg:?} CA, {leaf_alg:?} leaf"
                );
            }
        }
    }

    #[test]
    fn leaf_under_an_intermediate_verifies_against_the_root() {
        let (root_key, root_cert) = root(Algorithm::Es256, "root");
        let mid_key = SigningKey::generate(Algorithm::Es384).unwrap();
        let mid =
            intermediate_ca(&mid_key, &ca_params(TD, "replica-1"), &root_cert, &root_key).unwrap();
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &mid, &mid_key).unwrap();
        assert_eq!(
            verify_svid_chain(
                &[leaf.clone(), mid.clone()],
                std::slice::from_ref(&root_cert),
                NOW
            )
            .unwrap(),
            workload_id(ID)
        );
        // Without the intermediate there is no path.
        assert_eq!(
            verify_svid_chain(&[leaf], &[root_cert], NOW),
            Err(X509Error::UnknownIssuer)
        );
    }

    #[test]
    fn leaf_from_another_ca_is_an_unknown_issuer() {
        let (_, ours) = root(Algorithm::Es256, "ours");
        let (their_key, theirs) = root(Algorithm::Es256, "theirs");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &theirs, &their_key).unwrap();
        assert_eq!(
            verify_svid_chain(&[leaf], &[ours], NOW),
            Err(X509Error::UnknownIssuer)
        );
    }

    #[test]
    fn leaf_signed_by_another_key_under_the_same_name_has_a_bad_signature() {
        let (_, ours) = root(Algorithm::Es256, "same");
        let (their_key, theirs) = root(Algorithm::Es256, "same");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &theirs, &their_key).unwrap();
        assert_eq!(
            verify_svid_chain(&[leaf], &[ours], NOW),
            Err(X509Error::BadSignature)
        );
    }

    #[test]
    fn expired_leaf_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        let later = NOW + 2 * HOUR;
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], later),
            Err(X509Error::Expired {
                not_after: NOW + HOUR,
                now: later
            })
        );
    }

    #[test]
    fn not_yet_valid_leaf_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        let earlier = NOW - 2 * HOUR;
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], earlier),
            Err(X509Error::NotYetValid {
                not_before: NOW - HOUR,
                now: earlier
            })
        );
    }

    #[test]
    fn leaf_with_two_uri_sans_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = sign_raw(
            &raw_leaf_params(&[ID, "spiffe://example.org/other"]),
            &ca,
            &key,
        );
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW),
            Err(X509Error::MultipleUriSans(2))
        );
    }

    #[test]
    fn leaf_without_uri_san_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = raw_leaf_params(&[]);
        params.subject_alt_names = vec![SanType::DnsName(ia5("web.example.org".into()).unwrap())];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW),
            Err(X509Error::NoUriSan)
        );
    }

    #[test]
    fn leaf_with_a_non_spiffe_uri_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = sign_raw(&raw_leaf_params(&["https://example.org/web"]), &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW),
            Err(X509Error::NotSpiffe("https://example.org/web".into()))
        );
    }

    #[test]
    fn ca_certificate_presented_as_a_leaf_is_refused() {
        let (root_key, root_cert) = root(Algorithm::Es256, "root");
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mid = intermediate_ca(&mid_key, &ca_params(TD, "mid"), &root_cert, &root_key).unwrap();
        assert_eq!(
            verify_svid_chain(&[mid], std::slice::from_ref(&root_cert), NOW),
            Err(X509Error::LeafIsCa)
        );
        assert_eq!(
            verify_svid_chain(
                std::slice::from_ref(&root_cert),
                std::slice::from_ref(&root_cert),
                NOW
            ),
            Err(X509Error::LeafIsCa)
        );
    }

    #[test]
    fn leaf_whose_id_has_no_path_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = sign_raw(&raw_leaf_params(&["spiffe://example.org"]), &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW),
            Err(X509Error::RootPathLeaf("spiffe://example.org".into()))
        );
        // And it is never issued.
        assert_eq!(
            issue_leaf(
                Algorithm::Es256,
                &leaf_params("spiffe://example.org"),
                &ca,
                &key
            ),
            Err(X509Error::RootPathLeaf("spiffe://example.org".into()))
        );
    }

    #[test]
    fn leaf_with_malformed_spiffe_id_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        for bad in [
            "spiffe://Example.org/web",
            "spiffe://example.org/web/",
            "spiffe://example.org//web",
            "spiffe://example.org/../web",
            "spiffe://example.org/w%20b",
            "spiffe://example.org:443/web",
            "spiffe:///web",
        ] {
            let leaf = sign_raw(&raw_leaf_params(&[bad]), &ca, &key);
            // The rule that was broken is the one `WorkloadId::parse` reports.
            let expected = WorkloadId::parse(bad).unwrap_err();
            assert_eq!(
                verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW),
                Err(X509Error::InvalidSpiffeId {
                    id: bad.to_owned(),
                    source: expected
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_uri_san_error_keeps_the_id_rule_as_its_source() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = sign_raw(&raw_leaf_params(&["spiffe://example.org/web/"]), &ca, &key);
        let err = verify_svid_chain(&[leaf], &[ca], NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate URI SAN is not a valid SPIFFE ID"
        );
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(
            source.to_string(),
            "identifier `spiffe://example.org/web/` has a trailing slash"
        );
    }

    #[test]
    fn id_of_another_scheme_is_neither_requested_nor_issued() {
        let (ca_key, ca) = root(Algorithm::Es256, "root");
        let wimse = "wimse://example.org/web";
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        assert_eq!(
            build_csr(&key, &workload_id(wimse)),
            Err(X509Error::NotSpiffe(wimse.into()))
        );
        let spki = subject_public_key_info(&key).unwrap();
        assert_eq!(
            workload_certificate(&spki, &leaf_params(wimse), &ca, &ca_key),
            Err(X509Error::NotSpiffe(wimse.into()))
        );
    }

    #[test]
    fn csr_for_a_trust_domain_id_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        assert_eq!(
            build_csr(&key, &workload_id("spiffe://example.org")),
            Err(X509Error::RootPathLeaf("spiffe://example.org".into()))
        );
    }

    #[test]
    fn leaf_with_signing_key_usage_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = raw_leaf_params(&[ID]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW),
            Err(X509Error::KeyUsage("leaf has keyCertSign or cRLSign"))
        );
        params.key_usages = vec![];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW),
            Err(X509Error::KeyUsage("leaf has no key usage extension"))
        );
    }

    #[test]
    fn leaf_without_eku_is_accepted_and_with_a_foreign_eku_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = raw_leaf_params(&[ID]);
        params.extended_key_usages = vec![];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW).unwrap(),
            workload_id(ID)
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW).unwrap(),
            workload_id(ID)
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let leaf = sign_raw(&params, &ca, &key);
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW),
            Err(X509Error::ExtendedKeyUsage)
        );
    }

    #[test]
    fn leaf_is_clamped_to_its_ca_expiry() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = leaf_params(ID);
        params.not_before = NOW - 365 * DAY;
        params.not_after = NOW + 365 * DAY;
        let leaf = issue_leaf(Algorithm::Es256, &params, &ca, &key).unwrap();
        assert_eq!(leaf.not_after(), ca.not_after());
        assert_eq!(leaf.not_before(), ca.not_before());
        assert_eq!(
            verify_svid_chain(&[leaf], std::slice::from_ref(&ca), ca.not_after()).unwrap(),
            workload_id(ID)
        );
        // A request entirely outside the CA's validity cannot be met.
        params.not_before = ca.not_after() + 1;
        params.not_after = ca.not_after() + DAY;
        assert!(matches!(
            issue_leaf(Algorithm::Es256, &params, &ca, &key),
            Err(X509Error::InvalidValidity(_))
        ));
    }

    #[test]
    fn intermediate_is_clamped_to_its_issuer_and_names_it() {
        let (root_key, root_cert) = root(Algorithm::Es256, "root");
        let mut params = ca_params(TD, "replica-1");
        params.not_after = NOW + 3650 * DAY;
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mid = intermediate_ca(&mid_key, &params, &root_cert, &root_key).unwrap();
        assert_eq!(mid.not_after(), root_cert.not_after());
        assert_eq!(authority_key_id(&mid), root_cert.subject_key_id.clone());
        assert!(root_cert.subject_key_id.is_some());
        assert_eq!(authority_key_id(&root_cert), None);
    }

    /// An upstream root made by another tool: `PrintableString` values, no SPIFFE ID.
    fn upstream_root(name: DistinguishedName) -> (SigningKey, Certificate) {
        let key = SigningKey::generate(Algorithm::Es384).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        set_validity(&mut params, NOW - DAY, NOW + DAY).unwrap();
        let cert = params
            .self_signed(&RcgenSigner::new(&key).unwrap())
            .unwrap();
        (key, Certificate::from_der(cert.der().to_vec()).unwrap())
    }

    fn printable(text: &str) -> DnValue {
        DnValue::PrintableString(rcgen::string::PrintableString::try_from(text).unwrap())
    }

    #[test]
    fn intermediate_under_an_upstream_ca_with_a_foreign_name_encoding_chains() {
        let mut name = DistinguishedName::new();
        name.push(DnType::CountryName, printable("US"));
        name.push(DnType::OrganizationName, printable("Upstream Corp"));
        name.push(DnType::CommonName, "Upstream Root");
        let (up_key, up) = upstream_root(name);
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mid = intermediate_ca(&mid_key, &ca_params(TD, "server"), &up, &up_key).unwrap();
        assert_eq!(mid.not_after(), up.not_after());
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &mid, &mid_key).unwrap();
        assert_eq!(
            verify_svid_chain(&[leaf, mid], std::slice::from_ref(&up), NOW).unwrap(),
            workload_id(ID)
        );
    }

    #[test]
    fn upstream_name_that_cannot_be_reproduced_is_refused() {
        // `CN=x, CN=x`: rcgen's name type keeps one value per attribute type, so the issuer
        // name of anything signed under it would differ from this subject.
        let rdn = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, b'x',
        ];
        let mut name = vec![0x30, 0x18];
        name.extend_from_slice(&rdn);
        name.extend_from_slice(&rdn);
        let (_, name) = x509_parser::x509::X509Name::from_der(&name).unwrap();
        assert_eq!(
            distinguished_name(&name),
            Err(X509Error::IssuerName("an attribute type repeats"))
        );
        // A multi-valued RDN is refused too.
        let multi = [
            0x30, 0x16, 0x31, 0x14, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, b'x',
            0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x01, b'y',
        ];
        let (_, name) = x509_parser::x509::X509Name::from_der(&multi).unwrap();
        assert!(matches!(
            distinguished_name(&name),
            Err(X509Error::IssuerName(_))
        ));
    }

    #[test]
    fn ca_certificate_follows_the_signing_certificate_profile() {
        let (key, ca) = root(Algorithm::Es256, "root");
        assert!(ca.is_ca());
        assert_eq!(ca.uri_sans(), vec!["spiffe://example.org".to_owned()]);
        assert_eq!(ca.key_usage, Some(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
        assert_eq!(ca.spki_der(), subject_public_key_info(&key).unwrap());
        assert_eq!(criticality(&ca, BASIC_CONSTRAINTS_OID), Some(true));
        assert_eq!(criticality(&ca, KEY_USAGE_OID), Some(true));
        assert!(criticality(&ca, SUBJECT_KEY_ID_OID).is_some());
        // 16 random bytes, plus a 0x00 when the top bit is set.
        assert!(matches!(ca.serial_hex().len(), 30..=32));
        assert_ne!(
            ca.serial_hex(),
            root(Algorithm::Es256, "root").1.serial_hex()
        );
    }

    #[test]
    fn leaf_follows_the_x509_svid_profile() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let mut params = leaf_params(ID);
        params.dns_names = vec!["web.example.org".into(), "*.web.example.org".into()];
        let leaf = issue_leaf(Algorithm::Es256, &params, &ca, &key).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(leaf.uri_sans(), vec![ID.to_owned()]);
        assert_eq!(leaf.dns_sans(), params.dns_names);
        assert_eq!(leaf.key_usage, Some(KU_DIGITAL_SIGNATURE));
        assert_eq!(criticality(&leaf, KEY_USAGE_OID), Some(true));
        assert_eq!(criticality(&leaf, BASIC_CONSTRAINTS_OID), Some(true));
        assert!(criticality(&leaf, EXTENDED_KEY_USAGE_OID).is_some());
        assert_eq!(authority_key_id(&leaf), ca.subject_key_id.clone());
        let (_, parsed) = X509Certificate::from_der(leaf.der()).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn workload_certificate_puts_the_csr_key_in_the_leaf() {
        let (ca_key, ca) = root(Algorithm::Es256, "root");
        for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::EdDsa] {
            let agent_key = SigningKey::generate(alg).unwrap();
            let csr = parse_csr(&build_csr(&agent_key, &workload_id(ID)).unwrap()).unwrap();
            let leaf = workload_certificate(&csr.spki_der, &leaf_params(ID), &ca, &ca_key).unwrap();
            assert_eq!(leaf.spki_der(), csr.spki_der);
            assert_eq!(
                leaf.spki_der(),
                subject_public_key_info(&agent_key).unwrap()
            );
        }
    }

    #[test]
    fn leaf_outside_the_issuer_trust_domain_is_not_issued() {
        let (key, ca) = root(Algorithm::Es256, "root");
        assert!(matches!(
            issue_leaf(
                Algorithm::Es256,
                &leaf_params("spiffe://other.org/web"),
                &ca,
                &key
            ),
            Err(X509Error::TrustDomainMismatch { .. })
        ));
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        assert!(matches!(
            intermediate_ca(&mid_key, &ca_params("other.org", "mid"), &ca, &key),
            Err(X509Error::TrustDomainMismatch { .. })
        ));
    }

    #[test]
    fn verification_for_a_trust_domain_refuses_ids_of_another() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        let chain = [leaf];
        let roots = [ca];
        assert_eq!(
            verify_svid_for_trust_domain(&chain, &trust_domain(TD), &roots, NOW).unwrap(),
            workload_id(ID)
        );
        assert!(matches!(
            verify_svid_for_trust_domain(&chain, &trust_domain("other.org"), &roots, NOW),
            Err(X509Error::TrustDomainMismatch { .. })
        ));
    }

    #[test]
    fn issuing_with_the_wrong_issuer_key_or_a_leaf_issuer_is_refused() {
        let (_, ca) = root(Algorithm::Es256, "root");
        let (other_key, other) = root(Algorithm::Es256, "other");
        assert_eq!(
            issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &other_key),
            Err(X509Error::IssuerKeyMismatch)
        );
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &other, &other_key).unwrap();
        assert!(matches!(
            issue_leaf(Algorithm::Es256, &leaf_params(ID), &leaf, &other_key),
            Err(X509Error::IssuerNotCa(_))
        ));
    }

    #[test]
    fn path_length_zero_ca_cannot_sign_a_ca() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut params = ca_params(TD, "root");
        params.path_len = Some(0);
        let ca = self_signed_ca(&key, &params).unwrap();
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        assert!(matches!(
            intermediate_ca(&mid_key, &ca_params(TD, "mid"), &ca, &key),
            Err(X509Error::IssuerNotCa(_))
        ));
        // It still signs leaves.
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        assert_eq!(
            verify_svid_chain(&[leaf], &[ca], NOW).unwrap(),
            workload_id(ID)
        );
    }

    #[test]
    fn ca_id_is_always_a_valid_trust_domain_id_without_path() {
        // A malformed trust domain never becomes a `TrustDomain`, so no CA can be asked for it.
        for bad in [
            "",
            "Example.org",
            "example.org/path",
            "spiffe://example.org/path",
        ] {
            assert!(TrustDomain::new(bad).is_err(), "{bad}");
        }
        // The SPIFFE-ID form names the same trust domain, and the SAN still has no path.
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let ca = self_signed_ca(&key, &ca_params("spiffe://example.org", "root")).unwrap();
        assert_eq!(ca.uri_sans(), vec!["spiffe://example.org".to_owned()]);
    }

    #[test]
    fn invalid_ca_validity_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut params = ca_params(TD, "root");
        params.not_before = params.not_after + 1;
        assert!(matches!(
            self_signed_ca(&key, &params),
            Err(X509Error::InvalidValidity(_))
        ));
        params.not_before = -1;
        assert!(matches!(
            self_signed_ca(&key, &params),
            Err(X509Error::InvalidValidity(_))
        ));
        params.not_before = NOW;
        params.not_after = i64::MAX;
        assert!(matches!(
            self_signed_ca(&key, &params),
            Err(X509Error::InvalidValidity(_))
        ));
    }

    #[test]
    fn invalid_dns_name_is_refused() {
        let (key, ca) = root(Algorithm::Es256, "root");
        for bad in [
            "",
            "web example",
            "*",
            "a.*.example.org",
            "web.example.org.",
        ] {
            let mut params = leaf_params(ID);
            params.dns_names = vec![bad.into()];
            assert_eq!(
                issue_leaf(Algorithm::Es256, &params, &ca, &key),
                Err(X509Error::InvalidDnsName(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_chain_and_pre_epoch_time_are_refused() {
        let (_, ca) = root(Algorithm::Es256, "root");
        assert_eq!(
            verify_svid_chain(&[], std::slice::from_ref(&ca), NOW),
            Err(X509Error::EmptyChain)
        );
        assert_eq!(
            verify_svid_chain(std::slice::from_ref(&ca), std::slice::from_ref(&ca), -1),
            Err(X509Error::InvalidTime(-1))
        );
    }

    #[test]
    fn csr_round_trip_gives_the_key_and_the_id() {
        for alg in KEY_ALGORITHMS {
            let key = SigningKey::generate(alg).unwrap();
            let csr = parse_csr(&build_csr(&key, &workload_id(ID)).unwrap()).unwrap();
            assert_eq!(csr.spki_der, subject_public_key_info(&key).unwrap());
            assert_eq!(csr.uri_sans, vec![ID.to_owned()]);
            assert!(csr.dns_names.is_empty());
        }
    }

    #[test]
    fn csr_with_a_tampered_signature_is_refused() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            let mut der = build_csr(&key, &workload_id(ID)).unwrap();
            *der.last_mut().unwrap() ^= 0x01;
            assert_eq!(parse_csr(&der), Err(X509Error::CsrSignature), "{alg:?}");
        }
    }

    #[test]
    fn csr_with_tampered_content_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let der = build_csr(&key, &workload_id(ID)).unwrap();
        let at = der.windows(3).position(|w| w == b"web").unwrap();
        let mut tampered = der.clone();
        tampered[at] = b'x';
        assert_eq!(parse_csr(&tampered), Err(X509Error::CsrSignature));
    }

    #[test]
    fn garbage_and_oversized_csrs_are_refused() {
        assert!(matches!(parse_csr(b""), Err(X509Error::MalformedCsr(_))));
        assert!(matches!(
            parse_csr(b"\x30\x03\x02\x01\x00"),
            Err(X509Error::MalformedCsr(_))
        ));
        assert!(matches!(
            parse_csr(&[0x30; MAX_CSR_LEN + 1]),
            Err(X509Error::TooLarge { .. })
        ));
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut der = build_csr(&key, &workload_id(ID)).unwrap();
        der.push(0);
        assert!(matches!(parse_csr(&der), Err(X509Error::MalformedCsr(_))));
    }

    #[test]
    fn csr_with_an_rsa_key_is_refused() {
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(ia5(ID.into()).unwrap())];
        let csr = params.serialize_request(&rsa).unwrap();
        assert!(matches!(
            parse_csr(csr.der()),
            Err(X509Error::UnsupportedKey(_))
        ));
        let (ca_key, ca) = root(Algorithm::Es256, "root");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&rsa);
        assert!(matches!(
            workload_certificate(&spki, &leaf_params(ID), &ca, &ca_key),
            Err(X509Error::UnsupportedKey(_))
        ));
    }

    #[test]
    fn spki_with_a_point_off_the_curve_is_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut spki = subject_public_key_info(&key).unwrap();
        *spki.last_mut().unwrap() ^= 0x01;
        let (ca_key, ca) = root(Algorithm::Es256, "root");
        assert_eq!(
            workload_certificate(&spki, &leaf_params(ID), &ca, &ca_key),
            Err(X509Error::MalformedKey("P-256"))
        );
    }

    #[test]
    fn certificates_round_trip_through_pem() {
        let (root_key, root_cert) = root(Algorithm::Es256, "root");
        let mid_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mid = intermediate_ca(&mid_key, &ca_params(TD, "mid"), &root_cert, &root_key).unwrap();
        let pem = root_cert.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(Certificate::from_pem(&pem).unwrap(), root_cert);
        let chain = vec![mid.clone(), root_cert.clone()];
        let text = certs_to_pem(&chain);
        assert_eq!(certs_from_pem(&text).unwrap(), chain);
        assert!(matches!(
            Certificate::from_pem(&text),
            Err(X509Error::Pem(_))
        ));
        assert_eq!(certs_from_pem(""), Err(X509Error::NoCertificate));
        assert_eq!(
            Certificate::from_pem("hello"),
            Err(X509Error::NoCertificate)
        );
    }

    #[test]
    fn private_key_pem_is_refused_without_echoing_it() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let err = certs_from_pem(&pem).unwrap_err();
        assert_eq!(
            err,
            X509Error::Pem("unexpected PEM block `PRIVATE KEY`".into())
        );
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!err.to_string().contains(&body));
    }

    #[test]
    fn certificate_with_trailing_bytes_is_refused() {
        let (_, ca) = root(Algorithm::Es256, "root");
        let mut der = ca.into_der();
        der.push(0);
        assert!(matches!(
            Certificate::from_der(der),
            Err(X509Error::MalformedCertificate(_))
        ));
    }

    #[test]
    fn ecdsa_signature_converts_to_der_integers() {
        let mut fixed = vec![0u8; 64];
        fixed[0] = 0x80; // r needs a 0x00 pad
        fixed[63] = 0x01; // s is 1, leading zeros dropped
        let der = ecdsa_fixed_to_der(&fixed).unwrap();
        let mut expected = vec![0x30, 0x26, 0x02, 0x21, 0x00, 0x80];
        expected.extend_from_slice(&[0u8; 31]);
        expected.extend_from_slice(&[0x02, 0x01, 0x01]);
        assert_eq!(der, expected);
        assert_eq!(
            ecdsa_fixed_to_der(&[0, 0]).unwrap(),
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
        assert_eq!(ecdsa_fixed_to_der(&[1, 2, 3]), None);
        // Long form length for P-521-sized signatures.
        let der = ecdsa_fixed_to_der(&[0xff; 132]).unwrap();
        assert_eq!(&der[..3], &[0x30, 0x81, 0x8a]);
    }

    #[test]
    fn csr_with_any_bit_flipped_is_refused() {
        for alg in KEY_ALGORITHMS {
            let key = SigningKey::generate(alg).unwrap();
            let der = build_csr(&key, &workload_id(ID)).unwrap();
            for bit in 0..der.len() * 8 {
                let mut flipped = der.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(parse_csr(&flipped).is_err(), "{alg:?}, bit {bit}");
            }
        }
    }

    #[test]
    fn leaf_with_any_bit_flipped_never_verifies() {
        let (key, ca) = root(Algorithm::Es256, "root");
        let leaf = issue_leaf(Algorithm::Es256, &leaf_params(ID), &ca, &key).unwrap();
        let der = leaf.into_der();
        for bit in 0..der.len() * 8 {
            let mut flipped = der.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let verified = Certificate::from_der(flipped)
                .and_then(|leaf| verify_svid_chain(&[leaf], std::slice::from_ref(&ca), NOW));
            assert!(verified.is_err(), "bit {bit}: {verified:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_csr_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_csr(&bytes);
        }

        #[test]
        fn certificate_from_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Certificate::from_der(bytes);
        }

        /// Random bytes rarely get past the first tag; edits of valid inputs reach deeper.
        #[test]
        fn edited_csrs_and_certificates_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            keep in any::<usize>(),
        ) {
            let key = SigningKey::generate(Algorithm::Es256).unwrap();
            let ca = self_signed_ca(&key, &ca_params(TD, "root")).unwrap();
            for mut der in [build_csr(&key, &workload_id(ID)).unwrap(), ca.der().to_vec()] {
                for (at, byte) in &edits {
                    let len = der.len();
                    der[at % len] = *byte;
                }
                der.truncate(keep % (der.len() + 1));
                let _ = parse_csr(&der);
                if let Ok(cert) = Certificate::from_der(der) {
                    let _ = verify_svid_chain(std::slice::from_ref(&cert), std::slice::from_ref(&ca), NOW);
                    let _ = workload_certificate(&cert.spki_der(), &leaf_params(ID), &cert, &key);
                }
            }
        }
    }
}
