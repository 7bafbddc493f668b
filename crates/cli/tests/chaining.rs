//! Identity chaining end to end with the real binaries: a transaction of `example.org`
//! (alice's, started by its gateway) is carried into `partner.example`. Home's egress
//! workload exchanges its Txn-Token at home's token service for a JWT authorization grant,
//! presents the grant to the partner's token service with a JWT-SVID as client assertion,
//! and calls the partner's gateway with the access token it gets; the partner's service
//! then sees a Txn-Token of its own trust domain for `example.org/user:alice`.
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
use wimse_core::TrustDomain;
use wimse_core::WorkloadId;
use wimse_core::token::exchange::{Scope, token_type};
use wimse_core::token::txn::TxnTokenClaims;
use wimse_core::token::{Validation, unix_now};
use wimse_workload::CredentialSource;
use wimse_workload::token_service::{ChainClient, TokenServiceClient, TokenServiceError};

const PARTNER: &str = "partner.example";
const LOGIN_ISSUER: &str = "https://login.example.com";

fn id(trust_domain: &str, path: &str) -> String {
    format!("spiffe://{trust_domain}{path}")
}

/// `dir/name`, written with `text`.
fn written(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A trust domain's server (with `config` as its file), agent, and the agent's ID.
struct Domain {
    server: Server,
    agent: Agent,
    agent_id: String,
}

fn domain(dir: &Path, trust_domain: &str, config: &str) -> Domain {
    std::fs::create_dir_all(dir).unwrap();
    let file = written(dir, "server.toml", config);
    let server = Server::start_for(
        trust_domain,
        &dir.join("server"),
        free_port(),
        &["--config", file.to_str().unwrap()],
    );
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

async fn source(d: &Domain, id: &str) -> CredentialSource {
    CredentialSource::connect(
        d.agent.socket.clone(),
        Some(WorkloadId::parse(id).unwrap()),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

/// The partner's service: answers with the Txn-Token it was called with.
async fn service() -> u16 {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        headers
            .get("txn-token")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The Txn-Token the partner's service answered with: one of the partner's trust domain,
/// for home's alice, of scope `orders`.
fn alices_partner_txn(body: &str, partner: &Domain) -> TxnTokenClaims {
    let claims = wimse_core::token::txn::verify_txn_token_in(
        body.trim(),
        &partner.server.bundle(),
        &Validation::at(unix_now()),
    )
    .unwrap();
    assert_eq!(claims.sub, format!("{TRUST_DOMAIN}/user:alice"));
    assert_eq!(claims.scope, "orders");
    claims
}

fn refused_code(result: Result<impl std::fmt::Debug, TokenServiceError>) -> (String, String) {
    match result {
        Err(TokenServiceError::Refused {
            error, description, ..
        }) => (error, description),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_is_carried_into_a_federated_trust_domain_by_identity_chaining() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = my_uid_selector();
    let (gw, egress, w1) = (
        id(TRUST_DOMAIN, "/gw"),
        id(TRUST_DOMAIN, "/egress"),
        id(TRUST_DOMAIN, "/w1"),
    );
    let (partner_gw, svc) = (id(PARTNER, "/gw"), id(PARTNER, "/svc"));

    // Home: the login server's users start transactions through /gw; /egress may carry
    // them to the partner.
    let login = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    let mut jwk = login.public_jwk().clone();
    jwk.kid = Some("login-1".into());
    let jwks = tmp.path().join("login-jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let home = domain(
        &tmp.path().join("home"),
        TRUST_DOMAIN,
        &format!(
            "[token_service]\nrequesters = [\"{gw}\"]\n\n\
             [[token_service.issuers]]\nissuer = \"{LOGIN_ISSUER}\"\naudience = \"wimse\"\n\
             jwks_file = \"{jwks}\"\nsubject_prefix = \"user:\"\n\n\
             [[token_service.chain_to]]\ntrust_domain = \"{PARTNER}\"\n\
             requesters = [\"{egress}\", \"{gw}\"]\n",
            jwks = jwks.display(),
        ),
    );
    // The partner: takes home's grants up to scope `orders`; its gateway starts the
    // transactions.
    let partner = domain(
        &tmp.path().join("partner"),
        PARTNER,
        &format!(
            "[token_service]\nrequesters = [\"{partner_gw}\"]\n\n\
             [[token_service.chain_from]]\ntrust_domain = \"{TRUST_DOMAIN}\"\nmax_scope = \"orders\"\n"
        ),
    );
    // Home's workloads need the partner's bundle to authenticate its token service.
    home.server.federate_with(&partner.server, tmp.path());
    for w in [&gw, &egress, &w1] {
        home.server
            .create_entry(w, &home.agent_id, &[&uid], &["--federates-with", PARTNER]);
    }
    for w in [&partner_gw, &svc] {
        partner
            .server
            .create_entry(w, &partner.agent_id, &[&uid], &[]);
    }

    // The partner's service behind its inbound proxy (which lets the partner's gateway read
    // orders), and the partner's gateway admitting chained access tokens.
    let up = service().await;
    let (p_svc, p_gw) = (free_port(), free_port());
    let policy = written(
        tmp.path(),
        "svc.cedar",
        &format!(
            "permit(principal == Workload::\"{partner_gw}\", action == Action::\"GET\", resource) \
             when {{ context.path like \"/api/orders*\" && context has txn }};\n"
        ),
    );
    let socket = partner.agent.socket.display().to_string();
    let _svc = Proxy::start(
        tmp.path(),
        "svc-inbound",
        &[
            "proxy",
            "inbound",
            "--listen",
            &format!("127.0.0.1:{p_svc}"),
            "--upstream",
            &format!("http://127.0.0.1:{up}"),
            "--socket",
            &socket,
            "--policy",
            policy.to_str().unwrap(),
            "--spiffe-id",
            &svc,
        ],
        p_svc,
    );
    let gateway_config = written(
        tmp.path(),
        "partner-gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{p_gw}\"\nserver_address = \"{server}\"\n\
             agent_socket = \"{socket}\"\nspiffe_id = \"{partner_gw}\"\naccept_chained = true\n\n\
             [[routes]]\nprefix = \"/api/orders\"\nupstream = \"http://127.0.0.1:{p_svc}\"\nscope = \"orders\"\n",
            server = partner.server.addr,
        ),
    );
    let partner_gateway = Proxy::start(
        tmp.path(),
        "partner-gateway",
        &[
            "gateway",
            "run",
            "--config",
            gateway_config.to_str().unwrap(),
        ],
        p_gw,
    );

    // Alice's transaction at home, as the home gateway starts it.
    let now = unix_now();
    let alice = wimse_core::jose::jws::sign(
        &login,
        Some("at+jwt"),
        Some("login-1"),
        &serde_json::json!({
            "iss": LOGIN_ISSUER, "sub": "alice", "aud": "wimse", "iat": now, "exp": now + 300,
            "scope": "orders refunds",
        }),
    )
    .unwrap();
    let home_server = home.server.addr.to_string();
    let partner_server = partner.server.addr.to_string();
    let txn = TokenServiceClient::new(&source(&home, &gw).await, &home_server)
        .unwrap()
        .start(&alice, &Scope::parse("orders refunds").unwrap(), None, None)
        .await
        .unwrap()
        .access_token;

    // Home's egress workload, once it holds the partner's bundle.
    let egress_source = source(&home, &egress).await;
    let partner_td = TrustDomain::new(PARTNER).unwrap();
    common::wait_for(
        Duration::from_secs(30),
        || {
            egress_source
                .current()
                .x509_bundles
                .get(&partner_td)
                .is_some()
        },
        || "the partner's bundle never reached home's workload".into(),
    );
    let chain = ChainClient::new(
        &egress_source,
        &home_server,
        partner_td.clone(),
        &partner_server,
    )
    .unwrap();
    let orders = Scope::parse("orders").unwrap();

    // The partner does not yet hold home's bundle: it cannot check the grant.
    let (error, description) = refused_code(chain.access_token(&txn, Some(&orders)).await);
    assert_eq!(error, "invalid_grant", "{description}");
    assert!(description.contains("federate"), "{description}");

    partner.server.federate_with(&home.server, tmp.path());
    let answer = chain.access_token(&txn, Some(&orders)).await.unwrap();
    assert_eq!(answer.issued_token_type, token_type::ACCESS_TOKEN);
    assert_eq!(
        (answer.token_type.as_str(), answer.scope.as_str()),
        ("Bearer", "orders")
    );
    assert_eq!(answer.expires_in, 300);

    // A grant is redeemed once: presented again, it is refused.
    let home_client = TokenServiceClient::new(&egress_source, &home_server).unwrap();
    let grant = home_client
        .grant(&txn, &partner_td, Some(&orders))
        .await
        .unwrap()
        .access_token;
    assert!(chain.redeem(&grant, None).await.is_ok());
    let (error, description) = refused_code(chain.redeem(&grant, None).await);
    assert_eq!(error, "invalid_grant");
    assert!(description.contains("already used"), "{description}");

    // Refusals: scope the partner does not take from home; a workload home does not let
    // chain; and a grant for a trust domain home does not chain to.
    let (error, _) = refused_code(chain.access_token(&txn, None).await);
    assert_eq!(error, "invalid_scope");
    let w1_chain = ChainClient::new(
        &source(&home, &w1).await,
        &home_server,
        partner_td,
        &partner_server,
    )
    .unwrap();
    let (error, _) = refused_code(w1_chain.access_token(&txn, Some(&orders)).await);
    assert_eq!(error, "unauthorized_client");
    let elsewhere = TrustDomain::new("elsewhere.example").unwrap();
    let (error, _) = refused_code(home_client.grant(&txn, &elsewhere, None).await);
    assert_eq!(error, "invalid_target");

    // The access token admits the call at the partner's gateway, and the partner's service
    // sees a Txn-Token of the partner's trust domain for home's alice.
    let bearer = format!("Bearer {}", answer.access_token);
    let call = move |bearer: String| {
        tokio::task::spawn_blocking(move || {
            http_full(
                p_gw,
                "GET /api/orders/7",
                &[("Authorization", bearer.as_str())],
                "",
            )
        })
    };
    let (status, _, body) = call(bearer).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", partner_gateway.log());
    let partner_txn = alices_partner_txn(&body, &partner);
    assert_eq!(partner_txn.req_wl, partner_gw);
    // It says that home's egress workload acts for her (the chained token's `act`).
    assert_eq!(
        partner_txn.act.map(|a| a.sub),
        Some(egress.as_str().to_owned())
    );
    // Home's own Txn-Token is no access token at the partner.
    let (status, _, body) = call(format!("Bearer {txn}")).await.unwrap();
    assert_eq!(status, 401, "{body}");

    // The same through home's gateway egress, for a workload that knows nothing of
    // chaining: workload 1 sends its call with its transaction through its outbound
    // proxy; the egress (as /gw) carries the transaction to the partner and calls the
    // partner's gateway with the access token it gets.
    let (p_home_gw, p_egress, p_w1) = (free_port(), free_port(), free_port());
    let egress_policy = written(
        tmp.path(),
        "egress.cedar",
        &format!(
            "permit(principal == Workload::\"{w1}\", action == Action::\"GET\", resource) \
             when {{ context.path like \"/partner/*\" }};\n"
        ),
    );
    let home_gateway_config = written(
        tmp.path(),
        "home-gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{p_home_gw}\"\nserver_address = \"{home_server}\"\n\
             agent_socket = \"{socket}\"\nspiffe_id = \"{gw}\"\n\n\
             [[issuers]]\nissuer = \"{LOGIN_ISSUER}\"\naudience = \"wimse\"\njwks_file = \"{jwks}\"\n\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nscope = \"orders\"\n\n\
             [egress]\nlisten = \"127.0.0.1:{p_egress}\"\npolicy = \"{policy}\"\n\n\
             [[egress.routes]]\nprefix = \"/partner\"\nupstream = \"http://127.0.0.1:{p_gw}\"\n\
             strip_prefix = true\nchain_to = \"{PARTNER}\"\nchain_server = \"{partner_server}\"\n\
             token_scope = \"orders\"\n",
            socket = home.agent.socket.display(),
            jwks = jwks.display(),
            policy = egress_policy.display(),
        ),
    );
    let home_gateway = Proxy::start(
        tmp.path(),
        "home-gateway",
        &[
            "gateway",
            "run",
            "--config",
            home_gateway_config.to_str().unwrap(),
        ],
        p_home_gw,
    );
    let home_socket = home.agent.socket.display().to_string();
    let _w1_out = Proxy::start(
        tmp.path(),
        "w1-outbound",
        &[
            "proxy",
            "outbound",
            "--listen",
            &format!("127.0.0.1:{p_w1}"),
            "--socket",
            &home_socket,
            "--spiffe-id",
            &w1,
            "--proof",
            "wit-wpt",
        ],
        p_w1,
    );
    let via_egress = move |txn: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> =
                txn.iter().map(|t| ("Txn-Token", t.as_str())).collect();
            http_full(
                p_w1,
                &format!("GET http://127.0.0.1:{p_egress}/partner/api/orders/8"),
                &headers,
                "",
            )
        })
    };
    for _ in 0..2 {
        let (status, _, body) = via_egress(Some(txn.clone())).await.unwrap();
        assert_eq!(status, 200, "{body}\n{}", home_gateway.log());
        alices_partner_txn(&body, &partner);
    }
    // Without a transaction there is nothing to carry.
    let (status, _, body) = via_egress(None).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("txn-token-required"), "{body}");
    assert!(home_gateway.stop(), "the home gateway stops cleanly");

    // Both servers audited their half, with hashes of the tokens only (read after a clean
    // stop, which writes out what the log still held).
    let audit = |d: Domain| {
        let file = d.server.dir.join("audit.jsonl");
        d.server.stop();
        std::fs::read_to_string(file).unwrap()
    };
    let (home_audit, partner_audit) = (audit(home), audit(partner));
    assert!(home_audit.contains("\"grant_issued\""), "{home_audit}");
    // One access token for the direct chain, one for the grant redeemed once, one for the
    // egress's two calls (reused).
    assert_eq!(
        partner_audit.matches("\"access_token_issued\"").count(),
        3,
        "{partner_audit}"
    );
    for log in [&home_audit, &partner_audit] {
        assert!(!log.contains(&answer.access_token));
        assert!(!log.contains(&txn));
    }
}
