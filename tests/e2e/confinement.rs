//! Confinement, end to end: the hostile probe (`tests/src/bin/probe.rs`) run as a capsule, one
//! attempt per run, against the same probe run directly (the control run), which shows every
//! attempt would otherwise reach the kernel. So far: the seccomp policy, `no_new_privs` and the
//! limits; the attempts the next layers stop (host files, other processes, the network as a
//! whole) join as those layers land.

use std::path::PathBuf;
use std::time::Duration;

use elastos_e2e::{elastos_bin, set_mode, Node};

use crate::supervisor::{path, script_capsule, wait_until, Up};

/// Calls the seccomp filter forbids outright: the process dies of SIGSYS.
const KILLED: &[&str] = &[
    "ptrace",
    "bpf",
    "keyctl",
    "userfaultfd",
    "io_uring",
    "unshare",
    "mount",
    "chroot",
];
/// Calls refused with an error, and limits in force.
const BLOCKED: &[&str] = &[
    "inet_socket",
    "netlink_socket",
    "clone_newuser",
    "core_dump",
    "new_privs",
];

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
        "format = 1\nname = \"probe\"\nversion = \"0.1.0\"\ndescription = \"hostile probe\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/probe\"\n",
    )
    .unwrap();
    std::fs::copy(probe_bin(), dir.join("bin/probe")).unwrap();
    set_mode(&dir.join("bin/probe"), 0o755);
    dir
}

#[test]
fn the_control_run_reaches_every_target() {
    for attempt in KILLED.iter().chain(BLOCKED) {
        let mut cmd = std::process::Command::new(probe_bin());
        cmd.arg(attempt);
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let unlimited = nix::libc::rlimit {
                    rlim_cur: nix::libc::RLIM_INFINITY,
                    rlim_max: nix::libc::RLIM_INFINITY,
                };
                if nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &unlimited) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("running the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("reached:"),
            "the control run of `{attempt}` did not reach its target, so the confined run proves nothing: {out:?}"
        );
    }
}

#[test]
fn a_capsule_cannot_make_the_calls_its_seccomp_policy_forbids() {
    let up = Up::new();
    let dir = probe_capsule(&up.node);
    for attempt in KILLED {
        let name = format!("probe-{}", attempt.replace('_', "-"));
        let out = up
            .node
            .run(&["run", path(&dir), "--name", &name, "--", attempt]);
        // 128 + SIGSYS (31): killed by the filter before the call ran.
        assert_eq!(out.code, 159, "`{attempt}` was not killed: {out:#?}");
        assert!(!out.stdout.contains("reached"), "{out:#?}");
        let log = up.node.run(&["logs", &name]).ok().to_string();
        assert!(log.contains("killed by its seccomp filter"), "{log}");
    }
    for attempt in BLOCKED {
        let name = format!("probe-{}", attempt.replace('_', "-"));
        let out = up
            .node
            .run(&["run", path(&dir), "--name", &name, "--", attempt]);
        assert!(
            out.ok().starts_with("blocked:"),
            "`{attempt}` was not blocked: {out:#?}"
        );
    }
    // Each kill is in the audit log, against the capsule.
    let audit = up.node.run(&["audit", "--json"]).ok().to_string();
    let kills = audit
        .lines()
        .filter(|l| l.contains("\"action\":\"capsule.seccomp\""))
        .count();
    assert_eq!(kills, KILLED.len(), "{audit}");
}

#[test]
fn ps_shows_the_layers_in_force() {
    let up = Up::new();
    let dir = script_capsule(&up.node, "idle", "while true; do sleep 1; done");
    up.node.run(&["run", "-d", path(&dir)]).ok();
    wait_until("idle running", Duration::from_secs(10), || {
        up.capsule("idle")["state"] == "running"
    });
    let layers = up.capsule("idle")["layers"].clone();
    let layers: Vec<&str> = layers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    for want in ["no-new-privs", "seccomp"] {
        assert!(layers.contains(&want), "{want} missing: {layers:?}");
    }
    assert!(
        layers
            .iter()
            .any(|l| l.starts_with("rlimits(") && l.contains("nofile")),
        "{layers:?}"
    );
    let text = up.node.run(&["ps"]).ok().to_string();
    assert!(text.contains("idle"), "{text}");
}

#[test]
fn a_layer_that_cannot_be_applied_keeps_the_capsule_from_running() {
    let up = Up::new();
    let marker = up.node.scratch().join("it-ran");
    let dir = script_capsule(
        &up.node,
        "overreach",
        &format!("touch {}", marker.display()),
    );
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
    assert!(!marker.exists(), "the capsule ran without its limits");
}
