//! The agent API on the public TLS listener: node attestation with a join token, then,
//! over mutual TLS with the agent's X509-SVID, certificate renewal, incremental entry sync
//! (long-poll) and issuance of X.509 certificates, WITs and JWT-SVIDs for the entries
//! that descend from the agent.
//!
//! Who calls is decided by the TLS handshake alone ([`Caller`], verified against the
//! current bundle by [`crate::tls`]); every call but attestation then checks that the
//! caller is an attested agent that is neither banned nor evicted, and issuance checks
//! that the entry is the agent's (its parent is the agent, or an entry that is). The
//! messages are JSON; [`client`] is the agent's side.

use crate::api::{EntryView, Problem};
use crate::datastore::{
    AttestedAgent, Datastore, EntryChangeKind, EntryFilter, JoinToken, RegistrationEntry,
    StoreError,
};
use crate::issuer::{IssueError, Issuer};
use crate::state::State;
use crate::tls::Caller;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use wimse_core::WorkloadId;
use wimse_core::jose::{Jwk, b64};
use wimse_core::token::unix_now;
use wimse_core::x509::{self, Certificate};

pub mod client;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Lifetime of an agent's own X509-SVID, in seconds.
pub const AGENT_SVID_TTL: u32 = 3600;

/// The longest an entry sync waits for a change, in seconds.
pub const MAX_WAIT: u64 = 30;

/// The most changes in one sync answer, so that no message grows with the number of entries.
pub const PAGE: usize = 1000;

/// How deep entries may nest below an agent before the search for the agent gives up.
const MAX_DEPTH: usize = 32;

/// `POST /agent/v1/attest`.
#[derive(Clone, Serialize, Deserialize)]
pub struct AttestRequest {
    /// The one-time join token.
    pub join_token: String,
    /// A PKCS#10 CSR for the agent's key, DER, base64url.
    pub csr: String,
}

impl std::fmt::Debug for AttestRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestRequest").finish_non_exhaustive()
    }
}

/// The answer to attestation and renewal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestResponse {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// Its certificate chain, leaf first, DER, base64url.
    pub svid_chain: Vec<String>,
    /// The trust bundle, SPIFFE bundle JSON.
    pub bundle: String,
}

/// `POST /agent/v1/renew`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A CSR for the agent's (new) key, DER, base64url.
    pub csr: String,
}

/// `GET /agent/v1/entries` query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EntriesQuery {
    /// The revision the agent has seen (0: everything).
    #[serde(default)]
    pub since: i64,
    /// How long to wait for a change, in seconds (at most [`MAX_WAIT`]).
    #[serde(default)]
    pub wait: u64,
}

/// One change in an entry sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncChange {
    /// An entry the agent serves, in its latest state.
    Entry(EntryView),
    /// An entry ID the agent must forget (deleted, or no longer under this agent); an ID
    /// the agent does not know is ignored.
    Deleted(String),
}

/// The answer to an entry sync.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntriesResponse {
    /// The revision the agent is now up to date with; pass it as `since` next time.
    pub revision: i64,
    /// The changes after `since`.
    pub changes: Vec<SyncChange>,
    /// Whether more changes follow at once (the page was full).
    pub more: bool,
}

/// `POST /agent/v1/svid/x509`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct X509Request {
    /// The entry.
    pub entry_id: String,
    /// A CSR for the workload's key, DER, base64url.
    pub csr: String,
}

/// The answer to an X.509 request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct X509Response {
    /// The chain, leaf first, DER, base64url.
    pub svid_chain: Vec<String>,
}

/// `POST /agent/v1/svid/wit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitRequest {
    /// The entry.
    pub entry_id: String,
    /// The workload's public key, with `alg`.
    pub jwk: Jwk,
}

/// The answer to a WIT request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitResponse {
    /// The WIT.
    pub wit: String,
}

/// `POST /agent/v1/svid/jwt`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JwtRequest {
    /// The entry.
    pub entry_id: String,
    /// The audience, at least one.
    pub audience: Vec<String>,
}

/// The answer to a JWT-SVID request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JwtResponse {
    /// The JWT-SVID.
    pub jwt_svid: String,
}

/// An agent API failure, answered as RFC 9457 problem details. Messages never contain a
/// token or a key.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this (no agent certificate, banned or evicted agent, used or
    /// expired join token, an entry that is not the agent's).
    #[error("{0}")]
    Forbidden(String),
    /// The body is not acceptable JSON (too large, wrong content type, malformed).
    #[error("{detail}")]
    Body {
        /// The HTTP status (413, 415, 400 or 422).
        status: StatusCode,
        /// What was wrong.
        detail: String,
    },
    /// The server failed.
    #[error("{0}")]
    Internal(String),
}

/// A JSON body whose rejection is answered as problem details too.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AgentApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(AgentApiError::Body {
                status: rejection.status(),
                detail: rejection.body_text(),
            }),
        }
    }
}

impl From<StoreError> for AgentApiError {
    fn from(e: StoreError) -> Self {
        AgentApiError::Internal(e.to_string())
    }
}

impl From<IssueError> for AgentApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Csr(_) | IssueError::Key(_) | IssueError::Request(_) => {
                AgentApiError::BadRequest(e.to_string())
            }
            IssueError::NoAuthority(_) | IssueError::Signing(_) => {
                AgentApiError::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for AgentApiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            AgentApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid request"),
            AgentApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AgentApiError::Body { status, .. } => (*status, "invalid request body"),
            AgentApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server error"),
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

type ApiResult<T> = Result<Json<T>, AgentApiError>;

/// The agent API's routes (merged into the public router).
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/agent/v1/attest", post(attest))
        .route("/agent/v1/renew", post(renew))
        .route("/agent/v1/entries", get(entries))
        .route("/agent/v1/svid/x509", post(svid_x509))
        .route("/agent/v1/svid/wit", post(svid_wit))
        .route("/agent/v1/svid/jwt", post(svid_jwt))
        .route("/agent/v1/bundle", get(bundle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn decode_csr(text: &str) -> Result<Vec<u8>, AgentApiError> {
    let der = b64::decode(text)
        .map_err(|_| AgentApiError::BadRequest("`csr` is not base64url".into()))?;
    // Checked before anything is consumed or stored.
    x509::parse_csr(&der).map_err(|e| {
        AgentApiError::BadRequest(format!("invalid certificate signing request: {e}"))
    })?;
    Ok(der)
}

fn encode_chain(chain: &[Certificate]) -> Vec<String> {
    chain.iter().map(|c| b64::encode(c.der())).collect()
}

/// Issues with this replica's authorities (the lock is held only while signing).
fn with_issuer<T>(
    state: &State,
    kind: &str,
    issue: impl FnOnce(&Issuer<'_>) -> Result<T, IssueError>,
) -> Result<T, AgentApiError> {
    let started = Instant::now();
    let result = {
        let authorities = state
            .authorities
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        issue(&Issuer::new(&authorities, state.config.wit_profile))
    };
    state
        .metrics
        .observe_issue(kind, started.elapsed().as_secs_f64(), result.is_ok());
    Ok(result?)
}

/// The attested, non-banned agent behind the connection.
async fn agent(state: &State, caller: &Caller) -> Result<AttestedAgent, AgentApiError> {
    let id = caller.id.as_ref().ok_or_else(|| {
        AgentApiError::Forbidden("a client certificate of an attested agent is required".into())
    })?;
    let agent = state
        .store
        .get_agent(id)
        .await?
        .ok_or_else(|| AgentApiError::Forbidden(format!("`{id}` is not an attested agent")))?;
    if agent.banned {
        return Err(AgentApiError::Forbidden(format!("agent `{id}` is banned")));
    }
    // Only the agent's latest certificate counts (as SPIRE checks the serial): one it
    // replaced by renewing, or any other SVID that happens to carry the agent's ID (a
    // workload's), is refused.
    if caller.serial.as_deref() != Some(agent.serial.as_str()) {
        return Err(AgentApiError::Forbidden(format!(
            "the client certificate is not agent `{id}`'s current one"
        )));
    }
    Ok(agent)
}

/// Whether `entry` descends from `agent`: its parent is the agent, or the SPIFFE ID of an
/// entry that descends from it.
async fn descends_from(
    state: &State,
    entry: &RegistrationEntry,
    agent: &WorkloadId,
) -> Result<bool, AgentApiError> {
    let mut frontier = vec![entry.parent_id.clone()];
    let mut seen = HashSet::new();
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for parent in frontier {
            if parent == *agent {
                return Ok(true);
            }
            if !seen.insert(parent.clone()) {
                continue;
            }
            let filter = EntryFilter {
                spiffe_id: Some(parent),
                ..EntryFilter::default()
            };
            next.extend(
                state
                    .store
                    .list_entries(&filter)
                    .await?
                    .into_iter()
                    .map(|e| e.parent_id),
            );
        }
        if next.is_empty() {
            return Ok(false);
        }
        frontier = next;
    }
    Ok(false)
}

/// The entry `entry_id` if it is `agent`'s; 403 otherwise (whether or not it exists, so
/// that agents cannot probe for other agents' entries).
async fn own_entry(
    state: &State,
    agent: &AttestedAgent,
    entry_id: &str,
) -> Result<RegistrationEntry, AgentApiError> {
    let refused = || AgentApiError::Forbidden(format!("entry `{entry_id}` is not this agent's"));
    let entry = state.store.get_entry(entry_id).await?.ok_or_else(refused)?;
    if descends_from(state, &entry, &agent.spiffe_id).await? {
        Ok(entry)
    } else {
        Err(refused())
    }
}

/// The IDs of every entry that descends from `agent`.
async fn visible_entries(
    state: &State,
    agent: &WorkloadId,
) -> Result<HashSet<String>, AgentApiError> {
    let all = state.store.list_entries(&EntryFilter::default()).await?;
    let mut children: HashMap<&WorkloadId, Vec<&RegistrationEntry>> = HashMap::new();
    for entry in &all {
        children.entry(&entry.parent_id).or_default().push(entry);
    }
    let mut visible = HashSet::new();
    let mut parents = HashSet::from([agent]);
    let mut frontier = vec![agent];
    while let Some(parent) = frontier.pop() {
        for entry in children.get(parent).into_iter().flatten() {
            visible.insert(entry.id.clone());
            if parents.insert(&entry.spiffe_id) {
                frontier.push(&entry.spiffe_id);
            }
        }
    }
    Ok(visible)
}

async fn attest(
    AxState(state): AxState<Arc<State>>,
    Body(req): Body<AttestRequest>,
) -> ApiResult<AttestResponse> {
    let csr = decode_csr(&req.csr)?;
    let now = unix_now();
    let hash = JoinToken::hash(&req.join_token);
    state
        .store
        .consume_join_token(&hash, now)
        .await
        .map_err(|e| match e {
            StoreError::TokenNotFound => {
                AgentApiError::Forbidden("join token not found or already used".into())
            }
            StoreError::TokenExpired => AgentApiError::Forbidden("join token has expired".into()),
            other => other.into(),
        })?;
    let id = crate::admin::join_token_agent_id(&state, &hash)
        .map_err(|e| AgentApiError::Internal(e.to_string()))?;
    if state
        .store
        .get_agent(&id)
        .await?
        .is_some_and(|agent| agent.banned)
    {
        return Err(AgentApiError::Forbidden(format!("agent `{id}` is banned")));
    }
    let chain = with_issuer(&state, "agent", |issuer| {
        issuer.x509(&id, &[], &csr, AGENT_SVID_TTL, now)
    })?;
    store_agent(&state, &id, "join_token", &chain, now).await?;
    tracing::info!(agent_id = %id, "agent attested with a join token");
    Ok(Json(AttestResponse {
        spiffe_id: id.to_string(),
        svid_chain: encode_chain(&chain),
        bundle: state.bundle().to_spiffe_json(),
    }))
}

async fn store_agent(
    state: &State,
    id: &WorkloadId,
    attestation_type: &str,
    chain: &[Certificate],
    now: i64,
) -> Result<(), AgentApiError> {
    let leaf = chain
        .first()
        .ok_or_else(|| AgentApiError::Internal("empty certificate chain".into()))?;
    state
        .store
        .upsert_agent(&AttestedAgent {
            spiffe_id: id.clone(),
            attestation_type: attestation_type.to_owned(),
            serial: leaf.serial_hex(),
            expires_at: leaf.not_after(),
            banned: false,
            selectors: Vec::new(),
            last_seen: now,
        })
        .await?;
    Ok(())
}

async fn renew(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<RenewRequest>,
) -> ApiResult<AttestResponse> {
    let agent = agent(&state, &caller).await?;
    let csr = decode_csr(&req.csr)?;
    let now = unix_now();
    let chain = with_issuer(&state, "agent", |issuer| {
        issuer.x509(&agent.spiffe_id, &[], &csr, AGENT_SVID_TTL, now)
    })?;
    store_agent(
        &state,
        &agent.spiffe_id,
        &agent.attestation_type,
        &chain,
        now,
    )
    .await?;
    tracing::info!(agent_id = %agent.spiffe_id, "agent certificate renewed");
    Ok(Json(AttestResponse {
        spiffe_id: agent.spiffe_id.to_string(),
        svid_chain: encode_chain(&chain),
        bundle: state.bundle().to_spiffe_json(),
    }))
}

async fn entries(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<EntriesQuery>,
) -> ApiResult<EntriesResponse> {
    let agent = agent(&state, &caller).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait.min(MAX_WAIT));
    let mut since = query.since.max(0);
    let mut revisions = state.revision.subscribe();
    loop {
        // Subscribed before reading, so a change committed after the read wakes us.
        revisions.borrow_and_update();
        let (changes, current) = state.store.entry_changes_since(since, PAGE).await?;
        let more = changes.len() >= PAGE;
        let next = if more {
            changes.last().map_or(current, |c| c.revision)
        } else {
            current
        };
        if !changes.is_empty() {
            let visible = visible_entries(&state, &agent.spiffe_id).await?;
            let first_sync = since == 0;
            let out: Vec<SyncChange> = changes
                .into_iter()
                .filter_map(|change| match change.kind {
                    EntryChangeKind::Upsert(entry) if visible.contains(&entry.id) => {
                        Some(SyncChange::Entry(crate::admin::view(&entry)))
                    }
                    // A first sync has nothing to forget.
                    _ if first_sync => None,
                    // Deleted, or not (or no longer) under this agent: forget it.
                    _ => Some(SyncChange::Deleted(change.entry_id)),
                })
                .collect();
            if !out.is_empty() || more {
                return Ok(Json(EntriesResponse {
                    revision: next,
                    changes: out,
                    more,
                }));
            }
        }
        since = since.max(next);
        // Nothing yet: wait for the revision to move, or give up at the deadline.
        match tokio::time::timeout_at(deadline, revisions.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                return Ok(Json(EntriesResponse {
                    revision: since,
                    changes: Vec::new(),
                    more: false,
                }));
            }
        }
    }
}

async fn svid_x509(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<X509Request>,
) -> ApiResult<X509Response> {
    let agent = agent(&state, &caller).await?;
    let entry = own_entry(&state, &agent, &req.entry_id).await?;
    let csr = decode_csr(&req.csr)?;
    let chain = with_issuer(&state, "x509", |issuer| {
        issuer.x509_for_entry(&entry, &csr, unix_now())
    })?;
    Ok(Json(X509Response {
        svid_chain: encode_chain(&chain),
    }))
}

async fn svid_wit(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<WitRequest>,
) -> ApiResult<WitResponse> {
    let agent = agent(&state, &caller).await?;
    let entry = own_entry(&state, &agent, &req.entry_id).await?;
    let wit = with_issuer(&state, "wit", |issuer| {
        issuer.wit(&entry, &req.jwk, unix_now())
    })?;
    Ok(Json(WitResponse { wit }))
}

async fn svid_jwt(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<JwtRequest>,
) -> ApiResult<JwtResponse> {
    let agent = agent(&state, &caller).await?;
    let entry = own_entry(&state, &agent, &req.entry_id).await?;
    let jwt_svid = with_issuer(&state, "jwt", |issuer| {
        issuer.jwt_svid(&entry, &req.audience, unix_now())
    })?;
    Ok(Json(JwtResponse { jwt_svid }))
}

async fn bundle(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, AgentApiError> {
    agent(&state, &caller).await?;
    Ok((
        [("content-type", "application/json")],
        state.bundle().to_spiffe_json(),
    )
        .into_response())
}
