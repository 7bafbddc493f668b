//! Authorization with Cedar policies: may this authenticated workload do this operation
//! on this service?
//!
//! # Schema
//!
//! | Cedar | value |
//! | --- | --- |
//! | principal | `Workload::"<caller's workload id>"` |
//! | action | `Action::"<HTTP method>"` (`Action::"GET"`, `Action::"POST"`, ...) |
//! | resource | `Service::"<this service's workload id>"` |
//! | `context.method` | the HTTP method (String) |
//! | `context.path` | the request path, without query (String) |
//! | `context.auth_method` | `"wit-wpt"`, `"http-sig"`, `"mtls"` or `"jwt-svid"` |
//! | `context.trust_domain` | the caller's trust domain (String) |
//! | `context.time` | Unix seconds (Long) |
//! | `context.txn` | only when the request carries a valid Txn-Token: a record of its `txn` (String), `sub` (String), `scope` (String), `scopes` (Set of String, `scope` split at spaces), `req_wl` (String), and `act` (String: the workload acting for `sub`, the current actor only) when the transaction was delegated |
//!
//! So "workload 1 may GET /api/orders and below" is
//!
//! ```cedar
//! permit(principal == Workload::"spiffe://example.org/w1", action == Action::"GET", resource)
//! when { context.path like "/api/orders*" };
//! ```
//!
//! and "workload 2 may POST payments only inside a transaction whose purpose allows it" is
//!
//! ```cedar
//! permit(principal == Workload::"spiffe://example.org/w2", action == Action::"POST", resource)
//! when { context has txn && context.txn.scopes.contains("payments.write") };
//! ```
//!
//! and "no payment is made by a delegate (an assistant acting for the user, a worker
//! finishing a job later), only on the user's own request" is
//!
//! ```cedar
//! forbid(principal, action == Action::"POST", resource)
//! when { context.path like "/api/payments*" && context has txn && context.txn has act };
//! ```
//!
//! Cedar denies when no `permit` applies (deny by default) and when any `forbid` applies.
//! A [`Policy`] loaded from a file is re-read when the file's modification time changes
//! ([`Policy::watch`] polls every second); a file that fails to parse leaves the previous
//! policies in force and is logged.

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, EntityId,
    EntityTypeName, EntityUid, PolicySet, Request, RestrictedExpression,
};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, SystemTime};
use wimse_core::WorkloadId;
use wimse_core::token::txn::TxnTokenClaims;

/// Why policies could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not valid Cedar.
    #[error("policy file `{path}` is not valid cedar: {reason}")]
    Parse {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The authenticated caller.
    pub principal: &'a WorkloadId,
    /// The HTTP method.
    pub method: &'a str,
    /// The path, without query.
    pub path: &'a str,
    /// This service.
    pub service: &'a WorkloadId,
    /// How the caller authenticated (`AuthMethod::name`).
    pub auth_method: &'a str,
    /// Now, Unix seconds.
    pub time: i64,
    /// The request's verified Txn-Token, if any.
    pub transaction: Option<&'a TxnTokenClaims>,
}

/// The answer, with the reason recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Which policies decided, or why none did.
    pub reason: String,
}

/// The schema's entity types, parsed once: Cedar parses a type name with its full
/// grammar, which cost more per request than evaluating a small policy set.
struct EntityTypes {
    workload: EntityTypeName,
    action: EntityTypeName,
    service: EntityTypeName,
}

static TYPES: LazyLock<Result<EntityTypes, String>> = LazyLock::new(|| {
    let parse = |name: &str| EntityTypeName::from_str(name).map_err(|e| e.to_string());
    Ok(EntityTypes {
        workload: parse("Workload")?,
        action: parse("Action")?,
        service: parse("Service")?,
    })
});

enum Rules {
    /// Every authenticated caller is allowed (the proxy without `--policy`).
    AllowAuthenticated,
    /// Cedar policies.
    Cedar(Box<PolicySet>),
}

/// The policies in force, replaced atomically on reload.
pub struct Policy {
    rules: RwLock<Arc<Rules>>,
    file: Option<PathBuf>,
    authorizer: CedarAuthorizer,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn parse(text: &str, path: &Path) -> Result<PolicySet, PolicyError> {
    PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Policy {
    /// Policies from Cedar text.
    pub fn from_text(text: &str) -> Result<Self, PolicyError> {
        Ok(Self::with(
            Rules::Cedar(Box::new(parse(text, Path::new("<inline>"))?)),
            None,
        ))
    }

    /// Policies from a file (see [`Policy::watch`] for reloading).
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::with(
            Rules::Cedar(Box::new(parse(&text, path)?)),
            Some(path.to_owned()),
        ))
    }

    /// Allows every authenticated caller (no policy configured).
    pub fn allow_authenticated() -> Self {
        Self::with(Rules::AllowAuthenticated, None)
    }

    fn with(rules: Rules, file: Option<PathBuf>) -> Self {
        Policy {
            rules: RwLock::new(Arc::new(rules)),
            file,
            authorizer: CedarAuthorizer::new(),
        }
    }

    /// Re-reads the file now; on failure the previous policies stay in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        let set = parse(&text, path)?;
        *self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(Rules::Cedar(Box::new(set)));
        Ok(())
    }

    /// Polls the file's modification time every second and reloads on a change, for as
    /// long as `self` is alive. Needs a tokio runtime.
    pub fn watch(self: &Arc<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = modified(&path);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(policy) = weak.upgrade() else { return };
                let now = modified(&path);
                if now != last {
                    last = now;
                    match policy.reload() {
                        Ok(()) => tracing::info!(file = %path.display(), "policies reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "policy reload failed; previous policies stay in force");
                        }
                    }
                }
            }
        });
    }

    /// Decides one request. Any error building the Cedar request denies.
    pub fn authorize(&self, req: &AuthzRequest<'_>) -> AuthzDecision {
        let rules = Arc::clone(
            &self
                .rules
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        match &*rules {
            Rules::AllowAuthenticated => AuthzDecision {
                allowed: true,
                reason: "no policy configured: every authenticated caller is allowed".into(),
            },
            Rules::Cedar(set) => match self.cedar(set, req) {
                Ok(decision) => decision,
                Err(reason) => AuthzDecision {
                    allowed: false,
                    reason,
                },
            },
        }
    }

    fn cedar(&self, set: &PolicySet, req: &AuthzRequest<'_>) -> Result<AuthzDecision, String> {
        let types = TYPES
            .as_ref()
            .map_err(|e| format!("cannot name the policy entity types: {e}"))?;
        let uid = |ty: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
        };
        let mut pairs = vec![
            (
                "method".to_owned(),
                RestrictedExpression::new_string(req.method.to_owned()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(req.path.to_owned()),
            ),
            (
                "auth_method".to_owned(),
                RestrictedExpression::new_string(req.auth_method.to_owned()),
            ),
            (
                "trust_domain".to_owned(),
                RestrictedExpression::new_string(req.principal.trust_domain().to_string()),
            ),
            ("time".to_owned(), RestrictedExpression::new_long(req.time)),
        ];
        if let Some(txn) = req.transaction {
            pairs.push(("txn".to_owned(), transaction_record(txn)?));
        }
        let context = Context::from_pairs(pairs)
            .map_err(|e| format!("cannot build the policy context: {e}"))?;
        let request = Request::new(
            uid(&types.workload, req.principal.as_str()),
            uid(&types.action, req.method),
            uid(&types.service, req.service.as_str()),
            context,
            None,
        )
        .map_err(|e| format!("cannot build the policy request: {e}"))?;
        let response = self
            .authorizer
            .is_authorized(&request, set, &Entities::empty());
        let policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        let errors = response.diagnostics().errors().count();
        let allowed = response.decision() == CedarDecision::Allow;
        let reason = match (allowed, policies.is_empty()) {
            (true, _) => format!("permitted by policy {}", policies.join(", ")),
            (false, true) => format!(
                "no policy permits {} {}{}",
                req.method,
                req.path,
                if errors > 0 {
                    format!(" ({errors} policy evaluation errors)")
                } else {
                    String::new()
                }
            ),
            (false, false) => format!("forbidden by policy {}", policies.join(", ")),
        };
        Ok(AuthzDecision { allowed, reason })
    }
}

/// `context.txn`: the claims of a verified Txn-Token a policy may look at.
fn transaction_record(txn: &TxnTokenClaims) -> Result<RestrictedExpression, String> {
    let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
    RestrictedExpression::new_record(
        [
            ("txn".to_owned(), string(&txn.txn)),
            ("sub".to_owned(), string(&txn.sub)),
            ("scope".to_owned(), string(&txn.scope)),
            (
                "scopes".to_owned(),
                RestrictedExpression::new_set(txn.scope.split_ascii_whitespace().map(string)),
            ),
            ("req_wl".to_owned(), string(&txn.req_wl)),
        ]
        .into_iter()
        // The current actor alone: prior actors are informational (RFC 8693 §4.1).
        .chain(txn.act.as_ref().map(|a| ("act".to_owned(), string(&a.sub)))),
    )
    .map_err(|e| format!("cannot build the policy context: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const POLICY: &str = r#"
        permit(principal == Workload::"spiffe://example.org/w1", action == Action::"GET", resource)
        when { context.path like "/api/orders*" };
        permit(principal == Workload::"spiffe://example.org/w2", action in [Action::"GET", Action::"POST"], resource == Service::"spiffe://example.org/w3")
        when { context.path like "/api/payments*" && context.auth_method != "jwt-svid" };
        forbid(principal, action, resource) when { context.trust_domain != "example.org" };
    "#;

    fn ask(policy: &Policy, who: &str, method: &str, path: &str) -> bool {
        let principal = WorkloadId::parse(who).unwrap();
        let service = WorkloadId::parse("spiffe://example.org/w3").unwrap();
        policy
            .authorize(&AuthzRequest {
                principal: &principal,
                method,
                path,
                service: &service,
                auth_method: "wit-wpt",
                time: 0,
                transaction: None,
            })
            .allowed
    }

    #[test]
    fn each_workload_gets_only_its_own_api() {
        let p = Policy::from_text(POLICY).unwrap();
        assert!(ask(&p, "spiffe://example.org/w1", "GET", "/api/orders/7"));
        assert!(!ask(&p, "spiffe://example.org/w1", "POST", "/api/orders"));
        assert!(!ask(&p, "spiffe://example.org/w1", "GET", "/api/payments"));
        assert!(ask(&p, "spiffe://example.org/w2", "POST", "/api/payments"));
        assert!(!ask(&p, "spiffe://example.org/w2", "GET", "/api/orders"));
        assert!(!ask(
            &p,
            "spiffe://example.org/nobody",
            "GET",
            "/api/orders"
        ));
    }

    #[test]
    fn a_policy_tells_a_delegated_transaction_by_its_current_actor() {
        use wimse_core::token::Audience;
        use wimse_core::token::chain::Actor;
        let p = Policy::from_text(
            r#"
            permit(principal, action == Action::"GET", resource)
            when { context has txn && context.txn.sub == "alice" && !(context.txn has act) };
            permit(principal, action == Action::"GET", resource)
            when { context has txn && context.txn has act
                   && context.txn.act == "spiffe://example.org/worker"
                   && context.path like "/api/reports*" };
        "#,
        )
        .unwrap();
        let txn = |act: Option<Actor>| TxnTokenClaims {
            iss: None,
            iat: 0,
            aud: Audience::One("example.org".into()),
            exp: 0,
            txn: "t".into(),
            sub: "alice".into(),
            scope: "orders".into(),
            tctx: None,
            rctx: None,
            req_wl: "spiffe://example.org/gateway".into(),
            act,
        };
        let principal = WorkloadId::parse("spiffe://example.org/w1").unwrap();
        let ask = |claims: &TxnTokenClaims, path: &str| {
            p.authorize(&AuthzRequest {
                principal: &principal,
                method: "GET",
                path,
                service: &principal,
                auth_method: "wit-wpt",
                time: 0,
                transaction: Some(claims),
            })
            .allowed
        };
        let own = txn(None);
        let worker = txn(Some(Actor::after(
            "spiffe://example.org/worker",
            Some(&Actor::new("spiffe://example.org/intake")),
        )));
        let other = txn(Some(Actor::after(
            "spiffe://example.org/intake",
            Some(&Actor::new("spiffe://example.org/worker")),
        )));
        assert!(ask(&own, "/api/orders"));
        assert!(!ask(&worker, "/api/orders"));
        assert!(ask(&worker, "/api/reports/1"));
        // A prior actor is no standing for the policy.
        assert!(!ask(&other, "/api/reports/1"));
    }

    #[test]
    fn an_empty_policy_set_denies_everything() {
        let p = Policy::from_text("").unwrap();
        assert!(!ask(&p, "spiffe://example.org/w1", "GET", "/"));
    }

    #[test]
    fn invalid_cedar_is_refused() {
        assert!(matches!(
            Policy::from_text("permit(principal"),
            Err(PolicyError::Parse { .. })
        ));
    }

    #[test]
    fn the_file_is_reloaded_and_a_broken_edit_keeps_the_old_policies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.cedar");
        std::fs::write(&path, "").unwrap();
        let p = Policy::from_file(&path).unwrap();
        assert!(!ask(&p, "spiffe://example.org/w1", "GET", "/api/orders"));
        std::fs::write(&path, POLICY).unwrap();
        p.reload().unwrap();
        assert!(ask(&p, "spiffe://example.org/w1", "GET", "/api/orders"));
        std::fs::write(&path, "permit(").unwrap();
        assert!(p.reload().is_err());
        assert!(ask(&p, "spiffe://example.org/w1", "GET", "/api/orders"));
    }
}
