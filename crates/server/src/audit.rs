//! The server's own audit trail: every node attestation, every credential issued or
//! refused, and every change an administrator makes through the admin API (event
//! `admin`: what was done as `resource`, such as `entry create <id>` or `agent ban`, and
//! the workload, agent or transaction it concerns) leaves a record in a tamper-evident
//! log (`wimse-audit`), by default `<data_dir>/audit.jsonl`.
//!
//! The log is signed with a key of its own, kept in `<data_dir>/keys/audit.key` (0600):
//! the server's TLS key rotates with its SVID, and one stable key per log is what
//! `wimse audit verify --trusted-key` can pin. Records carry the server's SPIFFE ID as
//! signer, the agent as source and the workload as target; credentials appear only as
//! fingerprints (the record type cannot hold them).
//!
//! A record that cannot be written is reported in the server's log and counted; issuance
//! goes on. (Refusing all issuance because a disk filled up would turn an audit problem
//! into an outage of the whole trust domain.)

use std::path::Path;
use std::sync::Arc;
use wimse_audit::{
    AuditConfig, AuditLog, AuditRecord, AuthMethod, CredentialRef, Decision, Delegation, EventKind,
    Operator, SecurityContext,
};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// The signing key could not be read or created.
    #[error("audit signing key `{path}`: {message}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] wimse_audit::AuditError),
}

/// The server's audit log, or none when disabled.
pub struct ServerAudit {
    log: Option<AuditLog>,
}

impl std::fmt::Debug for ServerAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAudit")
            .field("enabled", &self.log.is_some())
            .finish()
    }
}

/// One attestation or issuance to record.
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// How the caller proved itself.
    pub method: AuthMethod,
    /// The agent (when known).
    pub agent: Option<&'a WorkloadId>,
    /// The workload the credential is for (when known).
    pub workload: Option<&'a WorkloadId>,
    /// The credential issued, or the one presented (join token, node certificate).
    pub credential: Option<CredentialRef>,
    /// Why it was refused, if it was.
    pub refusal: Option<String>,
    /// The transaction the credential carries (Txn-Tokens, delegations).
    pub context: Option<SecurityContext>,
    /// Who acts for the transaction's subject, when it was delegated.
    pub delegation: Option<Delegation>,
}

impl ServerAudit {
    /// No audit log.
    pub fn disabled() -> Self {
        Self { log: None }
    }

    /// Opens (or continues) the log at `path`, signed by `keys_dir/audit.key` as `signer`.
    pub fn open(path: &Path, keys_dir: &Path, signer: WorkloadId) -> Result<Self, AuditOpenError> {
        let key_path = keys_dir.join("audit.key");
        let key_error = |message: String| AuditOpenError::Key {
            path: key_path.display().to_string(),
            message,
        };
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| key_error(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key =
                    SigningKey::generate(Algorithm::Es256).map_err(|e| key_error(e.to_string()))?;
                let pem = key.to_pkcs8_pem().map_err(|e| key_error(e.to_string()))?;
                std::fs::create_dir_all(keys_dir).map_err(|e| key_error(e.to_string()))?;
                crate::authority::write_private(&key_path, pem.as_bytes())
                    .map_err(|e| key_error(e.to_string()))?;
                key
            }
            Err(e) => return Err(key_error(e.to_string())),
        };
        let log = AuditLog::open(AuditConfig::new(signer, Arc::new(key)).with_file(path))?;
        Ok(Self { log: Some(log) })
    }

    /// Records one event.
    pub fn record(&self, event: Event<'_>) {
        let Some(log) = &self.log else { return };
        let decision = if event.refusal.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        let mut record = AuditRecord::new(event.kind, decision).with_method(event.method);
        if let Some(agent) = event.agent {
            record = record.with_source(agent.clone());
        }
        if let Some(workload) = event.workload {
            record = record.with_target(workload.clone());
        }
        if let Some(context) = event.context {
            record = record.with_context(context);
        }
        if let Some(delegation) = event.delegation {
            // Built from a verified `act` chain, which has no more actors than a record.
            let _ = record.set_delegation(delegation);
        }
        if let Some(credential) = event.credential {
            // The record's first credential: the limit cannot refuse it.
            let _ = record.add_credential(credential);
        }
        if let Some(reason) = &event.refusal
            && record.set_reason(reason).is_err()
        {
            // A reason the record type will not hold (it looks like a secret) is replaced.
            let _ = record.set_reason("refused (reason withheld)");
        }
        if let Err(e) = log.append(record) {
            tracing::error!(error = %e, "cannot write the audit record");
        }
    }

    /// Records a change made through the admin API by `operator` (the local caller, when
    /// the kernel named it): `action` (what was done, such as
    /// `entry create <id>`), the workload or agent it concerns, the transaction when it
    /// concerns one, and the credential it created (a join token, by its hash).
    pub fn admin(
        &self,
        operator: Option<Operator>,
        action: &str,
        target: Option<&WorkloadId>,
        context: Option<SecurityContext>,
        credential: Option<CredentialRef>,
    ) {
        let Some(log) = &self.log else { return };
        let mut record = AuditRecord::new(EventKind::Admin, Decision::Allow);
        if let Some(operator) = operator {
            record = record.with_operator(operator);
        }
        if let Err(e) = record.set_resource(action) {
            // Actions are built here from checked names; one that is not a label is a bug
            // to see, not a reason to lose the record.
            tracing::warn!(error = %e, "admin action left out of its audit record");
        }
        if let Some(target) = target {
            record = record.with_target(target.clone());
        }
        if let Some(context) = context {
            record = record.with_context(context);
        }
        if let Some(credential) = credential {
            // The record's first credential: the limit cannot refuse it.
            let _ = record.add_credential(credential);
        }
        if let Err(e) = log.append(record) {
            tracing::error!(error = %e, "cannot write the audit record");
        }
    }

    /// Seals the log (a final checkpoint) at shutdown.
    pub fn close(&self) {
        if let Some(log) = &self.log
            && let Err(e) = log.close()
        {
            tracing::error!(error = %e, "cannot close the audit log");
        }
    }
}
