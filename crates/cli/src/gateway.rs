//! `wimse gateway`: the identity proxy at the trust domain's boundary.
//!
//! Thin wiring over `wimse_gateway`: read the file, get the gateway's credentials from
//! the agent, and serve its ingress (with the client's address, which goes into each
//! Txn-Token's `req_ip`), its health and metrics, and its audit log.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use wimse_gateway::config::{EgressConfig, ProofSetting};
use wimse_gateway::egress::Egress;
use wimse_gateway::{Gateway, GatewayConfig};
use wimse_workload::proxy::UpstreamProtocol;
use wimse_workload::token_service::TokenServiceClient;
use wimse_workload::{AuthConfig, Authenticator, CredentialSource, Metrics, Policy, WimseLayer};

use crate::cli::Environment;
use crate::error::CommandError;
use crate::proxy::{FIRST_CREDENTIALS, audit_log, listen, serve_health, spawn_serve};

/// `wimse gateway ...`
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway: authenticate external clients, exchange their tokens, forward inward
    Run(GatewayRunArgs),
}

impl GatewayCommand {
    /// Run the chosen gateway command.
    pub fn run(self, env: &Environment) -> Result<(), CommandError> {
        match self {
            Self::Run(args) => {
                let config = GatewayConfig::load(&args.config)?;
                let socket = crate::socket::resolve_agent_socket(
                    config.agent_socket.as_deref(),
                    env.spiffe_endpoint_socket.as_ref(),
                    crate::defaults::DATA_DIR.as_ref(),
                )?;
                crate::runtime::init_logging();
                crate::runtime::block_on_network(run(config, socket))
            }
        }
    }
}

/// How often the HTTPS certificate's files are checked for a change.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// `wimse gateway run`
#[derive(Debug, Args)]
pub struct GatewayRunArgs {
    /// Configuration file: listeners, routes, accepted external issuers
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

async fn run(config: GatewayConfig, socket: PathBuf) -> Result<(), CommandError> {
    let source =
        CredentialSource::connect(socket, config.spiffe_id.clone(), FIRST_CREDENTIALS).await?;
    let token_service = TokenServiceClient::new(&source, &config.server_address)
        .map_err(|e| CommandError::Gateway(e.to_string()))?;
    let route_names: Vec<String> = config
        .routes
        .iter()
        .map(|r| format!("{} ({})", r.prefix(), r.scope()))
        .collect();
    if config.proof == ProofSetting::HttpSig
        && config
            .routes
            .iter()
            .any(|r| r.protocol() == UpstreamProtocol::Http2 && !r.is_https())
    {
        tracing::warn!(
            "proof = \"http-sig\" covers the whole request body: on `http2` routes each gRPC \
             call's request stream is read to its end before it goes in, so client-streaming \
             and bidirectional calls wait (or stall); \"wit-wpt\" or an https:// route \
             streams them"
        );
    }
    // Issuers' JWK Sets named by URL: fetched now, then kept fresh.
    config.issuers.watch();
    let mut gateway = Gateway::new(
        config.routes,
        config.issuers,
        token_service,
        source.clone(),
        config.proof.into(),
    );
    if config.accept_chained {
        gateway = gateway.with_chained_tokens();
    }
    gateway = gateway.with_trusted_proxies(config.trusted_proxies);
    let audit = match &config.audit_log {
        Some(path) => Some(audit_log(path, &source)?),
        None => None,
    };
    if let Some(log) = &audit {
        gateway = gateway.with_audit(Arc::clone(log));
    }
    let metrics = Arc::clone(gateway.metrics());
    let egress_metrics = match config.egress {
        Some(egress) => {
            Some(serve_egress(egress, &source, &config.server_address, audit.as_ref()).await?)
        }
        None => None,
    };
    let listener = listen(config.listen).await?;
    serve_health(config.health_bind, &source, move || {
        let mut registries = vec![metrics.registry()];
        registries.extend(egress_metrics.as_ref().map(|m| m.registry()));
        wimse_server::metrics::render_all(&registries)
    })
    .await?;
    tracing::info!(listen = %config.listen, server = config.server_address, routes = ?route_names,
        tls = config.tls.is_some(),
        id = ?source.current().id().map(wimse_core::WorkloadId::as_str), "gateway ready");
    let router = gateway.router();
    let tls = match config.tls {
        Some(settings) => {
            settings.certificate.watch(CERTIFICATE_CHECK);
            Some(Arc::new(
                wimse_workload::tls::web_server_config(settings.certificate, settings.clients)
                    .map_err(|e| CommandError::Gateway(e.to_string()))?,
            ))
        }
        None => None,
    };
    // The listener puts the client's address where the router reads it (`req_ip`), and
    // holds outside clients to its connection limits.
    crate::runtime::serve_network(listener, tls, router, config.limits).await;
    if let Some(log) = audit {
        log.close()?;
    }
    Ok(())
}

/// Starts the egress listener: internal callers are authenticated and authorized by the
/// same layer every workload uses (and audited in the gateway's log), then their calls go
/// out under the gateway's identity. Returns its metrics (`wimse_gateway_egress_*`).
async fn serve_egress(
    config: EgressConfig,
    source: &CredentialSource,
    server_address: &str,
    audit: Option<&Arc<wimse_audit::AuditLog>>,
) -> Result<Arc<Metrics>, CommandError> {
    let policy = Arc::new(if let Some(path) = &config.policy {
        Policy::from_file(path)?
    } else {
        tracing::warn!("egress has no `policy`: every outgoing request will be denied");
        Policy::from_text("")?
    });
    policy.watch();
    let authn = Authenticator::new(AuthConfig::new(config.public_url.clone()), source.clone());
    let metrics = Arc::new(Metrics::with_prefix("wimse_gateway_egress"));
    let mut layer = WimseLayer::new(Arc::new(authn), policy).with_metrics(Arc::clone(&metrics));
    if let Some(log) = audit {
        layer = layer.with_audit(Arc::clone(log));
    }
    let router = Egress::new(config.routes, Some((source, server_address)))
        .map_err(|e| CommandError::Gateway(format!("egress: {e}")))?
        .with_metrics(Arc::clone(&metrics))
        .router()
        .layer(layer);
    let listener = listen(config.listen).await?;
    tracing::info!(listen = %config.listen, public_url = config.public_url, "gateway egress ready");
    spawn_serve(listener, router, "gateway egress");
    Ok(metrics)
}
