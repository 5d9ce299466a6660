//! One line on the control socket, as the supervisor reads it: anything must be a request or an
//! error, never a panic; a request must survive its own round trip through JSON.
#![no_main]
use elastos::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = serde_json::from_str::<Request>(line) {
        let text = serde_json::to_string(&req).expect("a request serialises");
        let again: Request = serde_json::from_str(&text).expect("and reads back");
        assert_eq!(
            serde_json::to_string(&again).expect("again"),
            text,
            "the round trip changed the request"
        );
    }
});
