//! Fuzzes the audit log's line parser: no input may panic, and an accepted line must be
//! exactly the canonical encoding of what it parsed to (so a parsed entry always re-hashes
//! to the line it came from).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_audit::entry::{encode, parse_line};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = parse_line(data) {
        let (hash, line) =
            encode(entry.index, entry.prev, &entry.body).expect("an entry we parsed encodes");
        assert_eq!(hash, entry.hash);
        assert_eq!(line.as_slice(), data);
    }
});
