//! The token authority: issues and delegates tokens, runs the twelve checks, revokes, and keeps
//! the state those need — epoch, revoked ids, delegation records, use counts, trusted issuers —
//! in one versioned file, `$ELASTOS_HOME/state/authority.json`.
//!
//! What it trusts: the node key it is given, its own state file (which must be private), the
//! caller's statement of the resource's classification (taken from the provider's manifest) and
//! of who is calling (established by the supervisor). Nothing in a token string.
//!
//! What it must never do: answer "allowed" when any check failed or could not be made; forget a
//! revocation or a use (every change is written with `fsutil::write_atomic` before the call that
//! made it returns, and a failed write refuses the call); write anything on `open`; mint a child
//! wider than its parent. Callers that change state hold the node's state lock
//! (`Home::try_lock`): this type assumes it is the only writer.
//!
//! # State file
//!
//! ```json
//! { "format": 1, "epoch": 0,
//!   "revoked": ["<32 hex>", …],
//!   "delegations": { "<child id>": { "parent": "<parent id>", "parent_max_uses": 0 }, … },
//!   "uses": { "<id>": 3, … },
//!   "trusted": ["did:key:z…", …] }
//! ```
//!
//! Unknown `format` values and unknown fields are refused.
//!
//! # Checks
//!
//! [`Authority::check`] runs the twelve checks of [`Check`] in order and returns the first
//! failure. A token string that is not a well-formed `SignedToken` of a known version (or is
//! over [`MAX_TOKEN_BYTES`]) is a `version` denial; a signer that is neither the node nor
//! trusted is an `issuer` denial before any signature work; the signature is verified on the
//! received body bytes before the body is parsed, so a validly signed but malformed body is
//! also a `version` denial. Those depend on the bytes alone and are done by the [`Verifier`],
//! which the call path runs outside this type's lock. The [`SigCache`]
//! keeps, per exact token bytes, only what those bytes alone decide (the strict decode and the
//! signature verdict); every other check runs on every call. `not_before` allows
//! [`MAX_CLOCK_SKEW_SECS`](crate::token::MAX_CLOCK_SKEW_SECS) of clock skew; `expired` allows
//! none. The epoch check applies to every issuer, trusted ones included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use elastos_schema::{versions, Action, ActionSet, Classification};
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::home::{check_private, Home, HomeError};
use crate::identity::{did_from_public, public_from_did, IdentityError, NodeKey};
use crate::text::sanitize;
use crate::token::{
    self, check_action, check_classification, check_expired, check_not_before, check_resource,
    check_resource_pattern, check_subject, resource_within, validate_pattern,
    verify_signature_with, Check, Denial, SigCache, Subject, Token, TokenError, TokenId,
    VerifiedToken, MAX_SUBJECT_LEN,
};

/// The state file's name inside `home.state_dir()`.
pub const STATE_FILE: &str = "authority.json";

/// Kept in the state directory beside the state file, and given up when a narrowing change
/// (a revocation, an epoch raise, an issuer no longer trusted) finds the disk full: that change
/// then still takes effect. Re-made after the next commit that finds room.
pub const RESERVE_FILE: &str = "authority.reserve";
/// The state reserve's size: many times a state file with thousands of revocations.
pub const STATE_RESERVE: u64 = 1 << 20;

/// The most ancestors a token may have. Bounds the revocation walk and refuses runaway chains.
pub const MAX_DELEGATION_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid token-authority state file ({why}); restore it from a backup — elastos will not run without it, because that would forget revocations")]
    BadState { path: PathBuf, why: String },
    #[error("the token-authority state {path} has format {found}, which this elastos does not know (it knows {known}); use a newer elastos")]
    UnknownFormat {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("this needs the node's signing key, which was not loaded; create or import one with `elastos identity`")]
    NoKey,
    #[error("{0}")]
    Invalid(String),
    #[error("the parent token does not pass its checks ({0}); delegate from a valid token")]
    Parent(Denial),
    #[error(
        "the parent token is not delegatable; delegate from a token issued with --delegatable"
    )]
    NotDelegatable,
    #[error("refused: {0}; a child may only be narrower than its parent")]
    Widening(String),
    #[error("the delegation chain would be deeper than {MAX_DELEGATION_DEPTH}; delegate from a token nearer the root")]
    TooDeep,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the OS random source failed ({0}); try again")]
    Random(String),
    #[error("could not encode the token: {0}")]
    Token(#[from] TokenError),
    #[error("the epoch is at its maximum and cannot be raised; rotate the node key instead")]
    EpochExhausted,
}

/// What to issue. `ttl` counts from `not_before` (default: now).
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub subject_name: String,
    pub subject_cid: Option<String>,
    pub resource: String,
    pub actions: ActionSet,
    pub not_before: Option<i64>,
    pub ttl: Duration,
    pub max_uses: u64,
    pub classification: Classification,
    pub delegatable: bool,
}

/// How a child narrows its parent. `None` keeps the parent's value; anything wider is refused.
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    /// `(name, cid)`: the parent's name, optionally binding a CID the parent left open.
    pub subject: Option<(String, Option<String>)>,
    pub resource: Option<String>,
    pub actions: Option<ActionSet>,
    /// Counted from now; the child may not outlive its parent.
    pub ttl: Option<Duration>,
    pub max_uses: Option<u64>,
    pub classification: Option<Classification>,
    pub delegatable: bool,
}

/// One call to check: who calls, what it asks for, and how sensitive the resource is.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    pub caller_name: &'a str,
    pub caller_cid: Option<&'a str>,
    pub resource: &'a str,
    pub action: Action,
    /// From the provider's manifest; `internal` when it says nothing.
    pub classification: Classification,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delegation {
    parent: TokenId,
    /// Copied from the parent when the child was minted, so that a child's use is also counted
    /// against every limited ancestor (children cannot multiply a parent's uses).
    parent_max_uses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    epoch: u64,
    revoked: BTreeSet<TokenId>,
    delegations: BTreeMap<TokenId, Delegation>,
    uses: BTreeMap<TokenId, u64>,
    trusted: BTreeSet<String>,
    /// Publishers whose packages this node runs as known, or as its own (first party); apart
    /// from `trusted`, since running someone's app must not make their key a token issuer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    publishers: BTreeMap<String, PublisherKind>,
    /// The capsule that last decided for the node as its shell: a change is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shell: Option<ShellIdentity>,
    /// The person's standing answers to prompts (`elastos allow ID --always`, `deny ID
    /// --always`), by grant id, with the tokens minted under each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    grants: BTreeMap<String, StandingGrant>,
    /// The node's earlier keys (DIDs), retired by `identity import --force`: packages they
    /// signed stay first party; tokens they issued ended with the epoch raised at the change.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    former_keys: BTreeSet<String>,
    /// Raised by every commit: the audit log's signed head records the version it saw, so an
    /// older copy of this file put back is told from the current one.
    #[serde(default)]
    version: u64,
    /// HMAC-SHA256 under a key derived from the node key, over the file without this field:
    /// the file cannot be edited by hand, or taken from another node, unnoticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// What the audit log's signed head records of the authority's state: its version, and a
/// digest of what revocation rests on (epoch, revoked ids, delegations, trusted issuers, former
/// keys; not use counts).
pub type StateStamp = (u64, [u8; 32]);

/// Who decides for the node: its shell's name, publisher and package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellIdentity {
    pub name: String,
    pub publisher: String,
    pub cid: String,
}

impl std::fmt::Display for ShellIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` ({}, {})", self.name, self.publisher, self.cid)
    }
}

/// A person's standing answer to a prompt: it answers the same request of the same capsule
/// again, across restarts, until `elastos revoke GRANT_ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandingGrant {
    pub allow: bool,
    /// The capsule's name.
    pub capsule: String,
    /// Its publisher's DID; for a development package its CID instead, since anyone can sign
    /// as `dev`.
    pub bound_to: String,
    pub resource: String,
    /// Comma-separated, as `ActionSet` prints them.
    pub actions: String,
    pub created: i64,
    /// The tokens minted under it and their expiry, so that revoking it revokes them.
    #[serde(default)]
    pub tokens: Vec<(TokenId, i64)>,
    /// Allowed for this run of the supervisor only (`elastos allow ID --session`, `elastos run
    /// --allow`): revoked with its tokens at `down`, or at the next start after a crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
}

/// How this node regards a publisher it was told about (`elastos trust add --publisher` or
/// `--first-party`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublisherKind {
    /// Its packages may run, under the node's policy; nothing more.
    Known,
    /// Its packages are treated as this node's own: the provide capability, the policy's
    /// `first-party` rules.
    FirstParty,
}

impl PublisherKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Known => "publisher",
            PublisherKind::FirstParty => "first-party",
        }
    }
}

/// Where the authority publishes its stamp after each commit, for the audit log's next head.
pub type StampCell = Arc<std::sync::Mutex<Option<StateStamp>>>;

impl State {
    fn stamp(&self) -> StateStamp {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"elastos/state-digest/v1\0");
        let mut part = serde_json::json!({
            "epoch": self.epoch,
            "revoked": self.revoked,
            "delegations": self.delegations,
            "trusted": self.trusted,
            "former_keys": self.former_keys,
        });
        // Only when there are any: the digest of a state from before publishers existed stays
        // what its audit head recorded.
        if !self.publishers.is_empty() {
            part["publishers"] = serde_json::json!(self.publishers);
        }
        if !self.grants.is_empty() {
            part["grants"] = serde_json::json!(self.grants);
        }
        h.update(part.to_string().as_bytes());
        (self.version, h.finalize().into())
    }

    /// The MAC over this state (its `mac` left out).
    fn mac(&self, key: &NodeKey) -> String {
        use hmac::{KeyInit, Mac};
        let mut bare = self.clone();
        bare.mac = None;
        let json = serde_json::to_vec(&bare).unwrap_or_default();
        let k = key.derive_key(elastos_schema::domains::STATE_MAC_KEY);
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(k.as_ref())
            .expect("HMAC takes a key of any length");
        m.update(elastos_schema::domains::STATE_MAC);
        m.update(&json);
        hex::encode(m.finalize().into_bytes())
    }
}

impl State {
    fn new() -> State {
        State {
            format: versions::STATE,
            epoch: 0,
            revoked: BTreeSet::new(),
            delegations: BTreeMap::new(),
            uses: BTreeMap::new(),
            trusted: BTreeSet::new(),
            publishers: BTreeMap::new(),
            shell: None,
            grants: BTreeMap::new(),
            former_keys: BTreeSet::new(),
            version: 0,
            mac: None,
        }
    }
}

/// Read first, leniently, so an unknown format is reported as such, not as a parse error.
#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

/// A child token minted by [`Authority::prepare_delegate`] but not in effect yet: nothing about
/// it is stored until [`Authority::apply_delegation`], which the caller runs only once the
/// delegation's audit record is durable. Dropped unapplied, it was never made.
pub struct StagedDelegation {
    pub token: Token,
    pub text: String,
    link: Delegation,
}

/// A token that passed the checks, with its ancestry: `(id, max_uses)` from itself to the root.
struct Passed {
    token: Arc<VerifiedToken>,
    chain: Vec<(TokenId, u64)>,
}

/// A token that passed the checks: the body as first verified, shared with the signature cache
/// rather than copied for every call.
#[derive(Debug, Clone)]
pub struct Checked {
    token: Arc<VerifiedToken>,
    limited: bool,
}

impl Checked {
    fn of(passed: Passed) -> Checked {
        Checked {
            limited: passed.chain.iter().any(|(_, max)| *max > 0),
            token: passed.token,
        }
    }

    /// Whether a use of it is counted: it or an ancestor has `max_uses`.
    pub fn limited(&self) -> bool {
        self.limited
    }
}

impl std::ops::Deref for Checked {
    type Target = Token;

    fn deref(&self) -> &Token {
        &self.token.token
    }
}

/// The longest `SignedToken` accepted on any path, in bytes, checked before anything reads it.
/// A token is a few hundred bytes; the cap bounds the work (and the audit record) a flood of
/// oversized ones can cause.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The first part of the checks, which depends on a token's bytes alone: its size, its
/// decoding, that its signer is a key this node knows, and its signature. Shared by the
/// authority and the call path, which runs it *outside* the authority's lock, so that a flood
/// of tokens to verify never holds up another capsule's checks. Verdicts are cached per exact
/// bytes ([`SigCache`]); the cache's lock is held only to look up and to insert, never while a
/// signature is verified.
#[derive(Clone)]
pub struct Verifier {
    cache: Arc<std::sync::Mutex<SigCache>>,
    /// The node's and the trusted issuers' keys, decompressed once; replaced whole on a change.
    keys: Arc<std::sync::RwLock<Arc<KnownKeys>>>,
}

/// Public key bytes → the key, decompressed.
type KnownKeys = HashMap<[u8; 32], VerifyingKey>;

impl Verifier {
    fn new() -> Verifier {
        Verifier {
            cache: Arc::new(std::sync::Mutex::new(SigCache::default())),
            keys: Arc::default(),
        }
    }

    fn set_keys(&self, keys: KnownKeys) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Decodes and verifies `bytes`, cheapest refusals first: over [`MAX_TOKEN_BYTES`], not a
    /// `SignedToken`, signed by a key this node neither is nor trusts (refused before any
    /// signature work: `issuer`), a bad signature, a body that is not a token.
    pub fn verify(&self, bytes: &[u8]) -> Result<Arc<VerifiedToken>, Denial> {
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(Denial::new(
                Check::Version,
                format!(
                    "the token is {} bytes long; at most {MAX_TOKEN_BYTES} are accepted",
                    bytes.len()
                ),
            ));
        }
        if let Some(v) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(bytes)
        {
            return Ok(v);
        }
        let parts = token::decode_signed_bytes(bytes)
            .map_err(|e| Denial::new(Check::Version, e.to_string()))?;
        let key = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&parts.signer)
            .copied();
        let Some(key) = key else {
            let did = did_from_public(&parts.signer);
            return Err(Denial::new(
                Check::Issuer,
                format!(
                    "{did} is not this node and not a trusted issuer; if you trust it, run `elastos trust add {did}`"
                ),
            ));
        };
        // signature: over the received body bytes, before anything reads them.
        verify_signature_with(&key, &parts).map_err(|e| Denial::new(Check::Signature, e))?;
        // version, continued: the signed body must be a well-formed body of a known version.
        // A body that fails here is reported as `version` although its signature was checked
        // first.
        let token = token::decode_body(&parts.body)
            .map_err(|e| Denial::new(Check::Version, e.to_string()))?;
        let v = Arc::new(VerifiedToken {
            token,
            signer: parts.signer,
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bytes, v.clone());
        Ok(v)
    }

    /// How many verdicts are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The token authority of one node.
pub struct Authority {
    home: Home,
    state_path: PathBuf,
    key: Option<Arc<NodeKey>>,
    /// The node's public key and DID, when the key was given.
    node: Option<([u8; 32], String)>,
    state: State,
    /// `state.trusted`, parsed: public key → DID.
    trusted: HashMap<[u8; 32], String>,
    verifier: Verifier,
    /// Where each commit publishes the state's stamp for the audit log.
    stamp_cell: Option<StampCell>,
    /// The version of the state last made durable. Its lock orders every write of the state
    /// file, so that a use counted outside this authority's lock ([`StagedUse`]) never
    /// overwrites a newer state.
    written: Arc<std::sync::Mutex<u64>>,
}

/// A use of a max-uses token, counted in memory and to be made durable by
/// [`StagedUse::make_durable`] *outside* the authority's lock: its fsync then holds up no other
/// capsule's checks. The call it counts goes ahead only once that returned `Ok`.
pub struct StagedUse {
    json: Vec<u8>,
    stamp: StateStamp,
    path: PathBuf,
    written: Arc<std::sync::Mutex<u64>>,
    stamp_cell: Option<StampCell>,
}

impl std::fmt::Debug for StagedUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedUse")
            .field("path", &self.path)
            .field("bytes", &self.json.len())
            .finish_non_exhaustive()
    }
}

impl StagedUse {
    /// Writes the state the use was counted in, unless a newer one (which includes it) is on
    /// disk already.
    pub fn make_durable(self) -> Result<(), AuthorityError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= self.stamp.0 {
            return Ok(());
        }
        write_atomic(&self.path, &self.json, 0o600).map_err(|source| AuthorityError::Io {
            path: self.path.clone(),
            source,
        })?;
        *written = self.stamp.0;
        // Only what is durable is published: the log's head never records a state the disk
        // could lose.
        if let Some(cell) = &self.stamp_cell {
            let mut c = cell.lock().unwrap_or_else(|e| e.into_inner());
            if c.is_none_or(|st| st.0 < self.stamp.0) {
                *c = Some(self.stamp);
            }
        }
        Ok(())
    }
}

/// Constant-time equality, for MACs.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Makes the state reserve (a file of [`STATE_RESERVE`] allocated bytes) if it is missing.
fn ensure_reserve(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let tmp = path.with_extension("reserve.tmp");
    let made = (|| {
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        let len = i64::try_from(STATE_RESERVE).unwrap_or(i64::MAX);
        nix::fcntl::fallocate(
            std::os::fd::AsFd::as_fd(&f),
            nix::fcntl::FallocateFlags::empty(),
            0,
            len,
        )
        .map_err(io::Error::from)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn ttl_secs(ttl: Duration) -> Result<i64, AuthorityError> {
    let secs = i64::try_from(ttl.as_secs())
        .map_err(|_| AuthorityError::Invalid("the lifetime is too long".into()))?;
    if secs < 1 {
        return Err(AuthorityError::Invalid(
            "the lifetime must be at least one second (e.g. --ttl 10m)".into(),
        ));
    }
    Ok(secs)
}

/// A subject name is printable ASCII without `@` (which separates NAME@CID on the command line);
/// a CID must be an elastos CID in its canonical spelling, because the subject check compares
/// strings exactly.
fn validate_subject(name: &str, cid: Option<&str>) -> Result<(), AuthorityError> {
    if name.is_empty()
        || name.len() > MAX_SUBJECT_LEN
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'@')
    {
        return Err(AuthorityError::Invalid(format!(
            "`{}` is not a capsule name: use 1 to {MAX_SUBJECT_LEN} printable ASCII characters without `@`",
            sanitize(name)
        )));
    }
    if let Some(c) = cid {
        let parsed = crate::cid::parse(c).map_err(|e| AuthorityError::Invalid(sanitize(&e)))?;
        if parsed.to_string() != c {
            return Err(AuthorityError::Invalid(format!(
                "write the CID `{}` in its canonical form `{parsed}`",
                sanitize(c)
            )));
        }
    }
    Ok(())
}

fn parse_trusted(
    path: &Path,
    dids: &BTreeSet<String>,
) -> Result<HashMap<[u8; 32], String>, AuthorityError> {
    dids.iter()
        .map(|did| {
            public_from_did(did)
                .map(|pk| (pk, did.clone()))
                .map_err(|e| AuthorityError::BadState {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })
        })
        .collect()
}

impl Authority {
    /// Opens the authority of `home`. Without a key it can check, list and inspect, but not issue
    /// or delegate. Never writes.
    pub fn open(home: &Home, key: Option<Arc<NodeKey>>) -> Result<Authority, AuthorityError> {
        let state_path = home.state_dir().join(STATE_FILE);
        let state = match fs::read(&state_path) {
            Ok(bytes) => {
                // Its integrity is what revocation rests on: refuse one others could have edited.
                check_private(&state_path, 0o600)?;
                Authority::parse_state(&state_path, &bytes)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::new(),
            Err(source) => {
                return Err(AuthorityError::Io {
                    path: state_path,
                    source,
                })
            }
        };
        // Only a file from before MACs (version 0) may lack one; the audit log's record of
        // the state's version tells such an old copy from the current one.
        if let Some(k) = &key {
            let why = match &state.mac {
                Some(mac) if subtle_eq(state.mac(k).as_bytes(), mac.as_bytes()) => None,
                Some(_) => Some(
                    "its MAC does not match: it was edited by hand, or comes from another node",
                ),
                None if state.version > 0 => Some("its MAC is missing: it was edited by hand"),
                None => None,
            };
            if let Some(why) = why {
                return Err(AuthorityError::BadState {
                    path: state_path,
                    why: why.into(),
                });
            }
        }
        let trusted = parse_trusted(&state_path, &state.trusted)?;
        let node = key.as_ref().map(|k| (k.public_bytes(), k.did()));
        let mut authority = Authority {
            home: home.clone(),
            state_path,
            key,
            node,
            state,
            trusted,
            verifier: Verifier::new(),
            stamp_cell: None,
            written: Arc::default(),
        };
        *authority.written.lock().unwrap_or_else(|e| e.into_inner()) = authority.state.version;
        authority.refresh_known_keys();
        Ok(authority)
    }

    /// Replaces the node key this authority signs and MACs with (`identity import --force`,
    /// after the state was opened, and so checked, under the old one).
    pub fn rekey_to(&mut self, key: Arc<NodeKey>) {
        self.node = Some((key.public_bytes(), key.did()));
        self.key = Some(key);
        self.refresh_known_keys();
    }

    /// The state's version and digest, as the audit log's head records them.
    pub fn stamp(&self) -> StateStamp {
        self.state.stamp()
    }

    /// Publishes the state's stamp into `cell` now and after every commit.
    pub fn publish_stamp(&mut self, cell: StampCell) {
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.state.stamp());
        self.stamp_cell = Some(cell);
    }

    /// Compares this state with what the audit log's signed head recorded of it: the same, or
    /// newer (a change made durable after the head was written: a grant's state after its
    /// record, or a crash). An older or different state was put back or replaced by hand:
    /// refused, since it could revive revoked tokens.
    pub fn check_against_log(&self, recorded: StateStamp) -> Result<(), AuthorityError> {
        let (version, digest) = self.state.stamp();
        if version > recorded.0 || (version, digest) == recorded {
            return Ok(());
        }
        Err(AuthorityError::BadState {
            path: self.state_path.clone(),
            why: format!(
                "it is version {version}, but the audit log's signed head recorded version {}{}: an older or different copy was put back, which could revive revoked tokens. Put back the file elastos last wrote; if the log was rolled back with it, only `elastos audit verify --expect SEQ:HASH` against an anchor kept elsewhere can tell",
                recorded.0,
                if version == recorded.0 { " with other contents" } else { "" }
            ),
        })
    }

    /// Makes the state reserve if it is missing, for a writer that just opened the authority
    /// (`open` itself never writes). Best effort: on a full disk it waits for the next commit.
    pub fn ensure_state_reserve(&self) {
        if let Ok(dir) = self.home.ensure_dir("state") {
            let _ = ensure_reserve(&dir.join(RESERVE_FILE));
        }
    }

    fn parse_state(path: &Path, bytes: &[u8]) -> Result<State, AuthorityError> {
        let bad = |e: serde_json::Error| AuthorityError::BadState {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let probe: FormatProbe = serde_json::from_slice(bytes).map_err(bad)?;
        if probe.format != versions::STATE {
            return Err(AuthorityError::UnknownFormat {
                path: path.to_path_buf(),
                found: probe.format,
                known: versions::STATE,
            });
        }
        serde_json::from_slice(bytes).map_err(bad)
    }

    /// Writes `next` durably, then adopts it. On failure nothing changes, in memory or on disk.
    fn commit(&mut self, next: State) -> Result<(), AuthorityError> {
        let dir = self.home.ensure_dir("state")?;
        let (next, json) = self.sealed(next)?;
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        write_atomic(&self.state_path, &json, 0o600).map_err(|source| AuthorityError::Io {
            path: self.state_path.clone(),
            source,
        })?;
        *written = next.version;
        drop(written);
        self.state = next;
        if let Some(cell) = &self.stamp_cell {
            *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.state.stamp());
        }
        // Best effort: on a full disk the commit above succeeded and the reserve waits.
        let _ = ensure_reserve(&dir.join(RESERVE_FILE));
        Ok(())
    }

    /// `next` as the state after this one: its version raised, its MAC made, and its bytes.
    fn sealed(&self, mut next: State) -> Result<(State, Vec<u8>), AuthorityError> {
        next.version = self.state.version.saturating_add(1);
        next.mac = None;
        if let Some(k) = &self.key {
            next.mac = Some(next.mac(k));
        }
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| AuthorityError::Invalid(format!("cannot serialise the state: {e}")))?;
        Ok((next, json))
    }

    /// The state with one more use of every limited token of `chain`; `None` when none is
    /// limited (nothing to count).
    fn counted(&self, chain: &[(TokenId, u64)]) -> Option<State> {
        let mut limited = chain.iter().filter(|(_, max)| *max > 0).peekable();
        limited.peek()?;
        let mut next = self.state.clone();
        for (id, _) in limited {
            let n = next.uses.entry(*id).or_insert(0);
            *n = n.saturating_add(1);
        }
        Some(next)
    }

    /// [`Authority::commit`] for a change that only narrows authority: if the disk is full, the
    /// state reserve is given up to make room, so that a revocation always takes effect.
    fn commit_narrowing(&mut self, next: State) -> Result<(), AuthorityError> {
        match self.commit(next.clone()) {
            Err(AuthorityError::Io { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOSPC)
                    || source.raw_os_error() == Some(nix::libc::EDQUOT) =>
            {
                let reserve = self.state_path.with_file_name(RESERVE_FILE);
                match fs::remove_file(&reserve) {
                    Ok(()) => {
                        tracing::warn!(
                            "the disk is full: the state reserve was given up for a revocation"
                        );
                        self.commit(next)
                    }
                    Err(_) => Err(AuthorityError::Io {
                        path: self.state_path.clone(),
                        source,
                    }),
                }
            }
            r => r,
        }
    }

    fn refresh_known_keys(&mut self) {
        let node = self.key.as_ref().map(|k| k.verifying_key());
        self.verifier.set_keys(
            node.into_iter()
                .chain(
                    self.trusted
                        .keys()
                        .filter_map(|pk| VerifyingKey::from_bytes(pk).ok()),
                )
                .map(|vk| (vk.to_bytes(), vk))
                .collect(),
        );
    }

    /// The verifier the call path runs outside this authority's lock.
    pub fn verifier(&self) -> Verifier {
        self.verifier.clone()
    }

    fn signing_key(&self) -> Result<Arc<NodeKey>, AuthorityError> {
        self.key.clone().ok_or(AuthorityError::NoKey)
    }

    /// The current epoch: tokens must carry exactly this one.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The node's DID, when the key was given.
    pub fn node_did(&self) -> Option<&str> {
        self.node.as_ref().map(|(_, d)| d.as_str())
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    pub fn is_revoked(&self, id: &TokenId) -> bool {
        self.state.revoked.contains(id)
    }

    /// How many uses of `id` have been recorded (only limited tokens are counted).
    pub fn uses(&self, id: &TokenId) -> u64 {
        self.state.uses.get(id).copied().unwrap_or(0)
    }

    /// Forgets every cached signature verdict (benchmarks and tests measure first sight).
    pub fn clear_signature_cache(&mut self) {
        self.verifier
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Issues a root token, valid from `not_before` (default now) for `ttl`.
    pub fn issue(&mut self, req: IssueRequest) -> Result<(Token, String), AuthorityError> {
        self.issue_at(req, now_unix())
    }

    /// [`Authority::issue`] with an explicit clock.
    pub fn issue_at(
        &mut self,
        req: IssueRequest,
        now: i64,
    ) -> Result<(Token, String), AuthorityError> {
        let key = self.signing_key()?;
        validate_subject(&req.subject_name, req.subject_cid.as_deref())?;
        validate_pattern(&req.resource).map_err(|e| {
            AuthorityError::Invalid(format!("resource `{}`: {e}", sanitize(&req.resource)))
        })?;
        if req.actions.is_empty() {
            return Err(AuthorityError::Invalid(
                "a token needs at least one action".into(),
            ));
        }
        let not_before = req.not_before.unwrap_or(now);
        let expiry = not_before
            .checked_add(ttl_secs(req.ttl)?)
            .ok_or_else(|| AuthorityError::Invalid("the lifetime is too long".into()))?;
        let token = Token {
            version: elastos_schema::versions::TOKEN,
            id: TokenId::random().map_err(|e| AuthorityError::Random(e.to_string()))?,
            issuer: key.did(),
            subject: Subject {
                name: req.subject_name,
                cid: req.subject_cid,
            },
            resource: req.resource,
            actions: req.actions,
            not_before,
            expiry,
            epoch: self.state.epoch,
            max_uses: req.max_uses,
            classification: req.classification,
            delegatable: req.delegatable,
            parent: None,
            ancestors: Vec::new(),
        };
        let (_, text) = token::sign(&token, &key)?;
        Ok((token, text))
    }

    /// Mints a child of `parent` that is at most as wide in every respect, and records the link
    /// durably before returning it, so revoking the parent revokes the child. For a caller with
    /// no audit record to write first (tests); the daemon and the CLI stage it instead.
    pub fn delegate(
        &mut self,
        parent: &str,
        n: Narrowing,
        now: i64,
    ) -> Result<(Token, String), AuthorityError> {
        let staged = self.prepare_delegate(parent, n, now)?;
        self.apply_delegation(&staged)?;
        Ok((staged.token, staged.text))
    }

    /// Records a staged child's link to its parent, durably: from here, revoking the parent
    /// revokes the child, and the child may be handed out.
    pub fn apply_delegation(&mut self, staged: &StagedDelegation) -> Result<(), AuthorityError> {
        let mut next = self.state.clone();
        next.delegations.insert(staged.token.id, staged.link);
        self.commit(next)
    }

    /// Mints a child of `parent` as [`Authority::delegate`] does, without storing anything.
    pub fn prepare_delegate(
        &mut self,
        parent: &str,
        n: Narrowing,
        now: i64,
    ) -> Result<StagedDelegation, AuthorityError> {
        let key = self.signing_key()?;
        // The parent must be valid now, in every respect that does not depend on a call.
        let bytes = token::text_to_bytes(parent)
            .map_err(|e| AuthorityError::Parent(Denial::new(Check::Version, e.to_string())))?;
        let passed = self
            .run_checks(&bytes, None, false, now)
            .map_err(AuthorityError::Parent)?;
        let p = &passed.token.token;
        if !p.delegatable {
            return Err(AuthorityError::NotDelegatable);
        }
        // The child's chain is the parent's plus one: itself.
        if passed.chain.len() > MAX_DELEGATION_DEPTH {
            return Err(AuthorityError::TooDeep);
        }
        let widening = |s: String| AuthorityError::Widening(s);

        let subject = match n.subject {
            None => p.subject.clone(),
            Some((name, cid)) => {
                validate_subject(&name, cid.as_deref())?;
                if name != p.subject.name {
                    return Err(widening(format!(
                        "the child must keep the parent's subject `{}`",
                        sanitize(&p.subject.name)
                    )));
                }
                if let Some(pc) = &p.subject.cid {
                    if cid.as_deref() != Some(pc.as_str()) {
                        return Err(widening(format!(
                            "the parent is bound to package {}; the child must be too",
                            sanitize(pc)
                        )));
                    }
                }
                Subject { name, cid }
            }
        };

        let resource = n.resource.unwrap_or_else(|| p.resource.clone());
        validate_pattern(&resource).map_err(|e| {
            AuthorityError::Invalid(format!("resource `{}`: {e}", sanitize(&resource)))
        })?;
        match resource_within(&p.resource, &resource) {
            Ok(true) => {}
            Ok(false) => {
                return Err(widening(format!(
                    "`{}` is not within the parent's resource `{}`",
                    sanitize(&resource),
                    sanitize(&p.resource)
                )))
            }
            Err(e) => return Err(AuthorityError::Invalid(e)),
        }

        let actions = n.actions.unwrap_or(p.actions);
        if actions.is_empty() {
            return Err(AuthorityError::Invalid(
                "a token needs at least one action".into(),
            ));
        }
        if !actions.is_subset_of(p.actions) {
            return Err(widening(format!(
                "the parent allows only {}, not {actions}",
                p.actions
            )));
        }

        let not_before = now.max(p.not_before);
        let expiry = match n.ttl {
            None => p.expiry,
            Some(ttl) => {
                let e = not_before
                    .checked_add(ttl_secs(ttl)?)
                    .ok_or_else(|| widening("the child would outlive its parent".into()))?;
                if e > p.expiry {
                    return Err(widening(format!(
                        "the child would outlive its parent, which expires at {}",
                        humantime::format_rfc3339_seconds(token::unix_to_system(p.expiry))
                    )));
                }
                e
            }
        };
        if expiry <= not_before {
            return Err(AuthorityError::Invalid(
                "the child would never be valid (its parent expires first)".into(),
            ));
        }

        let max_uses = match (p.max_uses, n.max_uses) {
            (0, m) => m.unwrap_or(0),
            (pm, None) => pm,
            (pm, Some(0)) => {
                return Err(widening(format!(
                    "the parent may be used {pm} times; the child cannot be unlimited"
                )))
            }
            (pm, Some(m)) if m > pm => {
                return Err(widening(format!(
                    "the parent may be used {pm} times, fewer than {m}"
                )))
            }
            (_, Some(m)) => m,
        };

        let classification = n.classification.unwrap_or(p.classification);
        if classification > p.classification {
            return Err(widening(format!(
                "the parent reaches at most `{}`, not `{classification}`",
                p.classification
            )));
        }

        let child = Token {
            version: elastos_schema::versions::TOKEN,
            id: TokenId::random().map_err(|e| AuthorityError::Random(e.to_string()))?,
            issuer: key.did(),
            subject,
            resource,
            actions,
            not_before,
            expiry,
            epoch: self.state.epoch,
            max_uses,
            classification,
            delegatable: n.delegatable,
            parent: Some(p.id),
            // The parent's whole chain, as this node knows it: revoking any link revokes the
            // child, even where the chain passes through another issuer's tokens.
            ancestors: passed.chain.iter().map(|(id, _)| *id).collect(),
        };
        let (_, text) = token::sign(&child, &key)?;
        Ok(StagedDelegation {
            token: child,
            text,
            link: Delegation {
                parent: p.id,
                parent_max_uses: p.max_uses,
            },
        })
    }

    /// Runs the twelve checks on `token` for `req` at time `now`. With `consume`, a use is
    /// recorded durably (against the token and every limited ancestor) before this returns;
    /// without it (a dry run) nothing is written. The first failing check is the denial.
    pub fn check(
        &mut self,
        token: &str,
        req: &CallRequest<'_>,
        now: i64,
        consume: bool,
    ) -> Result<Checked, Denial> {
        let bytes =
            token::text_to_bytes(token).map_err(|e| Denial::new(Check::Version, e.to_string()))?;
        self.check_bytes(&bytes, req, now, consume)
    }

    /// [`Authority::check`] on the `SignedToken` bytes as they arrive on the capsule wire.
    pub fn check_bytes(
        &mut self,
        token: &[u8],
        req: &CallRequest<'_>,
        now: i64,
        consume: bool,
    ) -> Result<Checked, Denial> {
        let verified = self.verifier.verify(token)?;
        self.check_verified(verified, req, now, consume)
    }

    /// [`Authority::check_bytes`] for a token the shared [`Verifier`] already passed (the call
    /// path verifies outside this authority's lock): the checks that depend on the caller, the
    /// clock and this authority's state. With `consume`, a use is recorded durably first.
    pub fn check_verified(
        &mut self,
        verified: Arc<VerifiedToken>,
        req: &CallRequest<'_>,
        now: i64,
        consume: bool,
    ) -> Result<Checked, Denial> {
        let passed = self.checks_after_verify(verified, Some(req), false, now)?;
        if consume {
            self.consume(&passed.chain)?;
        }
        Ok(Checked::of(passed))
    }

    /// [`Authority::check_verified`] counting a use (against the token and every limited
    /// ancestor) in memory: the use is durable only once the returned [`StagedUse`] is made so,
    /// which the caller does after releasing this authority's lock, and before the call goes
    /// ahead. Meanwhile later checks already see the use (they can only be stricter).
    pub fn check_counting(
        &mut self,
        verified: Arc<VerifiedToken>,
        req: &CallRequest<'_>,
        now: i64,
    ) -> Result<(Checked, Option<StagedUse>), Denial> {
        self.checked_and_counted(verified, req, false, now)
    }

    /// The 12 checks for serving a namespace: `req.resource` is the pattern to serve
    /// (`P/*`), and the token must name that pattern or one it lies within. Calls never come
    /// here: a call's target is always one concrete resource. A use is counted as
    /// [`Authority::check_counting`] counts one: made durable by the caller, outside the lock.
    pub fn check_serve(
        &mut self,
        verified: Arc<VerifiedToken>,
        req: &CallRequest<'_>,
        now: i64,
    ) -> Result<(Checked, Option<StagedUse>), Denial> {
        self.checked_and_counted(verified, req, true, now)
    }

    fn checked_and_counted(
        &mut self,
        verified: Arc<VerifiedToken>,
        req: &CallRequest<'_>,
        pattern: bool,
        now: i64,
    ) -> Result<(Checked, Option<StagedUse>), Denial> {
        let passed = self.checks_after_verify(verified, Some(req), pattern, now)?;
        let Some(next) = self.counted(&passed.chain) else {
            return Ok((Checked::of(passed), None));
        };
        let (next, json) = self
            .sealed(next)
            .map_err(|e| Denial::new(Check::Uses, e.to_string()))?;
        let staged = StagedUse {
            json,
            stamp: next.stamp(),
            path: self.state_path.clone(),
            written: self.written.clone(),
            stamp_cell: self.stamp_cell.clone(),
        };
        self.state = next;
        Ok((Checked::of(passed), Some(staged)))
    }

    /// The checks in contract order. With no call (`delegate`'s test of a parent), the four
    /// that are about a call — subject, action, resource, classification — are skipped.
    fn run_checks(
        &mut self,
        bytes: &[u8],
        call: Option<&CallRequest<'_>>,
        pattern: bool,
        now: i64,
    ) -> Result<Passed, Denial> {
        // version, signature, and an unknown signer's `issuer`: the bytes alone decide them.
        let verified = self.verifier.verify(bytes)?;
        self.checks_after_verify(verified, call, pattern, now)
    }

    /// The checks that depend on more than the token's bytes, on a token the [`Verifier`]
    /// passed.
    fn checks_after_verify(
        &self,
        verified: Arc<VerifiedToken>,
        call: Option<&CallRequest<'_>>,
        pattern: bool,
        now: i64,
    ) -> Result<Passed, Denial> {
        let deny = |check: Check| move |reason: String| Denial::new(check, reason);
        // Decoding refuses other versions; asked again on every call, cached or not, so the
        // check never depends on how the token was obtained.
        if !(versions::TOKEN_OLDEST..=versions::TOKEN).contains(&verified.token.version) {
            return Err(Denial::new(
                Check::Version,
                format!("token format version {} is unknown", verified.token.version),
            ));
        }
        let token = &verified.token;
        let signer = &verified.signer;

        self.check_issuer(token, signer)
            .map_err(deny(Check::Issuer))?;
        if let Some(c) = call {
            check_subject(token, c.caller_name, c.caller_cid).map_err(deny(Check::Subject))?;
            check_action(token, c.action).map_err(deny(Check::Action))?;
            if pattern {
                check_resource_pattern(token, c.resource).map_err(deny(Check::Resource))?;
            } else {
                check_resource(token, c.resource).map_err(deny(Check::Resource))?;
            }
        }
        if token.epoch != self.state.epoch {
            return Err(Denial::new(
                Check::Epoch,
                format!(
                    "the token was issued in epoch {} but this node is in epoch {} (`elastos revoke --all` invalidated it); ask for a new token",
                    token.epoch, self.state.epoch
                ),
            ));
        }
        let chain = self.ancestry(token, signer).map_err(deny(Check::Revoked))?;
        check_not_before(token, now).map_err(deny(Check::NotBefore))?;
        check_expired(token, now).map_err(deny(Check::Expired))?;
        self.check_uses(token, &chain).map_err(deny(Check::Uses))?;
        if let Some(c) = call {
            check_classification(token, c.classification).map_err(deny(Check::Classification))?;
        }
        Ok(Passed {
            token: verified.clone(),
            chain,
        })
    }

    /// body.issuer must be the signer's DID, and that DID must be this node's or trusted.
    fn check_issuer(&self, token: &Token, signer: &[u8; 32]) -> Result<(), String> {
        // Compare keys, not freshly encoded DIDs: the known DIDs are canonical and
        // `did_from_public` is one-to-one, so this is the same test without base58 on every call.
        let known = match &self.node {
            Some((pk, did)) if pk == signer => Some(did),
            _ => self.trusted.get(signer),
        };
        match known {
            Some(did) if *did == token.issuer => Ok(()),
            Some(did) => Err(format!(
                "the token names issuer {} but was signed by {did}",
                sanitize(&token.issuer)
            )),
            None => {
                let did = did_from_public(signer);
                if did != token.issuer {
                    Err(format!(
                        "the token names issuer {} but was signed by {did}",
                        sanitize(&token.issuer)
                    ))
                } else {
                    Err(format!(
                        "{did} is not this node and not a trusted issuer; if you trust it, run `elastos trust add {did}`"
                    ))
                }
            }
        }
    }

    fn is_own(&self, signer: &[u8; 32]) -> bool {
        self.node.as_ref().is_some_and(|(pk, _)| pk == signer)
    }

    /// The token and its ancestors, `(id, max_uses)`, refusing if any is revoked. The first
    /// link comes from the signed body; the rest from the delegation records this authority
    /// wrote, which must agree with it.
    fn ancestry(&self, token: &Token, signer: &[u8; 32]) -> Result<Vec<(TokenId, u64)>, String> {
        let mut chain = vec![(token.id, token.max_uses)];
        let record = self.state.delegations.get(&token.id);
        let first = match (token.parent, record) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(
                    "a delegation record names a parent for this token but the token has none; the state file is inconsistent".into(),
                )
            }
            (Some(p), Some(r)) if r.parent != p => {
                return Err(
                    "the token's parent disagrees with this node's delegation record; the state file is inconsistent".into(),
                )
            }
            (Some(p), Some(r)) => Some((p, r.parent_max_uses)),
            // Our own children always have a record; without it we cannot see the parent's
            // revocation, so refuse rather than guess.
            (Some(_), None) if self.is_own(signer) => {
                return Err(
                    "this node has no record of the token's delegation (its state was lost or replaced); ask for a new token".into(),
                )
            }
            // A trusted issuer's child: its parent is known, its ancestors may not be.
            (Some(p), None) => Some((p, 0)),
        };
        if let Some(mut link) = first {
            loop {
                if chain.len() > MAX_DELEGATION_DEPTH {
                    return Err(format!(
                        "the delegation chain is deeper than {MAX_DELEGATION_DEPTH}"
                    ));
                }
                chain.push(link);
                match self.state.delegations.get(&link.0) {
                    Some(r) => link = (r.parent, r.parent_max_uses),
                    None => break,
                }
            }
        }
        // Every ancestor the token itself names (version 2) is checked too: a trusted issuer's
        // grandchild has no delegation record here, and its chain would stop at the first
        // unknown link.
        for a in &token.ancestors {
            if !chain.iter().any(|(id, _)| id == a) {
                chain.push((*a, 0));
            }
        }
        if chain.len() > MAX_DELEGATION_DEPTH + 1 {
            return Err(format!(
                "the delegation chain is deeper than {MAX_DELEGATION_DEPTH}"
            ));
        }
        for (id, _) in &chain {
            if self.state.revoked.contains(id) {
                return Err(if *id == token.id {
                    "the token was revoked; ask for a new one".to_string()
                } else {
                    format!(
                        "its ancestor {id} was revoked, and with it every token delegated from it"
                    )
                });
            }
        }
        Ok(chain)
    }

    fn check_uses(&self, token: &Token, chain: &[(TokenId, u64)]) -> Result<(), String> {
        for (id, max) in chain.iter().filter(|(_, max)| *max > 0) {
            let used = self.uses(id);
            if used >= *max {
                return Err(if *id == token.id {
                    format!("the token has been used {used} of its {max} allowed times; ask for a new one")
                } else {
                    format!("its ancestor {id} has been used all {max} of its allowed times")
                });
            }
        }
        Ok(())
    }

    /// Counts one use against the token and each limited ancestor, durably. One atomic file
    /// write (two fsyncs) per consuming call: simple and crash-safe, at a cost of about a
    /// millisecond; batching or an append-only counter log is the next step if it matters.
    fn consume(&mut self, chain: &[(TokenId, u64)]) -> Result<(), Denial> {
        let Some(next) = self.counted(chain) else {
            return Ok(());
        };
        self.commit(next).map_err(|e| {
            Denial::new(
                Check::Uses,
                format!("this use could not be recorded durably ({e}); the call is refused"),
            )
        })
    }

    /// Revokes `id` and every token delegated from it (as far as this node's records know).
    /// Returns how many were newly revoked.
    pub fn revoke(&mut self, id: &TokenId) -> Result<usize, AuthorityError> {
        let mut children: HashMap<TokenId, Vec<TokenId>> = HashMap::new();
        for (child, d) in &self.state.delegations {
            children.entry(d.parent).or_default().push(*child);
        }
        let mut next = self.state.clone();
        let mut newly = 0usize;
        // Breadth-first, one level per round, bounded by the depth limit.
        let mut level = vec![*id];
        for _ in 0..=MAX_DELEGATION_DEPTH {
            let mut below = Vec::new();
            for t in level {
                if next.revoked.insert(t) {
                    newly += 1;
                }
                if let Some(c) = children.get(&t) {
                    below.extend_from_slice(c);
                }
            }
            if below.is_empty() {
                break;
            }
            level = below;
        }
        if newly > 0 {
            self.commit_narrowing(next)?;
        }
        Ok(newly)
    }

    /// Raises the epoch: every token issued before becomes invalid. Returns the new epoch.
    pub fn revoke_all(&mut self) -> Result<u64, AuthorityError> {
        let mut next = self.state.clone();
        next.epoch = next
            .epoch
            .checked_add(1)
            .ok_or(AuthorityError::EpochExhausted)?;
        let epoch = next.epoch;
        self.commit_narrowing(next)?;
        Ok(epoch)
    }

    /// After the node key changed from `old_did`: remembers it as a former key (its packages
    /// stay first party) and raises the epoch, so every token issued before ends. Narrowing:
    /// takes effect on a full disk too. Returns the new epoch.
    pub fn retire_key(&mut self, old_did: &str) -> Result<u64, AuthorityError> {
        public_from_did(old_did)?;
        let mut next = self.state.clone();
        next.former_keys.insert(old_did.to_string());
        next.epoch = next
            .epoch
            .checked_add(1)
            .ok_or(AuthorityError::EpochExhausted)?;
        let epoch = next.epoch;
        self.commit_narrowing(next)?;
        Ok(epoch)
    }

    /// Whether `did` is one of this node's former keys.
    pub fn is_former_key(&self, did: &str) -> bool {
        self.state.former_keys.contains(did)
    }

    /// Accepts tokens signed by `did`. Returns false if it was already trusted.
    pub fn trust_add(&mut self, did: &str) -> Result<bool, AuthorityError> {
        let pk = public_from_did(did)?;
        if self.state.trusted.contains(did) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.trusted.insert(did.to_string());
        self.commit(next)?;
        self.trusted.insert(pk, did.to_string());
        self.refresh_known_keys();
        Ok(true)
    }

    /// Stops accepting tokens signed by `did`. Returns false if it was not trusted.
    pub fn trust_rm(&mut self, did: &str) -> Result<bool, AuthorityError> {
        if !self.state.trusted.contains(did) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.trusted.remove(did);
        self.commit_narrowing(next)?;
        self.trusted.retain(|_, d| d != did);
        self.refresh_known_keys();
        Ok(true)
    }

    /// The trusted issuers besides this node, sorted.
    pub fn trust_ls(&self) -> Vec<String> {
        self.state.trusted.iter().cloned().collect()
    }

    /// Runs `did`'s packages as `kind`. Returns false if it was already so. First party is the
    /// wider: marking a first-party publisher known narrows it, and goes through as a narrowing.
    pub fn publisher_add(
        &mut self,
        did: &str,
        kind: PublisherKind,
    ) -> Result<bool, AuthorityError> {
        public_from_did(did)?;
        let before = self.state.publishers.get(did).copied();
        if before == Some(kind) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.publishers.insert(did.to_string(), kind);
        if before == Some(PublisherKind::FirstParty) {
            self.commit_narrowing(next)?;
        } else {
            self.commit(next)?;
        }
        Ok(true)
    }

    /// Forgets `did` as a publisher. Returns false if it was not one.
    pub fn publisher_rm(&mut self, did: &str) -> Result<bool, AuthorityError> {
        if !self.state.publishers.contains_key(did) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.publishers.remove(did);
        self.commit_narrowing(next)?;
        Ok(true)
    }

    /// The shell now deciding is `id`: recorded when it differs from the last one. Returns the
    /// last one when it changed (`Some(None)`: the first shell), `None` when it is the same.
    #[allow(clippy::option_option)]
    pub fn shell_seen(
        &mut self,
        id: ShellIdentity,
    ) -> Result<Option<Option<ShellIdentity>>, AuthorityError> {
        if self.state.shell.as_ref() == Some(&id) {
            return Ok(None);
        }
        let before = self.state.shell.clone();
        let mut next = self.state.clone();
        next.shell = Some(id);
        self.commit(next)?;
        Ok(Some(before))
    }

    /// Records a standing grant; returns its id (`g-` and 8 hex digits).
    pub fn grant_add(&mut self, grant: StandingGrant) -> Result<String, AuthorityError> {
        let id = loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| AuthorityError::Random(e.to_string()))?;
            let id = format!("g-{}", hex::encode(b));
            if !self.state.grants.contains_key(&id) {
                break id;
            }
        };
        let mut next = self.state.clone();
        let deny = !grant.allow;
        next.grants.insert(id.clone(), grant);
        if deny {
            self.commit_narrowing(next)?;
        } else {
            self.commit(next)?;
        }
        Ok(id)
    }

    /// The standing grant that answers this request, if any: a deny before an allow.
    pub fn grant_find(
        &self,
        capsule: &str,
        bound_to: &str,
        resource: &str,
        actions: ActionSet,
    ) -> Option<(String, StandingGrant)> {
        let mut found: Vec<(&String, &StandingGrant)> = self
            .state
            .grants
            .iter()
            .filter(|(_, g)| {
                g.capsule == capsule
                    && g.bound_to == bound_to
                    && ActionSet::parse_list(&g.actions).is_ok_and(|a| actions.is_subset_of(a))
                    && crate::token::resource_within(&g.resource, resource).unwrap_or(false)
            })
            .collect();
        found.sort_by_key(|(_, g)| g.allow);
        found.first().map(|(id, g)| ((*id).clone(), (*g).clone()))
    }

    /// A token was minted under grant `id`: revoking the grant will revoke it. Tokens that have
    /// expired are dropped from the grant's list meanwhile.
    pub fn grant_token(
        &mut self,
        id: &str,
        token: TokenId,
        expiry: i64,
        now: i64,
    ) -> Result<(), AuthorityError> {
        let Some(g) = self.state.grants.get(id) else {
            return Ok(());
        };
        let mut g = g.clone();
        g.tokens.retain(|(_, e)| *e > now);
        g.tokens.push((token, expiry));
        let mut next = self.state.clone();
        next.grants.insert(id.to_string(), g);
        self.commit(next)
    }

    /// Revokes grant `id` and every unexpired token minted under it, in one change. Returns how
    /// many tokens were revoked, or `None` when there is no such grant.
    pub fn grant_revoke(&mut self, id: &str, now: i64) -> Result<Option<usize>, AuthorityError> {
        let Some(g) = self.state.grants.get(id).cloned() else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        next.grants.remove(id);
        let mut n = 0;
        for (t, expiry) in g.tokens {
            if expiry > now && next.revoked.insert(t) {
                n += 1;
            }
        }
        self.commit_narrowing(next)?;
        Ok(Some(n))
    }

    /// The supervisor's run ended (`down`), or it starts after one that ended without `down`:
    /// every session grant is revoked with its unexpired tokens, in one change. Returns each
    /// grant's id and how many tokens it took.
    pub fn sessions_end(&mut self, now: i64) -> Result<Vec<(String, usize)>, AuthorityError> {
        let ended: Vec<(String, StandingGrant)> = self
            .state
            .grants
            .iter()
            .filter(|(_, g)| g.session)
            .map(|(id, g)| (id.clone(), g.clone()))
            .collect();
        if ended.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = self.state.clone();
        let mut out = Vec::new();
        for (id, g) in ended {
            next.grants.remove(&id);
            let n = g
                .tokens
                .iter()
                .filter(|(t, expiry)| *expiry > now && next.revoked.insert(*t))
                .count();
            out.push((id, n));
        }
        self.commit_narrowing(next)?;
        Ok(out)
    }

    /// The standing grants, by id.
    pub fn grants(&self) -> Vec<(String, StandingGrant)> {
        self.state
            .grants
            .iter()
            .map(|(id, g)| (id.clone(), g.clone()))
            .collect()
    }

    /// Forgets `did` as an issuer and as a publisher, in one change. Returns false if it was
    /// neither.
    pub fn forget(&mut self, did: &str) -> Result<bool, AuthorityError> {
        if !self.state.trusted.contains(did) && !self.state.publishers.contains_key(did) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.trusted.remove(did);
        next.publishers.remove(did);
        self.commit_narrowing(next)?;
        self.trusted.retain(|_, d| d != did);
        self.refresh_known_keys();
        Ok(true)
    }

    /// Everything this node was told to trust, by DID: `issuer`, `publisher` (known) or
    /// `first-party`; a DID that is an issuer and a publisher is listed once for each.
    pub fn trust_entries(&self) -> Vec<(String, &'static str)> {
        let mut all: Vec<(String, &'static str)> = self
            .state
            .trusted
            .iter()
            .map(|d| (d.clone(), "issuer"))
            .chain(
                self.state
                    .publishers
                    .iter()
                    .map(|(d, k)| (d.clone(), k.as_str())),
            )
            .collect();
        all.sort();
        all
    }

    /// How this node regards `did` as a publisher, if it was told.
    pub fn publisher_kind(&self, did: &str) -> Option<PublisherKind> {
        self.state.publishers.get(did).copied()
    }

    /// The publishers this node was told about, sorted by DID.
    pub fn publishers(&self) -> Vec<(String, PublisherKind)> {
        self.state
            .publishers
            .iter()
            .map(|(d, k)| (d.clone(), *k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MAX_CLOCK_SKEW_SECS;
    use std::os::unix::fs::PermissionsExt;

    const NOW: i64 = 1_700_000_000;
    const RES: &str = "localhost://storage/notes/*";
    const REQ_RES: &str = "localhost://storage/notes/today";
    const CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

    struct Fixture {
        _dir: tempfile::TempDir,
        home: Home,
        key: Arc<NodeKey>,
        auth: Authority,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        let key = Arc::new(NodeKey::from_seed(&[5u8; 32]));
        let auth = Authority::open(&home, Some(key.clone())).unwrap();
        Fixture {
            _dir: dir,
            home,
            key,
            auth,
        }
    }

    impl Fixture {
        fn reopen(&mut self) {
            self.auth = Authority::open(&self.home, Some(self.key.clone())).unwrap();
        }
    }

    fn req() -> IssueRequest {
        IssueRequest {
            subject_name: "notes".into(),
            subject_cid: None,
            resource: RES.into(),
            actions: ActionSet::parse_list("read,write").unwrap(),
            not_before: None,
            ttl: Duration::from_secs(3600),
            max_uses: 0,
            classification: Classification::Internal,
            delegatable: false,
        }
    }

    fn call() -> CallRequest<'static> {
        CallRequest {
            caller_name: "notes",
            caller_cid: None,
            resource: REQ_RES,
            action: Action::Read,
            classification: Classification::Internal,
        }
    }

    fn issue(f: &mut Fixture, r: IssueRequest) -> (Token, String) {
        f.auth.issue_at(r, NOW).unwrap()
    }

    fn denied(f: &mut Fixture, text: &str, c: &CallRequest<'_>, now: i64) -> Check {
        match f.auth.check(text, c, now, false) {
            Ok(_) => panic!("allowed, expected a denial"),
            Err(d) => {
                assert!(!d.reason.is_empty());
                assert_eq!(d.to_string(), format!("{}: {}", d.check.as_str(), d.reason));
                d.check
            }
        }
    }

    /// A token with `signer` and `issuer` chosen freely.
    fn sign_as(t: &Token, key: &NodeKey) -> String {
        token::sign(t, key).unwrap().1
    }

    #[test]
    fn check_names_are_the_contract() {
        let names: Vec<&str> = Check::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "version",
                "signature",
                "issuer",
                "subject",
                "action",
                "resource",
                "epoch",
                "revoked",
                "not_before",
                "expired",
                "uses",
                "classification"
            ]
        );
    }

    #[test]
    fn a_valid_token_is_allowed_and_returned() {
        let mut f = fixture();
        let (t, text) = issue(&mut f, req());
        let got = f.auth.check(&text, &call(), NOW, false).unwrap();
        assert_eq!(*got, t);
        assert_eq!(t.issuer, f.key.did());
        assert_eq!(t.expiry, NOW + 3600);
    }

    /// One table: each row breaks exactly one check and must see exactly that denial.
    #[test]
    fn each_check_fails_on_exactly_what_breaks_it() {
        let mut f = fixture();
        let (good, text) = issue(&mut f, req());
        let other = NodeKey::from_seed(&[6u8; 32]);

        // version
        assert_eq!(denied(&mut f, "not-a-token", &call(), NOW), Check::Version);
        let (mut parts, _) = token::sign(&good, &f.key).unwrap();
        parts.version = 9;
        assert_eq!(
            denied(&mut f, &parts.encode().unwrap(), &call(), NOW),
            Check::Version
        );

        // signature: one bit of the signature flipped.
        let (mut parts, _) = token::sign(&good, &f.key).unwrap();
        parts.signature[10] ^= 1;
        assert_eq!(
            denied(&mut f, &parts.encode().unwrap(), &call(), NOW),
            Check::Signature
        );

        // issuer: a valid signature by a key this node does not trust, naming its own DID.
        let mut theirs = good.clone();
        theirs.issuer = other.did();
        assert_eq!(
            denied(&mut f, &sign_as(&theirs, &other), &call(), NOW),
            Check::Issuer
        );

        // subject
        let c = CallRequest {
            caller_name: "mail",
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &c, NOW), Check::Subject);

        // action
        let c = CallRequest {
            action: Action::Delete,
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &c, NOW), Check::Action);

        // resource
        let c = CallRequest {
            resource: "localhost://storage/mail/a",
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &c, NOW), Check::Resource);

        // not_before: beyond the skew allowance.
        let (_, later) = issue(
            &mut f,
            IssueRequest {
                not_before: Some(NOW + MAX_CLOCK_SKEW_SECS + 1),
                ..req()
            },
        );
        assert_eq!(denied(&mut f, &later, &call(), NOW), Check::NotBefore);

        // expired: at the expiry second (exclusive).
        assert_eq!(denied(&mut f, &text, &call(), good.expiry), Check::Expired);

        // uses
        let (_, once) = issue(
            &mut f,
            IssueRequest {
                max_uses: 1,
                ..req()
            },
        );
        f.auth.check(&once, &call(), NOW, true).unwrap();
        assert_eq!(denied(&mut f, &once, &call(), NOW), Check::Uses);

        // classification
        let c = CallRequest {
            classification: Classification::Secret,
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &c, NOW), Check::Classification);

        // revoked
        let (victim, victim_text) = issue(&mut f, req());
        f.auth.revoke(&victim.id).unwrap();
        assert_eq!(denied(&mut f, &victim_text, &call(), NOW), Check::Revoked);

        // epoch: raise it; the untouched token now fails exactly that.
        f.auth.check(&text, &call(), NOW, false).unwrap();
        f.auth.revoke_all().unwrap();
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Epoch);
    }

    #[test]
    fn the_first_failing_check_decides() {
        let mut f = fixture();
        let (t, text) = issue(&mut f, req());
        f.auth.revoke(&t.id).unwrap();
        // Wrong subject, wrong action, revoked and expired at once: subject comes first.
        let c = CallRequest {
            caller_name: "mail",
            action: Action::Admin,
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &c, t.expiry + 10), Check::Subject);
    }

    #[test]
    fn skew_allows_a_slightly_early_token() {
        let mut f = fixture();
        let (_, early) = issue(
            &mut f,
            IssueRequest {
                not_before: Some(NOW + MAX_CLOCK_SKEW_SECS),
                ..req()
            },
        );
        f.auth.check(&early, &call(), NOW, false).unwrap();
        let (t, text) = issue(&mut f, req());
        f.auth.check(&text, &call(), t.expiry - 1, false).unwrap();
    }

    #[test]
    fn a_token_bound_to_a_cid_needs_that_cid() {
        let mut f = fixture();
        let (_, text) = issue(
            &mut f,
            IssueRequest {
                subject_cid: Some(CID.into()),
                ..req()
            },
        );
        let with = CallRequest {
            caller_cid: Some(CID),
            ..call()
        };
        f.auth.check(&text, &with, NOW, false).unwrap();
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Subject);
        let wrong = CallRequest {
            caller_cid: Some("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
            ..call()
        };
        assert_eq!(denied(&mut f, &text, &wrong, NOW), Check::Subject);
        // An unbound token does not care which package calls.
        let (_, open) = issue(&mut f, req());
        f.auth.check(&open, &with, NOW, false).unwrap();
    }

    #[test]
    fn a_forged_signature_is_a_signature_denial() {
        let mut f = fixture();
        let (t, _) = issue(&mut f, req());
        // Our signer and issuer, but the signature made by another key.
        let other = NodeKey::from_seed(&[6u8; 32]);
        let (mut parts, _) = token::sign(&t, &other).unwrap();
        parts.signer = f.key.public_bytes();
        assert_eq!(
            denied(&mut f, &parts.encode().unwrap(), &call(), NOW),
            Check::Signature
        );
        // A body changed after signing.
        let (mut parts, _) = token::sign(&t, &f.key).unwrap();
        let mut wider = t.clone();
        wider.actions = ActionSet::parse_list("read,write,admin").unwrap();
        parts.body = wider.body_bytes().unwrap();
        assert_eq!(
            denied(&mut f, &parts.encode().unwrap(), &call(), NOW),
            Check::Signature
        );
    }

    #[test]
    fn an_untrusted_key_naming_itself_fails_issuer_until_trusted() {
        let mut f = fixture();
        let other = NodeKey::from_seed(&[6u8; 32]);
        let (mut t, _) = issue(&mut f, req());
        t.issuer = other.did();
        let text = sign_as(&t, &other);
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Issuer);
        assert!(f.auth.trust_add(&other.did()).unwrap());
        assert!(!f.auth.trust_add(&other.did()).unwrap());
        f.auth.check(&text, &call(), NOW, false).unwrap();
        assert_eq!(f.auth.trust_ls(), vec![other.did()]);
        assert!(f.auth.trust_rm(&other.did()).unwrap());
        assert!(!f.auth.trust_rm(&other.did()).unwrap());
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Issuer);
    }

    #[test]
    fn cheap_refusals_come_before_any_signature_work() {
        let mut f = fixture();
        // Over the byte cap: refused before it is read at all.
        let huge = vec![0u8; MAX_TOKEN_BYTES + 1];
        let d = f.auth.verifier().verify(&huge).unwrap_err();
        assert_eq!(d.check, Check::Version);
        assert!(d.reason.contains("bytes long"), "{d}");
        // An unknown signer is refused as `issuer` before its signature is checked: the same
        // token with its signature spoiled gets the same answer, and nothing is cached.
        let other = NodeKey::from_seed(&[6u8; 32]);
        let (mut t, _) = issue(&mut f, req());
        t.issuer = other.did();
        let mut bytes = token::text_to_bytes(&sign_as(&t, &other)).unwrap();
        let good = f.auth.verifier().verify(&bytes).unwrap_err();
        let sig_at = bytes
            .windows(64)
            .position(|w| w == token::decode_signed_bytes(&bytes).unwrap().signature())
            .unwrap();
        bytes[sig_at] ^= 1;
        let spoiled = f.auth.verifier().verify(&bytes).unwrap_err();
        assert_eq!((good.check, spoiled.check), (Check::Issuer, Check::Issuer));
        assert_eq!(f.auth.verifier().cached(), 0);
        // A known signer's spoiled signature is a signature denial.
        let (_, own) = issue(&mut f, req());
        let mut own = token::text_to_bytes(&own).unwrap();
        let sig_at = own
            .windows(64)
            .position(|w| w == token::decode_signed_bytes(&own).unwrap().signature())
            .unwrap();
        own[sig_at] ^= 1;
        assert_eq!(
            f.auth.verifier().verify(&own).unwrap_err().check,
            Check::Signature
        );
    }

    #[test]
    fn a_token_naming_an_issuer_other_than_its_signer_fails_issuer() {
        let mut f = fixture();
        let other = NodeKey::from_seed(&[6u8; 32]);
        f.auth.trust_add(&other.did()).unwrap();
        // Signed by a trusted key but claiming to come from this node.
        let (t, _) = issue(&mut f, req());
        assert_eq!(
            denied(&mut f, &sign_as(&t, &other), &call(), NOW),
            Check::Issuer
        );
    }

    #[test]
    fn trust_refuses_what_is_not_a_did_key() {
        let mut f = fixture();
        assert!(f.auth.trust_add("did:web:example.com").is_err());
        assert!(f.auth.trust_ls().is_empty());
    }

    #[test]
    fn a_publisher_is_not_an_issuer_and_an_issuer_is_not_a_publisher() {
        let mut f = fixture();
        let other = NodeKey::from_seed(&[9u8; 32]);
        let did = other.did();
        assert!(f
            .auth
            .publisher_add(&did, PublisherKind::FirstParty)
            .unwrap());
        assert!(!f
            .auth
            .publisher_add(&did, PublisherKind::FirstParty)
            .unwrap());
        // Running its packages as first party does not make its tokens acceptable.
        let mut foreign = Authority::open(
            &Home::at(f._dir.path().join("other")),
            Some(Arc::new(NodeKey::from_seed(&[9u8; 32]))),
        )
        .unwrap();
        let (_, text) = foreign.issue_at(req(), NOW).unwrap();
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Issuer);
        assert!(f.auth.trust_ls().is_empty());
        // Both kinds, each listed; kept across a reopen (the state is MAC'd like the rest).
        f.auth.trust_add(&did).unwrap();
        f.reopen();
        assert_eq!(
            f.auth.trust_entries(),
            [(did.clone(), "first-party"), (did.clone(), "issuer")]
        );
        assert_eq!(f.auth.publisher_kind(&did), Some(PublisherKind::FirstParty));
        f.auth.check(&text, &call(), NOW, false).unwrap();
        // Known narrows first party; forgetting takes both kinds at once.
        f.auth.publisher_add(&did, PublisherKind::Known).unwrap();
        assert_eq!(f.auth.publisher_kind(&did), Some(PublisherKind::Known));
        assert!(f.auth.forget(&did).unwrap());
        f.reopen();
        assert!(f.auth.trust_entries().is_empty());
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Issuer);
        assert!(!f.auth.forget(&did).unwrap());
        assert!(f
            .auth
            .publisher_add("did:web:example.com", PublisherKind::Known)
            .is_err());
    }

    #[test]
    fn a_standing_grant_answers_its_own_capsule_and_takes_its_tokens_when_revoked() {
        let mut f = fixture();
        let grant = |allow: bool, resource: &str| StandingGrant {
            allow,
            capsule: "notes".into(),
            bound_to: "did:key:zA".into(),
            resource: resource.into(),
            actions: "read,write".into(),
            created: NOW,
            tokens: Vec::new(),
            session: false,
        };
        let read = ActionSet::parse_list("read").unwrap();
        let allow = f.auth.grant_add(grant(true, RES)).unwrap();
        assert!(allow.starts_with("g-"));
        // Its capsule, bound publisher, resource within, actions among: found; nothing else.
        assert_eq!(
            f.auth
                .grant_find("notes", "did:key:zA", REQ_RES, read)
                .unwrap()
                .0,
            allow
        );
        assert!(f
            .auth
            .grant_find("mail", "did:key:zA", REQ_RES, read)
            .is_none());
        assert!(f
            .auth
            .grant_find("notes", "did:key:zB", REQ_RES, read)
            .is_none());
        assert!(f
            .auth
            .grant_find("notes", "did:key:zA", "localhost://storage/mail/a", read)
            .is_none());
        assert!(f
            .auth
            .grant_find(
                "notes",
                "did:key:zA",
                REQ_RES,
                ActionSet::parse_list("delete").unwrap()
            )
            .is_none());
        // A deny for a part of it wins there.
        let deny = f
            .auth
            .grant_add(grant(false, "localhost://storage/notes/today"))
            .unwrap();
        assert_eq!(
            f.auth
                .grant_find("notes", "did:key:zA", REQ_RES, read)
                .unwrap()
                .0,
            deny
        );
        // Tokens minted under it are revoked with it, across a reopen; an expired one is dropped.
        let (t, text) = issue(&mut f, req());
        f.auth.grant_token(&allow, t.id, t.expiry, NOW).unwrap();
        f.reopen();
        assert_eq!(f.auth.grants().len(), 2);
        assert_eq!(f.auth.grant_revoke(&allow, NOW).unwrap(), Some(1));
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Revoked);
        assert_eq!(f.auth.grant_revoke(&allow, NOW).unwrap(), None);
        assert_eq!(f.auth.grants().len(), 1);
    }

    #[test]
    fn a_session_grant_ends_with_its_tokens_and_leaves_standing_ones() {
        let mut f = fixture();
        let grant = |session: bool| StandingGrant {
            allow: true,
            capsule: "notes".into(),
            bound_to: "did:key:zA".into(),
            resource: RES.into(),
            actions: "read".into(),
            created: NOW,
            tokens: Vec::new(),
            session,
        };
        let always = f.auth.grant_add(grant(false)).unwrap();
        let session = f.auth.grant_add(grant(true)).unwrap();
        let (t, text) = issue(&mut f, req());
        f.auth.grant_token(&session, t.id, t.expiry, NOW).unwrap();
        // A crash: the session grant is still on disk when the supervisor starts again.
        f.reopen();
        assert_eq!(f.auth.grants().len(), 2);
        assert_eq!(f.auth.sessions_end(NOW).unwrap(), vec![(session, 1)]);
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Revoked);
        f.reopen();
        let left: Vec<String> = f.auth.grants().into_iter().map(|(id, _)| id).collect();
        assert_eq!(left, vec![always]);
        assert!(f.auth.sessions_end(NOW).unwrap().is_empty());
    }

    #[test]
    fn the_state_digest_of_a_node_without_publishers_is_what_it_was() {
        // What the audit log's heads recorded before publishers existed must still match.
        let mut st = State::new();
        st.trusted.insert("did:key:zA".into());
        let old = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"elastos/state-digest/v1\0");
            h.update(
                serde_json::json!({
                    "epoch": st.epoch,
                    "revoked": st.revoked,
                    "delegations": st.delegations,
                    "trusted": st.trusted,
                    "former_keys": st.former_keys,
                })
                .to_string()
                .as_bytes(),
            );
            <[u8; 32]>::from(h.finalize())
        };
        assert_eq!(st.stamp().1, old);
        st.publishers
            .insert("did:key:zB".into(), PublisherKind::Known);
        assert_ne!(st.stamp().1, old, "a publisher is part of the digest");
    }

    #[test]
    fn a_validly_signed_non_canonical_body_is_a_version_denial() {
        let mut f = fixture();
        let (t, _) = issue(&mut f, req());
        let canonical = t.body_bytes().unwrap();
        let mut body = canonical.clone();
        body.extend_from_slice(&[0u8; 8]);
        let words = u32::try_from((body.len() - 8) / 8).unwrap();
        body[4..8].copy_from_slice(&words.to_le_bytes());
        let signature = f.key.sign(elastos_schema::domains::TOKEN, &body).to_bytes();
        let parts = token::SignedParts {
            version: versions::TOKEN,
            body,
            signature,
            signer: f.key.public_bytes(),
        };
        assert_eq!(
            denied(&mut f, &parts.encode().unwrap(), &call(), NOW),
            Check::Version
        );
    }

    #[test]
    fn uses_are_counted_to_exactly_max_then_denied_and_dry_runs_count_nothing() {
        let mut f = fixture();
        let (t, text) = issue(
            &mut f,
            IssueRequest {
                max_uses: 3,
                ..req()
            },
        );
        for _ in 0..10 {
            f.auth.check(&text, &call(), NOW, false).unwrap();
        }
        assert_eq!(f.auth.uses(&t.id), 0);
        for n in 1..=3 {
            f.auth.check(&text, &call(), NOW, true).unwrap();
            assert_eq!(f.auth.uses(&t.id), n);
        }
        let d = f.auth.check(&text, &call(), NOW, true).unwrap_err();
        assert_eq!(d.check, Check::Uses);
        assert_eq!(f.auth.uses(&t.id), 3);
        // A denied call consumes nothing either.
        let (u, limited) = issue(
            &mut f,
            IssueRequest {
                max_uses: 1,
                ..req()
            },
        );
        let c = CallRequest {
            action: Action::Admin,
            ..call()
        };
        assert!(f.auth.check(&limited, &c, NOW, true).is_err());
        assert_eq!(f.auth.uses(&u.id), 0);
    }

    #[test]
    fn uses_counted_outside_the_lock_are_all_durable_and_never_overwrite_a_newer_state() {
        let mut f = fixture();
        let (_, text) = issue(
            &mut f,
            IssueRequest {
                max_uses: 1000,
                ..req()
            },
        );
        let bytes = token::text_to_bytes(&text).unwrap();
        let id = token::decode(&text).unwrap().token.id;
        // A use staged, then a revocation committed at once, then the staged write: the file
        // keeps the revocation (and the use, which the newer state includes).
        let verified = f.auth.verifier().verify(&bytes).unwrap();
        let (_, staged) = f.auth.check_counting(verified, &call(), NOW).unwrap();
        let other = TokenId::from_bytes([3; 16]);
        f.auth.revoke(&other).unwrap();
        staged.unwrap().make_durable().unwrap();
        f.reopen();
        assert!(f.auth.is_revoked(&other));
        assert_eq!(f.auth.uses(&id), 1);
        // Many callers: each counts under the lock and writes outside it.
        let auth = Arc::new(std::sync::Mutex::new(std::mem::replace(
            &mut f.auth,
            Authority::open(&f.home, Some(f.key.clone())).unwrap(),
        )));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (auth, bytes) = (auth.clone(), bytes.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let verifier = auth.lock().unwrap().verifier();
                        let v = verifier.verify(&bytes).unwrap();
                        let (_, staged) = auth
                            .lock()
                            .unwrap()
                            .check_counting(v, &call(), NOW)
                            .unwrap();
                        staged.unwrap().make_durable().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        f.reopen();
        assert_eq!(f.auth.uses(&id), 81);
    }

    #[test]
    fn unlimited_tokens_write_nothing_when_used() {
        let mut f = fixture();
        let (_, text) = issue(&mut f, req());
        f.auth.check(&text, &call(), NOW, true).unwrap();
        assert!(!f.auth.state_path().exists());
    }

    #[test]
    fn state_survives_reopen() {
        let mut f = fixture();
        let other = NodeKey::from_seed(&[6u8; 32]);
        let (r, revoked) = issue(&mut f, req());
        let (u, used) = issue(
            &mut f,
            IssueRequest {
                max_uses: 2,
                ..req()
            },
        );
        f.auth.revoke(&r.id).unwrap();
        f.auth.check(&used, &call(), NOW, true).unwrap();
        f.auth.trust_add(&other.did()).unwrap();
        f.reopen();
        assert!(f.auth.is_revoked(&r.id));
        assert_eq!(denied(&mut f, &revoked, &call(), NOW), Check::Revoked);
        assert_eq!(f.auth.uses(&u.id), 1);
        f.auth.check(&used, &call(), NOW, true).unwrap();
        f.reopen();
        assert_eq!(denied(&mut f, &used, &call(), NOW), Check::Uses);
        assert_eq!(f.auth.trust_ls(), vec![other.did()]);
        let epoch = f.auth.revoke_all().unwrap();
        assert_eq!(epoch, 1);
        f.reopen();
        assert_eq!(f.auth.epoch(), 1);
        let mode = fs::metadata(f.auth.state_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(f.auth.state_path()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
    }

    #[test]
    fn the_state_is_sealed_and_an_older_copy_is_told_from_the_current_one() {
        let mut f = fixture();
        f.auth.revoke_all().unwrap();
        let old_copy = fs::read(f.auth.state_path()).unwrap();
        let old_stamp = f.auth.stamp();
        f.auth.revoke_all().unwrap();
        let now = f.auth.stamp();
        assert!(now.0 > old_stamp.0);
        f.auth.check_against_log(now).unwrap();
        f.auth.check_against_log(old_stamp).unwrap();
        let path = f.auth.state_path().to_path_buf();
        // Edited by hand: the MAC no longer matches.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("\"epoch\": 2", "\"epoch\": 1")).unwrap();
        let e = Authority::open(&f.home, Some(f.key.clone())).err().unwrap();
        assert!(e.to_string().contains("MAC does not match"), "{e}");
        // Its MAC stripped: refused too.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("mac");
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(Authority::open(&f.home, Some(f.key.clone())).is_err());
        // A genuine older copy opens, but is older than what the log recorded.
        fs::write(&path, &old_copy).unwrap();
        let back = Authority::open(&f.home, Some(f.key.clone())).unwrap();
        assert_eq!(back.epoch(), 1);
        let e = back.check_against_log(now).unwrap_err();
        assert!(e.to_string().contains("older or different copy"), "{e}");
        // Another node's key cannot open it.
        let other = Arc::new(NodeKey::from_seed(&[44; 32]));
        assert!(Authority::open(&f.home, Some(other)).is_err());
    }

    #[test]
    fn open_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        let mut auth = Authority::open(&home, None).unwrap();
        assert!(!home.exists());
        assert_eq!(auth.epoch(), 0);
        assert!(auth.trust_ls().is_empty());
        let d = auth.check("x", &call(), NOW, false).unwrap_err();
        assert_eq!(d.check, Check::Version);
        assert!(!home.exists());
        assert!(matches!(
            auth.issue_at(req(), NOW),
            Err(AuthorityError::NoKey)
        ));
    }

    #[test]
    fn a_state_file_of_unknown_format_or_fields_is_refused() {
        let mut f = fixture();
        f.auth.revoke_all().unwrap();
        let path = f.auth.state_path().to_path_buf();
        let good = fs::read_to_string(&path).unwrap();
        write_atomic(
            &path,
            good.replace("\"format\": 1", "\"format\": 99").as_bytes(),
            0o600,
        )
        .unwrap();
        assert!(matches!(
            Authority::open(&f.home, None),
            Err(AuthorityError::UnknownFormat { found: 99, .. })
        ));
        write_atomic(
            &path,
            good.replace("\"epoch\"", "\"extra\": 1, \"epoch\"")
                .as_bytes(),
            0o600,
        )
        .unwrap();
        assert!(matches!(
            Authority::open(&f.home, None),
            Err(AuthorityError::BadState { .. })
        ));
        write_atomic(&path, b"{", 0o600).unwrap();
        assert!(matches!(
            Authority::open(&f.home, None),
            Err(AuthorityError::BadState { .. })
        ));
        write_atomic(&path, good.as_bytes(), 0o600).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Authority::open(&f.home, None).is_err());
    }

    #[test]
    fn issue_refuses_bad_requests() {
        let mut f = fixture();
        let bad = [
            IssueRequest {
                resource: "localhost://storage/../x".into(),
                ..req()
            },
            IssueRequest {
                resource: "*".into(),
                ..req()
            },
            IssueRequest {
                actions: ActionSet::EMPTY,
                ..req()
            },
            IssueRequest {
                ttl: Duration::from_millis(500),
                ..req()
            },
            IssueRequest {
                subject_name: String::new(),
                ..req()
            },
            IssueRequest {
                subject_name: "a@b".into(),
                ..req()
            },
            IssueRequest {
                subject_cid: Some("not-a-cid".into()),
                ..req()
            },
            IssueRequest {
                not_before: Some(i64::MAX),
                ..req()
            },
        ];
        for r in bad {
            assert!(f.auth.issue_at(r.clone(), NOW).is_err(), "{r:?}");
        }
    }

    fn delegatable(f: &mut Fixture) -> (Token, String) {
        issue(
            f,
            IssueRequest {
                delegatable: true,
                max_uses: 10,
                ..req()
            },
        )
    }

    fn narrow() -> Narrowing {
        Narrowing {
            resource: Some("localhost://storage/notes/shared/*".into()),
            actions: Some(ActionSet::parse_list("read").unwrap()),
            ttl: Some(Duration::from_secs(600)),
            ..Narrowing::default()
        }
    }

    #[test]
    fn revoking_a_root_reaches_the_grandchildren_of_a_trusted_issuers_token() {
        // Another node, trusted here, mints a root, a child and a grandchild; this node holds
        // no delegation record of them.
        let mut other = fixture();
        other.key = Arc::new(NodeKey::from_seed(&[66u8; 32]));
        other.reopen();
        let (root, root_text) = issue(
            &mut other,
            IssueRequest {
                delegatable: true,
                ..req()
            },
        );
        let (child, child_text) = other
            .auth
            .delegate(
                &root_text,
                Narrowing {
                    delegatable: true,
                    ..Narrowing::default()
                },
                NOW,
            )
            .unwrap();
        let (grand, grand_text) = other
            .auth
            .delegate(&child_text, Narrowing::default(), NOW)
            .unwrap();
        assert_eq!(grand.version, 2);
        assert_eq!(grand.ancestors, vec![child.id, root.id]);

        let mut f = fixture();
        f.auth.trust_add(&other.key.did()).unwrap();
        f.auth.check(&grand_text, &call(), NOW, false).unwrap();
        f.auth.revoke(&root.id).unwrap();
        assert_eq!(denied(&mut f, &grand_text, &call(), NOW), Check::Revoked);
        assert_eq!(denied(&mut f, &child_text, &call(), NOW), Check::Revoked);
    }

    #[test]
    fn a_version_1_token_is_still_read_and_checked() {
        let mut f = fixture();
        let (mut t, _) = issue(&mut f, req());
        t.version = 1;
        let text = sign_as(&t, &f.key);
        let decoded = token::decode(&text).unwrap();
        assert_eq!(decoded.token.version, 1);
        f.auth.check(&text, &call(), NOW, false).unwrap();
    }

    #[test]
    fn a_child_allows_only_its_narrower_rights() {
        let mut f = fixture();
        let (p, parent) = delegatable(&mut f);
        let (c, child) = f.auth.delegate(&parent, narrow(), NOW).unwrap();
        assert_eq!(c.parent, Some(p.id));
        assert_eq!(c.max_uses, 10);
        assert_eq!(c.expiry, NOW + 600);
        assert!(!c.delegatable);
        let shared = CallRequest {
            resource: "localhost://storage/notes/shared/a",
            ..call()
        };
        f.auth.check(&child, &shared, NOW, false).unwrap();
        let write = CallRequest {
            action: Action::Write,
            ..shared
        };
        assert_eq!(denied(&mut f, &child, &write, NOW), Check::Action);
        assert_eq!(denied(&mut f, &child, &call(), NOW), Check::Resource);
        // Defaults keep the parent's rights.
        let (same, _) = f.auth.delegate(&parent, Narrowing::default(), NOW).unwrap();
        assert_eq!(
            (
                same.resource.as_str(),
                same.actions,
                same.expiry,
                same.classification
            ),
            (p.resource.as_str(), p.actions, p.expiry, p.classification)
        );
    }

    #[test]
    fn every_widening_is_refused() {
        let mut f = fixture();
        let (_, parent) = delegatable(&mut f);
        let widen = [
            Narrowing {
                resource: Some("localhost://storage/*".into()),
                ..Narrowing::default()
            },
            Narrowing {
                resource: Some("localhost://storage/notes".into()),
                ..Narrowing::default()
            },
            Narrowing {
                actions: Some(ActionSet::parse_list("read,delete").unwrap()),
                ..Narrowing::default()
            },
            Narrowing {
                ttl: Some(Duration::from_secs(3601)),
                ..Narrowing::default()
            },
            Narrowing {
                max_uses: Some(11),
                ..Narrowing::default()
            },
            Narrowing {
                max_uses: Some(0),
                ..Narrowing::default()
            },
            Narrowing {
                classification: Some(Classification::Secret),
                ..Narrowing::default()
            },
            Narrowing {
                subject: Some(("mail".into(), None)),
                ..Narrowing::default()
            },
        ];
        for n in widen {
            let err = f.auth.delegate(&parent, n.clone(), NOW).unwrap_err();
            assert!(matches!(err, AuthorityError::Widening(_)), "{n:?}: {err}");
        }
        // A CID may be bound when the parent left it open, never changed once bound.
        let (_, bound) = f
            .auth
            .delegate(
                &parent,
                Narrowing {
                    subject: Some(("notes".into(), Some(CID.into()))),
                    delegatable: true,
                    ..Narrowing::default()
                },
                NOW,
            )
            .unwrap();
        let unbind = Narrowing {
            subject: Some(("notes".into(), None)),
            ..Narrowing::default()
        };
        assert!(matches!(
            f.auth.delegate(&bound, unbind, NOW),
            Err(AuthorityError::Widening(_))
        ));
    }

    #[test]
    fn a_non_delegatable_token_has_no_children() {
        let mut f = fixture();
        let (_, plain) = issue(&mut f, req());
        assert!(matches!(
            f.auth.delegate(&plain, Narrowing::default(), NOW),
            Err(AuthorityError::NotDelegatable)
        ));
        let (_, parent) = delegatable(&mut f);
        let (_, child) = f.auth.delegate(&parent, narrow(), NOW).unwrap();
        assert!(matches!(
            f.auth.delegate(&child, Narrowing::default(), NOW),
            Err(AuthorityError::NotDelegatable)
        ));
    }

    #[test]
    fn an_invalid_parent_cannot_delegate() {
        let mut f = fixture();
        let (p, parent) = delegatable(&mut f);
        let expired = f.auth.delegate(&parent, narrow(), p.expiry).unwrap_err();
        assert!(matches!(
            expired,
            AuthorityError::Parent(Denial {
                check: Check::Expired,
                ..
            })
        ));
        f.auth.revoke(&p.id).unwrap();
        let revoked = f.auth.delegate(&parent, narrow(), NOW).unwrap_err();
        assert!(matches!(
            revoked,
            AuthorityError::Parent(Denial {
                check: Check::Revoked,
                ..
            })
        ));
    }

    #[test]
    fn revoked_parent_denies_child_and_grandchild() {
        let mut f = fixture();
        let (p, parent) = delegatable(&mut f);
        let child_n = Narrowing {
            delegatable: true,
            ..narrow()
        };
        let (_, child) = f.auth.delegate(&parent, child_n, NOW).unwrap();
        let (_, grandchild) = f.auth.delegate(&child, Narrowing::default(), NOW).unwrap();
        let (_, sibling) = delegatable(&mut f);
        let shared = CallRequest {
            resource: "localhost://storage/notes/shared/a",
            ..call()
        };
        f.auth.check(&grandchild, &shared, NOW, false).unwrap();
        assert_eq!(f.auth.revoke(&p.id).unwrap(), 3);
        assert_eq!(f.auth.revoke(&p.id).unwrap(), 0);
        f.reopen();
        for t in [&parent, &child, &grandchild] {
            assert_eq!(denied(&mut f, t, &shared, NOW), Check::Revoked);
        }
        f.auth.check(&sibling, &shared, NOW, false).unwrap();
    }

    #[test]
    fn revoking_only_the_parent_record_still_denies_the_child() {
        // Even if a descendant were missed by `revoke`, the check walks up to the parent.
        let mut f = fixture();
        let (p, parent) = delegatable(&mut f);
        let (c, child) = f.auth.delegate(&parent, narrow(), NOW).unwrap();
        let mut next = f.auth.state.clone();
        next.revoked.insert(p.id);
        f.auth.commit(next).unwrap();
        assert!(!f.auth.is_revoked(&c.id));
        let shared = CallRequest {
            resource: "localhost://storage/notes/shared/a",
            ..call()
        };
        assert_eq!(denied(&mut f, &child, &shared, NOW), Check::Revoked);
    }

    #[test]
    fn a_child_without_its_delegation_record_is_refused() {
        let mut f = fixture();
        let (_, parent) = delegatable(&mut f);
        let (_, child) = f.auth.delegate(&parent, narrow(), NOW).unwrap();
        let mut next = f.auth.state.clone();
        next.delegations.clear();
        f.auth.commit(next).unwrap();
        let shared = CallRequest {
            resource: "localhost://storage/notes/shared/a",
            ..call()
        };
        assert_eq!(denied(&mut f, &child, &shared, NOW), Check::Revoked);
    }

    #[test]
    fn revoke_all_denies_parent_and_child_by_epoch() {
        let mut f = fixture();
        let (_, parent) = delegatable(&mut f);
        let (_, child) = f.auth.delegate(&parent, narrow(), NOW).unwrap();
        assert_eq!(f.auth.revoke_all().unwrap(), 1);
        let shared = CallRequest {
            resource: "localhost://storage/notes/shared/a",
            ..call()
        };
        assert_eq!(denied(&mut f, &child, &shared, NOW), Check::Epoch);
        assert_eq!(denied(&mut f, &parent, &shared, NOW), Check::Epoch);
        let (_, fresh) = issue(&mut f, req());
        f.auth.check(&fresh, &call(), NOW, false).unwrap();
    }

    #[test]
    fn a_childs_uses_count_against_its_limited_parent() {
        let mut f = fixture();
        let (p, parent) = issue(
            &mut f,
            IssueRequest {
                delegatable: true,
                max_uses: 2,
                ..req()
            },
        );
        let (_, a) = f.auth.delegate(&parent, Narrowing::default(), NOW).unwrap();
        let (_, b) = f.auth.delegate(&parent, Narrowing::default(), NOW).unwrap();
        f.auth.check(&a, &call(), NOW, true).unwrap();
        f.auth.check(&b, &call(), NOW, true).unwrap();
        assert_eq!(f.auth.uses(&p.id), 2);
        assert_eq!(denied(&mut f, &parent, &call(), NOW), Check::Uses);
        assert_eq!(denied(&mut f, &a, &call(), NOW), Check::Uses);
    }

    #[test]
    fn delegation_depth_is_bounded() {
        let mut f = fixture();
        let (_, mut current) = delegatable(&mut f);
        let n = Narrowing {
            delegatable: true,
            ..Narrowing::default()
        };
        for _ in 0..MAX_DELEGATION_DEPTH {
            current = f.auth.delegate(&current, n.clone(), NOW).unwrap().1;
        }
        f.auth.check(&current, &call(), NOW, false).unwrap();
        assert!(matches!(
            f.auth.delegate(&current, n, NOW),
            Err(AuthorityError::TooDeep)
        ));
    }

    #[test]
    fn the_signature_cache_answers_for_the_same_bytes_only() {
        let mut f = fixture();
        let (t, text) = issue(&mut f, req());
        f.auth.check(&text, &call(), NOW, false).unwrap();
        f.auth.check(&text, &call(), NOW, false).unwrap();
        assert_eq!(f.auth.verifier.cached(), 1);
        // Cached or not, every other check still runs.
        f.auth.revoke(&t.id).unwrap();
        assert_eq!(denied(&mut f, &text, &call(), NOW), Check::Revoked);
        // A forgery is never cached.
        let (mut parts, _) = token::sign(&t, &f.key).unwrap();
        parts.signature[0] ^= 1;
        let forged = parts.encode().unwrap();
        for _ in 0..2 {
            assert_eq!(denied(&mut f, &forged, &call(), NOW), Check::Signature);
        }
        assert_eq!(f.auth.verifier.cached(), 1);
    }

    #[test]
    fn the_signature_cache_is_bounded() {
        let mut f = fixture();
        let (t, _) = issue(&mut f, req());
        let v = Arc::new(VerifiedToken {
            token: t,
            signer: f.key.public_bytes(),
        });
        let mut c = SigCache::new(3);
        for i in 0..10u8 {
            c.insert(&[i; 32], v.clone());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&[9; 32]).is_some() && c.get(&[0; 32]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_token_text_is_denied_never_panics(s in ".{0,400}") {
            let mut f = fixture();
            let r = f.auth.check(&s, &call(), NOW, true);
            proptest::prop_assert!(r.is_err());
        }

        #[test]
        fn arbitrary_requests_never_panic(name in ".{0,20}", res in ".{0,80}", lvl in 0usize..4) {
            let mut f = fixture();
            let (_, text) = issue(&mut f, req());
            let c = CallRequest {
                caller_name: &name,
                caller_cid: Some(&name),
                resource: &res,
                action: Action::Read,
                classification: Classification::ALL[lvl],
            };
            let _ = f.auth.check(&text, &c, NOW, false);
        }
    }

    #[test]
    fn a_serve_use_is_staged_under_the_lock_and_durable_only_when_made_so() {
        let mut f = fixture();
        let (t, text) = issue(
            &mut f,
            IssueRequest {
                actions: ActionSet::parse_list("admin").unwrap(),
                max_uses: 1,
                ..req()
            },
        );
        let bytes = token::text_to_bytes(&text).unwrap();
        let serve = CallRequest {
            resource: RES,
            action: Action::Admin,
            ..call()
        };
        // As on a node that is up: its state directory exists.
        std::fs::create_dir_all(f.auth.state_path().parent().unwrap()).unwrap();
        let verifier = f.auth.verifier();
        let (_, staged) = f
            .auth
            .check_serve(verifier.verify(&bytes).unwrap(), &serve, NOW)
            .unwrap();
        let staged = staged.expect("a max-uses token's use is counted");
        // Counted in memory at once: a second serve is refused before the write.
        let d = f
            .auth
            .check_serve(verifier.verify(&bytes).unwrap(), &serve, NOW)
            .unwrap_err();
        assert_eq!(d.check, Check::Uses);
        // Not on disk until made durable.
        let mut reopened = Authority::open(&f.home, Some(f.key.clone())).unwrap();
        assert_eq!(reopened.uses(&t.id), 0);
        staged.make_durable().unwrap();
        reopened = Authority::open(&f.home, Some(f.key.clone())).unwrap();
        assert_eq!(reopened.uses(&t.id), 1);
    }

    #[test]
    fn serving_needs_admin_on_the_pattern_or_a_wider_one() {
        let mut f = fixture();
        let (_, text) = issue(
            &mut f,
            IssueRequest {
                actions: ActionSet::parse_list("admin").unwrap(),
                ..req()
            },
        );
        let bytes = token::text_to_bytes(&text).unwrap();
        let verifier = f.auth.verifier();
        let v = |bytes: &[u8]| verifier.verify(bytes).unwrap();
        let serve = |resource| CallRequest {
            resource,
            action: Action::Admin,
            ..call()
        };
        f.auth
            .check_serve(v(&bytes), &serve(RES), NOW)
            .expect("the token's own pattern");
        f.auth
            .check_serve(v(&bytes), &serve("localhost://storage/notes/inbox/*"), NOW)
            .expect("a pattern within it");
        for (pattern, check) in [
            ("localhost://storage/*", Check::Resource),
            ("localhost://storage/mail/*", Check::Resource),
            // A concrete resource is not a namespace.
            (REQ_RES, Check::Resource),
        ] {
            let d = f
                .auth
                .check_serve(v(&bytes), &serve(pattern), NOW)
                .unwrap_err();
            assert_eq!(d.check, check, "{pattern}: {d}");
        }
        // Calls keep refusing patterns: a call names one resource.
        let d = f
            .auth
            .check_bytes(&bytes, &serve(RES), NOW, false)
            .unwrap_err();
        assert_eq!(d.check, Check::Resource);
        // Without `admin`, no serving.
        let (_, reader) = issue(&mut f, req());
        let reader = token::text_to_bytes(&reader).unwrap();
        let d = f
            .auth
            .check_serve(v(&reader), &serve(RES), NOW)
            .unwrap_err();
        assert_eq!(d.check, Check::Action);
    }
}
