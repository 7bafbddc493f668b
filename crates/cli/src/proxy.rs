//! `wimse proxy`: the sidecar that gives services in any language WIMSE credentials on the wire.
//!
//! Both directions are thin wiring over `wimse_workload::proxy`: the inbound proxy runs the
//! same `WimseLayer` a Rust service would link, the outbound one the same `attach_proof`.
//!
//! Several proxies of one user on one host are attested alike by the agent (same uid), so
//! each is offered every identity registered for that uid; `--spiffe-id` picks the one a
//! proxy speaks as (the agent's default, the first, otherwise).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use wimse_core::{TrustDomain, WorkloadId};
use wimse_workload::listen::{ConnectionLimits, LimitSettings, LimitsError};
use wimse_workload::proxy::{OutboundOptions, OutboundProof};
use wimse_workload::tls::{ClientCerts, ServerNames, server_config_with};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, Metrics, PeerAllowList, Policy, ProofMethod,
    WimseLayer,
};

use crate::agent::AgentSocketArg;
use crate::cli::Environment;
use crate::error::CommandError;

/// How long a proxy waits for its first credentials from the agent.
pub(crate) const FIRST_CREDENTIALS: Duration = Duration::from_secs(60);

/// `wimse proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Verify incoming requests' credentials, authorize them, and forward them to the service
    Inbound(InboundArgs),
    /// Sign the service's outgoing requests with this workload's credentials (and tunnel
    /// its CONNECTs, with nothing attached)
    Outbound(OutboundArgs),
}

impl ProxyCommand {
    /// Run the chosen proxy.
    pub fn run(self, env: &Environment) -> Result<(), CommandError> {
        match self {
            Self::Inbound(args) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::init_logging();
                crate::runtime::block_on_network(inbound(args, socket))
            }
            Self::Outbound(args) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::init_logging();
                crate::runtime::block_on_network(outbound(args, socket))
            }
        }
    }
}

/// Whether the inbound proxy's TLS callers must present a certificate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClientCertArg {
    /// Mutual TLS only: a caller without an X509-SVID cannot connect
    Required,
    /// Callers may connect over server-authenticated TLS and prove themselves per request
    Optional,
}

/// `wimse proxy inbound`
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools, reason = "command-line switches")]
pub struct InboundArgs {
    /// Address to accept requests on
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// URL of the service to forward verified requests to, such as `http://127.0.0.1:8080`
    #[arg(long, value_name = "URL")]
    pub upstream: String,
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// URL callers address this service by, which their proof tokens must be bound to
    /// [default: `http://<listen address>`, or `https://` with `--tls`]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Cedar policy file that decides which callers may do what, reloaded when it changes
    /// [default: deny every request]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Without a policy file, allow every authenticated caller instead of denying all
    #[arg(long, conflicts_with = "policy")]
    pub allow_any_authenticated: bool,
    /// Append an audit record for every decision to this log file
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The identity this proxy speaks as, when the agent offers several [default: the first]
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// Also accept bearer JWT-SVIDs (audience: the public URL), for legacy callers only
    #[arg(long)]
    pub allow_jwt_svid: bool,
    /// Refuse requests that carry no Txn-Token (a Txn-Token that is present is always verified)
    #[arg(long)]
    pub require_txn_token: bool,
    /// Sign every response to an authenticated caller, not only those a caller asks to
    /// have signed (`wimse-sign-response`)
    #[arg(long)]
    pub sign_responses: bool,
    /// Accept only TLS 1.3, presenting this workload's X509-SVID; a caller's own
    /// X509-SVID authenticates it (WIT-based proofs over the connection work too)
    #[arg(long)]
    pub tls: bool,
    /// With `--tls`, whether a caller must present an X509-SVID; one that presents none
    /// must prove itself with a WIT and a WPT or message signature in each request
    #[arg(long, value_enum, requires = "tls", default_value = "required")]
    pub tls_client_cert: ClientCertArg,
    /// Speak HTTP/2 (h2c, prior knowledge) to the upstream, as gRPC services need
    #[arg(long)]
    pub upstream_http2: bool,
    #[command(flatten)]
    pub health: HealthArg,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What a caller may hold of the inbound listener (`wimse_listen::ConnectionLimits`);
/// each flag left out keeps its default.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection limits")]
pub struct LimitArgs {
    /// Connections open at once; past it the listener stops accepting (within the
    /// open-file limit) [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold; more are closed at
    /// once [default: half of --max-connections]
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<u32>,
    /// Seconds a connection may go with no request in flight before it is closed
    /// [default: 300]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Seconds for a request's header section, and for a new connection's first request
    /// [default: 30]
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<u64>,
    /// Seconds for a TLS handshake [default: 10]
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout: Option<u64>,
    /// Seconds a request body or a response may make no progress [default: 60]
    #[arg(long, value_name = "SECS")]
    pub stall_timeout: Option<u64>,
    /// Seconds requests in flight have to finish on SIGTERM [default: 10]
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
}

impl LimitArgs {
    /// The listener's limits with these flags applied, or which flag is out of range.
    pub fn limits(&self) -> Result<ConnectionLimits, CommandError> {
        LimitSettings {
            handshake_timeout: self.handshake_timeout,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.stall_timeout,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            drain_timeout: self.drain_timeout,
        }
        .apply(ConnectionLimits::DEFAULT)
        .map_err(|e| {
            CommandError::Proxy(match e {
                // The settings' names, as the flags spell them.
                LimitsError::Duration { name, value, least } => format!(
                    "`--{}` is {value}: it must be between {least} and {} seconds",
                    name.replace('_', "-"),
                    wimse_workload::listen::LONGEST_SECS
                ),
                LimitsError::NoConnections { name } => {
                    format!("`--{}` must be at least 1", name.replace('_', "-"))
                }
            })
        })
    }
}

/// The health and metrics listener of a proxy.
#[derive(Debug, Args)]
pub struct HealthArg {
    /// Serve /healthz, /readyz and Prometheus /metrics over HTTP on this address
    #[arg(long, value_name = "ADDR")]
    pub health_bind: Option<SocketAddr>,
}

/// Which proof the outbound proxy attaches.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProofArg {
    /// WIT + Workload Proof Token
    WitWpt,
    /// WIT + HTTP Message Signature
    HttpSig,
    /// Mutual TLS with this workload's X509-SVID to the upstream (the service still sends
    /// plain `http://` requests to the proxy)
    Mtls,
}

/// How the outbound proxy checks the name it reached a server by.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServerNameArg {
    /// A server reached by DNS name must hold that name in its X509-SVID (RFC 9525
    /// §6.3); one reached by IP address is accepted by its identity
    Dns,
    /// Servers are accepted by identity alone (SPIFFE's rule); name each one expected
    /// with --server-id or --destination HOST:PORT=ID
    Off,
}

/// `wimse proxy outbound`
#[derive(Debug, Args)]
pub struct OutboundArgs {
    /// Address to accept the service's outgoing requests on (keep it on loopback: whoever
    /// reaches it speaks as this workload)
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// The identity this proxy speaks as, when the agent offers several [default: the first]
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// The proof attached to each request
    #[arg(long, value_enum, default_value = "wit-wpt")]
    pub proof: ProofArg,
    /// Ask every server to sign its response and refuse (502) a response that is not
    /// signed by a trusted workload (needs `--proof http-sig`)
    #[arg(long)]
    pub require_signed_response: bool,
    /// Send the WIT and its proof over TLS: each `http://` request goes out as `https://`
    /// to the same host and port (443 when the URL names none), to a server that must
    /// present an X509-SVID; this workload presents its own (`--proof mtls` is always
    /// over TLS)
    #[arg(long)]
    pub tls: bool,
    /// With `--proof mtls` or `--tls`: a server identity to accept (repeatable)
    /// [default: any server of this workload's own trust domain]
    #[arg(long = "server-id", value_name = "ID")]
    pub server_ids: Vec<String>,
    /// With `--proof mtls` or `--tls`: a trust domain whose servers to accept (repeatable)
    #[arg(long = "server-trust-domain", value_name = "TD")]
    pub server_trust_domains: Vec<String>,
    /// With `--proof mtls` or `--tls`: whether a server reached by DNS name must hold
    /// that name in its X509-SVID (a registration entry's `--dns`), as the WIMSE drafts
    /// require [default: dns]
    #[arg(long, value_enum, value_name = "CHECK")]
    pub server_name_check: Option<ServerNameArg>,
    /// A destination requests may go to, `HOST[:PORT]` (port 80 by default, 443 with
    /// `--tls`), with `--proof mtls` or `--tls` optionally `=ID`: the one server identity
    /// accepted there (repeatable) [default: any destination]. Once one is given,
    /// requests and CONNECT tunnels for any other are refused (403) and no credential
    /// leaves for them
    #[arg(long = "destination", value_name = "HOST[:PORT][=ID]")]
    pub destinations: Vec<String>,
    /// Send every request to this one server, `http://HOST[:PORT]` (as `https://` with
    /// `--tls`), whatever URL it names: for clients that dial their server instead of
    /// using an HTTP proxy, such as a gRPC channel whose target is this listener. No
    /// CONNECT tunnels then
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Speak HTTP/2 to servers (h2c, prior knowledge; `h2` by ALPN over TLS), passing
    /// `TE: trailers` on and response trailers back, as gRPC needs (the service may speak
    /// HTTP/1.1 or h2c to this listener)
    #[arg(long)]
    pub upstream_http2: bool,
    /// Seconds a CONNECT tunnel may carry nothing either way before it is closed
    #[arg(long, value_name = "SECS", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub tunnel_idle_timeout: u64,
    #[command(flatten)]
    pub health: HealthArg,
}

fn workload_id(text: Option<&str>) -> Result<Option<WorkloadId>, CommandError> {
    text.map(|t| {
        WorkloadId::parse(t).map_err(|e| CommandError::Proxy(format!("`--spiffe-id`: {e}")))
    })
    .transpose()
}

pub(crate) async fn credentials(
    socket: PathBuf,
    id: Option<&str>,
) -> Result<CredentialSource, CommandError> {
    Ok(CredentialSource::connect(socket, workload_id(id)?, FIRST_CREDENTIALS).await?)
}

pub(crate) async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, CommandError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CommandError::Proxy(format!("cannot listen on `{addr}`: {e}")))
}

/// Starts the health listener on `addr`, if given: `/healthz` (the process answers),
/// `/readyz` (it holds a complete set of unexpired credentials from the agent) and `/metrics`
/// (what `render` writes).
pub(crate) async fn serve_health(
    addr: Option<SocketAddr>,
    source: &CredentialSource,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<(), CommandError> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = listen(addr).await?;
    let source = source.clone();
    let router = wimse_server::metrics::health_router(
        move || source.current().readiness(wimse_core::token::unix_now()),
        render,
    );
    tracing::info!(health = %addr, "health and metrics listener ready");
    spawn_serve(listener, router, "health listener");
    Ok(())
}

/// Serves `router` on `listener` in the background until SIGTERM; `what` names it in the
/// log if it stops with an error.
pub(crate) fn spawn_serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    what: &'static str,
) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(crate::runtime::shutdown_signal())
            .await
        {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
}

/// The proxies' metrics, rendered.
fn render(metrics: &Arc<Metrics>) -> impl Fn() -> String + Clone + Send + Sync + 'static {
    let metrics = Arc::clone(metrics);
    move || wimse_server::metrics::render(metrics.registry())
}

pub(crate) fn audit_log(
    path: &Path,
    source: &CredentialSource,
) -> Result<Arc<wimse_audit::AuditLog>, CommandError> {
    let creds = source.current();
    let (Some(id), Some(svid)) = (creds.id(), creds.x509.as_ref()) else {
        return Err(CommandError::Proxy(
            "no workload identity to sign the audit log with".into(),
        ));
    };
    Ok(Arc::new(wimse_audit::AuditLog::open(
        wimse_audit::AuditConfig::new(id.clone(), Arc::clone(&svid.key)).with_file(path),
    )?))
}

async fn inbound(args: InboundArgs, socket: PathBuf) -> Result<(), CommandError> {
    let limits = args.limits.limits()?;
    let upstream: http::Uri = args
        .upstream
        .parse()
        .map_err(|e| CommandError::Proxy(format!("`--upstream`: {e}")))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(CommandError::Proxy(
            "`--upstream` must be an http:// url".into(),
        ));
    }
    // Deny by default: without a policy, nothing is allowed unless the operator says so.
    let policy = Arc::new(match (&args.policy, args.allow_any_authenticated) {
        (Some(path), _) => Policy::from_file(path)?,
        (None, true) => Policy::allow_authenticated(),
        (None, false) => {
            tracing::warn!(
                "no --policy given: every request will be denied; give --policy FILE, or \
                 --allow-any-authenticated to allow every authenticated caller"
            );
            Policy::from_text("")?
        }
    });
    let source = credentials(socket, args.spiffe_id.as_deref()).await?;
    policy.watch();
    let scheme = if args.tls { "https" } else { "http" };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let mut config = AuthConfig::new(public_url.clone());
    config.methods.jwt_svid = args.allow_jwt_svid;
    config.require_txn_token = args.require_txn_token;
    let metrics = Arc::new(Metrics::default());
    let mut layer = WimseLayer::new(Arc::new(Authenticator::new(config, source.clone())), policy)
        .with_metrics(Arc::clone(&metrics));
    let audit = match &args.audit_log {
        Some(path) => Some(audit_log(path, &source)?),
        None => None,
    };
    if let Some(log) = &audit {
        layer = layer.with_audit(Arc::clone(log));
    }
    if args.sign_responses {
        layer = layer.sign_all_responses();
    }
    let protocol = if args.upstream_http2 {
        wimse_workload::proxy::UpstreamProtocol::Http2
    } else {
        wimse_workload::proxy::UpstreamProtocol::Http1
    };
    let router = wimse_workload::proxy::inbound_router_with(&upstream, protocol, layer);
    let listener = listen(args.listen).await?;
    serve_health(args.health.health_bind, &source, render(&metrics)).await?;
    tracing::info!(listen = %args.listen, public_url, upstream = %args.upstream, tls = args.tls,
        id = ?source.current().id().map(WorkloadId::as_str), "inbound proxy ready");
    let tls = if args.tls {
        let clients = match args.tls_client_cert {
            ClientCertArg::Required => ClientCerts::Required,
            ClientCertArg::Optional => ClientCerts::Optional,
        };
        let config = server_config_with(&source, PeerAllowList::default(), clients)
            .map_err(|e| CommandError::Proxy(e.to_string()))?;
        Some(Arc::new(config))
    } else {
        None
    };
    // Callers come from the network: held to the listener's connection limits.
    crate::runtime::serve_network(listener, tls, router, limits).await;
    if let Some(log) = audit {
        log.close()?;
    }
    Ok(())
}

/// Whether the outbound proxy's connections are TLS on which servers prove an
/// X509-SVID: `--proof mtls` or `--tls`.
fn proves_servers(args: &OutboundArgs) -> bool {
    args.tls || matches!(args.proof, ProofArg::Mtls)
}

/// The servers `--server-id`/`--server-trust-domain` name (only over TLS), or `None` when
/// neither is given.
fn server_allow_list(args: &OutboundArgs) -> Result<Option<PeerAllowList>, CommandError> {
    if args.server_ids.is_empty() && args.server_trust_domains.is_empty() {
        return Ok(None);
    }
    if !proves_servers(args) {
        return Err(CommandError::Proxy(
            "`--server-id` and `--server-trust-domain` need `--proof mtls` or `--tls`".into(),
        ));
    }
    let mut allow = PeerAllowList::default();
    for id in &args.server_ids {
        allow.ids.insert(
            WorkloadId::parse(id)
                .map_err(|e| CommandError::Proxy(format!("`--server-id`: {e}")))?,
        );
    }
    for td in &args.server_trust_domains {
        allow.trust_domains.insert(
            TrustDomain::new(td)
                .map_err(|e| CommandError::Proxy(format!("`--server-trust-domain`: {e}")))?,
        );
    }
    Ok(Some(allow))
}

/// The `--destination` values, by [`wimse_workload::proxy::destination_key`] with a port
/// left out as `default_port`; a server identity only when `pins` (TLS proves it).
fn destinations(
    values: &[String],
    pins: bool,
    default_port: u16,
) -> Result<BTreeMap<String, Option<WorkloadId>>, CommandError> {
    let bad =
        |value: &str, why: &str| CommandError::Proxy(format!("`--destination {value}`: {why}"));
    let mut destinations = BTreeMap::new();
    for value in values {
        let (place, id) = match value.split_once('=') {
            Some((place, id)) => (place, Some(id)),
            None => (value.as_str(), None),
        };
        let authority: http::uri::Authority =
            place.parse().map_err(|_| bad(value, "not a HOST[:PORT]"))?;
        if authority.as_str().contains('@')
            || (authority.as_str().len() > authority.host().len() && authority.port_u16().is_none())
        {
            return Err(bad(value, "not a HOST[:PORT]"));
        }
        let id = id
            .map(|id| WorkloadId::parse(id).map_err(|e| bad(value, &e.to_string())))
            .transpose()?;
        if id.is_some() && !pins {
            return Err(bad(
                value,
                "a server identity needs `--proof mtls` or `--tls` (only the handshake proves it)",
            ));
        }
        let key = wimse_workload::proxy::destination_key(&authority, default_port);
        if destinations.insert(key, id).is_some() {
            return Err(bad(value, "that destination is given twice"));
        }
    }
    Ok(destinations)
}

/// The outbound `--upstream`: an `http://HOST[:PORT]` URL with nothing after the
/// authority (the requests' paths are appended), as its authority.
fn outbound_upstream(url: &str) -> Result<http::uri::Authority, CommandError> {
    let bad = |why: &str| CommandError::Proxy(format!("`--upstream {url}`: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "must be http:// (with --tls or --proof mtls it goes out as https://)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not hold user information"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad(
            "must name only a host and port: each request's path is sent as it is",
        ));
    }
    Ok(authority.clone())
}

/// SPECS §6: a client that does not check a DNS name MUST be configured with the server
/// identifier it expects. Which servers are accepted by trust domain alone (with no
/// `--server-id`), to warn of at start: at a destination with no `=ID` that is reached by
/// IP address, or by any name when names are not checked; at any, when none is listed.
fn unnamed_servers(
    destinations: &BTreeMap<String, Option<WorkloadId>>,
    names: ServerNames,
) -> Option<&'static str> {
    let by_ip = |key: &str| {
        key.parse::<http::uri::Authority>().is_ok_and(|a| {
            a.host()
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
    };
    let unnamed = destinations
        .iter()
        .any(|(key, id)| id.is_none() && (names == ServerNames::Unchecked || by_ip(key)));
    (destinations.is_empty() || unnamed).then_some(match names {
        ServerNames::Checked => "servers reached by IP address",
        ServerNames::Unchecked => "servers",
    })
}

/// Refuses outbound flags that do not go together, and warns of those that work poorly.
fn check_outbound_flags(args: &OutboundArgs) -> Result<(), CommandError> {
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "outbound proxy listens beyond loopback: anyone who reaches it speaks as this workload");
    }
    if args.require_signed_response && !matches!(args.proof, ProofArg::HttpSig) {
        return Err(CommandError::Proxy(
            "`--require-signed-response` needs `--proof http-sig`: the profile defines \
             response signatures for message-signed requests only"
                .into(),
        ));
    }
    if args.tls && matches!(args.proof, ProofArg::Mtls) {
        return Err(CommandError::Proxy(
            "`--tls` is for `--proof wit-wpt` and `--proof http-sig`: `--proof mtls` is always \
             over TLS"
                .into(),
        ));
    }
    if args.upstream_http2 && matches!(args.proof, ProofArg::HttpSig) {
        tracing::warn!(
            "a message signature covers the whole request body: each gRPC call's request \
             stream is read to its end before it goes out, so client-streaming and \
             bidirectional calls wait (or stall); --proof wit-wpt or mtls streams them"
        );
    }
    Ok(())
}

async fn outbound(args: OutboundArgs, socket: PathBuf) -> Result<(), CommandError> {
    check_outbound_flags(&args)?;
    let servers = server_allow_list(&args)?;
    // Over `--tls` the service's `http://` URLs go out as `https://`: port 443 by default.
    let default_port = if args.tls { 443 } else { 80 };
    let destinations = destinations(&args.destinations, proves_servers(&args), default_port)?;
    let names = match (args.server_name_check, proves_servers(&args)) {
        (Some(_), false) => {
            return Err(CommandError::Proxy(
                "`--server-name-check` needs `--proof mtls` or `--tls`".into(),
            ));
        }
        (Some(ServerNameArg::Off), true) => ServerNames::Unchecked,
        (Some(ServerNameArg::Dns) | None, _) => ServerNames::Checked,
    };
    let upstream = args
        .upstream
        .as_deref()
        .map(outbound_upstream)
        .transpose()?;
    let upstream_key = upstream
        .as_ref()
        .map(|u| wimse_workload::proxy::destination_key(u, default_port));
    if let Some(key) = &upstream_key
        && !destinations.is_empty()
        && !destinations.contains_key(key)
    {
        return Err(CommandError::Proxy(format!(
            "`--upstream` goes to `{key}`, which no `--destination` names: every request \
             would be refused"
        )));
    }
    if proves_servers(&args) && args.server_ids.is_empty() {
        // With one upstream and no list, the upstream is the one destination.
        let reached = match upstream_key {
            Some(key) if destinations.is_empty() => [(key, None)].into(),
            _ => destinations.clone(),
        };
        if let Some(which) = unnamed_servers(&reached, names) {
            tracing::warn!(
                "{which} are accepted by trust domain alone: name the one expected with \
                 --server-id, or per destination with --destination HOST:PORT=ID"
            );
        }
    }
    let source = credentials(socket, args.spiffe_id.as_deref()).await?;
    // By default, only servers of this workload's own trust domain.
    let servers = || {
        servers.clone().unwrap_or_else(|| {
            let mut own = PeerAllowList::default();
            if let Some(id) = source.current().id() {
                own.trust_domains.insert(id.trust_domain().clone());
            }
            own
        })
    };
    let proof = match (args.proof, args.tls) {
        (ProofArg::WitWpt, false) => OutboundProof::Attach(ProofMethod::WitWpt),
        (ProofArg::HttpSig, false) => OutboundProof::Attach(ProofMethod::HttpSig),
        (ProofArg::WitWpt, true) => OutboundProof::AttachOverTls(ProofMethod::WitWpt, servers()),
        (ProofArg::HttpSig, true) => OutboundProof::AttachOverTls(ProofMethod::HttpSig, servers()),
        (ProofArg::Mtls, _) => OutboundProof::Mtls(servers()),
    };
    let metrics = Arc::new(Metrics::default());
    let mut options = OutboundOptions::new(proof);
    options.require_signed_responses = args.require_signed_response;
    options.destinations = destinations;
    options.metrics = Some(Arc::clone(&metrics));
    options.tunnel_idle = Duration::from_secs(args.tunnel_idle_timeout);
    options.server_names = names;
    options.upstream = upstream;
    if args.upstream_http2 {
        options.upstream_protocol = wimse_workload::proxy::UpstreamProtocol::Http2;
    }
    let router = wimse_workload::proxy::outbound_router(source.clone(), options)
        .map_err(|e| CommandError::Proxy(e.to_string()))?;
    let listener = listen(args.listen).await?;
    serve_health(args.health.health_bind, &source, render(&metrics)).await?;
    tracing::info!(listen = %args.listen,
        id = ?source.current().id().map(WorkloadId::as_str), "outbound proxy ready");
    axum::serve(listener, router)
        .with_graceful_shutdown(crate::runtime::shutdown_signal())
        .await
        .map_err(|e| CommandError::Proxy(format!("outbound proxy stopped: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parse(values: &[&str], mtls: bool) -> Result<Vec<(String, Option<String>)>, String> {
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        destinations(&values, mtls, 80)
            .map(|d| {
                d.into_iter()
                    .map(|(k, id)| (k, id.map(|i| i.to_string())))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn servers_accepted_by_trust_domain_alone_are_warned_of() {
        let list = |values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            destinations(&values, true, 443).unwrap()
        };
        let (checked, unchecked) = (ServerNames::Checked, ServerNames::Unchecked);
        let by_ip = Some("servers reached by IP address");
        // No list: any server, by IP address when names are checked.
        assert_eq!(unnamed_servers(&list(&[]), checked), by_ip);
        assert_eq!(unnamed_servers(&list(&[]), unchecked), Some("servers"));
        // Names checked: a DNS name is enough, an IP address needs its identity.
        assert_eq!(
            unnamed_servers(&list(&["orders", "pay:8443"]), checked),
            None
        );
        assert_eq!(
            unnamed_servers(&list(&["orders", "10.0.0.7:8443"]), checked),
            by_ip
        );
        assert_eq!(unnamed_servers(&list(&["[::1]:8443"]), checked), by_ip);
        let pinned = list(&["10.0.0.7:8443=spiffe://td.test/pay"]);
        assert_eq!(unnamed_servers(&pinned, checked), None);
        // Names not checked: every destination needs its identity.
        assert_eq!(
            unnamed_servers(&list(&["orders"]), unchecked),
            Some("servers")
        );
        assert_eq!(unnamed_servers(&pinned, unchecked), None);
    }

    #[test]
    fn destinations_are_keyed_by_lowercase_host_and_port_and_pin_ids_only_over_tls() {
        assert_eq!(
            parse(&["Orders", "pay:8443=spiffe://td.test/pay"], true).unwrap(),
            vec![
                ("orders:80".to_owned(), None),
                (
                    "pay:8443".to_owned(),
                    Some("spiffe://td.test/pay".to_owned())
                ),
            ]
        );
        let refused = |values: &[&str], mtls: bool, why: &str| {
            let e = parse(values, mtls).unwrap_err();
            assert!(e.contains(why), "{values:?}: {e}");
        };
        refused(
            &["pay=spiffe://td.test/pay"],
            false,
            "needs `--proof mtls` or `--tls`",
        );
        // Over `--tls` a port left out is https's.
        let over_tls: Vec<String> = destinations(&["Orders".to_owned()], true, 443)
            .unwrap()
            .into_keys()
            .collect();
        assert_eq!(over_tls, ["orders:443"]);
        refused(&["orders", "ORDERS:80"], false, "given twice");
        refused(&["user@orders"], false, "not a HOST[:PORT]");
        refused(&["orders/x"], false, "not a HOST[:PORT]");
        refused(&["orders:99999"], false, "not a HOST[:PORT]");
        refused(&["orders:abc"], false, "not a HOST[:PORT]");
        refused(&["pay=not-an-id"], true, "--destination pay=not-an-id");
    }
}
