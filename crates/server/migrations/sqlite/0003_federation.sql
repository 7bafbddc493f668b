-- Federation with other trust domains (SQLite). Kept in step with ../postgres/0003_federation.sql.

-- The foreign trust domains whose bundles each entry's workloads receive: a JSON array of
-- trust domain names, sorted and deduplicated.
ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';

-- Where each federated trust domain publishes its bundle (SPIFFE Federation §5): the URL, the
-- endpoint profile (`https_web` or `https_spiffe`), and for `https_spiffe` the SPIFFE ID the
-- endpoint's server certificate must carry. The outcome of the last refresh is kept for
-- operators (`last_error` is NULL after a success).
CREATE TABLE federation_relationships (
    trust_domain        TEXT PRIMARY KEY,
    bundle_endpoint_url TEXT NOT NULL,
    profile             TEXT NOT NULL,
    endpoint_spiffe_id  TEXT,
    created_at          BIGINT NOT NULL,
    last_refresh_at     BIGINT,
    last_error          TEXT
);

-- The latest bundle of each foreign trust domain, as SPIFFE bundle JSON, whether fetched from
-- its endpoint or set by an operator. Never merged with this trust domain's own bundle.
CREATE TABLE federated_bundles (
    trust_domain TEXT PRIMARY KEY,
    bundle       TEXT NOT NULL,
    sequence     BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
