//! The wimse agent (work in progress: configuration only so far).

pub mod config;
