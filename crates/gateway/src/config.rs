//! The gateway's configuration file (`wimse gateway run --config FILE`), TOML:
//!
//! ```toml
//! listen = "0.0.0.0:8080"              # where outside clients connect
//! server_address = "127.0.0.1:8443"    # the trust domain's server (its token service)
//! agent_socket = "/run/wimse/agent.sock"        # default: SPIFFE_ENDPOINT_SOCKET, then the default path
//! spiffe_id = "spiffe://example.org/gateway"    # when the agent offers several identities
//! proof = "wit-wpt"                    # how the gateway proves itself inward: wit-wpt | http-sig
//! health_bind = "127.0.0.1:9090"       # /healthz, /readyz, /metrics
//! audit_log = "/var/log/wimse/gateway-audit.jsonl"
//!
//! [tls]                                # serve HTTPS (default: plain HTTP, for behind a load balancer)
//! cert_file = "/etc/wimse/gateway.crt" # PEM chain, leaf first
//! key_file = "/etc/wimse/gateway.key"  # PEM private key
//!
//! [[issuers]]                          # outside authorization servers whose access tokens admit a client
//! issuer = "https://login.example.com"
//! audience = "https://api.example.com"
//! jwks_file = "/etc/wimse/login-jwks.json"
//!
//! [[routes]]                           # which requests go where, with which scope
//! prefix = "/orders"                   # matches /orders and /orders/..., not /ordersx
//! upstream = "http://orders.internal:8080"
//! scope = "orders.read"                # the Txn-Token's scope; the access token must grant it
//! strip_prefix = false                 # forward /orders/7 as /7 when true
//! ```
//!
//! Every value is checked when the file is read; a bad one is named with its place
//! (`routes[1].upstream: ...`). Paths are taken as written (relative to the working
//! directory), as in the server's file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wimse_core::WorkloadId;
use wimse_core::jose::JwkSet;
use wimse_core::token::access::TrustedIssuer;
use wimse_core::token::exchange::Scope;
use wimse_workload::ProofMethod;

use crate::route::{Route, RouteError, Routes};

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Where in the file, as in `routes[1].upstream`; empty for the file as a whole.
    pub setting: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.setting.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.setting, self.message)
        }
    }
}

fn error(setting: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        message: message.to_string(),
    }
}

/// How the gateway proves its identity to the workloads it forwards to.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProofSetting {
    /// WIT + Workload Proof Token (bound to the Txn-Token it carries).
    #[default]
    WitWpt,
    /// WIT + HTTP Message Signature.
    HttpSig,
}

impl From<ProofSetting> for ProofMethod {
    fn from(setting: ProofSetting) -> Self {
        match setting {
            ProofSetting::WitWpt => ProofMethod::WitWpt,
            ProofSetting::HttpSig => ProofMethod::HttpSig,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    listen: SocketAddr,
    server_address: String,
    agent_socket: Option<PathBuf>,
    spiffe_id: Option<String>,
    #[serde(default)]
    proof: ProofSetting,
    health_bind: Option<SocketAddr>,
    audit_log: Option<PathBuf>,
    #[serde(default)]
    issuers: Vec<IssuerFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    tls: Option<TlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    issuer: String,
    audience: String,
    jwks_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    upstream: String,
    scope: String,
    #[serde(default)]
    strip_prefix: bool,
}

/// A checked gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where outside clients connect.
    pub listen: SocketAddr,
    /// The trust domain's server, `host:port`.
    pub server_address: String,
    /// The agent's Workload API socket, when the file names one.
    pub agent_socket: Option<PathBuf>,
    /// The identity to speak as, when the agent offers several.
    pub spiffe_id: Option<WorkloadId>,
    /// How requests forwarded inward are proven.
    pub proof: ProofSetting,
    /// Where to serve health and metrics, if anywhere.
    pub health_bind: Option<SocketAddr>,
    /// Where to append audit records, if anywhere.
    pub audit_log: Option<PathBuf>,
    /// The outside authorization servers whose access tokens are accepted.
    pub issuers: Vec<TrustedIssuer>,
    /// Where requests go.
    pub routes: Routes,
    /// The listener's TLS configuration, when it serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl GatewayConfig {
    /// Reads and checks the file at `path`, loading the issuers' key sets.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(format!("cannot read `{}`", path.display()), e))?;
        Self::parse(&text)
    }

    /// Checks a configuration's text, loading the issuers' key sets from their files.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: GatewayFile = toml::from_str(text).map_err(|e| {
            error(
                "",
                e.message().to_owned()
                    + &e.span()
                        .map(|s| format!(" (at byte {})", s.start))
                        .unwrap_or_default(),
            )
        })?;
        if file.server_address.trim().is_empty() || !file.server_address.contains(':') {
            return Err(error(
                "server_address",
                "give the server's `host:port`, as in `127.0.0.1:8443`",
            ));
        }
        let spiffe_id = file
            .spiffe_id
            .as_deref()
            .map(WorkloadId::parse)
            .transpose()
            .map_err(|e| error("spiffe_id", e))?;
        if file.issuers.is_empty() {
            return Err(error(
                "issuers",
                "name at least one `[[issuers]]`: without one no client can be admitted",
            ));
        }
        let issuers = file
            .issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| load_issuer(issuer).map_err(|e| error(format!("issuers[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        if file.routes.is_empty() {
            return Err(error(
                "routes",
                "name at least one `[[routes]]`: without one every request is refused",
            ));
        }
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, route) in file.routes.into_iter().enumerate() {
            let place = |field: &str| format!("routes[{i}].{field}");
            let scope = Scope::parse(&route.scope).map_err(|e| error(place("scope"), e))?;
            let built = Route::new(&route.prefix, &route.upstream, scope, route.strip_prefix)
                .map_err(|e| match e {
                    RouteError::Prefix(m) => error(place("prefix"), m),
                    RouteError::Upstream(m) => error(place("upstream"), m),
                })?;
            routes.push(built);
        }
        let routes = Routes::new(routes).map_err(|e| error("routes", e))?;
        let tls = file.tls.as_ref().map(load_tls).transpose()?;
        Ok(GatewayConfig {
            listen: file.listen,
            server_address: file.server_address,
            agent_socket: file.agent_socket,
            spiffe_id,
            proof: file.proof,
            health_bind: file.health_bind,
            audit_log: file.audit_log,
            issuers,
            routes,
            tls,
        })
    }
}

fn load_tls(file: &TlsFile) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let read = |path: &Path, setting: &str| {
        std::fs::read(path)
            .map_err(|e| error(format!("tls.{setting}"), format!("{}: {e}", path.display())))
    };
    let chain = read(&file.cert_file, "cert_file")?;
    let key = zeroize::Zeroizing::new(read(&file.key_file, "key_file")?);
    wimse_workload::tls::server_config_from_pem(&chain, &key)
        .map(Arc::new)
        .map_err(|e| error("tls", e))
}

fn load_issuer(file: &IssuerFile) -> Result<TrustedIssuer, String> {
    if file.issuer.is_empty() || file.audience.is_empty() {
        return Err("`issuer` and `audience` must not be empty".into());
    }
    let jwks_file = file.jwks_file.display();
    let text = std::fs::read(&file.jwks_file).map_err(|e| format!("{jwks_file}: {e}"))?;
    let jwks: JwkSet =
        wimse_core::json::from_slice(&text).map_err(|e| format!("{jwks_file}: {e}"))?;
    // The subject keeps the issuer's name for it here: the token service adds its own
    // prefix to the Txn-Token's `sub`.
    TrustedIssuer::new(
        file.issuer.clone(),
        file.audience.clone(),
        String::new(),
        &jwks,
    )
    .map_err(|e| format!("{jwks_file}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn jwks_file(dir: &Path) -> PathBuf {
        let key =
            wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
        let mut jwk = key.public_jwk().clone();
        jwk.kid = Some("k1".into());
        let path = dir.join("jwks.json");
        std::fs::write(&path, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
        path
    }

    fn text(jwks: &Path, routes: &str) -> String {
        format!(
            "listen = \"127.0.0.1:8080\"\nserver_address = \"127.0.0.1:8443\"\n\
             proof = \"http-sig\"\n\
             [[issuers]]\nissuer = \"https://login.example.com\"\naudience = \"api\"\n\
             jwks_file = \"{}\"\n{routes}",
            jwks.display()
        )
    }

    const ROUTES: &str = "[[routes]]\nprefix = \"/orders/\"\nupstream = \"http://127.0.0.1:9001\"\n\
         scope = \"orders.read\"\n[[routes]]\nprefix = \"/\"\n\
         upstream = \"http://127.0.0.1:9002/base\"\nscope = \"web\"\nstrip_prefix = true\n";

    #[test]
    fn a_full_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = GatewayConfig::parse(&text(&jwks_file(dir.path()), ROUTES)).unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.proof, ProofSetting::HttpSig);
        assert_eq!(config.issuers.len(), 1);
        assert_eq!(config.issuers[0].issuer, "https://login.example.com");
        let route = config.routes.find("/orders/7").unwrap();
        assert_eq!(route.prefix(), "/orders");
        assert!(route.scope().contains("orders.read"));
        assert_eq!(config.routes.find("/other").unwrap().prefix(), "/");
    }

    #[test]
    fn every_bad_value_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path());
        let route = |prefix: &str, upstream: &str, scope: &str| {
            format!(
                "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nscope = \"{scope}\"\n"
            )
        };
        let cases = [
            (text(&jwks, ""), "routes"),
            (
                text(&jwks, &route("orders", "http://a:1", "s")),
                "routes[0].prefix",
            ),
            (
                text(&jwks, &route("/o?x", "http://a:1", "s")),
                "routes[0].prefix",
            ),
            (
                text(&jwks, &route("/o", "https://a:1", "s")),
                "routes[0].upstream",
            ),
            (
                text(&jwks, &route("/o", "http://a:1/?q", "s")),
                "routes[0].upstream",
            ),
            (
                text(&jwks, &route("/o", "/relative", "s")),
                "routes[0].upstream",
            ),
            (
                text(&jwks, &route("/o", "http://a:1", "a  b")),
                "routes[0].scope",
            ),
            (
                text(
                    &jwks,
                    &(route("/o", "http://a:1", "s") + &route("/o/", "http://b:1", "s")),
                ),
                "routes",
            ),
            (
                text(&jwks, ROUTES).replace("127.0.0.1:8443", "nowhere"),
                "server_address",
            ),
            (text(&dir.path().join("missing.json"), ROUTES), "issuers[0]"),
            (
                text(&jwks, ROUTES).replace("proof = \"http-sig\"", "proof = \"bearer\""),
                "",
            ),
            (text(&jwks, ROUTES).replace("listen", "listen_on"), ""),
            (
                format!("listen = \"127.0.0.1:1\"\nserver_address = \"a:1\"\n{ROUTES}"),
                "issuers",
            ),
            (text(&jwks, ROUTES) + "spiffe_id = \"not an id\"\n", ""),
        ];
        for (text, setting) in cases {
            let err = GatewayConfig::parse(&text).unwrap_err();
            assert_eq!(err.setting, setting, "{err} for:\n{text}");
        }
    }

    #[test]
    fn tls_files_are_loaded_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let with_tls = |cert: &Path, key: &Path| {
            format!(
                "{}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                text(&jwks, ROUTES),
                cert.display(),
                key.display()
            )
        };
        let config = GatewayConfig::parse(&with_tls(&cert_file, &key_file)).unwrap();
        assert!(config.tls.is_some());
        assert!(
            GatewayConfig::parse(&text(&jwks, ROUTES))
                .unwrap()
                .tls
                .is_none()
        );
        let missing = dir.path().join("missing.key");
        for (cert, key, setting) in [
            (&cert_file, &missing, "tls.key_file"),
            (&missing, &key_file, "tls.cert_file"),
            (&key_file, &cert_file, "tls"),
        ] {
            let err = GatewayConfig::parse(&with_tls(cert, key)).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn a_bad_spiffe_id_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path());
        let text = format!(
            "spiffe_id = \"spiffe://example.org/a?b\"\n{}",
            text(&jwks, ROUTES)
        );
        assert_eq!(
            GatewayConfig::parse(&text).unwrap_err().setting,
            "spiffe_id"
        );
    }
}
