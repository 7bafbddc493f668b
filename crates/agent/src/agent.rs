//! The running agent: its state and the background work that keeps it current.
//!
//! Four loops run beside the Workload API, each owning one concern:
//! - **node**: renews the agent's own X509-SVID at half life, or at once when its CA was
//!   tainted; attests again when the server refuses it (evicted) or it expired, where the
//!   attestation method allows;
//! - **sync**: long-polls the server for entry changes by revision, so a change arrives
//!   within about a second of being made, and applies them to the snapshot;
//! - **bundle**: fetches the trust bundle, the IDs of its tainted keys and the foreign
//!   trust domains' bundles every few seconds and publishes changes;
//! - **mint**: mints an X509-SVID and a WIT ahead of need for every entry, and again at
//!   half life or at once when its signing key or CA was tainted (or, for a WIT, revoked),
//!   keeping the old one while the server cannot be reached. (Cached JWT-SVIDs of such a
//!   key are not served again either.)
//!
//! None of them blocks the Workload API: it answers from the latest [`Snapshot`].

use crate::cache::{Entries, Entry, Snapshot, WitCredential, X509Credential};
use crate::config::{AgentConfig, NodeAttestation};
use crate::metrics::Metrics;
use crate::node::{self, NodeCredential, NodeError, NodeFiles};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::jose::{Algorithm, Jws, SigningKey};
use wimse_core::token::unix_now;
use wimse_core::x509;
use wimse_server::agent_api::SyncChange;
use wimse_server::agent_api::client::{AgentApiClient, AgentClientError};

/// How often the trust bundle is fetched.
const BUNDLE_POLL: Duration = Duration::from_secs(5);

/// How long one entry sync waits at the server for a change, seconds.
const SYNC_WAIT: u64 = 30;

/// The most mints in flight at once.
const MINT_CONCURRENCY: usize = 8;

/// The most freshly minted credentials published in one snapshot change.
const MINT_BATCH: usize = 64;

/// The longest a freshly minted credential waits to be published.
const MINT_FLUSH: Duration = Duration::from_millis(20);

/// The longest wait between retries after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The most cached JWT-SVIDs (entry and audience pairs).
const JWT_CACHE: usize = 10_000;

/// The outcome of minting for one entry.
struct Minted {
    id: String,
    x509: Option<Arc<X509Credential>>,
    wit: Option<Arc<WitCredential>>,
    ok: bool,
}

/// What a JWT-SVID is cached by: entry ID, entry revision, sorted audiences.
type JwtKey = (String, i64, Vec<String>);

/// A cached JWT-SVID.
struct CachedJwt {
    token: String,
    kid: String,
    issued_at: i64,
    refresh_at: i64,
}

/// The agent's shared state.
pub struct Agent {
    /// The configuration it runs with.
    pub config: AgentConfig,
    /// The server's address.
    addr: SocketAddr,
    /// The agent's files.
    files: NodeFiles,
    /// What the Workload API answers from.
    pub snapshot: watch::Sender<Snapshot>,
    /// The agent's current credential.
    credential: Mutex<NodeCredential>,
    /// The client of the server, rebuilt when the credential or bundle changes.
    client: watch::Sender<AgentApiClient>,
    /// JWT-SVIDs by entry, revision and audiences.
    jwts: Mutex<HashMap<JwtKey, CachedJwt>>,
    /// Signalled when the server refuses this agent (evicted, banned): attest again now
    /// rather than at the next renewal.
    refused: tokio::sync::Notify,
    /// Metrics.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Doubles a backoff up to [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Sleeps until the Unix time `at` (at once if it has passed).
async fn sleep_until_unix(at: i64) {
    let wait = u64::try_from(at.saturating_sub(unix_now())).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(wait)).await;
}

/// The `kid` of a token the server signed.
fn token_kid(token: &str) -> Option<String> {
    Jws::parse(token).ok()?.header().kid.clone()
}

/// The `iat` and `exp` of a token the server just minted (read to schedule its renewal;
/// the server is trusted, the token is not verified here).
fn token_times(token: &str) -> Option<(i64, i64)> {
    #[derive(serde::Deserialize)]
    struct Times {
        iat: Option<i64>,
        exp: i64,
    }
    let times: Times = Jws::parse(token).ok()?.claims().ok()?;
    Some((times.iat.unwrap_or_else(unix_now), times.exp))
}

impl Agent {
    /// Sets the agent up: the stored credential if it is still valid, otherwise node
    /// attestation (retried while the server cannot be reached).
    pub async fn start(config: AgentConfig) -> Result<Arc<Self>, NodeError> {
        let mut bundle = node::bootstrap_bundle(&config.trust_bundle)?;
        let files = NodeFiles::new(&config.data_dir);
        // The kept bundle is newer than the bootstrap one (rotations since first start).
        if let Some(kept) = files.load_bundle(bundle.trust_domain()) {
            bundle = kept;
        }
        let addr = node::resolve(&config.server_address).await?;
        let credential = if let Some(kept) = files.load_credential(unix_now())? {
            tracing::info!(agent_id = %kept.id, "resuming with the stored agent credential");
            kept
        } else {
            let mut backoff = Duration::from_millis(200);
            let (credential, fresh) = loop {
                match node::attest(&config, addr, &bundle).await {
                    Ok(done) => break done,
                    Err(NodeError::Server(e @ AgentClientError::Connect { .. }))
                        if backoff < MAX_BACKOFF =>
                    {
                        tracing::warn!(error = %e, "server unreachable; retrying attestation");
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff);
                    }
                    Err(e) => return Err(e),
                }
            };
            tracing::info!(agent_id = %credential.id, "node attested");
            files.save_credential(&credential)?;
            files.save_bundle(&fresh)?;
            bundle = fresh;
            credential
        };
        let client = node::client(addr, &bundle, &credential)?;
        Ok(Arc::new(Self {
            config,
            addr,
            files,
            snapshot: watch::Sender::new(Snapshot::new(bundle)),
            credential: Mutex::new(credential),
            client: watch::Sender::new(client),
            jwts: Mutex::new(HashMap::new()),
            refused: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
        }))
    }

    /// The agent's SPIFFE ID.
    pub fn id(&self) -> wimse_core::WorkloadId {
        lock(&self.credential).id.clone()
    }

    /// The current client of the server.
    fn client(&self) -> AgentApiClient {
        self.client.borrow().clone()
    }

    fn server_up(&self, up: bool) {
        self.metrics.server_up.set(i64::from(up));
    }

    /// Starts the background loops.
    pub fn spawn_loops(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        tasks.spawn(Arc::clone(self).node_loop());
        tasks.spawn(Arc::clone(self).sync_loop());
        tasks.spawn(Arc::clone(self).bundle_loop());
        tasks.spawn(Arc::clone(self).mint_loop());
    }

    /// Installs a new credential and rebuilds the client around it.
    fn install_credential(&self, credential: NodeCredential) -> Result<(), NodeError> {
        self.files.save_credential(&credential)?;
        let bundle = self.snapshot.borrow().bundle.clone();
        self.client
            .send_replace(node::client(self.addr, &bundle, &credential)?);
        *lock(&self.credential) = credential;
        Ok(())
    }

    /// Publishes a bundle if it differs from the current one; keeps it for restarts and
    /// rebuilds the client so the server is checked against the new roots.
    fn install_bundle(&self, bundle: TrustBundle) -> Result<(), NodeError> {
        let json = bundle.to_spiffe_json();
        if self.snapshot.borrow().bundle.to_spiffe_json() == json {
            return Ok(());
        }
        self.files.save_bundle(&bundle)?;
        let credential = lock(&self.credential).clone();
        self.client
            .send_replace(node::client(self.addr, &bundle, &credential)?);
        tracing::info!(sequence = bundle.sequence, "trust bundle updated");
        self.snapshot.send_modify(|s| s.bundle = Arc::new(bundle));
        Ok(())
    }

    /// Renews the agent's credential at half life; attests again when the server refuses
    /// it (evicted) or it expired.
    async fn node_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let (renew_at, expires_at) = {
                let credential = lock(&self.credential);
                (credential.renew_at(), credential.expires_at())
            };
            let signer = lock(&self.credential)
                .chain
                .first()
                .and_then(|leaf| leaf.wimse_authority().map(str::to_owned));
            let refused = tokio::select! {
                // Half life: renew.
                () = sleep_until_unix(renew_at) => false,
                // The server refused a call of the agent: its credential is no good.
                () = self.refused.notified() => true,
                // Its CA was tainted: renew now, before the CA is revoked.
                () = self.until_tainted(signer) => {
                    tracing::warn!("this agent's certificate was signed by a tainted CA; renewing");
                    false
                }
            };
            let outcome = if refused || unix_now() >= expires_at {
                self.reattest().await
            } else {
                let trust_domain = self.snapshot.borrow().trust_domain.clone();
                match node::renew(&self.client(), &trust_domain).await {
                    Err(e) if node::is_refusal(&e) => {
                        tracing::warn!(error = %e, "the server refused to renew this agent's credential");
                        self.reattest().await
                    }
                    other => other,
                }
            };
            match outcome.and_then(|(credential, bundle)| {
                let id = credential.id.clone();
                self.install_credential(credential)?;
                self.install_bundle(bundle)?;
                Ok(id)
            }) {
                Ok(id) => {
                    self.server_up(true);
                    tracing::info!(agent_id = %id, "agent credential renewed");
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    self.server_up(false);
                    tracing::warn!(error = %e, "agent credential renewal failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                    // Still refused: try attesting again after the backoff.
                    if node::is_refusal(&e) {
                        self.refused.notify_one();
                    }
                }
            }
        }
    }

    /// Returns once the authority `signer` is among the tainted keys (never for `None`).
    async fn until_tainted(&self, signer: Option<String>) {
        let Some(signer) = signer else {
            return std::future::pending().await;
        };
        let mut changes = self.snapshot.subscribe();
        loop {
            if changes.borrow_and_update().tainted.contains(&signer) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn reattest(&self) -> Result<(NodeCredential, TrustBundle), NodeError> {
        tracing::warn!("the server no longer accepts this agent's credential; attesting again");
        if matches!(self.config.attestation, NodeAttestation::JoinToken(_)) {
            tracing::warn!(
                "join tokens are one-time: this agent needs a new join token (or x509pop) \
                 to attest again; serving cached credentials until they expire"
            );
        }
        let bundle = self.snapshot.borrow().bundle.clone();
        node::attest(&self.config, self.addr, &bundle).await
    }

    /// Follows the server's entry changes (the protocol is in `wimse_server::agent_api`'s
    /// module docs): a full sync first, paged; then incremental long-polls; and a full
    /// sync again whenever the server answers `resync`.
    async fn sync_loop(self: Arc<Self>) {
        let mut since = 0;
        let mut until: Option<i64> = None;
        // The entries being changed, only while changes are not yet published: between
        // syncs the published snapshot holds the one copy.
        let mut pending: Option<BTreeMap<String, Entry>> = None;
        // The entries of a full sync in progress; they replace the published ones when it
        // completes.
        let mut full: Option<BTreeMap<String, Entry>> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let client = self.client();
            let answer = match until {
                Some(until) => client.entries_until(since, until).await,
                None => client.entries(since, SYNC_WAIT).await,
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    self.server_up(false);
                    tracing::debug!(error = %e, "entry sync failed; retrying");
                    if matches!(
                        &e,
                        AgentClientError::Api {
                            status: 401 | 403,
                            ..
                        }
                    ) {
                        self.refused.notify_one();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                    continue;
                }
            };
            self.server_up(true);
            backoff = Duration::from_millis(200);
            if since == 0 || answer.resync {
                full = Some(BTreeMap::new());
            }
            if !answer.changes.is_empty() {
                let target = match full.as_mut() {
                    Some(full) => full,
                    None => {
                        pending.get_or_insert_with(|| (**self.snapshot.borrow().entries).clone())
                    }
                };
                for change in answer.changes {
                    apply(target, change);
                }
            }
            let changed = since != answer.revision || !self.snapshot.borrow().synced;
            since = answer.revision;
            until = if answer.more { answer.until } else { None };
            if answer.more {
                continue;
            }
            if let Some(complete) = full.take() {
                pending = Some(complete);
            }
            if changed {
                let entries = match pending.take() {
                    Some(entries) => entries,
                    None => (**self.snapshot.borrow().entries).clone(),
                };
                let published = Arc::new(Entries::new(entries));
                self.metrics
                    .entries
                    .set(i64::try_from(published.len()).unwrap_or(i64::MAX));
                self.snapshot.send_modify(|s| {
                    s.entries = published;
                    s.synced = true;
                });
            }
        }
    }

    /// Fetches the trust bundle now and then.
    async fn bundle_loop(self: Arc<Self>) {
        let trust_domain = self.snapshot.borrow().trust_domain.clone();
        // The first round at once: federated bundles are not kept across restarts.
        loop {
            let fetched = self.client().bundle().await;
            match fetched {
                Ok(json) => {
                    match TrustBundle::from_spiffe_json(trust_domain.clone(), json.as_bytes()) {
                        Ok(bundle) => {
                            if let Err(e) = self.install_bundle(bundle) {
                                tracing::warn!(error = %e, "cannot install the new bundle");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "the server sent an unusable bundle"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "bundle fetch failed"),
            }
            match self.client().tainted().await {
                Ok(ids) => self.install_tainted(ids),
                Err(e) => tracing::debug!(error = %e, "tainted key fetch failed"),
            }
            match self.client().federated_bundles().await {
                Ok(json) => match BundleSet::from_map_json(json.as_bytes()) {
                    Ok(set) => self.install_federated(&set),
                    Err(e) => {
                        tracing::warn!(error = %e, "the server sent unusable federated bundles");
                    }
                },
                Err(e) => tracing::debug!(error = %e, "federated bundle fetch failed"),
            }
            tokio::time::sleep(BUNDLE_POLL).await;
        }
    }

    /// Publishes the tainted keys if they changed: the mint loop then replaces what they
    /// signed.
    fn install_tainted(&self, ids: Vec<String>) {
        let tainted: std::collections::BTreeSet<String> = ids.into_iter().collect();
        if *self.snapshot.borrow().tainted == tainted {
            return;
        }
        if tainted.is_empty() {
            tracing::info!("no signing key is tainted any more");
        } else {
            tracing::warn!(keys = ?tainted, "tainted signing keys: replacing what they signed");
        }
        self.snapshot.send_modify(|s| s.tainted = Arc::new(tainted));
    }

    /// Publishes the foreign trust domains' bundles if they differ from the current ones.
    /// A bundle of this trust domain among them is ignored: it comes only from the server's
    /// own bundle.
    fn install_federated(&self, set: &BundleSet) {
        let own = self.snapshot.borrow().trust_domain.clone();
        let federated: BTreeMap<_, _> = set
            .iter()
            .filter(|b| b.trust_domain() != &own)
            .map(|b| (b.trust_domain().clone(), b.clone()))
            .collect();
        if *self.snapshot.borrow().federated == federated {
            return;
        }
        tracing::info!(trust_domains = federated.len(), "federated bundles updated");
        self.snapshot
            .send_modify(|s| s.federated = Arc::new(federated));
    }

    /// Mints credentials ahead of need and at half life.
    async fn mint_loop(self: Arc<Self>) {
        let mut changes = self.snapshot.subscribe();
        // Entry ID -> (next attempt, backoff) after a failed mint.
        let mut retry: HashMap<String, (i64, i64)> = HashMap::new();
        loop {
            let snapshot = changes.borrow_and_update().clone();
            let now = unix_now();
            self.forget_stale(&snapshot, now);
            retry.retain(|id, _| snapshot.entries.contains_key(id));
            let wit = self.config.wit_profile;
            let due: Vec<Entry> = snapshot
                .entries
                .values()
                .filter(|e| retry.get(&e.id).is_none_or(|(at, _)| *at <= now))
                .filter(|e| x509_due(&snapshot, e, now) || (wit && wit_due(&snapshot, e, now)))
                .cloned()
                .collect();
            // At most MINT_CONCURRENCY mints exist at a time: a task per due entry up front
            // would hold a thousand futures and their buffers at start, and the holes they
            // leave between the credentials kept would stay in the heap for good.
            let mut due = due.into_iter();
            let mut minting = JoinSet::new();
            let mut batch = Vec::new();
            let mut flushed = std::time::Instant::now();
            loop {
                while minting.len() < MINT_CONCURRENCY {
                    let Some(entry) = due.next() else { break };
                    let agent = Arc::clone(&self);
                    let x509 = x509_due(&snapshot, &entry, now);
                    let wit = wit && wit_due(&snapshot, &entry, now);
                    minting.spawn(async move { agent.mint(&entry, x509, wit).await });
                }
                let Some(done) = minting.join_next().await else {
                    break;
                };
                let Ok(minted) = done else { continue };
                if minted.ok {
                    retry.remove(&minted.id);
                } else {
                    let backoff = retry.get(&minted.id).map_or(1, |(_, b)| (b * 2).min(10));
                    retry.insert(minted.id.clone(), (unix_now() + backoff, backoff));
                }
                batch.push(minted);
                // Workloads see new credentials within a few milliseconds, while a large
                // round (a thousand entries at start) is published in batches.
                if batch.len() >= MINT_BATCH || flushed.elapsed() >= MINT_FLUSH {
                    self.publish(&mut batch);
                    flushed = std::time::Instant::now();
                }
            }
            self.publish(&mut batch);
            // Sleep until the next refresh or retry, or a change (new entries, bundle).
            let snapshot = self.snapshot.borrow().clone();
            let next = snapshot
                .x509
                .values()
                .map(|c| c.refresh_at())
                .chain(snapshot.wit.values().map(|c| c.refresh_at()))
                .chain(retry.values().map(|(at, _)| *at))
                .min()
                .unwrap_or(i64::MAX);
            tokio::select! {
                // A snapshot change: entries or bundle changed, or credentials were stored.
                update = changes.changed() => if update.is_err() { return },
                // The next credential is due.
                () = sleep_until_unix(next.min(unix_now() + 3600)) => {}
            }
        }
    }

    /// Drops credentials of entries that are gone, and expired ones.
    fn forget_stale(&self, snapshot: &Snapshot, now: i64) {
        let stale_x509 = snapshot
            .x509
            .iter()
            .any(|(id, c)| !snapshot.entries.contains_key(id) || c.expires_at() <= now);
        let stale_wit = snapshot
            .wit
            .iter()
            .any(|(id, c)| !snapshot.entries.contains_key(id) || c.expires_at <= now);
        if stale_x509 || stale_wit {
            self.snapshot.send_modify(|s| {
                let entries = Arc::clone(&s.entries);
                let mut x509 = (*s.x509).clone();
                x509.retain(|id, c| entries.contains_key(id) && c.expires_at() > now);
                let mut wit = (*s.wit).clone();
                wit.retain(|id, c| entries.contains_key(id) && c.expires_at > now);
                s.x509 = Arc::new(x509);
                s.wit = Arc::new(wit);
            });
        }
    }

    /// Mints what is due for one entry: the new credentials, and false if anything failed.
    async fn mint(&self, entry: &Entry, x509: bool, wit: bool) -> Minted {
        let client = self.client();
        let mut minted = Minted {
            id: entry.id.clone(),
            x509: None,
            wit: None,
            ok: true,
        };
        if x509 {
            match mint_x509(&client, entry).await {
                Ok(credential) => minted.x509 = Some(Arc::new(credential)),
                Err(e) => {
                    tracing::warn!(entry = %entry.id, error = %e, "X509-SVID mint failed");
                    minted.ok = false;
                }
            }
            self.metrics.mint("x509", minted.x509.is_some());
        }
        if wit {
            match mint_wit(&client, entry).await {
                Ok(credential) => minted.wit = Some(Arc::new(credential)),
                Err(e) => {
                    tracing::warn!(entry = %entry.id, error = %e, "WIT mint failed");
                    minted.ok = false;
                }
            }
            self.metrics.mint("wit", minted.wit.is_some());
        }
        self.server_up(minted.ok);
        minted
    }

    /// Publishes freshly minted credentials in one snapshot change (one copy of the maps
    /// per batch, not per credential).
    fn publish(&self, batch: &mut Vec<Minted>) {
        if batch.is_empty() {
            return;
        }
        self.snapshot.send_modify(|s| {
            let mut x509 = (*s.x509).clone();
            let mut wit = (*s.wit).clone();
            for minted in batch.drain(..) {
                if let Some(credential) = minted.x509 {
                    x509.insert(minted.id.clone(), credential);
                }
                if let Some(credential) = minted.wit {
                    wit.insert(minted.id, credential);
                }
            }
            s.x509 = Arc::new(x509);
            s.wit = Arc::new(wit);
        });
    }

    /// A JWT-SVID for `entry` and `audience`, from the cache until half life.
    pub async fn jwt_svid(&self, entry: &Entry, audience: &[String]) -> Result<String, String> {
        let mut audience = audience.to_vec();
        audience.sort();
        audience.dedup();
        let key = (entry.id.clone(), entry.revision, audience);
        let now = unix_now();
        if let Some(cached) = lock(&self.jwts).get(&key)
            && now < cached.refresh_at
            && !self.snapshot.borrow().signer_retired(
                &cached.kid,
                KeyUse::JwtSvid,
                cached.issued_at,
                now,
            )
        {
            return Ok(cached.token.clone());
        }
        let token = self.client().jwt(&entry.id, &key.2).await;
        self.metrics.mint("jwt", token.is_ok());
        let token = token.map_err(|e| e.to_string())?;
        let (iat, exp) = token_times(&token).ok_or("the server sent an unreadable JWT-SVID")?;
        let kid = token_kid(&token).ok_or("the server sent a JWT-SVID without a `kid`")?;
        let mut jwts = lock(&self.jwts);
        if jwts.len() >= JWT_CACHE {
            jwts.retain(|_, c| c.refresh_at > now);
            if jwts.len() >= JWT_CACHE {
                jwts.clear();
            }
        }
        jwts.insert(
            key,
            CachedJwt {
                token: token.clone(),
                kid,
                issued_at: iat,
                refresh_at: iat + (exp - iat) / 2,
            },
        );
        Ok(token)
    }
}

/// Applies one sync change to a set of entries.
fn apply(entries: &mut BTreeMap<String, Entry>, change: SyncChange) {
    match change {
        SyncChange::Entry(view) => {
            let id = view.id.clone();
            match Entry::from_view(view) {
                Ok(entry) => {
                    entries.insert(id, entry);
                }
                Err(e) => {
                    tracing::warn!(entry = %id, error = %e, "ignoring an unusable entry");
                    entries.remove(&id);
                }
            }
        }
        SyncChange::Deleted(id) => {
            entries.remove(&id);
        }
    }
}

fn x509_due(snapshot: &Snapshot, entry: &Entry, now: i64) -> bool {
    snapshot.x509.get(&entry.id).is_none_or(|c| {
        c.revision != entry.revision
            || now >= c.refresh_at()
            || c.signer
                .as_ref()
                .is_some_and(|id| snapshot.tainted.contains(id))
    })
}

fn wit_due(snapshot: &Snapshot, entry: &Entry, now: i64) -> bool {
    snapshot.wit.get(&entry.id).is_none_or(|c| {
        c.revision != entry.revision
            || now >= c.refresh_at()
            || snapshot.signer_retired(&c.kid, KeyUse::WitSvid, c.issued_at, now)
    })
}

async fn mint_x509(client: &AgentApiClient, entry: &Entry) -> Result<X509Credential, String> {
    let key = SigningKey::generate(Algorithm::Es256).map_err(|e| e.to_string())?;
    let csr = x509::build_csr(&key, &entry.spiffe_id).map_err(|e| e.to_string())?;
    let chain = client
        .x509(&entry.id, &csr)
        .await
        .map_err(|e| e.to_string())?;
    let key_pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("the server sent an empty chain")?;
    let (not_after, signer) = (leaf.not_after(), leaf.wimse_authority().map(str::to_owned));
    Ok(X509Credential {
        revision: entry.revision,
        chain_der: chain
            .iter()
            .map(x509::Certificate::der)
            .collect::<Vec<_>>()
            .concat(),
        not_after,
        key_pkcs8,
        minted_at: unix_now(),
        signer,
    })
}

async fn mint_wit(client: &AgentApiClient, entry: &Entry) -> Result<WitCredential, String> {
    // ES256: the SPIFFE WIT-SVID profile does not allow EdDSA.
    let key = SigningKey::generate(Algorithm::Es256).map_err(|e| e.to_string())?;
    let token = client
        .wit(&entry.id, key.public_jwk())
        .await
        .map_err(|e| e.to_string())?;
    let (issued_at, expires_at) = token_times(&token).ok_or("the server sent an unreadable WIT")?;
    let kid = token_kid(&token).ok_or("the server sent a WIT without a `kid`")?;
    let key_jwk = key.to_private_jwk().map_err(|e| e.to_string())?;
    Ok(WitCredential {
        revision: entry.revision,
        token,
        key_jwk,
        issued_at,
        expires_at,
        kid,
    })
}
