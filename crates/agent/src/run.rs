//! Running the agent: attest the node, start the background loops, serve the Workload API
//! on its unix socket (and health and metrics over HTTP when configured), stop cleanly.

use crate::agent::Agent;
use crate::attestor::Attestor;
use crate::config::AgentConfig;
use crate::node::NodeError;
use crate::workload_api::{WorkloadApi, check_security_header};
use axum::Router;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use wimse_proto::server::SpiffeWorkloadApiServer;

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or socket operation failed.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path or address.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node could not obtain its identity.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The gRPC server failed.
    #[error("workload API server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn io(what: &'static str, path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_string();
    move |source| RunError::Io { what, path, source }
}

/// Binds the Workload API socket: replaces a stale socket file (never another kind of file)
/// and makes the socket connectable by every local user, since the agent tells callers
/// apart by attestation, not by file permissions.
fn bind_socket(path: &Path) -> Result<UnixListener, RunError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(io("cannot create the socket directory", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(RunError::Io {
                what: "refusing to replace a file that is not a socket",
                path: path.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        std::fs::remove_file(path).map_err(io("cannot remove the stale socket", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(io("cannot listen on", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(io("cannot set permissions of", path.display()))?;
    Ok(listener)
}

/// What a started agent exposes.
#[derive(Debug)]
pub struct Running {
    /// The agent's state.
    pub agent: Arc<Agent>,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The health and metrics listener's address, if any.
    pub health_addr: Option<std::net::SocketAddr>,
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with(config, shutdown, |_| {}).await
}

/// Runs the agent until `shutdown` completes, telling `started` once it serves.
pub async fn run_with(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: impl FnOnce(&Running),
) -> Result<(), RunError> {
    let socket = config.socket.clone();
    let health_bind = config.health_bind;
    let agent = Agent::start(config).await?;
    let mut tasks = JoinSet::new();
    agent.spawn_loops(&mut tasks);

    let listener = bind_socket(&socket)?;
    let mut health_addr = None;
    if let Some(bind) = health_bind {
        let health = TcpListener::bind(bind)
            .await
            .map_err(io("cannot listen on", bind))?;
        health_addr = Some(
            health
                .local_addr()
                .map_err(io("cannot read address of", bind))?,
        );
        let router = health_router(Arc::clone(&agent));
        tasks.spawn(async move {
            if let Err(e) = axum::serve(health, router).await {
                tracing::error!(error = %e, "health listener failed");
            }
        });
    }
    let running = Running {
        agent: Arc::clone(&agent),
        socket: socket.clone(),
        health_addr,
    };
    tracing::info!(agent_id = %agent.id(), socket = %socket.display(), "agent serving the Workload API");
    started(&running);

    let api = WorkloadApi::new(Arc::clone(&agent), Arc::new(Attestor::default()));
    let result = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::with_interceptor(
            api,
            check_security_header,
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    tasks.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped");
    Ok(result?)
}

fn health_router(agent: Arc<Agent>) -> Router {
    let metrics = Arc::clone(&agent);
    wimse_server::metrics::health_router(
        move || {
            if agent.snapshot.borrow().synced {
                Ok(())
            } else {
                Err("entries not synced yet")
            }
        },
        move || metrics.metrics.render(),
    )
}
