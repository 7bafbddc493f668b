//! The pure identity model of wimse: what a workload identity *is*, and how a credential
//! that claims one is checked. No I/O happens here (no sockets, files or clock reads
//! beyond the convenience [`token::Validation::now`]); the server, agent, workload library,
//! proxy and gateway all call into this crate, so every rule lives in exactly one place.
//!
//! # Layout
//!
//! - [`id`]: [`TrustDomain`] and [`WorkloadId`], strict SPIFFE-ID and WIMSE identifier parsing.
//! - [`jose`]: algorithms, JWKs and thumbprints, signing and verification keys, and the
//!   strict compact-JWS reader ([`jose::Jws::parse`]) that every token goes through.
//! - [`token`]: the token kinds — WIT ([`token::wit`]), WPT ([`token::wpt`]), JWT-SVID
//!   ([`token::jwt_svid`]), Txn-Token ([`token::txn`]) — each issued and verified in one
//!   function, plus the WPT replay cache and the verified-WIT cache.
//! - [`x509`]: the X509-SVID profile: CA and workload certificates, CSRs, and chain
//!   verification against a trust domain's roots.
//! - [`bundle`]: SPIFFE trust bundles and the per-trust-domain key lookup that decides
//!   whether an issuer is trusted for a subject's trust domain.
//! - [`digest`], [`json`]: SHA-256 and the duplicate-refusing JSON reader used for
//!   untrusted token parts.
//! - `der` (private): the few DER encodings written by hand, for [`jose`] and [`x509`].
//!
//! # Where to start reading
//!
//! [`token::wit::verify_wit`] and [`token::wpt::verify_wpt`]: together they are a full
//! request authentication, and their module docs list every check in order.
#![forbid(unsafe_code)]

pub mod bundle;
mod der;
pub mod digest;
pub mod id;
pub mod jose;
pub mod json;
pub mod token;
pub mod x509;

pub use id::{IdError, IdPolicy, TrustDomain, WorkloadId};
