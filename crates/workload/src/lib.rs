//! The workload library: what a Rust service links to for workload-to-workload
//! authentication and authorization, and the sidecar proxy built from the same parts for
//! services in any language (`wimse proxy`).
//!
//! It owns the request side of the WIMSE bindings (which headers, which audience, which
//! replay cache, which reason a refusal names) and the wiring to the agent, tower/axum and
//! rustls. It does not own any token or certificate rule: WITs and WPTs are verified only
//! by `wimse_core::token::{wit, wpt}`, X509-SVID chains only by
//! `wimse_core::x509::verify_svid_for_trust_domain`.
//!
//! # Layout
//!
//! - [`source`]: [`CredentialSource`], this workload's current credentials and bundles,
//!   followed from the agent and swapped in place on rotation.
//! - [`authn`]: [`Authenticator`], one request's authentication by WIT+WPT, WIT+HTTP
//!   Message Signature, mTLS, or (opt-in) a bearer JWT-SVID; [`AuthError`] reasons.
//! - [`httpsig`] and [`sf`]: RFC 9421 as the WIMSE profile uses it, over a strict RFC 8941
//!   parser.
//! - [`authz`]: [`Policy`], Cedar authorization (the schema is in its doc).
//! - [`layer`]: [`WimseLayer`], the server-side tower layer (verify → authorize →
//!   [`PeerIdentity`] → audit), and RFC 9457 problem responses.
//! - [`metrics`]: Prometheus counters of decisions and refusals, for the proxies.
//! - [`client`]: [`WimseClientLayer`] and [`attach_proof`], the client side.
//! - [`tls`]: mTLS verifiers and the rotating certificate resolver.
//! - [`listen`]: the listener loop (TLS or plain) with its connection limits.
//! - [`proxy`]: the inbound and outbound sidecar routers.
//! - [`token_service`]: [`token_service::TokenServiceClient`], Txn-Tokens from the trust
//!   domain's token service (start a transaction, or narrow one), and
//!   [`token_service::ChainClient`], a transaction carried into a federated trust domain.
//!
//! # Where to start reading
//!
//! [`Authenticator::authenticate`], then [`layer`].
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod client;
pub mod httpsig;
pub mod layer;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod sf;
pub mod source;
pub mod tls;
pub mod token_service;

pub use authn::{
    AuthConfig, AuthError, AuthMethod, Authenticator, Methods, MtlsPeer, PeerAllowList,
    PeerIdentity, Transaction,
};
pub use authz::{AuthzDecision, AuthzRequest, Policy, PolicyError};
pub use client::{ClientError, ProofMethod, WimseClientLayer, attach_proof, http_client};
pub use layer::WimseLayer;
pub use metrics::Metrics;
pub use source::{CredentialSource, Credentials, SourceError};
