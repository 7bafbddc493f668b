//! Federation with other trust domains (SPIFFE Federation): this server fetches the bundle of
//! each foreign trust domain it has a relationship with from that domain's bundle endpoint,
//! keeps it in the datastore apart from its own bundle, and hands it to agents, which give it
//! to the workloads whose entries federate with that domain.
//!
//! # Fetching
//!
//! - `https_spiffe`: the endpoint's server certificate must be an X509-SVID of the configured
//!   `endpoint_spiffe_id`, chained to the bundle of that ID's trust domain: for a self-serving
//!   endpoint (the usual case) the bundle last fetched from it, so the first one must be set by
//!   the operator (`wimse server federation create --trust-bundle`, or `bundle set`); for an
//!   endpoint of this trust domain, this server's own bundle.
//! - `https_web`: a certificate for the URL's host from the Web PKI (Mozilla's roots, or the
//!   `federation_web_roots` file for a private PKI), checked by rustls/webpki.
//!
//! One `GET` over TLS 1.2 or 1.3, answered 200 within [`FETCH_TIMEOUT`] with at most
//! [`MAX_BUNDLE_BYTES`]; redirects are refused (the configured URL is the only one trusted).
//! The body must be a valid SPIFFE bundle; its trust domain is the relationship's, whatever
//! the body says. A bundle whose `spiffe_sequence` is lower than the stored one is refused, so
//! that a replayed old bundle cannot bring back keys the domain has removed.
//!
//! # Schedule
//!
//! Each relationship is fetched when created, then every `spiffe_refresh_hint` seconds of its
//! stored bundle (default [`DEFAULT_REFRESH`], clamped to [`MIN_REFRESH`]..[`MAX_REFRESH`]).
//! After a failure the next attempt waits the same interval, capped at [`RETRY_AFTER_FAILURE`]
//! (§6.2: retry at the next interval, not aggressively). The outcome of each attempt is
//! stored with the relationship, so every replica on one database shares the schedule and
//! operators see the last error (`wimse server federation show`).

use crate::agent_api::client::SpiffeIdVerifier;
use crate::api::FederationRequest;
use crate::datastore::{
    Datastore, EndpointProfile, FederatedBundle, FederationRelationship, StoreError,
};
use crate::state::State;
use rustls::crypto::aws_lc_rs;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wimse_core::bundle::{BundleError, TrustBundle};
use wimse_core::token::unix_now;
use wimse_core::{TrustDomain, WorkloadId};
use wimse_remote::fetch::{self, FetchError};

/// The longest a bundle fetch may take, connection and TLS handshake included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest bundle accepted from an endpoint.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// How often a bundle is fetched when it carries no `spiffe_refresh_hint` (SPIFFE Trust
/// Domain and Bundle §6.1 suggests 5 minutes).
pub const DEFAULT_REFRESH: u64 = 300;

/// The shortest interval between fetches, whatever the foreign bundle asks for.
pub const MIN_REFRESH: u64 = 5;

/// The longest interval between fetches, whatever the foreign bundle asks for.
pub const MAX_REFRESH: u64 = 24 * 3600;

/// The longest wait before retrying a fetch that failed.
pub const RETRY_AFTER_FAILURE: u64 = 30;

/// How often the schedule is looked at.
const SCAN: Duration = Duration::from_secs(1);

/// Why a relationship was refused or a bundle could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The relationship or bundle given by the operator is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The server's own federation settings are unusable (`federation_web_roots`).
    #[error("{0}")]
    Config(String),
    /// An `https_spiffe` endpoint cannot be authenticated: no bundle of its trust domain.
    #[error(
        "no bundle of `{0}` to authenticate its bundle endpoint with: give the first one with \
         `wimse server bundle set` (or `federation create --trust-bundle`)"
    )]
    NoEndpointBundle(TrustDomain),
    /// The endpoint could not be fetched from: unreachable, refused TLS, not 200 within
    /// [`FETCH_TIMEOUT`], or more than [`MAX_BUNDLE_BYTES`].
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The answer is not a valid SPIFFE bundle.
    #[error("the bundle of `{trust_domain}` is invalid: {source}")]
    Bundle {
        /// The foreign trust domain.
        trust_domain: TrustDomain,
        /// Why.
        source: BundleError,
    },
    /// The fetched bundle is older than the stored one.
    #[error(
        "the bundle of `{trust_domain}` has spiffe_sequence {fetched}, lower than the stored \
         {stored}: refused as a possible replay"
    )]
    SequenceWentBack {
        /// The foreign trust domain.
        trust_domain: TrustDomain,
        /// The stored bundle's sequence.
        stored: u64,
        /// The fetched bundle's sequence.
        fetched: u64,
    },
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates an operator's relationship request for a server of trust domain `own`.
pub fn relationship(
    req: &FederationRequest,
    own: &TrustDomain,
    now: i64,
) -> Result<FederationRelationship, FederationError> {
    let invalid = FederationError::Invalid;
    let trust_domain =
        TrustDomain::new(&req.trust_domain).map_err(|e| invalid(format!("`trust_domain`: {e}")))?;
    if &trust_domain == own {
        return Err(invalid(format!(
            "`{own}` is this server's own trust domain: it cannot federate with itself"
        )));
    }
    endpoint_uri(&req.bundle_endpoint_url)?;
    let profile = match (req.profile.as_str(), &req.endpoint_spiffe_id) {
        ("https_web", None) => EndpointProfile::HttpsWeb,
        ("https_web", Some(_)) => {
            return Err(invalid(
                "`endpoint_spiffe_id` is for `https_spiffe` only".into(),
            ));
        }
        ("https_spiffe", Some(id)) => {
            let endpoint_id =
                WorkloadId::parse(id).map_err(|e| invalid(format!("`endpoint_spiffe_id`: {e}")))?;
            if !endpoint_id.is_spiffe() || endpoint_id.is_trust_domain_id() {
                return Err(invalid(format!(
                    "`endpoint_spiffe_id` `{endpoint_id}` is not the SPIFFE ID of a workload"
                )));
            }
            EndpointProfile::HttpsSpiffe { endpoint_id }
        }
        ("https_spiffe", None) => {
            return Err(invalid(
                "`https_spiffe` needs `endpoint_spiffe_id`: the SPIFFE ID the endpoint's \
                 server certificate carries"
                    .into(),
            ));
        }
        (other, _) => {
            return Err(invalid(format!(
                "`profile` `{other}` is neither `https_web` nor `https_spiffe`"
            )));
        }
    };
    Ok(FederationRelationship {
        trust_domain,
        bundle_endpoint_url: req.bundle_endpoint_url.clone(),
        profile,
        created_at: now,
        last_refresh_at: None,
        last_error: None,
    })
}

/// Parses a bundle endpoint URL: `https`, a host, no userinfo, no fragment.
fn endpoint_uri(url: &str) -> Result<(), FederationError> {
    fetch::https_uri(url)
        .map(drop)
        .map_err(|e| FederationError::Invalid(format!("`bundle_endpoint_url` {e}")))
}

/// Parses a bundle of `trust_domain` given by an operator: SPIFFE bundle JSON, or PEM
/// certificates (X.509 authorities only).
pub fn operator_bundle(
    trust_domain: &TrustDomain,
    text: &str,
    pem: bool,
) -> Result<TrustBundle, FederationError> {
    let bad = |source| FederationError::Bundle {
        trust_domain: trust_domain.clone(),
        source,
    };
    if pem {
        let mut bundle = TrustBundle::new(trust_domain.clone());
        bundle.add_x509_pem(text).map_err(bad)?;
        Ok(bundle)
    } else {
        spiffe_bundle(trust_domain, text.as_bytes())
    }
}

/// Parses the initial bundle a relationship request carries, if any (checked before
/// anything is stored).
pub fn initial_bundle(
    relationship: &FederationRelationship,
    req: &FederationRequest,
) -> Result<Option<TrustBundle>, FederationError> {
    let Some(text) = &req.bundle else {
        if req.bundle_format.is_some() {
            return Err(FederationError::Invalid(
                "`bundle_format` without a `bundle`".into(),
            ));
        }
        return Ok(None);
    };
    let pem = bundle_format_is_pem(req.bundle_format.as_deref())?;
    operator_bundle(&relationship.trust_domain, text, pem).map(Some)
}

/// Whether a bundle format named in a request (default `spiffe`) is `pem`.
pub fn bundle_format_is_pem(format: Option<&str>) -> Result<bool, FederationError> {
    match format.unwrap_or("spiffe") {
        "spiffe" => Ok(false),
        "pem" => Ok(true),
        other => Err(FederationError::Invalid(format!(
            "unknown bundle format `{other}`, expected `spiffe` or `pem`"
        ))),
    }
}

/// Keeps the relationships the configuration file declares (`[[federation]]`), at start:
/// one not stored is created; one stored differently (endpoint or profile) is updated,
/// which restarts its refresh; one stored alike is left alone. A declared first bundle is
/// stored only while no bundle of that trust domain is held, so a restart never puts an
/// old bootstrap bundle over a fetched one.
pub async fn declare(state: &State, declared: &[FederationRequest]) -> Result<(), FederationError> {
    let now = unix_now();
    for request in declared {
        let relationship = relationship(request, &state.config.trust_domain, now)?;
        let bundle = initial_bundle(&relationship, request)?;
        let td = &relationship.trust_domain;
        match state.store.get_federation(td).await? {
            None => {
                state.store.create_federation(&relationship).await?;
                tracing::info!(trust_domain = %td, "federation relationship created from the configuration");
            }
            Some(stored)
                if stored.bundle_endpoint_url != relationship.bundle_endpoint_url
                    || stored.profile != relationship.profile =>
            {
                state.store.update_federation(&relationship).await?;
                tracing::info!(trust_domain = %td, "federation relationship updated from the configuration");
            }
            Some(_) => {}
        }
        if let Some(bundle) = bundle
            && state.store.get_federated_bundle(td).await?.is_none()
        {
            state.store.put_federated_bundle(&bundle, now).await?;
        }
    }
    Ok(())
}

/// Parses SPIFFE bundle JSON as the bundle of `trust_domain`, whatever the text says.
fn spiffe_bundle(trust_domain: &TrustDomain, json: &[u8]) -> Result<TrustBundle, FederationError> {
    TrustBundle::from_spiffe_json(trust_domain.clone(), json).map_err(|source| {
        FederationError::Bundle {
            trust_domain: trust_domain.clone(),
            source,
        }
    })
}

/// Fetches the bundle of `relationship`'s trust domain from its endpoint and checks it
/// against `stored`, the bundle of that trust domain held now.
async fn fetch(
    state: &State,
    relationship: &FederationRelationship,
    stored: Option<&TrustBundle>,
) -> Result<TrustBundle, FederationError> {
    let url = &relationship.bundle_endpoint_url;
    let tls = client_config(state, relationship, stored).await?;
    let fetched = fetch::get(url, Arc::new(tls), MAX_BUNDLE_BYTES, FETCH_TIMEOUT).await?;
    let bundle = spiffe_bundle(&relationship.trust_domain, &fetched.body)?;
    if let Some(stored) = stored
        && bundle.sequence < stored.sequence
    {
        return Err(FederationError::SequenceWentBack {
            trust_domain: relationship.trust_domain.clone(),
            stored: stored.sequence,
            fetched: bundle.sequence,
        });
    }
    Ok(bundle)
}

/// Fetches and stores the bundle of `relationship`'s trust domain, recording the outcome with
/// the relationship. Returns the stored bundle.
pub async fn refresh(
    state: &State,
    relationship: &FederationRelationship,
) -> Result<TrustBundle, FederationError> {
    let td = &relationship.trust_domain;
    let now = unix_now();
    let stored = state
        .store
        .get_federated_bundle(td)
        .await?
        .map(|b| b.bundle);
    let fetched = fetch(state, relationship, stored.as_ref()).await;
    let outcome = if fetched.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .federation_refreshes
        .get_or_create(&crate::metrics::FederationLabel {
            trust_domain: td.to_string(),
            outcome,
        })
        .inc();
    match fetched {
        Ok(bundle) => {
            if stored.as_ref() != Some(&bundle) {
                state.store.put_federated_bundle(&bundle, now).await?;
                tracing::info!(trust_domain = %td, sequence = bundle.sequence, "federated bundle updated");
            }
            state.store.record_federation_refresh(td, now, None).await?;
            Ok(bundle)
        }
        Err(e) => {
            tracing::warn!(trust_domain = %td, error = %e, "federated bundle fetch failed");
            state
                .store
                .record_federation_refresh(td, now, Some(&e.to_string()))
                .await?;
            Err(e)
        }
    }
}

/// Refreshes every relationship that is due at `now`, all at once: an endpoint that hangs
/// until the fetch timeout delays no other domain's refresh.
pub async fn refresh_due(state: &Arc<State>, now: i64) -> Result<(), StoreError> {
    let relationships = state.store.list_federations().await?;
    if relationships.is_empty() {
        return Ok(());
    }
    let bundles: BTreeMap<TrustDomain, FederatedBundle> = state
        .store
        .list_federated_bundles()
        .await?
        .into_iter()
        .map(|b| (b.bundle.trust_domain().clone(), b))
        .collect();
    let mut fetches = tokio::task::JoinSet::new();
    for relationship in relationships {
        let hint = bundles
            .get(&relationship.trust_domain)
            .and_then(|b| b.bundle.refresh_hint);
        if is_due(&relationship, hint, now) {
            let state = Arc::clone(state);
            // The outcome is recorded with the relationship and logged.
            fetches.spawn(async move {
                let _ = refresh(&state, &relationship).await;
            });
        }
    }
    while fetches.join_next().await.is_some() {}
    Ok(())
}

/// Whether `relationship`, whose stored bundle has refresh hint `hint`, is due at `now`.
fn is_due(relationship: &FederationRelationship, hint: Option<u64>, now: i64) -> bool {
    let Some(last) = relationship.last_refresh_at else {
        return true;
    };
    let interval = refresh_interval(hint);
    let wait = if relationship.last_error.is_some() {
        interval.min(RETRY_AFTER_FAILURE)
    } else {
        interval
    };
    now >= last.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX))
}

/// The seconds between fetches for a bundle with refresh hint `hint`.
pub fn refresh_interval(hint: Option<u64>) -> u64 {
    hint.unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Refreshes due relationships until `stop` says so.
pub(crate) async fn run(state: Arc<State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut scan = tokio::time::interval(SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crate::run::stopped(&mut stop) => break,
            _ = scan.tick() => {
                if let Err(e) = refresh_due(&state, unix_now()).await {
                    tracing::warn!(error = %e, "reading federation relationships failed");
                }
            }
        }
    }
}

/// The TLS client configuration for `relationship`'s endpoint; `stored` is the bundle held
/// now of the relationship's trust domain (what a self-serving endpoint is checked against).
async fn client_config(
    state: &State,
    relationship: &FederationRelationship,
    stored: Option<&TrustBundle>,
) -> Result<rustls::ClientConfig, FederationError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let tls_error = |e: rustls::Error| {
        FederationError::Fetch(FetchError::Connect {
            url: relationship.bundle_endpoint_url.clone(),
            message: e.to_string(),
        })
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let mut config = match &relationship.profile {
        EndpointProfile::HttpsSpiffe { endpoint_id } => {
            let endpoint_td = endpoint_id.trust_domain();
            let roots = if endpoint_td == &state.config.trust_domain {
                state.bundle().x509_authorities.clone()
            } else if endpoint_td == &relationship.trust_domain {
                stored
                    .ok_or_else(|| FederationError::NoEndpointBundle(endpoint_td.clone()))?
                    .x509_authorities
                    .clone()
            } else {
                state
                    .store
                    .get_federated_bundle(endpoint_td)
                    .await?
                    .ok_or_else(|| FederationError::NoEndpointBundle(endpoint_td.clone()))?
                    .bundle
                    .x509_authorities
            };
            if roots.is_empty() {
                return Err(FederationError::NoEndpointBundle(endpoint_td.clone()));
            }
            let verifier = SpiffeIdVerifier::new(
                endpoint_id.clone(),
                &roots,
                provider.signature_verification_algorithms,
            )
            .map_err(|e| FederationError::Bundle {
                trust_domain: endpoint_td.clone(),
                source: BundleError::Pem(e.to_string()),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        EndpointProfile::HttpsWeb => {
            return fetch::web_client_config(state.config.federation_web_roots.as_deref())
                .map_err(|e| FederationError::Config(format!("`federation_web_roots`: {e}")));
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn request(profile: &str, id: Option<&str>, url: &str) -> FederationRequest {
        FederationRequest {
            trust_domain: "other.test".into(),
            bundle_endpoint_url: url.into(),
            profile: profile.into(),
            endpoint_spiffe_id: id.map(str::to_owned),
            bundle: None,
            bundle_format: None,
        }
    }

    #[test]
    fn https_spiffe_needs_the_endpoint_id_and_https_web_refuses_one() {
        let own = td("own.test");
        let url = "https://other.test:8443/.well-known/spiffe-bundle";
        let ok = relationship(
            &request(
                "https_spiffe",
                Some("spiffe://other.test/wimse/server"),
                url,
            ),
            &own,
            7,
        )
        .unwrap();
        assert_eq!(ok.trust_domain, td("other.test"));
        assert_eq!(ok.created_at, 7);
        assert_eq!(ok.profile.name(), "https_spiffe");
        for (profile, id) in [
            ("https_spiffe", None),
            ("https_web", Some("spiffe://other.test/wimse/server")),
            ("https_spiffe", Some("spiffe://other.test")),
            ("https_spiffe", Some("https://other.test/x")),
            ("http", None),
        ] {
            let refused = relationship(&request(profile, id, url), &own, 7);
            assert!(
                matches!(refused, Err(FederationError::Invalid(_))),
                "{profile} {id:?}"
            );
        }
        assert!(relationship(&request("https_web", None, url), &own, 7).is_ok());
    }

    #[test]
    fn endpoint_urls_must_be_plain_https() {
        for url in [
            "http://other.test/bundle",
            "https://user@other.test/bundle",
            "https://other.test/bundle#x",
            "/bundle",
            "not a url",
        ] {
            assert!(
                matches!(endpoint_uri(url), Err(FederationError::Invalid(_))),
                "{url}"
            );
        }
        assert!(endpoint_uri("https://127.0.0.1:8443/.well-known/spiffe-bundle").is_ok());
    }

    #[test]
    fn a_server_cannot_federate_with_its_own_trust_domain() {
        let mut req = request("https_web", None, "https://own.test/b");
        req.trust_domain = "spiffe://own.test".into();
        let refused = relationship(&req, &td("own.test"), 0).unwrap_err();
        assert!(
            refused.to_string().contains("own trust domain"),
            "{refused}"
        );
    }

    #[test]
    fn the_schedule_follows_the_hint_within_bounds_and_retries_sooner_after_a_failure() {
        let secs = |v: u64| i64::try_from(v).unwrap();
        let mut rel = relationship(
            &request("https_web", None, "https://other.test/b"),
            &td("own.test"),
            0,
        )
        .unwrap();
        assert!(is_due(&rel, None, 0), "never fetched: due at once");
        rel.last_refresh_at = Some(1000);
        assert!(!is_due(&rel, None, 1000 + 299));
        assert!(is_due(&rel, None, 1000 + 300));
        assert!(!is_due(&rel, Some(60), 1059));
        assert!(is_due(&rel, Some(60), 1060));
        assert!(is_due(&rel, Some(0), 1000 + secs(MIN_REFRESH)));
        assert!(!is_due(&rel, Some(0), 1000 + secs(MIN_REFRESH) - 1));
        assert_eq!(refresh_interval(Some(u64::MAX)), MAX_REFRESH);
        rel.last_error = Some("down".into());
        assert!(!is_due(&rel, None, 1000 + 29));
        assert!(is_due(&rel, None, 1000 + secs(RETRY_AFTER_FAILURE)));
    }

    #[test]
    fn operator_bundles_are_read_as_spiffe_json_or_pem() {
        let refused = operator_bundle(&td("other.test"), "{not json", false).unwrap_err();
        assert!(matches!(refused, FederationError::Bundle { .. }));
        let refused = operator_bundle(&td("other.test"), "no pem here", true).unwrap_err();
        assert!(matches!(refused, FederationError::Bundle { .. }));
        let empty = operator_bundle(&td("other.test"), r#"{"keys":[]}"#, false).unwrap();
        assert_eq!(empty.trust_domain(), &td("other.test"));
    }
}
