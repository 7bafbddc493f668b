//! The async runtime, logging and signal handling that long-running commands share.

use crate::error::CommandError;
use std::future::Future;

/// Runs `future` to completion on a multi-threaded tokio runtime.
pub fn block_on<T, F>(future: F) -> Result<T, CommandError>
where
    F: Future<Output = Result<T, CommandError>>,
{
    run_on(tokio::runtime::Builder::new_multi_thread(), future)
}

/// Runs `future` to completion on a single-threaded tokio runtime: for the agent, whose
/// work is answering from memory. One thread means one malloc arena and no cross-thread
/// wake-ups on the Workload API's path (see BENCHMARKS.md, the agent's section).
pub fn block_on_current_thread<T, F>(future: F) -> Result<T, CommandError>
where
    F: Future<Output = Result<T, CommandError>>,
{
    run_on(tokio::runtime::Builder::new_current_thread(), future)
}

fn run_on<T, F>(mut builder: tokio::runtime::Builder, future: F) -> Result<T, CommandError>
where
    F: Future<Output = Result<T, CommandError>>,
{
    let runtime = builder
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    runtime.block_on(future)
}

/// Structured logs to stderr; `RUST_LOG` chooses the level (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (in tests) is harmless; ignore its error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Serves `service` on `listener` (TLS with `tls`) for clients from the network, held to
/// the default connection limits, until SIGINT or SIGTERM; then drains.
pub async fn serve_network<S>(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    service: S,
) where
    S: wimse_workload::listen::RequestService,
{
    wimse_workload::listen::serve_until(
        listener,
        tls,
        service,
        wimse_workload::listen::ConnectionLimits::default(),
        shutdown_signal(),
    )
    .await;
}
