//! Starting capsule-host processes.
//!
//! Every spawn happens on one long-lived thread, `elastos-spawner`: capsule-host asks for a
//! parent-death signal, and Linux sends it when the *thread* that forked it exits — a thread of
//! tokio's blocking pool would retire and take every capsule with it. The child gets an
//! environment of one glibc setting (no restartable sequences), stdin from /dev/null, stdout and
//! stderr as pipes to the supervisor, the capsule's end of a socketpair as fd 3 and a status pipe
//! as fd 4, and nothing else.
//!
//! The spawn is `posix_spawn` (glibc: `clone(CLONE_VM|CLONE_VFORK)`, then exec), not fork: a
//! fork copies the supervisor's page tables, which grow with every capsule it serves, only for
//! exec to throw them away. The descriptors are placed by the spawn's file actions, whose
//! `dup2`s clear close-on-exec in the child alone, so no other spawn can inherit them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("capsule-host not found next to {exe} (build the workspace with `cargo build`, or set ELASTOS_CAPSULE_HOST)")]
    NotFound { exe: String },
    #[error("starting capsule-host: {0}")]
    Spawn(std::io::Error),
    #[error(
        "capsule-host said nothing: it died before starting the capsule (see the capsule's log)"
    )]
    Silent,
    #[error("capsule-host's status is unreadable: {0}")]
    Status(String),
    #[error("the spawner thread is gone")]
    Gone,
}

pub struct SpawnRequest {
    pub name: String,
    pub root: PathBuf,
    pub entry: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A pipe for the capsule's stdin (`elastos run -i`); else /dev/null.
    pub stdin: bool,
    /// The manifest's `[limits]`, which capsule-host enforces.
    pub limits: elastos_schema::Limits,
    /// The capsule's private writable directory.
    pub tmp: Option<PathBuf>,
    /// Policy granted `host://libs`.
    pub host_libs: bool,
    /// The capsule's own host uid and gid (a root supervisor's capsules never run as root).
    pub uid: Option<u32>,
    /// Layers the node allows capsules to run without (`[confinement] allow_without`).
    pub allow_without: Vec<String>,
    /// Its private persistent directory, when granted.
    pub state: Option<PathBuf>,
    /// The size limit in force on `state`, when it has one (see [`crate::quota`]).
    pub state_quota: Option<u64>,
    /// Its network grant: `host` or `loopback`.
    pub net: Option<&'static str>,
    /// A WASM capsule: its precompiled module in a sealed memfd, passed at fd 5
    /// (`crate::wasm::MODULE_FD`) with `--substrate wasm`.
    pub module: Option<OwnedFd>,
}

pub struct Spawned {
    /// capsule-host's pid: signals for the capsule go here and are forwarded.
    pub pid: u32,
    pub socket: UnixStream,
    pub stdout: File,
    pub stderr: File,
    pub stdin: Option<File>,
    pub status: File,
}

#[derive(Debug, Clone)]
pub enum HostStatus {
    Started {
        capsule_pid: u32,
        init_pid: u32,
        isolation: String,
        /// The confinement layers capsule-host put in force.
        layers: Vec<String>,
    },
    Failed {
        stage: String,
        message: String,
    },
}

type Job = (SpawnRequest, mpsc::Sender<Result<Spawned, HostError>>);

pub struct Spawner {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    pub fn start(host_bin: PathBuf) -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        let _ = std::thread::Builder::new()
            .name("elastos-spawner".into())
            .spawn(move || {
                for (req, reply) in rx {
                    let _ = reply.send(spawn_now(&host_bin, req));
                }
            });
        Spawner { tx: Mutex::new(tx) }
    }

    /// Starts capsule-host for `req`; blocks until it runs (not until the capsule is ready).
    pub fn spawn(&self, req: SpawnRequest) -> Result<Spawned, HostError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((req, tx))
            .map_err(|_| HostError::Gone)?;
        rx.recv().map_err(|_| HostError::Gone)?
    }
}

fn spawn_now(host_bin: &PathBuf, req: SpawnRequest) -> Result<Spawned, HostError> {
    let spawn_err = |e: nix::Error| HostError::Spawn(e.into());
    let (ours, theirs) = UnixStream::pair().map_err(HostError::Spawn)?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(spawn_err);
    let (status_r, status_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (stdin_r, stdin_w) = if req.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (
            File::open("/dev/null").map_err(HostError::Spawn)?.into(),
            None,
        )
    };

    let mut args: Vec<std::ffi::OsString> = vec![host_bin.into()];
    let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
    arg(&"--name");
    arg(&req.name);
    arg(&"--root");
    arg(&req.root);
    arg(&"--entry");
    arg(&req.entry);
    arg(&"--parent-pid");
    arg(&std::process::id().to_string());
    let limits = serde_json::to_string(&req.limits).map_err(|e| HostError::Spawn(e.into()))?;
    arg(&"--limits");
    arg(&limits);
    if let Some(t) = &req.tmp {
        arg(&"--tmp");
        arg(t);
    }
    if req.host_libs {
        arg(&"--host-libs");
    }
    if let Some(uid) = req.uid {
        arg(&"--uid");
        arg(&uid.to_string());
    }
    if let Some(n) = req.net {
        arg(&"--net");
        arg(&n);
    }
    if let Some(s) = &req.state {
        arg(&"--state");
        arg(s);
    }
    if let Some(q) = req.state_quota {
        arg(&"--state-quota");
        arg(&q.to_string());
    }
    for layer in &req.allow_without {
        arg(&"--allow-without");
        arg(layer);
    }
    if req.module.is_some() {
        arg(&"--substrate");
        arg(&"wasm");
    }
    for (k, v) in &req.env {
        arg(&"--env");
        arg(&format!("{k}={v}"));
    }
    arg(&"--");
    for a in &req.args {
        arg(a);
    }
    let args = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            HostError::Spawn(std::io::Error::other(format!("an argument holds NUL: {e}")))
        })?;

    // Targets 0 to 5, in order. A source below 6 could be overwritten by an earlier dup2 (or,
    // were it its own target, keep close-on-exec): lift it above first.
    let sources: Vec<Option<OwnedFd>> = [
        Some(stdin_r),
        Some(stdout_w),
        Some(stderr_w),
        Some(OwnedFd::from(theirs)),
        Some(status_w),
        req.module,
    ]
    .into_iter()
    .map(|fd| fd.map(above_targets).transpose())
    .collect::<Result<_, _>>()?;
    let mut actions = nix::spawn::PosixSpawnFileActions::init().map_err(spawn_err)?;
    for (target, fd) in sources.iter().enumerate() {
        if let Some(fd) = fd {
            actions
                .add_dup2(fd.as_raw_fd(), target as i32)
                .map_err(spawn_err)?;
        }
    }
    let mut attr = nix::spawn::PosixSpawnAttr::init().map_err(spawn_err)?;
    // Its own process group (signals to the capsule's group never reach the supervisor); no
    // blocked signals and every disposition default (the supervisor ignores SIGPIPE).
    use nix::spawn::PosixSpawnFlags as F;
    attr.set_flags(F::POSIX_SPAWN_SETPGROUP | F::POSIX_SPAWN_SETSIGMASK | F::POSIX_SPAWN_SETSIGDEF)
        .map_err(spawn_err)?;
    attr.set_pgroup(Pid::from_raw(0)).map_err(spawn_err)?;
    attr.set_sigmask(&nix::sys::signal::SigSet::empty())
        .map_err(spawn_err)?;
    attr.set_sigdefault(&nix::sys::signal::SigSet::all())
        .map_err(spawn_err)?;
    // Nothing of the supervisor's environment, but one glibc setting: no restartable-sequence
    // registration, which capsule-host never uses and the kernel otherwise updates each time one
    // of its threads resumes after being preempted (1.5 % of a WASM host's CPU per round trip).
    let env = [c"GLIBC_TUNABLES=glibc.pthread.rseq=0"];
    let pid = nix::spawn::posix_spawn(host_bin.as_path(), &actions, &attr, &args, &env)
        .map_err(spawn_err)?;
    // The child's ends close here, in this process only.
    drop(sources);
    Ok(Spawned {
        pid: pid.as_raw() as u32,
        socket: ours,
        stdout: stdout_r.into(),
        stderr: stderr_r.into(),
        stdin: stdin_w.map(File::from),
        status: File::from(status_r),
    })
}

/// `fd`, or a close-on-exec copy of it numbered 6 or more if it is below that.
fn above_targets(fd: OwnedFd) -> Result<OwnedFd, HostError> {
    if fd.as_raw_fd() >= 6 {
        return Ok(fd);
    }
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(6))
        .map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })
        .map_err(|e| HostError::Spawn(e.into()))
}

/// Removes the cgroups that capsule-hosts killed before they could clean up left behind (after
/// a `kill -9` of the supervisor, say), once, before any capsule starts: capsule-host no longer
/// scans for them at every start. Best effort: a leftover group costs a directory, not safety.
pub fn sweep_cgroups(host_bin: &std::path::Path) {
    // Only a root capsule-host makes groups: a user's supervisor has none to sweep.
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let out = std::process::Command::new(host_bin)
        .arg("sweep-cgroups")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let n = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !n.is_empty() && n != "0" {
                tracing::info!("removed {n} cgroups left by capsule-hosts that were killed");
            }
        }
        Ok(o) => tracing::warn!(
            "capsule-host sweep-cgroups failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("capsule-host sweep-cgroups did not run: {e}"),
    }
}

/// Reads capsule-host's first status line, and not a byte more: a WASM capsule-host writes a
/// second one when a limit stops its guest ([`read_limit`]).
pub fn read_status(file: &mut File) -> Result<HostStatus, HostError> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match std::io::Read::read(file, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if bytes.len() >= 64 * 1024 => {
                return Err(HostError::Status("status line too long".into()))
            }
            Ok(_) => bytes.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HostError::Status(e.to_string())),
        }
    }
    let line = String::from_utf8_lossy(&bytes).into_owned();
    if line.is_empty() {
        return Err(HostError::Silent);
    }
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| HostError::Status(e.to_string()))?;
    let num = |k: &str| v[k].as_u64().unwrap_or(0) as u32;
    match v["event"].as_str() {
        Some("started") => Ok(HostStatus::Started {
            capsule_pid: num("capsule_pid"),
            init_pid: num("init_pid"),
            isolation: v["isolation"].as_str().unwrap_or("unknown").to_string(),
            layers: v["layers"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        Some("error") => Ok(HostStatus::Failed {
            stage: v["stage"].as_str().unwrap_or("?").to_string(),
            message: v["message"].as_str().unwrap_or("?").to_string(),
        }),
        _ => Err(HostError::Status(line)),
    }
}

/// After capsule-host exited: the limit that stopped a WASM guest, if its status pipe names one
/// (`{"event":"limit","limit":NAME,...}`).
pub fn read_limit(file: File) -> Option<String> {
    // capsule-host is gone: what it wrote is all there; never wait for more.
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&file, 64 * 1024), &mut rest);
    rest.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "limit").then(|| v["limit"].as_str().unwrap_or("?").to_string())
    })
}

pub fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
    }
}

/// `ELASTOS_CAPSULE_HOST`, else `capsule-host` next to the running binary.
pub fn find_host_binary() -> Result<PathBuf, HostError> {
    if let Some(p) = std::env::var_os("ELASTOS_CAPSULE_HOST") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(HostError::Spawn)?;
    let candidate = exe.with_file_name("capsule-host");
    if candidate.is_file() {
        return Ok(candidate);
    }
    // Test binaries live in target/debug/deps; the binaries one level up.
    if let Some(up) = exe.parent().and_then(|p| p.parent()) {
        let c = up.join("capsule-host");
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(HostError::NotFound {
        exe: exe.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the spawned program finds at fds 0 to 9, by a stand-in for capsule-host that
    /// writes `readlink /proc/self/fd/N` (or `-`) for each, and its arguments, to `out`.
    fn spawned_fds(module: Option<OwnedFd>, stdin: bool) -> (Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let host = dir.path().join("host");
        std::fs::write(
            &host,
            format!(
                // Each redirection is the child's or temporary: the shell's own fds stay as given.
                "#!/bin/bash\nfor n in 0 1 2 3 4 5 6 7 8 9; do readlink /proc/$$/fd/$n >> {out} 2>/dev/null || echo - >> {out}; done\necho \"$*\" >> {out}\n",
                out = out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let req = SpawnRequest {
            name: "t".into(),
            root: dir.path().into(),
            entry: "bin/t".into(),
            args: vec!["a b".into(), "c".into()],
            env: vec![("K".into(), "V".into())],
            stdin,
            limits: Default::default(),
            tmp: None,
            host_libs: false,
            uid: None,
            allow_without: Vec::new(),
            state: None,
            state_quota: None,
            net: None,
            module,
        };
        let s = spawn_now(&host, req).unwrap();
        let pid = Pid::from_raw(s.pid as i32);
        nix::sys::wait::waitpid(pid, None).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let args = lines.pop().unwrap();
        (lines, args)
    }

    #[test]
    fn capsule_host_gets_fds_0_to_5_and_nothing_more() {
        let module = crate::wasm::sealed_memfd(b"artifact").unwrap();
        let (fds, args) = spawned_fds(Some(module), false);
        assert_eq!(fds[0], "/dev/null");
        for (n, kind) in [(1, "pipe:"), (2, "pipe:"), (3, "socket:"), (4, "pipe:")] {
            assert!(fds[n].starts_with(kind), "fd {n}: {fds:?}");
        }
        assert!(fds[5].starts_with("/memfd:elastos-module"), "{fds:?}");
        // The supervisor's own descriptors (its sockets, log files, epoll, this test's) stay
        // behind: every one is close-on-exec, and the spawn's dup2s leave theirs so.
        assert_eq!(&fds[6..], ["-", "-", "-", "-"], "{fds:?}");
        assert!(args.contains("--name t --root"), "{args}");
        assert!(
            args.ends_with("--substrate wasm --env K=V -- a b c"),
            "{args}"
        );
    }

    #[test]
    fn without_a_module_fd_5_is_closed_and_stdin_can_be_a_pipe() {
        let (fds, args) = spawned_fds(None, true);
        assert!(fds[0].starts_with("pipe:"), "{fds:?}");
        assert_eq!(fds[5], "-", "{fds:?}");
        assert!(!args.contains("--substrate"), "{args}");
    }
}
