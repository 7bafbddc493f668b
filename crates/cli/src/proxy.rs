//! `wimse proxy`: the sidecar that gives services in any language WIMSE credentials on the wire.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::agent::AgentSocketArg;
use crate::cli::Environment;
use crate::error::{CommandError, not_implemented};

/// `wimse proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Verify incoming requests' credentials, authorize them, and forward them to the service
    Inbound(InboundArgs),
    /// Sign the service's outgoing requests with this workload's credentials
    Outbound(OutboundArgs),
}

impl ProxyCommand {
    /// Run the chosen proxy.
    pub fn run(self, env: &Environment) -> Result<(), CommandError> {
        match self {
            Self::Inbound(args) => {
                let _socket = args.socket.resolve(env)?;
                not_implemented("wimse proxy inbound")
            }
            Self::Outbound(args) => {
                let _socket = args.socket.resolve(env)?;
                not_implemented("wimse proxy outbound")
            }
        }
    }
}

/// `wimse proxy inbound`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the inbound proxy, which is not written yet"
)]
pub struct InboundArgs {
    /// Address to accept requests on
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// URL of the service to forward verified requests to, such as `http://127.0.0.1:8080`
    #[arg(long, value_name = "URL")]
    pub upstream: String,
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// URL callers address this service by, which their proof tokens must be bound to [default:
    /// derived from each request]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Cedar policy file that decides which callers may do what [default: allow every
    /// authenticated caller]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Append an audit record for every decision to this log file
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

/// `wimse proxy outbound`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the outbound proxy, which is not written yet"
)]
pub struct OutboundArgs {
    /// Address to accept the service's outgoing requests on
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub socket: AgentSocketArg,
}
