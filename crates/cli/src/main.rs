//! `wimse`: the one binary of the wimse workload identity platform.
//!
//! This crate only wires things together: it parses the command line and hands each command to the
//! library crate that owns it. It holds no identity logic of its own.
//!
//! # Layout
//!
//! - [`cli`]: the root of the command tree and the dispatch; start reading there.
//! - [`server`], [`agent`], [`proxy`], [`gateway`], [`audit`], [`dev`]: one module per top-level
//!   command, holding its arguments (their doc comments are the `--help` text) and its bodies.
//! - [`defaults`]: every default value, in one place.
//! - [`socket`]: where agent commands find the Workload API socket (`--socket`,
//!   `SPIFFE_ENDPOINT_SOCKET`, data directory).
//! - [`values`]: typed argument values (selectors, secrets).
//! - [`error`]: how commands fail, and the exit code of each failure.
//!
//! # Exit codes
//!
//! 0 on success; 1 when a command fails; 2 on a usage error (clap's) or a command this build does
//! not implement yet. Failures print one line, `error: ...`, on stderr.

mod agent;
mod audit;
mod cli;
mod defaults;
mod dev;
mod error;
mod gateway;
mod mint;
mod proxy;
mod runtime;
mod server;
mod socket;
mod values;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Environment};

fn main() -> ExitCode {
    // Usage errors, `--help` and `--version` exit here, with clap's own output and exit codes.
    let cli = Cli::parse();
    match cli.run(&Environment::from_process()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.exit_code();
            report(&anyhow::Error::new(err));
            code
        }
    }
}

/// Print `err` and its chain of causes on one line of stderr.
fn report(err: &anyhow::Error) {
    // One line even if some cause's message spans several, so the output stays greppable.
    let message = format!("{err:#}").replace(['\r', '\n'], " ");
    // Nothing sensible is left to do if stderr itself is gone; `eprintln!` would panic instead.
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
}
