//! `wimse agent`: run the per-host agent, and talk to it over the Workload API as a workload would.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use crate::cli::Environment;
use crate::defaults;
use crate::error::CommandError;
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
            Self::Run(args) => run_agent(&args, env),
            Self::Api(command) => command.run(env),
            Self::Healthcheck(args) => {
                let socket = args.resolve(env)?;
                crate::runtime::block_on(healthcheck(socket))
            }
            Self::Exec(args) => {
                let socket = args.socket.resolve(env)?;
                exec(&socket, &args.command)
            }
        }
    }
}

/// `wimse agent run`: flags over the config file, then serve until SIGINT or SIGTERM.
fn run_agent(args: &AgentRunArgs, env: &Environment) -> Result<(), CommandError> {
    let config = agent_config(args, env)?;
    crate::runtime::init_logging();
    crate::runtime::block_on_current_thread(async move {
        wimse_agent::run::run(config, crate::runtime::shutdown_signal()).await?;
        Ok(())
    })
}

/// The agent's settings: flags over the config file over the defaults.
pub fn agent_config(
    args: &AgentRunArgs,
    env: &Environment,
) -> Result<wimse_agent::config::AgentConfig, CommandError> {
    let mut file = match &args.config {
        Some(path) => wimse_agent::config::FileConfig::load(path)?,
        None => wimse_agent::config::FileConfig::default(),
    };
    if args.server_address.is_some() {
        file.server_address.clone_from(&args.server_address);
    }
    if args.trust_bundle.is_some() {
        file.trust_bundle.clone_from(&args.trust_bundle);
    }
    if let Some(token) = &args.join_token {
        file.join_token = Some(zeroize::Zeroizing::new(token.expose().to_owned()));
        file.x509pop_cert = None;
        file.x509pop_key = None;
    }
    if args.x509pop_cert.is_some() {
        file.x509pop_cert.clone_from(&args.x509pop_cert);
        file.x509pop_key.clone_from(&args.x509pop_key);
        file.join_token = None;
    }
    // The data directory flag always has a value (its default); the file's wins only when
    // the flag was left at the default.
    if file.data_dir.is_none() || args.data_dir != std::path::Path::new(defaults::DATA_DIR) {
        file.data_dir = Some(args.data_dir.clone());
    }
    if args.socket.is_some() || env.spiffe_endpoint_socket.is_some() || file.socket.is_none() {
        let data_dir = file
            .data_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.clone());
        file.socket = Some(resolve_agent_socket(
            args.socket.as_deref(),
            env.spiffe_endpoint_socket.as_ref(),
            &data_dir,
        )?);
    }
    if args.health_bind.is_some() {
        file.health_bind = args.health_bind;
    }
    Ok(file.resolve()?)
}

/// `wimse agent healthcheck`: the agent answers the Workload API. A refusal for lack of an
/// identity still proves the agent attested the caller, so it counts as healthy.
async fn healthcheck(socket: PathBuf) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    match api.x509_bundles().await {
        Ok(_) => {}
        Err(e) if e.code() == Some(wimse_proto::Code::PermissionDenied) => {}
        Err(e) => return Err(CommandError::Unhealthy(e.to_string())),
    }
    println!("Agent is healthy.");
    Ok(())
}

/// The credentials `wimse agent exec` passes, as environment variables.
async fn exec_environment(
    socket: &std::path::Path,
) -> Result<Vec<(&'static str, zeroize::Zeroizing<String>)>, CommandError> {
    let pem_key = |key: &wimse_core::jose::SigningKey| {
        key.to_pkcs8_pem()
            .map_err(|e| CommandError::Unhealthy(format!("unusable key from the agent: {e}")))
    };
    let mut api = wimse_proto::Workload::connect(socket).await?;
    let context = api.x509_context().await?;
    let svid = context
        .default_svid()
        .ok_or_else(|| CommandError::Unhealthy("the agent sent no X509-SVID".into()))?;
    let mut vars = vec![
        ("SPIFFE_ID", zeroize::Zeroizing::new(svid.id.to_string())),
        (
            "WIMSE_X509_SVID",
            zeroize::Zeroizing::new(wimse_core::x509::certs_to_pem(&svid.chain)),
        ),
        ("WIMSE_X509_KEY", pem_key(&svid.key)?),
        (
            "WIMSE_X509_BUNDLE",
            zeroize::Zeroizing::new(wimse_core::x509::certs_to_pem(&svid.bundle)),
        ),
    ];
    match api.wit_svids().await {
        Ok(wits) => {
            if let Some(wit) = wits.first() {
                vars.push(("WIMSE_WIT", zeroize::Zeroizing::new(wit.token.clone())));
                vars.push(("WIMSE_WIT_KEY", pem_key(&wit.key)?));
            }
        }
        // An agent without the WIT profile still gives X.509 credentials.
        Err(e) if e.code() == Some(wimse_proto::Code::Unimplemented) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(vars)
}

/// `wimse agent exec`: runs a command with this workload's credentials in its environment.
///
/// The variables: `SPIFFE_ID`, `WIMSE_X509_SVID` (PEM chain, leaf first),
/// `WIMSE_X509_KEY` (PKCS#8 PEM), `WIMSE_X509_BUNDLE` (PEM), and with the WIT profile
/// `WIMSE_WIT` and `WIMSE_WIT_KEY` (PKCS#8 PEM); `SPIFFE_ENDPOINT_SOCKET` points at the
/// agent so that the command can fetch fresh credentials itself. Meant for short jobs: the
/// variables are not updated when the credentials rotate.
fn exec(socket: &std::path::Path, command: &[OsString]) -> Result<(), CommandError> {
    let vars = crate::runtime::block_on(exec_environment(socket))?;
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| CommandError::Unhealthy("no command to run".into()))?;
    let name = program.to_string_lossy().into_owned();
    let mut child = std::process::Command::new(program);
    child.args(rest);
    for (name, value) in &vars {
        child.env(name, value.as_str());
    }
    let mut endpoint = OsString::from("unix://");
    endpoint.push(socket.as_os_str());
    child.env(crate::socket::SPIFFE_ENDPOINT_SOCKET, endpoint);
    let status = child.status().map_err(|source| CommandError::Spawn {
        command: name.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Err(CommandError::ChildFailed {
        command: name,
        status: u8::try_from(code).unwrap_or(1),
    })
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
    // The group covers `--x509pop-cert`; a lone `--x509pop-key` must conflict too. Tokens
    // are base64url, so one in 64 starts with `-`: it is still the flag's value.
    #[arg(
        long,
        value_name = "TOKEN",
        conflicts_with = "x509pop_key",
        allow_hyphen_values = true
    )]
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
    /// Serve /healthz, /readyz and Prometheus /metrics over HTTP on this address
    #[arg(long, value_name = "ADDR")]
    pub health_bind: Option<std::net::SocketAddr>,
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
        match self {
            Self::Fetch(FetchCommand::X509(args)) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::block_on(fetch_x509(socket, args))
            }
            Self::Fetch(FetchCommand::Jwt(args)) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::block_on(fetch_jwt(socket, args))
            }
            Self::Fetch(FetchCommand::Wit(args)) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::block_on(fetch_wit(socket, args))
            }
            Self::Fetch(FetchCommand::Bundle(args)) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::block_on(fetch_bundle(socket, args))
            }
            Self::Validate(args) => {
                let socket = args.socket.resolve(env)?;
                crate::runtime::block_on(validate(socket, args))
            }
        }
    }
}

fn report_written(paths: &[PathBuf]) {
    for path in paths {
        println!("Wrote {}", path.display());
    }
}

/// Runs the `--reload-command` after files were rewritten; a failure is reported, not fatal.
fn reload(command: Option<&String>) {
    let Some(command) = command else { return };
    match std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: reload command exited with {status}"),
        Err(e) => eprintln!("warning: cannot run the reload command: {e}"),
    }
}

fn print_x509(context: &wimse_proto::workload::X509Context) {
    println!("Received {} svid(s)", context.svids.len());
    for svid in &context.svids {
        println!();
        println!("SPIFFE ID:\t\t{}", svid.id);
        if !svid.hint.is_empty() {
            println!("Hint:\t\t\t{}", svid.hint);
        }
        if let Some(leaf) = svid.chain.first() {
            println!("SVID Valid After:\t{}", leaf.not_before());
            println!("SVID Valid Until:\t{}", leaf.not_after());
        }
        for (n, ca) in svid.bundle.iter().enumerate() {
            println!("CA #{} Valid Until:\t{}", n + 1, ca.not_after());
        }
    }
    for (trust_domain, cas) in &context.federated {
        for (n, ca) in cas.iter().enumerate() {
            println!(
                "[{trust_domain}] CA #{} Valid Until:\t{}",
                n + 1,
                ca.not_after()
            );
        }
    }
}

async fn fetch_x509(socket: PathBuf, args: FetchArgs) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    let Some(dir) = &args.write else {
        print_x509(&api.x509_context().await?);
        return Ok(());
    };
    let mut updates = Box::pin(api.watch_x509().await?);
    while let Some(context) = tokio_stream::StreamExt::next(&mut updates).await {
        report_written(&wimse_agent::files::write_x509(dir, &context?)?);
        if !args.watch {
            return Ok(());
        }
        reload(args.reload_command.as_ref());
    }
    Err(wimse_proto::ClientError::Closed.into())
}

async fn fetch_wit(socket: PathBuf, args: FetchArgs) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    let mut updates = Box::pin(api.watch_wit(None).await?);
    while let Some(svids) = tokio_stream::StreamExt::next(&mut updates).await {
        let svids = svids?;
        match &args.write {
            Some(dir) => report_written(&wimse_agent::files::write_wit(dir, &svids)?),
            None => {
                for svid in &svids {
                    // The WIT alone is no credential (it needs its key's proof of
                    // possession); the key is written only with --write.
                    println!("SPIFFE ID:\t{}", svid.id);
                    println!("WIT:\t\t{}", svid.token);
                }
            }
        }
        if !args.watch {
            return Ok(());
        }
        reload(args.reload_command.as_ref());
    }
    Err(wimse_proto::ClientError::Closed.into())
}

async fn fetch_bundle(socket: PathBuf, args: FetchArgs) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    loop {
        let bundles = api.x509_bundles().await?;
        match &args.write {
            Some(dir) => report_written(&wimse_agent::files::write_bundle(dir, &bundles)?),
            None => {
                for bundle in bundles.iter() {
                    print!("{}", bundle.x509_pem());
                }
            }
        }
        if !args.watch {
            return Ok(());
        }
        reload(args.reload_command.as_ref());
        // Bundles change rarely; the agent's stream would also do, but a plain re-fetch
        // keeps this loop simple.
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

async fn fetch_jwt(socket: PathBuf, args: FetchJwtArgs) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    let svids = api
        .jwt_svids(&args.audience, args.spiffe_id.as_deref())
        .await?;
    match &args.write {
        Some(dir) => report_written(&wimse_agent::files::write_jwt(dir, &svids)?),
        None => {
            for svid in &svids {
                println!("token({}):", svid.id);
                println!("\t{}", svid.token);
            }
        }
    }
    Ok(())
}

async fn validate(socket: PathBuf, args: ValidateArgs) -> Result<(), CommandError> {
    let mut api = wimse_proto::Workload::connect(&socket).await?;
    let (id, claims) = api.validate_jwt(&args.audience, args.svid.expose()).await?;
    println!("SVID is valid.");
    println!("SPIFFE ID : {id}");
    let names: Vec<&String> = claims.fields.keys().collect();
    println!(
        "Claims    : {}",
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
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
pub struct FetchArgs {
    #[command(flatten)]
    pub socket: AgentSocketArg,
    /// Write the credentials to files in this directory instead of printing them
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
    /// Keep running and rewrite the files whenever the credentials change
    #[arg(long, requires = "write")]
    pub watch: bool,
    /// With --watch, a shell command to run after each rewrite (e.g. to reload a server)
    #[arg(long, value_name = "CMD", requires = "watch")]
    pub reload_command: Option<String>,
}

/// `wimse agent api fetch jwt`
#[derive(Debug, Args)]
pub struct FetchJwtArgs {
    /// Only this identity's JWT-SVID (default: all of the caller's identities)
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
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
