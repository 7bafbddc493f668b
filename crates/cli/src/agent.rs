//! `wimse agent`: run the per-host agent, and talk to it over the Workload API as a workload would.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use crate::cli::Environment;
use crate::defaults;
use crate::error::{CommandError, not_implemented};
use crate::socket::{EndpointSocketError, resolve_agent_socket};
use crate::values::SecretArg;

/// `wimse agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the agent: attest to the server, attest local workloads, serve their credentials
    ///
    /// The node attests with exactly one method: `--join-token`, or `--x509pop-cert` with
    /// `--x509pop-key`. Giving both is refused at once. The configuration file may name the
    /// method instead, so giving neither is refused only after flags and file are merged.
    Run(AgentRunArgs),
    /// Use the Workload API as a workload would
    #[command(subcommand)]
    Api(ApiCommand),
    /// Check that the agent is up and serving the Workload API
    Healthcheck(AgentSocketArg),
    /// Run a command with this workload's credentials in its environment
    Exec(ExecArgs),
}

impl AgentCommand {
    /// Run the chosen agent command.
    pub fn run(self, env: &Environment) -> Result<(), CommandError> {
        match self {
            Self::Run(args) => {
                let _socket = args.socket(env)?;
                not_implemented("wimse agent run")
            }
            Self::Api(command) => command.run(env),
            Self::Healthcheck(args) => {
                let _socket = args.resolve(env)?;
                not_implemented("wimse agent healthcheck")
            }
            Self::Exec(args) => {
                let _socket = args.socket.resolve(env)?;
                not_implemented("wimse agent exec")
            }
        }
    }
}

/// `--socket PATH` of the commands that talk to a running agent.
#[derive(Debug, Args)]
pub struct AgentSocketArg {
    /// Path of the agent's Workload API socket [default: from `SPIFFE_ENDPOINT_SOCKET`
    /// (`unix:///path`), else ./.wimse/agent.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl AgentSocketArg {
    /// The socket to connect to: `--socket`, else `SPIFFE_ENDPOINT_SOCKET`, else the socket of an
    /// agent run with the default data directory.
    pub fn resolve(&self, env: &Environment) -> Result<PathBuf, EndpointSocketError> {
        resolve_agent_socket(
            self.socket.as_deref(),
            env.spiffe_endpoint_socket.as_ref(),
            defaults::DATA_DIR.as_ref(),
        )
    }
}

/// `wimse agent run`
///
/// The attestation group is not `required`: a configuration file may name the method, so the
/// "exactly one" check completes after flags and file are merged.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("attestation")
        .args(["join_token", "x509pop_cert"])
        .multiple(false)
        .required(false)
))]
#[allow(dead_code, reason = "read by the agent, which is not written yet")]
pub struct AgentRunArgs {
    /// Configuration file; flags given on the command line take precedence over it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the server, as `HOST:PORT` (required unless the configuration file has it)
    #[arg(long, value_name = "ADDR", required_unless_present = "config")]
    pub server_address: Option<String>,
    /// PEM file of the trust domain's X.509 roots, to authenticate the server on first contact
    /// (required unless the configuration file has it)
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    pub trust_bundle: Option<PathBuf>,
    /// Attest this node with a one-time join token from `wimse server token generate`
    // The group covers `--x509pop-cert`; a lone `--x509pop-key` must conflict too.
    #[arg(long, value_name = "TOKEN", conflicts_with = "x509pop_key")]
    pub join_token: Option<SecretArg>,
    /// Attest this node by proof of possession of an X.509 certificate: the certificate chain (PEM)
    #[arg(long, value_name = "FILE", requires = "x509pop_key")]
    pub x509pop_cert: Option<PathBuf>,
    /// The private key (PKCS#8 PEM) of the `--x509pop-cert` certificate
    #[arg(long, value_name = "FILE", requires = "x509pop_cert")]
    pub x509pop_key: Option<PathBuf>,
    /// Path of the Workload API socket to serve [default: from `SPIFFE_ENDPOINT_SOCKET`
    /// (`unix:///path`), else <data-dir>/agent.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory for the agent's key, its credential cache and its socket
    #[arg(long, value_name = "DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,
}

impl AgentRunArgs {
    /// The socket to serve: `--socket`, else `SPIFFE_ENDPOINT_SOCKET`, else `agent.sock` in the
    /// data directory.
    pub fn socket(&self, env: &Environment) -> Result<PathBuf, EndpointSocketError> {
        resolve_agent_socket(
            self.socket.as_deref(),
            env.spiffe_endpoint_socket.as_ref(),
            &self.data_dir,
        )
    }
}

/// `wimse agent api ...`
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch credentials and print them, or write them to files
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate a JWT-SVID for an audience (SPIRE's `api validate jwt`)
    Validate(ValidateArgs),
}

impl ApiCommand {
    /// Run the chosen Workload API command.
    fn run(self, env: &Environment) -> Result<(), CommandError> {
        let (socket, command) = match &self {
            Self::Fetch(FetchCommand::X509(args)) => (&args.socket, "wimse agent api fetch x509"),
            Self::Fetch(FetchCommand::Jwt(args)) => (&args.socket, "wimse agent api fetch jwt"),
            Self::Fetch(FetchCommand::Wit(args)) => (&args.socket, "wimse agent api fetch wit"),
            Self::Fetch(FetchCommand::Bundle(args)) => {
                (&args.socket, "wimse agent api fetch bundle")
            }
            Self::Validate(args) => (&args.socket, "wimse agent api validate"),
        };
        let _socket = socket.resolve(env)?;
        not_implemented(command)
    }
}

/// `wimse agent api fetch ...`
#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetch X.509-SVIDs; `--write` creates svid.0.pem (chain, leaf first), svid.0.key (PKCS#8
    /// PEM) and bundle.0.pem
    X509(FetchArgs),
    /// Fetch a JWT-SVID for one or more audiences; `--write` creates jwt.0.jwt
    Jwt(FetchJwtArgs),
    /// Fetch a Workload Identity Token and its key; `--write` creates wit.0.jwt and wit.0.key
    /// (PKCS#8 PEM)
    Wit(FetchArgs),
    /// Fetch the trust bundles; `--write` creates bundle.0.pem
    Bundle(FetchArgs),
}

/// `wimse agent api fetch x509|wit|bundle`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the Workload API client, which is not written yet"
)]
pub struct FetchArgs {
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// Write the credentials to files in this directory instead of printing them
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

/// `wimse agent api fetch jwt`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the Workload API client, which is not written yet"
)]
pub struct FetchJwtArgs {
    /// Audience of the JWT-SVID; repeat for several
    #[arg(long, value_name = "AUD", required = true)]
    pub audience: Vec<String>,
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// Write the token to a file in this directory instead of printing it
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

/// `wimse agent api validate`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the Workload API client, which is not written yet"
)]
pub struct ValidateArgs {
    /// Audience the JWT-SVID must be for
    #[arg(long, value_name = "AUD")]
    pub audience: String,
    /// The JWT-SVID to validate
    #[arg(long, value_name = "TOKEN")]
    pub svid: SecretArg,
    #[command(flatten)]
    pub socket: AgentSocketArg,
}

/// `wimse agent exec`
#[derive(Debug, Args)]
#[allow(dead_code, reason = "read by the exec body, which is not written yet")]
pub struct ExecArgs {
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// The command to run and its arguments, best after `--`
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}
