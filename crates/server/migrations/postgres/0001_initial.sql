-- The initial wimse server schema (PostgreSQL). Kept in step with ../sqlite/0001_initial.sql:
-- the two differ only where the dialects do (BLOB / BYTEA).

-- Store-wide counters. `entry_revision` is bumped first in every transaction that changes an
-- entry, so its row lock orders revisions by commit; `bundle_sequence` numbers trust bundles.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('entry_revision', 0), ('bundle_sequence', 0);

CREATE TABLE entries (
    id           TEXT PRIMARY KEY,
    spiffe_id    TEXT NOT NULL,
    parent_id    TEXT NOT NULL,
    -- JSON array of `type:value`, sorted and deduplicated.
    selectors    TEXT NOT NULL,
    -- Hex SHA-256 of `selectors`: with the two IDs, the uniqueness rule for entries.
    selector_set TEXT NOT NULL,
    x509_ttl     BIGINT NOT NULL,
    jwt_ttl      BIGINT NOT NULL,
    -- JSON array of DNS names.
    dns_names    TEXT NOT NULL,
    hint         TEXT,
    admin        BOOLEAN NOT NULL,
    downstream   BOOLEAN NOT NULL,
    revision     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (spiffe_id, parent_id, selector_set)
);
-- Incremental sync reads only the rows after a revision.
CREATE UNIQUE INDEX entries_revision ON entries (revision);
CREATE INDEX entries_parent_id ON entries (parent_id);

-- One row per selector of each entry, for "entries having all of these selectors".
CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    PRIMARY KEY (entry_id, selector)
);
CREATE INDEX entry_selectors_selector ON entry_selectors (selector);

-- Deleted entries, so that agents syncing by revision learn of the deletion.
CREATE TABLE entry_tombstones (
    entry_id TEXT PRIMARY KEY,
    revision BIGINT NOT NULL
);
CREATE UNIQUE INDEX entry_tombstones_revision ON entry_tombstones (revision);

-- Only the hex SHA-256 of each join token: the token itself is never stored.
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE agents (
    spiffe_id        TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    serial           TEXT NOT NULL,
    expires_at       BIGINT NOT NULL,
    banned           BOOLEAN NOT NULL,
    -- JSON array of `type:value`, sorted and deduplicated.
    selectors        TEXT NOT NULL,
    last_seen        BIGINT NOT NULL
);

-- The public half of each replica's signing keys; private keys never reach the database.
CREATE TABLE authorities (
    id          TEXT NOT NULL,
    server_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    public_data BYTEA NOT NULL,
    state       TEXT NOT NULL,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (id, server_id)
);
CREATE INDEX authorities_not_after ON authorities (not_after);
