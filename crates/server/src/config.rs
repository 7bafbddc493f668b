//! Server configuration: a TOML file with every setting, overridden by command-line flags.
//!
//! ```toml
//! trust_domain = "example.org"
//! data_dir = "/var/lib/wimse"
//! bind = "127.0.0.1:8443"
//! admin_socket = "/var/lib/wimse/server.sock"
//! datastore = "postgres://wimse@db/wimse"   # default: SQLite in the data dir
//! ca_ttl = 86400                            # seconds
//! jwt_key_ttl = 86400
//! default_x509_ttl = 3600
//! default_jwt_ttl = 300
//! refresh_hint = 300
//! wit_profile = "spiffe"                    # or "wimse"
//! upstream_ca_cert = "/etc/wimse/upstream.crt"
//! upstream_ca_key = "/etc/wimse/upstream.key"
//! x509pop_ca_bundle = "/etc/wimse/agents-ca.pem"
//! agent_svid_ttl = 3600                     # agents' own X509-SVIDs
//! tombstone_retention = 86400               # how long deleted entries are remembered for sync
//! audit_log = "/var/log/wimse/audit.jsonl"  # default: <data_dir>/audit.jsonl; "" turns it off
//! federation_web_roots = "/etc/wimse/web-roots.pem"  # https_web bundle endpoints: these roots
//!                                           # instead of the Web PKI's (a private PKI)
//!
//! [token_service]                           # Txn-Tokens at POST /oauth2/token (RFC 8693)
//! txn_token_ttl = 300                       # seconds, at most 3600
//! max_replacements = 8                      # how often one transaction's token may be replaced
//! requesters = ["spiffe://example.org/gateway"]  # who may start transactions
//!
//! [[token_service.issuers]]                 # whose access tokens may start them
//! issuer = "https://login.example.com"
//! audience = "wimse"
//! jwks_uri = "https://login.example.com/.well-known/jwks.json"  # or jwks_file = "/etc/..."
//! jwks_ca_file = "/etc/wimse/login-ca.pem"  # jwks_uri's server: default Mozilla's roots
//! # oidc_discovery = true                   # instead of jwks_uri: the one its OIDC metadata names
//! subject_prefix = "login:"                 # default: none
//!
//! # Identity chaining (draft-ietf-oauth-identity-chaining): carrying a transaction's
//! # subject into another trust domain, whose bundle the server holds (federation).
//! [[token_service.chain_to]]                # grants this domain issues for another
//! trust_domain = "partner.example"
//! requesters = ["spiffe://example.org/gateway"]  # who may ask (required)
//! max_scope = "orders"                      # default: the Txn-Token's scope
//!
//! [[token_service.chain_from]]              # grants from another domain accepted here
//! trust_domain = "partner.example"
//! subject_prefix = "partner.example/"       # the default: the trust domain and a slash
//! max_scope = "orders"                      # default: the grant's scope
//! clients = ["spiffe://partner.example/gateway"]  # default: any workload of that domain
//!
//! [[token_service.self_signed]]             # workloads starting transactions themselves
//! requester = "spiffe://example.org/batch"  # with a subject token signed by its X509-SVID key
//! max_scope = "reports"                     # required
//! subjects = ["nightly-report"]             # besides its own ID (default: none)
//!
//! [[token_service.delegation]]              # workloads finishing transactions later
//! actor = "spiffe://example.org/worker"     # exchanges a job's Txn-Token for a delegation
//! max_scope = "orders.read"                 # required
//! lifetime = 3600                           # seconds a delegation lasts (default 3600, at most 86400)
//!
//! # Federation relationships kept as declared here (created or updated at start; the same
//! # fields as `wimse server federation create`)
//! [[federation]]
//! trust_domain = "partner.example"
//! bundle_endpoint_url = "https://wimse.partner.example:8443/.well-known/spiffe-bundle"
//! profile = "https_spiffe"                  # or "https_web"
//! endpoint_spiffe_id = "spiffe://partner.example/wimse/server"
//! trust_bundle = "/etc/wimse/partner-bundle.json"  # first bundle, stored while none is held
//! trust_bundle_format = "spiffe"            # or "pem"
//!
//! # What a client may hold of the public listener (each optional; durations in seconds)
//! [listener]
//! max_connections = 50000                   # default 50,000 (within the open-file limit)
//! max_connections_per_client = 25000        # one IPv4 address or IPv6 /64; default half
//! idle_timeout = 300                        # a connection with no request in flight
//! header_timeout = 30                       # a request's headers; a new connection's first
//! handshake_timeout = 10                    # TLS
//! stall_timeout = 60                        # a body or a response making no progress
//! drain_timeout = 4                         # for requests in flight on stop
//! ```
//!
//! `[token_service]` also takes `grant_ttl` (seconds a grant lives, default 60, at most
//! 300) and `access_token_ttl` (for chained access tokens, default 300, at most 3600).

use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use wimse_core::token::delegation::MAX_DELEGATION_LIFETIME;
use wimse_core::token::exchange::Scope;
use wimse_core::token::wit::WitProfile;
use wimse_core::{TrustDomain, WorkloadId};

/// Default lifetime of an agent's own X509-SVID: one hour.
pub const DEFAULT_AGENT_SVID_TTL: u32 = 3600;

/// Default retention of entry tombstones: one day.
pub const DEFAULT_TOMBSTONE_RETENTION: i64 = 24 * 3600;

/// A `[listener]` setting out of range, named with its place in the file.
fn listener_error(e: &wimse_listen::LimitsError) -> ConfigError {
    ConfigError::Invalid {
        name: e.path(),
        message: e.to_string(),
    }
}

/// The settings as written in a TOML file; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The trust domain this server is the authority of.
    pub trust_domain: Option<String>,
    /// Where keys, the SQLite database and the admin socket live.
    pub data_dir: Option<PathBuf>,
    /// The address of the agent API and the public endpoints (TLS).
    pub bind: Option<SocketAddr>,
    /// The admin API's unix socket.
    pub admin_socket: Option<PathBuf>,
    /// `sqlite://...` or `postgres://...`.
    pub datastore: Option<String>,
    /// Lifetime of the X.509 CA, in seconds.
    pub ca_ttl: Option<i64>,
    /// Lifetime of the JWT and WIT signing keys, in seconds.
    pub jwt_key_ttl: Option<i64>,
    /// X.509-SVID lifetime for entries that set none, in seconds.
    pub default_x509_ttl: Option<u32>,
    /// JWT-SVID and WIT lifetime for entries that set none, in seconds.
    pub default_jwt_ttl: Option<u32>,
    /// `spiffe_refresh_hint` of the published bundle, in seconds.
    pub refresh_hint: Option<u64>,
    /// `spiffe` (WIT-SVID, default) or `wimse` (generic WIMSE profile).
    pub wit_profile: Option<String>,
    /// An upstream CA certificate (PEM) that signs this server's CA.
    pub upstream_ca_cert: Option<PathBuf>,
    /// The upstream CA's private key (PKCS#8 PEM).
    pub upstream_ca_key: Option<PathBuf>,
    /// CA certificates (PEM) that agents' x509pop certificates must chain to.
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// PEM roots that `https_web` bundle endpoints are checked against instead of the Web
    /// PKI's (Mozilla's) roots.
    pub federation_web_roots: Option<PathBuf>,
    /// Lifetime of an agent's own X509-SVID, in seconds.
    pub agent_svid_ttl: Option<u32>,
    /// How long the tombstone of a deleted entry is kept for agents' incremental sync, in
    /// seconds; an agent that last synced before that gets a full resync.
    pub tombstone_retention: Option<i64>,
    /// The tamper-evident audit log of attestations and issuance (empty: none).
    pub audit_log: Option<PathBuf>,
    /// The Transaction Token Service.
    #[serde(default)]
    pub token_service: TokenServiceFile,
    /// Federation relationships kept as the file declares them (`[[federation]]`).
    #[serde(default)]
    pub federation: Vec<FederationFile>,
    /// What a client may hold of the public listener (`[listener]`).
    #[serde(default)]
    pub listener: wimse_listen::LimitSettings,
}

/// One `[[federation]]` entry: the same fields as `wimse server federation create`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFile {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// Its bundle endpoint.
    pub bundle_endpoint_url: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// For `https_spiffe`: the endpoint server's SPIFFE ID.
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
    /// A first bundle of that trust domain, stored while none is held.
    #[serde(default)]
    pub trust_bundle: Option<PathBuf>,
    /// Its format: `spiffe` (default) or `pem`.
    #[serde(default)]
    pub trust_bundle_format: Option<String>,
}

/// The `[token_service]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceFile {
    /// Txn-Token lifetime, seconds (default 300, at most 3600).
    pub txn_token_ttl: Option<i64>,
    /// How many times one transaction's token may be replaced (default 8).
    pub max_replacements: Option<usize>,
    /// The workloads that may start transactions (exact IDs in this trust domain).
    #[serde(default)]
    pub requesters: Vec<String>,
    /// The authorization servers whose access tokens may start them.
    #[serde(default)]
    pub issuers: Vec<IssuerFile>,
    /// Lifetime of a JWT authorization grant, seconds (default 60, at most 300).
    pub grant_ttl: Option<i64>,
    /// Lifetime of an access token issued for a grant, seconds (default 300, at most 3600).
    pub access_token_ttl: Option<i64>,
    /// The trust domains this one issues grants for.
    #[serde(default)]
    pub chain_to: Vec<ChainToFile>,
    /// The trust domains whose grants this one accepts.
    #[serde(default)]
    pub chain_from: Vec<ChainFromFile>,
    /// The workloads that may start transactions with self-signed subject tokens.
    #[serde(default)]
    pub self_signed: Vec<SelfSignedFile>,
    /// The workloads that may take over transactions to finish them later.
    #[serde(default)]
    pub delegation: Vec<DelegationFile>,
}

/// One `[[token_service.delegation]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationFile {
    /// The workload (an exact ID of this trust domain).
    pub actor: String,
    /// The widest scope a delegation to it may carry.
    pub max_scope: String,
    /// Seconds a delegation lasts (default 3600, at most 86400).
    pub lifetime: Option<i64>,
}

/// One `[[token_service.delegation]]` rule, resolved.
#[derive(Clone, Debug)]
pub struct DelegationRule {
    /// The workload that may take over transactions.
    pub actor: WorkloadId,
    /// The widest scope a delegation to it may carry.
    pub max_scope: Scope,
    /// Seconds a delegation lasts.
    pub lifetime: i64,
}

/// One `[[token_service.self_signed]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfSignedFile {
    /// The workload (an exact ID of this trust domain).
    pub requester: String,
    /// The widest scope it may start (required: its tokens state their own scope).
    pub max_scope: String,
    /// The subjects it may name besides itself.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Whether it may also state the subject in an unsigned JSON object (default: no).
    #[serde(default)]
    pub unsigned_json: bool,
}

/// One `[[token_service.self_signed]]` rule, resolved.
#[derive(Clone, Debug)]
pub struct SelfSignedRule {
    /// The workload that may start transactions with self-signed subject tokens.
    pub requester: WorkloadId,
    /// The widest scope it may start.
    pub max_scope: Scope,
    /// The subjects it may name besides itself.
    pub subjects: BTreeSet<String>,
    /// Whether it may also state the subject in an unsigned JSON object
    /// (`urn:ietf:params:oauth:token-type:unsigned_json`), where its client
    /// authentication is the only proof.
    pub unsigned_json: bool,
}

/// One `[[token_service.chain_to]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainToFile {
    /// The trust domain a grant is for.
    pub trust_domain: String,
    /// The workloads of this trust domain that may ask for one.
    pub requesters: Vec<String>,
    /// The widest scope a grant may carry.
    #[serde(default)]
    pub max_scope: Option<String>,
}

/// One `[[token_service.chain_from]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainFromFile {
    /// The trust domain whose grants are accepted.
    pub trust_domain: String,
    /// Prepended to a grant's subject (default: `<trust_domain>/`).
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// The widest scope an access token for its grants may carry.
    #[serde(default)]
    pub max_scope: Option<String>,
    /// The workloads of that domain that may present grants (default: any).
    #[serde(default)]
    pub clients: Option<Vec<String>>,
}

/// A resolved `[[token_service.chain_to]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTo {
    /// The trust domain a grant is for.
    pub trust_domain: TrustDomain,
    /// Who may ask.
    pub requesters: Vec<WorkloadId>,
    /// The widest scope.
    pub max_scope: Option<Scope>,
}

/// A resolved `[[token_service.chain_from]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainFrom {
    /// The trust domain whose grants are accepted.
    pub trust_domain: TrustDomain,
    /// Prepended to a grant's subject.
    pub subject_prefix: String,
    /// The widest scope.
    pub max_scope: Option<Scope>,
    /// Who may present grants (`None`: any workload of the domain).
    pub clients: Option<Vec<WorkloadId>>,
}

/// One `[[token_service.issuers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// The issuer identifier, as its tokens' `iss`.
    pub issuer: String,
    /// The audience its tokens must name.
    pub audience: String,
    /// Its JWK Set, as a file read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Its JWK Set, as a URL fetched at start and kept fresh (`wimse_remote::issuers`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The PEM roots the `jwks_uri` server's certificate is checked against (default:
    /// Mozilla's).
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Whether its JWK Set URL is the `jwks_uri` its OpenID Provider metadata names.
    #[serde(default)]
    pub oidc_discovery: bool,
    /// Prepended to its subjects.
    #[serde(default)]
    pub subject_prefix: String,
    /// The widest scope a transaction it starts may have (default: what its token grants).
    #[serde(default)]
    pub max_scope: Option<String>,
}

/// The resolved `[token_service]` settings.
#[derive(Clone, Debug, Default)]
pub struct TokenServiceSettings {
    /// Txn-Token lifetime, seconds.
    pub txn_token_ttl: i64,
    /// Replacements allowed per transaction.
    pub max_replacements: usize,
    /// The workloads that may start transactions.
    pub requesters: Vec<WorkloadId>,
    /// The trusted issuers (their key files are read when the server starts).
    pub issuers: Vec<IssuerFile>,
    /// Grant lifetime, seconds.
    pub grant_ttl: i64,
    /// Chained access token lifetime, seconds.
    pub access_token_ttl: i64,
    /// Where grants may go.
    pub chain_to: Vec<ChainTo>,
    /// Whose grants are accepted.
    pub chain_from: Vec<ChainFrom>,
    /// Who may start transactions with self-signed subject tokens.
    pub self_signed: Vec<SelfSignedRule>,
    /// Who may take over transactions to finish them later.
    pub delegation: Vec<DelegationRule>,
}

impl TokenServiceFile {
    fn resolve(self, trust_domain: &TrustDomain) -> Result<TokenServiceSettings, ConfigError> {
        let invalid = |name, message: String| ConfigError::Invalid { name, message };
        let txn_token_ttl = self.txn_token_ttl.unwrap_or(300);
        if !(1..=3600).contains(&txn_token_ttl) {
            return Err(invalid(
                "token_service.txn_token_ttl",
                "must be 1 to 3600 seconds (a Txn-Token lives minutes or less)".into(),
            ));
        }
        let requesters = workloads_of(&self.requesters, trust_domain, "token_service.requesters")?;
        for issuer in &self.issuers {
            if issuer.issuer.is_empty() || issuer.audience.is_empty() {
                return Err(invalid(
                    "token_service.issuers",
                    "every issuer needs a non-empty `issuer` and `audience`".into(),
                ));
            }
            scope_of(
                issuer.max_scope.as_deref(),
                "token_service.issuers.max_scope",
            )?;
        }
        let ttl = |value: Option<i64>, default: i64, max: i64, name: &'static str| {
            let value = value.unwrap_or(default);
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(invalid(name, format!("must be 1 to {max} seconds")))
            }
        };
        let grant_ttl = ttl(
            self.grant_ttl,
            60,
            wimse_core::token::chain::MAX_GRANT_LIFETIME,
            "token_service.grant_ttl",
        )?;
        let access_token_ttl = ttl(
            self.access_token_ttl,
            300,
            3600,
            "token_service.access_token_ttl",
        )?;
        let mut chain_to: Vec<ChainTo> = Vec::new();
        for file in self.chain_to {
            let name = "token_service.chain_to";
            let other = foreign_domain(&file.trust_domain, trust_domain, name)?;
            if chain_to.iter().any(|c| c.trust_domain == other) {
                return Err(invalid(name, format!("`{other}` is named twice")));
            }
            if file.requesters.is_empty() {
                return Err(invalid(
                    "token_service.chain_to.requesters",
                    format!("name who may ask for grants for `{other}`"),
                ));
            }
            chain_to.push(ChainTo {
                trust_domain: other,
                requesters: workloads_of(
                    &file.requesters,
                    trust_domain,
                    "token_service.chain_to.requesters",
                )?,
                max_scope: scope_of(
                    file.max_scope.as_deref(),
                    "token_service.chain_to.max_scope",
                )?,
            });
        }
        let mut chain_from: Vec<ChainFrom> = Vec::new();
        for file in self.chain_from {
            let name = "token_service.chain_from";
            let other = foreign_domain(&file.trust_domain, trust_domain, name)?;
            if chain_from.iter().any(|c| c.trust_domain == other) {
                return Err(invalid(name, format!("`{other}` is named twice")));
            }
            chain_from.push(ChainFrom {
                subject_prefix: file.subject_prefix.unwrap_or_else(|| format!("{other}/")),
                max_scope: scope_of(
                    file.max_scope.as_deref(),
                    "token_service.chain_from.max_scope",
                )?,
                clients: file
                    .clients
                    .map(|c| workloads_of(&c, &other, "token_service.chain_from.clients"))
                    .transpose()?,
                trust_domain: other,
            });
        }
        Ok(TokenServiceSettings {
            txn_token_ttl,
            max_replacements: self.max_replacements.unwrap_or(8),
            requesters,
            issuers: self.issuers,
            grant_ttl,
            access_token_ttl,
            chain_to,
            chain_from,
            self_signed: self_signed_rules(self.self_signed, trust_domain)?,
            delegation: delegation_rules(self.delegation, trust_domain)?,
        })
    }
}

/// A `[[federation]]` entry as the request the admin API would take, its bundle file
/// read, checked as the admin API checks one.
fn federation_request(
    index: usize,
    file: FederationFile,
    own: &TrustDomain,
) -> Result<crate::api::FederationRequest, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: "federation",
        message: format!("[{index}]: {message}"),
    };
    let bundle = file
        .trust_bundle
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
        })
        .transpose()?;
    let request = crate::api::FederationRequest {
        trust_domain: file.trust_domain,
        bundle_endpoint_url: file.bundle_endpoint_url,
        profile: file.profile,
        endpoint_spiffe_id: file.endpoint_spiffe_id,
        bundle,
        bundle_format: file.trust_bundle_format,
    };
    let relationship =
        crate::federation::relationship(&request, own, 0).map_err(|e| invalid(e.to_string()))?;
    crate::federation::initial_bundle(&relationship, &request)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(request)
}

/// The `[[token_service.self_signed]]` entries, checked: workloads of this trust domain,
/// each named once, with a valid `max_scope` and no empty subject.
fn self_signed_rules(
    files: Vec<SelfSignedFile>,
    trust_domain: &TrustDomain,
) -> Result<Vec<SelfSignedRule>, ConfigError> {
    let invalid = |name, message: String| ConfigError::Invalid { name, message };
    let mut self_signed: Vec<SelfSignedRule> = Vec::new();
    for file in files {
        let name = "token_service.self_signed";
        let requester = workloads_of(
            std::slice::from_ref(&file.requester),
            trust_domain,
            "token_service.self_signed.requester",
        )?
        .into_iter()
        .next()
        .ok_or_else(|| invalid(name, "`requester` is missing".into()))?;
        if self_signed.iter().any(|r| r.requester == requester) {
            return Err(invalid(name, format!("`{requester}` is named twice")));
        }
        if file.subjects.iter().any(String::is_empty) {
            return Err(invalid(
                "token_service.self_signed.subjects",
                "a subject must not be empty".into(),
            ));
        }
        self_signed.push(SelfSignedRule {
            requester,
            max_scope: scope_of(Some(&file.max_scope), "token_service.self_signed.max_scope")?
                .ok_or_else(|| invalid(name, "`max_scope` is missing".into()))?,
            subjects: file.subjects.into_iter().collect(),
            unsigned_json: file.unsigned_json,
        });
    }
    Ok(self_signed)
}

/// The `[[token_service.delegation]]` entries, checked: workloads of this trust domain,
/// each named once, with a valid `max_scope` and a lifetime of 60 s to a day.
fn delegation_rules(
    files: Vec<DelegationFile>,
    trust_domain: &TrustDomain,
) -> Result<Vec<DelegationRule>, ConfigError> {
    let invalid = |name, message: String| ConfigError::Invalid { name, message };
    let mut rules: Vec<DelegationRule> = Vec::new();
    for file in files {
        let name = "token_service.delegation";
        let actor = workloads_of(
            std::slice::from_ref(&file.actor),
            trust_domain,
            "token_service.delegation.actor",
        )?
        .into_iter()
        .next()
        .ok_or_else(|| invalid(name, "`actor` is missing".into()))?;
        if rules.iter().any(|r| r.actor == actor) {
            return Err(invalid(name, format!("`{actor}` is named twice")));
        }
        let lifetime = file.lifetime.unwrap_or(3600);
        if !(60..=MAX_DELEGATION_LIFETIME).contains(&lifetime) {
            return Err(invalid(
                "token_service.delegation.lifetime",
                format!("must be 60 to {MAX_DELEGATION_LIFETIME} seconds"),
            ));
        }
        rules.push(DelegationRule {
            actor,
            max_scope: scope_of(Some(&file.max_scope), "token_service.delegation.max_scope")?
                .ok_or_else(|| invalid(name, "`max_scope` is missing".into()))?,
            lifetime,
        });
    }
    Ok(rules)
}

/// Workload IDs, each of `trust_domain`.
fn workloads_of(
    texts: &[String],
    trust_domain: &TrustDomain,
    name: &'static str,
) -> Result<Vec<WorkloadId>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { name, message };
    texts
        .iter()
        .map(|text| {
            let id = WorkloadId::parse(text).map_err(|e| invalid(format!("`{text}`: {e}")))?;
            if id.trust_domain() != trust_domain {
                return Err(invalid(format!(
                    "`{text}` is not in trust domain `{trust_domain}`"
                )));
            }
            Ok(id)
        })
        .collect()
}

/// Another trust domain than `own`.
fn foreign_domain(
    text: &str,
    own: &TrustDomain,
    name: &'static str,
) -> Result<TrustDomain, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { name, message };
    let other = TrustDomain::new(text).map_err(|e| invalid(format!("`{text}`: {e}")))?;
    if &other == own {
        return Err(invalid(format!(
            "`{text}` is this server's own trust domain"
        )));
    }
    Ok(other)
}

fn scope_of(text: Option<&str>, name: &'static str) -> Result<Option<Scope>, ConfigError> {
    text.map(Scope::parse)
        .transpose()
        .map_err(|e| ConfigError::Invalid {
            name,
            message: e.description().to_owned(),
        })
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file `{path}` is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A setting has an invalid value.
    #[error("setting `{name}` is invalid: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// The resolved settings the server runs with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The federation relationships the file declares.
    pub federation: Vec<crate::api::FederationRequest>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The TLS listener's address.
    pub bind: SocketAddr,
    /// The admin socket's path.
    pub admin_socket: PathBuf,
    /// The datastore URL.
    pub datastore: String,
    /// CA lifetime, seconds.
    pub ca_ttl: i64,
    /// JWT/WIT key lifetime, seconds.
    pub jwt_key_ttl: i64,
    /// Default X.509-SVID lifetime, seconds.
    pub default_x509_ttl: u32,
    /// Default JWT-SVID and WIT lifetime, seconds.
    pub default_jwt_ttl: u32,
    /// Bundle refresh hint, seconds.
    pub refresh_hint: u64,
    /// The WIT profile.
    pub wit_profile: WitProfile,
    /// Upstream CA certificate and key files.
    pub upstream_ca: Option<(PathBuf, PathBuf)>,
    /// CA bundle for x509pop node attestation.
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// PEM roots for `https_web` bundle endpoints (default: the Web PKI's).
    pub federation_web_roots: Option<PathBuf>,
    /// Agents' own X509-SVID lifetime, seconds.
    pub agent_svid_ttl: u32,
    /// Tombstone retention, seconds.
    pub tombstone_retention: i64,
    /// The audit log file, if any.
    pub audit_log: Option<PathBuf>,
    /// The Transaction Token Service.
    pub token_service: TokenServiceSettings,
    /// What a client may hold of the public listener.
    pub listener: wimse_listen::ConnectionLimits,
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// Resolves the file's settings over the defaults (flags are applied to `self` first).
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let invalid = |name, message: String| ConfigError::Invalid { name, message };
        let trust_domain = TrustDomain::new(self.trust_domain.as_deref().unwrap_or("example.org"))
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from(".wimse"));
        let admin_socket = self
            .admin_socket
            .unwrap_or_else(|| data_dir.join("server.sock"));
        let datastore = self.datastore.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("datastore.sqlite3").display()
            )
        });
        if !(datastore.starts_with("sqlite:")
            || datastore.starts_with("postgres://")
            || datastore.starts_with("postgresql://"))
        {
            return Err(invalid(
                "datastore",
                "expected a `sqlite:` or `postgres://` URL".into(),
            ));
        }
        let positive = |name, value: i64| {
            if value > 0 {
                Ok(value)
            } else {
                Err(invalid(name, "must be positive".into()))
            }
        };
        let ca_ttl = positive("ca_ttl", self.ca_ttl.unwrap_or(24 * 3600))?;
        let jwt_key_ttl = positive("jwt_key_ttl", self.jwt_key_ttl.unwrap_or(24 * 3600))?;
        let tombstone_retention = positive(
            "tombstone_retention",
            self.tombstone_retention
                .unwrap_or(DEFAULT_TOMBSTONE_RETENTION),
        )?;
        let agent_svid_ttl = self.agent_svid_ttl.unwrap_or(DEFAULT_AGENT_SVID_TTL);
        if agent_svid_ttl == 0 {
            return Err(invalid("agent_svid_ttl", "must be positive".into()));
        }
        let wit_profile = match self.wit_profile.as_deref().unwrap_or("spiffe") {
            "spiffe" => WitProfile::Spiffe,
            "wimse" => WitProfile::Wimse,
            other => {
                return Err(invalid(
                    "wit_profile",
                    format!("`{other}` is neither `spiffe` nor `wimse`"),
                ));
            }
        };
        let upstream_ca = match (self.upstream_ca_cert, self.upstream_ca_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "upstream_ca_cert",
                    "`upstream_ca_cert` and `upstream_ca_key` go together".into(),
                ));
            }
        };
        let listener = self
            .listener
            .apply(crate::run::PUBLIC_LIMITS)
            .map_err(|e| listener_error(&e))?;
        let token_service = self.token_service.resolve(&trust_domain)?;
        let federation = self
            .federation
            .into_iter()
            .enumerate()
            .map(|(i, file)| federation_request(i, file, &trust_domain))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerConfig {
            listener,
            token_service,
            federation,
            trust_domain,
            bind: self
                .bind
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            admin_socket,
            datastore,
            ca_ttl,
            jwt_key_ttl,
            default_x509_ttl: self.default_x509_ttl.unwrap_or(3600),
            default_jwt_ttl: self.default_jwt_ttl.unwrap_or(300),
            refresh_hint: self.refresh_hint.unwrap_or(300),
            wit_profile,
            upstream_ca,
            x509pop_ca_bundle: self.x509pop_ca_bundle,
            federation_web_roots: self.federation_web_roots,
            agent_svid_ttl,
            tombstone_retention,
            audit_log: match self.audit_log {
                Some(path) if path.as_os_str().is_empty() => None,
                Some(path) => Some(path),
                None => Some(data_dir.join("audit.jsonl")),
            },
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration file's text, resolved (the TOML itself must parse).
    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        toml::from_str::<FileConfig>(text).unwrap().resolve()
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = FileConfig::default().resolve().unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.bind.to_string(), "127.0.0.1:8443");
        assert_eq!(c.admin_socket, PathBuf::from(".wimse/server.sock"));
        assert!(c.datastore.starts_with("sqlite://.wimse/"));
        assert_eq!(c.wit_profile, WitProfile::Spiffe);
        assert_eq!(c.agent_svid_ttl, 3600);
        assert_eq!(c.tombstone_retention, 24 * 3600);
        assert_eq!(c.listener, crate::run::PUBLIC_LIMITS);
    }

    #[test]
    fn the_listener_section_changes_the_public_limits() {
        let c = parse("[listener]\nmax_connections = 100\ndrain_timeout = 12\n").unwrap();
        assert_eq!(c.listener.max_connections, 100);
        assert_eq!(c.listener.drain, std::time::Duration::from_secs(12));
        assert_eq!(c.listener.idle, crate::run::PUBLIC_LIMITS.idle);
        let refused = parse("[listener]\nidle_timeout = 0\n").unwrap_err();
        assert!(
            matches!(&refused, ConfigError::Invalid { name: "listener.idle_timeout", message } if message.contains("must be between 1 and")),
            "{refused}"
        );
        assert!(toml::from_str::<FileConfig>("[listener]\nidle = 3\n").is_err());
        let each = parse("[listener]\nmax_connections_per_client = 40\n").unwrap();
        assert_eq!(each.listener.max_per_client, Some(40));
        let refused = parse("[listener]\nmax_connections_per_client = 0\n").unwrap_err();
        assert!(
            matches!(
                &refused,
                ConfigError::Invalid {
                    name: "listener.max_connections_per_client",
                    ..
                }
            ),
            "{refused}"
        );
    }

    #[test]
    fn every_setting_is_read_from_toml() {
        let text = r#"
            trust_domain = "prod.example"
            data_dir = "/d"
            bind = "0.0.0.0:9443"
            admin_socket = "/run/a.sock"
            datastore = "postgres://u@h/db"
            ca_ttl = 100
            jwt_key_ttl = 200
            default_x509_ttl = 30
            default_jwt_ttl = 40
            refresh_hint = 50
            wit_profile = "wimse"
            upstream_ca_cert = "/c"
            upstream_ca_key = "/k"
            x509pop_ca_bundle = "/p"
            agent_svid_ttl = 600
            tombstone_retention = 7200
        "#;
        let c = toml::from_str::<FileConfig>(text)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.trust_domain.as_str(), "prod.example");
        assert_eq!(c.ca_ttl, 100);
        assert_eq!(c.default_jwt_ttl, 40);
        assert_eq!(c.wit_profile, WitProfile::Wimse);
        assert!(c.upstream_ca.is_some());
        assert_eq!(c.x509pop_ca_bundle, Some(PathBuf::from("/p")));
        assert_eq!(c.agent_svid_ttl, 600);
        assert_eq!(c.tombstone_retention, 7200);
    }

    #[test]
    fn the_audit_log_defaults_into_the_data_dir_and_an_empty_path_turns_it_off() {
        let c = FileConfig {
            data_dir: Some("/d".into()),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.audit_log, Some(PathBuf::from("/d/audit.jsonl")));
        let off = toml::from_str::<FileConfig>("audit_log = \"\"")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(off.audit_log, None);
    }

    #[test]
    fn unknown_setting_is_refused() {
        assert!(toml::from_str::<FileConfig>("trust_domian = \"x\"").is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = FileConfig {
            trust_domain: Some("Bad Domain".into()),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("trust_domain"));
        let err = FileConfig {
            datastore: Some("mysql://x".into()),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("datastore"));
    }

    #[test]
    fn delegation_rules_are_read_and_checked() {
        let c = parse(
            r#"
            [[token_service.delegation]]
            actor = "spiffe://example.org/worker"
            max_scope = "orders.read"
            [[token_service.delegation]]
            actor = "spiffe://example.org/nightly"
            max_scope = "reports"
            lifetime = 86400
        "#,
        )
        .unwrap();
        let rules = &c.token_service.delegation;
        assert_eq!(rules[0].actor.as_str(), "spiffe://example.org/worker");
        assert_eq!(rules[0].lifetime, 3600);
        assert_eq!(rules[1].max_scope, Scope::parse("reports").unwrap());
        assert_eq!(rules[1].lifetime, 86400);
        for bad in [
            "[[token_service.delegation]]\nactor = \"spiffe://other.example/w\"\nmax_scope = \"r\"",
            "[[token_service.delegation]]\nactor = \"spiffe://example.org/w\"\nmax_scope = \"a  b\"",
            "[[token_service.delegation]]\nactor = \"spiffe://example.org/w\"\nmax_scope = \"r\"\nlifetime = 86401",
            "[[token_service.delegation]]\nactor = \"spiffe://example.org/w\"\nmax_scope = \"r\"\nlifetime = 59",
            "[[token_service.delegation]]\nactor = \"spiffe://example.org/w\"\nmax_scope = \"r\"\n[[token_service.delegation]]\nactor = \"spiffe://example.org/w\"\nmax_scope = \"r\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn self_signed_entries_are_read_with_unsigned_json_off_unless_asked_for() {
        let c = parse(
            r#"
            trust_domain = "prod.example"
            [[token_service.self_signed]]
            requester = "spiffe://prod.example/batch"
            max_scope = "reports"
            subjects = ["nightly-report"]
            [[token_service.self_signed]]
            requester = "spiffe://prod.example/portal"
            max_scope = "orders"
            unsigned_json = true
        "#,
        )
        .unwrap();
        let rule = &c.token_service.self_signed[0];
        assert_eq!(rule.requester.as_str(), "spiffe://prod.example/batch");
        assert!(rule.subjects.contains("nightly-report"));
        assert!(
            !rule.unsigned_json,
            "unsigned subjects are off unless asked for"
        );
        assert!(c.token_service.self_signed[1].unsigned_json);
        assert!(
            parse("[[token_service.self_signed]]\nrequester = \"spiffe://example.org/b\"\nmax_scope = \"r\"")
                .is_ok()
        );
    }

    #[test]
    fn the_token_service_table_is_read_and_checked() {
        let c = parse(
            r#"
            trust_domain = "prod.example"
            [token_service]
            txn_token_ttl = 120
            requesters = ["spiffe://prod.example/gateway"]
            [[token_service.issuers]]
            issuer = "https://login.example.com"
            audience = "wimse"
            jwks_file = "/etc/login.json"
            max_scope = "orders refunds"
        "#,
        )
        .unwrap();
        let t = &c.token_service;
        assert_eq!((t.txn_token_ttl, t.max_replacements), (120, 8));
        assert_eq!(t.requesters[0].to_string(), "spiffe://prod.example/gateway");
        assert_eq!(t.issuers[0].subject_prefix, "");
        assert_eq!((t.grant_ttl, t.access_token_ttl), (60, 300));
        let c = parse(
            r#"
            trust_domain = "prod.example"
            [[token_service.chain_to]]
            trust_domain = "b.example"
            requesters = ["spiffe://prod.example/gateway"]
            max_scope = "orders"
            [[token_service.chain_from]]
            trust_domain = "b.example"
        "#,
        )
        .unwrap();
        let t = &c.token_service;
        assert_eq!(t.chain_to[0].trust_domain.as_str(), "b.example");
        assert_eq!(
            t.chain_to[0].max_scope,
            Some(Scope::parse("orders").unwrap())
        );
        assert_eq!(t.chain_from[0].subject_prefix, "b.example/");
        assert_eq!(t.chain_from[0].clients, None);
        let c = parse(
            "[[federation]]\ntrust_domain = \"b.example\"\n\
             bundle_endpoint_url = \"https://b:1/.well-known/spiffe-bundle\"\nprofile = \"https_web\"",
        )
        .unwrap();
        assert_eq!(c.federation[0].trust_domain, "b.example");
        assert_eq!(c.federation[0].bundle, None);
        assert_eq!(
            FileConfig::default()
                .resolve()
                .unwrap()
                .token_service
                .txn_token_ttl,
            300
        );
        for bad in [
            "[token_service]\ntxn_token_ttl = 7200",
            "[token_service]\ntxn_token_ttl = 0",
            "[token_service]\nrequesters = [\"spiffe://other.example/gw\"]",
            "[token_service]\nrequesters = [\"not an id\"]",
            "[[token_service.issuers]]\nissuer = \"\"\naudience = \"a\"\njwks_file = \"/j\"",
            "[[token_service.issuers]]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/j\"\nmax_scope = \"a  b\"",
            "[token_service]\ngrant_ttl = 301",
            "[[token_service.self_signed]]\nrequester = \"spiffe://other.example/b\"\nmax_scope = \"r\"",
            "[[token_service.self_signed]]\nrequester = \"spiffe://example.org/b\"\nmax_scope = \"a  b\"",
            "[[token_service.self_signed]]\nrequester = \"spiffe://example.org/b\"\nmax_scope = \"r\"\nsubjects = [\"\"]",
            "[[token_service.self_signed]]\nrequester = \"spiffe://example.org/b\"\nmax_scope = \"r\"\n[[token_service.self_signed]]\nrequester = \"spiffe://example.org/b\"\nmax_scope = \"r\"",
            "[token_service]\naccess_token_ttl = 0",
            "[[token_service.chain_to]]\ntrust_domain = \"b.example\"\nrequesters = []",
            "[[token_service.chain_to]]\ntrust_domain = \"prod.example\"\nrequesters = [\"spiffe://prod.example/gw\"]",
            "[[token_service.chain_to]]\ntrust_domain = \"b.example\"\nrequesters = [\"spiffe://b.example/gw\"]",
            "[[token_service.chain_from]]\ntrust_domain = \"b.example\"\nclients = [\"spiffe://prod.example/gw\"]",
            "[[token_service.chain_from]]\ntrust_domain = \"b.example\"\n[[token_service.chain_from]]\ntrust_domain = \"b.example\"",
            "[[token_service.chain_from]]\ntrust_domain = \"b example\"",
            "[[federation]]\ntrust_domain = \"b.example\"\nbundle_endpoint_url = \"https://b:1/x\"\nprofile = \"https_spiffe\"",
            "[[federation]]\ntrust_domain = \"b.example\"\nbundle_endpoint_url = \"http://b:1/x\"\nprofile = \"https_web\"",
            "[[federation]]\ntrust_domain = \"b.example\"\nbundle_endpoint_url = \"https://b:1/x\"\nprofile = \"https_web\"\ntrust_bundle = \"/nonexistent/b.json\"",
            "[[federation]]\ntrust_domain = \"b.example\"\nbundle_endpoint_url = \"https://b:1/x\"\nprofile = \"https_web\"\ntrust_bundle_format = \"pem\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
