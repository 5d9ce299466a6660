//! The node's policy: an ordered list of rules in a TOML file (`policies/default.toml`, which
//! `$ELASTOS_HOME/policies/` overrides) saying which capsule may have which resource. The shell
//! capsule decides with it and `elastos policy check` reads it the same way, so both agree on
//! what a file means.
//!
//! A rule matches a request when every key it names matches: the capsule's `name`, its `cid`,
//! its `publisher` (a DID, or the standing the supervisor verified: `first-party`, `known`,
//! `dev`, `unknown`), the `resource` (exact, a pattern `P/*`, `SCHEME://*` or `*`) and the
//! `actions` (for an `allow`, the request's must all be among them; for a `deny` or `prompt`,
//! any one of them among them is enough). The first rule that matches decides:
//! `allow` (for at most `ttl`), `deny` or `prompt`. A request no rule matches is denied. A
//! pattern asked for (`P/*`) is granted whole, so a rule that decides only part of it (a `deny`
//! on `P/secret/*`) comes first and denies the whole request: asking for the namespace never
//! gets round a rule about a part of it.
//!
//! Whatever a policy says, the supervisor's ceilings hold (never wider than the requester's
//! manifest, never `admin`, at most an hour): a policy can narrow what a capsule gets, never
//! widen it. Running a package is the request `execute` on `elastos://<CID>`.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;

use crate::resource::{resource_within, validate_pattern};
use crate::{Action, ActionSet};

/// The policy file format this code reads.
pub const FORMAT: i64 = 1;
/// The longest an `allow` may last: tokens are renewed, never long-lived.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// At most this many rules: far above a real policy, small enough that deciding stays cheap.
pub const MAX_RULES: usize = 1024;
/// A rule's `reason`, shown by `policy explain` and in denials, is at most this long.
pub const MAX_REASON: usize = 200;

/// Who published the requesting capsule, as the supervisor verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// Signed by this node's key.
    ThisNode,
    /// Signed by a publisher the operator marked first party (`trust add --first-party`).
    FirstParty,
    /// Signed by a publisher the operator knows (`trust add --publisher`): may run, under policy.
    Known,
    /// The development key: anyone could have signed it.
    Dev,
    /// Any other publisher.
    Unknown,
}

impl Standing {
    pub const ALL: [Standing; 5] = [
        Standing::ThisNode,
        Standing::FirstParty,
        Standing::Known,
        Standing::Dev,
        Standing::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Standing::ThisNode => "this-node",
            Standing::FirstParty => "first-party",
            Standing::Known => "known",
            Standing::Dev => "dev",
            Standing::Unknown => "unknown",
        }
    }
}

/// What a rule's `publisher` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherMatch {
    /// One publisher, by its `did:key`.
    Did(String),
    /// This node's own packages and those of first-party publishers.
    FirstParty,
    Known,
    Dev,
    Unknown,
}

impl PublisherMatch {
    fn matches(&self, did: &str, standing: Standing) -> bool {
        match self {
            PublisherMatch::Did(d) => d == did,
            PublisherMatch::FirstParty => {
                matches!(standing, Standing::ThisNode | Standing::FirstParty)
            }
            PublisherMatch::Known => standing == Standing::Known,
            PublisherMatch::Dev => standing == Standing::Dev,
            PublisherMatch::Unknown => standing == Standing::Unknown,
        }
    }
}

/// What a rule's `resource` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceMatch {
    /// `*`: every resource.
    Any,
    /// `SCHEME://*`: every resource of the scheme (`host://*`: every host grant).
    Scheme(String),
    /// An exact resource, or a pattern `P/*` and everything within it.
    Within(String),
}

impl ResourceMatch {
    fn matches(&self, resource: &str) -> bool {
        match self {
            ResourceMatch::Any => true,
            ResourceMatch::Scheme(s) => resource
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.starts_with("://")),
            ResourceMatch::Within(p) => resource_within(p, resource).unwrap_or(false),
        }
    }
}

/// What a rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow { ttl: Duration },
    Deny,
    Prompt,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow { ttl } => write!(f, "allow for {}s", ttl.as_secs()),
            Verdict::Deny => f.write_str("deny"),
            Verdict::Prompt => f.write_str("prompt"),
        }
    }
}

/// One rule, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub name: Option<String>,
    pub cid: Option<String>,
    pub publisher: Option<PublisherMatch>,
    pub resource: ResourceMatch,
    pub actions: Option<ActionSet>,
    pub verdict: Verdict,
    pub reason: Option<String>,
}

impl Rule {
    pub fn matches(&self, r: &Request<'_>) -> bool {
        self.name.as_deref().is_none_or(|n| n == r.name)
            && self.cid.as_deref().is_none_or(|c| c == r.cid)
            && self
                .publisher
                .as_ref()
                .is_none_or(|p| p.matches(r.publisher, r.standing))
            && self.resource.matches(r.resource)
            && self.actions.is_none_or(|a| match self.verdict {
                Verdict::Allow { .. } => r.actions.is_subset_of(a),
                // A rule against `write` holds for every request that includes a write: asking
                // for read and write together does not get round it.
                Verdict::Deny | Verdict::Prompt => r.actions.iter().any(|x| a.contains(x)),
            })
    }

    /// Whether the rule decides some of the pattern `r.resource` and not all of it: its resource
    /// lies strictly inside the pattern, and it matches that resource for this capsule and
    /// actions. (A `SCHEME://*` or `*` rule matches a pattern whole, or none of it.)
    fn decides_part_of(&self, r: &Request<'_>) -> bool {
        match &self.resource {
            ResourceMatch::Within(p) => {
                p != r.resource
                    && resource_within(r.resource, p).unwrap_or(false)
                    && self.matches(&Request { resource: p, ..*r })
            }
            ResourceMatch::Any | ResourceMatch::Scheme(_) => false,
        }
    }
}

/// A request as the supervisor verified it: who asks, for what.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub name: &'a str,
    pub cid: &'a str,
    /// The publisher's DID (`dev` for the development key).
    pub publisher: &'a str,
    pub standing: Standing,
    /// A resource or a pattern `P/*`.
    pub resource: &'a str,
    pub actions: ActionSet,
}

/// What the policy decided, and which rule decided it (none: the implicit deny at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub rule: Option<&'p Rule>,
    /// The rule decides only part of the pattern asked for: the request is denied whatever the
    /// rule says, since a grant would name the whole pattern.
    pub part: bool,
}

impl Decision<'_> {
    /// One line for `policy explain` and denials: the verdict, the rule's line and its reason.
    pub fn explain(&self) -> String {
        match self.rule {
            Some(r) => {
                let mut s = format!("{} (rule at line {}", self.verdict, r.line);
                if self.part {
                    s.push_str(" decides part of the pattern asked for, so none of it is granted");
                }
                if let Some(why) = &r.reason {
                    s.push_str(": ");
                    s.push_str(why);
                }
                s.push(')');
                s
            }
            None => format!("{} (no rule matches: denied by default)", self.verdict),
        }
    }
}

/// The shell's answer to one request, as it puts it to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Grant `actions` on `resource` (the asked one, or the manifest's entry around it).
    Allow {
        resource: String,
        actions: ActionSet,
        ttl: Duration,
    },
    /// Denied, saying which rule denied it.
    Deny(String),
    /// The person decides.
    Prompt,
}

/// A policy: its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The first rule that matches decides; none matching is a deny. A rule that decides only
    /// part of a pattern asked for comes first too, and denies it.
    pub fn decide(&self, r: &Request<'_>) -> Decision<'_> {
        for rule in &self.rules {
            if rule.matches(r) {
                return Decision {
                    verdict: rule.verdict,
                    rule: Some(rule),
                    part: false,
                };
            }
            if rule.decides_part_of(r) {
                return Decision {
                    verdict: Verdict::Deny,
                    rule: Some(rule),
                    part: true,
                };
            }
        }
        Decision {
            verdict: Verdict::Deny,
            rule: None,
            part: false,
        }
    }

    /// Whether the rule that decides `r` decides every resource within `pattern` too, for the
    /// same capsule and actions: then a grant may name the whole pattern (one answer covers a
    /// namespace). Not when an earlier rule singles out a part of it (`deny` on
    /// `notes/secret/*` before `allow` on `notes/*`).
    pub fn decides_whole(&self, r: &Request<'_>, pattern: &str) -> bool {
        let whole = self.decide(&Request {
            resource: pattern,
            ..*r
        });
        match (self.decide(r).rule, whole.rule) {
            (Some(part), Some(all)) => std::ptr::eq(part, all) && !whole.part,
            _ => false,
        }
    }

    /// The answer the shell gives to `asked`, which the requester's manifest entry `covering`
    /// holds, for at most `ttl` (zero: as long as the rule allows); and which rule decided.
    pub fn answer(&self, asked: &Request<'_>, covering: &str, ttl: Duration) -> (Answer, String) {
        let decision = self.decide(asked);
        let explanation = decision.explain();
        let answer = match decision.verdict {
            Verdict::Allow { ttl: longest } => Answer::Allow {
                // The manifest's whole entry when one rule decides all of it: one answer covers
                // the namespace, and the capsule does not ask again for each name in it.
                resource: if covering != asked.resource && self.decides_whole(asked, covering) {
                    covering.to_string()
                } else {
                    asked.resource.to_string()
                },
                actions: asked.actions,
                // A grant lasts at least a second: the supervisor refuses a zero lifetime.
                ttl: if ttl.is_zero() {
                    longest
                } else {
                    ttl.min(longest)
                }
                .max(Duration::from_secs(1)),
            },
            Verdict::Deny => Answer::Deny(format!("policy: {explanation}")),
            Verdict::Prompt => Answer::Prompt,
        };
        (answer, explanation)
    }

    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let at = Positions(text);
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| at.of(s.start));
            PolicyError {
                line,
                column,
                message: e.message().replace('\n', " "),
            }
        })?;
        if *raw.format.get_ref() != FORMAT {
            return at.err(
                raw.format.span(),
                format!(
                    "`format = {}` is unknown to this elastos (it reads format {FORMAT})",
                    raw.format.get_ref()
                ),
            );
        }
        if raw.rule.len() > MAX_RULES {
            return at.err(
                raw.rule[MAX_RULES].span(),
                format!("more than {MAX_RULES} rules"),
            );
        }
        let rules = raw
            .rule
            .into_iter()
            .map(|r| {
                let line = at.of(r.span().start).0;
                r.into_inner().check(&at, line)
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy { rules })
    }
}

/// What is wrong with a policy file, and where (1-based; 0 when the parser could not say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    format: toml::Spanned<i64>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<toml::Spanned<String>>,
    #[serde(default)]
    cid: Option<toml::Spanned<String>>,
    #[serde(default)]
    publisher: Option<toml::Spanned<String>>,
    resource: toml::Spanned<String>,
    #[serde(default)]
    actions: Option<toml::Spanned<Vec<String>>>,
    decision: toml::Spanned<String>,
    #[serde(default)]
    ttl: Option<toml::Spanned<String>>,
    #[serde(default)]
    reason: Option<toml::Spanned<String>>,
}

impl RawRule {
    fn check(self, at: &Positions<'_>, line: usize) -> Result<Rule, PolicyError> {
        let name = match self.name {
            Some(n) => match crate::manifest::validate_capsule_name(n.get_ref()) {
                Ok(()) => Some(n.into_inner()),
                Err(e) => return at.err(n.span(), format!("name: {e}")),
            },
            None => None,
        };
        let cid = match self.cid {
            Some(c) => {
                let ok = c.get_ref().len() <= 128
                    && c.get_ref().starts_with('b')
                    && c.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return at.err(
                        c.span(),
                        "cid: not a CIDv1 in base32 (`elastos cid` prints one)",
                    );
                }
                Some(c.into_inner())
            }
            None => None,
        };
        let publisher = match self.publisher {
            Some(p) => Some(match p.get_ref().as_str() {
                "first-party" => PublisherMatch::FirstParty,
                "known" => PublisherMatch::Known,
                "dev" => PublisherMatch::Dev,
                "unknown" => PublisherMatch::Unknown,
                did if did.starts_with("did:key:z")
                    && did.len() <= 64
                    && did[9..].bytes().all(|b| b.is_ascii_alphanumeric()) =>
                {
                    PublisherMatch::Did(did.to_string())
                }
                _ => {
                    return at.err(
                        p.span(),
                        "publisher: a did:key, or one of first-party, known, dev, unknown",
                    )
                }
            }),
            None => None,
        };
        let resource = {
            let r = self.resource.get_ref();
            if r == "*" {
                ResourceMatch::Any
            } else if let Some(scheme) = r.strip_suffix("://*") {
                if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_lowercase()) {
                    return at.err(
                        self.resource.span(),
                        "resource: `SCHEME://*` needs a lower-case scheme",
                    );
                }
                ResourceMatch::Scheme(scheme.to_string())
            } else {
                match validate_pattern(r) {
                    Ok(()) => ResourceMatch::Within(r.clone()),
                    Err(e) => {
                        return at.err(
                            self.resource.span(),
                            format!("resource: {e} (or `*`, or `SCHEME://*`)"),
                        )
                    }
                }
            }
        };
        let actions = match self.actions {
            Some(list) => {
                let mut set = ActionSet::EMPTY;
                for word in list.get_ref() {
                    match word.parse::<Action>() {
                        Ok(a) => set.insert(a),
                        Err(e) => return at.err(list.span(), format!("actions: {e}")),
                    }
                }
                if set.is_empty() {
                    return at.err(
                        list.span(),
                        "actions: empty (leave the key out for every action)",
                    );
                }
                Some(set)
            }
            None => None,
        };
        let verdict = match self.decision.get_ref().as_str() {
            "allow" => {
                let ttl = match &self.ttl {
                    Some(t) => match humantime::parse_duration(t.get_ref()) {
                        Ok(d) if d.is_zero() || d > MAX_TTL => {
                            return at.err(t.span(), "ttl: more than zero and at most 1h");
                        }
                        Ok(d) => d,
                        Err(e) => return at.err(t.span(), format!("ttl: {e} (say `10m` or `1h`)")),
                    },
                    None => MAX_TTL,
                };
                Verdict::Allow { ttl }
            }
            "deny" | "prompt" => {
                if let Some(t) = &self.ttl {
                    return at.err(t.span(), "ttl: only an `allow` lasts a time");
                }
                if self.decision.get_ref() == "deny" {
                    Verdict::Deny
                } else {
                    Verdict::Prompt
                }
            }
            _ => return at.err(self.decision.span(), "decision: allow, deny or prompt"),
        };
        let reason = match self.reason {
            Some(r) => {
                if r.get_ref().chars().count() > MAX_REASON
                    || r.get_ref().chars().any(char::is_control)
                {
                    return at.err(
                        r.span(),
                        format!("reason: at most {MAX_REASON} characters, no control characters"),
                    );
                }
                Some(r.into_inner())
            }
            None => None,
        };
        Ok(Rule {
            line,
            name,
            cid,
            publisher,
            resource,
            actions,
            verdict,
            reason,
        })
    }
}

/// Byte offsets to 1-based lines and columns (columns count characters).
struct Positions<'a>(&'a str);

impl Positions<'_> {
    fn of(&self, offset: usize) -> (usize, usize) {
        let before = &self.0.as_bytes()[..offset.min(self.0.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
        (line, column)
    }

    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, PolicyError> {
        let (line, column) = self.of(span.start);
        Err(PolicyError {
            line,
            column,
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests;
