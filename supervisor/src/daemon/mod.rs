//! The supervisor: `elastos up --foreground`.
//!
//! Start-up order matters for the trusted base: take the node's state lock (one supervisor per
//! home, and no CLI writes state behind its back), become non-dumpable, open the key, the
//! authority and the audit log, then listen on the control socket, start the default capsules,
//! and only then report ready. See docs/ARCHITECTURE.md for the actor tree and the call path.

pub mod capsule;
pub mod conn;
pub mod control;
pub mod decide;
pub mod kmsg;
pub mod logs;
pub mod outbox;
pub mod prompts;
pub mod root;
pub mod routes;
pub mod shell;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use elastos::audit::{AuditLog, AuditOptions, Decision, Durability, Event};
use elastos::authority::{Authority, PublisherKind};
use elastos::config::Config;
use elastos::home::Home;
use elastos::host::Spawner;
use elastos::identity::NodeKey;
use elastos::store::Store;
use elastos_schema::policy::Standing;
use ractor::{Actor, ActorRef};

use conn::{Conn, Route};
use root::{Root, RootMsg};

/// Live connections by capsule name, and each name's call count (made and served), which
/// outlives its connections so that `ps` still counts a capsule's calls after it restarts or
/// exits.
#[derive(Default)]
pub struct ConnTable {
    live: Mutex<HashMap<String, Arc<Conn>>>,
    calls: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl ConnTable {
    pub fn insert(&self, name: &str, conn: Arc<Conn>) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), conn);
    }
    pub fn remove(&self, name: &str, conn: &Arc<Conn>) {
        let mut g = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if g.get(name).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            g.remove(name);
        }
    }
    /// The counter a connection of `name` adds its calls to.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
    /// Forgets a removed capsule's count, so a new capsule of the same name starts at zero.
    pub fn forget(&self, name: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
    /// Every live connection.
    pub fn live(&self) -> Vec<Arc<Conn>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
    pub fn calls(&self, name: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// State every connection task and actor reads; the per-call path takes only short locks here.
pub struct Shared {
    pub home: Home,
    /// The node key: it signs what the supervisor itself writes beside the log (a prune's anchor).
    pub key: Arc<NodeKey>,
    pub did: String,
    pub dev_did: String,
    pub config: Config,
    pub authority: Mutex<Authority>,
    /// The authority's verifier, run on the call path outside its lock.
    pub verifier: elastos::authority::Verifier,
    pub audit: AuditLog,
    pub routes: RwLock<routes::Routes<Route>>,
    pub conns: ConnTable,
    pub store: Store,
    pub spawner: Spawner,
    /// Compiled WASM modules (`elastos::wasm`).
    pub wasm: elastos::wasm::WasmCache,
    pub started: Instant,
    pub logs_dir: PathBuf,
    /// Forwarded calls waiting for a reply, over all providers; the deadline sweeper sleeps on
    /// `pending_wake` while it is zero.
    pub pending: AtomicUsize,
    pub pending_wake: tokio::sync::Notify,
    /// Where each capsule's private tmp lives: a directory of this supervisor's own (0711),
    /// outside `$ELASTOS_HOME` (0700), which a capsule running as its own uid could not enter.
    pub run_dir: PathBuf,
    /// Each capsule's own host uid, when the supervisor runs as root; stable for its life.
    capsule_uids: Mutex<HashMap<String, u32>>,
    /// The capsules running now, as kept in [`LIVE_FILE`].
    live: Mutex<std::collections::BTreeMap<String, LiveCapsule>>,
    /// The kernel log is followed ([`kmsg`]).
    pub kmsg_active: std::sync::atomic::AtomicBool,
    /// The node's shell, when `[policy] decider = "shell"`.
    pub shell: shell::ShellLink,
    /// Prompts waiting for the person, and what was allowed once.
    pub prompts: prompts::Prompts,
    /// Each capsule name's audit actor as last started, kept after it exits: the kernel's
    /// report of its end may come after.
    actors: Mutex<HashMap<String, String>>,
}

/// `state/live.json`: the capsules this supervisor runs, kept on disk so that the next `up`
/// after a kill -9 (or a crash) can record which capsules went down with it.
pub const LIVE_FILE: &str = "live.json";

/// One running capsule, as [`LIVE_FILE`] lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveCapsule {
    pub actor: String,
    pub pid: u32,
}

/// What a supervisor that stopped without `down` left behind: its pid file, and its list of
/// running capsules.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
struct LiveFile {
    supervisor: u32,
    capsules: std::collections::BTreeMap<String, LiveCapsule>,
}

impl Shared {
    /// Notes that capsule `name` runs (`Some`) or no longer does (`None`), on disk. Best
    /// effort: a failure costs only the record of a loss after a crash.
    pub fn set_live(&self, name: &str, running: Option<LiveCapsule>) {
        if let Some(c) = &running {
            self.actors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), c.actor.clone());
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match running {
            Some(c) => live.insert(name.to_string(), c),
            None => live.remove(name),
        };
        let file = LiveFile {
            supervisor: std::process::id(),
            capsules: live.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec_pretty(&file) {
            let path = self.home.state_dir().join(LIVE_FILE);
            if let Err(e) = elastos::fsutil::write_atomic(&path, &bytes, 0o600) {
                tracing::warn!("writing {}: {e}", path.display());
            }
        }
    }
}

/// After a supervisor stopped without `down`: records the unclean stop and each capsule it lost,
/// then forgets them. Nothing when the last stop was clean.
fn record_unclean_stop(
    home: &Home,
    audit: &AuditLog,
    previous_pid: Option<u32>,
) -> anyhow::Result<()> {
    let path = home.state_dir().join(LIVE_FILE);
    let live: LiveFile = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => LiveFile::default(),
    };
    let pid = previous_pid.or((live.supervisor != 0).then_some(live.supervisor));
    let Some(pid) = pid else { return Ok(()) };
    let record = |action: &'static str, resource: String, reason: String| {
        audit.append(
            Event {
                actor: "supervisor".into(),
                action: action.into(),
                resource,
                decision: Decision::Info,
                reason,
                token: None,
            },
            Durability::Sync,
        )
    };
    record(
        "supervisor.unclean-stop",
        String::new(),
        format!(
            "the supervisor before this one (pid {pid}) stopped without `elastos down` (killed or crashed); {} capsule(s) went down with it",
            live.capsules.len()
        ),
    )
    .context("recording the last supervisor's unclean stop")?;
    for (name, c) in &live.capsules {
        record(
            "capsule.lost",
            c.actor.clone(),
            format!(
                "`{name}` (pid {}) was running when its supervisor stopped without `down`; its processes ended with it",
                c.pid
            ),
        )
        .context("recording a lost capsule")?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

impl Shared {
    pub fn pending_added(&self) {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.pending_wake.notify_one();
        }
    }
    pub fn pending_done(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// The host uid capsule `name` runs as: its own, from the configured base, when the
    /// supervisor is root; `None` (the supervisor's own uid) otherwise.
    pub fn capsule_uid(&self, name: &str) -> Option<u32> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let mut uids = self.capsule_uids.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.config.supervisor.capsule_uid_base + uids.len() as u32;
        Some(*uids.entry(name.to_string()).or_insert(next))
    }

    /// The capsule serving `target`, if any.
    pub fn route_for(&self, target: &str) -> Option<Arc<Route>> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.lookup(target).map(|(_, r)| r.clone())
    }

    /// The capsule that runs as host uid `uid` (a root supervisor's capsules have their own).
    pub fn capsule_of_uid(&self, uid: u32) -> Option<String> {
        self.capsule_uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, u)| **u == uid)
            .map(|(n, _)| n.clone())
    }

    /// The audit actor capsule `name` last started as.
    pub fn actor_of(&self, name: &str) -> Option<String> {
        self.actors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The namespaces the live connection of capsule `name` serves, sorted.
    pub fn served_by(&self, name: &str) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = routes
            .iter()
            .filter(|r| r.conn.peer.name == name)
            .map(|r| r.pattern.clone())
            .collect();
        out.sort();
        out
    }

    /// Published by this node's key, one of its former keys, or an issuer it trusts; never the
    /// development key.
    /// A publisher as capsules and listings show it: its DID, or `dev` for the development key.
    pub fn publisher_label(&self, publisher: &str) -> String {
        if publisher == self.dev_did {
            "dev".to_string()
        } else {
            publisher.to_string()
        }
    }

    /// How this node regards a package's publisher. A token issuer (`trust add DID`) is not
    /// thereby a publisher: running someone's packages and accepting their tokens are apart.
    pub fn standing(&self, publisher: &str) -> Standing {
        if publisher == self.dev_did {
            return Standing::Dev;
        }
        if publisher == self.did {
            return Standing::ThisNode;
        }
        let authority = self.authority.lock().unwrap_or_else(|e| e.into_inner());
        if authority.is_former_key(publisher) {
            return Standing::ThisNode;
        }
        match authority.publisher_kind(publisher) {
            Some(PublisherKind::FirstParty) => Standing::FirstParty,
            Some(PublisherKind::Known) => Standing::Known,
            None => Standing::Unknown,
        }
    }
}

/// The development key (`$ELASTOS_HOME/dev.key`): signs what `elastos run <dir>` packs, and is
/// shown as publisher `dev` and never trusted.
pub fn dev_key(home: &Home) -> anyhow::Result<NodeKey> {
    let path = home.root().join("dev.key");
    if std::fs::symlink_metadata(&path).is_ok() {
        // As private as the node's key: what it signs runs, as `dev`, on this node.
        elastos::home::check_private(&path, 0o600)?;
        return NodeKey::from_hex_file(&path)
            .with_context(|| format!("reading the development key {}", path.display()));
    }
    let key = NodeKey::generate();
    elastos::fsutil::write_atomic(&path, key.seed_hex().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

fn pid_file(home: &Home) -> PathBuf {
    home.root().join("supervisor.pid")
}

/// The pid recorded by a running supervisor, if any.
pub fn recorded_pid(home: &Home) -> Option<u32> {
    std::fs::read_to_string(pid_file(home))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Runs the supervisor in this process until `down` or SIGTERM/SIGINT. Prints `ready` on stdout
/// once it serves: `elastos up` waits for that line on a pipe, and so can systemd or a test.
pub fn foreground(home: Home) -> anyhow::Result<()> {
    home.ensure()?;
    let lock = match home.try_lock() {
        Ok(l) => l,
        Err(elastos::home::HomeError::Locked { .. }) => {
            match recorded_pid(&home) {
                Some(pid) => println!("already running (pid {pid})"),
                None => println!("already running"),
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    // A supervisor holds the node key and every capsule's traffic: no core dumps, no ptrace by
    // other processes of the same user.
    nix::sys::prctl::set_dumpable(false).context("making the supervisor non-dumpable")?;
    let logs_dir = home.ensure_dir("logs")?;
    // What supervisors killed before left behind (their capsules' tmp directories) goes first.
    for stale in stale_run_dirs(&std::env::temp_dir(), pid_alive) {
        match std::fs::remove_dir_all(&stale) {
            Ok(()) => tracing::info!(
                "removed {}, left by a supervisor that stopped without `down`",
                stale.display()
            ),
            Err(e) => tracing::warn!("removing {}: {e}", stale.display()),
        }
    }
    let run_dir = make_run_dir().context("creating the capsules' runtime directory")?;
    let log_file = tracing_appender::rolling::never(&logs_dir, "supervisor.log");
    let (writer, _guard) = tracing_appender::non_blocking(log_file);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ELASTOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        .with_ansi(false)
        .try_init();

    let key = Arc::new(NodeKey::load_or_create(&home).context("loading the node identity")?);
    let dev = dev_key(&home)?;
    let config = Config::load(&home)?;
    let mut authority = crate::cli::checked_authority(&home, key.clone())?;
    authority.ensure_state_reserve();
    // Each commit publishes the state's stamp; the log's checkpoints and head record it.
    let stamp: elastos::audit::StateCell = Arc::default();
    authority.publish_stamp(stamp.clone());
    home.ensure_dir("audit")?;
    let audit = AuditLog::open(
        &home.audit_dir(),
        key.clone(),
        AuditOptions {
            strict: config.audit.strict,
            per_call: config.audit.per_call || config.audit.strict,
            state: Some(stamp),
            segment_bytes: config
                .audit
                .segment_size
                .unwrap_or(AuditOptions::default().segment_bytes)
                .max(4096),
            ..AuditOptions::default()
        },
    )
    .context("opening the audit log")?;
    let store = Store::open(&home)?;
    let host_bin = elastos::host::find_host_binary()?;
    elastos::host::sweep_cgroups(&host_bin);
    let wasm = elastos::wasm::WasmCache::new(home.root(), &key, host_bin.clone());
    let spawner = Spawner::start(host_bin);
    let did = key.did();
    let shared = Arc::new(Shared {
        home: home.clone(),
        key: key.clone(),
        did: did.clone(),
        dev_did: dev.did(),
        config,
        verifier: authority.verifier(),
        authority: Mutex::new(authority),
        audit,
        routes: RwLock::new(routes::Routes::default()),
        conns: ConnTable::default(),
        store,
        spawner,
        wasm,
        started: Instant::now(),
        logs_dir,
        pending: AtomicUsize::new(0),
        pending_wake: tokio::sync::Notify::new(),
        run_dir: run_dir.clone(),
        capsule_uids: Mutex::new(HashMap::new()),
        live: Mutex::new(std::collections::BTreeMap::new()),
        kmsg_active: std::sync::atomic::AtomicBool::new(false),
        shell: shell::ShellLink::default(),
        prompts: prompts::Prompts::default(),
        actors: Mutex::new(HashMap::new()),
    });
    // A pid file left behind: the supervisor before stopped without `down` (this one holds the
    // lock, so that one is gone).
    let previous = recorded_pid(&home);
    record_unclean_stop(&home, &shared.audit, previous)?;
    elastos::fsutil::write_atomic(
        &pid_file(&home),
        format!("{}\n", std::process::id()).as_bytes(),
        0o600,
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("elastos-rt")
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(run(shared.clone()));
    rt.shutdown_timeout(Duration::from_secs(2));
    // A clean stop: the next `up` has nothing to report.
    let _ = std::fs::remove_file(home.state_dir().join(LIVE_FILE));
    let _ = std::fs::remove_file(pid_file(&home));
    if let Ok(path) = elastos::control::socket_path(&home) {
        let _ = std::fs::remove_file(path);
    }
    drop(lock);
    result
}

async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let path = elastos::control::socket_path(&shared.home)?;
    // A socket left by a supervisor that died: we hold the lock, so nobody else serves it.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;

    let (root, root_handle) = Actor::spawn(
        Some("supervisor".into()),
        Root {
            shared: shared.clone(),
        },
        (),
    )
    .await
    .context("starting the actor tree")?;
    let audited = shared.audit.append(
        Event {
            actor: "supervisor".into(),
            action: "supervisor.start".into(),
            resource: shared.did.clone(),
            decision: Decision::Info,
            reason: format!(
                "pid {}, policy {}",
                std::process::id(),
                shared.config.policy.decider.policy_name()
            ),
            token: None,
        },
        Durability::Sync,
    );
    if let Err(e) = audited {
        anyhow::bail!("the audit log cannot be written: {e}");
    }
    // Session grants still recorded here outlived a supervisor that stopped without `down`.
    end_sessions(
        &shared,
        "the supervisor that granted it stopped without `down`",
    )
    .await;

    let (down_tx, mut down_rx) = tokio::sync::mpsc::channel::<Duration>(1);
    start_defaults(&shared, &root).await;
    let sweeper = tokio::spawn(conn::sweep_deadlines(shared.clone()));
    // A root supervisor's capsules have uids and cgroups of their own: the kernel's reports
    // of their children's seccomp and memory kills name them.
    if nix::unistd::geteuid().is_root() {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("elastos-kmsg".into())
            .spawn(move || kmsg::watch(shared));
    }
    let server = tokio::spawn(control::serve(
        listener,
        shared.clone(),
        root.clone(),
        down_tx.clone(),
    ));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready pid={}", std::process::id());
        let _ = out.flush();
    }
    tracing::info!(did = %shared.did, pid = std::process::id(), "supervisor ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let timeout = tokio::select! {
        t = down_rx.recv() => t.unwrap_or(Duration::from_secs(10)),
        _ = term.recv() => Duration::from_secs(10),
        _ = int.recv() => Duration::from_secs(10),
    };
    shutdown(&shared, &root, timeout).await;
    server.abort();
    sweeper.abort();
    root.stop(None);
    let _ = root_handle.await;
    let _ = std::fs::remove_dir_all(&shared.run_dir);
    Ok(())
}

/// The run directories in `temp` that supervisors of this user left behind when they stopped
/// without `down` (killed, crashed): named `elastos-PID-HEX` by [`make_run_dir`], owned by this
/// user, of a pid no longer alive. Another supervisor's that is still running is never one.
pub fn stale_run_dirs(temp: &Path, alive: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir(temp) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let Some((pid, rnd)) = name
                .to_str()
                .and_then(|n| n.strip_prefix("elastos-"))
                .and_then(|n| n.split_once('-'))
            else {
                return false;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                return false;
            };
            rnd.len() == 16
                && rnd.bytes().all(|b| b.is_ascii_hexdigit())
                && pid != std::process::id()
                && !alive(pid)
                // Not followed: a link is never a run directory.
                && e.path()
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir() && m.uid() == me)
        })
        .map(|e| e.path())
        .collect()
}

/// Whether process `pid` is running: a zombie has ended, whether or not anyone reaps it (a
/// container's init may never).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // The state follows the command name's closing parenthesis.
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// A fresh directory of this supervisor's in the system's temp dir: created, never reused, so
/// nobody can prepare it (or a symlink in its place) beforehand.
fn make_run_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!(
        "elastos-{}-{}",
        std::process::id(),
        hex::encode(rnd)
    ));
    // Traversable by the capsules' uids (to reach their own tmp), listable by nobody else.
    std::fs::DirBuilder::new().mode(0o711).create(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    Ok(dir)
}

async fn shutdown(shared: &Arc<Shared>, root: &ActorRef<RootMsg>, timeout: Duration) {
    let _ = root
        .call(
            |port| RootMsg::Shutdown(timeout, port),
            Some(timeout + Duration::from_secs(10)),
        )
        .await;
    end_sessions(shared, "the session ended (`elastos down`)").await;
    // Every capsule is gone: their state quotas can be unmounted.
    for e in elastos::quota::unmount_all(&shared.home.state_dir().join("capsules")) {
        tracing::warn!("unmounting a state quota: {e}");
    }
    let _ = shared.audit.append(
        Event {
            actor: "supervisor".into(),
            action: "supervisor.stop".into(),
            resource: shared.did.clone(),
            decision: Decision::Info,
            reason: "down".into(),
            token: None,
        },
        Durability::Sync,
    );
    let _ = shared.audit.close();
}

/// Starts the default capsules. With the shell deciding, the shell comes first (from the
/// default capsules, else the store, under its configured name), and the others wait until it
/// decides (at most `shell_wait`), so their start-time decisions find it there.
async fn start_defaults(shared: &Arc<Shared>, root: &ActorRef<RootMsg>) {
    let failed = |source: &str, e: &str| {
        tracing::error!(capsule = %source, "default capsule not started: {e}");
        eprintln!("elastos: default capsule {source} not started: {e}");
    };
    let mut rest = Vec::new();
    let mut shell = None;
    let by_shell = shared.config.policy.decider == elastos::config::Decider::Shell;
    for source in &shared.config.supervisor.default_capsules {
        match control::resolve_default(shared, source).await {
            Ok(s) if by_shell && shell.is_none() && is_the_shell(shared, &s) => {
                shell = Some((source.clone(), s))
            }
            Ok(s) => rest.push((source.clone(), s)),
            Err(e) => failed(source, &e),
        }
    }
    let name = &shared.config.policy.shell;
    // A default capsule under the shell's name that is not the node's shell (another
    // publisher's) starts with the rest, and is refused as the shell; none is taken from the
    // store in its place.
    let named_so = rest.iter().any(|(_, s)| s.manifest.name == *name);
    if by_shell {
        let shell = match shell {
            Some(s) => Some(s),
            None if named_so => None,
            None => control::resolve_default(shared, name)
                .await
                .map(|s| (name.clone(), s))
                .map_err(|e| {
                    failed(name, &format!("{e}; with no shell every request is denied `policy unavailable`: add the shell's package to [supervisor] default_capsules"))
                })
                .ok(),
        };
        if let Some((source, s)) = shell {
            match control::start_stored(root, s).await {
                Ok(_) => {
                    // Not attached in time: the rest start anyway, and wait for it themselves.
                    let _ = shared
                        .shell
                        .wait_for_shell(shared.config.policy.shell_wait)
                        .await;
                }
                Err(e) => failed(&source, &e),
            }
        }
    }
    for (source, s) in rest {
        if let Err(e) = control::start_stored(root, s).await {
            failed(&source, &e);
        }
    }
}

/// Whether a stored package is the one the node names as its shell.
fn is_the_shell(shared: &Shared, s: &elastos::store::Stored) -> bool {
    let first_party = matches!(
        shared.standing(&s.publisher),
        elastos_schema::policy::Standing::ThisNode | elastos_schema::policy::Standing::FirstParty
    );
    shared
        .config
        .policy
        .is_the_shell(&s.manifest.name, &s.publisher, first_party)
}

/// Revokes every session grant and the tokens minted under it, each recorded.
async fn end_sessions(shared: &Arc<Shared>, why: &str) {
    let ended = shared
        .authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sessions_end(conn::now_unix());
    match ended {
        Ok(ended) => {
            for (id, n) in ended {
                shared
                    .audit_sync(
                        "supervisor",
                        "grant.revoke",
                        &id,
                        Decision::Info,
                        &format!("session grant revoked, and {n} token(s) minted under it: {why}"),
                        None,
                    )
                    .await;
            }
        }
        Err(e) => {
            tracing::error!("session grants not revoked: {e}");
            eprintln!("elastos: session grants not revoked: {e}; `elastos grants` lists them, `elastos revoke GRANT_ID` ends one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_key_is_as_private_as_the_nodes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        home.ensure().unwrap();
        let key = dev_key(&home).unwrap();
        assert_eq!(dev_key(&home).unwrap().did(), key.did(), "kept");
        let path = home.root().join("dev.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", dev_key(&home).err().expect("refused"));
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &path).unwrap();
        let e = format!("{:#}", dev_key(&home).err().expect("refused"));
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn only_dead_supervisors_run_directories_of_this_user_are_stale() {
        let temp = tempfile::tempdir().unwrap();
        let hex = "0123456789abcdef";
        let at = |n: &str| temp.path().join(n);
        for dir in [
            format!("elastos-1-{hex}"),
            format!("elastos-2-{hex}"),
            "elastos-3-short".to_string(),
            format!("elastos-x-{hex}"),
            "elsewhere".to_string(),
        ] {
            std::fs::create_dir(at(&dir)).unwrap();
        }
        std::fs::write(at(&format!("elastos-5-{hex}")), b"").unwrap();
        std::os::unix::fs::symlink(at("elsewhere"), at(&format!("elastos-4-{hex}"))).unwrap();
        let stale = stale_run_dirs(temp.path(), |pid| pid == 2);
        assert_eq!(stale, [at(&format!("elastos-1-{hex}"))]);
        assert!(stale_run_dirs(&temp.path().join("none"), |_| false).is_empty());
    }
}
