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
    /// The command is part of the CLI's contract but its body is not written yet.
    #[error("`{command}` is not implemented yet in this build")]
    NotImplemented {
        /// The full command, as in `wimse server run`.
        command: &'static str,
    },
    /// The agent's Workload API socket could not be determined from the environment.
    #[error("cannot locate the agent's Workload API socket")]
    AgentSocket(#[from] EndpointSocketError),
}

impl CommandError {
    /// The process exit code for this failure: 2 for a command this build does not have (the
    /// same code as a usage error, since the invocation cannot succeed), 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::NotImplemented { .. } => ExitCode::from(2),
            Self::AgentSocket(_) => ExitCode::FAILURE,
        }
    }
}

/// The failure of a command whose body is not written yet; `command` is its full name.
pub fn not_implemented(command: &'static str) -> Result<(), CommandError> {
    Err(CommandError::NotImplemented { command })
}
