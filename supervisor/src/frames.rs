//! What a capsule sends, as the supervisor reads it: one decoded frame
//! ([`elastos_schema::wire`]) into a [`Parsed`] value, every field read defensively (capsule text
//! sanitised and capped, a missing or malformed field a [`Parsed::Malformed`] or an error of
//! its own, never a panic). Calls and replies, the frames every call is made of, borrow from
//! the frame; the rest are read into owned values. The supervisor's reader uses this, and so
//! does the `wire_frames` fuzz target.

use std::time::Duration;

use elastos_schema::wire::{self, FrameError};
use elastos_schema::wire_capnp::{frame, Status};
use elastos_schema::{Action, ActionSet};

use crate::text::sanitize_capped;

/// Kept short: capsule-supplied text ends up in audit records and operators' terminals.
pub const MAX_TEXT: usize = 2048;

/// What a provider answered to one incoming call, read in place from its frame.
pub struct ReplyView<'a> {
    pub status: Status,
    pub message: String,
    pub payload: &'a [u8],
}

/// A frame from a capsule. Calls and replies, the frames every call is made of, borrow their
/// fields from the frame; the others are read into owned values. (Readers are not `Send` and
/// must not live across an await: only plain slices and strings are kept.)
pub enum Parsed<'a> {
    Hello(u16),
    Call(u64, Result<CallView<'a>, String>),
    Reply(u64, ReplyView<'a>),
    RequestToken {
        id: u64,
        resource: String,
        actions: ActionSet,
        reason: String,
        ttl: Duration,
    },
    Serve {
        id: u64,
        pattern: String,
        token: Vec<u8>,
    },
    /// The shell's answer to a policy request (only the shell's connection may send one).
    PolicyAnswer {
        id: Vec<u8>,
        answer: Result<ShellAnswer, String>,
        /// Which rule decided, and why, in the shell's words (shown, never interpreted).
        explanation: String,
        /// The rule that decided, as the shell names it ([`rule_id`]; empty: not tracked).
        rule: String,
    },
    /// Whether the shell took the policy it was handed: the ids of its rules, or where it is
    /// wrong.
    PolicyLoaded(Result<Vec<String>, (u32, u32, String)>),
    Malformed(String),
}

/// What the shell answered, read defensively: whatever it says is then held within the
/// supervisor's ceilings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellAnswer {
    Allow {
        resource: String,
        actions: ActionSet,
        ttl: Duration,
    },
    Deny(String),
    Prompt,
}

pub fn parse<'a>(msg: &'a Result<wire::Message<'_>, FrameError>) -> Parsed<'a> {
    let msg = match msg {
        Ok(m) => m,
        Err(e) => return Parsed::Malformed(e.to_string()),
    };
    let root = match msg.get_root::<frame::Reader>() {
        Ok(r) => r,
        Err(e) => return Parsed::Malformed(e.to_string()),
    };
    let bad = |e: capnp::Error| Parsed::Malformed(e.to_string());
    match root.which() {
        Ok(frame::Which::Hello(Ok(h))) => Parsed::Hello(h.get_version()),
        Ok(frame::Which::Call(Ok(c))) => Parsed::Call(c.get_id(), read_call(&c)),
        Ok(frame::Which::Reply(Ok(r))) => Parsed::Reply(
            r.get_id(),
            ReplyView {
                // A provider's answer is final: `pending` is the supervisor's to say, and only
                // to a token request.
                status: match r.get_status() {
                    Ok(Status::Pending) | Err(_) => Status::ProviderError,
                    Ok(s) => s,
                },
                message: text(r.get_message()),
                payload: r.get_payload().unwrap_or_default(),
            },
        ),
        Ok(frame::Which::RequestToken(Ok(t))) => {
            let mut actions = ActionSet::EMPTY;
            if let Ok(list) = t.get_actions() {
                for a in list.iter().flatten() {
                    actions.insert(Action::from(a));
                }
            }
            Parsed::RequestToken {
                id: t.get_id(),
                resource: text(t.get_resource()),
                actions,
                reason: text(t.get_reason()),
                ttl: Duration::from_secs(u64::from(t.get_ttl_seconds())),
            }
        }
        Ok(frame::Which::Serve(Ok(s))) => Parsed::Serve {
            id: s.get_id(),
            pattern: text(s.get_pattern()),
            token: s.get_token().map(|t| t.to_vec()).unwrap_or_default(),
        },
        Ok(frame::Which::PolicyAnswer(Ok(a))) => {
            let id = a.get_id().map(<[u8]>::to_vec).unwrap_or_default();
            let answer = (|| {
                if a.get_version() != elastos_schema::versions::POLICY {
                    return Err(format!(
                        "decision protocol version {} is unknown (this supervisor speaks {})",
                        a.get_version(),
                        elastos_schema::versions::POLICY
                    ));
                }
                use elastos_schema::wire_capnp::policy_answer::Which;
                match a
                    .which()
                    .map_err(|e| format!("unknown answer kind {}", e.0))?
                {
                    Which::Allow(g) => {
                        let g = g.map_err(|e| e.to_string())?;
                        let mut actions = ActionSet::EMPTY;
                        for a in g.get_actions().map_err(|e| e.to_string())?.iter() {
                            actions.insert(Action::from(
                                a.map_err(|e| format!("unknown action {}", e.0))?,
                            ));
                        }
                        Ok(ShellAnswer::Allow {
                            resource: text(g.get_resource()),
                            actions,
                            ttl: Duration::from_secs(u64::from(g.get_ttl_seconds())),
                        })
                    }
                    Which::Deny(why) => Ok(ShellAnswer::Deny(text(why))),
                    Which::Prompt(()) => Ok(ShellAnswer::Prompt),
                }
            })();
            Parsed::PolicyAnswer {
                id,
                answer,
                explanation: text(a.get_explanation()),
                rule: a
                    .get_rule()
                    .ok()
                    .and_then(|t| t.to_str().ok())
                    .and_then(rule_id)
                    .unwrap_or_default(),
            }
        }
        Ok(frame::Which::PolicyLoaded(Ok(l))) => Parsed::PolicyLoaded(if l.get_ok() {
            rule_ids(l.get_rules())
        } else {
            Err((l.get_line(), l.get_column(), text(l.get_message())))
        }),
        Ok(
            frame::Which::Hello(Err(e))
            | frame::Which::PolicyAnswer(Err(e))
            | frame::Which::PolicyLoaded(Err(e))
            | frame::Which::Call(Err(e))
            | frame::Which::Reply(Err(e))
            | frame::Which::RequestToken(Err(e))
            | frame::Which::Serve(Err(e)),
        ) => bad(e),
        Ok(_) => Parsed::Malformed("a frame a capsule may not send".into()),
        Err(e) => Parsed::Malformed(format!("unknown frame kind ({e})")),
    }
}

/// A call, read in place from its frame.
#[derive(Clone, Copy)]
pub struct CallView<'a> {
    pub target: &'a str,
    pub action: Action,
    pub token: &'a [u8],
    pub payload: &'a [u8],
    pub deadline_ms: u32,
}

/// A call that waits for the audit log in a task of its own (its frame's buffer is reused).
pub struct CallData {
    pub target: String,
    pub action: Action,
    pub payload: Vec<u8>,
    pub deadline_ms: u32,
}

impl CallView<'_> {
    pub fn owned(&self) -> CallData {
        CallData {
            target: self.target.to_string(),
            action: self.action,
            payload: self.payload.to_vec(),
            deadline_ms: self.deadline_ms,
        }
    }
}

impl CallData {
    pub fn view(&self) -> CallView<'_> {
        CallView {
            target: &self.target,
            action: self.action,
            token: &[],
            payload: &self.payload,
            deadline_ms: self.deadline_ms,
        }
    }
}

fn read_call<'a>(c: &elastos_schema::wire_capnp::call::Reader<'a>) -> Result<CallView<'a>, String> {
    let target = c
        .get_target()
        .map_err(|e| e.to_string())?
        .to_str()
        .map_err(|_| "the target is not UTF-8".to_string())?;
    let action = Action::from(c.get_action().map_err(|_| "unknown action".to_string())?);
    Ok(CallView {
        target,
        action,
        token: c.get_token().map_err(|e| e.to_string())?,
        payload: c.get_payload().map_err(|e| e.to_string())?,
        deadline_ms: c.get_deadline_ms(),
    })
}

/// The most rules a policy the shell takes may name.
pub const MAX_RULES: u32 = 10_000;

/// A rule id as the shell names it: 1 to 64 printable ASCII bytes, or none (then the tokens it
/// allows are not tracked by rule).
pub fn rule_id(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

/// The ids of the rules of a policy the shell took; a list too long, or with an id that is not
/// one, is refused as a whole (the policy then counts as not taken).
fn rule_ids(
    list: capnp::Result<capnp::text_list::Reader<'_>>,
) -> Result<Vec<String>, (u32, u32, String)> {
    let bad = |why: String| Err((0, 0, why));
    let list = match list {
        Ok(l) => l,
        Err(e) => return bad(format!("its list of rules: {e}")),
    };
    if list.len() > MAX_RULES {
        return bad(format!(
            "it names {} rules, more than the {MAX_RULES} a policy may have",
            list.len()
        ));
    }
    let mut ids = Vec::with_capacity(list.len() as usize);
    for t in list.iter() {
        match t.ok().and_then(|t| t.to_str().ok()).and_then(rule_id) {
            Some(id) => ids.push(id),
            None => return bad("a rule id that is not 1 to 64 printable ASCII bytes".into()),
        }
    }
    Ok(ids)
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok()
        .and_then(|t| t.to_str().ok())
        .map(|s| sanitize_capped(s, MAX_TEXT))
        .unwrap_or_default()
}
