//! The wimse server: the authority of one trust domain (WIMSE arch §3.2.1 "CA/Credential
//! Service", SPIFFE's SPIRE server role).
//!
//! It owns the trust domain's signing keys and their rotation ([`authority`]), issues
//! X.509 workload certificates, WITs and JWT-SVIDs ([`issuer`]), keeps registration
//! entries, agents and join tokens ([`datastore`], SQLite or PostgreSQL), publishes the
//! trust bundle ([`public`]) and is administered over a unix socket ([`admin`]).
//! It does not parse or verify tokens itself: that is `wimse-core`'s job.
//!
//! # Layout
//!
//! - [`config`]: the TOML file and its defaults.
//! - [`run`]: startup, listeners, background rotation, shutdown.
//! - [`state`]: what the listeners and tasks share.
//! - [`authority`], [`issuer`]: keys and credentials.
//! - [`admin`], [`api`]: the admin API and its client; [`agent_api`]: node attestation,
//!   entry sync and issuance to agents over mutual TLS, and its client; [`public`]: bundle endpoints,
//!   health and metrics; [`tls`]: the listener's TLS; [`x509pop`]: x509pop node
//!   attestation (chain policy, challenge, signature).
//! - [`datastore`]: storage behind one type, the same SQL on both databases.
//! - [`federation`]: relationships with other trust domains, and fetching their bundles.
//!
//! Start reading at [`run::start`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent_api;
pub mod api;
pub mod audit;
pub mod authority;
pub mod chaining;
pub mod config;
pub mod datastore;
pub mod federation;
pub mod issuer;
pub mod metrics;
pub mod public;
pub mod run;
pub mod state;
pub mod tls;
pub mod token_service;
pub mod x509pop;
