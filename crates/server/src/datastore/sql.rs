//! [`SqlStore`]: the [`Datastore`] on SQLite or PostgreSQL through sqlx.
//!
//! Both databases run the same SQL text: sqlx's SQLite driver binds `$1`-style parameters too,
//! and both dialects have `RETURNING`, `ON CONFLICT ... DO UPDATE` and `excluded`. The schema
//! is one migration per dialect (they differ only in the blob type), embedded in the binary.
//! Each method body is written once inside `on_pool!`, which expands it for each driver.
//!
//! Queries are checked at run time (no `query!` macros), so building needs no database; the
//! test suite in `tests/datastore.rs` runs every query against both databases instead.
//!
//! Lists (selectors, DNS names) are stored as JSON arrays in their row, so an entry reads back
//! from one row; selectors are also kept one per row in `entry_selectors` for filtering.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use wimse_core::bundle::TrustBundle;
use wimse_core::{TrustDomain, WorkloadId};

use super::{
    AttestedAgent, Authority, AuthorityKind, AuthorityState, Datastore, EndpointProfile,
    EntryChange, EntryChangeKind, EntryFilter, FederatedBundle, FederationRelationship, JoinToken,
    NewEntry, RegistrationEntry, RevokedTransaction, Selector, StoreError, X509PopChallenge,
    canonical_selectors, hex,
};

/// How long a SQLite connection waits for another one's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema for SQLite, as (version, description, SQL).
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "x509pop and tombstone retention",
        include_str!("../../migrations/sqlite/0002_x509pop_and_tombstone_retention.sql"),
    ),
    (
        3,
        "federation",
        include_str!("../../migrations/sqlite/0003_federation.sql"),
    ),
    (
        4,
        "redeemed grants",
        include_str!("../../migrations/sqlite/0004_redeemed_grants.sql"),
    ),
    (
        5,
        "revoked transactions",
        include_str!("../../migrations/sqlite/0005_revoked_transactions.sql"),
    ),
];

/// The schema for PostgreSQL, as (version, description, SQL); same versions as SQLite's.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "x509pop and tombstone retention",
        include_str!("../../migrations/postgres/0002_x509pop_and_tombstone_retention.sql"),
    ),
    (
        3,
        "federation",
        include_str!("../../migrations/postgres/0003_federation.sql"),
    ),
    (
        4,
        "redeemed grants",
        include_str!("../../migrations/postgres/0004_redeemed_grants.sql"),
    ),
    (
        5,
        "revoked transactions",
        include_str!("../../migrations/postgres/0005_revoked_transactions.sql"),
    ),
];

/// The tables whose rows carry an `expires_at` and are pruned by it.
#[derive(Clone, Copy)]
enum Expiring {
    JoinTokens,
    RedeemedGrants,
    RevokedTransactions,
    X509PopChallenges,
}

impl Expiring {
    /// The statement removing the rows expired at or before `$1` (table names are fixed
    /// here, never taken from input).
    fn delete(self) -> &'static str {
        match self {
            Self::JoinTokens => "DELETE FROM join_tokens WHERE expires_at <= $1",
            Self::RedeemedGrants => "DELETE FROM redeemed_grants WHERE expires_at <= $1",
            Self::RevokedTransactions => "DELETE FROM revoked_transactions WHERE expires_at <= $1",
            Self::X509PopChallenges => "DELETE FROM x509pop_challenges WHERE expires_at <= $1",
        }
    }
}

/// The [`Datastore`] on a SQL database: SQLite (a file, or memory for tests) or PostgreSQL.
///
/// Cloning is cheap and shares the connection pool.
#[derive(Clone, Debug)]
pub struct SqlStore {
    /// The connection pool of whichever database the URL named.
    pool: Pool,
}

/// A connection pool of one of the supported databases.
#[derive(Clone, Debug)]
enum Pool {
    /// SQLite, in WAL mode with foreign keys on.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever database it is: the body is
/// written once and type-checked once per driver.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

impl SqlStore {
    /// Removes the rows of `table` that expired at or before `now`; returns how many.
    async fn delete_expired(&self, table: Expiring, now: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query(table.delete())
                .bind(now)
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        }))
    }

    /// Opens the datastore at `url` and brings its schema up to date.
    ///
    /// - `sqlite://PATH?mode=rwc` (create the file if missing), `sqlite://PATH`, or
    ///   `sqlite::memory:` (one connection, gone when the store is dropped). SQLite runs in WAL
    ///   mode with foreign keys on and a busy timeout.
    /// - `postgres://USER@HOST:PORT/DB` (or `postgresql://`). sqlx's URL parameters apply, e.g.
    ///   `?options[search_path]=SCHEMA` to keep the tables in a schema of their own.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // Only the scheme is echoed: the rest of a URL may carry a password.
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        let pool = match scheme {
            "sqlite" => Pool::Sqlite(connect_sqlite(url).await?),
            "postgres" | "postgresql" => Pool::Postgres(connect_postgres(url).await?),
            _ => return Err(StoreError::UnsupportedUrl(scheme.to_owned())),
        };
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Closes every connection, waiting for those in use to be returned (for a clean shutdown).
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
    }

    /// Applies the migrations this build embeds that the database has not seen yet.
    async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = match self.pool {
            Pool::Sqlite(_) => SQLITE_MIGRATIONS,
            Pool::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        let migrator = Migrator::new(EmbeddedMigrations(migrations))
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        // On PostgreSQL the migrator holds an advisory lock, so replicas starting together
        // migrate one after the other.
        on_pool!(self, |pool| migrator.run(pool).await)
            .map_err(|e| StoreError::Migration(e.to_string()))
    }
}

/// The `counters` row that numbers entry changes.
const ENTRY_REVISION: &str = "entry_revision";
/// The `counters` row that numbers trust bundles.
const BUNDLE_SEQUENCE: &str = "bundle_sequence";
/// The `counters` row holding the highest revision of any pruned tombstone.
const TOMBSTONE_HORIZON: &str = "tombstone_horizon";

/// The identities an agent's entries may be parented by: the agent, and recursively the
/// identity of every entry parented by one of them. `UNION` (not `UNION ALL`) drops repeats,
/// so a cycle of entries ends the recursion instead of looping. Each step is a lookup in the
/// `parent_id` index. `$1` is the agent's ID.
macro_rules! agent_owners_cte {
    () => {
        "WITH RECURSIVE owners (id) AS (SELECT CAST($1 AS TEXT) UNION \
         SELECT e.spiffe_id FROM entries e JOIN owners o ON e.parent_id = o.id) "
    };
}

/// Reads counter `$1`.
const READ_COUNTER: &str = "SELECT value FROM counters WHERE name = $1";
/// Adds `$2` to counter `$1` and returns the new value. Bumped first in a transaction, the
/// counter's row lock serializes writers until they commit (see the module docs of
/// [`super`]).
const BUMP_COUNTER: &str = "UPDATE counters SET value = value + $2 WHERE name = $1 RETURNING value";

/// The columns of `entries` in the order of [`EntryRow`], as a literal for `concat!`.
macro_rules! entry_columns {
    () => {
        "id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, hint, admin, \
         downstream, revision, created_at, federates_with"
    };
}

/// An `entries` row as read back, in the order of [`entry_columns!`].
type EntryRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    bool,
    bool,
    i64,
    i64,
    String,
);

/// The columns of `agents` in the order of [`AgentRow`].
const AGENT_COLUMNS: &str =
    "spiffe_id, attestation_type, serial, expires_at, banned, selectors, last_seen";

/// An `agents` row as read back, in the order of [`AGENT_COLUMNS`].
type AgentRow = (String, String, String, i64, bool, String, i64);

/// An `authorities` row as read back, in the order of the `SELECT` in `list_authorities`.
type AuthorityRow = (String, String, String, Vec<u8>, String, i64, i64);

impl Datastore for SqlStore {
    async fn create_entry(&self, entry: NewEntry) -> Result<RegistrationEntry, StoreError> {
        let mut created = self.create_entries(vec![entry]).await?;
        created
            .pop()
            .ok_or_else(|| StoreError::Database("the created entry was not returned".to_owned()))
    }

    async fn create_entries(
        &self,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let count = i64::try_from(entries.len())
            .map_err(|_| StoreError::InvalidData("too many entries in one batch".to_owned()))?;
        let created_at = unix_now();
        let params = entries
            .into_iter()
            .map(|entry| EntryParams::new(new_entry_id()?, entry))
            .collect::<Result<Vec<_>, _>>()?;

        let last_revision: i64 = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let last: i64 = sqlx::query_scalar(BUMP_COUNTER)
                .bind(ENTRY_REVISION)
                .bind(count)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            for (revision, p) in (last - count + 1..).zip(&params) {
                sqlx::query(
                    "INSERT INTO entries (id, spiffe_id, parent_id, selectors, selector_set, \
                     x509_ttl, jwt_ttl, dns_names, hint, admin, downstream, revision, created_at, \
                     federates_with) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&p.id)
                .bind(p.entry.spiffe_id.as_str())
                .bind(p.entry.parent_id.as_str())
                .bind(&p.selectors_json)
                .bind(&p.selector_set)
                .bind(i64::from(p.entry.x509_ttl))
                .bind(i64::from(p.entry.jwt_ttl))
                .bind(&p.dns_names_json)
                .bind(p.entry.hint.as_deref())
                .bind(p.entry.admin)
                .bind(p.entry.downstream)
                .bind(revision)
                .bind(created_at)
                .bind(&p.federates_with_json)
                .execute(&mut *tx)
                .await
                .map_err(entry_write_error)?;
                for selector in &p.selectors {
                    sqlx::query("INSERT INTO entry_selectors (entry_id, selector) VALUES ($1, $2)")
                        .bind(&p.id)
                        .bind(selector)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                }
            }
            tx.commit().await.map_err(db_error)?;
            last
        });

        Ok((last_revision - count + 1..)
            .zip(params)
            .map(|(revision, p)| p.into_entry(revision, created_at))
            .collect())
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, StoreError> {
        let row: Option<EntryRow> = on_pool!(self, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM entries WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
        });
        row.map(entry_from_row).transpose()
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        // Deduplicated, so that "has all of them" is "has as many of them as there are".
        let selectors: Vec<String> = canonical_selectors(filter.selectors.clone())
            .iter()
            .map(Selector::to_string)
            .collect();
        let selector_count = i64::try_from(selectors.len())
            .map_err(|_| StoreError::InvalidData("too many selectors in a filter".to_owned()))?;

        let mut next_param = 0_usize;
        let mut param = || {
            next_param += 1;
            format!("${next_param}")
        };
        let mut conditions = Vec::new();
        if filter.spiffe_id.is_some() {
            conditions.push(format!("spiffe_id = {}", param()));
        }
        if filter.parent_id.is_some() {
            conditions.push(format!("parent_id = {}", param()));
        }
        if !selectors.is_empty() {
            let list: Vec<String> = selectors.iter().map(|_| param()).collect();
            conditions.push(format!(
                "id IN (SELECT entry_id FROM entry_selectors WHERE selector IN ({}) \
                 GROUP BY entry_id HAVING COUNT(*) = {})",
                list.join(", "),
                param()
            ));
        }
        let sql = format!(
            "SELECT {} FROM entries{}{} ORDER BY created_at, id",
            entry_columns!(),
            if conditions.is_empty() { "" } else { " WHERE " },
            conditions.join(" AND ")
        );

        let rows: Vec<EntryRow> = on_pool!(self, |pool| {
            let mut query = sqlx::query_as(&sql);
            if let Some(id) = &filter.spiffe_id {
                query = query.bind(id.as_str());
            }
            if let Some(id) = &filter.parent_id {
                query = query.bind(id.as_str());
            }
            if !selectors.is_empty() {
                for selector in &selectors {
                    query = query.bind(selector);
                }
                query = query.bind(selector_count);
            }
            query.fetch_all(pool).await.map_err(db_error)?
        });
        rows.into_iter().map(entry_from_row).collect()
    }

    async fn update_entry(
        &self,
        id: &str,
        entry: NewEntry,
    ) -> Result<RegistrationEntry, StoreError> {
        let p = EntryParams::new(id.to_owned(), entry)?;
        let row: EntryRow = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let revision: i64 = sqlx::query_scalar(BUMP_COUNTER)
                .bind(ENTRY_REVISION)
                .bind(1_i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let updated: Option<EntryRow> = sqlx::query_as(concat!(
                "UPDATE entries SET spiffe_id = $2, parent_id = $3, selectors = $4, \
                 selector_set = $5, x509_ttl = $6, jwt_ttl = $7, dns_names = $8, hint = $9, \
                 admin = $10, downstream = $11, revision = $12, federates_with = $13 \
                 WHERE id = $1 RETURNING ",
                entry_columns!()
            ))
            .bind(&p.id)
            .bind(p.entry.spiffe_id.as_str())
            .bind(p.entry.parent_id.as_str())
            .bind(&p.selectors_json)
            .bind(&p.selector_set)
            .bind(i64::from(p.entry.x509_ttl))
            .bind(i64::from(p.entry.jwt_ttl))
            .bind(&p.dns_names_json)
            .bind(p.entry.hint.as_deref())
            .bind(p.entry.admin)
            .bind(p.entry.downstream)
            .bind(revision)
            .bind(&p.federates_with_json)
            .fetch_optional(&mut *tx)
            .await
            .map_err(entry_write_error)?;
            let Some(updated) = updated else {
                tx.rollback().await.map_err(db_error)?;
                return Err(StoreError::EntryNotFound(id.to_owned()));
            };
            sqlx::query("DELETE FROM entry_selectors WHERE entry_id = $1")
                .bind(&p.id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            for selector in &p.selectors {
                sqlx::query("INSERT INTO entry_selectors (entry_id, selector) VALUES ($1, $2)")
                    .bind(&p.id)
                    .bind(selector)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            updated
        });
        entry_from_row(row)
    }

    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry, StoreError> {
        let row: EntryRow = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let revision: i64 = sqlx::query_scalar(BUMP_COUNTER)
                .bind(ENTRY_REVISION)
                .bind(1_i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            // `entry_selectors` rows go with it (ON DELETE CASCADE).
            let deleted: Option<EntryRow> = sqlx::query_as(concat!(
                "DELETE FROM entries WHERE id = $1 RETURNING ",
                entry_columns!()
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            let Some(deleted) = deleted else {
                tx.rollback().await.map_err(db_error)?;
                return Err(StoreError::EntryNotFound(id.to_owned()));
            };
            sqlx::query(
                "INSERT INTO entry_tombstones (entry_id, revision, deleted_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (entry_id) DO UPDATE SET \
                 revision = excluded.revision, deleted_at = excluded.deleted_at",
            )
            .bind(id)
            .bind(revision)
            .bind(unix_now())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            deleted
        });
        entry_from_row(row)
    }

    async fn entry_changes_since(
        &self,
        revision: i64,
        limit: usize,
    ) -> Result<(Vec<EntryChange>, i64), StoreError> {
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let (current, upserts, deletes): (i64, Vec<EntryRow>, Vec<(String, i64)>) =
            on_pool!(self, |pool| {
                // Read first: every revision up to it is committed (revisions are handed out in
                // commit order), so bounding both queries by it gives a gap-free answer even
                // while writers go on.
                let current: i64 = sqlx::query_scalar(READ_COUNTER)
                    .bind(ENTRY_REVISION)
                    .fetch_one(pool)
                    .await
                    .map_err(db_error)?;
                // Both queries walk an index on `revision` from `$1`: a small delta reads a few
                // rows, however many entries there are.
                let upserts: Vec<EntryRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    entry_columns!(),
                    " FROM entries WHERE revision > $1 AND revision <= $2 \
                     ORDER BY revision LIMIT $3"
                ))
                .bind(revision)
                .bind(current)
                .bind(limit_sql)
                .fetch_all(pool)
                .await
                .map_err(db_error)?;
                // A caller starting from nothing has nothing to delete.
                let deletes: Vec<(String, i64)> = if revision > 0 {
                    sqlx::query_as(
                        "SELECT entry_id, revision FROM entry_tombstones \
                         WHERE revision > $1 AND revision <= $2 ORDER BY revision LIMIT $3",
                    )
                    .bind(revision)
                    .bind(current)
                    .bind(limit_sql)
                    .fetch_all(pool)
                    .await
                    .map_err(db_error)?
                } else {
                    Vec::new()
                };
                (current, upserts, deletes)
            });

        // Merge the two revision-ordered lists, keeping the first `limit` changes. An entry is
        // in at most one of them: a deleted entry has no row, a live one no tombstone.
        let mut changes = Vec::with_capacity(limit.min(upserts.len() + deletes.len()));
        let mut upserts = upserts.into_iter().peekable();
        let mut deletes = deletes.into_iter().peekable();
        while changes.len() < limit {
            let take_upsert = match (upserts.peek(), deletes.peek()) {
                (Some(upsert), Some((_, deleted_at))) => upsert.10 < *deleted_at,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let change = if take_upsert {
                let Some(row) = upserts.next() else { break };
                let entry = entry_from_row(row)?;
                EntryChange {
                    revision: entry.revision,
                    entry_id: entry.id.clone(),
                    kind: EntryChangeKind::Upsert(Box::new(entry)),
                }
            } else {
                let Some((entry_id, revision)) = deletes.next() else {
                    break;
                };
                EntryChange {
                    revision,
                    entry_id,
                    kind: EntryChangeKind::Delete,
                }
            };
            changes.push(change);
        }
        Ok((changes, current))
    }

    async fn agent_entries(
        &self,
        agent: &WorkloadId,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EntryRow> = on_pool!(self, |pool| {
            sqlx::query_as(concat!(
                agent_owners_cte!(),
                "SELECT ",
                entry_columns!(),
                " FROM entries WHERE parent_id IN (SELECT id FROM owners) \
                 AND revision > $2 AND revision <= $3 ORDER BY revision LIMIT $4"
            ))
            .bind(agent.as_str())
            .bind(after)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        rows.into_iter().map(entry_from_row).collect()
    }

    async fn agent_entries_among(
        &self,
        agent: &WorkloadId,
        entry_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        if entry_ids.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        // (entry, an ancestor's parent) pairs, from each entry up until the agent is reached;
        // `UNION` drops repeated pairs, so a cycle of entries ends the walk.
        let list: Vec<String> = (2..entry_ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "WITH RECURSIVE up (entry_id, parent) AS (\
             SELECT id, parent_id FROM entries WHERE id IN ({}) UNION \
             SELECT up.entry_id, e.parent_id FROM up JOIN entries e ON e.spiffe_id = up.parent \
             WHERE up.parent <> $1) \
             SELECT DISTINCT entry_id FROM up WHERE parent = $1",
            list.join(", ")
        );
        let ids: Vec<String> = on_pool!(self, |pool| {
            let mut query = sqlx::query_scalar(&sql).bind(agent.as_str());
            for id in entry_ids {
                query = query.bind(id);
            }
            query.fetch_all(pool).await.map_err(db_error)?
        });
        Ok(ids.into_iter().collect())
    }

    async fn prune_tombstones(&self, deleted_before: i64) -> Result<u64, StoreError> {
        let removed: Vec<i64> = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let removed: Vec<i64> = sqlx::query_scalar(
                "DELETE FROM entry_tombstones WHERE deleted_at <= $1 RETURNING revision",
            )
            .bind(deleted_before)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            // In the same transaction: no reader sees the tombstones gone and the horizon
            // still below them.
            if let Some(highest) = removed.iter().max() {
                sqlx::query(
                    "UPDATE counters SET value = CASE WHEN value < $2 THEN $2 ELSE value END \
                     WHERE name = $1",
                )
                .bind(TOMBSTONE_HORIZON)
                .bind(highest)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            removed
        });
        Ok(u64::try_from(removed.len()).unwrap_or(u64::MAX))
    }

    async fn tombstone_horizon(&self) -> Result<i64, StoreError> {
        self.read_counter(TOMBSTONE_HORIZON).await
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        self.read_counter(ENTRY_REVISION).await
    }

    async fn count_entries(&self) -> Result<i64, StoreError> {
        self.count("SELECT COUNT(*) FROM entries").await
    }

    async fn count_agents(&self) -> Result<i64, StoreError> {
        self.count("SELECT COUNT(*) FROM agents").await
    }

    async fn create_join_token(&self, token: &JoinToken) -> Result<(), StoreError> {
        let hash = hex(&token.hash);
        on_pool!(self, |pool| {
            sqlx::query("INSERT INTO join_tokens (token_hash, expires_at) VALUES ($1, $2)")
                .bind(&hash)
                .bind(token.expires_at)
                .execute(pool)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Database("a join token with this hash already exists".into())
                    } else {
                        db_error(e)
                    }
                })?;
        });
        Ok(())
    }

    async fn consume_join_token(&self, hash: &[u8; 32], now: i64) -> Result<(), StoreError> {
        let hash = hex(hash);
        // One statement finds and removes the token: of two concurrent consumers, the second
        // finds no row (PostgreSQL: it waits on the row lock, then sees the row gone; SQLite:
        // writers run one at a time).
        let expires_at: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("DELETE FROM join_tokens WHERE token_hash = $1 RETURNING expires_at")
                .bind(&hash)
                .fetch_optional(pool)
                .await
                .map_err(db_error)?
        });
        match expires_at {
            None => Err(StoreError::TokenNotFound),
            Some(expires_at) if now >= expires_at => Err(StoreError::TokenExpired),
            Some(_) => Ok(()),
        }
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64, StoreError> {
        self.delete_expired(Expiring::JoinTokens, now).await
    }

    async fn redeem_grant(
        &self,
        issuer: &TrustDomain,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let jti_hash = hex(&wimse_core::digest::sha256(jti.as_bytes()));
        // One statement: of two replicas redeeming the same grant at once, the second's
        // insert conflicts with the first's row and adds none.
        let added = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO redeemed_grants (issuer, jti_hash, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (issuer, jti_hash) DO NOTHING",
            )
            .bind(issuer.as_str())
            .bind(&jti_hash)
            .bind(expires_at)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected()
        });
        Ok(added == 1)
    }

    async fn prune_redeemed_grants(&self, now: i64) -> Result<u64, StoreError> {
        self.delete_expired(Expiring::RedeemedGrants, now).await
    }

    async fn revoke_transaction(
        &self,
        txn: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        // A second revocation keeps the first's time, and the later of the two expiries.
        let added = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let added = sqlx::query(
                "INSERT INTO revoked_transactions (txn, revoked_at, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (txn) DO NOTHING",
            )
            .bind(txn)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
            if added == 0 {
                sqlx::query(
                    "UPDATE revoked_transactions SET expires_at = $2 \
                     WHERE txn = $1 AND expires_at < $2",
                )
                .bind(txn)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            added
        });
        Ok(added == 1)
    }

    async fn transaction_revoked(&self, txn: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT revoked_at FROM revoked_transactions WHERE txn = $1")
                .bind(txn)
                .fetch_optional(pool)
                .await
                .map_err(db_error)?
        });
        Ok(found.is_some())
    }

    async fn list_revoked_transactions(&self) -> Result<Vec<RevokedTransaction>, StoreError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT txn, revoked_at, expires_at FROM revoked_transactions \
                 ORDER BY revoked_at, txn",
            )
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        Ok(rows
            .into_iter()
            .map(|(txn, revoked_at, expires_at)| RevokedTransaction {
                txn,
                revoked_at,
                expires_at,
            })
            .collect())
    }

    async fn prune_revoked_transactions(&self, now: i64) -> Result<u64, StoreError> {
        self.delete_expired(Expiring::RevokedTransactions, now)
            .await
    }

    async fn create_x509pop_challenge(
        &self,
        challenge: &X509PopChallenge,
    ) -> Result<(), StoreError> {
        let hash = hex(&challenge.nonce_hash);
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            sqlx::query("DELETE FROM x509pop_challenges WHERE fingerprint = $1")
                .bind(&challenge.fingerprint)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            sqlx::query(
                "INSERT INTO x509pop_challenges (nonce_hash, fingerprint, expires_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(&hash)
            .bind(&challenge.fingerprint)
            .bind(challenge.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
        });
        Ok(())
    }

    async fn consume_x509pop_challenge(
        &self,
        nonce_hash: &[u8; 32],
        now: i64,
    ) -> Result<String, StoreError> {
        let hash = hex(nonce_hash);
        // One statement finds and removes it, as for join tokens: at most one consumer wins.
        let row: Option<(String, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "DELETE FROM x509pop_challenges WHERE nonce_hash = $1 \
                 RETURNING fingerprint, expires_at",
            )
            .bind(&hash)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
        });
        match row {
            None => Err(StoreError::ChallengeNotFound),
            Some((_, expires_at)) if now >= expires_at => Err(StoreError::ChallengeExpired),
            Some((fingerprint, _)) => Ok(fingerprint),
        }
    }

    async fn prune_x509pop_challenges(&self, now: i64) -> Result<u64, StoreError> {
        self.delete_expired(Expiring::X509PopChallenges, now).await
    }

    async fn upsert_agent(&self, agent: &AttestedAgent) -> Result<(), StoreError> {
        let selectors = selectors_json(&canonical_selector_strings(&agent.selectors))?;
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO agents (spiffe_id, attestation_type, serial, expires_at, banned, \
                 selectors, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (spiffe_id) DO UPDATE SET \
                 attestation_type = excluded.attestation_type, serial = excluded.serial, \
                 expires_at = excluded.expires_at, banned = agents.banned OR excluded.banned, \
                 selectors = excluded.selectors, last_seen = excluded.last_seen",
            )
            .bind(agent.spiffe_id.as_str())
            .bind(&agent.attestation_type)
            .bind(&agent.serial)
            .bind(agent.expires_at)
            .bind(agent.banned)
            .bind(&selectors)
            .bind(agent.last_seen)
            .execute(pool)
            .await
            .map_err(db_error)?;
        });
        Ok(())
    }

    async fn get_agent(&self, id: &WorkloadId) -> Result<Option<AttestedAgent>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE spiffe_id = $1");
        let row: Option<AgentRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .fetch_optional(pool)
                .await
                .map_err(db_error)?
        });
        row.map(agent_from_row).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AttestedAgent>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY spiffe_id");
        let rows: Vec<AgentRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .fetch_all(pool)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(agent_from_row).collect()
    }

    async fn set_agent_banned(&self, id: &WorkloadId, banned: bool) -> Result<(), StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE agents SET banned = $2 WHERE spiffe_id = $1")
                .bind(id.as_str())
                .bind(banned)
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::AgentNotFound(id.to_string()));
        }
        Ok(())
    }

    async fn delete_agent(&self, id: &WorkloadId) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM agents WHERE spiffe_id = $1")
                .bind(id.as_str())
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::AgentNotFound(id.to_string()));
        }
        Ok(())
    }

    async fn purge_agents(&self, expired_before: i64) -> Result<Vec<WorkloadId>, StoreError> {
        let ids: Vec<String> = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "DELETE FROM agents WHERE expires_at <= $1 AND banned = $2 RETURNING spiffe_id",
            )
            .bind(expired_before)
            .bind(false)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        let mut ids = ids
            .iter()
            .map(|id| stored_id(id, || "purged agent".into()))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn put_authority(&self, authority: &Authority) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO authorities (id, server_id, kind, public_data, state, not_after, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id, server_id) DO UPDATE SET kind = excluded.kind, \
                 public_data = excluded.public_data, state = excluded.state, \
                 not_after = excluded.not_after",
            )
            .bind(&authority.id)
            .bind(&authority.server_id)
            .bind(authority.kind.as_str())
            .bind(&authority.public_data)
            .bind(authority.state.as_str())
            .bind(authority.not_after)
            .bind(authority.created_at)
            .execute(pool)
            .await
            .map_err(db_error)?;
        });
        Ok(())
    }

    async fn list_authorities(&self, now: i64) -> Result<Vec<Authority>, StoreError> {
        let rows: Vec<AuthorityRow> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, server_id, kind, public_data, state, not_after, created_at \
                 FROM authorities WHERE not_after > $1 ORDER BY created_at, server_id, id",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        rows.into_iter().map(authority_from_row).collect()
    }

    async fn set_authority_state(
        &self,
        id: &str,
        server_id: &str,
        state: AuthorityState,
    ) -> Result<(), StoreError> {
        let changed = on_pool!(self, |pool| {
            sqlx::query("UPDATE authorities SET state = $3 WHERE id = $1 AND server_id = $2")
                .bind(id)
                .bind(server_id)
                .bind(state.as_str())
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::AuthorityNotFound {
                id: id.to_owned(),
                server_id: server_id.to_owned(),
            });
        }
        Ok(())
    }

    async fn delete_authority(&self, id: &str, server_id: &str) -> Result<bool, StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM authorities WHERE id = $1 AND server_id = $2")
                .bind(id)
                .bind(server_id)
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    async fn prune_authorities(&self, now: i64) -> Result<u64, StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM authorities WHERE not_after <= $1")
                .bind(now)
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        Ok(deleted)
    }

    async fn bundle_sequence(&self) -> Result<i64, StoreError> {
        self.read_counter(BUNDLE_SEQUENCE).await
    }

    async fn bump_bundle_sequence(&self) -> Result<i64, StoreError> {
        let value = on_pool!(self, |pool| {
            sqlx::query_scalar(BUMP_COUNTER)
                .bind(BUNDLE_SEQUENCE)
                .bind(1_i64)
                .fetch_one(pool)
                .await
                .map_err(db_error)?
        });
        Ok(value)
    }

    async fn create_federation(
        &self,
        relationship: &FederationRelationship,
    ) -> Result<(), StoreError> {
        let endpoint_id = endpoint_id_of(&relationship.profile);
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO federation_relationships (trust_domain, bundle_endpoint_url, \
                 profile, endpoint_spiffe_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(relationship.trust_domain.as_str())
            .bind(&relationship.bundle_endpoint_url)
            .bind(relationship.profile.name())
            .bind(endpoint_id)
            .bind(relationship.created_at)
            .execute(pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::DuplicateFederation(relationship.trust_domain.to_string())
                } else {
                    db_error(e)
                }
            })?;
        });
        Ok(())
    }

    async fn update_federation(
        &self,
        relationship: &FederationRelationship,
    ) -> Result<(), StoreError> {
        let endpoint_id = endpoint_id_of(&relationship.profile);
        let changed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE federation_relationships SET bundle_endpoint_url = $2, profile = $3, \
                 endpoint_spiffe_id = $4, last_refresh_at = NULL, last_error = NULL \
                 WHERE trust_domain = $1",
            )
            .bind(relationship.trust_domain.as_str())
            .bind(&relationship.bundle_endpoint_url)
            .bind(relationship.profile.name())
            .bind(endpoint_id)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::FederationNotFound(
                relationship.trust_domain.to_string(),
            ));
        }
        Ok(())
    }

    async fn get_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederationRelationship>, StoreError> {
        let row: Option<FederationRow> = on_pool!(self, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                federation_columns!(),
                " FROM federation_relationships WHERE trust_domain = $1"
            ))
            .bind(trust_domain.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
        });
        row.map(federation_from_row).transpose()
    }

    async fn list_federations(&self) -> Result<Vec<FederationRelationship>, StoreError> {
        let rows: Vec<FederationRow> = on_pool!(self, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                federation_columns!(),
                " FROM federation_relationships ORDER BY trust_domain"
            ))
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        rows.into_iter().map(federation_from_row).collect()
    }

    async fn delete_federation(&self, trust_domain: &TrustDomain) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM federation_relationships WHERE trust_domain = $1")
                .bind(trust_domain.as_str())
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::FederationNotFound(trust_domain.to_string()));
        }
        Ok(())
    }

    async fn record_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        at: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE federation_relationships SET last_refresh_at = $2, last_error = $3 \
                 WHERE trust_domain = $1",
            )
            .bind(trust_domain.as_str())
            .bind(at)
            .bind(error)
            .execute(pool)
            .await
            .map_err(db_error)?;
        });
        Ok(())
    }

    async fn put_federated_bundle(&self, bundle: &TrustBundle, now: i64) -> Result<(), StoreError> {
        let sequence = i64::try_from(bundle.sequence).map_err(|_| {
            StoreError::InvalidData(format!(
                "bundle of `{}`: sequence {} is out of range",
                bundle.trust_domain(),
                bundle.sequence
            ))
        })?;
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO federated_bundles (trust_domain, bundle, sequence, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (trust_domain) DO UPDATE SET \
                 bundle = excluded.bundle, sequence = excluded.sequence, \
                 updated_at = excluded.updated_at",
            )
            .bind(bundle.trust_domain().as_str())
            .bind(bundle.to_spiffe_json())
            .bind(sequence)
            .bind(now)
            .execute(pool)
            .await
            .map_err(db_error)?;
        });
        Ok(())
    }

    async fn get_federated_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederatedBundle>, StoreError> {
        let row: Option<(String, String, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT trust_domain, bundle, updated_at FROM federated_bundles \
                 WHERE trust_domain = $1",
            )
            .bind(trust_domain.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
        });
        row.map(federated_bundle_from_row).transpose()
    }

    async fn list_federated_bundles(&self) -> Result<Vec<FederatedBundle>, StoreError> {
        let rows: Vec<(String, String, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT trust_domain, bundle, updated_at FROM federated_bundles \
                 ORDER BY trust_domain",
            )
            .fetch_all(pool)
            .await
            .map_err(db_error)?
        });
        rows.into_iter().map(federated_bundle_from_row).collect()
    }

    async fn delete_federated_bundle(&self, trust_domain: &TrustDomain) -> Result<(), StoreError> {
        // LIKE narrows the rows to read; the JSON arrays are then compared exactly (a `_` in a
        // trust domain name is a LIKE wildcard, so LIKE alone could match another name).
        let pattern = format!("%\"{}\"%", trust_domain.as_str());
        let name = trust_domain.as_str().to_owned();
        let outcome: Result<(), StoreError> = on_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(db_error)?;
            let candidates: Vec<String> = sqlx::query_scalar(
                "SELECT federates_with FROM entries WHERE federates_with LIKE $1",
            )
            .bind(&pattern)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let entries = candidates
                .iter()
                .filter(|json| {
                    serde_json::from_str::<Vec<String>>(json)
                        .is_ok_and(|names| names.contains(&name))
                })
                .count();
            if entries > 0 {
                tx.rollback().await.map_err(db_error)?;
                return Err(StoreError::BundleInUse {
                    trust_domain: name,
                    entries: i64::try_from(entries).unwrap_or(i64::MAX),
                });
            }
            let deleted = sqlx::query("DELETE FROM federated_bundles WHERE trust_domain = $1")
                .bind(trust_domain.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
            if deleted == 0 {
                tx.rollback().await.map_err(db_error)?;
                return Err(StoreError::BundleNotFound(name));
            }
            tx.commit().await.map_err(db_error)?;
            Ok(())
        });
        outcome
    }
}

impl SqlStore {
    /// The value of counter `name`.
    /// Runs a `SELECT COUNT(*)` query.
    async fn count(&self, query: &'static str) -> Result<i64, StoreError> {
        let value = on_pool!(self, |pool| {
            sqlx::query_scalar(query)
                .fetch_one(pool)
                .await
                .map_err(db_error)?
        });
        Ok(value)
    }

    async fn read_counter(&self, name: &str) -> Result<i64, StoreError> {
        let value = on_pool!(self, |pool| {
            sqlx::query_scalar(READ_COUNTER)
                .bind(name)
                .fetch_one(pool)
                .await
                .map_err(db_error)?
        });
        Ok(value)
    }
}

/// Opens a SQLite pool for `url`.
async fn connect_sqlite(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| connect_error(&e))?
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    // An in-memory database lives as long as a connection to it: keep exactly one, forever.
    // (Several connections would also share it through a shared cache, whose table locks fail
    // at once instead of waiting out the busy timeout.)
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool_options = if in_memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        SqlitePoolOptions::new()
    };
    pool_options
        .connect_with(options)
        .await
        .map_err(|e| connect_error(&e))
}

/// Opens a PostgreSQL pool for `url`.
async fn connect_postgres(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| connect_error(&e))?;
    // One direct connection first: the pool would retry a refused connection until its acquire
    // timeout and then report only that it timed out, where this reports why, at once.
    options
        .connect()
        .await
        .map_err(|e| connect_error(&e))?
        .close()
        .await
        .map_err(|e| connect_error(&e))?;
    PgPoolOptions::new()
        .connect_with(options)
        .await
        .map_err(|e| connect_error(&e))
}

/// The migrations compiled into this build, as a source for sqlx's [`Migrator`].
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// An entry ready to be written: the caller's values, with the selector set in canonical form
/// and the list columns encoded.
struct EntryParams {
    /// The entry's ID.
    id: String,
    /// The caller's values, selectors sorted and deduplicated.
    entry: NewEntry,
    /// The selectors as `type:value`, in the same order.
    selectors: Vec<String>,
    /// `selectors` as a JSON array.
    selectors_json: String,
    /// Hex SHA-256 of `selectors_json`: what makes two selector sets the same.
    selector_set: String,
    /// The DNS names as a JSON array.
    dns_names_json: String,
    /// The federated trust domains as a JSON array.
    federates_with_json: String,
}

impl EntryParams {
    /// Prepares `entry` to be written under `id`.
    fn new(id: String, mut entry: NewEntry) -> Result<Self, StoreError> {
        entry.selectors = canonical_selectors(entry.selectors);
        let selectors: Vec<String> = entry.selectors.iter().map(Selector::to_string).collect();
        let selectors_json = selectors_json(&selectors)?;
        let selector_set = hex(&wimse_core::digest::sha256(selectors_json.as_bytes()));
        let dns_names_json = serde_json::to_string(&entry.dns_names)
            .map_err(|e| StoreError::InvalidData(format!("dns names: {e}")))?;
        entry.federates_with.sort();
        entry.federates_with.dedup();
        let federates_with_json = serde_json::to_string(&entry.federates_with)
            .map_err(|e| StoreError::InvalidData(format!("federates with: {e}")))?;
        Ok(Self {
            id,
            entry,
            selectors,
            selectors_json,
            selector_set,
            dns_names_json,
            federates_with_json,
        })
    }

    /// The entry as stored with `revision` and `created_at`.
    fn into_entry(self, revision: i64, created_at: i64) -> RegistrationEntry {
        let NewEntry {
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns_names,
            hint,
            admin,
            downstream,
            federates_with,
        } = self.entry;
        RegistrationEntry {
            id: self.id,
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns_names,
            hint,
            admin,
            downstream,
            federates_with,
            revision,
            created_at,
        }
    }
}

/// `selectors` as `type:value`, sorted and deduplicated.
fn canonical_selector_strings(selectors: &[Selector]) -> Vec<String> {
    canonical_selectors(selectors.to_vec())
        .iter()
        .map(Selector::to_string)
        .collect()
}

/// `selectors` (already `type:value` strings) as a JSON array.
fn selectors_json(selectors: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(selectors).map_err(|e| StoreError::InvalidData(format!("selectors: {e}")))
}

/// Reads an `entries` row back into the model.
fn entry_from_row(row: EntryRow) -> Result<RegistrationEntry, StoreError> {
    let (
        id,
        spiffe_id,
        parent_id,
        selectors,
        x509_ttl,
        jwt_ttl,
        dns_names,
        hint,
        admin,
        downstream,
        revision,
        created_at,
        federates_with,
    ) = row;
    let context = |column: &str| format!("entry `{id}`, column `{column}`");
    Ok(RegistrationEntry {
        spiffe_id: stored_id(&spiffe_id, || context("spiffe_id"))?,
        parent_id: stored_id(&parent_id, || context("parent_id"))?,
        selectors: stored_selectors(&selectors, || context("selectors"))?,
        x509_ttl: stored_ttl(x509_ttl, || context("x509_ttl"))?,
        jwt_ttl: stored_ttl(jwt_ttl, || context("jwt_ttl"))?,
        dns_names: serde_json::from_str(&dns_names)
            .map_err(|e| StoreError::InvalidData(format!("{}: {e}", context("dns_names"))))?,
        federates_with: serde_json::from_str(&federates_with)
            .map_err(|e| StoreError::InvalidData(format!("{}: {e}", context("federates_with"))))?,
        hint,
        admin,
        downstream,
        revision,
        created_at,
        id,
    })
}

/// The columns of `federation_relationships` in the order of [`FederationRow`].
macro_rules! federation_columns {
    () => {
        "trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, created_at, \
         last_refresh_at, last_error"
    };
}
use federation_columns;

/// A `federation_relationships` row as read back, in the order of [`federation_columns!`].
type FederationRow = (
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

/// The `endpoint_spiffe_id` column for `profile`.
fn endpoint_id_of(profile: &EndpointProfile) -> Option<&str> {
    match profile {
        EndpointProfile::HttpsWeb => None,
        EndpointProfile::HttpsSpiffe { endpoint_id } => Some(endpoint_id.as_str()),
    }
}

/// Reads a `federation_relationships` row back into the model.
fn federation_from_row(row: FederationRow) -> Result<FederationRelationship, StoreError> {
    let (td, url, profile, endpoint_id, created_at, last_refresh_at, last_error) = row;
    let context = |column: &str| format!("federation with `{td}`, column `{column}`");
    let profile = match (profile.as_str(), endpoint_id) {
        ("https_web", None) => EndpointProfile::HttpsWeb,
        ("https_spiffe", Some(id)) => EndpointProfile::HttpsSpiffe {
            endpoint_id: stored_id(&id, || context("endpoint_spiffe_id"))?,
        },
        (other, _) => {
            return Err(StoreError::InvalidData(format!(
                "{}: `{other}` with or without an endpoint ID that it does not take",
                context("profile")
            )));
        }
    };
    Ok(FederationRelationship {
        trust_domain: stored_trust_domain(&td, || context("trust_domain"))?,
        bundle_endpoint_url: url,
        profile,
        created_at,
        last_refresh_at,
        last_error,
    })
}

/// Reads a `federated_bundles` row (trust domain, bundle JSON, update time) back.
fn federated_bundle_from_row(row: (String, String, i64)) -> Result<FederatedBundle, StoreError> {
    let (td, json, updated_at) = row;
    let context = |column: &str| format!("federated bundle of `{td}`, column `{column}`");
    let trust_domain = stored_trust_domain(&td, || context("trust_domain"))?;
    let bundle = TrustBundle::from_spiffe_json(trust_domain, json.as_bytes())
        .map_err(|e| StoreError::InvalidData(format!("{}: {e}", context("bundle"))))?;
    Ok(FederatedBundle { bundle, updated_at })
}

/// Parses a stored trust domain name; `context` names where it came from.
fn stored_trust_domain(
    value: &str,
    context: impl Fn() -> String,
) -> Result<TrustDomain, StoreError> {
    TrustDomain::new(value).map_err(|e| StoreError::InvalidData(format!("{}: {e}", context())))
}

/// Reads an `agents` row back into the model.
fn agent_from_row(row: AgentRow) -> Result<AttestedAgent, StoreError> {
    let (spiffe_id, attestation_type, serial, expires_at, banned, selectors, last_seen) = row;
    let context = |column: &str| format!("agent `{spiffe_id}`, column `{column}`");
    Ok(AttestedAgent {
        selectors: stored_selectors(&selectors, || context("selectors"))?,
        spiffe_id: stored_id(&spiffe_id, || context("spiffe_id"))?,
        attestation_type,
        serial,
        expires_at,
        banned,
        last_seen,
    })
}

/// Reads an `authorities` row back into the model.
fn authority_from_row(row: AuthorityRow) -> Result<Authority, StoreError> {
    let (id, server_id, kind, public_data, state, not_after, created_at) = row;
    let context = |column: &str| format!("authority `{id}` of `{server_id}`, column `{column}`");
    let kind = AuthorityKind::from_stored(&kind).ok_or_else(|| {
        StoreError::InvalidData(format!("{}: unknown kind `{kind}`", context("kind")))
    })?;
    let state = AuthorityState::from_stored(&state).ok_or_else(|| {
        StoreError::InvalidData(format!("{}: unknown state `{state}`", context("state")))
    })?;
    Ok(Authority {
        id,
        server_id,
        kind,
        public_data,
        state,
        not_after,
        created_at,
    })
}

/// Parses a stored workload ID; `context` names where it came from.
fn stored_id(value: &str, context: impl Fn() -> String) -> Result<WorkloadId, StoreError> {
    WorkloadId::parse(value).map_err(|e| StoreError::InvalidData(format!("{}: {e}", context())))
}

/// Parses a stored JSON array of selectors; `context` names where it came from.
fn stored_selectors(json: &str, context: impl Fn() -> String) -> Result<Vec<Selector>, StoreError> {
    let texts: Vec<String> = serde_json::from_str(json)
        .map_err(|e| StoreError::InvalidData(format!("{}: {e}", context())))?;
    texts
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e| StoreError::InvalidData(format!("{}: {e}", context())))
        })
        .collect()
}

/// Reads back a TTL, stored as a 64-bit integer; `context` names where it came from.
fn stored_ttl(value: i64, context: impl Fn() -> String) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::InvalidData(format!("{}: ttl {value} is out of range", context())))
}

/// A random version-4 UUID, as entry IDs are in SPIRE.
fn new_entry_id() -> Result<String, StoreError> {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| StoreError::Database("the system random generator failed".to_owned()))?;
    // RFC 9562 §5.4: version 4 in the high nibble of byte 6, variant 0b10 in byte 8.
    let [
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
        b8,
        b9,
        b10,
        b11,
        b12,
        b13,
        b14,
        b15,
    ] = bytes;
    let b6 = (b6 & 0x0f) | 0x40;
    let b8 = (b8 & 0x3f) | 0x80;
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(&[b0, b1, b2, b3]),
        hex(&[b4, b5]),
        hex(&[b6, b7]),
        hex(&[b8, b9]),
        hex(&[b10, b11, b12, b13, b14, b15])
    ))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether `error` is the database refusing a duplicate key.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Maps a failed entry write: a duplicate key is a duplicate entry.
fn entry_write_error(error: sqlx::Error) -> StoreError {
    if is_unique_violation(&error) {
        StoreError::DuplicateEntry
    } else {
        db_error(error)
    }
}

/// Maps a failed statement. A value that does not decode is bad data, not a failing database.
fn db_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::InvalidData(error.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// Maps a failure to open the database. sqlx's messages do not repeat the URL (which may carry
/// a password).
fn connect_error(error: &sqlx::Error) -> StoreError {
    StoreError::Database(format!("cannot open the datastore: {error}"))
}
