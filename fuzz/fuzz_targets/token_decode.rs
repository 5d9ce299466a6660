//! Any text given as a token must decode to an error or a token that re-encodes to the same
//! bytes; it must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = elastos::token::decode(text);
    }
    // The raw bytes as base64url, so the fuzzer reaches the Cap'n Proto decoder directly.
    use base64::Engine as _;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    if let Ok(decoded) = elastos::token::decode(&text) {
        // The round trip it promises: the same text, and the same token read back from it.
        let again = decoded.parts.encode().expect("a decoded token re-encodes");
        assert_eq!(again, text, "re-encoding changed the token's bytes");
        let back = elastos::token::decode(&again).expect("its own encoding decodes");
        assert_eq!(back.parts, decoded.parts);
        assert_eq!(back.token, decoded.token);
    }
});
