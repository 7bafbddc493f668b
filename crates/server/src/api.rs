//! The JSON messages of the admin API (unix socket), shared by the server and the
//! `wimse server ...` commands that call it.

use serde::{Deserialize, Serialize};

/// A registration entry as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// Entry ID.
    pub id: String,
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The parent (an agent or another entry).
    pub parent_id: String,
    /// Selectors, `type:value`.
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime, seconds.
    pub x509_ttl: u32,
    /// JWT-SVID and WIT lifetime, seconds.
    pub jwt_ttl: u32,
    /// DNS names for X.509-SVIDs.
    pub dns_names: Vec<String>,
    /// Hint for workloads with several identities.
    pub hint: Option<String>,
    /// Whether the workload may use the admin API.
    pub admin: bool,
    /// Whether the workload is a downstream server.
    pub downstream: bool,
    /// The foreign trust domains whose bundles the workload receives.
    #[serde(default)]
    pub federates_with: Vec<String>,
    /// The revision of the last change.
    pub revision: i64,
}

/// The fields to create or replace an entry with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRequest {
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The parent ID.
    pub parent_id: String,
    /// Selectors, `type:value`.
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime, seconds (server default if absent).
    #[serde(default)]
    pub x509_ttl: Option<u32>,
    /// JWT-SVID and WIT lifetime, seconds (server default if absent).
    #[serde(default)]
    pub jwt_ttl: Option<u32>,
    /// DNS names.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Hint.
    #[serde(default)]
    pub hint: Option<String>,
    /// Admin flag.
    #[serde(default)]
    pub admin: bool,
    /// Downstream flag.
    #[serde(default)]
    pub downstream: bool,
    /// Foreign trust domains (names) whose bundles the workload receives; each needs a
    /// federation relationship or a stored bundle.
    #[serde(default)]
    pub federates_with: Vec<String>,
}

/// A request for a join token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Lifetime in seconds.
    pub ttl: u32,
}

/// A freshly generated join token (shown once; the server keeps only its hash).
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: String,
    /// The SPIFFE ID the agent that uses it will get.
    pub agent_id: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("agent_id", &self.agent_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An attested agent as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// How it attested.
    pub attestation_type: String,
    /// Serial of its current certificate.
    pub serial: String,
    /// When its certificate expires.
    pub expires_at: i64,
    /// Whether it is banned.
    pub banned: bool,
}

/// One of the trust domain's signing authorities as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityView {
    /// What it signs: `x509`, `jwt` or `wit`.
    pub kind: String,
    /// Its ID (the `kid` of JWT and WIT keys).
    pub id: String,
    /// `prepared`, `active`, `retired` or `tainted`.
    pub state: String,
    /// The replica that holds it.
    pub server_id: String,
    /// Whether that is the replica answering.
    pub this_server: bool,
    /// When it was published (Unix seconds).
    pub published_at: i64,
    /// When it leaves the bundle (Unix seconds).
    pub not_after: i64,
}

/// Names a kind of authority to prepare or activate, or a key to taint or revoke
/// (`POST /v1/authorities/{prepare,activate,taint,revoke}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthorityRequest {
    /// `x509`, `jwt` or `wit`.
    pub kind: String,
    /// Activate even if relying parties may not know the key yet.
    #[serde(default)]
    pub force: bool,
    /// The key to taint or revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A credential an operator mints for an identity without an agent
/// (`POST /v1/mint/{x509,jwt,wit}`, `wimse server x509|jwt|wit mint`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MintRequest {
    /// The identity: a SPIFFE ID of this trust domain.
    pub spiffe_id: String,
    /// Lifetime in seconds (default: 3600 for X509-SVIDs, 300 for tokens), cut to the
    /// signing key's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// X509-SVID: the certificate signing request, DER in base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// X509-SVID: DNS names to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// JWT-SVID: its audiences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// WIT: the public JWK (with `alg`) it binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwk: Option<wimse_core::jose::Jwk>,
}

/// A minted credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MintResponse {
    /// X509-SVID: the chain, leaf first, each DER in base64url.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub svid_chain: Vec<String>,
    /// JWT-SVID or WIT: the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Names a transaction to revoke (`POST /v1/transactions/revoke`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransactionRequest {
    /// Its `txn`, as audit records and Txn-Tokens show it.
    pub txn: String,
}

/// A revoked transaction as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedTransactionView {
    /// Its `txn`.
    pub txn: String,
    /// When it was first revoked (Unix seconds).
    pub revoked_at: i64,
    /// When the revocation is forgotten: nothing issued before it is valid past then.
    pub expires_at: i64,
}

/// Names an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRequest {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
}

/// Purges agents whose certificates expired long ago (`POST /v1/agents/purge`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPurgeRequest {
    /// How many seconds ago a certificate must have expired at least.
    pub expired_for: i64,
    /// Only say which agents would be purged.
    #[serde(default)]
    pub dry_run: bool,
}

/// The agents purged, or that would be with `dry_run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPurgeResponse {
    /// Their SPIFFE IDs, sorted.
    pub purged: Vec<String>,
}

/// A federation relationship to create or replace (`POST /v1/federations`,
/// `PUT /v1/federations/{trust_domain}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRequest {
    /// The foreign trust domain's name (`example.org`, or `spiffe://example.org`).
    pub trust_domain: String,
    /// Its bundle endpoint: an `https` URL without userinfo.
    pub bundle_endpoint_url: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// For `https_spiffe` only (and then required): the SPIFFE ID of the endpoint's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<String>,
    /// An initial bundle of the foreign trust domain: what a self-serving `https_spiffe`
    /// endpoint is first authenticated with. Stored like `PUT /v1/bundles/{trust_domain}`,
    /// once the relationship is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The format of `bundle`: `spiffe` (SPIFFE bundle JSON, the default) or `pem` (X.509
    /// authorities only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_format: Option<String>,
}

/// A federation relationship as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationView {
    /// The foreign trust domain's name.
    pub trust_domain: String,
    /// Its bundle endpoint.
    pub bundle_endpoint_url: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// For `https_spiffe`: the endpoint server's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<String>,
    /// When the relationship was created, Unix seconds.
    pub created_at: i64,
    /// When its bundle was last fetched or a fetch last failed, Unix seconds.
    #[serde(default)]
    pub last_refresh_at: Option<i64>,
    /// Why the last fetch failed (`None` after a success).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The `spiffe_sequence` of the stored bundle, if one is stored.
    #[serde(default)]
    pub bundle_sequence: Option<u64>,
}

/// A stored bundle of a foreign trust domain as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedBundleView {
    /// The foreign trust domain's name.
    pub trust_domain: String,
    /// Its `spiffe_sequence`.
    pub sequence: u64,
    /// How many X.509 authorities it holds.
    pub x509_authorities: usize,
    /// How many JWT (JWT-SVID and Txn-Token) authorities it holds.
    pub jwt_authorities: usize,
    /// How many WIT authorities it holds.
    pub wit_authorities: usize,
    /// When it was stored, Unix seconds.
    pub updated_at: i64,
    /// The bundle, SPIFFE bundle JSON.
    pub bundle: String,
}

/// An error answer (RFC 9457 problem details).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Problem {
    /// A short, human-readable summary.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What exactly was wrong.
    pub detail: String,
}
