//! `wimse server`: run the trust domain's server, and administer it over its admin socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use crate::defaults;
use crate::error::CommandError;
use crate::values::SelectorArg;
use wimse_core::TrustDomain;
use wimse_core::bundle::TrustBundle;
use wimse_server::admin::client::{AdminClient, ClientError};
use wimse_server::api::{
    EntryRequest, EntryView, FederatedBundleView, FederationRequest, FederationView,
};

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
    /// Show the trust bundle, and manage the bundles of federated trust domains
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Manage federation relationships with other trust domains
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Manage attested agents
    #[command(subcommand)]
    Agent(AgentAdminCommand),
    /// Revoke transactions at the token service
    #[command(subcommand)]
    Transaction(TransactionCommand),
    /// Show the signing authorities, and rotate this server's ahead of schedule
    #[command(subcommand)]
    Localauthority(LocalAuthorityCommand),
    /// Mint an X509-SVID for an identity no agent serves
    #[command(subcommand)]
    X509(crate::mint::X509Command),
    /// Mint a JWT-SVID for an identity no agent serves
    #[command(subcommand)]
    Jwt(crate::mint::JwtCommand),
    /// Mint a Workload Identity Token for an identity no agent serves
    #[command(subcommand)]
    Wit(crate::mint::WitCommand),
    /// Check that the server is up and serving
    Healthcheck(AdminSocketArg),
}

impl ServerCommand {
    /// Run the chosen server command.
    pub fn run(self) -> Result<(), CommandError> {
        match self {
            Self::Run(args) => run_server(&args),
            Self::Token(TokenCommand::Generate(args)) => crate::runtime::block_on(async move {
                let token = client(&args.admin).create_join_token(args.ttl).await?;
                // The token is the last word of the first line (scripts rely on it).
                println!("Token: {}", token.token);
                println!("Agent ID: {}", token.agent_id);
                println!("Expires at: {}", token.expires_at);
                Ok(())
            }),
            Self::Entry(command) => command.run(),
            Self::Bundle(command) => command.run(),
            Self::Federation(command) => command.run(),
            Self::Agent(command) => command.run(),
            Self::Transaction(command) => command.run(),
            Self::Localauthority(command) => command.run(),
            Self::X509(command) => command.run(),
            Self::Jwt(command) => command.run(),
            Self::Wit(command) => command.run(),
            Self::Healthcheck(args) => crate::runtime::block_on(async move {
                client(&args).health().await?;
                println!("Server is healthy.");
                Ok(())
            }),
        }
    }
}

/// The admin API client for `arg`'s socket.
pub(crate) fn client(arg: &AdminSocketArg) -> AdminClient {
    AdminClient::new(&arg.admin_socket)
}

/// The first line of a listing: `Found 1 entry`, `Found 3 entries`.
fn print_found(count: usize, one: &str, many: &str) {
    println!("Found {count} {}", if count == 1 { one } else { many });
}

fn print_revoked(r: &wimse_server::api::RevokedTransactionView) {
    println!("Revoked at        : {}", r.revoked_at);
    println!("Remembered until  : {}", r.expires_at);
}

/// `wimse server run`: flags over the config file over the defaults, then serve until
/// SIGINT or SIGTERM.
fn run_server(args: &ServerRunArgs) -> Result<(), CommandError> {
    let config = server_config(args)?;
    crate::runtime::init_logging();
    crate::runtime::block_on_network(async move {
        wimse_server::run::run(config, crate::runtime::shutdown_signal()).await?;
        Ok(())
    })
}

/// The server's settings: flags over the config file over the defaults.
pub fn server_config(
    args: &ServerRunArgs,
) -> Result<wimse_server::config::ServerConfig, CommandError> {
    let mut file = match &args.config {
        Some(path) => wimse_server::config::FileConfig::load(path)?,
        None => wimse_server::config::FileConfig::default(),
    };
    if args.trust_domain.is_some() {
        file.trust_domain.clone_from(&args.trust_domain);
    }
    if let Some(dir) = &args.data_dir {
        file.data_dir = Some(dir.clone());
    }
    if file.data_dir.is_none() {
        file.data_dir = Some(PathBuf::from(defaults::DATA_DIR));
    }
    if let Some(bind) = args.bind {
        file.bind = Some(bind);
    }
    if file.bind.is_none() {
        file.bind = defaults::SERVER_BIND.parse().ok();
    }
    if args.admin_socket.is_some() {
        file.admin_socket.clone_from(&args.admin_socket);
    }
    if args.datastore.is_some() {
        file.datastore.clone_from(&args.datastore);
    }
    if args.x509pop_ca_bundle.is_some() {
        file.x509pop_ca_bundle.clone_from(&args.x509pop_ca_bundle);
    }
    if args.agent_svid_ttl.is_some() {
        file.agent_svid_ttl = args.agent_svid_ttl;
    }
    Ok(file.resolve()?)
}

/// `--admin-socket PATH`, shared by every command that talks to a running server.
#[derive(Debug, Args)]
pub struct AdminSocketArg {
    /// Path of the server's admin socket
    #[arg(long, value_name = "PATH", default_value_os_t = defaults::default_admin_socket())]
    pub admin_socket: PathBuf,
}

/// `wimse server run`
///
/// Flags override the configuration file; the file overrides the defaults.
#[derive(Debug, Args)]
pub struct ServerRunArgs {
    /// Configuration file; flags given on the command line take precedence over it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust domain this server is the authority for, such as `example.org` (required here or in
    /// the configuration file)
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    /// Directory for the server's keys, the SQLite datastore and the admin socket [default:
    /// ./.wimse]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the agent and token APIs listen on [default: 127.0.0.1:8443]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Path of the admin socket [default: <data-dir>/server.sock]
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Datastore URL, such as `postgres://user@host/wimse`; several servers on one PostgreSQL
    /// database form one highly available trust domain [default: a SQLite file in the data
    /// directory]
    #[arg(long, value_name = "URL")]
    pub datastore: Option<String>,
    /// PEM file of the CA certificates that agents' x509pop certificates must chain to;
    /// without it x509pop node attestation is refused
    #[arg(long, value_name = "FILE")]
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// Lifetime of agents' own X509-SVIDs, in seconds [default: 3600]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub agent_svid_ttl: Option<u32>,
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
        crate::runtime::block_on(async move {
            match self {
                Self::Create(args) => {
                    let req = EntryRequest {
                        spiffe_id: args.spiffe_id,
                        parent_id: args.parent_id,
                        selectors: args.selector.iter().map(ToString::to_string).collect(),
                        x509_ttl: args.x509_ttl,
                        jwt_ttl: args.jwt_ttl,
                        dns_names: args.dns,
                        hint: args.hint,
                        admin: false,
                        downstream: false,
                        federates_with: args.federates_with,
                    };
                    let entry = client(&args.admin).create_entry(&req).await?;
                    print_entry(&entry);
                }
                Self::Show(args) => {
                    let admin = client(&args.admin);
                    let entries = if let Some(id) = &args.entry_id {
                        vec![admin.show_entry(id).await?]
                    } else {
                        let selectors: Vec<String> =
                            args.selector.iter().map(ToString::to_string).collect();
                        admin
                            .list_entries(
                                args.spiffe_id.as_deref(),
                                args.parent_id.as_deref(),
                                &selectors,
                            )
                            .await?
                    };
                    print_found(entries.len(), "entry", "entries");
                    for entry in &entries {
                        println!();
                        print_entry(entry);
                    }
                }
                Self::Update(args) => {
                    let admin = client(&args.admin);
                    let current = admin.show_entry(&args.entry_id).await?;
                    let req = EntryRequest {
                        spiffe_id: args.spiffe_id.unwrap_or(current.spiffe_id),
                        parent_id: args.parent_id.unwrap_or(current.parent_id),
                        selectors: if args.selector.is_empty() {
                            current.selectors
                        } else {
                            args.selector.iter().map(ToString::to_string).collect()
                        },
                        x509_ttl: Some(args.x509_ttl.unwrap_or(current.x509_ttl)),
                        jwt_ttl: Some(args.jwt_ttl.unwrap_or(current.jwt_ttl)),
                        dns_names: if args.dns.is_empty() {
                            current.dns_names
                        } else {
                            args.dns
                        },
                        hint: args.hint.or(current.hint),
                        admin: current.admin,
                        downstream: current.downstream,
                        federates_with: if args.federates_with.is_empty() {
                            current.federates_with
                        } else {
                            args.federates_with
                        },
                    };
                    let entry = admin.update_entry(&args.entry_id, &req).await?;
                    print_entry(&entry);
                }
                Self::Delete(args) => {
                    let entry = client(&args.admin).delete_entry(&args.entry_id).await?;
                    println!("Deleted entry {}", entry.id);
                }
            }
            Ok(())
        })
    }
}

/// Prints an entry in SPIRE's `entry show` layout.
fn print_entry(e: &EntryView) {
    println!("Entry ID         : {}", e.id);
    println!("SPIFFE ID        : {}", e.spiffe_id);
    println!("Parent ID        : {}", e.parent_id);
    println!("Revision         : {}", e.revision);
    println!("X509-SVID TTL    : {}", e.x509_ttl);
    println!("JWT-SVID TTL     : {}", e.jwt_ttl);
    for selector in &e.selectors {
        println!("Selector         : {selector}");
    }
    for trust_domain in &e.federates_with {
        println!("FederatesWith    : {trust_domain}");
    }
    for name in &e.dns_names {
        println!("DNS name         : {name}");
    }
    if let Some(hint) = &e.hint {
        println!("Hint             : {hint}");
    }
}

/// `wimse server entry create`
#[derive(Debug, Args)]
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
    /// Foreign trust domain whose bundle the workload receives, such as `other.org`; it needs a
    /// federation relationship or a stored bundle; repeat for several
    #[arg(long, value_name = "TD")]
    pub federates_with: Vec<String>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry show`
#[derive(Debug, Args)]
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
    /// Foreign trust domain whose bundle the workload receives; if given at all, the given
    /// trust domains replace all current ones
    #[arg(long, value_name = "TD")]
    pub federates_with: Vec<String>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server entry delete`
#[derive(Debug, Args)]
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
    /// Print the trust domain's bundle, or with `--trust-domain` the stored bundle of a
    /// federated trust domain
    Show(BundleShowArgs),
    /// List the stored bundles of federated trust domains
    List(BundleListArgs),
    /// Store the bundle of a federated trust domain, replacing any stored one
    Set(BundleSetArgs),
    /// Delete the stored bundle of a federated trust domain; refused while entries federate
    /// with it
    Delete(TrustDomainArgs),
}

impl BundleCommand {
    /// Run the chosen bundle command.
    fn run(self) -> Result<(), CommandError> {
        crate::runtime::block_on(async move {
            match self {
                Self::Show(BundleShowArgs {
                    format,
                    trust_domain: None,
                    admin,
                }) => print_text(&client(&admin).bundle(format.name()).await?),
                Self::Show(BundleShowArgs {
                    format,
                    trust_domain: Some(trust_domain),
                    admin,
                }) => {
                    let bundle = client(&admin).show_federated_bundle(&trust_domain).await?;
                    print_text(&federated_bundle_text(&bundle, format)?);
                }
                Self::List(args) => {
                    let bundles = client(&args.admin).list_bundles().await?;
                    if let Some(format) = args.format {
                        for bundle in &bundles {
                            println!("* {}", bundle.trust_domain);
                            print_text(&federated_bundle_text(bundle, format)?);
                            println!();
                        }
                    } else {
                        println!("Found {} bundle(s)", bundles.len());
                        for bundle in &bundles {
                            println!();
                            print_federated_bundle(bundle);
                        }
                    }
                }
                Self::Set(args) => {
                    let text = read_argument_file("path", &args.path)?;
                    let bundle = client(&args.admin)
                        .set_bundle(&args.trust_domain, &text, args.format == BundleFormat::Pem)
                        .await?;
                    println!(
                        "Bundle of {} set: {}",
                        bundle.trust_domain,
                        bundle_summary(&bundle)
                    );
                }
                Self::Delete(args) => {
                    let bundle = client(&args.admin)
                        .delete_bundle(&args.trust_domain)
                        .await?;
                    println!("Deleted bundle of {}", bundle.trust_domain);
                }
            }
            Ok(())
        })
    }
}

/// Prints `text`, ending it with a newline if it has none.
fn print_text(text: &str) {
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
}

/// A stored foreign bundle in `format`: its SPIFFE bundle JSON, or its X.509 authorities as PEM.
fn federated_bundle_text(
    bundle: &FederatedBundleView,
    format: BundleFormat,
) -> Result<String, CommandError> {
    match format {
        BundleFormat::Spiffe => Ok(bundle.bundle.clone()),
        BundleFormat::Pem => {
            let unexpected = |e: String| {
                ClientError::Decode(format!("bundle of `{}`: {e}", bundle.trust_domain))
            };
            let trust_domain =
                TrustDomain::new(&bundle.trust_domain).map_err(|e| unexpected(e.to_string()))?;
            let parsed = TrustBundle::from_spiffe_json(trust_domain, bundle.bundle.as_bytes())
                .map_err(|e| unexpected(e.to_string()))?;
            Ok(parsed.x509_pem())
        }
    }
}

/// `sequence N, X x509 / J jwt / W wit authorities`
fn bundle_summary(b: &FederatedBundleView) -> String {
    format!(
        "sequence {}, {} x509 / {} jwt / {} wit authorities",
        b.sequence, b.x509_authorities, b.jwt_authorities, b.wit_authorities
    )
}

/// Prints a stored foreign bundle's summary, aligned like `agent list`.
fn print_federated_bundle(b: &FederatedBundleView) {
    println!("Trust domain      : {}", b.trust_domain);
    println!("Sequence          : {}", b.sequence);
    println!("X.509 authorities : {}", b.x509_authorities);
    println!("JWT authorities   : {}", b.jwt_authorities);
    println!("WIT authorities   : {}", b.wit_authorities);
    println!("Updated at        : {}", b.updated_at);
}

/// The text of the file an argument names; `flag` is the argument, without its dashes.
fn read_argument_file(flag: &'static str, path: &Path) -> Result<String, CommandError> {
    std::fs::read_to_string(path).map_err(|e| CommandError::Argument {
        flag,
        reason: format!("cannot read `{}`: {e}", path.display()),
    })
}

/// `wimse server bundle show`
#[derive(Debug, Args)]
pub struct BundleShowArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    pub format: BundleFormat,
    /// Show the stored bundle of this federated trust domain instead of the server's own
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server bundle list`
#[derive(Debug, Args)]
pub struct BundleListArgs {
    /// Print each bundle in this format under a `* TD` line, instead of a summary of each
    #[arg(long, value_enum)]
    pub format: Option<BundleFormat>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server bundle set`
#[derive(Debug, Args)]
pub struct BundleSetArgs {
    /// The federated trust domain the bundle belongs to, such as `other.org`
    #[arg(long, value_name = "TD")]
    pub trust_domain: String,
    /// File holding the bundle
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,
    /// Format of the file; `pem` gives X.509 authorities only
    #[arg(long, value_enum, default_value_t = BundleFormat::Spiffe)]
    pub format: BundleFormat,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `--trust-domain TD` and the admin socket: the commands that name one federated trust domain.
#[derive(Debug, Args)]
pub struct TrustDomainArgs {
    /// The federated trust domain, such as `other.org`
    #[arg(long, value_name = "TD")]
    pub trust_domain: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// A bundle's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    /// The X.509 roots as concatenated PEM certificates (as SPIRE)
    Pem,
    /// The SPIFFE bundle format: a JWK Set holding X.509 roots and JWT keys
    Spiffe,
}

impl BundleFormat {
    /// The format's name in the admin API.
    fn name(self) -> &'static str {
        match self {
            Self::Pem => "pem",
            Self::Spiffe => "spiffe",
        }
    }
}

/// `wimse server federation ...`
#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Create a federation relationship: fetch a trust domain's bundle from its bundle endpoint
    /// and keep it for the workloads whose entries federate with it
    Create(FederationArgs),
    /// Replace a federation relationship
    Update(FederationArgs),
    /// List federation relationships
    List(AdminSocketArg),
    /// Show a federation relationship and the outcome of its last bundle fetch
    Show(TrustDomainArgs),
    /// Delete a federation relationship; its stored bundle stays until `bundle delete`
    Delete(TrustDomainArgs),
    /// Fetch a federated trust domain's bundle now
    Refresh(TrustDomainArgs),
}

impl FederationCommand {
    /// Run the chosen federation command.
    fn run(self) -> Result<(), CommandError> {
        crate::runtime::block_on(async move {
            match self {
                Self::Create(args) => {
                    let admin = client(&args.admin);
                    let req = federation_request(&args)?;
                    print_federation(&admin.create_federation(&req).await?);
                }
                Self::Update(args) => {
                    let admin = client(&args.admin);
                    let req = federation_request(&args)?;
                    print_federation(&admin.update_federation(&args.trust_domain, &req).await?);
                }
                Self::List(args) => {
                    let relationships = client(&args).list_federations().await?;
                    println!("Found {} federation relationship(s)", relationships.len());
                    for relationship in &relationships {
                        println!();
                        print_federation(relationship);
                    }
                }
                Self::Show(args) => {
                    print_federation(
                        &client(&args.admin)
                            .show_federation(&args.trust_domain)
                            .await?,
                    );
                }
                Self::Delete(args) => {
                    let deleted = client(&args.admin)
                        .delete_federation(&args.trust_domain)
                        .await?;
                    println!(
                        "Deleted federation relationship with {}",
                        deleted.trust_domain
                    );
                }
                Self::Refresh(args) => {
                    let bundle = client(&args.admin)
                        .refresh_federation(&args.trust_domain)
                        .await?;
                    println!(
                        "Bundle of {} refreshed: {}",
                        bundle.trust_domain,
                        bundle_summary(&bundle)
                    );
                }
            }
            Ok(())
        })
    }
}

/// The relationship `federation create|update` asks for, with the `--trust-bundle` inline:
/// the server stores it only once the relationship is stored.
fn federation_request(args: &FederationArgs) -> Result<FederationRequest, CommandError> {
    let bundle = args
        .trust_bundle
        .as_ref()
        .map(|path| read_argument_file("trust-bundle", path))
        .transpose()?;
    Ok(FederationRequest {
        trust_domain: args.trust_domain.clone(),
        bundle_endpoint_url: args.bundle_endpoint_url.clone(),
        profile: args.profile.name().to_owned(),
        endpoint_spiffe_id: args.endpoint_spiffe_id.clone(),
        bundle_format: bundle
            .is_some()
            .then(|| args.trust_bundle_format.name().to_owned()),
        bundle,
    })
}

/// Prints a federation relationship, aligned like `agent list`.
fn print_federation(f: &FederationView) {
    println!("Trust domain      : {}", f.trust_domain);
    println!("Bundle endpoint   : {}", f.bundle_endpoint_url);
    println!("Profile           : {}", f.profile);
    if let Some(id) = &f.endpoint_spiffe_id {
        println!("Endpoint SPIFFE ID: {id}");
    }
    match f.bundle_sequence {
        Some(sequence) => println!("Bundle sequence   : {sequence}"),
        None => println!("Bundle sequence   : none"),
    }
    match f.last_refresh_at {
        Some(at) => println!("Last refresh      : {at}"),
        None => println!("Last refresh      : never"),
    }
    if let Some(error) = &f.last_error {
        println!("Last error        : {error}");
    }
}

/// `wimse server federation create|update`
#[derive(Debug, Args)]
pub struct FederationArgs {
    /// The foreign trust domain, such as `other.org`
    #[arg(long, value_name = "TD")]
    pub trust_domain: String,
    /// URL of its bundle endpoint, such as `https://other.org/.well-known/spiffe-bundle`
    #[arg(long, value_name = "URL")]
    pub bundle_endpoint_url: String,
    /// How the bundle endpoint authenticates
    #[arg(long, value_enum)]
    pub profile: EndpointProfileArg,
    /// SPIFFE ID of the bundle endpoint's server (`https_spiffe` only, and then required)
    #[arg(long, value_name = "ID")]
    pub endpoint_spiffe_id: Option<String>,
    /// File holding the foreign trust domain's current bundle, which first authenticates an
    /// `https_spiffe` endpoint
    #[arg(long, value_name = "FILE")]
    pub trust_bundle: Option<PathBuf>,
    /// Format of the `--trust-bundle` file; `pem` gives X.509 authorities only
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = BundleFormat::Spiffe,
          requires = "trust_bundle")]
    pub trust_bundle_format: BundleFormat,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// The SPIFFE Federation endpoint profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointProfileArg {
    /// A server certificate from the Web PKI for the URL's host
    #[value(name = "https_web")]
    HttpsWeb,
    /// A server certificate that is an X509-SVID of `--endpoint-spiffe-id`
    #[value(name = "https_spiffe")]
    HttpsSpiffe,
}

impl EndpointProfileArg {
    /// The profile's name in the admin API.
    fn name(self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe => "https_spiffe",
        }
    }
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
    /// Delete agents whose certificates expired long ago (banned agents stay)
    Purge(AgentPurgeArgs),
}

impl AgentAdminCommand {
    /// Run the chosen agent administration command.
    fn run(self) -> Result<(), CommandError> {
        crate::runtime::block_on(async move {
            match self {
                Self::List(args) => {
                    let agents = client(&args).list_agents().await?;
                    print_found(agents.len(), "attested agent", "attested agents");
                    for agent in agents {
                        println!();
                        println!("SPIFFE ID         : {}", agent.spiffe_id);
                        println!("Attestation type  : {}", agent.attestation_type);
                        println!("Expiration time   : {}", agent.expires_at);
                        println!("Serial number     : {}", agent.serial);
                        println!("Banned            : {}", agent.banned);
                    }
                }
                Self::Ban(args) => {
                    client(&args.admin).ban_agent(&args.spiffe_id).await?;
                    println!("Agent {} banned", args.spiffe_id);
                }
                Self::Evict(args) => {
                    client(&args.admin).evict_agent(&args.spiffe_id).await?;
                    println!("Agent {} evicted", args.spiffe_id);
                }
                Self::Purge(args) => {
                    let answer = client(&args.admin)
                        .purge_agents(i64::from(args.expired_for), args.dry_run)
                        .await?;
                    let count = answer.purged.len();
                    if args.dry_run {
                        print_found(count, "expired agent to purge", "expired agents to purge");
                    } else {
                        println!(
                            "Purged {count} expired agent{}",
                            if count == 1 { "" } else { "s" }
                        );
                    }
                    for id in answer.purged {
                        println!("{id}");
                    }
                }
            }
            Ok(())
        })
    }
}

/// `wimse server localauthority ...`
#[derive(Debug, Subcommand)]
pub enum LocalAuthorityCommand {
    /// List every replica's signing authorities with their state
    Show(AdminSocketArg),
    /// Prepare this server's next key of a kind now: published, not yet signing
    Prepare(AuthorityKindArgs),
    /// Make this server's prepared key of a kind sign from now on; the active one retires
    Activate(ActivateArgs),
    /// Mark a retired JWT or WIT key as compromised: agents replace what it signed at once
    Taint(AuthorityIdArgs),
    /// Remove a tainted JWT or WIT key from the bundle for good
    Revoke(AuthorityIdArgs),
}

/// `wimse server localauthority taint|revoke`
#[derive(Debug, Args)]
pub struct AuthorityIdArgs {
    /// Which kind of key
    #[arg(long, value_enum)]
    pub kind: AuthorityKindArg,
    /// The key's ID, as `localauthority show` lists it (base64url: it may start with `-`)
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub authority_id: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// What a signing authority signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorityKindArg {
    /// The X.509 CA (X509-SVIDs)
    X509,
    /// The JWT key (JWT-SVIDs, Txn-Tokens, grants, delegations)
    Jwt,
    /// The WIT key (Workload Identity Tokens)
    Wit,
}

impl AuthorityKindArg {
    /// The kind's name in the admin API.
    fn name(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
            Self::Wit => "wit",
        }
    }
}

/// `wimse server localauthority prepare`
#[derive(Debug, Args)]
pub struct AuthorityKindArgs {
    /// Which key
    #[arg(long, value_enum)]
    pub kind: AuthorityKindArg,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server localauthority activate`
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Which key
    #[arg(long, value_enum)]
    pub kind: AuthorityKindArg,
    /// Activate even if the prepared key was published less than the bundle's refresh
    /// hint ago (relying parties may refuse what it signs until they refresh)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

fn print_authority(a: &wimse_server::api::AuthorityView) {
    println!("Kind              : {}", a.kind);
    println!("Authority ID      : {}", a.id);
    println!("State             : {}", a.state);
    println!(
        "Server ID         : {}{}",
        a.server_id,
        if a.this_server { " (this server)" } else { "" }
    );
    println!("Published at      : {}", a.published_at);
    println!("Expires at        : {}", a.not_after);
}

impl LocalAuthorityCommand {
    /// Run the chosen authority command.
    fn run(self) -> Result<(), CommandError> {
        crate::runtime::block_on(async move {
            match self {
                Self::Show(args) => {
                    let authorities = client(&args).list_authorities().await?;
                    print_found(authorities.len(), "authority", "authorities");
                    for a in &authorities {
                        println!();
                        print_authority(a);
                    }
                }
                Self::Prepare(args) => {
                    let a = client(&args.admin)
                        .prepare_authority(args.kind.name())
                        .await?;
                    println!("Prepared {} authority {}", a.kind, a.id);
                    print_authority(&a);
                }
                Self::Activate(args) => {
                    let a = client(&args.admin)
                        .activate_authority(args.kind.name(), args.force)
                        .await?;
                    println!("Activated {} authority {}", a.kind, a.id);
                    print_authority(&a);
                }
                Self::Taint(args) => {
                    let a = client(&args.admin)
                        .retire_authority("taint", args.kind.name(), &args.authority_id)
                        .await?;
                    println!("Tainted {} authority {}", a.kind, a.id);
                    print_authority(&a);
                }
                Self::Revoke(args) => {
                    let a = client(&args.admin)
                        .retire_authority("revoke", args.kind.name(), &args.authority_id)
                        .await?;
                    println!("Revoked {} authority {}", a.kind, a.id);
                    print_authority(&a);
                }
            }
            Ok(())
        })
    }
}

/// `wimse server transaction ...`
#[derive(Debug, Subcommand)]
pub enum TransactionCommand {
    /// Revoke a transaction: the token service issues nothing more for it (no replacement,
    /// delegation, resumption or grant), which ends a delegated job for good
    Revoke(TransactionArgs),
    /// List the revoked transactions the token service remembers
    ListRevoked(AdminSocketArg),
}

/// `wimse server transaction revoke`
#[derive(Debug, Args)]
pub struct TransactionArgs {
    /// The transaction's `txn`, as audit records show it (it may start with `-`)
    #[arg(long, value_name = "TXN", allow_hyphen_values = true)]
    pub txn: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

impl TransactionCommand {
    /// Run the chosen transaction command.
    fn run(self) -> Result<(), CommandError> {
        crate::runtime::block_on(async move {
            match self {
                Self::Revoke(args) => {
                    let revoked = client(&args.admin).revoke_transaction(&args.txn).await?;
                    println!("Transaction {} revoked", revoked.txn);
                    print_revoked(&revoked);
                }
                Self::ListRevoked(args) => {
                    let revoked = client(&args).list_revoked_transactions().await?;
                    print_found(revoked.len(), "revoked transaction", "revoked transactions");
                    for r in &revoked {
                        println!();
                        println!("Transaction       : {}", r.txn);
                        print_revoked(r);
                    }
                }
            }
            Ok(())
        })
    }
}

/// `wimse server agent purge`
#[derive(Debug, Args)]
pub struct AgentPurgeArgs {
    /// Seconds since an agent's certificate expired, at least (default: 30 days)
    #[arg(long, value_name = "SECONDS", default_value_t = 30 * 86_400)]
    pub expired_for: u32,
    /// Only list the agents that would be purged
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server agent ban|evict`
#[derive(Debug, Args)]
pub struct AgentIdArgs {
    /// SPIFFE ID of the agent
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}
