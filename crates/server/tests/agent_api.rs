//! The agent API end to end: a server started in-process on 127.0.0.1:0 with SQLite in a
//! temp dir, driven through `AgentApiClient` (mutual TLS) and the admin socket.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use wimse_core::WorkloadId;
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::token::Validation;
use wimse_core::token::jwt_svid::verify_jwt_svid;
use wimse_core::token::unix_now;
use wimse_core::token::wit::verify_wit;
use wimse_core::x509::{self, build_csr};
use wimse_server::admin::client::AdminClient;
use wimse_server::agent_api::SyncChange;
use wimse_server::agent_api::client::{
    AgentApiClient, AgentClientError, AgentIdentity, decode_chain,
};
use wimse_server::api::{EntryRequest, EntryView};
use wimse_server::config::FileConfig;
use wimse_server::datastore::{Datastore, NewEntry};
use wimse_server::run::{Running, Tasks, start};

struct Server {
    running: Running,
    tasks: Tasks,
    admin: AdminClient,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = FileConfig {
        trust_domain: Some("agents.test".into()),
        data_dir: Some(dir.path().join("data")),
        bind: Some("127.0.0.1:0".parse().unwrap()),
        ..FileConfig::default()
    }
    .resolve()
    .unwrap();
    let (running, tasks) = start(config).await.unwrap();
    let admin = AdminClient::new(&running.admin_socket);
    Server {
        running,
        tasks,
        admin,
        _dir: dir,
    }
}

impl Server {
    fn bundle(&self) -> TrustBundle {
        (*self.running.state.bundle()).clone()
    }

    fn anonymous(&self) -> AgentApiClient {
        AgentApiClient::new(self.running.local_addr, &self.bundle(), None).unwrap()
    }

    /// Attests a new agent with a fresh join token; its mTLS client and its ID.
    async fn agent(&self) -> (AgentApiClient, WorkloadId) {
        let token = self.admin.create_join_token(600).await.unwrap();
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let id = WorkloadId::parse(&token.agent_id).unwrap();
        let csr = build_csr(&key, &id).unwrap();
        let answer = self.anonymous().attest(&token.token, &csr).await.unwrap();
        assert_eq!(answer.spiffe_id, token.agent_id);
        let identity = AgentIdentity {
            chain: decode_chain(&answer.svid_chain).unwrap(),
            key: Arc::new(key),
        };
        let client =
            AgentApiClient::new(self.running.local_addr, &self.bundle(), Some(&identity)).unwrap();
        (client, id)
    }

    async fn entry(&self, spiffe_id: &str, parent: &WorkloadId) -> EntryView {
        self.admin
            .create_entry(&EntryRequest {
                spiffe_id: spiffe_id.into(),
                parent_id: parent.to_string(),
                selectors: vec!["unix:uid:1000".into()],
                ..EntryRequest::default()
            })
            .await
            .unwrap()
    }
}

fn status(result: Result<impl std::fmt::Debug, AgentClientError>) -> u16 {
    match result {
        Err(AgentClientError::Api { status, .. }) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn workload_csr() -> Vec<u8> {
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let id = WorkloadId::parse("spiffe://agents.test/ignored").unwrap();
    build_csr(&key, &id).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn join_token_attests_once_and_its_reuse_is_refused() {
    let s = server().await;
    let token = s.admin.create_join_token(600).await.unwrap();
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let id = WorkloadId::parse(&token.agent_id).unwrap();
    let csr = build_csr(&key, &id).unwrap();
    let answer = s.anonymous().attest(&token.token, &csr).await.unwrap();
    let chain = decode_chain(&answer.svid_chain).unwrap();
    let bundle =
        TrustBundle::from_spiffe_json(s.bundle().trust_domain().clone(), answer.bundle.as_bytes())
            .unwrap();
    let roots: Vec<_> = bundle
        .x509_authorities
        .iter()
        .map(|der| x509::Certificate::from_der(der.clone()).unwrap())
        .collect();
    let verified =
        x509::verify_svid_for_trust_domain(&chain, bundle.trust_domain(), &roots, unix_now())
            .unwrap();
    assert_eq!(verified, id);
    let agents = s.admin.list_agents().await.unwrap();
    assert!(agents.iter().any(|a| a.spiffe_id == token.agent_id
        && a.attestation_type == "join_token"
        && a.serial == chain[0].serial_hex()));

    let again = s.anonymous().attest(&token.token, &csr).await;
    assert_eq!(status(again), 403);
    let unknown = s.anonymous().attest("not-a-token", &csr).await;
    assert_eq!(status(unknown), 403);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_credentials_verify_against_the_fetched_bundle() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let entry = s.entry("spiffe://agents.test/web", &agent_id).await;
    // A descendant: parented by the first entry's identity.
    let child = s
        .entry(
            "spiffe://agents.test/web/worker",
            &WorkloadId::parse(&entry.spiffe_id).unwrap(),
        )
        .await;
    let bundle_json = agent.bundle().await.unwrap();
    let bundle =
        TrustBundle::from_spiffe_json(s.bundle().trust_domain().clone(), bundle_json.as_bytes())
            .unwrap();
    let roots: Vec<_> = bundle
        .x509_authorities
        .iter()
        .map(|der| x509::Certificate::from_der(der.clone()).unwrap())
        .collect();
    let now = unix_now();

    for e in [&entry, &child] {
        let chain = agent.x509(&e.id, &workload_csr()).await.unwrap();
        let id =
            x509::verify_svid_for_trust_domain(&chain, bundle.trust_domain(), &roots, now).unwrap();
        assert_eq!(id.to_string(), e.spiffe_id);
    }

    let mut bundles = BundleSet::new();
    bundles.insert(bundle);
    let workload_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let mut jwk = workload_key.public_jwk().clone();
    jwk.alg = Some("ES256".into());
    let wit = agent.wit(&entry.id, &jwk).await.unwrap();
    let verified = verify_wit(
        &wit,
        &bundles,
        s.running.state.config.wit_profile,
        &Validation::at(unix_now()),
    )
    .unwrap();
    assert_eq!(verified.claims.sub.to_string(), entry.spiffe_id);

    let jwt = agent
        .jwt(&entry.id, &["https://api.example".to_owned()])
        .await
        .unwrap();
    let verified = verify_jwt_svid(
        &jwt,
        &bundles,
        "https://api.example",
        &Validation::at(unix_now()),
    )
    .unwrap();
    assert_eq!(verified.claims.sub.to_string(), entry.spiffe_id);

    let renewed = agent
        .renew(&build_csr(&SigningKey::generate(Algorithm::Es256).unwrap(), &agent_id).unwrap())
        .await
        .unwrap();
    assert_eq!(renewed.spiffe_id, agent_id.to_string());
    // The replaced certificate no longer counts.
    assert_eq!(status(agent.bundle().await), 403);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_nothing_is_issued() {
    let s = server().await;
    let (agent, _) = s.agent().await;
    let (other, other_id) = s.agent().await;
    let foreign = s.entry("spiffe://agents.test/theirs", &other_id).await;
    let issued_before = s.running.state.metrics.render();

    // Another agent's entry.
    assert_eq!(status(agent.x509(&foreign.id, &workload_csr()).await), 403);
    assert_eq!(
        status(agent.jwt(&foreign.id, &["aud".to_owned()]).await),
        403
    );
    assert_eq!(
        status(agent.x509("no-such-entry", &workload_csr()).await),
        403
    );
    assert_eq!(s.running.state.metrics.render(), issued_before);
    // Its owner gets it.
    assert!(other.x509(&foreign.id, &workload_csr()).await.is_ok());

    // No client certificate: nothing but attestation.
    assert_eq!(status(s.anonymous().entries(0, 0).await), 403);
    assert_eq!(status(s.anonymous().bundle().await), 403);

    // A malformed CSR.
    assert_eq!(status(other.x509(&foreign.id, b"not a csr").await), 400);
    let token = s.admin.create_join_token(600).await.unwrap();
    assert_eq!(
        status(s.anonymous().attest(&token.token, b"junk").await),
        400
    );

    // An oversized body.
    let big = format!(
        "{{\"entry_id\":\"{}\",\"csr\":\"{}\"}}",
        foreign.id,
        "A".repeat(70 * 1024)
    );
    let result = other
        .post_raw::<serde_json::Value>("/agent/v1/svid/x509", big.into_bytes())
        .await;
    assert_eq!(status(result), 413);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn banned_and_evicted_agents_get_nothing() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let entry = s.entry("spiffe://agents.test/banned", &agent_id).await;
    assert!(agent.x509(&entry.id, &workload_csr()).await.is_ok());
    s.running
        .state
        .store
        .set_agent_banned(&agent_id, true)
        .await
        .unwrap();
    assert_eq!(status(agent.x509(&entry.id, &workload_csr()).await), 403);
    assert_eq!(status(agent.entries(0, 0).await), 403);
    assert_eq!(status(agent.renew(&workload_csr()).await), 403);

    let (evicted, evicted_id) = s.agent().await;
    s.running
        .state
        .store
        .delete_agent(&evicted_id)
        .await
        .unwrap();
    assert_eq!(status(evicted.bundle().await), 403);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_changes_reach_a_long_polling_agent() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let (_, other_id) = s.agent().await;
    let first = s.entry("spiffe://agents.test/first", &agent_id).await;
    let _theirs = s.entry("spiffe://agents.test/theirs", &other_id).await;

    let sync = agent.entries(0, 0).await.unwrap();
    assert_eq!(sync.changes, vec![SyncChange::Entry(first.clone())]);
    assert!(!sync.more);

    let waiting = {
        let agent = agent.clone();
        let since = sync.revision;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = agent.entries(since, 10).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = s.entry("spiffe://agents.test/second", &agent_id).await;
    let (answer, elapsed) = waiting.await.unwrap();
    let answer = answer.unwrap();
    assert_eq!(answer.changes, vec![SyncChange::Entry(second.clone())]);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    s.admin.delete_entry(&first.id).await.unwrap();
    let after = agent.entries(answer.revision, 5).await.unwrap();
    assert_eq!(after.changes, vec![SyncChange::Deleted(first.id.clone())]);

    // Nothing new: the wait ends empty at the same revision.
    let idle = agent.entries(after.revision, 1).await.unwrap();
    assert!(idle.changes.is_empty());
    assert_eq!(idle.revision, after.revision);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_endpoints_need_no_client_certificate() {
    let s = server().await;
    let body = s
        .anonymous()
        .get_text("/.well-known/spiffe-bundle")
        .await
        .unwrap();
    assert!(body.contains("x509-svid"));
    let (agent, _) = s.agent().await;
    assert_eq!(agent.bundle().await.unwrap(), body);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_written_by_another_replica_reaches_the_agent_by_the_revision_poll() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let since = agent.entries(0, 0).await.unwrap().revision;
    let waiting = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.entries(since, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Straight into the datastore, as another replica on the same database would: no
    // admin handler of this replica wakes the agents.
    let created = s
        .running
        .state
        .store
        .create_entry(NewEntry {
            spiffe_id: WorkloadId::parse("spiffe://agents.test/elsewhere").unwrap(),
            parent_id: agent_id.clone(),
            selectors: vec!["unix:uid:7".parse().unwrap()],
            x509_ttl: 600,
            jwt_ttl: 60,
            dns_names: Vec::new(),
            hint: None,
            admin: false,
            downstream: false,
        })
        .await
        .unwrap();
    let answer = waiting.await.unwrap().unwrap();
    assert!(matches!(
        answer.changes.as_slice(),
        [SyncChange::Entry(view)] if view.id == created.id
    ));
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_refuses_a_server_outside_its_bundle() {
    let s = server().await;
    let empty = TrustBundle::new(s.bundle().trust_domain().clone());
    let client = AgentApiClient::new(s.running.local_addr, &empty, None).unwrap();
    let result = client.get_text("/.well-known/spiffe-bundle").await;
    assert!(
        matches!(result, Err(AgentClientError::Connect { .. })),
        "{result:?}"
    );
    s.tasks.stop().await;
}
