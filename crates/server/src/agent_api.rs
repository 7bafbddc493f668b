//! The agent API on the public TLS listener: node attestation (a join token, or x509pop:
//! see [`crate::x509pop`]), then, over mutual TLS with the agent's X509-SVID, certificate
//! renewal, incremental entry sync (long-poll) and issuance of X.509 certificates, WITs and
//! JWT-SVIDs for the entries that descend from the agent.
//!
//! `GET /agent/v1/bundle` answers the trust domain's own bundle, and
//! `GET /agent/v1/federated-bundles` the foreign bundles this server holds, as a SPIFFE bundle
//! map (`{"trust_domains": {...}}`); an agent gives each workload only the foreign bundles
//! its entries federate with.
//!
//! Who calls is decided by the TLS handshake alone ([`Caller`], verified against the
//! current bundle by [`crate::tls`]); every call but attestation then checks that the
//! caller is an attested agent that is neither banned nor evicted, and issuance checks
//! that the entry is the agent's (its parent is the agent, or an entry that is). The
//! messages are JSON; [`client`] is the agent's side.
//!
//! # Entry sync
//!
//! `GET /agent/v1/entries?since=S&wait=W[&until=U]` answers [`EntriesResponse`]. An agent
//! keeps one number, the `revision` of the last answer, and follows these rules:
//!
//! - **Full sync.** `since=0` (a new agent) starts one: the answer lists the agent's live
//!   entries (never a deletion), at most [`PAGE`] of them. While `more` is true the agent
//!   asks again with `since=revision&until=<until of the answer>`; those pages are full-sync
//!   pages too. When `more` is false the set is complete as of `revision`. Full-sync pages
//!   are read through the `parent_id` index from the agent down, so their cost follows the
//!   agent's own entries, not the store's.
//! - **Incremental.** Any other `since` without `until`: the changes after `since`, each
//!   entry once: [`SyncChange::Entry`] for one the agent serves, [`SyncChange::Deleted`]
//!   for one it must forget (deleted, or no longer under this agent; unknown IDs are to be
//!   ignored). With `wait` the answer is held until there is a change (long-poll), the wait
//!   is over, or the server stops (then it says nothing changed). Whether a
//!   changed entry is the agent's is decided by walking up from that entry alone, so an
//!   incremental answer costs what its changes do.
//! - **Resync.** Deletions are remembered for `tombstone_retention` (config, default one
//!   day). An incremental request whose `since` is older than the oldest remembered
//!   deletion is answered as the first page of a full sync with `resync: true`: the agent
//!   must then drop every entry it holds that this full sync (this page and its `until`
//!   continuation pages) does not list.
use crate::api::{EntryView, Problem};
use crate::datastore::{
    AttestedAgent, Datastore, EntryChangeKind, EntryFilter, JoinToken, RegistrationEntry,
    StoreError, X509PopChallenge,
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
use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wimse_core::WorkloadId;
use wimse_core::jose::{Jwk, b64};
use wimse_core::token::unix_now;
use wimse_core::x509::{self, Certificate};

pub mod client;

use crate::audit::Event;
use wimse_audit::{AuthMethod, CredentialKind, CredentialRef, EventKind};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest an entry sync waits for a change, in seconds.
pub const MAX_WAIT: u64 = 30;

/// The most changes in one sync answer, so that no message grows with the number of entries.
pub const PAGE: usize = 1000;

/// How deep entries may nest below an agent before the search for the agent gives up.
const MAX_DEPTH: usize = 32;

/// `POST /agent/v1/attest`: exactly one of `join_token` and `x509pop`, and a CSR.
#[derive(Clone, Serialize, Deserialize)]
pub struct AttestRequest {
    /// The one-time join token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// x509pop evidence: the certificate chain and the answer to a challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509pop: Option<X509PopEvidence>,
    /// A PKCS#10 CSR for the agent's key, DER, base64url.
    pub csr: String,
}

impl std::fmt::Debug for AttestRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestRequest").finish_non_exhaustive()
    }
}

/// The x509pop form of attestation (see [`crate::x509pop`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct X509PopEvidence {
    /// The agent's certificate chain, leaf first, DER, base64url.
    pub chain: Vec<String>,
    /// The challenge's nonce, as the server answered it.
    pub challenge: String,
    /// The leaf key's signature over [`crate::x509pop::signed_message`] of the nonce and
    /// the request's CSR, base64url (ECDSA in the fixed-length JWS form, or Ed25519).
    pub signature: String,
}

/// `POST /agent/v1/attest/x509pop/challenge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct X509PopChallengeRequest {
    /// The agent's certificate chain, leaf first, DER, base64url.
    pub chain: Vec<String>,
}

/// The answer to a challenge request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct X509PopChallengeResponse {
    /// A one-time nonce, base64url.
    pub challenge: String,
    /// When it stops being accepted, in seconds since the Unix epoch.
    pub expires_at: i64,
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
    /// Set while continuing a full sync: the `until` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
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
    /// During a full sync with more pages to come: pass it as `until` with the next request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// This is the first page of a forced full sync: drop every entry this full sync does
    /// not list (see the [module docs](self)).
    #[serde(default)]
    pub resync: bool,
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

/// The server's stop signal, as the entry sync's long-polls see it: a held sync answers
/// at once when the server stops, rather than keeping the listener's drain waiting.
#[derive(Clone)]
struct Stopping(watch::Receiver<bool>);

/// The agent API's routes (merged into the public router); `stop` is the server's stop
/// signal, which ends held entry syncs.
pub fn router(state: Arc<State>, stop: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/agent/v1/attest", post(attest))
        .route(
            "/agent/v1/attest/x509pop/challenge",
            post(x509pop_challenge),
        )
        .route("/agent/v1/renew", post(renew))
        .route("/agent/v1/entries", get(entries))
        .route("/agent/v1/svid/x509", post(svid_x509))
        .route("/agent/v1/svid/wit", post(svid_wit))
        .route("/agent/v1/svid/jwt", post(svid_jwt))
        .route("/agent/v1/bundle", get(bundle))
        .route("/agent/v1/tainted", get(tainted))
        .route("/agent/v1/federated-bundles", get(federated_bundles))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(Extension(Stopping(stop)))
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

async fn attest(
    AxState(state): AxState<Arc<State>>,
    Body(req): Body<AttestRequest>,
) -> ApiResult<AttestResponse> {
    let (method, presented) = match (&req.join_token, &req.x509pop) {
        (Some(token), None) => (
            AuthMethod::JoinToken,
            Some(CredentialRef::from_join_token(token)),
        ),
        (None, Some(evidence)) => (
            AuthMethod::X509pop,
            evidence
                .chain
                .first()
                .and_then(|leaf| b64::decode(leaf).ok())
                .map(|der| CredentialRef::from_certificate_der(&der)),
        ),
        _ => (AuthMethod::None, None),
    };
    let mut agent_id = None;
    let outcome = attest_node(&state, &req, &mut agent_id).await;
    state.audit.record(Event {
        kind: EventKind::AgentAttested,
        method,
        agent: agent_id.as_ref(),
        workload: None,
        credential: match &outcome {
            Ok(answer) => answer
                .svid_chain
                .first()
                .and_then(|leaf| b64::decode(leaf).ok())
                .map(|der| CredentialRef::from_certificate_der(&der)),
            Err(_) => presented,
        },
        refusal: outcome.as_ref().err().map(ToString::to_string),
        context: None,
        delegation: None,
    });
    Ok(Json(outcome?))
}

/// Node attestation; `agent_id` is set as soon as the agent is known.
async fn attest_node(
    state: &State,
    req: &AttestRequest,
    agent_id: &mut Option<WorkloadId>,
) -> Result<AttestResponse, AgentApiError> {
    let csr = decode_csr(&req.csr)?;
    let now = unix_now();
    let (id, attestation_type) = match (&req.join_token, &req.x509pop) {
        (Some(token), None) => (attest_join_token(state, token, now).await?, "join_token"),
        (None, Some(evidence)) => (
            attest_x509pop(state, evidence, &csr, now).await?,
            crate::x509pop::ATTESTATION_TYPE,
        ),
        _ => {
            return Err(AgentApiError::BadRequest(
                "exactly one of `join_token` and `x509pop` is required".into(),
            ));
        }
    };
    *agent_id = Some(id.clone());
    if state
        .store
        .get_agent(&id)
        .await?
        .is_some_and(|agent| agent.banned)
    {
        return Err(AgentApiError::Forbidden(format!("agent `{id}` is banned")));
    }
    let ttl = state.config.agent_svid_ttl;
    let chain = with_issuer(state, "agent", |issuer| {
        issuer.x509(&id, &[], &csr, ttl, now)
    })?;
    store_agent(state, &id, attestation_type, &chain, now).await?;
    tracing::info!(agent_id = %id, attestation_type, "agent attested");
    Ok(AttestResponse {
        spiffe_id: id.to_string(),
        svid_chain: encode_chain(&chain),
        bundle: state.bundle().to_spiffe_json(),
    })
}

/// Uses up a join token; the agent ID it yields.
async fn attest_join_token(
    state: &State,
    token: &str,
    now: i64,
) -> Result<WorkloadId, AgentApiError> {
    let hash = JoinToken::hash(token);
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
    crate::admin::join_token_agent_id(state, &hash)
        .map_err(|e| AgentApiError::Internal(e.to_string()))
}

/// The configured x509pop CA, or a refusal saying that x509pop is not enabled.
fn x509pop_ca(state: &State) -> Result<&crate::x509pop::X509PopCa, AgentApiError> {
    state.x509pop_ca.as_ref().ok_or_else(|| {
        AgentApiError::Forbidden(
            "x509pop attestation is not enabled on this server (no `x509pop_ca_bundle` is configured)"
                .into(),
        )
    })
}

/// Decodes a base64url DER chain and verifies it against the x509pop CA; the chain and the
/// leaf's fingerprint.
fn x509pop_chain(
    state: &State,
    chain: &[String],
    now: i64,
) -> Result<(Vec<Vec<u8>>, String), AgentApiError> {
    let ca = x509pop_ca(state)?;
    let chain = chain
        .iter()
        .map(|text| {
            b64::decode(text)
                .map_err(|_| AgentApiError::BadRequest("x509pop `chain` is not base64url".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fingerprint = ca.verify_chain(&chain, now).map_err(|e| match e {
        crate::x509pop::X509PopError::Untrusted(_) => AgentApiError::Forbidden(e.to_string()),
        other => AgentApiError::BadRequest(other.to_string()),
    })?;
    Ok((chain, fingerprint))
}

async fn x509pop_challenge(
    AxState(state): AxState<Arc<State>>,
    Body(req): Body<X509PopChallengeRequest>,
) -> ApiResult<X509PopChallengeResponse> {
    let now = unix_now();
    let (_, fingerprint) = x509pop_chain(&state, &req.chain, now)?;
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| AgentApiError::Internal("the system random generator failed".into()))?;
    let expires_at = now.saturating_add(crate::x509pop::CHALLENGE_TTL);
    state
        .store
        .create_x509pop_challenge(&X509PopChallenge {
            nonce_hash: wimse_core::digest::sha256(&nonce),
            fingerprint,
            expires_at,
        })
        .await?;
    Ok(Json(X509PopChallengeResponse {
        challenge: b64::encode(nonce),
        expires_at,
    }))
}

/// Checks x509pop evidence: the chain, the challenge (consumed), the signature over it and
/// the CSR. The agent ID it yields.
async fn attest_x509pop(
    state: &State,
    evidence: &X509PopEvidence,
    csr: &[u8],
    now: i64,
) -> Result<WorkloadId, AgentApiError> {
    let (chain, fingerprint) = x509pop_chain(state, &evidence.chain, now)?;
    let nonce = b64::decode(&evidence.challenge)
        .map_err(|_| AgentApiError::BadRequest("x509pop `challenge` is not base64url".into()))?;
    let signature = b64::decode(&evidence.signature)
        .map_err(|_| AgentApiError::BadRequest("x509pop `signature` is not base64url".into()))?;
    // Consumed first: a wrong answer uses the challenge up too (no retries against one).
    let issued_to = state
        .store
        .consume_x509pop_challenge(&wimse_core::digest::sha256(&nonce), now)
        .await
        .map_err(|e| match e {
            StoreError::ChallengeNotFound => {
                AgentApiError::Forbidden("x509pop challenge not found or already used".into())
            }
            StoreError::ChallengeExpired => {
                AgentApiError::Forbidden("x509pop challenge has expired".into())
            }
            other => other.into(),
        })?;
    if issued_to != fingerprint {
        return Err(AgentApiError::Forbidden(
            "x509pop challenge was issued to another certificate".into(),
        ));
    }
    let leaf = chain
        .first()
        .ok_or_else(|| AgentApiError::BadRequest("x509pop `chain` is empty".into()))?;
    crate::x509pop::verify_signature(
        leaf,
        &crate::x509pop::signed_message(&nonce, csr),
        &signature,
    )
    .map_err(|e| AgentApiError::Forbidden(e.to_string()))?;
    crate::x509pop::agent_id(&state.config.trust_domain, &fingerprint)
        .map_err(|e| AgentApiError::Internal(e.to_string()))
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
    let ttl = state.config.agent_svid_ttl;
    let chain = with_issuer(&state, "agent", |issuer| {
        issuer.x509(&agent.spiffe_id, &[], &csr, ttl, now)
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
    Extension(Stopping(mut stop)): Extension<Stopping>,
    Query(query): Query<EntriesQuery>,
) -> ApiResult<EntriesResponse> {
    let agent = agent(&state, &caller).await?;
    let mut since = query.since.max(0);
    // A full sync: a new agent's, or the continuation of one (see the module docs).
    if since == 0 || query.until.is_some() {
        let current = state.store.current_revision().await?;
        // Never past the current revision: a later one may not be committed yet.
        let until = query.until.map_or(current, |until| until.min(current));
        let page = full_sync_page(&state, &agent.spiffe_id, since, until, false).await?;
        // A new agent with nothing to serve yet long-polls from here like any other.
        if !(page.changes.is_empty() && !page.more && query.until.is_none() && query.wait > 0) {
            return Ok(Json(page));
        }
        since = page.revision;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait.min(MAX_WAIT));
    let mut revisions = state.revision.subscribe();
    loop {
        // Subscribed before reading, so a change committed after the read wakes us.
        revisions.borrow_and_update();
        let (changes, current) = state.store.entry_changes_since(since, PAGE).await?;
        // Read after the changes: a prune that removed one of the tombstones the agent
        // needed had committed before, so its horizon shows here.
        if since < state.store.tombstone_horizon().await? {
            tracing::info!(agent_id = %agent.spiffe_id, since, "deletions were pruned: full resync");
            return Ok(Json(
                full_sync_page(&state, &agent.spiffe_id, 0, current, true).await?,
            ));
        }
        let more = changes.len() >= PAGE;
        let next = if more {
            changes.last().map_or(current, |c| c.revision)
        } else {
            current
        };
        if !changes.is_empty() {
            let upserted: Vec<String> = changes
                .iter()
                .filter(|c| matches!(c.kind, EntryChangeKind::Upsert(_)))
                .map(|c| c.entry_id.clone())
                .collect();
            let visible = state
                .store
                .agent_entries_among(&agent.spiffe_id, &upserted)
                .await?;
            let out: Vec<SyncChange> = changes
                .into_iter()
                .map(|change| match change.kind {
                    EntryChangeKind::Upsert(entry) if visible.contains(&entry.id) => {
                        SyncChange::Entry(crate::admin::view(&entry))
                    }
                    // Deleted, or not (or no longer) under this agent: forget it.
                    _ => SyncChange::Deleted(change.entry_id),
                })
                .collect();
            return Ok(Json(EntriesResponse {
                revision: next,
                changes: out,
                more,
                until: None,
                resync: false,
            }));
        }
        since = since.max(next);
        // Nothing yet: wait for the revision to move; at the deadline, or when the server
        // stops, answer that nothing changed (the agent asks again, elsewhere if need be).
        let moved = tokio::select! {
            woken = tokio::time::timeout_at(deadline, revisions.changed()) => {
                matches!(woken, Ok(Ok(())))
            }
            () = crate::run::stopped(&mut stop) => false,
        };
        if !moved {
            return Ok(Json(EntriesResponse {
                revision: since,
                changes: Vec::new(),
                more: false,
                until: None,
                resync: false,
            }));
        }
    }
}

/// One page of a full sync: the agent's live entries with a revision in `(since, until]`.
async fn full_sync_page(
    state: &State,
    agent: &WorkloadId,
    since: i64,
    until: i64,
    resync: bool,
) -> Result<EntriesResponse, AgentApiError> {
    let entries = state.store.agent_entries(agent, since, until, PAGE).await?;
    let more = entries.len() >= PAGE;
    let revision = if more {
        entries.last().map_or(until, |e| e.revision)
    } else {
        until
    };
    Ok(EntriesResponse {
        revision,
        changes: entries
            .iter()
            .map(|e| SyncChange::Entry(crate::admin::view(e)))
            .collect(),
        more,
        until: more.then_some(until),
        resync,
    })
}

/// Runs one issuance for the calling agent and records it, issued or refused.
async fn audited_issue<T>(
    state: &State,
    caller: &Caller,
    kind: EventKind,
    entry_id: &str,
    issue: impl AsyncFnOnce(&RegistrationEntry) -> Result<T, AgentApiError>,
    credential: impl FnOnce(&T) -> Option<CredentialRef>,
) -> Result<T, AgentApiError> {
    let mut workload = None;
    let outcome = async {
        let agent = agent(state, caller).await?;
        let entry = own_entry(state, &agent, entry_id).await?;
        workload = Some(entry.spiffe_id.clone());
        issue(&entry).await
    }
    .await;
    state.audit.record(Event {
        kind,
        method: AuthMethod::Mtls,
        agent: caller.id.as_ref(),
        workload: workload.as_ref(),
        credential: outcome.as_ref().ok().and_then(credential),
        refusal: outcome.as_ref().err().map(ToString::to_string),
        context: None,
        delegation: None,
    });
    outcome
}

async fn svid_x509(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<X509Request>,
) -> ApiResult<X509Response> {
    let chain = audited_issue(
        &state,
        &caller,
        EventKind::X509Issued,
        &req.entry_id,
        async |entry| {
            let csr = decode_csr(&req.csr)?;
            with_issuer(&state, "x509", |issuer| {
                issuer.x509_for_entry(entry, &csr, unix_now())
            })
        },
        |chain: &Vec<Certificate>| {
            chain
                .first()
                .map(|c| CredentialRef::from_certificate_der(c.der()))
        },
    )
    .await?;
    Ok(Json(X509Response {
        svid_chain: encode_chain(&chain),
    }))
}

async fn svid_wit(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<WitRequest>,
) -> ApiResult<WitResponse> {
    let wit = audited_issue(
        &state,
        &caller,
        EventKind::WitIssued,
        &req.entry_id,
        async |entry| {
            with_issuer(&state, "wit", |issuer| {
                issuer.wit(entry, &req.jwk, unix_now())
            })
        },
        |wit: &String| Some(CredentialRef::from_token(CredentialKind::Wit, wit)),
    )
    .await?;
    Ok(Json(WitResponse { wit }))
}

async fn svid_jwt(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<JwtRequest>,
) -> ApiResult<JwtResponse> {
    let jwt_svid = audited_issue(
        &state,
        &caller,
        EventKind::JwtIssued,
        &req.entry_id,
        async |entry| {
            with_issuer(&state, "jwt", |issuer| {
                issuer.jwt_svid(entry, &req.audience, unix_now())
            })
        },
        |jwt: &String| Some(CredentialRef::from_token(CredentialKind::JwtSvid, jwt)),
    )
    .await?;
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

/// The IDs of the bundle's tainted keys: the agent replaces at once every credential
/// one of them signed (a JSON array of strings).
async fn tainted(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, AgentApiError> {
    agent(&state, &caller).await?;
    Ok(Json(state.tainted().as_ref().clone()).into_response())
}

async fn federated_bundles(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, AgentApiError> {
    agent(&state, &caller).await?;
    let mut set = wimse_core::bundle::BundleSet::new();
    for stored in state.store.list_federated_bundles().await? {
        set.insert(stored.bundle);
    }
    Ok(([("content-type", "application/json")], set.to_map_json()).into_response())
}
