//! x

pub mod id;

pub use id::{IdError, IdPolicy, TrustDomain, WorkloadId};
