//! `wimse audit verify` and `wimse audit show` on logs written by `wimse-audit`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use wimse_audit::{
    AuditConfig, AuditLog, AuditRecord, AuthMethod, CredentialKind, CredentialRef, Decision,
    EventKind, FsyncPolicy, Label, SecurityContext, Timestamp, scan_for_secrets,
};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};

const SIGNER: &str = "spiffe://example.org/ns/shop/sa/orders";
const WEB: &str = "spiffe://example.org/ns/shop/sa/web";
const BATCH: &str = "spiffe://example.org/ns/shop/sa/batch";
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93ZWIiLCJqdGkiOiJ3LTEifQ.c2ln";

fn wimse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .expect("the wimse binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn id(text: &str) -> WorkloadId {
    WorkloadId::parse(text).unwrap()
}

/// Six records, one every hour from 2025-01-31T10:00Z: web allowed, batch denied, in turn,
/// two of each transaction `txn-0`, `txn-1`, `txn-2`.
fn write_log(dir: &Path, key: Arc<SigningKey>) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let mut config = AuditConfig::new(id(SIGNER), key).with_file(&path);
    config.fsync = FsyncPolicy::Never;
    config.checkpoint_every = 2;
    config.checkpoint_interval = Duration::from_secs(3600);
    let log = AuditLog::open(config).unwrap();
    let start = Timestamp::parse_rfc3339("2025-01-31T10:00:00Z").unwrap();
    for n in 0..6u64 {
        let (source, decision) = if n % 2 == 0 {
            (WEB, Decision::Allow)
        } else {
            (BATCH, Decision::Deny)
        };
        let record = AuditRecord::new(EventKind::Authz, decision)
            .at(Timestamp::from_unix_millis(
                start.unix_millis() + n * 3_600_000,
            ))
            .with_source(id(source))
            .with_target(id(SIGNER))
            .with_method(AuthMethod::WitWpt)
            .with_resource(&format!("GET /orders/{n}"))
            .unwrap()
            .with_credential(CredentialRef::from_token(CredentialKind::Wit, TOKEN))
            .unwrap()
            .with_context(SecurityContext {
                txn: Some(Label::new(format!("txn-{}", n / 2)).unwrap()),
                ..SecurityContext::default()
            });
        log.append(record).unwrap();
    }
    log.close().unwrap();
    assert!(scan_for_secrets(&path).unwrap().is_empty());
    path
}

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::generate(Algorithm::Es256).unwrap())
}

#[test]
fn verify_of_an_intact_log_prints_one_ok_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let output = wimse(&["audit", "verify", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("ok: 6 records, 4 checkpoints, signed by {SIGNER}\n")
    );
    assert_eq!(text(&output.stderr), "");
}

#[test]
fn verify_of_a_tampered_log_names_the_first_broken_entry_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let log = std::fs::read_to_string(&path).unwrap();
    // Line 6 is the fourth record (a denial for batch): make it an allow.
    let mut lines: Vec<String> = log.lines().map(str::to_owned).collect();
    assert!(lines[5].contains("\"deny\""));
    lines[5] = lines[5].replacen("\"deny\"", "\"allow\"", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let output = wimse(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: `"), "{stderr}");
    assert!(stderr.contains("audit.jsonl` line 6 (entry 5)"), "{stderr}");
    assert!(stderr.contains("hash does not match"), "{stderr}");
}

#[test]
fn verify_of_a_truncated_log_notes_what_is_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // Keep the start entry, two records, a checkpoint and one more record.
    std::fs::write(&path, lines[..5].join("\n") + "\n").unwrap();
    let output = wimse(&["audit", "verify", path.to_str().unwrap()]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with("ok: 3 records, 1 checkpoints"));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("1 entries (1 records) after the last checkpoint are unsigned"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not end with a closing checkpoint"),
        "{stderr}"
    );
}

#[test]
fn verify_against_a_trusted_key_and_signer() {
    let dir = tempfile::tempdir().unwrap();
    let signing = key();
    let path = write_log(dir.path(), signing.clone());
    let jwk_path = dir.path().join("key.jwk");
    std::fs::write(
        &jwk_path,
        serde_json::to_string(signing.public_jwk()).unwrap(),
    )
    .unwrap();
    let ok = wimse(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--trusted-key",
        jwk_path.to_str().unwrap(),
        "--signer",
        SIGNER,
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    // Another key: refused at the first line.
    let other = dir.path().join("other.jwk");
    std::fs::write(&other, serde_json::to_string(key().public_jwk()).unwrap()).unwrap();
    let refused = wimse(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--trusted-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("line 1 (entry 0)"), "{stderr}");
    assert!(stderr.contains("not among the trusted keys"), "{stderr}");
}

#[test]
fn verify_of_a_missing_file_fails_with_one_line() {
    let output = wimse(&["audit", "verify", "/nonexistent/audit.jsonl"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1);
    assert!(
        stderr.starts_with("error: cannot read `/nonexistent/audit.jsonl`"),
        "{stderr}"
    );
}

#[test]
fn show_prints_every_record_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let output = wimse(&["audit", "show", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "2025-01-31T11:00:00.000Z #2 authz deny {BATCH} -> {SIGNER} method=wit_wpt resource=\"GET /orders/1\""
        )),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("creds=wit:"), "{}", lines[1]);
    assert!(lines[1].contains(":jti=w-1"), "{}", lines[1]);
    assert!(!stdout.contains("eyJ"));
}

#[test]
fn show_filters_by_workload_decision_transaction_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let path = path.to_str().unwrap();
    let count = |args: &[&str]| {
        let mut all = vec!["audit", "show", path];
        all.extend_from_slice(args);
        let output = wimse(&all);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout).lines().count()
    };
    assert_eq!(count(&["--decision", "deny"]), 3);
    assert_eq!(count(&["--txn", "txn-1"]), 2);
    assert_eq!(count(&["--txn", "txn-1", "--decision", "deny"]), 1);
    assert_eq!(count(&["--txn", "txn-9"]), 0);
    assert_eq!(count(&["--workload", WEB]), 3);
    assert_eq!(count(&["--workload", SIGNER]), 6);
    assert_eq!(count(&["--since", "2025-01-31T13:00:00Z"]), 3);
    assert_eq!(count(&["--since", "2025-01-31T11:30:00+01:00"]), 5);
    assert_eq!(
        count(&[
            "--workload",
            BATCH,
            "--decision",
            "deny",
            "--since",
            "2025-01-31T12:00:00Z"
        ]),
        2
    );
}

#[test]
fn show_with_a_bad_time_fails_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), key());
    let output = wimse(&[
        "audit",
        "show",
        path.to_str().unwrap(),
        "--since",
        "yesterday",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1);
    assert!(
        stderr.starts_with("error: `--since`: `yesterday` is not an RFC 3339"),
        "{stderr}"
    );
}
