//! capsule-host: the per-capsule process. The supervisor starts one per capsule:
//!
//! ```text
//! capsule-host --name N --root DIR --entry REL --parent-pid P [--limits JSON] [--tmp DIR]
//!              [--host-libs] [--substrate native|wasm] [--env K=V]... -- ARGS...
//! fd 3: the capsule's socket (one end of a socketpair)   fd 4: status pipe (JSON lines)
//! fd 5 (wasm only): the precompiled module, in a memfd sealed against writes, growth,
//!                   shrinking and further seals (anything else is refused)
//!
//! capsule-host compile IN OUT     IN: a wasm module (binary or WAT text), OUT: wasmtime's
//!                                 precompiled artifact for the engine `--substrate wasm` uses;
//!                                 prints that engine's compatibility hash (64 hex digits)
//! capsule-host compat-hash        prints only the hash (the cache key of an artifact)
//! ```
//!
//! `compile` runs no guest code, but it parses untrusted bytes: it opens both files, then confines
//! itself (rlimits, `no_new_privs`, Landlock with no path at all, the WASM host's seccomp list)
//! before it reads a byte. Exit 0, or 1 with the reason on stderr.
//!
//! A WASM capsule's process does not exec: after the very same confinement steps it runs the
//! module in wasmtime ([`wasm`]), and `--entry` only names the module in messages. Its status
//! pipe stays open until the end: a guest stopped by a limit adds
//! `{"event":"limit","limit":NAME,"code":N}` (NAME `memory`, `tables` or `call_budget_ms`).
//!
//! The process tree, and why: the supervisor → capsule-host (parent-death signal SIGKILL, parent
//! re-checked) → init, PID 1 of a new PID namespace (parent-death signal SIGKILL) → the capsule.
//! When init ends, the kernel kills everything left in its namespace, so a capsule that
//! double-forks or calls `setsid` still leaves nothing behind; and every link of the chain dies
//! with the one above it, down from a `kill -9` of the supervisor. Init reaps zombies and forwards
//! TERM/INT/HUP/QUIT/USR1/USR2 to the capsule (PID 1 ignores signals it has no handler for, so the
//! capsule must not be PID 1). A WASM host is the exception: a WASM guest starts no process, so
//! it runs in init's place, as PID 1, with handlers that end it on those signals. Without the
//! privilege for a PID namespace, capsule-host becomes a child subreaper and kills every
//! descendant itself ("subreaper" isolation, weaker: a SIGKILL of capsule-host orphans
//! grandchildren).
//!
//! Confinement runs in a fixed order and fails closed: the user namespace and every other
//! namespace come with the clone of init ([`userns`]), init builds the private root
//! ([`newroot`]), and the capsule's process applies the rest ([`confine`]) between its fork and
//! its exec (or, for WASM, before it runs the module). A step that fails is reported on the
//! status pipe with its name (through a close-on-exec pipe: EOF means the exec happened) and
//! the capsule never runs. Exit codes: the capsule's own (128+N for signal N); 125 a host
//! error; 126 entry not executable (or a module that does not link); 127 entry not found; for
//! WASM, 120 the guest trapped, 121 over its per-call CPU budget, 122 over its memory limit, 123
//! over its table or instance limit (its log says which and what to change); a guest's own exit
//! code among 120–123 is reported as 1.

mod cgroup;
mod confine;
mod init;
mod newroot;
mod seccomp;
mod userns;
mod wasm;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

const SOCKET_FD: i32 = 3;
const STATUS_FD: i32 = 4;
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

struct Args {
    name: String,
    root: PathBuf,
    entry: String,
    parent_pid: i32,
    env: Vec<(String, String)>,
    args: Vec<String>,
    limits: elastos_schema::Limits,
    /// The capsule's private writable directory (its `TMPDIR`).
    tmp: Option<PathBuf>,
    /// Granted `host://libs`: the host's libraries and programs, read-only.
    host_libs: bool,
    /// The capsule's own host uid and gid.
    uid: Option<u32>,
    /// Layers the node allows capsules to run without when this machine cannot apply them.
    allow_without: Vec<String>,
    /// Its private persistent directory, when granted,
    state: Option<PathBuf>,
    /// and the size limit the supervisor mounted on it, if it could.
    state_quota: Option<u64>,
    /// Its network grant: `host` (the host's network) or `loopback` (its own, loopback only).
    net: Option<String>,
    /// `--substrate wasm`: run the module at fd 5 instead of exec'ing the entry.
    wasm: bool,
}

fn fail(stage: &str, why: impl std::fmt::Display) -> ! {
    status(&format!(
        r#"{{"event":"error","stage":"{}","message":"{}"}}"#,
        escape(stage),
        escape(&why.to_string())
    ));
    let why = why.to_string();
    // Most reasons already say where to look; the rest get the pointer.
    let next = if why.contains("elastos doctor") {
        ""
    } else {
        "; run `elastos doctor`"
    };
    eprintln!("capsule-host: {stage}: {why}{next}");
    std::process::exit(125);
}

fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

fn status(line: &str) {
    // The status pipe is fd 4, owned by this process; it is written once or twice and closed by
    // exit. A broken pipe (the supervisor went away) is not an error here.
    let mut f = std::mem::ManuallyDrop::new(
        // SAFETY: fd 4 is the status pipe the supervisor passed; ManuallyDrop keeps this
        // temporary File from closing it.
        unsafe { std::fs::File::from_raw_fd(STATUS_FD) },
    );
    let _ = writeln!(f, "{line}");
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut name, mut root, mut entry, mut parent) = (None, None, None, None);
    let mut env = Vec::new();
    let mut args = Vec::new();
    let mut limits = elastos_schema::Limits::default();
    let mut tmp = None;
    let mut host_libs = false;
    let mut uid = None;
    let mut allow_without = Vec::new();
    let mut state = None;
    let mut state_quota = None;
    let mut net = None;
    let mut wasm = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--name" => name = it.next(),
            "--root" => root = it.next().map(PathBuf::from),
            "--entry" => entry = it.next(),
            "--parent-pid" => parent = it.next().and_then(|p| p.parse().ok()),
            "--tmp" => tmp = it.next().map(PathBuf::from),
            "--host-libs" => host_libs = true,
            "--substrate" => match it.next().as_deref() {
                Some("native") => wasm = false,
                Some("wasm") => wasm = true,
                _ => {
                    eprintln!("capsule-host: --substrate takes native or wasm");
                    std::process::exit(125);
                }
            },
            "--allow-without" => allow_without.extend(it.next()),
            "--state" => state = it.next().map(PathBuf::from),
            "--state-quota" => match it.next().and_then(|q| q.parse::<u64>().ok()) {
                Some(q) => state_quota = Some(q),
                None => {
                    eprintln!("capsule-host: --state-quota takes a size in bytes");
                    std::process::exit(125);
                }
            },
            "--net" => match it.next().as_deref() {
                Some(n @ ("host" | "loopback")) => net = Some(n.to_string()),
                _ => {
                    eprintln!("capsule-host: --net takes host or loopback");
                    std::process::exit(125);
                }
            },
            "--uid" => match it.next().and_then(|u| u.parse::<u32>().ok()) {
                Some(u) if u != 0 => uid = Some(u),
                _ => {
                    eprintln!("capsule-host: --uid takes a non-zero uid");
                    std::process::exit(125);
                }
            },
            "--limits" => match it.next().map(|j| serde_json::from_str(&j)) {
                Some(Ok(l)) => limits = l,
                _ => {
                    eprintln!("capsule-host: --limits takes the manifest's [limits] as JSON");
                    std::process::exit(125);
                }
            },
            "--env" => {
                if let Some((k, v)) = it.next().as_deref().and_then(|kv| kv.split_once('=')) {
                    env.push((k.to_string(), v.to_string()));
                }
            }
            "--" => {
                args.extend(it.by_ref());
            }
            other => {
                eprintln!("capsule-host: unknown argument `{other}`: capsule-host is started by the elastos supervisor, not by hand");
                std::process::exit(125);
            }
        }
    }
    match (name, root, entry, parent) {
        (Some(name), Some(root), Some(entry), Some(parent_pid)) => Args {
            name,
            root,
            entry,
            parent_pid,
            env,
            args,
            limits,
            tmp,
            host_libs,
            uid,
            allow_without,
            state,
            state_quota,
            net,
            wasm,
        },
        _ => {
            eprintln!("capsule-host: --name, --root, --entry and --parent-pid are required: capsule-host is started by the elastos supervisor, not by hand");
            std::process::exit(125);
        }
    }
}

/// The entry must be a relative path inside the root, without `..`.
fn entry_path(root: &Path, entry: &str) -> Result<PathBuf, String> {
    let p = Path::new(entry);
    if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "entry `{entry}` must be a relative path inside the capsule"
        ));
    }
    Ok(root.join(p))
}

fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Ends the process at the first panic, after saying where: capsule-host never unwinds.
/// Unwinding would run destructors past its descriptor handling (it closes inherited descriptors
/// by number, and a WASM host runs in the same process as the frames that held them), closing
/// numbers that by then belong to something else. Cargo sets `panic` per profile, not per
/// package, and the supervisor's actors need unwinding, so it is a hook.
fn end_at_first_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("capsule-host: internal error, stopping at once: {info}");
        // SAFETY: _exit ends the process without running anything of this one's.
        unsafe { nix::libc::_exit(EXIT_PANIC) }
    }));
}

/// Whether the capsule needs Landlock's scoping (of signals and abstract Unix sockets) and this
/// kernel (`abi`) lacks it. Its own network and PID namespaces otherwise keep it from the
/// host's abstract sockets (they belong to a network namespace) and processes; with the host's
/// network, or without a PID namespace, only the scoping does.
fn scope_needed(abi: Option<i32>, host_net: bool, pid_namespace: bool) -> bool {
    let scoped = abi.is_some_and(elastos_schema::landlock::scopes);
    !scoped && (host_net || !pid_namespace)
}

/// The interpreter a script at `prog` names on its `#!` line, when the script itself exists.
fn missing_interpreter(prog: &std::ffi::CStr) -> Option<String> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(prog.to_bytes()));
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let interp = String::from_utf8_lossy(line)
        .split_whitespace()
        .next()?
        .to_string();
    Some(interp)
}

/// capsule-host's exit status after a panic of its own (never the guest's).
const EXIT_PANIC: i32 = 125;

fn main() {
    end_at_first_panic();
    match std::env::args().nth(1).as_deref() {
        Some("compile") => compile_main(),
        // Once per supervisor start, before any capsule: see `cgroup`'s module doc.
        Some("sweep-cgroups") => {
            if nix::unistd::geteuid().is_root() {
                let n = cgroup::sweep(cgroup::system_root());
                println!("{n}");
            }
            std::process::exit(0);
        }
        // How many seccomp programs a WASM host runs under once its module is loaded (its
        // policy's, and `NO_NEW_EXEC`): a test compares a running host's count with it.
        Some("wasm-filters") => {
            let base = seccomp::compile(&seccomp::wasm(), &seccomp::wasm_allowed());
            match (base, seccomp::no_new_exec()) {
                (Ok(b), Ok(n)) => {
                    println!("{}", b.len() + n.len());
                    std::process::exit(0);
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("capsule-host wasm-filters: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("compat-hash") => match wasm::engine() {
            Ok(e) => {
                println!("{}", wasm::compatibility_hash(&e));
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("capsule-host compat-hash: {e}");
                std::process::exit(1);
            }
        },
        _ => {}
    }
    let a = parse_args();
    // Before anything else, while single-threaded: die with the supervisor.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("parent-death signal", e);
    }
    if nix::unistd::getppid().as_raw() != a.parent_pid {
        fail("parent check", "the supervisor is already gone");
    }
    let _ = nix::sys::prctl::set_dumpable(false);
    if !confine::single_threaded() {
        fail(
            "single thread check",
            "more than one thread; namespaces need exactly one",
        );
    }
    if a.wasm {
        // WASI's runtime (wasmtime-wasi's own tokio runtime, built at the guest's first
        // output) would start a worker per CPU; the guest is single-threaded and one is
        // enough. Set while this process has one thread, so nothing reads the environment
        // meanwhile; neither a guest nor an exec'd capsule gets this environment.
        std::env::set_var("TOKIO_WORKER_THREADS", "1");
    }
    let entry = match entry_path(&a.root, &a.entry) {
        Ok(e) => e,
        Err(e) => fail("entry", e),
    };
    // The module is checked before anything else is set up: it is a descriptor, so no later
    // step (the private root, Landlock) needs a path for it.
    let module = if a.wasm {
        Some(wasm::sealed_module(wasm::MODULE_FD).unwrap_or_else(|e| fail("module", e)))
    } else {
        None
    };
    // Everything exec needs is prepared before forking.
    // Relative to the package directory, the capsule's working directory: a capsule with a uid
    // of its own could not walk the absolute path through the node's private home.
    let prog = CString::new(format!("./{}", a.entry).as_bytes())
        .unwrap_or_else(|_| fail("entry", "NUL in path"));
    let mut argv = vec![CString::new(a.name.as_bytes()).unwrap_or_else(|_| fail("args", "NUL"))];
    for s in &a.args {
        argv.push(
            CString::new(s.as_bytes()).unwrap_or_else(|_| fail("args", "NUL in an argument")),
        );
    }
    let mut envp = vec![
        CString::new(format!("ELASTOS_SOCKET_FD={SOCKET_FD}"))
            .unwrap_or_else(|_| fail("env", "NUL")),
        CString::new(format!("ELASTOS_CAPSULE={}", a.name)).unwrap_or_else(|_| fail("env", "NUL")),
        CString::new("PATH=/usr/bin:/bin").unwrap_or_else(|_| fail("env", "NUL")),
    ];
    for (k, v) in &a.env {
        envp.push(
            CString::new(format!("{k}={v}")).unwrap_or_else(|_| fail("env", "NUL in a variable")),
        );
    }

    // Signals are taken synchronously (sigwait) by capsule-host and init; the capsule gets a
    // clean mask back before exec.
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.add(Signal::SIGCHLD);
    if let Err(e) = mask.thread_block() {
        fail("signal mask", e);
    }

    // Prepared now: building the filters allocates, which the forked children must not.
    let mut fs = if a.wasm {
        confine::FsRules::wasm()
    } else {
        confine::FsRules::native(a.root.clone(), a.tmp.clone(), a.host_libs)
    };
    fs.read_write.extend(a.state.clone());
    fs.network = a.net.is_some();
    // A root capsule-host never hands a capsule host root.
    if a.uid.is_none() && nix::unistd::geteuid().is_root() {
        fail(
            "identity",
            "running as root without --uid: a capsule never runs as host root",
        );
    }
    // Process and memory caps: cgroup v1 when this root capsule-host can, else rlimits.
    // For WASM, `memory` is the guest's linear memory (enforced exactly by wasmtime); the
    // process as a whole also holds wasmtime, WASI's runtime and the compiled code.
    let memory = a.limits.memory.unwrap_or(confine::DEFAULT_MEMORY)
        + if a.wasm { wasm::HOST_MEMORY } else { 0 };
    // The WASM host's own threads and descriptors come on top of what the guest may have.
    let limits = if a.wasm {
        wasm::host_limits(&a.limits)
    } else {
        a.limits.clone()
    };
    let processes = limits
        .processes
        .map_or(confine::DEFAULT_PROCESSES, u64::from);
    // capsule-host and init are in the group too.
    let cgroups = cgroup::enter(&a.name, memory, processes + 2, a.limits.cpu);
    let data_limit = match &cgroups {
        Ok(_) => None,
        Err(_) => Some(memory),
    };
    let root = nix::unistd::geteuid().is_root();
    // Step 1, the user namespace, when the kernel allows one: the capsule's uid inside it maps
    // onto its own host uid (root supervisor) or the invoking user's.
    let userns = userns::available(root);
    let host_ids = match a.uid {
        Some(uid) => (uid, uid),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    let identity = match (&userns, a.uid) {
        (Ok(()), own) => Some(confine::Identity {
            uid: userns::INSIDE_ID,
            host_uid: host_ids.0,
            own: own.is_some(),
        }),
        (Err(_), Some(uid)) => Some(confine::Identity {
            uid,
            host_uid: uid,
            own: true,
        }),
        (Err(_), None) => None,
    };
    let plan = if a.wasm {
        confine::Plan::wasm(&limits, identity, data_limit, fs)
    } else {
        confine::Plan::native(&limits, identity, data_limit, fs, a.host_libs)
    }
    .unwrap_or_else(|e| fail("seccomp", e));
    let mut layers = plan.layers();
    if let Ok(cg) = &cgroups {
        layers.insert(0, cg.layer());
    }
    let no_cgroups = match &cgroups {
        Ok(_) => String::new(),
        Err(e) => format!(
            "no cgroup memory and pids controllers for this capsule ({e}): only rlimits cap it"
        ),
    };
    let cgroups = cgroups.ok();
    let mut kernel =
        confine::Kernel::prepare(&plan.fs, a.wasm).unwrap_or_else(|f| fail(f.step, f.why));
    // The capsule's process reports a failed confinement step here; the exec closes it.
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .unwrap_or_else(|e| fail("confinement pipe", e));
    let err_w_raw = err_w.as_raw_fd();

    // Step 2, the other namespaces: a network namespace with no device but a loopback (up only
    // with the loopback grant), its own IPC objects, hostname, mount table (nothing it mounts
    // or unmounts propagates, and seccomp refuses mounts anyway) and cgroup root view. With a
    // user namespace they are all created with it, by the clone of init below; without one,
    // only a root capsule-host can create them, here.
    use nix::sched::CloneFlags as F;
    let host_net = a.net.as_deref() == Some("host");
    let mut all =
        F::CLONE_NEWPID | F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWNS | F::CLONE_NEWCGROUP;
    if !host_net {
        all |= F::CLONE_NEWNET;
    }
    let ns_label = |user: bool| {
        let mut kinds = vec![];
        if user {
            kinds.push("user");
        }
        kinds.push("pid");
        if !host_net {
            kinds.push("net");
        }
        kinds.extend(["ipc", "uts", "mnt", "cgroup"]);
        format!("namespaces({})", kinds.join(","))
    };
    let (isolation, namespaces) = if userns.is_ok() {
        ("pid-namespace", Some(ns_label(true)))
    } else if nix::sched::unshare(all).is_ok() {
        // Private, so that no mount event crosses between the host and the capsule.
        if let Err(e) = private_mounts() {
            fail("mount namespace", e);
        }
        if a.net.as_deref() == Some("loopback") {
            if let Err(e) = loopback_up() {
                fail("network", format!("bringing up its loopback: {e}"));
            }
        }
        ("pid-namespace", Some(ns_label(false)))
    } else {
        match nix::sched::unshare(F::CLONE_NEWPID) {
            Ok(()) => ("pid-namespace", None),
            Err(_) => {
                if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                    fail("child subreaper", e);
                }
                ("subreaper", None)
            }
        }
    };
    if let Some(ns) = &namespaces {
        layers.insert(0, ns.clone());
    }
    // A private root, where there is a mount namespace to build it in (and a tmp to give it).
    let private_root = match (&namespaces, &a.tmp) {
        (Some(_), Some(tmp)) => {
            layers.insert(1, "private-root".to_string());
            let size = a.limits.tmp_size();
            layers.push(format!("tmp(size={}MiB)", size >> 20));
            let tmp = newroot::Tmp {
                dir: tmp.clone(),
                size,
                owner: identity.map_or(host_ids.0, |i| i.uid),
            };
            Some(newroot::plan(
                &a.root,
                &tmp,
                a.state.as_deref(),
                a.host_libs,
            ))
        }
        _ => None,
    };
    // The private /tmp is mounted by init: its Landlock rule is added there, once it exists.
    let tmp_rule = match &private_root {
        Some(_) => kernel.late_rule().unwrap_or_else(|f| fail(f.step, f.why)),
        None => None,
    };
    // Fail closed: a layer this machine cannot give the capsule stops it, unless the node names
    // it in `[confinement] allow_without`; then every listing shows its absence.
    let no_userns = match &userns {
        Ok(()) => String::new(),
        Err(why) => format!("{why}: its other namespaces and its private root then need root"),
    };
    let missing: Vec<(&str, &str)> = [
        ("user-namespace", userns.is_err(), no_userns.as_str()),
        (
            "namespaces",
            namespaces.is_none(),
            "network, IPC, UTS, mount and cgroup namespaces need root or a user namespace",
        ),
        (
            "private-root",
            private_root.is_none(),
            "a private root needs a mount namespace",
        ),
        (
            "uid",
            a.uid.is_none(),
            "it shares the invoking user's uid: a uid of its own needs a root supervisor",
        ),
        (
            "storage-quota",
            a.state.is_some() && a.state_quota.is_none(),
            "its state directory has no size limit: mounting one needs a root supervisor",
        ),
        (
            "cgroups",
            cgroups.is_none(),
            no_cgroups.as_str(),
        ),
        (
            "landlock-scope",
            scope_needed(plan.landlock_abi, host_net, isolation == "pid-namespace"),
            "this kernel's Landlock cannot scope signals and abstract Unix sockets to the capsule (ABI 6 can): with the host's network, or without a PID namespace, it could reach the host's abstract sockets (D-Bus, X11, ...) or signal its processes",
        ),
    ]
    .into_iter()
    .filter(|(_, gone, _)| *gone)
    .map(|(name, _, why)| (name, why))
    .collect();
    match confine::without(&missing, &a.allow_without) {
        Ok(weaker) => {
            for (layer, (name, why)) in weaker.into_iter().zip(&missing) {
                eprintln!("capsule-host: WARNING: running WITHOUT {name} ({why}), as [confinement] allow_without permits");
                layers.push(layer);
            }
        }
        Err(f) => fail(f.step, f.why),
    }
    let tmp_seen = match (&private_root, &a.tmp) {
        (Some(_), _) => Some(PathBuf::from("/tmp")),
        (None, t) => t.clone(),
    };
    if let Some(n) = &a.net {
        layers.push(format!("net({n})"));
    }
    if a.state.is_some() {
        layers.push(match a.state_quota {
            Some(q) => format!("state(quota={}MiB)", q >> 20),
            None => "state".to_string(),
        });
        let seen = match &private_root {
            Some(_) => PathBuf::from("/state"),
            None => a.state.clone().unwrap_or_default(),
        };
        envp.push(
            CString::new(format!("ELASTOS_STATE={}", seen.display()))
                .unwrap_or_else(|_| fail("env", "NUL")),
        );
    }
    if let Some(t) = &tmp_seen {
        envp.push(
            CString::new(format!("TMPDIR={}", t.display())).unwrap_or_else(|_| fail("env", "NUL")),
        );
    }
    let in_private_root = private_root.is_some();
    // A WASM guest's world: its arguments, the manifest's variables and its name; its only
    // directory is its state directory, preopened as /state.
    let mut wasm_guest = module.map(|m| {
        let mut env = vec![("ELASTOS_CAPSULE".to_string(), a.name.clone())];
        if a.state.is_some() {
            env.push(("ELASTOS_STATE".to_string(), "/state".to_string()));
        }
        env.extend(a.env.iter().cloned());
        let guest = wasm::Guest {
            args: std::iter::once(a.name.clone())
                .chain(a.args.iter().cloned())
                .collect(),
            env,
            state: a.state.as_ref().map(|s| match &private_root {
                Some(_) => PathBuf::from("/state"),
                None => s.clone(),
            }),
            limits: a.limits.clone(),
        };
        (m, guest)
    });
    let mut launch = || -> ! {
        // The capsule: its own session (never the operator's terminal), its socket at fd 3,
        // nothing else above stderr, a clean signal mask.
        let _ = nix::unistd::setsid();
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let _ = SigSet::all().thread_unblock();
        // The report pipe moves to fd 4 (the status pipe's number: this process has no use for
        // that), still close-on-exec; everything else above the socket goes.
        // SAFETY: dup3 on descriptors this process owns.
        if unsafe { nix::libc::dup3(err_w_raw, STATUS_FD, nix::libc::O_CLOEXEC) } < 0 {
            std::process::exit(125);
        }
        // Close-on-exec rather than closed: the Landlock ruleset's descriptor is still needed
        // until the exec, which then closes everything above the report pipe at once.
        if cloexec_above(STATUS_FD).is_err() {
            std::process::exit(125);
        }
        // In a private root, init left everyone in /capsule already.
        if !in_private_root && std::env::set_current_dir(&a.root).is_err() {
            std::process::exit(125);
        }
        if let Some((module, guest)) = wasm_guest.take() {
            run_wasm(module, &guest, &mut kernel, &plan);
        }
        if let Err(f) = confine::apply(&mut kernel, &plan) {
            report_failure(&f);
        }
        let err = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
        let code = match err {
            nix::errno::Errno::ENOENT => 127,
            nix::errno::Errno::EACCES | nix::errno::Errno::ENOEXEC => 126,
            _ => 125,
        };
        match (err, missing_interpreter(&prog)) {
            // The script is there; what is missing is the program on its `#!` line.
            (nix::errno::Errno::ENOENT, Some(interp)) => eprintln!(
                "capsule-host: cannot run {}: its interpreter {interp} (on its #! line) is not in the capsule's root; a script needs the host's programs and libraries: add [[requests]] resource = \"host://libs\", actions = [\"read\"], reason = \"...\" to its capsule.toml",
                entry.display()
            ),
            _ => eprintln!("capsule-host: cannot run {}: {err}", entry.display()),
        }
        std::process::exit(code);
    };
    if isolation == "pid-namespace" {
        // Step 3: init, PID 1 of the new PID namespace. With a user namespace it is cloned into
        // every namespace at once, and waits until this process has written its maps.
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .unwrap_or_else(|e| fail("user namespace", e));
        let forked = if userns.is_ok() {
            // Without root, capsule-host may write the maps only of a child whose /proc files
            // are its own, which a non-dumpable process's are not: the child is born dumpable
            // and turns non-dumpable in `enter`, once they are written.
            if !root {
                let _ = nix::sys::prctl::set_dumpable(true);
            }
            let cloned = userns::clone_into(all | F::CLONE_NEWUSER);
            if !matches!(cloned, Ok(ForkResult::Child)) {
                let _ = nix::sys::prctl::set_dumpable(false);
            }
            cloned.map_err(|e| ("user namespace", e))
        } else {
            // SAFETY: this process is single-threaded (checked above), so the child may run
            // any code.
            unsafe { nix::unistd::fork() }.map_err(|e| ("fork init", e))
        };
        match forked {
            Err((step, e)) => fail(step, e),
            Ok(ForkResult::Child) => {
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                drop(go_w);
                // Steps 1, 2 and 4 in init (see `init`); a failure is the capsule's, reported
                // like any other step.
                let mut sys = Init {
                    go: Some(go_r),
                    ops: private_root.as_deref().unwrap_or(&[]),
                    pinned: None,
                    tmp_rule,
                };
                let plan = init::InitPlan {
                    user_namespace: userns.is_ok(),
                    private_root: private_root.is_some(),
                    loopback: userns.is_ok() && a.net.as_deref() == Some("loopback"),
                };
                if let Err(f) = init::run(&mut sys, plan) {
                    report_failure_on(err_w_raw, &f);
                }
                drop(sys);
                if a.wasm {
                    // A WASM guest starts no process: there is nothing for an init to reap or
                    // to pass signals to, so the WASM host is PID 1 itself, one fork fewer on
                    // its way to ready. Its handlers go in while the signals are still blocked.
                    end_on_forwarded_signals();
                    launch();
                }
                // SAFETY: single-threaded, as above.
                let capsule = match unsafe { nix::unistd::fork() } {
                    Err(_) => std::process::exit(125),
                    Ok(ForkResult::Child) => launch(),
                    Ok(ForkResult::Parent { child }) => child,
                };
                drop(err_r);
                drop(err_w);
                drop_fds(false);
                std::process::exit(supervise(capsule, &mask, false));
            }
            Ok(ForkResult::Parent { child }) => {
                drop(go_r);
                if userns.is_ok() {
                    if let Err(e) = userns::write_maps(child, host_ids.0, host_ids.1, root, &go_w) {
                        let _ = kill(child, Signal::SIGKILL);
                        fail("user namespace", e);
                    }
                    // Kept open until this process ends: init's sign that it is alive.
                    std::mem::forget(go_w);
                } else {
                    drop(go_w);
                }
                drop(private_root);
                drop(err_w);
                confined_or_fail(err_r);
                status(&format!(
                    r#"{{"event":"started","capsule_pid":{},"init_pid":{},"isolation":"{isolation}","layers":{}}}"#,
                    child.as_raw(),
                    child.as_raw(),
                    layers_json(&layers)
                ));
                drop_fds(a.wasm);
                let code = supervise(child, &mask, false);
                report_limit(a.wasm, code);
                if let Some(cg) = &cgroups {
                    cg.leave_and_remove();
                }
                std::process::exit(code);
            }
        }
    } else {
        // SAFETY: single-threaded (checked above).
        match unsafe { nix::unistd::fork() } {
            Err(e) => fail("fork capsule", e),
            Ok(ForkResult::Child) => launch(),
            Ok(ForkResult::Parent { child }) => {
                drop(err_w);
                confined_or_fail(err_r);
                status(&format!(
                    r#"{{"event":"started","capsule_pid":{},"init_pid":{},"isolation":"{isolation}","layers":{}}}"#,
                    child.as_raw(),
                    std::process::id(),
                    layers_json(&layers)
                ));
                drop_fds(a.wasm);
                let code = supervise(child, &mask, true);
                report_limit(a.wasm, code);
                kill_descendants();
                if let Some(cg) = &cgroups {
                    cg.leave_and_remove();
                }
                std::process::exit(code);
            }
        }
    }
}

/// PID 1 of a namespace receives only the signals it has a handler for. A WASM host that is
/// PID 1 ends on the forwarded ones as a process does by default, with 128 + N, the code its
/// parent reports for a child killed by signal N.
fn end_on_forwarded_signals() {
    extern "C" fn end(sig: nix::libc::c_int) {
        // SAFETY: _exit(2) is async-signal-safe and never returns.
        unsafe { nix::libc::_exit(128 + sig) }
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(end),
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    for s in FORWARDED {
        // SAFETY: the handler calls only _exit, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(s, &action) };
    }
}

/// In the capsule's process of a WASM capsule, in place of the exec: loads the module and
/// prepares everything but guest code, confines the process (it must still be its only thread:
/// Landlock and seccomp hold for the calling thread and those it starts later), closes the
/// report pipe (the EOF that an exec gives a native capsule), and runs the guest.
fn run_wasm(
    module: std::fs::File,
    guest: &wasm::Guest,
    kernel: &mut confine::Kernel,
    plan: &confine::Plan,
) -> ! {
    let step = |why: String| confine::Failure {
        step: "wasm module",
        why,
    };
    // No exec will close what this process inherited or made for itself (the report pipe's
    // first copy among them, whose EOF capsule-host waits for): close all of it now.
    close_inherited_above(wasm::MODULE_FD, kernel.landlock_fd());
    // SAFETY: fd 3 is the capsule's socket, handed to this process; only the guest's
    // connection owns it from here.
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(SOCKET_FD) };
    // Confined first (one thread: it holds for every thread started after), then the artifact
    // is mapped and the guest pre-instantiated: whatever wasmtime's loader meets in it, it
    // meets confined. Then no memory may become executable any more.
    if !confine::single_threaded() {
        report_failure(&step(
            "more than one thread before confinement; it must hold for all".into(),
        ));
    }
    if let Err(f) = confine::apply(kernel, plan) {
        report_failure(&f);
    }
    let prepared = wasm::runner()
        .and_then(|engine| {
            let m = wasm::load(&engine, module)?;
            wasm::prepare(&engine, &m, guest, socket)
        })
        .unwrap_or_else(|e| report_failure(&step(e.to_string())));
    if let Err(e) = seccomp::no_new_exec().and_then(|p| seccomp::install(&p)) {
        report_failure(&confine::Failure {
            step: "seccomp",
            why: format!("no new executable memory after loading: {e}"),
        });
    }
    // SAFETY: fd 4 is the report pipe this process owns; nothing else uses it.
    let report = unsafe { OwnedFd::from_raw_fd(STATUS_FD) };
    // No init stands between this process and capsule-host to die with it, and taking the
    // capsule's uid clears the parent-death signal when the effective uid changes (a root
    // supervisor without user namespaces): armed again, then capsule-host is checked to be still
    // there (the report pipe has a reader only while it lives), so that one killed in between
    // does not leave this process running.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut fds = [nix::poll::PollFd::new(
        report.as_fd(),
        nix::poll::PollFlags::POLLOUT,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
    if fds[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR))
    {
        std::process::exit(125);
    }
    drop(report);
    // A panic in the host (not the guest) ends the process at once (`end_at_first_panic`): it
    // never unwinds into the frames inherited from capsule-host's main.
    let outcome = wasm::run(prepared);
    if let Some(msg) = outcome.message() {
        eprintln!("capsule-host: {msg}");
    }
    std::process::exit(outcome.code());
}

/// Closes every descriptor above `fd` but the Landlock ruleset confinement still needs.
fn close_inherited_above(fd: i32, ruleset: Option<i32>) {
    // The ruleset's number is known: two close_range calls, no /proc.
    if let Some(keep) = ruleset {
        let close = |from: i32, to: nix::libc::c_uint| {
            // SAFETY: close_range(2) with integer arguments, over descriptors nothing in this
            // process uses any more.
            unsafe { nix::libc::syscall(nix::libc::SYS_close_range, from, to, 0) == 0 }
        };
        let closed = if keep > fd {
            (keep == fd + 1 || close(fd + 1, (keep - 1) as nix::libc::c_uint))
                && close(keep + 1, nix::libc::c_uint::MAX)
        } else {
            close(fd + 1, nix::libc::c_uint::MAX)
        };
        if closed {
            return;
        }
    }
    let open: Vec<(i32, String)> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.parse::<i32>().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((n, target.to_string_lossy().into_owned()))
            })
            .collect(),
        Err(_) => return,
    };
    for (n, target) in open {
        if n > fd && target != "anon_inode:[landlock-ruleset]" {
            // SAFETY: close(2) of a descriptor nothing in this process uses any more; the
            // directory listing's own is already closed (EBADF, ignored).
            unsafe {
                nix::libc::close(n);
            }
        }
    }
}

/// capsule-host of a WASM capsule: says on the status pipe which limit stopped the guest.
fn report_limit(wasm: bool, code: i32) {
    if let (true, Some(limit)) = (wasm, wasm::limit_of(code)) {
        status(&format!(
            r#"{{"event":"limit","limit":"{limit}","code":{code}}}"#
        ));
    }
}

/// `capsule-host compile IN OUT`: see the module doc.
fn compile_main() -> ! {
    if std::env::args().len() != 2 {
        eprintln!("usage: capsule-host compile < MODULE > ENGINE-HASH-LINE+ARTIFACT");
        std::process::exit(2);
    }
    let die = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("capsule-host compile: {what}: {e}");
        std::process::exit(1);
    };
    // Root's compiler gets a cgroup of its own (memory and processes); elsewhere its rlimits.
    // This process only waits, then removes the cgroup (the compiler, confined, could not).
    let cgroup = cgroup::enter("compile", COMPILE_MEMORY, 16, None).ok();
    if let Some(cg) = &cgroup {
        // SAFETY: nothing has started a thread yet: the child may run any code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => die("fork", &e),
            Ok(ForkResult::Parent { child }) => {
                let code = match nix::sys::wait::waitpid(child, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                    _ => 1,
                };
                cg.leave_and_remove();
                std::process::exit(code);
            }
            Ok(ForkResult::Child) => {
                // Killed with the waiting parent (the supervisor's timeout kills that one).
                let parent = nix::unistd::getppid();
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                if nix::unistd::getppid() != parent {
                    std::process::exit(1);
                }
            }
        }
    }
    // Confined before it reads a byte: the module comes on stdin, the artifact goes to stdout.
    if let Err(e) = confine_compiler(cgroup.is_none()) {
        die("confining the compiler", &e);
    }
    let mut bytes = Vec::new();
    let mut stdin = std::io::stdin().lock();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut stdin, MAX_COMPILE_INPUT + 1),
        &mut bytes,
    )
    .unwrap_or_else(|e| die("reading the module", &e));
    if bytes.len() as u64 > MAX_COMPILE_INPUT {
        die(
            "reading the module",
            &format!("larger than {MAX_COMPILE_INPUT} bytes"),
        );
    }
    let engine = wasm::engine().unwrap_or_else(|e| die("engine", &e));
    let artifact = wasm::precompile(&engine, &bytes).unwrap_or_else(|e| die("the module", &e));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", wasm::compatibility_hash(&engine))
        .and_then(|()| out.write_all(&artifact))
        .and_then(|()| out.flush())
        .unwrap_or_else(|e| die("writing the artifact", &e));
    std::process::exit(0);
}

/// The compile process's memory, in its own cgroup (or as `RLIMIT_DATA` without one).
const COMPILE_MEMORY: u64 = 2 << 30;
/// The largest module it reads: a package file's largest.
const MAX_COMPILE_INPUT: u64 = 64 << 20;

/// The compile process parses untrusted bytes: it keeps its three standard descriptors and
/// nothing else (no path at all under Landlock, no exec, no new processes, no signals to
/// anyone, no network, bounded CPU, memory and output size), and started by root it gives up
/// root for `nobody`'s uid.
fn confine_compiler(data_limit: bool) -> Result<(), String> {
    const NOBODY: u32 = 65534;
    let limits = elastos_schema::Limits {
        cpu_seconds: Some(120),
        open_files: Some(64),
        ..Default::default()
    };
    let identity = nix::unistd::geteuid()
        .is_root()
        .then_some(confine::Identity {
            uid: NOBODY,
            host_uid: NOBODY,
            own: false,
        });
    let plan = confine::Plan::compiler(&limits, identity, data_limit.then_some(COMPILE_MEMORY))?;
    let mut kernel = confine::Kernel::prepare(&plan.fs, false).map_err(|f| f.why)?;
    confine::apply(&mut kernel, &plan).map_err(|f| format!("{}: {}", f.step, f.why))
}

/// In the capsule's process: a confinement step failed. Says which on the report pipe (fd 4)
/// and ends: the capsule never runs.
fn report_failure(f: &confine::Failure) -> ! {
    report_failure_on(STATUS_FD, f)
}

fn report_failure_on(fd: i32, f: &confine::Failure) -> ! {
    let line = format!("{}\t{}", f.step, f.why);
    // SAFETY: write(2) of a buffer this process owns to a descriptor it owns.
    unsafe {
        nix::libc::write(fd, line.as_ptr().cast(), line.len());
    }
    std::process::exit(125);
}

/// Waits for the capsule's exec (EOF on the report pipe) or its failure report; a failure ends
/// capsule-host with the failed step as its status.
fn confined_or_fail(err_r: OwnedFd) {
    let mut report = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut report);
    if let Some((step, why)) = report.split_once('\t') {
        fail(step, format!("{why} (the capsule was not started)"));
    }
}

/// Init's steps, for real (see [`init`]).
struct Init<'a> {
    /// The pipe capsule-host writes once the maps are written, and holds open while it lives.
    go: Option<OwnedFd>,
    ops: &'a [newroot::Op],
    /// The root's sources, open (kept until the root is built), and the plan naming them so.
    pinned: Option<(Vec<OwnedFd>, Vec<newroot::Op>)>,
    /// Where the capsule's tmpfs gets its Landlock rule, once mounted.
    tmp_rule: Option<confine::LateRule>,
}

impl init::InitSys for Init<'_> {
    fn pin_sources(&mut self) -> Result<(), String> {
        self.pinned = Some(newroot::pin(self.ops)?);
        Ok(())
    }
    fn enter_user_namespace(&mut self) -> Result<(), String> {
        match &self.go {
            Some(go) => userns::enter(go),
            None => Err("no pipe from capsule-host".into()),
        }
    }
    fn rearm_parent_death(&mut self) -> Result<(), String> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| e.to_string())?;
        // Checked after arming: a parent that died before would never send the signal.
        match self.go.take() {
            Some(go) if userns::parent_gone(&go) => Err("capsule-host is gone".into()),
            _ => Ok(()),
        }
    }
    fn private_mounts(&mut self) -> Result<(), String> {
        private_mounts()
    }
    fn loopback_up(&mut self) -> Result<(), String> {
        loopback_up()
    }
    fn own_mount_namespace(&mut self) -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("a mount namespace for init: {e}"))
    }
    fn build_root(&mut self) -> Result<(), String> {
        match &self.pinned {
            Some((_fds, ops)) => newroot::apply(Path::new(newroot::NEW_ROOT), ops)?,
            None => return Err("the root's sources were not opened".into()),
        }
        // In the new root now: its /tmp is the tmpfs.
        match self.tmp_rule.take() {
            Some(rule) => rule.writable(Path::new("/tmp")),
            None => Ok(()),
        }
    }
}

/// Makes every mount of this (new) mount namespace private: no mount event crosses between the
/// host and the capsule.
fn private_mounts() -> Result<(), String> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| e.to_string())
}

/// Sets `lo` up in this process's (new) network namespace: the loopback-only grant.
fn loopback_up() -> Result<(), String> {
    use nix::libc;
    // SAFETY: a socket, two ioctls on an ifreq this function owns, and a close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(nix::errno::Errno::last().desc().into());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let r = if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            Err(nix::errno::Errno::last().desc().to_string())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr) < 0 {
                Err(nix::errno::Errno::last().desc().to_string())
            } else {
                Ok(())
            }
        };
        libc::close(fd);
        r
    }
}

fn layers_json(layers: &[String]) -> String {
    let quoted: Vec<String> = layers
        .iter()
        .map(|l| format!("\"{}\"", escape(l)))
        .collect();
    format!("[{}]", quoted.join(","))
}

/// The socket and the status pipe belong to the capsule and the first status line; the parents
/// keep neither, so the supervisor sees EOF when the capsule is gone. A WASM capsule-host keeps
/// the status pipe for the limit that may stop its guest.
fn drop_fds(keep_status: bool) {
    let fds: &[i32] = if keep_status {
        &[SOCKET_FD]
    } else {
        &[SOCKET_FD, STATUS_FD]
    };
    for &fd in fds {
        // SAFETY: these fds were handed to this process and nothing else here uses them after
        // this point; wrapping them in OwnedFd closes each exactly once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

fn cloexec_above(fd: i32) -> Result<(), nix::errno::Errno> {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) with integer arguments; it only sets flags on descriptors.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            (fd + 1) as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// Waits for `child`, forwarding signals to it and reaping every other child; returns its code.
fn supervise(child: Pid, mask: &SigSet, reap_all: bool) -> i32 {
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if ws.pid() == Some(child) {
                        if let Some(code) = exit_code(ws) {
                            return code;
                        }
                    }
                    let _ = reap_all;
                }
            }
        }
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => {}
        }
    }
}

/// Subreaper mode: everything still below capsule-host is killed, until nothing is left.
fn kill_descendants() {
    let me = std::process::id().to_string();
    for _ in 0..100 {
        let mut found = false;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    continue;
                };
                if st
                    .lines()
                    .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(me.as_str()))
                {
                    found = true;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if ws == WaitStatus::StillAlive {
                break;
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn landlocks_scoping_is_needed_only_where_namespaces_do_not_stand_in() {
        use super::scope_needed;
        // A kernel that scopes: never.
        assert!(!scope_needed(Some(6), true, false));
        // One that does not: with the host's network, or without a PID namespace.
        assert!(scope_needed(Some(5), true, true));
        assert!(scope_needed(Some(4), false, false));
        assert!(!scope_needed(Some(5), false, true));
        assert!(scope_needed(None, true, true));
    }

    /// Run by `a_panic_ends_capsule_host_at_once_without_unwinding` in a process of its own.
    #[test]
    #[ignore = "a helper process of a_panic_ends_capsule_host_at_once_without_unwinding"]
    fn panicking_child() {
        struct Unwound;
        impl Drop for Unwound {
            fn drop(&mut self) {
                println!("unwound");
            }
        }
        super::end_at_first_panic();
        let _guard = Unwound;
        panic!("on purpose");
    }

    #[test]
    fn a_panic_ends_capsule_host_at_once_without_unwinding() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "tests::panicking_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(super::EXIT_PANIC),
            "{stdout}\n{stderr}"
        );
        assert!(!stdout.contains("unwound"), "{stdout}");
        assert!(
            stderr.contains("internal error, stopping at once") && stderr.contains("on purpose"),
            "{stderr}"
        );
    }
}
