//! Running a server replica: open its state, serve the public TLS listener and the admin
//! socket, rotate keys and refresh the bundle in the background, stop cleanly on shutdown.

use crate::authority::{Authorities, AuthorityError, RotationPolicy, UpstreamCa, write_private};
use crate::config::ServerConfig;
use crate::state::{State, StateError};
use crate::tls::{self, TlsError};
use crate::{admin, agent_api, public, token_service};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use wimse_core::jose::{SigningKey, b64};
use wimse_core::token::unix_now;
use wimse_core::x509::Certificate;

/// How often keys are checked for rotation and the bundle re-read from the datastore.
const TICK: Duration = Duration::from_secs(5);

/// How often the entry revision is re-read, so that changes made by other replicas on the
/// same database reach this replica's agents within about a second.
const REVISION_POLL: Duration = Duration::from_secs(1);

/// What a client may hold of the public listener ([`wimse_listen`]) unless the
/// configuration's `[listener]` section says otherwise: the listener's defaults, but room
/// for 50,000 connections (every agent keeps one open, long-polling for entries; fewer if
/// the open-file limit is lower) and 4 s to drain on stop.
pub const PUBLIC_LIMITS: wimse_listen::ConnectionLimits = wimse_listen::ConnectionLimits {
    max_connections: 50_000,
    drain: Duration::from_secs(4),
    ..wimse_listen::ConnectionLimits::DEFAULT
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
    /// The upstream CA files are unusable.
    #[error("upstream CA: {0}")]
    Upstream(String),
    /// The key store failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The state could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A declared federation relationship could not be stored.
    #[error("federation in the configuration: {0}")]
    Federation(#[from] crate::federation::FederationError),
}

fn io(
    what: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_string();
    move |source| ServerError::Io { what, path, source }
}

/// This replica's ID, kept in `<data dir>/server_id` so that it survives restarts.
fn server_id(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("server_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let mut bytes = [0u8; 9];
            aws_lc_rs::rand::fill(&mut bytes)
                .map_err(|_| ServerError::Upstream("no randomness".into()))?;
            let id = b64::encode(bytes);
            write_private(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

fn upstream(config: &ServerConfig) -> Result<Option<UpstreamCa>, ServerError> {
    let Some((cert_path, key_path)) = &config.upstream_ca else {
        return Ok(None);
    };
    let cert_text = std::fs::read_to_string(cert_path)
        .map_err(io("reading upstream CA certificate", cert_path.display()))?;
    let key_text = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_path)
            .map_err(io("reading upstream CA key", key_path.display()))?,
    );
    let cert =
        Certificate::from_pem(&cert_text).map_err(|e| ServerError::Upstream(e.to_string()))?;
    let key =
        SigningKey::from_pkcs8_pem(&key_text).map_err(|e| ServerError::Upstream(e.to_string()))?;
    if !cert.is_ca() {
        return Err(ServerError::Upstream("the certificate is not a CA".into()));
    }
    Ok(Some(UpstreamCa {
        cert,
        key: Arc::new(key),
    }))
}

/// A started server: its state and the address it listens on.
pub struct Running {
    /// The shared state.
    pub state: Arc<State>,
    /// The TLS listener's address (useful when bound to port 0).
    pub local_addr: std::net::SocketAddr,
    /// The admin socket.
    pub admin_socket: PathBuf,
}

/// Starts the server and serves until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (running, tasks) = start(config).await?;
    tracing::info!(
        trust_domain = %running.state.config.trust_domain,
        address = %running.local_addr,
        admin_socket = %running.admin_socket.display(),
        server_id = %running.state.server_id,
        "wimse server ready"
    );
    shutdown.await;
    tracing::info!("shutting down");
    tasks.stop().await;
    running.state.audit.close();
    let _ = std::fs::remove_file(&running.admin_socket);
    Ok(())
}

/// The background tasks of a started server.
pub struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    /// How long [`Tasks::stop`] waits for each task: the public listener's drain and a
    /// second, and never less than 5 s.
    wait: Duration,
}

impl Tasks {
    /// Stops accepting, lets the listeners finish in-flight requests, ends the tasks.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for handle in self.handles {
            let _ = tokio::time::timeout(self.wait, handle).await;
        }
    }
}

/// Opens the state and starts every listener and background task.
pub async fn start(config: ServerConfig) -> Result<(Running, Tasks), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(io("creating data directory", config.data_dir.display()))?;
    let server_id = server_id(&config.data_dir)?;
    let policy = RotationPolicy {
        ca_ttl: config.ca_ttl,
        jwt_key_ttl: config.jwt_key_ttl,
    };
    let authorities = Authorities::load_or_create(
        &config.data_dir.join("keys"),
        &server_id,
        config.trust_domain.clone(),
        policy,
        upstream(&config)?,
        unix_now(),
    )?;
    let state = State::open(config, authorities, server_id).await?;
    crate::federation::declare(&state, &state.config.federation).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();

    let listener = TcpListener::bind(state.config.bind)
        .await
        .map_err(io("binding", state.config.bind))?;
    let local_addr = listener
        .local_addr()
        .map_err(io("binding", state.config.bind))?;
    let public_tls = tls::server_config(&state)?;
    let mut public_stop = stop_rx.clone();
    handles.push(tokio::spawn(wimse_listen::serve_until(
        listener,
        Some(public_tls),
        public::router(Arc::clone(&state))
            .merge(agent_api::router(Arc::clone(&state), stop_rx.clone()))
            .merge(token_service::router(Arc::clone(&state))),
        state.config.listener,
        async move { stopped(&mut public_stop).await },
        // The chain was verified in the handshake; every request of a connection carries
        // the caller it proved.
        |certificates: Option<&[CertificateDer<'_>]>| {
            let mut facts = axum::http::Extensions::new();
            facts.insert(tls::caller_of(certificates));
            facts
        },
    )));

    let admin_socket = state.config.admin_socket.clone();
    // A socket file left by a crashed server would make bind fail.
    let _ = std::fs::remove_file(&admin_socket);
    let unix = UnixListener::bind(&admin_socket)
        .map_err(io("binding admin socket", admin_socket.display()))?;
    std::fs::set_permissions(&admin_socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("securing admin socket", admin_socket.display()))?;
    let mut admin_stop = stop_rx.clone();
    let admin_app = admin::router(Arc::clone(&state));
    handles.push(tokio::spawn(async move {
        let admin_app = admin_app.into_make_service_with_connect_info::<admin::Caller>();
        let result = axum::serve(unix, admin_app)
            .with_graceful_shutdown(async move {
                stopped(&mut admin_stop).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin socket server failed");
        }
    }));

    // Outside issuers' JWK Sets named by URL: fetched now, then kept fresh.
    state.token_service.issuers().watch();
    handles.push(tokio::spawn(crate::federation::run(
        Arc::clone(&state),
        stop_rx.clone(),
    )));
    handles.push(tokio::spawn(maintain(Arc::clone(&state), stop_rx)));
    let wait = (state.config.listener.drain + Duration::from_secs(1)).max(Duration::from_secs(5));
    Ok((
        Running {
            state,
            local_addr,
            admin_socket,
        },
        Tasks {
            stop,
            handles,
            wait,
        },
    ))
}

/// Completes once shutdown has been signalled (or the signaller is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Rotates keys, re-reads the shared bundle and renews the server certificate on a tick.
async fn maintain(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revision_poll = tokio::time::interval(REVISION_POLL);
    revision_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            // Entry changes by other replicas: wake this replica's long-polling agents.
            _ = revision_poll.tick() => {
                if let Err(e) = state.refresh_revision().await {
                    tracing::warn!(error = %e, "reading the entry revision failed");
                }
            }
            _ = tick.tick() => {
                if let Err(e) = state.rotate().await {
                    tracing::error!(error = %e, "key rotation or bundle refresh failed");
                }
                if let Err(e) = state.prune(unix_now()).await {
                    tracing::warn!(error = %e, "pruning expired records failed");
                }
                if state.svid_needs_renewal(unix_now())
                    && let Err(e) = state.renew_svid()
                {
                    tracing::error!(error = %e, "server certificate renewal failed");
                }
            }
        }
    }
}
