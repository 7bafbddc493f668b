//! Prometheus metrics of the gateway (served at `/metrics` on `health_bind`).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `wimse_gateway_requests_total` | `outcome` (`forwarded` or a refusal's code, as in `invalid-token`) | what became of each outside request |
//! | `wimse_gateway_exchange_seconds` | — | time to get a Txn-Token from the token service |
//! | `wimse_gateway_issuer_key_fetches_total` | `issuer`, `outcome` (`ok`, `error`) | fetches of `jwks_uri` issuers' keys |
//! | `wimse_gateway_issuer_keys` | `issuer` | keys held of each `jwks_uri` issuer (0: none fetched yet, its tokens refused) |
//!
//! The egress listener's layer counts under `wimse_gateway_egress_*` (the workload
//! library's `Metrics` with that prefix: admission decisions, refusals, admission time, and
//! `outbound_requests_total{outcome}` for what became of each admitted call); the CLI
//! renders both registries as one exposition.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What became of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `forwarded`, or the refusal's code.
    pub outcome: &'static str,
}

/// The gateway's metrics and their registry.
pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    exchange: Histogram,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "wimse_gateway_requests",
            "What became of each outside request",
            requests.clone(),
        );
        // 0.5 ms to about 4 s.
        let exchange = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "wimse_gateway_exchange_seconds",
            "Time to get a Txn-Token from the token service",
            exchange.clone(),
        );
        GatewayMetrics {
            registry,
            requests,
            exchange,
        }
    }
}

impl GatewayMetrics {
    /// Also counts the fetches of `issuers`' keys.
    #[must_use]
    pub fn with_issuers(mut self, issuers: &wimse_remote::issuers::IssuerKeys) -> Self {
        issuers.register_metrics(self.registry.sub_registry_with_prefix("wimse_gateway"));
        self
    }

    /// The registry, to render.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one request's outcome.
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Records one token exchange's duration.
    pub fn exchange(&self, seconds: f64) {
        self.exchange.observe(seconds);
    }
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}
