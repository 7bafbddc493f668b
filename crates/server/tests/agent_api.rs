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
use wimse_server::agent_api::client::{
    AgentApiClient, AgentClientError, AgentIdentity, decode_chain,
};
use wimse_server::agent_api::{MAX_WAIT, SyncChange, X509PopEvidence};
use wimse_server::api::{EntryRequest, EntryView};
use wimse_server::config::FileConfig;
use wimse_server::datastore::{Datastore, NewEntry, X509PopChallenge};
use wimse_server::run::{Running, Tasks, start};

struct Server {
    running: Running,
    tasks: Tasks,
    admin: AdminClient,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    server_with(FileConfig::default()).await
}

/// A server with these settings (trust domain, data dir and bind are the test's).
async fn server_with(settings: FileConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = FileConfig {
        trust_domain: Some("agents.test".into()),
        data_dir: Some(dir.path().join("data")),
        bind: Some("127.0.0.1:0".parse().unwrap()),
        ..settings
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
async fn the_public_listener_never_resumes_a_session() {
    // A resumed TLS 1.3 session would restore an agent's certificate without verifying it
    // against the current bundle: no session cache, no tickets.
    let s = server().await;
    let config = wimse_server::tls::server_config(&s.running.state).unwrap();
    assert_eq!(config.send_tls13_tickets, 0);
    assert!(!config.session_storage.can_cache());
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_with_a_negative_age_is_refused_and_purges_nothing() {
    let s = server().await;
    let (_, agent_id) = s.agent().await;
    // A negative age would reach into the future and take agents that are still live.
    match s.admin.purge_agents(-86_400, false).await {
        Err(wimse_server::admin::client::ClientError::Api { status, detail }) => {
            assert_eq!(status, 400);
            assert!(detail.contains("must not be negative"), "{detail}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let agents = s.admin.list_agents().await.unwrap();
    assert!(agents.iter().any(|a| a.spiffe_id == agent_id.to_string()));
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
            federates_with: Vec::new(),
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
async fn a_held_entry_sync_is_answered_when_the_server_stops() {
    let s = server().await;
    let (agent, _) = s.agent().await;
    let since = agent.entries(0, 0).await.unwrap().revision;
    // Held for up to 30 s: far past the listener's 4 s drain, which would cut it off.
    let waiting = tokio::spawn(async move { agent.entries(since, MAX_WAIT).await });
    // Time for the TLS handshake and the request to reach the server, even on a busy
    // machine: stopping before then would refuse the connection instead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the sync was not held");
    s.tasks.stop().await;
    let answer = waiting.await.unwrap();
    let answer = answer.expect("the held sync is answered, not cut off");
    assert!(answer.changes.is_empty());
    assert_eq!(answer.revision, since);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_section_holds_clients_to_its_limits() {
    let s = server_with(FileConfig {
        listener: wimse_listen::LimitSettings {
            handshake_timeout: Some(1),
            ..Default::default()
        },
        ..FileConfig::default()
    })
    .await;
    let address = s.running.local_addr;
    // A client that never begins its TLS handshake is dropped after 1 s, not the default 10.
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut silent = std::net::TcpStream::connect(address).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        silent.read(&mut [0_u8; 64])
    })
    .await
    .unwrap();
    assert!(
        matches!(&closed, Ok(0))
            || matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent connection was not closed: {closed:?}"
    );
    // Agents are served as before.
    let (agent, _) = s.agent().await;
    assert!(agent.bundle().await.is_ok());
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

// ---------------------------------------------------------------------------------------
// x509pop

/// A CA for node certificates, made with rcgen in the test (no checked-in keys).
struct NodeCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rcgen::Certificate,
}

/// A node certificate and its key.
struct Node {
    chain: Vec<Vec<u8>>,
    key: SigningKey,
}

impl NodeCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        NodeCa {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A node certificate with `eku`, valid from `not_before` to `not_after` (Unix seconds).
    fn node_with(
        &self,
        eku: Vec<rcgen::ExtendedKeyUsagePurpose>,
        not_before: i64,
        not_after: i64,
    ) -> Node {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node.agents.test".into()]).unwrap();
        params.extended_key_usages = eku;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(not_before).unwrap());
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(not_after).unwrap());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Node {
            chain: vec![cert.der().to_vec()],
            key: SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap(),
        }
    }

    fn node(&self) -> Node {
        let now = unix_now();
        self.node_with(
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
            now - 60,
            now + 3600,
        )
    }
}

fn fingerprint(der: &[u8]) -> String {
    wimse_core::digest::hex(&wimse_core::digest::sha256(der))
}

async fn x509pop_server(ca: &NodeCa) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agents-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    let s = server_with(FileConfig {
        x509pop_ca_bundle: Some(path),
        ..FileConfig::default()
    })
    .await;
    // The CA file is read at startup.
    drop(dir);
    s
}

fn detail(result: Result<impl std::fmt::Debug, AgentClientError>) -> (u16, String) {
    match result {
        Err(AgentClientError::Api { status, detail }) => (status, detail),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn agent_csr(key: &SigningKey) -> Vec<u8> {
    // The ID asked for is ignored: the server names the agent.
    build_csr(
        key,
        &WorkloadId::parse("spiffe://agents.test/agent").unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_attests_an_agent_whose_credential_then_works_over_mtls() {
    let ca = NodeCa::new("node ca");
    let s = x509pop_server(&ca).await;
    let node = ca.node();
    let svid_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let answer = s
        .anonymous()
        .attest_x509pop(&node.chain, &node.key, &agent_csr(&svid_key))
        .await
        .unwrap();
    let expected = format!(
        "spiffe://agents.test/wimse/agent/x509pop/{}",
        fingerprint(&node.chain[0])
    );
    assert_eq!(answer.spiffe_id, expected);
    let chain = decode_chain(&answer.svid_chain).unwrap();
    let agents = s.admin.list_agents().await.unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a.spiffe_id == expected && a.attestation_type == "x509pop")
    );

    // The SVID is the agent's mTLS credential.
    let identity = AgentIdentity {
        chain,
        key: Arc::new(svid_key),
    };
    let agent = AgentApiClient::new(s.running.local_addr, &s.bundle(), Some(&identity)).unwrap();
    let agent_id = WorkloadId::parse(&expected).unwrap();
    let entry = s.entry("spiffe://agents.test/on-node", &agent_id).await;
    let issued = agent.x509(&entry.id, &workload_csr()).await.unwrap();
    assert_eq!(issued[0].uri_sans(), vec![entry.spiffe_id.clone()]);
    let sync = agent.entries(0, 0).await.unwrap();
    assert_eq!(sync.changes, vec![SyncChange::Entry(entry)]);

    // The same certificate attests again (unlike a join token), to the same ID; the
    // previous SVID stops counting.
    let again_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let again = s
        .anonymous()
        .attest_x509pop(&node.chain, &node.key, &agent_csr(&again_key))
        .await
        .unwrap();
    assert_eq!(again.spiffe_id, expected);
    assert_eq!(status(agent.bundle().await), 403);

    // Unless the agent is banned.
    s.running
        .state
        .store
        .set_agent_banned(&agent_id, true)
        .await
        .unwrap();
    let (code, why) = detail(
        s.anonymous()
            .attest_x509pop(&node.chain, &node.key, &agent_csr(&again_key))
            .await,
    );
    assert_eq!(code, 403);
    assert!(why.contains("banned"), "{why}");
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_challenge_answered_with_another_certificate_is_refused() {
    let ca = NodeCa::new("node ca");
    let s = x509pop_server(&ca).await;
    let (a, b) = (ca.node(), ca.node());
    let csr = agent_csr(&SigningKey::generate(Algorithm::Es256).unwrap());
    let challenge = s.anonymous().x509pop_challenge(&a.chain).await.unwrap();
    let nonce = wimse_core::jose::b64::decode(&challenge.challenge).unwrap();
    // B answers A's challenge, correctly signed with B's own key.
    let signature = b
        .key
        .sign(&wimse_server::x509pop::signed_message(&nonce, &csr))
        .unwrap();
    let evidence = X509PopEvidence {
        chain: b.chain.iter().map(wimse_core::jose::b64::encode).collect(),
        challenge: challenge.challenge,
        signature: wimse_core::jose::b64::encode(signature),
    };
    let (code, why) = detail(s.anonymous().attest_x509pop_evidence(evidence, &csr).await);
    assert_eq!(code, 403);
    assert!(why.contains("another certificate"), "{why}");
    assert!(s.admin.list_agents().await.unwrap().is_empty());
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_wrong_signature_and_reused_challenge_are_refused() {
    let ca = NodeCa::new("node ca");
    let s = x509pop_server(&ca).await;
    let node = ca.node();
    let csr = agent_csr(&SigningKey::generate(Algorithm::Es256).unwrap());
    let evidence = |challenge: &str, key: &SigningKey, signed_csr: &[u8]| {
        let nonce = wimse_core::jose::b64::decode(challenge).unwrap();
        X509PopEvidence {
            chain: node
                .chain
                .iter()
                .map(wimse_core::jose::b64::encode)
                .collect(),
            challenge: challenge.to_owned(),
            signature: wimse_core::jose::b64::encode(
                key.sign(&wimse_server::x509pop::signed_message(&nonce, signed_csr))
                    .unwrap(),
            ),
        }
    };

    // Signed by a key that is not the certificate's.
    let other_key = SigningKey::generate(Algorithm::Es256).unwrap();
    let c = s.anonymous().x509pop_challenge(&node.chain).await.unwrap();
    let (code, why) = detail(
        s.anonymous()
            .attest_x509pop_evidence(evidence(&c.challenge, &other_key, &csr), &csr)
            .await,
    );
    assert_eq!(code, 403);
    assert!(why.contains("signature"), "{why}");

    // Signed over another CSR than the one sent.
    let c = s.anonymous().x509pop_challenge(&node.chain).await.unwrap();
    let other_csr = agent_csr(&other_key);
    let (code, _) = detail(
        s.anonymous()
            .attest_x509pop_evidence(evidence(&c.challenge, &node.key, &other_csr), &csr)
            .await,
    );
    assert_eq!(code, 403);

    // A good answer succeeds once; the challenge is then used up.
    let c = s.anonymous().x509pop_challenge(&node.chain).await.unwrap();
    let good = evidence(&c.challenge, &node.key, &csr);
    s.anonymous()
        .attest_x509pop_evidence(good.clone(), &csr)
        .await
        .unwrap();
    let (code, why) = detail(s.anonymous().attest_x509pop_evidence(good, &csr).await);
    assert_eq!(code, 403);
    assert!(why.contains("already used"), "{why}");
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_expired_challenge_is_refused() {
    let ca = NodeCa::new("node ca");
    let s = x509pop_server(&ca).await;
    let node = ca.node();
    let csr = agent_csr(&SigningKey::generate(Algorithm::Es256).unwrap());
    // A challenge that expires in a moment, as one would after CHALLENGE_TTL seconds (the
    // maintenance tick prunes expired ones only every few seconds).
    let nonce = [7u8; 32];
    let expires_at = unix_now() + 1;
    s.running
        .state
        .store
        .create_x509pop_challenge(&X509PopChallenge {
            nonce_hash: wimse_core::digest::sha256(&nonce),
            fingerprint: fingerprint(&node.chain[0]),
            expires_at,
        })
        .await
        .unwrap();
    while unix_now() < expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signature = node
        .key
        .sign(&wimse_server::x509pop::signed_message(&nonce, &csr))
        .unwrap();
    let evidence = X509PopEvidence {
        chain: node
            .chain
            .iter()
            .map(wimse_core::jose::b64::encode)
            .collect(),
        challenge: wimse_core::jose::b64::encode(nonce),
        signature: wimse_core::jose::b64::encode(signature),
    };
    let (code, why) = detail(s.anonymous().attest_x509pop_evidence(evidence, &csr).await);
    assert_eq!(code, 403);
    assert!(why.contains("expired"), "{why}");
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_certificates_outside_the_policy_get_no_challenge() {
    let ca = NodeCa::new("node ca");
    let s = x509pop_server(&ca).await;
    let now = unix_now();
    let cases = [
        ("another CA", NodeCa::new("rogue ca").node()),
        (
            "expired",
            ca.node_with(
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
                now - 7200,
                now - 3600,
            ),
        ),
        (
            "serverAuth only",
            ca.node_with(
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
                now - 60,
                now + 3600,
            ),
        ),
    ];
    for (what, node) in cases {
        let (code, why) = detail(s.anonymous().x509pop_challenge(&node.chain).await);
        assert_eq!(code, 403, "{what}: {why}");
        assert!(why.contains("does not chain"), "{what}: {why}");
    }
    // No EKU at all is accepted (device certificates often carry none).
    let plain = ca.node_with(Vec::new(), now - 60, now + 3600);
    assert!(s.anonymous().x509pop_challenge(&plain.chain).await.is_ok());
    // Not a certificate.
    let (code, _) = detail(s.anonymous().x509pop_challenge(&[b"junk".to_vec()]).await);
    assert_eq!(code, 400);
    let (code, _) = detail(s.anonymous().x509pop_challenge(&[]).await);
    assert_eq!(code, 400);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_without_a_configured_ca_is_refused_with_a_clear_error() {
    let s = server().await;
    let node = NodeCa::new("node ca").node();
    let csr = agent_csr(&SigningKey::generate(Algorithm::Es256).unwrap());
    let (code, why) = detail(
        s.anonymous()
            .attest_x509pop(&node.chain, &node.key, &csr)
            .await,
    );
    assert_eq!(code, 403);
    assert!(why.contains("x509pop attestation is not enabled"), "{why}");
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attestation_with_both_or_neither_form_is_refused() {
    let s = server().await;
    let csr = workload_csr();
    let neither = serde_json::json!({ "csr": wimse_core::jose::b64::encode(&csr) });
    let result = s
        .anonymous()
        .post_raw::<serde_json::Value>("/agent/v1/attest", neither.to_string().into_bytes())
        .await;
    assert_eq!(status(result), 400);
    let both = serde_json::json!({
        "csr": wimse_core::jose::b64::encode(&csr),
        "join_token": "t",
        "x509pop": { "chain": [], "challenge": "", "signature": "" },
    });
    let result = s
        .anonymous()
        .post_raw::<serde_json::Value>("/agent/v1/attest", both.to_string().into_bytes())
        .await;
    assert_eq!(status(result), 400);
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_svid_ttl_is_configurable() {
    let s = server_with(FileConfig {
        agent_svid_ttl: Some(600),
        ..FileConfig::default()
    })
    .await;
    let token = s.admin.create_join_token(600).await.unwrap();
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let answer = s
        .anonymous()
        .attest(&token.token, &agent_csr(&key))
        .await
        .unwrap();
    let leaf = &decode_chain(&answer.svid_chain).unwrap()[0];
    let remaining = leaf.not_after() - unix_now();
    assert!(
        (590..=600).contains(&remaining),
        "valid for {remaining} s more"
    );
    s.tasks.stop().await;
}

// ---------------------------------------------------------------------------------------
// Sync at scale: full-sync pages, pruned deletions

fn new_entry(path: &str, parent: &WorkloadId) -> NewEntry {
    NewEntry {
        spiffe_id: WorkloadId::parse(&format!("spiffe://agents.test{path}")).unwrap(),
        parent_id: parent.clone(),
        selectors: vec!["unix:uid:1".parse().unwrap()],
        x509_ttl: 600,
        jwt_ttl: 60,
        dns_names: Vec::new(),
        hint: None,
        admin: false,
        downstream: false,
        federates_with: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_sync_lists_only_the_agents_entries_in_pages_continued_with_until() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let (_, other_id) = s.agent().await;
    let store = &s.running.state.store;
    let page = wimse_server::agent_api::PAGE;
    // Own entries interleaved with many of another agent's, plus a nested one.
    let mut batch = Vec::new();
    for i in 0..page + 10 {
        batch.push(new_entry(&format!("/mine/{i}"), &agent_id));
        batch.push(new_entry(&format!("/theirs/{i}"), &other_id));
    }
    store.create_entries(batch).await.unwrap();
    let nested_parent = WorkloadId::parse("spiffe://agents.test/mine/0").unwrap();
    store
        .create_entry(new_entry("/mine/0/child", &nested_parent))
        .await
        .unwrap();

    let first = agent.entries(0, 0).await.unwrap();
    assert_eq!(first.changes.len(), page);
    assert!(first.more && !first.resync);
    let until = first
        .until
        .expect("a full sync with more pages names its end");
    let second = agent.entries_until(first.revision, until).await.unwrap();
    assert!(!second.more);
    assert_eq!(second.until, None);
    assert_eq!(second.revision, until);
    let names: std::collections::HashSet<String> = first
        .changes
        .iter()
        .chain(&second.changes)
        .map(|c| match c {
            SyncChange::Entry(view) => view.spiffe_id.clone(),
            SyncChange::Deleted(id) => panic!("a full sync lists no deletion: {id}"),
        })
        .collect();
    assert_eq!(names.len(), page + 11);
    assert!(names.iter().all(|n| n.contains("/mine/")));
    s.tasks.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_behind_pruned_deletions_gets_a_full_resync() {
    let s = server().await;
    let (agent, agent_id) = s.agent().await;
    let kept = s.entry("spiffe://agents.test/kept", &agent_id).await;
    let gone = s.entry("spiffe://agents.test/gone", &agent_id).await;
    let synced = agent.entries(0, 0).await.unwrap();
    assert_eq!(synced.changes.len(), 2);

    s.admin.delete_entry(&gone.id).await.unwrap();
    // Before pruning, the deletion arrives incrementally.
    let delta = agent.entries(synced.revision, 0).await.unwrap();
    assert_eq!(delta.changes, vec![SyncChange::Deleted(gone.id.clone())]);
    assert!(!delta.resync);

    // The tombstone outlives its retention and is pruned (the maintenance tick calls this
    // with now minus `tombstone_retention`).
    let pruned = s
        .running
        .state
        .store
        .prune_tombstones(unix_now() + 1)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    // An agent still at the old revision cannot learn of the deletion: full resync.
    let resync = agent.entries(synced.revision, 0).await.unwrap();
    assert!(resync.resync);
    assert_eq!(resync.changes, vec![SyncChange::Entry(kept.clone())]);
    assert!(!resync.more);
    // One already past the deletion goes on incrementally.
    let current = agent.entries(delta.revision, 0).await.unwrap();
    assert!(!current.resync);
    assert!(current.changes.is_empty());
    s.tasks.stop().await;
}
