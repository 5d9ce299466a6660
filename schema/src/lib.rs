//! The contracts of elastos: the Cap'n Proto schemas (generated into [`token_capnp`] and
//! [`package_capnp`]) and the plain Rust types that every side shares — actions, classification
//! levels, resource limits, the capsule manifest, and the format versions.
//!
//! Nothing here trusts its input: every decoder refuses unknown versions and unknown fields with an
//! error that names what was wrong. Nothing here does I/O.

#![forbid(unsafe_code)]

pub mod types;
pub use types::*;

/// Generated from `schema/token.capnp`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused)]
pub mod token_capnp {
    include!(concat!(env!("OUT_DIR"), "/token_capnp.rs"));
}

/// Generated from `schema/package.capnp`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused)]
pub mod package_capnp {
    include!(concat!(env!("OUT_DIR"), "/package_capnp.rs"));
}

/// Generated from `schema/wire.capnp`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused)]
pub mod wire_capnp {
    include!(concat!(env!("OUT_DIR"), "/wire_capnp.rs"));
}

pub mod landlock;
pub mod manifest;
pub mod policy;
pub mod resource;
pub mod wasm_abi;
pub mod wire;

/// Versions of every persistent or wire format. A reader refuses a version it does not know.
pub mod versions {
    /// `SignedToken.version` and `TokenBody.version` written (2: a delegated token carries its
    /// whole ancestor chain).
    pub const TOKEN: u16 = 2;
    /// The oldest token version still read (1: a parent id only).
    pub const TOKEN_OLDEST: u16 = 1;
    /// `SignedIndex.version` and `PackageIndex.version`, and the package container layout.
    pub const PACKAGE: u16 = 1;
    /// `format = N` at the top of `capsule.toml`.
    pub const MANIFEST: u32 = 1;
    /// The `v` field of every audit record.
    pub const AUDIT: u32 = 1;
    /// `format` of the node's state files (key file, authority state, trust list, audit head).
    pub const STATE: u32 = 1;
    /// `Hello.version`: the capsule wire protocol.
    pub const WIRE: u16 = 1;
    /// `PolicyRequest.version` and the rest of the decision protocol between the supervisor
    /// and the shell (`schema/wire.capnp`).
    pub const POLICY: u16 = 1;
}

/// Domain-separation prefixes: every use of a signing key signs `prefix ‖ message`, so a signature
/// made for one purpose can never be replayed as another. Listed in docs/ARCHITECTURE.md.
pub mod domains {
    pub const TOKEN: &[u8] = b"elastos/token/v1\0";
    pub const PACKAGE: &[u8] = b"elastos/package/v1\0";
    pub const AUDIT_CHECKPOINT: &[u8] = b"elastos/audit-checkpoint/v1\0";
    pub const AUDIT_RECOVERED: &[u8] = b"elastos/audit-recovered/v1\0";
    /// The audit log's `head` file (format 2): `seq ‖ hash ‖ clean`, so that whether the writer
    /// stopped cleanly there is signed too.
    pub const AUDIT_HEAD: &[u8] = b"elastos/audit-head/v2\0";
    /// A change of node key in the audit log: `seq ‖ hash` of the record before, then the
    /// action (`key.retire`, signed by the old key; `key.adopt`, by the new one) and the other
    /// key's DID.
    pub const AUDIT_REKEY: &[u8] = b"elastos/audit-rekey/v1\0";
    /// The audit log's `anchor` after `audit prune`: `seq ‖ hash` of the last record pruned and
    /// the DID of the key in force there.
    pub const AUDIT_ANCHOR: &[u8] = b"elastos/audit-anchor/v1\0";
    /// The label the token authority's state MAC key is derived under (`NodeKey::derive_key`).
    pub const STATE_MAC_KEY: &[u8] = b"elastos/state-mac-key/v1\0";
    /// What the state MAC covers first: `‖ the state file's JSON without its mac`.
    pub const STATE_MAC: &[u8] = b"elastos/state-mac/v1\0";
    /// The label the WASM cache's MAC key is derived under (`NodeKey::derive_key`).
    pub const WASM_CACHE_KEY: &[u8] = b"elastos/wasm-cache-key/v1\0";
    /// What the WASM cache's MAC covers first: `‖ module CID ‖ 0 ‖ compatibility hash ‖ 0 ‖
    /// artifact`.
    pub const WASM_CACHE_ENTRY: &[u8] = b"elastos/wasm-cache-entry/v1\0";
}
