//! `wimse dev` as a newcomer runs it: the real binary in a temp dir, `dev.json` read back,
//! and the README's commands driven against it from "a second terminal".
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::{WIMSE, free_port, terminate};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `wimse dev`, killed on drop (so a failing test leaves nothing behind that
/// holds the demo ports).
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dev(dir: &Path, port: u16) -> Dev {
    let log = std::fs::File::create(dir.join("dev.log")).unwrap();
    let child = Command::new(WIMSE)
        .args(["dev", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let dev = Dev(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !dir.join("dev.json").exists() {
        assert!(
            Instant::now() < deadline,
            "no dev.json: {}",
            std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dev
}

fn http_get(address: &str, path: &str) -> (u16, String) {
    http_get_with(address, path, "")
}

/// GET with `headers` (each line ending in CRLF).
fn http_get_with(address: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

fn wimse(args: &[&str]) -> std::process::Output {
    Command::new(WIMSE)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn dev_brings_up_a_trust_domain_that_the_readme_commands_use_and_keeps_it_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut dev = start_dev(dir.path(), port);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("dev.json")).unwrap())
            .unwrap();
    for key in [
        "trust_domain",
        "server_address",
        "admin_socket",
        "agent_socket",
        "agent_id",
        "bundle_path",
    ] {
        assert!(json.get(key).is_some(), "dev.json lacks {key}: {json}");
    }
    let services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), 3);
    for service in services {
        assert!(service["name"].is_string() && service["id"].is_string());
        // A call without credentials is refused with a problem body.
        let (status, text) = http_get(service["address"].as_str().unwrap(), "/");
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("missing-credentials"), "{text}");
    }

    // A second terminal: the user's own identity from the agent...
    let socket = json["agent_socket"].as_str().unwrap();
    let out = wimse(&["agent", "api", "fetch", "x509", "--socket", socket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let user_id = json["user_id"].as_str().unwrap();
    let first_id = listing
        .lines()
        .find(|l| l.starts_with("SPIFFE ID"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap();
    assert_eq!(first_id, user_id, "the user's identity is the default one");
    // ...and the admin socket.
    let admin = json["admin_socket"].as_str().unwrap();
    let out = wimse(&["server", "entry", "show", "--admin-socket", admin]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/demo/orders"));
    let bundle_before = std::fs::read_to_string(json["bundle_path"].as_str().unwrap()).unwrap();

    // An outside client: the dev login's access token admits it at the gateway, which
    // calls orders as itself within a transaction for the token's user.
    let gateway = json["gateway"]["address"].as_str().unwrap().to_owned();
    let token =
        std::fs::read_to_string(json["gateway"]["access_token_path"].as_str().unwrap()).unwrap();
    let through_gateway = |gateway: &str, token: &str| {
        http_get_with(
            gateway,
            "/api/orders/7",
            &format!("Authorization: Bearer {token}\r\n"),
        )
    };
    let (status, text) = through_gateway(&gateway, &token);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("for spiffe://example.org/demo/gateway in transaction"),
        "{text}"
    );
    assert!(text.contains("of user:dev-user (scope orders)"), "{text}");
    let (status, text) = http_get(&gateway, "/api/orders/7");
    assert_eq!(status, 401, "{text}");

    assert!(terminate(&mut dev.0), "wimse dev did not stop cleanly");
    std::fs::remove_file(dir.path().join("dev.json")).unwrap();

    // Again in the same directory: the same trust domain (same roots), working again.
    let mut again = start_dev(dir.path(), port);
    let bundle_after = std::fs::read_to_string(json["bundle_path"].as_str().unwrap()).unwrap();
    assert_eq!(bundle_before, bundle_after);
    let out = wimse(&["agent", "api", "fetch", "x509", "--socket", socket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The dev login keeps its key: the first run's access token still admits (at the
    // gateway's address of this run: another test may hold the default port).
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("dev.json")).unwrap())
            .unwrap();
    let (status, text) = through_gateway(json["gateway"]["address"].as_str().unwrap(), &token);
    assert_eq!(status, 200, "{text}");
    assert!(terminate(&mut again.0));
}

#[test]
fn dev_demo_runs_the_basic_scenario_and_verifies_the_audit_logs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WIMSE)
        .args([
            "dev",
            "--demo",
            "--bind",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("as expected").count(), 7, "{stdout}");
    assert!(
        stdout.contains("gateway.jsonl: intact, 2 records"),
        "{stdout}"
    );
    assert!(stdout.contains("answer 403"), "{stdout}");
    assert!(stdout.contains("orders.jsonl: intact"), "{stdout}");
    // The logs verify from the command line too, and hold no secret.
    let orders_log = dir.path().join("audit/orders.jsonl");
    let verify = wimse(&["audit", "verify", orders_log.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        wimse_audit::scan_for_secrets(&orders_log)
            .unwrap()
            .is_empty()
    );
}
