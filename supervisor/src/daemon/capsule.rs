//! The actor that owns one capsule: its capsule-host process, its connection task, its output,
//! its restart policy.
//!
//! The process is started through the [`Spawner`](elastos::host::Spawner) thread; a blocking task
//! waits for it and tells the actor when it exits. Restarts follow the capsule's policy (always /
//! on-failure / never) within a restart intensity: more than N restarts inside T seconds and the
//! capsule is marked `failed` and stays down — audited — so a capsule that crashes at once cannot
//! spin the machine. Nothing that happens to one capsule reaches its parent as a failure: every
//! outcome is a state of this actor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use elastos::audit::Decision;
use elastos::control::Event;
use elastos::host::{self, HostStatus, SpawnRequest};
use elastos::store::Stored;
use nix::sys::signal::Signal;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::mpsc;

use super::conn::{self, Peer};
use super::logs::CapsuleLog;
use super::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            other => Err(format!(
                "restart policy `{other}` is unknown: use always, on-failure or never"
            )),
        }
    }
}

/// The states `elastos ps` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    Restarting,
    Exited,
    Failed,
    Stopped,
}

impl State {
    pub fn is_live(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Restarting)
    }
}

/// What `ps` and `inspect` show of one capsule.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub name: String,
    pub cid: String,
    pub publisher: String,
    pub substrate: String,
    pub pid: Option<u32>,
    pub state: State,
    pub uptime_s: u64,
    pub restarts: u32,
    pub calls: u64,
    /// The namespaces this capsule serves now.
    pub serves: Vec<String>,
    pub memory_bytes: u64,
    pub layers: Vec<String>,
    pub restart: RestartPolicy,
    pub exit_code: Option<i32>,
    pub isolation: Option<String>,
    /// The limit that stopped its last run (a WASM guest: `memory`, `tables`,
    /// `call_budget_ms`), until it starts again.
    pub stopped_by: Option<String>,
}

/// How a capsule's first run went, for a detached `elastos run` waiting to say so.
#[derive(Debug)]
pub enum StartOutcome {
    /// Its hello arrived.
    Hello,
    /// It could not start, or its process ended before its hello: why.
    Failed(String),
}

/// Told once, by whichever comes first: the hello (on its connection) or the end of the run.
#[derive(Clone, Default)]
pub struct StartWatch(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<StartOutcome>>>>);

impl StartWatch {
    pub fn new() -> (StartWatch, tokio::sync::oneshot::Receiver<StartOutcome>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (StartWatch(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    pub fn tell(&self, outcome: StartOutcome) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(outcome);
        }
    }
}

pub struct Spec {
    pub name: String,
    pub stored: Stored,
    pub publisher_label: String,
    pub standing: elastos_schema::policy::Standing,
    pub args: Vec<String>,
    pub restart: RestartPolicy,
    /// An attached `elastos run`: output and the exit code go here too.
    pub attach: Option<mpsc::UnboundedSender<Event>>,
    /// `elastos run -i`: the operator's input; taken by the first start (a foreground run
    /// never restarts).
    pub stdin: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    /// A detached `elastos run` waiting for its first run's hello or end.
    pub watch: StartWatch,
}

pub enum Msg {
    Start,
    /// The capsule-host of `generation` ended with this code (128+N for signal N).
    Exited {
        generation: u64,
        code: i32,
        /// The limit capsule-host said stopped it.
        limit: Option<String>,
    },
    Stop {
        timeout: Duration,
        reply: RpcReplyPort<()>,
    },
    Kill(Signal),
    Restart(RpcReplyPort<Result<(), String>>),
    StartAgain(RpcReplyPort<Result<(), String>>),
    Info(RpcReplyPort<Info>),
    /// The deadline of a stop passed: kill what is left.
    StopDeadline(u64),
}

pub struct CapsuleActor {
    pub shared: Arc<Shared>,
}

pub struct Running {
    pid: u32,
    started: Instant,
    generation: u64,
}

pub struct CapsuleState {
    spec: Spec,
    peer: Arc<Peer>,
    log: Arc<CapsuleLog>,
    state: State,
    running: Option<Running>,
    generation: u64,
    restarts: u32,
    recent: VecDeque<Instant>,
    /// Set by stop: the next exit leaves the capsule down.
    stopping: bool,
    stop_waiters: Vec<RpcReplyPort<()>>,
    exit_code: Option<i32>,
    isolation: Option<String>,
    /// What capsule-host reported in force for the running process.
    layers: Vec<String>,
    pending_restart: bool,
    stopped_by: Option<String>,
}

impl Actor for CapsuleActor {
    type Msg = Msg;
    type State = CapsuleState;
    type Arguments = Spec;

    async fn pre_start(
        &self,
        myself: ActorRef<Msg>,
        spec: Spec,
    ) -> Result<CapsuleState, ActorProcessingErr> {
        let peer = Arc::new(Peer::new(
            spec.name.clone(),
            spec.stored.cid.clone(),
            spec.publisher_label.clone(),
            spec.standing,
            Arc::new(spec.stored.manifest.clone()),
            spec.attach.clone(),
        ));
        let log = Arc::new(CapsuleLog::open(&self.shared.logs_dir, &spec.name));
        myself.cast(Msg::Start)?;
        Ok(CapsuleState {
            spec,
            peer,
            log,
            state: State::Starting,
            running: None,
            generation: 0,
            restarts: 0,
            recent: VecDeque::new(),
            stopping: false,
            stop_waiters: Vec::new(),
            exit_code: None,
            isolation: None,
            layers: Vec::new(),
            pending_restart: false,
            stopped_by: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Msg>,
        msg: Msg,
        st: &mut CapsuleState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Start => {
                if st.running.is_none() && !st.stopping {
                    self.start(&myself, st).await;
                }
            }
            Msg::Exited {
                generation,
                code,
                limit,
            } => {
                if st.running.as_ref().map(|r| r.generation) != Some(generation) {
                    return Ok(());
                }
                st.running = None;
                st.exit_code = Some(code);
                if let Some(limit) = limit {
                    self.limit_stopped(st, &limit).await;
                }
                self.exited(&myself, st, code).await;
            }
            Msg::Stop { timeout, reply } => {
                st.stopping = true;
                match &st.running {
                    Some(r) => {
                        host::signal(r.pid, Signal::SIGTERM);
                        st.stop_waiters.push(reply);
                        let generation = r.generation;
                        let me = myself.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(timeout).await;
                            let _ = me.cast(Msg::StopDeadline(generation));
                        });
                    }
                    None => {
                        if st.state.is_live() {
                            st.state = State::Stopped;
                        }
                        let _ = reply.send(());
                    }
                }
            }
            Msg::StopDeadline(generation) => {
                if let Some(r) = &st.running {
                    if r.generation == generation {
                        st.log.event("did not stop in time: killed");
                        host::signal(r.pid, Signal::SIGKILL);
                    }
                }
            }
            Msg::Kill(sig) => {
                if let Some(r) = &st.running {
                    st.log.event(&format!("signal {sig} sent by the operator"));
                    host::signal(r.pid, sig);
                }
            }
            Msg::Restart(reply) => {
                st.stopping = false;
                st.recent.clear();
                match &st.running {
                    Some(r) => {
                        st.pending_restart = true;
                        host::signal(r.pid, Signal::SIGTERM);
                    }
                    None => self.start(&myself, st).await,
                }
                let _ = reply.send(Ok(()));
            }
            Msg::StartAgain(reply) => {
                if st.running.is_some() {
                    let _ = reply.send(Err(format!("`{}` is already running", st.spec.name)));
                } else {
                    st.stopping = false;
                    st.recent.clear();
                    self.start(&myself, st).await;
                    let _ = reply.send(Ok(()));
                }
            }
            Msg::Info(reply) => {
                let _ = reply.send(self.info(st));
            }
        }
        Ok(())
    }
}

impl CapsuleActor {
    fn info(&self, st: &CapsuleState) -> Info {
        let pid = st.running.as_ref().map(|r| r.pid);
        Info {
            name: st.spec.name.clone(),
            cid: st.spec.stored.cid.clone(),
            publisher: st.spec.publisher_label.clone(),
            substrate: st.spec.stored.manifest.substrate.to_string(),
            pid,
            state: st.state,
            uptime_s: st
                .running
                .as_ref()
                .map_or(0, |r| r.started.elapsed().as_secs()),
            restarts: st.restarts,
            calls: self.shared.conns.calls(&st.spec.name),
            serves: self.shared.served_by(&st.spec.name),
            memory_bytes: pid.map_or(0, tree_rss),
            // Only what capsule-host reported in force for the live process.
            layers: st
                .isolation
                .iter()
                .chain(st.layers.iter())
                .filter(|_| pid.is_some())
                .cloned()
                .collect(),
            restart: st.spec.restart,
            exit_code: st.exit_code,
            isolation: st.isolation.clone(),
            stopped_by: st.stopped_by.clone(),
        }
    }

    /// A WASM guest stopped by one of its limits: its log and `ps` say which, and the audit log.
    async fn limit_stopped(&self, st: &mut CapsuleState, limit: &str) {
        let why = format!(
            "stopped by its limit `{limit}` (see the lines before in this log; raise [limits] {limit} in capsule.toml if it needs more)"
        );
        st.log.event(&why);
        st.stopped_by = Some(limit.to_string());
        self.shared
            .audit_sync(
                "supervisor",
                "capsule.limit",
                st.peer.actor(),
                Decision::Denied,
                &why,
                None,
            )
            .await;
    }

    async fn start(&self, myself: &ActorRef<Msg>, st: &mut CapsuleState) {
        // "Ready N ms after spawn" counts all a start costs, a WASM module's cache lookup too.
        let spawn_began = Instant::now();
        let manifest = &st.spec.stored.manifest;
        let substrate = manifest.substrate;
        let Some(entry) = manifest.entrypoint.get(&substrate).cloned() else {
            self.fail(
                st,
                &format!("the manifest has no entrypoint for {substrate}"),
            )
            .await;
            return;
        };
        use elastos_schema::manifest::Substrate;
        let module = match substrate {
            Substrate::Native => None,
            Substrate::Wasm => match self.wasm_module(st, &entry).await {
                Ok(m) => Some(m),
                Err(e) => {
                    self.fail(st, &format!("could not prepare its module {entry}: {e}"))
                        .await;
                    return;
                }
            },
            _ => {
                self.fail(
                    st,
                    &format!("substrate {substrate} is not supported yet by this elastos"),
                )
                .await;
                return;
            }
        };
        st.stopped_by = None;
        // With the shell deciding, running an unknown publisher's package and each host://
        // grant go through it first. The shell itself is excepted (it cannot ask itself), but
        // only a first-party package under the shell's name, and never with the host's network:
        // any other package named so is decided like every capsule.
        let deciding = self.shared.config.policy.decider == elastos::config::Decider::Shell;
        let is_shell = self.shared.config.policy.is_the_shell(
            &st.spec.name,
            &st.spec.stored.publisher,
            st.peer.first_party,
        );
        if deciding && is_shell && st.spec.stored.manifest.requested_net() == Some("host") {
            self.fail(
                st,
                "not started: the node's shell may not hold host://net (its manifest asks for it)",
            )
            .await;
            return;
        }
        if deciding && !is_shell {
            let decided = super::decide::decide_start(&self.shared, &st.peer).await;
            if let Err(why) = decided {
                self.fail(st, &why).await;
                return;
            }
        }
        let manifest = &st.spec.stored.manifest;
        let mut args = manifest.args.clone();
        args.extend(st.spec.args.iter().cloned());
        let uid = self.shared.capsule_uid(&st.spec.name);
        let state = if elastos::policy::grants_state(manifest) {
            let storage = manifest
                .limits
                .storage
                .unwrap_or(elastos::quota::DEFAULT_STORAGE);
            match state_dir(&self.shared, &st.spec.name, uid, storage) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.fail(st, &format!("could not prepare its state directory: {e}"))
                        .await;
                    return;
                }
            }
        } else {
            None
        };
        let req = SpawnRequest {
            name: st.spec.name.clone(),
            root: st.spec.stored.root.clone(),
            entry,
            args,
            env: manifest
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            stdin: st.spec.stdin.is_some(),
            limits: manifest.limits.clone(),
            uid,
            tmp: match fresh_tmp(&self.shared, &st.spec.name, uid) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.fail(st, &format!("could not prepare its tmp directory: {e}"))
                        .await;
                    return;
                }
            },
            host_libs: elastos::policy::grants_host_libs(manifest),
            allow_without: self.shared.config.confinement.allow_without.clone(),
            net: elastos::policy::grants_net(manifest),
            state: state.as_ref().map(|(d, _)| d.clone()),
            state_quota: state.and_then(|(_, q)| q),
            module,
        };
        let shared = self.shared.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            let mut s = shared.spawner.spawn(req)?;
            let status = host::read_status(&mut s.status)?;
            Ok::<_, host::HostError>((s, status))
        })
        .await;
        let (spawned, status) = match spawned {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                self.fail(st, &format!("could not start: {e}")).await;
                return;
            }
            Err(e) => {
                self.fail(st, &format!("could not start: {e}")).await;
                return;
            }
        };
        st.generation += 1;
        let generation = st.generation;
        let pid = spawned.pid;
        st.layers = match &status {
            HostStatus::Started { layers, .. } => layers.clone(),
            HostStatus::Failed { .. } => Vec::new(),
        };
        st.isolation = match &status {
            HostStatus::Started { isolation, .. } => Some(isolation.clone()),
            HostStatus::Failed { .. } => None,
        };
        st.running = Some(Running {
            pid,
            started: Instant::now(),
            generation,
        });
        let host::Spawned {
            socket,
            stdout,
            stderr,
            stdin,
            status: status_pipe,
            ..
        } = spawned;
        if let (Some(input), Some(mut pipe)) = (st.spec.stdin.take(), stdin) {
            // A thread of its own: a capsule that does not read its stdin blocks only this.
            std::thread::Builder::new()
                .name(format!("stdin-{}", st.spec.name))
                .spawn(move || {
                    use std::io::Write;
                    for chunk in input {
                        if pipe.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                })
                .ok();
        }
        // Output: one task per stream on the runtime (not a thread per stream and capsule);
        // lines go to the log and an attached run.
        // The exit is reported after the output: an attached `run` must print everything the
        // capsule wrote before it returns the exit code.
        let (drained_tx, mut drained) = mpsc::unbounded_channel::<()>();
        pump(
            stdout,
            "stdout",
            st.log.clone(),
            st.spec.attach.clone(),
            drained_tx.clone(),
        );
        pump(
            stderr,
            "stderr",
            st.log.clone(),
            st.spec.attach.clone(),
            drained_tx,
        );
        let me = myself.clone();
        tokio::spawn(async move {
            let code = exit_of(pid).await;
            let limit = host::read_limit(status_pipe);
            // Both streams at EOF, or a bounded wait: a descendant that escaped with the pipe
            // open must not hold the exit back.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                for _ in 0..2 {
                    if drained.recv().await.is_none() {
                        break;
                    }
                }
            })
            .await;
            let _ = me.cast(Msg::Exited {
                generation,
                code,
                limit,
            });
        });
        match status {
            HostStatus::Started { .. } => {
                st.state = State::Running;
                st.log.event(&format!("started (pid {pid})"));
                let _ = socket.set_nonblocking(true);
                match tokio::net::UnixStream::from_std(socket) {
                    Ok(stream) => {
                        let shared = self.shared.clone();
                        let peer = st.peer.clone();
                        let log = st.log.clone();
                        let ready = conn::Ready {
                            since: spawn_began,
                            log: log.clone(),
                            watch: st.spec.watch.clone(),
                        };
                        tokio::spawn(async move {
                            let why = conn::serve(shared, peer, stream, ready).await;
                            log.event(&format!("connection ended: {why}"));
                        });
                    }
                    Err(e) => st.log.event(&format!("socket unusable: {e}")),
                }
                self.shared.set_live(
                    &st.spec.name,
                    Some(super::LiveCapsule {
                        actor: st.peer.actor().to_string(),
                        pid,
                    }),
                );
                self.shared
                    .audit_sync(
                        "supervisor",
                        "capsule.start",
                        st.peer.actor(),
                        Decision::Info,
                        &{
                            let without: Vec<&str> = st
                                .layers
                                .iter()
                                .filter_map(|l| l.strip_prefix("WITHOUT-"))
                                .collect();
                            let mut reason =
                                format!("pid {pid}, publisher {}", st.spec.publisher_label);
                            if !without.is_empty() {
                                reason.push_str(&format!(
                                    "; RUNNING WITHOUT {} ([confinement] allow_without)",
                                    without.join(", ")
                                ));
                            }
                            reason
                        },
                        None,
                    )
                    .await;
            }
            HostStatus::Failed { stage, message } => {
                st.log
                    .event(&format!("capsule-host failed at {stage}: {message}"));
                // A step of its start failed (a layer this machine could not give, say): the
                // capsule was refused rather than run with less, and the record says why.
                self.shared
                    .audit_sync(
                        "supervisor",
                        "capsule.refused",
                        st.peer.actor(),
                        Decision::Denied,
                        &format!("capsule-host failed at {stage}: {message}"),
                        None,
                    )
                    .await;
            }
        }
    }

    /// The capsule's module, compiled (or from the cache, audited when an entry was rejected),
    /// in a sealed memfd for capsule-host.
    async fn wasm_module(
        &self,
        // `&mut`: a shared reference to the state would not be `Send` across the awaits.
        st: &mut CapsuleState,
        entry: &str,
    ) -> Result<std::os::fd::OwnedFd, String> {
        let stored = &st.spec.stored;
        let sha = stored
            .files
            .get(entry)
            .ok_or_else(|| format!("`{entry}` is not in the package"))?
            .clone();
        let digest: [u8; 32] = hex::decode(&sha)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| format!("the package lists a malformed hash for `{entry}`"))?;
        let module_cid = elastos::cid::from_sha256(digest).to_string();
        let path = stored.root.join(entry);
        let shared = self.shared.clone();
        let cid = module_cid.clone();
        // Kept in memory: at once. Else the cache or a compile: on a blocking thread.
        let sealed = match self.shared.wasm.kept(&cid) {
            Some(kept) => kept,
            None => tokio::task::spawn_blocking(move || shared.wasm.load(&cid, &path, &sha))
                .await
                .map_err(|e| e.to_string())?,
        }
        .map_err(|e| e.to_string())?;
        if let Some(why) = &sealed.rejected {
            let why = format!("rejected cache entry of module {module_cid}, compiled again: {why}");
            st.log.event(&why);
            self.shared
                .audit_sync(
                    "supervisor",
                    "wasm.cache.rejected",
                    st.peer.actor(),
                    Decision::Denied,
                    &why,
                    None,
                )
                .await;
        }
        st.log
            .event(&format!("module {module_cid} {}", sealed.source.describe()));
        Ok(sealed.fd)
    }

    async fn fail(&self, st: &mut CapsuleState, why: &str) {
        st.state = State::Failed;
        st.log.event(why);
        st.spec.watch.tell(StartOutcome::Failed(why.to_string()));
        if let Some(tx) = &st.spec.attach {
            let _ = tx.send(Event::Stderr {
                data: format!("elastos: {why}"),
            });
            let _ = tx.send(Event::Exit { code: 125 });
        }
        self.shared
            .audit_sync(
                "supervisor",
                "capsule.failed",
                st.peer.actor(),
                Decision::Info,
                why,
                None,
            )
            .await;
    }

    async fn exited(&self, myself: &ActorRef<Msg>, st: &mut CapsuleState, code: i32) {
        st.log.event(&format!("exited with code {code}"));
        // Before its hello, an exit is a failed start, whatever its restart policy does next.
        st.spec.watch.tell(StartOutcome::Failed(format!(
            "it exited with code {code} before it said hello on its socket"
        )));
        self.shared.set_live(&st.spec.name, None);
        // Its run directory goes with it (a restart makes a fresh one).
        if let Err(e) = remove_tmp(&self.shared, &st.spec.name) {
            tracing::warn!("removing the run directory of `{}`: {e}", st.spec.name);
        }
        // 128 + SIGSYS: the seccomp filter killed it for a forbidden system call. (Where the
        // supervisor follows the kernel log, `capsule.process-seccomp` names the process and the
        // call too; the kernel rate-limits those reports, so this record never depends on them.)
        if code == 128 + nix::libc::SIGSYS {
            let why = "killed by its seccomp filter: it made a forbidden system call (ptrace, bpf, mount, ...; see capsule-host/src/seccomp.rs)";
            st.log.event(why);
            self.shared
                .audit_sync(
                    "supervisor",
                    "capsule.seccomp",
                    st.peer.actor(),
                    Decision::Denied,
                    why,
                    None,
                )
                .await;
        }
        self.shared
            .audit_sync(
                "supervisor",
                "capsule.exit",
                st.peer.actor(),
                Decision::Info,
                &format!("exit code {code}"),
                None,
            )
            .await;
        if st.stopping {
            st.state = State::Stopped;
            for w in st.stop_waiters.drain(..) {
                let _ = w.send(());
            }
            if let Some(tx) = &st.spec.attach {
                let _ = tx.send(Event::Exit { code });
            }
            return;
        }
        let restart = std::mem::take(&mut st.pending_restart)
            || match st.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
        if !restart {
            st.state = State::Exited;
            if let Some(tx) = &st.spec.attach {
                let _ = tx.send(Event::Exit { code });
            }
            return;
        }
        // Restart intensity: at most N restarts within the window.
        let cfg = &self.shared.config.supervisor;
        let now = Instant::now();
        while st
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.restart_window)
        {
            st.recent.pop_front();
        }
        if st.recent.len() >= cfg.restart_intensity as usize {
            let why = format!(
                "restarted {} times within {}: marked failed and left down (fix it, then `elastos start {}`)",
                st.recent.len(),
                humantime::format_duration(cfg.restart_window),
                st.spec.name
            );
            self.fail(st, &why).await;
            return;
        }
        st.recent.push_back(now);
        st.restarts += 1;
        st.state = State::Restarting;
        // A short backoff that grows with the burst, so a crash loop costs little.
        let backoff = Duration::from_millis(100 * (1 << st.recent.len().min(5)));
        st.log.event(&format!(
            "restarting in {} ms (restart {} in this window)",
            backoff.as_millis(),
            st.recent.len()
        ));
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let _ = me.cast(Msg::Start);
        });
    }
}

fn exit_code(status: nix::sys::wait::WaitStatus) -> i32 {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 125,
    }
}

/// Waits for capsule-host to end without a thread of its own: its pidfd becomes readable when
/// it exits (a thread blocked in `waitpid` per capsule is the fallback where pidfds are not).
async fn exit_of(pid: u32) -> i32 {
    let reap = move || {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        loop {
            match nix::sys::wait::waitpid(pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(s) => return exit_code(s),
                Err(_) => return 125,
            }
        }
    };
    // SAFETY: an `OwnedFd` keeps its descriptor open and the same for as long as the AsyncFd
    // that owns it lives.
    let registered = |fd| unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok();
    match pidfd(pid).and_then(registered) {
        Some(fd) => {
            let _ = fd.readable().await;
            reap()
        }
        None => tokio::task::spawn_blocking(reap).await.unwrap_or(125),
    }
}

fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) with integer arguments; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: see above: `fd` was just created for this process and is owned here alone.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn pump(
    stream: impl Into<std::os::fd::OwnedFd>,
    name: &'static str,
    log: Arc<CapsuleLog>,
    attach: Option<mpsc::UnboundedSender<Event>>,
    drained: mpsc::UnboundedSender<()>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(stream.into()) {
        Ok(p) => p,
        Err(e) => {
            log.event(&format!("cannot read its {name}: {e}"));
            let _ = drained.send(());
            return;
        }
    };
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // Cap a line so a capsule that never writes a newline cannot grow this buffer.
            match (&mut reader)
                .take(64 * 1024)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches('\n');
                    log.output(name, line);
                    if let Some(tx) = &attach {
                        let data = line.to_string();
                        let _ = tx.send(if name == "stdout" {
                            Event::Stdout { data }
                        } else {
                            Event::Stderr { data }
                        });
                    }
                }
            }
        }
        let _ = drained.send(());
    });
}

/// Resident memory of a process and its descendants, from /proc.
fn tree_rss(pid: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![pid];
    let mut seen = 0;
    while let Some(p) = todo.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += kb * 1024;
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    todo.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    total
}

/// The capsule's run directory, empty at every start: `RUN_DIR/NAME`, 0700 and owned by the
/// capsule's uid (only its own Landlock rules reach it). In a private root its `/tmp` is a
/// sized tmpfs mounted over it, so nothing it writes there reaches the host's disk.
fn fresh_tmp(shared: &Shared, name: &str, uid: Option<u32>) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = shared.run_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    if let Some(uid) = uid {
        elastos::fsutil::chown_tree(&dir, uid)?;
    }
    Ok(dir)
}

/// Removes the capsule's run directory, if any. `remove_dir_all` never follows a symlink the
/// capsule may have left in it.
fn remove_tmp(shared: &Shared, name: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(shared.run_dir.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The capsule's private persistent directory, `$ELASTOS_HOME/state/capsules/NAME`: kept across
/// restarts, 0700 and owned by the capsule's uid. Reached only through its own root (`/state`)
/// or Landlock rule; the path through the 0700 home is closed to it otherwise.
/// The capsule's state directory, made and given to its uid, with the size limit in force on
/// it: a root supervisor mounts its quota (see [`elastos::quota`]); a normal user's has none.
fn state_dir(
    shared: &Shared,
    name: &str,
    uid: Option<u32>,
    storage: u64,
) -> Result<(std::path::PathBuf, Option<u64>), String> {
    let dir = make_state_dir(shared, name).map_err(|e| e.to_string())?;
    let quota = if nix::unistd::geteuid().is_root() {
        Some(elastos::quota::ensure(&dir, storage).map_err(|e| e.to_string())?)
    } else {
        None
    };
    // Capsule uids are handed out per supervisor run: what an earlier run's uid left is
    // given to this one's (the mounted file system's root included).
    if let Some(uid) = uid {
        elastos::fsutil::chown_tree(&dir, uid)
            .map_err(|e| format!("giving {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok((dir, quota))
}

fn make_state_dir(shared: &Shared, name: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = shared.home.state_dir().join("capsules");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)?;
    let dir = parent.join(name);
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    }
    Ok(dir)
}
