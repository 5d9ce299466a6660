//! One capsule's connection: the call path.
//!
//! Each capsule socket has its own reader task, which decodes a frame, checks it against shared
//! state (the authority, the route table) and writes it straight into the provider's socket
//! ([`Outbox`]); the provider's reader writes the answer straight back into the caller's. Only
//! the audit append is handed to the audit writer. No per-call task or actor mailbox sits on the
//! path, so a call costs no thread wake-up beyond the sockets' own, and one capsule's calls
//! never queue behind another's. Slow paths (a durable audit record before an answer) run in a
//! task of their own so the reader never waits. One sweeper task answers calls whose deadline
//! passed.
//!
//! The caller is always the capsule bound to this socket ([`Peer`]), never a field of a frame.
//! A provider receives the verified caller (name, CID, publisher), the action and the resource,
//! never the caller's token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capnp::message::Builder;
use elastos::audit::{Decision, Durability, Event};
use elastos::authority::{CallRequest, IssueRequest};
use elastos::ceilings::{before_asking, Unasked};
use elastos::config::Decider;
use elastos::policy::{self, Grant};
use elastos_schema::manifest::{Manifest, Request as ManifestRequest};
use elastos_schema::policy::Standing;
use elastos_schema::wire::{self, FrameError};
use elastos_schema::wire_capnp::{frame, Status};
use elastos_schema::{token_capnp, versions, Action, ActionSet, Classification};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

use super::decide::{self, Lasts};
use super::outbox::{Outbox, SendError};
use super::{prompts, shell, Shared};
use elastos::frames::{parse, CallView, Parsed};
use elastos::token::TokenId;

/// Who is on the other end of a capsule socket, as the supervisor started it.
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub cid: String,
    /// A DID, or `dev` for development packages.
    pub publisher: String,
    /// How this node regards its publisher (verified at start).
    pub standing: Standing,
    pub first_party: bool,
    pub manifest: Arc<Manifest>,
    /// An attached `elastos run`, which hears when a request of this capsule waits for the
    /// person.
    pub attached: Option<decide::Attached>,
    /// Its name in audit records, made once and shared: every call is audited under it.
    actor: Arc<str>,
}

impl Peer {
    pub fn new(
        name: String,
        cid: String,
        publisher: String,
        standing: Standing,
        manifest: Arc<Manifest>,
        attached: Option<decide::Attached>,
    ) -> Peer {
        let actor = format!("capsule:{name}@{cid}").into();
        Peer {
            name,
            cid,
            publisher,
            standing,
            first_party: matches!(standing, Standing::ThisNode | Standing::FirstParty),
            manifest,
            attached,
            actor,
        }
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn actor_shared(&self) -> Arc<str> {
        self.actor.clone()
    }
}

/// The shared handle of a live connection: how others reach this capsule.
pub struct Conn {
    pub peer: Arc<Peer>,
    out: Outbox,
    /// Calls forwarded to this capsule (as a provider) and not answered yet, by incoming id.
    pending: Mutex<HashMap<u64, Pending>>,
    next_incoming: AtomicU64,
    /// Calls this capsule made that are not answered yet.
    in_flight: AtomicUsize,
    /// Calls this capsule made or served; shared with its earlier and later connections.
    calls: Arc<AtomicU64>,
    /// Woken when this capsule's answers no longer fit its queue: it has stopped reading its
    /// socket, and its connection is closed rather than buffering without end.
    stalled: Notify,
    /// What this capsule may still cost the audit log.
    budget: Mutex<AuditBudget>,
    /// Its token requests waiting on the shell (or a person).
    asking: AtomicUsize,
}

/// Records per second one capsule may cause, and how many it may cause at once.
pub const BUDGET_RECORDS_PER_S: f64 = 100.0;
pub const BUDGET_RECORDS_BURST: f64 = 500.0;
/// Bytes of records per second one capsule may cause, and at once.
pub const BUDGET_BYTES_PER_S: f64 = 256.0 * 1024.0;
pub const BUDGET_BYTES_BURST: f64 = 1024.0 * 1024.0;

/// Once over budget, a capsule is over until its bucket has refilled this far (a tenth of the
/// burst): it then gets a short burst of calls and waits again, rather than a call every few
/// milliseconds. A flood's cost to the node comes in few short bursts, each a single fsync of
/// the log, instead of a steady trickle that lands on a large share of other capsules' calls.
pub const BUDGET_RESUME_RECORDS: f64 = BUDGET_RECORDS_BURST / 10.0;
pub const BUDGET_RESUME_BYTES: f64 = BUDGET_BYTES_BURST / 10.0;

/// A token bucket over what one capsule costs the audit log: each frame that will be recorded
/// on its own (a denial, a token request, a serve request, a malformed frame) spends a record
/// and its bytes. Allowed calls are summed up by the log and spend nothing. An empty bucket
/// refills at the rates above; while it is empty, and until it has refilled to the resume
/// level, the capsule's calls and requests are answered `busy` and not recorded, and one
/// `audit.budget` record per episode says so.
pub struct AuditBudget {
    records: f64,
    bytes: f64,
    last: Instant,
    /// Over budget now, and already said so.
    over: bool,
}

impl AuditBudget {
    fn new() -> AuditBudget {
        AuditBudget::new_at(Instant::now())
    }

    fn new_at(now: Instant) -> AuditBudget {
        AuditBudget {
            records: BUDGET_RECORDS_BURST,
            bytes: BUDGET_BYTES_BURST,
            last: now,
            over: false,
        }
    }

    fn refill_at(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.records = (self.records + secs * BUDGET_RECORDS_PER_S).min(BUDGET_RECORDS_BURST);
        self.bytes = (self.bytes + secs * BUDGET_BYTES_PER_S).min(BUDGET_BYTES_BURST);
    }

    /// Spends a record of about `bytes` (the bucket may go below empty: the record is made).
    fn charge(&mut self, bytes: usize) {
        self.charge_at(Instant::now(), bytes)
    }

    fn charge_at(&mut self, now: Instant, bytes: usize) {
        self.refill_at(now);
        self.records -= 1.0;
        self.bytes -= bytes as f64;
    }

    /// Whether the capsule is over budget; `Some(true)` the first time in an episode (say so
    /// once).
    fn exhausted(&mut self) -> Option<bool> {
        self.exhausted_at(Instant::now())
    }

    fn exhausted_at(&mut self, now: Instant) -> Option<bool> {
        self.refill_at(now);
        let (records, bytes) = if self.over {
            (BUDGET_RESUME_RECORDS, BUDGET_RESUME_BYTES)
        } else {
            (1.0, 1024.0)
        };
        if self.records >= records && self.bytes >= bytes {
            self.over = false;
            return None;
        }
        Some(!std::mem::replace(&mut self.over, true))
    }

    /// How long until an over-budget capsule is back at the resume level (at least 1 ms, at
    /// most a second): it is not read meanwhile.
    fn until_resumed(&self) -> Duration {
        let records = (BUDGET_RESUME_RECORDS - self.records) / BUDGET_RECORDS_PER_S;
        let bytes = (BUDGET_RESUME_BYTES - self.bytes) / BUDGET_BYTES_PER_S;
        Duration::from_secs_f64(records.max(bytes).clamp(0.001, 1.0))
    }
}

/// About what a record of these fields costs on disk.
fn record_cost(fields: &[&str]) -> usize {
    300 + fields.iter().map(|f| f.len().min(2048)).sum::<usize>()
}

/// A forwarded call waiting for its provider's reply.
struct Pending {
    caller: Arc<Conn>,
    call_id: u64,
    target: String,
    deadline: Instant,
}

impl Conn {
    /// Sends a frame for this capsule to read. A full queue means the capsule stopped
    /// reading: its connection is closed.
    fn push(&self, frame: Vec<u8>) -> bool {
        match self.out.send(frame) {
            Ok(()) => true,
            Err(SendError::Full) => {
                self.stalled.notify_one();
                false
            }
            Err(SendError::Closed) => false,
        }
    }

    /// Sends a frame this capsule caused itself (a reply to its own request), waiting for room:
    /// a capsule that floods without reading slows only its own reader. One that has not read
    /// for the outbox's stall time is stalled: its connection is closed.
    pub(super) async fn push_wait(&self, frame: Vec<u8>) {
        if self.out.send_wait(frame).await == Err(SendError::Full) {
            self.stalled.notify_one();
        }
    }

    /// One of this capsule's calls is answered (or failed): it may make another.
    fn call_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A route: a namespace pattern served by one connection.
pub struct Route {
    pub pattern: String,
    pub classification: Classification,
    pub conn: Arc<Conn>,
}

/// Where to say that the capsule is ready (its hello arrived), and since when it was starting:
/// the cold start an operator waits for, in the capsule's log.
pub struct Ready {
    pub since: Instant,
    pub log: Arc<super::logs::CapsuleLog>,
    /// A detached `elastos run` waiting for the hello.
    pub watch: super::capsule::StartWatch,
}

/// Serves one capsule socket until it closes. Returns the reason it ended.
pub async fn serve(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    stream: UnixStream,
    ready: Ready,
) -> String {
    let (rd, wr) = stream.into_split();
    let conn = Arc::new(Conn {
        peer: peer.clone(),
        out: Outbox::new(wr),
        pending: Mutex::new(HashMap::new()),
        next_incoming: AtomicU64::new(1),
        in_flight: AtomicUsize::new(0),
        calls: shared.conns.counter(&peer.name),
        stalled: Notify::new(),
        budget: Mutex::new(AuditBudget::new()),
        asking: AtomicUsize::new(0),
    });
    let writer = tokio::spawn({
        let conn = conn.clone();
        async move { conn.out.write_queued().await }
    });
    shared.conns.insert(&peer.name, conn.clone());
    // Buffered: under load one read brings several frames.
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let why = tokio::select! {
        why = read_loop(&shared, &conn, &mut rd, &ready) => why,
        () = conn.stalled.notified() => {
            let why = format!(
                "`{}` stopped reading its socket ({} frames waiting); connection closed",
                peer.name,
                super::outbox::MAX_QUEUED
            );
            shared.audit_now(peer.actor(), "wire.stalled", "", Decision::Denied, &why, None);
            why
        }
    };
    conn.out.close();
    // Whatever this capsule served is gone; whoever waits on it hears so at once.
    shared
        .routes
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| !Arc::ptr_eq(&r.conn, &conn));
    let pending: Vec<_> = conn
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, p)| p)
        .collect();
    for p in pending {
        shared.pending_done();
        answer_error(
            &p.caller,
            p.call_id,
            Status::Unavailable,
            &format!("provider `{}` went away", peer.name),
        );
        p.caller.call_done();
    }
    shared.conns.remove(&peer.name, &conn);
    // A shell that goes: what waited on it, prompts included, is denied `policy unavailable`.
    if shared.shell.is_shell(&conn) {
        shared.prompts.withdraw_all();
    }
    shared.shell.detach(&conn);
    // Its prompts are withdrawn, and what it was allowed once ends with it.
    let once = shared.prompts.gone(&conn);
    if !once.is_empty() {
        let revoked = {
            let mut authority = shared.authority.lock().unwrap_or_else(|e| e.into_inner());
            once.iter()
                .map(|id| (id, authority.revoke(id)))
                .map(|(id, r)| (id.to_string(), r.map_err(|e| e.to_string())))
                .collect::<Vec<_>>()
        };
        for (id, r) in revoked {
            let (decision, why) = match r {
                Ok(_) => (
                    Decision::Info,
                    "allowed once: ends with its capsule instance".to_string(),
                ),
                Err(e) => (
                    Decision::Denied,
                    format!("allowed once, but could not be revoked: {e}"),
                ),
            };
            shared
                .audit_sync(
                    "supervisor",
                    "token.revoke",
                    peer.actor(),
                    decision,
                    &why,
                    Some(id),
                )
                .await;
        }
    }
    writer.abort();
    why
}

async fn read_loop(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    ready: &Ready,
) -> String {
    let max = wire::MAX_FRAME;
    let mut greeted = false;
    let mut batch = Batch::default();
    // One aligned buffer for every frame of this connection, decoded in place.
    let mut body = wire::FrameBuf::new();
    loop {
        // Whatever this read brought is handled: send it before waiting for the socket again.
        if !whole_frame_buffered(rd.buffer()) || batch.is_full() {
            batch.flush(shared);
        }
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            return "socket closed".into();
        }
        let len = u32::from_le_bytes(len);
        if len > max {
            let why = format!("frame of {len} bytes exceeds the limit of {max}; connection closed");
            shared.audit_now(
                conn.peer.actor(),
                "wire.oversized",
                "",
                Decision::Denied,
                &why,
                None,
            );
            return why;
        }
        if rd.read_exact(body.prepare(len as usize)).await.is_err() {
            return "socket closed inside a frame".into();
        }
        let msg = wire::decode(body.bytes());
        let parsed = parse(&msg);
        // Only calls and replies join the batch; anything else may wait, so first send it.
        if !matches!(parsed, Parsed::Call(..) | Parsed::Reply(..)) {
            batch.flush(shared);
        }
        // Over its audit budget: what would be recorded is answered `busy` instead.
        // (A capsule's first hello is free; a second is a malformed frame like any other.)
        let first_hello = !greeted && matches!(parsed, Parsed::Hello(_));
        // Replies and the shell's answers answer what the supervisor itself asked: never
        // throttled (a fault among them is charged when it is recorded, below).
        if !matches!(parsed, Parsed::Reply(..) | Parsed::PolicyAnswer { .. }) && !first_hello {
            let exhausted = conn
                .budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .exhausted();
            if let Some(first) = exhausted {
                batch.flush(shared);
                over_budget(shared, conn, &parsed, first).await;
                // And it is not read again until its budget has refilled: a flood costs the
                // supervisor one frame per pause, not all the CPU it can send for.
                let pause = conn
                    .budget
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .until_resumed();
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        let cost = match &parsed {
            _ if first_hello => None,
            // Before its hello, every frame is refused and recorded.
            _ if !greeted => Some(record_cost(&[])),
            Parsed::Hello(_) => Some(record_cost(&[])),
            Parsed::RequestToken {
                resource, reason, ..
            } => Some(record_cost(&[resource, reason])),
            Parsed::Serve { pattern, .. } => Some(record_cost(&[pattern])),
            Parsed::PolicyLoaded(_) => Some(record_cost(&[])),
            Parsed::Malformed(why) => Some(record_cost(&[why])),
            Parsed::Call(_, Err(e)) => Some(record_cost(&[e])),
            _ => None,
        };
        if let Some(cost) = cost {
            conn.budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .charge(cost);
        }
        if !greeted {
            match parsed {
                Parsed::Hello(v) if v == versions::WIRE => {
                    greeted = true;
                    let frame = {
                        let mut m = Builder::new_default();
                        let mut w = m.init_root::<frame::Builder>().init_welcome();
                        w.set_version(versions::WIRE);
                        w.set_name(&conn.peer.name);
                        w.set_cid(&conn.peer.cid);
                        w.set_max_frame(max);
                        wire::encode(&m)
                    };
                    send_back(conn, frame).await;
                    ready.log.event(&format!(
                        "ready on its socket {:.2} ms after spawn",
                        ready.since.elapsed().as_secs_f64() * 1000.0
                    ));
                    ready.watch.tell(super::capsule::StartOutcome::Hello);
                    if shared.config.policy.decider == Decider::Shell
                        && conn.peer.name == shared.config.policy.shell
                    {
                        become_shell(shared, conn).await;
                    }
                }
                Parsed::Hello(v) => {
                    let why = format!(
                        "wire protocol version {v} is unknown (this supervisor speaks {})",
                        versions::WIRE
                    );
                    answer_back(conn, 0, Status::BadRequest, &why).await;
                    shared.audit_now(
                        conn.peer.actor(),
                        "wire.hello",
                        "",
                        Decision::Denied,
                        &why,
                        None,
                    );
                    return why;
                }
                Parsed::Malformed(why) => malformed(shared, conn, &why).await,
                _ => malformed(shared, conn, "the first frame must be a hello").await,
            }
            continue;
        }
        match parsed {
            Parsed::Call(id, Ok(call)) => {
                // Bounded in flight: beyond the limit, a clear `busy` and no allocation.
                if conn.in_flight.load(Ordering::Relaxed) >= shared.config.supervisor.max_in_flight
                {
                    batch.flush(shared);
                    answer_back(
                        conn,
                        id,
                        Status::Busy,
                        "too many calls in flight; retry later",
                    )
                    .await;
                    continue;
                }
                conn.in_flight.fetch_add(1, Ordering::Relaxed);
                conn.calls.fetch_add(1, Ordering::Relaxed);
                handle_call(shared, conn, id, call, &mut batch);
            }
            Parsed::Call(id, Err(e)) => {
                batch.flush(shared);
                shared.audit_now(conn.peer.actor(), "call", "", Decision::Denied, &e, None);
                answer_back(conn, id, Status::BadRequest, &e).await;
            }
            Parsed::Reply(id, reply) => {
                let waiting = conn
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                // None: answered after its deadline (the caller heard `timeout`), or a made-up id.
                if let Some(p) = waiting {
                    shared.pending_done();
                    let status = if reply.status == Status::Ok {
                        Status::Ok
                    } else {
                        Status::ProviderError
                    };
                    let _ = batch.add_with(&p.caller, None, |out| {
                        answer_into(out, p.call_id, status, &reply.message, reply.payload);
                        Ok::<(), ()>(())
                    });
                    p.caller.call_done();
                }
            }
            Parsed::RequestToken {
                id,
                resource,
                actions,
                reason,
                ttl,
            } if shared.config.policy.decider == Decider::Shell => {
                // The shell, and perhaps a person, decide: in a task of its own, so that this
                // capsule's other frames are read meanwhile; a few at a time.
                if conn.asking.fetch_add(1, Ordering::Relaxed) >= shell::MAX_ASKING {
                    conn.asking.fetch_sub(1, Ordering::Relaxed);
                    token_busy(
                        conn,
                        id,
                        "too many token requests wait for a decision; retry later",
                    )
                    .await;
                    continue;
                }
                let (shared, conn) = (shared.clone(), conn.clone());
                tokio::spawn(async move {
                    request_token(&shared, &conn, id, &resource, actions, &reason, ttl).await;
                    conn.asking.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Parsed::RequestToken {
                id,
                resource,
                actions,
                reason,
                ttl,
            } => request_token(shared, conn, id, &resource, actions, &reason, ttl).await,
            Parsed::Serve { id, pattern, token } => {
                serve_namespace(shared, conn, id, &pattern, &token).await
            }
            Parsed::PolicyAnswer {
                id,
                answer,
                explanation,
                rule,
            } => {
                let accepted = answer.and_then(|answer| {
                    shared.shell.answered(
                        conn,
                        &id,
                        shell::Answered {
                            answer,
                            explanation,
                            rule,
                        },
                    )
                });
                if let Err(why) = accepted {
                    // Recorded within the shell's audit budget: a shell flooding made-up
                    // answers costs the log no more than any capsule's flood.
                    let over = {
                        let mut budget = conn.budget.lock().unwrap_or_else(|e| e.into_inner());
                        budget.charge(record_cost(&[&why]));
                        budget.exhausted().is_some()
                    };
                    if !over {
                        shell_fault(shared, conn, &why).await;
                    }
                }
            }
            Parsed::PolicyLoaded(result) => {
                if !shared.shell.is_shell(conn) {
                    shell_fault(
                        shared,
                        conn,
                        "a policyLoaded from a capsule that is not the node's shell",
                    )
                    .await;
                    continue;
                }
                let (decision, why) = match &result {
                    Ok(rules) => (
                        Decision::Info,
                        format!("the shell took the node's policy ({} rule(s))", rules.len()),
                    ),
                    Err((line, column, message)) => (
                        Decision::Denied,
                        format!("the shell refused the node's policy at {line}:{column}: {message}; the policy it had stays"),
                    ),
                };
                shared
                    .audit_sync(conn.peer.actor(), "policy.load", "", decision, &why, None)
                    .await;
                // Before the reload is answered: `elastos policy reload` returns once what the
                // rules gone granted is revoked.
                if let Ok(rules) = &result {
                    revoke_by_rules_gone(shared, rules).await;
                }
                shared
                    .shell
                    .loaded(result.map(|_| ()).map_err(|_| why.clone()));
            }
            Parsed::Hello(_) => malformed(shared, conn, "hello sent twice").await,
            Parsed::Malformed(why) => malformed(shared, conn, &why).await,
        }
    }
}

/// Where a `token.grant` record names the rule of the shell's that allowed it, and the token's
/// expiry (unix seconds): `…; rule ID until EXPIRY`.
const RULE_MARK: &str = "; rule ";

/// The shell took a policy with `rules`: every unexpired token minted under a rule not among
/// them is revoked, each recorded. The first time, tokens minted by earlier runs of the
/// supervisor are read back from the audit log's last hour (no token lives longer).
async fn revoke_by_rules_gone(shared: &Arc<Shared>, rules: &[String]) {
    let now = now_unix();
    if shared.shell.first_recovery() {
        let since =
            std::time::SystemTime::now() - elastos::ceilings::MAX_TTL - Duration::from_secs(60);
        match elastos::audit::records_since(&shared.home.audit_dir(), since) {
            Ok(records) => {
                for rec in records {
                    let found = (rec.action == "token.grant")
                        .then(|| rec.reason.rsplit_once(RULE_MARK))
                        .flatten()
                        .and_then(|(_, r)| r.split_once(" until "))
                        .and_then(|(rule, until)| Some((rule, until.parse::<i64>().ok()?)))
                        .zip(rec.token.as_deref().and_then(|t| TokenId::parse(t).ok()));
                    if let Some(((rule, expiry), token)) = found {
                        shared.shell.track(rule, token, expiry, now);
                    }
                }
            }
            Err(e) => tracing::warn!("reading back the tokens minted by rule: {e}"),
        }
    }
    let gone = shared.shell.minted_under_rules_gone(rules, now);
    if gone.is_empty() {
        return;
    }
    let revoked: Vec<(String, TokenId, Result<usize, String>)> = {
        let mut authority = shared.authority.lock().unwrap_or_else(|e| e.into_inner());
        // Read back from the log, some were revoked already (by an earlier reload).
        let gone: Vec<(String, TokenId)> = gone
            .into_iter()
            .filter(|(_, t)| !authority.is_revoked(t))
            .collect();
        gone.into_iter()
            .map(|(rule, t)| {
                let r = authority.revoke(&t).map_err(|e| e.to_string());
                (rule, t, r)
            })
            .collect()
    };
    for (rule, token, r) in revoked {
        let (decision, why) = match r {
            Ok(_) => (
                Decision::Info,
                format!("the policy the shell took no longer has rule {rule}, which allowed it"),
            ),
            Err(e) => (
                Decision::Denied,
                format!(
                    "rule {rule} is gone from the policy, but its token could not be revoked: {e}"
                ),
            ),
        };
        shared
            .audit_sync(
                "supervisor",
                "token.revoke",
                &token.to_string(),
                decision,
                &why,
                Some(token.to_string()),
            )
            .await;
    }
}

/// The capsule the node names as its shell said hello: it becomes the shell if it may, and is
/// handed the node's policy.
async fn become_shell(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    let peer = &conn.peer;
    let refusal = if !peer.first_party {
        Some(format!(
            "`{}` is named as the node's shell but its publisher {} is neither this node nor a first-party publisher; it is not asked to decide anything",
            peer.name, peer.publisher
        ))
    } else if !shared
        .config
        .policy
        .is_the_shell(&peer.name, &peer.publisher, peer.first_party)
    {
        Some(format!(
            "`{}` is named as the node's shell but its publisher {} is not the one the configuration names ([policy] shell_publisher); it is not asked to decide anything",
            peer.name, peer.publisher
        ))
    } else if peer.manifest.requested_net() == Some("host") {
        Some(format!(
            "`{}` is named as the node's shell but asks for host://net, which a shell may not hold; it is not asked to decide anything",
            peer.name
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        shared
            .audit_sync(
                peer.actor(),
                "shell.refused",
                "",
                Decision::Denied,
                &why,
                None,
            )
            .await;
        return;
    }
    match shell::policy_text(&shared.home).and_then(|(text, source)| {
        shell::load_frame(&text)
            .map(|f| (f, source))
            .map_err(|e| format!("encoding the policy: {e}"))
    }) {
        Ok((frame, source)) => {
            // Who decides for the node is recorded, and a change of it is audited.
            let seen = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shell_seen(elastos::authority::ShellIdentity {
                    name: peer.name.clone(),
                    publisher: peer.publisher.clone(),
                    cid: peer.cid.clone(),
                });
            let change = match seen {
                Ok(None) => None,
                Ok(Some(None)) => Some("the node's first shell".to_string()),
                Ok(Some(Some(before))) => {
                    Some(format!("the node's shell changed: it was {before}"))
                }
                Err(e) => Some(format!("the node's shell could not be recorded: {e}")),
            };
            if let Some(why) = change {
                shared
                    .audit_sync(
                        peer.actor(),
                        "shell.changed",
                        &peer.cid,
                        Decision::Info,
                        &why,
                        None,
                    )
                    .await;
            }
            shared.shell.attach(conn.clone());
            shared
                .audit_sync(
                    peer.actor(),
                    "shell.attach",
                    "",
                    Decision::Info,
                    &format!("deciding for the node, with {source}"),
                    None,
                )
                .await;
            conn.push_wait(frame).await;
        }
        Err(why) => {
            shared
                .audit_sync(
                    peer.actor(),
                    "shell.refused",
                    "",
                    Decision::Denied,
                    &format!("the node's policy could not be handed to the shell: {why}"),
                    None,
                )
                .await;
        }
    }
}

async fn shell_fault(shared: &Shared, conn: &Conn, why: &str) {
    shared
        .audit_sync(
            conn.peer.actor(),
            "shell.fault",
            "",
            Decision::Denied,
            why,
            None,
        )
        .await;
}

/// Answers a token request `busy`, with why.
async fn token_busy(conn: &Conn, id: u64, why: &str) {
    let frame = {
        let mut m = Builder::new_default();
        let mut reply = m.init_root::<frame::Builder>().init_token_reply();
        reply.set_id(id);
        reply.set_status(Status::Busy);
        reply.set_message(why);
        wire::encode(&m)
    };
    send_back(conn, frame).await;
}

/// Sends a reply to the capsule's own request (see [`Conn::push_wait`]).
/// Tells a capsule that its token request `id` waits for the person; the reply follows.
pub async fn send_pending(conn: &Conn, id: u64) {
    let frame = {
        let mut m = Builder::new_default();
        let mut reply = m.init_root::<frame::Builder>().init_token_reply();
        reply.set_id(id);
        reply.set_status(Status::Pending);
        wire::encode(&m)
    };
    send_back(conn, frame).await;
}

async fn send_back(conn: &Conn, frame: Result<Vec<u8>, FrameError>) {
    if let Ok(bytes) = frame.and_then(fits) {
        conn.push_wait(bytes).await;
    }
}

/// A frame the supervisor sends obeys the same limit it enforces on capsules.
fn fits(frame: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(frame.len().saturating_sub(4)).unwrap_or(u32::MAX);
    if len > wire::MAX_FRAME {
        return Err(FrameError::TooLong {
            len,
            max: wire::MAX_FRAME,
        });
    }
    Ok(frame)
}

fn answer_error(conn: &Conn, id: u64, status: Status, message: &str) {
    answer(conn, id, status, message, &[]);
}

/// An answer another capsule (or the deadline) caused: never waits.
fn answer(conn: &Conn, id: u64, status: Status, message: &str, payload: &[u8]) {
    if let Some(frame) = answer_frame(id, status, message, payload) {
        conn.push(frame);
    }
}

/// An answer to the capsule's own frame: waits for room rather than dropping it.
async fn answer_back(conn: &Conn, id: u64, status: Status, message: &str) {
    if let Some(frame) = answer_frame(id, status, message, &[]) {
        conn.push_wait(frame).await;
    }
}

fn answer_frame(id: u64, status: Status, message: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    answer_into(&mut out, id, status, message, payload);
    (!out.is_empty()).then_some(out)
}

/// Appends an answer frame to `out`.
fn answer_into(out: &mut Vec<u8>, id: u64, status: Status, message: &str, payload: &[u8]) {
    let encode = |out: &mut Vec<u8>, status: Status, message: &str, payload: &[u8]| {
        let mut m = wire::builder_for(message.len() + payload.len());
        let mut a = m.init_root::<frame::Builder>().init_answer();
        a.set_id(id);
        a.set_status(status);
        a.set_message(message);
        a.set_payload(payload);
        wire::encode_into(&m, out, wire::MAX_FRAME)
    };
    if let Err(e) = encode(out, status, message, payload) {
        // A provider's payload that, with the answer around it, exceeds a frame: the caller
        // hears why instead of waiting for its deadline.
        let why = format!("the answer does not fit one frame ({e}); use a stream");
        let _ = encode(out, Status::ProviderError, &why, &[]);
    }
}

async fn malformed(shared: &Shared, conn: &Conn, why: &str) {
    let why = format!("malformed frame: {why}");
    // The connection goes on; denials are coalesced by the audit log under a flood.
    shared.audit_now(
        conn.peer.actor(),
        "wire.malformed",
        "",
        Decision::Denied,
        &why,
        None,
    );
    answer_back(conn, 0, Status::BadRequest, &why).await;
}

/// A call from `conn`: checked, audited and forwarded without waiting, unless a durable
/// record must come first (a denial, a max-uses token, a strict node): then a task of its own
/// waits for the audit log and the reader goes on.
fn handle_call(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    id: u64,
    call: CallView<'_>,
    batch: &mut Batch,
) {
    let actor = conn.peer.actor();
    let route = shared.route_for(call.target);
    let classification = route
        .as_ref()
        .map_or(Classification::Internal, |r| r.classification);
    let req = CallRequest {
        caller_name: &conn.peer.name,
        caller_cid: Some(&conn.peer.cid),
        resource: call.target,
        action: call.action,
        classification,
    };
    // The token's bytes alone (size, decoding, a known signer, the signature) are checked
    // before the authority's lock is taken: a flood of tokens to verify holds up no other
    // capsule's checks. The rest runs under the lock, counting nothing yet.
    let checked = shared.verifier.verify(call.token).and_then(|verified| {
        let mut authority = shared.authority.lock().unwrap_or_else(|e| e.into_inner());
        authority.check_verified(verified, &req, now_unix(), false)
    });
    let token = match checked {
        Ok(t) => t,
        Err(denial) => {
            let why = format!("{}: {}", denial.check.as_str(), denial.reason);
            deny_call(shared, conn, id, call.target, why, call.token);
            return;
        }
    };
    let token_id = Some(token.id.to_string());
    let Some(route) = route else {
        let why = format!("no capsule serves `{}`", call.target);
        shared.audit_now(actor, "call", call.target, Decision::Denied, &why, token_id);
        answer_error(conn, id, Status::NotFound, &why);
        conn.call_done();
        return;
    };
    let reason = format!("{} via {}", call.action, route.conn.peer.name);
    // Calls under a max-uses token, and every call on a strict node, are durable first.
    if token.limited() || shared.config.audit.strict {
        let limited = token.limited().then(|| call.token.to_vec());
        let (shared, conn, call) = (shared.clone(), conn.clone(), call.owned());
        tokio::spawn(async move {
            let actor = conn.peer.actor();
            // The use is counted durably (an fsync) on a blocking thread, not on a worker
            // that serves other capsules' calls; checked again there, since another call may
            // have used the last one meanwhile.
            if let Some(bytes) = limited {
                let counted = {
                    let (shared, conn, target) =
                        (shared.clone(), conn.clone(), call.target.clone());
                    let action = call.action;
                    tokio::task::spawn_blocking(move || {
                        let verified = shared.verifier.verify(&bytes)?;
                        let req = CallRequest {
                            caller_name: &conn.peer.name,
                            caller_cid: Some(&conn.peer.cid),
                            resource: &target,
                            action,
                            classification,
                        };
                        let (_, staged) = shared
                            .authority
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .check_counting(verified, &req, now_unix())?;
                        // The fsync, after the authority's lock is released: other
                        // capsules' checks go on meanwhile.
                        match staged {
                            Some(s) => s.make_durable().map_err(|e| {
                                elastos::token::Denial::new(
                                    elastos::token::Check::Uses,
                                    format!("this use could not be recorded durably ({e}); the call is refused"),
                                )
                            }),
                            None => Ok(()),
                        }
                    })
                    .await
                };
                match counted {
                    Ok(Ok(())) => {}
                    Ok(Err(denial)) => {
                        let why = format!("{}: {}", denial.check.as_str(), denial.reason);
                        let token = token_id.clone();
                        deny_call_with(&shared, &conn, id, &call.target, &why, token).await;
                        return;
                    }
                    Err(_) => {
                        answer_error(
                            &conn,
                            id,
                            Status::Unavailable,
                            "the use could not be counted",
                        );
                        conn.call_done();
                        return;
                    }
                }
            }
            if shared
                .audit_sync(
                    actor,
                    "call",
                    &call.target,
                    Decision::Allowed,
                    &reason,
                    token_id,
                )
                .await
            {
                forward(&shared, &conn, id, call.view(), &route, None);
            } else {
                answer_error(&conn, id, Status::Unavailable, "audit unavailable");
                conn.call_done();
            }
        });
        return;
    }
    if !shared.audit.is_available() {
        answer_error(conn, id, Status::Unavailable, "audit unavailable");
        conn.call_done();
        return;
    }
    // Answered at once; the record (a token's first use exactly, the calls alike after it
    // summed up per interval) is made durable by group commit within 10 ms.
    shared.audit.submit_call(
        Event {
            actor: conn.peer.actor_shared(),
            action: "call".into(),
            resource: call.target.to_string(),
            decision: Decision::Allowed,
            reason,
            token: token_id,
        },
        id,
    );
    forward(shared, conn, id, call, &route, Some(batch));
}

/// A frame from a capsule over its audit budget: answered `busy`, recorded only once per
/// episode (`first`).
async fn over_budget(shared: &Shared, conn: &Conn, parsed: &Parsed<'_>, first: bool) {
    let why = format!(
        "over its audit budget ({BUDGET_RECORDS_PER_S} records and {} KiB a second, {BUDGET_RECORDS_BURST} at once): answered busy, not recorded, until it recovers",
        BUDGET_BYTES_PER_S / 1024.0
    );
    if first {
        shared.audit_now(
            conn.peer.actor(),
            "audit.budget",
            "",
            Decision::Denied,
            &why,
            None,
        );
    }
    let msg = format!("busy: {why}");
    match parsed {
        Parsed::Call(id, _) => answer_back(conn, *id, Status::Busy, &msg).await,
        Parsed::RequestToken { id, .. } => token_busy(conn, *id, &msg).await,
        Parsed::Serve { id, .. } => {
            let frame = {
                let mut m = Builder::new_default();
                let mut reply = m.init_root::<frame::Builder>().init_serve_reply();
                reply.set_id(*id);
                reply.set_status(Status::Busy);
                reply.set_message(&msg);
                wire::encode(&m)
            };
            send_back(conn, frame).await;
        }
        _ => {}
    }
}

/// Denies a call in a task of its own: the denial is durable before the answer goes out.
fn deny_call(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    id: u64,
    target: &str,
    why: String,
    token: &[u8],
) {
    conn.budget
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .charge(record_cost(&[target, &why]));
    let (shared, conn, target) = (shared.clone(), conn.clone(), target.to_string());
    let token = elastos::token::audit_ref(token);
    tokio::spawn(async move { deny_call_with(&shared, &conn, id, &target, &why, token).await });
}

async fn deny_call_with(
    shared: &Shared,
    conn: &Conn,
    id: u64,
    target: &str,
    why: &str,
    token: Option<String>,
) {
    let actor = conn.peer.actor();
    if shared
        .audit_sync(actor, "call", target, Decision::Denied, why, token)
        .await
    {
        answer_back(conn, id, Status::Denied, &format!("denied: {why}")).await;
    } else {
        answer_back(conn, id, Status::Unavailable, "audit unavailable").await;
    }
    conn.call_done();
}

/// Hands an allowed call to its provider (at once, or in `batch`); the provider's reader
/// answers the caller.
fn forward(
    shared: &Shared,
    conn: &Arc<Conn>,
    id: u64,
    call: CallView<'_>,
    route: &Route,
    mut batch: Option<&mut Batch>,
) {
    let max = shared.config.supervisor.call_deadline;
    let deadline = if call.deadline_ms == 0 {
        max
    } else {
        Duration::from_millis(u64::from(call.deadline_ms)).min(max)
    };
    let provider = &route.conn;
    provider.calls.fetch_add(1, Ordering::Relaxed);
    let incoming_id = provider.next_incoming.fetch_add(1, Ordering::Relaxed);
    let peer = &conn.peer;
    let mut m = wire::builder_for(
        peer.name.len()
            + peer.cid.len()
            + peer.publisher.len()
            + call.target.len()
            + call.payload.len(),
    );
    {
        let mut inc = m.init_root::<frame::Builder>().init_incoming();
        inc.set_id(incoming_id);
        {
            let mut caller = inc.reborrow().init_caller();
            caller.set_name(&peer.name);
            caller.set_cid(&peer.cid);
            caller.set_publisher(&peer.publisher);
        }
        inc.set_action(token_capnp::Action::from(call.action));
        inc.set_resource(call.target);
        inc.set_payload(call.payload);
        inc.set_deadline_ms(u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX));
    }
    // Encoded straight into the batch's buffer for this provider, or a buffer of its own.
    let encode = |out: &mut Vec<u8>| wire::encode_into(&m, out, wire::MAX_FRAME);
    let mut own = Vec::new();
    let encoded = match batch.as_deref_mut() {
        Some(b) => b.add_with(provider, Some(incoming_id), encode),
        None => encode(&mut own),
    };
    if let Err(e) = encoded {
        let why = format!(
            "the call does not fit one frame with its caller's details ({e}); use a stream"
        );
        answer_error(conn, id, Status::BadRequest, &why);
        conn.call_done();
        return;
    }
    // Registered before it is sent: the reply may come back before `send` returns.
    provider
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            incoming_id,
            Pending {
                caller: conn.clone(),
                call_id: id,
                target: call.target.to_string(),
                deadline: Instant::now() + deadline,
            },
        );
    shared.pending_added();
    if batch.is_none() {
        deliver(shared, provider, own, &[incoming_id], false);
    }
}

/// Writes frames into `to`'s outbox. If it cannot take them, the calls among them
/// (`forwarded`) are taken back and their callers answered; answers to a capsule that stopped
/// reading them close its connection.
fn deliver(shared: &Shared, to: &Conn, frames: Vec<u8>, forwarded: &[u64], answers: bool) {
    let Err(e) = to.out.send(frames) else {
        return;
    };
    if e == SendError::Full && answers {
        to.stalled.notify_one();
    }
    // Not a stall for a provider: a provider with a full queue is busy.
    let (status, why) = match e {
        SendError::Full => (
            Status::Busy,
            format!("`{}` has too many calls queued; retry later", to.peer.name),
        ),
        SendError::Closed => (Status::Unavailable, format!("`{}` went away", to.peer.name)),
    };
    for id in forwarded {
        let taken = to
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // None: the provider's end already answered the caller.
        if let Some(p) = taken {
            shared.pending_done();
            answer_error(&p.caller, p.call_id, status, &why);
            p.caller.call_done();
        }
    }
}

/// Frames a reader produced from one read's worth of input, by destination: written with one
/// `sendmsg` per destination when the input is used up. With many calls in flight this turns
/// a send (and, on a busy core, a context switch to the receiver) per frame into one per batch.
#[derive(Default)]
pub struct Batch {
    out: Vec<Outgoing>,
}

struct Outgoing {
    to: Arc<Conn>,
    frames: Vec<u8>,
    forwarded: Vec<u64>,
    answers: bool,
}

/// Flushed before it grows past this, so one batch never holds much memory.
const BATCH_BYTES: usize = 256 * 1024;

impl Batch {
    /// Lets `encode` append one frame for `to` (a call forwarded under `forwarded`, or an
    /// answer); an `encode` that fails must leave the buffer as it was.
    fn add_with<E>(
        &mut self,
        to: &Arc<Conn>,
        forwarded: Option<u64>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let entry = match self.out.iter_mut().position(|o| Arc::ptr_eq(&o.to, to)) {
            Some(i) => &mut self.out[i],
            None => {
                self.out.push(Outgoing {
                    to: to.clone(),
                    frames: Vec::new(),
                    forwarded: Vec::new(),
                    answers: false,
                });
                let last = self.out.len() - 1;
                &mut self.out[last]
            }
        };
        encode(&mut entry.frames)?;
        match forwarded {
            Some(id) => entry.forwarded.push(id),
            None => entry.answers = true,
        }
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.out.iter().map(|o| o.frames.len()).sum::<usize>() >= BATCH_BYTES
    }

    fn flush(&mut self, shared: &Shared) {
        for o in self.out.drain(..).filter(|o| !o.frames.is_empty()) {
            deliver(shared, &o.to, o.frames, &o.forwarded, o.answers);
        }
    }
}

/// Whether `buf` starts with a whole frame: then the next read will not wait for the socket.
fn whole_frame_buffered(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf.len() - 4 >= u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

/// Answers, with `timeout`, every forwarded call whose deadline passed. Sleeps while no call
/// waits anywhere, so an idle supervisor does not wake up.
pub async fn sweep_deadlines(shared: Arc<Shared>) {
    const TICK: Duration = Duration::from_millis(10);
    loop {
        if shared.pending.load(Ordering::Acquire) == 0 {
            shared.pending_wake.notified().await;
        }
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        for provider in shared.conns.live() {
            let expired: Vec<Pending> = {
                let mut pending = provider.pending.lock().unwrap_or_else(|e| e.into_inner());
                let ids: Vec<u64> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| pending.remove(id)).collect()
            };
            for p in expired {
                shared.pending_done();
                let why = format!("`{}` did not answer in time", provider.peer.name);
                shared.audit_now(
                    p.caller.peer.actor(),
                    "call.timeout",
                    &p.target,
                    Decision::Info,
                    &why,
                    None,
                );
                answer_error(&p.caller, p.call_id, Status::Timeout, &why);
                p.caller.call_done();
            }
        }
    }
}

/// What a token request came to, before it is put in a frame (builders must not live across
/// an await: they are not `Send`).
enum TokenOutcome {
    Granted {
        bytes: Vec<u8>,
        expiry: i64,
        resource: String,
        actions: ActionSet,
    },
    Refused(Status, String),
}

async fn request_token(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    id: u64,
    resource: &str,
    actions: ActionSet,
    reason: &str,
    ttl: Duration,
) {
    let actor = conn.peer.actor();
    let mut lasts = Lasts::Ttl;
    let (decision, decider) = match shared.config.policy.decider {
        // The provide capability stays a supervisor rule (first party, listed in `provides`),
        // and so does everything the development policy decides.
        Decider::Development => (
            policy::decide(
                &conn.peer.manifest,
                conn.peer.first_party,
                resource,
                actions,
                ttl,
            ),
            policy::NAME,
        ),
        // What `elastos policy explain` says too: the same check, before the shell is asked.
        Decider::Shell => match before_asking(
            &conn.peer.manifest,
            conn.peer.first_party,
            resource,
            actions,
            ttl,
        ) {
            // The provide capability is the supervisor's own rule, not the development policy's.
            Err(Unasked::Provide(grant)) => (grant, "provide"),
            Err(unasked) => (unasked.grant(&conn.peer.name, resource, actions), "shell"),
            Ok(covering) => {
                let (grant, how_long) =
                    ask_shell(shared, conn, id, resource, actions, ttl, covering).await;
                lasts = how_long;
                (grant, "shell")
            }
        },
    };
    let outcome = match decision {
        Grant::Allow {
            resource: granted,
            actions,
            ttl,
            classification,
        } => {
            let issued = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .issue(IssueRequest {
                    subject_name: conn.peer.name.clone(),
                    subject_cid: Some(conn.peer.cid.clone()),
                    resource: granted.clone(),
                    actions,
                    not_before: None,
                    ttl,
                    max_uses: 0,
                    classification,
                    delegatable: false,
                });
            match issued {
                Ok((token, text)) => {
                    // Revoking its grant revokes the token: that is recorded before it is handed
                    // out, or it is not handed out.
                    let tracked = match &lasts {
                        Lasts::Ttl => true,
                        Lasts::Instance => {
                            shared.prompts.track_once(conn, token.id);
                            true
                        }
                        Lasts::Grant(id) => shared
                            .authority
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .grant_token(id, token.id, token.expiry, now_unix())
                            .is_ok(),
                        // Durable through its record below, which names the rule: a later run
                        // of the supervisor reads it back (`recover_by_rule`).
                        Lasts::Rule(rule) => {
                            shared.shell.track(rule, token.id, token.expiry, now_unix());
                            true
                        }
                    };
                    let why = match &lasts {
                        Lasts::Rule(rule) => format!(
                            "policy={decider}: {reason}{RULE_MARK}{rule} until {}",
                            token.expiry
                        ),
                        _ => format!("policy={decider}: {reason}"),
                    };
                    let audited = shared
                        .audit_sync(
                            actor,
                            "token.grant",
                            &granted,
                            Decision::Allowed,
                            &why,
                            Some(token.id.to_string()),
                        )
                        .await;
                    match elastos::token::text_to_bytes(&text) {
                        Ok(_) if !tracked => TokenOutcome::Refused(
                            Status::Unavailable,
                            "the token could not be recorded under its standing grant (is the disk full?)".into(),
                        ),
                        Ok(bytes) if audited => TokenOutcome::Granted {
                            bytes,
                            expiry: token.expiry,
                            resource: granted,
                            actions,
                        },
                        Ok(_) => {
                            TokenOutcome::Refused(Status::Unavailable, "audit unavailable".into())
                        }
                        Err(e) => TokenOutcome::Refused(Status::Unavailable, e.to_string()),
                    }
                }
                Err(e) => TokenOutcome::Refused(
                    Status::Unavailable,
                    format!("the token could not be issued: {e}"),
                ),
            }
        }
        Grant::Deny(why) => {
            let why = format!("policy={decider}: {why}");
            shared
                .audit_sync(
                    actor,
                    "token.request",
                    resource,
                    Decision::Denied,
                    &why,
                    None,
                )
                .await;
            TokenOutcome::Refused(Status::Denied, why)
        }
    };
    let frame = {
        let mut m = Builder::new_default();
        let mut reply = m.init_root::<frame::Builder>().init_token_reply();
        reply.set_id(id);
        match outcome {
            TokenOutcome::Granted {
                bytes,
                expiry,
                resource,
                actions,
            } => {
                reply.set_status(Status::Ok);
                reply.set_token(&bytes);
                reply.set_expiry(expiry);
                reply.set_resource(&resource);
                let list: Vec<Action> = actions.iter().collect();
                let mut wl = reply.reborrow().init_actions(list.len() as u32);
                for (i, a) in list.into_iter().enumerate() {
                    wl.set(i as u32, token_capnp::Action::from(a));
                }
            }
            TokenOutcome::Refused(status, why) => {
                reply.set_status(status);
                reply.set_message(&why);
            }
        }
        wire::encode(&m)
    };
    send_back(conn, frame).await;
}

/// The shell's decision on a token request its manifest entry `covering` declares, held within
/// the supervisor's ceilings; a prompt is put to the person, or answered by `prompt_fallback`;
/// an answer outside the ceilings is a shell fault, audited and denied.
async fn ask_shell(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    id: u64,
    resource: &str,
    actions: ActionSet,
    ttl: Duration,
    covering: &ManifestRequest,
) -> (Grant, Lasts) {
    let ask = shell::Ask {
        name: conn.peer.name.clone(),
        cid: conn.peer.cid.clone(),
        publisher: conn.peer.publisher.clone(),
        standing: conn.peer.standing,
        resource: resource.to_string(),
        actions,
        ttl,
        covering: covering.clone(),
        dry_run: false,
    };
    decide::decide(
        shared,
        prompts::owner_of(conn),
        conn.peer.actor(),
        &ask,
        conn.peer.attached.as_ref(),
        Some((conn, id)),
    )
    .await
}

async fn serve_namespace(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    id: u64,
    pattern: &str,
    token: &[u8],
) {
    let actor = conn.peer.actor();
    let token_ref = elastos::token::audit_ref(token);
    // Checked on a blocking thread: the signature is verified before the authority's lock is
    // taken, and a max-uses token's use is made durable (an fsync) after it is released, so
    // neither holds up other capsules' checks nor a runtime worker.
    let checked = {
        let (shared, conn) = (shared.clone(), conn.clone());
        let (pattern, token) = (pattern.to_string(), token.to_vec());
        tokio::task::spawn_blocking(move || -> Result<Classification, String> {
            let classification =
                policy::may_provide(&conn.peer.manifest, conn.peer.first_party, &pattern)?;
            let req = CallRequest {
                caller_name: &conn.peer.name,
                caller_cid: Some(&conn.peer.cid),
                resource: &pattern,
                action: Action::Admin,
                classification,
            };
            let denied = |d: elastos::token::Denial| format!("{}: {}", d.check.as_str(), d.reason);
            let verified = shared.verifier.verify(&token).map_err(denied)?;
            let (_, staged) = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check_serve(verified, &req, now_unix())
                .map_err(denied)?;
            if let Some(staged) = staged {
                staged.make_durable().map_err(|e| {
                    format!(
                        "uses: this use could not be recorded durably ({e}); the grant is refused"
                    )
                })?;
            }
            Ok(classification)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the serve check failed ({e})")))
    };
    // The route is claimed only once the grant's record is durable: a namespace is never
    // served on the strength of a record that a crash or a full disk could lose.
    let outcome = match checked {
        Ok(c) => {
            let audited = shared
                .audit_sync(
                    actor,
                    "serve",
                    pattern,
                    Decision::Allowed,
                    &format!("classification {c}"),
                    token_ref.clone(),
                )
                .await;
            if audited {
                let route = Arc::new(Route {
                    pattern: pattern.to_string(),
                    classification: c,
                    conn: conn.clone(),
                });
                shared
                    .routes
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .claim(pattern, route, |r| r.conn.peer.name.clone())
                    .map_err(|why| (Status::Denied, why))
            } else {
                Err((
                    Status::Unavailable,
                    "audit unavailable: the grant could not be recorded, so it was not made; retry when the audit log is writable".to_string(),
                ))
            }
        }
        Err(why) => Err((Status::Denied, why)),
    };
    let (status, message) = match outcome {
        Ok(()) => (Status::Ok, String::new()),
        Err((status, why)) => {
            if status == Status::Denied {
                shared
                    .audit_sync(actor, "serve", pattern, Decision::Denied, &why, token_ref)
                    .await;
            }
            (status, why)
        }
    };
    let frame = {
        let mut m = Builder::new_default();
        let mut reply = m.init_root::<frame::Builder>().init_serve_reply();
        reply.set_id(id);
        reply.set_status(status);
        reply.set_message(&message);
        wire::encode(&m)
    };
    send_back(conn, frame).await;
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Audits a wire event without waiting; used where the answer does not depend on it.
impl Shared {
    pub fn audit_now(
        &self,
        actor: &str,
        action: &'static str,
        resource: &str,
        decision: Decision,
        reason: &str,
        token: Option<String>,
    ) {
        self.audit.submit(
            Event {
                actor: actor.into(),
                action: action.into(),
                resource: resource.to_string(),
                decision,
                reason: reason.to_string(),
                token,
            },
            Durability::Group,
            |_| {},
        );
    }

    /// A durable record; `false` when the audit log cannot take it (the caller must deny).
    pub async fn audit_sync(
        &self,
        actor: &str,
        action: &'static str,
        resource: &str,
        decision: Decision,
        reason: &str,
        token: Option<String>,
    ) -> bool {
        self.audit_wait(
            actor,
            action,
            resource,
            decision,
            reason,
            token,
            Durability::Sync,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit_wait(
        &self,
        actor: &str,
        action: &'static str,
        resource: &str,
        decision: Decision,
        reason: &str,
        token: Option<String>,
        durability: Durability,
    ) -> bool {
        let ev = Event {
            actor: actor.into(),
            action: action.into(),
            resource: resource.to_string(),
            decision,
            reason: reason.to_string(),
            token,
        };
        let (tx, rx) = oneshot::channel();
        self.audit.submit(ev, durability, move |r| {
            let _ = tx.send(r.is_ok());
        });
        rx.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emptied budget stays over until it has refilled to the resume level, says so once,
    /// and names the pause that gets it there.
    #[test]
    fn an_exhausted_budget_resumes_at_its_resume_level_not_at_one_record() {
        let t0 = Instant::now();
        let mut b = AuditBudget::new_at(t0);
        for _ in 0..BUDGET_RECORDS_BURST as usize {
            assert_eq!(b.exhausted_at(t0), None);
            b.charge_at(t0, 300);
        }
        assert_eq!(b.exhausted_at(t0), Some(true), "the burst is spent");
        assert_eq!(b.exhausted_at(t0), Some(false), "said once per episode");
        // Refilled past one record, still short of the resume level: still over.
        let one = Duration::from_secs_f64(2.0 / BUDGET_RECORDS_PER_S);
        assert_eq!(b.exhausted_at(t0 + one), Some(false));
        let pause = b.until_resumed();
        let want = (BUDGET_RESUME_RECORDS - 2.0) / BUDGET_RECORDS_PER_S;
        assert!(
            (pause.as_secs_f64() - want).abs() < 0.01,
            "{pause:?} against {want}"
        );
        assert_eq!(b.exhausted_at(t0 + one + pause), None, "resumed");
        // A fresh episode is said again.
        for _ in 0..BUDGET_RESUME_RECORDS as usize {
            b.charge_at(t0 + one + pause, 300);
        }
        assert_eq!(b.exhausted_at(t0 + one + pause), Some(true));
    }

    /// Reads every answer in `buf`: (id, status, message, payload length).
    fn answers(buf: &[u8]) -> Vec<(u64, Status, String, usize)> {
        let mut r = buf;
        let mut out = Vec::new();
        while let Some(body) = wire::read_frame(&mut r, u32::MAX).unwrap() {
            let msg = wire::decode(&body).unwrap();
            let f = msg.get_root::<frame::Reader>().unwrap();
            let frame::Which::Answer(a) = f.which().unwrap() else {
                panic!("not an answer")
            };
            let a = a.unwrap();
            out.push((
                a.get_id(),
                a.get_status().unwrap(),
                a.get_message().unwrap().to_string().unwrap(),
                a.get_payload().unwrap().len(),
            ));
        }
        out
    }

    #[test]
    fn answers_collect_in_one_buffer_and_one_too_big_for_a_frame_says_so() {
        let mut buf = Vec::new();
        answer_into(&mut buf, 1, Status::Ok, "", b"hello");
        answer_into(
            &mut buf,
            2,
            Status::Ok,
            "",
            &vec![0; wire::MAX_FRAME as usize],
        );
        answer_into(&mut buf, 3, Status::NotFound, "no such thing", &[]);
        let got = answers(&buf);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[0].1, got[0].3), (1, Status::Ok, 5));
        assert_eq!(
            (got[1].0, got[1].1, got[1].3),
            (2, Status::ProviderError, 0)
        );
        assert!(got[1].2.contains("does not fit one frame"), "{}", got[1].2);
        assert_eq!((got[2].0, got[2].1), (3, Status::NotFound));
        assert_eq!(got[2].2, "no such thing");
    }

    #[test]
    fn a_call_is_read_in_place_and_kept_whole_when_it_must_wait() {
        let mut m = wire::builder_for(64);
        {
            let mut c = m.init_root::<frame::Builder>().init_call();
            c.set_id(7);
            c.set_target("localhost://echo/x");
            c.set_action(token_capnp::Action::Write);
            c.set_token(b"tok");
            c.set_payload(b"payload");
            c.set_deadline_ms(250);
        }
        let frame = wire::encode(&m).unwrap();
        let mut buf = wire::FrameBuf::new();
        buf.prepare(frame.len() - 4).copy_from_slice(&frame[4..]);
        let msg = wire::decode(buf.bytes());
        let Parsed::Call(7, Ok(view)) = parse(&msg) else {
            panic!("not a call")
        };
        assert_eq!(view.target, "localhost://echo/x");
        assert_eq!(view.action, Action::Write);
        assert_eq!(view.token, b"tok");
        let owned = view.owned();
        let again = owned.view();
        assert_eq!(
            (again.target, again.payload, again.deadline_ms),
            ("localhost://echo/x", &b"payload"[..], 250)
        );
    }
}
