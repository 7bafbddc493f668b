//! `wimse server`: run the trust domain's server, and administer it over its admin socket.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::defaults;
use crate::error::{CommandError, not_implemented};
use crate::values::SelectorArg;

/// `wimse server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run the server: CA, registration entries, node attestation, token and bundle services
    Run(ServerRunArgs),
    /// Manage join tokens for node attestation
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage registration entries
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Show the trust bundle
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Manage attested agents
    #[command(subcommand)]
    Agent(AgentAdminCommand),
    /// Check that the server is up and serving
    Healthcheck(AdminSocketArg),
}

impl ServerCommand {
    /// Run the chosen server command.
    pub fn run(self) -> Result<(), CommandError> {
        match self {
            Self::Run(_args) => not_implemented("wimse server run"),
            Self::Token(TokenCommand::Generate(_args)) => {
                not_implemented("wimse server token generate")
            }
            Self::Entry(command) => command.run(),
            Self::Bundle(BundleCommand::Show(_args)) => not_implemented("wimse server bundle show"),
            Self::Agent(command) => command.run(),
            Self::Healthcheck(_args) => not_implemented("wimse server healthcheck"),
        }
    }
}

/// `--admin-socket PATH`, shared by every command that talks to a running server.
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct AdminSocketArg {
    /// Path of the server's admin socket
    #[arg(long, value_name = "PATH", default_value_os_t = defaults::default_admin_socket())]
    pub admin_socket: PathBuf,
}

/// `wimse server run`
///
/// Flags override the configuration file; the file overrides the defaults.
#[derive(Debug, Args)]
#[allow(dead_code, reason = "read by the server, which is not written yet")]
pub struct ServerRunArgs {
    /// Configuration file; flags given on the command line take precedence over it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust domain this server is the authority for, such as `example.org` (required here or in
    /// the configuration file)
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    /// Directory for the server's keys, the SQLite datastore and the admin socket
    #[arg(long, value_name = "DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address the agent and token APIs listen on
    #[arg(long, value_name = "ADDR", default_value = defaults::SERVER_BIND)]
    pub bind: SocketAddr,
    /// Path of the admin socket [default: <data-dir>/server.sock]
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Datastore URL, such as `postgres://user@host/wimse`; several servers on one PostgreSQL
    /// database form one highly available trust domain [default: a SQLite file in the data
    /// directory]
    #[arg(long, value_name = "URL")]
    pub datastore: Option<String>,
}

impl ServerRunArgs {
    /// The admin socket to listen on: `--admin-socket`, else `server.sock` in the data directory.
    #[allow(
        dead_code,
        reason = "called by the server run body, which is not written yet"
    )]
    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| defaults::admin_socket(&self.data_dir))
    }
}

/// `wimse server token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generate a one-time join token for attesting an agent; prints it as the last word of the
    /// first line
    Generate(TokenGenerateArgs),
}

/// `wimse server token generate`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct TokenGenerateArgs {
    /// Seconds the token stays valid
    #[arg(long, value_name = "SECONDS", default_value_t = defaults::JOIN_TOKEN_TTL_SECS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ttl: u32,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry ...`
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Create a registration entry
    Create(EntryCreateArgs),
    /// Show registration entries, all of them or those matching every given filter
    Show(EntryShowArgs),
    /// Update a registration entry; fields not given keep their current value
    Update(EntryUpdateArgs),
    /// Delete a registration entry
    Delete(EntryDeleteArgs),
}

impl EntryCommand {
    /// Run the chosen entry command.
    fn run(self) -> Result<(), CommandError> {
        match self {
            Self::Create(_args) => not_implemented("wimse server entry create"),
            Self::Show(_args) => not_implemented("wimse server entry show"),
            Self::Update(_args) => not_implemented("wimse server entry update"),
            Self::Delete(_args) => not_implemented("wimse server entry delete"),
        }
    }
}

/// `wimse server entry create`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct EntryCreateArgs {
    /// SPIFFE ID of the workload the entry describes, such as `spiffe://example.org/api`
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    /// SPIFFE ID of the agent (or parent entry) that may issue to this workload
    #[arg(long, value_name = "ID")]
    pub parent_id: String,
    /// Selector the workload must match, as `TYPE:VALUE` (such as `unix:uid:1000`); repeat for
    /// several, all of which must match
    #[arg(long, value_name = "TYPE:VALUE", required = true)]
    pub selector: Vec<SelectorArg>,
    /// Lifetime of the X.509 certificates issued for the entry, in seconds [default: the
    /// server's]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub x509_ttl: Option<u32>,
    /// Lifetime of the JWT-SVIDs and WITs issued for the entry, in seconds [default: the
    /// server's]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub jwt_ttl: Option<u32>,
    /// DNS name to add to the X.509 certificate's subject alternative names; repeat for several
    #[arg(long, value_name = "NAME")]
    pub dns: Vec<String>,
    /// Hint passed to the workload to tell its identities apart
    #[arg(long, value_name = "HINT")]
    pub hint: Option<String>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry show`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct EntryShowArgs {
    /// Show only the entry with this ID
    #[arg(long, value_name = "ID")]
    pub entry_id: Option<String>,
    /// Show only entries for this SPIFFE ID
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// Show only entries with this parent ID
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<String>,
    /// Show only entries that have this selector, as `TYPE:VALUE`; repeat for several, all of which
    /// must be present
    #[arg(long, value_name = "TYPE:VALUE")]
    pub selector: Vec<SelectorArg>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry update`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct EntryUpdateArgs {
    /// ID of the entry to update
    #[arg(long, value_name = "ID")]
    pub entry_id: String,
    /// New SPIFFE ID of the workload
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// New parent ID
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<String>,
    /// Selector, as `TYPE:VALUE`; if given at all, the given selectors replace all current ones
    #[arg(long, value_name = "TYPE:VALUE")]
    pub selector: Vec<SelectorArg>,
    /// New lifetime of the X.509 certificates, in seconds
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub x509_ttl: Option<u32>,
    /// New lifetime of the JWT-SVIDs and WITs, in seconds
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub jwt_ttl: Option<u32>,
    /// DNS name; if given at all, the given names replace all current ones
    #[arg(long, value_name = "NAME")]
    pub dns: Vec<String>,
    /// New hint
    #[arg(long, value_name = "HINT")]
    pub hint: Option<String>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry delete`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct EntryDeleteArgs {
    /// ID of the entry to delete
    #[arg(long, value_name = "ID")]
    pub entry_id: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the trust domain's bundle
    Show(BundleShowArgs),
}

/// `wimse server bundle show`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct BundleShowArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    pub format: BundleFormat,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// How `wimse server bundle show` prints the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    /// The X.509 roots as concatenated PEM certificates (as SPIRE)
    Pem,
    /// The SPIFFE bundle format: a JWK Set holding X.509 roots and JWT keys
    Spiffe,
}

/// `wimse server agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentAdminCommand {
    /// List attested agents with their SPIFFE IDs
    List(AdminSocketArg),
    /// Ban an agent: evict it and refuse its re-attestation
    Ban(AgentIdArgs),
    /// Evict an agent: drop its attestation so it must attest again
    Evict(AgentIdArgs),
}

impl AgentAdminCommand {
    /// Run the chosen agent administration command.
    fn run(self) -> Result<(), CommandError> {
        match self {
            Self::List(_args) => not_implemented("wimse server agent list"),
            Self::Ban(_args) => not_implemented("wimse server agent ban"),
            Self::Evict(_args) => not_implemented("wimse server agent evict"),
        }
    }
}

/// `wimse server agent ban|evict`
#[derive(Debug, Args)]
#[allow(
    dead_code,
    reason = "read by the admin client, which is not written yet"
)]
pub struct AgentIdArgs {
    /// SPIFFE ID of the agent
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}
