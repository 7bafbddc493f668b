//! Benchmarks of wimse-core (placeholder until the verify benches land).
fn main() {}
