-- The token service: transactions an administrator revoked (PostgreSQL).
-- Kept in step with ../sqlite/0005_revoked_transactions.sql.

-- No replica issues anything more for a revoked transaction (no replacement, delegation,
-- resumption or grant). A row is kept until nothing issued for the transaction before its
-- revocation can still be presented (the longest delegation, and the clock leeway).
CREATE TABLE revoked_transactions (
    txn        TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_transactions_expiry ON revoked_transactions (expires_at);
