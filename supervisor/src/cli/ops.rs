//! The operator's commands on running capsules: `run`, `ps`, `kill`, `stop`, `start`, `restart`,
//! `logs`. All but `logs` go through the supervisor; `logs` reads the log files directly, so it
//! works after the supervisor is gone too.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use elastos::control::{Event, Request, Response, RunRequest, RunSource};
use elastos::home::Home;
use elastos::text::sanitize;

use super::daemon::connect;
use super::Failure;

#[derive(Args)]
pub struct RunArgs {
    /// A capsule directory (packed and signed with the development key), a package file, or the
    /// name of a capsule already in the store.
    what: String,
    /// Detach: start it and return once it has said hello on its socket (exit 0), failed
    /// before that (exit 1, with the reason), or had 5 s for either (exit 0, saying it has not
    /// said hello yet); without -d, stream its output and exit with its code.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Forward this terminal's stdin to the capsule.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// The name it runs under (default: the manifest's); unique among live capsules.
    #[arg(long)]
    name: Option<String>,
    /// always, on-failure or never (default: on-failure with -d, never without).
    #[arg(long)]
    restart: Option<String>,
    /// native or wasm: which of the manifest's entrypoints to run (default: its `substrate`).
    #[arg(long)]
    substrate: Option<String>,
    /// Run it even if it is older than the version of it stored from the same publisher
    /// (recorded in the audit log as `package.downgrade`).
    #[arg(long)]
    allow_downgrade: bool,
    /// Allow URI:ACTIONS (e.g. localhost://echo/*:read) for this session, answering the
    /// capsule's prompts before they are asked; held to what its manifest requests. Repeatable.
    #[arg(long, value_name = "URI:ACTIONS")]
    allow: Vec<String>,
    /// Arguments for the capsule, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct PsArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The capsule's name (see `elastos ps`).
    name: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KillArgs {
    name: String,
    /// TERM, KILL, INT, HUP, USR1… or a number.
    #[arg(long, short = 's', default_value = "KILL")]
    signal: String,
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
}

#[derive(Args)]
pub struct LogsArgs {
    /// The capsule, or `supervisor` for the supervisor's own log.
    name: String,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long)]
    lines: Option<usize>,
    /// Only lines at or after this time: RFC 3339, or an age such as 10m.
    #[arg(long, value_name = "T", value_parser = super::parse_since)]
    since: Option<SystemTime>,
}

/// A failed answer becomes the CLI's error, with the exit code the supervisor chose.
pub(super) fn check(r: Response) -> anyhow::Result<Response> {
    if r.ok {
        Ok(r)
    } else {
        Err(Failure {
            code: r.code.unwrap_or(super::EXIT_FAILED),
            message: r.error.unwrap_or_else(|| "failed".into()),
        }
        .into())
    }
}

/// A file removed when this goes out of scope.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let path = PathBuf::from(&a.what);
    // A directory's package is written for the supervisor to read, and removed once it has
    // answered (it stored its own copy), whatever the answer.
    let mut packed_file = None;
    let source = if path.is_dir() {
        // The development loop: pack and sign with the development key, never the node's.
        let key = crate::daemon::dev_key(&home)?;
        let packed = elastos::package::pack(&path, &key)
            .with_context(|| format!("packing {}", path.display()))?;
        let tmp = home.ensure_dir("tmp")?;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let out = tmp.join(format!("{}.{}.capsule", packed.cid, hex::encode(rnd)));
        let file = TempFile(out.clone());
        elastos::fsutil::write_atomic(&out, &packed.bytes, 0o600)
            .with_context(|| format!("writing {}", out.display()))?;
        packed_file = Some(file);
        RunSource::Package(out)
    } else if path.is_file() {
        RunSource::Package(path.canonicalize()?)
    } else if a.what.contains('/') {
        anyhow::bail!("{} does not exist", path.display());
    } else {
        RunSource::Stored(a.what.clone())
    };
    let mut c = connect(&home)?;
    let attach = !a.detach;
    let r = check(c.request(&Request::Run(RunRequest {
        source,
        name: a.name,
        args: a.args,
        attach,
        interactive: a.interactive,
        restart: a.restart,
        substrate: a.substrate,
        allow_downgrade: a.allow_downgrade,
        allow: a.allow,
    }))?)?;
    drop(packed_file);
    let name = r.data["name"].as_str().unwrap_or("?").to_string();
    if !attach {
        println!("{name} {}", r.data["cid"].as_str().unwrap_or("?"));
        if r.data["ready"] == false {
            eprintln!(
                "{name} has not said hello on its socket after {} s: it is still starting, or never speaks on it (see `elastos logs {name}`)",
                crate::daemon::control::START_WAIT.as_secs()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Ctrl-C and SIGTERM go to the capsule, not to this process: block them here and wait for
    // them on a thread that forwards them over the control connection.
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    // Signals and stdin share the connection's write side: one line at a time.
    let writer = std::sync::Arc::new(std::sync::Mutex::new(c.writer()?));
    let send = move |req: &Request| -> bool {
        let Ok(mut line) = serde_json::to_vec(req) else {
            return false;
        };
        line.push(b'\n');
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&line).is_ok()
    };
    let send_signal = send.clone();
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        let signal = sig.as_str().trim_start_matches("SIG").to_string();
        if !send_signal(&Request::Signal { signal }) {
            return;
        }
    });
    if a.interactive {
        std::thread::spawn(move || {
            use base64::Engine;
            use std::io::Read;
            let mut buf = vec![0u8; 16 * 1024];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                        if !send(&Request::Stdin { data }) {
                            return;
                        }
                    }
                }
            }
            send(&Request::StdinClose);
        });
    }
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    loop {
        match c.recv::<Event>()? {
            Some(Event::Stdout { data }) => {
                let _ = writeln!(stdout.lock(), "{}", sanitize_line(&data));
            }
            Some(Event::Stderr { data }) => {
                let _ = writeln!(stderr.lock(), "{}", sanitize_line(&data));
            }
            Some(Event::Exit { code }) => {
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Some(Event::Prompt {
                id,
                capsule,
                actions,
                resource,
            }) => {
                let _ = writeln!(
                    stderr.lock(),
                    "elastos: {} waits for permission to {} {}: `elastos allow {}` or `elastos deny {}` (60 s)",
                    sanitize_line(&capsule),
                    sanitize_line(&actions),
                    sanitize_line(&resource),
                    sanitize_line(&id),
                    sanitize_line(&id)
                );
            }
            None => anyhow::bail!("the supervisor closed the connection before {name} exited"),
        }
    }
}

/// A capsule's output reaches the operator's terminal: escape control characters (a capsule must
/// not be able to drive the terminal), but keep the line's length.
fn sanitize_line(s: &str) -> String {
    elastos::text::sanitize_capped(s, 64 * 1024)
}

pub fn ps(a: PsArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let r = check(connect(&home)?.request(&Request::Ps)?)?;
    if a.json {
        super::print_json(&r.data)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list = r.data.as_array().cloned().unwrap_or_default();
    println!(
        "{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<9} PUBLISHER",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CALLS", "MEM", "SUBSTRATE"
    );
    for c in list {
        let number = |k: &str| c[k].as_u64().map_or("-".to_string(), |n| n.to_string());
        let uptime = match (c["pid"].as_u64(), c["uptime_s"].as_u64()) {
            (Some(_), Some(s)) => short_duration(s),
            _ => "-".to_string(),
        };
        let memory = match c["memory_bytes"].as_u64() {
            Some(b) if b > 0 => format!("{:.1}M", b as f64 / f64::from(1 << 20)),
            _ => "-".to_string(),
        };
        println!(
            "{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<9} {}",
            sanitize(c["name"].as_str().unwrap_or("?")),
            c["state"].as_str().unwrap_or("?"),
            number("pid"),
            uptime,
            number("restarts"),
            number("calls"),
            memory,
            c["substrate"].as_str().unwrap_or("?"),
            short_publisher(c["publisher"].as_str().unwrap_or("?")),
        );
    }
    for c in r.data.as_array().into_iter().flatten() {
        if let Some(limit) = c["stopped_by"].as_str() {
            println!(
                "{}: its last run was stopped by its limit `{}` (see `elastos logs {0}`)",
                sanitize(c["name"].as_str().unwrap_or("?")),
                sanitize(limit)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `42s`, `7m`, `3h`, `2d`: the largest unit, as `docker ps` shows it.
fn short_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A DID is long; its start and end are enough to tell publishers apart in a table.
fn short_publisher(p: &str) -> String {
    let p = sanitize(p);
    let chars: Vec<char> = p.chars().collect();
    if chars.len() <= 24 {
        return p;
    }
    let head: String = chars[..16].iter().collect();
    let tail: String = chars[chars.len() - 6..].iter().collect();
    format!("{head}…{tail}")
}

pub fn kill(a: KillArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    check(connect(&home)?.request(&Request::Kill {
        name: a.name.clone(),
        signal: a.signal.clone(),
    })?)?;
    println!("sent {} to {}", a.signal, a.name);
    Ok(ExitCode::SUCCESS)
}

pub fn simple(op: &str, a: NameArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let name = a.name.clone();
    let req = match op {
        "stop" => Request::Stop { name: a.name },
        "start" => Request::Start { name: a.name },
        _ => Request::Restart { name: a.name },
    };
    check(connect(&home)?.request(&req)?)?;
    let done = match op {
        "stop" => "stopped",
        "start" => "started",
        _ => "restarted",
    };
    println!("{done} {name}");
    Ok(ExitCode::SUCCESS)
}

pub fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    elastos_schema::manifest::validate_name(&a.name)
        .map_err(|e| anyhow::anyhow!("`{}`: {e}", sanitize(&a.name)))?;
    let dir = home.root().join("logs");
    let path = dir.join(format!("{}.log", a.name));
    if !path.exists() {
        anyhow::bail!(
            "no logs for a capsule named `{}` in {} (see `elastos ps`)",
            a.name,
            dir.display()
        );
    }
    let since = a.since;
    let keep = |line: &str| match since {
        None => true,
        Some(t) => line
            .split_whitespace()
            .next()
            .and_then(|ts| humantime::parse_rfc3339_weak(ts).ok())
            .is_none_or(|lt| lt >= t),
    };
    let mut file = std::fs::File::open(&path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    let start = a.lines.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = std::io::stdout().lock();
    for l in &lines[start..] {
        writeln!(out, "{l}")?;
    }
    drop(out);
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut pos = file.seek(SeekFrom::End(0))?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated: start again at the top of the new file.
            file = std::fs::File::open(&path)?;
            pos = 0;
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if line.ends_with('\n') {
                pos += line.len() as u64;
                if keep(&line) {
                    print!("{line}");
                }
            }
            line.clear();
        }
        let _ = std::io::stdout().flush();
    }
}

/// What a layer named in `ps` means, for `inspect`.
fn layer_meaning(layer: &str) -> &'static str {
    if layer.starts_with("WITHOUT-") {
        return "MISSING on this machine, and allowed by [confinement] allow_without: see `elastos doctor`";
    }
    match layer.split('(').next().unwrap_or("") {
        "pid-namespace" => "its own PID namespace: it sees only its own processes, and nothing outlives it",
        "private-root" => "its own root: its package at /capsule, /tmp, three devices, its /proc (and /usr with host-libs); nothing else of the host",
        "net" => "granted a network: host (the host's) or loopback (its own, nothing else)",
        "state" => "granted host://state: its own persistent directory at /state, with its size limit when shown",
        "namespaces" => "its own user namespace (one uid inside, root not mapped), network (no device but loopback), IPC, hostname, mount table and cgroup view",
        "subreaper" => "no PID namespace (no privilege for one): capsule-host reaps and kills its descendants",
        "cgroup-v1" | "cgroup-v2" => "resident memory and process caps, enforced by the kernel for all its processes",
        "rlimits" => "per-process limits it cannot raise: open files, file size, no core dumps, ...",
        "uid" => "its own host uid and gid, with no capabilities and no way back to root",
        "no-new-privs" => "exec can never gain privileges (setuid binaries, file capabilities)",
        "landlock" => "file system: its package (read) and private tmp only; no TCP; no signals or abstract sockets beyond itself (the ABI, and any right this kernel lacks, in brackets)",
        "tmp" => "its /tmp: a tmpfs of its own of this size, charged to its memory, gone when it ends",
        "host-libs" => "granted host://libs: the host's libraries and programs, read-only",
        "seccomp" => "forbidden system calls kill it (ptrace, bpf, mount, ...); no sockets but AF_UNIX",
        _ => "",
    }
}

pub fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let r = check(connect(&home)?.request(&Request::Ps)?)?;
    let Some(c) = r
        .data
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == a.name.as_str()))
        .cloned()
    else {
        anyhow::bail!(
            "no capsule named `{}` (see `elastos ps`)",
            sanitize(&a.name)
        );
    };
    // The manifest, from the content store (verified again on the way).
    let manifest = c["cid"]
        .as_str()
        .and_then(|cid| elastos::store::Store::open(&home).ok()?.by_cid(cid).ok())
        .map(|s| s.manifest);
    if a.json {
        let mut out = c.clone();
        out["manifest"] = serde_json::to_value(&manifest)?;
        super::print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let text = |k: &str| sanitize(c[k].as_str().unwrap_or("-"));
    println!("name:       {}", text("name"));
    let pid = c["pid"].as_u64().map_or("-".into(), |p| p.to_string());
    println!(
        "state:      {} (pid {pid}, {} restarts, restart {})",
        text("state"),
        c["restarts"],
        text("restart")
    );
    match &manifest {
        Some(m) => println!(
            "package:    {} ({} {}, publisher {})",
            text("cid"),
            sanitize(&m.name),
            sanitize(&m.version),
            text("publisher")
        ),
        None => println!("package:    {} (not in the store)", text("cid")),
    }
    println!("substrate:  {}", text("substrate"));
    let serves: Vec<String> = c["serves"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s.as_str()).map(sanitize).collect())
        .unwrap_or_default();
    println!(
        "serves:     {}",
        if serves.is_empty() {
            "-".into()
        } else {
            serves.join(", ")
        }
    );
    println!("calls:      {}", c["calls"]);
    println!("layers:");
    for l in c["layers"].as_array().into_iter().flatten() {
        let l = l.as_str().unwrap_or("?");
        println!("  {:<40} {}", sanitize(l), layer_meaning(l));
    }
    if let Some(m) = &manifest {
        if !m.requests.is_empty() {
            println!("requests:");
            for r in &m.requests {
                println!(
                    "  {} {}: {}",
                    sanitize(&r.resource),
                    r.actions,
                    sanitize(&r.reason)
                );
            }
        }
        println!(
            "limits:     {}",
            serde_json::to_string(&m.limits).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
