//! The credential source: this workload's current X.509 SVID, WIT and key, and the trust
//! bundles it verifies peers with, kept up to date from the agent's Workload API.
//!
//! [`CredentialSource::current`] hands out an `Arc<Credentials>` snapshot; a rotation
//! replaces the snapshot in place, so a request in flight keeps the credentials it
//! started with and the next one sees the new ones (no connection or request is dropped).
//! A background task follows the `FetchX509SVID` and `FetchWITSVID` streams, re-reads the
//! bundles on every change and every [`BUNDLE_POLL`], and reconnects with exponential
//! backoff (100 ms doubling to 5 s) when the agent goes away; the last good snapshot
//! stays in use meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use wimse_core::WorkloadId;
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::id::TrustDomain;
use wimse_proto::Workload;
use wimse_proto::workload::{WitSvid, X509Context, X509Svid};

/// How often the bundles are re-read even when no credential changed.
pub const BUNDLE_POLL: Duration = Duration::from_secs(5);

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No complete set of credentials arrived in time.
    #[error("no credentials from the agent at `{socket}` within {waited:?}: {last}")]
    NotReady {
        /// The agent's socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
}

/// One snapshot of everything this workload holds.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The X.509 SVID (chain and key) of this workload.
    pub x509: Option<X509Svid>,
    /// The WIT and the key its `cnf` names.
    pub wit: Option<WitSvid>,
    /// X.509 authorities per trust domain, for mTLS peers.
    pub x509_bundles: BundleSet,
    /// WIT authorities per trust domain.
    pub wit_bundles: BundleSet,
    /// JWT-SVID authorities per trust domain (legacy bearer mode only).
    pub jwt_bundles: BundleSet,
    /// Increases on every change; the bundles' part is [`Credentials::bundle_generation`].
    pub generation: u64,
    /// Increases when any bundle changes (verified-WIT caches are cleared on a change).
    pub bundle_generation: u64,
}

impl Credentials {
    /// This workload's identity: the WIT's subject, else the X.509 SVID's.
    pub fn id(&self) -> Option<&WorkloadId> {
        self.wit
            .as_ref()
            .map(|w| &w.id)
            .or_else(|| self.x509.as_ref().map(|x| &x.id))
    }

    /// Whether an X.509 SVID, a WIT and WIT bundles are all present.
    pub fn is_complete(&self) -> bool {
        self.x509.is_some() && self.wit.is_some() && self.wit_bundles.iter().next().is_some()
    }

    /// Whether this workload can prove its identity at `now`: complete, and neither its
    /// X509-SVID nor its WIT has expired (the agent may be gone past their lifetime).
    /// What is missing when not.
    pub fn readiness(&self, now: i64) -> Result<(), &'static str> {
        let (Some(x509), Some(wit)) = (&self.x509, &self.wit) else {
            return Err("no credentials from the agent yet");
        };
        if self.wit_bundles.iter().next().is_none() {
            return Err("no WIT bundles from the agent yet");
        }
        if x509
            .chain
            .first()
            .is_none_or(|leaf| leaf.not_after() <= now)
        {
            return Err("the X509-SVID has expired and the agent has given no new one");
        }
        let wit_exp = wimse_core::jose::Jws::parse(&wit.token)
            .and_then(|jws| jws.claims::<WitExpiry>())
            .map(|claims| claims.exp);
        match wit_exp {
            Ok(exp) if exp <= now => Err("the WIT has expired and the agent has given no new one"),
            Ok(_) => Ok(()),
            Err(_) => Err("the WIT from the agent cannot be read"),
        }
    }
}

/// The one WIT claim readiness looks at (the WIT came from the agent; its signature is
/// the peers' business).
#[derive(serde::Deserialize)]
struct WitExpiry {
    exp: i64,
}

struct Inner {
    current: RwLock<Arc<Credentials>>,
    changed: watch::Sender<u64>,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// The last connection or stream error (for the "not ready" message).
    last_error: std::sync::Mutex<Option<String>>,
    /// The agent's socket, for credentials fetched on demand (`None` for a fixed source).
    socket: Option<PathBuf>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// A shared handle on the current credentials (cheap to clone).
#[derive(Clone)]
pub struct CredentialSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("CredentialSource")
            .field("id", &current.id())
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// A source that holds `credentials` until [`CredentialSource::update`] changes them
    /// (for tests, benchmarks and credentials from files).
    pub fn fixed(credentials: Credentials) -> Self {
        let (changed, _) = watch::channel(credentials.generation);
        CredentialSource {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(credentials)),
                changed,
                task: std::sync::OnceLock::new(),
                last_error: std::sync::Mutex::new(None),
                socket: None,
            }),
        }
    }

    /// Connects to the agent at `socket` and follows it in the background; waits up to
    /// `wait` for a complete set (X.509 SVID, WIT, bundles). `id` picks one of several
    /// identities the agent offers this process (default: the first).
    pub async fn connect(
        socket: PathBuf,
        id: Option<WorkloadId>,
        wait: Duration,
    ) -> Result<Self, SourceError> {
        let (changed, mut rx) = watch::channel(0);
        let inner = Arc::new(Inner {
            current: RwLock::new(Arc::new(Credentials::default())),
            changed,
            task: std::sync::OnceLock::new(),
            last_error: std::sync::Mutex::new(None),
            socket: Some(socket.clone()),
        });
        // Spawned only once `inner` exists, so the task's first upgrade cannot fail.
        let task = tokio::spawn(follow(Arc::downgrade(&inner), socket.clone(), id));
        let _ = inner.task.set(task.abort_handle());
        let source = CredentialSource { inner };
        let ready = tokio::time::timeout(wait, async {
            while !source.current().is_complete() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if ready.is_err() || !source.current().is_complete() {
            let c = source.current();
            return Err(SourceError::NotReady {
                socket,
                waited: wait,
                last: format!(
                    "x509 svid {}, wit {}, wit bundles {}; last error: {}",
                    c.x509.is_some(),
                    c.wit.is_some(),
                    c.wit_bundles.iter().next().is_some(),
                    source
                        .inner
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .unwrap_or_else(|| "none".into())
                ),
            });
        }
        Ok(source)
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Credentials> {
        Arc::clone(
            &self
                .inner
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the snapshot with `f` applied to a copy of it (the generation increases).
    pub fn update(&self, f: impl FnOnce(&mut Credentials)) {
        update(&self.inner, f);
    }

    /// A receiver that sees the generation after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// A fresh JWT-SVID of this workload for `audience`, from the agent (JWT-SVIDs are
    /// bearer tokens for one audience, so they are fetched when needed, not followed).
    pub async fn jwt_svid(&self, audience: &str) -> Result<String, JwtSvidError> {
        let socket = self.inner.socket.as_ref().ok_or(JwtSvidError::NoAgent)?;
        let id = self
            .current()
            .id()
            .cloned()
            .ok_or(JwtSvidError::NoIdentity)?;
        let mut client = Workload::connect(socket)
            .await
            .map_err(|e| JwtSvidError::Agent(e.to_string()))?;
        let svids = client
            .jwt_svids(&[audience.to_owned()], Some(id.as_str()))
            .await
            .map_err(|e| JwtSvidError::Agent(e.to_string()))?;
        svids
            .into_iter()
            .find(|svid| svid.id == id)
            .map(|svid| svid.token)
            .ok_or_else(|| JwtSvidError::Agent(format!("no JWT-SVID for `{id}`")))
    }
}

/// Why no JWT-SVID was fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwtSvidError {
    /// The source does not follow an agent.
    #[error("this credential source has no agent to ask")]
    NoAgent,
    /// This workload has no identity yet.
    #[error("this workload has no identity yet")]
    NoIdentity,
    /// The agent refused or could not be reached.
    #[error("the agent gave no JWT-SVID: {0}")]
    Agent(String),
}

fn update(inner: &Inner, f: impl FnOnce(&mut Credentials)) {
    let mut guard = inner
        .current
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut next = Credentials::clone(&guard);
    let bundles_before = (
        bundle_fingerprint(&next.x509_bundles),
        bundle_fingerprint(&next.wit_bundles),
        bundle_fingerprint(&next.jwt_bundles),
    );
    f(&mut next);
    next.generation = guard.generation.wrapping_add(1);
    // Only this function moves the bundle generation, and only forward: the caches trust
    // that an entry of an older generation never comes back.
    next.bundle_generation = guard.bundle_generation;
    let bundles_after = (
        bundle_fingerprint(&next.x509_bundles),
        bundle_fingerprint(&next.wit_bundles),
        bundle_fingerprint(&next.jwt_bundles),
    );
    if bundles_before != bundles_after {
        next.bundle_generation = guard.bundle_generation.wrapping_add(1);
    }
    let generation = next.generation;
    *guard = Arc::new(next);
    drop(guard);
    inner.changed.send_replace(generation);
}

/// A fingerprint of a bundle set, to notice changes.
fn bundle_fingerprint(set: &BundleSet) -> String {
    set.iter()
        .map(|b| {
            format!(
                "{}:{}:{}:{}:{}",
                b.trust_domain(),
                b.x509_authorities.len(),
                // Key IDs and the keys themselves: a key replaced under the same `kid`
                // is a change too.
                b.jwt_authorities
                    .iter()
                    .map(|a| ("jwt", a))
                    .chain(b.wit_authorities.iter().map(|a| ("wit", a)))
                    .map(|(usage, a)| {
                        format!(
                            "{usage}:{}={}",
                            a.kid,
                            a.key.jwk().thumbprint().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                b.x509_authorities
                    .iter()
                    .map(|c| wimse_core::digest::sha256_b64(c))
                    .collect::<Vec<_>>()
                    .join(","),
                b.sequence
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn x509_bundles(ctx: &X509Context, svid: &X509Svid) -> BundleSet {
    let mut set = BundleSet::new();
    let mut own = TrustBundle::new(svid.id.trust_domain().clone());
    own.x509_authorities = svid.bundle.iter().map(|c| c.der().to_vec()).collect();
    set.insert(own);
    for (td, certs) in &ctx.federated {
        if let Ok(td) = TrustDomain::new(td) {
            let mut b = TrustBundle::new(td);
            b.x509_authorities = certs.iter().map(|c| c.der().to_vec()).collect();
            set.insert(b);
        }
    }
    set
}

/// Follows the agent until the source is dropped.
async fn follow(inner: Weak<Inner>, socket: PathBuf, id: Option<WorkloadId>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(&inner, &socket, id.as_ref()).await {
            Ok(()) => return, // the source was dropped
            Err(e) => {
                if let Some(inner) = inner.upgrade()
                    && let Ok(mut last) = inner.last_error.lock()
                {
                    *last = Some(e.to_string());
                }
                tracing::warn!(error = %e, socket = %socket.display(), "workload api connection lost; reconnecting");
            }
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(
    inner: &Weak<Inner>,
    socket: &std::path::Path,
    id: Option<&WorkloadId>,
) -> Result<(), wimse_proto::ClientError> {
    let mut client = Workload::connect(socket).await?;
    let mut x509 = Box::pin(client.watch_x509().await?);
    let mut wit = Box::pin(client.watch_wit(id.map(WorkloadId::as_str)).await?);
    let mut poll = tokio::time::interval(BUNDLE_POLL);
    loop {
        tokio::select! {
            // A new X.509 context: pick our SVID, take the X.509 bundles from it.
            item = x509.next() => {
                let ctx = item.ok_or(wimse_proto::ClientError::Closed)??;
                let chosen = match id {
                    Some(id) => ctx.svids.iter().find(|s| &s.id == id),
                    None => ctx.default_svid(),
                };
                if let Some(svid) = chosen {
                    let bundles = x509_bundles(&ctx, svid);
                    let svid = svid.clone();
                    let Some(inner) = inner.upgrade() else { return Ok(()) };
                    update(&inner, |c| {
                        c.x509 = Some(svid);
                        c.x509_bundles = bundles;
                    });
                } else {
                    tracing::warn!("the agent offers no X.509 SVID for the chosen identity");
                }
                refresh_bundles(inner, &mut client).await?;
            }
            // A new WIT (rotation): swap it in, then re-read bundles (keys may rotate with it).
            item = wit.next() => {
                let wits = item.ok_or(wimse_proto::ClientError::Closed)??;
                let chosen = match id {
                    Some(id) => wits.into_iter().find(|w| &w.id == id),
                    None => wits.into_iter().next(),
                };
                if let Some(w) = chosen {
                    let Some(inner) = inner.upgrade() else { return Ok(()) };
                    update(&inner, |c| c.wit = Some(w));
                }
                refresh_bundles(inner, &mut client).await?;
            }
            // Bundles change without a credential change (a new CA key published).
            _ = poll.tick() => refresh_bundles(inner, &mut client).await?,
        }
        if inner.strong_count() == 0 {
            return Ok(());
        }
    }
}

async fn refresh_bundles(
    inner: &Weak<Inner>,
    client: &mut Workload,
) -> Result<(), wimse_proto::ClientError> {
    let wit_bundles = client.wit_bundles().await?;
    let jwt_bundles = client.jwt_bundles().await;
    if let Some(inner) = inner.upgrade() {
        let current = inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // A failed fetch keeps the JWT bundles held: emptying them would refuse every
        // Txn-Token until the next poll.
        let jwt_bundles = jwt_bundles.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "JWT bundles not refreshed; keeping the ones held");
            current.jwt_bundles.clone()
        });
        if bundle_fingerprint(&current.wit_bundles) != bundle_fingerprint(&wit_bundles)
            || bundle_fingerprint(&current.jwt_bundles) != bundle_fingerprint(&jwt_bundles)
        {
            update(&inner, |c| {
                c.wit_bundles = wit_bundles;
                c.jwt_bundles = jwt_bundles;
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use wimse_core::bundle::KeyUse;
    use wimse_core::jose::{Algorithm, SigningKey};

    fn set_with_wit_key(kid: &str) -> BundleSet {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut bundle = TrustBundle::new(TrustDomain::new("td.test").unwrap());
        bundle
            .add_authority(KeyUse::WitSvid, kid, key.public_key().clone())
            .unwrap();
        let mut set = BundleSet::new();
        set.insert(bundle);
        set
    }

    #[test]
    fn a_key_replaced_under_the_same_kid_changes_the_bundle_generation() {
        let source = CredentialSource::fixed(Credentials::default());
        source.update(|c| c.wit_bundles = set_with_wit_key("k1"));
        let before = source.current().bundle_generation;
        // Another key, same `kid` and `sequence`: what verified before must not any more.
        source.update(|c| c.wit_bundles = set_with_wit_key("k1"));
        assert_ne!(source.current().bundle_generation, before);
        let unchanged = source.current().bundle_generation;
        source.update(|_| {});
        assert_eq!(source.current().bundle_generation, unchanged);
    }
}
