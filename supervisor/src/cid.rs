//! Content identifiers: CIDv1, raw codec, sha2-256, written base32-lower (`bafkrei…`).
//! The CID of a package is the CID of the package file's bytes.

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::Path;

const RAW_CODEC: u64 = 0x55;
const SHA2_256: u64 = 0x12;

/// The CID of a byte string.
pub fn of_bytes(bytes: &[u8]) -> Cid {
    from_sha256(Sha256::digest(bytes).into())
}

/// The CID of a file's contents, streamed.
pub fn of_file(path: &Path) -> io::Result<Cid> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(from_sha256(h.finalize().into()))
}

/// A raw-codec CID from a sha2-256 digest.
pub fn from_sha256(digest: [u8; 32]) -> Cid {
    // A 32-byte digest always fits the 64-byte multihash, so `wrap` cannot fail here.
    let mh = Multihash::<64>::wrap(SHA2_256, &digest).expect("32-byte digest fits a multihash");
    Cid::new_v1(RAW_CODEC, mh)
}

/// Parses a CID string, accepting only what [`of_bytes`] produces (v1, raw, sha2-256).
pub fn parse(s: &str) -> Result<Cid, String> {
    let c = Cid::try_from(s).map_err(|e| format!("`{s}` is not a CID: {e}"))?;
    if c.version() != cid::Version::V1 || c.codec() != RAW_CODEC || c.hash().code() != SHA2_256 {
        return Err(format!(
            "`{s}` is not an elastos CID (CIDv1, raw codec, sha2-256)"
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The CID of the empty string under CIDv1/raw/sha2-256 is a well-known constant.
        assert_eq!(
            of_bytes(b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn file_and_bytes_agree_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello elastos").unwrap();
        let c = of_file(&p).unwrap();
        assert_eq!(c, of_bytes(b"hello elastos"));
        assert_eq!(parse(&c.to_string()).unwrap(), c);
        assert!(parse("bafy-not-a-cid").is_err());
    }
}
