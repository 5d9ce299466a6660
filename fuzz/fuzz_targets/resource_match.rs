//! Resource matching on arbitrary pattern/request pairs: never panics, and `P/*` never
//! matches `P` itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, &str)| {
    let (pattern, request) = data;
    let _ = elastos::token::resource_matches(pattern, request);
    if let Some(base) = pattern.strip_suffix("/*") {
        assert!(!matches!(elastos::token::resource_matches(pattern, base), Ok(true)));
    }
});
