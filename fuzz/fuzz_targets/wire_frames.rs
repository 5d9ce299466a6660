//! A capsule's byte stream as the supervisor's reader takes it: a 4-byte length, then a frame of
//! at most `MAX_FRAME` bytes, decoded in place and read by `elastos::frames::parse`, every field
//! touched as the call path touches it. Any input must end in frames or errors, never a panic or
//! an allocation beyond the frame limit.
#![no_main]
use elastos::frames::{parse, Parsed};
use elastos_schema::wire::{self, FrameBuf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut buf = FrameBuf::new();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len > wire::MAX_FRAME {
            // The supervisor closes the connection here.
            return;
        }
        let len = len as usize;
        if rest.len() < len {
            return;
        }
        buf.prepare(len).copy_from_slice(&rest[..len]);
        rest = &rest[len..];
        let msg = wire::decode(buf.bytes());
        match parse(&msg) {
            Parsed::Call(_, Ok(call)) => {
                let owned = call.owned();
                let again = owned.view();
                assert_eq!(again.target, call.target);
                assert_eq!(again.payload, call.payload);
                let _ = elastos::token::audit_ref(call.token);
                let _ = elastos::token::validate_request(call.target);
            }
            Parsed::Reply(_, r) => {
                assert!(r.message.len() <= elastos::frames::MAX_TEXT * 6 + 3);
                let _ = r.payload.len();
            }
            Parsed::RequestToken {
                resource, reason, ..
            } => {
                let _ = elastos::token::validate_pattern(&resource);
                assert!(reason.len() <= elastos::frames::MAX_TEXT * 6 + 3);
            }
            Parsed::Serve { pattern, token, .. } => {
                let _ = elastos::token::validate_pattern(&pattern);
                let _ = elastos::token::audit_ref(&token);
            }
            Parsed::PolicyAnswer {
                id,
                answer,
                explanation,
                rule,
            } => {
                let _ = id.len();
                assert!(rule.len() <= 64 && rule.bytes().all(|b| b.is_ascii_graphic()));
                assert!(explanation.len() <= elastos::frames::MAX_TEXT * 6 + 3);
                match answer {
                    Ok(elastos::frames::ShellAnswer::Allow { resource, .. }) => {
                        assert!(resource.len() <= elastos::frames::MAX_TEXT * 6 + 3);
                        let _ = elastos::token::validate_pattern(&resource);
                    }
                    Ok(elastos::frames::ShellAnswer::Deny(why)) => {
                        assert!(why.len() <= elastos::frames::MAX_TEXT * 6 + 3);
                    }
                    Ok(elastos::frames::ShellAnswer::Prompt) | Err(_) => {}
                }
            }
            Parsed::PolicyLoaded(r) => match r {
                Ok(rules) => assert!(rules.len() <= elastos::frames::MAX_RULES as usize),
                Err((_, _, message)) => {
                    assert!(message.len() <= elastos::frames::MAX_TEXT * 6 + 3)
                }
            },
            Parsed::Hello(_) | Parsed::Call(_, Err(_)) | Parsed::Malformed(_) => {}
        }
    }
});
