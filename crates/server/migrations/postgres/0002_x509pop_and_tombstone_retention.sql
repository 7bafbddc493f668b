-- x509pop challenges, and a retention for tombstones (PostgreSQL). Kept in step with
-- ../sqlite/0002_x509pop_and_tombstone_retention.sql.

-- One-time x509pop challenges: only the SHA-256 of the nonce (a copy of the database does
-- not answer a challenge, and answering also needs the certificate's private key), the
-- fingerprint of the certificate it was issued to, and its expiry. Any replica on the same
-- database can check and consume one.
CREATE TABLE x509pop_challenges (
    nonce_hash  TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX x509pop_challenges_expires_at ON x509pop_challenges (expires_at);
-- A new challenge replaces the certificate's previous one: at most one row per certificate.
CREATE INDEX x509pop_challenges_fingerprint ON x509pop_challenges (fingerprint);

-- When each entry was deleted, so that tombstones can be pruned after a retention.
-- Existing tombstones count as deleted now: their retention starts with this migration.
ALTER TABLE entry_tombstones ADD COLUMN deleted_at BIGINT NOT NULL DEFAULT 0;
UPDATE entry_tombstones SET deleted_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT);
CREATE INDEX entry_tombstones_deleted_at ON entry_tombstones (deleted_at);

-- The highest revision of any pruned tombstone: an agent that synced up to an older revision
-- may have missed a deletion and must sync in full.
INSERT INTO counters (name, value) VALUES ('tombstone_horizon', 0);
