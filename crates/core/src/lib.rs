//! The pure identity model of wimse.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod digest;
pub mod id;
pub mod jose;
pub mod json;
pub mod token;
