-- Identity chaining: the grants of other trust domains already redeemed here (SQLite).
-- Kept in step with ../postgres/0004_redeemed_grants.sql.

-- Each grant is accepted once by the whole trust domain, whichever replica it reaches: the
-- issuing trust domain and the SHA-256 (hex) of the grant's `jti`, kept until the grant
-- could no longer be accepted anyway.
CREATE TABLE redeemed_grants (
    issuer     TEXT NOT NULL,
    jti_hash   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti_hash)
);
CREATE INDEX redeemed_grants_expiry ON redeemed_grants (expires_at);
