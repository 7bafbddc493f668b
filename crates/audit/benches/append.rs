//! Audit append throughput against plain JSON-lines writing, in the same run.
//!
//! `cargo bench -p wimse-audit --bench append` appends the same realistic authorization
//! record (every field set: identities, method, resource, reason, request id, Txn-Token
//! context, actor chain, two credential references) with:
//!
//! - **audit (default)**: [`AuditLog`] with the default policies: batch fsync (256 entries
//!   or 1 s), a signed ES256 checkpoint every 1,000 records, hash chain, canonical JSON;
//! - **plain jsonl**: `serde_json::to_writer` of the record into a `BufWriter<File>` plus a
//!   newline, flushed at the end, no sync: the floor any JSON-lines logger pays;
//! - **audit (always)**: [`FsyncPolicy::Always`], one `fdatasync` per record: the disk's pace;
//! - **audit (never)**: [`FsyncPolicy::Never`], to separate the cost of chaining, hashing and
//!   signing from that of the background syncs.
//!
//! Rounds run interleaved (one of each in turn) so background load hits all cases alike;
//! each prints its median records/s. Then `ratio audit_append/plain_jsonl = X` (throughput
//! ratio: 1.00 means the audit log costs nothing over plain writing). Files are written
//! under Cargo's target tmp dir, on the real disk (a tmpfs would make fsync free).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wimse_audit::{
    AuditConfig, AuditLog, AuditRecord, AuthMethod, CredentialKind, CredentialRef, Decision,
    Delegation, DelegationMode, EventKind, FsyncPolicy, Label, SecurityContext,
};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};

const ROUNDS: usize = 7;
const RECORDS: usize = 20_000;
const ALWAYS_RECORDS: usize = 300;

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("benchmark failed: {e}");
    std::process::exit(1)
}

fn id(text: &str) -> WorkloadId {
    WorkloadId::parse(text).unwrap_or_else(|e| fail(&e))
}

fn label(text: &str) -> Label {
    Label::new(text).unwrap_or_else(|e| fail(&e))
}

fn record() -> AuditRecord {
    let token =
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93ZWIiLCJqdGkiOiJ3LTEifQ.c2ln";
    let build = || -> Result<AuditRecord, wimse_audit::RecordError> {
        AuditRecord::new(EventKind::Authz, Decision::Allow)
            .with_source(id("spiffe://example.org/ns/shop/sa/frontend"))
            .with_target(id("spiffe://example.org/ns/shop/sa/orders"))
            .with_method(AuthMethod::WitWpt)
            .with_request_id("4bf92f3577b0c4b2e8e1d2c3f4a5b6c7")?
            .with_resource("GET /api/orders/42")?
            .with_reason("policy orders-read")?
            .with_context(SecurityContext {
                txn: Some(label("97053963-771d-49cc-a4e3-20aad399c312")),
                subject: Some(label("user:alice")),
                scope: Some(label("orders.read")),
                purpose: None,
                requesting_workload: Some(id("spiffe://example.org/gateway")),
            })
            .with_delegation(Delegation {
                mode: DelegationMode::Delegation,
                actors: vec![label("spiffe://example.org/gateway")],
            })?
            .with_credential(CredentialRef::from_token(CredentialKind::Wit, token))?
            .with_credential(CredentialRef::from_token(CredentialKind::TxnToken, token))
    };
    build().unwrap_or_else(|e| fail(&e))
}

fn per_sec(records: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "benchmark arithmetic")]
    let rate = records as f64 / elapsed.as_secs_f64();
    rate
}

/// Appends `n` records to a fresh audit log in `dir`; records/s (close excluded: it is a
/// one-off, and the plain case has no equivalent).
fn audit_round(
    dir: &Path,
    key: &Arc<SigningKey>,
    policy: FsyncPolicy,
    n: usize,
    template: &AuditRecord,
) -> f64 {
    let path = dir.join(format!("audit-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut config = AuditConfig::new(id("spiffe://example.org/ns/shop/sa/orders"), key.clone())
        .with_file(&path);
    config.fsync = policy;
    let log = AuditLog::open(config).unwrap_or_else(|e| fail(&e));
    let records: Vec<AuditRecord> = (0..n).map(|_| template.clone()).collect();
    let start = Instant::now();
    for record in records {
        log.append(record).unwrap_or_else(|e| fail(&e));
    }
    log.sync().unwrap_or_else(|e| fail(&e));
    let elapsed = start.elapsed();
    log.close().unwrap_or_else(|e| fail(&e));
    let _ = std::fs::remove_file(&path);
    per_sec(n, elapsed)
}

/// Writes `n` records as plain buffered JSON lines; records/s.
fn plain_round(dir: &Path, n: usize, template: &AuditRecord) -> f64 {
    let path = dir.join(format!("plain-{}.jsonl", std::process::id()));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| fail(&e));
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let records: Vec<AuditRecord> = (0..n).map(|_| template.clone()).collect();
    let start = Instant::now();
    for record in records {
        serde_json::to_writer(&mut out, &record).unwrap_or_else(|e| fail(&e));
        out.write_all(b"\n").unwrap_or_else(|e| fail(&e));
    }
    out.flush().unwrap_or_else(|e| fail(&e));
    let elapsed = start.elapsed();
    drop(out);
    let _ = std::fs::remove_file(&path);
    per_sec(n, elapsed)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| fail(&e));
    let key = Arc::new(SigningKey::generate(Algorithm::Es256).unwrap_or_else(|e| fail(&e)));
    let template = record();
    println!(
        "wimse-audit append: {ROUNDS} interleaved rounds ({RECORDS} records; {ALWAYS_RECORDS} for always-fsync), median records/s"
    );
    let (mut audit, mut plain, mut always, mut never) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let a = audit_round(dir.path(), &key, FsyncPolicy::default(), RECORDS, &template);
        let p = plain_round(dir.path(), RECORDS, &template);
        let s = audit_round(
            dir.path(),
            &key,
            FsyncPolicy::Always,
            ALWAYS_RECORDS,
            &template,
        );
        let n = audit_round(dir.path(), &key, FsyncPolicy::Never, RECORDS, &template);
        // Round 0 warms caches, the allocator and the file system; it is not counted.
        if round > 0 {
            audit.push(a);
            plain.push(p);
            always.push(s);
            never.push(n);
        }
    }
    let (audit, plain, always, never) =
        (median(audit), median(plain), median(always), median(never));
    println!(
        "{:<34} {:>12.0} records/s",
        "audit append (default batch fsync)", audit
    );
    println!(
        "{:<34} {:>12.0} records/s",
        "plain serde_json jsonl (buffered)", plain
    );
    println!(
        "{:<34} {:>12.0} records/s",
        "audit append (fsync always)", always
    );
    println!(
        "{:<34} {:>12.0} records/s",
        "audit append (fsync never)", never
    );
    println!("ratio audit_append/plain_jsonl = {:.2}", audit / plain);
    println!("ratio audit_always/plain_jsonl = {:.4}", always / plain);
    println!("ratio audit_never/plain_jsonl = {:.2}", never / plain);
}
