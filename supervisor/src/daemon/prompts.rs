//! Prompts: when the shell answers `prompt`, the person decides. The supervisor keeps the
//! request (drawn from its own record, never from the shell's or the capsule's words), lists it
//! to the operator (`elastos prompts`), and waits for an answer on the operator's control socket
//! (`elastos allow ID`, `elastos deny ID`) or for the prompt's time to run out (a denial). At most
//! [`MAX_PER_CAPSULE`] prompts wait per capsule. A grant allowed once lasts as long as the capsule
//! instance that asked: its tokens are revoked when that connection ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elastos::token::TokenId;
use elastos_schema::ActionSet;
use serde_json::json;
use tokio::sync::oneshot;

use super::conn::Conn;

/// How long a prompt waits for the person.
pub const PROMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Prompts one capsule may have waiting at once; more are denied at once.
pub const MAX_PER_CAPSULE: usize = 4;

/// What the person answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Allowed for this capsule instance: its tokens end when it does.
    AllowOnce,
    /// Allowed from now on (for the session, or always), by the grant of this id.
    AllowGrant(String),
    Deny,
}

/// One prompt, as the operator sees it: every field the supervisor's own.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub id: String,
    pub capsule: String,
    pub cid: String,
    /// `this node`, a DID, or `dev, unverified`.
    pub publisher: String,
    pub resource: String,
    pub actions: ActionSet,
    /// The manifest's reason for the covering entry, as the manifest says it.
    pub reason: String,
    pub requested_at: i64,
    pub expires_at: i64,
    /// How long what it asks would last, in words: a token's lifetime, or `while it runs` for
    /// what a capsule is granted at its start.
    pub duration: String,
    /// What a standing answer binds to: the publisher's DID, or the CID of a development
    /// package (not shown: the publisher and CID are).
    pub bind: String,
}

impl Prompt {
    pub fn to_json(&self) -> serde_json::Value {
        let time = |t: i64| {
            humantime::format_rfc3339_seconds(elastos::token::unix_to_system(t)).to_string()
        };
        json!({
            "id": self.id,
            "capsule": self.capsule,
            "cid": self.cid,
            "publisher": self.publisher,
            "resource": self.resource,
            "actions": self.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "reason": self.reason,
            "requested_at": time(self.requested_at),
            "expires_at": time(self.expires_at),
            "duration": self.duration,
        })
    }
}

struct Waiting {
    prompt: Prompt,
    conn: usize,
    reply: oneshot::Sender<Answer>,
}

pub struct Prompts {
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Tokens allowed once, by the connection (capsule instance) they belong to.
    once: Mutex<HashMap<usize, Vec<TokenId>>>,
    /// Raised whenever a prompt opens or closes: each attached `elastos shell` is sent the list.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Prompts {
    fn default() -> Prompts {
        Prompts {
            waiting: Mutex::default(),
            once: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn address(conn: &Arc<Conn>) -> usize {
    Arc::as_ptr(conn) as usize
}

/// Whom a connection's prompts belong to.
pub fn owner_of(conn: &Arc<Conn>) -> usize {
    address(conn)
}

/// Whom the prompts of one start of a capsule belong to (before it has a connection): numbers
/// far below any address a connection has.
pub fn start_owner() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 + 1
}

impl Prompts {
    /// Told of every change to the prompts waiting.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Opens a prompt for `owner` (a connection's [`owner_of`], or a start's [`start_owner`]):
    /// its id, and where the person's answer will arrive; `Err` when `owner` has too many open.
    pub fn open(
        &self,
        owner: usize,
        mut prompt: Prompt,
    ) -> Result<(String, oneshot::Receiver<Answer>), String> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mine = waiting.values().filter(|w| w.conn == owner).count();
        if mine >= MAX_PER_CAPSULE {
            return Err(format!(
                "{MAX_PER_CAPSULE} prompts of this capsule already wait for an answer"
            ));
        }
        prompt.id = loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| format!("randomness: {e}"))?;
            let id = hex::encode(b);
            if !waiting.contains_key(&id) {
                break id;
            }
        };
        let id = prompt.id.clone();
        waiting.insert(
            id.clone(),
            Waiting {
                prompt,
                conn: owner,
                reply: tx,
            },
        );
        drop(waiting);
        self.bump();
        Ok((id, rx))
    }

    /// Waits for the person's answer to prompt `id`, at most [`PROMPT_TIMEOUT`].
    pub async fn wait(&self, id: &str, rx: oneshot::Receiver<Answer>) -> Result<Answer, String> {
        let answer = tokio::time::timeout(PROMPT_TIMEOUT, rx).await;
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.bump();
        match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(
                "policy unavailable: the prompt was withdrawn (the shell went away, or its capsule did)"
                    .into(),
            ),
            Err(_) => Err(format!(
                "no one answered prompt {id} within {} s",
                PROMPT_TIMEOUT.as_secs()
            )),
        }
    }

    /// The prompts waiting, oldest first.
    pub fn list(&self) -> Vec<Prompt> {
        let mut all: Vec<Prompt> = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|w| w.prompt.clone())
            .collect();
        all.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
        all
    }

    /// Prompt `id`, while it waits.
    pub fn get(&self, id: &str) -> Option<Prompt> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|w| w.prompt.clone())
    }

    /// The person's answer to prompt `id`: the prompt, or `None` when none such waits.
    pub fn answer(&self, id: &str, answer: Answer) -> Option<Prompt> {
        let w = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        let _ = w.reply.send(answer);
        self.bump();
        Some(w.prompt)
    }

    /// The shell went away: every prompt it asked for is withdrawn, so each request is denied
    /// `policy unavailable` rather than answered under a policy no longer in force.
    pub fn withdraw_all(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.bump();
    }

    /// A token allowed once, to end with `conn`.
    pub fn track_once(&self, conn: &Arc<Conn>, id: TokenId) {
        self.once
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(address(conn))
            .or_default()
            .push(id);
    }

    /// `conn` ended: its prompts are withdrawn, and the tokens it was allowed once returned.
    pub fn gone(&self, conn: &Arc<Conn>) -> Vec<TokenId> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| w.conn != address(conn));
        self.bump();
        self.once
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&address(conn))
            .unwrap_or_default()
    }
}
