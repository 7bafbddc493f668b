//! `wimse dev`: a whole local trust domain in one process tree, for trying wimse out.

use std::path::PathBuf;

use clap::Args;

use crate::defaults;

/// `wimse dev`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the dev launcher, which is not written yet"
)]
pub struct DevArgs {
    /// Directory for everything: SQLite datastore, sockets, keys, and `dev.json` describing where
    /// everything listens (the same default as the server and agent, so their commands find the
    /// sockets without flags)
    #[arg(long, value_name = "DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Trust domain of the local server
    #[arg(long, value_name = "TD", default_value = defaults::DEV_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Also start the demo services that call each other with WIMSE credentials
    #[arg(long)]
    pub demo: bool,
}
