//! The shell's side of the decision protocol (`schema/wire.capnp`, `versions::POLICY`): the
//! supervisor asks the node's shell capsule to decide token requests and hands it the node's
//! policy; the shell answers. Only the capsule a node configures as its shell hears these
//! frames; for every other capsule this module stays unused.

use std::time::Duration;

use elastos_schema::policy::Standing;
use elastos_schema::wire_capnp::{policy_answer, policy_request, Standing as WireStanding};
use elastos_schema::{token_capnp, versions, Action};

use crate::{frames, Capsule, SdkError, Transport};

/// The most a request's id may be: 16 random bytes.
pub const ID_LEN: usize = 16;

/// One request to decide. Every field was verified by the supervisor; the text fields come from
/// the requester's manifest and are shown, never interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest {
    pub id: [u8; ID_LEN],
    pub name: String,
    pub cid: String,
    /// A DID, or `dev`.
    pub publisher: String,
    pub standing: Standing,
    /// A resource or a pattern `P/*`.
    pub resource: String,
    pub actions: Vec<Action>,
    /// What the requester asked for; zero means the longest allowed.
    pub ttl: Duration,
    /// The requester's manifest entry that covers the ask: the most an answer may grant.
    pub covering: String,
    pub covering_actions: Vec<Action>,
    pub reason: String,
    /// Only to be explained (`elastos policy explain`): nothing is granted either way.
    pub dry_run: bool,
}

/// The shell's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAnswer {
    /// Grant `actions` on `resource` (the asked resource, or a pattern around it no wider than
    /// the covering entry) for `ttl`.
    Allow {
        resource: String,
        actions: Vec<Action>,
        ttl: Duration,
    },
    Deny(String),
    /// Ask the person; the supervisor draws the prompt from its own record of the request.
    Prompt,
}

/// What the supervisor asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEvent {
    Decide(Box<PolicyRequest>),
    /// The node's policy, whole: take it, or say where it is wrong.
    Load(String),
}

fn standing(s: WireStanding) -> Standing {
    match s {
        WireStanding::ThisNode => Standing::ThisNode,
        WireStanding::FirstParty => Standing::FirstParty,
        WireStanding::Known => Standing::Known,
        WireStanding::Dev => Standing::Dev,
        WireStanding::Unknown => Standing::Unknown,
    }
}

fn actions(
    what: &str,
    list: capnp::Result<capnp::enum_list::Reader<'_, token_capnp::Action>>,
) -> Result<Vec<Action>, String> {
    let list = list.map_err(|e| format!("{what}: {e}"))?;
    list.iter()
        .map(|a| {
            a.map(Action::from)
                .map_err(|e| format!("{what}: unknown action {}", e.0))
        })
        .collect()
}

fn text(what: &str, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, String> {
    let t = t.map_err(|e| format!("{what}: {e}"))?;
    t.to_string().map_err(|_| format!("{what}: not UTF-8"))
}

/// Reads a request; `Err` with its id (when it has one) and why, to be denied unread.
pub(crate) fn read_request(
    r: policy_request::Reader<'_>,
) -> Result<PolicyRequest, (Option<[u8; ID_LEN]>, String)> {
    let id: Option<[u8; ID_LEN]> = r.get_id().ok().and_then(|b| b.try_into().ok());
    let fail = |why: String| (id, why);
    let Some(id) = id else {
        return Err(fail("the request has no 16-byte id".into()));
    };
    if r.get_version() != versions::POLICY {
        return Err(fail(format!(
            "decision protocol version {} is unknown to this shell (it speaks {})",
            r.get_version(),
            versions::POLICY
        )));
    }
    let standing = r
        .get_standing()
        .map(standing)
        .map_err(|e| fail(format!("unknown standing {}", e.0)))?;
    Ok(PolicyRequest {
        id,
        name: text("name", r.get_name()).map_err(fail)?,
        cid: text("cid", r.get_cid()).map_err(fail)?,
        publisher: text("publisher", r.get_publisher()).map_err(fail)?,
        standing,
        resource: text("resource", r.get_resource()).map_err(fail)?,
        actions: actions("actions", r.get_actions()).map_err(fail)?,
        ttl: Duration::from_secs(u64::from(r.get_ttl_seconds())),
        covering: text("covering", r.get_covering()).map_err(fail)?,
        covering_actions: actions("coveringActions", r.get_covering_actions()).map_err(fail)?,
        reason: text("reason", r.get_reason()).map_err(fail)?,
        dry_run: r.get_dry_run(),
    })
}

fn set_actions(mut list: capnp::enum_list::Builder<'_, token_capnp::Action>, actions: &[Action]) {
    for (i, a) in actions.iter().enumerate() {
        // The list was made this long.
        list.set(i as u32, token_capnp::Action::from(*a));
    }
}

pub(crate) fn answer(
    out: &mut Vec<u8>,
    id: &[u8; ID_LEN],
    answer: &PolicyAnswer,
    explanation: &str,
    rule: &str,
) -> Result<(), SdkError> {
    let variable = match answer {
        PolicyAnswer::Allow { resource, .. } => resource.len() + 16,
        PolicyAnswer::Deny(why) => why.len(),
        PolicyAnswer::Prompt => 0,
    };
    frames::build(
        out,
        variable + explanation.len() + rule.len() + ID_LEN,
        |f| {
            let mut a = f.init_policy_answer();
            a.set_version(versions::POLICY);
            a.set_id(id);
            a.set_explanation(explanation);
            a.set_rule(rule);
            fill(&mut a, answer);
            Ok(())
        },
    )
}

fn fill(a: &mut policy_answer::Builder<'_>, answer: &PolicyAnswer) {
    match answer {
        PolicyAnswer::Allow {
            resource,
            actions,
            ttl,
        } => {
            let mut g = a.reborrow().init_allow();
            g.set_resource(resource);
            g.set_ttl_seconds(u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX));
            let n = actions.len().min(16) as u32;
            set_actions(g.init_actions(n), &actions[..n as usize]);
        }
        PolicyAnswer::Deny(why) => a.set_deny(why),
        PolicyAnswer::Prompt => a.set_prompt(()),
    }
}

pub(crate) fn loaded(
    out: &mut Vec<u8>,
    result: Result<&[String], (u32, u32, &str)>,
) -> Result<(), SdkError> {
    let size = match result {
        Ok(rules) => rules.iter().map(|r| r.len() + 8).sum(),
        Err((_, _, m)) => m.len(),
    };
    frames::build(out, size, |f| {
        let mut l = f.init_policy_loaded();
        l.set_version(versions::POLICY);
        match result {
            Ok(rules) => {
                l.set_ok(true);
                let mut list = l.init_rules(rules.len() as u32);
                for (i, r) in rules.iter().enumerate() {
                    list.set(i as u32, r);
                }
            }
            Err((line, column, message)) => {
                l.set_ok(false);
                l.set_line(line);
                l.set_column(column);
                l.set_message(message);
            }
        }
        Ok(())
    })
}

impl<T: Transport> Capsule<T> {
    /// The next thing the supervisor asks of this shell; `None` once it closed the connection.
    pub fn next_shell_event(&mut self) -> Result<Option<ShellEvent>, SdkError> {
        loop {
            if let Some(e) = self.shell.pop_front() {
                return Ok(Some(e));
            }
            if !self.pump()? {
                return Ok(None);
            }
        }
    }

    /// Answers the request `id`. The supervisor accepts one answer per request, and holds it
    /// within its ceilings whatever it says.
    pub fn answer_policy(
        &mut self,
        id: &[u8; ID_LEN],
        answer: &PolicyAnswer,
    ) -> Result<(), SdkError> {
        self.answer_policy_explained(id, answer, "")
    }

    /// [`Capsule::answer_policy`], with which rule decided and why (what `elastos policy
    /// explain` shows).
    pub fn answer_policy_explained(
        &mut self,
        id: &[u8; ID_LEN],
        answer: &PolicyAnswer,
        explanation: &str,
    ) -> Result<(), SdkError> {
        self.answer_policy_by_rule(id, answer, explanation, "")
    }

    /// [`Capsule::answer_policy_explained`], naming the rule that decided by an id (1 to 64
    /// printable ASCII bytes): the supervisor keeps it with the tokens an allow mints, and
    /// revokes them when this shell takes a policy without that rule ([`Capsule::policy_taken`]).
    pub fn answer_policy_by_rule(
        &mut self,
        id: &[u8; ID_LEN],
        answer: &PolicyAnswer,
        explanation: &str,
        rule: &str,
    ) -> Result<(), SdkError> {
        self::answer(&mut self.tx, id, answer, explanation, rule)?;
        self.send_tx()
    }

    /// Says whether the policy last loaded was taken: `Err((line, column, what is wrong))`.
    pub fn policy_loaded(&mut self, result: Result<(), (u32, u32, &str)>) -> Result<(), SdkError> {
        loaded(&mut self.tx, result.map(|()| &[][..]))?;
        self.send_tx()
    }

    /// Says the policy last loaded was taken, with the id of each of its rules (as answers name
    /// them): tokens minted under a rule not among them are revoked.
    pub fn policy_taken(&mut self, rules: &[String]) -> Result<(), SdkError> {
        loaded(&mut self.tx, Ok(rules))?;
        self.send_tx()
    }
}
