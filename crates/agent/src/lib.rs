//! The wimse agent: one per host. It attests itself to the server, attests the local
//! workloads that call it, and hands them their credentials.
//!
//! # Layout
//! - [`config`]: settings (TOML and flags);
//! - [`node`]: the agent's own identity (node attestation, renewal, its files);
//! - [`agent`]: the running agent: entry sync, bundle refresh, minting ahead of need;
//! - [`cache`]: the snapshot everything answers from (entries, credentials, bundle);
//! - [`attestor`]: workload attestation from `SO_PEERCRED` and `/proc`;
//! - [`workload_api`]: the SPIFFE Workload API (with the WIT profile) over gRPC;
//! - [`files`]: credentials written to files atomically;
//! - [`run`]: startup, the unix socket, health and metrics, shutdown.
//!
//! Start reading at [`run::run`], then [`agent`].

pub mod agent;
pub mod attestor;
pub mod cache;
pub mod config;
pub mod files;
pub mod metrics;
pub mod node;
pub mod run;
pub mod workload_api;
