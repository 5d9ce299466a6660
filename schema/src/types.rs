//! Plain shared types: actions, classification levels and resource limits.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a token lets its holder do to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Execute,
    Message,
    Delete,
    Admin,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Read,
        Action::Write,
        Action::Execute,
        Action::Message,
        Action::Delete,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Execute => "execute",
            Action::Message => "message",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no action, level or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{word}`: expected one of {expected}")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub word: String,
    pub expected: &'static str,
}

impl FromStr for Action {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownWord {
                kind: "action",
                word: s.to_string(),
                expected: "read, write, execute, message, delete, admin",
            })
    }
}

/// A set of actions, kept as a bitset so that subset tests are one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ActionSet(u8);

impl ActionSet {
    pub const EMPTY: ActionSet = ActionSet(0);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn insert(&mut self, a: Action) {
        self.0 |= a.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn is_subset_of(self, other: ActionSet) -> bool {
        self.0 & !other.0 == 0
    }
    /// The actions in ascending order (the canonical order in a token).
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
    /// Parses `read,write`: comma-separated, no empty item.
    pub fn parse_list(s: &str) -> Result<ActionSet, UnknownWord> {
        let mut set = ActionSet::EMPTY;
        for word in s.split(',') {
            set.insert(word.trim().parse()?);
        }
        Ok(set)
    }
}

impl FromIterator<Action> for ActionSet {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut set = ActionSet::EMPTY;
        for a in iter {
            set.insert(a);
        }
        set
    }
}

impl fmt::Display for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for a in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

/// How sensitive a resource is. A token's `classification` is a ceiling: it reaches resources of
/// that level and below.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    #[default]
    Internal,
    Confidential,
    Secret,
}

impl Classification {
    pub const ALL: [Classification; 4] = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Secret,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Secret => "secret",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Classification::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownWord {
                kind: "classification",
                word: s.to_string(),
                expected: "public, internal, confidential, secret",
            })
    }
}

/// The keys of a manifest's `[limits]` table: defined once, here. Every substrate and the
/// supervisor read limits through this type, so a new limit is added in one place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Resident memory in bytes (not address space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Share of one core, in percent (100 = one full core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Optional lifetime CPU-time cap in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Maximum number of processes/threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    /// Maximum number of open files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u32>,
    /// Quota of the private state directory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<u64>,
    /// WASM only: how long, in milliseconds, a guest may run between taking a frame (a call, an
    /// answer) from the runtime and waiting for the next one; also the budget of its start-up
    /// before its first wait. Wall-clock time spent in guest code and WASI calls; a guest over
    /// budget is stopped. Default 10 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_budget_ms: Option<u64>,
    /// Size of the private `/tmp`, in bytes: a tmpfs of its own, whose pages are charged to
    /// the capsule's memory. Default [`Limits::DEFAULT_TMP`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp: Option<u64>,
}

impl Limits {
    /// The key names, as written in `capsule.toml`.
    pub const KEYS: [&'static str; 8] = [
        "memory",
        "cpu",
        "cpu_seconds",
        "processes",
        "open_files",
        "storage",
        "call_budget_ms",
        "tmp",
    ];

    /// A private `/tmp` of 64 MiB unless the manifest says otherwise: room for a build's
    /// scratch files, not for a copy of the disk.
    pub const DEFAULT_TMP: u64 = 64 << 20;
    /// Bounds of `call_budget_ms`: a budget below the ticker's resolution could not be kept,
    /// and one of hours is no budget.
    pub const MIN_CALL_BUDGET_MS: u64 = 10;
    pub const MAX_CALL_BUDGET_MS: u64 = 600_000;
    /// Bounds of `tmp`: a tmpfs of size 0 would have none at all.
    pub const MIN_TMP: u64 = 64 << 10;
    pub const MAX_TMP: u64 = 16 << 30;

    /// The size of the private `/tmp`.
    pub fn tmp_size(&self) -> u64 {
        self.tmp.unwrap_or(Self::DEFAULT_TMP)
    }
}

/// The one mapping between the schema's enum and [`Action`], for every side of the wire.
impl From<Action> for crate::token_capnp::Action {
    fn from(a: Action) -> Self {
        use crate::token_capnp::Action as W;
        match a {
            Action::Read => W::Read,
            Action::Write => W::Write,
            Action::Execute => W::Execute,
            Action::Message => W::Message,
            Action::Delete => W::Delete,
            Action::Admin => W::Admin,
        }
    }
}

impl From<crate::token_capnp::Action> for Action {
    fn from(a: crate::token_capnp::Action) -> Self {
        use crate::token_capnp::Action as W;
        match a {
            W::Read => Action::Read,
            W::Write => Action::Write,
            W::Execute => Action::Execute,
            W::Message => Action::Message,
            W::Delete => Action::Delete,
            W::Admin => Action::Admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_lists_round_trip_in_canonical_order() {
        let set = ActionSet::parse_list("write,read,admin").unwrap();
        assert_eq!(set.to_string(), "read,write,admin");
        assert!(ActionSet::parse_list("read,").is_err());
        assert!(ActionSet::parse_list("fly").is_err());
    }

    #[test]
    fn classification_levels_are_ordered() {
        assert!(Classification::Public < Classification::Internal);
        assert!(Classification::Internal < Classification::Confidential);
        assert!(Classification::Confidential < Classification::Secret);
        assert_eq!(Classification::default(), Classification::Internal);
    }

    #[test]
    fn every_limit_key_is_a_field() {
        for key in Limits::KEYS {
            let l: Limits = toml::from_str(&format!("{key} = 1")).unwrap();
            assert_ne!(l, Limits::default(), "{key}");
        }
        assert!(toml::from_str::<Limits>("call_budget = 1").is_err());
    }

    #[test]
    fn subset_is_exact() {
        let rw = ActionSet::parse_list("read,write").unwrap();
        let r = ActionSet::parse_list("read").unwrap();
        assert!(r.is_subset_of(rw));
        assert!(!rw.is_subset_of(r));
    }
}
