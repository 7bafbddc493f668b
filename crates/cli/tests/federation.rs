//! Federation end to end with the real binaries: two trust domains, each with its own
//! `wimse server` and `wimse agent`, federated both ways with `wimse server federation
//! create` (`https_spiffe`, bootstrapped with a bundle copied out of band). A workload of one
//! calls a service of the other through `wimse proxy`, with WIT + WPT and with mutual TLS;
//! before the federation the call is refused, after it the callee's policy decides.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    reason = "tests"
)]

mod common;

use common::{Agent, Proxy, Server, TRUST_DOMAIN, free_port, http_full, my_uid_selector};
use std::path::Path;
use std::time::Duration;

/// The second trust domain.
const PARTNER: &str = "partner.example";

/// One trust domain: a server, an agent, and the agent's ID.
struct Domain {
    server: Server,
    agent: Agent,
    agent_id: String,
}

fn domain(dir: &Path, trust_domain: &str) -> Domain {
    let server = Server::start_for(trust_domain, &dir.join("server"), free_port(), &[]);
    let (token, agent_id) = server.join_token();
    let agent = Agent::start(
        &dir.join("agent"),
        &server,
        &["--join-token", token.as_str()],
    );
    Domain {
        server,
        agent,
        agent_id,
    }
}

fn id(trust_domain: &str, path: &str) -> String {
    format!("spiffe://{trust_domain}{path}")
}

/// The partner's service: says who called what.
async fn service() -> u16 {
    let app = axum::Router::new().fallback(
        |method: http::Method, uri: http::Uri, headers: http::HeaderMap| async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .map_or("none", |v| v.to_str().unwrap())
                    .to_owned()
            };
            format!(
                "{method} {} by {} via {}",
                uri.path(),
                header("x-wimse-peer-id"),
                header("x-wimse-peer-auth-method")
            )
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn get(proxy: u16, target: u16, path: &str) -> (u16, String, String) {
    http_full(
        proxy,
        &format!("GET http://127.0.0.1:{target}{path}"),
        &[],
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_calls_a_service_of_a_federated_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let home = domain(&tmp.path().join("home"), TRUST_DOMAIN);
    let partner = domain(&tmp.path().join("partner"), PARTNER);
    let uid = my_uid_selector();
    let w1 = id(TRUST_DOMAIN, "/w1");
    let w2 = id(TRUST_DOMAIN, "/w2");
    let svc = id(PARTNER, "/svc");
    let w1_entry = home.server.create_entry(&w1, &home.agent_id, &[&uid], &[]);
    home.server.create_entry(&w2, &home.agent_id, &[&uid], &[]);
    let svc_entry = partner
        .server
        .create_entry(&svc, &partner.agent_id, &[&uid], &[]);

    // The partner's service lets home's workload 1 read orders, and nothing else.
    let policy = tmp.path().join("policy.cedar");
    std::fs::write(
        &policy,
        format!(
            "permit(principal == Workload::\"{w1}\", action == Action::\"GET\", \
             resource == Service::\"{svc}\") when {{ context.path like \"/api/orders*\" }};\n"
        ),
    )
    .unwrap();
    let up = service().await;
    let inbound = |name: &str, port: u16, extra: &[&str]| {
        let mut args = vec![
            "proxy".to_owned(),
            "inbound".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--upstream".into(),
            format!("http://127.0.0.1:{up}"),
            "--socket".into(),
            partner.agent.socket.display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "--spiffe-id".into(),
            svc.clone(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(tmp.path(), name, &args, port)
    };
    let outbound = |name: &str, who: &str, port: u16, extra: &[&str]| {
        let mut args = vec![
            "proxy".to_owned(),
            "outbound".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--socket".into(),
            home.agent.socket.display().to_string(),
            "--spiffe-id".into(),
            who.to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(tmp.path(), name, &args, port)
    };
    let (p_svc, p_svc_tls) = (free_port(), free_port());
    let (p_w1, p_w2, p_w1_tls, p_w1_own) = (free_port(), free_port(), free_port(), free_port());
    let svc_http = inbound("svc-inbound", p_svc, &[]);
    let svc_tls = inbound("svc-inbound-tls", p_svc_tls, &["--tls"]);
    let _w1 = outbound("w1-outbound", &w1, p_w1, &["--proof", "wit-wpt"]);
    let _w2 = outbound("w2-outbound", &w2, p_w2, &["--proof", "wit-wpt"]);
    let _w1_tls = outbound(
        "w1-outbound-mtls",
        &w1,
        p_w1_tls,
        &["--proof", "mtls", "--server-trust-domain", PARTNER],
    );
    // By default an mTLS client accepts only servers of its own trust domain.
    let _w1_own = outbound("w1-outbound-own", &w1, p_w1_own, &["--proof", "mtls"]);

    // Before any federation the partner does not trust home's credentials.
    let (status, _, body) = tokio::task::spawn_blocking(move || get(p_w1, p_svc, "/api/orders/1"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}\n{}", svc_http.log());
    assert!(
        body.contains(TRUST_DOMAIN),
        "names the untrusted domain: {body}"
    );

    // Federate both ways, and let the two workloads receive each other's bundles.
    partner.server.federate_with(&home.server, tmp.path());
    home.server.federate_with(&partner.server, tmp.path());
    partner.server.admin_ok(&[
        "server",
        "entry",
        "update",
        "--entry-id",
        &svc_entry,
        "--federates-with",
        TRUST_DOMAIN,
    ]);
    home.server.admin_ok(&[
        "server",
        "entry",
        "update",
        "--entry-id",
        &w1_entry,
        "--federates-with",
        PARTNER,
    ]);
    let shown = partner.server.admin_ok(&[
        "server",
        "federation",
        "show",
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    assert!(!shown.contains("Last error"), "{shown}");

    // WIT + WPT: home's workload 1 is now authenticated by the partner's proxy, and the
    // policy lets it read orders.
    let mut last = (0, String::new(), String::new());
    for _ in 0..120 {
        last = tokio::task::spawn_blocking(move || get(p_w1, p_svc, "/api/orders/1"))
            .await
            .unwrap();
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last.0, 200, "{}\n{}", last.2, svc_http.log());
    assert_eq!(last.2, format!("GET /api/orders/1 by {w1} via wit-wpt"));
    // The policy decides on foreign identities like on local ones.
    let (status, _, body) = tokio::task::spawn_blocking(move || get(p_w1, p_svc, "/api/payments"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    // Workload 2 is authenticated too (the partner trusts all of home's trust domain),
    // but its policy has nothing for it.
    let (status, _, body) = tokio::task::spawn_blocking(move || get(p_w2, p_svc, "/api/orders/1"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");

    // Mutual TLS: each side checks the other's X509-SVID against the bundle of the other's
    // trust domain, and each learns the other's identity.
    let mut last = (0, String::new(), String::new());
    for _ in 0..120 {
        last = tokio::task::spawn_blocking(move || get(p_w1_tls, p_svc_tls, "/api/orders/2"))
            .await
            .unwrap();
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last.0, 200, "{}\n{}", last.2, svc_tls.log());
    assert_eq!(last.2, format!("GET /api/orders/2 by {w1} via mtls"));
    assert!(
        last.1.contains(&format!("\r\nx-wimse-peer-id: {svc}\r\n")),
        "{}",
        last.1
    );
    // Without `--server-trust-domain`, the client keeps to its own trust domain.
    let (status, _, body) =
        tokio::task::spawn_blocking(move || get(p_w1_own, p_svc_tls, "/api/orders/2"))
            .await
            .unwrap();
    assert_eq!(status, 502, "{body}");

    // Files for workloads that do not speak the Workload API: the partner's CAs are in
    // `federated_bundle.0.0.pem`, next to home's own `bundle.0.pem`.
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = home.agent.cli(&[
        "agent",
        "api",
        "fetch",
        "x509",
        "--write",
        files.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partner_pem = partner
        .server
        .admin_ok(&["server", "bundle", "show", "--format", "pem"]);
    let written = std::fs::read_to_string(files.join("federated_bundle.0.0.pem")).unwrap();
    // (Both are the same certificates; the two PEM writers differ in line endings.)
    assert_eq!(written.trim(), partner_pem.replace("\r\n", "\n").trim());
    assert!(!files.join("federated_bundle.0.1.pem").exists());
    let shown = home.agent.cli(&["agent", "api", "fetch", "x509"]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains(&format!("[spiffe://{PARTNER}] CA #1")),
        "{shown}"
    );

    // Both servers fetched the other's bundle from its endpoint.
    for (server, other) in [(&home.server, PARTNER), (&partner.server, TRUST_DOMAIN)] {
        let listed = server.admin_ok(&["server", "bundle", "list"]);
        assert!(listed.contains(other), "{listed}");
    }
}
