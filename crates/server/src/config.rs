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
//! jwks_file = "/etc/wimse/login-jwks.json"
//! subject_prefix = "login:"                 # default: none
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use wimse_core::token::exchange::Scope;
use wimse_core::token::wit::WitProfile;
use wimse_core::{TrustDomain, WorkloadId};

/// Default lifetime of an agent's own X509-SVID: one hour.
pub const DEFAULT_AGENT_SVID_TTL: u32 = 3600;

/// Default retention of entry tombstones: one day.
pub const DEFAULT_TOMBSTONE_RETENTION: i64 = 24 * 3600;

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
}

/// One `[[token_service.issuers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// The issuer identifier, as its tokens' `iss`.
    pub issuer: String,
    /// The audience its tokens must name.
    pub audience: String,
    /// Its JWK Set, as a file.
    pub jwks_file: PathBuf,
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
        let requesters = self
            .requesters
            .iter()
            .map(|text| {
                let id = WorkloadId::parse(text)
                    .map_err(|e| invalid("token_service.requesters", format!("`{text}`: {e}")))?;
                if id.trust_domain() != trust_domain {
                    return Err(invalid(
                        "token_service.requesters",
                        format!("`{text}` is not in trust domain `{trust_domain}`"),
                    ));
                }
                Ok(id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for issuer in &self.issuers {
            if issuer.issuer.is_empty() || issuer.audience.is_empty() {
                return Err(invalid(
                    "token_service.issuers",
                    "every issuer needs a non-empty `issuer` and `audience`".into(),
                ));
            }
            if let Some(scope) = &issuer.max_scope {
                Scope::parse(scope).map_err(|e| {
                    invalid(
                        "token_service.issuers.max_scope",
                        e.description().to_owned(),
                    )
                })?;
            }
        }
        Ok(TokenServiceSettings {
            txn_token_ttl,
            max_replacements: self.max_replacements.unwrap_or(8),
            requesters,
            issuers: self.issuers,
        })
    }
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
        let token_service = self.token_service.resolve(&trust_domain)?;
        Ok(ServerConfig {
            token_service,
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
    fn the_token_service_table_is_read_and_checked() {
        let parse = |text: &str| toml::from_str::<FileConfig>(text).unwrap().resolve();
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
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
