//! The real `wimse server` binary on loopback and a unix socket in a temp dir, driven
//! through the CLI as a user would, and its published bundle checked with `wimse-core`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wimse_core::TrustDomain;
use wimse_core::bundle::TrustBundle;

const WIMSE: &str = env!("CARGO_BIN_EXE_wimse");

struct Server {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(dir: &Path) -> Self {
        Self::start_at(dir, free_port())
    }

    fn start_at(dir: &Path, port: u16) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(WIMSE)
            .args([
                "server",
                "run",
                "--trust-domain",
                "test.example",
                "--bind",
                &addr.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child,
            dir: dir.to_owned(),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(server.socket().exists() && TcpStream::connect(addr).is_ok()) {
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("server.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn admin(&self, args: &[&str]) -> Output {
        Command::new(WIMSE)
            .args(args)
            .arg("--admin-socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn admin_err(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line of error: {stderr}");
        stderr
    }

    fn bundle(&self) -> TrustBundle {
        let json = self.admin_ok(&["server", "bundle", "show", "--format", "spiffe"]);
        TrustBundle::from_spiffe_json(TrustDomain::new("test.example").unwrap(), json.as_bytes())
            .unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(mut self) {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "server exited with {status}: {}",
                    self.log()
                );
                break;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.socket().exists(), "admin socket left behind");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let server = Server::start(dir.path());
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
    server.stop();
}

#[test]
fn entries_are_created_shown_updated_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
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
    server.stop();
}

#[test]
fn bad_entries_are_refused_with_a_clear_error_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
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
    let server = Server::start(dir.path());
    let before = server.bundle();
    let port = server.addr.port();
    server.stop();
    let server = Server::start_at(dir.path(), port);
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
