//! The gateway: the identity proxy at a trust domain's boundary (`wimse gateway run`).
//!
//! Outside clients call it with OAuth access tokens from an authorization server the
//! trust domain trusts. The gateway admits them, exchanges each access token at the trust
//! domain's token service for a Txn-Token narrowed to the route's scope (RFC 8693, over
//! mTLS as its own workload identity), and forwards the request to the inward workload
//! with that Txn-Token and its own WIT and proof. Inward, workloads see one caller they
//! can authenticate (the gateway) and one security context they can verify and authorize
//! on (the Txn-Token: who the outside subject is, what it may do, and from where).
//!
//! # Layout
//!
//! - [`config`]: the TOML file, checked whole when read.
//! - [`route`]: path prefixes to upstreams and scopes, and the refusal of ambiguous paths.
//! - [`ingress`]: [`Gateway`], the per-request steps, and its refusals.
//! - [`egress`]: [`egress::Egress`], internal workloads' calls to outside services, their
//!   identity generalized to the gateway's.
//! - [`metrics`]: Prometheus counters.
//! - `forward`: streamed request bodies, and route timeouts counted from their end.
//!
//! The listener serves plain HTTP, or HTTPS with an ordinary certificate (`[tls]`,
//! optionally asking outside clients for theirs), HTTP/1.1 and HTTP/2 alike. Inward
//! routes may speak HTTP/2 to their upstreams, for gRPC. Egress routes speak HTTP/1.1 and
//! read request bodies whole (up to 16 MiB).
#![forbid(unsafe_code)]

pub mod client_ip;
pub mod config;
pub mod egress;
mod forward;
pub mod ingress;
pub mod metrics;
pub mod route;

pub use config::{ConfigError, GatewayConfig};
pub use ingress::{Gateway, Refusal};
pub use metrics::GatewayMetrics;
pub use wimse_remote::issuers::IssuerKeys;
