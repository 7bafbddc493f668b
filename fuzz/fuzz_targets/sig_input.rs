//! The strict RFC 8941/9651 parsers behind `Signature-Input`/`Signature` and the fields a
//! signature covers with `sf` or `key`: never panic, and whatever they accept serializes
//! to a form they parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_workload::sf::{
    parse_dictionary, parse_item, parse_list, write_dictionary, write_item, write_list,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(dict) = parse_dictionary(text) {
        let again = parse_dictionary(&write_dictionary(&dict));
        assert_eq!(again.as_ref(), Ok(&dict));
    }
    if let Ok(list) = parse_list(text) {
        let again = parse_list(&write_list(&list));
        assert_eq!(again.as_ref(), Ok(&list));
    }
    if let Ok(item) = parse_item(text) {
        let mut written = String::new();
        write_item(&mut written, &item);
        assert_eq!(parse_item(&written).as_ref(), Ok(&item));
    }
});
