//! The strict RFC 8941 dictionary parser behind `Signature-Input`/`Signature`: never
//! panics, and whatever it accepts serializes to a form it parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_workload::sf::{parse_dictionary, write_dictionary};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(dict) = parse_dictionary(text)
    {
        let again = parse_dictionary(&write_dictionary(&dict));
        assert_eq!(again.as_ref(), Ok(&dict));
    }
});
