//! Agent configuration: a TOML file with every setting, overridden by command-line flags.
//!
//! ```toml
//! server_address = "127.0.0.1:8443"
//! trust_bundle = "/etc/wimse/bundle.pem"   # the trust domain's X.509 roots (bootstrap)
//! data_dir = "/var/lib/wimse-agent"
//! socket = "/run/wimse/agent.sock"         # default: <data_dir>/agent.sock
//! join_token = "..."                        # or the two x509pop settings:
//! x509pop_cert = "/etc/wimse/node.pem"
//! x509pop_key = "/etc/wimse/node.key"
//! health_bind = "127.0.0.1:8082"           # /healthz, /readyz, /metrics (off by default)
//! wit_profile = true                        # serve FetchWITSVID/FetchWITBundles
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The settings as written in a TOML file; every one optional.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The server's agent API address, `HOST:PORT`.
    pub server_address: Option<String>,
    /// PEM file of the trust domain's X.509 roots, to authenticate the server at first.
    pub trust_bundle: Option<PathBuf>,
    /// Where the agent keeps its own key, credential and last bundle.
    pub data_dir: Option<PathBuf>,
    /// The Workload API socket.
    pub socket: Option<PathBuf>,
    /// A one-time join token for node attestation.
    pub join_token: Option<Zeroizing<String>>,
    /// The node's certificate chain (PEM) for x509pop attestation.
    pub x509pop_cert: Option<PathBuf>,
    /// The node certificate's private key (PKCS#8 PEM).
    pub x509pop_key: Option<PathBuf>,
    /// Address of the HTTP health and metrics listener; none by default.
    pub health_bind: Option<SocketAddr>,
    /// Whether the Workload API serves the WIT-SVID profile (default true).
    pub wit_profile: Option<bool>,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("server_address", &self.server_address)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Why the configuration is unusable: the server's configuration error, the same three
/// cases (unreadable file, invalid TOML, invalid setting).
pub use wimse_server::config::ConfigError;

/// How the node proves itself to the server.
#[derive(Clone)]
pub enum NodeAttestation {
    /// A one-time join token.
    JoinToken(Zeroizing<String>),
    /// Proof of possession of a certificate's key.
    X509Pop {
        /// Certificate chain (PEM), leaf first.
        cert: PathBuf,
        /// Its private key (PKCS#8 PEM).
        key: PathBuf,
    },
}

impl std::fmt::Debug for NodeAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(..)"),
            Self::X509Pop { cert, .. } => f.debug_struct("X509Pop").field("cert", cert).finish(),
        }
    }
}

/// The resolved settings the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server's agent API address.
    pub server_address: String,
    /// The bootstrap trust bundle (PEM).
    pub trust_bundle: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// Node attestation.
    pub attestation: NodeAttestation,
    /// Health and metrics listener.
    pub health_bind: Option<SocketAddr>,
    /// Whether the WIT-SVID profile is served.
    pub wit_profile: bool,
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

    /// Resolves the settings (flags are applied to `self` first).
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let missing = |name| ConfigError::Invalid {
            name,
            message: "is required".into(),
        };
        let server_address = self
            .server_address
            .ok_or_else(|| missing("server_address"))?;
        let trust_bundle = self.trust_bundle.ok_or_else(|| missing("trust_bundle"))?;
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from(".wimse"));
        let socket = self.socket.unwrap_or_else(|| data_dir.join("agent.sock"));
        let attestation = match (self.join_token, self.x509pop_cert, self.x509pop_key) {
            (Some(token), None, None) => NodeAttestation::JoinToken(token),
            (None, Some(cert), Some(key)) => NodeAttestation::X509Pop { cert, key },
            (None, None, None) => {
                return Err(ConfigError::Invalid {
                    name: "join_token",
                    message: "name one node attestation: a join token, or x509pop_cert with \
                              x509pop_key"
                        .into(),
                });
            }
            _ => {
                return Err(ConfigError::Invalid {
                    name: "join_token",
                    message: "give exactly one node attestation: a join token, or \
                              x509pop_cert with x509pop_key"
                        .into(),
                });
            }
        };
        Ok(AgentConfig {
            server_address,
            trust_bundle,
            data_dir,
            socket,
            attestation,
            health_bind: self.health_bind,
            wit_profile: self.wit_profile.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FileConfig {
        FileConfig {
            server_address: Some("127.0.0.1:8443".into()),
            trust_bundle: Some("b.pem".into()),
            join_token: Some(Zeroizing::new("t".into())),
            ..FileConfig::default()
        }
    }

    #[test]
    fn socket_defaults_into_the_data_dir() {
        let c = FileConfig {
            data_dir: Some("/d".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/d/agent.sock"));
        assert!(c.wit_profile);
    }

    #[test]
    fn exactly_one_node_attestation_is_required() {
        let none = FileConfig {
            join_token: None,
            ..base()
        };
        assert!(
            none.resolve()
                .unwrap_err()
                .to_string()
                .contains("join_token")
        );
        let both = FileConfig {
            x509pop_cert: Some("c".into()),
            x509pop_key: Some("k".into()),
            ..base()
        };
        assert!(both.resolve().is_err());
        let half = FileConfig {
            join_token: None,
            x509pop_cert: Some("c".into()),
            ..base()
        };
        assert!(half.resolve().is_err());
    }

    #[test]
    fn every_setting_is_read_from_toml() {
        let text = r#"
            server_address = "h:1"
            trust_bundle = "/b"
            data_dir = "/d"
            socket = "/s"
            x509pop_cert = "/c"
            x509pop_key = "/k"
            health_bind = "127.0.0.1:9"
            wit_profile = false
        "#;
        let c = toml::from_str::<FileConfig>(text)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.socket, PathBuf::from("/s"));
        assert!(!c.wit_profile);
        assert!(matches!(c.attestation, NodeAttestation::X509Pop { .. }));
        assert!(c.health_bind.is_some());
    }

    #[test]
    fn unknown_setting_is_refused() {
        assert!(toml::from_str::<FileConfig>("server_adress = \"x\"").is_err());
    }

    #[test]
    fn debug_output_never_shows_the_join_token() {
        let text = format!("{:?} {:?}", base(), base().resolve().unwrap());
        assert!(!text.contains("\"t\""), "{text}");
    }
}
