//! Token check benchmark (plain `fn main`, no harness).
//!
//! (a) one `Authority::check_bytes` — all twelve checks on the token's bytes, as the call path
//!     runs them — with the signature already cached; goal: median ≤ 2 µs. Against a baseline
//!     measured in the same batches: one lookup of the same bytes in a hash map of the same
//!     size as the signature cache (what the cached check cannot do without).
//! (b) first sight (cache cleared before each call) against a raw
//!     `ed25519_dalek::VerifyingKey::verify_strict` of the same signed bytes, interleaved in the
//!     same run; goal: ratio of medians ≤ 1.1×.
//! (c) for information: a consuming check of a limited token, which writes the use count
//!     durably (two fsyncs).
//!
//! `ELASTOS_BENCH_QUICK=1` runs a short smoke version. State lives in a temporary home.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use elastos::authority::{Authority, CallRequest, IssueRequest};
use elastos::home::Home;
use elastos::identity::NodeKey;
use elastos::token;
use elastos_schema::{Action, ActionSet, Classification};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn issue(auth: &mut Authority, max_uses: u64) -> String {
    auth.issue(IssueRequest {
        subject_name: "notes".into(),
        subject_cid: None,
        resource: "localhost://storage/notes/*".into(),
        actions: ActionSet::parse_list("read,write").expect("actions"),
        not_before: None,
        ttl: Duration::from_secs(3600),
        max_uses,
        classification: Classification::Internal,
        delegatable: false,
    })
    .expect("issue")
    .1
}

fn main() {
    let quick = std::env::var_os("ELASTOS_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let (batches, batch, first_sight, durable) = if quick {
        (50, 100, 50, 5)
    } else {
        (2000, 200, 2000, 100)
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::at(dir.path().join("home"));
    let key = Arc::new(NodeKey::generate());
    let mut auth = Authority::open(&home, Some(key.clone())).expect("open authority");
    let text = issue(&mut auth, 0);
    let req = CallRequest {
        caller_name: "notes",
        caller_cid: None,
        resource: "localhost://storage/notes/today",
        action: Action::Read,
        classification: Classification::Internal,
    };
    let t = now();
    auth.check(&text, &req, t, false)
        .expect("the token is allowed");

    // (a) cached signature, all twelve checks on the bytes, against a hash-map lookup of the
    // same bytes, batch by batch.
    let bytes = token::text_to_bytes(&text).expect("token bytes");
    let mut map: std::collections::HashMap<Box<[u8]>, u64> = (0..4096u64)
        .map(|i| {
            (
                i.to_le_bytes()
                    .repeat(bytes.len() / 8 + 1)
                    .into_boxed_slice(),
                i,
            )
        })
        .collect();
    map.insert(bytes.clone().into_boxed_slice(), 1);
    let mut per_call = Vec::with_capacity(batches);
    let mut lookups = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(auth.check_bytes(black_box(&bytes), &req, t, false).is_ok());
        }
        per_call.push(start.elapsed().as_nanos() as f64 / batch as f64);
        let start = Instant::now();
        for _ in 0..batch {
            black_box(map.get(black_box(&bytes[..])));
        }
        lookups.push(start.elapsed().as_nanos() as f64 / batch as f64);
    }
    let cached = median(per_call);
    let lookup = median(lookups);

    // (b) first sight vs raw verify_strict over the same signed bytes, interleaved.
    let decoded = token::decode(&text).expect("decode");
    let signed = decoded.parts.signed_bytes();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(decoded.parts.signer()).expect("key");
    let sig = ed25519_dalek::Signature::from_bytes(decoded.parts.signature());
    let mut first = Vec::with_capacity(first_sight);
    let mut raw = Vec::with_capacity(first_sight);
    for _ in 0..first_sight {
        auth.clear_signature_cache();
        let start = Instant::now();
        black_box(auth.check(black_box(&text), &req, t, false).is_ok());
        first.push(start.elapsed().as_nanos() as f64);

        let start = Instant::now();
        black_box(vk.verify_strict(black_box(&signed), &sig).is_ok());
        raw.push(start.elapsed().as_nanos() as f64);
    }
    let first = median(first);
    let raw = median(raw);

    // (c) durable use counting.
    let limited = issue(&mut auth, u64::MAX);
    let mut consume = Vec::with_capacity(durable);
    for _ in 0..durable {
        let start = Instant::now();
        black_box(auth.check(&limited, &req, t, true).is_ok());
        consume.push(start.elapsed().as_nanos() as f64);
    }
    let consume = median(consume);

    println!(
        "token check benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "  (a) check, 12 checks, cached signature: median {cached:>10.0} ns  (goal <= 2000 ns) over {batches}x{batch}"
    );
    println!(
        "      hash-map lookup of the same bytes:  median {lookup:>10.1} ns  ({:.1}x of it)",
        cached / lookup
    );
    println!("  (b) check, first sight:                 median {first:>10.0} ns");
    println!("      raw verify_strict, same bytes:      median {raw:>10.0} ns");
    println!(
        "      ratio first sight / raw:            {:>10.3}x (goal <= 1.1x) over {first_sight}",
        first / raw
    );
    println!("  (c) consuming check (durable count):    median {consume:>10.0} ns over {durable}");
}
