//! Workload-to-workload authentication and authorization end to end, with the real
//! `wimse server`, `wimse agent` and `wimse proxy` binaries.
//!
//! Three workloads share this test's uid, so the agent offers each process all three
//! identities; each proxy picks its own with `--spiffe-id`. Workload 3 is a plain HTTP
//! service (in this test process) behind `wimse proxy inbound` with a Cedar policy;
//! workload 1 calls it through `wimse proxy outbound` (WIT + WPT), workload 2 through
//! another (`--proof http-sig`), and workload 1 again over mTLS, this time as a Rust
//! service would, with the library's TLS server and `WimseLayer`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::format_push_string,
    clippy::too_many_lines,
    reason = "tests"
)]

mod common;

use common::{
    Agent, Proxy, Server, TRUST_DOMAIN, WIMSE, free_port, http, http_full, my_uid_selector,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wimse_core::WorkloadId;
use wimse_core::token::exchange::Scope;
use wimse_workload::token_service::{TokenServiceClient, TokenServiceError};
use wimse_workload::{
    AuthConfig, Authenticator, CredentialSource, PeerAllowList, PeerIdentity, Policy, WimseLayer,
};

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

fn policy() -> String {
    format!(
        r#"
permit(principal == Workload::"{w1}", action == Action::"GET", resource == Service::"{w3}")
when {{ context.path like "/api/orders*" }};
permit(principal == Workload::"{w2}", action == Action::"POST", resource == Service::"{w3}")
when {{ context.path like "/api/payments*" }};
permit(principal == Workload::"{w1}", action == Action::"POST", resource == Service::"{w3}")
when {{ context.path == "/api/refunds" && context has txn && context.txn.scopes.contains("refunds") }};
permit(principal == Workload::"{gw}", action == Action::"GET", resource == Service::"{w3}")
when {{ context.path like "/api/orders*" && context has txn && context.txn.scopes.contains("orders") }};
permit(principal == Workload::"{w2}", action == Action::"GET", resource == Service::"{w3}")
when {{ context.path like "/api/orders*" && context has txn && context.txn has act
        && context.txn.act == "{w2}" && context.txn.scopes.contains("orders") }};
permit(principal == Workload::"{w1}", action == Action::"POST", resource == Service::"{w3}")
when {{ context.path == "/SpiffeWorkloadAPI/ValidateJWTSVID" }};
permit(principal == Workload::"{gw}", action == Action::"POST", resource == Service::"{w3}")
when {{ (context.path like "/SpiffeWorkloadAPI/*" || context.path like "/api/uploads*")
        && context has txn && context.txn.scopes.contains("orders") }};
"#,
        w1 = id("/w1"),
        w2 = id("/w2"),
        w3 = id("/w3"),
        gw = id("/gw"),
    )
}

/// Workload 3's own service: says who called what.
async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(
        |method: http::Method, uri: http::Uri, headers: http::HeaderMap| async move {
            let txn = headers
                .get("txn-token")
                .map(|v| format!(" with txn-token {}", v.to_str().unwrap()))
                .unwrap_or_default();
            format!(
                "{method} {} by {} via {}{txn}",
                uri.path(),
                headers
                    .get("x-wimse-peer-id")
                    .map_or("nobody", |v| v.to_str().unwrap()),
                headers
                    .get("x-wimse-peer-auth-method")
                    .map_or("nothing", |v| v.to_str().unwrap()),
            )
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct Domain {
    dir: tempfile::TempDir,
    server: Server,
    agent: Agent,
    /// The agent's SPIFFE ID, the parent of the domain's entries.
    agent_id: String,
    /// The outside authorization server whose access tokens may start transactions.
    login: wimse_core::jose::SigningKey,
    /// The TOML naming where its keys are (`jwks_file` or `jwks_uri`).
    login_keys: String,
}

/// The outside authorization server's issuer name, and the audience its tokens name for us.
const LOGIN_ISSUER: &str = "https://login.example.com";
const LOGIN_AUDIENCE: &str = "wimse";

fn domain(ttl: &str) -> Domain {
    let login = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    domain_with_login(ttl, login, None)
}

/// A domain whose token service accepts the access tokens `login` signs as `login-1`,
/// taking its keys from `keys` (the TOML naming them), or from `login-jwks.json` in the
/// domain's directory.
fn domain_with_login(ttl: &str, login: wimse_core::jose::SigningKey, keys: Option<&str>) -> Domain {
    domain_configured(ttl, login, keys, 300)
}

/// [`domain_with_login`] with Txn-Tokens that live `txn_token_ttl` seconds.
fn domain_configured(
    ttl: &str,
    login: wimse_core::jose::SigningKey,
    keys: Option<&str>,
    txn_token_ttl: u32,
) -> Domain {
    let dir = tempfile::tempdir().unwrap();
    // The token service: the gateway may start transactions for the login server's users.
    let jwks = dir.path().join("login-jwks.json");
    std::fs::write(&jwks, login_jwks(&[(&login, "login-1")])).unwrap();
    let keys = keys.map_or_else(
        || format!("jwks_file = \"{}\"", jwks.display()),
        str::to_owned,
    );
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[token_service]\nrequesters = [\"{gw}\"]\ntxn_token_ttl = {txn_token_ttl}\n\n\
             [[token_service.issuers]]\n\
             issuer = \"{LOGIN_ISSUER}\"\naudience = \"{LOGIN_AUDIENCE}\"\n\
             {keys}\nsubject_prefix = \"user:\"\n\n\
             [[token_service.self_signed]]\nrequester = \"{w2}\"\nmax_scope = \"reports orders\"\n\
             subjects = [\"nightly-report\"]\nunsigned_json = true\n\n\
             [[token_service.delegation]]\nactor = \"{w2}\"\nmax_scope = \"orders\"\nlifetime = 600\n\n\
             [[token_service.delegation]]\nactor = \"{w1}\"\nmax_scope = \"orders\"\n",
            gw = id("/gw"),
            w1 = id("/w1"),
            w2 = id("/w2"),
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("server"),
        &["--config", config.to_str().unwrap()],
    );
    let (token, agent_id) = server.join_token();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        &["--join-token", token.as_str()],
    );
    for w in ["/w1", "/w2", "/w3", "/gw"] {
        server.create_entry(
            &id(w),
            &agent_id,
            &[&my_uid_selector()],
            &["--x509-ttl", ttl, "--jwt-ttl", ttl],
        );
    }
    Domain {
        dir,
        server,
        agent,
        agent_id,
        login,
        login_keys: keys,
    }
}

/// The login server's JWK Set publishing `keys` under their `kid`s.
fn login_jwks(keys: &[(&wimse_core::jose::SigningKey, &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(key, kid)| {
            let mut jwk = key.public_jwk().clone();
            jwk.kid = Some((*kid).into());
            jwk
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn socket_arg(d: &Domain) -> String {
    d.agent.socket.display().to_string()
}

fn inbound(d: &Domain, port: u16, upstream: u16, health: u16) -> Proxy {
    inbound_with(d, port, upstream, health, &[])
}

fn inbound_with(d: &Domain, port: u16, upstream: u16, health: u16, extra: &[&str]) -> Proxy {
    inbound_as(d, "/w3", port, upstream, health, extra)
}

/// [`inbound_with`] for workload `who` (the policy is still workload 3's).
fn inbound_as(
    d: &Domain,
    who: &str,
    port: u16,
    upstream: u16,
    health: u16,
    extra: &[&str],
) -> Proxy {
    let policy = d.dir.path().join("policy.cedar");
    std::fs::write(&policy, policy_text()).unwrap();
    let audit = d.dir.path().join("audit.jsonl");
    Proxy::start(
        d.dir.path(),
        &format!("{}-inbound", who.trim_start_matches('/')),
        &[
            "proxy",
            "inbound",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &format!("http://127.0.0.1:{upstream}"),
            "--socket",
            &socket_arg(d),
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            "--spiffe-id",
            &id(who),
            "--health-bind",
            &format!("127.0.0.1:{health}"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
        port,
    )
}

fn policy_text() -> String {
    policy()
}

fn outbound(d: &Domain, who: &str, port: u16, proof: &str, health: u16) -> Proxy {
    outbound_with(d, who, port, &["--proof", proof], health)
}

fn outbound_with(d: &Domain, who: &str, port: u16, extra: &[&str], health: u16) -> Proxy {
    Proxy::start(
        d.dir.path(),
        &format!("{}-outbound-{port}", who.trim_start_matches('/')),
        &[
            "proxy",
            "outbound",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--socket",
            &socket_arg(d),
            "--spiffe-id",
            &id(who),
            "--health-bind",
            &format!("127.0.0.1:{health}"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
        port,
    )
}

/// GET `path` from `127.0.0.1:port` over one TLS connection made with `config`: the
/// status and the body.
async fn get_over_tls(port: u16, config: rustls::ClientConfig, path: &str) -> (u16, bytes::Bytes) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("w3.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get(path)
                .header("host", "127.0.0.1")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, body)
}

/// GET/POST through an outbound proxy to workload 3's inbound proxy.
fn via(proxy: u16, method: &str, target: u16, path: &str, body: &str) -> (u16, String) {
    let line = format!("{method} http://127.0.0.1:{target}{path}");
    let blocking = move || http(proxy, &line, &[], body);
    blocking()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workloads_each_get_only_their_own_api_with_every_auth_method() {
    let d = domain("3600");
    let up = upstream().await;
    let (p3, p1, p2) = (free_port(), free_port(), free_port());
    let (h3, h1) = (free_port(), free_port());
    let w3 = inbound(&d, p3, up, h3);
    let w1 = outbound(&d, "/w1", p1, "wit-wpt", h1);
    // Workload 2 also asks workload 3 to sign its responses, and refuses unsigned ones.
    let w2 = outbound_with(
        &d,
        "/w2",
        p2,
        &["--proof", "http-sig", "--require-signed-response"],
        free_port(),
    );

    let call = |proxy, method: &'static str, path: &'static str, body: &'static str| {
        tokio::task::spawn_blocking(move || via(proxy, method, p3, path, body))
    };
    // Workload 1 (WIT + WPT) may read orders, nothing else.
    let (status, body) = call(p1, "GET", "/api/orders/7", "").await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert_eq!(
        body,
        format!("GET /api/orders/7 by {} via wit-wpt", id("/w1"))
    );
    let (status, body) = call(p1, "POST", "/api/payments", "{}").await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("urn:wimse:problem:forbidden"), "{body}");

    // Workload 2 (WIT + HTTP Message Signature, with a body) may pay, not read orders.
    // Its outbound proxy checked workload 3's response signature and says who signed it.
    let (status, head, body) = tokio::task::spawn_blocking(move || {
        http_full(
            p2,
            &format!("POST http://127.0.0.1:{p3}/api/payments"),
            &[],
            "{\"amount\":3}",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert!(
        head.contains(&format!("\r\nx-wimse-peer-id: {}\r\n", id("/w3"))),
        "{head}"
    );
    assert!(head.contains("\r\nsignature-input: wimse="), "{head}");
    assert_eq!(
        body,
        format!("POST /api/payments by {} via http-sig", id("/w2"))
    );
    let (status, _) = call(p2, "GET", "/api/orders", "").await.unwrap();
    assert_eq!(status, 403);
    // A service that does not sign (workload 3's own, reached directly): refused.
    let (status, body) = tokio::task::spawn_blocking(move || via(p2, "GET", up, "/x", ""))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("urn:wimse:problem:response-refused"),
        "{body}"
    );

    // No credentials, or bad ones: 400 with a problem body naming the reason.
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            p3,
            "GET /api/orders",
            &[("X-Wimse-Peer-Id", &id("/w1"))],
            "",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:wimse:problem:missing-credentials");
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            p3,
            "GET /api/orders",
            &[
                ("Workload-Identity-Token", "e30.e30.AAAA"),
                ("Workload-Proof-Token", "e30.e30.AAAA"),
            ],
            "",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:wimse:problem:invalid-wit", "{body}");

    // mTLS: workload 3 as a Rust service (library TLS server + WimseLayer), workload 1 and
    // workload 2 as Rust clients presenting their X509-SVIDs.
    let source = |who: &str| {
        CredentialSource::connect(
            d.agent.socket.clone(),
            Some(WorkloadId::parse(&id(who)).unwrap()),
            Duration::from_secs(30),
        )
    };
    let server_source = source("/w3").await.unwrap();
    let tls_port = free_port();
    let layer = WimseLayer::new(
        Arc::new(Authenticator::new(
            AuthConfig::new(format!("https://127.0.0.1:{tls_port}")),
            server_source.clone(),
        )),
        Arc::new(Policy::from_text(&policy()).unwrap()),
    );
    let app = axum::Router::new()
        .fallback(
            |axum::Extension(peer): axum::Extension<PeerIdentity>| async move {
                format!("{} {}", peer.id, peer.method.name())
            },
        )
        .layer(layer);
    let config = Arc::new(
        wimse_workload::tls::server_config(&server_source, PeerAllowList::default()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", tls_port))
        .await
        .unwrap();
    tokio::spawn(wimse_workload::listen::serve(listener, config, app));

    for (who, path, expected) in [("/w1", "/api/orders", 200), ("/w2", "/api/orders", 403)] {
        let client_source = source(who).await.unwrap();
        let mut allow = PeerAllowList::default();
        allow.ids.insert(WorkloadId::parse(&id("/w3")).unwrap());
        let config = wimse_workload::tls::client_config(&client_source, allow).unwrap();
        let (status, body) = get_over_tls(tls_port, config, path).await;
        assert_eq!(status, expected, "{who}");
        if expected == 200 {
            assert_eq!(body, format!("{} mtls", id(who)).as_bytes());
        }
    }

    // The proxies' health and metrics listeners count what happened above.
    let get = |port: u16, path: &'static str| {
        tokio::task::spawn_blocking(move || http(port, &format!("GET {path}"), &[], ""))
    };
    assert_eq!(get(h3, "/healthz").await.unwrap(), (200, "ok".to_owned()));
    assert_eq!(get(h3, "/readyz").await.unwrap(), (200, "ready".to_owned()));
    let (status, metrics) = get(h3, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        r#"wimse_proxy_requests_total{outcome="allowed",auth_method="wit-wpt"} 1"#,
        r#"wimse_proxy_requests_total{outcome="forbidden",auth_method="wit-wpt"} 1"#,
        r#"wimse_proxy_requests_total{outcome="allowed",auth_method="http-sig"} 1"#,
        r#"wimse_proxy_requests_total{outcome="refused",auth_method="none"} 2"#,
        r#"wimse_proxy_refusals_total{reason="missing-credentials"} 1"#,
        r#"wimse_proxy_refusals_total{reason="invalid-wit"} 1"#,
        "wimse_proxy_admission_seconds_count 6",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    let (_, metrics) = get(h1, "/metrics").await.unwrap();
    let line = r#"wimse_proxy_outbound_requests_total{outcome="forwarded"} 2"#;
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in:\n{metrics}"
    );

    // Every decision was audited, and the log verifies.
    drop(w1);
    drop(w2);
    assert!(w3.stop(), "inbound proxy did not stop cleanly");
    let audit = d.dir.path().join("audit.jsonl");
    let out = Command::new(WIMSE)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.matches("\"deny\"").count() >= 4, "{text}");
    assert!(!text.contains("eyJ"), "a token leaked into the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_rotate_under_steady_traffic_without_a_failed_request() {
    // 10 s credentials: the agent rotates them every ~5 s.
    let d = domain("10");
    let up = upstream().await;
    let (p3, p1) = (free_port(), free_port());
    let w3 = inbound(&d, p3, up, free_port());
    let _w1 = outbound(&d, "/w1", p1, "wit-wpt", free_port());

    // Watch workload 1's WIT from here too, to count rotations during the run.
    let watcher = CredentialSource::connect(
        d.agent.socket.clone(),
        Some(WorkloadId::parse(&id("/w1")).unwrap()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    let started = Instant::now();
    let mut requests = 0;
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(25) {
        if let Some(w) = &watcher.current().wit {
            seen.insert(w.token.clone());
        }
        let (status, body) =
            tokio::task::spawn_blocking(move || via(p1, "GET", p3, "/api/orders", ""))
                .await
                .unwrap();
        requests += 1;
        if status != 200 {
            failures.push(format!("{status} {body}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        w3.log()
    );
    assert!(requests > 100, "only {requests} requests");
    assert!(
        seen.len() >= 3,
        "only {} distinct WITs in 25 s: no rotation under traffic",
        seen.len()
    );
    eprintln!(
        "rotation under traffic: {requests} requests, 0 failed, {} WITs",
        seen.len()
    );
}

/// The server's active JWT signing key and its `kid`, read from its data directory: the
/// key its token service signs with, which workloads trust through the JWT bundle.
fn server_jwt_key(server: &Server) -> (wimse_core::jose::SigningKey, String) {
    let keys = server.dir.join("keys");
    for entry in std::fs::read_dir(&keys).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("jwt-") && path.extension().is_some_and(|e| e == "json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            if meta["state"] == "active" {
                let pem = std::fs::read_to_string(path.with_extension("key")).unwrap();
                let key = wimse_core::jose::SigningKey::from_pkcs8_pem(&pem).unwrap();
                return (key, meta["id"].as_str().unwrap().to_owned());
            }
        }
    }
    panic!("no active JWT key in {}", keys.display());
}

fn txn_token(key: &wimse_core::jose::SigningKey, kid: &str, aud: &str, scope: &str) -> String {
    use wimse_core::token::txn::{TxnTokenClaims, issue_txn_token};
    let now = wimse_core::token::unix_now();
    issue_txn_token(
        key,
        kid,
        &TxnTokenClaims {
            iss: None,
            iat: now,
            aud: wimse_core::token::Audience::One(aud.into()),
            exp: now + 300,
            txn: "2a7f6b1e-0c4d-4f7e-9a51-3b8e2d0c9f14".into(),
            sub: "user:alice".into(),
            scope: scope.into(),
            tctx: None,
            rctx: None,
            req_wl: id("/gateway"),
            act: None,
        },
    )
    .unwrap()
}

/// An access token from the outside login server, for `alice`.
fn login_token(d: &Domain, scope: &str) -> String {
    login_token_by(&d.login, "login-1", scope)
}

/// An access token for `alice` signed with the login server's `key` named `kid`.
fn login_token_by(key: &wimse_core::jose::SigningKey, kid: &str, scope: &str) -> String {
    let now = wimse_core::token::unix_now();
    let claims = serde_json::json!({
        "iss": LOGIN_ISSUER, "sub": "alice", "aud": LOGIN_AUDIENCE, "iat": now,
        "exp": now + 300, "scope": scope, "client_id": "web-shop",
    });
    wimse_core::jose::jws::sign(key, Some("at+jwt"), Some(kid), &claims).unwrap()
}

fn scope(text: &str) -> Scope {
    Scope::parse(text).unwrap()
}

/// The status and RFC 6749 `error` of a token service refusal.
fn refused<T: std::fmt::Debug>(result: Result<T, TokenServiceError>) -> (u16, String) {
    match result {
        Err(TokenServiceError::Refused { status, error, .. }) => (status, error),
        other => panic!("not refused: {other:?}"),
    }
}

/// The claims of a Txn-Token `d`'s server issued, verified with its bundle now.
fn issued_txn(d: &Domain, token: &str) -> wimse_core::token::txn::TxnTokenClaims {
    wimse_core::token::txn::verify_txn_token_in(
        token,
        &d.server.bundle(),
        &wimse_core::token::Validation::at(wimse_core::token::unix_now()),
    )
    .unwrap()
}

/// The server's audit trail, sealed: the server is stopped first.
fn server_audit(server: Server) -> String {
    let path = server.dir.join("audit.jsonl");
    server.stop();
    std::fs::read_to_string(path).unwrap()
}

async fn token_service_as(d: &Domain, who: &str) -> TokenServiceClient {
    let source = CredentialSource::connect(
        d.agent.socket.clone(),
        Some(WorkloadId::parse(&id(who)).unwrap()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    TokenServiceClient::new(&source, &d.server.addr.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_token_from_the_token_service_is_verified_authorized_on_and_forwarded_unchanged()
 {
    let d = domain("3600");
    let up = upstream().await;
    let (p3, p1) = (free_port(), free_port());
    let w3 = inbound(&d, p3, up, free_port());
    let _w1 = outbound(&d, "/w1", p1, "wit-wpt", free_port());
    let refund = move |txn: String| {
        tokio::task::spawn_blocking(move || {
            http(
                p1,
                &format!("POST http://127.0.0.1:{p3}/api/refunds"),
                &[("Txn-Token", &txn)],
                "{}",
            )
        })
    };

    // The gateway exchanges alice's access token for a Txn-Token at the server (RFC 8693
    // over mTLS with its X509-SVID).
    let gateway = token_service_as(&d, "/gw").await;
    let details = serde_json::json!({ "order": 7 }).as_object().cloned();
    let issued = gateway
        .start(
            &login_token(&d, "orders refunds"),
            &scope("orders refunds"),
            None,
            details,
        )
        .await
        .unwrap();
    assert_eq!(issued.scope, "orders refunds");
    assert!(issued.expires_in > 0 && issued.expires_in <= 300);
    let good = issued.access_token;

    // Workload 1 may refund only inside a transaction whose scope allows it; the token
    // reaches workload 3's service as it was sent (its WPT was bound to it by `tth`).
    let (status, body) = refund(good.clone()).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert_eq!(
        body,
        format!(
            "POST /api/refunds by {} via wit-wpt with txn-token {good}",
            id("/w1")
        )
    );
    // A replacement narrowed to `orders` keeps the transaction but loses the refund.
    let narrow = gateway
        .replace(&good, &scope("orders"), None)
        .await
        .unwrap()
        .access_token;
    let (status, body) = refund(narrow.clone()).await.unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, _) =
        tokio::task::spawn_blocking(move || via(p1, "POST", p3, "/api/refunds", "{}"))
            .await
            .unwrap();
    assert_eq!(status, 403);

    // The token service refuses, each time with an RFC 6749 error: a scope beyond the
    // access token's, widening by replacement, a forged access token, and a workload that
    // is not a configured requester.
    let login = login_token(&d, "orders");
    assert_eq!(
        refused(
            gateway
                .start(&login, &scope("orders refunds"), None, None)
                .await
        ),
        (400, "invalid_scope".to_owned())
    );
    assert_eq!(
        refused(
            gateway
                .replace(&narrow, &scope("orders refunds"), None)
                .await
        ),
        (400, "invalid_scope".to_owned())
    );
    let forged = {
        let mut parts: Vec<&str> = login.split('.').collect();
        let other = login_token(&d, "payroll");
        parts[2] = other.split('.').nth(2).unwrap();
        parts.join(".")
    };
    assert_eq!(
        refused(gateway.start(&forged, &scope("orders"), None, None).await),
        (400, "invalid_request".to_owned())
    );
    let w1 = token_service_as(&d, "/w1").await;
    assert_eq!(
        refused(w1.start(&login, &scope("orders"), None, None).await),
        (400, "unauthorized_client".to_owned())
    );
    // An over-long request gets an RFC 6749 error too, not a bare 413.
    let huge = "a".repeat(wimse_core::token::exchange::MAX_REQUEST_BYTES);
    assert_eq!(
        refused(gateway.start(&huge, &scope("orders"), None, None).await),
        (400, "invalid_request".to_owned())
    );

    // Not this trust domain's, or not signed by its token service: refused by workload 3
    // with a reason. (No trust domain's service issues the first; it is signed here with
    // this server's own key, read from its data directory, to show that `aud` decides.)
    let (key, kid) = server_jwt_key(&d.server);
    for (token, code) in [
        (
            txn_token(&key, &kid, "other.example", "refunds"),
            "invalid-txn-token",
        ),
        (
            txn_token(
                &wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256)
                    .unwrap(),
                &kid,
                TRUST_DOMAIN,
                "refunds",
            ),
            "invalid-txn-token",
        ),
    ] {
        let (status, body) = refund(token).await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains(&format!("urn:wimse:problem:{code}")),
            "{body}"
        );
    }

    // The server's audit trail (sealed when it stops) records each issue and refusal,
    // never a token.
    let audit = server_audit(d.server);
    assert_eq!(audit.matches("\"txn_token_issued\"").count(), 2, "{audit}");
    assert_eq!(audit.matches("\"token_exchange\"").count(), 5, "{audit}");
    for secret in [&good, &narrow, &login] {
        assert!(!audit.contains(secret.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_starts_its_own_transaction_with_a_self_signed_or_unsigned_subject_token() {
    let d = domain("3600");
    // Workload 2 (a batch job, say) may start transactions for itself or for
    // `nightly-report`, up to `reports orders`: it signs the subject token with its
    // X509-SVID key and sends it over mutual TLS with that very certificate.
    let w2 = token_service_as(&d, "/w2").await;
    let details = serde_json::json!({ "run": 42 }).as_object().cloned();
    let issued = w2
        .start_self_signed("nightly-report", &scope("reports"), None, details)
        .await
        .unwrap();
    let claims = issued_txn(&d, &issued.access_token);
    assert_eq!(claims.sub, "nightly-report");
    assert_eq!(claims.scope, "reports");
    assert_eq!(claims.req_wl, id("/w2"));
    assert_eq!(claims.tctx.unwrap()["run"], 42);
    let own = w2
        .start_self_signed(&id("/w2"), &scope("orders"), None, None)
        .await
        .unwrap();
    assert_eq!(own.scope, "orders");

    // Refused: a subject its entry does not name, a scope beyond it, and a workload
    // without an entry.
    assert_eq!(
        refused(
            w2.start_self_signed("alice", &scope("reports"), None, None)
                .await
        ),
        (400, "invalid_request".to_owned())
    );
    assert_eq!(
        refused(
            w2.start_self_signed("nightly-report", &scope("refunds"), None, None)
                .await
        ),
        (400, "invalid_scope".to_owned())
    );
    let w1 = token_service_as(&d, "/w1").await;
    assert_eq!(
        refused(
            w1.start_self_signed(&id("/w1"), &scope("reports"), None, None)
                .await
        ),
        (400, "unauthorized_client".to_owned())
    );

    // Its entry also lets it name the subject in unsigned JSON (its mutual TLS is the
    // proof), within the same bounds; workload 1 may not.
    let unsigned = w2
        .start_unsigned("nightly-report", &scope("reports"), None, None)
        .await
        .unwrap();
    let claims = issued_txn(&d, &unsigned.access_token);
    assert_eq!(
        (claims.sub.as_str(), claims.scope.as_str()),
        ("nightly-report", "reports")
    );
    assert_eq!(claims.req_wl, id("/w2"));
    assert_eq!(
        refused(
            w2.start_unsigned("alice", &scope("reports"), None, None)
                .await
        ),
        (400, "invalid_request".to_owned())
    );
    assert_eq!(
        refused(
            w1.start_unsigned(&id("/w1"), &scope("reports"), None, None)
                .await
        ),
        (400, "unauthorized_client".to_owned())
    );

    // The audit trail records the issues, and each refusal with the refused subject
    // token's kind and hash; never a token.
    let audit = server_audit(d.server);
    assert_eq!(audit.matches("\"txn_token_issued\"").count(), 3, "{audit}");
    assert_eq!(
        audit.matches("\"kind\":\"self_signed\"").count(),
        3,
        "{audit}"
    );
    assert_eq!(
        audit.matches("\"kind\":\"unsigned_json\"").count(),
        2,
        "{audit}"
    );
    for token in [&issued.access_token, &unsigned.access_token] {
        assert!(!audit.contains(token.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_resumes_a_delegated_transaction_after_its_txn_token_expired() {
    // Txn-Tokens live 5 s here, so that the job outlives the token it came with.
    let login = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    let d = domain_configured("3600", login, None, 5);
    let up = upstream().await;
    let (p3, p2) = (free_port(), free_port());
    let w3 = inbound(&d, p3, up, free_port());
    let _w2 = outbound(&d, "/w2", p2, "wit-wpt", free_port());
    let orders = move |txn: String| {
        tokio::task::spawn_blocking(move || {
            http(
                p2,
                &format!("GET http://127.0.0.1:{p3}/api/orders/7"),
                &[("Txn-Token", &txn)],
                "",
            )
        })
    };
    let now = || wimse_core::token::Validation::at(wimse_core::token::unix_now());

    // Alice's request becomes a job for workload 2, with its Txn-Token, and workload 2
    // takes it on while that token is valid: the transaction is delegated to it, narrowed
    // to `orders`, for its entry's 600 s.
    let gateway = token_service_as(&d, "/gw").await;
    let w2 = token_service_as(&d, "/w2").await;
    let details = serde_json::json!({ "order": 7 }).as_object().cloned();
    let job = gateway
        .start(
            &login_token(&d, "orders refunds"),
            &scope("orders refunds"),
            None,
            details,
        )
        .await
        .unwrap()
        .access_token;
    let delegated = w2.delegate(&job, Some(&scope("orders"))).await.unwrap();
    let started = issued_txn(&d, &job);
    assert_eq!(delegated.scope, "orders");
    assert_eq!(delegated.expires_in, 600);
    let delegation = delegated.access_token;
    let claims =
        wimse_core::token::delegation::verify_delegation(&delegation, &d.server.bundle(), &now())
            .unwrap();
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(claims.txn, started.txn);
    assert_eq!(claims.act.chain().collect::<Vec<_>>(), [id("/w2")]);
    // Workload 3 lets workload 2 read orders only for a transaction delegated to it, not
    // on the job's token as it came.
    let (status, body) = orders(job.clone()).await.unwrap();
    assert_eq!(status, 403, "{body}");

    // Later, the job's token has expired: it can be neither replaced nor delegated, but
    // the delegation earns a fresh Txn-Token of the same transaction naming workload 2
    // as the actor, which workload 3 authorizes.
    while wimse_core::token::unix_now() <= started.exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        refused(w2.replace(&job, &scope("orders"), None).await),
        (400, "invalid_request".to_owned())
    );
    assert_eq!(
        refused(w2.delegate(&job, None).await),
        (400, "invalid_request".to_owned())
    );
    let resumed = w2
        .resume(&delegation, &scope("orders"), None)
        .await
        .unwrap()
        .access_token;
    let claims = issued_txn(&d, &resumed);
    assert_eq!(claims.txn, started.txn);
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(claims.scope, "orders");
    assert_eq!(claims.req_wl, id("/w2"));
    assert_eq!(claims.tctx.unwrap()["order"], 7);
    assert_eq!(
        claims
            .act
            .map(|a| a.chain().map(str::to_owned).collect::<Vec<_>>()),
        Some(vec![id("/w2")])
    );
    let (status, body) = orders(resumed.clone()).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert_eq!(
        body,
        format!(
            "GET /api/orders/7 by {} via wit-wpt with txn-token {resumed}",
            id("/w2")
        )
    );

    // Refused: the delegation presented by another workload (even one that may be
    // delegated to), beyond its scope, and a delegation asked for by a workload without
    // an entry.
    let w1 = token_service_as(&d, "/w1").await;
    assert_eq!(
        refused(w1.resume(&delegation, &scope("orders"), None).await),
        (400, "invalid_request".to_owned())
    );
    assert_eq!(
        refused(w2.resume(&delegation, &scope("orders refunds"), None).await),
        (400, "invalid_scope".to_owned())
    );
    let fresh = gateway
        .start(&login_token(&d, "orders"), &scope("orders"), None, None)
        .await
        .unwrap()
        .access_token;
    let w3_client = token_service_as(&d, "/w3").await;
    assert_eq!(
        refused(w3_client.delegate(&fresh, None).await),
        (400, "unauthorized_client".to_owned())
    );

    // An administrator revokes alice's job: the delegation no longer resumes it, while
    // another transaction is still delegated.
    let out = d
        .server
        .admin_ok(&["server", "transaction", "revoke", "--txn", &started.txn]);
    assert!(
        out.starts_with(&format!("Transaction {} revoked\n", started.txn)),
        "{out}"
    );
    match w2.resume(&delegation, &scope("orders"), None).await {
        Err(TokenServiceError::Refused {
            status: 400,
            error,
            description,
        }) => {
            assert_eq!(error, "invalid_request");
            assert!(description.contains("was revoked"), "{description}");
        }
        other => panic!("resumed after the revocation: {other:?}"),
    }
    let other = gateway
        .start(&login_token(&d, "orders"), &scope("orders"), None, None)
        .await
        .unwrap()
        .access_token;
    w2.delegate(&other, None).await.unwrap();
    let listed = d
        .server
        .admin_ok(&["server", "transaction", "list-revoked"]);
    assert!(
        listed.starts_with("Found 1 revoked transaction\n"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("Transaction       : {}", started.txn)),
        "{listed}"
    );

    // The server's audit trail has the delegations issued and the three refused
    // presentations of alice's, each by kind and hash, and the revocation; workload 3's
    // has who acted for whom.
    let audit = server_audit(d.server);
    assert_eq!(audit.matches("\"delegation_issued\"").count(), 2, "{audit}");
    assert_eq!(
        audit.matches("\"kind\":\"delegation\"").count(),
        5,
        "{audit}"
    );
    let revocation = audit
        .lines()
        .find(|l| l.contains("\"resource\":\"transaction revoke\""))
        .unwrap_or_else(|| panic!("no revocation in {audit}"));
    assert!(
        revocation.contains("\"event\":\"admin\"")
            && revocation.contains(&format!("\"txn\":\"{}\"", started.txn)),
        "{revocation}"
    );
    assert!(!audit.contains(delegation.as_str()));
    // Each issue names its transaction; the delegation and the Txn-Token resumed from it
    // also name the actor.
    let actors = format!(
        "\"delegation\":{{\"mode\":\"delegation\",\"actors\":[\"{}\"]}}",
        id("/w2")
    );
    let issued = |event: &str| -> Vec<&str> {
        audit
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .collect()
    };
    let delegation_issued = issued("delegation_issued");
    assert!(
        delegation_issued[0].contains(&format!("\"txn\":\"{}\"", started.txn))
            && delegation_issued[0].contains(&actors),
        "{audit}"
    );
    let txn_issued = issued("txn_token_issued");
    assert_eq!(txn_issued.len(), 4, "{audit}");
    assert!(txn_issued.iter().all(|l| l.contains("\"txn\":")), "{audit}");
    assert_eq!(
        txn_issued.iter().filter(|l| l.contains(&actors)).count(),
        1,
        "{audit}"
    );
    // (Stopped first: its log is sealed and flushed at SIGTERM.)
    assert!(w3.stop(), "workload 3's proxy did not stop cleanly");
    let w3_audit = std::fs::read_to_string(d.dir.path().join("audit.jsonl")).unwrap();
    assert!(w3_audit.contains(&actors), "{w3_audit}");
}

/// A request refused at the gateway: (request line, headers, status, problem code, part
/// of the `WWW-Authenticate` challenge).
type GatewayCase<'a> = (&'a str, Vec<(String, String)>, u16, &'a str, &'a str);

/// Starts `wimse gateway run` as `/gw`, routing `/api/orders` (scope `orders`) and
/// `/api/refunds` (scope `refunds`) to workload 3's inbound proxy on `p3`.
/// A gateway in front of workload 3 (orders and refunds), with `extra` appended to its
/// configuration file.
fn gateway_with(d: &Domain, port: u16, p3: u16, health: u16, extra: &str) -> Proxy {
    gateway_full(d, port, p3, health, "", extra)
}

/// [`gateway_with`], with `top` among the file's top-level settings.
fn gateway_full(d: &Domain, port: u16, p3: u16, health: u16, top: &str, extra: &str) -> Proxy {
    let config = d.dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "{top}listen = \"127.0.0.1:{port}\"\nserver_address = \"{server}\"\n\
             agent_socket = \"{socket}\"\nspiffe_id = \"{gw}\"\n\
             health_bind = \"127.0.0.1:{health}\"\naudit_log = \"{audit}\"\n\n\
             [[issuers]]\nissuer = \"{LOGIN_ISSUER}\"\naudience = \"{LOGIN_AUDIENCE}\"\n\
             {keys}\n\n\
             [[routes]]\nprefix = \"/api/orders\"\nupstream = \"http://127.0.0.1:{p3}\"\nscope = \"orders\"\n\n\
             [[routes]]\nprefix = \"/api/refunds\"\nupstream = \"http://127.0.0.1:{p3}\"\nscope = \"refunds\"\n{extra}",
            server = d.server.addr,
            socket = socket_arg(d),
            gw = id("/gw"),
            audit = d.dir.path().join("gateway-audit.jsonl").display(),
            keys = d.login_keys,
        ),
    )
    .unwrap();
    Proxy::start(
        d.dir.path(),
        "gateway",
        &["gateway", "run", "--config", config.to_str().unwrap()],
        port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_admits_outside_clients_by_access_token_and_forwards_a_txn_token_inward() {
    let d = domain("3600");
    let up = upstream().await;
    let (p3, pg, health) = (free_port(), free_port(), free_port());
    let _w3 = inbound(&d, p3, up, free_port());
    // One more route, to a service that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gw = gateway_with(
        &d,
        pg,
        p3,
        health,
        &format!(
            "\n[[routes]]\nprefix = \"/api/slow\"\nupstream = \"http://127.0.0.1:{silent_port}\"\n\
             scope = \"orders\"\ntimeout = 1\n"
        ),
    );
    let call = move |line: String, headers: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http_full(pg, &line, &headers, "")
        })
    };
    let bearer = |token: &str| vec![("Authorization".to_owned(), format!("Bearer {token}"))];
    let alice = login_token(&d, "orders refunds");

    // Alice's access token admits her; workload 3 sees the gateway, authenticated by its
    // WIT and WPT, and a Txn-Token the token service issued for alice, narrowed to the
    // route's scope, with where she called from and what she asked for.
    let (status, head, body) = call("GET /api/orders/7?x=1".into(), bearer(&alice))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(
        body.starts_with(&format!(
            "GET /api/orders/7 by {} via wit-wpt with txn-token ",
            id("/gw")
        )),
        "{body}"
    );
    assert!(!head.contains("x-wimse-peer"), "{head}");
    let forwarded = body.rsplit(' ').next().unwrap().trim();
    let claims = issued_txn(&d, forwarded);
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(claims.scope, "orders");
    assert_eq!(claims.req_wl, id("/gw"));
    assert_eq!(claims.rctx.as_ref().unwrap()["req_ip"], "127.0.0.1");
    assert_eq!(claims.tctx.as_ref().unwrap()["path"], "/api/orders/7");
    assert_eq!(claims.tctx.as_ref().unwrap()["method"], "GET");
    assert_eq!(claims.act, None);

    // An assistant acting for alice, whose access token says so (`act`), is admitted too,
    // and the transaction keeps saying who acts, for workload 3's policy and audit.
    let assistant = {
        let now = wimse_core::token::unix_now();
        let claims = serde_json::json!({
            "iss": LOGIN_ISSUER, "sub": "alice", "aud": LOGIN_AUDIENCE, "iat": now,
            "exp": now + 300, "scope": "orders", "act": { "sub": "shopping-assistant" },
        });
        wimse_core::jose::jws::sign(&d.login, Some("at+jwt"), Some("login-1"), &claims).unwrap()
    };
    let (status, _, body) = call("GET /api/orders/9".into(), bearer(&assistant))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let claims = issued_txn(&d, body.rsplit(' ').next().unwrap().trim());
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(
        claims.act.map(|a| a.sub).as_deref(),
        Some("user:shopping-assistant")
    );

    // Whatever identity, credential or context the outside client sends is dropped: only
    // the gateway's own word goes inward.
    let mut smuggled = bearer(&alice);
    for (name, value) in [
        ("X-Wimse-Peer-Id", id("/w1")),
        ("Txn-Token", forwarded.to_owned()),
        ("Workload-Identity-Token", "e30.e30.e30".to_owned()),
    ] {
        smuggled.push((name.to_owned(), value));
    }
    let (status, _, body) = call("GET /api/orders/8".into(), smuggled).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("by {} via wit-wpt", id("/gw"))),
        "{body}"
    );
    assert!(
        !body.contains(forwarded),
        "the client's Txn-Token went inward: {body}"
    );

    // Workload 3's own policy still decides: the gateway may not refund, even in a
    // transaction scoped for refunds (403 from workload 3, passed through).
    let (status, _, body) = call("GET /api/refunds".into(), bearer(&alice))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");

    // An upstream that does not answer within its route's timeout costs the client a 504,
    // not a hung connection.
    let (status, _, body) = call("GET /api/slow".into(), bearer(&alice)).await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream-timeout"), "{body}");
    // With a body, the timeout counts from its end; it still comes.
    let token = format!("Bearer {alice}");
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        http_full(pg, "POST /api/slow", &[("Authorization", &token)], "a body")
    })
    .await
    .unwrap();
    assert_eq!(status, 504, "{body}");

    // Refused at the gateway, with RFC 6750 challenges for the access token.
    let mut forged: Vec<&str> = alice.split('.').collect();
    let other = login_token(&d, "payroll");
    forged[1] = other.split('.').nth(1).unwrap();
    let forged = forged.join(".");
    let payroll_only = login_token(&d, "payroll");
    let cases: Vec<GatewayCase> = vec![
        (
            "GET /api/orders/1",
            vec![],
            401,
            "missing-access-token",
            "bearer realm=\"wimse\"",
        ),
        (
            "GET /api/orders/1",
            bearer(&forged),
            401,
            "invalid-token",
            "error=\"invalid_token\"",
        ),
        (
            "GET /api/orders/1",
            bearer(&payroll_only),
            403,
            "insufficient-scope",
            "error=\"insufficient_scope\"",
        ),
        (
            "GET /api/orders/1",
            vec![("Authorization".into(), format!("Basic {alice}"))],
            400,
            "malformed-authorization",
            "error=\"invalid_request\"",
        ),
        ("GET /api/payments", bearer(&alice), 404, "no-route", ""),
        (
            "GET /api/orders/../refunds",
            bearer(&alice),
            400,
            "ambiguous-path",
            "",
        ),
        (
            "GET /api/orders/%2e%2e/refunds",
            bearer(&alice),
            400,
            "ambiguous-path",
            "",
        ),
    ];
    for (line, headers, want, code, challenge) in cases {
        let (status, head, body) = call(line.into(), headers).await.unwrap();
        assert_eq!(status, want, "{line}: {body}");
        assert!(
            body.contains(&format!("urn:wimse:problem:{code}")),
            "{line}: {body}"
        );
        assert!(head.contains(challenge), "{line}: {head}");
        if challenge.is_empty() {
            assert!(!head.contains("www-authenticate"), "{line}: {head}");
        }
    }

    // Counted by outcome.
    let metrics = tokio::task::spawn_blocking(move || http(health, "GET /metrics", &[], "").1)
        .await
        .unwrap();
    for line in [
        "wimse_gateway_requests_total{outcome=\"forwarded\"} 4",
        "wimse_gateway_requests_total{outcome=\"invalid-token\"} 1",
        "wimse_gateway_requests_total{outcome=\"ambiguous-path\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // Without the token service, nothing goes inward: 503, and the gateway keeps serving.
    d.server.stop();
    let (status, _, body) = call("GET /api/orders/9".into(), bearer(&alice))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("urn:wimse:problem:token-service-unavailable"),
        "{body}"
    );

    // Its signed audit log verifies, holds one record per request, and no token.
    assert!(gw.stop(), "the gateway did not stop cleanly on SIGTERM");
    let audit_path = d.dir.path().join("gateway-audit.jsonl");
    let verify = Command::new(WIMSE)
        .args(["audit", "verify", audit_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert_eq!(
        audit.matches("\"decision\":\"allow\"").count(),
        4,
        "{audit}"
    );
    assert_eq!(
        audit
            .matches(
                "\"delegation\":{\"mode\":\"delegation\",\"actors\":[\"user:shopping-assistant\"]}"
            )
            .count(),
        1,
        "{audit}"
    );
    // (The two timed-out requests are among the refusals, with their reason.)
    assert_eq!(
        audit.matches("\"decision\":\"deny\"").count(),
        10,
        "{audit}"
    );
    assert!(audit.contains("did not answer within 1s"), "{audit}");
    assert!(audit.contains("user:alice"), "{audit}");
    for secret in [
        &alice,
        &assistant,
        &forged,
        &payroll_only,
        &forwarded.to_owned(),
    ] {
        assert!(
            !audit.contains(secret.as_str()),
            "a token is in the audit log"
        );
    }
}

/// A TLS client's certificate chain and key.
type ClientIdentity = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// The outside login server's JWKS endpoint over HTTPS (a certificate of its own, whose
/// PEM is written to `dir`): answers with what `published` holds now and counts the
/// fetches. Returns its URL and the certificate's file.
async fn jwks_endpoint(
    dir: &std::path::Path,
    published: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicUsize>,
) -> (String, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca = dir.join("login-ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let tls = wimse_workload::tls::server_config_from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (published, fetches) = (Arc::clone(&published), Arc::clone(&fetches));
            async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = published.lock().unwrap().clone();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(wimse_workload::listen::serve(listener, Arc::new(tls), app));
    (
        format!("https://127.0.0.1:{port}/.well-known/jwks.json"),
        ca,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_and_token_service_follow_a_login_servers_rotating_jwks_uri() {
    use wimse_core::jose::{Algorithm, SigningKey};
    let login_dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (
        SigningKey::generate(Algorithm::Es256).unwrap(),
        SigningKey::generate(Algorithm::Es256).unwrap(),
    );
    let published = Arc::new(std::sync::Mutex::new(login_jwks(&[(&k1, "login-1")])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (url, ca) = jwks_endpoint(
        login_dir.path(),
        Arc::clone(&published),
        Arc::clone(&fetches),
    )
    .await;
    let keys = format!("jwks_uri = \"{url}\"\njwks_ca_file = \"{}\"", ca.display());
    // Both the token service and the gateway name the login server's keys by URL only.
    let d = domain_with_login("3600", k1, Some(&keys));
    let up = upstream().await;
    let (p3, pg, health) = (free_port(), free_port(), free_port());
    let _w3 = inbound(&d, p3, up, free_port());
    let gw = gateway_with(&d, pg, p3, health, "");
    // Each fetches the set once at start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetches.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "{}", gw.log());
    let get = move |token: String| {
        tokio::task::spawn_blocking(move || {
            http_full(
                pg,
                "GET /api/orders/7",
                &[("Authorization", &format!("Bearer {token}"))],
                "",
            )
        })
    };
    let (status, _, body) = get(login_token(&d, "orders")).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", gw.log());

    // The login server rotates: login-2 is published and signs at once. Neither the
    // gateway nor the token service is restarted or told; each fetches the set again when
    // it first sees the new key.
    *published.lock().unwrap() = login_jwks(&[(&d.login, "login-1"), (&k2, "login-2")]);
    let (status, _, body) = get(login_token_by(&k2, "login-2", "orders")).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(body.contains("with txn-token "), "{body}");
    assert_eq!(fetches.load(Ordering::SeqCst), 4);

    // Tokens naming keys the login server never published are refused, and however many
    // arrive they make no fetch within the cooldown: no amplification against it.
    let attacker = SigningKey::generate(Algorithm::Es256).unwrap();
    for i in 0..5 {
        let (status, _, body) = get(login_token_by(
            &attacker,
            &format!("login-{}", 3 + i),
            "orders",
        ))
        .await
        .unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("invalid-token"), "{body}");
    }
    // Nor is a known `kid` on a forged signature accepted.
    let (status, _, _) = get(login_token_by(&attacker, "login-2", "orders"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
    // The old key still works while it is published.
    let (status, _, _) = get(login_token(&d, "orders")).await.unwrap();
    assert_eq!(status, 200);
    // Operators see the fetches and the keys held.
    let metrics = tokio::task::spawn_blocking(move || http(health, "GET /metrics", &[], "").1)
        .await
        .unwrap();
    for line in [
        format!(
            "wimse_gateway_issuer_key_fetches_total{{issuer=\"{LOGIN_ISSUER}\",outcome=\"ok\"}} 2"
        ),
        format!("wimse_gateway_issuer_keys{{issuer=\"{LOGIN_ISSUER}\"}} 2"),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_https_with_its_own_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = domain("3600");
    let up = upstream().await;
    let (p3, p3_tls, pg) = (free_port(), free_port(), free_port());
    let _w3 = inbound(&d, p3, up, free_port());
    // Workload 3 also behind a mutual-TLS inbound proxy, which the gateway reaches over
    // `https://` with its X509-SVID.
    let policy = d.dir.path().join("policy.cedar");
    let _w3_tls = Proxy::start(
        d.dir.path(),
        "w3-inbound-tls",
        &[
            "proxy",
            "inbound",
            "--tls",
            "--listen",
            &format!("127.0.0.1:{p3_tls}"),
            "--upstream",
            &format!("http://127.0.0.1:{up}"),
            "--socket",
            &socket_arg(&d),
            "--policy",
            policy.to_str().unwrap(),
            "--spiffe-id",
            &id("/w3"),
        ],
        p3_tls,
    );
    // An ordinary web certificate for outside clients, not an SVID.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gateway.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (d.dir.path().join("gw.crt"), d.dir.path().join("gw.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    // Outside clients may present certificates of their own CA (mutual TLS, optional).
    let client_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut client_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    client_ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let client_ca_cert = client_ca.self_signed(&client_ca_key).unwrap();
    let client_ca_file = d.dir.path().join("client-ca.pem");
    std::fs::write(&client_ca_file, client_ca_cert.pem()).unwrap();
    let client_issuer = rcgen::Issuer::new(client_ca, client_ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["shop.test".into()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params
        .signed_by(&client_key, &client_issuer)
        .unwrap();
    let client_identity = (
        vec![client_cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
    );
    // Behind a load balancer on loopback, whose X-Forwarded-For is believed.
    let _gw = gateway_full(
        &d,
        pg,
        p3,
        free_port(),
        "trusted_proxies = [\"127.0.0.0/8\"]\n",
        &format!(
            "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n\
             [[routes]]\nprefix = \"/api/orders-tls\"\nupstream = \"https://127.0.0.1:{p3_tls}\"\n\
             scope = \"orders\"\n",
            cert_file.display(),
            key_file.display(),
            client_ca_file.display(),
        ),
    );

    // A client that trusts only `cert`, presenting `identity` if given; the response to
    // one request, or the TLS error.
    let request_at = |path: &'static str,
                      cert: rustls_pki_types::CertificateDer<'static>,
                      token: String,
                      identity: Option<ClientIdentity>| async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pg))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("gateway.test").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
             X-Forwarded-For: 192.0.2.66, 198.51.100.7, 127.0.0.9\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tls.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let fetch_as = |cert, token, identity| request_at("/api/orders/7", cert, token, identity);
    let fetch = |cert, token| fetch_as(cert, token, None);
    let response = fetch(cert.der().clone(), login_token(&d, "orders"))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let token = body.rsplit(' ').next().unwrap().trim();
    let claims = issued_txn(&d, token);
    // The client's address reaches the Txn-Token over TLS too: the balancer (127.0.0.1)
    // and the proxy before it (127.0.0.9) are trusted, so the client is the hop they
    // report; what the client itself wrote further left is not believed.
    assert_eq!(claims.rctx.as_ref().unwrap()["req_ip"], "198.51.100.7");
    assert_eq!(claims.sub, "user:alice");

    // To the mutual-TLS upstream the gateway proves itself by its X509-SVID alone.
    let over_mtls = request_at(
        "/api/orders-tls/7",
        cert.der().clone(),
        login_token(&d, "orders"),
        None,
    )
    .await
    .unwrap();
    assert!(over_mtls.starts_with("HTTP/1.1 200"), "{over_mtls}");
    assert!(
        over_mtls.contains(&format!(
            "GET /api/orders-tls/7 by {} via mtls with txn-token ",
            id("/gw")
        )),
        "{over_mtls}"
    );

    // An access token bound to the client's certificate (RFC 8705 `cnf.x5t#S256`) admits
    // only a connection that presents that certificate.
    let now = wimse_core::token::unix_now();
    let bound = wimse_core::jose::jws::sign(
        &d.login,
        Some("at+jwt"),
        Some("login-1"),
        &serde_json::json!({
            "iss": LOGIN_ISSUER, "sub": "alice", "aud": LOGIN_AUDIENCE, "iat": now,
            "exp": now + 300, "scope": "orders",
            "cnf": { "x5t#S256": wimse_core::digest::sha256_b64(client_cert.der()) },
        }),
    )
    .unwrap();
    let with_cert = fetch_as(
        cert.der().clone(),
        bound.clone(),
        Some((client_identity.0.clone(), client_identity.1.clone_key())),
    )
    .await
    .unwrap();
    assert!(with_cert.starts_with("HTTP/1.1 200"), "{with_cert}");
    let without = fetch(cert.der().clone(), bound).await.unwrap();
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    assert!(without.contains("invalid_token"), "{without}");
    // An unbound token still works with a client certificate too.
    let unbound = fetch_as(
        cert.der().clone(),
        login_token(&d, "orders"),
        Some(client_identity),
    )
    .await
    .unwrap();
    assert!(unbound.starts_with("HTTP/1.1 200"), "{unbound}");

    // The certificate is renewed in place (new key, same files): within seconds the
    // gateway presents it, with no restart.
    let renewed_key = rcgen::KeyPair::generate().unwrap();
    let renewed = rcgen::CertificateParams::new(vec!["gateway.test".into()])
        .unwrap()
        .self_signed(&renewed_key)
        .unwrap();
    std::fs::write(&key_file, renewed_key.serialize_pem()).unwrap();
    std::fs::write(&cert_file, renewed.pem()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match fetch(renewed.der().clone(), login_token(&d, "orders")).await {
            Ok(response) => {
                assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the renewed certificate was never presented: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A client that trusts only the old certificate is now refused.
    assert!(
        fetch(cert.der().clone(), login_token(&d, "orders"))
            .await
            .is_err()
    );
}

/// The outside partner of the egress test, over HTTPS: an API that says what reached it,
/// and its authorization server's token endpoint (client credentials for `gw-client`),
/// which counts the tokens it issues.
async fn partner(
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let issued = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&issued);
    let token = move |headers: http::HeaderMap, body: String| {
        let count = Arc::clone(&count);
        async move {
            // base64("gw-client:s3cret")
            let basic = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            if basic.as_deref() != Some("Basic Z3ctY2xpZW50OnMzY3JldA==")
                || body != "grant_type=client_credentials&scope=orders.read"
            {
                return (
                    http::StatusCode::UNAUTHORIZED,
                    r#"{"error":"invalid_client"}"#.to_owned(),
                );
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            (
                http::StatusCode::OK,
                format!(
                    r#"{{"access_token":"partner-token-{n}","token_type":"Bearer","expires_in":3600}}"#
                ),
            )
        }
    };
    let api = |method: http::Method, uri: http::Uri, headers: http::HeaderMap| async move {
        let get = |name: &str| {
            headers
                .get(name)
                .map_or("-", |v| v.to_str().unwrap())
                .to_owned()
        };
        format!(
            "partner: {method} {} auth={} wit={} txn={} peer={} xff={}",
            uri,
            get("authorization"),
            get("workload-identity-token"),
            get("txn-token"),
            get("x-wimse-peer-id"),
            get("x-forwarded-for"),
        )
    };
    let app = axum::Router::new()
        .route("/oauth2/token", axum::routing::post(token))
        .fallback(api);
    let config = wimse_workload::tls::server_config_from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(wimse_workload::listen::serve(
        listener,
        Arc::new(config),
        app,
    ));
    (port, issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_egress_sends_internal_calls_out_under_its_own_identity() {
    use std::sync::atomic::Ordering;
    let d = domain("3600");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (pp, issued) = partner(&cert, &key).await;
    let roots = d.dir.path().join("partner-roots.pem");
    std::fs::write(&roots, cert.pem()).unwrap();
    let secret = d.dir.path().join("partner-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let policy = d.dir.path().join("egress.cedar");
    std::fs::write(
        &policy,
        format!(
            "permit(principal == Workload::\"{}\", action == Action::\"GET\", resource)\n\
             when {{ context.path like \"/partner/*\" }};\n",
            id("/w1")
        ),
    )
    .unwrap();
    let (pg, pe, p1, p2, health) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _gw = gateway_with(
        &d,
        pg,
        free_port(),
        health,
        &format!(
            "\n[egress]\nlisten = \"127.0.0.1:{pe}\"\npolicy = \"{policy}\"\n\n\
             [[egress.routes]]\nprefix = \"/partner\"\nupstream = \"https://localhost:{pp}\"\n\
             ca_file = \"{roots}\"\nstrip_prefix = true\n\
             token_endpoint = \"https://localhost:{pp}/oauth2/token\"\nclient_id = \"gw-client\"\n\
             client_secret_file = \"{secret}\"\ntoken_scope = \"orders.read\"\n",
            policy = policy.display(),
            roots = roots.display(),
            secret = secret.display(),
        ),
    );
    let _w1 = outbound(&d, "/w1", p1, "wit-wpt", free_port());
    let _w2 = outbound(&d, "/w2", p2, "http-sig", free_port());
    // A transaction workload 1 takes part in (verified at the egress, then kept inside).
    let (server_key, kid) = server_jwt_key(&d.server);
    let txn = txn_token(&server_key, &kid, TRUST_DOMAIN, "orders");
    let call = move |proxy: u16, path: &'static str, headers: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(
                proxy,
                &format!("GET http://127.0.0.1:{pe}{path}"),
                &headers,
                "",
            )
        })
    };

    // Workload 1 may call the partner: the call goes out over HTTPS with the gateway's
    // outside token, and nothing of workload 1's identity or transaction goes with it.
    for _ in 0..3 {
        let (status, body) = call(
            p1,
            "/partner/orders/7?full=1",
            vec![
                ("Txn-Token", txn.clone()),
                ("X-Forwarded-For", "10.1.2.3".to_owned()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            "partner: GET /orders/7?full=1 auth=Bearer partner-token-1 wit=- txn=- peer=- xff=-"
        );
    }
    // One outside token served all three calls.
    assert_eq!(issued.load(Ordering::SeqCst), 1);

    // Workload 2 may not; a caller without credentials is refused; unknown paths too.
    let (status, body) = call(p2, "/partner/orders/7", vec![]).await.unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        tokio::task::spawn_blocking(move || http(pe, "GET /partner/orders/7", &[], ""))
            .await
            .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing-credentials"), "{body}");
    let (status, body) = call(p1, "/partner/../admin", vec![]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("urn:wimse:problem:ambiguous-path"), "{body}");
    assert_eq!(issued.load(Ordering::SeqCst), 1);

    // The egress listener's decisions and outcomes are in the gateway's metrics, beside
    // the ingress's, in one exposition.
    let metrics = tokio::task::spawn_blocking(move || http(health, "GET /metrics", &[], "").1)
        .await
        .unwrap();
    for line in [
        r#"wimse_gateway_egress_requests_total{outcome="allowed",auth_method="wit-wpt"} 3"#,
        r#"wimse_gateway_egress_requests_total{outcome="forbidden",auth_method="http-sig"} 1"#,
        r#"wimse_gateway_egress_requests_total{outcome="refused",auth_method="none"} 2"#,
        r#"wimse_gateway_egress_outbound_requests_total{outcome="forwarded"} 3"#,
        // The dot segment is refused by the admission layer, before policy and routing.
        r#"wimse_gateway_egress_refusals_total{reason="ambiguous-path"} 1"#,
        "# TYPE wimse_gateway_exchange_seconds histogram",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sidecars_carry_plain_http_over_mutual_tls() {
    let d = domain("3600");
    let up = upstream().await;
    let (p3, p1, p2, px) = (free_port(), free_port(), free_port(), free_port());
    let w3 = inbound_with(&d, p3, up, free_port(), &["--tls"]);
    let _w1 = outbound(&d, "/w1", p1, "mtls", free_port());
    let _w2 = outbound(&d, "/w2", p2, "mtls", free_port());
    // Workload 1 sending a WIT and WPT over TLS: its sidecar presents its SVID too, so a
    // listener that requires one takes it, and the WIT is what authenticates it.
    let pt = free_port();
    let _wt = outbound_with(&d, "/w1", pt, &["--proof", "wit-wpt", "--tls"], free_port());
    // Workload 1 again, but it accepts only workload 2 as a server.
    let _wx = outbound_with(
        &d,
        "/w1",
        px,
        &["--proof", "mtls", "--server-id", &id("/w2")],
        free_port(),
    );
    let get = |proxy: u16, path: &'static str| {
        tokio::task::spawn_blocking(move || {
            http_full(proxy, &format!("GET http://127.0.0.1:{p3}{path}"), &[], "")
        })
    };

    // The services speak plain HTTP to their sidecars; the sidecars authenticate each
    // other by X509-SVID, and each side learns the other's verified identity.
    let (status, head, body) = get(p1, "/api/orders/7").await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert_eq!(body, format!("GET /api/orders/7 by {} via mtls", id("/w1")));
    assert!(
        head.contains(&format!("\r\nx-wimse-peer-id: {}\r\n", id("/w3"))),
        "{head}"
    );
    assert!(
        head.contains("\r\nx-wimse-peer-auth-method: mtls\r\n"),
        "{head}"
    );

    let (status, _, body) = get(pt, "/api/orders/7").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("GET /api/orders/7 by {} via wit-wpt", id("/w1"))
    );

    // Workload 2 is authenticated the same way, and the policy keeps it out of orders.
    let (status, _, body) = get(p2, "/api/orders/7").await.unwrap();
    assert_eq!(status, 403, "{body}");

    // A server outside the outbound allow-list: the handshake is refused.
    let (status, _, body) = get(px, "/api/orders/7").await.unwrap();
    assert_eq!(status, 502, "{body}");

    // Reached by DNS name, a server must hold that name in its SVID (RFC 9525 §6.3):
    // workload 4's entry gives its SVID `localhost`, workload 3's gives it none.
    d.server.create_entry(
        &id("/w4"),
        &d.agent_id,
        &[&my_uid_selector()],
        &["--dns", "localhost"],
    );
    let p4 = free_port();
    let _w4 = inbound_as(&d, "/w4", p4, up, free_port(), &["--tls"]);
    let by_name = |proxy: u16, port: u16| {
        tokio::task::spawn_blocking(move || {
            let line = format!("GET http://localhost:{port}/api/orders/7");
            http_full(proxy, &line, &[], "")
        })
    };
    // Workload 4 is taken (and its policy, which is workload 3's, refuses workload 1).
    let (status, head, body) = by_name(p1, p4).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        head.contains(&format!("\r\nx-wimse-peer-id: {}\r\n", id("/w4"))),
        "{head}"
    );
    let (status, _, body) = by_name(p1, p3).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("certificate does not name `localhost` (its DNS names: none)"),
        "{body}"
    );
    // Unless names are not checked, as SPIFFE-TLS does.
    let pn = free_port();
    let _wn = outbound_with(
        &d,
        "/w1",
        pn,
        &["--proof", "mtls", "--server-name-check", "off"],
        free_port(),
    );
    let (status, _, body) = by_name(pn, p3).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // A caller without a certificate does not get through the TLS listener at all.
    let refused = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", p3)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /api/orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(
        !String::from_utf8_lossy(&refused).contains("HTTP/1.1 200"),
        "plain HTTP was served on the TLS listener"
    );
    assert!(w3.stop(), "inbound TLS proxy did not stop cleanly");
}

/// A gRPC service (tonic): `ValidateJWTSVID` answers with the caller its inbound sidecar
/// named, the audience it was sent and the Txn-Token that came with it, if any;
/// `FetchX509Bundles` sends one answer and then keeps the stream open; the others are
/// unimplemented.
struct GrpcService;

type NoStream<T> = tonic::codegen::tokio_stream::Empty<Result<T, tonic::Status>>;

type OpenStream<T> = std::pin::Pin<
    Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl wimse_proto::server::SpiffeWorkloadApi for GrpcService {
    type FetchX509SVIDStream = NoStream<wimse_proto::X509svidResponse>;
    type FetchX509BundlesStream = OpenStream<wimse_proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = OpenStream<wimse_proto::JwtBundlesResponse>;
    type FetchWITSVIDStream = NoStream<wimse_proto::WitsvidResponse>;
    type FetchWITBundlesStream = NoStream<wimse_proto::WitBundlesResponse>;

    async fn validate_jwtsvid(
        &self,
        request: tonic::Request<wimse_proto::ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<wimse_proto::ValidateJwtsvidResponse>, tonic::Status> {
        let said = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let mut spiffe_id = format!(
            "{} via {} for {}",
            said("x-wimse-peer-id"),
            said("x-wimse-peer-auth-method"),
            request.get_ref().audience
        );
        if request.metadata().contains_key("txn-token") {
            spiffe_id += &format!(" with txn-token {}", said("txn-token"));
        }
        Ok(tonic::Response::new(wimse_proto::ValidateJwtsvidResponse {
            spiffe_id,
            claims: None,
        }))
    }

    async fn fetch_x509svid(
        &self,
        _: tonic::Request<wimse_proto::X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }

    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<wimse_proto::X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        use tonic::codegen::tokio_stream::{self as stream, StreamExt};
        let first = wimse_proto::X509BundlesResponse {
            crl: vec![b"first".to_vec()],
            ..Default::default()
        };
        Ok(tonic::Response::new(Box::pin(
            stream::iter([Ok(first)]).chain(stream::pending()),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        _: tonic::Request<wimse_proto::JwtsvidRequest>,
    ) -> Result<tonic::Response<wimse_proto::JwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<wimse_proto::JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        // One answer, then an error whose metadata travels in the response's trailers:
        // one entry of it an identity header that must not leave the trust domain.
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-wimse-peer-id", id("/w3").parse().unwrap());
        metadata.insert("x-retry-after", "1".parse().unwrap());
        let end = tonic::Status::with_metadata(tonic::Code::Aborted, "done", metadata);
        Ok(tonic::Response::new(Box::pin(
            tonic::codegen::tokio_stream::iter([
                Ok(wimse_proto::JwtBundlesResponse::default()),
                Err(end),
            ]),
        )))
    }

    async fn fetch_witsvid(
        &self,
        _: tonic::Request<wimse_proto::WitsvidRequest>,
    ) -> Result<tonic::Response<Self::FetchWITSVIDStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: tonic::Request<wimse_proto::WitBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchWITBundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grpc_client_calls_a_grpc_service_through_both_sidecars_over_tls() {
    let d = domain("3600");
    let service = grpc_service().await;
    // Workload 3's sidecar in front of the service over TLS (HTTP/2 by ALPN), speaking h2c
    // to it; workload 1's dialled by the gRPC client as if it were the server, sending
    // everything to workload 3 with a WIT and its proof.
    let (p3, p1) = (free_port(), free_port());
    let _w3 = inbound_with(&d, p3, service, free_port(), &["--tls", "--upstream-http2"]);
    let upstream = format!("http://127.0.0.1:{p3}");
    let _w1 = outbound_with(
        &d,
        "/w1",
        p1,
        &[
            "--tls",
            "--server-id",
            &id("/w3"),
            "--upstream",
            &upstream,
            "--upstream-http2",
        ],
        free_port(),
    );
    let mut client = grpc_client(p1).await;
    let answer = client
        .validate_jwtsvid(wimse_proto::ValidateJwtsvidRequest {
            audience: "orders".into(),
            svid: "-".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.spiffe_id,
        format!("{} via wit-wpt for orders", id("/w1"))
    );
    // A method the policy does not grant: 403 at the sidecar, which gRPC reads as
    // PERMISSION_DENIED.
    let refused = client
        .fetch_jwtsvid(wimse_proto::JwtsvidRequest {
            audience: vec!["orders".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .starts_with("urn:wimse:problem:forbidden: "),
        "{refused}"
    );

    // The outbound sidecar's own refusals too: a server that is not there is UNAVAILABLE.
    let (gone, pg) = (free_port(), free_port());
    let upstream = format!("http://127.0.0.1:{gone}");
    let _wg = outbound_with(
        &d,
        "/w1",
        pg,
        &[
            "--proof",
            "mtls",
            "--upstream",
            &upstream,
            "--upstream-http2",
        ],
        free_port(),
    );
    let refused = grpc_client(pg)
        .await
        .validate_jwtsvid(wimse_proto::ValidateJwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(
        refused
            .message()
            .starts_with("urn:wimse:problem:upstream-unavailable: "),
        "{refused}"
    );
}

/// A connection to `port` on loopback that has sent `text` and waits at most 10 s for
/// each read.
fn raw_request(port: u16, text: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    stream
}

/// A gRPC client of the test's service, connected to `port` on loopback.
async fn grpc_client(
    port: u16,
) -> wimse_proto::client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wimse_proto::client::SpiffeWorkloadApiClient::new(channel)
}

/// A gRPC request with `message`, and with `token` as its bearer access token.
fn authorized<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Starts the test's gRPC service on a free port.
async fn grpc_service() -> u16 {
    let service = free_port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(wimse_proto::server::SpiffeWorkloadApiServer::new(
                GrpcService,
            ))
            .serve(([127, 0, 0, 1], service).into()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", service)).is_err() {
        assert!(Instant::now() < deadline, "the gRPC service did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service
}

/// A service that answers with the first piece of the request body as soon as it has it,
/// without waiting for the rest.
async fn first_piece_service() -> u16 {
    use http_body_util::BodyExt;
    let app = axum::Router::new().fallback(|body: axum::body::Body| async move {
        let mut body = body;
        match body.frame().await {
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            _ => bytes::Bytes::new(),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_carries_grpc_calls_and_streams_bodies_both_ways() {
    let d = domain("3600");
    let service = grpc_service().await;
    let uploads = first_piece_service().await;
    // Workload 3's sidecars speak h2c to the gRPC service, one on plain HTTP, one over
    // TLS; a third is in front of the upload service. The gateway reaches the first two by
    // HTTP/2 (`http2 = true`): with its WIT, a WPT and the Txn-Token it exchanged the
    // caller's access token for, or by mutual TLS (ALPN h2) with the same Txn-Token.
    let (p3, p3t, p3u, pg) = (free_port(), free_port(), free_port(), free_port());
    let _w3 = inbound_with(&d, p3, service, free_port(), &["--upstream-http2"]);
    let _w3t = inbound_with(
        &d,
        p3t,
        service,
        free_port(),
        &["--tls", "--upstream-http2"],
    );
    let _w3u = inbound(&d, p3u, uploads, free_port());
    let gw = gateway_with(
        &d,
        pg,
        p3,
        free_port(),
        &format!(
            "\n[[routes]]\nprefix = \"/SpiffeWorkloadAPI\"\nupstream = \"http://127.0.0.1:{p3}\"\n\
             scope = \"orders\"\nhttp2 = true\n\n\
             [[routes]]\nprefix = \"/SpiffeWorkloadAPI/ValidateJWTSVID\"\n\
             upstream = \"https://127.0.0.1:{p3t}\"\nscope = \"orders\"\nhttp2 = true\n\n\
             [[routes]]\nprefix = \"/SpiffeWorkloadAPI/FetchJWTSVID\"\n\
             upstream = \"http://127.0.0.1:{p3}\"\nscope = \"orders\"\n\n\
             [[routes]]\nprefix = \"/api/uploads\"\nupstream = \"http://127.0.0.1:{p3u}\"\n\
             scope = \"orders\"\nmax_body = 8\n"
        ),
    );
    let alice = login_token(&d, "orders");
    let mut client = grpc_client(pg).await;
    let validate = wimse_proto::ValidateJwtsvidRequest {
        audience: "orders".into(),
        svid: "-".into(),
    };

    // Alice's call reaches the service as the gateway's, in her transaction.
    let answer = client
        .validate_jwtsvid(authorized(Some(&alice), validate.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()))
        .into_inner();
    let said = format!("{} via mtls for orders with txn-token ", id("/gw"));
    let txn = answer
        .spiffe_id
        .strip_prefix(&said)
        .unwrap_or_else(|| panic!("{}", answer.spiffe_id));
    let claims = issued_txn(&d, txn);
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(claims.scope, "orders");
    assert_eq!(
        claims.tctx.as_ref().unwrap()["path"],
        "/SpiffeWorkloadAPI/ValidateJWTSVID"
    );

    // A server stream (over h2c, with a WPT) gets its first answer while the stream stays
    // open: nothing waits for the end of the response.
    let mut stream = client
        .fetch_x509_bundles(authorized(Some(&alice), wimse_proto::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the first answer of the stream did not come through")
        .unwrap()
        .unwrap();
    assert_eq!(first.crl, vec![b"first".to_vec()]);

    // Response trailers are cleaned as headers are: the error's own metadata comes out,
    // the inward identity does not.
    let mut stream = client
        .fetch_jwt_bundles(authorized(Some(&alice), wimse_proto::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Aborted, "{end}");
    assert_eq!(end.metadata().get("x-retry-after").unwrap(), "1");
    assert!(end.metadata().get("x-wimse-peer-id").is_none(), "{end:?}");

    // The gateway's refusals, told as gRPC statuses with the problem in the message.
    let payroll = login_token(&d, "payroll");
    for (token, code, problem) in [
        (None, tonic::Code::Unauthenticated, "missing-access-token"),
        (
            Some("e30.e30.e30"),
            tonic::Code::Unauthenticated,
            "invalid-token",
        ),
        (
            Some(payroll.as_str()),
            tonic::Code::PermissionDenied,
            "insufficient-scope",
        ),
    ] {
        let refused = client
            .validate_jwtsvid(authorized(token, validate.clone()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused}");
        assert!(
            refused
                .message()
                .starts_with(&format!("urn:wimse:problem:{problem}: ")),
            "{refused}"
        );
    }
    // A route that speaks HTTP/1.1 to its upstream cannot carry gRPC, and says so.
    let refused = client
        .fetch_jwtsvid(authorized(
            Some(&alice),
            wimse_proto::JwtsvidRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused}");
    assert!(
        refused.message().contains("grpc-needs-http2")
            && refused.message().contains("http2 = true"),
        "{refused}"
    );

    // A request body streams through the gateway and the sidecar: the service answers
    // with the first piece of an upload before the client has sent the rest.
    let bearer = alice.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = raw_request(
            pg,
            &format!(
                "POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
            ),
        );
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"first") && !answer.ends_with(b"first\r\n0\r\n\r\n") {
            let n = stream
                .read(&mut buf)
                .expect("no answer before the upload ended: the body was held back");
            assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        stream.write_all(b"0\r\n\r\n").unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The route takes bodies of 8 bytes at most: one announced larger is refused before
    // any exchange, and one that grows larger as it streams is cut off on its way in.
    let token = format!("Bearer {alice}");
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        http_full(
            pg,
            "POST /api/uploads",
            &[("Authorization", &token)],
            "nine bytes",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body-too-large"), "{body}");
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = raw_request(
            pg,
            &format!(
                "POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {alice}\r\n\
                 Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
                 c\r\ntwelve bytes\r\n0\r\n\r\n"
            ),
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(!answer.contains("twelve"), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("body-too-large")
            && answer.contains("the request body is larger than this route takes (8 bytes)"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sidecars_send_wits_and_their_proofs_over_tls_that_proves_the_server() {
    let d = domain("3600");
    let up = upstream().await;
    let (p3, p1, p2, px) = (free_port(), free_port(), free_port(), free_port());
    let w3 = inbound_with(
        &d,
        p3,
        up,
        free_port(),
        &["--tls", "--tls-client-cert", "optional"],
    );
    let w1 = outbound_with(&d, "/w1", p1, &["--proof", "wit-wpt", "--tls"], free_port());
    let w2 = outbound_with(
        &d,
        "/w2",
        p2,
        &["--proof", "http-sig", "--tls", "--server-id", &id("/w3")],
        free_port(),
    );
    // Workload 1 again, but it expects workload 2 at workload 3's address.
    let _wx = outbound_with(
        &d,
        "/w1",
        px,
        &[
            "--proof",
            "wit-wpt",
            "--tls",
            "--destination",
            &format!("127.0.0.1:{p3}={}", id("/w2")),
        ],
        free_port(),
    );
    let call = |proxy: u16, line: String| {
        tokio::task::spawn_blocking(move || http_full(proxy, &line, &[], ""))
    };

    // The services send plain `http://` requests; each sidecar sends them as `https://`,
    // with the WIT and a proof bound to that URL, to a server that proved its X509-SVID.
    let (status, head, body) = call(p1, format!("GET http://127.0.0.1:{p3}/api/orders/7"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}\n{}", w3.log());
    assert_eq!(
        body,
        format!("GET /api/orders/7 by {} via wit-wpt", id("/w1"))
    );
    assert!(
        head.contains(&format!("\r\nx-wimse-peer-id: {}\r\n", id("/w3"))),
        "{head}"
    );
    let (status, _, body) = call(p2, format!("POST http://127.0.0.1:{p3}/api/payments"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("POST /api/payments by {} via http-sig", id("/w2"))
    );
    // Accepting any server of the trust domain is said at start, where no identity is
    // named: for servers reached by IP address, since names are checked.
    let warning = "servers reached by IP address are accepted by trust domain alone";
    assert!(w1.log().contains(warning), "{}", w1.log());
    assert!(!w2.log().contains(warning), "{}", w2.log());

    // Another server than the one expected there: nothing is sent.
    let (status, _, body) = call(px, format!("GET http://127.0.0.1:{p3}/api/orders/7"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");

    // A caller without a certificate gets a server-authenticated connection, but its
    // request must still prove who sent it.
    let source = CredentialSource::connect(
        d.agent.socket.clone(),
        Some(WorkloadId::parse(&id("/w1")).unwrap()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let config =
        wimse_workload::tls::server_auth_config(&source, PeerAllowList::default()).unwrap();
    let (status, body) = get_over_tls(p3, config, "/api/orders/7").await;
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["type"], "urn:wimse:problem:missing-credentials",
        "{problem}"
    );
    assert!(w3.stop(), "inbound TLS proxy did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_and_the_gateway_hold_callers_to_the_connection_limits_they_are_given() {
    // A value out of range is refused by its flag's name before anything starts.
    for (flag, value, message) in [
        (
            "--max-connections",
            "0",
            "`--max-connections` must be at least 1",
        ),
        ("--idle-timeout", "0", "`--idle-timeout` is 0"),
        ("--drain-timeout", "86401", "`--drain-timeout` is 86401"),
        (
            "--max-connections-per-client",
            "0",
            "`--max-connections-per-client` must be at least 1",
        ),
    ] {
        let refused = Command::new(WIMSE)
            .args(["proxy", "inbound", "--listen", "127.0.0.1:1"])
            .args(["--upstream", "http://127.0.0.1:2", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{flag} {value} was taken");
        assert!(stderr.contains(message), "{stderr}");
    }

    // A proxy with `flags` and a gateway in front of it with `listener` as its
    // `[listener]` section: (proxy port, proxy, gateway port, gateway).
    let d = domain("3600");
    let up = upstream().await;
    let start = |flags: &[&str], listener: &str| {
        let p3 = free_port();
        let w3 = inbound_with(&d, p3, up, free_port(), flags);
        let pg = free_port();
        let gateway = gateway_with(
            &d,
            pg,
            p3,
            free_port(),
            &format!("\n[listener]\n{listener}\n"),
        );
        (p3, w3, pg, gateway)
    };

    // A connection that never sends a request is closed after `--header-timeout` (the
    // gateway: `header_timeout`), not after the default 30 s.
    let silent_connection_closed = |port: u16| {
        tokio::task::spawn_blocking(move || {
            let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
            silent
                .set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            let closed = silent.read(&mut [0_u8; 64]);
            matches!(&closed, Ok(0))
                || matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        })
    };
    let (p3, w3, pg, gateway) = start(&["--header-timeout", "1"], "header_timeout = 1");
    for (port, who, process) in [(p3, "proxy", &w3), (pg, "gateway", &gateway)] {
        assert!(
            silent_connection_closed(port).await.unwrap(),
            "the {who} did not close a silent connection\n{}",
            process.log()
        );
    }
    assert!(gateway.stop());
    assert!(w3.stop());

    // With a share of two connections per client (here every caller is 127.0.0.1), a
    // third connection is closed unanswered while two are open. (With the default 30 s
    // header timeout, so that the two stay open between requests.)
    let share_kept = |port: u16| {
        tokio::task::spawn_blocking(move || {
            // Whether a request on `tcp` is answered (the connection kept alive after).
            let answered = |tcp: &mut TcpStream| {
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = tcp.write_all(b"GET /api/orders HTTP/1.1\r\nHost: x\r\n\r\n");
                let mut head = [0_u8; 12];
                tcp.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
            };
            // Two connections the listener has taken up. One refused meanwhile, while an
            // earlier connection (the start-up probe's) is still counted, is tried again.
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while held.len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "two connections were never served"
                );
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
                if answered(&mut tcp) {
                    held.push(tcp);
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
            !answered(&mut third)
        })
    };
    let (p3, w3, pg, gateway) = start(
        &["--max-connections-per-client", "2"],
        "max_connections_per_client = 2",
    );
    for (port, who, process) in [(p3, "proxy", &w3), (pg, "gateway", &gateway)] {
        assert!(
            share_kept(port).await.unwrap(),
            "the {who} served a client past its share\n{}",
            process.log()
        );
    }
    // A caller that does send requests is served as before.
    let (status, body) =
        tokio::task::spawn_blocking(move || http(p3, "GET /api/orders/7", &[], ""))
            .await
            .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing-credentials"), "{body}");
    assert!(w3.stop());
}
