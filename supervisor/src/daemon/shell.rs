//! The supervisor's side of the decision protocol (`schema/wire.capnp`): with `[policy] decider =
//! "shell"`, a token request is decided by the node's shell capsule. The supervisor stays the
//! mechanism: it asks only about what the requester's manifest declares, with fields it verified;
//! it accepts one answer per request, from the connection it asked; and it holds every answer
//! within ceilings the shell cannot move (never wider than the manifest's entry, never `admin`,
//! at most an hour). Anything else from the shell is audited as a shell fault and denied.
//!
//! While no shell runs (not started yet, restarting) a request waits `shell_wait`, then is
//! denied `policy unavailable`; a shell that goes away with requests pending has them denied
//! the same way. Nothing is granted by default.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capnp::message::Builder;
use elastos_schema::policy::Standing;
use elastos_schema::wire::{self};
use elastos_schema::wire_capnp::{frame, Standing as WireStanding};
use elastos_schema::{token_capnp, versions, ActionSet};
use tokio::sync::{oneshot, Notify};

use super::conn::Conn;
use super::prompts::owner_of as address;
pub use elastos::ceilings::{covering_entry, Ask, MAX_TTL};
use elastos::frames::ShellAnswer;
use elastos::token::TokenId;

/// The shell answers at once (a prompt is answered `prompt`, not waited for): this bounds a
/// shell that hangs.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Token requests one capsule may have waiting on the shell (or a person) at once; more are
/// answered `busy`.
pub const MAX_ASKING: usize = 4;

struct Waiting {
    /// The connection asked, by address (compared, never followed): an answer from any other
    /// is a fault.
    conn: usize,
    reply: oneshot::Sender<Answered>,
}

/// The shell's answer to one request, with which rule decided (its explanation, and its id;
/// empty when the shell names none).
pub struct Answered {
    pub answer: ShellAnswer,
    pub explanation: String,
    pub rule: String,
}

/// The link to the shell's current connection, and the requests waiting on it.
#[derive(Default)]
pub struct ShellLink {
    conn: Mutex<Option<Arc<Conn>>>,
    attached: Notify,
    waiting: Mutex<HashMap<[u8; 16], Waiting>>,
    /// A reload waiting for the shell to say whether it took the policy.
    reloading: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
    /// The unexpired tokens minted under the shell's allows, by the rule that allowed them: a
    /// policy taken without that rule revokes them.
    by_rule: Mutex<HashMap<String, Vec<(TokenId, i64)>>>,
    /// Whether the tokens earlier runs of the supervisor minted by rule were read back from the
    /// audit log (once, at the first policy the shell takes).
    recovered: std::sync::atomic::AtomicBool,
}

impl ShellLink {
    pub fn attach(&self, conn: Arc<Conn>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        self.attached.notify_waiters();
    }

    /// The shell's connection closed: what waited on it is denied (its senders dropped).
    pub fn detach(&self, conn: &Arc<Conn>) {
        let mut current = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, w| w.conn != address(conn));
        }
    }

    pub fn is_shell(&self, conn: &Arc<Conn>) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, conn))
    }

    pub fn is_running(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// An answer arrived on `conn`: accepted once, for a request pending on that connection.
    pub fn answered(&self, conn: &Arc<Conn>, id: &[u8], answered: Answered) -> Result<(), String> {
        if !self.is_shell(conn) {
            return Err("a policy answer from a capsule that is not the node's shell".into());
        }
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| format!("a policy answer with an id of {} bytes, not 16", id.len()))?;
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get(&id) {
            Some(w) if w.conn == address(conn) => {
                if let Some(w) = waiting.remove(&id) {
                    let _ = w.reply.send(answered);
                }
                Ok(())
            }
            _ => Err(format!(
                "an answer to request {}, which is not pending (answered twice, timed out, or never asked)",
                hex::encode(id)
            )),
        }
    }

    /// Hands the running shell a policy and waits for it to say whether it took it.
    pub async fn reload(&self, text: &str) -> Result<(), String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("no shell is running; see `elastos ps` and `elastos logs shell`")?;
        let frame = load_frame(text).map_err(|e| format!("encoding the policy: {e}"))?;
        let (tx, rx) = oneshot::channel();
        *self.reloading.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        conn.push_wait(frame).await;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(format!(
                "the shell did not say within {} s whether it took the policy",
                ANSWER_WITHIN.as_secs()
            )),
        }
    }

    /// The shell said whether it took the policy it was handed last.
    pub fn loaded(&self, result: Result<(), String>) {
        if let Some(tx) = self
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(result);
        }
    }

    /// Asks the shell to decide; its answer, or why the policy is unavailable.
    pub async fn ask(&self, ask: &Ask, wait_for_shell: Duration) -> Result<Answered, String> {
        let conn = self.wait_for_shell(wait_for_shell).await?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| format!("randomness: {e}"))?;
        let frame = request_frame(&id, ask).map_err(|e| format!("encoding the request: {e}"))?;
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Waiting {
                    conn: address(&conn),
                    reply: tx,
                },
            );
        conn.push_wait(frame).await;
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("policy unavailable: the shell went away before it answered".into()),
            Err(_) => Err(format!(
                "policy unavailable: the shell did not answer within {} s",
                ANSWER_WITHIN.as_secs()
            )),
        }
    }

    /// A token minted under the shell's allow by `rule`, unexpired until `expiry`.
    pub fn track(&self, rule: &str, token: TokenId, expiry: i64, now: i64) {
        let mut by_rule = self.by_rule.lock().unwrap_or_else(|e| e.into_inner());
        by_rule.retain(|_, tokens| {
            tokens.retain(|(_, e)| *e > now);
            !tokens.is_empty()
        });
        by_rule
            .entry(rule.to_string())
            .or_default()
            .push((token, expiry));
    }

    /// The shell took a policy with `rules`: the unexpired tokens minted under any other rule,
    /// with their rule, taken off the list (to be revoked).
    pub fn minted_under_rules_gone(&self, rules: &[String], now: i64) -> Vec<(String, TokenId)> {
        let keep: std::collections::HashSet<&str> = rules.iter().map(String::as_str).collect();
        let mut gone = Vec::new();
        self.by_rule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|rule, tokens| {
                if keep.contains(rule.as_str()) {
                    return true;
                }
                gone.extend(
                    tokens
                        .iter()
                        .filter(|(_, e)| *e > now)
                        .map(|(t, _)| (rule.clone(), *t)),
                );
                false
            });
        gone
    }

    /// True the first time only: whether to read back the tokens earlier runs minted by rule.
    pub fn first_recovery(&self) -> bool {
        !self
            .recovered
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// The shell's connection once it has attached, waiting at most `patience` for it.
    pub async fn wait_for_shell(&self, patience: Duration) -> Result<Arc<Conn>, String> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let attached = self.attached.notified();
            tokio::pin!(attached);
            attached.as_mut().enable();
            if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Ok(c);
            }
            if tokio::time::timeout_at(deadline, attached).await.is_err() {
                return Err(format!(
                    "policy unavailable: no shell has been running for {} s; see `elastos ps` and `elastos logs shell`",
                    patience.as_secs()
                ));
            }
        }
    }
}

fn wire_standing(s: Standing) -> WireStanding {
    match s {
        Standing::ThisNode => WireStanding::ThisNode,
        Standing::FirstParty => WireStanding::FirstParty,
        Standing::Known => WireStanding::Known,
        Standing::Dev => WireStanding::Dev,
        Standing::Unknown => WireStanding::Unknown,
    }
}

fn set_actions(mut list: capnp::enum_list::Builder<'_, token_capnp::Action>, actions: ActionSet) {
    for (i, a) in actions.iter().enumerate() {
        list.set(i as u32, token_capnp::Action::from(a));
    }
}

fn request_frame(id: &[u8; 16], ask: &Ask) -> Result<Vec<u8>, wire::FrameError> {
    let mut m = Builder::new_default();
    {
        let mut r = m.init_root::<frame::Builder>().init_policy_request();
        r.set_version(versions::POLICY);
        r.set_id(id);
        r.set_name(&ask.name);
        r.set_cid(&ask.cid);
        r.set_publisher(&ask.publisher);
        r.set_standing(wire_standing(ask.standing));
        r.set_resource(&ask.resource);
        set_actions(
            r.reborrow().init_actions(ask.actions.iter().count() as u32),
            ask.actions,
        );
        r.set_ttl_seconds(u32::try_from(ask.ttl.as_secs()).unwrap_or(u32::MAX));
        r.set_covering(&ask.covering.resource);
        set_actions(
            r.reborrow()
                .init_covering_actions(ask.covering.actions.iter().count() as u32),
            ask.covering.actions,
        );
        r.set_reason(&ask.covering.reason);
        r.set_dry_run(ask.dry_run);
    }
    wire::encode(&m)
}

/// The policy load frame: the node's policy text, whole.
pub fn load_frame(text: &str) -> Result<Vec<u8>, wire::FrameError> {
    let mut m = Builder::new_default();
    {
        let mut l = m.init_root::<frame::Builder>().init_policy_load();
        l.set_version(versions::POLICY);
        l.set_text(text);
    }
    wire::encode(&m)
}

/// What `[policy] decider = "shell"` installs as the node's policy: the operator's own file when
/// there is one, else the shipped default; and where it came from, for the audit record.
pub fn policy_text(home: &elastos::home::Home) -> Result<(String, String), String> {
    const MAX: u64 = 1 << 20;
    let own = home.root().join("policies").join("default.toml");
    match std::fs::metadata(&own) {
        Ok(m) if m.len() > MAX => Err(format!(
            "{}: {} bytes; a policy file is at most {MAX}",
            own.display(),
            m.len()
        )),
        Ok(_) => std::fs::read_to_string(&own)
            .map(|t| (t, own.display().to_string()))
            .map_err(|e| format!("{}: {e}", own.display())),
        Err(_) => Ok((
            include_str!("../../../policies/default.toml").to_string(),
            "the shipped policies/default.toml".into(),
        )),
    }
}
