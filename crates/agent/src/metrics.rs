//! Prometheus metrics of the agent, served at `/metrics` on the health listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A Workload API call's method and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    /// The RPC, e.g. `FetchX509SVID`.
    pub method: &'static str,
    /// The gRPC status code name (`Ok`, `PermissionDenied`, ...).
    pub code: String,
}

/// What was minted: `x509`, `wit` or `jwt`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The credential kind.
    pub kind: &'static str,
}

/// The agent's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Workload API calls, by method and status.
    pub calls: Family<CallLabel, Counter>,
    /// Workload API unary call latency and stream first-answer latency, seconds.
    pub call_seconds: Family<KindLabel, Histogram>,
    /// Credentials minted through the server, by kind.
    pub minted: Family<KindLabel, Counter>,
    /// Failed mints, by kind.
    pub mint_errors: Family<KindLabel, Counter>,
    /// Entries synced from the server.
    pub entries: Gauge,
    /// Whether the last exchange with the server succeeded (1) or not (0).
    pub server_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wimse_agent");
        let calls = Family::<CallLabel, Counter>::default();
        let call_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
        });
        let minted = Family::<KindLabel, Counter>::default();
        let mint_errors = Family::<KindLabel, Counter>::default();
        let entries = Gauge::default();
        let server_up = Gauge::default();
        registry.register("workload_api_calls", "Workload API calls", calls.clone());
        registry.register(
            "workload_api_seconds",
            "Workload API latency",
            call_seconds.clone(),
        );
        registry.register("minted", "Credentials minted", minted.clone());
        registry.register(
            "mint_errors",
            "Credential mint failures",
            mint_errors.clone(),
        );
        registry.register("entries", "Registration entries served", entries.clone());
        registry.register("server_up", "Whether the server answers", server_up.clone());
        Metrics {
            registry,
            calls,
            call_seconds,
            minted,
            mint_errors,
            entries,
            server_up,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        wimse_server::metrics::render(&self.registry)
    }

    /// Counts one Workload API call.
    pub fn call(&self, method: &'static str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabel {
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Counts one mint of `kind`.
    pub fn mint(&self, kind: &'static str, ok: bool) {
        let label = KindLabel { kind };
        if ok {
            self.minted.get_or_create(&label).inc();
        } else {
            self.mint_errors.get_or_create(&label).inc();
        }
    }
}
