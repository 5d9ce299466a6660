//! The supervisor's side of the control socket: operators' requests, one per connection.
//!
//! Only a peer with the supervisor's own uid (or root) is served: the socket is 0600 already, and
//! the peer-credential check keeps that true if someone loosens the file's mode.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use elastos::audit::Decision;
use elastos::authority::IssueRequest;
use elastos::control::{
    Event, PromptDecision, Request, Response, RunRequest, RunSource, TrustKind,
};
use elastos::store::Stored;
use elastos::token::TokenId;
use elastos_schema::{ActionSet, Classification};
use nix::sys::signal::Signal;
use ractor::ActorRef;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::capsule::RestartPolicy;
use super::root::{RootMsg, RunSpec};
use super::Shared;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Operators' connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request line (an idle or half-sent one is
/// closed after this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    root: ActorRef<RootMsg>,
    down: mpsc::Sender<Duration>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let me = nix::unistd::getuid().as_raw();
        let pid = match stream.peer_cred() {
            Ok(c) if c.uid() == me || c.uid() == 0 => c.pid(),
            Ok(c) => {
                // A capsule with a uid of its own lands here; so would any other local user.
                shared.audit_now(
                    &format!("uid:{}", c.uid()),
                    "control.refused",
                    "control.sock",
                    elastos::audit::Decision::Denied,
                    &format!(
                        "peer uid {} is not the operator's ({me}): the control socket is the operator's",
                        c.uid()
                    ),
                    None,
                );
                continue;
            }
            Err(_) => continue,
        };
        // A capsule may share the operator's uid (until capsules get uids of their own), and
        // Landlock does not stop it connecting to a named socket: the operator's channel
        // refuses every process that runs under a capsule-host.
        if let Some(pid) = pid.filter(|p| *p > 0) {
            if let Some(why) = capsule_process(pid as u32) {
                shared.audit_now(
                    &format!("process:{pid}"),
                    "control.refused",
                    "control.sock",
                    elastos::audit::Decision::Denied,
                    &why,
                    None,
                );
                continue;
            }
        }
        // Bounded: each connection holds a task and its buffers until it ends.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.audit_now(
                &format!("process:{}", pid.unwrap_or(0)),
                "control.refused",
                "control.sock",
                Decision::Denied,
                &format!("{MAX_CONNECTIONS} operator connections are open already"),
                None,
            );
            tokio::spawn(async move {
                let (_, mut wr) = stream.into_split();
                let r = Response::err(format!(
                    "the supervisor serves {MAX_CONNECTIONS} control connections at once and all are in use; try again when one has finished"
                ));
                let _ = tokio::time::timeout(Duration::from_secs(1), write_line(&mut wr, &r)).await;
            });
            continue;
        };
        let shared = shared.clone();
        let root = root.clone();
        let down = down.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, shared, root, down).await {
                tracing::debug!("control connection: {e}");
            }
            drop(slot);
        });
    }
}

/// Why `pid` is (part of) a capsule, or `None` for an operator's process: it lives in another
/// PID namespace (every capsule has its own), or it descends from a capsule-host.
fn capsule_process(pid: u32) -> Option<String> {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    match (ns(&pid.to_string()), ns("self")) {
        (Some(theirs), Some(ours)) if theirs != ours => {
            return Some(format!(
                "pid {pid} is in another PID namespace (a capsule): the control socket is the operator's"
            ))
        }
        // Gone already, or unreadable: nothing to serve either way.
        (None, _) => return Some(format!("pid {pid} cannot be identified")),
        _ => {}
    }
    let mut cur = pid;
    for _ in 0..64 {
        let stat = std::fs::read_to_string(format!("/proc/{cur}/stat")).ok()?;
        // comm is inside the last parentheses; the parent pid follows the state.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(').map(|(_, c)| c)?;
        if comm == "capsule-host" {
            return Some(format!(
                "pid {pid} descends from a capsule-host (a capsule): the control socket is the operator's"
            ));
        }
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        if ppid <= 1 {
            return None;
        }
        cur = ppid;
    }
    None
}

async fn write_line<T: serde::Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(
    stream: UnixStream,
    shared: Arc<Shared>,
    root: ActorRef<RootMsg>,
    down: mpsc::Sender<Duration>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    let mut limited = (&mut rd).take(MAX_LINE as u64);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let mut r = Response::err(format!(
                "no request line within {}s; connection closed",
                REQUEST_TIMEOUT.as_secs()
            ));
            r.code = Some(2);
            return write_line(&mut wr, &r).await;
        }
    }
    if !line.ends_with('\n') {
        let mut r = Response::err(format!(
            "the request line is longer than {MAX_LINE} bytes, or was cut short"
        ));
        r.code = Some(2);
        return write_line(&mut wr, &r).await;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::err(format!("bad request: {e}"));
            r.code = Some(2);
            return write_line(&mut wr, &r).await;
        }
    };
    let resp = match req {
        Request::Run(run) => return run_request(run, shared, root, rd, wr).await,
        Request::WatchPrompts => return watch_prompts(&shared, rd, wr).await,
        Request::Status => Response::ok(json!({
            "running": true,
            "pid": std::process::id(),
            "uptime_s": shared.started.elapsed().as_secs(),
            "did": shared.did,
            "socket": elastos::control::socket_path(&shared.home).ok(),
            "home": shared.home.root(),
            "policy": shared.config.policy.decider.policy_name(),
            // With the shell deciding: whether it runs (else every request is denied).
            "shell_running": (shared.config.policy.decider == elastos::config::Decider::Shell)
                .then(|| shared.shell.is_running()),
            "shell": &shared.config.policy.shell,
            "shell_publisher": &shared.config.policy.shell_publisher,
            "rss_bytes": self_rss(),
            "run_dir": shared.run_dir.display().to_string(),
            "audit": {
                "available": shared.audit.is_available(),
                "disk_full": shared.audit.space().disk_full,
                "reserve_bytes": shared.audit.space().reserve_bytes,
                "bytes": elastos::audit::size(&shared.home.audit_dir()),
                "max_size": shared.config.audit.max_size,
                // The kernel log is followed: kills of capsules' child processes are audited.
                "child_kills": shared.kmsg_active.load(std::sync::atomic::Ordering::Relaxed),
            },
        })),
        Request::Ps => match root.call(RootMsg::Ps, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(list)) => Response::ok(json!(list)),
            _ => Response::err("the supervisor did not answer"),
        },
        Request::Kill { name, signal } => match parse_signal(&signal) {
            Ok(sig) => reply_of(
                root.call(|p| RootMsg::Kill(name, sig, p), Some(CALL_TIMEOUT))
                    .await,
            ),
            Err(e) => usage(e),
        },
        Request::Stop { name } => reply_of(
            root.call(
                |p| RootMsg::Stop(name, Duration::from_secs(10), p),
                Some(CALL_TIMEOUT),
            )
            .await,
        ),
        Request::Start { name } => reply_of(
            root.call(|p| RootMsg::Start(name, p), Some(CALL_TIMEOUT))
                .await,
        ),
        Request::Restart { name } => reply_of(
            root.call(|p| RootMsg::Restart(name, p), Some(CALL_TIMEOUT))
                .await,
        ),
        Request::Down { timeout_ms } => {
            let _ = down.send(Duration::from_millis(timeout_ms)).await;
            Response::ok(json!({"pid": std::process::id()}))
        }
        Request::Issue(p) => issue(&shared, p).await,
        Request::Delegate(p) => delegate(&shared, p).await,
        Request::Revoke { id } => match TokenId::parse(&id) {
            Ok(tid) => {
                let r = shared
                    .authority
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .revoke(&tid);
                match r {
                    Ok(n) => {
                        let audited = operator(
                            &shared,
                            "token.revoke",
                            &id,
                            &format!("{n} tokens revoked"),
                            Some(id.clone()),
                        )
                        .await;
                        narrowed(json!({"revoked": n}), audited)
                    }
                    Err(e) => Response::err(e.to_string()),
                }
            }
            Err(e) => usage(e.to_string()),
        },
        Request::RevokeAll => {
            let r = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .revoke_all();
            match r {
                Ok(epoch) => {
                    let audited = operator(
                        &shared,
                        "token.revoke-all",
                        "*",
                        &format!("epoch raised to {epoch}"),
                        None,
                    )
                    .await;
                    narrowed(json!({"epoch": epoch}), audited)
                }
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::TrustAdd { did, kind } => trust_add(&shared, did, kind).await,
        Request::PolicyReload => policy_reload(&shared).await,
        Request::PolicyExplain {
            name,
            cid,
            resource,
            actions,
        } => policy_explain(&shared, &name, cid, &resource, &actions).await,
        Request::Prompts => Response::ok(json!(shared
            .prompts
            .list()
            .iter()
            .map(super::prompts::Prompt::to_json)
            .collect::<Vec<_>>())),
        Request::PromptAnswer { id, answer } => prompt_answer(&shared, &id, answer).await,
        Request::Grants => {
            let list = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .grants();
            Response::ok(json!(list
                .into_iter()
                .map(|(id, g)| json!({
                    "id": id,
                    "kind": if g.session { "session" } else { "always" },
                    "decision": if g.allow { "allow" } else { "deny" },
                    "capsule": g.capsule,
                    "publisher": g.bound_to,
                    "resource": g.resource,
                    "actions": g.actions,
                    "expires_at": null,
                    "uses_left": null,
                }))
                .collect::<Vec<_>>()))
        }
        Request::RevokeGrant { id } => {
            let r = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .grant_revoke(&id, super::conn::now_unix());
            match r {
                Ok(Some(n)) => {
                    let audited = operator(
                        &shared,
                        "grant.revoke",
                        &id,
                        &format!("standing grant revoked, and {n} token(s) minted under it"),
                        None,
                    )
                    .await;
                    narrowed(json!({"grant": id, "revoked": n}), audited)
                }
                Ok(None) => Response::err(format!(
                    "no standing grant {id}; `elastos grants` lists them"
                )),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::TrustRm { did } => {
            let r = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(&did);
            match r {
                Ok(removed) => {
                    let audited = operator(
                        &shared,
                        "trust.rm",
                        &did,
                        "no longer trusted, as an issuer or a publisher",
                        None,
                    )
                    .await;
                    narrowed(json!({"removed": removed}), audited)
                }
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::TrustLs => {
            let list = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .trust_entries();
            Response::ok(json!(list
                .into_iter()
                .map(|(did, kind)| json!({"did": did, "kind": kind}))
                .collect::<Vec<_>>()))
        }
        Request::AuditPrune { before } => {
            let shared = shared.clone();
            let done = tokio::task::spawn_blocking(move || {
                shared.audit.prune(
                    &shared.home.audit_dir(),
                    before,
                    &crate::cli::operator(),
                    &shared.key,
                )
            })
            .await;
            match done {
                Ok(Ok(p)) => Response::ok(json!(p)),
                Ok(Err(e)) => Response::err(format!("pruning the audit log: {e}")),
                Err(e) => Response::err(format!("pruning the audit log: {e}")),
            }
        }
        Request::Signal { .. } | Request::Stdin { .. } | Request::StdinClose => {
            usage("this request belongs on an attached run connection".into())
        }
    };
    write_line(&mut wr, &resp).await
}

fn usage(message: String) -> Response {
    let mut r = Response::err(message);
    r.code = Some(2);
    r
}

fn reply_of(
    r: Result<ractor::rpc::CallResult<Result<(), String>>, ractor::MessagingErr<RootMsg>>,
) -> Response {
    match r {
        Ok(ractor::rpc::CallResult::Success(Ok(()))) => Response::ok(serde_json::Value::Null),
        Ok(ractor::rpc::CallResult::Success(Err(e))) => Response::err(e),
        _ => Response::err("the supervisor did not answer in time"),
    }
}

pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("`{s}` is not a signal number"));
    }
    name.parse::<Signal>()
        .map_err(|_| format!("`{s}` is not a signal: use TERM, KILL, INT, HUP, USR1…"))
}

/// A durable record of an operator's action; `false` when the audit log could not take it.
async fn operator(
    shared: &Shared,
    action: &'static str,
    resource: &str,
    reason: &str,
    token: Option<String>,
) -> bool {
    shared
        .audit_sync(
            &crate::cli::operator(),
            action,
            resource,
            Decision::Allowed,
            reason,
            token,
        )
        .await
}

/// The person's answer to a prompt, recorded before it takes effect; an `--always` answer
/// becomes a standing grant first.
async fn prompt_answer(shared: &Arc<Shared>, id: &str, decision: PromptDecision) -> Response {
    let words = match decision {
        PromptDecision::AllowOnce => "allowed once",
        PromptDecision::AllowSession => "allowed for this session",
        PromptDecision::AllowAlways => "allowed always",
        PromptDecision::Deny => "denied",
        PromptDecision::DenyAlways => "denied always",
    };
    let Some(p) = shared.prompts.get(id) else {
        return Response::err(format!(
            "no prompt {id} waits for an answer (answered, expired, or its capsule went away); `elastos prompts` lists those that do"
        ));
    };
    let recorded = operator(
        shared,
        "prompt.answer",
        &p.resource,
        &format!("prompt {id} of `{}`: {words}", p.capsule),
        None,
    )
    .await;
    if !recorded {
        return not_recorded("answering the prompt");
    }
    let mut grant = None;
    let answer = match decision {
        PromptDecision::AllowOnce => super::prompts::Answer::AllowOnce,
        PromptDecision::Deny => super::prompts::Answer::Deny,
        PromptDecision::AllowSession | PromptDecision::AllowAlways | PromptDecision::DenyAlways => {
            let allow = decision != PromptDecision::DenyAlways;
            let added = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .grant_add(elastos::authority::StandingGrant {
                    allow,
                    capsule: p.capsule.clone(),
                    bound_to: p.bind.clone(),
                    resource: p.resource.clone(),
                    actions: p.actions.to_string(),
                    created: super::conn::now_unix(),
                    tokens: Vec::new(),
                    session: decision == PromptDecision::AllowSession,
                });
            let gid = match added {
                Ok(g) => g,
                Err(e) => {
                    return Response::err(format!("the standing grant was not recorded: {e}"))
                }
            };
            operator(
                shared,
                "grant.add",
                &p.resource,
                &format!(
                    "{gid}: {words} for `{}` ({}), {}",
                    p.capsule, p.bind, p.actions
                ),
                None,
            )
            .await;
            grant = Some(gid.clone());
            if allow {
                super::prompts::Answer::AllowGrant(gid)
            } else {
                super::prompts::Answer::Deny
            }
        }
    };
    if shared.prompts.answer(id, answer).is_some() {
        Response::ok(json!({"id": id, "answer": words, "grant": grant}))
    } else {
        Response::err(format!("prompt {id} ran out while it was answered"))
    }
}

/// `elastos policy reload`: the node's policy file, checked here first (a file with a mistake
/// is refused with its line and column, and the shell keeps the policy it has), recorded, then
/// handed to the running shell, which says whether it took it.
async fn policy_reload(shared: &Arc<Shared>) -> Response {
    if shared.config.policy.decider != elastos::config::Decider::Shell {
        return Response::err(
            "this node decides with the built-in development policy: there is no policy file to reload (set [policy] decider = \"shell\" in config.toml)".to_string(),
        );
    }
    let (text, source) = match super::shell::policy_text(&shared.home) {
        Ok(t) => t,
        Err(e) => return Response::err(e),
    };
    let rules = match elastos_schema::policy::Policy::parse(&text) {
        Ok(p) => p.rules.len(),
        Err(e) => {
            let why = format!("{source}:{e}");
            shared
                .audit_sync(
                    &crate::cli::operator(),
                    "policy.reload",
                    "",
                    Decision::Denied,
                    &format!("refused: {why}"),
                    None,
                )
                .await;
            return Response::err(format!("{why}; the policy in force stays"));
        }
    };
    if !shared.shell.is_running() {
        return Response::err(
            "no shell is running to take the policy; see `elastos ps` and `elastos logs shell`"
                .to_string(),
        );
    }
    if !operator(
        shared,
        "policy.reload",
        "",
        &format!("{source}: {rules} rule(s)"),
        None,
    )
    .await
    {
        return not_recorded("reloading the policy");
    }
    match shared.shell.reload(&text).await {
        Ok(()) => Response::ok(json!({"source": source, "rules": rules})),
        Err(e) => Response::err(format!("{e}; the policy in force stays")),
    }
}

/// `elastos policy explain`: a dry run put to the shell for the capsule `name` (running, or
/// stored), held within the ceilings as a real answer would be, and recorded. Nothing is
/// granted and no prompt opens.
async fn policy_explain(
    shared: &Arc<Shared>,
    name: &str,
    cid: Option<String>,
    resource: &str,
    actions: &str,
) -> Response {
    use super::shell;
    use elastos::ceilings::{before_asking, outcome};
    use elastos_schema::policy::Standing;
    if shared.config.policy.decider != elastos::config::Decider::Shell {
        return Response::err(
            "this node decides with the built-in development policy (set [policy] decider = \"shell\" to have the shell explain)".to_string(),
        );
    }
    let actions = match ActionSet::parse_list(actions) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return usage("name at least one action".into()),
        Err(e) => return usage(e.to_string()),
    };
    if let Err(e) = elastos::token::validate_pattern(resource) {
        return usage(format!("--resource: {e}"));
    }
    let live = shared
        .conns
        .live()
        .into_iter()
        .find(|c| c.peer.name == name && cid.as_ref().is_none_or(|x| *x == c.peer.cid));
    let (cid, publisher, standing, first_party, manifest) = match live {
        Some(c) => (
            c.peer.cid.clone(),
            c.peer.publisher.clone(),
            c.peer.standing,
            c.peer.first_party,
            c.peer.manifest.clone(),
        ),
        None => {
            let stored = match &cid {
                Some(c) => shared.store.by_cid(c),
                None => shared.store.by_name(name),
            };
            match stored {
                Ok(s) => {
                    let label = shared.publisher_label(&s.publisher);
                    let standing = shared.standing(&s.publisher);
                    // As a running capsule's connection has it (`conn::Peer`).
                    let first_party = matches!(standing, Standing::ThisNode | Standing::FirstParty);
                    (s.cid, label, standing, first_party, Arc::new(s.manifest))
                }
                Err(e) => {
                    return Response::err(format!(
                        "no capsule `{name}` runs, and none is stored under that name or CID ({e}); see `elastos ps`"
                    ))
                }
            }
        }
    };
    // The request path's own steps (`conn::request_token`, `decide::decide`), for a request
    // that names no lifetime; only the shell is told it is a dry run.
    let result = match before_asking(&manifest, first_party, resource, actions, Duration::ZERO) {
        Err(unasked) => unasked.explained(resource, actions),
        Ok(covering) => {
            let ask = shell::Ask {
                name: name.to_string(),
                cid: cid.clone(),
                publisher,
                standing,
                resource: resource.to_string(),
                actions,
                ttl: Duration::ZERO,
                covering: covering.clone(),
                dry_run: true,
            };
            match shared
                .shell
                .ask(&ask, shared.config.policy.shell_wait)
                .await
            {
                Err(e) => json!({"verdict": "deny", "explanation": e}),
                Ok(a) => outcome(&ask, &a.answer).explained(&a.explanation),
            }
        }
    };
    let verdict = result["verdict"].as_str().unwrap_or("?").to_string();
    if !operator(
        shared,
        "policy.explain",
        resource,
        &format!("as `{name}` ({cid}), {actions}: {verdict}"),
        None,
    )
    .await
    {
        return not_recorded("explaining");
    }
    Response::ok(result)
}

/// What a widening action answers when its record could not be made durable: it did not happen.
fn not_recorded(what: &str) -> Response {
    Response::err(format!(
        "{what} was refused: its audit record could not be made durable (is the disk holding $ELASTOS_HOME full? `elastos status` says); nothing was changed"
    ))
}

/// A narrowing action (revocation, an issuer no longer trusted) took effect whatever the audit
/// log could take; the answer says whether its record is durable too.
fn narrowed(mut data: serde_json::Value, audited: bool) -> Response {
    data["audited"] = json!(audited);
    if !audited {
        data["warning"] = json!("it took effect, but its audit record could not be written: the audit reserve is spent; free space in $ELASTOS_HOME");
    }
    Response::ok(data)
}

/// A widening action whose record was durable but whose state change then failed: the log
/// says that it did not happen after all.
async fn undone(shared: &Shared, action: &'static str, resource: &str, why: &str) {
    shared
        .audit_sync(
            &crate::cli::operator(),
            action,
            resource,
            Decision::Denied,
            &format!("not made after all: {why}"),
            None,
        )
        .await;
}

async fn trust_add(shared: &Arc<Shared>, did: String, kind: TrustKind) -> Response {
    if let Err(e) = elastos::identity::public_from_did(&did) {
        return usage(e.to_string());
    }
    // Widening: the record first, then the change.
    if !operator(shared, "trust.add", &did, kind.audit_reason(), None).await {
        return not_recorded("trusting the DID");
    }
    let r = kind.apply(
        &mut shared.authority.lock().unwrap_or_else(|e| e.into_inner()),
        &did,
    );
    match r {
        Ok(added) => Response::ok(json!({"added": added})),
        Err(e) => {
            undone(shared, "trust.add", &did, &e.to_string()).await;
            Response::err(e.to_string())
        }
    }
}

async fn issue(shared: &Arc<Shared>, p: elastos::control::IssueParams) -> Response {
    let actions = match ActionSet::parse_list(&p.actions) {
        Ok(a) => a,
        Err(e) => return usage(e.to_string()),
    };
    let classification: Classification = match p.classification.parse() {
        Ok(c) => c,
        Err(e) => return usage(format!("{e}")),
    };
    let r = shared
        .authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .issue(IssueRequest {
            subject_name: p.subject_name,
            subject_cid: p.subject_cid,
            resource: p.resource.clone(),
            actions,
            not_before: p.not_before,
            ttl: Duration::from_secs(p.ttl_secs),
            max_uses: p.max_uses,
            classification,
            delegatable: p.delegatable,
        });
    match r {
        // Signed but not yet handed out: it exists only once its record is durable.
        Ok((token, text)) => {
            let audited = operator(
                shared,
                "token.issue",
                &p.resource,
                &format!("to {}", token.subject_display()),
                Some(token.id.to_string()),
            )
            .await;
            if !audited {
                return not_recorded("issuing the token");
            }
            Response::ok(json!({"token": text, "id": token.id.to_string(), "expiry": token.expiry}))
        }
        Err(e) => Response::err(e.to_string()),
    }
}

async fn delegate(shared: &Arc<Shared>, p: elastos::control::DelegateParams) -> Response {
    let actions = match p.actions.as_deref().map(ActionSet::parse_list).transpose() {
        Ok(a) => a,
        Err(e) => return usage(e.to_string()),
    };
    let classification = match p.classification.as_deref().map(str::parse).transpose() {
        Ok(c) => c,
        Err(e) => return usage(format!("{e}")),
    };
    let narrowing = elastos::authority::Narrowing {
        subject: p.subject_name.map(|n| (n, p.subject_cid)),
        resource: p.resource,
        actions,
        ttl: p.ttl_secs.map(Duration::from_secs),
        max_uses: p.max_uses,
        classification,
        delegatable: p.delegatable,
    };
    let staged = shared
        .authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .prepare_delegate(&p.parent, narrowing, super::conn::now_unix());
    let staged = match staged {
        Ok(s) => s,
        Err(e) => return Response::err(e.to_string()),
    };
    let token = &staged.token;
    // The record first; the link to the parent (and the child's existence) after it.
    let audited = operator(
        shared,
        "token.delegate",
        &token.resource,
        &format!(
            "child of {} for {}",
            token.parent_display(),
            token.subject_display()
        ),
        Some(token.id.to_string()),
    )
    .await;
    if !audited {
        return not_recorded("delegating the token");
    }
    let applied = shared
        .authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .apply_delegation(&staged);
    match applied {
        Ok(()) => Response::ok(
            json!({"token": staged.text, "id": token.id.to_string(), "expiry": token.expiry}),
        ),
        Err(e) => {
            undone(shared, "token.delegate", &token.resource, &e.to_string()).await;
            Response::err(e.to_string())
        }
    }
}

/// Verifies and stores the package named by a run request or a config entry. A downgrade (an
/// older version of a capsule stored from the same publisher) needs `allow_downgrade`, and
/// takes effect only once its record is durable.
async fn resolve(
    shared: &Shared,
    source: &RunSource,
    allow_downgrade: bool,
) -> Result<Stored, String> {
    match source {
        RunSource::Package(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let checked = shared.store.check(&bytes).map_err(|e| e.to_string())?;
            if let (Some(have), true) = (&checked.downgrade_from, allow_downgrade) {
                let m = checked.manifest();
                let audited = shared
                    .audit_sync(
                        "supervisor",
                        "package.downgrade",
                        &m.name,
                        Decision::Allowed,
                        &format!(
                            "{} of {} replaces {have} (--allow-downgrade)",
                            m.version,
                            checked.publisher()
                        ),
                        None,
                    )
                    .await;
                if !audited {
                    return Err("audit unavailable: the downgrade could not be recorded, so it was not made; retry when the audit log is writable".into());
                }
            }
            shared
                .store
                .add_checked(checked, &bytes, allow_downgrade)
                .map_err(|e| e.to_string())
        }
        RunSource::Stored(name) => shared.store.by_name(name).map_err(|e| e.to_string()),
    }
}

async fn refused(shared: &Shared, what: &str, why: &str) {
    shared
        .audit_sync(
            "supervisor",
            "package.refused",
            what,
            Decision::Denied,
            why,
            None,
        )
        .await;
}

/// A default capsule's package (a file, or a name in the store), stored and verified.
pub async fn resolve_default(shared: &Arc<Shared>, source: &str) -> Result<Stored, String> {
    let src = if std::path::Path::new(source).exists() {
        RunSource::Package(source.into())
    } else {
        RunSource::Stored(source.to_string())
    };
    match resolve(shared, &src, false).await {
        Ok(s) => Ok(s),
        Err(e) => {
            refused(shared, source, &e).await;
            Err(e)
        }
    }
}

/// Starts a default capsule, restarted always.
pub async fn start_stored(root: &ActorRef<RootMsg>, stored: Stored) -> Result<String, String> {
    let spec = RunSpec {
        stored,
        name: None,
        args: Vec::new(),
        restart: RestartPolicy::Always,
        attach: None,
        stdin: None,
        watch: Default::default(),
    };
    match root
        .call(|p| RootMsg::Run(Box::new(spec), p), Some(CALL_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => Err("the supervisor did not answer".into()),
    }
}

/// `elastos run --allow URI:ACTIONS`: the developer answers the capsule's prompts before they
/// are asked. Each is a session grant (it ends at `down`), held to what the manifest requests
/// and never `admin`, recorded before it takes effect. The policy still decides first: only a
/// `prompt` is answered by it, a `deny` rule stands.
async fn session_allow(
    shared: &Arc<Shared>,
    stored: &Stored,
    name: Option<&str>,
    allow: &[String],
) -> Result<(), String> {
    if shared.config.policy.decider != elastos::config::Decider::Shell {
        return Err("--allow answers the shell's prompts, and this node decides with the built-in development policy (which grants what a manifest requests); set [policy] decider = \"shell\" in config.toml".into());
    }
    let name = name.unwrap_or(&stored.manifest.name);
    elastos_schema::manifest::validate_capsule_name(name)?;
    // Anyone can sign as `dev`: the grant binds a development package's CID.
    let bind = if shared.standing(&stored.publisher) == elastos_schema::policy::Standing::Dev {
        stored.cid.clone()
    } else {
        stored.publisher.clone()
    };
    for a in allow {
        let (resource, actions) = elastos::policy::parse_allow(a)?;
        if actions.contains(elastos_schema::Action::Admin) {
            return Err(format!("`{a}`: admin is never granted at a prompt"));
        }
        if super::shell::covering_entry(&stored.manifest, &resource, actions).is_none() {
            return Err(format!(
                "`{a}`: the manifest of `{name}` does not request it; add it to its capsule.toml's requests first"
            ));
        }
        let found = shared
            .authority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grant_find(name, &bind, &resource, actions);
        match found {
            Some((_, g)) if g.allow => continue,
            Some((gid, _)) => {
                return Err(format!(
                    "`{a}`: denied always by grant {gid}; `elastos revoke {gid}` first"
                ))
            }
            None => {}
        }
        let what = format!("`{name}` ({bind}), {actions}");
        let gid = shared
            .authority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grant_add(elastos::authority::StandingGrant {
                allow: true,
                capsule: name.to_string(),
                bound_to: bind.clone(),
                resource: resource.clone(),
                actions: actions.to_string(),
                created: super::conn::now_unix(),
                tokens: Vec::new(),
                session: true,
            })
            .map_err(|e| format!("the session grant was not recorded: {e}"))?;
        // Without its record the grant is taken back.
        if !operator(
            shared,
            "grant.add",
            &resource,
            &format!("{gid}: allowed for this session by `elastos run --allow`: {what}"),
            None,
        )
        .await
        {
            let _ = shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .grant_revoke(&gid, super::conn::now_unix());
            return Err("the grant was not made: the audit log cannot record it (is the disk holding $ELASTOS_HOME full? `elastos status` says)".into());
        }
    }
    Ok(())
}

/// `elastos shell`: the prompts waiting, now and after each change, until the operator's
/// terminal closes the connection. Changes that come faster than it reads are sent as one.
async fn watch_prompts(
    shared: &Arc<Shared>,
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut changed = shared.prompts.subscribe();
    let mut buf = [0u8; 256];
    loop {
        changed.borrow_and_update();
        let list: Vec<serde_json::Value> = shared
            .prompts
            .list()
            .iter()
            .map(super::prompts::Prompt::to_json)
            .collect();
        write_line(&mut wr, &Response::ok(json!(list))).await?;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            // Nothing is read from the terminal here: its close ends the watch.
            n = rd.read(&mut buf) => if !matches!(n, Ok(k) if k > 0) { return Ok(()) },
        }
    }
}

/// How long a detached `elastos run` waits for the capsule's hello or failure.
pub const START_WAIT: Duration = Duration::from_secs(5);

async fn run_request(
    run: RunRequest,
    shared: Arc<Shared>,
    root: ActorRef<RootMsg>,
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let what = match &run.source {
        RunSource::Package(p) => p.display().to_string(),
        RunSource::Stored(n) => n.clone(),
    };
    let mut stored = match resolve(&shared, &run.source, run.allow_downgrade).await {
        Ok(s) => s,
        Err(e) => {
            refused(&shared, &what, &e).await;
            return write_line(&mut wr, &Response::err(e)).await;
        }
    };
    if let Some(s) = &run.substrate {
        use elastos_schema::manifest::Substrate;
        match s.parse::<Substrate>() {
            Ok(s @ (Substrate::Native | Substrate::Wasm))
                if stored.manifest.entrypoint.contains_key(&s) =>
            {
                stored.manifest.substrate = s;
            }
            Ok(s @ (Substrate::Native | Substrate::Wasm)) => {
                return write_line(
                    &mut wr,
                    &usage(format!(
                        "the manifest of `{}` has no {s} entrypoint: add `{s} = \"FILE\"` to its [entrypoint]",
                        stored.manifest.name
                    )),
                )
                .await
            }
            Ok(_) => {
                return write_line(&mut wr, &usage("--substrate takes native or wasm".into())).await
            }
            Err(e) => return write_line(&mut wr, &usage(e)).await,
        }
    }
    let restart = match run.restart.as_deref() {
        Some(r) => match r.parse::<RestartPolicy>() {
            Ok(p) => p,
            Err(e) => return write_line(&mut wr, &usage(e)).await,
        },
        None if run.attach => RestartPolicy::Never,
        None => RestartPolicy::OnFailure,
    };
    if !run.allow.is_empty() {
        if let Err(e) = session_allow(&shared, &stored, run.name.as_deref(), &run.allow).await {
            return write_line(&mut wr, &usage(e)).await;
        }
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let (watch, started) = super::capsule::StartWatch::new();
    let cid = stored.cid.clone();
    let (mut stdin_tx, stdin_rx) = if run.attach && run.interactive {
        let (t, r) = std::sync::mpsc::channel::<Vec<u8>>();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let spec = RunSpec {
        stored,
        name: run.name,
        args: run.args,
        restart,
        attach: run.attach.then_some(tx),
        stdin: stdin_rx,
        watch,
    };
    let name = match root
        .call(|p| RootMsg::Run(Box::new(spec), p), Some(CALL_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Ok(name))) => name,
        Ok(ractor::rpc::CallResult::Success(Err(e))) => {
            return write_line(&mut wr, &Response::err(e)).await
        }
        _ => return write_line(&mut wr, &Response::err("the supervisor did not answer")).await,
    };
    if !run.attach {
        // Detached: answered once it has said hello, failed, or had `START_WAIT` for either.
        let answer = match tokio::time::timeout(START_WAIT, started).await {
            Ok(Ok(super::capsule::StartOutcome::Hello)) => {
                Response::ok(json!({"name": name, "cid": cid, "ready": true}))
            }
            Ok(Ok(super::capsule::StartOutcome::Failed(why))) => Response::err(format!(
                "`{name}` did not start: {why}; see `elastos logs {name}`"
            )),
            // Still starting (or a capsule that never speaks on its socket).
            Ok(Err(_)) | Err(_) => Response::ok(json!({"name": name, "cid": cid, "ready": false})),
        };
        return write_line(&mut wr, &answer).await;
    }
    write_line(&mut wr, &Response::ok(json!({"name": name, "cid": cid}))).await?;
    // Attached: stream events; signals from the operator's terminal come back on this socket.
    let mut line = String::new();
    loop {
        let mut limited = (&mut rd).take(MAX_LINE.saturating_sub(line.len()) as u64);
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                let last = matches!(ev, Event::Exit { .. });
                write_line(&mut wr, &ev).await?;
                if last {
                    return Ok(());
                }
            }
            n = limited.read_line(&mut line) => {
                // A line longer than any request is not one.
                let n = match n {
                    Ok(_) if line.len() >= MAX_LINE => Ok(0),
                    n => n,
                };
                match n {
                    Ok(0) | Err(_) => {
                        // The operator's command went away: a foreground capsule goes with it.
                        let _ = root.call(|p| RootMsg::Stop(name.clone(), Duration::from_secs(5), p), Some(CALL_TIMEOUT)).await;
                        return Ok(());
                    }
                    Ok(_) => {
                        match serde_json::from_str::<Request>(&line) {
                            Ok(Request::Signal { signal }) => {
                                if let Ok(sig) = parse_signal(&signal) {
                                    let _ = root.call(|p| RootMsg::Kill(name.clone(), sig, p), Some(CALL_TIMEOUT)).await;
                                }
                            }
                            Ok(Request::Stdin { data }) => {
                                let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim());
                                if let (Some(tx), Ok(bytes)) = (&stdin_tx, bytes) {
                                    let _ = tx.send(bytes);
                                }
                            }
                            // Dropping the sender closes the capsule's stdin once all is written.
                            Ok(Request::StdinClose) => stdin_tx = None,
                            _ => {}
                        }
                        line.clear();
                    }
                }
            }
        }
    }
}

fn self_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
