//! `wimse audit`: verify and query tamper-evident audit logs.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::error::{CommandError, not_implemented};

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
            Self::Verify(_args) => not_implemented("wimse audit verify"),
            Self::Show(_args) => not_implemented("wimse audit show"),
        }
    }
}

/// `wimse audit verify`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the audit verifier, which is not written yet"
)]
pub struct VerifyArgs {
    /// Audit log files to verify
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// `wimse audit show`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the audit query, which is not written yet"
)]
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
