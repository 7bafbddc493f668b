//! The root of the command tree, and dispatch to each command.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::agent::AgentCommand;
use crate::audit::AuditCommand;
use crate::dev::DevArgs;
use crate::error::CommandError;
use crate::gateway::GatewayCommand;
use crate::proxy::ProxyCommand;
use crate::server::ServerCommand;
use crate::socket::SPIFFE_ENDPOINT_SOCKET;

/// Workload identity for IETF WIMSE and SPIFFE: server, agent, sidecar proxy, gateway and audit
/// tools in one binary
#[derive(Debug, Parser)]
#[command(name = "wimse", version)]
pub struct Cli {
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the trust domain's server, or administer a running one
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run the per-host agent, or use its Workload API as a workload would
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run the sidecar proxy that gives any service WIMSE credentials on the wire
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Run the identity gateway at the trust domain's boundary
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Verify and query audit logs
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run a whole local trust domain (server, agent, demo services) in one process tree
    Dev(DevArgs),
}

/// What commands read from the process environment, read once in `main` so that commands stay
/// testable without touching the real environment.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// `SPIFFE_ENDPOINT_SOCKET`, if set.
    pub spiffe_endpoint_socket: Option<OsString>,
}

impl Environment {
    /// The environment of this process.
    pub fn from_process() -> Self {
        Self {
            spiffe_endpoint_socket: std::env::var_os(SPIFFE_ENDPOINT_SOCKET),
        }
    }
}

impl Cli {
    /// Run the command the arguments chose.
    pub fn run(self, env: &Environment) -> Result<(), CommandError> {
        match self.command {
            Command::Server(command) => command.run(),
            Command::Agent(command) => command.run(env),
            Command::Proxy(command) => command.run(env),
            Command::Gateway(command) => command.run(env),
            Command::Audit(command) => command.run(),
            Command::Dev(args) => crate::dev::run(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;
    use crate::agent::{AgentCommand, ApiCommand, FetchCommand};
    use crate::server::{
        BundleCommand, BundleFormat, EndpointProfileArg, EntryCommand, FederationCommand,
        ServerCommand,
    };

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wimse").chain(args.iter().copied()))
    }

    fn refusal(args: &[&str]) -> ErrorKind {
        parse(args).map(|_| ()).unwrap_err().kind()
    }

    /// Every leaf command with arguments that satisfy its parser, and the name it reports.
    const LEAVES: &[(&[&str], &str)] = &[
        (&["server", "run"], "wimse server run"),
        (
            &["server", "token", "generate"],
            "wimse server token generate",
        ),
        (
            &[
                "server",
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--parent-id",
                "spiffe://example.org/agent",
                "--selector",
                "unix:uid:1000",
            ],
            "wimse server entry create",
        ),
        (&["server", "entry", "show"], "wimse server entry show"),
        (
            &["server", "entry", "update", "--entry-id", "e1"],
            "wimse server entry update",
        ),
        (
            &["server", "entry", "delete", "--entry-id", "e1"],
            "wimse server entry delete",
        ),
        (&["server", "bundle", "show"], "wimse server bundle show"),
        (&["server", "bundle", "list"], "wimse server bundle list"),
        (
            &[
                "server",
                "bundle",
                "set",
                "--trust-domain",
                "other.org",
                "--path",
                "b.json",
            ],
            "wimse server bundle set",
        ),
        (
            &["server", "bundle", "delete", "--trust-domain", "other.org"],
            "wimse server bundle delete",
        ),
        (
            &[
                "server",
                "federation",
                "create",
                "--trust-domain",
                "other.org",
                "--bundle-endpoint-url",
                "https://other.org/b",
                "--profile",
                "https_web",
            ],
            "wimse server federation create",
        ),
        (
            &[
                "server",
                "federation",
                "update",
                "--trust-domain",
                "other.org",
                "--bundle-endpoint-url",
                "https://other.org/b",
                "--profile",
                "https_web",
            ],
            "wimse server federation update",
        ),
        (
            &["server", "federation", "list"],
            "wimse server federation list",
        ),
        (
            &[
                "server",
                "federation",
                "show",
                "--trust-domain",
                "other.org",
            ],
            "wimse server federation show",
        ),
        (
            &[
                "server",
                "federation",
                "delete",
                "--trust-domain",
                "other.org",
            ],
            "wimse server federation delete",
        ),
        (
            &[
                "server",
                "federation",
                "refresh",
                "--trust-domain",
                "other.org",
            ],
            "wimse server federation refresh",
        ),
        (&["server", "agent", "list"], "wimse server agent list"),
        (
            &[
                "server",
                "agent",
                "ban",
                "--spiffe-id",
                "spiffe://example.org/a",
            ],
            "wimse server agent ban",
        ),
        (
            &[
                "server",
                "agent",
                "evict",
                "--spiffe-id",
                "spiffe://example.org/a",
            ],
            "wimse server agent evict",
        ),
        (
            &[
                "server",
                "agent",
                "purge",
                "--expired-for",
                "60",
                "--dry-run",
            ],
            "wimse server agent purge",
        ),
        (
            &["server", "transaction", "revoke", "--txn", "t-1"],
            "wimse server transaction revoke",
        ),
        (
            &["server", "transaction", "list-revoked"],
            "wimse server transaction list-revoked",
        ),
        (
            &["server", "localauthority", "show"],
            "wimse server localauthority show",
        ),
        (
            &["server", "localauthority", "prepare", "--kind", "x509"],
            "wimse server localauthority prepare",
        ),
        (
            &[
                "server",
                "localauthority",
                "activate",
                "--kind",
                "wit",
                "--force",
            ],
            "wimse server localauthority activate",
        ),
        (
            &[
                "server",
                "localauthority",
                "taint",
                "--kind",
                "jwt",
                "--authority-id",
                "k1",
            ],
            "wimse server localauthority taint",
        ),
        (
            &[
                "server",
                "localauthority",
                "revoke",
                "--kind",
                "wit",
                "--authority-id",
                "k1",
            ],
            "wimse server localauthority revoke",
        ),
        (
            &[
                "server",
                "x509",
                "mint",
                "--spiffe-id",
                "spiffe://example.org/a",
            ],
            "wimse server x509 mint",
        ),
        (
            &[
                "server",
                "jwt",
                "mint",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--audience",
                "b",
            ],
            "wimse server jwt mint",
        ),
        (
            &[
                "server",
                "wit",
                "mint",
                "--spiffe-id",
                "spiffe://example.org/a",
            ],
            "wimse server wit mint",
        ),
        (&["server", "healthcheck"], "wimse server healthcheck"),
        (
            &["agent", "run", "--config", "agent.toml"],
            "wimse agent run",
        ),
        (
            &["agent", "api", "fetch", "x509"],
            "wimse agent api fetch x509",
        ),
        (
            &["agent", "api", "fetch", "jwt", "--audience", "a"],
            "wimse agent api fetch jwt",
        ),
        (
            &["agent", "api", "fetch", "wit"],
            "wimse agent api fetch wit",
        ),
        (
            &["agent", "api", "fetch", "bundle"],
            "wimse agent api fetch bundle",
        ),
        (
            &["agent", "api", "validate", "--audience", "a", "--svid", "t"],
            "wimse agent api validate",
        ),
        (&["agent", "healthcheck"], "wimse agent healthcheck"),
        (&["agent", "exec", "--", "true"], "wimse agent exec"),
        (
            &[
                "proxy",
                "inbound",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "http://127.0.0.1:1",
            ],
            "wimse proxy inbound",
        ),
        (
            &["proxy", "outbound", "--listen", "127.0.0.1:0"],
            "wimse proxy outbound",
        ),
        (
            &["gateway", "run", "--config", "gateway.toml"],
            "wimse gateway run",
        ),
        (&["audit", "verify", "audit.log"], "wimse audit verify"),
        (&["audit", "show", "audit.log"], "wimse audit show"),
        (&["dev"], "wimse dev"),
    ];

    fn leaf_paths(command: &clap::Command, prefix: &str, paths: &mut BTreeSet<String>) {
        let path = if prefix.is_empty() {
            command.get_name().to_owned()
        } else {
            format!("{prefix} {}", command.get_name())
        };
        if command.has_subcommands() {
            for sub in command.get_subcommands() {
                leaf_paths(sub, &path, paths);
            }
        } else {
            paths.insert(path);
        }
    }

    #[test]
    fn command_tree_passes_clap_consistency_checks() {
        Cli::command().debug_assert();
    }

    #[test]
    fn leaf_table_covers_the_whole_command_tree() {
        let mut tree = BTreeSet::new();
        leaf_paths(&Cli::command(), "", &mut tree);
        let table: BTreeSet<String> = LEAVES.iter().map(|(_, name)| (*name).to_owned()).collect();
        assert_eq!(tree, table);
    }

    fn server_run_args(args: &[&str]) -> crate::server::ServerRunArgs {
        let Command::Server(ServerCommand::Run(args)) = parse(args).unwrap().command else {
            panic!("not server run");
        };
        args
    }

    #[test]
    fn server_run_defaults_follow_the_design() {
        let config = crate::server::server_config(&server_run_args(&["server", "run"])).unwrap();
        assert_eq!(config.bind, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./.wimse"));
        assert_eq!(config.admin_socket, PathBuf::from("./.wimse/server.sock"));
        assert_eq!(config.trust_domain.as_str(), "example.org");
    }

    #[test]
    fn server_admin_socket_follows_the_data_dir() {
        let args = server_run_args(&["server", "run", "--data-dir", "/var/lib/wimse"]);
        let config = crate::server::server_config(&args).unwrap();
        assert_eq!(
            config.admin_socket,
            PathBuf::from("/var/lib/wimse/server.sock")
        );
    }

    #[test]
    fn server_flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("wimse-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("server.toml");
        std::fs::write(
            &file,
            "trust_domain = \"file.example\"\nbind = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let from_file =
            crate::server::server_config(&server_run_args(&["server", "run", "--config", path]))
                .unwrap();
        assert_eq!(from_file.trust_domain.as_str(), "file.example");
        assert_eq!(from_file.bind.port(), 9000);
        let overridden = crate::server::server_config(&server_run_args(&[
            "server",
            "run",
            "--config",
            path,
            "--trust-domain",
            "flag.example",
        ]))
        .unwrap();
        assert_eq!(overridden.trust_domain.as_str(), "flag.example");
        assert_eq!(overridden.bind.port(), 9000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn x509pop_ca_bundle_and_agent_svid_ttl_flags_reach_the_config() {
        let args = server_run_args(&[
            "server",
            "run",
            "--x509pop-ca-bundle",
            "/etc/wimse/agents-ca.pem",
            "--agent-svid-ttl",
            "900",
        ]);
        let config = crate::server::server_config(&args).unwrap();
        assert_eq!(
            config.x509pop_ca_bundle,
            Some(PathBuf::from("/etc/wimse/agents-ca.pem"))
        );
        assert_eq!(config.agent_svid_ttl, 900);
        assert!(parse(&["server", "run", "--agent-svid-ttl", "0"]).is_err());
    }

    #[test]
    fn admin_commands_default_to_the_default_servers_socket() {
        let Command::Server(ServerCommand::Bundle(BundleCommand::Show(args))) =
            parse(&["server", "bundle", "show"]).unwrap().command
        else {
            panic!("not bundle show");
        };
        assert_eq!(
            args.admin.admin_socket,
            PathBuf::from("./.wimse/server.sock")
        );
        assert_eq!(args.format, BundleFormat::Pem);
    }

    #[test]
    fn bundle_format_is_pem_or_spiffe() {
        assert!(parse(&["server", "bundle", "show", "--format", "spiffe"]).is_ok());
        assert_eq!(
            refusal(&["server", "bundle", "show", "--format", "jwks"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn entry_create_takes_repeated_selectors_and_dns_names() {
        let Command::Server(ServerCommand::Entry(EntryCommand::Create(args))) = parse(&[
            "server",
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--parent-id",
            "spiffe://example.org/agent",
            "--selector",
            "unix:uid:1000",
            "--selector",
            "unix:gid:0",
            "--dns",
            "a.example.org",
            "--dns",
            "b.example.org",
        ])
        .unwrap()
        .command
        else {
            panic!("not entry create");
        };
        assert_eq!(args.selector.len(), 2);
        assert_eq!(args.dns, ["a.example.org", "b.example.org"]);
    }

    #[test]
    fn entry_create_and_update_take_repeated_federates_with() {
        let Command::Server(ServerCommand::Entry(EntryCommand::Create(args))) = parse(&[
            "server",
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--parent-id",
            "spiffe://example.org/agent",
            "--selector",
            "unix:uid:1000",
            "--federates-with",
            "other.org",
            "--federates-with",
            "third.org",
        ])
        .unwrap()
        .command
        else {
            panic!("not entry create");
        };
        assert_eq!(args.federates_with, ["other.org", "third.org"]);
        let Command::Server(ServerCommand::Entry(EntryCommand::Update(args))) = parse(&[
            "server",
            "entry",
            "update",
            "--entry-id",
            "e1",
            "--federates-with",
            "other.org",
        ])
        .unwrap()
        .command
        else {
            panic!("not entry update");
        };
        assert_eq!(args.federates_with, ["other.org"]);
    }

    #[test]
    fn entry_update_without_federates_with_leaves_the_list_empty_to_keep_the_current_one() {
        let Command::Server(ServerCommand::Entry(EntryCommand::Update(args))) =
            parse(&["server", "entry", "update", "--entry-id", "e1"])
                .unwrap()
                .command
        else {
            panic!("not entry update");
        };
        assert!(args.federates_with.is_empty());
    }

    const FEDERATION_CREATE: &[&str] = &[
        "server",
        "federation",
        "create",
        "--trust-domain",
        "other.org",
        "--bundle-endpoint-url",
        "https://other.org/.well-known/spiffe-bundle",
    ];

    fn federation_args(extra: &[&str]) -> crate::server::FederationArgs {
        let Command::Server(ServerCommand::Federation(FederationCommand::Create(args))) =
            parse(&[FEDERATION_CREATE, extra].concat()).unwrap().command
        else {
            panic!("not federation create");
        };
        args
    }

    #[test]
    fn federation_create_https_spiffe_takes_the_endpoint_id_and_a_trust_bundle() {
        let args = federation_args(&[
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            "spiffe://other.org/wimse/server",
            "--trust-bundle",
            "other.pem",
            "--trust-bundle-format",
            "pem",
        ]);
        assert_eq!(args.trust_domain, "other.org");
        assert_eq!(
            args.bundle_endpoint_url,
            "https://other.org/.well-known/spiffe-bundle"
        );
        assert_eq!(args.profile, EndpointProfileArg::HttpsSpiffe);
        assert_eq!(
            args.endpoint_spiffe_id.as_deref(),
            Some("spiffe://other.org/wimse/server")
        );
        assert_eq!(args.trust_bundle, Some(PathBuf::from("other.pem")));
        assert_eq!(args.trust_bundle_format, BundleFormat::Pem);
    }

    #[test]
    fn federation_create_https_web_needs_no_endpoint_id_and_defaults_to_spiffe_bundles() {
        let args = federation_args(&["--profile", "https_web"]);
        assert_eq!(args.profile, EndpointProfileArg::HttpsWeb);
        assert_eq!(args.endpoint_spiffe_id, None);
        assert_eq!(args.trust_bundle, None);
        assert_eq!(args.trust_bundle_format, BundleFormat::Spiffe);
    }

    #[test]
    fn federation_create_needs_a_known_profile() {
        assert_eq!(
            refusal(FEDERATION_CREATE),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            refusal(&[FEDERATION_CREATE, &["--profile", "https-web"]].concat()),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn federation_trust_bundle_format_needs_a_trust_bundle() {
        assert_eq!(
            refusal(
                &[
                    FEDERATION_CREATE,
                    &["--profile", "https_web", "--trust-bundle-format", "pem"]
                ]
                .concat()
            ),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn bundle_show_takes_an_optional_federated_trust_domain() {
        let Command::Server(ServerCommand::Bundle(BundleCommand::Show(args))) = parse(&[
            "server",
            "bundle",
            "show",
            "--trust-domain",
            "other.org",
            "--format",
            "spiffe",
        ])
        .unwrap()
        .command
        else {
            panic!("not bundle show");
        };
        assert_eq!(args.trust_domain.as_deref(), Some("other.org"));
        assert_eq!(args.format, BundleFormat::Spiffe);
    }

    #[test]
    fn bundle_set_defaults_to_spiffe_and_needs_a_trust_domain_and_a_path() {
        let Command::Server(ServerCommand::Bundle(BundleCommand::Set(args))) = parse(&[
            "server",
            "bundle",
            "set",
            "--trust-domain",
            "other.org",
            "--path",
            "b.json",
        ])
        .unwrap()
        .command
        else {
            panic!("not bundle set");
        };
        assert_eq!(args.format, BundleFormat::Spiffe);
        assert_eq!(args.path, PathBuf::from("b.json"));
        assert_eq!(
            refusal(&["server", "bundle", "set", "--path", "b.json"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            refusal(&["server", "bundle", "set", "--trust-domain", "other.org"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn entry_create_without_selector_is_refused() {
        assert_eq!(
            refusal(&[
                "server",
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--parent-id",
                "spiffe://example.org/agent",
            ]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn malformed_selector_is_refused() {
        assert_eq!(
            refusal(&["server", "entry", "show", "--selector", "uid1000"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn zero_ttl_is_refused() {
        assert_eq!(
            refusal(&["server", "token", "generate", "--ttl", "0"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn agent_run_refuses_two_attestation_methods() {
        assert_eq!(
            refusal(&[
                "agent",
                "run",
                "--server-address",
                "s:8443",
                "--trust-bundle",
                "b.pem",
                "--join-token",
                "t",
                "--x509pop-cert",
                "c.pem",
                "--x509pop-key",
                "k.pem",
            ]),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn agent_run_refuses_join_token_with_x509pop_key() {
        assert_eq!(
            refusal(&[
                "agent",
                "run",
                "--server-address",
                "s:8443",
                "--trust-bundle",
                "b.pem",
                "--join-token",
                "t",
                "--x509pop-key",
                "k.pem",
            ]),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn agent_run_x509pop_needs_certificate_and_key() {
        let base = [
            "agent",
            "run",
            "--server-address",
            "s:8443",
            "--trust-bundle",
            "b.pem",
        ];
        assert_eq!(
            refusal(&[&base[..], &["--x509pop-cert", "c.pem"]].concat()),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            refusal(&[&base[..], &["--x509pop-key", "k.pem"]].concat()),
            ErrorKind::MissingRequiredArgument
        );
        assert!(
            parse(
                &[
                    &base[..],
                    &["--x509pop-cert", "c.pem", "--x509pop-key", "k.pem"]
                ]
                .concat()
            )
            .is_ok()
        );
    }

    #[test]
    fn agent_run_leaves_a_missing_attestation_method_to_the_config_merge() {
        assert!(
            parse(&[
                "agent",
                "run",
                "--server-address",
                "s:8443",
                "--trust-bundle",
                "b.pem"
            ])
            .is_ok()
        );
    }

    #[test]
    fn agent_run_needs_server_and_bundle_unless_a_config_file_is_given() {
        assert_eq!(
            refusal(&["agent", "run", "--join-token", "t"]),
            ErrorKind::MissingRequiredArgument
        );
        assert!(
            parse(&[
                "agent",
                "run",
                "--config",
                "agent.toml",
                "--join-token",
                "t"
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_join_token_that_starts_with_a_hyphen_is_the_flags_value() {
        let config = agent_run_config(
            &[
                "agent",
                "run",
                "--server-address",
                "s:1",
                "--trust-bundle",
                "b.pem",
                "--join-token",
                "-P3xq_token",
            ],
            &Environment::default(),
        );
        let wimse_agent::config::NodeAttestation::JoinToken(token) = config.attestation else {
            panic!("not a join token");
        };
        assert_eq!(token.as_str(), "-P3xq_token");
    }

    #[test]
    fn random_ids_that_start_with_a_hyphen_are_the_flags_values() {
        // `txn`s and key IDs are base64url too.
        let Command::Server(ServerCommand::Transaction(crate::server::TransactionCommand::Revoke(
            args,
        ))) = parse(&["server", "transaction", "revoke", "--txn", "-Tx_1"])
            .unwrap()
            .command
        else {
            panic!("not transaction revoke");
        };
        assert_eq!(args.txn, "-Tx_1");
        let Command::Server(ServerCommand::Localauthority(
            crate::server::LocalAuthorityCommand::Taint(args),
        )) = parse(&[
            "server",
            "localauthority",
            "taint",
            "--kind",
            "jwt",
            "--authority-id",
            "-k1",
        ])
        .unwrap()
        .command
        else {
            panic!("not localauthority taint");
        };
        assert_eq!(args.authority_id, "-k1");
        let Command::Audit(crate::audit::AuditCommand::Show(args)) =
            parse(&["audit", "show", "log.jsonl", "--txn", "-Tx_1"])
                .unwrap()
                .command
        else {
            panic!("not audit show");
        };
        assert_eq!(args.txn.as_deref(), Some("-Tx_1"));
    }

    fn agent_run_config(args: &[&str], env: &Environment) -> wimse_agent::config::AgentConfig {
        let Command::Agent(AgentCommand::Run(args)) = parse(args).unwrap().command else {
            panic!("not agent run");
        };
        crate::agent::agent_config(&args, env).unwrap()
    }

    #[test]
    fn agent_run_socket_defaults_to_its_data_dir() {
        let config = agent_run_config(
            &[
                "agent",
                "run",
                "--server-address",
                "s:1",
                "--trust-bundle",
                "b.pem",
                "--join-token",
                "t",
                "--data-dir",
                "/d",
            ],
            &Environment::default(),
        );
        assert_eq!(config.socket, PathBuf::from("/d/agent.sock"));
        assert_eq!(config.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn agent_run_socket_follows_spiffe_endpoint_socket_and_then_the_flag() {
        let env = Environment {
            spiffe_endpoint_socket: Some("unix:///run/spire.sock".into()),
        };
        let base = [
            "agent",
            "run",
            "--server-address",
            "s:1",
            "--trust-bundle",
            "b.pem",
            "--join-token",
            "t",
        ];
        assert_eq!(
            agent_run_config(&base, &env).socket,
            PathBuf::from("/run/spire.sock")
        );
        let mut flagged = base.to_vec();
        flagged.extend(["--socket", "/x.sock"]);
        assert_eq!(
            agent_run_config(&flagged, &env).socket,
            PathBuf::from("/x.sock")
        );
    }

    #[test]
    fn agent_run_flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "server_address = \"file:1\"\ntrust_bundle = \"/f.pem\"\njoin_token = \"file-token\"\ndata_dir = \"/fd\"\n",
        )
        .unwrap();
        let config = agent_run_config(
            &["agent", "run", "--config", file.to_str().unwrap()],
            &Environment::default(),
        );
        assert_eq!(config.server_address, "file:1");
        assert_eq!(config.data_dir, PathBuf::from("/fd"));
        assert_eq!(config.socket, PathBuf::from("/fd/agent.sock"));
        let config = agent_run_config(
            &[
                "agent",
                "run",
                "--config",
                file.to_str().unwrap(),
                "--server-address",
                "flag:2",
                "--x509pop-cert",
                "c.pem",
                "--x509pop-key",
                "k.pem",
            ],
            &Environment::default(),
        );
        assert_eq!(config.server_address, "flag:2");
        assert!(matches!(
            config.attestation,
            wimse_agent::config::NodeAttestation::X509Pop { .. }
        ));
    }

    #[test]
    fn fetch_jwt_requires_an_audience() {
        assert_eq!(
            refusal(&["agent", "api", "fetch", "jwt"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn fetch_jwt_takes_repeated_audiences() {
        let Command::Agent(AgentCommand::Api(ApiCommand::Fetch(FetchCommand::Jwt(args)))) =
            parse(&[
                "agent",
                "api",
                "fetch",
                "jwt",
                "--audience",
                "a",
                "--audience",
                "b",
            ])
            .unwrap()
            .command
        else {
            panic!("not fetch jwt");
        };
        assert_eq!(args.audience, ["a", "b"]);
    }

    #[test]
    fn fetch_x509_has_no_audience() {
        assert_eq!(
            refusal(&["agent", "api", "fetch", "x509", "--audience", "a"]),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn exec_passes_the_command_and_its_flags_through() {
        for args in [
            &["agent", "exec", "--socket", "/s", "--", "env", "-i", "--x"][..],
            &["agent", "exec", "--socket", "/s", "env", "-i", "--x"][..],
        ] {
            let Command::Agent(AgentCommand::Exec(exec)) = parse(args).unwrap().command else {
                panic!("not exec");
            };
            assert_eq!(exec.command, ["env", "-i", "--x"], "{args:?}");
            assert_eq!(exec.socket.socket, Some(PathBuf::from("/s")));
        }
    }

    #[test]
    fn exec_without_a_command_is_refused() {
        assert_eq!(
            refusal(&["agent", "exec"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn agent_commands_refuse_a_broken_endpoint_variable() {
        let env = Environment {
            spiffe_endpoint_socket: Some("tcp://127.0.0.1:8081".into()),
        };
        let result = parse(&["agent", "healthcheck"]).unwrap().run(&env);
        assert!(
            matches!(result, Err(CommandError::AgentSocket(_))),
            "{result:?}"
        );
    }

    #[test]
    fn audit_show_filters_by_decision() {
        assert!(parse(&["audit", "show", "a.log", "--decision", "deny"]).is_ok());
        assert_eq!(
            refusal(&["audit", "show", "a.log", "--decision", "maybe"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn audit_verify_needs_a_file() {
        assert_eq!(
            refusal(&["audit", "verify"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn dev_defaults_to_example_org() {
        let Command::Dev(args) = parse(&["dev"]).unwrap().command else {
            panic!("not dev");
        };
        assert_eq!(args.trust_domain, "example.org");
        assert_eq!(args.data_dir, PathBuf::from("./.wimse"));
        assert!(!args.demo);
    }
}
