//! Any bytes as a package must be refused (or verify); never panic. Half of the inputs are
//! taken as they come (the header, the signed layer); the other half are signed first, with a
//! key of the fuzzer's, so that they pass the signature and reach what a hostile publisher
//! controls: the index body (its canonical form, paths, sizes, hashes) and the files after it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = elastos::package::verify(data);
    // The first two bytes: how much of the rest is the index body; the remainder, the files.
    if let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        let (body, files) = rest.split_at(n);
        let key = elastos::identity::NodeKey::from_seed(&[9; 32]);
        let package = elastos::package::signed_with_body(body, files, &key);
        if let Ok(v) = elastos::package::verify(&package) {
            // What verifies lists files that add up to exactly the data, none under another.
            let total: u64 = v.files.iter().map(|f| f.size).sum();
            assert_eq!(total, files.len() as u64);
            for f in &v.files {
                assert!(!f.path.starts_with('/') && !f.path.split('/').any(|c| c == ".."));
            }
        }
    }
});
