//! `wimse gateway`: the identity proxy at the trust domain's boundary.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::{CommandError, not_implemented};

/// `wimse gateway ...`
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway: authenticate external clients, exchange their tokens, forward inward
    Run(GatewayRunArgs),
}

impl GatewayCommand {
    /// Run the chosen gateway command.
    pub fn run(self) -> Result<(), CommandError> {
        match self {
            Self::Run(_args) => not_implemented("wimse gateway run"),
        }
    }
}

/// `wimse gateway run`
#[derive(Debug, Args)]
#[allow(dead_code, reason = "read by the gateway, which is not written yet")]
pub struct GatewayRunArgs {
    /// Configuration file: listeners, routes, accepted external issuers
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}
