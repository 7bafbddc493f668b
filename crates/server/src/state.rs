//! The state one running server replica shares between its listeners and background
//! tasks: datastore, authorities, the current trust bundle, its own TLS certificate and
//! the metrics.

use crate::authority::{Authorities, AuthorityError, Slot};
use crate::config::ServerConfig;
use crate::datastore::{AuthorityKind, AuthorityState, Datastore, SqlStore, StoreError};
use crate::issuer::{IssueError, Issuer, bundle_from_records};
use crate::metrics::Metrics;
use std::sync::{Arc, RwLock};
use wimse_core::WorkloadId;
use wimse_core::bundle::TrustBundle;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::token::unix_now;
use wimse_core::x509::{self, Certificate};

/// Why the server's state could not be built or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key store failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// Issuing the server's own certificate failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The x509pop CA bundle is unusable.
    #[error(transparent)]
    X509Pop(#[from] crate::x509pop::X509PopError),
    /// The server's own SPIFFE ID could not be formed.
    #[error("server identity: {0}")]
    Id(#[from] wimse_core::IdError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    /// The token service's issuers could not be loaded.
    #[error(transparent)]
    TokenService(#[from] crate::token_service::TokenServiceError),
}

/// The server's own TLS credential: an X509-SVID for `spiffe://<td>/wimse/server`.
#[derive(Clone)]
pub struct ServerSvid {
    /// Leaf first.
    pub chain: Vec<Certificate>,
    /// The private key (generated in memory, never written to disk).
    pub key: Arc<SigningKey>,
}

/// Everything the server's tasks share.
pub struct State {
    /// The resolved configuration.
    pub config: ServerConfig,
    /// The datastore.
    pub store: SqlStore,
    /// This replica's ID.
    pub server_id: String,
    /// The server's SPIFFE ID, `spiffe://<td>/wimse/server`.
    pub spiffe_id: WorkloadId,
    /// The CA that x509pop agent certificates must chain to (none: x509pop is refused).
    pub x509pop_ca: Option<crate::x509pop::X509PopCa>,
    /// This replica's signing keys.
    pub authorities: RwLock<Authorities>,
    /// The current trust bundle (all replicas' keys).
    bundle: RwLock<Arc<TrustBundle>>,
    /// The IDs of the tainted keys among them (all replicas', every kind), sorted: agents
    /// replace what these signed.
    tainted: RwLock<Arc<Vec<String>>>,
    /// The TLS credential of the public listener.
    svid: RwLock<Arc<ServerSvid>>,
    /// Metrics.
    pub metrics: Metrics,
    /// The latest entry revision this replica knows of; agents' long-polls wait on it.
    pub revision: tokio::sync::watch::Sender<i64>,
    /// The audit trail of attestations and issuance.
    pub audit: crate::audit::ServerAudit,
    /// The Transaction Token Service's policy.
    pub token_service: crate::token_service::TokenService,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A writer that panicked left a complete value behind (every write is one assignment).
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Opens the datastore and key store, publishes this replica's keys and builds the bundle.
    pub async fn open(
        config: ServerConfig,
        authorities: Authorities,
        server_id: String,
    ) -> Result<Arc<Self>, StateError> {
        let x509pop_ca = config
            .x509pop_ca_bundle
            .as_deref()
            .map(crate::x509pop::X509PopCa::load)
            .transpose()?;
        let token_service = crate::token_service::TokenService::load(&config.token_service)?;
        let store = SqlStore::connect(&config.datastore).await?;
        let bundle = TrustBundle::new(config.trust_domain.clone());
        let placeholder = ServerSvid {
            chain: Vec::new(),
            key: Arc::new(
                SigningKey::generate(Algorithm::Es256)
                    .map_err(|e| IssueError::Signing(e.to_string()))?,
            ),
        };
        let spiffe_id =
            WorkloadId::from_parts("spiffe", &config.trust_domain, wimse_core::id::SERVER_PATH)?;
        let revision = tokio::sync::watch::Sender::new(store.current_revision().await?);
        let audit = match &config.audit_log {
            Some(path) => crate::audit::ServerAudit::open(
                path,
                &config.data_dir.join("keys"),
                spiffe_id.clone(),
            )?,
            None => crate::audit::ServerAudit::disabled(),
        };
        let state = Arc::new(State {
            spiffe_id,
            config,
            store,
            server_id,
            x509pop_ca,
            authorities: RwLock::new(authorities),
            bundle: RwLock::new(Arc::new(bundle)),
            tainted: RwLock::default(),
            svid: RwLock::new(Arc::new(placeholder)),
            metrics: Metrics::default().with_issuers(token_service.issuers()),
            revision,
            audit,
            token_service,
        });
        state.publish_authorities(true).await?;
        state.renew_svid()?;
        Ok(state)
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        Arc::clone(&read(&self.bundle))
    }

    /// The current server TLS credential.
    pub fn svid(&self) -> Arc<ServerSvid> {
        Arc::clone(&read(&self.svid))
    }

    /// Writes this replica's public keys to the datastore (bumping the bundle sequence if
    /// they changed) and rebuilds the bundle from every replica's keys.
    pub async fn publish_authorities(&self, changed: bool) -> Result<(), StateError> {
        let now = unix_now();
        let records = read(&self.authorities).public_records(now);
        if changed {
            for record in records {
                self.store.put_authority(&record).await?;
            }
            self.store.prune_authorities(now).await?;
            self.store.bump_bundle_sequence().await?;
        }
        self.refresh_bundle().await
    }

    /// Rebuilds the bundle from the datastore (picks up other replicas' rotations).
    pub async fn refresh_bundle(&self) -> Result<(), StateError> {
        let now = unix_now();
        let records = self.store.list_authorities(now).await?;
        let sequence = self.store.bundle_sequence().await?;
        let bundle = bundle_from_records(
            &self.config.trust_domain,
            &records,
            sequence,
            self.config.refresh_hint,
        );
        if *self.bundle() != bundle {
            *write(&self.bundle) = Arc::new(bundle);
        }
        let mut tainted: Vec<String> = records
            .into_iter()
            .filter(|r| r.state == AuthorityState::Tainted)
            .map(|r| r.id)
            .collect();
        tainted.sort();
        if *self.tainted() != tainted {
            *write(&self.tainted) = Arc::new(tainted);
        }
        Ok(())
    }

    /// The IDs of the tainted keys in the bundle, sorted.
    pub fn tainted(&self) -> Arc<Vec<String>> {
        Arc::clone(&read(&self.tainted))
    }

    /// Marks this replica's retired key `id` of `kind` as compromised (see
    /// [`Authorities::taint`]) and publishes that (`false`: it was tainted already).
    pub async fn taint_authority(
        &self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<(Slot, bool), StateError> {
        let (slot, new) = write(&self.authorities).taint(kind, id)?;
        self.publish_authorities(new).await?;
        if new {
            tracing::warn!(kind = kind.as_str(), id, "authority tainted by an operator");
        }
        Ok((slot, new))
    }

    /// Removes this replica's tainted key `id` of `kind` from its key store and from the
    /// shared bundle at once.
    pub async fn revoke_authority(
        &self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<Slot, StateError> {
        let slot = write(&self.authorities).revoke(kind, id)?;
        if let Err(e) = self.store.delete_authority(id, &self.server_id).await {
            // Still in the shared bundle: keep it here too, so that revoking can be retried.
            write(&self.authorities).reinstate(slot)?;
            return Err(e.into());
        }
        self.publish_authorities(true).await?;
        tracing::warn!(kind = kind.as_str(), id, "authority revoked by an operator");
        Ok(slot)
    }

    /// Rotates this replica's keys if due, and republishes when anything changed.
    pub async fn rotate(&self) -> Result<(), StateError> {
        let changed = write(&self.authorities).rotate(unix_now())?;
        self.publish_authorities(changed).await?;
        if changed {
            tracing::info!(server_id = %self.server_id, "signing authorities rotated");
            self.renew_svid()?;
        }
        Ok(())
    }

    /// Prepares this replica's next key of `kind` ahead of schedule and publishes it
    /// (`false`: one was prepared already, and is answered).
    pub async fn prepare_authority(&self, kind: AuthorityKind) -> Result<(Slot, bool), StateError> {
        let (slot, new) = write(&self.authorities).prepare(kind, unix_now())?;
        self.publish_authorities(new).await?;
        if new {
            tracing::info!(kind = kind.as_str(), id = %slot.id, "authority prepared by an operator");
        }
        Ok((slot, new))
    }

    /// Makes this replica's prepared key of `kind` sign from now on (see
    /// [`Authorities::activate`]; the wait is the bundle's refresh hint), publishes the
    /// change, and renews the server's own certificate when the CA changed.
    pub async fn activate_authority(
        &self,
        kind: AuthorityKind,
        force: bool,
    ) -> Result<Slot, StateError> {
        let wait = i64::try_from(self.config.refresh_hint).unwrap_or(i64::MAX);
        let slot = write(&self.authorities).activate(kind, unix_now(), wait, force)?;
        self.publish_authorities(true).await?;
        tracing::info!(kind = kind.as_str(), id = %slot.id, force, "authority activated by an operator");
        if kind == AuthorityKind::X509 {
            self.renew_svid()?;
        }
        Ok(slot)
    }

    /// Issues a fresh TLS certificate for the server from its active CA.
    pub fn renew_svid(&self) -> Result<(), StateError> {
        let key = SigningKey::generate(Algorithm::Es256)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let id = self.spiffe_id.clone();
        let csr = x509::build_csr(&key, &id).map_err(|e| IssueError::Csr(e.to_string()))?;
        let authorities = read(&self.authorities);
        let chain = Issuer::new(&authorities, self.config.wit_profile).x509(
            &id,
            &["localhost".to_owned()],
            &csr,
            u32::try_from(self.config.ca_ttl / 4).unwrap_or(3600),
            unix_now(),
        )?;
        drop(authorities);
        *write(&self.svid) = Arc::new(ServerSvid {
            chain,
            key: Arc::new(key),
        });
        Ok(())
    }

    /// Re-reads the store's entry revision and wakes the agents' long-polls if it moved
    /// (after this replica's admin changes, and on a poll for other replicas' changes).
    pub async fn refresh_revision(&self) -> Result<(), StateError> {
        let current = self.store.current_revision().await?;
        self.revision.send_if_modified(|known| {
            let moved = current > *known;
            if moved {
                *known = current;
            }
            moved
        });
        Ok(())
    }

    /// Removes what has outlived its use: tombstones older than the retention (agents that
    /// synced before them get a full resync), and expired x509pop challenges and join tokens.
    pub async fn prune(&self, now: i64) -> Result<(), StateError> {
        let tombstones = self
            .store
            .prune_tombstones(now.saturating_sub(self.config.tombstone_retention))
            .await?;
        if tombstones > 0 {
            tracing::info!(tombstones, "pruned entry tombstones past their retention");
        }
        self.store.prune_x509pop_challenges(now).await?;
        self.store.prune_join_tokens(now).await?;
        self.store.prune_redeemed_grants(now).await?;
        self.store.prune_revoked_transactions(now).await?;
        Ok(())
    }

    /// Whether the server TLS certificate has passed half its life.
    pub fn svid_needs_renewal(&self, now: i64) -> bool {
        self.svid().chain.first().is_none_or(|leaf| {
            now >= leaf.not_before() + (leaf.not_after() - leaf.not_before()) / 2
        })
    }
}
