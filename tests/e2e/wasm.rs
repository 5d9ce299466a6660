//! WASM capsules through the real supervisor: the first-party `echo` and `ping` built for
//! wasm32-wasip1 from the same source as their native builds (`scripts/build-capsules`), mixed
//! with native ones; limits; the package and the compilation cache refusing altered bytes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elastos_e2e::Node;

use crate::confinement::{child_of, status_field};
use crate::supervisor::{alive, audited_calls, path, wait_until, Up};

fn fixture(name: &str) -> PathBuf {
    // Cargo's value when it runs the test, not the one compiled in: a target directory shared
    // between clones reuses this binary unchanged when built in a clone since deleted.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("fixtures/wasm")
        .join(name)
}

/// Starts echo (detached) on `substrate` under `name` and waits until it serves.
fn start_echo(up: &Up, echo: &Path, name: &str, substrate: &str) {
    serves_once_more(up, name, || {
        up.node
            .run(&[
                "run",
                "-d",
                path(echo),
                "--name",
                name,
                "--substrate",
                substrate,
            ])
            .ok();
    });
}

/// Runs `start` and waits until echo `name` says it serves once more than before (its log
/// outlives restarts of the capsule and of the supervisor).
fn serves_once_more(up: &Up, name: &str, start: impl FnOnce()) {
    let before = log_count(up, name, "serving localhost://echo/*");
    start();
    wait_until(&format!("{name} serving"), Duration::from_secs(60), || {
        log_count(up, name, "serving localhost://echo/*") > before
    });
}

/// Runs ping attached on `substrate` under `name`; asserts every call was answered.
fn ping(up: &Up, ping: &Path, name: &str, substrate: &str) {
    let out = up.node.run(&[
        "run",
        path(ping),
        "--name",
        name,
        "--substrate",
        substrate,
        "--",
        "--count",
        "200",
        "--concurrency",
        "4",
    ]);
    assert!(
        out.ok().contains("ping: 200 calls of 64 bytes") && out.ok().contains(", 0 errors"),
        "{name} on {substrate}: {out:#?}"
    );
}

/// The supervisor's own records about capsule `name` (its actor is `supervisor`, the capsule is
/// the resource).
fn supervisor_records(node: &Node, name: &str, action: &str) -> Vec<serde_json::Value> {
    node.run(&["audit", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| {
            r["action"] == action
                && r["resource"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("capsule:{name}@")))
        })
        .collect()
}

#[test]
fn wasm_and_native_capsules_call_each_other_through_the_supervisor_all_audited() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    let pinger = up.node.pack_first_party("ping");

    // native ping → wasm echo, wasm ping → wasm echo.
    start_echo(&up, &echo, "echo-wasm", "wasm");
    assert_eq!(up.capsule("echo-wasm")["substrate"], "wasm");
    ping(&up, &pinger, "ping-native", "native");
    ping(&up, &pinger, "ping-wasm", "wasm");
    assert_eq!(up.capsule("ping-wasm")["substrate"], "wasm");
    assert_eq!(up.capsule("ping-native")["substrate"], "native");
    let text = up.node.run(&["ps"]).ok().to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("echo-wasm") && l.contains(" wasm ")),
        "{text}"
    );

    // wasm ping → native echo.
    up.node.run(&["stop", "echo-wasm"]).ok();
    start_echo(&up, &echo, "echo-native", "native");
    assert_eq!(up.capsule("echo-native")["substrate"], "native");
    ping(&up, &pinger, "ping-wasm2", "wasm");

    // Every call of both substrates went through the token checks and the audit log.
    wait_until("the call records", Duration::from_secs(10), || {
        ["ping-native", "ping-wasm", "ping-wasm2"]
            .iter()
            .all(|c| audited_calls(&up.node, c) >= 200)
    });
    up.node.run(&["audit", "verify"]).ok();

    // A substrate the manifest has no entrypoint for is a usage error.
    let bad = up
        .node
        .run(&["run", path(&pinger), "--substrate", "microvm"]);
    assert_eq!(bad.code, 2, "{bad:#?}");
}

/// A WASM capsule directory whose module is the WAT fixture `wat`, with `[limits]` `limits`.
fn wat_capsule(node: &Node, name: &str, wat: &str, limits: &str) -> PathBuf {
    let dir = node.scratch().join(format!("wasm-{name}"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        format!("format = 1\nname = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"test\"\nsubstrate = \"wasm\"\n[entrypoint]\nwasm = \"bin/{wat}\"\n[limits]\n{limits}\n"),
    )
    .unwrap();
    std::fs::copy(fixture(wat), dir.join("bin").join(wat)).unwrap();
    dir
}

#[test]
fn a_memory_hog_and_a_spinning_guest_are_stopped_by_their_limits_while_echo_serves() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo, "echo", "wasm");
    let hog = wat_capsule(&up.node, "hog", "hog.wat", "memory = 16777216");
    let spin = wat_capsule(&up.node, "spin", "spin.wat", "call_budget_ms = 200");
    for (dir, name) in [(&hog, "hog"), (&spin, "spin")] {
        // Stopped before any hello: `run -d` says it did not start.
        let out = up.node.run(&["run", "-d", path(dir), "--restart", "never"]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("did not start"), "{out:#?}");
        wait_until(&format!("{name} stopped"), Duration::from_secs(60), || {
            up.capsule(name)["state"] == "exited"
        });
    }

    let hog_ps = up.capsule("hog");
    assert_eq!(hog_ps["stopped_by"], "memory", "{hog_ps}");
    assert_eq!(hog_ps["exit_code"], 122);
    let log = up.node.run(&["logs", "hog"]).ok().to_string();
    assert!(
        log.contains("over its limit of memory") && log.contains("16777216"),
        "{log}"
    );
    let spin_ps = up.capsule("spin");
    assert_eq!(spin_ps["stopped_by"], "call_budget_ms", "{spin_ps}");
    assert_eq!(spin_ps["exit_code"], 121);
    let log = up.node.run(&["logs", "spin"]).ok().to_string();
    assert!(log.contains("call_budget_ms = 200"), "{log}");
    let text = up.node.run(&["ps"]).ok().to_string();
    assert!(
        text.contains("hog: its last run was stopped by its limit `memory`"),
        "{text}"
    );
    for (name, limit) in [("hog", "memory"), ("spin", "call_budget_ms")] {
        let records = supervisor_records(&up.node, name, "capsule.limit");
        assert_eq!(records.len(), 1, "{name}: {records:?}");
        assert_eq!(records[0]["decision"], "denied");
        assert!(
            records[0]["reason"].as_str().unwrap().contains(limit),
            "{records:?}"
        );
    }

    // Meanwhile echo kept serving.
    assert_eq!(up.capsule("echo")["state"], "running");
    let pinger = up.node.pack_first_party("ping");
    ping(&up, &pinger, "ping", "native");
}

#[test]
fn a_tampered_module_inside_a_package_is_refused() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    let mut bytes = std::fs::read(&echo).unwrap();
    let header = b"\0asm\x01\0\0\0";
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .expect("the package holds a wasm module");
    bytes[at + 64] ^= 0x20;
    let tampered = up.node.scratch().join("tampered.capsule");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = up
        .node
        .run(&["run", "-d", path(&tampered), "--substrate", "wasm"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("bin/echo.wasm"), "{out:#?}");
    let audit = up.node.run(&["audit", "--json"]).ok().to_string();
    assert!(audit.contains("\"action\":\"package.refused\""), "{audit}");
    assert!(!up.node.run(&["ps"]).ok().contains("echo"));
}

/// The smallest limits a manifest can give (`processes = 1`, `open_files = 5`: stdio, the socket
/// and one more) still let echo start, print and serve, on both substrates. The WASM host's own
/// threads and descriptors count on top of the guest's, and WASI's runtime starts one worker, not
/// one per CPU (it panicked at the guest's first output when `processes` left no room); the
/// identity step no longer opens a file once the descriptor limit is in force (a native capsule
/// with `open_files = 8` failed to start).
#[test]
fn the_smallest_limits_still_let_echo_start_print_and_serve_on_both_substrates() {
    let up = Up::new();
    let source = elastos_e2e::first_party_capsule("echo");
    let dir = up.node.scratch().join("tight-echo");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for f in ["bin/echo", "bin/echo.wasm"] {
        std::fs::copy(source.join(f), dir.join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(source.join("capsule.toml")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        format!("{manifest}\n[limits]\nprocesses = 1\nopen_files = 5\n"),
    )
    .unwrap();
    // `scratch` hands the tree written above to the node's user, when it has one.
    let packed = up.node.scratch().join("tight-echo.capsule");
    up.node
        .run(&["capsule", "pack", path(&dir), "-o", path(&packed)])
        .ok();
    let pinger = up.node.pack_first_party("ping");
    for substrate in ["native", "wasm"] {
        let name = format!("tight-{substrate}");
        // Waits for its "serving" line: it printed.
        start_echo(&up, &packed, &name, substrate);
        ping(&up, &pinger, &format!("ping-{substrate}"), "native");
        if substrate == "wasm" {
            let host = up.capsule(&name)["pid"].as_u64().unwrap().to_string();
            let guest = child_of(&host);
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{guest}/task"))
                .unwrap()
                .flatten()
                .filter_map(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .ok()
                        .map(|c| c.trim().to_string())
                })
                .collect();
            // The guest's own, the epoch ticker, one WASI worker.
            assert!(threads.len() <= 3, "{threads:?}");
        }
        let log = up.node.run(&["logs", &name]).ok().to_string();
        assert!(!log.contains("panicked"), "{log}");
        up.node.run(&["stop", &name]).ok();
    }
}

/// Starts echo on the WASM substrate; the pid of the process that runs the guest: capsule-host's
/// child, PID 1 of the capsule's namespaces (a WASM guest starts no process, so no init sits
/// between them).
fn wasm_echo_process(up: &Up) -> String {
    let echo = up.node.pack_first_party("echo");
    start_echo(up, &echo, "echo", "wasm");
    let host = up.capsule("echo")["pid"].as_u64().unwrap().to_string();
    child_of(&host)
}

/// A WASM host is PID 1 of its capsule's namespaces, where the kernel drops a signal that has no
/// handler: `stop`'s SIGTERM must still end it at once, not at the 10 s deadline's kill.
#[test]
fn a_wasm_host_is_pid_1_of_its_namespace_and_stops_on_sigterm() {
    let up = Up::new();
    let guest = wasm_echo_process(&up);
    assert_eq!(
        status_field(&guest, "NSpid:").last().map(String::as_str),
        Some("1"),
        "the guest's process in its PID namespace"
    );
    up.node.run(&["stop", "echo"]).ok();
    // The deadline's kill says so in the log; the SIGTERM ended it before.
    let log = up.node.run(&["logs", "echo"]).ok().to_string();
    assert!(!log.contains("did not stop in time"), "{log}");
    assert!(!std::path::Path::new(&format!("/proc/{guest}")).exists());
}

/// A WASM host is not watched over by an init: when a `kill -9` of the supervisor takes
/// capsule-host down, the host's own parent-death signal must end it. The guest sleeps in WASI
/// and never reads its socket, so nothing else would; nor would anyone clean its cgroup before
/// the next `up`.
#[test]
fn a_wasm_host_dies_with_its_capsule_host() {
    let up = Up::new();
    let sleeper = wat_capsule(&up.node, "sleeper", "sleep.wat", "");
    up.node
        .run(&["run", "-d", path(&sleeper), "--restart", "never"])
        .ok();
    wait_until("the sleeper's WASM host", Duration::from_secs(30), || {
        up.capsule("sleeper")["pid"].as_u64().is_some_and(|host| {
            std::fs::read_to_string(format!("/proc/{host}/task/{host}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        })
    });
    let host = up.capsule("sleeper")["pid"].as_u64().unwrap().to_string();
    let guest: u32 = child_of(&host).parse().unwrap();
    assert!(alive(guest), "the sleeper's WASM host is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.supervisor_pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the WASM host is gone", Duration::from_secs(5), || {
        !alive(guest)
    });
}

#[test]
fn an_idle_wasm_capsule_wakes_for_no_epoch_ticks() {
    let up = Up::new();
    let guest = wasm_echo_process(&up);
    let epoch = std::fs::read_dir(format!("/proc/{guest}/task"))
        .unwrap()
        .flatten()
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{guest}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == "elastos-epoch")
        })
        .expect("the guest's process has an elastos-epoch thread");
    let wakeups = || -> u64 {
        status_field(&format!("{guest}/task/{epoch}"), "voluntary_ctxt_switches:")[0]
            .parse()
            .unwrap()
    };
    // Echo waits for a call: a second of that is a hundred ticks of 10 ms were it ticking.
    let before = wakeups();
    std::thread::sleep(Duration::from_secs(1));
    let idle = wakeups() - before;
    assert!(
        idle <= 3,
        "{idle} wakeups of the epoch ticker in an idle second"
    );
    // And it still serves.
    let pinger = up.node.pack_first_party("ping");
    ping(&up, &pinger, "ping", "native");
}

/// The process that runs a guest holds nothing capsule-host had open (pipes to the supervisor,
/// cgroup and package directories): no exec closed them, so the WASM host did, before the guest
/// ran. What remains is its stdio, its socket, its module and wasmtime's own.
#[test]
fn a_wasm_capsule_holds_no_descriptor_it_inherited() {
    let up = Up::new();
    let guest = wasm_echo_process(&up);
    let mut held = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{guest}/fd"))
        .unwrap()
        .flatten()
    {
        let fd: u32 = e.file_name().to_string_lossy().parse().unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let expected = match fd {
            0 => target == "/dev/null",
            // Its output, to the capsule's log.
            1 | 2 => target.starts_with("pipe:"),
            5 => target.starts_with("/memfd:elastos-module"),
            // The capsule socket (3 and its reading copy), WASI's own runtime.
            _ => {
                target.starts_with("socket:")
                    || target == "anon_inode:[eventpoll]"
                    || target == "anon_inode:[eventfd]"
            }
        };
        held.push(format!("{fd} -> {target}"));
        assert!(
            expected,
            "fd {fd} -> {target} in the guest's process: {held:?}"
        );
    }
    assert!(
        held.iter().any(|h| h.starts_with("3 -> socket:")),
        "{held:?}"
    );
}

/// How many lines of `name`'s log contain `pattern` (the log outlives supervisor restarts;
/// before the capsule's first start there is none).
fn log_count(up: &Up, name: &str, pattern: &str) -> usize {
    let out = up.node.run(&["logs", name]);
    if out.code != 0 {
        return 0;
    }
    out.stdout.matches(pattern).count()
}

/// How many times echo's module was compiled, by its log.
fn compiles(up: &Up) -> usize {
    up.node
        .run(&["logs", "echo"])
        .ok()
        .lines()
        .filter(|l| l.contains("module ") && l.ends_with(" compiled"))
        .count()
}

/// A supervisor restart: what it verified before is forgotten, the cache on disk is not.
fn restart(up: &Up) {
    up.node.run(&["down", "--timeout", "5s"]).ok();
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
}

#[test]
fn a_tampered_cache_entry_is_rejected_audited_and_compiled_again() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo, "echo", "wasm");
    assert_eq!(compiles(&up), 1);
    let cache = up.node.home().join("cache/wasm");
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    // A second start of the same supervisor reopens the sealed module it verified.
    up.node.run(&["stop", "echo"]).ok();
    serves_once_more(&up, "echo", || {
        up.node.run(&["start", "echo"]).ok();
    });
    assert_eq!(log_count(&up, "echo", "from memory"), 1);
    up.node.run(&["stop", "echo"]).ok();

    // One flipped byte of the artifact (past the 32-byte tag), found by the next supervisor.
    let mut bytes = std::fs::read(entry).unwrap();
    let good_len = bytes.len();
    bytes[good_len / 2] ^= 1;
    std::fs::write(entry, &bytes).unwrap();
    restart(&up);
    start_echo(&up, &echo, "echo", "wasm");
    let log = up.node.run(&["logs", "echo"]).ok().to_string();
    assert!(
        log.contains("rejected cache entry") && log.contains("MAC does not verify"),
        "{log}"
    );
    assert_eq!(compiles(&up), 2, "{log}");
    let rejected = supervisor_records(&up.node, "echo", "wasm.cache.rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["decision"], "denied");
    // The entry was written again, whole, and serves the next supervisor's start.
    assert_ne!(std::fs::read(entry).unwrap(), bytes);
    up.node.run(&["stop", "echo"]).ok();
    restart(&up);
    start_echo(&up, &echo, "echo", "wasm");
    assert_eq!(log_count(&up, "echo", "from the cache"), 1);
    let pinger = up.node.pack_first_party("ping");
    ping(&up, &pinger, "ping", "native");
}

/// A running WASM host is under its policy's filters and one more, `NO_NEW_EXEC`, which it adds
/// once its module is loaded (no memory may become executable after that).
#[test]
fn a_running_wasm_host_has_added_its_no_new_exec_filter() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo, "echo", "wasm");
    let host = up.capsule("echo")["pid"].as_u64().unwrap().to_string();
    // The WASM host is PID 1 of the capsule's namespaces: capsule-host's child.
    let wasm_host = crate::confinement::child_of(&host);
    let filters = std::fs::read_to_string(format!("/proc/{wasm_host}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Seccomp_filters:")
                .map(|v| v.trim().to_string())
        })
        .expect("Seccomp_filters in /proc/PID/status");
    let capsule_host = elastos_e2e::elastos_bin().with_file_name("capsule-host");
    let out = std::process::Command::new(capsule_host)
        .arg("wasm-filters")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(filters, want, "the WASM host's filters");
}
