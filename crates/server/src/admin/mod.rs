//! The admin API: registration entries, join tokens, the bundle, agents, federation
//! ([`federation`]), transaction revocation and the signing authorities, served as JSON
//! over HTTP on a unix socket with mode 0600 (only the server's user may call it).
//! `wimse server entry|token|bundle|agent|federation|transaction|localauthority|healthcheck`
//! are its clients ([`client`]). Every change is recorded in the server's audit trail
//! ([`crate::audit::ServerAudit::admin`]) with the local user and process that made it
//! ([`Caller`]).

use crate::api::{
    AgentPurgeRequest, AgentPurgeResponse, AgentRequest, AgentView, AuthorityRequest,
    AuthorityView, EntryRequest, EntryView, MintRequest, MintResponse, Problem,
    RevokedTransactionView, TokenRequest, TokenResponse, TransactionRequest,
};
use crate::authority::{AuthorityError, Slot};
use crate::datastore::{
    AuthorityKind, Datastore, EntryFilter, JoinToken, NewEntry, RegistrationEntry, Selector,
    StoreError,
};
use crate::issuer::IssueError;
use crate::state::{State, StateError};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use wimse_audit::{CredentialKind, CredentialRef, Label, Operator, SecurityContext};
use wimse_core::jose::b64;
use wimse_core::token::unix_now;
use wimse_core::{TrustDomain, WorkloadId};

pub mod client;
mod federation;

/// Who called the admin API: the user and process the kernel names as the peer of the
/// unix socket, recorded with every change ([`Operator`]). `None` if the kernel did not
/// say (the record then lacks the operator; the socket's mode already limits callers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller(pub Option<Operator>);

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Caller(operator_of(stream.io()))
    }
}

fn operator_of(stream: &UnixStream) -> Option<Operator> {
    let credentials = stream.peer_cred().ok()?;
    let pid = u32::try_from(credentials.pid()?).ok()?;
    Some(Operator {
        uid: credentials.uid(),
        login_uid: login_uid(pid),
        pid,
    })
}

/// The login uid of process `pid` (`/proc/<pid>/loginuid`), unless unset (`-1`, as in
/// most containers) or unreadable.
fn login_uid(pid: u32) -> Option<u32> {
    parse_login_uid(&std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok()?)
}

fn parse_login_uid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|uid| *uid != u32::MAX)
}

/// The largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// An admin API failure, answered as RFC 9457 problem details.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is invalid; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (duplicate entry).
    #[error("{0}")]
    Conflict(String),
    /// Something the server depends on failed (a foreign bundle endpoint).
    #[error("{0}")]
    Upstream(String),
    /// The server failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::DuplicateEntry => AdminError::Conflict(
                "an entry with this SPIFFE ID, parent and selectors exists".into(),
            ),
            StoreError::EntryNotFound(id) => AdminError::NotFound(format!("no entry `{id}`")),
            StoreError::AgentNotFound(id) => AdminError::NotFound(format!("no agent `{id}`")),
            StoreError::FederationNotFound(_) | StoreError::BundleNotFound(_) => {
                AdminError::NotFound(e.to_string())
            }
            StoreError::DuplicateFederation(_) | StoreError::BundleInUse { .. } => {
                AdminError::Conflict(e.to_string())
            }
            _ => AdminError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid request"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not found"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream failure"),
            AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server error"),
        };
        let problem = Problem {
            title: title.into(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        (
            status,
            [("content-type", "application/problem+json")],
            Json(problem),
        )
            .into_response()
    }
}

type AdminResult<T> = Result<Json<T>, AdminError>;

/// The admin router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/entries", post(create_entry).get(list_entries))
        .route(
            "/v1/entries/{id}",
            get(show_entry).put(update_entry).delete(delete_entry),
        )
        .route("/v1/join-tokens", post(create_token))
        .route("/v1/bundle", get(show_bundle))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/ban", post(ban_agent))
        .route("/v1/agents/evict", post(evict_agent))
        .route("/v1/agents/purge", post(purge_agents))
        .route("/v1/transactions/revoke", post(revoke_transaction))
        .route("/v1/transactions/revoked", get(list_revoked_transactions))
        .route("/v1/mint/{kind}", post(mint))
        .route("/v1/authorities", get(list_authorities))
        .route("/v1/authorities/prepare", post(prepare_authority))
        .route("/v1/authorities/activate", post(activate_authority))
        .route("/v1/authorities/taint", post(taint_authority))
        .route("/v1/authorities/revoke", post(revoke_authority))
        .route("/v1/health", get(|| async { "ok" }))
        .merge(federation::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Tells long-polling agents that entries changed (a failure only delays them to the next
/// revision poll).
async fn wake_agents(state: &State) {
    if let Err(e) = state.refresh_revision().await {
        tracing::warn!(error = %e, "reading the entry revision failed");
    }
}

/// An entry as the APIs show it.
pub(crate) fn view(e: &RegistrationEntry) -> EntryView {
    EntryView {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl: e.x509_ttl,
        jwt_ttl: e.jwt_ttl,
        dns_names: e.dns_names.clone(),
        hint: e.hint.clone(),
        admin: e.admin,
        downstream: e.downstream,
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        revision: e.revision,
    }
}

/// Parses an ID given to the admin API, which must belong to this trust domain.
fn own_id(state: &State, field: &str, value: &str) -> Result<WorkloadId, AdminError> {
    let id =
        WorkloadId::parse(value).map_err(|e| AdminError::BadRequest(format!("`{field}`: {e}")))?;
    if !id.is_spiffe() {
        return Err(AdminError::BadRequest(format!(
            "`{field}` `{id}` is not a SPIFFE ID"
        )));
    }
    if id.trust_domain() != &state.config.trust_domain {
        return Err(AdminError::BadRequest(format!(
            "`{field}` `{id}` is not in trust domain `{}`",
            state.config.trust_domain
        )));
    }
    Ok(id)
}

fn selectors(values: &[String]) -> Result<Vec<Selector>, AdminError> {
    values
        .iter()
        .map(|s| {
            s.parse::<Selector>()
                .map_err(|e| AdminError::BadRequest(format!("selector `{s}`: {e}")))
        })
        .collect()
}

/// Validates an entry request into what the store keeps.
async fn new_entry(state: &State, req: EntryRequest) -> Result<NewEntry, AdminError> {
    let spiffe_id = own_id(state, "spiffe_id", &req.spiffe_id)?;
    if spiffe_id.is_trust_domain_id() {
        return Err(AdminError::BadRequest(
            "`spiffe_id` must have a path".into(),
        ));
    }
    let parent_id = own_id(state, "parent_id", &req.parent_id)?;
    if parent_id == spiffe_id {
        return Err(AdminError::BadRequest(
            "an entry cannot be its own parent".into(),
        ));
    }
    if !parent_exists(state, &parent_id).await? {
        return Err(AdminError::BadRequest(format!(
            "`parent_id` `{parent_id}` is neither an agent, the server, nor the SPIFFE ID of an entry"
        )));
    }
    if req.selectors.is_empty() {
        return Err(AdminError::BadRequest(
            "at least one selector is required".into(),
        ));
    }
    let mut selectors = selectors(&req.selectors)?;
    selectors.sort();
    selectors.dedup();
    for name in &req.dns_names {
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
            return Err(AdminError::BadRequest(format!(
                "`dns` `{name}` is not a DNS name"
            )));
        }
    }
    if req.hint.as_ref().is_some_and(|h| h.len() > 1024) {
        return Err(AdminError::BadRequest(
            "`hint` is longer than 1024 bytes".into(),
        ));
    }
    let ttl = |name: &str, value: Option<u32>, default: u32| match value {
        Some(0) => Err(AdminError::BadRequest(format!("`{name}` must be positive"))),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let federates_with = federates_with(state, &req.federates_with).await?;
    Ok(NewEntry {
        federates_with,
        x509_ttl: ttl("x509_ttl", req.x509_ttl, state.config.default_x509_ttl)?,
        jwt_ttl: ttl("jwt_ttl", req.jwt_ttl, state.config.default_jwt_ttl)?,
        spiffe_id,
        parent_id,
        selectors,
        dns_names: req.dns_names,
        hint: req.hint,
        admin: req.admin,
        downstream: req.downstream,
    })
}

/// The trust domains an entry federates with: foreign, and each with a federation
/// relationship or a stored bundle (else its workloads would wait for a bundle that never
/// comes).
async fn federates_with(state: &State, names: &[String]) -> Result<Vec<TrustDomain>, AdminError> {
    let mut domains = Vec::with_capacity(names.len());
    for name in names {
        let td = TrustDomain::new(name)
            .map_err(|e| AdminError::BadRequest(format!("`federates_with` `{name}`: {e}")))?;
        if td == state.config.trust_domain {
            return Err(AdminError::BadRequest(format!(
                "`federates_with` `{td}` is this server's own trust domain"
            )));
        }
        if state.store.get_federation(&td).await?.is_none()
            && state.store.get_federated_bundle(&td).await?.is_none()
        {
            return Err(AdminError::BadRequest(format!(
                "`federates_with` `{td}`: no federation relationship with it and no bundle of \
                 it: create one first (`wimse server federation create`)"
            )));
        }
        domains.push(td);
    }
    // The store keeps them sorted and without repeats.
    Ok(domains)
}

/// A parent is the server, an agent (attested, or named by a join token's agent path),
/// or another entry's workload.
async fn parent_exists(state: &State, parent: &WorkloadId) -> Result<bool, AdminError> {
    if *parent == state.spiffe_id || parent.path().starts_with("/wimse/agent/") {
        return Ok(true);
    }
    if state.store.get_agent(parent).await?.is_some() {
        return Ok(true);
    }
    let filter = EntryFilter {
        spiffe_id: Some(parent.clone()),
        ..EntryFilter::default()
    };
    Ok(!state.store.list_entries(&filter).await?.is_empty())
}

async fn create_entry(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<EntryRequest>,
) -> AdminResult<EntryView> {
    let entry = new_entry(&state, req).await?;
    let created = state.store.create_entry(entry).await?;
    tracing::info!(entry_id = %created.id, spiffe_id = %created.spiffe_id, "entry created");
    let action = format!("entry create {}", created.id);
    state
        .audit
        .admin(caller.0, &action, Some(&created.spiffe_id), None, None);
    wake_agents(&state).await;
    Ok(Json(view(&created)))
}

#[derive(Deserialize)]
struct ListQuery {
    spiffe_id: Option<String>,
    parent_id: Option<String>,
    selector: Option<String>,
}

async fn list_entries(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<ListQuery>,
) -> AdminResult<Vec<EntryView>> {
    let parse = |field, v: Option<String>| -> Result<Option<WorkloadId>, AdminError> {
        v.map(|v| {
            WorkloadId::parse(&v).map_err(|e| AdminError::BadRequest(format!("`{field}`: {e}")))
        })
        .transpose()
    };
    let filter = EntryFilter {
        spiffe_id: parse("spiffe_id", q.spiffe_id)?,
        parent_id: parse("parent_id", q.parent_id)?,
        // Several selectors travel comma-separated in one query parameter.
        selectors: q
            .selector
            .map(|s| selectors(&s.split(',').map(str::to_owned).collect::<Vec<_>>()))
            .transpose()?
            .unwrap_or_default(),
    };
    let entries = state.store.list_entries(&filter).await?;
    Ok(Json(entries.iter().map(view).collect()))
}

async fn show_entry(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> AdminResult<EntryView> {
    let entry = state.store.get_entry(&id).await?;
    entry
        .map(|e| Json(view(&e)))
        .ok_or(AdminError::NotFound(format!("no entry `{id}`")))
}

async fn update_entry(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    Json(req): Json<EntryRequest>,
) -> AdminResult<EntryView> {
    let entry = new_entry(&state, req).await?;
    let updated = state.store.update_entry(&id, entry).await?;
    tracing::info!(entry_id = %updated.id, "entry updated");
    let action = format!("entry update {}", updated.id);
    state
        .audit
        .admin(caller.0, &action, Some(&updated.spiffe_id), None, None);
    wake_agents(&state).await;
    Ok(Json(view(&updated)))
}

async fn delete_entry(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> AdminResult<EntryView> {
    let entry = state.store.delete_entry(&id).await?;
    tracing::info!(entry_id = %id, "entry deleted");
    let action = format!("entry delete {}", entry.id);
    state
        .audit
        .admin(caller.0, &action, Some(&entry.spiffe_id), None, None);
    wake_agents(&state).await;
    Ok(Json(view(&entry)))
}

/// The agent SPIFFE ID that a join token's holder receives: derived from the token's
/// hash, so the token itself never appears in an ID, a log or the datastore.
pub fn join_token_agent_id(state: &State, token_hash: &[u8; 32]) -> Result<WorkloadId, AdminError> {
    let name = b64::encode(token_hash.get(..15).unwrap_or_default());
    WorkloadId::from_parts(
        "spiffe",
        &state.config.trust_domain,
        &format!("/wimse/agent/join_token/{name}"),
    )
    .map_err(|e| AdminError::Internal(e.to_string()))
}

async fn create_token(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<TokenRequest>,
) -> AdminResult<TokenResponse> {
    if req.ttl == 0 {
        return Err(AdminError::BadRequest("`ttl` must be positive".into()));
    }
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| AdminError::Internal("no randomness".into()))?;
    let token = b64::encode(secret);
    let expires_at = unix_now().saturating_add(i64::from(req.ttl));
    let record = JoinToken::new(&token, expires_at);
    state.store.create_join_token(&record).await?;
    let hash = JoinToken::hash(&token);
    let agent_id = join_token_agent_id(&state, &hash)?;
    tracing::info!(agent_id = %agent_id, expires_at, "join token generated");
    let credential = CredentialRef::from_token(CredentialKind::JoinToken, &token);
    state.audit.admin(
        caller.0,
        "join token generate",
        Some(&agent_id),
        None,
        Some(credential),
    );
    Ok(Json(TokenResponse {
        token,
        agent_id: agent_id.to_string(),
        expires_at,
    }))
}

#[derive(Deserialize)]
struct BundleQuery {
    format: Option<String>,
}

async fn show_bundle(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<BundleQuery>,
) -> Result<Response, AdminError> {
    let bundle = state.bundle();
    match q.format.as_deref().unwrap_or("pem") {
        "pem" => Ok((
            [("content-type", "application/x-pem-file")],
            bundle.x509_pem(),
        )
            .into_response()),
        "spiffe" => Ok((
            [("content-type", "application/json")],
            bundle.to_spiffe_json(),
        )
            .into_response()),
        other => Err(AdminError::BadRequest(format!(
            "unknown bundle format `{other}`, expected `pem` or `spiffe`"
        ))),
    }
}

async fn list_agents(AxState(state): AxState<Arc<State>>) -> AdminResult<Vec<AgentView>> {
    let agents = state.store.list_agents().await?;
    Ok(Json(
        agents
            .into_iter()
            .map(|a| AgentView {
                spiffe_id: a.spiffe_id.to_string(),
                attestation_type: a.attestation_type,
                serial: a.serial,
                expires_at: a.expires_at,
                banned: a.banned,
            })
            .collect(),
    ))
}

async fn agent_id(state: &State, req: &AgentRequest) -> Result<WorkloadId, AdminError> {
    let id = own_id(state, "spiffe_id", &req.spiffe_id)?;
    state
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no agent `{id}`")))?;
    Ok(id)
}

async fn ban_agent(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AgentRequest>,
) -> AdminResult<AgentRequest> {
    let id = agent_id(&state, &req).await?;
    state.store.set_agent_banned(&id, true).await?;
    tracing::info!(agent_id = %id, "agent banned");
    state
        .audit
        .admin(caller.0, "agent ban", Some(&id), None, None);
    Ok(Json(req))
}

async fn evict_agent(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AgentRequest>,
) -> AdminResult<AgentRequest> {
    let id = agent_id(&state, &req).await?;
    state.store.delete_agent(&id).await?;
    tracing::info!(agent_id = %id, "agent evicted");
    state
        .audit
        .admin(caller.0, "agent evict", Some(&id), None, None);
    Ok(Json(req))
}

/// Deletes the agents whose certificates expired at least `expired_for` seconds ago and
/// that are not banned (spire-server's `agent purge`): agents of hosts that are gone, which
/// would otherwise stay listed forever. Each is an admin record.
async fn purge_agents(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AgentPurgeRequest>,
) -> AdminResult<AgentPurgeResponse> {
    if req.expired_for < 0 {
        return Err(AdminError::BadRequest(
            "`expired_for` must not be negative".into(),
        ));
    }
    let expired_before = unix_now().saturating_sub(req.expired_for);
    let purged = if req.dry_run {
        let agents = state.store.list_agents().await?;
        agents
            .into_iter()
            .filter(|a| !a.banned && a.expires_at <= expired_before)
            .map(|a| a.spiffe_id)
            .collect()
    } else {
        let purged = state.store.purge_agents(expired_before).await?;
        for id in &purged {
            tracing::info!(agent_id = %id, "expired agent purged");
            state
                .audit
                .admin(caller.0, "agent purge", Some(id), None, None);
        }
        purged
    };
    Ok(Json(AgentPurgeResponse {
        purged: purged.iter().map(ToString::to_string).collect(),
    }))
}

/// The longest `txn` a revocation names (a Txn-Token's `txn` is an opaque string; ours are
/// 22 characters, and no token of a sane size carries one near this).
const MAX_TXN_BYTES: usize = 1024;

/// Revokes a transaction at the token service ([`crate::token_service`]): nothing more
/// is issued for it by any replica, until nothing issued before can be presented.
async fn revoke_transaction(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<TransactionRequest>,
) -> AdminResult<RevokedTransactionView> {
    let txn = req.txn.as_str();
    if txn.is_empty() || txn.len() > MAX_TXN_BYTES || txn.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(format!(
            "`txn` must be 1 to {MAX_TXN_BYTES} bytes without control characters"
        )));
    }
    let now = unix_now();
    let expires_at = now.saturating_add(crate::token_service::REVOCATION_KEPT);
    let first = state.store.revoke_transaction(txn, now, expires_at).await?;
    tracing::info!(txn, first, "transaction revoked");
    let context = SecurityContext {
        txn: Label::new(txn).ok(),
        ..SecurityContext::default()
    };
    state
        .audit
        .admin(caller.0, "transaction revoke", None, Some(context), None);
    state
        .store
        .list_revoked_transactions()
        .await?
        .into_iter()
        .find(|r| r.txn == txn)
        .map(|r| Json(revoked_view(r)))
        .ok_or_else(|| AdminError::Internal("the revocation was not kept".into()))
}

fn revoked_view(r: crate::datastore::RevokedTransaction) -> RevokedTransactionView {
    RevokedTransactionView {
        txn: r.txn,
        revoked_at: r.revoked_at,
        expires_at: r.expires_at,
    }
}

async fn list_revoked_transactions(
    AxState(state): AxState<Arc<State>>,
) -> AdminResult<Vec<RevokedTransactionView>> {
    let revoked = state.store.list_revoked_transactions().await?;
    Ok(Json(revoked.into_iter().map(revoked_view).collect()))
}

impl From<StateError> for AdminError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Authority(AuthorityError::Refused(message)) => {
                AdminError::Conflict(message)
            }
            StateError::Store(e) => e.into(),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

/// The kind of authority a request names.
fn authority_kind(name: &str) -> Result<AuthorityKind, AdminError> {
    AuthorityKind::from_stored(name).ok_or_else(|| {
        AdminError::BadRequest(format!(
            "unknown authority kind `{name}`, expected `x509`, `jwt` or `wit`"
        ))
    })
}

/// Every replica's authorities, from the datastore (what the bundle is built from).
async fn list_authorities(AxState(state): AxState<Arc<State>>) -> AdminResult<Vec<AuthorityView>> {
    let records = state.store.list_authorities(unix_now()).await?;
    let mut views: Vec<AuthorityView> = records
        .into_iter()
        .map(|a| AuthorityView {
            kind: a.kind.as_str().into(),
            this_server: a.server_id == state.server_id,
            id: a.id,
            state: a.state.as_str().into(),
            server_id: a.server_id,
            published_at: a.created_at,
            not_after: a.not_after,
        })
        .collect();
    views.sort_by(|a, b| (&a.kind, a.published_at, &a.id).cmp(&(&b.kind, b.published_at, &b.id)));
    Ok(Json(views))
}

fn slot_view(state: &State, slot: &Slot) -> AuthorityView {
    AuthorityView {
        kind: slot.kind.as_str().into(),
        id: slot.id.clone(),
        state: slot.state.as_str().into(),
        server_id: state.server_id.clone(),
        this_server: true,
        published_at: slot.not_before,
        not_after: slot.not_after,
    }
}

/// Prepares this replica's next key of a kind ahead of schedule.
async fn prepare_authority(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AuthorityRequest>,
) -> AdminResult<AuthorityView> {
    let kind = authority_kind(&req.kind)?;
    let (slot, new) = state.prepare_authority(kind).await?;
    if new {
        let action = format!("authority prepare {} {}", kind.as_str(), slot.id);
        state.audit.admin(caller.0, &action, None, None, None);
    }
    Ok(Json(slot_view(&state, &slot)))
}

/// The key a taint or revoke request names.
fn named_key(req: &AuthorityRequest) -> Result<(AuthorityKind, &str), AdminError> {
    let kind = authority_kind(&req.kind)?;
    let id = req
        .id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| AdminError::BadRequest("`id` (the authority's ID) is missing".into()))?;
    Ok((kind, id))
}

/// Marks this replica's retired key as compromised: agents replace what it signed.
async fn taint_authority(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AuthorityRequest>,
) -> AdminResult<AuthorityView> {
    let (kind, id) = named_key(&req)?;
    let (slot, new) = state.taint_authority(kind, id).await?;
    if new {
        let action = format!("authority taint {} {}", kind.as_str(), slot.id);
        state.audit.admin(caller.0, &action, None, None, None);
    }
    Ok(Json(slot_view(&state, &slot)))
}

/// Removes this replica's tainted key from the bundle for good.
async fn revoke_authority(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AuthorityRequest>,
) -> AdminResult<AuthorityView> {
    let (kind, id) = named_key(&req)?;
    let slot = state.revoke_authority(kind, id).await?;
    let action = format!("authority revoke {} {}", kind.as_str(), slot.id);
    state.audit.admin(caller.0, &action, None, None, None);
    Ok(Json(slot_view(&state, &slot)))
}

/// Makes this replica's prepared key of a kind sign from now on.
async fn activate_authority(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<AuthorityRequest>,
) -> AdminResult<AuthorityView> {
    let kind = authority_kind(&req.kind)?;
    let slot = state.activate_authority(kind, req.force).await?;
    let forced = if req.force { " forced" } else { "" };
    let action = format!("authority activate {} {}{forced}", kind.as_str(), slot.id);
    state.audit.admin(caller.0, &action, None, None, None);
    Ok(Json(slot_view(&state, &slot)))
}

/// A minted token, and its reference for the audit record.
fn minted_token(kind: CredentialKind, token: String) -> (MintResponse, Option<CredentialRef>) {
    let credential = CredentialRef::from_token(kind, &token);
    let response = MintResponse {
        svid_chain: Vec::new(),
        token: Some(token),
    };
    (response, Some(credential))
}

/// The longest lifetime an operator may mint a credential for (the signing key's end of
/// life cuts it anyway).
const MAX_MINT_TTL: u32 = 30 * 24 * 3600;

/// Mints an X509-SVID, JWT-SVID or WIT for an identity of this trust domain that no agent
/// serves (as `spire-server x509|jwt mint`): for bootstrapping and for tests. Identities
/// under `/wimse/` (the server's and its agents') are refused.
async fn mint(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(kind): Path<String>,
    Json(req): Json<MintRequest>,
) -> AdminResult<MintResponse> {
    let id = own_id(&state, "spiffe_id", &req.spiffe_id)?;
    if id.path().is_empty() {
        return Err(AdminError::BadRequest(format!(
            "`{id}` names the trust domain itself, not a workload"
        )));
    }
    if id.path() == "/wimse" || id.path().starts_with("/wimse/") {
        return Err(AdminError::BadRequest(format!(
            "`{id}` is reserved: IDs under /wimse/ are the server's and its agents'"
        )));
    }
    let ttl = req.ttl.unwrap_or(if kind == "x509" { 3600 } else { 300 });
    if !(1..=MAX_MINT_TTL).contains(&ttl) {
        return Err(AdminError::BadRequest(format!(
            "`ttl` must be 1 to {MAX_MINT_TTL} seconds"
        )));
    }
    let now = unix_now();
    let issued = {
        let authorities = state
            .authorities
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let issuer = crate::issuer::Issuer::new(&authorities, state.config.wit_profile);
        // Each arm answers the credential and its reference for the audit record.
        match kind.as_str() {
            "x509" => {
                let csr = req
                    .csr
                    .as_deref()
                    .ok_or_else(|| AdminError::BadRequest("`csr` is missing".into()))
                    .and_then(|text| {
                        b64::decode(text)
                            .map_err(|_| AdminError::BadRequest("`csr` is not base64url".into()))
                    })?;
                issuer
                    .x509(&id, &req.dns_names, &csr, ttl, now)
                    .map(|chain| {
                        let leaf = chain
                            .first()
                            .map(|c| CredentialRef::from_certificate_der(c.der()));
                        let svid_chain = chain.iter().map(|c| b64::encode(c.der())).collect();
                        (
                            MintResponse {
                                svid_chain,
                                token: None,
                            },
                            leaf,
                        )
                    })
            }
            "jwt" => issuer
                .jwt_svid_for(&id, ttl, &req.audience, now)
                .map(|token| minted_token(CredentialKind::JwtSvid, token)),
            "wit" => {
                let jwk = req
                    .jwk
                    .as_ref()
                    .ok_or_else(|| AdminError::BadRequest("`jwk` is missing".into()))?;
                issuer
                    .wit_for(&id, ttl, jwk, now)
                    .map(|token| minted_token(CredentialKind::Wit, token))
            }
            other => {
                return Err(AdminError::NotFound(format!(
                    "unknown credential kind `{other}`, expected `x509`, `jwt` or `wit`"
                )));
            }
        }
    };
    let (minted, credential) = issued.map_err(|e| match e {
        IssueError::Csr(_) | IssueError::Key(_) | IssueError::Request(_) => {
            AdminError::BadRequest(e.to_string())
        }
        IssueError::NoAuthority(_) | IssueError::Signing(_) => AdminError::Internal(e.to_string()),
    })?;
    tracing::info!(kind, spiffe_id = %id, ttl, "credential minted by an operator");
    state.audit.admin(
        caller.0,
        &format!("mint {kind}"),
        Some(&id),
        None,
        credential,
    );
    Ok(Json(minted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_uid_is_kept_only_when_the_kernel_set_one() {
        assert_eq!(parse_login_uid("1000"), Some(1000));
        assert_eq!(parse_login_uid("0\n"), Some(0));
        for unset in ["4294967295", "-1", "", "x"] {
            assert_eq!(parse_login_uid(unset), None, "{unset:?}");
        }
    }

    #[tokio::test]
    async fn the_caller_is_the_process_on_the_other_end_of_the_socket() {
        use std::os::unix::fs::MetadataExt as _;
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let operator = operator_of(&ours).unwrap();
        assert_eq!(operator.pid, std::process::id());
        assert_eq!(operator.uid, std::fs::metadata("/proc/self").unwrap().uid());
        assert_eq!(operator.login_uid, login_uid(std::process::id()));
    }
}
