//! Placeholder, replaced by the verification benchmark.
fn main() {}
