//! Starting capsule-host processes.
//!
//! Every fork+exec happens on one long-lived thread, `elastos-spawner`: capsule-host asks for a
//! parent-death signal, and Linux sends it when the *thread* that forked it exits — a thread of
//! tokio's blocking pool would retire and take every capsule with it. The child gets a clean
//! environment, stdin from /dev/null, stdout and stderr as pipes to the supervisor, the capsule's
//! end of a socketpair as fd 3 and a status pipe as fd 4, and nothing else.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
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
    pub child: Child,
    pub socket: UnixStream,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    pub stdin: Option<ChildStdin>,
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
    let (ours, theirs) = UnixStream::pair().map_err(HostError::Spawn)?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| HostError::Spawn(e.into()))?;
    let mut cmd = Command::new(host_bin);
    cmd.env_clear()
        .arg("--name")
        .arg(&req.name)
        .arg("--root")
        .arg(&req.root)
        .arg("--entry")
        .arg(&req.entry)
        .arg("--parent-pid")
        .arg(std::process::id().to_string());
    let limits = serde_json::to_string(&req.limits).map_err(|e| HostError::Spawn(e.into()))?;
    cmd.arg("--limits").arg(limits);
    if let Some(t) = &req.tmp {
        cmd.arg("--tmp").arg(t);
    }
    if req.host_libs {
        cmd.arg("--host-libs");
    }
    if let Some(uid) = req.uid {
        cmd.arg("--uid").arg(uid.to_string());
    }
    if let Some(n) = req.net {
        cmd.arg("--net").arg(n);
    }
    if let Some(s) = &req.state {
        cmd.arg("--state").arg(s);
    }
    if let Some(q) = req.state_quota {
        cmd.arg("--state-quota").arg(q.to_string());
    }
    for layer in &req.allow_without {
        cmd.arg("--allow-without").arg(layer);
    }
    if req.module.is_some() {
        cmd.arg("--substrate").arg("wasm");
    }
    for (k, v) in &req.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg("--").args(&req.args);
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    // fd 3, 4 and (for WASM) 5, in that order; -1 for none.
    let sources = [
        theirs.as_raw_fd(),
        status_w.as_raw_fd(),
        req.module.as_ref().map_or(-1, |m| m.as_raw_fd()),
    ];
    // SAFETY: between fork and exec the closure only calls dup2/dup/close (async-signal-safe)
    // on fds this thread owns; it allocates nothing. Going through spare fds first keeps it
    // correct when a source is already 3, 4 or 5: the spares are ascending and each at least
    // its target, so a dup2 only ever overwrites a spare already used.
    unsafe {
        cmd.pre_exec(move || {
            let mut spare = [-1; 3];
            for (i, &src) in sources.iter().enumerate() {
                if src >= 0 {
                    spare[i] = nix::libc::dup(src);
                    if spare[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            for (i, &s) in spare.iter().enumerate() {
                if s >= 0 && nix::libc::dup2(s, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for s in spare {
                if s > 5 {
                    nix::libc::close(s);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(HostError::Spawn)?;
    drop(theirs);
    drop(req.module);
    drop::<OwnedFd>(status_w);
    let stdout = child.stdout.take().ok_or(HostError::Silent)?;
    let stderr = child.stderr.take().ok_or(HostError::Silent)?;
    let stdin = child.stdin.take();
    Ok(Spawned {
        pid: child.id(),
        child,
        socket: ours,
        stdout,
        stderr,
        stdin,
        status: File::from(status_r),
    })
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
