//! Capability tokens: the domain type, its one canonical wire form, and the pure pieces of the
//! twelve checks.
//!
//! What it is for: turning a token string into a [`Token`] the authority can check, and a
//! [`Token`] into a signed string. On the wire a token is the unpadded base64url of one canonical
//! single-segment `SignedToken` (schema/token.capnp) whose `body` is the canonical bytes of a
//! `TokenBody`, signed with Ed25519 over `elastos_schema::domains::TOKEN ‖ body`.
//!
//! What it trusts: nothing in a token string. Every decoder is strict (limits, canonical form,
//! known versions and values) and returns an error, never panics. Whether a token is *allowed* is
//! not decided here: that is [`crate::authority`], which owns the state (epoch, revocations, uses,
//! trusted issuers). This module does no I/O.
//!
//! What it must never do: accept two encodings of one token, read a body whose signature has not
//! been checked when deciding anything, or answer "allowed" for a request it could not parse.

mod check;
mod codec;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use elastos_schema::{domains, versions, ActionSet, Classification};
use serde::{Deserialize, Serialize};

use crate::identity::{did_from_public, NodeKey};
use crate::text::sanitize;

pub(crate) use check::{
    check_action, check_classification, check_expired, check_not_before, check_resource,
    check_resource_pattern, check_subject,
};
pub use check::{
    verify_signature, verify_signature_with, Check, Denial, SigCache, VerifiedToken,
    MAX_CLOCK_SKEW_SECS,
};
pub(crate) use codec::MAX_SUBJECT_LEN;
pub use elastos_schema::resource::{
    resource_matches, resource_within, validate_pattern, validate_request, MAX_RESOURCE_LEN,
};

/// The longest token text accepted, in characters. Real tokens are a few hundred; the cap bounds
/// the work an attacker can cause before the signature is checked.
pub const MAX_TOKEN_TEXT_LEN: usize = 8192;

/// Base64url without padding, refusing non-zero trailing bits so that one token has one text.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is {len} characters long; at most {max} are accepted — pass the token exactly as `elastos token issue` printed it")]
    TooLong { len: usize, max: usize },
    #[error("the token is not unpadded base64url text; pass it exactly as `elastos token issue` printed it")]
    NotBase64,
    #[error("malformed {what}: {why}; the token is damaged or not an elastos token — ask its issuer for a new one")]
    Malformed { what: &'static str, why: String },
    #[error("token format version {found} is unknown (this elastos knows {known}); upgrade elastos or ask for a version {known} token")]
    UnknownVersion { found: u16, known: u16 },
}

/// A token id: 16 random bytes, shown as 32 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId([u8; 16]);

/// A string that is not a token id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a token id: expected 32 hex characters (as `elastos token inspect` shows)")]
pub struct BadTokenId(String);

impl TokenId {
    pub fn from_bytes(bytes: [u8; 16]) -> TokenId {
        TokenId(bytes)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<TokenId> {
        bytes.try_into().ok().map(TokenId)
    }

    /// A fresh id from the OS random source.
    pub fn random() -> Result<TokenId, getrandom::Error> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)?;
        Ok(TokenId(b))
    }

    /// Parses 32 hex characters (either case; shown lower-case).
    pub fn parse(s: &str) -> Result<TokenId, BadTokenId> {
        let bad = || BadTokenId(sanitize(s));
        if s.len() != 32 {
            return Err(bad());
        }
        let bytes = hex::decode(s).map_err(|_| bad())?;
        TokenId::from_slice(&bytes).ok_or_else(bad)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On the stack: every audited call shows its token id.
        let mut out = [0u8; 32];
        hex::encode_to_slice(self.0, &mut out).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Who a token is for: a capsule name, optionally bound to one package CID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub name: String,
    pub cid: Option<String>,
}

/// The decoded body of a token. Plain fields; its meaning is enforced by the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    pub version: u16,
    pub id: TokenId,
    /// The did:key of the signer.
    pub issuer: String,
    pub subject: Subject,
    /// An exact resource, or a pattern ending in `/*`.
    pub resource: String,
    #[serde(serialize_with = "serialize_actions")]
    pub actions: ActionSet,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds, exclusive.
    pub expiry: i64,
    pub epoch: u64,
    /// 0 = unlimited.
    pub max_uses: u64,
    /// The highest classification this token reaches.
    pub classification: Classification,
    pub delegatable: bool,
    pub parent: Option<TokenId>,
    /// Version 2: every ancestor, parent first, root last (empty for a root, and in version 1,
    /// which names only the parent). Revoking any of them revokes this token, wherever it was
    /// minted.
    pub ancestors: Vec<TokenId>,
}

/// The most ancestors a token may name (its delegation depth).
pub const MAX_ANCESTORS: usize = 16;

fn serialize_actions<S: serde::Serializer>(a: &ActionSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter())
}

impl Token {
    /// `name` or `name@cid`, safe to print.
    pub fn subject_display(&self) -> String {
        match &self.subject.cid {
            Some(cid) => sanitize(&format!("{}@{}", self.subject.name, cid)),
            None => sanitize(&self.subject.name),
        }
    }

    /// The parent's id, or `none` for a root token.
    pub fn parent_display(&self) -> String {
        self.parent
            .map_or_else(|| "none".to_string(), |p| p.to_string())
    }

    /// The canonical `TokenBody` bytes of this token.
    pub fn body_bytes(&self) -> Result<Vec<u8>, TokenError> {
        codec::encode_body(self)
    }
}

/// The outer, signed layer of a token: the exact body bytes, the signature and the signer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedParts {
    pub version: u16,
    pub body: Vec<u8>,
    pub signature: [u8; 64],
    pub signer: [u8; 32],
}

impl SignedParts {
    /// Exactly what Ed25519 signs: the token domain prefix followed by the body.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(domains::TOKEN.len() + self.body.len());
        buf.extend_from_slice(domains::TOKEN);
        buf.extend_from_slice(&self.body);
        buf
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    pub fn signer(&self) -> &[u8; 32] {
        &self.signer
    }

    /// The did:key of the signing key.
    pub fn signer_did(&self) -> String {
        did_from_public(&self.signer)
    }

    /// The token string of these parts.
    pub fn encode(&self) -> Result<String, TokenError> {
        Ok(B64.encode(codec::encode_signed(self)?))
    }
}

/// Decodes the base64 text to the exact `SignedToken` bytes (the signature cache's key).
pub fn text_to_bytes(text: &str) -> Result<Vec<u8>, TokenError> {
    if text.len() > MAX_TOKEN_TEXT_LEN {
        return Err(TokenError::TooLong {
            len: text.len(),
            max: MAX_TOKEN_TEXT_LEN,
        });
    }
    B64.decode(text).map_err(|_| TokenError::NotBase64)
}

/// Parses the outer layer only, from the exact bytes.
pub(crate) fn decode_signed_bytes(bytes: &[u8]) -> Result<SignedParts, TokenError> {
    codec::decode_signed(bytes)
}

/// Parses a body (only after its signature was verified, when deciding anything).
pub(crate) fn decode_body(body: &[u8]) -> Result<Token, TokenError> {
    codec::decode_body(body)
}

/// What an audit record names for the token a call presented: its id when the bytes decode as a
/// token (however its checks went: a stolen or expired token is named too), else `sha256:` and
/// the first 16 bytes of the SHA-256 of the bytes as presented, so an operator can still tell
/// one forged attempt from another. `None` when no token was presented at all.
pub fn audit_ref(bytes: &[u8]) -> Option<String> {
    use sha2::Digest;
    if bytes.is_empty() {
        return None;
    }
    // Over the cap nothing reads it: hashed, as the verifier refused it, unread.
    if bytes.len() > 4096 {
        let hash = sha2::Sha256::digest(bytes);
        return Some(format!("sha256:{}", hex::encode(&hash[..16])));
    }
    if let Some(token) = decode_signed_bytes(bytes)
        .ok()
        .and_then(|parts| decode_body(&parts.body).ok())
    {
        return Some(token.id.to_string());
    }
    let hash = sha2::Sha256::digest(bytes);
    Some(format!("sha256:{}", hex::encode(&hash[..16])))
}

/// Signs `token` with `key`: returns its parts and its token string.
pub fn sign(token: &Token, key: &NodeKey) -> Result<(SignedParts, String), TokenError> {
    let body = codec::encode_body(token)?;
    let signature = key.sign(domains::TOKEN, &body).to_bytes();
    let parts = SignedParts {
        version: versions::TOKEN,
        body,
        signature,
        signer: key.public_bytes(),
    };
    let text = parts.encode()?;
    Ok((parts, text))
}

/// A decoded token, for `token inspect`: both layers, nothing checked but the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub parts: SignedParts,
    pub token: Token,
}

impl Decoded {
    /// Whether the signature verifies for the key that the token names as its signer. Says
    /// nothing about whether that key is trusted.
    pub fn signature_valid(&self) -> bool {
        verify_signature(&self.parts).is_ok()
    }

    /// Every field, plus exactly what was signed, for `token inspect --json`.
    pub fn inspect_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.token).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("signer_did".into(), self.parts.signer_did().into());
            map.insert("signer_hex".into(), hex::encode(self.parts.signer).into());
            map.insert(
                "signed_bytes_hex".into(),
                hex::encode(self.parts.signed_bytes()).into(),
            );
            map.insert(
                "signature_hex".into(),
                hex::encode(self.parts.signature).into(),
            );
            map.insert("signature_valid".into(), self.signature_valid().into());
        }
        v
    }

    /// Every field as `name: value` lines, foreign text sanitised, for `token inspect`.
    pub fn inspect_text(&self) -> String {
        let t = &self.token;
        let time = |s: i64| humantime::format_rfc3339_seconds(unix_to_system(s)).to_string();
        let uses = if t.max_uses == 0 {
            "unlimited".to_string()
        } else {
            t.max_uses.to_string()
        };
        let signature = if self.signature_valid() {
            "valid for its signer (trust is decided by `token check`)"
        } else {
            "INVALID"
        };
        let ancestors = if t.ancestors.is_empty() {
            "none".to_string()
        } else {
            t.ancestors
                .iter()
                .map(TokenId::to_string)
                .collect::<Vec<_>>()
                .join(" <- ")
        };
        format!(
            "id:             {}\nversion:        {}\nissuer:         {}\nsigner:         {}\nsignature:      {}\nsubject:        {}\nresource:       {}\nactions:        {}\nnot before:     {} ({})\nexpiry:         {} ({})\nepoch:          {}\nmax uses:       {}\nclassification: {}\ndelegatable:    {}\nparent:         {}\nancestors:      {}\n",
            t.id,
            t.version,
            sanitize(&t.issuer),
            self.parts.signer_did(),
            signature,
            t.subject_display(),
            sanitize(&t.resource),
            t.actions,
            time(t.not_before),
            t.not_before,
            time(t.expiry),
            t.expiry,
            t.epoch,
            uses,
            t.classification,
            t.delegatable,
            t.parent_display(),
            ancestors,
        )
    }
}

/// Decodes a token string strictly, without checking its signature or any state: for
/// `token inspect`, which needs no authority.
pub fn decode(text: &str) -> Result<Decoded, TokenError> {
    let bytes = text_to_bytes(text)?;
    let parts = codec::decode_signed(&bytes)?;
    let token = codec::decode_body(&parts.body)?;
    Ok(Decoded { parts, token })
}

/// The last second that RFC 3339 (and `humantime`) can show: 9999-12-31T23:59:59Z.
const LAST_SHOWABLE_SECOND: i64 = 253_402_300_799;

/// Unix seconds as a `SystemTime`, clamped to 1970..=9999 so that formatting it with
/// `humantime::format_rfc3339*` can never panic, whatever a token says. Callers that show a time
/// from a token also show the raw seconds.
pub fn unix_to_system(secs: i64) -> SystemTime {
    let clamped = secs.clamp(0, LAST_SHOWABLE_SECOND).unsigned_abs();
    UNIX_EPOCH
        .checked_add(Duration::from_secs(clamped))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
