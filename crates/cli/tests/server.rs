//! The real `wimse server` binary on loopback and a unix socket in a temp dir, driven
//! through the CLI as a user would, and its published bundle checked with `wimse-core`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::{Server, WIMSE, free_port, line_value};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::token::Validation;
use wimse_core::token::jwt_svid::verify_jwt_svid;
use wimse_core::token::wit::{WitProfile, verify_wit};
use wimse_core::x509::{self, Certificate, build_csr};
use wimse_core::{TrustDomain, WorkloadId};
use wimse_server::agent_api::client::{AgentApiClient, AgentIdentity, decode_chain};

/// GET over TLS, trusting only the bundle's X.509 roots and expecting the server's name.
fn https_get(addr: SocketAddr, roots: &[Vec<u8>], path: &str) -> (u16, String) {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls_pki_types::CertificateDer::from(der.clone()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn fresh_server_publishes_its_bundle_by_cli_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(
        server
            .admin_ok(&["server", "healthcheck"])
            .contains("healthy")
    );

    let bundle = server.bundle();
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities.len(), 1);
    assert_eq!(bundle.wit_authorities.len(), 1);
    assert!(bundle.sequence >= 1);

    let pem = server.admin_ok(&["server", "bundle", "show"]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // The TLS listener's certificate chains to the published root.
    let (status, body) = https_get(
        server.addr,
        &bundle.x509_authorities,
        "/.well-known/spiffe-bundle",
    );
    assert_eq!(status, 200);
    let over_https =
        TrustBundle::from_spiffe_json(TrustDomain::new("test.example").unwrap(), body.as_bytes())
            .unwrap();
    assert_eq!(over_https, bundle);

    let (status, jwks) = https_get(
        server.addr,
        &bundle.x509_authorities,
        "/.well-known/jwks.json",
    );
    assert_eq!(status, 200);
    assert!(jwks.contains(&bundle.jwt_authorities[0].kid));
    let (status, oidc) = https_get(
        server.addr,
        &bundle.x509_authorities,
        "/.well-known/openid-configuration",
    );
    assert_eq!(status, 200);
    assert!(oidc.contains("jwks_uri"));
    assert_eq!(
        https_get(server.addr, &bundle.x509_authorities, "/readyz").0,
        200
    );
    let (status, metrics) = https_get(server.addr, &bundle.x509_authorities, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("wimse_server_entries"));
    for kind in ["x509", "jwt", "wit"] {
        for (state, count) in [("active", 1), ("prepared", 0), ("tainted", 0)] {
            has_metric(
                &metrics,
                &format!("wimse_server_authorities{{kind=\"{kind}\",state=\"{state}\"}} {count}"),
            );
        }
    }
    server.stop();
}

#[test]
fn entries_are_created_shown_updated_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token_out = server.admin_ok(&["server", "token", "generate", "--ttl", "600"]);
    let first_line = token_out.lines().next().unwrap();
    let token = first_line.split_whitespace().last().unwrap();
    assert!(token.len() >= 40, "token `{token}`");
    let agent_id = token_out
        .lines()
        .find_map(|l| l.strip_prefix("Agent ID: "))
        .unwrap()
        .to_owned();
    assert!(agent_id.starts_with("spiffe://test.example/wimse/agent/join_token/"));
    assert!(
        !agent_id.contains(token),
        "the token must not appear in the agent ID"
    );

    let created = server.admin_ok(&[
        "server",
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://test.example/web",
        "--parent-id",
        &agent_id,
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:path:/usr/bin/web",
        "--x509-ttl",
        "120",
        "--dns",
        "web.test.example",
    ]);
    let entry_id = created
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID         : "))
        .unwrap()
        .to_owned();
    assert!(created.contains("X509-SVID TTL    : 120"));

    let shown = server.admin_ok(&["server", "entry", "show", "--selector", "unix:uid:1000"]);
    assert!(shown.starts_with("Found 1 entry"));
    assert!(shown.contains("spiffe://test.example/web"));

    // A child entry of the web workload (nested parent) is allowed.
    server.admin_ok(&[
        "server",
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://test.example/web/worker",
        "--parent-id",
        "spiffe://test.example/web",
        "--selector",
        "unix:uid:1001",
    ]);

    let updated = server.admin_ok(&[
        "server",
        "entry",
        "update",
        "--entry-id",
        &entry_id,
        "--jwt-ttl",
        "90",
    ]);
    assert!(updated.contains("JWT-SVID TTL     : 90"));
    assert!(
        updated.contains("X509-SVID TTL    : 120"),
        "untouched fields keep their values"
    );
    assert!(updated.contains("unix:path:/usr/bin/web"));

    let deleted = server.admin_ok(&["server", "entry", "delete", "--entry-id", &entry_id]);
    assert!(deleted.contains(&entry_id));
    let err = server.admin_err(&["server", "entry", "show", "--entry-id", &entry_id]);
    assert!(err.contains("no entry"), "{err}");

    // Every change is in the server's audit trail, in order, naming what it concerns
    // and who made it; the join token only by its hash.
    let audit_path = server.dir.join("audit.jsonl");
    let audit = sealed_audit(server);
    assert_eq!(admin_lines_by_this_user(&audit_path), 5);
    let changes = admin_records(&audit);
    let web = "spiffe://test.example/web";
    let expected = [
        ("join token generate".to_owned(), Some(agent_id.as_str())),
        (format!("entry create {entry_id}"), Some(web)),
        (
            changes[2].0.clone(),
            Some("spiffe://test.example/web/worker"),
        ),
        (format!("entry update {entry_id}"), Some(web)),
        (format!("entry delete {entry_id}"), Some(web)),
    ];
    let got: Vec<(String, Option<&str>)> = changes
        .iter()
        .map(|(action, target)| (action.clone(), target.as_deref()))
        .collect();
    assert_eq!(got, expected, "{audit}");
    assert!(changes[2].0.starts_with("entry create "), "{audit}");
    assert!(audit.contains("\"kind\":\"join_token\""), "{audit}");
    assert!(
        !audit.contains(token),
        "the join token leaked into the audit trail"
    );
}

/// How many lines of `wimse audit show` of the log at `path` are admin records made by
/// this test's user (`by=uid=<uid>`).
fn admin_lines_by_this_user(path: &Path) -> usize {
    let shown = Command::new(WIMSE)
        .args(["audit", "show"])
        .arg(path)
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let by = format!(" by=uid={uid}");
    shown
        .lines()
        .filter(|l| l.contains(" admin ") && l.contains(&by))
        .count()
}

/// The server's audit trail, sealed: the server is stopped first.
fn sealed_audit(server: Server) -> String {
    let path = server.dir.join("audit.jsonl");
    server.stop();
    std::fs::read_to_string(path).unwrap()
}

/// The `admin` records of an audit trail: (action, target), in order. Each must name its
/// operator: this test's user (the command it ran inherits the login uid), and the
/// calling process.
fn admin_records(audit: &str) -> Vec<(String, Option<String>)> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let login_uid = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|uid| *uid != u32::MAX);
    audit
        .lines()
        .filter_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let record = &entry["record"];
            (record["event"] == "admin").then(|| {
                let by = &record["operator"];
                assert_eq!(by["uid"], uid, "{line}");
                assert_eq!(by["login_uid"].as_u64(), login_uid.map(u64::from), "{line}");
                assert!(by["pid"].as_u64().is_some_and(|pid| pid > 0), "{line}");
                (
                    record["resource"].as_str().unwrap().to_owned(),
                    record["target"].as_str().map(str::to_owned),
                )
            })
        })
        .collect()
}

#[test]
fn transactions_are_revoked_listed_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let none = server.admin_ok(&["server", "transaction", "list-revoked"]);
    assert_eq!(none, "Found 0 revoked transactions\n");
    let first = server.admin_ok(&["server", "transaction", "revoke", "--txn", "txn-1"]);
    assert!(first.starts_with("Transaction txn-1 revoked\n"), "{first}");
    let field = |text: &str, name: &str| -> i64 { line_value(text, name).parse().unwrap() };
    let revoked_at = field(&first, "Revoked at        :");
    let until = field(&first, "Remembered until  :");
    // As long as the longest delegation, and the clock leeway.
    assert_eq!(until - revoked_at, 86_400 + 60);
    // Revoking again changes nothing but the audit trail.
    let again = server.admin_ok(&["server", "transaction", "revoke", "--txn", "txn-1"]);
    assert_eq!(field(&again, "Revoked at        :"), revoked_at);
    server.admin_ok(&["server", "transaction", "revoke", "--txn", "txn-2"]);
    let listed = server.admin_ok(&["server", "transaction", "list-revoked"]);
    assert!(
        listed.starts_with("Found 2 revoked transactions\n"),
        "{listed}"
    );
    assert!(listed.contains("Transaction       : txn-1"), "{listed}");
    assert!(listed.contains("Transaction       : txn-2"), "{listed}");
    for bad in ["", "a\u{7}b", &"t".repeat(1025)] {
        let err = server.admin_err(&["server", "transaction", "revoke", "--txn", bad]);
        assert!(err.contains("`txn` must be"), "{err}");
    }

    let audit = sealed_audit(server);
    let changes = admin_records(&audit);
    assert_eq!(changes.len(), 3, "{audit}");
    assert!(
        changes
            .iter()
            .all(|(action, target)| action == "transaction revoke" && target.is_none()),
        "{audit}"
    );
    let txns: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|entry| entry["record"]["event"] == "admin")
        .map(|entry| {
            entry["record"]["context"]["txn"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(txns, ["txn-1", "txn-1", "txn-2"], "{audit}");
}

#[test]
fn bad_entries_are_refused_with_a_clear_error_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let agent = "spiffe://test.example/wimse/agent/join_token/abc";
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--spiffe-id",
                "spiffe://other.example/web",
                "--parent-id",
                agent,
                "--selector",
                "unix:uid:1",
            ],
            "not in trust domain",
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://test.example/a/../b",
                "--parent-id",
                agent,
                "--selector",
                "unix:uid:1",
            ],
            "spiffe_id",
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://test.example",
                "--parent-id",
                agent,
                "--selector",
                "unix:uid:1",
            ],
            "must have a path",
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://test.example/web",
                "--parent-id",
                "spiffe://test.example/nobody",
                "--selector",
                "unix:uid:1",
            ],
            "parent_id",
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://test.example/web",
                "--parent-id",
                agent,
                "--selector",
                "unix:uid:1",
                "--dns",
                "not a name",
            ],
            "dns",
        ),
    ];
    for (args, reason) in cases {
        let mut full = vec!["server", "entry", "create"];
        full.extend_from_slice(args);
        let err = server.admin_err(&full);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    let ok = [
        "server",
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://test.example/web",
        "--parent-id",
        agent,
        "--selector",
        "unix:uid:1",
    ];
    server.admin_ok(&ok);
    let err = server.admin_err(&ok);
    assert!(
        err.contains("already exists") || err.contains("exists"),
        "{err}"
    );
    let shown = server.admin_ok(&["server", "entry", "show"]);
    assert!(shown.starts_with("Found 1 entry"), "{shown}");
    server.stop();
}

#[test]
fn restart_keeps_the_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let before = server.bundle();
    let port = server.addr.port();
    server.stop();
    let server = Server::start_at(dir.path(), port, &[]);
    let after = server.bundle();
    assert_eq!(after.x509_authorities, before.x509_authorities);
    assert_eq!(after.jwt_authorities, before.jwt_authorities);
    assert_eq!(after.wit_authorities, before.wit_authorities);
    server.stop();
}

#[test]
fn admin_commands_without_a_server_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WIMSE)
        .args(["server", "bundle", "show", "--admin-socket"])
        .arg(dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1);
    assert!(
        stderr.contains("cannot reach the server's admin socket"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// The agent protocol against the real binary

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn roots(bundle: &TrustBundle) -> Vec<Certificate> {
    bundle
        .x509_authorities
        .iter()
        .map(|der| Certificate::from_der(der.clone()).unwrap())
        .collect()
}

fn new_csr(key: &SigningKey) -> Vec<u8> {
    build_csr(
        key,
        &WorkloadId::parse("spiffe://test.example/csr").unwrap(),
    )
    .unwrap()
}

impl Server {
    /// A join-token agent attested through the agent API: its mTLS identity and ID.
    fn attest_agent(&self, rt: &tokio::runtime::Runtime) -> (AgentIdentity, String) {
        let out = self.admin_ok(&["server", "token", "generate", "--ttl", "600"]);
        let token = out
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned();
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let csr = new_csr(&key);
        let client = AgentApiClient::new(self.addr, &self.bundle(), None).unwrap();
        let answer = rt.block_on(client.attest(&token, &csr)).unwrap();
        let identity = AgentIdentity {
            chain: decode_chain(&answer.svid_chain).unwrap(),
            key: Arc::new(key),
        };
        (identity, answer.spiffe_id)
    }

    /// An mTLS client with `identity`, trusting the server's current bundle.
    fn client(&self, identity: &AgentIdentity) -> AgentApiClient {
        AgentApiClient::new(self.addr, &self.bundle(), Some(identity)).unwrap()
    }
}

#[test]
fn agents_of_hosts_long_gone_are_purged_but_live_and_banned_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    // Agent certificates live 2 s: the first agent's host is gone, so it expires.
    let server = Server::start(dir.path(), &["--agent-svid-ttl", "2"]);
    let rt = runtime();
    let (_, gone) = server.attest_agent(&rt);
    let (_, banned) = server.attest_agent(&rt);
    server.admin_ok(&["server", "agent", "ban", "--spiffe-id", &banned]);
    std::thread::sleep(Duration::from_secs(4));
    let (_, live) = server.attest_agent(&rt);
    // Expired at least a second ago: `gone` and `banned` did; the ban keeps `banned`.
    let purge = |extra: &[&str]| {
        let mut args = vec!["server", "agent", "purge", "--expired-for", "1"];
        args.extend_from_slice(extra);
        server.admin_ok(&args)
    };
    assert_eq!(
        purge(&["--dry-run"]),
        format!("Found 1 expired agent to purge\n{gone}\n")
    );
    assert!(
        server
            .admin_ok(&["server", "agent", "list"])
            .contains(&gone)
    );
    assert_eq!(purge(&[]), format!("Purged 1 expired agent\n{gone}\n"));
    assert_eq!(purge(&[]), "Purged 0 expired agents\n");
    let listed = server.admin_ok(&["server", "agent", "list"]);
    assert!(!listed.contains(&gone), "{listed}");
    assert!(
        listed.contains(&banned) && listed.contains(&live),
        "{listed}"
    );
    // The default keeps every agent that expired within 30 days.
    assert_eq!(
        server.admin_ok(&["server", "agent", "purge", "--dry-run"]),
        "Found 0 expired agents to purge\n"
    );
    let audit = sealed_audit(server);
    let purged: Vec<_> = admin_records(&audit)
        .into_iter()
        .filter(|(action, _)| action == "agent purge")
        .collect();
    assert_eq!(purged, vec![("agent purge".to_owned(), Some(gone))]);
}

#[test]
fn x509pop_agent_attests_to_the_real_binary_and_then_uses_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, chain, node_key) = common::x509pop_ca_and_node();
    let ca_path = dir.path().join("agents-ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = Server::start_at(
        &data,
        free_port(),
        &[
            "--x509pop-ca-bundle",
            ca_path.to_str().unwrap(),
            "--agent-svid-ttl",
            "900",
        ],
    );
    let rt = runtime();
    let svid_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let anonymous = AgentApiClient::new(server.addr, &server.bundle(), None).unwrap();
    let answer = rt
        .block_on(anonymous.attest_x509pop(&chain, &node_key, &new_csr(&svid_key)))
        .unwrap();
    let fingerprint = wimse_core::digest::hex(&wimse_core::digest::sha256(&chain[0]));
    assert_eq!(
        answer.spiffe_id,
        format!("spiffe://test.example/wimse/agent/x509pop/{fingerprint}")
    );
    let svid = decode_chain(&answer.svid_chain).unwrap();
    let remaining = svid[0].not_after() - now();
    assert!(
        (890..=900).contains(&remaining),
        "agent SVID valid {remaining} s more"
    );
    let listed = server.admin_ok(&["server", "agent", "list"]);
    assert!(listed.contains(&answer.spiffe_id), "{listed}");

    let entry_id = server.create_entry(
        "spiffe://test.example/node-web",
        &answer.spiffe_id,
        &["unix:uid:1000"],
        &[],
    );
    let identity = AgentIdentity {
        chain: svid,
        key: Arc::new(svid_key),
    };
    let agent = server.client(&identity);
    let sync = rt.block_on(agent.entries(0, 0)).unwrap();
    assert_eq!(sync.changes.len(), 1);
    let workload_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let issued = rt
        .block_on(agent.x509(&entry_id, &new_csr(&workload_key)))
        .unwrap();
    let bundle = server.bundle();
    let id =
        x509::verify_svid_for_trust_domain(&issued, bundle.trust_domain(), &roots(&bundle), now())
            .unwrap();
    assert_eq!(id.to_string(), "spiffe://test.example/node-web");
    server.stop();
}

/// Prepares and (forcibly) activates the next key of `kind`, checking the refusals on the
/// way; its ID.
fn rotate_now(server: &Server, kind: &str) -> String {
    let prepared = server.admin_ok(&["server", "localauthority", "prepare", "--kind", kind]);
    let id = line_value(&prepared, "Authority ID      :").to_owned();
    assert!(
        prepared.starts_with(&format!("Prepared {kind} authority {id}\n")),
        "{prepared}"
    );
    assert_eq!(line_value(&prepared, "State             :"), "prepared");
    // Preparing again answers the same key.
    let again = server.admin_ok(&["server", "localauthority", "prepare", "--kind", kind]);
    assert_eq!(line_value(&again, "Authority ID      :"), id);
    // Published just now: relying parties may not know it for the refresh hint (300 s).
    let err = server.admin_err(&["server", "localauthority", "activate", "--kind", kind]);
    assert!(err.contains("refresh hint") && err.contains(&id), "{err}");
    let activated = server.activate_now(kind);
    assert!(
        activated.starts_with(&format!("Activated {kind} authority {id}\n")),
        "{activated}"
    );
    assert_eq!(line_value(&activated, "State             :"), "active");
    id
}

/// Asserts that `metrics` has exactly `line`.
fn has_metric(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in {metrics}"
    );
}

#[test]
fn an_operator_rotates_every_key_ahead_of_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let rt = runtime();
    let (identity, agent_id) = server.attest_agent(&rt);
    let entry_id =
        server.create_entry("spiffe://test.example/web", &agent_id, &["unix:uid:1"], &[]);
    let shown = server.admin_ok(&["server", "localauthority", "show"]);
    assert!(shown.starts_with("Found 3 authorities\n"), "{shown}");
    assert_eq!(
        shown.matches("State             : active").count(),
        3,
        "{shown}"
    );
    assert_eq!(shown.matches("(this server)").count(), 3, "{shown}");
    let before = fetch(&rt, &server.client(&identity), &entry_id);
    let old_root = signing_root(&before.x509, &server.bundle(), now()).unwrap();

    let new_ids: Vec<String> = ["x509", "jwt", "wit"]
        .iter()
        .map(|kind| rotate_now(&server, kind))
        .collect();
    let shown = server.admin_ok(&["server", "localauthority", "show"]);
    assert!(shown.starts_with("Found 6 authorities\n"), "{shown}");
    assert_eq!(
        shown.matches("State             : retired").count(),
        3,
        "{shown}"
    );

    // What is issued now is signed by the new keys; what was issued before still verifies,
    // as the retired keys stay published until their end of life.
    let bundle = server.bundle();
    assert_eq!(bundle.x509_authorities.len(), 2);
    assert_eq!(bundle.jwt_authorities.len(), 2);
    assert_eq!(bundle.wit_authorities.len(), 2);
    let after = fetch(&rt, &server.client(&identity), &entry_id);
    let new_root = signing_root(&after.x509, &bundle, now()).unwrap();
    assert_ne!(new_root, old_root);
    assert_eq!(kid(&after.jwt), new_ids[1]);
    assert_eq!(kid(&after.wit), new_ids[2]);
    after.verify(&bundle, now()).unwrap();
    before.verify(&bundle, now()).unwrap();
    // The server's own TLS certificate comes from the new CA too.
    let (status, metrics) = https_get(server.addr, &[new_root], "/metrics");
    assert_eq!(status, 200);
    for kind in ["x509", "jwt", "wit"] {
        has_metric(
            &metrics,
            &format!("wimse_server_authorities{{kind=\"{kind}\",state=\"retired\"}} 1"),
        );
    }

    // A restart keeps the new keys signing.
    let port = server.addr.port();
    let audit_path = server.dir.join("audit.jsonl");
    server.stop();
    let server = Server::start_at(dir.path(), port, &[]);
    let shown = server.admin_ok(&["server", "localauthority", "show"]);
    for id in &new_ids {
        let block = shown
            .split("\n\n")
            .find(|b| b.contains(id.as_str()))
            .unwrap();
        assert!(block.contains("State             : active"), "{shown}");
    }
    let err = server.admin_err(&["server", "localauthority", "activate", "--kind", "jwt"]);
    assert!(err.contains("no jwt authority is prepared"), "{err}");
    server.stop();

    let audit = std::fs::read_to_string(audit_path).unwrap();
    let actions: Vec<String> = admin_records(&audit)
        .into_iter()
        .map(|(action, _)| action)
        .filter(|a| a.starts_with("authority "))
        .collect();
    let expected: Vec<String> = ["x509", "jwt", "wit"]
        .iter()
        .zip(&new_ids)
        .flat_map(|(kind, id)| {
            [
                format!("authority prepare {kind} {id}"),
                format!("authority activate {kind} {id} forced"),
            ]
        })
        .collect();
    assert_eq!(actions, expected, "{audit}");
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Mints an X509-SVID for `id` into `out_dir` and checks the files.
fn check_minted_x509(server: &Server, id: &str, out_dir: &std::path::Path, bundle: &TrustBundle) {
    let out_path = out_dir.to_str().unwrap();
    let written = server.admin_ok(&[
        "server",
        "x509",
        "mint",
        "--spiffe-id",
        id,
        "--ttl",
        "600",
        "--dns",
        "nightly.test",
        "--write",
        out_path,
    ]);
    assert_eq!(written.matches("Wrote ").count(), 3, "{written}");
    let chain = x509::certs_from_pem(&std::fs::read_to_string(out_dir.join("svid.0.pem")).unwrap())
        .unwrap();
    let verified =
        x509::verify_svid_for_trust_domain(&chain, bundle.trust_domain(), &roots(bundle), now())
            .unwrap();
    assert_eq!(verified.to_string(), id);
    assert_eq!(chain[0].dns_sans(), ["nightly.test"]);
    assert!((590..=600).contains(&(chain[0].not_after() - now())));
    let key =
        SigningKey::from_pkcs8_pem(&std::fs::read_to_string(out_dir.join("svid.0.key")).unwrap())
            .unwrap();
    assert_eq!(
        x509::subject_public_key_info(&key).unwrap(),
        chain[0].spki_der()
    );
    assert_eq!(mode(&out_dir.join("svid.0.key")), 0o600);
    assert!(
        std::fs::read_to_string(out_dir.join("bundle.0.pem"))
            .unwrap()
            .contains("CERTIFICATE")
    );
}

#[test]
fn an_operator_mints_credentials_for_an_identity_no_agent_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let id = "spiffe://test.example/batch/nightly";
    let out_dir = dir.path().join("minted");
    std::fs::create_dir(&out_dir).unwrap();
    let out_path = out_dir.to_str().unwrap();
    let bundle = server.bundle();

    // An X509-SVID, written as the agent writes them.
    check_minted_x509(&server, id, &out_dir, &bundle);

    // A JWT-SVID, printed.
    let jwt = server.admin_ok(&[
        "server",
        "jwt",
        "mint",
        "--spiffe-id",
        id,
        "--audience",
        "reports",
    ]);
    let mut set = BundleSet::new();
    set.insert(bundle.clone());
    let claims = verify_jwt_svid(jwt.trim(), &set, "reports", &Validation::at(now())).unwrap();
    assert_eq!(claims.claims.sub.to_string(), id);
    assert!((290..=300).contains(&(claims.claims.exp - now())));

    // A WIT bound to the key written beside it.
    server.admin_ok(&[
        "server",
        "wit",
        "mint",
        "--spiffe-id",
        id,
        "--write",
        out_path,
    ]);
    let wit = std::fs::read_to_string(out_dir.join("wit.0.jwt")).unwrap();
    let verified = verify_wit(&wit, &set, WitProfile::Spiffe, &Validation::at(now())).unwrap();
    let wit_key =
        SigningKey::from_pkcs8_pem(&std::fs::read_to_string(out_dir.join("wit.0.key")).unwrap())
            .unwrap();
    assert_eq!(verified.claims.sub.to_string(), id);
    assert_eq!(verified.claims.cnf.jwk.bare(), wit_key.public_jwk().bare());
    assert_eq!(mode(&out_dir.join("wit.0.key")), 0o600);

    // Refused with one line: the server's own IDs, the trust domain itself, another trust
    // domain, a bad lifetime.
    for (args, reason) in [
        (
            vec![
                "x509",
                "mint",
                "--spiffe-id",
                "spiffe://test.example/wimse/server",
            ],
            "reserved",
        ),
        (
            vec![
                "jwt",
                "mint",
                "--spiffe-id",
                "spiffe://test.example",
                "--audience",
                "x",
            ],
            "the trust domain itself",
        ),
        (
            vec![
                "jwt",
                "mint",
                "--spiffe-id",
                "spiffe://other.example/a",
                "--audience",
                "x",
            ],
            "not in trust domain",
        ),
        (
            vec!["wit", "mint", "--spiffe-id", id, "--ttl", "0"],
            "`ttl`",
        ),
    ] {
        let mut full = vec!["server"];
        full.extend(args);
        let err = server.admin_err(&full);
        assert!(err.contains(reason), "{full:?}: {err}");
    }

    // Each mint is in the audit trail, by the credential's fingerprint only.
    let audit = sealed_audit(server);
    let minted: Vec<(String, Option<String>)> = admin_records(&audit)
        .into_iter()
        .filter(|(action, _)| action.starts_with("mint "))
        .collect();
    let expected: Vec<(String, Option<String>)> = ["x509", "jwt", "wit"]
        .iter()
        .map(|kind| (format!("mint {kind}"), Some(id.to_owned())))
        .collect();
    assert_eq!(minted, expected, "{audit}");
    assert!(!audit.contains(jwt.trim()) && !audit.contains(wit.as_str()));
}

/// Credentials of one entry obtained at one moment.
struct Credentials {
    x509: Vec<Certificate>,
    wit: String,
    jwt: String,
}

const AUDIENCE: &str = "https://api.test.example";

fn fetch(rt: &tokio::runtime::Runtime, agent: &AgentApiClient, entry_id: &str) -> Credentials {
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let mut jwk = key.public_jwk().clone();
    jwk.alg = Some("ES256".into());
    rt.block_on(async {
        Credentials {
            x509: agent.x509(entry_id, &new_csr(&key)).await.unwrap(),
            wit: agent.wit(entry_id, &jwk).await.unwrap(),
            jwt: agent.jwt(entry_id, &[AUDIENCE.to_owned()]).await.unwrap(),
        }
    })
}

/// The `kid` of a compact JWS.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&wimse_core::jose::b64::decode(header).unwrap()).unwrap();
    json["kid"].as_str().unwrap().to_owned()
}

/// The bundle root that the chain verifies with, alone.
fn signing_root(chain: &[Certificate], bundle: &TrustBundle, at: i64) -> Option<Vec<u8>> {
    roots(bundle).into_iter().find_map(|root| {
        x509::verify_svid_for_trust_domain(
            chain,
            bundle.trust_domain(),
            std::slice::from_ref(&root),
            at,
        )
        .ok()
        .map(|_| root.der().to_vec())
    })
}

impl Credentials {
    /// Whether all three verify against `bundle` at `at`.
    fn verify(&self, bundle: &TrustBundle, at: i64) -> Result<(), String> {
        x509::verify_svid_for_trust_domain(&self.x509, bundle.trust_domain(), &roots(bundle), at)
            .map_err(|e| format!("x509: {e}"))?;
        let mut set = BundleSet::new();
        set.insert(bundle.clone());
        verify_wit(&self.wit, &set, WitProfile::Spiffe, &Validation::at(at))
            .map_err(|e| format!("wit: {e}"))?;
        verify_jwt_svid(&self.jwt, &set, AUDIENCE, &Validation::at(at))
            .map_err(|e| format!("jwt: {e}"))?;
        Ok(())
    }

    /// When the first of them expires.
    fn expiry(&self) -> i64 {
        let exp = |token: &str| {
            let payload = token.split('.').nth(1).unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(&wimse_core::jose::b64::decode(payload).unwrap()).unwrap();
            json["exp"].as_i64().unwrap()
        };
        self.x509[0]
            .not_after()
            .min(exp(&self.wit))
            .min(exp(&self.jwt))
    }
}

/// Fetches credentials every second until all three are signed by keys other than `old`'s.
fn wait_for_rotation(
    server: &Server,
    rt: &tokio::runtime::Runtime,
    identity: &AgentIdentity,
    entry_id: &str,
    old: &Credentials,
    old_root: &[u8],
    ttl: i64,
) -> Credentials {
    // Prepared at 1/2, active at 3/4 of the TTL, on a 5 s maintenance tick.
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(ttl).unwrap() + 20);
    loop {
        assert!(
            Instant::now() < deadline,
            "keys did not rotate: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_secs(1));
        let bundle = server.bundle();
        let candidate = fetch(rt, &server.client(identity), entry_id);
        if kid(&candidate.wit) != kid(&old.wit)
            && kid(&candidate.jwt) != kid(&old.jwt)
            && signing_root(&candidate.x509, &bundle, now()).is_some_and(|r| r != old_root)
        {
            return candidate;
        }
    }
}

/// Watches the bundle until the old keys are gone, checking that none of them goes while
/// the credentials it signed are valid, and that those verify against it until then.
fn wait_for_old_keys_to_leave(
    server: &Server,
    old: &Credentials,
    new: &Credentials,
    old_root: &[u8],
    ttl: i64,
) {
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(ttl).unwrap() + 20);
    loop {
        assert!(Instant::now() < deadline, "old keys never left the bundle");
        // Bundle first, then the clock: "valid at `at`" then implies "valid when fetched".
        let bundle = server.bundle();
        let at = now();
        let present = [
            bundle
                .x509_authorities
                .iter()
                .any(|r| r.as_slice() == old_root),
            bundle
                .jwt_authorities
                .iter()
                .any(|a| a.kid == kid(&old.jwt)),
            bundle
                .wit_authorities
                .iter()
                .any(|a| a.kid == kid(&old.wit)),
        ];
        if at < old.expiry() {
            assert_eq!(
                present, [true; 3],
                "an old key left the bundle before its credentials expired"
            );
            old.verify(&bundle, at).unwrap();
        }
        if present == [false; 3] {
            assert!(at >= old.expiry());
            new.verify(&bundle, at).unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Short-lived keys rotate while the server runs: during the overlap the credentials of the
/// old and the new keys both verify against the bundle published at that moment; the old
/// keys leave the bundle only once what they signed has expired; a restart keeps the keys.
#[test]
fn keys_rotate_with_an_overlap_and_a_restart_keeps_the_trust_domain() {
    const TTL: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, format!("ca_ttl = {TTL}\njwt_key_ttl = {TTL}\n")).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = free_port();
    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start_at(&data, port, &args);
    let rt = runtime();
    let (mut identity, agent_id) = server.attest_agent(&rt);
    let entry_id = server.create_entry(
        "spiffe://test.example/rotating",
        &agent_id,
        &["unix:uid:1000"],
        &[],
    );
    let old = fetch(&rt, &server.client(&identity), &entry_id);
    let first_bundle = server.bundle();
    let old_root = signing_root(&old.x509, &first_bundle, now()).unwrap();
    old.verify(&first_bundle, now()).unwrap();

    let new = wait_for_rotation(&server, &rt, &identity, &entry_id, &old, &old_root, TTL);
    // The overlap: old and new credentials against the one bundle published now.
    let overlap = server.bundle();
    let at = now();
    assert!(
        at < old.expiry(),
        "the old credentials should still be valid"
    );
    old.verify(&overlap, at).unwrap();
    new.verify(&overlap, at).unwrap();
    assert!(overlap.x509_authorities.contains(&old_root));
    assert!(
        overlap
            .jwt_authorities
            .iter()
            .any(|a| a.kid == kid(&old.jwt))
    );
    assert!(
        overlap
            .wit_authorities
            .iter()
            .any(|a| a.kid == kid(&old.wit))
    );

    // The agent renews its own certificate from the new CA before the old one goes.
    let renew_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let renewed = rt
        .block_on(server.client(&identity).renew(&new_csr(&renew_key)))
        .unwrap();
    identity = AgentIdentity {
        chain: decode_chain(&renewed.svid_chain).unwrap(),
        key: Arc::new(renew_key),
    };

    // The old keys stay published while what they signed is valid, and then go.
    wait_for_old_keys_to_leave(&server, &old, &new, &old_root, TTL);

    // A restart keeps the trust domain: the same keys, and the new credentials verify.
    let before = server.bundle();
    server.stop();
    let server = Server::start_at(&data, port, &args);
    let after = server.bundle();
    for root in &before.x509_authorities {
        assert!(
            after.x509_authorities.contains(root),
            "an X.509 CA was lost"
        );
    }
    for key in &before.jwt_authorities {
        assert!(after.jwt_authorities.iter().any(|a| a.kid == key.kid));
    }
    for key in &before.wit_authorities {
        assert!(after.wit_authorities.iter().any(|a| a.kid == key.kid));
    }
    new.verify(&after, now()).unwrap();
    let again = fetch(&rt, &server.client(&identity), &entry_id);
    again.verify(&after, now()).unwrap();
    server.stop();
}

// ---------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL database

/// A database of its own on the PostgreSQL server of `WIMSE_TEST_POSTGRES_URL`, dropped
/// when this goes out of scope (after the servers using it, declared later, are stopped).
struct PgDatabase {
    /// The URL of the maintenance database `postgres` on the same server.
    admin_url: String,
    name: String,
    /// The URL of the new database.
    url: String,
}

impl PgDatabase {
    fn create(base_url: &str, rt: &tokio::runtime::Runtime) -> Self {
        use sqlx::Connection as _;
        // postgres://user@host:port/db[?params] -> the same server, another database.
        let (server, _) = base_url.rsplit_once('/').expect("a database in the URL");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("wimse_test_{}_{nanos:08x}", std::process::id());
        let admin_url = format!("{server}/postgres");
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("WIMSE_TEST_POSTGRES_URL is set but unreachable: {e}"));
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
        });
        PgDatabase {
            url: format!("{server}/{name}"),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
                let _ = sqlx::raw_sql(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(&mut conn)
                .await;
            }
        });
    }
}

#[test]
fn two_replicas_on_one_postgres_database_serve_one_trust_domain() {
    let Ok(base_url) = std::env::var("WIMSE_TEST_POSTGRES_URL") else {
        eprintln!("two-replica test NOT RUN: WIMSE_TEST_POSTGRES_URL unset");
        return;
    };
    let rt = runtime();
    let database = PgDatabase::create(&base_url, &rt);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Server::start_at(dir_a.path(), free_port(), &["--datastore", &database.url]);
    let b = Server::start_at(dir_b.path(), free_port(), &["--datastore", &database.url]);

    // Each replica publishes its keys; each picks up the other's on its refresh tick.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (bundle_a, bundle_b) = loop {
        let (ba, bb) = (a.bundle(), b.bundle());
        let both = |x: &TrustBundle| {
            x.x509_authorities.len() == 2
                && x.jwt_authorities.len() == 2
                && x.wit_authorities.len() == 2
        };
        if both(&ba) && both(&bb) {
            break (ba, bb);
        }
        assert!(
            Instant::now() < deadline,
            "bundles never listed both replicas: {ba:?} {bb:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(bundle_a.x509_authorities, bundle_b.x509_authorities);
    assert_eq!(bundle_a.jwt_authorities, bundle_b.jwt_authorities);

    // An agent attested on A syncs and obtains credentials from B.
    let (identity, agent_id) = a.attest_agent(&rt);
    let entry_id = a.create_entry(
        "spiffe://test.example/replicated",
        &agent_id,
        &["unix:uid:1000"],
        &[],
    );
    let on_b = b.client(&identity);
    let sync = rt.block_on(on_b.entries(0, 0)).unwrap();
    assert_eq!(sync.changes.len(), 1);
    let from_b = fetch(&rt, &on_b, &entry_id);
    let from_a = fetch(&rt, &a.client(&identity), &entry_id);
    // Each replica signs with its own keys; the other's bundle verifies them.
    assert_ne!(kid(&from_a.wit), kid(&from_b.wit));
    from_a.verify(&bundle_b, now()).unwrap();
    from_b.verify(&bundle_a, now()).unwrap();
    assert_ne!(
        signing_root(&from_a.x509, &bundle_b, now()),
        signing_root(&from_b.x509, &bundle_b, now())
    );
    a.stop();
    b.stop();
    drop(database);
}
