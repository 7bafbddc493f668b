//! What the server remembers, and the one trait through which it remembers it.
//!
//! # The model
//!
//! - [`RegistrationEntry`]: "the workload that shows these [`Selector`]s, under this parent,
//!   gets this identity" (SPIRE's entry model). Created and updated from a [`NewEntry`].
//! - [`AttestedAgent`]: an agent that passed node attestation, and whether it is banned.
//! - [`JoinToken`]: only the SHA-256 hash of a one-time join token and its expiry; the token
//!   itself never reaches the datastore.
//! - [`Authority`]: the *public* half of a signing key of one server replica (an X.509 CA
//!   certificate or a JWK). Private keys stay in each replica's data dir. Several replicas on
//!   one PostgreSQL database each publish their authorities here, and the trust bundle is built
//!   from all of them.
//! - [`EntryChange`]: one step of the incremental entry sync that agents follow by revision.
//! - [`X509PopChallenge`]: a one-time nonce handed to an agent proving possession of an
//!   x509pop certificate's key; stored as a hash, so any replica can check and consume it.
//! - [`FederationRelationship`]: where a foreign trust domain publishes its bundle, and how its
//!   endpoint authenticates; [`FederatedBundle`]: that trust domain's latest bundle, kept apart
//!   from this trust domain's own (bundles are never merged across trust domains).
//!
//! # Revisions
//!
//! Every entry change (create, update, delete) takes the next value of one store-wide counter,
//! so revisions are unique, increase with every change, and are handed out in commit order: the
//! counter row is bumped first in each writing transaction and stays locked until it commits.
//! That is what lets an agent remember a single number and ask for
//! [`Datastore::entry_changes_since`] it, without ever missing a change committed late.
//!
//! # Implementations
//!
//! [`SqlStore`] (in `sql.rs`) implements [`Datastore`] on SQLite (the default, a file in the data
//! dir) and PostgreSQL (shared by several replicas), with the same schema and the same tests.

mod sql;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use wimse_core::bundle::TrustBundle;
use wimse_core::{TrustDomain, WorkloadId};

pub use sql::SqlStore;

/// A property of a workload or of a node, as `type:value`: `unix:uid:1000` has the type `unix`
/// and the value `uid:1000`.
///
/// The type never contains a colon (the text is split at the first one) and neither part is
/// empty, so `type:value` reads back to the same selector. Ordering is by type, then value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Selector {
    /// The selector type, e.g. `unix`.
    kind: String,
    /// The selector value, e.g. `uid:1000`.
    value: String,
}

impl Selector {
    /// Builds a selector from its two parts. `kind` must be non-empty and free of `:`, `value`
    /// non-empty.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        if kind.is_empty() {
            return Err(SelectorError::EmptyType {
                input: format!("{kind}:{value}"),
            });
        }
        if kind.contains(':') {
            return Err(SelectorError::ColonInType {
                kind: kind.to_owned(),
            });
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue {
                input: format!("{kind}:"),
            });
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The selector type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The selector value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses `type:value`, splitting at the first colon.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((kind, value)) = input.split_once(':') else {
            return Err(SelectorError::MissingColon {
                input: input.to_owned(),
            });
        };
        Self::new(kind, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why a text is not a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// There is no `:` between the type and the value.
    #[error("selector `{input}` is not of the form `type:value`")]
    MissingColon {
        /// The input as given.
        input: String,
    },
    /// The part before the first `:` is empty.
    #[error("selector `{input}` has an empty type")]
    EmptyType {
        /// The input as given.
        input: String,
    },
    /// The part after the first `:` is empty.
    #[error("selector `{input}` has an empty value")]
    EmptyValue {
        /// The input as given.
        input: String,
    },
    /// A type given on its own contains `:`, so `type:value` would not read back the same.
    #[error("selector type `{kind}` contains `:`")]
    ColonInType {
        /// The type as given.
        kind: String,
    },
}

/// Sorts and deduplicates `selectors`: the canonical form of a selector set, in which two sets
/// with the same members are equal.
pub(crate) fn canonical_selectors(mut selectors: Vec<Selector>) -> Vec<Selector> {
    selectors.sort();
    selectors.dedup();
    selectors
}

/// A registration entry as stored: which identity a workload gets, under which parent, when it
/// shows which selectors.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegistrationEntry {
    /// The entry's ID, assigned by the store at creation (a random UUID).
    pub id: String,
    /// The identity issued to matching workloads.
    pub spiffe_id: WorkloadId,
    /// The agent (or another entry's identity) under which the workload runs.
    pub parent_id: WorkloadId,
    /// The selectors a workload must show, all of them; sorted and without duplicates.
    pub selectors: Vec<Selector>,
    /// Lifetime of issued X.509 certificates, in seconds.
    pub x509_ttl: u32,
    /// Lifetime of issued JWT-SVIDs and WITs, in seconds.
    pub jwt_ttl: u32,
    /// DNS names to put in issued X.509 certificates.
    pub dns_names: Vec<String>,
    /// A hint for workloads that receive several identities, telling them apart.
    pub hint: Option<String>,
    /// Whether the identity may use the server's admin API.
    pub admin: bool,
    /// Whether the identity belongs to a downstream server (a nested CA).
    pub downstream: bool,
    /// The foreign trust domains whose bundles matching workloads receive; sorted and without
    /// duplicates.
    pub federates_with: Vec<TrustDomain>,
    /// The store-wide revision of the entry's last change (see the [module docs](self)).
    pub revision: i64,
    /// When the entry was created, in seconds since the Unix epoch.
    pub created_at: i64,
}

/// The caller-chosen parts of a [`RegistrationEntry`], for [`Datastore::create_entry`] and
/// [`Datastore::update_entry`]. The store assigns the ID, revision and creation time.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewEntry {
    /// The identity issued to matching workloads.
    pub spiffe_id: WorkloadId,
    /// The agent (or another entry's identity) under which the workload runs.
    pub parent_id: WorkloadId,
    /// The selectors a workload must show; the store sorts them and drops duplicates.
    pub selectors: Vec<Selector>,
    /// Lifetime of issued X.509 certificates, in seconds.
    pub x509_ttl: u32,
    /// Lifetime of issued JWT-SVIDs and WITs, in seconds.
    pub jwt_ttl: u32,
    /// DNS names to put in issued X.509 certificates.
    pub dns_names: Vec<String>,
    /// A hint for workloads that receive several identities.
    pub hint: Option<String>,
    /// Whether the identity may use the server's admin API.
    pub admin: bool,
    /// Whether the identity belongs to a downstream server.
    pub downstream: bool,
    /// The foreign trust domains whose bundles matching workloads receive; the store sorts
    /// them and drops duplicates.
    pub federates_with: Vec<TrustDomain>,
}

/// Which entries [`Datastore::list_entries`] returns: those matching every field that is set.
/// The default matches all entries.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EntryFilter {
    /// Only entries with this identity.
    pub spiffe_id: Option<WorkloadId>,
    /// Only entries with this parent.
    pub parent_id: Option<WorkloadId>,
    /// Only entries whose selectors include all of these (they may have more).
    pub selectors: Vec<Selector>,
}

/// One step of the incremental entry sync.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EntryChange {
    /// The revision of this change.
    pub revision: i64,
    /// The entry that changed.
    pub entry_id: String,
    /// What happened to it.
    pub kind: EntryChangeKind,
}

/// What happened to an entry in an [`EntryChange`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EntryChangeKind {
    /// The entry was created or updated; this is its state at the change's revision.
    Upsert(Box<RegistrationEntry>),
    /// The entry was deleted.
    Delete,
}

/// An agent that passed node attestation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AttestedAgent {
    /// The agent's identity.
    pub spiffe_id: WorkloadId,
    /// How it attested: `join_token` or `x509pop`.
    pub attestation_type: String,
    /// Hex serial number of its current agent certificate.
    pub serial: String,
    /// When its current agent certificate expires, in seconds since the Unix epoch.
    pub expires_at: i64,
    /// A banned agent gets nothing more from the server.
    pub banned: bool,
    /// The node selectors attestation produced; the store sorts them and drops duplicates.
    pub selectors: Vec<Selector>,
    /// When the agent was last heard from, in seconds since the Unix epoch.
    pub last_seen: i64,
}

/// A transaction the token service no longer serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedTransaction {
    /// Its `txn`.
    pub txn: String,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
    /// Until when the revocation is kept: nothing issued before it is valid past then.
    pub expires_at: i64,
}

/// A one-time join token as stored: only its SHA-256 hash, so that a copy of the database does
/// not let anyone attest a node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the token's text.
    pub hash: [u8; 32],
    /// When the token stops being accepted, in seconds since the Unix epoch.
    pub expires_at: i64,
}

impl JoinToken {
    /// The stored form of `token`, valid until `expires_at`. The token itself is not kept.
    pub fn new(token: &str, expires_at: i64) -> Self {
        Self {
            hash: Self::hash(token),
            expires_at,
        }
    }

    /// SHA-256 of `token`: the key under which it is stored and consumed.
    pub fn hash(token: &str) -> [u8; 32] {
        wimse_core::digest::sha256(token.as_bytes())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("hash", &hex(&self.hash))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A one-time x509pop challenge as stored: the SHA-256 of its nonce, the certificate it was
/// issued to and its expiry. The nonce itself is not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct X509PopChallenge {
    /// SHA-256 of the nonce.
    pub nonce_hash: [u8; 32],
    /// Lowercase hex SHA-256 of the DER leaf certificate the challenge was issued to.
    pub fingerprint: String,
    /// When the challenge stops being accepted, in seconds since the Unix epoch.
    pub expires_at: i64,
}

impl fmt::Debug for X509PopChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509PopChallenge")
            .field("nonce_hash", &hex(&self.nonce_hash))
            .field("fingerprint", &self.fingerprint)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a signing authority signs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AuthorityKind {
    /// An X.509 CA: `public_data` is its DER certificate.
    X509,
    /// A JWT-SVID signing key: `public_data` is its public JWK as JSON.
    Jwt,
    /// A WIT signing key: `public_data` is its public JWK as JSON.
    Wit,
}

impl AuthorityKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::X509, Self::Jwt, Self::Wit];

    /// The stored name: `x509`, `jwt` or `wit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
            Self::Wit => "wit",
        }
    }

    /// The kind stored as `name`, if any.
    pub(crate) fn from_stored(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Where a signing authority is in its rotation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AuthorityState {
    /// Published in the bundle, not yet signing: relying parties learn it before they meet it.
    Prepared,
    /// Signing new credentials.
    Active,
    /// No longer signing, still published until what it signed has expired.
    Retired,
    /// Retired, and marked by an operator as compromised: still published, but agents
    /// replace at once every credential it signed, so that it can be revoked (removed
    /// from the bundle) without breaking anyone.
    Tainted,
}

impl AuthorityState {
    /// Every state.
    pub const ALL: [Self; 4] = [Self::Prepared, Self::Active, Self::Retired, Self::Tainted];

    /// The stored name: `prepared`, `active`, `retired` or `tainted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Tainted => "tainted",
        }
    }

    /// The state stored as `name`, if any.
    pub(crate) fn from_stored(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// The public half of one signing key of one server replica.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Authority {
    /// The key's `kid`, or the certificate's fingerprint for X.509.
    pub id: String,
    /// The replica that owns (and alone holds the private key of) this authority.
    pub server_id: String,
    /// What it signs.
    pub kind: AuthorityKind,
    /// The DER certificate for [`AuthorityKind::X509`], the public JWK as JSON otherwise.
    pub public_data: Vec<u8>,
    /// Where it is in its rotation.
    pub state: AuthorityState,
    /// When it expires, in seconds since the Unix epoch; from then on it leaves the bundle.
    pub not_after: i64,
    /// When it was first stored, in seconds since the Unix epoch.
    pub created_at: i64,
}

/// How a bundle endpoint authenticates itself to the servers that fetch from it (SPIFFE
/// Federation §5.2).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EndpointProfile {
    /// `https_web`: a certificate from a Web PKI authority, for the URL's host.
    HttpsWeb,
    /// `https_spiffe`: an X509-SVID of `endpoint_id`, checked against the bundle of that ID's
    /// trust domain (for a self-serving endpoint, the very bundle it serves).
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint's server certificate must carry.
        endpoint_id: WorkloadId,
    },
}

impl EndpointProfile {
    /// The profile's name in SPIFFE Federation: `https_web` or `https_spiffe`.
    pub fn name(&self) -> &'static str {
        match self {
            EndpointProfile::HttpsWeb => "https_web",
            EndpointProfile::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// A one-way federation relationship: this trust domain trusts `trust_domain`'s credentials,
/// with the bundle fetched from `bundle_endpoint_url`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FederationRelationship {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint, an `https` URL.
    pub bundle_endpoint_url: String,
    /// How the endpoint authenticates.
    pub profile: EndpointProfile,
    /// When the relationship was created, in seconds since the Unix epoch.
    pub created_at: i64,
    /// When the bundle was last fetched (or a fetch last failed), if ever.
    pub last_refresh_at: Option<i64>,
    /// Why the last fetch failed; `None` after a success or before the first fetch.
    pub last_error: Option<String>,
}

/// The latest bundle of a foreign trust domain.
#[derive(Clone, PartialEq, Debug)]
pub struct FederatedBundle {
    /// The bundle; its trust domain is the foreign one.
    pub bundle: TrustBundle,
    /// When it was stored, in seconds since the Unix epoch.
    pub updated_at: i64,
}

/// Why a datastore operation failed. Messages never contain a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another entry already has the same identity, parent and selector set.
    #[error("an entry with the same spiffe id, parent id and selectors already exists")]
    DuplicateEntry,
    /// No entry has this ID.
    #[error("no registration entry with id `{0}`")]
    EntryNotFound(String),
    /// No attested agent has this identity.
    #[error("no attested agent `{0}`")]
    AgentNotFound(String),
    /// No authority has this ID for this replica.
    #[error("no authority `{id}` of server `{server_id}`")]
    AuthorityNotFound {
        /// The authority's ID.
        id: String,
        /// The replica it was looked up for.
        server_id: String,
    },
    /// The join token is unknown, or was already used.
    #[error("join token not found or already used")]
    TokenNotFound,
    /// The join token has expired (it is now removed).
    #[error("join token has expired")]
    TokenExpired,
    /// The x509pop challenge is unknown, or was already answered.
    #[error("x509pop challenge not found or already used")]
    ChallengeNotFound,
    /// The x509pop challenge has expired (it is now removed).
    #[error("x509pop challenge has expired")]
    ChallengeExpired,
    /// A stored row does not read back as a model value (e.g. a corrupt workload ID), or a value
    /// cannot be stored.
    #[error("invalid data in the datastore: {0}")]
    InvalidData(String),
    /// A federation relationship with this trust domain already exists.
    #[error("a federation relationship with `{0}` already exists")]
    DuplicateFederation(String),
    /// No federation relationship with this trust domain exists.
    #[error("no federation relationship with `{0}`")]
    FederationNotFound(String),
    /// No bundle of this trust domain is stored.
    #[error("no bundle of trust domain `{0}` is stored")]
    BundleNotFound(String),
    /// The bundle cannot be deleted while entries federate with its trust domain.
    #[error("{entries} registration entries federate with `{trust_domain}`: update them first")]
    BundleInUse {
        /// The trust domain.
        trust_domain: String,
        /// How many entries name it.
        entries: i64,
    },
    /// The datastore URL names no supported database.
    #[error("unsupported datastore url scheme `{0}`: expected `sqlite:` or `postgres://`")]
    UnsupportedUrl(String),
    /// The database failed or could not be reached.
    #[error("datastore error: {0}")]
    Database(String),
    /// Bringing the schema up to date failed.
    #[error("datastore migration failed: {0}")]
    Migration(String),
}

/// Everything the server stores, behind one trait so that the rest of the server does not know
/// which database it runs on.
///
/// Times are seconds since the Unix epoch; methods that depend on the current time take it as
/// `now`, so that callers (and tests) control the clock.
pub trait Datastore: Send + Sync {
    /// Creates an entry, assigning it a random ID, the next revision and the creation time.
    ///
    /// Fails with [`StoreError::DuplicateEntry`] when an entry with the same `spiffe_id`,
    /// `parent_id` and selector set exists.
    fn create_entry(
        &self,
        entry: NewEntry,
    ) -> impl Future<Output = Result<RegistrationEntry, StoreError>> + Send;

    /// Creates several entries in one transaction, each with its own revision, in order: all of
    /// them or none (a duplicate among them fails the whole batch).
    fn create_entries(
        &self,
        entries: Vec<NewEntry>,
    ) -> impl Future<Output = Result<Vec<RegistrationEntry>, StoreError>> + Send;

    /// The entry with this ID, if any.
    fn get_entry(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<RegistrationEntry>, StoreError>> + Send;

    /// The entries matching `filter`, oldest first.
    fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> impl Future<Output = Result<Vec<RegistrationEntry>, StoreError>> + Send;

    /// Replaces the caller-chosen parts of entry `id` and gives it the next revision; the ID and
    /// creation time stay.
    ///
    /// Fails with [`StoreError::EntryNotFound`] or [`StoreError::DuplicateEntry`].
    fn update_entry(
        &self,
        id: &str,
        entry: NewEntry,
    ) -> impl Future<Output = Result<RegistrationEntry, StoreError>> + Send;

    /// Deletes entry `id`, recording the deletion at the next revision so that agents syncing
    /// by revision learn of it, and returns the entry as it was.
    fn delete_entry(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<RegistrationEntry, StoreError>> + Send;

    /// The changes after `revision`, in revision order, at most `limit` of them, and the current
    /// revision.
    ///
    /// Each entry appears at most once, in its latest state (or as a deletion). For `revision`
    /// 0 the answer is every live entry. Only changes up to the returned current revision are
    /// included, so a caller that got fewer than `limit` changes is up to date at that revision;
    /// one that got `limit` changes continues from the last change's revision.
    fn entry_changes_since(
        &self,
        revision: i64,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<EntryChange>, i64), StoreError>> + Send;

    /// The live entries that descend from `agent` (whose parent is `agent`, or the identity of
    /// an entry that descends from it) with a revision in `(after, until]`, in revision order,
    /// at most `limit` of them. Walks the `parent_id` index from the agent down, so the cost
    /// follows the agent's own entries, not the number of entries in the store.
    fn agent_entries(
        &self,
        agent: &WorkloadId,
        after: i64,
        until: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RegistrationEntry>, StoreError>> + Send;

    /// Which of `entry_ids` are live entries that descend from `agent` (see
    /// [`Datastore::agent_entries`]). Walks up from those entries through the `spiffe_id`
    /// index, so the cost follows the number of IDs asked about (an incremental sync's few
    /// changes), not the agent's entries or the store's.
    fn agent_entries_among(
        &self,
        agent: &WorkloadId,
        entry_ids: &[String],
    ) -> impl Future<Output = Result<std::collections::HashSet<String>, StoreError>> + Send;

    /// Removes the tombstones of entries deleted at or before `deleted_before` and raises the
    /// tombstone horizon to the highest revision removed; returns how many were removed.
    fn prune_tombstones(
        &self,
        deleted_before: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The highest revision of any pruned tombstone (0 if none was pruned): a caller that
    /// synced only up to an older revision may have missed a deletion.
    fn tombstone_horizon(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The revision of the latest entry change (0 before the first).
    fn current_revision(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// How many registration entries exist (for metrics; no rows are loaded).
    fn count_entries(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// How many agents are attested (for metrics; no rows are loaded).
    fn count_agents(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Stores a join token's hash and expiry.
    fn create_join_token(
        &self,
        token: &JoinToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uses up the join token with this hash, atomically: of any number of concurrent callers,
    /// at most one succeeds.
    ///
    /// Fails with [`StoreError::TokenNotFound`] when the token is unknown or already used, and
    /// with [`StoreError::TokenExpired`] when `now` is at or past its expiry (the expired token is
    /// removed all the same).
    fn consume_join_token(
        &self,
        hash: &[u8; 32],
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the join tokens that expired at or before `now`; returns how many.
    fn prune_join_tokens(&self, now: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records that the identity-chaining grant `jti` of trust domain `issuer` was redeemed,
    /// until `expires_at`; false when it already was (a replay). Atomic: of any number of
    /// concurrent callers, on any replica, one gets true.
    fn redeem_grant(
        &self,
        issuer: &TrustDomain,
        jti: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets the redeemed grants that expired at or before `now`; returns how many.
    fn prune_redeemed_grants(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records that an administrator revoked transaction `txn` at `now`, until
    /// `expires_at`; false when it already was (the first revocation's time stays, the
    /// later expiry wins).
    fn revoke_transaction(
        &self,
        txn: &str,
        now: i64,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether transaction `txn` was revoked (and not yet forgotten).
    fn transaction_revoked(
        &self,
        txn: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The revoked transactions, earliest revocation first.
    fn list_revoked_transactions(
        &self,
    ) -> impl Future<Output = Result<Vec<RevokedTransaction>, StoreError>> + Send;

    /// Removes authority `id` of replica `server_id` from the shared bundle at once (an
    /// operator revoked it); false when there was none.
    fn delete_authority(
        &self,
        id: &str,
        server_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets the revocations that expired at or before `now`; returns how many.
    fn prune_revoked_transactions(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Stores an x509pop challenge's hash, certificate fingerprint and expiry, replacing any
    /// earlier challenge of the same certificate: certificates are often public, so whoever
    /// asks for challenges for one cannot make more than one row of it.
    fn create_x509pop_challenge(
        &self,
        challenge: &X509PopChallenge,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uses up the x509pop challenge with this nonce hash, atomically (at most one of any
    /// number of concurrent callers succeeds), and returns the fingerprint it was issued to.
    ///
    /// Fails with [`StoreError::ChallengeNotFound`] when it is unknown or already used, and
    /// with [`StoreError::ChallengeExpired`] when `now` is at or past its expiry.
    fn consume_x509pop_challenge(
        &self,
        nonce_hash: &[u8; 32],
        now: i64,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Removes the x509pop challenges that expired at or before `now`; returns how many.
    fn prune_x509pop_challenges(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records an attested agent, or updates it when its identity is known.
    ///
    /// A ban survives: an update never clears `banned`, only [`Datastore::set_agent_banned`]
    /// does, so a banned agent cannot lift its ban by attesting again.
    fn upsert_agent(
        &self,
        agent: &AttestedAgent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The attested agent with this identity, if any.
    fn get_agent(
        &self,
        id: &WorkloadId,
    ) -> impl Future<Output = Result<Option<AttestedAgent>, StoreError>> + Send;

    /// All attested agents, by identity.
    fn list_agents(&self) -> impl Future<Output = Result<Vec<AttestedAgent>, StoreError>> + Send;

    /// Bans or unbans an agent. Fails with [`StoreError::AgentNotFound`].
    fn set_agent_banned(
        &self,
        id: &WorkloadId,
        banned: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Evicts an agent: it must attest again. Fails with [`StoreError::AgentNotFound`].
    fn delete_agent(&self, id: &WorkloadId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every agent whose certificate expired at or before `expired_before` and
    /// that is not banned, and returns their IDs, sorted. A banned agent stays: its ban
    /// must outlive its certificate, or an x509pop agent could attest again.
    fn purge_agents(
        &self,
        expired_before: i64,
    ) -> impl Future<Output = Result<Vec<WorkloadId>, StoreError>> + Send;

    /// Stores an authority, or updates the one with the same `id` and `server_id` (keeping its
    /// original `created_at`).
    fn put_authority(
        &self,
        authority: &Authority,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The authorities of all replicas that have not expired at `now`, oldest first.
    fn list_authorities(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<Authority>, StoreError>> + Send;

    /// Moves an authority to `state`. Fails with [`StoreError::AuthorityNotFound`].
    fn set_authority_state(
        &self,
        id: &str,
        server_id: &str,
        state: AuthorityState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the authorities that expired at or before `now`; returns how many.
    fn prune_authorities(&self, now: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The trust bundle's sequence number (0 before the first bump).
    fn bundle_sequence(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Increments the bundle sequence number atomically and returns the new value.
    fn bump_bundle_sequence(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Stores a new federation relationship; [`StoreError::DuplicateFederation`] when one
    /// with the same trust domain exists. Its refresh outcome starts empty.
    fn create_federation(
        &self,
        relationship: &FederationRelationship,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the endpoint URL and profile of an existing relationship (keeping its creation
    /// time, and clearing its refresh outcome).
    fn update_federation(
        &self,
        relationship: &FederationRelationship,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The relationship with `trust_domain`, if there is one.
    fn get_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> impl Future<Output = Result<Option<FederationRelationship>, StoreError>> + Send;

    /// Every relationship, by trust domain.
    fn list_federations(
        &self,
    ) -> impl Future<Output = Result<Vec<FederationRelationship>, StoreError>> + Send;

    /// Deletes the relationship with `trust_domain`. Its bundle stays (delete it on its own),
    /// so that workloads keep trusting the foreign domain until the operator says otherwise.
    fn delete_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records the outcome of a bundle fetch for `trust_domain` (`error` `None`: it worked).
    fn record_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        at: i64,
        error: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores `bundle` as its trust domain's latest, replacing any earlier one.
    fn put_federated_bundle(
        &self,
        bundle: &TrustBundle,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stored bundle of `trust_domain`, if any.
    fn get_federated_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> impl Future<Output = Result<Option<FederatedBundle>, StoreError>> + Send;

    /// Every stored foreign bundle, by trust domain.
    fn list_federated_bundles(
        &self,
    ) -> impl Future<Output = Result<Vec<FederatedBundle>, StoreError>> + Send;

    /// Deletes the bundle of `trust_domain`: [`StoreError::BundleInUse`] while an entry
    /// federates with it, [`StoreError::BundleNotFound`] when there is none.
    fn delete_federated_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub(crate) use wimse_core::digest::hex;

#[cfg(test)]
mod tests {
    use super::{JoinToken, Selector, SelectorError};

    #[test]
    fn selector_splits_at_the_first_colon_and_displays_back() {
        let selector: Selector = "unix:uid:1000".parse().unwrap();
        assert_eq!(selector.kind(), "unix");
        assert_eq!(selector.value(), "uid:1000");
        assert_eq!(selector.to_string(), "unix:uid:1000");
        let sha: Selector = "unix:sha256:ab:cd".parse().unwrap();
        assert_eq!(sha.value(), "sha256:ab:cd");
    }

    #[test]
    fn selector_without_colon_or_with_an_empty_part_is_refused() {
        assert_eq!(
            "unix".parse::<Selector>(),
            Err(SelectorError::MissingColon {
                input: "unix".to_owned()
            })
        );
        assert!(matches!(
            ":uid:1".parse::<Selector>(),
            Err(SelectorError::EmptyType { .. })
        ));
        assert!(matches!(
            "unix:".parse::<Selector>(),
            Err(SelectorError::EmptyValue { .. })
        ));
        assert!(matches!(
            "".parse::<Selector>(),
            Err(SelectorError::MissingColon { .. })
        ));
    }

    #[test]
    fn selector_type_with_a_colon_is_refused_so_that_display_reads_back() {
        assert!(matches!(
            Selector::new("a:b", "c"),
            Err(SelectorError::ColonInType { .. })
        ));
        let built = Selector::new("k8s", "ns:prod").unwrap();
        assert_eq!(built.to_string().parse::<Selector>(), Ok(built));
    }

    #[test]
    fn selectors_order_by_type_then_value() {
        let mut selectors: Vec<Selector> = ["unix:uid:2", "k8s:ns:a", "unix:gid:9", "unix:uid:2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        selectors = super::canonical_selectors(selectors);
        let texts: Vec<String> = selectors.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["k8s:ns:a", "unix:gid:9", "unix:uid:2"]);
    }

    #[test]
    fn join_token_keeps_only_the_hash_and_debug_shows_no_token() {
        let token = JoinToken::new("the-secret-token", 42);
        assert_eq!(token.hash, wimse_core::digest::sha256(b"the-secret-token"));
        let debug = format!("{token:?}");
        assert!(!debug.contains("the-secret-token"));
        assert!(debug.contains(&super::hex(&token.hash)));
    }
}
