//! Tamper-evident, append-only audit logs for wimse (seeds/002 §"Audit Trails").
//!
//! Every authentication and authorization decision, every credential issued and every
//! attestation leaves an [`AuditRecord`]; an [`AuditLog`] chains the records by hash and
//! periodically signs the chain's head with the writer's own workload key, so that editing,
//! deleting, inserting or reordering any record is detected by [`verify()`], which names the
//! first broken entry. Records cannot hold a secret: credentials appear only as a
//! [`CredentialRef`] (SHA-256 and `jti`), free text only as a [`Label`] that refuses
//! anything shaped like a token or key.
//!
//! This crate owns the record type, the on-disk format, the writer (durability, rotation,
//! export to stdout and syslog) and the verifier. It does not decide *what* to record:
//! the server, agent, workload library, proxy and gateway call [`AuditLog::append`].
//!
//! # Layout
//!
//! - [`record`]: [`AuditRecord`] and its parts; the "redaction by construction" argument.
//! - [`secrets`]: [`Label`], and [`scan_for_secrets`] for other crates' test suites.
//! - [`entry`]: the JSON-lines format, the hash chain, checkpoints, [`parse_line`].
//! - [`log`]: the writer, [`AuditLog`] and [`AuditConfig`]: fsync policy, rotation, exports,
//!   crash recovery.
//! - [`verify`](mod@verify): [`verify()`] and what truncation detection can promise.
//! - [`time`]: RFC 3339 timestamps.
//!
//! # Where to start reading
//!
//! [`entry`] for the format, then [`verify()`]'s module doc for every check in order.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use wimse_audit::{AuditConfig, AuditLog, AuditRecord, AuthMethod, Decision, EventKind};
//! use wimse_audit::{VerifyOptions, verify};
//! use wimse_core::jose::{Algorithm, SigningKey};
//! use wimse_core::WorkloadId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.jsonl");
//! let me = WorkloadId::parse("spiffe://example.org/orders")?;
//! let key = Arc::new(SigningKey::generate(Algorithm::Es256)?);
//! let log = AuditLog::open(AuditConfig::new(me.clone(), key).with_file(&path))?;
//! log.append(
//!     AuditRecord::new(EventKind::Authz, Decision::Deny)
//!         .with_source(WorkloadId::parse("spiffe://example.org/web")?)
//!         .with_target(me)
//!         .with_method(AuthMethod::WitWpt)
//!         .with_reason("no policy permits GET /orders")?,
//! )?;
//! log.close()?;
//! let report = verify(&[&path], &VerifyOptions::default())?;
//! assert_eq!(report.records, 1);
//! assert!(report.closed);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod entry;
pub mod log;
pub mod record;
pub mod secrets;
pub mod time;
pub mod verify;

mod sink;

pub use entry::{Body, Checkpoint, Entry, LineError, Start, StartReason, parse_line};
pub use log::{AuditConfig, AuditError, AuditLog, AuditStats, FsyncPolicy};
pub use record::{
    AuditRecord, AuthMethod, CredentialKind, CredentialRef, Decision, Delegation, DelegationMode,
    EventKind, Fingerprint, Operator, RecordError, SecurityContext,
};
pub use secrets::{Finding, Label, LabelError, SecretKind, scan_for_secrets};
pub use time::{TimeError, Timestamp};
pub use verify::{
    Broken, Problem, Report, Signer, TornLine, VerifyError, VerifyOptions, read_entries, verify,
};
