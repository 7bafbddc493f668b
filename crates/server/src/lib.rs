//! The wimse server: the authority of one trust domain.
//!
//! This crate will own everything the server does — its CA keys and their rotation, node
//! attestation, issuance to agents, bundle publication and the admin API. For now it holds the
//! first layer all of those stand on: the [`datastore`], where registration entries, attested
//! agents, join-token hashes and the public half of every replica's signing authorities live.
//!
//! It does not parse or verify identifiers or tokens itself; that is `wimse-core`'s job, and the
//! datastore stores [`wimse_core::WorkloadId`]s it was handed.
//!
//! # Layout
//!
//! - [`datastore`]: the model ([`datastore::RegistrationEntry`], [`datastore::AttestedAgent`],
//!   [`datastore::Authority`], ...), the [`datastore::Datastore`] trait, and
//!   [`datastore::SqlStore`], its implementation on SQLite or PostgreSQL.
//!
//! # Where to start reading
//!
//! The [`datastore::Datastore`] trait: each method's doc states its contract (atomicity,
//! ordering, which error it returns), and `datastore/sql.rs` is the one place that turns those
//! contracts into SQL.
#![forbid(unsafe_code)]

pub mod datastore;
