//! The datastore suite: every test below runs twice, on a fresh SQLite file and on a fresh
//! PostgreSQL schema (`sqlite::*` and `postgres::*` in the test names).
//!
//! PostgreSQL is reached through `WIMSE_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`). Without it the PostgreSQL tests say so on stderr
//! and pass; with it, an unreachable server fails them. Each PostgreSQL test creates a schema
//! of its own with a random name, points the store at it with `options[search_path]` in the
//! URL, and drops it afterwards, so the tests run in parallel and repeatedly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::BTreeSet;

use wimse_core::bundle::TrustBundle;
use wimse_core::{TrustDomain, WorkloadId};
use wimse_server::datastore::{
    AttestedAgent, Authority, AuthorityKind, AuthorityState, Datastore, EndpointProfile,
    EntryChange, EntryChangeKind, EntryFilter, FederationRelationship, JoinToken, NewEntry,
    RegistrationEntry, RevokedTransaction, Selector, SqlStore, StoreError, X509PopChallenge,
};

/// The clock of these tests, in seconds since the Unix epoch.
const NOW: i64 = 1_700_000_000;

/// The environment variable naming the PostgreSQL database the suite may use.
const POSTGRES_URL_VAR: &str = "WIMSE_TEST_POSTGRES_URL";

// ---------------------------------------------------------------------------------------------
// Fixtures

fn id(text: &str) -> WorkloadId {
    WorkloadId::parse(text).unwrap()
}

fn sel(text: &str) -> Selector {
    text.parse().unwrap()
}

fn agent_id() -> WorkloadId {
    id("spiffe://example.org/spire/agent/join_token/a1")
}

/// An entry for `path` under the test agent, with `selectors`.
fn entry(path: &str, selectors: &[&str]) -> NewEntry {
    NewEntry {
        spiffe_id: id(&format!("spiffe://example.org{path}")),
        parent_id: agent_id(),
        selectors: selectors.iter().map(|s| sel(s)).collect(),
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: vec![],
        hint: None,
        admin: false,
        downstream: false,
        federates_with: Vec::new(),
    }
}

fn agent(path: &str) -> AttestedAgent {
    AttestedAgent {
        spiffe_id: id(&format!("spiffe://example.org/spire/agent{path}")),
        attestation_type: "join_token".to_owned(),
        serial: "0a1b2c".to_owned(),
        expires_at: NOW + 3600,
        banned: false,
        selectors: vec![sel("unix:hostname:h1")],
        last_seen: NOW,
    }
}

fn authority(id: &str, server_id: &str, not_after: i64) -> Authority {
    Authority {
        id: id.to_owned(),
        server_id: server_id.to_owned(),
        kind: AuthorityKind::Jwt,
        public_data: br#"{"kty":"EC","crv":"P-256","x":"...","y":"..."}"#.to_vec(),
        state: AuthorityState::Active,
        not_after,
        created_at: NOW,
    }
}

fn ids(entries: &[RegistrationEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// A fresh SQLite database in a temporary directory.
struct SqliteDb {
    /// Keeps the directory (and so the file) until the test ends.
    _dir: tempfile::TempDir,
    url: String,
}

impl SqliteDb {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("wimse.db").display()
        );
        Self { _dir: dir, url }
    }
}

/// A fresh schema in the PostgreSQL database of `WIMSE_TEST_POSTGRES_URL`.
struct PgSchema {
    base_url: String,
    schema: String,
}

impl PgSchema {
    /// Creates the schema, or returns `None` (saying so) when no PostgreSQL is configured.
    /// Panics when one is configured but cannot be reached.
    async fn create() -> Option<Self> {
        let Ok(base_url) = std::env::var(POSTGRES_URL_VAR) else {
            eprintln!("PostgreSQL datastore tests NOT RUN: set {POSTGRES_URL_VAR}");
            return None;
        };
        let mut random = [0_u8; 8];
        aws_lc_rs::rand::fill(&mut random).unwrap();
        let schema = format!("wimse_test_{}", hex(&random));
        let mut conn = pg_connect(&base_url).await;
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        Some(Self { base_url, schema })
    }

    /// The URL of the database with this schema first (and only) on the search path.
    fn url(&self) -> String {
        let separator = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options[search_path]={}",
            self.base_url, self.schema
        )
    }

    async fn drop_schema(self) {
        let mut conn = pg_connect(&self.base_url).await;
        sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn pg_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => conn,
        Err(e) => panic!("{POSTGRES_URL_VAR} is set but PostgreSQL cannot be reached: {e}"),
    }
}

use wimse_core::digest::hex;

// The raw helpers use one-connection pools: sqlx's `&mut Connection` executors make futures
// that are not provably `Send`, and these run inside spawned tasks.

/// Runs `sql` on the database at `url`, bypassing the store (to corrupt or inspect rows).
async fn raw_execute(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// Reads one text column of every row `sql` returns, bypassing the store.
async fn raw_strings(url: &str, sql: &str) -> Vec<String> {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }
}

/// Declares each test once per database. Tests in `store` take `&SqlStore`; those in `url`
/// also take the store's URL (to reopen it, or to reach its rows directly).
macro_rules! suite {
    (store: [$($name:ident),* $(,)?], url: [$($url_name:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::SqliteDb::new();
                    let store = super::SqlStore::connect(&db.url).await.unwrap();
                    super::$name(&store).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $url_name() {
                    let db = super::SqliteDb::new();
                    let store = super::SqlStore::connect(&db.url).await.unwrap();
                    super::$url_name(&store, &db.url).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(schema) = super::PgSchema::create().await else { return };
                    let store = super::SqlStore::connect(&schema.url()).await.unwrap();
                    // In a task, so that the schema is dropped even when the test fails.
                    let outcome = tokio::spawn(async move {
                        super::$name(&store).await;
                        store.close().await;
                    })
                    .await;
                    schema.drop_schema().await;
                    if let Err(failure) = outcome {
                        std::panic::resume_unwind(failure.into_panic());
                    }
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $url_name() {
                    let Some(schema) = super::PgSchema::create().await else { return };
                    let url = schema.url();
                    let store = super::SqlStore::connect(&url).await.unwrap();
                    let outcome = tokio::spawn(async move {
                        super::$url_name(&store, &url).await;
                        store.close().await;
                    })
                    .await;
                    schema.drop_schema().await;
                    if let Err(failure) = outcome {
                        std::panic::resume_unwind(failure.into_panic());
                    }
                }
            )*
        }
    };
}

suite! {
    store: [
        entry_is_created_and_read_back,
        unknown_entry_is_none,
        entries_are_filtered_by_spiffe_id_parent_id_and_all_selectors,
        duplicate_entry_is_refused,
        update_into_a_duplicate_is_refused,
        update_replaces_values_and_bumps_revision,
        update_or_delete_of_unknown_entry_is_not_found,
        delete_returns_the_entry_and_removes_it,
        every_entry_change_takes_a_higher_revision,
        changes_since_give_later_changes_latest_state_once_and_tombstones,
        changes_since_zero_are_all_live_entries,
        changes_since_are_paged_by_limit_without_gaps,
        one_change_among_10k_entries_is_a_delta_of_one,
        batch_create_is_all_or_nothing,
        join_token_is_consumed_once,
        join_token_is_consumed_by_exactly_one_of_16_concurrent_callers,
        expired_join_token_is_refused_and_removed,
        expired_join_tokens_are_pruned,
        agents_are_upserted_listed_banned_and_evicted,
        ban_survives_reattestation,
        ban_or_evict_of_unknown_agent_is_not_found,
        agents_expired_long_enough_are_purged_unless_banned,
        authorities_of_two_replicas_are_both_listed,
        expired_authorities_are_excluded_and_pruned,
        authority_is_updated_in_place_and_changes_state,
        bundle_sequence_bumps_are_atomic_under_16_concurrent_callers,
        entries_and_agents_are_counted,
        agent_entries_are_its_descendants_only_in_a_revision_range,
        agent_entries_survive_a_cycle_of_entries,
        pruning_tombstones_raises_the_horizon_to_the_highest_removed,
        x509pop_challenge_is_consumed_once_by_one_of_16_callers,
        expired_x509pop_challenge_is_refused_and_pruned,
        a_new_x509pop_challenge_replaces_the_certificates_previous_one,
        federation_relationships_are_created_updated_listed_and_deleted,
        federated_bundles_are_kept_per_trust_domain_and_guarded_by_entries,
        entries_keep_their_federated_trust_domains_sorted_and_unique,
        a_grant_is_redeemed_by_exactly_one_of_16_concurrent_callers_until_pruned,
        a_revoked_transaction_stays_revoked_until_pruned_and_is_listed,
    ],
    url: [
        reopened_store_keeps_everything,
        join_token_is_stored_only_as_its_hash,
        corrupt_stored_spiffe_id_is_invalid_data,
        corrupt_stored_rows_of_every_kind_are_invalid_data,
    ],
}

// ---------------------------------------------------------------------------------------------
// Registration entries

async fn entry_is_created_and_read_back(store: &SqlStore) {
    let mut new = entry("/api", &["unix:uid:1000", "k8s:ns:prod", "unix:uid:1000"]);
    new.dns_names = vec!["api.example.org".to_owned()];
    new.hint = Some("frontend".to_owned());
    new.admin = true;
    let created = store.create_entry(new.clone()).await.unwrap();

    // A random UUID v4.
    assert_eq!(created.id.len(), 36);
    assert_eq!(created.id.as_bytes()[14], b'4');
    assert!(created.revision > 0);
    assert!(created.created_at > 0);
    // Sorted, without the duplicate.
    assert_eq!(
        created.selectors,
        vec![sel("k8s:ns:prod"), sel("unix:uid:1000")]
    );
    assert_eq!(created.spiffe_id, new.spiffe_id);
    assert_eq!(created.parent_id, new.parent_id);
    assert_eq!(created.dns_names, new.dns_names);
    assert_eq!(created.hint.as_deref(), Some("frontend"));
    assert!(created.admin);
    assert!(!created.downstream);
    assert_eq!((created.x509_ttl, created.jwt_ttl), (3600, 300));

    let read = store.get_entry(&created.id).await.unwrap();
    assert_eq!(read, Some(created));
}

async fn unknown_entry_is_none(store: &SqlStore) {
    assert_eq!(store.get_entry("no-such-entry").await.unwrap(), None);
}

async fn entries_are_filtered_by_spiffe_id_parent_id_and_all_selectors(store: &SqlStore) {
    let a = store
        .create_entry(entry("/a", &["unix:uid:1", "unix:gid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    let mut other_parent = entry("/a", &["unix:uid:2"]);
    other_parent.parent_id = id("spiffe://example.org/spire/agent/join_token/a2");
    let c = store.create_entry(other_parent).await.unwrap();

    let all = store.list_entries(&EntryFilter::default()).await.unwrap();
    assert_eq!(ids(&all), ids(&[a.clone(), b.clone(), c.clone()]));

    let by_spiffe_id = EntryFilter {
        spiffe_id: Some(id("spiffe://example.org/a")),
        ..EntryFilter::default()
    };
    assert_eq!(
        ids(&store.list_entries(&by_spiffe_id).await.unwrap()),
        ids(&[a.clone(), c.clone()])
    );

    let by_parent = EntryFilter {
        parent_id: Some(agent_id()),
        ..EntryFilter::default()
    };
    assert_eq!(
        ids(&store.list_entries(&by_parent).await.unwrap()),
        ids(&[a.clone(), b.clone()])
    );

    // Entries having all of the selectors (and possibly more).
    let uid1 = EntryFilter {
        selectors: vec![sel("unix:uid:1")],
        ..EntryFilter::default()
    };
    assert_eq!(
        ids(&store.list_entries(&uid1).await.unwrap()),
        ids(&[a.clone(), b.clone()])
    );
    let uid1_and_gid1 = EntryFilter {
        selectors: vec![sel("unix:gid:1"), sel("unix:uid:1"), sel("unix:gid:1")],
        ..EntryFilter::default()
    };
    assert_eq!(
        ids(&store.list_entries(&uid1_and_gid1).await.unwrap()),
        ids(std::slice::from_ref(&a))
    );
    let no_match = EntryFilter {
        selectors: vec![sel("unix:uid:1"), sel("unix:uid:2")],
        ..EntryFilter::default()
    };
    assert!(store.list_entries(&no_match).await.unwrap().is_empty());

    // All fields at once.
    let combined = EntryFilter {
        spiffe_id: Some(id("spiffe://example.org/a")),
        parent_id: Some(agent_id()),
        selectors: vec![sel("unix:uid:1")],
    };
    assert_eq!(store.list_entries(&combined).await.unwrap(), vec![a]);
}

async fn duplicate_entry_is_refused(store: &SqlStore) {
    store
        .create_entry(entry("/api", &["unix:uid:1", "unix:gid:2"]))
        .await
        .unwrap();
    let revision = store.current_revision().await.unwrap();

    // Same identity, parent and selector set, in another order and with a repeat.
    let again = entry("/api", &["unix:gid:2", "unix:uid:1", "unix:uid:1"]);
    assert_eq!(
        store.create_entry(again).await,
        Err(StoreError::DuplicateEntry)
    );
    assert_eq!(store.current_revision().await.unwrap(), revision);
    assert_eq!(
        store
            .list_entries(&EntryFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // A different selector set is another entry.
    store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
}

async fn update_into_a_duplicate_is_refused(store: &SqlStore) {
    store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    assert_eq!(
        store
            .update_entry(&b.id, entry("/a", &["unix:uid:1"]))
            .await,
        Err(StoreError::DuplicateEntry)
    );
    assert_eq!(store.get_entry(&b.id).await.unwrap(), Some(b));
}

async fn update_replaces_values_and_bumps_revision(store: &SqlStore) {
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    let mut changed = entry("/api-v2", &["unix:uid:2", "k8s:sa:api"]);
    changed.x509_ttl = 60;
    changed.downstream = true;
    let updated = store
        .update_entry(&created.id, changed.clone())
        .await
        .unwrap();

    assert_eq!(updated.id, created.id);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.revision > created.revision);
    assert_eq!(updated.spiffe_id, changed.spiffe_id);
    assert_eq!(
        updated.selectors,
        vec![sel("k8s:sa:api"), sel("unix:uid:2")]
    );
    assert_eq!(updated.x509_ttl, 60);
    assert!(updated.downstream);
    assert_eq!(
        store.get_entry(&created.id).await.unwrap(),
        Some(updated.clone())
    );

    // The selector index follows the update.
    let old = EntryFilter {
        selectors: vec![sel("unix:uid:1")],
        ..EntryFilter::default()
    };
    assert!(store.list_entries(&old).await.unwrap().is_empty());
    let new = EntryFilter {
        selectors: vec![sel("k8s:sa:api")],
        ..EntryFilter::default()
    };
    assert_eq!(store.list_entries(&new).await.unwrap(), vec![updated]);
}

async fn update_or_delete_of_unknown_entry_is_not_found(store: &SqlStore) {
    let revision = store.current_revision().await.unwrap();
    assert_eq!(
        store
            .update_entry("nope", entry("/x", &["unix:uid:1"]))
            .await,
        Err(StoreError::EntryNotFound("nope".to_owned()))
    );
    assert_eq!(
        store.delete_entry("nope").await,
        Err(StoreError::EntryNotFound("nope".to_owned()))
    );
    // A failed change takes no revision.
    assert_eq!(store.current_revision().await.unwrap(), revision);
}

async fn delete_returns_the_entry_and_removes_it(store: &SqlStore) {
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    let deleted = store.delete_entry(&created.id).await.unwrap();
    assert_eq!(deleted, created);
    assert_eq!(store.get_entry(&created.id).await.unwrap(), None);
    let by_selector = EntryFilter {
        selectors: vec![sel("unix:uid:1")],
        ..EntryFilter::default()
    };
    assert!(store.list_entries(&by_selector).await.unwrap().is_empty());
    // The same entry can be created again.
    store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
}

async fn every_entry_change_takes_a_higher_revision(store: &SqlStore) {
    assert_eq!(store.current_revision().await.unwrap(), 0);
    let a = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    assert_eq!(store.current_revision().await.unwrap(), a.revision);
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    assert!(b.revision > a.revision);
    let a2 = store
        .update_entry(&a.id, entry("/a", &["unix:uid:3"]))
        .await
        .unwrap();
    assert!(a2.revision > b.revision);
    store.delete_entry(&b.id).await.unwrap();
    let after_delete = store.current_revision().await.unwrap();
    assert!(after_delete > a2.revision);
}

async fn changes_since_give_later_changes_latest_state_once_and_tombstones(store: &SqlStore) {
    let a = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    let c = store
        .create_entry(entry("/c", &["unix:uid:1"]))
        .await
        .unwrap();
    let cursor = store.current_revision().await.unwrap();

    // After the cursor: `a` changes twice, `b` is deleted, `d` is created; `c` is untouched.
    store
        .update_entry(&a.id, entry("/a", &["unix:uid:2"]))
        .await
        .unwrap();
    let a_latest = store
        .update_entry(&a.id, entry("/a", &["unix:uid:3"]))
        .await
        .unwrap();
    store.delete_entry(&b.id).await.unwrap();
    let d = store
        .create_entry(entry("/d", &["unix:uid:1"]))
        .await
        .unwrap();

    let (changes, current) = store.entry_changes_since(cursor, 100).await.unwrap();
    assert_eq!(current, store.current_revision().await.unwrap());
    assert_eq!(current, d.revision);

    let revisions: Vec<i64> = changes.iter().map(|c| c.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert!(revisions.iter().all(|&r| r > cursor));

    let summary: Vec<(&str, bool)> = changes
        .iter()
        .map(|c| {
            (
                c.entry_id.as_str(),
                matches!(c.kind, EntryChangeKind::Delete),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (a.id.as_str(), false),
            (b.id.as_str(), true),
            (d.id.as_str(), false)
        ]
    );
    assert_eq!(
        changes[0],
        EntryChange {
            revision: a_latest.revision,
            entry_id: a.id.clone(),
            kind: EntryChangeKind::Upsert(Box::new(a_latest)),
        }
    );
    assert!(!changes.iter().any(|change| change.entry_id == c.id));

    // Up to date: nothing more.
    let (nothing, same) = store.entry_changes_since(current, 100).await.unwrap();
    assert!(nothing.is_empty());
    assert_eq!(same, current);
}

async fn changes_since_zero_are_all_live_entries(store: &SqlStore) {
    let a = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    store.delete_entry(&b.id).await.unwrap();
    let c = store
        .create_entry(entry("/c", &["unix:uid:1"]))
        .await
        .unwrap();

    let (changes, current) = store.entry_changes_since(0, 100).await.unwrap();
    assert_eq!(current, c.revision);
    let upserts: Vec<RegistrationEntry> = changes
        .into_iter()
        .map(|change| match change.kind {
            EntryChangeKind::Upsert(entry) => *entry,
            EntryChangeKind::Delete => panic!("a first sync has nothing to delete"),
        })
        .collect();
    assert_eq!(upserts, vec![a, c]);
}

async fn changes_since_are_paged_by_limit_without_gaps(store: &SqlStore) {
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            store
                .create_entry(entry(&format!("/e{i}"), &["unix:uid:1"]))
                .await
                .unwrap(),
        );
    }
    store.delete_entry(&created[2].id).await.unwrap();
    store
        .update_entry(&created[0].id, entry("/e0", &["unix:uid:9"]))
        .await
        .unwrap();

    // Page through from a cursor before everything except the first entry.
    let mut cursor = created[0].revision;
    let mut seen = Vec::new();
    loop {
        let (page, current) = store.entry_changes_since(cursor, 2).await.unwrap();
        assert!(page.len() <= 2);
        if let Some(last) = page.last() {
            cursor = last.revision;
        }
        seen.extend(page.iter().map(|c| c.entry_id.clone()));
        if page.len() < 2 {
            assert_eq!(cursor.max(current), current);
            break;
        }
    }
    // Entries 1, 3, 4, 5, 6 live; 2 deleted; 0 updated last: each once, in revision order.
    let expected: Vec<String> = [1, 3, 4, 5, 6, 2, 0]
        .iter()
        .map(|&i| created[i].id.clone())
        .collect();
    assert_eq!(seen, expected);

    assert!(store.entry_changes_since(0, 0).await.unwrap().0.is_empty());
}

async fn one_change_among_10k_entries_is_a_delta_of_one(store: &SqlStore) {
    let batch: Vec<NewEntry> = (0..10_000)
        .map(|i| entry(&format!("/w/{i}"), &["unix:uid:1000"]))
        .collect();
    let created = store.create_entries(batch).await.unwrap();
    assert_eq!(created.len(), 10_000);
    let revisions: BTreeSet<i64> = created.iter().map(|e| e.revision).collect();
    assert_eq!(revisions.len(), 10_000, "every entry has its own revision");

    let cursor = store.current_revision().await.unwrap();
    let updated = store
        .update_entry(&created[4_321].id, entry("/w/4321", &["unix:uid:1001"]))
        .await
        .unwrap();

    let (changes, current) = store.entry_changes_since(cursor, 1_000).await.unwrap();
    assert_eq!(current, updated.revision);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].entry_id, updated.id);
    assert_eq!(changes[0].kind, EntryChangeKind::Upsert(Box::new(updated)));
}

async fn batch_create_is_all_or_nothing(store: &SqlStore) {
    let batch = vec![
        entry("/a", &["unix:uid:1"]),
        entry("/b", &["unix:uid:1"]),
        entry("/a", &["unix:uid:1"]),
    ];
    assert_eq!(
        store.create_entries(batch).await,
        Err(StoreError::DuplicateEntry)
    );
    assert!(
        store
            .list_entries(&EntryFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert!(store.create_entries(Vec::new()).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Join tokens

async fn join_token_is_consumed_once(store: &SqlStore) {
    let token = JoinToken::new("a-join-token", NOW + 600);
    store.create_join_token(&token).await.unwrap();
    assert_eq!(store.consume_join_token(&token.hash, NOW).await, Ok(()));
    assert_eq!(
        store.consume_join_token(&token.hash, NOW).await,
        Err(StoreError::TokenNotFound)
    );
    assert_eq!(
        store
            .consume_join_token(&JoinToken::hash("never-issued"), NOW)
            .await,
        Err(StoreError::TokenNotFound)
    );
}

async fn join_token_is_consumed_by_exactly_one_of_16_concurrent_callers(store: &SqlStore) {
    let token = JoinToken::new("contended", NOW + 600);
    store.create_join_token(&token).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_join_token(&token.hash, NOW).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::TokenNotFound) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(wins, 1);
}

async fn a_grant_is_redeemed_by_exactly_one_of_16_concurrent_callers_until_pruned(
    store: &SqlStore,
) {
    let partner = TrustDomain::new("partner.example").unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, partner) = (store.clone(), partner.clone());
            tokio::spawn(async move { store.redeem_grant(&partner, "j-1", NOW + 60).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    // The same `jti` of another trust domain is another grant.
    let other = TrustDomain::new("other.example").unwrap();
    assert!(store.redeem_grant(&other, "j-1", NOW + 60).await.unwrap());
    // Forgotten once expired.
    assert_eq!(store.prune_redeemed_grants(NOW + 59).await.unwrap(), 0);
    assert_eq!(store.prune_redeemed_grants(NOW + 60).await.unwrap(), 2);
    assert!(
        store
            .redeem_grant(&partner, "j-1", NOW + 120)
            .await
            .unwrap()
    );
}

async fn a_revoked_transaction_stays_revoked_until_pruned_and_is_listed(store: &SqlStore) {
    assert!(!store.transaction_revoked("txn-1").await.unwrap());
    assert!(
        store
            .revoke_transaction("txn-1", NOW, NOW + 100)
            .await
            .unwrap()
    );
    assert!(store.transaction_revoked("txn-1").await.unwrap());
    assert!(!store.transaction_revoked("txn-2").await.unwrap());
    // Revoking again says so, keeps the first time and takes the later expiry only.
    assert!(
        !store
            .revoke_transaction("txn-1", NOW + 5, NOW + 200)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_transaction("txn-1", NOW + 6, NOW + 150)
            .await
            .unwrap()
    );
    assert!(
        store
            .revoke_transaction("txn-0", NOW + 1, NOW + 50)
            .await
            .unwrap()
    );
    let revoked = |txn: &str, revoked_at, expires_at| RevokedTransaction {
        txn: txn.into(),
        revoked_at,
        expires_at,
    };
    assert_eq!(
        store.list_revoked_transactions().await.unwrap(),
        [
            revoked("txn-1", NOW, NOW + 200),
            revoked("txn-0", NOW + 1, NOW + 50)
        ]
    );
    // Of 16 replicas revoking one transaction at once, one is first.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.revoke_transaction("txn-3", NOW, NOW + 10).await })
        })
        .collect();
    let mut firsts = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
    assert_eq!(store.prune_revoked_transactions(NOW + 49).await.unwrap(), 1);
    assert_eq!(store.prune_revoked_transactions(NOW + 50).await.unwrap(), 1);
    assert!(!store.transaction_revoked("txn-0").await.unwrap());
    assert!(store.transaction_revoked("txn-1").await.unwrap());
    assert_eq!(
        store.prune_revoked_transactions(NOW + 200).await.unwrap(),
        1
    );
    assert!(store.list_revoked_transactions().await.unwrap().is_empty());
}

async fn expired_join_token_is_refused_and_removed(store: &SqlStore) {
    let token = JoinToken::new("stale", NOW);
    store.create_join_token(&token).await.unwrap();
    assert_eq!(
        store.consume_join_token(&token.hash, NOW).await,
        Err(StoreError::TokenExpired)
    );
    assert_eq!(
        store.consume_join_token(&token.hash, NOW - 10).await,
        Err(StoreError::TokenNotFound)
    );
}

async fn expired_join_tokens_are_pruned(store: &SqlStore) {
    let stale = JoinToken::new("stale", NOW - 1);
    let fresh = JoinToken::new("fresh", NOW + 60);
    store.create_join_token(&stale).await.unwrap();
    store.create_join_token(&fresh).await.unwrap();
    assert_eq!(store.prune_join_tokens(NOW).await.unwrap(), 1);
    assert_eq!(
        store.consume_join_token(&stale.hash, NOW - 100).await,
        Err(StoreError::TokenNotFound)
    );
    assert_eq!(store.consume_join_token(&fresh.hash, NOW).await, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Agent sync at scale, tombstone retention, x509pop challenges

fn wall_clock() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

async fn agent_entries_are_its_descendants_only_in_a_revision_range(store: &SqlStore) {
    let other = id("spiffe://example.org/spire/agent/join_token/other");
    let mine = store
        .create_entry(entry("/web", &["unix:uid:1"]))
        .await
        .unwrap();
    let theirs = store
        .create_entry(NewEntry {
            parent_id: other.clone(),
            ..entry("/theirs", &["unix:uid:2"])
        })
        .await
        .unwrap();
    let child = store
        .create_entry(NewEntry {
            parent_id: mine.spiffe_id.clone(),
            ..entry("/web/child", &["unix:uid:3"])
        })
        .await
        .unwrap();
    let grandchild = store
        .create_entry(NewEntry {
            parent_id: child.spiffe_id.clone(),
            ..entry("/web/child/grand", &["unix:uid:4"])
        })
        .await
        .unwrap();
    // Parented by the other agent's entry: not ours.
    store
        .create_entry(NewEntry {
            parent_id: theirs.spiffe_id.clone(),
            ..entry("/theirs/child", &["unix:uid:5"])
        })
        .await
        .unwrap();

    let all = store
        .agent_entries(&agent_id(), 0, i64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![mine.id.clone(), child.id.clone(), grandchild.id.clone()],
        "in revision order"
    );
    let every_id: Vec<String> = store
        .list_entries(&EntryFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let among = store
        .agent_entries_among(&agent_id(), &every_id)
        .await
        .unwrap();
    assert_eq!(
        among,
        [mine.id.clone(), child.id.clone(), grandchild.id.clone()]
            .into_iter()
            .collect()
    );
    let asked = store
        .agent_entries_among(&agent_id(), &[grandchild.id.clone(), theirs.id.clone()])
        .await
        .unwrap();
    assert_eq!(asked, [grandchild.id.clone()].into_iter().collect());
    assert!(
        store
            .agent_entries_among(&agent_id(), &[])
            .await
            .unwrap()
            .is_empty()
    );
    // The range (after, until] and the limit.
    let range = store
        .agent_entries(&agent_id(), mine.revision, grandchild.revision - 1, 100)
        .await
        .unwrap();
    assert_eq!(ids(&range), BTreeSet::from([child.id.clone()]));
    let limited = store
        .agent_entries(&agent_id(), 0, i64::MAX, 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(
        store
            .agent_entries_among(&other, &every_id)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn agent_entries_survive_a_cycle_of_entries(store: &SqlStore) {
    // a is under the agent; b under a; and a second entry for a's identity under b.
    let a = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(NewEntry {
            parent_id: a.spiffe_id.clone(),
            ..entry("/b", &["unix:uid:1"])
        })
        .await
        .unwrap();
    store
        .create_entry(NewEntry {
            parent_id: b.spiffe_id.clone(),
            ..entry("/a", &["unix:uid:1"])
        })
        .await
        .unwrap();
    let all = store
        .agent_entries(&agent_id(), 0, i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let every_id: Vec<String> = all.into_iter().map(|e| e.id).collect();
    assert_eq!(
        store
            .agent_entries_among(&agent_id(), &every_id)
            .await
            .unwrap()
            .len(),
        3
    );
    // An entry parented by one in the cycle but not reaching the agent is not its.
    let stray = store
        .create_entry(NewEntry {
            parent_id: id("spiffe://example.org/nowhere"),
            ..entry("/stray", &["unix:uid:1"])
        })
        .await
        .unwrap();
    assert!(
        store
            .agent_entries_among(&agent_id(), &[stray.id])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn pruning_tombstones_raises_the_horizon_to_the_highest_removed(store: &SqlStore) {
    assert_eq!(store.tombstone_horizon().await.unwrap(), 0);
    let a = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    let b = store
        .create_entry(entry("/b", &["unix:uid:1"]))
        .await
        .unwrap();
    store.delete_entry(&a.id).await.unwrap();
    store.delete_entry(&b.id).await.unwrap();
    let (_, deleted_at) = store.entry_changes_since(0, 10).await.unwrap();
    let now = wall_clock();
    // Within the retention: kept.
    assert_eq!(store.prune_tombstones(now - 3600).await.unwrap(), 0);
    assert_eq!(store.tombstone_horizon().await.unwrap(), 0);
    // Past it: removed, and the horizon is the revision of the latest one removed.
    assert_eq!(store.prune_tombstones(now + 1).await.unwrap(), 2);
    assert_eq!(store.tombstone_horizon().await.unwrap(), deleted_at);
    let (changes, _) = store.entry_changes_since(a.revision, 10).await.unwrap();
    assert!(changes.is_empty());
    // Never lowered.
    assert_eq!(store.prune_tombstones(now + 1).await.unwrap(), 0);
    assert_eq!(store.tombstone_horizon().await.unwrap(), deleted_at);
}

fn challenge(seed: u8, expires_at: i64) -> X509PopChallenge {
    X509PopChallenge {
        nonce_hash: [seed; 32],
        fingerprint: format!("{seed:02x}").repeat(32),
        expires_at,
    }
}

async fn x509pop_challenge_is_consumed_once_by_one_of_16_callers(store: &SqlStore) {
    let c = challenge(1, NOW + 60);
    store.create_x509pop_challenge(&c).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let hash = c.nonce_hash;
            tokio::spawn(async move { store.consume_x509pop_challenge(&hash, NOW).await })
        })
        .collect();
    let mut wins = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(fingerprint) => wins.push(fingerprint),
            Err(StoreError::ChallengeNotFound) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(wins, vec![c.fingerprint.clone()]);
}

async fn expired_x509pop_challenge_is_refused_and_pruned(store: &SqlStore) {
    let stale = challenge(2, NOW);
    let fresh = challenge(3, NOW + 60);
    let other_stale = challenge(4, NOW - 5);
    for c in [&stale, &fresh, &other_stale] {
        store.create_x509pop_challenge(c).await.unwrap();
    }
    assert_eq!(
        store
            .consume_x509pop_challenge(&stale.nonce_hash, NOW)
            .await,
        Err(StoreError::ChallengeExpired)
    );
    assert_eq!(store.prune_x509pop_challenges(NOW).await.unwrap(), 1);
    assert_eq!(
        store
            .consume_x509pop_challenge(&other_stale.nonce_hash, NOW - 100)
            .await,
        Err(StoreError::ChallengeNotFound)
    );
    assert_eq!(
        store
            .consume_x509pop_challenge(&fresh.nonce_hash, NOW)
            .await,
        Ok(fresh.fingerprint.clone())
    );
}

async fn a_new_x509pop_challenge_replaces_the_certificates_previous_one(store: &SqlStore) {
    let first = challenge(5, NOW + 60);
    let second = X509PopChallenge {
        nonce_hash: [6; 32],
        ..first.clone()
    };
    let other_certificate = challenge(7, NOW + 60);
    for c in [&first, &other_certificate, &second] {
        store.create_x509pop_challenge(c).await.unwrap();
    }
    assert_eq!(
        store
            .consume_x509pop_challenge(&first.nonce_hash, NOW)
            .await,
        Err(StoreError::ChallengeNotFound)
    );
    assert_eq!(
        store
            .consume_x509pop_challenge(&second.nonce_hash, NOW)
            .await,
        Ok(second.fingerprint.clone())
    );
    assert!(
        store
            .consume_x509pop_challenge(&other_certificate.nonce_hash, NOW)
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Agents

async fn entries_and_agents_are_counted(store: &SqlStore) {
    assert_eq!(store.count_entries().await.unwrap(), 0);
    assert_eq!(store.count_agents().await.unwrap(), 0);
    let created = store
        .create_entry(entry("/a", &["unix:uid:1"]))
        .await
        .unwrap();
    store
        .create_entry(entry("/b", &["unix:uid:2"]))
        .await
        .unwrap();
    store.upsert_agent(&agent("/one")).await.unwrap();
    assert_eq!(store.count_entries().await.unwrap(), 2);
    assert_eq!(store.count_agents().await.unwrap(), 1);
    store.delete_entry(&created.id).await.unwrap();
    assert_eq!(store.count_entries().await.unwrap(), 1);
}

async fn agents_are_upserted_listed_banned_and_evicted(store: &SqlStore) {
    let one = agent("/one");
    let two = AttestedAgent {
        attestation_type: "x509pop".to_owned(),
        selectors: vec![sel("x509pop:cn:two"), sel("x509pop:cn:two"), sel("a:b")],
        ..agent("/two")
    };
    store.upsert_agent(&two).await.unwrap();
    store.upsert_agent(&one).await.unwrap();

    let read = store.get_agent(&two.spiffe_id).await.unwrap().unwrap();
    assert_eq!(read.selectors, vec![sel("a:b"), sel("x509pop:cn:two")]);
    assert_eq!(read.attestation_type, "x509pop");

    // Re-attestation renews in place.
    let renewed = AttestedAgent {
        serial: "ff00".to_owned(),
        expires_at: NOW + 7200,
        last_seen: NOW + 10,
        ..one.clone()
    };
    store.upsert_agent(&renewed).await.unwrap();
    let listed = store.list_agents().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], renewed);
    assert_eq!(listed[1].spiffe_id, two.spiffe_id);

    store.set_agent_banned(&one.spiffe_id, true).await.unwrap();
    assert!(
        store
            .get_agent(&one.spiffe_id)
            .await
            .unwrap()
            .unwrap()
            .banned
    );
    store.set_agent_banned(&one.spiffe_id, false).await.unwrap();
    assert!(
        !store
            .get_agent(&one.spiffe_id)
            .await
            .unwrap()
            .unwrap()
            .banned
    );

    store.delete_agent(&one.spiffe_id).await.unwrap();
    assert_eq!(store.get_agent(&one.spiffe_id).await.unwrap(), None);
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
}

async fn ban_survives_reattestation(store: &SqlStore) {
    let a = agent("/banned");
    store.upsert_agent(&a).await.unwrap();
    store.set_agent_banned(&a.spiffe_id, true).await.unwrap();
    store.upsert_agent(&a).await.unwrap();
    assert!(store.get_agent(&a.spiffe_id).await.unwrap().unwrap().banned);
}

async fn ban_or_evict_of_unknown_agent_is_not_found(store: &SqlStore) {
    let ghost = id("spiffe://example.org/spire/agent/ghost");
    let not_found = Err(StoreError::AgentNotFound(ghost.to_string()));
    assert_eq!(store.set_agent_banned(&ghost, true).await, not_found);
    assert_eq!(store.delete_agent(&ghost).await, not_found);
}

async fn agents_expired_long_enough_are_purged_unless_banned(store: &SqlStore) {
    let at = |path: &str, expires_at: i64| AttestedAgent {
        expires_at,
        ..agent(path)
    };
    let (gone_b, gone_a) = (at("/gone-b", NOW - 7200), at("/gone-a", NOW - 3600));
    let (recent, live) = (at("/recent", NOW - 10), at("/live", NOW + 3600));
    let banned = at("/banned", NOW - 7200);
    for a in [&gone_b, &gone_a, &recent, &live, &banned] {
        store.upsert_agent(a).await.unwrap();
    }
    store
        .set_agent_banned(&banned.spiffe_id, true)
        .await
        .unwrap();
    // Expired an hour ago or more: at the bound, too; sorted by ID.
    let purged = store.purge_agents(NOW - 3600).await.unwrap();
    assert_eq!(
        purged,
        vec![gone_a.spiffe_id.clone(), gone_b.spiffe_id.clone()]
    );
    let left: Vec<WorkloadId> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.spiffe_id)
        .collect();
    assert_eq!(
        left,
        vec![banned.spiffe_id.clone(), live.spiffe_id, recent.spiffe_id]
    );
    assert!(store.purge_agents(NOW - 3600).await.unwrap().is_empty());
    // The ban outlives any certificate.
    assert!(store.purge_agents(NOW + 86_400).await.unwrap().len() == 2);
    assert!(
        store
            .get_agent(&banned.spiffe_id)
            .await
            .unwrap()
            .unwrap()
            .banned
    );
}

// ---------------------------------------------------------------------------------------------
// Authorities and the bundle sequence

async fn authorities_of_two_replicas_are_both_listed(store: &SqlStore) {
    // Two replicas may even publish the same key ID: the pair is the key.
    let mut x509 = authority("ab:cd", "replica-1", NOW + 86_400);
    x509.kind = AuthorityKind::X509;
    x509.public_data = vec![0x30, 0x82, 0x01, 0x00, 0xff, 0x00];
    let jwt_1 = authority("kid-1", "replica-1", NOW + 86_400);
    let jwt_2 = authority("kid-1", "replica-2", NOW + 86_400);
    let mut wit_2 = authority("kid-2", "replica-2", NOW + 86_400);
    wit_2.kind = AuthorityKind::Wit;
    wit_2.state = AuthorityState::Prepared;
    for a in [&x509, &jwt_1, &jwt_2, &wit_2] {
        store.put_authority(a).await.unwrap();
    }

    let listed = store.list_authorities(NOW).await.unwrap();
    assert_eq!(listed.len(), 4);
    for a in [&x509, &jwt_1, &jwt_2, &wit_2] {
        assert!(listed.contains(a), "{a:?} missing");
    }
    let replicas: BTreeSet<&str> = listed.iter().map(|a| a.server_id.as_str()).collect();
    assert_eq!(replicas, BTreeSet::from(["replica-1", "replica-2"]));
}

async fn expired_authorities_are_excluded_and_pruned(store: &SqlStore) {
    let live = authority("live", "replica-1", NOW + 1);
    let expired = authority("expired", "replica-2", NOW);
    store.put_authority(&live).await.unwrap();
    store.put_authority(&expired).await.unwrap();
    assert_eq!(
        store.list_authorities(NOW).await.unwrap(),
        vec![live.clone()]
    );
    // Still stored until pruned.
    assert_eq!(store.list_authorities(NOW - 1).await.unwrap().len(), 2);
    assert_eq!(store.prune_authorities(NOW).await.unwrap(), 1);
    assert_eq!(store.list_authorities(NOW - 1).await.unwrap(), vec![live]);
}

async fn authority_is_updated_in_place_and_changes_state(store: &SqlStore) {
    let original = authority("kid", "replica-1", NOW + 100);
    store.put_authority(&original).await.unwrap();

    let mut replaced = original.clone();
    replaced.not_after = NOW + 200;
    replaced.created_at = NOW + 50;
    store.put_authority(&replaced).await.unwrap();
    let listed = store.list_authorities(NOW).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].not_after, NOW + 200);
    assert_eq!(
        listed[0].created_at, NOW,
        "the original creation time stays"
    );

    store
        .set_authority_state("kid", "replica-1", AuthorityState::Retired)
        .await
        .unwrap();
    assert_eq!(
        store.list_authorities(NOW).await.unwrap()[0].state,
        AuthorityState::Retired
    );
    assert_eq!(
        store
            .set_authority_state("kid", "replica-2", AuthorityState::Active)
            .await,
        Err(StoreError::AuthorityNotFound {
            id: "kid".to_owned(),
            server_id: "replica-2".to_owned()
        })
    );
    // Tainted is stored like any state; a revoked authority leaves at once, and only the
    // named replica's.
    store
        .set_authority_state("kid", "replica-1", AuthorityState::Tainted)
        .await
        .unwrap();
    store
        .put_authority(&authority("kid", "replica-2", NOW + 100))
        .await
        .unwrap();
    let listed = store.list_authorities(NOW).await.unwrap();
    assert_eq!(listed[0].state, AuthorityState::Tainted);
    assert!(store.delete_authority("kid", "replica-1").await.unwrap());
    assert!(!store.delete_authority("kid", "replica-1").await.unwrap());
    let listed = store.list_authorities(NOW).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].server_id, "replica-2");
}

async fn bundle_sequence_bumps_are_atomic_under_16_concurrent_callers(store: &SqlStore) {
    let start = store.bundle_sequence().await.unwrap();
    assert_eq!(start, 0);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.bump_bundle_sequence().await.unwrap() })
        })
        .collect();
    let mut values = BTreeSet::new();
    for task in tasks {
        values.insert(task.await.unwrap());
    }
    // Every caller saw its own new value.
    assert_eq!(values, (start + 1..=start + 16).collect());
    assert_eq!(store.bundle_sequence().await.unwrap(), start + 16);
}

// ---------------------------------------------------------------------------------------------
// Durability and hostile rows

async fn reopened_store_keeps_everything(store: &SqlStore, url: &str) {
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    let doomed = store
        .create_entry(entry("/old", &["unix:uid:2"]))
        .await
        .unwrap();
    store.delete_entry(&doomed.id).await.unwrap();
    let token = JoinToken::new("kept", NOW + 600);
    store.create_join_token(&token).await.unwrap();
    let a = agent("/kept");
    store.upsert_agent(&a).await.unwrap();
    let auth = authority("kid", "replica-1", NOW + 100);
    store.put_authority(&auth).await.unwrap();
    store.bump_bundle_sequence().await.unwrap();
    let revision = store.current_revision().await.unwrap();
    store.close().await;

    let reopened = SqlStore::connect(url).await.unwrap();
    assert_eq!(
        reopened.get_entry(&created.id).await.unwrap(),
        Some(created)
    );
    assert_eq!(reopened.current_revision().await.unwrap(), revision);
    let (changes, _) = reopened
        .entry_changes_since(doomed.revision, 10)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, EntryChangeKind::Delete);
    assert_eq!(reopened.get_agent(&a.spiffe_id).await.unwrap(), Some(a));
    assert_eq!(reopened.list_authorities(NOW).await.unwrap(), vec![auth]);
    assert_eq!(reopened.bundle_sequence().await.unwrap(), 1);
    assert_eq!(reopened.consume_join_token(&token.hash, NOW).await, Ok(()));
    reopened.close().await;
}

async fn join_token_is_stored_only_as_its_hash(store: &SqlStore, url: &str) {
    let secret = "s3cret-join-token-value";
    store
        .create_join_token(&JoinToken::new(secret, NOW + 60))
        .await
        .unwrap();
    let stored = raw_strings(url, "SELECT token_hash FROM join_tokens").await;
    assert_eq!(
        stored,
        vec![hex(&wimse_core::digest::sha256(secret.as_bytes()))]
    );
    assert!(!format!("{:?}", JoinToken::new(secret, 0)).contains(secret));
}

async fn corrupt_stored_spiffe_id_is_invalid_data(store: &SqlStore, url: &str) {
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    raw_execute(
        url,
        &format!(
            "UPDATE entries SET spiffe_id = 'not a workload id' WHERE id = '{}'",
            created.id
        ),
    )
    .await;

    let invalid = |result: Result<_, StoreError>| matches!(result, Err(StoreError::InvalidData(message)) if message.contains(&created.id));
    assert!(invalid(store.get_entry(&created.id).await.map(|_| ())));
    assert!(invalid(
        store
            .list_entries(&EntryFilter::default())
            .await
            .map(|_| ())
    ));
    assert!(invalid(store.entry_changes_since(0, 10).await.map(|_| ())));
    assert!(invalid(store.delete_entry(&created.id).await.map(|_| ())));
}

async fn corrupt_stored_rows_of_every_kind_are_invalid_data(store: &SqlStore, url: &str) {
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    let a = agent("/a");
    store.upsert_agent(&a).await.unwrap();
    store
        .put_authority(&authority("kid", "replica-1", NOW + 100))
        .await
        .unwrap();

    let cases = [
        format!(
            "UPDATE entries SET selectors = '[\"no-colon\"]' WHERE id = '{}'",
            created.id
        ),
        format!(
            "UPDATE entries SET selectors = 'not json' WHERE id = '{}'",
            created.id
        ),
        format!(
            "UPDATE entries SET dns_names = '{{}}' WHERE id = '{}'",
            created.id
        ),
        format!(
            "UPDATE entries SET x509_ttl = -1 WHERE id = '{}'",
            created.id
        ),
        format!(
            "UPDATE entries SET parent_id = 'spiffe://exa mple.org' WHERE id = '{}'",
            created.id
        ),
    ];
    for corruption in cases {
        // Each case starts again from the good row.
        raw_execute(
            url,
            &format!(
                "UPDATE entries SET selectors = '[\"unix:uid:1\"]', dns_names = '[]', \
                 x509_ttl = 3600, parent_id = '{}' WHERE id = '{}'",
                agent_id(),
                created.id
            ),
        )
        .await;
        assert_eq!(
            store.get_entry(&created.id).await.unwrap(),
            Some(created.clone())
        );
        raw_execute(url, &corruption).await;
        let read = store.get_entry(&created.id).await;
        assert!(
            matches!(read, Err(StoreError::InvalidData(_))),
            "{corruption}: {read:?}"
        );
    }

    raw_execute(url, "UPDATE agents SET selectors = '[\":x\"]'").await;
    assert!(matches!(
        store.get_agent(&a.spiffe_id).await,
        Err(StoreError::InvalidData(_))
    ));
    raw_execute(url, "UPDATE agents SET spiffe_id = 'http://'").await;
    assert!(matches!(
        store.list_agents().await,
        Err(StoreError::InvalidData(_))
    ));

    raw_execute(url, "UPDATE authorities SET state = 'revoked'").await;
    assert!(matches!(
        store.list_authorities(NOW).await,
        Err(StoreError::InvalidData(message)) if message.contains("revoked")
    ));
    raw_execute(url, "UPDATE authorities SET state = 'active', kind = 'pgp'").await;
    assert!(matches!(
        store.list_authorities(NOW).await,
        Err(StoreError::InvalidData(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Opening

#[tokio::test]
async fn in_memory_sqlite_works_across_calls() {
    let store = SqlStore::connect("sqlite::memory:").await.unwrap();
    let created = store
        .create_entry(entry("/api", &["unix:uid:1"]))
        .await
        .unwrap();
    assert_eq!(store.get_entry(&created.id).await.unwrap(), Some(created));
}

#[tokio::test]
async fn unsupported_url_names_only_the_scheme() {
    let error = SqlStore::connect("mysql://root:hunter2@db/wimse")
        .await
        .unwrap_err();
    assert_eq!(error, StoreError::UnsupportedUrl("mysql".to_owned()));
    assert!(!error.to_string().contains("hunter2"));
}

#[tokio::test]
async fn unreachable_postgres_is_a_database_error_without_the_password() {
    // Port 1 on localhost: nothing listens there.
    let error = SqlStore::connect("postgres://user:hunter2@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert!(!error.to_string().contains("hunter2"));
}

// ---------------------------------------------------------------------------------------------
// Federation

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn relationship(name: &str, profile: EndpointProfile) -> FederationRelationship {
    FederationRelationship {
        trust_domain: td(name),
        bundle_endpoint_url: format!("https://{name}/.well-known/spiffe-bundle"),
        profile,
        created_at: NOW,
        last_refresh_at: None,
        last_error: None,
    }
}

async fn federation_relationships_are_created_updated_listed_and_deleted(store: &SqlStore) {
    let spiffe = EndpointProfile::HttpsSpiffe {
        endpoint_id: id("spiffe://b.test/wimse/server"),
    };
    let b = relationship("b.test", spiffe);
    let a = relationship("a.test", EndpointProfile::HttpsWeb);
    store.create_federation(&b).await.unwrap();
    store.create_federation(&a).await.unwrap();
    assert_eq!(
        store.create_federation(&b).await,
        Err(StoreError::DuplicateFederation("b.test".into()))
    );
    assert_eq!(
        store.list_federations().await.unwrap(),
        [a.clone(), b.clone()]
    );

    // A refresh outcome is recorded, and replaced by the next one.
    store
        .record_federation_refresh(&td("b.test"), NOW + 5, Some("cannot reach"))
        .await
        .unwrap();
    let got = store.get_federation(&td("b.test")).await.unwrap().unwrap();
    assert_eq!(got.last_refresh_at, Some(NOW + 5));
    assert_eq!(got.last_error.as_deref(), Some("cannot reach"));
    store
        .record_federation_refresh(&td("b.test"), NOW + 9, None)
        .await
        .unwrap();
    let got = store.get_federation(&td("b.test")).await.unwrap().unwrap();
    assert_eq!((got.last_refresh_at, got.last_error), (Some(NOW + 9), None));

    // An update replaces the endpoint, keeps the creation time, clears the outcome.
    let mut moved = relationship("b.test", EndpointProfile::HttpsWeb);
    moved.bundle_endpoint_url = "https://elsewhere.test/bundle".into();
    moved.created_at = NOW + 100;
    store.update_federation(&moved).await.unwrap();
    let got = store.get_federation(&td("b.test")).await.unwrap().unwrap();
    assert_eq!(got.bundle_endpoint_url, "https://elsewhere.test/bundle");
    assert_eq!(got.profile, EndpointProfile::HttpsWeb);
    assert_eq!(got.created_at, NOW);
    assert_eq!(got.last_refresh_at, None);

    store.delete_federation(&td("b.test")).await.unwrap();
    assert_eq!(store.get_federation(&td("b.test")).await.unwrap(), None);
    assert_eq!(
        store.delete_federation(&td("b.test")).await,
        Err(StoreError::FederationNotFound("b.test".into()))
    );
    assert_eq!(
        store.update_federation(&moved).await,
        Err(StoreError::FederationNotFound("b.test".into()))
    );
    assert_eq!(store.list_federations().await.unwrap(), [a]);
}

async fn federated_bundles_are_kept_per_trust_domain_and_guarded_by_entries(store: &SqlStore) {
    let key = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    let mut b = TrustBundle::new(td("b.test"));
    b.sequence = 7;
    b.refresh_hint = Some(60);
    b.add_authority(
        wimse_core::bundle::KeyUse::JwtSvid,
        "k1",
        key.public_key().clone(),
    )
    .unwrap();
    let c = TrustBundle::new(td("c_c.test"));
    store.put_federated_bundle(&b, NOW).await.unwrap();
    store.put_federated_bundle(&c, NOW).await.unwrap();
    let got = store
        .get_federated_bundle(&td("b.test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.bundle.clone(), got.updated_at), (b.clone(), NOW));

    // A newer bundle replaces the stored one.
    let mut newer = b.clone();
    newer.sequence = 8;
    store.put_federated_bundle(&newer, NOW + 1).await.unwrap();
    let listed = store.list_federated_bundles().await.unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|f| f.bundle.trust_domain().to_string())
        .collect();
    assert_eq!(names, ["b.test", "c_c.test"]);
    assert_eq!(listed[0].bundle, newer);
    assert_eq!(listed[0].updated_at, NOW + 1);

    // While an entry federates with b.test, its bundle stays. A name that LIKE's `_` would
    // match (`cXc.test` for `c_c.test`) does not hold back another trust domain's bundle.
    let mut e = entry("/fed", &["unix:uid:1"]);
    e.federates_with = vec![td("b.test"), td("cxc.test")];
    let created = store.create_entry(e).await.unwrap();
    assert_eq!(
        store.delete_federated_bundle(&td("b.test")).await,
        Err(StoreError::BundleInUse {
            trust_domain: "b.test".into(),
            entries: 1
        })
    );
    store
        .delete_federated_bundle(&td("c_c.test"))
        .await
        .unwrap();
    store.delete_entry(&created.id).await.unwrap();
    store.delete_federated_bundle(&td("b.test")).await.unwrap();
    assert_eq!(
        store.get_federated_bundle(&td("b.test")).await.unwrap(),
        None
    );
    assert_eq!(
        store.delete_federated_bundle(&td("b.test")).await,
        Err(StoreError::BundleNotFound("b.test".into()))
    );
}

async fn entries_keep_their_federated_trust_domains_sorted_and_unique(store: &SqlStore) {
    let mut e = entry("/fed", &["unix:uid:1"]);
    e.federates_with = vec![td("z.test"), td("a.test"), td("z.test")];
    let created = store.create_entry(e.clone()).await.unwrap();
    assert_eq!(created.federates_with, [td("a.test"), td("z.test")]);
    let read = store.get_entry(&created.id).await.unwrap().unwrap();
    assert_eq!(read.federates_with, [td("a.test"), td("z.test")]);
    e.federates_with = vec![td("m.test")];
    let updated = store.update_entry(&created.id, e).await.unwrap();
    assert_eq!(updated.federates_with, [td("m.test")]);
    let (changes, _) = store.entry_changes_since(0, 10).await.unwrap();
    let Some(EntryChangeKind::Upsert(synced)) = changes.last().map(|c| &c.kind) else {
        panic!("no upsert in {changes:?}");
    };
    assert_eq!(synced.federates_with, [td("m.test")]);
}
