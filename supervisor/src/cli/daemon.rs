//! `elastos up|down|status`: starting, stopping and asking after the supervisor.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use elastos::control::{Client, ControlError, Request};
use elastos::home::Home;

use super::{Failure, EXIT_NO_SUPERVISOR};

#[derive(Args)]
pub struct UpArgs {
    /// Stay attached (for systemd and tests); print `ready` on stdout once serving.
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Args)]
pub struct DownArgs {
    /// How long capsules get to stop after SIGTERM before they are killed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

/// Exit 3 with the "no supervisor" message.
pub fn not_running(home: &Home) -> anyhow::Error {
    Failure {
        code: EXIT_NO_SUPERVISOR,
        message: format!(
            "no supervisor is running for {} (start one with `elastos up`)",
            home.root().display()
        ),
    }
    .into()
}

/// Connects to the running supervisor, or fails with exit code 3.
pub fn connect(home: &Home) -> anyhow::Result<Client> {
    match Client::connect(home) {
        Ok(c) => Ok(c),
        Err(ControlError::NotRunning { .. }) => Err(not_running(home)),
        Err(e) => Err(e.into()),
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    if args.foreground {
        crate::daemon::foreground(home)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(mut c) = Client::connect(&home) {
        // A socket that takes the connection but drops it is a supervisor still on its way
        // out (killed: its last threads hold the socket a moment longer than its main thread
        // shows alive). Then a new one is started; the home's lock keeps out a second live one.
        if let Ok(r) = c.request(&Request::Status) {
            println!("already running (pid {})", r.data["pid"]);
            return Ok(ExitCode::SUCCESS);
        }
    }
    home.ensure()?;
    let logs = home.ensure_dir("logs")?;
    let stderr_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("supervisor.out"))
        .context("opening the supervisor's output log")?;
    let exe = std::env::current_exe().context("finding the elastos binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["up", "--foreground"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it detaches the
    // supervisor from the operator's terminal and session, so closing the terminal leaves it up.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let out = child
        .stdout
        .take()
        .context("the supervisor's readiness pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if line.starts_with("ready") {
        let mut c = connect(&home)?;
        let r = c.request(&Request::Status)?;
        println!(
            "elastos is up: pid {}, {}, socket {}",
            r.data["pid"],
            r.data["did"].as_str().unwrap_or("?"),
            r.data["socket"].as_str().unwrap_or("?")
        );
        // Up, but deciding nothing: said now rather than found out by the first capsule.
        if r.data["shell_running"] == false {
            let shell = elastos::text::sanitize(r.data["shell"].as_str().unwrap_or("shell"));
            eprintln!(
                "warning: the node's shell `{shell}` is not running, so every token request is denied `policy unavailable`; add its package to [supervisor] default_capsules in config.toml (scripts/up does), or see `elastos logs {shell}`"
            );
        }
        Ok(ExitCode::SUCCESS)
    } else if line.starts_with("already running") {
        print!("{line}");
        Ok(ExitCode::SUCCESS)
    } else {
        let _ = child.kill();
        let tail = std::fs::read_to_string(logs.join("supervisor.out")).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "the supervisor did not become ready; its last output ({}):\n{}",
            logs.join("supervisor.out").display(),
            tail.join("\n")
        )
    }
}

pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let mut c = connect(&home)?;
    let timeout_ms = u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX);
    let r = c.request(&Request::Down { timeout_ms })?;
    let pid = r.data["pid"].as_u64().unwrap_or(0);
    let until = Instant::now() + args.timeout + Duration::from_secs(20);
    // A zombie counts as gone: its parent (often the shell that ran `up`) will reap it.
    while pid != 0 && crate::daemon::pid_alive(u32::try_from(pid).unwrap_or(0)) {
        if Instant::now() > until {
            anyhow::bail!("the supervisor (pid {pid}) did not stop; kill it with `kill {pid}`");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("elastos is down");
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let mut c = match Client::connect(&home) {
        Ok(c) => c,
        Err(ControlError::NotRunning { .. }) => {
            if args.json {
                super::print_json(&serde_json::json!({"running": false}))?;
            } else {
                println!("not running ({})", home.root().display());
            }
            return Ok(ExitCode::from(EXIT_NO_SUPERVISOR));
        }
        Err(e) => return Err(e.into()),
    };
    let r = c.request(&Request::Status)?;
    if !r.ok {
        return Err(super::Failure {
            code: r.code.unwrap_or(super::EXIT_FAILED),
            message: r.error.unwrap_or_else(|| "the supervisor refused".into()),
        }
        .into());
    }
    if args.json {
        super::print_json(&r.data)?;
    } else {
        let d = &r.data;
        println!("running: pid {}, up {}s", d["pid"], d["uptime_s"]);
        println!("did: {}", d["did"].as_str().unwrap_or("?"));
        println!("socket: {}", d["socket"].as_str().unwrap_or("?"));
        match d["shell_running"].as_bool() {
            Some(false) => println!(
                "policy: shell, NOT RUNNING: the node has no policy, and every token request is denied after [policy] shell_wait; see `elastos ps` and `elastos logs {}`",
                d["shell"].as_str().unwrap_or("shell")
            ),
            Some(true) => println!("policy: shell (running)"),
            None => println!("policy: {}", d["policy"].as_str().unwrap_or("?")),
        }
        let a = &d["audit"];
        let reserve = match a["reserve_bytes"].as_u64() {
            Some(b) => format!("{:.1} MiB allocated ahead", b as f64 / (1u64 << 20) as f64),
            None => "no reserve (this file system cannot preallocate)".into(),
        };
        if a["disk_full"].as_bool() == Some(true) {
            println!("audit: DISK FULL: only denials, revocations and checkpoints are recorded; grants and calls are refused until space is freed in {} ({reserve})", home.root().display());
        } else if a["available"].as_bool() == Some(false) {
            println!("audit: UNAVAILABLE: every call is refused until the audit log can be written ({reserve})");
        } else if !a.is_null() {
            println!("audit: ok ({reserve})");
        }
        if let (Some(bytes), Some(max)) = (a["bytes"].as_u64(), a["max_size"].as_u64()) {
            if bytes >= max {
                println!(
                    "audit: WARNING: the log holds {:.1} MiB, at or over its [audit] max_size of {:.1} MiB; `elastos audit prune --before SEQ` removes what need not be kept (nothing is dropped by itself)",
                    bytes as f64 / f64::from(1 << 20),
                    max as f64 / f64::from(1 << 20)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
