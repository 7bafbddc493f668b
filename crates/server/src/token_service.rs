//! The Transaction Token Service (draft-ietf-oauth-transaction-tokens) of the trust
//! domain: `POST /oauth2/token`, an RFC 8693 token exchange that answers with a Txn-Token
//! signed by this replica's active JWT key (the key workloads already trust for the trust
//! domain, as `jwt-svid` authorities in its bundle).
//!
//! The caller authenticates with its X509-SVID in the TLS handshake (mutual
//! authentication is required by the draft; [`crate::tls`] verifies the chain against the
//! bundle). Two kinds of subject token are accepted:
//!
//! - an **access token** (`access_token` or `jwt` type) from a configured issuer, which
//!   starts a transaction. Only the configured `requesters` (a gateway, typically) may
//!   start one. `sub` becomes the issuer's prefix + the token's `sub`; the scope asked for
//!   must lie within the token's scope and the issuer's `max_scope`; `request_details`
//!   becomes `tctx` and `request_context` becomes `rctx`. The token's actors (`act`, when
//!   the issuer gave it to a delegate), prefixed like `sub`, become the Txn-Token's.
//! - a **Txn-Token** of this trust domain, which is *replaced*: any workload of the trust
//!   domain holding one may ask for a narrower scope or add context. `txn`, `sub`, `aud`
//!   and every existing `tctx`/`rctx` value stay; an expired token is never replaced; the
//!   requesters so far are kept in `rctx.req_wl_chain`, which also caps replacements.
//!
//! A workload that takes on a job to finish later (asynchronous and batch work) exchanges
//! the job's Txn-Token, while it is valid, for a **delegation**
//! ([`wimse_core::token::delegation`]) that names it as the actor and lives up to a day;
//! presenting the delegation later earns it a fresh Txn-Token of the same transaction
//! with `act` naming it. Only the workloads of `[[token_service.delegation]]` may do
//! either, each delegation only for the workload it names.
//!
//! The same endpoint carries identity chaining to and from other trust domains: a
//! Txn-Token exchanged for a JWT authorization grant, and another domain's grant
//! presented for an access token ([`crate::chaining`]). A domain that accepts grants also
//! accepts its own chained access tokens as the subject that starts a transaction.
//!
//! An administrator can **revoke a transaction** (`wimse server transaction revoke`):
//! from then on no replica replaces, delegates, resumes or chains it, which ends a
//! delegated job for good. Revocations live in the datastore and are looked up only for
//! requests that continue a transaction, not for those that start one. Txn-Tokens issued
//! before stay valid at the workloads until their `exp` (minutes), as workloads verify
//! them locally.
//!
//! Every decision is audited (the tokens as hashes only) and counted in the metrics.

use crate::audit::Event;
use crate::chaining::Chaining;
use crate::config::TokenServiceSettings;
use crate::config::{DelegationRule, SelfSignedRule};
use crate::datastore::{AuthorityKind, Datastore as _};
use crate::state::State;
use crate::tls::Caller;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use wimse_audit::{
    AuthMethod, CredentialKind, CredentialRef, Delegation, EventKind, SecurityContext,
};
use wimse_core::bundle::TrustBundle;
use wimse_core::jose::{PublicKey, SigningKey};
use wimse_core::token::access::{TrustedIssuer, verify_access_token};
use wimse_core::token::chain::{Actor, service_id};
use wimse_core::token::delegation::{
    DelegationClaims, MAX_ACTORS, MAX_DELEGATION_LIFETIME, issue_delegation, verify_delegation,
};
use wimse_core::token::exchange::{
    ExchangeError, ExchangeRequest, ExchangeResponse, JwtBearerRequest, MAX_REQUEST_BYTES, Scope,
    TOKEN_PATH, TokenRequest, token_type,
};
use wimse_core::token::self_signed::verify_self_signed;
use wimse_core::token::txn::{TxnTokenClaims, issue_txn_token, verify_txn_token_in};
use wimse_core::token::unsigned::parse_unsigned;
use wimse_core::token::{Audience, TokenError, Validation, random_jti};
use wimse_core::{TrustDomain, WorkloadId};
use wimse_remote::issuers::{IssuerKeys, IssuerSource, KeySettings};

/// The `rctx` member that keeps the requesters of a replaced token, oldest first.
pub const REQ_WL_CHAIN: &str = "req_wl_chain";

/// How long a revoked transaction is remembered: past this, nothing issued for it before
/// its revocation (a delegation lives longest) can be presented any more, and nothing has
/// been issued for it since.
pub const REVOCATION_KEPT: i64 = MAX_DELEGATION_LIFETIME + 60;

/// The workload asking for a token, as its mutual-TLS connection shows it.
#[derive(Clone, Debug)]
pub struct Requester<'a> {
    /// Its ID.
    pub id: &'a WorkloadId,
    /// Its X509-SVID's public key, when known.
    pub key: Option<PublicKey>,
}

/// A new transaction for the subject `sub` that `caller` states under its `rule`: itself
/// or a subject the rule names, with `scope` within what the subject token states (if it
/// states any) and the rule's `max_scope`.
fn stated_subject(
    rule: &SelfSignedRule,
    caller: &WorkloadId,
    sub: String,
    stated: Option<&Scope>,
    scope: &Scope,
    request: &ExchangeRequest,
) -> Result<TxnTokenClaims, ExchangeError> {
    if sub != caller.as_str() && !rule.subjects.contains(&sub) {
        return Err(ExchangeError::InvalidRequest(format!(
            "subject token: `{caller}` may not name subject `{sub}`"
        )));
    }
    within_limits(
        scope,
        &[
            (stated, "the subject token's scope"),
            (Some(&rule.max_scope), "what this workload may start"),
        ],
    )?;
    new_transaction(sub, None, scope, request, None)
}

/// The claims of a new transaction for `sub`, with `act` acting for it if a delegate
/// started it: the scope asked for, `request_details` as `tctx`, `request_context` as
/// `rctx` (which may not forge the requester chain), and how the subject authenticated
/// (`amr`) as `rctx.authn` unless the request says.
fn new_transaction(
    sub: String,
    act: Option<Actor>,
    scope: &Scope,
    request: &ExchangeRequest,
    amr: Option<Vec<String>>,
) -> Result<TxnTokenClaims, ExchangeError> {
    let mut rctx = request.request_context.clone().unwrap_or_default();
    if rctx.contains_key(REQ_WL_CHAIN) {
        return Err(ExchangeError::InvalidRequest(format!(
            "`request_context` may not set `{REQ_WL_CHAIN}`"
        )));
    }
    if let Some(amr) = amr {
        rctx.entry("authn")
            .or_insert_with(|| Value::from(amr.join(" ")));
    }
    Ok(TxnTokenClaims {
        iss: None,
        iat: 0,
        aud: Audience::One(String::new()),
        exp: 0,
        txn: random_jti(),
        sub,
        scope: scope.to_string(),
        tctx: request.request_details.clone(),
        rctx: (!rctx.is_empty()).then_some(rctx),
        req_wl: String::new(),
        act,
    })
}

/// Why the token service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenServiceError {
    /// An issuer's key file is unreadable or holds no usable key.
    #[error("token service issuer `{issuer}`: {message}")]
    Issuer {
        /// The issuer.
        issuer: String,
        /// What was wrong.
        message: String,
    },
    /// The issuers, taken together, are unusable (one named twice).
    #[error("token service issuers: {0}")]
    Issuers(wimse_remote::issuers::IssuerKeysError),
}

/// The token service's policy: who may ask, which issuers count, how long tokens live.
#[derive(Debug, Default)]
pub struct TokenService {
    ttl: i64,
    max_replacements: usize,
    requesters: BTreeSet<WorkloadId>,
    issuers: Arc<IssuerKeys>,
    self_signed: Vec<SelfSignedRule>,
    delegation: Vec<DelegationRule>,
    chaining: Chaining,
}

/// Refuses `scope` where it exceeds one of `limits`, each named by whose limit it is.
pub(crate) fn within_limits(
    scope: &Scope,
    limits: &[(Option<&Scope>, &str)],
) -> Result<(), ExchangeError> {
    for (limit, whose) in limits {
        let Some(limit) = limit else { continue };
        let excess: Vec<&str> = scope.excess_over(limit).collect();
        if !excess.is_empty() {
            return Err(ExchangeError::InvalidScope(format!(
                "scope `{}` exceeds {whose}",
                excess.join(" ")
            )));
        }
    }
    Ok(())
}

/// Refuses an `actor_token`: the workload that asks, authenticated by its connection, is
/// always the actor (a delegation names it so).
pub(crate) fn no_actor_token(request: &ExchangeRequest) -> Result<(), ExchangeError> {
    if request.actor_token.is_some() {
        return Err(ExchangeError::InvalidRequest(
            "`actor_token` is not taken: the caller is the actor".into(),
        ));
    }
    Ok(())
}

/// Refuses a caller outside `trust_domain`, and a request not addressed to the trust
/// domain's token service itself (one `audience`, the trust domain; no `resource`).
fn local_request(
    caller: &WorkloadId,
    request: &ExchangeRequest,
    trust_domain: &TrustDomain,
) -> Result<(), ExchangeError> {
    if caller.trust_domain() != trust_domain {
        return Err(ExchangeError::InvalidClient(format!(
            "`{caller}` is not in trust domain `{trust_domain}`"
        )));
    }
    match request.audience.as_slice() {
        [one] if one == trust_domain.as_str() => {}
        [] => {
            return Err(ExchangeError::InvalidRequest(
                "parameter `audience` (this trust domain) is missing".into(),
            ));
        }
        other => {
            return Err(ExchangeError::InvalidTarget(format!(
                "this token service issues only for trust domain `{trust_domain}`, not `{}`",
                other.join(" ")
            )));
        }
    }
    if !request.resource.is_empty() {
        return Err(ExchangeError::InvalidTarget(
            "a Txn-Token names no `resource`".into(),
        ));
    }
    Ok(())
}

/// The signing key a token is issued with.
pub struct TxnSigner<'a> {
    /// The key.
    pub key: &'a SigningKey,
    /// Its `kid`.
    pub kid: &'a str,
    /// Its end of life: no token outlives it.
    pub not_after: i64,
}

impl TxnSigner<'_> {
    /// The expiry of a token issued at `now` to live `ttl` seconds: never past the key's
    /// end of life, and refused when that leaves it no life at all.
    pub fn expiry(&self, now: i64, ttl: i64) -> Result<i64, ExchangeError> {
        let exp = now.saturating_add(ttl).min(self.not_after);
        if exp <= now {
            return Err(ExchangeError::ServerError(
                "the token signing key is at its end of life".into(),
            ));
        }
        Ok(exp)
    }
}

impl TokenService {
    /// Reads the issuers' key files named in `settings`; issuers with a `jwks_uri` have
    /// their keys fetched once [`TokenService::issuers`] is watched.
    pub fn load(settings: &TokenServiceSettings) -> Result<Self, TokenServiceError> {
        let mut sources = Vec::new();
        for file in &settings.issuers {
            let error = |message: String| TokenServiceError::Issuer {
                issuer: file.issuer.clone(),
                message,
            };
            let mut issuer = TrustedIssuer::awaiting_keys(
                file.issuer.clone(),
                file.audience.clone(),
                file.subject_prefix.clone(),
            );
            issuer.max_scope = file
                .max_scope
                .as_deref()
                .map(Scope::parse)
                .transpose()
                .map_err(|e| error(e.to_string()))?;
            let keys = KeySettings {
                jwks_file: file.jwks_file.as_deref(),
                jwks_uri: file.jwks_uri.as_deref(),
                jwks_ca_file: file.jwks_ca_file.as_deref(),
                oidc_discovery: file.oidc_discovery,
            };
            let source =
                IssuerSource::configured(issuer, &keys).map_err(|e| error(e.to_string()))?;
            sources.push(source);
        }
        IssuerSource::distinct(&sources).map_err(TokenServiceError::Issuers)?;
        let mut service = Self::new(
            settings.txn_token_ttl,
            settings.max_replacements,
            settings.requesters.iter().cloned(),
            Vec::new(),
        )
        .with_chaining(Chaining::new(settings))
        .with_self_signed(settings.self_signed.clone())
        .with_delegation(settings.delegation.clone());
        service.issuers = Arc::new(IssuerKeys::new(sources));
        Ok(service)
    }

    /// The outside issuers whose access tokens may start transactions, with their keys.
    pub fn issuers(&self) -> &Arc<IssuerKeys> {
        &self.issuers
    }

    /// This service with identity chaining by `chaining`.
    #[must_use]
    pub fn with_chaining(self, chaining: Chaining) -> Self {
        TokenService { chaining, ..self }
    }

    /// A service issuing tokens that live `ttl` seconds, replaceable `max_replacements`
    /// times, to `requesters`, for subjects of `issuers`.
    pub fn new(
        ttl: i64,
        max_replacements: usize,
        requesters: impl IntoIterator<Item = WorkloadId>,
        issuers: Vec<TrustedIssuer>,
    ) -> Self {
        TokenService {
            ttl,
            max_replacements,
            requesters: requesters.into_iter().collect(),
            issuers: Arc::new(IssuerKeys::fixed(issuers)),
            self_signed: Vec::new(),
            delegation: Vec::new(),
            chaining: Chaining::default(),
        }
    }

    /// Lets the workloads of `rules` start transactions with self-signed subject tokens.
    #[must_use]
    pub fn with_self_signed(self, rules: Vec<SelfSignedRule>) -> Self {
        TokenService {
            self_signed: rules,
            ..self
        }
    }

    /// Lets the workloads of `rules` take over transactions to finish them later.
    #[must_use]
    pub fn with_delegation(self, rules: Vec<DelegationRule>) -> Self {
        TokenService {
            delegation: rules,
            ..self
        }
    }

    /// The delegation rule of `caller`, which it needs to be delegated a transaction and
    /// to redeem a delegation.
    fn delegation_rule(&self, caller: &WorkloadId) -> Result<&DelegationRule, ExchangeError> {
        self.delegation
            .iter()
            .find(|r| &r.actor == caller)
            .ok_or_else(|| {
                ExchangeError::UnauthorizedClient(format!(
                    "`{caller}` may not take over transactions (not in \
                     `token_service.delegation`)"
                ))
            })
    }

    /// Delegates the transaction of the Txn-Token `request` presents to `caller`, which
    /// finishes it later: a delegation of the same subject, transaction and context,
    /// naming `caller` as the actor after any actor the Txn-Token names, of the scope
    /// asked for (default the Txn-Token's) within its `[[token_service.delegation]]`
    /// entry, for that entry's lifetime, with the request's context added.
    pub fn delegate(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        trust_domain: &TrustDomain,
        bundle: &TrustBundle,
        signer: &TxnSigner<'_>,
        now: i64,
    ) -> Result<(String, DelegationClaims), ExchangeError> {
        local_request(caller, request, trust_domain)?;
        no_actor_token(request)?;
        if request.subject_token_type != token_type::TXN_TOKEN {
            return Err(ExchangeError::InvalidRequest(format!(
                "a delegation's subject token is a `{}`",
                token_type::TXN_TOKEN
            )));
        }
        let rule = self.delegation_rule(caller)?;
        // No leeway: an expired transaction is not handed on.
        let validation = Validation::strict_at(now);
        let mut txn = verify_txn_token_in(&request.subject_token, bundle, &validation)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        let held = Scope::parse(&txn.scope)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token scope: {e}")))?;
        let scope = request.scope.as_ref().unwrap_or(&held);
        within_limits(
            scope,
            &[
                (Some(&held), "the Txn-Token's scope"),
                (Some(&rule.max_scope), "what this workload may be delegated"),
            ],
        )?;
        let act = Actor::after(caller.to_string(), txn.act.as_ref());
        if act.chain().count() > MAX_ACTORS {
            return Err(ExchangeError::InvalidRequest(format!(
                "transaction `{}` already names {MAX_ACTORS} actors",
                txn.txn
            )));
        }
        let mut rctx = self.chain_on(&mut txn)?;
        let mut tctx = txn.tctx.take().unwrap_or_default();
        added_context(request, &mut rctx, &mut tctx)?;
        let claims = DelegationClaims {
            iss: service_id(trust_domain),
            aud: service_id(trust_domain),
            sub: txn.sub,
            iat: now,
            exp: signer.expiry(now, rule.lifetime)?,
            jti: random_jti(),
            txn: txn.txn,
            scope: scope.to_string(),
            act,
            tctx: (!tctx.is_empty()).then_some(tctx),
            rctx: Some(rctx),
        };
        let token = issue_delegation(signer.key, signer.kid, &claims)
            .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
        tracing::debug!(txn = %claims.txn, to = %caller, "transaction delegated");
        Ok((token, claims))
    }

    /// `old`'s request context with its requester appended to [`REQ_WL_CHAIN`], refused
    /// once the chain holds `max_replacements` requesters.
    fn chain_on(&self, old: &mut TxnTokenClaims) -> Result<Map<String, Value>, ExchangeError> {
        let mut rctx = old.rctx.take().unwrap_or_default();
        let mut chain = match rctx.remove(REQ_WL_CHAIN) {
            None => Vec::new(),
            Some(Value::Array(chain)) => chain,
            Some(_) => {
                return Err(ExchangeError::InvalidRequest(format!(
                    "subject token `rctx.{REQ_WL_CHAIN}` is not an array"
                )));
            }
        };
        if chain.len() >= self.max_replacements {
            return Err(ExchangeError::InvalidRequest(format!(
                "transaction `{}` was already replaced {} times",
                old.txn,
                chain.len()
            )));
        }
        chain.push(Value::from(std::mem::take(&mut old.req_wl)));
        rctx.insert(REQ_WL_CHAIN.into(), Value::Array(chain));
        Ok(rctx)
    }

    /// Decides a request from `requester` and signs the Txn-Token it earns. `bundle` is
    /// this trust domain's (for replacing a Txn-Token); the requester's certificate key
    /// is needed only for a self-signed subject token.
    pub fn exchange(
        &self,
        requester: &Requester<'_>,
        request: &ExchangeRequest,
        trust_domain: &TrustDomain,
        bundle: &TrustBundle,
        signer: &TxnSigner<'_>,
        now: i64,
    ) -> Result<(String, TxnTokenClaims), ExchangeError> {
        let caller = requester.id;
        local_request(caller, request, trust_domain)?;
        if let Some(t) = request
            .requested_token_type
            .as_deref()
            .filter(|t| *t != token_type::TXN_TOKEN)
        {
            return Err(ExchangeError::InvalidRequest(format!(
                "this service issues only `{}`, not `{t}`",
                token_type::TXN_TOKEN
            )));
        }
        no_actor_token(request)?;
        let scope = request
            .scope
            .as_ref()
            .ok_or_else(|| ExchangeError::InvalidRequest("parameter `scope` is missing".into()))?;
        let mut claims = match request.subject_token_type.as_str() {
            token_type::ACCESS_TOKEN | token_type::JWT => {
                self.start(caller, request, scope, bundle, &Validation::at(now))?
            }
            token_type::TXN_TOKEN => self.replace(caller, request, scope, bundle, now)?,
            token_type::SELF_SIGNED => {
                self.start_self_signed(requester, request, scope, trust_domain, now)?
            }
            token_type::UNSIGNED_JSON => self.start_unsigned(caller, request, scope)?,
            token_type::DELEGATION => self.resume(caller, request, scope, bundle, now)?,
            other => {
                return Err(ExchangeError::InvalidRequest(format!(
                    "subject token type `{other}` is not accepted"
                )));
            }
        };
        // An `exp` the decision set is a bound (a delegation's end): never passed.
        let bound = TxnSigner {
            not_after: match claims.exp {
                0 => signer.not_after,
                end => end.min(signer.not_after),
            },
            ..*signer
        };
        claims.iat = now;
        claims.exp = bound.expiry(now, self.ttl)?;
        claims.aud = Audience::One(trust_domain.to_string());
        claims.req_wl = caller.to_string();
        let token = issue_txn_token(signer.key, signer.kid, &claims)
            .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
        Ok((token, claims))
    }

    /// A new transaction for the subject of an outside access token.
    fn start(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        scope: &Scope,
        bundle: &TrustBundle,
        validation: &Validation,
    ) -> Result<TxnTokenClaims, ExchangeError> {
        if !self.requesters.contains(caller) {
            return Err(ExchangeError::UnauthorizedClient(format!(
                "`{caller}` may not start transactions (not in `token_service.requesters`)"
            )));
        }
        // Access tokens this service issued for other domains' grants, beside the
        // configured issuers': built from the current bundle, so key rotation follows.
        let own = self
            .chaining
            .accepts_grants()
            .then(|| TrustedIssuer::token_service_of(bundle));
        let held = self.issuers.current();
        let issuers = held.iter().chain(own.as_ref());
        let (issuer, subject) = verify_access_token(&request.subject_token, issuers, validation)
            .map_err(|e| {
                let description = format!("subject token: {e}");
                match e {
                    TokenError::UnknownKey { .. } => ExchangeError::UnknownSubjectKey(description),
                    _ => ExchangeError::InvalidRequest(description),
                }
            })?;
        within_limits(
            scope,
            &[
                (Some(&subject.scope), "the subject token's scope"),
                (issuer.max_scope.as_ref(), "what this issuer may grant"),
            ],
        )?;
        // A delegate's token (an agent acting for a user) keeps saying so: its actors,
        // in the issuer's namespace like the subject, become the transaction's.
        new_transaction(
            format!("{}{}", issuer.subject_prefix, subject.sub),
            subject.act.map(|act| act.prefixed(&issuer.subject_prefix)),
            scope,
            request,
            subject.amr,
        )
    }

    /// A new transaction whose subject the requesting workload states itself, in a token
    /// signed with its X509-SVID's key ([`wimse_core::token::self_signed`]), within what
    /// its `[[token_service.self_signed]]` entry allows.
    fn start_self_signed(
        &self,
        requester: &Requester<'_>,
        request: &ExchangeRequest,
        scope: &Scope,
        trust_domain: &TrustDomain,
        now: i64,
    ) -> Result<TxnTokenClaims, ExchangeError> {
        let caller = requester.id;
        let rule = self.stating_rule(caller, "self-signed")?;
        let key = requester.key.as_ref().ok_or_else(|| {
            ExchangeError::InvalidClient(
                "a self-signed subject token is checked with the key of the X509-SVID the \
                 request is made with (mutual TLS)"
                    .into(),
            )
        })?;
        let subject = verify_self_signed(
            &request.subject_token,
            caller,
            key,
            &service_id(trust_domain),
            &Validation::at(now),
        )
        .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        let stated = Scope::parse(&subject.scope)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        stated_subject(rule, caller, subject.sub, Some(&stated), scope, request)
    }

    /// A new transaction whose subject the requesting workload states in an unsigned
    /// JSON object ([`wimse_core::token::unsigned`]): only for workloads whose
    /// `[[token_service.self_signed]]` entry says `unsigned_json = true`, since nothing
    /// but their client authentication stands behind it, and within that entry.
    fn start_unsigned(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        scope: &Scope,
    ) -> Result<TxnTokenClaims, ExchangeError> {
        let rule = self.stating_rule(caller, "unsigned JSON")?;
        if !rule.unsigned_json {
            return Err(ExchangeError::UnauthorizedClient(format!(
                "`{caller}` may not start transactions with unsigned JSON subject tokens \
                 (its `token_service.self_signed` entry lacks `unsigned_json = true`)"
            )));
        }
        let subject = parse_unsigned(&request.subject_token)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        stated_subject(
            rule,
            caller,
            subject.sub,
            subject.scope.as_ref(),
            scope,
            request,
        )
    }

    /// The `[[token_service.self_signed]]` entry of `caller`, which may state the subjects
    /// of the transactions it starts (in subject tokens of the `form` named).
    fn stating_rule(
        &self,
        caller: &WorkloadId,
        form: &str,
    ) -> Result<&SelfSignedRule, ExchangeError> {
        self.self_signed
            .iter()
            .find(|r| &r.requester == caller)
            .ok_or_else(|| {
                ExchangeError::UnauthorizedClient(format!(
                    "`{caller}` may not start transactions with {form} subject tokens \
                     (not in `token_service.self_signed`)"
                ))
            })
    }

    /// A replacement for a Txn-Token of this trust domain: narrower or equal in scope,
    /// with added context only.
    fn replace(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        scope: &Scope,
        bundle: &TrustBundle,
        now: i64,
    ) -> Result<TxnTokenClaims, ExchangeError> {
        // No leeway: an expired token is never replaced.
        let validation = Validation::strict_at(now);
        let mut old = verify_txn_token_in(&request.subject_token, bundle, &validation)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        let old_scope = Scope::parse(&old.scope)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token scope: {e}")))?;
        let excess: Vec<&str> = scope.excess_over(&old_scope).collect();
        if !excess.is_empty() {
            return Err(ExchangeError::InvalidScope(format!(
                "a replacement may not add scope `{}`",
                excess.join(" ")
            )));
        }
        let mut rctx = self.chain_on(&mut old)?;
        let mut tctx = old.tctx.take().unwrap_or_default();
        added_context(request, &mut rctx, &mut tctx)?;
        tracing::debug!(txn = %old.txn, by = %caller, "Txn-Token replaced");
        Ok(TxnTokenClaims {
            scope: scope.to_string(),
            tctx: (!tctx.is_empty()).then_some(tctx),
            rctx: Some(rctx),
            // A replacement may live as long as a new token.
            exp: 0,
            ..old
        })
    }

    /// A fresh Txn-Token of a delegated transaction for the workload it was delegated
    /// to, naming it as the actor: of the scope asked for, within the delegation's and
    /// what the workload's `[[token_service.delegation]]` entry allows now, with added
    /// context only, and never outliving the delegation (its `exp` is returned as that
    /// bound).
    fn resume(
        &self,
        caller: &WorkloadId,
        request: &ExchangeRequest,
        scope: &Scope,
        bundle: &TrustBundle,
        now: i64,
    ) -> Result<TxnTokenClaims, ExchangeError> {
        let rule = self.delegation_rule(caller)?;
        // No leeway: an expired delegation is over.
        let validation = Validation::strict_at(now);
        let delegation = verify_delegation(&request.subject_token, bundle, &validation)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token: {e}")))?;
        if delegation.act.sub != caller.as_str() {
            return Err(ExchangeError::InvalidRequest(format!(
                "subject token: the delegation is for `{}`, not `{caller}`",
                delegation.act.sub
            )));
        }
        let delegated = Scope::parse(&delegation.scope)
            .map_err(|e| ExchangeError::InvalidRequest(format!("subject token scope: {e}")))?;
        within_limits(
            scope,
            &[
                (Some(&delegated), "the delegation's scope"),
                (Some(&rule.max_scope), "what this workload may be delegated"),
            ],
        )?;
        let mut rctx = delegation.rctx.unwrap_or_default();
        let mut tctx = delegation.tctx.unwrap_or_default();
        added_context(request, &mut rctx, &mut tctx)?;
        tracing::debug!(txn = %delegation.txn, by = %caller, "delegated transaction resumed");
        Ok(TxnTokenClaims {
            iss: None,
            iat: 0,
            aud: Audience::One(String::new()),
            exp: delegation.exp,
            txn: delegation.txn,
            sub: delegation.sub,
            scope: scope.to_string(),
            tctx: (!tctx.is_empty()).then_some(tctx),
            rctx: (!rctx.is_empty()).then_some(rctx),
            req_wl: String::new(),
            act: Some(delegation.act),
        })
    }
}

/// Adds a request's `request_context` and `request_details` to a transaction's contexts,
/// never changing what they hold.
fn added_context(
    request: &ExchangeRequest,
    rctx: &mut Map<String, Value>,
    tctx: &mut Map<String, Value>,
) -> Result<(), ExchangeError> {
    if let Some(added) = &request.request_context {
        add_only(rctx, added, "request_context")?;
    }
    if let Some(added) = &request.request_details {
        add_only(tctx, added, "request_details")?;
    }
    Ok(())
}

/// Adds the members of `added` that `context` lacks; refuses changing one it has.
fn add_only(
    context: &mut Map<String, Value>,
    added: &Map<String, Value>,
    name: &str,
) -> Result<(), ExchangeError> {
    for (key, value) in added {
        if key == REQ_WL_CHAIN {
            return Err(ExchangeError::InvalidRequest(format!(
                "`{name}` may not set `{REQ_WL_CHAIN}`"
            )));
        }
        match context.get(key) {
            Some(existing) if existing != value => {
                return Err(ExchangeError::InvalidRequest(format!(
                    "a replacement may not change `{key}` of the transaction's context"
                )));
            }
            Some(_) => {}
            None => {
                context.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// The token endpoint's router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(TOKEN_PATH, axum::routing::post(token))
        .with_state(state)
}

fn answer(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A token the endpoint minted, and how to answer and audit it.
struct Minted {
    token: String,
    issued_token_type: &'static str,
    /// `Bearer`, or `N_A` for what is not an access token.
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    event: EventKind,
    credential: CredentialKind,
    /// The workload it was issued to.
    client: WorkloadId,
    /// The transaction it carries, for the audit record.
    context: Option<SecurityContext>,
    /// Who acts for the transaction's subject, when it was delegated.
    delegation: Option<Delegation>,
    /// The transaction it continues or starts (`None` for a chained access token).
    txn: Option<String>,
}

/// What the caller presented, for the audit record (its hash, never the token), and how
/// it authenticated.
fn presented(request: &Result<TokenRequest, ExchangeError>) -> (Option<CredentialRef>, AuthMethod) {
    match request {
        Ok(TokenRequest::Exchange(r)) => {
            let kind = match r.subject_token_type.as_str() {
                token_type::TXN_TOKEN => CredentialKind::TxnToken,
                token_type::SELF_SIGNED => CredentialKind::SelfSigned,
                token_type::UNSIGNED_JSON => CredentialKind::UnsignedJson,
                token_type::DELEGATION => CredentialKind::Delegation,
                _ => CredentialKind::AccessToken,
            };
            (
                Some(CredentialRef::from_token(kind, &r.subject_token)),
                AuthMethod::Mtls,
            )
        }
        Ok(TokenRequest::JwtBearer(r)) => (
            Some(CredentialRef::from_token(
                CredentialKind::AuthorizationGrant,
                &r.assertion,
            )),
            AuthMethod::JwtSvid,
        ),
        Err(_) => (None, AuthMethod::Mtls),
    }
}

/// What a request asks for, as the metrics name it.
fn metric_kind(request: &Result<TokenRequest, ExchangeError>) -> &'static str {
    match request {
        Ok(TokenRequest::JwtBearer(_)) => "chained_access_token",
        Ok(TokenRequest::Exchange(r)) => match r.requested_token_type.as_deref() {
            Some(token_type::JWT) => "authorization_grant",
            Some(token_type::DELEGATION) => "delegation",
            _ if r.subject_token_type == token_type::DELEGATION => "delegated_txn_token",
            _ => "txn_token",
        },
        _ => "txn_token",
    }
}

async fn token(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    // Read here rather than by an extractor, so that an over-long body gets an RFC 6749
    // error (and an audit record) like every other refusal, not a bare 413.
    let body = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| {
            ExchangeError::InvalidRequest(format!(
                "the request is unreadable or longer than {MAX_REQUEST_BYTES} bytes"
            ))
        });
    let request = body.and_then(|body| {
        form_body(&headers)?;
        TokenRequest::parse(&body)
    });
    let (subject, method) = presented(&request);
    let kind = metric_kind(&request);
    let outcome = match request {
        Ok(TokenRequest::Exchange(request)) => {
            let decided = decide(&state, &caller, &request);
            // A login server's new key is fetched before its first token is refused; a
            // token of a held key is read once.
            let decided = if matches!(decided, Err(ExchangeError::UnknownSubjectKey(_)))
                && state
                    .token_service
                    .issuers
                    .prepare(&request.subject_token)
                    .await
            {
                decide(&state, &caller, &request)
            } else {
                decided
            };
            match decided {
                Ok(minted) => unless_revoked(&state, &request, minted).await,
                Err(e) => Err(e),
            }
        }
        Ok(TokenRequest::JwtBearer(request)) => redeem(&state, &request).await,
        Err(e) => Err(e),
    };
    state
        .metrics
        .observe_issue(kind, started.elapsed().as_secs_f64(), outcome.is_ok());
    match outcome {
        Ok(issued) => {
            state.audit.record(Event {
                kind: issued.event,
                method,
                agent: Some(&issued.client),
                workload: None,
                credential: Some(CredentialRef::from_token(issued.credential, &issued.token)),
                refusal: None,
                context: issued.context,
                delegation: issued.delegation,
            });
            let response = ExchangeResponse {
                access_token: issued.token,
                issued_token_type: issued.issued_token_type.into(),
                token_type: issued.token_type.into(),
                expires_in: issued.expires_in,
                scope: issued.scope,
            };
            match serde_json::to_string(&response) {
                Ok(body) => answer(StatusCode::OK, body),
                Err(e) => {
                    let err = ExchangeError::ServerError(e.to_string());
                    answer(StatusCode::INTERNAL_SERVER_ERROR, err.body())
                }
            }
        }
        Err(err) => {
            tracing::info!(caller = ?caller.id, error = %err, "token request refused");
            state.audit.record(Event {
                kind: EventKind::TokenExchange,
                method,
                agent: caller.id.as_ref(),
                workload: None,
                credential: subject,
                refusal: Some(err.to_string()),
                context: None,
                delegation: None,
            });
            let status =
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            answer(status, err.body())
        }
    }
}

/// Refuses what continues a transaction an administrator revoked. Asked of the datastore,
/// so that every replica refuses from the moment of the revocation; only for requests
/// whose subject token carries a transaction already (a new one cannot be revoked).
async fn unless_revoked(
    state: &State,
    request: &ExchangeRequest,
    minted: Minted,
) -> Result<Minted, ExchangeError> {
    let continues = matches!(
        request.subject_token_type.as_str(),
        token_type::TXN_TOKEN | token_type::DELEGATION
    );
    let Some(txn) = minted.txn.as_deref().filter(|_| continues) else {
        return Ok(minted);
    };
    let revoked = state
        .store
        .transaction_revoked(txn)
        .await
        .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
    if revoked {
        return Err(ExchangeError::InvalidRequest(format!(
            "transaction `{txn}` was revoked"
        )));
    }
    Ok(minted)
}

/// Refuses a body that is not declared as a form.
fn form_body(headers: &HeaderMap) -> Result<(), ExchangeError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form {
        Ok(())
    } else {
        Err(ExchangeError::InvalidRequest(
            "the body must be `application/x-www-form-urlencoded`".into(),
        ))
    }
}

/// Runs `sign` with this replica's active JWT key.
fn with_signer<T>(
    state: &State,
    sign: impl FnOnce(&TxnSigner<'_>) -> Result<T, ExchangeError>,
) -> Result<T, ExchangeError> {
    let authorities = state
        .authorities
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let slot = authorities
        .active(AuthorityKind::Jwt)
        .ok_or_else(|| ExchangeError::ServerError("no active JWT key".into()))?;
    sign(&TxnSigner {
        key: &slot.key,
        kid: &slot.id,
        not_after: slot.not_after,
    })
}

/// A token exchange from a workload of this trust domain: a Txn-Token, a delegation, or a
/// grant for another trust domain.
fn decide(
    state: &State,
    caller: &Caller,
    request: &ExchangeRequest,
) -> Result<Minted, ExchangeError> {
    let certificate = &caller.certificate;
    let caller = caller.id.as_ref().ok_or_else(|| {
        ExchangeError::InvalidClient(
            "authenticate with an X509-SVID of this trust domain (mutual TLS)".into(),
        )
    })?;
    let now = wimse_core::token::unix_now();
    let bundle = state.bundle();
    if request.requested_token_type.as_deref() == Some(token_type::JWT) {
        let (token, claims) = with_signer(state, |signer| {
            state
                .token_service
                .chaining
                .grant(caller, request, &bundle, signer, now)
        })?;
        return Ok(Minted {
            token,
            issued_token_type: token_type::JWT,
            token_type: "N_A",
            expires_in: claims.exp - claims.iat,
            scope: claims.scope,
            event: EventKind::GrantIssued,
            credential: CredentialKind::AuthorizationGrant,
            client: caller.clone(),
            context: None,
            delegation: None,
            txn: claims.txn,
        });
    }
    if request.requested_token_type.as_deref() == Some(token_type::DELEGATION) {
        let (token, claims) = with_signer(state, |signer| {
            state.token_service.delegate(
                caller,
                request,
                &state.config.trust_domain,
                &bundle,
                signer,
                now,
            )
        })?;
        return Ok(Minted {
            token,
            issued_token_type: token_type::DELEGATION,
            token_type: "N_A",
            expires_in: claims.exp - claims.iat,
            context: Some(SecurityContext::from_delegation(&claims)),
            delegation: Delegation::of_actor(&claims.act),
            scope: claims.scope,
            event: EventKind::DelegationIssued,
            credential: CredentialKind::Delegation,
            client: caller.clone(),
            txn: Some(claims.txn),
        });
    }
    let requester = Requester {
        id: caller,
        key: (request.subject_token_type == token_type::SELF_SIGNED)
            .then(|| certificate.as_ref().and_then(|c| c.public_key()))
            .flatten(),
    };
    let (token, claims) = with_signer(state, |signer| {
        state.token_service.exchange(
            &requester,
            request,
            &state.config.trust_domain,
            &bundle,
            signer,
            now,
        )
    })?;
    Ok(Minted {
        token,
        issued_token_type: token_type::TXN_TOKEN,
        token_type: "N_A",
        expires_in: claims.exp - claims.iat,
        context: Some(SecurityContext::from_txn_token(&claims)),
        delegation: claims.act.as_ref().and_then(Delegation::of_actor),
        scope: claims.scope,
        event: EventKind::TxnTokenIssued,
        credential: CredentialKind::TxnToken,
        client: caller.clone(),
        txn: Some(claims.txn),
    })
}

/// Another trust domain's grant, presented for an access token of this one.
async fn redeem(state: &State, request: &JwtBearerRequest) -> Result<Minted, ExchangeError> {
    let chaining = &state.token_service.chaining;
    // The issuer named in the grant only chooses which federated bundle to load; the
    // grant is verified against it before anything in it is believed.
    let issuer = wimse_core::token::chain::grant_issuer(&request.assertion)
        .map_err(|e| ExchangeError::InvalidGrant(format!("the grant: {e}")))?;
    let bundle = if chaining.accepted_from(&issuer) {
        state
            .store
            .get_federated_bundle(&issuer)
            .await
            .map_err(|e| ExchangeError::ServerError(e.to_string()))?
            .map(|f| f.bundle)
    } else {
        None
    };
    let now = wimse_core::token::unix_now();
    let own = &state.config.trust_domain;
    let accepted = chaining.accept(request, own, &issuer, bundle.as_ref(), now)?;
    // Last, so that a refused request does not use the grant up; in the datastore, so that
    // every replica of the trust domain sees it.
    let fresh = state
        .store
        .redeem_grant(&issuer, &accepted.grant.jti, accepted.remember_until)
        .await
        .map_err(|e| ExchangeError::ServerError(e.to_string()))?;
    if !fresh {
        return Err(ExchangeError::InvalidGrant(
            "the grant was already used".into(),
        ));
    }
    let (token, claims) = with_signer(state, |signer| {
        chaining.access_token(&accepted, own, signer, now)
    })?;
    Ok(Minted {
        token,
        issued_token_type: token_type::ACCESS_TOKEN,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        scope: claims.scope,
        event: EventKind::AccessTokenIssued,
        credential: CredentialKind::AccessToken,
        client: accepted.client,
        context: None,
        delegation: None,
        txn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wimse_core::bundle::{BundleSet, KeyUse};
    use wimse_core::jose::{Algorithm, jws};
    use wimse_core::token::txn::verify_txn_token;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://login.example.com";

    struct World {
        td: TrustDomain,
        idp: SigningKey,
        jwt_key: SigningKey,
        bundle: TrustBundle,
        bundles: BundleSet,
        service: TokenService,
    }

    fn without_key(id: &WorkloadId) -> Requester<'_> {
        Requester { id, key: None }
    }

    fn id(path: &str) -> WorkloadId {
        WorkloadId::parse(&format!("spiffe://example.org{path}")).unwrap()
    }

    fn world() -> World {
        let td = TrustDomain::new("example.org").unwrap();
        let idp = SigningKey::generate(Algorithm::Es256).unwrap();
        let jwt_key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(td.clone());
        bundle
            .add_authority(KeyUse::JwtSvid, "jwt-1", jwt_key.public_key().clone())
            .unwrap();
        let mut bundles = BundleSet::new();
        bundles.insert(bundle.clone());
        let mut jwk = idp.public_jwk().clone();
        jwk.kid = Some("idp-1".into());
        let mut trusted = TrustedIssuer::new(
            ISSUER.into(),
            "wimse".into(),
            "login:".into(),
            &wimse_core::jose::JwkSet { keys: vec![jwk] },
        )
        .unwrap();
        trusted.max_scope = Some(Scope::parse("orders refunds audit").unwrap());
        let service = TokenService::new(300, 2, [id("/gateway")], vec![trusted]);
        World {
            td,
            idp,
            jwt_key,
            bundle,
            bundles,
            service,
        }
    }

    impl World {
        fn access_token(&self, scope: &str, exp: i64) -> String {
            let claims = json!({
                "iss": ISSUER, "sub": "alice", "aud": "wimse", "exp": exp, "iat": NOW,
                "scope": scope, "amr": ["pwd", "otp"],
            });
            jws::sign(&self.idp, Some("at+jwt"), Some("idp-1"), &claims).unwrap()
        }

        fn request(&self, subject: String, kind: &str, scope: &str) -> ExchangeRequest {
            ExchangeRequest {
                audience: vec![self.td.to_string()],
                resource: Vec::new(),
                scope: Some(Scope::parse(scope).unwrap()),
                requested_token_type: Some(token_type::TXN_TOKEN.into()),
                subject_token: subject,
                subject_token_type: kind.into(),
                actor_token: None,
                actor_token_type: None,
                request_context: Some(json!({"req_ip": "192.0.2.7"}).as_object().unwrap().clone()),
                request_details: Some(json!({"order": 7}).as_object().unwrap().clone()),
            }
        }

        fn exchange(
            &self,
            caller: &str,
            request: &ExchangeRequest,
            now: i64,
        ) -> Result<(String, TxnTokenClaims), ExchangeError> {
            let signer = TxnSigner {
                key: &self.jwt_key,
                kid: "jwt-1",
                not_after: NOW + 3600,
            };
            self.service.exchange(
                &without_key(&id(caller)),
                request,
                &self.td,
                &self.bundle,
                &signer,
                now,
            )
        }

        fn start(&self, scope: &str) -> (String, TxnTokenClaims) {
            let request = self.request(
                self.access_token("orders refunds", NOW + 600),
                token_type::ACCESS_TOKEN,
                scope,
            );
            self.exchange("/gateway", &request, NOW).unwrap()
        }
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of refusals")]
    fn a_workload_starts_its_own_transaction_with_a_self_signed_token_within_its_rule() {
        use wimse_core::token::self_signed::{SelfSignedClaims, issue_self_signed};
        let mut w = world();
        w.service = std::mem::take(&mut w.service).with_self_signed(vec![SelfSignedRule {
            requester: id("/batch"),
            max_scope: Scope::parse("reports reports.read").unwrap(),
            subjects: ["nightly-report".to_owned()].into(),
            unsigned_json: false,
        }]);
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let public = PublicKey::from_jwk(key.public_jwk()).unwrap();
        let token = |sub: &str, scope: &str| {
            let claims = SelfSignedClaims {
                iss: id("/batch").to_string(),
                sub: sub.into(),
                aud: "spiffe://example.org".into(),
                iat: NOW,
                exp: NOW + 60,
                scope: scope.into(),
            };
            issue_self_signed(&key, &claims).unwrap()
        };
        let signer = TxnSigner {
            key: &w.jwt_key,
            kid: "jwt-1",
            not_after: NOW + 3600,
        };
        let ask = |caller: &str, key: Option<PublicKey>, subject: String, scope: &str| {
            let request = w.request(subject, token_type::SELF_SIGNED, scope);
            let requester = Requester {
                id: &id(caller),
                key,
            };
            w.service
                .exchange(&requester, &request, &w.td, &w.bundle, &signer, NOW)
        };
        // Itself or a subject its rule names, within both scopes.
        let (_, claims) = ask(
            "/batch",
            Some(public.clone()),
            token("nightly-report", "reports"),
            "reports",
        )
        .unwrap();
        assert_eq!(claims.sub, "nightly-report");
        assert_eq!(claims.req_wl, id("/batch").to_string());
        assert_eq!(
            claims.tctx,
            Some(json!({"order": 7}).as_object().unwrap().clone())
        );
        let (_, claims) = ask(
            "/batch",
            Some(public.clone()),
            token(id("/batch").as_str(), "reports.read"),
            "reports.read",
        )
        .unwrap();
        assert_eq!(claims.sub, id("/batch").to_string());
        let other =
            PublicKey::from_jwk(SigningKey::generate(Algorithm::Es256).unwrap().public_jwk())
                .unwrap();
        for (caller, key, subject, scope, code) in [
            // A workload without a rule; one with no certificate key at hand.
            (
                "/gateway",
                Some(public.clone()),
                token("nightly-report", "reports"),
                "reports",
                "unauthorized_client",
            ),
            (
                "/batch",
                None,
                token("nightly-report", "reports"),
                "reports",
                "invalid_client",
            ),
            // Signed by another key than the connection's certificate.
            (
                "/batch",
                Some(other),
                token("nightly-report", "reports"),
                "reports",
                "invalid_request",
            ),
            // A subject its rule does not name.
            (
                "/batch",
                Some(public.clone()),
                token("alice", "reports"),
                "reports",
                "invalid_request",
            ),
            // Wider than the token states, or than the rule allows.
            (
                "/batch",
                Some(public.clone()),
                token("nightly-report", "reports.read"),
                "reports",
                "invalid_scope",
            ),
            (
                "/batch",
                Some(public.clone()),
                token("nightly-report", "reports admin"),
                "admin",
                "invalid_scope",
            ),
        ] {
            let refused = ask(caller, key, subject, scope).unwrap_err();
            assert_eq!(refused.code(), code, "{refused}");
        }
    }

    #[test]
    fn a_trusted_workload_names_the_subject_in_unsigned_json_within_its_rule() {
        use wimse_core::token::unsigned::{UnsignedSubject, encode_unsigned};
        let mut w = world();
        w.service = std::mem::take(&mut w.service).with_self_signed(vec![
            SelfSignedRule {
                requester: id("/portal"),
                max_scope: Scope::parse("orders orders.read").unwrap(),
                subjects: ["user:alice".to_owned()].into(),
                unsigned_json: true,
            },
            SelfSignedRule {
                requester: id("/batch"),
                max_scope: Scope::parse("orders").unwrap(),
                subjects: BTreeSet::new(),
                unsigned_json: false,
            },
        ]);
        let subject = |sub: &str, scope: Option<&str>| {
            encode_unsigned(&UnsignedSubject {
                sub: sub.into(),
                scope: scope.map(|s| Scope::parse(s).unwrap()),
            })
            .unwrap()
        };
        let ask = |caller: &str, token: String, scope: &str| {
            let request = w.request(token, token_type::UNSIGNED_JSON, scope);
            w.exchange(caller, &request, NOW)
        };
        // A named subject, bounded by the rule alone or also by the scope it states.
        let (_, claims) = ask("/portal", subject("user:alice", None), "orders").unwrap();
        assert_eq!(claims.sub, "user:alice");
        assert_eq!(claims.scope, "orders");
        assert_eq!(claims.req_wl, id("/portal").to_string());
        assert_eq!(
            claims.tctx,
            Some(json!({"order": 7}).as_object().unwrap().clone())
        );
        let (_, claims) = ask(
            "/portal",
            subject(id("/portal").as_str(), Some("orders.read")),
            "orders.read",
        )
        .unwrap();
        assert_eq!(claims.sub, id("/portal").to_string());
        for (caller, token, scope, code, reason) in [
            (
                "/gateway",
                subject("user:alice", None),
                "orders",
                "unauthorized_client",
                "not in `token_service.self_signed`",
            ),
            (
                "/batch",
                subject(id("/batch").as_str(), None),
                "orders",
                "unauthorized_client",
                "unsigned_json = true",
            ),
            (
                "/portal",
                subject("user:bob", None),
                "orders",
                "invalid_request",
                "may not name subject `user:bob`",
            ),
            (
                "/portal",
                subject("user:alice", Some("orders.read")),
                "orders",
                "invalid_scope",
                "the subject token's scope",
            ),
            (
                "/portal",
                subject("user:alice", None),
                "refunds",
                "invalid_scope",
                "what this workload may start",
            ),
            (
                "/portal",
                r#"{"sub":"user:alice"}"#.to_owned(),
                "orders",
                "invalid_request",
                "raw JSON",
            ),
        ] {
            let refused = ask(caller, token, scope).unwrap_err();
            assert_eq!(refused.code(), code, "{refused}");
            assert!(refused.to_string().contains(reason), "{refused}");
        }
    }

    #[test]
    fn an_access_token_starts_a_transaction_whose_token_workloads_accept() {
        let w = world();
        let (token, claims) = w.start("orders");
        assert_eq!(claims.sub, "login:alice");
        assert_eq!(claims.scope, "orders");
        assert_eq!(claims.req_wl, id("/gateway").to_string());
        assert_eq!((claims.iat, claims.exp), (NOW, NOW + 300));
        assert_eq!(claims.tctx.as_ref().unwrap()["order"], 7);
        let rctx = claims.rctx.as_ref().unwrap();
        assert_eq!(rctx["req_ip"], "192.0.2.7");
        assert_eq!(rctx["authn"], "pwd otp");
        // What a workload of the trust domain checks.
        let verified =
            verify_txn_token(&token, &w.bundles, &w.td, &Validation::at(NOW + 10)).unwrap();
        assert_eq!(verified, claims);
        // Two transactions never share an ID.
        assert_ne!(w.start("orders").1.txn, claims.txn);
        assert_eq!(claims.act, None);

        // A delegate's token (an assistant acting for alice, after a planner) keeps
        // saying so, its actors in the issuer's namespace like the subject.
        let delegate = jws::sign(
            &w.idp,
            Some("at+jwt"),
            Some("idp-1"),
            &json!({
                "iss": ISSUER, "sub": "alice", "aud": "wimse", "exp": NOW + 600, "iat": NOW,
                "scope": "orders", "act": {"sub": "assistant", "act": {"sub": "planner"}},
            }),
        )
        .unwrap();
        let request = w.request(delegate, token_type::ACCESS_TOKEN, "orders");
        let (_, claims) = w.exchange("/gateway", &request, NOW).unwrap();
        assert_eq!(claims.sub, "login:alice");
        assert_eq!(
            claims.act.unwrap().chain().collect::<Vec<_>>(),
            ["login:assistant", "login:planner"]
        );
    }

    #[test]
    fn a_transaction_is_started_only_by_a_requester_within_scope() {
        let w = world();
        let request = |scope: &str| {
            w.request(
                w.access_token("orders refunds", NOW + 600),
                token_type::ACCESS_TOKEN,
                scope,
            )
        };
        let code = |caller: &str, request: &ExchangeRequest| {
            w.exchange(caller, request, NOW).unwrap_err().code()
        };
        assert_eq!(code("/web", &request("orders")), "unauthorized_client");
        assert_eq!(code("/gateway", &request("orders admin")), "invalid_scope");
        // Within the token but beyond what the issuer may grant.
        let mut wide = w.request(
            w.access_token("orders refunds payroll", NOW + 600),
            token_type::ACCESS_TOKEN,
            "payroll",
        );
        assert_eq!(code("/gateway", &wide), "invalid_scope");
        wide.scope = None;
        assert_eq!(code("/gateway", &wide), "invalid_request");
        let expired = w.request(
            w.access_token("orders", NOW - 600),
            token_type::ACCESS_TOKEN,
            "orders",
        );
        assert_eq!(code("/gateway", &expired), "invalid_request");
        let mut other = request("orders");
        other.audience = vec!["other.example".into()];
        assert_eq!(code("/gateway", &other), "invalid_target");
        other.audience.clear();
        assert_eq!(code("/gateway", &other), "invalid_request");
        let mut typed = request("orders");
        typed.requested_token_type = Some(token_type::ACCESS_TOKEN.into());
        assert_eq!(code("/gateway", &typed), "invalid_request");
        let mut refresh = request("orders");
        refresh.subject_token_type = token_type::REFRESH_TOKEN.into();
        assert_eq!(code("/gateway", &refresh), "invalid_request");
        let mut smuggled = request("orders");
        smuggled.request_context = Some(
            json!({ REQ_WL_CHAIN: ["spiffe://example.org/x"] })
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(code("/gateway", &smuggled), "invalid_request");
        let foreign = WorkloadId::parse("spiffe://other.example/gateway").unwrap();
        let signer = TxnSigner {
            key: &w.jwt_key,
            kid: "jwt-1",
            not_after: NOW + 3600,
        };
        let err = w
            .service
            .exchange(
                &without_key(&foreign),
                &request("orders"),
                &w.td,
                &w.bundle,
                &signer,
                NOW,
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_client");
    }

    #[test]
    fn a_replacement_only_narrows_keeps_the_transaction_and_is_capped() {
        let w = world();
        let (first, original) = w.start("orders refunds");
        let mut narrower = w.request(first.clone(), token_type::TXN_TOKEN, "orders");
        narrower.request_context = Some(json!({"hop": "w1"}).as_object().unwrap().clone());
        let (second, replaced) = w.exchange("/w1", &narrower, NOW + 60).unwrap();
        assert_eq!(
            (&replaced.txn, &replaced.sub),
            (&original.txn, &original.sub)
        );
        assert_eq!(replaced.scope, "orders");
        assert_eq!(replaced.req_wl, id("/w1").to_string());
        let rctx = replaced.rctx.as_ref().unwrap();
        assert_eq!(rctx["req_ip"], "192.0.2.7");
        assert_eq!(rctx["hop"], "w1");
        assert_eq!(rctx[REQ_WL_CHAIN], json!([id("/gateway").to_string()]));
        assert_eq!(replaced.exp, NOW + 60 + 300);

        let code = |request: &ExchangeRequest, now: i64| {
            w.exchange("/w2", request, now).unwrap_err().code()
        };
        // Broadening, changing the context, and an expired token are refused.
        assert_eq!(
            code(
                &w.request(second.clone(), token_type::TXN_TOKEN, "orders refunds"),
                NOW + 60
            ),
            "invalid_scope"
        );
        let mut changed = w.request(second.clone(), token_type::TXN_TOKEN, "orders");
        changed.request_details = Some(json!({"order": 8}).as_object().unwrap().clone());
        assert_eq!(code(&changed, NOW + 60), "invalid_request");
        assert_eq!(
            code(
                &w.request(first.clone(), token_type::TXN_TOKEN, "orders"),
                NOW + 301
            ),
            "invalid_request"
        );
        // A token not signed by the trust domain is refused.
        let forged = issue_txn_token(
            &SigningKey::generate(Algorithm::Es256).unwrap(),
            "jwt-1",
            &original,
        )
        .unwrap();
        assert_eq!(
            code(&w.request(forged, token_type::TXN_TOKEN, "orders"), NOW),
            "invalid_request"
        );
        // Two replacements are allowed here; the third is refused.
        let (third, claims) = w
            .exchange(
                "/w2",
                &w.request(second, token_type::TXN_TOKEN, "orders"),
                NOW + 60,
            )
            .unwrap();
        assert_eq!(
            claims.rctx.unwrap()[REQ_WL_CHAIN].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            code(&w.request(third, token_type::TXN_TOKEN, "orders"), NOW + 60),
            "invalid_request"
        );
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one story with its table of refusals"
    )]
    fn a_delegated_transaction_is_resumed_by_its_actor_after_its_txn_token_expired() {
        let mut w = world();
        let rule = |actor: &str, scope: &str| DelegationRule {
            actor: id(actor),
            max_scope: Scope::parse(scope).unwrap(),
            lifetime: 3600,
        };
        w.service = std::mem::take(&mut w.service).with_delegation(vec![
            rule("/worker", "orders refunds"),
            rule("/auditor", "orders"),
            rule("/narrow", "refunds"),
        ]);
        let signer = TxnSigner {
            key: &w.jwt_key,
            kid: "jwt-1",
            not_after: NOW + 7200,
        };
        let delegate = |caller: &str, txn: &str, scope: Option<&str>, now: i64| {
            let mut request = w.request(txn.to_owned(), token_type::TXN_TOKEN, "orders");
            request.scope = scope.map(|s| Scope::parse(s).unwrap());
            request.requested_token_type = Some(token_type::DELEGATION.into());
            request.request_context =
                Some(json!({"queue": "nightly"}).as_object().unwrap().clone());
            request.request_details = None;
            w.service
                .delegate(&id(caller), &request, &w.td, &w.bundle, &signer, now)
        };
        let resume = |caller: &str, delegation: &str, scope: &str, now: i64| {
            let request = w.request(delegation.to_owned(), token_type::DELEGATION, scope);
            w.exchange(caller, &request, now)
        };
        let (txn, started) = w.start("orders refunds");

        // The worker takes the job while its Txn-Token is valid; the delegation keeps the
        // subject, transaction and context, names the worker and outlives the Txn-Token.
        let (delegation, claims) = delegate("/worker", &txn, None, NOW + 10).unwrap();
        assert_eq!(claims.sub, "login:alice");
        assert_eq!(claims.txn, started.txn);
        assert_eq!(claims.scope, "orders refunds");
        assert_eq!(claims.act, Actor::new(id("/worker").to_string()));
        assert_eq!(claims.exp, NOW + 10 + 3600);
        assert_eq!(claims.tctx, started.tctx);
        assert_eq!(
            claims.rctx.as_ref().unwrap()[REQ_WL_CHAIN],
            json!([id("/gateway").to_string()])
        );

        // An hour later the Txn-Token is long expired and cannot be replaced, but the
        // delegation earns a fresh one that names the worker as the actor.
        let later = NOW + 1800;
        let refused = w
            .exchange(
                "/worker",
                &w.request(txn.clone(), token_type::TXN_TOKEN, "orders"),
                later,
            )
            .unwrap_err();
        assert!(refused.description().contains("expired"), "{refused}");
        let (resumed, claims) = resume("/worker", &delegation, "orders", later).unwrap();
        assert_eq!((claims.iat, claims.exp), (later, later + 300));
        // No Txn-Token outlives the delegation it came from.
        let (_, near_end) = w
            .service
            .exchange(
                &without_key(&id("/worker")),
                &w.request(delegation.clone(), token_type::DELEGATION, "orders"),
                &w.td,
                &w.bundle,
                &signer,
                NOW + 10 + 3600 - 60,
            )
            .unwrap();
        assert_eq!(near_end.exp, NOW + 10 + 3600);
        let verified = verify_txn_token(
            &resumed,
            &w.bundles,
            &w.td,
            &wimse_core::token::Validation::at(later),
        )
        .unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.txn, started.txn);
        assert_eq!(verified.sub, "login:alice");
        assert_eq!(verified.scope, "orders");
        assert_eq!(verified.req_wl, id("/worker").to_string());
        assert_eq!(verified.act, Some(Actor::new(id("/worker").to_string())));
        assert_eq!(verified.rctx.as_ref().unwrap()["req_ip"], "192.0.2.7");
        assert_eq!(verified.rctx.as_ref().unwrap()["queue"], "nightly");

        // Handed on again: the next actor comes first, the worker after it.
        let (_, onward) = delegate("/auditor", &resumed, Some("orders"), later).unwrap();
        assert_eq!(
            onward.act.chain().collect::<Vec<_>>(),
            [id("/auditor").as_str(), id("/worker").as_str()]
        );

        let refusals: Vec<(&str, ExchangeError, &str)> = vec![
            (
                "a workload without a rule delegates",
                delegate("/web", &txn, None, NOW).unwrap_err(),
                "unauthorized_client",
            ),
            (
                "beyond the actor's rule",
                delegate("/narrow", &txn, None, NOW).unwrap_err(),
                "invalid_scope",
            ),
            (
                "beyond the Txn-Token",
                delegate("/worker", &w.start("orders").0, Some("refunds"), NOW).unwrap_err(),
                "invalid_scope",
            ),
            (
                "an expired Txn-Token",
                delegate("/worker", &txn, None, NOW + 301).unwrap_err(),
                "invalid_request",
            ),
            (
                "an access token as subject",
                delegate("/worker", &w.access_token("orders", NOW + 600), None, NOW).unwrap_err(),
                "invalid_request",
            ),
            (
                "another workload redeems it",
                resume("/auditor", &delegation, "orders", later).unwrap_err(),
                "invalid_request",
            ),
            (
                "a wider scope than delegated",
                resume("/worker", &onward_delegation(&w, &signer), "refunds", later).unwrap_err(),
                "invalid_scope",
            ),
            (
                "after it ended",
                resume("/worker", &delegation, "orders", NOW + 10 + 3600).unwrap_err(),
                "invalid_request",
            ),
            (
                "a Txn-Token passed off as a delegation",
                resume("/worker", &txn, "orders", NOW).unwrap_err(),
                "invalid_request",
            ),
            (
                "a delegation passed off as a Txn-Token",
                w.exchange(
                    "/worker",
                    &w.request(delegation.clone(), token_type::TXN_TOKEN, "orders"),
                    later,
                )
                .unwrap_err(),
                "invalid_request",
            ),
        ];
        for (name, refused, code) in refusals {
            assert_eq!(refused.code(), code, "{name}: {refused}");
        }
        let mut with_actor = w.request(txn.clone(), token_type::TXN_TOKEN, "orders");
        with_actor.requested_token_type = Some(token_type::DELEGATION.into());
        with_actor.actor_token = Some("t".into());
        with_actor.actor_token_type = Some(token_type::JWT.into());
        let refused = w
            .service
            .delegate(&id("/worker"), &with_actor, &w.td, &w.bundle, &signer, NOW)
            .unwrap_err();
        assert!(refused.description().contains("actor_token"), "{refused}");

        // Taking the worker's rule away ends what it was delegated.
        let ruleless = TokenService::new(300, 2, [id("/gateway")], Vec::new());
        let refused = ruleless
            .exchange(
                &without_key(&id("/worker")),
                &w.request(delegation, token_type::DELEGATION, "orders"),
                &w.td,
                &w.bundle,
                &signer,
                later,
            )
            .unwrap_err();
        assert_eq!(refused.code(), "unauthorized_client", "{refused}");
    }

    /// A delegation of scope `orders` to `/worker`.
    fn onward_delegation(w: &World, signer: &TxnSigner<'_>) -> String {
        let (txn, _) = w.start("orders");
        let mut request = w.request(txn, token_type::TXN_TOKEN, "orders");
        request.requested_token_type = Some(token_type::DELEGATION.into());
        w.service
            .delegate(&id("/worker"), &request, &w.td, &w.bundle, signer, NOW)
            .unwrap()
            .0
    }

    #[test]
    fn requests_are_counted_by_what_they_ask_for() {
        let form = |subject_type: &str, requested: &str| {
            let mut text = format!(
                "grant_type={}&subject_token=t&subject_token_type={}&audience=example.org",
                wimse_core::token::exchange::GRANT_TYPE,
                subject_type
            );
            if !requested.is_empty() {
                text.push_str("&requested_token_type=");
                text.push_str(requested);
            }
            TokenRequest::parse(text.as_bytes())
        };
        for (request, kind) in [
            (
                form(token_type::ACCESS_TOKEN, token_type::TXN_TOKEN),
                "txn_token",
            ),
            (form(token_type::TXN_TOKEN, ""), "txn_token"),
            (
                form(token_type::TXN_TOKEN, token_type::JWT),
                "authorization_grant",
            ),
            (
                form(token_type::TXN_TOKEN, token_type::DELEGATION),
                "delegation",
            ),
            (
                form(token_type::DELEGATION, token_type::TXN_TOKEN),
                "delegated_txn_token",
            ),
            (TokenRequest::parse(b"grant_type=password"), "txn_token"),
        ] {
            assert_eq!(metric_kind(&request), kind, "{request:?}");
        }
    }

    #[test]
    fn an_issuer_named_twice_stops_the_start() {
        let config = |second: &str| {
            let text = format!(
                "[[token_service.issuers]]\nissuer = \"{ISSUER}\"\naudience = \"wimse\"\n\
                 jwks_uri = \"https://login.test/jwks\"\n\
                 [[token_service.issuers]]\nissuer = \"{second}\"\naudience = \"other\"\n\
                 jwks_uri = \"https://login.test/jwks\"\n"
            );
            toml::from_str::<crate::config::FileConfig>(&text)
                .unwrap()
                .resolve()
                .unwrap()
                .token_service
        };
        assert!(TokenService::load(&config("https://other.example")).is_ok());
        let refused = TokenService::load(&config(ISSUER)).unwrap_err();
        assert!(refused.to_string().contains("named twice"), "{refused}");
    }

    #[test]
    fn no_token_outlives_the_signing_key() {
        let w = world();
        let request = w.request(
            w.access_token("orders", NOW + 600),
            token_type::ACCESS_TOKEN,
            "orders",
        );
        let signer = |not_after| TxnSigner {
            key: &w.jwt_key,
            kid: "jwt-1",
            not_after,
        };
        let gateway = id("/gateway");
        let (_, claims) = w
            .service
            .exchange(
                &without_key(&gateway),
                &request,
                &w.td,
                &w.bundle,
                &signer(NOW + 100),
                NOW,
            )
            .unwrap();
        assert_eq!(claims.exp, NOW + 100);
        let err = w
            .service
            .exchange(
                &without_key(&gateway),
                &request,
                &w.td,
                &w.bundle,
                &signer(NOW),
                NOW,
            )
            .unwrap_err();
        assert_eq!(err.code(), "server_error");
    }
}
