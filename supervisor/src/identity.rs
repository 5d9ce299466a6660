//! The node's identity: one Ed25519 key in `$ELASTOS_HOME/node.key`, named by its `did:key`.
//!
//! The key signs tokens, packages and audit checkpoints, each under its own domain prefix
//! (`elastos_schema::domains`), so a signature made for one purpose is useless for another.
//! The seed is zeroized when the key is dropped. Only commands that need the key create it.

use std::fs;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use elastos_schema::versions;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::fsutil::write_atomic;
use crate::home::{check_private, Home, HomeError};

/// The multicodec prefix of an Ed25519 public key (varint of 0xed).
const ED25519_PUB_MULTICODEC: [u8; 2] = [0xed, 0x01];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid elastos key file ({why}); restore it from your backup with `elastos identity import`")]
    BadKeyFile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("the key file {path} has format {found}, which this elastos does not know (it knows {known}); use a newer elastos")]
    UnknownFormat {
        path: std::path::PathBuf,
        found: u32,
        known: u32,
    },
    #[error("a seed is 64 hex characters (32 bytes): {0}")]
    BadSeed(String),
    #[error("this node already has an identity ({did}); pass --force to replace it (tokens it issued will stop verifying)")]
    Exists { did: String },
    #[error("`{0}` is not an Ed25519 did:key (expected did:key:z6Mk…)")]
    BadDid(String),
}

/// The node's signing key.
pub struct NodeKey {
    signing: SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    seed: String,
}

impl NodeKey {
    pub fn from_seed(seed: &[u8; 32]) -> NodeKey {
        NodeKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A new random key from the OS.
    pub fn generate() -> NodeKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the OS random source failed");
        NodeKey::from_seed(&seed)
    }

    /// Parses a hex seed (as printed by `identity export`; surrounding white space ignored).
    pub fn from_hex(hex_seed: &str) -> Result<NodeKey, IdentityError> {
        let mut bytes = Zeroizing::new(
            hex::decode(hex_seed.trim()).map_err(|e| IdentityError::BadSeed(e.to_string()))?,
        );
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::BadSeed(format!("got {} bytes", bytes.len())))?;
        bytes.zeroize();
        let key = NodeKey::from_seed(&seed);
        let mut seed = seed;
        seed.zeroize();
        Ok(key)
    }

    /// Reads a hex seed from a file (a `--key FILE` option).
    pub fn from_hex_file(path: &Path) -> Result<NodeKey, IdentityError> {
        let text =
            Zeroizing::new(
                fs::read_to_string(path).map_err(|source| IdentityError::Io {
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        NodeKey::from_hex(&text)
    }

    /// The node's key if it has one. Never writes.
    pub fn load(home: &Home) -> Result<Option<NodeKey>, IdentityError> {
        let path = home.key_file();
        // A dangling link is not "no key": it is refused below, like any link.
        if fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        check_private(&path, 0o600)?;
        let text =
            Zeroizing::new(
                fs::read_to_string(&path).map_err(|source| IdentityError::Io {
                    path: path.clone(),
                    source,
                })?,
            );
        let mut file: KeyFile = toml::from_str(&text).map_err(|e| IdentityError::BadKeyFile {
            path: path.clone(),
            why: e.message().to_string(),
        })?;
        if file.format != versions::STATE {
            return Err(IdentityError::UnknownFormat {
                path,
                found: file.format,
                known: versions::STATE,
            });
        }
        let key = NodeKey::from_hex(&file.seed).map_err(|e| IdentityError::BadKeyFile {
            path: path.clone(),
            why: e.to_string(),
        });
        file.seed.zeroize();
        key.map(Some)
    }

    /// The node's key, created (and saved 0600) if it has none yet.
    pub fn load_or_create(home: &Home) -> Result<NodeKey, IdentityError> {
        if let Some(key) = NodeKey::load(home)? {
            return Ok(key);
        }
        let key = NodeKey::generate();
        key.save(home)?;
        Ok(key)
    }

    /// Installs `self` as the node's key. Refuses to replace another key unless `force`.
    pub fn install(&self, home: &Home, force: bool) -> Result<(), IdentityError> {
        if let Some(existing) = NodeKey::load(home)? {
            if existing.public_bytes() != self.public_bytes() && !force {
                return Err(IdentityError::Exists {
                    did: existing.did(),
                });
            }
        }
        self.save(home)
    }

    fn save(&self, home: &Home) -> Result<(), IdentityError> {
        home.ensure()?;
        let path = home.key_file();
        let text = Zeroizing::new(format!(
            "# The node's Ed25519 secret seed. Keep it private; back it up with `elastos identity export`.\nformat = {}\nseed = \"{}\"\n",
            versions::STATE,
            self.seed_hex().as_str()
        ));
        write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| IdentityError::Io { path, source })
    }

    /// The secret seed as hex, for `identity export`. Zeroized on drop.
    pub fn seed_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.signing.to_bytes()))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn did(&self) -> String {
        did_from_public(&self.public_bytes())
    }

    /// A 32-byte key for `label` (one of `elastos_schema::domains`), derived from the seed as
    /// HMAC-SHA256(seed, label): a key of its own for each use, never the signing key itself,
    /// and telling nothing about the seed.
    pub fn derive_key(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        use hmac::{KeyInit, Mac};
        let seed = Zeroizing::new(self.signing.to_bytes());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(seed.as_ref())
            .expect("HMAC takes a key of any length");
        mac.update(label);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Signs `domain ‖ message`. Every caller passes one of `elastos_schema::domains`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        self.signing.sign(&buf)
    }
}

/// Verifies `signature` over `domain ‖ message` strictly (no malleable or small-order forms).
pub fn verify(public: &VerifyingKey, domain: &[u8], message: &[u8], signature: &Signature) -> bool {
    let mut buf = Vec::with_capacity(domain.len() + message.len());
    buf.extend_from_slice(domain);
    buf.extend_from_slice(message);
    public.verify_strict(&buf, signature).is_ok()
}

/// `did:key:z…` of an Ed25519 public key (multicodec ed25519-pub, multibase base58btc).
pub fn did_from_public(public: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&ED25519_PUB_MULTICODEC);
    bytes.extend_from_slice(public);
    format!("did:key:z{}", bs58::encode(bytes).into_string())
}

/// The public key named by an Ed25519 `did:key`.
pub fn public_from_did(did: &str) -> Result<[u8; 32], IdentityError> {
    let bad = || IdentityError::BadDid(crate::text::sanitize(did));
    let encoded = did.strip_prefix("did:key:z").ok_or_else(bad)?;
    let bytes = bs58::decode(encoded).into_vec().map_err(|_| bad())?;
    if bytes.len() != 34 || bytes[..2] != ED25519_PUB_MULTICODEC {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[2..]);
    // Canonical form only: re-encoding must give back the same string.
    if did_from_public(&out) != did {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn did_key_matches_a_published_test_vector() {
        // A published did:key Ed25519 example: the DID and its publicKeyBase58.
        let public: [u8; 32] = bs58::decode("8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K")
            .into_vec()
            .unwrap()
            .try_into()
            .unwrap();
        let did = did_from_public(&public);
        assert_eq!(
            did,
            "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th"
        );
        assert_eq!(public_from_did(&did).unwrap(), public);
    }

    #[test]
    fn malformed_dids_are_refused() {
        for bad in [
            "",
            "did:key:",
            "did:web:example.com",
            "did:key:z6Mk",
            "did:key:zzzz",
        ] {
            assert!(public_from_did(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_is_created_0600_and_reloads() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        assert!(NodeKey::load(&home).unwrap().is_none());
        let k = NodeKey::load_or_create(&home).unwrap();
        let mode = fs::metadata(home.key_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeKey::load(&home).unwrap().unwrap().did(), k.did());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        NodeKey::load_or_create(&home).unwrap();
        fs::set_permissions(home.key_file(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&home).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn import_refuses_to_replace_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        let first = NodeKey::load_or_create(&home).unwrap();
        let other = NodeKey::from_seed(&[7u8; 32]);
        assert!(matches!(
            other.install(&home, false),
            Err(IdentityError::Exists { .. })
        ));
        other.install(&home, true).unwrap();
        let now = NodeKey::load(&home).unwrap().unwrap();
        assert_ne!(now.did(), first.did());
        assert_eq!(now.did(), other.did());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let k = NodeKey::from_seed(&[1u8; 32]);
        let sig = k.sign(b"elastos/token/v1\0", b"body");
        assert!(verify(
            &k.verifying_key(),
            b"elastos/token/v1\0",
            b"body",
            &sig
        ));
        assert!(!verify(
            &k.verifying_key(),
            b"elastos/package/v1\0",
            b"body",
            &sig
        ));
    }
}
