//! `wimse audit`: verify and query tamper-evident audit logs (`wimse-audit`).

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use wimse_audit::{AuditRecord, Body, Report, Timestamp, VerifyOptions};
use wimse_core::WorkloadId;
use wimse_core::jose::{Jwk, JwkSet, PublicKey};

use crate::error::CommandError;

/// `wimse audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify audit logs' hash chains and signed checkpoints
    Verify(VerifyArgs),
    /// Show the records of an audit log, all of them or those matching every given filter
    Show(ShowArgs),
}

impl AuditCommand {
    /// Run the chosen audit command.
    pub fn run(self) -> Result<(), CommandError> {
        match self {
            Self::Verify(args) => verify(&args),
            Self::Show(args) => show(&args),
        }
    }
}

/// `wimse audit verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit log files to verify (a log and its rotated files, in any order)
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Require every checkpoint to be signed by this workload
    #[arg(long, value_name = "ID")]
    pub signer: Option<String>,
    /// Trust only these signing keys (a file holding a JWK or a JWK Set; repeatable).
    /// Without it the log must be signed by one key throughout, the one it announces
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Vec<PathBuf>,
}

/// `wimse audit show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Audit log file to read
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Show only records about this workload (its SPIFFE or WIMSE ID)
    #[arg(long, value_name = "ID")]
    pub workload: Option<String>,
    /// Show only records with this authorization decision
    #[arg(long, value_enum)]
    pub decision: Option<Decision>,
    /// Show only records of this transaction (its Txn-Token's `txn`), to follow one call
    /// chain through the logs of every workload and the server
    #[arg(long, value_name = "TXN", allow_hyphen_values = true)]
    pub txn: Option<String>,
    /// Show only records at or after this time (RFC 3339, such as 2025-01-31T12:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

/// An authorization decision recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Decision {
    /// The request was allowed
    Allow,
    /// The request was denied
    Deny,
}

impl From<Decision> for wimse_audit::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Allow => Self::Allow,
            Decision::Deny => Self::Deny,
        }
    }
}

fn workload_arg(flag: &'static str, text: &str) -> Result<WorkloadId, CommandError> {
    WorkloadId::parse(text).map_err(|source| CommandError::Argument {
        flag,
        reason: source.to_string(),
    })
}

/// Reads a JWK or a JWK Set.
fn trusted_keys(path: &PathBuf) -> Result<Vec<PublicKey>, CommandError> {
    let fail = |reason: String| CommandError::Argument {
        flag: "trusted-key",
        reason: format!("`{}`: {reason}", path.display()),
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let jwks = match serde_json::from_slice::<JwkSet>(&text) {
        Ok(set) => set.keys,
        Err(_) => vec![serde_json::from_slice::<Jwk>(&text).map_err(|e| fail(e.to_string()))?],
    };
    jwks.iter()
        .map(|jwk| PublicKey::from_jwk(jwk).map_err(|e| fail(e.to_string())))
        .collect()
}

fn verify(args: &VerifyArgs) -> Result<(), CommandError> {
    let mut options = VerifyOptions {
        expected_signer: args
            .signer
            .as_deref()
            .map(|s| workload_arg("signer", s))
            .transpose()?,
        ..VerifyOptions::default()
    };
    for path in &args.trusted_key {
        options.trusted_keys.extend(trusted_keys(path)?);
    }
    let report = wimse_audit::verify(&args.files, &options)?;
    print_lines(&[summary(&report)])?;
    // What the log cannot prove about itself goes to stderr: the verdict stays one line.
    let mut notes = Vec::new();
    if report.unsigned_tail > 0 {
        notes.push(format!(
            "note: {} entries ({} records) after the last checkpoint are unsigned",
            report.unsigned_tail, report.unsigned_records
        ));
    }
    if !report.closed {
        notes.push(
            "note: the log does not end with a closing checkpoint (still being written, crashed, or cut)"
                .to_owned(),
        );
    }
    if let Some(torn) = &report.torn_tail {
        notes.push(format!(
            "note: `{}` line {} is torn ({} bytes, an interrupted write) and was ignored",
            torn.file.display(),
            torn.line,
            torn.bytes
        ));
    }
    for note in notes {
        let _ = writeln!(std::io::stderr().lock(), "{note}");
    }
    Ok(())
}

/// `ok: N records, M checkpoints, signed by <id>[, <id>...]`.
fn summary(report: &Report) -> String {
    let mut signers: Vec<String> = Vec::new();
    for signer in &report.signers {
        let id = signer.id.to_string();
        if !signers.contains(&id) {
            signers.push(id);
        }
    }
    format!(
        "ok: {} records, {} checkpoints, signed by {}",
        report.records,
        report.checkpoints,
        signers.join(", ")
    )
}

fn show(args: &ShowArgs) -> Result<(), CommandError> {
    let workload = args
        .workload
        .as_deref()
        .map(|w| workload_arg("workload", w))
        .transpose()?;
    let since = args
        .since
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| CommandError::Argument {
            flag: "since",
            reason: e.to_string(),
        })?;
    let decision = args.decision.map(wimse_audit::Decision::from);
    let (entries, torn) = wimse_audit::read_entries(&args.file)?;
    let lines: Vec<String> = entries
        .iter()
        .filter_map(|entry| match &entry.body {
            Body::Record(record) => Some((entry.index, record)),
            _ => None,
        })
        .filter(|(_, r)| workload.as_ref().is_none_or(|w| r.involves(w)))
        .filter(|(_, r)| decision.is_none_or(|d| r.decision == d))
        .filter(|(_, r)| {
            args.txn.as_deref().is_none_or(|txn| {
                r.context
                    .as_ref()
                    .and_then(|c| c.txn.as_ref())
                    .is_some_and(|t| t.as_str() == txn)
            })
        })
        .filter(|(_, r)| since.is_none_or(|t| r.time >= t))
        .map(|(index, record)| describe(index, record))
        .collect();
    print_lines(&lines)?;
    if let Some(torn) = torn {
        let _ = writeln!(
            std::io::stderr().lock(),
            "note: line {} is torn ({} bytes, an interrupted write) and was skipped",
            torn.line,
            torn.bytes
        );
    }
    Ok(())
}

/// One record as one line for people. Every field is printable ASCII by construction
/// (labels and identifiers), so nothing here can drive the terminal.
fn describe(index: u64, r: &AuditRecord) -> String {
    let id = |w: Option<&WorkloadId>| w.map_or_else(|| "-".to_owned(), ToString::to_string);
    let mut line = format!(
        "{} #{index} {} {} {} -> {}",
        r.time,
        r.event.name(),
        r.decision.name(),
        id(r.source.as_ref()),
        id(r.target.as_ref()),
    );
    let mut field = |name: &str, value: String| {
        line.push(' ');
        line.push_str(name);
        line.push('=');
        line.push_str(&value);
    };
    if let Some(by) = r.operator {
        let login = by
            .login_uid
            .map(|l| format!(",login={l}"))
            .unwrap_or_default();
        field("by", format!("uid={}{login},pid={}", by.uid, by.pid));
    }
    if let Some(method) = r.method {
        field("method", method.name().to_owned());
    }
    if let Some(resource) = &r.resource {
        field("resource", format!("{:?}", resource.as_str()));
    }
    if let Some(reason) = &r.reason {
        field("reason", format!("{:?}", reason.as_str()));
    }
    if let Some(request) = &r.request_id {
        field("request", request.to_string());
    }
    if let Some(context) = &r.context {
        if let Some(txn) = &context.txn {
            field("txn", txn.to_string());
        }
        if let Some(subject) = &context.subject {
            field("sub", format!("{:?}", subject.as_str()));
        }
        if let Some(scope) = &context.scope {
            field("scope", format!("{:?}", scope.as_str()));
        }
        if let Some(purpose) = &context.purpose {
            field("purpose", format!("{:?}", purpose.as_str()));
        }
        if let Some(req_wl) = &context.requesting_workload {
            field("req_wl", req_wl.to_string());
        }
    }
    if let Some(delegation) = &r.delegation {
        let actors: Vec<String> = delegation.actors.iter().map(ToString::to_string).collect();
        let mode = match delegation.mode {
            wimse_audit::DelegationMode::Delegation => "act",
            wimse_audit::DelegationMode::Impersonation => "as",
        };
        field(mode, actors.join(","));
    }
    if !r.credentials.is_empty() {
        let creds: Vec<String> = r
            .credentials
            .iter()
            .map(|c| {
                // The first 16 hex digits are enough to find the credential elsewhere.
                let hex = c.sha256.to_hex();
                let short = hex.get(..16).unwrap_or(&hex);
                match &c.jti {
                    Some(jti) => format!("{}:{short}:jti={jti}", c.kind.name()),
                    None => format!("{}:{short}", c.kind.name()),
                }
            })
            .collect();
        field("creds", creds.join(","));
    }
    line
}

/// Prints `lines` on stdout; a closed pipe (`| head`) ends the output quietly.
fn print_lines(lines: &[String]) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(CommandError::Output(e)),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CommandError::Output(e)),
        _ => Ok(()),
    }
}
