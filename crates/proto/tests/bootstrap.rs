//! The generated code in `src/generated.rs` is what the vendored proto compiles to.
//!
//! The build needs no `protoc`: `protox` parses the proto in Rust and `tonic-prost-build`
//! generates from its descriptors. A proto change without regenerated code fails here; bless
//! the new code with `WIMSE_PROTO_BLESS=1 cargo test -p wimse-proto --test bootstrap`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::path::Path;

#[test]
fn generated_code_matches_the_vendored_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let descriptors = protox::compile([root.join("proto/workload.proto")], [root.join("proto")])
        .expect("the vendored proto compiles");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // These messages carry private keys: their `Debug` is written by hand, redacted.
        .skip_debug([".X509SVID", ".WITSVID"])
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("code generation succeeds");
    // A package-less proto generates `_.rs`.
    let fresh = std::fs::read_to_string(out.path().join("_.rs")).unwrap();
    let checked_in_path = root.join("src/generated.rs");
    if std::env::var_os("WIMSE_PROTO_BLESS").is_some() {
        std::fs::write(&checked_in_path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "src/generated.rs is stale; regenerate it with \
         `WIMSE_PROTO_BLESS=1 cargo test -p wimse-proto --test bootstrap`"
    );
}
