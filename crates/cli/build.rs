//! Links the `wimse` binary with packed relative relocations (`DT_RELR`) on Linux with glibc.
//!
//! The binary is position-independent (ASLR), so the loader applies some 40,000 relative
//! relocations at start. As classic `RELA` entries (24 bytes each) they fill about 1 MiB
//! that every process reads in full, which showed up as resident memory of each agent and
//! proxy; packed, they take about 12 KiB. GNU ld ≥ 2.38 and lld understand the flag, and
//! ld only packs when the C library supports it (glibc ≥ 2.36); older linkers ignore an
//! unknown `-z` keyword with a warning. Only the binary is affected, not test executables.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
