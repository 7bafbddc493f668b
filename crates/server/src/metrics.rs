//! Prometheus metrics of the server, served at `/metrics` in the text exposition format.

use crate::datastore::{Authority, AuthorityKind, AuthorityState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label of an issuance metric: what was issued.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `x509`, `wit`, `jwt` or `agent`.
    pub kind: String,
}

/// The labels of a federated bundle fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FederationLabel {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// The labels of the signing authorities gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabel {
    /// `x509`, `jwt` or `wit`.
    pub kind: &'static str,
    /// `prepared`, `active`, `retired` or `tainted`.
    pub state: &'static str,
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Credentials issued, by kind.
    pub issued: Family<KindLabel, Counter>,
    /// Issuance failures, by kind.
    pub issue_errors: Family<KindLabel, Counter>,
    /// Issuance latency in seconds, by kind.
    pub issue_seconds: Family<KindLabel, Histogram>,
    /// Registration entries (set on each scrape).
    pub entries: Gauge,
    /// Attested agents (set on each scrape).
    pub agents: Gauge,
    /// The trust domain's signing authorities (every replica's), by kind and state (set
    /// on each scrape): alert on `state="tainted"` left unrevoked, or on no `active` key.
    pub authorities: Family<AuthorityLabel, Gauge>,
    /// Key rotations performed by this replica.
    pub rotations: Counter,
    /// Federated bundle fetches by this replica, by trust domain and outcome.
    pub federation_refreshes: Family<FederationLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wimse_server");
        let issued = Family::<KindLabel, Counter>::default();
        let issue_errors = Family::<KindLabel, Counter>::default();
        let issue_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let entries = Gauge::default();
        let agents = Gauge::default();
        let authorities = Family::<AuthorityLabel, Gauge>::default();
        let rotations = Counter::default();
        let federation_refreshes = Family::<FederationLabel, Counter>::default();
        registry.register("issued", "Credentials issued", issued.clone());
        registry.register(
            "issue_errors",
            "Credential issuance failures",
            issue_errors.clone(),
        );
        registry.register(
            "issue_seconds",
            "Credential issuance latency",
            issue_seconds.clone(),
        );
        registry.register("entries", "Registration entries", entries.clone());
        registry.register("agents", "Attested agents", agents.clone());
        registry.register(
            "authorities",
            "Signing authorities of the trust domain, by kind and state",
            authorities.clone(),
        );
        registry.register("rotations", "Signing key rotations", rotations.clone());
        registry.register(
            "federation_refreshes",
            "Fetches of federated trust domains' bundles",
            federation_refreshes.clone(),
        );
        Metrics {
            registry,
            issued,
            issue_errors,
            issue_seconds,
            entries,
            agents,
            authorities,
            rotations,
            federation_refreshes,
        }
    }
}

impl Metrics {
    /// Also counts the fetches of the token service's outside issuers' keys
    /// (`wimse_server_issuer_key_fetches_total`, `wimse_server_issuer_keys`).
    #[must_use]
    pub fn with_issuers(mut self, issuers: &wimse_remote::issuers::IssuerKeys) -> Self {
        issuers.register_metrics(&mut self.registry);
        self
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Sets the authorities gauge from every replica's `records`: a value for each kind
    /// and state, zeros included, so that an alert on no `active` key can fire. Each
    /// value is set whole, so concurrent scrapes cannot add up.
    pub fn set_authorities(&self, records: &[Authority]) {
        for kind in AuthorityKind::ALL {
            for state in AuthorityState::ALL {
                let count = records
                    .iter()
                    .filter(|r| r.kind == kind && r.state == state)
                    .count();
                let label = AuthorityLabel {
                    kind: kind.as_str(),
                    state: state.as_str(),
                };
                self.authorities
                    .get_or_create(&label)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    /// Records one issuance of `kind` that took `seconds`.
    pub fn observe_issue(&self, kind: &str, seconds: f64, ok: bool) {
        let label = KindLabel {
            kind: kind.to_owned(),
        };
        if ok {
            self.issued.get_or_create(&label).inc();
        } else {
            self.issue_errors.get_or_create(&label).inc();
        }
        self.issue_seconds.get_or_create(&label).observe(seconds);
    }
}

/// `registry` in the Prometheus text format (empty if encoding fails, which writing to a
/// `String` does not). The agent's metrics render through this too.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    render_all(&[registry])
}

/// Several registries as one exposition (one `# EOF` at the end), for a component with
/// metrics from more than one part (the gateway's ingress and egress).
pub fn render_all(registries: &[&prometheus_client::registry::Registry]) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    let written = registries
        .iter()
        .try_for_each(|r| encode_registry(&mut out, r))
        .and_then(|()| encode_eof(&mut out));
    if written.is_err() {
        out.clear();
    }
    out
}

/// The health listener of a component whose readiness is a quick, synchronous question
/// (the agent, the proxies): `/healthz` answers `ok`; `/readyz` answers `ready`, or 503
/// with the reason `ready` gives; `/metrics` answers what `metrics` renders.
pub fn health_router(
    ready: impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match ready() {
                    Ok(()) => (StatusCode::OK, "ready"),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                };
                async move { answer }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move { text }
            }),
        )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    async fn get(router: &axum::Router, path: &str) -> (u16, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_health_router_reports_readiness_as_it_changes_and_renders_metrics() {
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let router = health_router(
            move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not yet")
                }
            },
            || "metric 1\n".to_owned(),
        );
        assert_eq!(get(&router, "/healthz").await, (200, "ok".into()));
        assert_eq!(get(&router, "/readyz").await, (503, "not yet".into()));
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(&router, "/readyz").await, (200, "ready".into()));
        assert_eq!(get(&router, "/metrics").await, (200, "metric 1\n".into()));
    }
}
