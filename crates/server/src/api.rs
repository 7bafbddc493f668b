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

/// Names an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRequest {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
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
