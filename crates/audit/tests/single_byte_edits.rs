//! Property: any single-byte change anywhere in a synced log is detected (or leaves a torn
//! final line, reported as such), and nothing panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod support;

use std::sync::OnceLock;

use proptest::prelude::*;
use support::*;
use wimse_audit::{VerifyError, VerifyOptions, verify};

/// One closed log with records, checkpoints and a rotation-free single file.
fn original() -> &'static [u8] {
    static LOG: OnceLock<Vec<u8>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_log(&path, key(), 6, 3);
        assert_no_secrets(dir.path());
        std::fs::read(&path).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_single_byte_edit_is_always_detected(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let log = original();
        let at = position.index(log.len());
        prop_assume!(log[at] != byte);
        let mut edited = log.to_vec();
        edited[at] = byte;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &edited).unwrap();
        match verify(&[&path], &VerifyOptions::default()) {
            Err(VerifyError::Broken(_)) => {}
            // Only the final newline can be changed without breaking a line: the last
            // line then reads as torn, which the report says.
            Ok(report) => {
                prop_assert_eq!(at, log.len() - 1);
                prop_assert!(report.torn_tail.is_some());
                prop_assert!(!report.closed);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
        let _ = wimse_audit::read_entries(&path);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_line_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wimse_audit::parse_line(&bytes);
    }
}
