//! Federation end to end inside one process: two real servers of two trust domains on
//! 127.0.0.1, each fetching the other's bundle from its bundle endpoint (`https_spiffe`),
//! and a Web PKI endpoint (`https_web`) served by the test with a CA made by rcgen.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test"
)]

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use wimse_core::bundle::{BundleSet, TrustBundle};
use wimse_core::jose::SigningKey;
use wimse_core::token::unix_now;
use wimse_core::{TrustDomain, WorkloadId};
use wimse_remote::fetch::FetchError;
use wimse_server::agent_api::client::{AgentApiClient, AgentIdentity, decode_chain};
use wimse_server::api::{EntryRequest, FederationRequest};
use wimse_server::config::{FederationFile, FileConfig};
use wimse_server::datastore::{Datastore, EndpointProfile, FederationRelationship};
use wimse_server::federation::{self, FederationError};
use wimse_server::run::{Running, Tasks, start};

struct Server {
    running: Running,
    _tasks: Tasks,
    _dir: tempfile::TempDir,
}

async fn server(trust_domain: &str, settings: FileConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = FileConfig {
        trust_domain: Some(trust_domain.into()),
        data_dir: Some(dir.path().join("data")),
        bind: Some("127.0.0.1:0".parse().unwrap()),
        ..settings
    }
    .resolve()
    .unwrap();
    let (running, tasks) = start(config).await.unwrap();
    Server {
        running,
        _tasks: tasks,
        _dir: dir,
    }
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

impl Server {
    fn bundle(&self) -> TrustBundle {
        (*self.running.state.bundle()).clone()
    }

    /// What an operator copies out of band to bootstrap an `https_spiffe` relationship
    /// with this server: its X.509 authorities.
    fn first_bundle(&self) -> TrustBundle {
        let mut first = TrustBundle::new(self.bundle().trust_domain().clone());
        first.x509_authorities = self.bundle().x509_authorities;
        first
    }

    fn endpoint(&self) -> String {
        format!(
            "https://{}/.well-known/spiffe-bundle",
            self.running.local_addr
        )
    }

    fn server_id(&self) -> WorkloadId {
        self.running.state.spiffe_id.clone()
    }

    async fn refresh(
        &self,
        relationship: &FederationRelationship,
    ) -> Result<TrustBundle, FederationError> {
        federation::refresh(&self.running.state, relationship).await
    }

    /// The bundle of `trust_domain` this server holds.
    async fn stored_bundle(&self, trust_domain: &str) -> Option<TrustBundle> {
        let store = &self.running.state.store;
        let stored = store.get_federated_bundle(&td(trust_domain)).await.unwrap();
        stored.map(|s| s.bundle)
    }

    async fn stored_error(&self, trust_domain: &TrustDomain) -> Option<String> {
        let store = &self.running.state.store;
        store
            .get_federation(trust_domain)
            .await
            .unwrap()
            .unwrap()
            .last_error
    }
}

/// A relationship with `other`'s bundle endpoint, authenticated as `endpoint_id`.
fn relationship_with(other: &Server, endpoint_id: WorkloadId) -> FederationRelationship {
    FederationRelationship {
        trust_domain: other.bundle().trust_domain().clone(),
        bundle_endpoint_url: other.endpoint(),
        profile: EndpointProfile::HttpsSpiffe { endpoint_id },
        created_at: unix_now(),
        last_refresh_at: None,
        last_error: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_serving_https_spiffe_endpoint_is_fetched_after_a_bootstrap_bundle() {
    let a = server("a.test", FileConfig::default()).await;
    let b = server("b.test", FileConfig::default()).await;
    let store = &a.running.state.store;
    let relationship = relationship_with(&b, b.server_id());
    store.create_federation(&relationship).await.unwrap();

    // Without a first bundle of b.test, its endpoint cannot be authenticated.
    let refused = a.refresh(&relationship).await.unwrap_err();
    assert!(
        matches!(refused, FederationError::NoEndpointBundle(_)),
        "{refused}"
    );
    let recorded = a.stored_error(&td("b.test")).await.unwrap();
    assert!(recorded.contains("bundle set"), "{recorded}");

    // The operator gives the first bundle (as read out of band); the fetch then works and
    // stores what b.test publishes, under b.test, apart from a.test's own bundle.
    store
        .put_federated_bundle(&b.first_bundle(), unix_now())
        .await
        .unwrap();
    let fetched = a.refresh(&relationship).await.unwrap();
    assert_eq!(fetched, b.bundle());
    let stored = a.stored_bundle("b.test").await.unwrap();
    assert_eq!(stored, b.bundle());
    assert!(!stored.jwt_authorities.is_empty());
    assert!(!stored.wit_authorities.is_empty());
    assert_eq!(a.stored_error(&td("b.test")).await, None);
    assert_eq!(a.bundle().trust_domain(), &td("a.test"));
    let metrics = a.running.state.metrics.render();
    for line in [
        r#"wimse_server_federation_refreshes_total{trust_domain="b.test",outcome="error"} 1"#,
        r#"wimse_server_federation_refreshes_total{trust_domain="b.test",outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The agents of a.test get it from the agent API, as a SPIFFE bundle map.
    let agent = attested_agent(&a).await;
    let map = agent.federated_bundles().await.unwrap();
    let set = BundleSet::from_map_json(map.as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.get(&td("b.test")), Some(&b.bundle()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_with_another_identity_or_other_roots_is_refused() {
    let a = server("a.test", FileConfig::default()).await;
    let b = server("b.test", FileConfig::default()).await;
    let impostor = server("b.test", FileConfig::default()).await;
    let store = &a.running.state.store;
    store
        .put_federated_bundle(&b.first_bundle(), unix_now())
        .await
        .unwrap();

    // The endpoint is b.test's server, but a.test expects another SPIFFE ID.
    let wrong_id = WorkloadId::parse("spiffe://b.test/bundle-endpoint").unwrap();
    let relationship = relationship_with(&b, wrong_id);
    store.create_federation(&relationship).await.unwrap();
    let refused = a.refresh(&relationship).await.unwrap_err();
    assert!(
        matches!(refused, FederationError::Fetch(FetchError::Connect { .. })),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("spiffe://b.test/wimse/server"),
        "{refused}"
    );

    // Another server claiming b.test, whose CA the bootstrap bundle does not hold.
    let relationship = relationship_with(&impostor, impostor.server_id());
    store.update_federation(&relationship).await.unwrap();
    let refused = a.refresh(&relationship).await.unwrap_err();
    assert!(
        matches!(refused, FederationError::Fetch(FetchError::Connect { .. })),
        "{refused}"
    );
    // Nothing of the impostor was stored.
    assert_eq!(a.stored_bundle("b.test").await, Some(b.first_bundle()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_older_than_the_stored_one_is_refused_as_a_replay() {
    let a = server("a.test", FileConfig::default()).await;
    let b = server("b.test", FileConfig::default()).await;
    let store = &a.running.state.store;
    let mut newer = b.bundle();
    newer.sequence += 1000;
    store
        .put_federated_bundle(&newer, unix_now())
        .await
        .unwrap();
    let relationship = relationship_with(&b, b.server_id());
    store.create_federation(&relationship).await.unwrap();
    let refused = a.refresh(&relationship).await.unwrap_err();
    assert!(
        matches!(refused, FederationError::SequenceWentBack { .. }),
        "{refused}"
    );
    assert_eq!(a.stored_bundle("b.test").await, Some(newer));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_refresher_fetches_a_new_relationship_by_itself_and_admin_entries_may_federate() {
    let a = server("a.test", FileConfig::default()).await;
    let b = server("b.test", FileConfig::default()).await;
    let admin = wimse_server::admin::client::AdminClient::new(&a.running.admin_socket);
    let mut req = FederationRequest {
        trust_domain: "b.test".into(),
        bundle_endpoint_url: b.endpoint(),
        profile: "https_spiffe".into(),
        endpoint_spiffe_id: Some(b.server_id().to_string()),
        bundle: Some(b.bundle().to_spiffe_json()),
        bundle_format: None,
    };
    // The admin API checks what it is given.
    req.trust_domain = "a.test".into();
    assert!(admin.create_federation(&req).await.is_err());
    // An update of a relationship that does not exist stores nothing, not even its bundle.
    req.trust_domain = "b.test".into();
    assert!(admin.update_federation("b.test", &req).await.is_err());
    let store = &a.running.state.store;
    assert_eq!(a.stored_bundle("b.test").await, None);
    // Nor does a create whose bundle is not in the format it names.
    req.bundle_format = Some("pem".into());
    assert!(admin.create_federation(&req).await.is_err());
    assert_eq!(store.get_federation(&td("b.test")).await.unwrap(), None);
    req.bundle_format = None;
    admin.create_federation(&req).await.unwrap();
    assert!(
        admin.create_federation(&req).await.is_err(),
        "a second one is refused"
    );

    // The background refresher records a successful fetch without being asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = store.get_federation(&td("b.test")).await.unwrap().unwrap();
        if r.last_refresh_at.is_some() {
            assert_eq!(r.last_error, None);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Entries may federate with b.test, but not with a domain there is nothing of.
    let entry = |federates_with: &[&str]| EntryRequest {
        spiffe_id: "spiffe://a.test/w".into(),
        parent_id: "spiffe://a.test/wimse/server".into(),
        selectors: vec!["unix:uid:1".into()],
        federates_with: federates_with.iter().map(|s| (*s).to_owned()).collect(),
        ..EntryRequest::default()
    };
    let refused = admin.create_entry(&entry(&["c.test"])).await.unwrap_err();
    assert!(refused.to_string().contains("c.test"), "{refused}");
    let refused = admin.create_entry(&entry(&["a.test"])).await.unwrap_err();
    assert!(
        refused.to_string().contains("own trust domain"),
        "{refused}"
    );
    let created = admin
        .create_entry(&entry(&["b.test", "b.test"]))
        .await
        .unwrap();
    assert_eq!(created.federates_with, ["b.test"]);
}

/// A TLS server with a certificate for 127.0.0.1 from a CA made here, answering
/// `answer` (status, body) to every request; its port and the CA's PEM.
async fn web_endpoint(answer: (u16, String)) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test web CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, body) = answer;
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (axum::http::StatusCode::from_u16(status).unwrap(), body) }
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

fn web_relationship(port: u16) -> FederationRelationship {
    FederationRelationship {
        trust_domain: td("web.test"),
        bundle_endpoint_url: format!("https://127.0.0.1:{port}/bundle"),
        profile: EndpointProfile::HttpsWeb,
        created_at: unix_now(),
        last_refresh_at: None,
        last_error: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_web_endpoint_is_checked_against_the_web_roots() {
    let mut published = TrustBundle::new(td("web.test"));
    published.sequence = 4;
    published.refresh_hint = Some(60);
    let (port, ca_pem) = web_endpoint((200, published.to_spiffe_json())).await;

    // With the Web PKI's roots, a private CA's certificate is refused.
    let public = server("a.test", FileConfig::default()).await;
    let refused = public.refresh(&web_relationship(port)).await;
    assert!(
        matches!(
            refused,
            Err(FederationError::Fetch(FetchError::Connect { .. }))
        ),
        "{refused:?}"
    );

    // With that CA configured as the web roots, the bundle is fetched.
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, ca_pem).unwrap();
    let private = server(
        "a.test",
        FileConfig {
            federation_web_roots: Some(roots),
            ..FileConfig::default()
        },
    )
    .await;
    private
        .running
        .state
        .store
        .create_federation(&web_relationship(port))
        .await
        .unwrap();
    let fetched = private.refresh(&web_relationship(port)).await.unwrap();
    assert_eq!(fetched, published);

    // An endpoint that answers an error status, or something that is not a bundle.
    let (port, ca_pem) = web_endpoint((404, "no".into())).await;
    std::fs::write(dir.path().join("roots.pem"), &ca_pem).unwrap();
    let refused = private.refresh(&web_relationship(port)).await;
    // The roots file is read per fetch, so the new CA applies at once.
    assert!(
        matches!(
            refused,
            Err(FederationError::Fetch(FetchError::Status {
                status: 404,
                ..
            }))
        ),
        "{refused:?}"
    );
    let (port, ca_pem) = web_endpoint((200, "{\"keys\": 7}".into())).await;
    std::fs::write(dir.path().join("roots.pem"), &ca_pem).unwrap();
    let refused = private.refresh(&web_relationship(port)).await;
    assert!(
        matches!(refused, Err(FederationError::Bundle { .. })),
        "{refused:?}"
    );
    let (port, ca_pem) = web_endpoint((200, " ".repeat(federation::MAX_BUNDLE_BYTES + 1))).await;
    std::fs::write(dir.path().join("roots.pem"), &ca_pem).unwrap();
    let refused = private.refresh(&web_relationship(port)).await;
    assert!(
        matches!(
            refused,
            Err(FederationError::Fetch(FetchError::Body { .. }))
        ),
        "{refused:?}"
    );
}

/// An agent of `server`, attested with a join token.
async fn attested_agent(server: &Server) -> AgentApiClient {
    let admin = wimse_server::admin::client::AdminClient::new(&server.running.admin_socket);
    let token = admin.create_join_token(600).await.unwrap();
    let key = SigningKey::generate(wimse_core::jose::Algorithm::Es256).unwrap();
    let id = WorkloadId::parse(&token.agent_id).unwrap();
    let csr = wimse_core::x509::build_csr(&key, &id).unwrap();
    let anonymous = AgentApiClient::new(server.running.local_addr, &server.bundle(), None).unwrap();
    let answer = anonymous.attest(&token.token, &csr).await.unwrap();
    let identity = AgentIdentity {
        chain: decode_chain(&answer.svid_chain).unwrap(),
        key: Arc::new(key),
    };
    AgentApiClient::new(server.running.local_addr, &server.bundle(), Some(&identity)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_hangs_delays_no_other_domains_refresh() {
    let a = server("a.test", FileConfig::default()).await;
    let b = server("b.test", FileConfig::default()).await;
    let store = &a.running.state.store;
    // A bundle endpoint that accepts connections and never answers, for a trust domain
    // listed before b.test.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!(
        "https://{}/.well-known/spiffe-bundle",
        silent.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    store
        .create_federation(&FederationRelationship {
            trust_domain: td("a-hanging.test"),
            bundle_endpoint_url: silent_url,
            profile: EndpointProfile::HttpsWeb,
            created_at: unix_now(),
            last_refresh_at: None,
            last_error: None,
        })
        .await
        .unwrap();
    store
        .create_federation(&relationship_with(&b, b.server_id()))
        .await
        .unwrap();
    store
        .put_federated_bundle(&b.first_bundle(), unix_now())
        .await
        .unwrap();

    // One scan: b.test's bundle arrives while the hanging endpoint still holds its fetch
    // (which ends only at the 10 s fetch timeout).
    let state = Arc::clone(&a.running.state);
    let scan = tokio::spawn(async move { federation::refresh_due(&state, unix_now()).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while a.stored_bundle("b.test").await != Some(b.bundle()) {
        assert!(
            std::time::Instant::now() < deadline,
            "b.test was not refreshed while another endpoint hung"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!scan.is_finished(), "the hanging fetch had already ended");
    scan.await.unwrap().unwrap();
    let hung = a.stored_error(&td("a-hanging.test")).await.unwrap();
    assert!(!hung.is_empty());
    assert_eq!(a.stored_error(&td("b.test")).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn relationships_declared_in_the_configuration_are_kept_as_declared() {
    let b = server("b.test", FileConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("b-bundle.json");
    std::fs::write(&bootstrap, b.first_bundle().to_spiffe_json()).unwrap();
    let declared = FederationFile {
        trust_domain: "b.test".into(),
        bundle_endpoint_url: b.endpoint(),
        profile: "https_spiffe".into(),
        endpoint_spiffe_id: Some(b.server_id().to_string()),
        trust_bundle: Some(bootstrap),
        trust_bundle_format: None,
    };
    let a = server(
        "a.test",
        FileConfig {
            federation: vec![declared.clone()],
            ..FileConfig::default()
        },
    )
    .await;

    // At start the relationship and its first bundle are stored, and the refresher then
    // fetches what b.test publishes.
    let store = &a.running.state.store;
    let stored = store.get_federation(&td("b.test")).await.unwrap().unwrap();
    assert_eq!(stored.bundle_endpoint_url, b.endpoint());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.stored_bundle("b.test").await != Some(b.bundle()) {
        assert!(std::time::Instant::now() < deadline, "b.test never fetched");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Declared again (a restart): alike, nothing changes, and the fetched bundle is not
    // replaced by the bootstrap one; with another endpoint, the relationship is updated.
    let request = |file: &FederationFile| {
        let text = std::fs::read_to_string(file.trust_bundle.as_ref().unwrap()).unwrap();
        FederationRequest {
            trust_domain: file.trust_domain.clone(),
            bundle_endpoint_url: file.bundle_endpoint_url.clone(),
            profile: file.profile.clone(),
            endpoint_spiffe_id: file.endpoint_spiffe_id.clone(),
            bundle: Some(text),
            bundle_format: None,
        }
    };
    let refreshed = stored_refresh(&a).await;
    assert!(refreshed.is_some());
    federation::declare(&a.running.state, &[request(&declared)])
        .await
        .unwrap();
    assert_eq!(
        stored_refresh(&a).await,
        refreshed,
        "an unchanged declaration keeps the schedule"
    );
    assert_eq!(a.stored_bundle("b.test").await, Some(b.bundle()));
    let moved = FederationFile {
        bundle_endpoint_url: "https://127.0.0.1:1/.well-known/spiffe-bundle".into(),
        ..declared
    };
    federation::declare(&a.running.state, &[request(&moved)])
        .await
        .unwrap();
    let updated = store.get_federation(&td("b.test")).await.unwrap().unwrap();
    assert_eq!(updated.bundle_endpoint_url, moved.bundle_endpoint_url);

    // A declaration the admin API would refuse stops the server from starting.
    let own = FederationFile {
        trust_domain: "a.test".into(),
        ..moved
    };
    let refused = FileConfig {
        trust_domain: Some("a.test".into()),
        federation: vec![own],
        ..FileConfig::default()
    }
    .resolve()
    .unwrap_err();
    assert!(refused.to_string().contains("federation"), "{refused}");
}

/// When `a` last refreshed its relationship with b.test.
async fn stored_refresh(a: &Server) -> Option<i64> {
    let store = &a.running.state.store;
    store
        .get_federation(&td("b.test"))
        .await
        .unwrap()
        .unwrap()
        .last_refresh_at
}
