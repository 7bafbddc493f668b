//! The pure identity model of wimse.
#![forbid(unsafe_code)]

pub mod digest;
pub mod jose;
pub mod json;
pub mod x509;
