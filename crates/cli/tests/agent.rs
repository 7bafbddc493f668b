//! The real `wimse server` and `wimse agent` binaries, with this test process as the
//! workload: it fetches its credentials over the agent's socket with the `spiffe` crate
//! (an existing SPIFFE client, unchanged) and with wimse's own client, and checks them
//! with `wimse-core` against the server's published bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::{Agent, Server, TRUST_DOMAIN, free_port, http, line_value, my_uid_selector, wait_for};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use wimse_core::bundle::BundleSet;
use wimse_core::token::Validation;
use wimse_core::token::unix_now;
use wimse_core::x509::{Certificate, verify_svid_chain};
use wimse_core::{TrustDomain, WorkloadId};

/// A server and an agent attested to it with a join token.
struct Domain {
    _dir: tempfile::TempDir,
    server: Server,
    agent: Agent,
    agent_id: String,
}

impl Domain {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(agent_extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("server"), &[]);
        let (token, agent_id) = server.join_token();
        let mut extra = vec!["--join-token", token.as_str()];
        extra.extend(agent_extra);
        let agent = Agent::start(&dir.path().join("agent"), &server, &extra);
        Domain {
            _dir: dir,
            server,
            agent,
            agent_id,
        }
    }

    /// An entry for this test process (by uid) under the agent.
    fn entry_for_me(&self, path: &str, extra: &[&str]) -> String {
        let id = format!("spiffe://{TRUST_DOMAIN}{path}");
        self.server
            .create_entry(&id, &self.agent_id, &[&my_uid_selector()], extra)
    }

    async fn client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.agent.endpoint())
            .await
            .unwrap()
    }

    async fn wimse_client(&self) -> wimse_proto::Workload {
        wimse_proto::Workload::connect(&self.agent.socket)
            .await
            .unwrap()
    }
}

fn bundles_of(server: &Server) -> BundleSet {
    let mut set = BundleSet::new();
    set.insert(server.bundle());
    set
}

/// Polls `fetch` until it succeeds (the agent syncs and mints in the background).
async fn eventually<T, E: std::fmt::Debug, F, Fut>(within: Duration, mut fetch: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match fetch().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(Instant::now() < deadline, "gave up waiting: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_client_fetches_x509_jwt_and_bundles_that_verify_against_the_server() {
    let domain = Domain::start();
    domain.entry_for_me("/billing", &["--x509-ttl", "600", "--hint", "main"]);
    let client = domain.client().await;

    let svid = eventually(Duration::from_secs(10), || client.fetch_x509_svid()).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/billing")
    );
    assert_eq!(svid.hint(), Some("main"));
    let chain: Vec<Certificate> = svid
        .cert_chain()
        .iter()
        .map(|c| Certificate::from_der(c.as_ref().to_vec()).unwrap())
        .collect();
    let published = domain.server.bundle();
    let roots: Vec<Certificate> = published
        .x509_authorities
        .iter()
        .map(|d| Certificate::from_der(d.clone()).unwrap())
        .collect();
    verify_svid_chain(&chain, &roots, unix_now()).unwrap();
    // The key the agent generated is the certificate's.
    let key = wimse_core::jose::SigningKey::from_pkcs8_der(svid.private_key().as_ref()).unwrap();
    assert_eq!(
        wimse_core::x509::subject_public_key_info(&key).unwrap(),
        chain[0].spki_der()
    );

    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let x509_bundles = client.fetch_x509_bundles().await.unwrap();
    let x509_bundle = x509_bundles.get(&td).unwrap();
    assert_eq!(
        x509_bundle.authorities().len(),
        published.x509_authorities.len()
    );

    let jwt = client.fetch_jwt_svid(["payments"], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/billing")
    );
    let verified = wimse_core::token::jwt_svid::verify_jwt_svid(
        jwt.token(),
        &bundles_of(&domain.server),
        "payments",
        &Validation::at(unix_now()),
    )
    .unwrap();
    assert_eq!(
        verified.claims.sub.as_str(),
        format!("spiffe://{TRUST_DOMAIN}/billing")
    );
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(
        jwt_bundles
            .get(&td)
            .unwrap()
            .find_jwt_authority(jwt.key_id())
            .is_some()
    );

    // The agent validates what it issued, for the right audience only.
    let validated = client
        .validate_jwt_token("payments", jwt.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
    assert!(
        client
            .validate_jwt_token("other", jwt.token())
            .await
            .is_err()
    );

    // The WIT profile: a WIT and its key, the WIT verifying against the WIT bundle and
    // bound to the key the agent handed over.
    let mut own = domain.wimse_client().await;
    let wits = own.wit_svids().await.unwrap();
    assert_eq!(wits.len(), 1);
    let wit_bundles = own.wit_bundles().await.unwrap();
    let verified = wimse_core::token::wit::verify_wit(
        &wits[0].token,
        &wit_bundles,
        wimse_core::token::wit::WitProfile::Spiffe,
        &Validation::at(unix_now()),
    )
    .unwrap();
    assert_eq!(
        verified.claims.sub.as_str(),
        format!("spiffe://{TRUST_DOMAIN}/billing")
    );
    assert_eq!(&verified.claims.cnf.jwk, wits[0].key.public_jwk());
    // WIT bundle keys carry `use` `wit-svid` and unique `kid`s.
    let raw = own_wit_bundle_json(&domain).await;
    let keys = raw["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .all(|k| k["use"] == "wit-svid" && k["kid"].is_string())
    );
    let kids: HashSet<_> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), keys.len());
    let server_dir = domain.server.dir.clone();
    domain.agent.stop();
    domain.server.stop();

    assert_server_audit_trail(&server_dir, "/billing");
}

/// The server's audit trail holds the attestation and every issuance for `workload`,
/// verifies, and holds no secret.
fn assert_server_audit_trail(server_dir: &std::path::Path, workload: &str) {
    let audit = server_dir.join("audit.jsonl");
    let out = std::process::Command::new(common::WIMSE)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = std::process::Command::new(common::WIMSE)
        .args(["audit", "show"])
        .arg(&audit)
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    for kind in ["agent_attested", "x509_issued", "wit_issued", "jwt_issued"] {
        assert!(shown.contains(kind), "no {kind} record in:\n{shown}");
    }
    assert!(shown.contains(&format!("spiffe://{TRUST_DOMAIN}{workload}")));
    assert!(wimse_audit::scan_for_secrets(&audit).unwrap().is_empty());
}

async fn own_wit_bundle_json(domain: &Domain) -> serde_json::Value {
    let channel = wimse_proto::channel(&domain.agent.socket).await.unwrap();
    let mut client = wimse_proto::client::SpiffeWorkloadApiClient::with_interceptor(
        channel,
        wimse_proto::SecurityHeader,
    );
    let mut stream = client
        .fetch_wit_bundles(wimse_proto::WitBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let answer = stream.next().await.unwrap().unwrap();
    let json = &answer.bundles[&format!("spiffe://{TRUST_DOMAIN}")];
    serde_json::from_str(json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_reports_readiness_and_counts_workload_api_calls() {
    let health = free_port();
    let domain = Domain::start_with(&["--health-bind", &format!("127.0.0.1:{health}")]);
    domain.entry_for_me("/billing", &[]);
    let client = domain.client().await;
    eventually(Duration::from_secs(10), || client.fetch_x509_svid()).await;

    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || http(health, &format!("GET {path}"), &[], ""))
    };
    assert_eq!(get("/healthz").await.unwrap(), (200, "ok".to_owned()));
    assert_eq!(get("/readyz").await.unwrap(), (200, "ready".to_owned()));
    let (status, metrics) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let line = r#"wimse_agent_workload_api_calls_total{method="FetchX509SVID",code="Ok"}"#;
    assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_source_sees_three_rotations_of_a_five_second_svid() {
    let domain = Domain::start();
    domain.entry_for_me("/short", &["--x509-ttl", "5", "--jwt-ttl", "5"]);
    let source = eventually(Duration::from_secs(10), || {
        spiffe::X509Source::builder()
            .endpoint(domain.agent.endpoint())
            .build()
    })
    .await;
    let mut serials = HashSet::new();
    serials.insert(source.svid().unwrap().leaf().as_ref().to_vec());
    let mut updates = source.updated();
    let started = Instant::now();
    while serials.len() < 4 {
        tokio::time::timeout(Duration::from_secs(60), updates.changed())
            .await
            .expect("a rotation within 60 s")
            .unwrap();
        serials.insert(source.svid().unwrap().leaf().as_ref().to_vec());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fewer than 3 rotations in 60 s"
        );
    }
    // Every certificate the source held was live when it arrived: rotated at half life,
    // before expiry.
    let leaf = Certificate::from_der(source.svid().unwrap().leaf().as_ref().to_vec()).unwrap();
    assert!(leaf.not_after() > unix_now());

    // The WIT stream rotates too, each WIT with a fresh key.
    let mut own = domain.wimse_client().await;
    let mut wits = Box::pin(own.watch_wit(None).await.unwrap());
    let first = wits.next().await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(20), wits.next())
        .await
        .expect("a new WIT before the first expired")
        .unwrap()
        .unwrap();
    assert_ne!(first[0].token, second[0].token);
    assert_ne!(first[0].key.public_jwk(), second[0].key.public_jwk());
    source.shutdown().await;
}

/// The `kid` of a compact JWS.
fn kid_of(token: &str) -> String {
    wimse_core::jose::Jws::parse(token)
        .unwrap()
        .header()
        .kid
        .clone()
        .unwrap()
}

/// The arguments of `wimse server localauthority <step>` for key `id` of `kind`.
fn key_step<'a>(step: &'a str, kind: &'a str, id: &'a str) -> [&'a str; 7] {
    [
        "server",
        "localauthority",
        step,
        "--kind",
        kind,
        "--authority-id",
        id,
    ]
}

/// Activates a successor of `kind`'s key `old` at once and taints `old`, checking the
/// refusals on the way; the successor's ID.
fn rotate_and_taint(server: &Server, kind: &str, old: &str) -> String {
    // An active key cannot be tainted, nor an untainted one revoked.
    let err = server.admin_err(&key_step("taint", kind, old));
    assert!(err.contains("only a retired key"), "{err}");
    server.admin_ok(&["server", "localauthority", "prepare", "--kind", kind]);
    let activated = server.activate_now(kind);
    let err = server.admin_err(&key_step("revoke", kind, old));
    assert!(err.contains("only a tainted key"), "{err}");
    let tainted = server.admin_ok(&key_step("taint", kind, old));
    assert_eq!(line_value(&tainted, "State             :"), "tainted");
    line_value(&activated, "Authority ID      :").to_owned()
}

/// The signing authorities of what the agent hands this workload now: its X509-SVID's
/// CA, its WIT's key and a JWT-SVID's key, in that order.
async fn signers(
    client: &spiffe::WorkloadApiClient,
    own: &wimse_proto::Workload,
) -> Result<Vec<String>, String> {
    let svid = client.fetch_x509_svid().await.map_err(|e| e.to_string())?;
    let leaf = Certificate::from_der(svid.cert_chain()[0].as_ref().to_vec()).unwrap();
    let ca = leaf.wimse_authority().unwrap().to_owned();
    let wits = own.clone().wit_svids().await.map_err(|e| e.to_string())?;
    let jwt = client
        .fetch_jwt_svid(["payments"], None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(vec![ca, kid_of(&wits[0].token), kid_of(jwt.token())])
}

/// The serial number of the agent's own certificate, as the server lists it.
fn agent_serial(server: &Server) -> String {
    line_value(
        &server.admin_ok(&["server", "agent", "list"]),
        "Serial number     :",
    )
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_key_is_tainted_then_revoked_without_a_workload_losing_its_identity() {
    let domain = Domain::start();
    domain.entry_for_me("/billing", &[]);
    let client = domain.client().await;
    let own = domain.wimse_client().await;
    let old = eventually(Duration::from_secs(10), || signers(&client, &own)).await;
    let server = &domain.server;
    let serial = agent_serial(server);

    // The operator rotates every key at once and taints the old ones.
    let kinds = ["x509", "wit", "jwt"];
    let new: Vec<String> = kinds
        .iter()
        .zip(&old)
        .map(|(kind, old)| rotate_and_taint(server, kind, old))
        .collect();

    // Within a few seconds the agent hands the workload credentials signed by the new
    // keys, long before the old ones' half life, and has renewed its own certificate.
    let expected = new.clone();
    eventually(Duration::from_secs(20), || {
        let (client, own, expected) = (&client, &own, &expected);
        async move {
            let now = signers(client, own).await?;
            if now == *expected {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        }
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        || agent_serial(server) != serial,
        || "the agent kept its certificate of the tainted CA".into(),
    );

    // Revoked: gone from the bundle, while what the workload holds verifies and the agent
    // still reaches the server (a JWT-SVID for a new audience is minted there).
    for (kind, old) in kinds.iter().zip(&old) {
        let revoked = server.admin_ok(&key_step("revoke", kind, old));
        assert!(
            revoked.starts_with(&format!("Revoked {kind} authority {old}\n")),
            "{revoked}"
        );
    }
    let bundle = server.bundle();
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert!(bundle.wit_authorities.iter().all(|a| a.kid != old[1]));
    assert!(bundle.jwt_authorities.iter().all(|a| a.kid != old[2]));
    let svid = client.fetch_x509_svid().await.unwrap();
    let chain: Vec<Certificate> = svid
        .cert_chain()
        .iter()
        .map(|c| Certificate::from_der(c.as_ref().to_vec()).unwrap())
        .collect();
    let roots = [Certificate::from_der(bundle.x509_authorities[0].clone()).unwrap()];
    verify_svid_chain(&chain, &roots, unix_now()).unwrap();
    let mut set = BundleSet::new();
    set.insert(bundle);
    let validation = Validation::at(unix_now());
    let mut wimse = own.clone();
    let wit = wimse.wit_svids().await.unwrap().remove(0).token;
    let profile = wimse_core::token::wit::WitProfile::Spiffe;
    wimse_core::token::wit::verify_wit(&wit, &set, profile, &validation).unwrap();
    let jwt = eventually(Duration::from_secs(10), || {
        client.fetch_jwt_svid(["orders"], None)
    })
    .await;
    wimse_core::token::jwt_svid::verify_jwt_svid(jwt.token(), &set, "orders", &validation).unwrap();
    let shown = server.admin_ok(&["server", "localauthority", "show"]);
    assert!(shown.starts_with("Found 3 authorities\n"), "{shown}");
    let log = domain.agent.log();
    assert!(log.contains("signed by a tainted CA; renewing"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_without_an_entry_or_without_the_header_are_refused() {
    let domain = Domain::start();
    // An entry for another uid only: this process matches nothing.
    domain.server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/other"),
        &domain.agent_id,
        &["unix:uid:4242"],
        &[],
    );
    let mut own = domain.wimse_client().await;
    let refused = eventually(Duration::from_secs(10), || {
        let mut own = own.clone();
        async move {
            match own.x509_context().await {
                Err(e) if e.code() == Some(tonic::Code::PermissionDenied) => Ok(e),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        refused.to_string().contains("no identity issued"),
        "{refused}"
    );
    let jwt = own.jwt_svids(&["a".into()], None).await.unwrap_err();
    assert_eq!(jwt.code(), Some(tonic::Code::PermissionDenied));
    let bundles = own.x509_bundles().await.unwrap_err();
    assert_eq!(bundles.code(), Some(tonic::Code::PermissionDenied));
    // The CLI says so in one line and fails.
    let out = domain.agent.cli(&["agent", "api", "fetch", "x509"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no identity issued"));

    // Without the security header, every method is an invalid argument.
    let channel = wimse_proto::channel(&domain.agent.socket).await.unwrap();
    let mut bare = wimse_proto::client::SpiffeWorkloadApiClient::new(channel);
    let status = bare
        .fetch_x509svid(wimse_proto::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");
    let status = bare
        .fetch_jwtsvid(wimse_proto::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A JWT-SVID request without an audience is an invalid argument too.
    let status = own.jwt_svids(&[], None).await.unwrap_err();
    assert_eq!(status.code(), Some(tonic::Code::InvalidArgument));
    let _ = &mut own;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_changes_reach_the_workload_in_about_a_second_and_deletion_removes_the_identity() {
    let domain = Domain::start();
    // Let the agent finish its first sync before the entry exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created = Instant::now();
    let entry = domain.entry_for_me("/late", &[]);
    let mut own = domain.wimse_client().await;
    let context = eventually(Duration::from_secs(10), || {
        let mut own = own.clone();
        async move { own.x509_context().await }
    })
    .await;
    let latency = created.elapsed();
    println!("entry change to workload credential: {latency:?}");
    assert!(
        latency < Duration::from_secs(5),
        "entry took {latency:?} to reach the workload"
    );
    assert_eq!(
        context.svids[0].id.to_string(),
        format!("spiffe://{TRUST_DOMAIN}/late")
    );

    // An open stream learns of the deletion and ends with PermissionDenied.
    let mut stream = Box::pin(own.watch_x509().await.unwrap());
    assert!(stream.next().await.unwrap().is_ok());
    domain
        .server
        .admin_ok(&["server", "entry", "delete", "--entry-id", &entry]);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream answers the deletion")
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Some(tonic::Code::PermissionDenied));
    let again = own.x509_context().await.unwrap_err();
    assert_eq!(again.code(), Some(tonic::Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_abandoned_streams_do_not_disturb_other_workloads() {
    let domain = Domain::start();
    domain.entry_for_me("/steady", &[]);
    let mut own = domain.wimse_client().await;
    eventually(Duration::from_secs(10), || {
        let mut own = own.clone();
        async move { own.x509_context().await }
    })
    .await;
    // Garbage on the socket.
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0",
    ] {
        let mut raw = tokio::net::UnixStream::connect(&domain.agent.socket)
            .await
            .unwrap();
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, garbage).await;
        drop(raw);
    }
    // Clients that open streams and vanish mid-stream.
    for _ in 0..20 {
        let mut other = domain.wimse_client().await;
        let stream = other.watch_x509().await.unwrap();
        drop(stream);
        drop(other);
    }
    // Everyone else is still served.
    let context = own.x509_context().await.unwrap();
    assert_eq!(context.svids.len(), 1);
    assert!(domain.agent.child.id() > 0);
    let out = domain.agent.cli(&["agent", "healthcheck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_from_its_cache_while_the_server_is_down_and_resumes_after_restart() {
    let domain = Domain::start();
    domain.entry_for_me("/resilient", &[]);
    let client = domain.client().await;
    let before = eventually(Duration::from_secs(10), || client.fetch_x509_svid()).await;
    let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
    let Domain {
        _dir: dir,
        server,
        agent,
        agent_id: _,
    } = domain;
    server.stop();
    // X.509, bundles, the WIT and the cached JWT-SVID still come from the agent.
    let during = client.fetch_x509_svid().await.unwrap();
    assert_eq!(during.leaf().as_ref(), before.leaf().as_ref());
    client.fetch_x509_bundles().await.unwrap();
    assert_eq!(
        client.fetch_jwt_svid(["db"], None).await.unwrap().token(),
        jwt.token()
    );
    let mut own = wimse_proto::Workload::connect(&agent.socket).await.unwrap();
    assert_eq!(own.wit_svids().await.unwrap().len(), 1);

    // The agent restarts with its stored credential: the join token is spent, yet the
    // agent comes back and serves.
    let agent_dir = agent.dir.clone();
    let server_dir = dir.path().join("server");
    agent.stop();
    let server = Server::start(&server_dir, &[]);
    let restarted = Agent::start(&agent_dir, &server, &["--join-token", "spent-token"]);
    let client = spiffe::WorkloadApiClient::connect_to(restarted.endpoint())
        .await
        .unwrap();
    let after = eventually(Duration::from_secs(30), || client.fetch_x509_svid()).await;
    assert_eq!(
        after.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/resilient")
    );
    assert!(
        restarted
            .log()
            .contains("resuming with the stored agent credential")
    );
    restarted.stop();
}

#[test]
fn files_are_written_with_spire_names_and_private_modes_and_exec_passes_credentials() {
    let domain = Domain::start();
    domain.entry_for_me("/files", &[]);
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().to_str().unwrap();
    wait_for(
        Duration::from_secs(10),
        || {
            domain
                .agent
                .cli(&["agent", "api", "fetch", "x509", "--write", out_path])
                .status
                .success()
        },
        || domain.agent.log(),
    );
    for (kind, extra) in [
        ("wit", vec![]),
        ("jwt", vec!["--audience", "svc"]),
        ("bundle", vec![]),
    ] {
        let mut args = vec!["agent", "api", "fetch", kind, "--write", out_path];
        args.extend(extra);
        let out = domain.agent.cli(&args);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mode = |name: &str| {
        std::fs::metadata(out_dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("svid.0.key"), 0o600);
    assert_eq!(mode("wit.0.key"), 0o600);
    assert_eq!(mode("jwt.0.jwt"), 0o600);
    assert_eq!(mode("svid.0.pem"), 0o644);
    let chain = wimse_core::x509::certs_from_pem(
        &std::fs::read_to_string(out_dir.path().join("svid.0.pem")).unwrap(),
    )
    .unwrap();
    let roots = wimse_core::x509::certs_from_pem(
        &std::fs::read_to_string(out_dir.path().join("bundle.0.pem")).unwrap(),
    )
    .unwrap();
    let id = verify_svid_chain(&chain, &roots, unix_now()).unwrap();
    assert_eq!(id.to_string(), format!("spiffe://{TRUST_DOMAIN}/files"));
    let key = wimse_core::jose::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(out_dir.path().join("svid.0.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        wimse_core::x509::subject_public_key_info(&key).unwrap(),
        chain[0].spki_der()
    );
    let wit = std::fs::read_to_string(out_dir.path().join("wit.0.jwt")).unwrap();
    assert_eq!(wit.split('.').count(), 3);

    // exec: the command sees its identity and credentials in its environment, and its
    // exit status becomes wimse's.
    let out = domain.agent.exec(&[
        "sh",
        "-c",
        "test -n \"$WIMSE_X509_KEY\" && test -n \"$WIMSE_WIT\" && echo \"$SPIFFE_ID\"",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("spiffe://{TRUST_DOMAIN}/files")
    );
    let out = domain.agent.exec(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wit_profile_off_wit_calls_are_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "wit_profile = false\n").unwrap();
    let domain = Domain::start_with(&["--config", config.to_str().unwrap()]);
    domain.entry_for_me("/nowit", &[]);
    let mut own = domain.wimse_client().await;
    eventually(Duration::from_secs(10), || {
        let mut own = own.clone();
        async move { own.x509_context().await }
    })
    .await;
    let err = own.wit_svids().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unimplemented));
    let err = own.wit_bundles().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unimplemented));
}

#[test]
fn agent_ids_are_those_the_server_lists() {
    let domain = Domain::start();
    let listed = domain.server.admin_ok(&["server", "agent", "list"]);
    assert!(listed.contains(&domain.agent_id), "{listed}");
    let id = WorkloadId::parse(&domain.agent_id).unwrap();
    assert_eq!(id.trust_domain(), &TrustDomain::new(TRUST_DOMAIN).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509pop_agent_serves_workloads_and_attests_again_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, chain, node_key) = common::x509pop_ca_and_node();
    let ca = dir.path().join("agents-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let cert = dir.path().join("node.pem");
    let certs: Vec<Certificate> = chain
        .iter()
        .map(|d| Certificate::from_der(d.clone()).unwrap())
        .collect();
    std::fs::write(&cert, wimse_core::x509::certs_to_pem(&certs)).unwrap();
    let key = dir.path().join("node.key");
    std::fs::write(&key, node_key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();

    let server = Server::start(
        &dir.path().join("server"),
        &["--x509pop-ca-bundle", ca.to_str().unwrap()],
    );
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        &[
            "--x509pop-cert",
            cert.to_str().unwrap(),
            "--x509pop-key",
            key.to_str().unwrap(),
        ],
    );
    let fingerprint = wimse_core::digest::hex(&wimse_core::digest::sha256(&chain[0]));
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/wimse/agent/x509pop/{fingerprint}");
    server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/node-app"),
        &agent_id,
        &[&my_uid_selector()],
        &[],
    );
    let mut own = wimse_proto::Workload::connect(&agent.socket).await.unwrap();
    let first = eventually(Duration::from_secs(10), || {
        let mut own = own.clone();
        async move { own.x509_context().await }
    })
    .await;
    assert_eq!(
        first.svids[0].id.to_string(),
        format!("spiffe://{TRUST_DOMAIN}/node-app")
    );

    // Evicted, the agent proves its node key again and carries on.
    server.admin_ok(&["server", "agent", "evict", "--spiffe-id", &agent_id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent.log().contains("attesting again")
        || !agent.log().contains("agent credential renewed")
    {
        assert!(
            Instant::now() < deadline,
            "agent did not attest again: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = server.admin_ok(&["server", "agent", "list"]);
    assert!(listed.contains(&agent_id), "{listed}");
    // New entries still reach it, so the server accepts its new credential.
    server.create_entry(
        &format!("spiffe://{TRUST_DOMAIN}/node-app-2"),
        &agent_id,
        &[&my_uid_selector()],
        &[],
    );
    let both = eventually(Duration::from_secs(20), || {
        let mut own = own.clone();
        async move {
            let context = own.x509_context().await.map_err(|e| e.to_string())?;
            if context.svids.len() == 2 {
                Ok(context)
            } else {
                Err("one svid".to_owned())
            }
        }
    })
    .await;
    assert_eq!(both.svids.len(), 2);
    let _ = &mut own;
    agent.stop();
    server.stop();
}

#[test]
fn the_file_mode_keeps_files_rotated_and_runs_the_reload_command() {
    let domain = Domain::start();
    domain.entry_for_me("/rotating-files", &["--x509-ttl", "4"]);
    let out_dir = tempfile::tempdir().unwrap();
    let marker = out_dir.path().join("reloads");
    let reload = format!("echo reloaded >> {}", marker.display());
    let mut watcher = std::process::Command::new(common::WIMSE)
        .args(["agent", "api", "fetch", "x509", "--socket"])
        .arg(&domain.agent.socket)
        .arg("--write")
        .arg(out_dir.path())
        .args(["--watch", "--reload-command", &reload])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pem = out_dir.path().join("svid.0.pem");
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "files were not rotated");
        if let Ok(text) = std::fs::read_to_string(&pem) {
            seen.insert(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloads = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        reloads.lines().count() >= 2,
        "reload ran {} times",
        reloads.lines().count()
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
}
