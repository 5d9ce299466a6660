//! The names of the twelve checks, the denial they produce, the signature cache, and the checks
//! that need no state (signature, subject, action, resource, not_before, expired,
//! classification). The authority runs them, with the stateful ones, in the contract's order.
//!
//! Trusts nothing in a token or a request; every function answers `Err(reason)` rather than
//! panic. Reasons quote foreign text only through [`crate::text::sanitize`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use elastos_schema::{Action, Classification};

use super::{resource_matches, unix_to_system, SignedParts, Token};
use crate::text::sanitize;

/// How far ahead of this node's clock a token's `not_before` may be and still be accepted:
/// issuers' clocks drift a little. Expiry gets no such grace — failing closed there costs a
/// retry, not a breach.
pub const MAX_CLOCK_SKEW_SECS: i64 = 30;

/// The twelve checks, in the order they run. The first that fails decides the denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    Version,
    Signature,
    Issuer,
    Subject,
    Action,
    Resource,
    Epoch,
    Revoked,
    NotBefore,
    Expired,
    Uses,
    Classification,
}

impl Check {
    pub const ALL: [Check; 12] = [
        Check::Version,
        Check::Signature,
        Check::Issuer,
        Check::Subject,
        Check::Action,
        Check::Resource,
        Check::Epoch,
        Check::Revoked,
        Check::NotBefore,
        Check::Expired,
        Check::Uses,
        Check::Classification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Version => "version",
            Check::Signature => "signature",
            Check::Issuer => "issuer",
            Check::Subject => "subject",
            Check::Action => "action",
            Check::Resource => "resource",
            Check::Epoch => "epoch",
            Check::Revoked => "revoked",
            Check::NotBefore => "not_before",
            Check::Expired => "expired",
            Check::Uses => "uses",
            Check::Classification => "classification",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused call: which check failed and why, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {reason}")]
pub struct Denial {
    pub check: Check,
    pub reason: String,
}

impl Denial {
    pub fn new(check: Check, reason: impl Into<String>) -> Denial {
        Denial {
            check,
            reason: reason.into(),
        }
    }
}

/// What a token's exact bytes alone decide, kept after the first sight: the strictly decoded
/// body, which verified under `signer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub token: Token,
    pub signer: [u8; 32],
}

/// The signature cache. Keyed by the exact `SignedToken` bytes (compared whole; hashed with the
/// map's keyed SipHash, a fifth of the cost of SHA-256 on every call), it remembers the
/// work that depends on those bytes and nothing else — the strict decode and the signature
/// verification — so a token used again is neither parsed nor verified again: same bytes, same
/// answer. Every check that depends on the caller, the clock or the authority's state still runs
/// on every call. Only successes are kept, so junk cannot make a good token fail; it is a bounded
/// FIFO, so junk cannot make memory grow.
#[derive(Debug)]
pub struct SigCache {
    entries: HashMap<Box<[u8]>, Arc<VerifiedToken>>,
    order: VecDeque<Box<[u8]>>,
    capacity: usize,
}

impl SigCache {
    pub const DEFAULT_CAPACITY: usize = 4096;

    pub fn new(capacity: usize) -> SigCache {
        SigCache {
            entries: HashMap::with_capacity(capacity.min(SigCache::DEFAULT_CAPACITY)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, signed_token_bytes: &[u8]) -> Option<Arc<VerifiedToken>> {
        self.entries.get(signed_token_bytes).cloned()
    }

    pub fn insert(&mut self, signed_token_bytes: &[u8], value: Arc<VerifiedToken>) {
        let key: Box<[u8]> = signed_token_bytes.into();
        if self.entries.insert(key.clone(), value).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

impl Default for SigCache {
    fn default() -> SigCache {
        SigCache::new(SigCache::DEFAULT_CAPACITY)
    }
}

/// Strict Ed25519 verification of `signature` by `signer` over `domains::TOKEN ‖ body`.
pub fn verify_signature(parts: &SignedParts) -> Result<(), String> {
    let key = VerifyingKey::from_bytes(&parts.signer)
        .map_err(|_| "the signer field is not a valid Ed25519 public key".to_string())?;
    verify_signature_with(&key, parts)
}

/// [`verify_signature`] with the signer's key already decompressed (the caller keeps the keys
/// it knows; decompressing a point costs a sizeable fraction of a verification). `key` must be
/// the key of `parts.signer`.
pub fn verify_signature_with(key: &VerifyingKey, parts: &SignedParts) -> Result<(), String> {
    if key.as_bytes() != &parts.signer {
        return Err("internal: verified with a key other than the signer's; refused".into());
    }
    key.verify_strict(&parts.signed_bytes(), &Signature::from_bytes(&parts.signature))
        .map_err(|_| {
            "the signature does not verify: the token was altered or forged; ask its issuer for a new one"
                .to_string()
        })
}

fn show_time(secs: i64) -> String {
    humantime::format_rfc3339_seconds(unix_to_system(secs)).to_string()
}

pub(crate) fn check_subject(
    t: &Token,
    caller_name: &str,
    caller_cid: Option<&str>,
) -> Result<(), String> {
    if t.subject.name != caller_name {
        return Err(format!(
            "the token is for capsule `{}`, not `{}`",
            sanitize(&t.subject.name),
            sanitize(caller_name)
        ));
    }
    if let Some(cid) = &t.subject.cid {
        if caller_cid != Some(cid.as_str()) {
            return Err(format!(
                "the token is bound to package {}; the caller is {}",
                sanitize(cid),
                caller_cid.map_or_else(
                    || "not bound to a package".to_string(),
                    |c| format!("package {}", sanitize(c))
                )
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_action(t: &Token, action: Action) -> Result<(), String> {
    if t.actions.contains(action) {
        Ok(())
    } else {
        Err(format!("the token allows {}, not {action}", t.actions))
    }
}

pub(crate) fn check_resource(t: &Token, request: &str) -> Result<(), String> {
    match resource_matches(&t.resource, request) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "`{}` is not within the token's resource `{}`",
            sanitize(request),
            sanitize(&t.resource)
        )),
        Err(e) => Err(e),
    }
}

/// For serving: the requested pattern must be the token's resource or lie within it.
pub(crate) fn check_resource_pattern(t: &Token, pattern: &str) -> Result<(), String> {
    if !pattern.ends_with("/*") {
        return Err(format!(
            "`{}` is not a namespace pattern (it must end in `/*`)",
            sanitize(pattern)
        ));
    }
    match elastos_schema::resource::resource_within(&t.resource, pattern) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "`{}` is not within the token's resource `{}`",
            sanitize(pattern),
            sanitize(&t.resource)
        )),
        Err(e) => Err(format!("request refused: {e}")),
    }
}

pub(crate) fn check_not_before(t: &Token, now: i64) -> Result<(), String> {
    if now.saturating_add(MAX_CLOCK_SKEW_SECS) < t.not_before {
        Err(format!(
            "the token is not valid before {} ({}); this node's clock says {}",
            show_time(t.not_before),
            t.not_before,
            show_time(now)
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn check_expired(t: &Token, now: i64) -> Result<(), String> {
    if now >= t.expiry {
        Err(format!(
            "the token expired at {} ({}); ask its issuer for a new one",
            show_time(t.expiry),
            t.expiry
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn check_classification(t: &Token, level: Classification) -> Result<(), String> {
    if level <= t.classification {
        Ok(())
    } else {
        Err(format!(
            "the resource is `{level}` but the token reaches at most `{}`",
            t.classification
        ))
    }
}
