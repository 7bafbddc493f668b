//! Shared fixtures for the audit integration tests.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wimse_audit::{
    AuditConfig, AuditLog, AuditRecord, AuthMethod, CredentialKind, CredentialRef, Decision,
    Delegation, DelegationMode, EventKind, FsyncPolicy, SecurityContext, scan_for_secrets,
};
use wimse_audit::{Body, Entry, Fingerprint, Label};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};

/// A JWT-shaped token (never valid, only its shape matters): the thing that must never
/// reach a log.
pub const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IndpdCtqd3QifQ.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93ZWIiLCJqdGkiOiJ3aXQtNDIifQ.MEUCIQDx";
/// A join-token-shaped secret (43 base64url characters).
pub const JOIN_TOKEN: &str = "Zm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC10b2tlbjE";

pub fn id(text: &str) -> WorkloadId {
    WorkloadId::parse(text).unwrap()
}

pub fn signer() -> WorkloadId {
    id("spiffe://example.org/ns/shop/sa/orders")
}

pub fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::generate(Algorithm::Es256).unwrap())
}

/// A record with every field set, its credentials made from real secret-shaped inputs.
pub fn record(n: u64) -> AuditRecord {
    let decision = if n.is_multiple_of(3) {
        Decision::Deny
    } else {
        Decision::Allow
    };
    AuditRecord::new(EventKind::Authz, decision)
        .with_source(id("spiffe://example.org/ns/shop/sa/frontend"))
        .with_target(signer())
        .with_method(AuthMethod::WitWpt)
        .with_request_id(&format!("req-{n}"))
        .unwrap()
        .with_resource(&format!("GET /orders/{n}"))
        .unwrap()
        .with_reason(if decision == Decision::Deny {
            "no policy permits this action"
        } else {
            "policy orders-read"
        })
        .unwrap()
        .with_context(SecurityContext {
            txn: Some(Label::new("97053963-771d-49cc-a4e3-20aad399c312").unwrap()),
            subject: Some(Label::new("user:alice").unwrap()),
            scope: Some(Label::new("orders.read").unwrap()),
            purpose: Some(Label::new("checkout").unwrap()),
            requesting_workload: Some(id("spiffe://example.org/gateway")),
        })
        .with_delegation(Delegation {
            mode: DelegationMode::Delegation,
            actors: vec![Label::new("spiffe://example.org/ns/shop/sa/frontend").unwrap()],
        })
        .unwrap()
        .with_credential(CredentialRef::from_token(CredentialKind::Wit, TOKEN))
        .unwrap()
        .with_credential(CredentialRef::from_join_token(JOIN_TOKEN))
        .unwrap()
}

/// A configuration writing to `path`, checkpointing every `every` records.
pub fn config(path: &Path, key: Arc<SigningKey>, every: u64) -> AuditConfig {
    let mut config = AuditConfig::new(signer(), key).with_file(path);
    config.checkpoint_every = every;
    config.checkpoint_interval = Duration::from_secs(3600);
    config.fsync = FsyncPolicy::Never;
    config
}

/// Writes `records` records, checkpoint every `every`, and closes.
pub fn write_log(path: &Path, key: Arc<SigningKey>, records: u64, every: u64) {
    let log = AuditLog::open(config(path, key, every)).unwrap();
    for n in 0..records {
        log.append(record(n)).unwrap();
    }
    log.close().unwrap();
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

pub fn parse(line: &str) -> Entry {
    wimse_audit::parse_line(line.as_bytes()).unwrap()
}

/// Re-encodes `body` at `index` after `prev`, as an attacker with the format would.
pub fn reencode(index: u64, prev: Fingerprint, body: &Body) -> (Fingerprint, String) {
    let (hash, line) = wimse_audit::entry::encode(index, prev, body).unwrap();
    (hash, String::from_utf8(line).unwrap())
}

/// Every file in `dir`, for the secret scan.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The secret scan every test runs over every log it wrote.
pub fn assert_no_secrets(dir: &Path) {
    let files = files_in(dir);
    assert!(!files.is_empty(), "no files written in {}", dir.display());
    for file in files {
        let findings = scan_for_secrets(&file).unwrap();
        assert!(findings.is_empty(), "{findings:?}");
    }
}
