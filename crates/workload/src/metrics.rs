//! Prometheus metrics of the layer and the proxies (`wimse proxy ... --health-bind`
//! serves them at `/metrics`).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `wimse_proxy_requests_total` | `outcome` (`allowed`, `refused`, `forbidden`), `auth_method` | admission decisions |
//! | `wimse_proxy_refusals_total` | `reason` (the problem code) | credential refusals (400) by reason |
//! | `wimse_proxy_admission_seconds` | — | time to authenticate and authorize one request |
//! | `wimse_proxy_upstream_errors_total` | — | inbound requests the upstream service did not answer |
//! | `wimse_proxy_outbound_requests_total` | `outcome` (`forwarded`, `tunneled`, `refused`, `destination-not-allowed`, `no-credentials`, `upstream-error`, `response-refused`) | outbound proxy requests |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// An admission decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `allowed`, `refused` (credentials, 400) or `forbidden` (policy, 403).
    pub outcome: &'static str,
    /// `wit-wpt`, `http-sig`, `mtls`, `jwt-svid`, or `none` when authentication failed.
    pub auth_method: &'static str,
}

/// A refusal's reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The problem code, as in `urn:wimse:problem:<code>`.
    pub reason: &'static str,
}

/// What became of an outbound request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `forwarded`, `refused`, `no-credentials`, `upstream-error` or `response-refused`.
    pub outcome: &'static str,
}

/// The metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admission decisions.
    pub requests: Family<DecisionLabel, Counter>,
    /// Credential refusals by reason.
    pub refusals: Family<ReasonLabel, Counter>,
    /// Authentication plus authorization time, seconds.
    pub admission_seconds: Histogram,
    /// Inbound requests the upstream did not answer.
    pub upstream_errors: Counter,
    /// Outbound requests by outcome.
    pub outbound: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_prefix("wimse_proxy")
    }
}

impl Metrics {
    /// The metrics with names under `prefix` instead of `wimse_proxy` (the gateway's
    /// egress listener uses `wimse_gateway_egress`).
    pub fn with_prefix(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<DecisionLabel, Counter>::default();
        let refusals = Family::<ReasonLabel, Counter>::default();
        // 10 µs to about 5 s.
        let admission_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        let upstream_errors = Counter::default();
        let outbound = Family::<OutcomeLabel, Counter>::default();
        registry.register("requests", "Admission decisions", requests.clone());
        registry.register(
            "refusals",
            "Credential refusals by reason",
            refusals.clone(),
        );
        registry.register(
            "admission_seconds",
            "Time to authenticate and authorize a request",
            admission_seconds.clone(),
        );
        registry.register(
            "upstream_errors",
            "Inbound requests the upstream service did not answer",
            upstream_errors.clone(),
        );
        registry.register(
            "outbound_requests",
            "Outbound proxy requests by outcome",
            outbound.clone(),
        );
        Metrics {
            registry,
            requests,
            refusals,
            admission_seconds,
            upstream_errors,
            outbound,
        }
    }

    /// The registry, for rendering in the Prometheus text format.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one admission decision.
    pub fn decision(&self, outcome: &'static str, auth_method: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&DecisionLabel {
                outcome,
                auth_method,
            })
            .inc();
        self.admission_seconds.observe(seconds);
    }

    /// Records one credential refusal.
    pub fn refusal(&self, reason: &'static str, seconds: f64) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
        self.decision("refused", "none", seconds);
    }

    /// Records one outbound request's outcome.
    pub fn outbound(&self, outcome: &'static str) {
        self.outbound.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
