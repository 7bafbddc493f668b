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
//! [tls]                                # serve HTTPS (default: plain HTTP, for behind a load balancer);
//!                                      # the files are re-read within 5 s of a change, no restart
//! client_ca_file = "/etc/wimse/client-cas.pem"  # optional: outside clients may present certificates
//! client_auth = "optional"             # or "required"; access tokens bound to a certificate
//!                                      # (RFC 8705 `cnf.x5t#S256`) need the one they name
//! cert_file = "/etc/wimse/gateway.crt" # PEM chain, leaf first
//! key_file = "/etc/wimse/gateway.key"  # PEM private key
//!
//! trusted_proxies = ["10.0.0.0/8"]    # load balancers whose X-Forwarded-For names the client
//!                                      # (req_ip); default: none, the TCP peer is the client
//! accept_chained = false               # also admit access tokens this trust domain's token
//!                                      # service issued for other domains' grants (identity
//!                                      # chaining); their keys come from the agent's bundle
//!
//! [[issuers]]                          # outside authorization servers whose access tokens admit a client
//! issuer = "https://login.example.com"
//! audience = "https://api.example.com"
//! jwks_uri = "https://login.example.com/.well-known/jwks.json"  # fetched and kept fresh
//! # jwks_file = "/etc/wimse/login-jwks.json"  # or a file read at start
//! # oidc_discovery = true                      # or the jwks_uri <issuer>/.well-known/openid-configuration names
//! # jwks_ca_file = "/etc/wimse/login-ca.pem"   # jwks_uri's server: default Mozilla's roots
//!
//! [listener]                           # optional: what a client may hold of `listen`
//! max_connections = 10000              # (defaults shown; durations in seconds)
//! max_connections_per_client = 5000    # one IPv4 address or IPv6 /64; default half
//! idle_timeout = 300                   # a connection with no request in flight
//! header_timeout = 30                  # a request's headers; a new connection's first request
//! handshake_timeout = 10               # TLS
//! stall_timeout = 60                   # a body or a response making no progress
//! drain_timeout = 10                   # for requests in flight on stop
//!
//! [[routes]]                           # which requests go where, with which scope
//! prefix = "/orders"                   # matches /orders and /orders/..., not /ordersx
//! upstream = "http://orders.internal:8080"   # or https://: mutual TLS with the gateway's X509-SVID
//!                                      # (then the upstream SVID must name orders.internal: entry --dns)
//! scope = "orders.read"                # the Txn-Token's scope; the access token must grant it
//! strip_prefix = false                 # forward /orders/7 as /7 when true
//! timeout = 30                         # seconds the upstream may take to answer (else 504)
//! http2 = false                        # true for a gRPC service: HTTP/2 to the upstream (h2c
//!                                      # to http://, ALPN h2 to https://); gRPC callers on a
//!                                      # route without it are refused (UNIMPLEMENTED)
//! max_body = 1048576                   # bytes a request body may hold (default: no limit;
//!                                      # bodies stream through); larger ones get 413
//!
//! [egress]                             # optional: internal workloads' calls to outside services
//! listen = "127.0.0.1:8090"            # internal callers authenticate here with WIT+WPT etc.
//! public_url = "http://gateway.internal:8090"   # their proofs' audience (default http://<listen>)
//! policy = "/etc/wimse/egress.cedar"   # who may call which destination (default: nobody)
//!
//! [[egress.routes]]
//! prefix = "/partner"
//! upstream = "https://api.partner.example"
//! ca_file = "/etc/wimse/partner-roots.pem"      # needed for https upstreams and token endpoints
//! strip_prefix = true
//! timeout = 30                                  # seconds, as for [[routes]]
//! http2 = false                                 # as for [[routes]] (ALPN h2 to https://)
//! token_endpoint = "https://login.partner.example/oauth2/token"  # optional: an outside token
//! client_id = "wimse-gateway"                   #   for the gateway (client credentials)
//! client_secret_file = "/etc/wimse/partner-secret"
//! token_scope = "orders.read"
//!
//! [[egress.routes]]                             # identity chaining into a federated trust domain:
//! prefix = "/partner-orders"                    #   the caller's Txn-Token becomes an access token
//! upstream = "https://gateway.partner.example"  #   of partner.example for the same subject
//! ca_file = "/etc/wimse/partner-roots.pem"
//! chain_to = "partner.example"                  # the trust domain (its bundle held by federation)
//! chain_server = "wimse.partner.example:8443"   # its server (token service), host:port
//! token_scope = "orders"                        # optional: the scope asked for
//! ```
//!
//! Every value is checked when the file is read; a bad one is named with its place
//! (`routes[1].upstream: ...`). Paths are taken as written (relative to the working
//! directory), as in the server's file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wimse_core::token::access::TrustedIssuer;
use wimse_core::token::exchange::Scope;
use wimse_core::{TrustDomain, WorkloadId};
use wimse_remote::issuers::{IssuerKeys, IssuerSource, KeySettings};
use wimse_workload::ProofMethod;
use wimse_workload::listen::{ConnectionLimits, LimitSettings};
use wimse_workload::proxy::UpstreamProtocol;
use wimse_workload::tls::FileCertificate;

use crate::client_ip::TrustedProxies;
use crate::egress::{ChainRoute, EgressRoute, OutsideClient};
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
    trusted_proxies: Vec<String>,
    #[serde(default)]
    accept_chained: bool,
    #[serde(default)]
    issuers: Vec<IssuerFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    tls: Option<TlsFile>,
    egress: Option<EgressFile>,
    #[serde(default)]
    listener: LimitSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressFile {
    listen: SocketAddr,
    public_url: Option<String>,
    policy: Option<PathBuf>,
    #[serde(default)]
    routes: Vec<EgressRouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRouteFile {
    prefix: String,
    upstream: String,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    strip_prefix: bool,
    timeout: Option<u64>,
    token_endpoint: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    token_scope: Option<String>,
    chain_to: Option<String>,
    chain_server: Option<String>,
    #[serde(default)]
    http2: bool,
}

/// The checked `[egress]` table.
#[derive(Debug)]
pub struct EgressConfig {
    /// Where internal workloads send their outgoing calls.
    pub listen: SocketAddr,
    /// The audience their proofs are bound to.
    pub public_url: String,
    /// The Cedar policy file deciding who may call where (none: nobody may).
    pub policy: Option<PathBuf>,
    /// Where calls go.
    pub routes: Vec<EgressRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_auth: Option<String>,
}

/// The HTTPS listener's settings.
#[derive(Clone)]
pub struct GatewayTls {
    /// Its certificate (re-read when its files change).
    pub certificate: Arc<FileCertificate>,
    /// The verifier of outside clients' certificates, when they may present one.
    pub clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl std::fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTls")
            .field("certificate", &self.certificate)
            .field("client_certificates", &self.clients.is_some())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    jwks_uri: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    #[serde(default)]
    oidc_discovery: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    upstream: String,
    scope: String,
    #[serde(default)]
    strip_prefix: bool,
    timeout: Option<u64>,
    #[serde(default)]
    http2: bool,
    max_body: Option<u64>,
}

/// A checked gateway configuration.
#[derive(Debug)]
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
    /// The outside authorization servers whose access tokens are accepted (watch it, so
    /// that keys named by `jwks_uri` are fetched).
    pub issuers: Arc<IssuerKeys>,
    /// Whether the trust domain's own chained access tokens are accepted too.
    pub accept_chained: bool,
    /// The proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Where requests go.
    pub routes: Routes,
    /// The listener's TLS settings, when it serves HTTPS.
    pub tls: Option<GatewayTls>,
    /// The egress side, when configured.
    pub egress: Option<EgressConfig>,
    /// What a client may hold of the listener at `listen`.
    pub limits: ConnectionLimits,
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
        if file.issuers.is_empty() && !file.accept_chained {
            return Err(error(
                "issuers",
                "name at least one `[[issuers]]` or set `accept_chained`: without either no \
                 client can be admitted",
            ));
        }
        let issuers = file
            .issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| load_issuer(issuer).map_err(|e| error(format!("issuers[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        IssuerSource::distinct(&issuers).map_err(|e| error("issuers", e.to_string()))?;
        let issuers = Arc::new(IssuerKeys::new(issuers));
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
            let timeout = route_timeout(route.timeout).map_err(|m| error(place("timeout"), m))?;
            if route.max_body == Some(0) {
                return Err(error(
                    place("max_body"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            routes.push(
                built
                    .with_timeout(timeout)
                    .with_protocol(protocol(route.http2))
                    .with_max_body(route.max_body),
            );
        }
        let routes = Routes::new(routes).map_err(|e| error("routes", e))?;
        let tls = file.tls.as_ref().map(load_tls).transpose()?;
        let egress = file.egress.map(load_egress).transpose()?;
        if egress.as_ref().is_some_and(|e| e.listen == file.listen) {
            return Err(error("egress.listen", "must differ from `listen`"));
        }
        let limits = file
            .listener
            .apply(ConnectionLimits::DEFAULT)
            .map_err(|e| error(e.path(), e))?;
        Ok(GatewayConfig {
            listen: file.listen,
            server_address: file.server_address,
            agent_socket: file.agent_socket,
            spiffe_id,
            proof: file.proof,
            health_bind: file.health_bind,
            audit_log: file.audit_log,
            issuers,
            accept_chained: file.accept_chained,
            trusted_proxies: TrustedProxies::parse(&file.trusted_proxies)
                .map_err(|e| error("trusted_proxies", e))?,
            routes,
            tls,
            egress,
            limits,
        })
    }
}

/// A route's `http2` setting.
fn protocol(http2: bool) -> UpstreamProtocol {
    if http2 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    }
}

/// The longest upstream timeout a route may set: an hour.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// A route's `timeout` setting (seconds, default [`crate::route::DEFAULT_TIMEOUT`]).
fn route_timeout(seconds: Option<u64>) -> Result<std::time::Duration, String> {
    match seconds {
        None => Ok(crate::route::DEFAULT_TIMEOUT),
        Some(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Ok(std::time::Duration::from_secs(s)),
        Some(s) => Err(format!(
            "{s} is not a number of seconds from 1 to {MAX_TIMEOUT_SECS}"
        )),
    }
}

fn load_egress(file: EgressFile) -> Result<EgressConfig, ConfigError> {
    if file.routes.is_empty() {
        return Err(error(
            "egress.routes",
            "name at least one `[[egress.routes]]`, or leave out `[egress]`",
        ));
    }
    let public_url = file
        .public_url
        .unwrap_or_else(|| format!("http://{}", file.listen));
    let routes = file
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, route)| {
            load_egress_route(route)
                .map_err(|(field, m)| error(format!("egress.routes[{i}]{field}"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EgressConfig {
        listen: file.listen,
        public_url,
        policy: file.policy,
        routes,
    })
}

/// One egress route; an error names the field (as `.upstream`, or empty for the route).
fn load_egress_route(file: EgressRouteFile) -> Result<EgressRoute, (&'static str, String)> {
    let route =
        Route::outward(&file.prefix, &file.upstream, file.strip_prefix).map_err(|e| match e {
            RouteError::Prefix(m) => (".prefix", m),
            RouteError::Upstream(m) => (".upstream", m),
        })?;
    let route = route
        .with_timeout(route_timeout(file.timeout).map_err(|m| (".timeout", m))?)
        .with_protocol(protocol(file.http2));
    let chain = load_chain(
        file.chain_to,
        file.chain_server,
        file.token_scope.as_deref(),
    )?;
    if chain.is_some() && file.token_endpoint.is_some() {
        return Err((
            ".chain_to",
            "a route gets its token by `chain_to` or by `token_endpoint`, not both".into(),
        ));
    }
    let outside_client = match (file.token_endpoint, file.client_id, file.client_secret_file) {
        (None, None, None) => {
            if file.token_scope.is_some() && chain.is_none() {
                return Err((
                    ".token_scope",
                    "needs `token_endpoint` or `chain_to`".into(),
                ));
            }
            None
        }
        (Some(endpoint), Some(client_id), Some(secret_file)) => {
            let token_endpoint: http::Uri = endpoint
                .parse()
                .map_err(|e| (".token_endpoint", format!("`{endpoint}`: {e}")))?;
            if !matches!(token_endpoint.scheme_str(), Some("http" | "https"))
                || token_endpoint.authority().is_none()
            {
                return Err((
                    ".token_endpoint",
                    format!("`{endpoint}` must be an absolute http(s) url"),
                ));
            }
            let secret = std::fs::read_to_string(&secret_file).map_err(|e| {
                (
                    ".client_secret_file",
                    format!("{}: {e}", secret_file.display()),
                )
            })?;
            let secret = zeroize::Zeroizing::new(secret.trim_end_matches(['\r', '\n']).to_owned());
            if secret.is_empty() || client_id.is_empty() {
                return Err((
                    "",
                    "`client_id` and the client secret must not be empty".into(),
                ));
            }
            Some(OutsideClient {
                token_endpoint,
                client_id,
                client_secret: secret,
                scope: file.token_scope,
            })
        }
        _ => {
            return Err((
                "",
                "`token_endpoint`, `client_id` and `client_secret_file` come together".into(),
            ));
        }
    };
    let needs_roots = route.is_https()
        || outside_client
            .as_ref()
            .is_some_and(|c| c.token_endpoint.scheme_str() == Some("https"));
    let tls = match (&file.ca_file, needs_roots) {
        (Some(path), _) => {
            let roots = std::fs::read(path)
                .map_err(|e| (".ca_file", format!("{}: {e}", path.display())))?;
            Some(Arc::new(
                wimse_workload::tls::web_client_config(&roots)
                    .map_err(|e| (".ca_file", e.to_string()))?,
            ))
        }
        (None, true) => {
            return Err((
                ".ca_file",
                "an https destination needs the CA roots to check it by".into(),
            ));
        }
        (None, false) => None,
    };
    Ok(EgressRoute {
        route,
        tls,
        outside_client,
        chain,
    })
}

/// A route's identity chaining settings: `chain_to` and `chain_server` together.
fn load_chain(
    chain_to: Option<String>,
    chain_server: Option<String>,
    scope: Option<&str>,
) -> Result<Option<ChainRoute>, (&'static str, String)> {
    match (chain_to, chain_server) {
        (None, None) => Ok(None),
        (Some(td), Some(server)) => {
            let trust_domain =
                TrustDomain::new(&td).map_err(|e| (".chain_to", format!("`{td}`: {e}")))?;
            if server.trim().is_empty() || !server.contains(':') || server.contains('/') {
                return Err((
                    ".chain_server",
                    format!("`{server}`: give the other trust domain's server as `host:port`"),
                ));
            }
            let scope = scope
                .map(Scope::parse)
                .transpose()
                .map_err(|e| (".token_scope", e.to_string()))?;
            Ok(Some(ChainRoute {
                trust_domain,
                server_address: server,
                scope,
            }))
        }
        _ => Err(("", "`chain_to` and `chain_server` come together".into())),
    }
}

fn load_tls(file: &TlsFile) -> Result<GatewayTls, ConfigError> {
    for (path, setting) in [(&file.cert_file, "cert_file"), (&file.key_file, "key_file")] {
        std::fs::File::open(path)
            .map_err(|e| error(format!("tls.{setting}"), format!("{}: {e}", path.display())))?;
    }
    let certificate = FileCertificate::load(file.cert_file.clone(), file.key_file.clone())
        .map_err(|e| error("tls", e))?;
    let required = match file.client_auth.as_deref() {
        None | Some("optional") => false,
        Some("required") => true,
        Some(other) => {
            return Err(error(
                "tls.client_auth",
                format!("`{other}` is neither `optional` nor `required`"),
            ));
        }
    };
    let clients = match &file.client_ca_file {
        Some(path) => {
            let roots = std::fs::read(path)
                .map_err(|e| error("tls.client_ca_file", format!("{}: {e}", path.display())))?;
            Some(
                wimse_workload::tls::web_client_verifier(&roots, required)
                    .map_err(|e| error("tls.client_ca_file", e))?,
            )
        }
        None if file.client_auth.is_some() => {
            return Err(error(
                "tls.client_auth",
                "needs `client_ca_file`, the CAs client certificates are checked against",
            ));
        }
        None => None,
    };
    Ok(GatewayTls {
        certificate,
        clients,
    })
}

fn load_issuer(file: &IssuerFile) -> Result<IssuerSource, String> {
    if file.issuer.is_empty() || file.audience.is_empty() {
        return Err("`issuer` and `audience` must not be empty".into());
    }
    // The subject keeps the issuer's name for it here: the token service adds its own
    // prefix to the Txn-Token's `sub`.
    let issuer =
        TrustedIssuer::awaiting_keys(file.issuer.clone(), file.audience.clone(), String::new());
    let keys = KeySettings {
        jwks_file: file.jwks_file.as_deref(),
        jwks_uri: file.jwks_uri.as_deref(),
        jwks_ca_file: file.jwks_ca_file.as_deref(),
        oidc_discovery: file.oidc_discovery,
    };
    IssuerSource::configured(issuer, &keys).map_err(|e| e.to_string())
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

    fn self_signed(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert, key)
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
        let issuers = config.issuers.current();
        assert_eq!(issuers.len(), 1);
        assert_eq!(issuers[0].issuer, "https://login.example.com");
        assert!(issuers[0].holds_key(None));
        // A `jwks_uri` issuer has no keys until they are fetched.
        let remote = text(&jwks_file(dir.path()), ROUTES).replace(
            &format!("jwks_file = \"{}\"", jwks_file(dir.path()).display()),
            "jwks_uri = \"https://login.example.com/jwks\"",
        );
        let config = GatewayConfig::parse(&remote).unwrap();
        assert!(!config.issuers.current()[0].holds_key(None));
        let route = config.routes.find("/orders/7").unwrap();
        assert_eq!(route.prefix(), "/orders");
        assert!(route.scope().contains("orders.read"));
        assert_eq!(config.routes.find("/other").unwrap().prefix(), "/");
        assert_eq!(route.timeout(), crate::route::DEFAULT_TIMEOUT);
        assert_eq!(route.protocol(), UpstreamProtocol::Http1);
        assert_eq!(route.max_body(), None);
        let slow = ROUTES.replace(
            "scope = \"web\"",
            "scope = \"web\"\ntimeout = 2\nhttp2 = true\nmax_body = 1024",
        );
        let config = GatewayConfig::parse(&text(&jwks_file(dir.path()), &slow)).unwrap();
        let route = config.routes.find("/other").unwrap();
        assert_eq!(route.timeout(), std::time::Duration::from_secs(2));
        assert_eq!(route.protocol(), UpstreamProtocol::Http2);
        assert_eq!(route.max_body(), Some(1024));
        assert_eq!(
            config.routes.find("/orders").unwrap().protocol(),
            UpstreamProtocol::Http1
        );
        assert_eq!(config.limits, ConnectionLimits::DEFAULT);
    }

    #[test]
    fn the_listener_table_sets_the_connection_limits() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path());
        let with = |listener: &str| format!("{}[listener]\n{listener}\n", text(&jwks, ROUTES));
        let config =
            GatewayConfig::parse(&with("max_connections = 500\nidle_timeout = 30")).unwrap();
        assert_eq!(config.limits.max_connections, 500);
        assert_eq!(config.limits.idle, std::time::Duration::from_secs(30));
        assert_eq!(config.limits.stall, ConnectionLimits::DEFAULT.stall);
        let refused = GatewayConfig::parse(&with("max_connections = 0")).unwrap_err();
        assert_eq!(refused.setting, "listener.max_connections", "{refused}");
        assert!(GatewayConfig::parse(&with("idle = 30")).is_err());
        let each = GatewayConfig::parse(&with("max_connections_per_client = 20")).unwrap();
        assert_eq!(each.limits.max_per_client, Some(20));
        let refused = GatewayConfig::parse(&with("max_connections_per_client = 0")).unwrap_err();
        assert_eq!(
            refused.setting, "listener.max_connections_per_client",
            "{refused}"
        );
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
                text(&jwks, &route("/o", "ftp://a:1", "s")),
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
                text(&jwks, ROUTES).replacen(
                    "[[routes]]",
                    &format!(
                        "[[issuers]]\nissuer = \"https://login.example.com\"\n\
                         audience = \"other\"\njwks_file = \"{}\"\n[[routes]]",
                        jwks.display()
                    ),
                    1,
                ),
                "issuers",
            ),
            (
                text(&jwks, ROUTES)
                    .replace("jwks_file", "jwks_uri = \"http://login.test/k\"\njwks_file"),
                "issuers[0]",
            ),
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
            (
                text(&jwks, &(route("/o", "http://a:1", "s") + "timeout = 0\n")),
                "routes[0].timeout",
            ),
            (
                text(
                    &jwks,
                    &(route("/o", "http://a:1", "s") + "timeout = 3601\n"),
                ),
                "routes[0].timeout",
            ),
            (
                text(&jwks, &(route("/o", "http://a:1", "s") + "max_body = 0\n")),
                "routes[0].max_body",
            ),
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
        let (cert, key) = self_signed("gw.example.com");
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
        // Client certificates: checked against the named CAs, optional unless required.
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let with_clients = |more: &str| format!("{}{more}\n", with_tls(&cert_file, &key_file));
        let config = GatewayConfig::parse(&with_clients(&format!(
            "client_ca_file = \"{}\"\nclient_auth = \"required\"",
            ca.display()
        )))
        .unwrap();
        assert!(config.tls.unwrap().clients.is_some());
        for (more, setting) in [
            ("client_auth = \"required\"".to_owned(), "tls.client_auth"),
            (
                format!(
                    "client_ca_file = \"{}\"\nclient_auth = \"maybe\"",
                    ca.display()
                ),
                "tls.client_auth",
            ),
            (
                format!("client_ca_file = \"{}\"", missing.display()),
                "tls.client_ca_file",
            ),
            (
                format!("client_ca_file = \"{}\"", key_file.display()),
                "tls.client_ca_file",
            ),
        ] {
            let err = GatewayConfig::parse(&with_clients(&more)).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn the_egress_table_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path());
        let (cert, _) = self_signed("partner.example");
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, cert.pem()).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let egress = |route: &str| {
            format!(
                "{}[egress]\nlisten = \"127.0.0.1:8090\"\n[[egress.routes]]\nprefix = \"/p\"\n{route}",
                text(&jwks, ROUTES)
            )
        };
        let full = format!(
            "upstream = \"https://partner.example\"\nca_file = \"{}\"\n\
             token_endpoint = \"https://login.partner.example/token\"\nclient_id = \"gw\"\n\
             client_secret_file = \"{}\"\ntoken_scope = \"read\"\n",
            roots.display(),
            secret.display()
        );
        let config = GatewayConfig::parse(&egress(&full)).unwrap();
        let e = config.egress.unwrap();
        assert_eq!(e.public_url, "http://127.0.0.1:8090");
        let client = e.routes[0].outside_client.as_ref().unwrap();
        assert_eq!(client.client_secret.as_str(), "s3cret");
        assert!(!format!("{client:?}").contains("s3cret"));
        assert_eq!(e.routes[0].route.protocol(), UpstreamProtocol::Http1);
        let plain =
            GatewayConfig::parse(&egress("upstream = \"http://127.0.0.1:1\"\nhttp2 = true\n"));
        assert_eq!(
            plain.unwrap().egress.unwrap().routes[0].route.protocol(),
            UpstreamProtocol::Http2
        );
        let chained = GatewayConfig::parse(&egress(
            "upstream = \"http://x:1\"\nchain_to = \"partner.example\"\n\
             chain_server = \"partner:8443\"\ntoken_scope = \"orders\"\n",
        ))
        .unwrap();
        let chain = chained.egress.unwrap().routes[0].chain.clone().unwrap();
        assert_eq!(chain.trust_domain.as_str(), "partner.example");
        assert_eq!(chain.server_address, "partner:8443");
        assert_eq!(chain.scope.unwrap().to_string(), "orders");
        for (route, setting) in [
            (
                "upstream = \"http://x:1\"\nchain_to = \"partner.example\"\n",
                "egress.routes[0]",
            ),
            (
                "upstream = \"http://x:1\"\nchain_to = \"partner example\"\nchain_server = \"p:1\"\n",
                "egress.routes[0].chain_to",
            ),
            (
                "upstream = \"http://x:1\"\nchain_to = \"partner.example\"\nchain_server = \"https://p:1/x\"\n",
                "egress.routes[0].chain_server",
            ),
            (
                "upstream = \"http://x:1\"\nchain_to = \"partner.example\"\nchain_server = \"p:1\"\n\
                 token_endpoint = \"http://y:1/t\"\n",
                "egress.routes[0].chain_to",
            ),
            (
                "upstream = \"https://partner.example\"\n",
                "egress.routes[0].ca_file",
            ),
            ("upstream = \"ftp://x\"\n", "egress.routes[0].upstream"),
            (
                "upstream = \"http://x:1\"\ntoken_endpoint = \"http://y:1/t\"\n",
                "egress.routes[0]",
            ),
            (
                "upstream = \"http://x:1\"\ntoken_scope = \"a\"\n",
                "egress.routes[0].token_scope",
            ),
        ] {
            let err = GatewayConfig::parse(&egress(route)).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
        let same_port = text(&jwks, ROUTES)
            + "[egress]\nlisten = \"127.0.0.1:8080\"\n[[egress.routes]]\nprefix = \"/p\"\nupstream = \"http://x:1\"\n";
        assert_eq!(
            GatewayConfig::parse(&same_port).unwrap_err().setting,
            "egress.listen"
        );
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
