//! Any bytes as a package must be refused (or, impossibly, verify); never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = elastos::package::verify(data);
});
