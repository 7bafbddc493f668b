//! `wimse gateway`: the identity proxy at the trust domain's boundary.
//!
//! Thin wiring over `wimse_gateway`: read the file, get the gateway's credentials from
//! the agent, and serve its ingress (with the client's address, which goes into each
//! Txn-Token's `req_ip`), its health and metrics, and its audit log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use wimse_gateway::{Gateway, GatewayConfig};
use wimse_workload::CredentialSource;
use wimse_workload::token_service::TokenServiceClient;

use crate::cli::Environment;
use crate::error::CommandError;
use crate::proxy::{FIRST_CREDENTIALS, audit_log, listen, serve_health};

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
                crate::runtime::block_on(run(config, socket))
            }
        }
    }
}

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
    let mut gateway = Gateway::new(
        config.routes,
        config.issuers,
        token_service,
        source.clone(),
        config.proof.into(),
    );
    let audit = match &config.audit_log {
        Some(path) => Some(audit_log(path, &source)?),
        None => None,
    };
    if let Some(log) = &audit {
        gateway = gateway.with_audit(Arc::clone(log));
    }
    let metrics = Arc::clone(gateway.metrics());
    let listener = listen(config.listen).await?;
    serve_health(config.health_bind, &source, move || {
        wimse_server::metrics::render(metrics.registry())
    })
    .await?;
    tracing::info!(listen = %config.listen, server = config.server_address, routes = ?route_names,
        tls = config.tls.is_some(),
        id = ?source.current().id().map(wimse_core::WorkloadId::as_str), "gateway ready");
    let router = gateway.router();
    if let Some(tls) = config.tls {
        // `serve` puts the client's address where the router reads it (`req_ip`).
        tokio::select! {
            () = wimse_workload::tls::serve(listener, tls, router) => {}
            () = crate::runtime::shutdown_signal() => {}
        }
    } else {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(crate::runtime::shutdown_signal())
        .await
        .map_err(|e| CommandError::Gateway(format!("stopped: {e}")))?;
    }
    if let Some(log) = audit {
        log.close()?;
    }
    Ok(())
}
