//! Every default the command line falls back on, in one place.
//!
//! Paths are relative to the working directory unless the user passes `--data-dir`. The server and
//! the agent share one default data directory on purpose: after `wimse dev`, both
//! `wimse agent api fetch x509` and `wimse server entry show` find their sockets without flags.

use std::path::{Path, PathBuf};

/// Data directory of the server, the agent and `wimse dev` when `--data-dir` is absent.
pub const DATA_DIR: &str = "./.wimse";

/// Address the server's public (agent and token) API listens on when `--bind` is absent.
pub const SERVER_BIND: &str = "127.0.0.1:8443";

/// File name of the server's admin socket inside the data directory.
pub const ADMIN_SOCKET_FILE: &str = "server.sock";

/// File name of the agent's Workload API socket inside the data directory.
pub const AGENT_SOCKET_FILE: &str = "agent.sock";

/// Trust domain of `wimse dev` when `--trust-domain` is absent.
pub const DEV_TRUST_DOMAIN: &str = "example.org";

/// Lifetime of a join token from `wimse server token generate` when `--ttl` is absent (as SPIRE).
pub const JOIN_TOKEN_TTL_SECS: u32 = 600;

/// The server's admin socket inside `data_dir`.
pub fn admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_SOCKET_FILE)
}

/// The admin socket of a server that runs with the default data directory: what admin commands
/// talk to when `--admin-socket` is absent.
pub fn default_admin_socket() -> PathBuf {
    admin_socket(Path::new(DATA_DIR))
}

/// The agent's Workload API socket inside `data_dir`.
pub fn agent_socket(data_dir: &Path) -> PathBuf {
    data_dir.join(AGENT_SOCKET_FILE)
}
