//! `wimse dev`: a whole local trust domain in one process, for trying wimse out.
//!
//! One process runs the server (SQLite under the data directory), an agent attested to it,
//! and the three demo services of the architecture's basic scenario (seeds/002 §3.2.1):
//! `web` and `billing` call `orders`, each behind the workload library's layer (WIT+WPT,
//! HTTP Message Signatures or mTLS in; Cedar policy; audit log). It registers entries for
//! the services and for the invoking user's uid, writes `<data_dir>/dev.json` with where
//! everything is, and runs until Ctrl-C. Running it again reuses the trust domain (keys,
//! datastore and the agent's credential are kept in the data directory).
//!
//! All of it runs as one process, so the demo services and the user's own commands are the
//! same uid: the services' entries also require the `wimse` executable's hash, and each
//! service picks its own identity by SPIFFE ID. The user's entry has a hint, so it comes
//! first and is the default identity of `wimse agent api fetch`.
//!
//! In front of `orders` runs the gateway ([`gateway`]): outside clients call it with an
//! access token of the dev login (a stand-in for an outside authorization server), and it
//! forwards them to `orders` with a Txn-Token from the server's token service.

mod gateway;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http_body_util::{BodyExt, Full};
use wimse_core::WorkloadId;
use wimse_server::admin::client::AdminClient;
use wimse_server::api::EntryRequest;
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, Policy, ProofMethod, WimseLayer,
};

use crate::defaults;
use crate::error::CommandError;

/// `wimse dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for everything: SQLite datastore, sockets, keys, and `dev.json` describing where
    /// everything listens (the same default as the server and agent, so their commands find the
    /// sockets without flags)
    #[arg(long, value_name = "DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Trust domain of the local server
    #[arg(long, value_name = "TD", default_value = defaults::DEV_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Run the basic scenario once against the live system, narrating each call, verify the
    /// audit logs, and exit
    #[arg(long)]
    pub demo: bool,
    /// Address of the server's TLS listener
    #[arg(long, value_name = "ADDR", default_value = defaults::SERVER_BIND)]
    pub bind: SocketAddr,
}

/// A demo service: its name, the routes it serves, and who may call what.
struct Demo {
    name: &'static str,
    port: u16,
    policy: &'static str,
}

/// The basic scenario: `web` may read orders, `billing` may post payments, and each may
/// only do that.
const DEMOS: [Demo; 3] = [
    Demo {
        name: "web",
        port: 9101,
        policy: r#"permit(principal, action, resource) when { context.trust_domain == "@TD@" };"#,
    },
    Demo {
        name: "billing",
        port: 9102,
        policy: r#"permit(principal, action, resource) when { context.trust_domain == "@TD@" };"#,
    },
    Demo {
        name: "orders",
        port: 9103,
        policy: r#"
permit(principal == Workload::"spiffe://@TD@/demo/web", action == Action::"GET", resource)
  when { context.path like "/api/orders*" };
permit(principal == Workload::"spiffe://@TD@/demo/billing", action == Action::"POST", resource)
  when { context.path like "/api/payments*" };
permit(principal == Workload::"spiffe://@TD@/demo/gateway", action == Action::"GET", resource)
  when { context.path like "/api/orders*" && context has txn && context.txn.scopes.contains("orders") };
"#,
    },
];

/// How long to wait for the agent to hand out a demo service's credentials.
const CREDENTIALS_WAIT: Duration = Duration::from_secs(30);

fn dev_error(what: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Dev(format!("{what}: {e}"))
}

/// `wimse dev`: starts everything, then waits for Ctrl-C (or runs the demo and exits).
pub fn run(args: DevArgs) -> Result<(), CommandError> {
    crate::runtime::init_logging();
    crate::runtime::block_on_network(dev(args))
}

/// A running service of the demo.
struct Service {
    name: &'static str,
    id: WorkloadId,
    address: SocketAddr,
    source: CredentialSource,
    audit_log: PathBuf,
    audit: Arc<wimse_audit::AuditLog>,
}

async fn dev(args: DevArgs) -> Result<(), CommandError> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| dev_error("data directory", e))?;
    let dir = std::fs::canonicalize(&args.data_dir).map_err(|e| dev_error("data directory", e))?;

    // The server, whose token service lets the gateway start transactions for the dev
    // login's users.
    let login = gateway::DevLogin::open(&dir, &args.trust_domain)?;
    let gateway_id = format!("spiffe://{}/demo/gateway", args.trust_domain);
    let server_config = wimse_server::config::FileConfig {
        trust_domain: Some(args.trust_domain.clone()),
        data_dir: Some(dir.join("server")),
        bind: Some(args.bind),
        admin_socket: Some(dir.join(defaults::ADMIN_SOCKET_FILE)),
        token_service: login.token_service(&gateway_id),
        ..wimse_server::config::FileConfig::default()
    }
    .resolve()?;
    let trust_domain = server_config.trust_domain.clone();
    let (server, server_tasks) = wimse_server::run::start(server_config).await?;
    let admin = AdminClient::new(&server.admin_socket);
    let bundle_path = dir.join("bundle.pem");
    let pem = admin.bundle("pem").await?;
    std::fs::write(&bundle_path, pem).map_err(|e| dev_error("bundle file", e))?;

    // The agent.
    let token = admin
        .create_join_token(defaults::JOIN_TOKEN_TTL_SECS)
        .await?;
    let agent_socket = dir.join(defaults::AGENT_SOCKET_FILE);
    let agent_config = wimse_agent::config::FileConfig {
        server_address: Some(server.local_addr.to_string()),
        trust_bundle: Some(bundle_path.clone()),
        data_dir: Some(dir.join("agent")),
        socket: Some(agent_socket.clone()),
        join_token: Some(zeroize::Zeroizing::new(token.token)),
        ..wimse_agent::config::FileConfig::default()
    }
    .resolve()?;
    let (agent_id, stop_agent, agent_task) = start_agent(agent_config).await?;

    // Entries: the user's uid, and each demo service (uid + the wimse executable's hash).
    let (uid, selectors) = demo_selectors()?;
    let user_id = format!("spiffe://{trust_domain}/user/{uid}");
    ensure_entry(
        &admin,
        &user_id,
        &agent_id,
        vec![format!("unix:uid:{uid}")],
        Some("user"),
    )
    .await?;
    let mut services = Vec::new();
    for demo in &DEMOS {
        let id = format!("spiffe://{trust_domain}/demo/{}", demo.name);
        ensure_entry(&admin, &id, &agent_id, selectors.clone(), None).await?;
        services.push(start_service(demo, &id, &agent_socket, &dir, trust_domain.as_str()).await?);
    }
    ensure_entry(&admin, &gateway_id, &agent_id, selectors, None).await?;
    let orders = find_service(&services, "orders")?;
    let gateway = gateway::start(
        &gateway_id,
        &agent_socket,
        &dir,
        server.local_addr,
        orders,
        &login,
    )
    .await?;
    let access_token = login.write_access_token()?;

    let dev_json = serde_json::json!({
        "trust_domain": trust_domain.as_str(),
        "server_address": server.local_addr.to_string(),
        "admin_socket": server.admin_socket,
        "agent_socket": agent_socket,
        "agent_id": agent_id.as_str(),
        "bundle_path": bundle_path,
        "user_id": user_id,
        "server_audit_log": dir.join("server").join("audit.jsonl"),
        "services": services.iter().map(|s| serde_json::json!({
            "name": s.name,
            "id": s.id.as_str(),
            "address": format!("http://{}", s.address),
            "audit_log": s.audit_log,
        })).collect::<Vec<_>>(),
        "gateway": gateway.describe(&login),
    });
    write_dev_json(&dir, &dev_json)?;

    let outcome = if args.demo {
        demo(&services, &gateway, &access_token).await
    } else {
        crate::runtime::shutdown_signal().await;
        Ok(())
    };
    println!("stopping");
    for service in &services {
        service.audit.close()?;
    }
    gateway.audit.close()?;
    let _ = stop_agent.send(());
    let _ = agent_task.await;
    server_tasks.stop().await;
    server.state.audit.close();
    let _ = std::fs::remove_file(&server.admin_socket);
    outcome
}

/// The demo service called `name`.
fn find_service<'a>(services: &'a [Service], name: &str) -> Result<&'a Service, CommandError> {
    services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| CommandError::Dev(format!("no demo service `{name}`")))
}

/// The running agent: its ID, its stop switch and its task.
type RunningAgent = (
    WorkloadId,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), wimse_agent::run::RunError>>,
);

/// Starts the agent in this process; returns once it serves.
async fn start_agent(
    config: wimse_agent::config::AgentConfig,
) -> Result<RunningAgent, CommandError> {
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let agent_task = tokio::spawn(wimse_agent::run::run_with(
        config,
        async move {
            let _ = agent_stopped.await;
        },
        move |running| {
            let _ = started_tx.send(running.agent.id());
        },
    ));
    let Ok(agent_id) = started_rx.await else {
        return Err(match agent_task.await {
            Ok(Err(e)) => e.into(),
            _ => CommandError::Dev("the agent stopped while starting".into()),
        });
    };
    Ok((agent_id, stop_agent, agent_task))
}

/// The user's uid, and the selectors of the demo's workloads: that uid and the `wimse`
/// executable's hash.
fn demo_selectors() -> Result<(u32, Vec<String>), CommandError> {
    let uid = own_uid()?;
    let exe = std::env::current_exe().map_err(|e| dev_error("own executable", e))?;
    let exe_hash = wimse_core::digest::hex(&wimse_core::digest::sha256(
        &std::fs::read(&exe).map_err(|e| dev_error("own executable", e))?,
    ));
    Ok((
        uid,
        vec![format!("unix:uid:{uid}"), format!("unix:sha256:{exe_hash}")],
    ))
}

fn own_uid() -> Result<u32, CommandError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| dev_error("own uid", e))?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| CommandError::Dev("own uid: unreadable /proc/self/status".into()))
}

/// Creates the entry, or replaces one with the same ID under another parent (an agent of
/// an earlier run).
async fn ensure_entry(
    admin: &AdminClient,
    id: &str,
    parent: &WorkloadId,
    selectors: Vec<String>,
    hint: Option<&str>,
) -> Result<(), CommandError> {
    for existing in admin.list_entries(Some(id), None, &[]).await? {
        if existing.parent_id == parent.as_str() && existing.selectors == sorted(&selectors) {
            return Ok(());
        }
        admin.delete_entry(&existing.id).await?;
    }
    admin
        .create_entry(&EntryRequest {
            spiffe_id: id.to_owned(),
            parent_id: parent.to_string(),
            selectors,
            hint: hint.map(str::to_owned),
            ..EntryRequest::default()
        })
        .await?;
    Ok(())
}

fn sorted(list: &[String]) -> Vec<String> {
    let mut list = list.to_vec();
    list.sort();
    list
}

/// A loopback listener on `port` if it is free, on any port otherwise (dev.json says
/// which), and its address.
async fn listen_on_loopback(
    port: u16,
) -> Result<(tokio::net::TcpListener, SocketAddr), CommandError> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| dev_error("listener", e))?,
    };
    let address = listener
        .local_addr()
        .map_err(|e| dev_error("listener", e))?;
    Ok((listener, address))
}

/// The identity `id` and its credentials from the agent at `agent_socket`.
async fn connect_as(
    id: &str,
    agent_socket: &Path,
) -> Result<(WorkloadId, CredentialSource), CommandError> {
    let id = WorkloadId::parse(id).map_err(|e| dev_error("demo identity", e))?;
    let source = CredentialSource::connect(
        agent_socket.to_path_buf(),
        Some(id.clone()),
        CREDENTIALS_WAIT,
    )
    .await?;
    Ok((id, source))
}

async fn start_service(
    demo: &Demo,
    id: &str,
    agent_socket: &Path,
    dir: &Path,
    trust_domain: &str,
) -> Result<Service, CommandError> {
    let (id, source) = connect_as(id, agent_socket).await?;
    let (listener, address) = listen_on_loopback(demo.port).await?;
    let policy = Arc::new(Policy::from_text(
        &demo.policy.replace("@TD@", trust_domain),
    )?);
    let authn = Authenticator::new(AuthConfig::new(format!("http://{address}")), source.clone());
    std::fs::create_dir_all(dir.join("audit")).map_err(|e| dev_error("audit directory", e))?;
    let audit_log = dir.join("audit").join(format!("{}.jsonl", demo.name));
    let audit = crate::proxy::audit_log(&audit_log, &source)?;
    let layer = WimseLayer::new(Arc::new(authn), policy).with_audit(Arc::clone(&audit));
    let name = demo.name;
    let router = axum::Router::new()
        .fallback(move |request: axum::extract::Request| async move {
            let peer = request
                .extensions()
                .get::<wimse_workload::PeerIdentity>()
                .map(|p| p.id.to_string())
                .unwrap_or_default();
            let transaction = request
                .extensions()
                .get::<wimse_workload::Transaction>()
                .map(|t| {
                    format!(
                        " in transaction {} of {} (scope {})",
                        t.0.txn, t.0.sub, t.0.scope
                    )
                })
                .unwrap_or_default();
            format!(
                "{name}: {} {} for {peer}{transaction}\n",
                request.method(),
                request.uri().path()
            )
        })
        .layer(layer);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "demo service stopped");
        }
    });
    Ok(Service {
        name: demo.name,
        id,
        address,
        source,
        audit_log,
        audit,
    })
}

/// Writes `dev.json` and says what is where.
fn write_dev_json(dir: &Path, dev_json: &serde_json::Value) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(dev_json).map_err(|e| dev_error("dev.json", e))?;
    wimse_agent::files::write_atomic(&dir.join("dev.json"), text.as_bytes(), 0o644)
        .map_err(|e| dev_error("dev.json", e))?;
    print_summary(dir, dev_json);
    Ok(())
}

fn print_summary(dir: &Path, dev: &serde_json::Value) {
    let get = |k: &str| {
        dev[k]
            .as_str()
            .map_or_else(|| dev[k].to_string(), str::to_owned)
    };
    println!("wimse dev: trust domain {}", get("trust_domain"));
    println!("  server        https://{}", get("server_address"));
    println!("  admin socket  {}", get("admin_socket"));
    println!(
        "  agent socket  {}   (agent {})",
        get("agent_socket"),
        get("agent_id")
    );
    println!("  bundle        {}", get("bundle_path"));
    println!("  your identity {}   (entry for your uid)", get("user_id"));
    let gateway = &dev["gateway"];
    println!(
        "  gateway       {}   {}",
        gateway["address"].as_str().unwrap_or_default(),
        gateway["id"].as_str().unwrap_or_default()
    );
    println!(
        "  access token  {}   (dev login, for the gateway)",
        gateway["access_token_path"].as_str().unwrap_or_default()
    );
    if let Some(services) = dev["services"].as_array() {
        for s in services {
            println!(
                "  service {:<8} {}   {}",
                s["name"].as_str().unwrap_or_default(),
                s["address"].as_str().unwrap_or_default(),
                s["id"].as_str().unwrap_or_default()
            );
        }
    }
    println!("  written to    {}", dir.join("dev.json").display());
    println!("Ctrl-C stops everything.");
}

/// One call of the demo: `from` calls `to` (or nobody, without credentials).
async fn call(
    from: Option<&Service>,
    to: &Service,
    method: http::Method,
    path: &str,
    proof: ProofMethod,
) -> Result<(u16, String), CommandError> {
    let uri: http::Uri = format!("http://{}{path}", to.address)
        .parse()
        .map_err(|e| dev_error("demo request", e))?;
    let body = if method == http::Method::POST {
        b"{\"amount\":42}".to_vec()
    } else {
        Vec::new()
    };
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(())
        .map_err(|e| dev_error("demo request", e))?;
    let (mut parts, ()) = request.into_parts();
    if let Some(from) = from {
        let creds = from.source.current();
        wimse_workload::attach_proof(
            &mut parts,
            &body,
            &creds,
            proof,
            wimse_core::token::unix_now(),
        )
        .map_err(|e| dev_error("attaching the proof", e))?;
    }
    send(http::Request::from_parts(
        parts,
        Full::new(bytes::Bytes::from(body)),
    ))
    .await
}

/// Sends a demo request; (status, body).
async fn send(request: http::Request<Full<bytes::Bytes>>) -> Result<(u16, String), CommandError> {
    let response = wimse_workload::http_client()
        .request(request)
        .await
        .map_err(|e| dev_error("demo call", e))?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, text))
}

/// One step of the demo: caller, method, path, proof, expected status, story.
type Step<'a> = (
    Option<&'a Service>,
    http::Method,
    &'a str,
    ProofMethod,
    u16,
    &'a str,
);

/// The basic scenario, narrated.
async fn demo(
    services: &[Service],
    gateway: &gateway::RunningGateway,
    access_token: &str,
) -> Result<(), CommandError> {
    let find = |name: &str| find_service(services, name);
    let (web, billing, orders) = (find("web")?, find("billing")?, find("orders")?);
    let steps: [Step<'_>; 5] = [
        (
            Some(web),
            http::Method::GET,
            "/api/orders/7",
            ProofMethod::WitWpt,
            200,
            "web reads an order (WIT + WPT): allowed by policy",
        ),
        (
            Some(billing),
            http::Method::POST,
            "/api/payments",
            ProofMethod::HttpSig,
            200,
            "billing posts a payment (WIT + HTTP Message Signature): allowed by policy",
        ),
        (
            Some(web),
            http::Method::POST,
            "/api/payments",
            ProofMethod::WitWpt,
            403,
            "web tries to post a payment: authenticated, but the policy says no",
        ),
        (
            Some(billing),
            http::Method::GET,
            "/api/orders/7",
            ProofMethod::HttpSig,
            403,
            "billing tries to read an order: denied",
        ),
        (
            None,
            http::Method::GET,
            "/api/orders/7",
            ProofMethod::WitWpt,
            400,
            "an unauthenticated caller: refused with a problem body",
        ),
    ];
    println!();
    println!("The basic scenario (draft-ietf-wimse-arch §3.2.1), against the live system:");
    let mut failures = 0;
    let steps_len = steps.len();
    for (n, (from, method, path, proof, expected, story)) in steps.into_iter().enumerate() {
        let caller = from.map_or("(no credentials)".to_owned(), |s| s.id.to_string());
        let (status, body) = call(from, orders, method.clone(), path, proof).await?;
        let verdict = if status == expected {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        if status != expected {
            failures += 1;
        }
        println!("{}. {story}", n + 1);
        println!("   {caller} -> {method} {} {path}", orders.id);
        println!(
            "   answer {status} ({verdict}): {}",
            body.lines().next().unwrap_or_default()
        );
    }
    failures += demo_gateway(gateway, access_token, steps_len + 1).await?;
    println!();
    verify_audit_logs(services, gateway)?;
    println!(
        "Read one with: wimse audit show {}",
        orders.audit_log.display()
    );
    if failures > 0 {
        return Err(CommandError::Dev(format!(
            "{failures} demo step(s) did not go as expected"
        )));
    }
    Ok(())
}

/// The gateway's part of the demo, its steps numbered from `first`; how many did not go
/// as expected.
async fn demo_gateway(
    gateway: &gateway::RunningGateway,
    access_token: &str,
    first: usize,
) -> Result<usize, CommandError> {
    println!();
    println!("Through the gateway, as an outside client with the dev login's access token:");
    let mut failures = 0;
    let outside: [(Option<&str>, u16, &str); 2] = [
        (
            Some(access_token),
            200,
            "the client reads an order: the gateway trades its access token for a Txn-Token \
             and calls orders as itself",
        ),
        (
            None,
            401,
            "a client without an access token: refused at the gateway",
        ),
    ];
    for (n, (token, expected, story)) in outside.into_iter().enumerate() {
        let mut request = http::Request::get(format!("http://{}/api/orders/7", gateway.address));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| dev_error("demo request", e))?;
        let (status, body) = send(request).await?;
        let verdict = if status == expected {
            "as expected"
        } else {
            failures += 1;
            "UNEXPECTED"
        };
        println!("{}. {story}", first + n);
        println!("   GET {}/api/orders/7", gateway.address);
        println!(
            "   answer {status} ({verdict}): {}",
            body.lines().next().unwrap_or_default()
        );
    }
    Ok(failures)
}

/// Checkpoints and verifies every audit log of the demo, and says so.
fn verify_audit_logs(
    services: &[Service],
    gateway: &gateway::RunningGateway,
) -> Result<(), CommandError> {
    let logs = services
        .iter()
        .map(|s| (s.name, &s.audit, &s.audit_log))
        .chain([("gateway", &gateway.audit, &gateway.audit_log)]);
    for (name, audit, path) in logs {
        audit.checkpoint()?;
        let report = wimse_audit::verify(&[path], &wimse_audit::VerifyOptions::default())
            .map_err(|e| dev_error("audit log", e))?;
        println!(
            "audit log of {name:<8} {}: intact, {} records, {} checkpoints",
            path.display(),
            report.records,
            report.checkpoints
        );
    }
    Ok(())
}
