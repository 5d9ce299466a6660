//! Any text as capsule.toml must parse or be refused with an error; never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = elastos_schema::manifest::Manifest::parse(text);
    }
});
