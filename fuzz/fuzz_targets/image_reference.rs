//! Image references as users type them (`registry:5000/team/tool:1.4@sha256:…`): any string is
//! refused or normalized, never a panic; a normalized reference parses to itself.
#![no_main]

use inarray_images::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let again = Reference::parse(&r.to_string()).expect("a normalized reference parses");
        assert_eq!(again, r, "normalizing is idempotent");
    }
});
