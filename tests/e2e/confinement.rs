//! Confinement, end to end: the hostile probe (`tests/src/bin/probe.rs`) run as a capsule, one
//! attempt per run, against the same probe run directly (the control run), which shows every
//! attempt would otherwise reach its target, and so that the confined run can fail.
//!
//! The control run cannot harm the machine (`throwaway.rs`): it runs as an unprivileged host uid
//! of no account ([`CONTROL_UID`]), root only inside a user namespace of its own, with fresh
//! mount, UTS, IPC and cgroup namespaces, in a network namespace the test made. That network
//! plays the host's for this test: the test's supervisor runs in it too, with a listener on its
//! loopback, and a veth pair to a second namespace of the test's that plays another host. So a
//! capsule that escaped its own network namespace would land where the control run is. Targets
//! are made by the test (listeners, files, another capsule's data, a process) or harmless to
//! reach (signal 0, read-only opens). The control uid reaches the real targets wherever an
//! unprivileged process of the right uid could: the test's own files are reachable to anyone
//! (so only confinement keeps a capsule out), the node's key and home and another capsule's data
//! through ACLs granted for the control run alone. Where only root reaches the real target, the
//! control run uses a stand-in the test made, of the same kind, and the confined run keeps the
//! real one: `/etc/shadow` (a 0640 file of the control uid), signalling the test and the
//! supervisor (a process of the control uid), the node's control socket (a Unix socket that
//! answers anyone, which the confined run tries as well). Calls that need the host's privilege
//! even in a user namespace (bpf, module loading) only have to show the kernel judged them
//! (EPERM, not ENOSYS or death) in the control run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elastos_e2e::{elastos_bin, set_mode, Node};

use crate::supervisor::{path, script_capsule, wait_until, Up};
use crate::throwaway::{
    chmod, give, Control, Grant, Listeners, StandInProcess, TestNet, UnixStandIn, CONTROL_UID,
    FAR_ADDR,
};

/// The probe capsule's memory cap: far below the bomb's 512 MiB.
const PROBE_MEMORY: u64 = 128 << 20;

/// Calls the seccomp filter forbids outright: the process dies of SIGSYS. Each with whether its
/// control run may only show the kernel judged it: an EPERM, because the call needs a capability
/// of the host's user namespace that no unprivileged process has (`unprivileged_bpf_disabled`,
/// CAP_SYS_MODULE). Every other one must be reached.
const KILLED: &[(&str, bool)] = &[
    ("ptrace", false),
    ("bpf", true),
    ("keyctl", false),
    ("userfaultfd", false),
    ("io_uring", false),
    ("perf_event_open", false),
    // Only where the kernel loads modules at all (this machine's has none: ENOSYS even
    // unconfined, so no control run could show it reachable); see `killed()`.
    ("finit_module", true),
    ("unshare", false),
    ("mount", false),
    ("chroot", false),
];

/// The killed calls this kernel has.
fn killed() -> Vec<(&'static str, bool)> {
    let modules = Path::new("/proc/modules").exists();
    KILLED
        .iter()
        .filter(|(attempt, _)| modules || *attempt != "finit_module")
        .copied()
        .collect()
}

fn probe_bin() -> PathBuf {
    let p = elastos_bin().with_file_name("probe");
    assert!(
        p.exists(),
        "{} does not exist: build it first (`cargo build --workspace`)",
        p.display()
    );
    p
}

fn probe_capsule(node: &Node) -> PathBuf {
    let dir = node.scratch().join("cap-probe");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        format!("format = 1\nname = \"probe\"\nversion = \"0.1.0\"\ndescription = \"hostile probe\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/probe\"\n[limits]\nmemory = {PROBE_MEMORY}\n[[requests]]\nresource = \"host://libs\"\nactions = [\"read\"]\nreason = \"dynamically linked\"\n"),
    )
    .unwrap();
    std::fs::copy(probe_bin(), dir.join("bin/probe")).unwrap();
    set_mode(&dir.join("bin/probe"), 0o755);
    dir
}

/// One escape: the attempt, its target in the confined run, and in the control run (the same
/// unless only root could reach the real one).
struct Escape {
    attempt: &'static str,
    arg: String,
    control: String,
}

/// Every escape the hostile capsule tries that is not one of the killed calls. Targets are things
/// the test itself made or the machine always has.
fn escapes(up: &Up, t: &Targets) -> Vec<Escape> {
    let home = up.node.home();
    let s = |p: &Path| p.display().to_string();
    let same = |attempt, arg: String| Escape {
        attempt,
        control: arg.clone(),
        arg,
    };
    let stand_in = |attempt, arg: String, control: String| Escape {
        attempt,
        arg,
        control,
    };
    let climb = "../../../../../../../../../..";
    vec![
        stand_in("read_file", "/etc/shadow".into(), s(&t.shadow_stand_in)),
        same("read_file", s(&home.join("node.key"))),
        same("read_file", s(&t.host_secret)),
        same("read_file", s(&t.victim_secret)),
        stand_in(
            "read_file",
            format!("{climb}/etc/shadow"),
            format!("{climb}{}", s(&t.shadow_stand_in)),
        ),
        same("read_file", "/dev/random".into()),
        same("list_dir", "/proc/1".into()),
        same("list_dir", s(&home)),
        same("write_file", s(&t.written)),
        same("symlink_read", s(&t.host_secret)),
        same("hardlink", s(&t.host_secret)),
        same("exec", s(&t.shell_copy)),
        stand_in(
            "signal",
            std::process::id().to_string(),
            t.stand_in_pid.to_string(),
        ),
        stand_in(
            "signal",
            t.supervisor_pid.to_string(),
            t.stand_in_pid.to_string(),
        ),
        stand_in(
            "unix_request",
            s(&home.join("control.sock")),
            s(&t.host_socket),
        ),
        same("unix_request", s(&t.host_socket)),
        // The host's loopback (the supervisor's network), then another host over the veth pair.
        same("tcp_connect", t.near.tcp_target()),
        same("udp_send", t.near.udp_target()),
        same("tcp_connect", t.far.tcp_target()),
        same("udp_send", t.far.udp_target()),
        same("tcp_bind", String::new()),
        same("inet_socket", String::new()),
        same("netlink_socket", String::new()),
        same("clone_newuser", String::new()),
        same("core_dump", String::new()),
        same("new_privs", String::new()),
        same("setuid_root", String::new()),
        same("raise_nofile", String::new()),
        same("fork_bomb", String::new()),
        same("fd_exhaustion", String::new()),
        same("tiocsti", String::new()),
        same("tiocsti_wide", String::new()),
        same("aslr_off", String::new()),
    ]
}

struct Targets {
    host_secret: PathBuf,
    shadow_stand_in: PathBuf,
    victim_secret: PathBuf,
    written: PathBuf,
    shell_copy: PathBuf,
    host_socket: PathBuf,
    supervisor_pid: u32,
    stand_in_pid: u32,
    /// On the loopback of the test's network, where the supervisor runs.
    near: Listeners,
    /// On the other host, at the far end of the veth pair.
    far: Listeners,
}

/// Whether the control run of an attempt reached its target.
fn reached(out: &std::process::Output) -> bool {
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("blocked")
}

#[test]
fn a_hostile_capsule_is_stopped_at_every_escape_the_control_run_shows_possible() {
    // The test's network first: the supervisor starts inside it.
    let net = TestNet::new();
    let node = Node::granting();
    let mut up_cmd = node.command();
    up_cmd.arg("up");
    net.enter_near(&mut up_cmd);
    let started: elastos_e2e::Run = up_cmd.output().unwrap().into();
    assert!(started.ok().contains("elastos is up"), "{started:#?}");
    let up = Up { node };
    // The test's directory: traversable by anyone (not listable), so the control uid reaches
    // the test's own targets in it; the node's home in it stays 0700.
    chmod(up.node.dir.path(), 0o711);
    let scratch = up.node.scratch();
    // Another capsule's data, in its state directory (its tmp is a tmpfs only its own mount
    // namespace sees).
    let victim = script_capsule(
        &up.node,
        "victim",
        "echo secret > \"$ELASTOS_STATE/secret\"\necho \"state=$ELASTOS_STATE\"\nwhile true; do sleep 1; done",
    );
    let manifest = victim.join("capsule.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("[[requests]]\nresource = \"host://state\"\nactions = [\"read\", \"write\"]\nreason = \"keeps a secret\"\n");
    std::fs::write(&manifest, text).unwrap();
    up.node.run(&["run", "-d", path(&victim)]).ok();
    // Inside, its state is /state; on the host it is HOME/state/capsules/victim.
    let victim_dir = up.node.home().join("state/capsules/victim");
    let victim_secret = victim_dir.join("secret");
    wait_until("the victim's secret", Duration::from_secs(10), || {
        up.node.run(&["logs", "victim"]).ok().contains("state=")
    });
    assert!(victim_secret.exists(), "{}", victim_secret.display());
    // The invoking user's data, which the control uid plays: its own (the kernel's
    // protected_hardlinks lets only the owner, or a writer, link it), readable by anyone.
    let host_secret = scratch.join("host-secret");
    std::fs::write(&host_secret, "the invoking user's data").unwrap();
    chmod(&host_secret, 0o644);
    give(&host_secret, CONTROL_UID);
    let shell_copy = scratch.join("sh-copy");
    std::fs::copy("/bin/sh", &shell_copy).unwrap();
    set_mode(&shell_copy, 0o755);
    // Outside every capsule's tmp, writable by anyone (sticky, as /tmp is).
    let outside = scratch.join("outside");
    std::fs::create_dir(&outside).unwrap();
    chmod(&outside, 0o1777);
    let host_socket = scratch.join("host.sock");
    let _host_server = UnixStandIn::at(&host_socket);
    let control = Control::new(&scratch.join("control"), &probe_bin(), &net);
    // /etc/shadow stands for a file only root reads; only root reads the real one, so the
    // control run reads this one: the same mode, owned by the control uid.
    let shadow_stand_in = control.dir.join("shadow");
    std::fs::write(&shadow_stand_in, "root:*:19000:0:99999:7:::\n").unwrap();
    chmod(&shadow_stand_in, 0o640);
    give(&shadow_stand_in, CONTROL_UID);
    let stand_in_process = StandInProcess::start();
    let t = Targets {
        host_secret,
        shadow_stand_in,
        victim_secret,
        written: outside.join("written-by-the-capsule"),
        shell_copy,
        host_socket,
        supervisor_pid: up.supervisor_pid(),
        stand_in_pid: stand_in_process.pid(),
        near: Listeners::on(&net.near, std::net::Ipv4Addr::LOCALHOST),
        far: Listeners::on(&net.far, FAR_ADDR),
    };
    let escapes = escapes(&up, &t);
    let killed = killed();
    assert!(escapes.len() + killed.len() >= 30);

    // Control: each attempt reaches its target when nothing confines it. The node's key and
    // home and the victim's data are another uid's: the control uid may read them meanwhile.
    // No command of the node's runs while this grant lives (its home would look too open).
    let home = up.node.home();
    let grant = Grant::new(&[
        (&home, 0o5),
        (&home.join("node.key"), 0o4),
        (&home.join("state"), 0o1),
        (&home.join("state/capsules"), 0o1),
        (&victim_dir, 0o1),
        (&t.victim_secret, 0o4),
    ]);
    for e in &escapes {
        let out = control.run(e.attempt, &e.control);
        assert!(
            reached(&out),
            "control run of `{} {}` did not reach its target, so the confined run would prove nothing: {out:?}",
            e.attempt,
            e.control
        );
    }
    for (attempt, host_only) in &killed {
        let out = control.run(attempt, "");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let judged = *host_only
            && stdout.starts_with("blocked:")
            && stdout.trim_end().ends_with("(os error 1)");
        assert!(
            out.status.success() && (stdout.starts_with("reached:") || judged),
            "control run of `{attempt}`: {out:?}"
        );
    }
    // memfd exec: code in no file. The control run copies the probe itself into a memfd.
    let control_memfd = control.run("memfd_exec", control.probe.to_str().unwrap());
    assert!(
        String::from_utf8_lossy(&control_memfd.stdout).contains("code from a memfd ran"),
        "control run of memfd exec: {control_memfd:?}"
    );
    let control_bomb = control.run("memory_bomb", "");
    assert!(
        String::from_utf8_lossy(&control_bomb.stdout).starts_with("reached:"),
        "control run of the memory bomb: {control_bomb:?}"
    );
    // And it could not harm the machine: the real root-only targets, the machine's own
    // loopback and the supervisor are out of its reach.
    let machine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (attempt, arg) in [
        ("read_file", "/etc/shadow".to_string()),
        ("signal", t.supervisor_pid.to_string()),
        ("signal", std::process::id().to_string()),
        ("tcp_connect", machine.local_addr().unwrap().to_string()),
        ("write_file", "/etc/elastos-control-run".to_string()),
    ] {
        let out = control.run(attempt, &arg);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("blocked:"),
            "the control run reached `{attempt} {arg}`, which only the host's root or network may: {out:?}"
        );
    }
    drop(grant);
    // What the network attempts sent arrived: one connection and one datagram at each host.
    assert_eq!(t.near.take(), (1, 1), "the control run on the loopback");
    assert_eq!(t.far.take(), (1, 1), "the control run to the other host");
    std::fs::remove_file(&t.written).unwrap();

    // Confined: every one is refused or killed, each reported on its own.
    let dir = probe_capsule(&up.node);
    let mut failures = Vec::new();
    for (i, e) in escapes.iter().enumerate() {
        let name = format!("escape-{i}");
        let out = up
            .node
            .run(&["run", path(&dir), "--name", &name, "--", e.attempt, &e.arg]);
        if !(out.code == 0 && out.stdout.starts_with("blocked:")) {
            failures.push(format!("`{} {}`: {out:?}", e.attempt, e.arg));
        }
    }
    for (attempt, _) in &killed {
        let name = format!("killed-{}", attempt.replace('_', "-"));
        let out = up
            .node
            .run(&["run", path(&dir), "--name", &name, "--", attempt]);
        if out.code != 159 {
            failures.push(format!("`{attempt}` not killed: {out:?}"));
        } else {
            let log = up.node.run(&["logs", &name]).ok().to_string();
            assert!(log.contains("killed by its seccomp filter"), "{log}");
        }
    }
    let memfd = up.node.run(&[
        "run",
        path(&dir),
        "--name",
        "memfd",
        "--",
        "memfd_exec",
        "bin/probe",
    ]);
    if !(memfd.code == 0 && memfd.stdout.starts_with("blocked:")) {
        failures.push(format!("memfd exec: {memfd:?}"));
    }
    // The memory bomb: the OOM killer (SIGKILL, 137) or a refused allocation, both at the cap.
    let bomb = up.node.run(&[
        "run",
        path(&dir),
        "--name",
        "memory-bomb",
        "--",
        "memory_bomb",
    ]);
    if !(bomb.code == 137 || (bomb.code == 0 && bomb.stdout.starts_with("blocked:"))) {
        failures.push(format!("memory bomb: {bomb:?}"));
    }
    assert!(
        failures.is_empty(),
        "escapes that worked:\n{}",
        failures.join("\n")
    );
    assert!(!t.written.exists(), "the capsule wrote outside its tmp");
    assert_eq!(t.near.take(), (0, 0), "a capsule reached the loopback");
    assert_eq!(t.far.take(), (0, 0), "a capsule reached the other host");
    assert_eq!(
        std::fs::read_to_string(&t.victim_secret).unwrap().trim(),
        "secret"
    );
    // The kills are audited. (The control socket: a capsule with its own uid cannot even walk
    // to it through the 0700 home; one sharing the operator's uid is refused by PID namespace,
    // audited `control.refused`.)
    let kills = || {
        up.node
            .run(&["audit", "--json"])
            .ok()
            .lines()
            .filter(|l| l.contains("\"action\":\"capsule.seccomp\""))
            .count()
    };
    // From each killed capsule's exit code: one record per kill.
    wait_until("every kill audited", Duration::from_secs(10), || {
        kills() >= killed.len()
    });
    let audit = up.node.run(&["audit", "--json"]).ok().to_string();
    assert_eq!(kills(), killed.len(), "{audit}");
    // The other host is reachable from the supervisor's network: a capsule granted that
    // network gets there, so the refusals above are the confinement's, not the routing's.
    let granted = granted_probe(&up.node, "net-granted", "host://net");
    let out = up.node.run(&[
        "run",
        path(&granted),
        "--name",
        "granted",
        "--",
        "tcp_connect",
        &t.far.tcp_target(),
    ]);
    assert!(out.ok().starts_with("reached:"), "{out:#?}");
    assert_eq!(t.far.take().0, 1, "the granted capsule's connection");
    // And the supervisor still serves.
    up.node.run(&["status"]).ok();
}

/// Starts `idle`, a shell script that sleeps forever, and waits until it runs.
fn start_idle(up: &Up) {
    let dir = script_capsule(&up.node, "idle", "while true; do sleep 1; done");
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("idle running", Duration::from_secs(10), || {
        up.capsule("idle")["state"] == "running"
    });
}

#[test]
fn ps_shows_the_layers_in_force() {
    let up = Up::new();
    start_idle(&up);
    let layers = up.capsule("idle")["layers"].clone();
    let layers: Vec<&str> = layers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    // A root supervisor's capsules each run as a uid of their own (this machine's CI is root).
    if nix::unistd::geteuid().is_root() {
        assert!(
            layers.iter().any(|l| l.starts_with("uid(2")),
            "a capsule of a root supervisor without its own uid: {layers:?}"
        );
        assert!(
            layers
                .iter()
                .any(|l| l.starts_with("rlimits(") && l.contains("nproc")),
            "{layers:?}"
        );
    }
    // A root supervisor's capsule lives in namespaces of its own: seen from here, its network,
    // IPC, hostname and mount namespaces differ from this test's.
    if nix::unistd::geteuid().is_root() {
        assert!(
            layers.contains(&"namespaces(user,pid,net,ipc,uts,mnt,cgroup)"),
            "{layers:?}"
        );
        let pid = up.capsule("idle")["pid"].as_u64().unwrap();
        // ps names capsule-host's pid; the capsule is below it, inside the namespaces.
        let inside = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| pid.to_string());
        // Its root holds only what it was given (host-libs included for this shell script).
        let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{inside}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        root.sort();
        assert_eq!(
            root,
            ["bin", "capsule", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr"],
            "{layers:?}"
        );
        assert!(layers.contains(&"private-root"), "{layers:?}");
        for ns in ["user", "net", "ipc", "uts", "mnt", "pid_for_children"] {
            let theirs = std::fs::read_link(format!("/proc/{inside}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "{ns} namespace shared with the host");
        }
        // Its user namespace maps one id, never root, onto its own host uid. The host sees
        // init (capsule-host's child, PID 1 inside) and the capsule (init's child) run as that
        // uid; the capsule without any capability.
        let host_uid = layers
            .iter()
            .find_map(|l| l.strip_prefix("uid(")?.strip_suffix(')'))
            .unwrap()
            .to_string();
        let map = std::fs::read_to_string(format!("/proc/{inside}/uid_map")).unwrap();
        let map: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(map, ["1000", host_uid.as_str(), "1"], "{layers:?}");
        let capsule = child_of(&inside);
        let field = status_field;
        assert_eq!(
            field(&inside, "Uid:"),
            [host_uid.as_str(); 4],
            "init's uids"
        );
        assert_eq!(
            field(&capsule, "Uid:"),
            [host_uid.as_str(); 4],
            "the capsule's uids"
        );
        assert_eq!(
            field(&capsule, "CapEff:"),
            ["0000000000000000"],
            "its capabilities"
        );
        assert_eq!(
            field(&capsule, "CapBnd:"),
            ["0000000000000000"],
            "its bounding set"
        );
    }
    // This kind of machine has cgroup v1 memory and pids controllers: they cap the capsule.
    if nix::unistd::geteuid().is_root()
        && std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
    {
        assert!(
            layers
                .iter()
                .any(|l| l.starts_with("cgroup-v1(memory=512MiB,pids=258)")),
            "{layers:?}"
        );
    }
    for want in ["no-new-privs", "host-libs", "seccomp"] {
        assert!(layers.contains(&want), "{want} missing: {layers:?}");
    }
    // Landlock names its ABI; this machine's lacks nothing confinement asks for.
    assert!(
        layers
            .iter()
            .any(|l| l.starts_with("landlock(abi=") && !l.contains("missing")),
        "{layers:?}"
    );
    assert!(
        layers
            .iter()
            .any(|l| l.starts_with("rlimits(") && l.contains("nofile")),
        "{layers:?}"
    );
    let text = up.node.run(&["ps"]).ok().to_string();
    assert!(text.contains("idle"), "{text}");
    // inspect: the same layers, each explained, and the manifest behind them.
    let inspected = up.node.run(&["inspect", "idle", "--json"]).json();
    assert_eq!(inspected["layers"], up.capsule("idle")["layers"]);
    assert_eq!(inspected["manifest"]["name"], "idle");
    let text = up.node.run(&["inspect", "idle"]).ok().to_string();
    assert!(
        text.contains("landlock") && text.contains("its package (read) and private tmp only"),
        "{text}"
    );
    up.node.run(&["inspect", "nobody"]).code(1);
}

/// capsule-host starts with none of the supervisor's environment, only the one glibc setting it
/// is given (no restartable sequences); the capsule's own environment is what capsule-host
/// builds for it, without even that.
#[test]
fn capsule_host_and_the_capsule_get_none_of_the_supervisors_environment() {
    let up = Up::new();
    start_idle(&up);
    let environ = |pid: &str| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    let supervisor = environ(&up.supervisor_pid().to_string());
    assert!(
        supervisor.iter().any(|v| v.starts_with("ELASTOS_HOME=")),
        "{supervisor:?}"
    );
    let host = up.capsule("idle")["pid"].as_u64().unwrap().to_string();
    assert_eq!(environ(&host), ["GLIBC_TUNABLES=glibc.pthread.rseq=0"]);
    // capsule-host's child, then (with an init between them) the capsule.
    let mut capsule = child_of(&host);
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{capsule}/task/{capsule}/children")) {
        if let Some(grandchild) = c.split_whitespace().next() {
            capsule = grandchild.to_string();
        }
    }
    let theirs = environ(&capsule);
    assert!(
        theirs.iter().any(|v| v.starts_with("ELASTOS_CAPSULE=idle")),
        "{theirs:?}"
    );
    assert!(
        !theirs
            .iter()
            .any(|v| v.starts_with("GLIBC_TUNABLES=") || v.starts_with("ELASTOS_HOME=")),
        "{theirs:?}"
    );
}

#[test]
fn a_layer_that_cannot_be_applied_keeps_the_capsule_from_running() {
    let up = Up::new();
    // Had it run, its log would say so.
    let dir = script_capsule(&up.node, "overreach", "echo it-ran");
    // More open files than the kernel allows anyone (fs.nr_open): setrlimit fails, even for root.
    let manifest = dir.join("capsule.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("[limits]\nopen_files = 4000000000\n");
    std::fs::write(&manifest, text).unwrap();
    let out = up.node.run(&["run", path(&dir), "--restart", "never"]);
    assert_ne!(out.code, 0, "{out:#?}");
    let log = up.node.run(&["logs", "overreach"]).ok().to_string();
    assert!(
        log.contains("failed at limits") && log.contains("the capsule was not started"),
        "{log}"
    );
    assert!(
        !log.contains("it-ran"),
        "the capsule ran without its limits: {log}"
    );
}

#[test]
fn a_cpu_share_caps_a_busy_capsule() {
    if !std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists()
        || !nix::unistd::geteuid().is_root()
    {
        panic!("this machine is expected to offer the cgroup v1 cpu controller to root (see `elastos doctor`)");
    }
    let up = Up::new();
    let dir = probe_capsule(&up.node);
    let burn = |name: &str| -> f64 {
        let out = up
            .node
            .run(&["run", path(&dir), "--name", name, "--", "cpu_burn"]);
        out.ok()
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{out:#?}"))
    };
    // The control: the same probe, no cap.
    let free = burn("free-burner");
    // The same probe with a cap of a tenth of a core.
    let manifest = dir.join("capsule.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("[limits]\n", "[limits]\ncpu = 10\n");
    std::fs::write(&manifest, text).unwrap();
    let share = burn("burner");
    // A tenth of a core over half a second, with a period's slack; and well below what the
    // same probe took without the cap on this machine just before (whatever else it ran).
    assert!(share <= 0.35, "a 10% cap let it use {share:.2} of a core");
    assert!(
        free > 2.0 * share,
        "without a cap it used {free:.2} of a core, with one {share:.2}: the cap made no difference"
    );
}

#[test]
fn a_granted_state_directory_outlives_restarts_and_no_other_capsule_sees_it() {
    let up = Up::new();
    let dir = script_capsule(
        &up.node,
        "counter",
        "n=$(cat \"$ELASTOS_STATE/n\" 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > \"$ELASTOS_STATE/n\"\necho \"count=$n at $ELASTOS_STATE\"",
    );
    let manifest = dir.join("capsule.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(
        "[[requests]]\nresource = \"host://state\"\nactions = [\"read\", \"write\"]\nreason = \"keeps a count\"\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let first = up.node.run(&["run", path(&dir)]);
    assert!(first.ok().contains("count=1"), "{first:#?}");
    let second = up.node.run(&["run", path(&dir)]);
    assert!(second.ok().contains("count=2"), "{second:#?}");
    // It lives in the node's home, owned by the capsule's uid when the supervisor is root.
    let on_host = up.node.home().join("state/capsules/counter/n");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap().trim(), "2");
    // Another capsule, granted no state, reaches neither its own nor this one.
    let nosy = script_capsule(
        &up.node,
        "nosy",
        &format!(
            "echo \"state=[$ELASTOS_STATE]\"\ncat {} && echo LEAKED\nexit 0",
            on_host.display()
        ),
    );
    let out = up.node.run(&["run", path(&nosy)]);
    let stdout = out.ok();
    assert!(stdout.contains("state=[]"), "{out:#?}");
    assert!(!stdout.contains("LEAKED"), "{out:#?}");
}

/// The first child of process `pid`.
pub(crate) fn child_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A field of `/proc/PID/status`, split into its words.
pub(crate) fn status_field(pid: &str, name: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Whether `dir` is a mount point here.
fn mounted(dir: &std::path::Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
}

#[test]
fn a_state_directory_fills_up_to_its_quota_and_no_further() {
    // Mounting a quota needs root, as CI has; a normal user's node runs without one only where
    // it says so (see a_supervisor_run_by_a_normal_user_confines_capsules_in_a_user_namespace).
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, as CI has: state quotas are loop-mounted file systems"
    );
    let up = Up::new();
    let dir = script_capsule(
        &up.node,
        "filler",
        "cat \"$ELASTOS_STATE/before\" 2>/dev/null && echo found-before\n\
         echo kept > \"$ELASTOS_STATE/before\"\n\
         dd if=/dev/zero of=\"$ELASTOS_STATE/fill\" bs=1M count=20 2>&1\n\
         echo \"dd=$?\"\n\
         rm -f \"$ELASTOS_STATE/fill\"\n\
         while true; do sleep 1; done",
    );
    let manifest = dir.join("capsule.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!(
        "[limits]\nstorage = {}\n[[requests]]\nresource = \"host://state\"\nactions = [\"read\", \"write\"]\nreason = \"fills it\"\n",
        8 << 20
    ));
    std::fs::write(&manifest, text).unwrap();
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("the fill", Duration::from_secs(20), || {
        up.node.run(&["logs", "filler"]).stdout.contains("dd=")
    });
    let log = up.node.run(&["logs", "filler"]).ok().to_string();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains("dd=0"), "{log}");
    let layers = up.capsule("filler")["layers"].to_string();
    assert!(layers.contains("state(quota=8MiB)"), "{layers}");
    // On the host: a file system of its own, mounted at the state directory, backed by a
    // sparse 8 MiB image; the node's own disk did not take the 20 MiB.
    let state = up.node.home().join("state/capsules/filler");
    assert!(mounted(&state), "{}", state.display());
    let image = state.with_extension("img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 8 << 20);
    // Down unmounts it; the next supervisor mounts the same image, with what it held.
    up.node.run(&["down"]).ok();
    assert!(!mounted(&state), "down left the quota mounted");
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("the second fill", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "filler"])
            .stdout
            .matches("dd=")
            .count()
            == 2
    });
    let log = up.node.run(&["logs", "filler"]).ok().to_string();
    assert!(log.contains("found-before"), "{log}");
    assert!(mounted(&state));
}

/// The supervisor's run directory (`TMPDIR/elastos-PID-HEX`), as `status` names it.
fn run_dir(up: &Up) -> PathBuf {
    PathBuf::from(
        up.node.run(&["status", "--json"]).json()["run_dir"]
            .as_str()
            .expect("status names its run_dir"),
    )
}

#[test]
fn a_capsules_tmp_is_a_tmpfs_of_its_size_and_its_run_directory_goes_when_it_ends() {
    let up = Up::new();
    let dir = script_capsule(
        &up.node,
        "scratch",
        "head -c 1048576 /dev/zero > /tmp/small && echo small-ok\n\
         dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>&1\n\
         echo \"dd=$?\"\n\
         while true; do sleep 1; done",
    );
    let manifest = dir.join("capsule.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!("[limits]\ntmp = {}\n", 4 << 20));
    std::fs::write(&manifest, text).unwrap();
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("the fill", Duration::from_secs(20), || {
        up.node.run(&["logs", "scratch"]).stdout.contains("dd=")
    });
    let log = up.node.run(&["logs", "scratch"]).ok().to_string();
    assert!(log.contains("small-ok"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains("dd=0"), "{log}");
    let layers = up.capsule("scratch")["layers"].to_string();
    assert!(layers.contains("tmp(size=4MiB)"), "{layers}");
    // Nothing of it reached the host's disk: its run directory, under the tmpfs, is empty.
    let run = run_dir(&up);
    let mine = run.join("scratch");
    assert_eq!(
        std::fs::read_dir(&mine)
            .unwrap_or_else(|e| panic!("{}: {e}", mine.display()))
            .count(),
        0
    );
    // Stopped, its run directory goes.
    up.node.run(&["stop", "scratch"]).ok();
    wait_until("its run directory removed", Duration::from_secs(10), || {
        !mine.exists()
    });
    // A supervisor killed leaves its run directory; the next `up` removes it.
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("the second start", Duration::from_secs(20), || {
        mine.exists()
    });
    let sup = up.supervisor_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the supervisor gone", Duration::from_secs(10), || {
        !crate::supervisor::alive(sup)
    });
    assert!(run.exists(), "a killed supervisor cannot clean up");
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
    assert!(!run.exists(), "{} left behind", run.display());
    assert_ne!(run_dir(&up), run);
}

/// The probe capsule, granted `resource`.
fn granted_probe(node: &Node, name: &str, resource: &str) -> PathBuf {
    let dir = probe_capsule(node);
    let granted = node.scratch().join(name);
    std::fs::create_dir_all(granted.join("bin")).unwrap();
    std::fs::copy(dir.join("bin/probe"), granted.join("bin/probe")).unwrap();
    set_mode(&granted.join("bin/probe"), 0o755);
    let mut text = std::fs::read_to_string(dir.join("capsule.toml")).unwrap();
    text.push_str(&format!(
        "[[requests]]\nresource = \"{resource}\"\nactions = [\"read\", \"write\"]\nreason = \"test\"\n"
    ));
    std::fs::write(granted.join("capsule.toml"), text).unwrap();
    granted
}

#[test]
fn the_network_comes_only_with_a_grant_host_or_loopback() {
    let up = Up::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let probe = |dir: &PathBuf, name: &str, attempt: &str| {
        up.node
            .run(&["run", path(dir), "--name", name, "--", attempt, &port])
            .ok()
            .to_string()
    };
    // host://net: the host's network, this test's listener included.
    let host = granted_probe(&up.node, "net-host", "host://net");
    assert!(probe(&host, "h1", "tcp_connect").starts_with("reached:"));
    // host://loopback: a loopback of its own, and nothing of the host's.
    let lo = granted_probe(&up.node, "net-lo", "host://loopback");
    assert!(probe(&lo, "l1", "tcp_self").starts_with("reached:"));
    assert!(probe(&lo, "l2", "tcp_connect").starts_with("blocked:"));
    // Neither: no IP socket at all.
    let none = probe_capsule(&up.node);
    assert!(probe(&none, "n1", "tcp_self").starts_with("blocked:"));
    drop(listener);
}

/// A supervisor run by a normal user still gives each capsule a user namespace (the user's uid
/// mapped onto one non-root uid inside), every other namespace and a private root; what only
/// root can give, a uid of its own and cgroups, it runs without, because the node says so.
#[test]
fn a_supervisor_run_by_a_normal_user_confines_capsules_in_a_user_namespace() {
    // Root plays a user with a uid of no account: 4242 (the test's own uid when not root).
    let me = nix::unistd::geteuid().as_raw();
    let (node, uid) = if me == 0 {
        (Node::run_by(4242, &["echo", "shell"]), 4242)
    } else {
        (Node::new(), me)
    };
    let echo = node.pack_first_party("echo");
    node.grant_requests(
        &[],
        "[confinement]\nallow_without = [\"uid\", \"cgroups\"]\n",
    );
    let up = Up::with_node(node);
    up.node.run(&["run", "-d", path(&echo)]).ok();
    wait_until("echo serving", Duration::from_secs(10), || {
        up.node
            .run(&["logs", "echo"])
            .stdout
            .contains("echo: serving")
    });
    let c = up.capsule("echo");
    let layers: Vec<&str> = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    for want in [
        "namespaces(user,pid,net,ipc,uts,mnt,cgroup)",
        "private-root",
        "seccomp",
        "WITHOUT-uid",
        "WITHOUT-cgroups",
    ] {
        assert!(layers.contains(&want), "{want} missing: {layers:?}");
    }
    assert!(!layers.iter().any(|l| l.starts_with("uid(")), "{layers:?}");
    // Seen from the host: init and the capsule run as the user, mapped onto uid 1000 inside,
    // and the capsule holds no capability, not even in its own namespace.
    let host = c["pid"].as_u64().unwrap();
    let init = child_of(&host.to_string());
    let capsule = child_of(&init);
    let map = std::fs::read_to_string(format!("/proc/{capsule}/uid_map")).unwrap();
    let map: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(map, ["1000", &uid.to_string(), "1"]);
    let field = |name: &str| status_field(&capsule, name);
    let uid = uid.to_string();
    assert_eq!(field("Uid:"), [uid.as_str(); 4]);
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("CapPrm:"), ["0000000000000000"]);
    assert_eq!(field("CapBnd:"), ["0000000000000000"]);
    // Its root holds only what it was given.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{capsule}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["capsule", "dev", "proc", "tmp"]);
}

#[test]
fn a_capsules_child_killed_by_seccomp_or_for_memory_is_audited_and_the_capsule_goes_on() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs a root supervisor (capsules with uids and cgroups of their own); run the suite as root, as CI does"
    );
    let up = Up::new();
    let dir = probe_capsule(&up.node);
    // The probe as the capsule's children: one makes a killed call, one outgrows the memory cap.
    let manifest = std::fs::read_to_string(dir.join("capsule.toml")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        manifest
            .replace("name = \"probe\"", "name = \"parent\"")
            .replace("native = \"bin/probe\"", "native = \"bin/run\""),
    )
    .unwrap();
    std::fs::write(
        dir.join("bin/run"),
        // Again every few seconds: the kernel rate-limits its reports, and other tests' kills
        // may use up a burst.
        "#!/bin/sh\nwhile true; do\n/capsule/bin/probe ptrace\necho \"ptrace child: $?\"\n/capsule/bin/probe memory_bomb\necho \"bomb child: $?\"\necho children done\nsleep 3\ndone\n",
    )
    .unwrap();
    set_mode(&dir.join("bin/run"), 0o755);
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("both children ended", Duration::from_secs(60), || {
        up.node
            .run(&["logs", "parent"])
            .ok()
            .contains("children done")
    });
    let records = || -> Vec<serde_json::Value> {
        up.node
            .run(&["audit", "--json", "--capsule", "parent"])
            .ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until("the kills audited", Duration::from_secs(40), || {
        let r = records();
        r.iter().any(|r| r["action"] == "capsule.process-seccomp")
            && r.iter().any(|r| r["action"] == "capsule.oom")
    });
    let r = records();
    let seccomp = r
        .iter()
        .find(|r| r["action"] == "capsule.process-seccomp")
        .unwrap();
    assert_eq!(seccomp["decision"], "denied");
    assert!(
        seccomp["reason"].as_str().unwrap().contains("(probe)"),
        "{seccomp}"
    );
    // The capsule itself was neither: it still runs.
    assert_eq!(up.capsule("parent")["state"], "running");
    up.node.run(&["audit", "verify"]).ok();
}

/// The mount options of the mount at `point` as process `pid` sees its mounts.
fn mount_options(pid: &str, point: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(point))
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
}

/// The package is bound read-only into the capsule's root with everything mounted below it;
/// each of those mounts is read-only too, not only the top one (the mount layer on its own:
/// Landlock would refuse the write as well).
#[test]
fn a_mount_inside_a_read_only_tree_is_read_only_in_the_capsule() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, as CI has: it mounts a file system inside the store"
    );
    let up = Up::new();
    let dir = script_capsule(&up.node, "layered", "while true; do sleep 1; done");
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/keep"), b"").unwrap();
    let out = up.node.run(&["run", "-d", path(&dir)]);
    let cid = out.ok().split_whitespace().nth(1).unwrap().to_string();
    up.node.run(&["stop", "layered"]).ok();
    // A mount below the package's tree, writable on the host.
    let sub = up.node.home().join("store").join(&cid).join("sub");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(sub.clone());
    up.node.run(&["start", "layered"]).ok();
    wait_until("layered running", Duration::from_secs(10), || {
        up.capsule("layered")["state"] == "running"
    });
    let host = up.capsule("layered")["pid"].as_u64().unwrap().to_string();
    let capsule = child_of(&child_of(&host));
    let top = mount_options(&capsule, "/capsule").expect("/capsule in its mounts");
    assert!(top.starts_with("ro,"), "{top}");
    let below = mount_options(&capsule, "/capsule/sub").expect("/capsule/sub in its mounts");
    assert!(
        below.starts_with("ro,"),
        "the mount below the package is writable: {below}"
    );
    assert!(
        below.contains("nosuid") && below.contains("nodev"),
        "{below}"
    );
    up.node.run(&["stop", "layered"]).ok();
}

/// The pids cgroup on its own: lowered far below what the capsule's RLIMIT_NPROC allows, it alone
/// stops a fork bomb (the rlimit would let 256 processes through).
#[test]
fn the_pids_cgroup_alone_stops_a_fork_bomb() {
    use std::io::{BufRead, Write};
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, as CI has: capsules get cgroups and uids of their own"
    );
    let up = Up::new();
    let dir = probe_capsule(&up.node);
    let mut run = up.node.command();
    run.args([
        "run",
        path(&dir),
        "--name",
        "bomber",
        "-i",
        "--",
        "fork_bomb_on_cue",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    let mut child = run.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for the cue"), "{line}");
    let c = up.capsule("bomber");
    let layers = c["layers"].to_string();
    assert!(
        layers.contains("nproc") && layers.contains("pids="),
        "both limits are in force: {layers}"
    );
    let host = c["pid"].as_u64().unwrap();
    let group = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|root| Path::new(root).join(format!("elastos/bomber.{host}/pids.max")))
        .find(|p| p.exists())
        .expect("the capsule's pids cgroup");
    std::fs::write(&group, "10").unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let forked: u32 = line
        .strip_prefix("blocked: fork failed after ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the bomb was not stopped: {line}"));
    // capsule-host, init and the probe count too.
    assert!(forked <= 7, "{forked} processes under pids.max = 10");
    drop(child.stdin.take());
    let _ = child.wait();
}

/// The control socket's peer check on its own: with the socket's file made reachable and
/// writable by anyone (a hard link outside the 0700 home, mode 0666), a process of another uid
/// connects, and is closed on without an answer, audited `control.refused`; the operator, on
/// the same link, is answered.
#[test]
fn the_control_socket_refuses_another_uid_even_when_its_file_lets_it_connect() {
    use std::io::{BufRead, Write};
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, as CI has: it connects as another uid"
    );
    let up = Up::new();
    chmod(up.node.dir.path(), 0o711);
    let scratch = up.node.scratch();
    chmod(&scratch, 0o711);
    let link = scratch.join("ctl-link");
    std::fs::hard_link(up.node.home().join("control.sock"), &link).unwrap();
    chmod(&link, 0o666);
    // The operator, through the link: answered.
    let mut s = std::os::unix::net::UnixStream::connect(&link).unwrap();
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":true"), "{answer}");
    // Another uid: connected by the kernel, then closed on by the supervisor, unanswered.
    let target = std::ffi::CString::new(link.to_str().unwrap()).unwrap();
    // SAFETY: the child makes raw system calls only and `_exit`s: no allocation, no lock.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            use nix::libc;
            if libc::setgid(4242) != 0 || libc::setuid(4242) != 0 {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (i, b) in target.as_bytes().iter().enumerate() {
                addr.sun_path[i] = *b as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(2);
            }
            let req = b"{\"op\":\"status\"}\n";
            libc::write(fd, req.as_ptr().cast(), req.len());
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            // Closed without an answer: end of stream, or a reset (its request was unread).
            libc::_exit(if n > 0 { 1 } else { 0 });
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let status = nix::sys::wait::waitpid(child, None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(child, 0),
        "2: could not connect (the file was not reachable), 1: answered"
    );
    std::fs::remove_file(&link).unwrap();
    // Recorded with the next group commit.
    wait_until("the refusal recorded", Duration::from_secs(10), || {
        let audit = up.node.run(&["audit", "--json"]).ok().to_string();
        audit.contains("control.refused") && audit.contains("peer uid 4242")
    });
}

/// Each layer, refused by the kernel the way a container runtime's seccomp profile or an older
/// kernel refuses it (capsule-host run under a filter that fails that layer's system calls):
/// the capsule does not run, the log names the step, the failure is audited, and a capsule that
/// was already running goes on serving. The control: through the same wrapper with nothing
/// refused, the same capsule runs.
#[test]
fn each_layer_the_kernel_refuses_keeps_the_capsule_from_running() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, as CI has: without it the cgroups layer is missing for every case"
    );
    let node = Node::granting();
    let deny_bin = elastos_bin().with_file_name("deny-syscalls");
    assert!(deny_bin.exists(), "{} is not built", deny_bin.display());
    let host = elastos_bin().with_file_name("capsule-host");
    // What the wrapper refuses at the next start: `ERRNO SPEC...`, or nothing.
    let deny = node.scratch().join("deny");
    std::fs::write(&deny, "").unwrap();
    let wrapper = node.scratch().join("capsule-host-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nspec=$(cat {deny})\n[ -z \"$spec\" ] && exec {host} \"$@\"\nexec {bin} $spec -- {host} \"$@\"\n",
            deny = deny.display(),
            host = host.display(),
            bin = deny_bin.display(),
        ),
    )
    .unwrap();
    set_mode(&wrapper, 0o755);
    let out: elastos_e2e::Run = node
        .command()
        .env("ELASTOS_CAPSULE_HOST", &wrapper)
        .arg("up")
        .output()
        .unwrap()
        .into();
    assert!(out.ok().contains("elastos is up"), "{out:#?}");
    let up = Up { node };
    let steady = script_capsule(
        &up.node,
        "steady",
        "echo steady-up\nwhile true; do sleep 1; done",
    );
    up.node.run(&["run", "-d", path(&steady)]).ok();
    wait_until("steady runs", Duration::from_secs(20), || {
        up.node.run(&["logs", "steady"]).ok().contains("steady-up")
    });
    let steady_pid = up.capsule("steady")["pid"].as_u64().unwrap();

    // (layer, errno, the calls refused, what the log must name).
    const CLONE_NEWUSER: &str = "0x10000000";
    let layers: Vec<(&str, &str, Vec<String>, &str)> = vec![
        (
            "cgroups",
            "EACCES",
            vec!["mkdir".into(), "mkdirat".into()],
            "cgroups",
        ),
        (
            "user-namespace",
            "EPERM",
            vec![
                format!("clone@0&{CLONE_NEWUSER}"),
                format!("unshare@0&{CLONE_NEWUSER}"),
            ],
            "user namespace",
        ),
        (
            "private-root",
            "EPERM",
            vec!["pivot_root".into()],
            "private root",
        ),
        (
            "limits",
            "EPERM",
            vec!["prlimit64".into(), "setrlimit".into()],
            "limits",
        ),
        ("identity", "EPERM", vec!["prctl@0=28".into()], "identity"),
        (
            "no-new-privs",
            "EINVAL",
            vec!["prctl@0=38".into()],
            "no_new_privs",
        ),
        (
            "landlock",
            "ENOSYS",
            vec![
                "landlock_create_ruleset".into(),
                "landlock_add_rule".into(),
                "landlock_restrict_self".into(),
            ],
            "landlock",
        ),
        (
            "seccomp",
            "EINVAL",
            vec!["seccomp".into(), "prctl@0=22".into()],
            "seccomp",
        ),
    ];
    for (layer, errno, calls, step) in &layers {
        std::fs::write(&deny, format!("{errno} {}", calls.join(" "))).unwrap();
        let name = format!("no-{layer}");
        let dir = script_capsule(&up.node, &name, "echo it-ran");
        let run = up.node.run(&["run", path(&dir), "--restart", "never"]);
        assert_eq!(run.code, 125, "{layer}: {run:#?}");
        let log = up.node.run(&["logs", &name]).ok().to_string();
        assert!(
            log.contains(&format!("capsule-host failed at {step}")),
            "{layer}: {log}"
        );
        assert!(!log.contains("it-ran"), "{layer}: the capsule ran: {log}");
        let refused = up
            .node
            .run(&["audit", "--json"])
            .ok()
            .lines()
            .filter(|l| {
                l.contains("\"action\":\"capsule.refused\"")
                    && l.contains(&format!("capsule:{name}"))
                    && l.contains(&format!("failed at {step}"))
            })
            .count();
        assert_eq!(refused, 1, "{layer}: the refusal is audited once");
    }
    // The wrapper alone changes nothing: with nothing refused, the same capsule runs.
    std::fs::write(&deny, "").unwrap();
    let dir = script_capsule(&up.node, "control", "echo it-ran");
    up.node.run(&["run", path(&dir), "--restart", "never"]).ok();
    assert!(up.node.run(&["logs", "control"]).ok().contains("it-ran"));
    // And the capsule that was running before went on, the same process.
    assert_eq!(up.capsule("steady")["pid"].as_u64(), Some(steady_pid));
    assert_eq!(up.capsule("steady")["state"], "running");
    up.node.run(&["audit", "verify"]).ok();
}
