//! How a command fails, and which exit code each failure maps to.

use std::process::ExitCode;

use crate::socket::EndpointSocketError;

/// Why a command failed.
///
/// Messages are one line, lowercase, without a trailing period; `main` prefixes `error: ` and
/// appends the chain of sources. Variants for the library crates' errors join as those crates
/// appear.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The agent's Workload API socket could not be determined from the environment.
    #[error("cannot locate the agent's Workload API socket")]
    AgentSocket(#[from] EndpointSocketError),
    /// A call to the server's admin API failed.
    #[error(transparent)]
    Admin(#[from] wimse_server::admin::client::ClientError),
    /// The server or agent configuration is invalid.
    #[error(transparent)]
    Config(#[from] wimse_server::config::ConfigError),
    /// The server failed to start or stopped with an error.
    #[error(transparent)]
    Server(#[from] wimse_server::run::ServerError),
    /// The agent failed to start or stopped with an error.
    #[error(transparent)]
    Agent(#[from] wimse_agent::run::RunError),
    /// A Workload API call failed.
    #[error(transparent)]
    WorkloadApi(#[from] wimse_proto::ClientError),
    /// Credentials could not be written to files.
    #[error(transparent)]
    Files(#[from] wimse_agent::files::FilesError),
    /// A command to run could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command run by `wimse` failed; its exit status becomes ours.
    #[error("`{command}` exited with status {status}")]
    ChildFailed {
        /// The command.
        command: String,
        /// Its exit status (128 + signal number if a signal ended it).
        status: u8,
    },
    /// The agent answered, but not as a healthy agent does.
    #[error("agent is unhealthy: {0}")]
    Unhealthy(String),
    /// `wimse dev` could not set up the local trust domain.
    #[error("dev: {0}")]
    Dev(String),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// An audit log could not be read, or is broken (the first broken entry and why).
    #[error(transparent)]
    Audit(#[from] wimse_audit::VerifyError),
    /// A command-line argument is invalid (or names a file that cannot be read).
    #[error("`--{flag}`: {reason}")]
    Argument {
        /// The flag, without its dashes.
        flag: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The proxy's credentials did not arrive from the agent.
    #[error(transparent)]
    WorkloadSource(#[from] wimse_workload::SourceError),
    /// The proxy's policy file is unreadable or invalid.
    #[error(transparent)]
    Policy(#[from] wimse_workload::PolicyError),
    /// The proxy's audit log could not be opened.
    #[error(transparent)]
    AuditLog(#[from] wimse_audit::AuditError),
    /// A proxy argument is invalid or its listener could not be set up.
    #[error("{0}")]
    Proxy(String),
    /// The gateway's configuration file is unreadable or invalid.
    #[error("gateway configuration: {0}")]
    GatewayConfig(wimse_gateway::ConfigError),
    /// The gateway could not be set up, or stopped with an error.
    #[error("gateway: {0}")]
    Gateway(String),
    /// Writing the command's output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// A key or request for a minted credential could not be made, or the answer is
    /// unreadable.
    #[error("mint: {0}")]
    Mint(String),
}

// By hand rather than `#[from]`: the message already says it all, and a source would
// repeat it in the printed chain.
impl From<wimse_gateway::ConfigError> for CommandError {
    fn from(e: wimse_gateway::ConfigError) -> Self {
        Self::GatewayConfig(e)
    }
}

impl CommandError {
    /// The process exit code for this failure: a failed child's own status, 1 for
    /// everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::ChildFailed { status, .. } => ExitCode::from(*status),
            Self::AgentSocket(_)
            | Self::Admin(_)
            | Self::Config(_)
            | Self::Server(_)
            | Self::Agent(_)
            | Self::WorkloadApi(_)
            | Self::Files(_)
            | Self::Spawn { .. }
            | Self::Unhealthy(_)
            | Self::Dev(_)
            | Self::Runtime(_)
            | Self::Audit(_)
            | Self::Argument { .. }
            | Self::WorkloadSource(_)
            | Self::Policy(_)
            | Self::AuditLog(_)
            | Self::Proxy(_)
            | Self::GatewayConfig(_)
            | Self::Gateway(_)
            | Self::Output(_)
            | Self::Mint(_) => ExitCode::FAILURE,
        }
    }
}
