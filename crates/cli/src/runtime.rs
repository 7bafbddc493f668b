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

/// [`block_on`] for a command that serves the network (the server, the proxies, the
/// gateway, `wimse dev`): the open-file limit is raised first, so that its listeners can
/// hold as many connections as they allow. Only these commands: a raised limit is
/// inherited by child processes (`agent exec`, reload commands), and some programs
/// misbehave with a large one.
pub fn block_on_network<T, F>(future: F) -> Result<T, CommandError>
where
    F: Future<Output = Result<T, CommandError>>,
{
    raise_open_file_limit();
    block_on(future)
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

/// The most open files a process may ask for on Linux unless `fs.nr_open` says more.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The most open files macOS lets a process set as its soft limit by default
/// (`OPEN_MAX`): it refuses more even when the hard limit is unlimited.
const OPEN_MAX: u64 = 10_240;

/// Raises the soft limit on open files to the hard limit, as Go programs do at start:
/// every connection is a file, and the usual soft limit (1,024) is far below what the
/// listeners allow ([`wimse_workload::listen::ConnectionLimits`]), while the hard limit is
/// usually generous. Nothing happens if the limit cannot be read or raised. Returns the
/// soft limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let current = limit.current?;
    for target in raise_targets(current, limit.maximum) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return Some(target),
            Err(e) => {
                tracing::debug!(error = %e, target, "the open-file limit could not be raised");
            }
        }
    }
    Some(current)
}

/// The soft limits to try, most first, for a process at `current` under the hard limit
/// `maximum` (`None`: unlimited): the hard limit (Linux's own ceiling when unlimited), then
/// [`OPEN_MAX`], which is what macOS accepts where it refuses the first; none that would
/// not raise the limit.
fn raise_targets(current: u64, maximum: Option<u64>) -> Vec<u64> {
    let most = maximum.unwrap_or(NR_OPEN_DEFAULT);
    let mut targets = vec![most, OPEN_MAX.min(most)];
    targets.dedup();
    targets.retain(|&target| target > current);
    targets
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
/// `limits`, until SIGINT or SIGTERM; then drains.
pub async fn serve_network<S>(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    service: S,
    limits: wimse_workload::listen::ConnectionLimits,
) where
    S: wimse_workload::listen::RequestService,
{
    wimse_workload::listen::serve_until(
        listener,
        tls,
        service,
        limits,
        shutdown_signal(),
        wimse_workload::listen::mtls_peer,
    )
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::{NR_OPEN_DEFAULT, OPEN_MAX, raise_open_file_limit, raise_targets};
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let Some(hard) = before.maximum.filter(|&hard| hard > 1_024) else {
            eprintln!("hard limit {:?}: nothing to raise, not run", before.maximum);
            return;
        };
        // Lowered as a login shell would leave it, then raised again.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(1_024),
                maximum: Some(hard),
            },
        )
        .unwrap();
        assert_eq!(raise_open_file_limit(), Some(hard));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }

    #[test]
    fn an_unlimited_or_large_hard_limit_falls_back_to_what_macos_accepts() {
        assert_eq!(raise_targets(1_024, None), [NR_OPEN_DEFAULT, OPEN_MAX]);
        assert_eq!(raise_targets(256, Some(524_288)), [524_288, OPEN_MAX]);
        // A hard limit below OPEN_MAX is tried once; nothing that would not raise the limit.
        assert_eq!(raise_targets(1_024, Some(4_096)), [4_096]);
        assert_eq!(raise_targets(20_000, None), [NR_OPEN_DEFAULT]);
        assert!(raise_targets(4_096, Some(4_096)).is_empty());
    }
}
