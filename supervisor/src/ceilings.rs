//! The supervisor's side of a token request the shell decides, as pure functions: what it
//! settles without asking (`admin`, anything malformed or undeclared), the ceilings that hold
//! any answer, and what an answer comes to. A capsule's `requestToken` (`daemon::conn`,
//! `daemon::decide`) and `elastos policy explain` (`daemon::control`) both go through them, so
//! an explanation is the decision the same request gets.

use std::time::Duration;

use elastos_schema::manifest::{Manifest, Request as ManifestRequest};
use elastos_schema::policy::Standing;
use elastos_schema::{Action, ActionSet};
use serde_json::{json, Value};

use crate::frames::ShellAnswer;
use crate::policy::{self, Grant};
use crate::token::{resource_matches, resource_within, validate_pattern};

/// The node's longest grant, whatever the shell says.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What the supervisor asks the shell, every field verified by it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub name: String,
    pub cid: String,
    pub publisher: String,
    pub standing: Standing,
    pub resource: String,
    pub actions: ActionSet,
    pub ttl: Duration,
    pub covering: ManifestRequest,
    /// Only to be explained (`elastos policy explain`): nothing is granted either way.
    pub dry_run: bool,
}

/// The requester's manifest entry that covers the ask (the resource within its pattern, the
/// actions among its), if any: nothing undeclared is ever put to the shell.
pub fn covering_entry<'m>(
    manifest: &'m Manifest,
    resource: &str,
    actions: ActionSet,
) -> Option<&'m ManifestRequest> {
    manifest.requests.iter().find(|r| {
        (resource_within(&r.resource, resource).unwrap_or(false)
            || resource_matches(&r.resource, resource).unwrap_or(false))
            && actions.is_subset_of(r.actions)
    })
}

/// Holds an `allow` within the ceilings: a pattern no wider than the covering entry and around
/// the asked resource, actions among the entry's and never `admin`, a lifetime of 1 s to an hour.
pub fn within_ceilings(
    asked: &str,
    covering: &ManifestRequest,
    resource: &str,
    actions: ActionSet,
    ttl: Duration,
) -> Result<(), String> {
    validate_pattern(resource).map_err(|e| format!("its resource: {e}"))?;
    if !resource_within(&covering.resource, resource).unwrap_or(false) {
        return Err(format!(
            "it grants `{resource}`, wider than the manifest's `{}`",
            covering.resource
        ));
    }
    if !resource_within(resource, asked).unwrap_or(false) {
        return Err(format!(
            "it grants `{resource}`, which does not hold the asked `{asked}`"
        ));
    }
    if actions.is_empty() {
        return Err("it grants no action".into());
    }
    if actions.contains(Action::Admin) {
        return Err("it grants `admin`, which the shell never may".into());
    }
    if !actions.is_subset_of(covering.actions) {
        return Err(format!(
            "it grants {actions}, beyond the manifest's {}",
            covering.actions
        ));
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!(
            "it grants {} s; a grant lasts 1 s to {} s",
            ttl.as_secs(),
            MAX_TTL.as_secs()
        ));
    }
    Ok(())
}

/// A request the supervisor answers without asking the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unasked {
    /// `admin`: the provide capability is the supervisor's own rule, whatever the policy.
    Provide(Grant),
    /// No action, or not a resource or pattern.
    Malformed(String),
    /// The requester's manifest does not request it.
    Undeclared,
}

/// What stands before the shell is asked: the manifest entry that covers the request, or why
/// the supervisor answers it alone.
pub fn before_asking<'m>(
    manifest: &'m Manifest,
    first_party: bool,
    resource: &str,
    actions: ActionSet,
    ttl: Duration,
) -> Result<&'m ManifestRequest, Unasked> {
    if actions.contains(Action::Admin) {
        let never = "(`admin` is never granted through the shell: only the provide capability, to a first-party capsule)";
        // Only the provide capability: an `admin` a manifest lists in its `requests` would
        // otherwise be granted without the shell, to any publisher.
        return Err(Unasked::Provide(
            match policy::decide_provide(manifest, first_party, resource, actions, ttl) {
                Some(g @ Grant::Allow { .. }) => g,
                Some(Grant::Deny(why)) => Grant::Deny(format!("{why} {never}")),
                None => Grant::Deny(format!(
                    "capsule.toml of `{}` does not list `{resource}` (or a namespace around it) in `provides` {never}",
                    manifest.name
                )),
            },
        ));
    }
    if actions.is_empty() {
        return Err(Unasked::Malformed("no actions asked for".into()));
    }
    if validate_pattern(resource).is_err() {
        return Err(Unasked::Malformed(format!(
            "`{resource}` is not a resource or pattern"
        )));
    }
    covering_entry(manifest, resource, actions).ok_or(Unasked::Undeclared)
}

impl Unasked {
    /// What a capsule `name` asking for it is answered.
    pub fn grant(self, name: &str, resource: &str, actions: ActionSet) -> Grant {
        match self {
            Unasked::Provide(g) => g,
            Unasked::Malformed(why) => Grant::Deny(why),
            Unasked::Undeclared => Grant::Deny(format!(
                "capsule.toml of `{name}` does not request `{resource}` for {actions}, so it is not asked; add a [[requests]] entry with that resource and actions"
            )),
        }
    }

    /// What `elastos policy explain --json` says of it.
    pub fn explained(&self, resource: &str, actions: ActionSet) -> Value {
        const ADMIN: &str = "`admin` is never put to the shell: the provide capability is the supervisor's rule (first party, listed in `provides`)";
        match self {
            Unasked::Provide(Grant::Allow {
                resource,
                actions,
                ttl,
                ..
            }) => allow_json(resource, *actions, *ttl, ADMIN),
            Unasked::Provide(Grant::Deny(why)) => {
                json!({"verdict": "deny", "reason": why, "explanation": ADMIN})
            }
            Unasked::Malformed(why) => json!({"verdict": "deny", "explanation": why}),
            Unasked::Undeclared => json!({
                "verdict": "deny",
                "explanation": format!("its capsule.toml does not request `{resource}` for {actions}: denied without asking the shell"),
            }),
        }
    }
}

/// What the shell's answer to an ask comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        resource: String,
        actions: ActionSet,
        ttl: Duration,
    },
    Deny(String),
    /// The person decides.
    Prompt,
    /// An `allow` outside the ceilings, and why: a shell fault, and denied.
    Refused(String),
}

/// Holds the shell's `answer` to `ask` within the ceilings.
pub fn outcome(ask: &Ask, answer: &ShellAnswer) -> Outcome {
    match answer {
        ShellAnswer::Allow {
            resource,
            actions,
            ttl,
        } => match within_ceilings(&ask.resource, &ask.covering, resource, *actions, *ttl) {
            Ok(()) => Outcome::Allow {
                resource: resource.clone(),
                actions: *actions,
                ttl: *ttl,
            },
            Err(why) => Outcome::Refused(why),
        },
        ShellAnswer::Deny(why) => Outcome::Deny(why.clone()),
        ShellAnswer::Prompt => Outcome::Prompt,
    }
}

impl Outcome {
    /// What `elastos policy explain --json` says of it, with the shell's `explanation`.
    pub fn explained(&self, explanation: &str) -> Value {
        match self {
            Outcome::Allow {
                resource,
                actions,
                ttl,
            } => allow_json(resource, *actions, *ttl, explanation),
            Outcome::Deny(why) => {
                json!({"verdict": "deny", "reason": why, "explanation": explanation})
            }
            Outcome::Prompt => json!({"verdict": "prompt", "explanation": explanation}),
            Outcome::Refused(why) => json!({
                "verdict": "deny",
                "explanation": format!("the shell's answer would be refused: {why} ({explanation})"),
            }),
        }
    }
}

fn allow_json(resource: &str, actions: ActionSet, ttl: Duration, explanation: &str) -> Value {
    json!({
        "verdict": "allow",
        "resource": resource,
        "actions": actions.to_string(),
        "ttl_s": ttl.as_secs(),
        "explanation": explanation,
    })
}

#[cfg(test)]
mod tests;
