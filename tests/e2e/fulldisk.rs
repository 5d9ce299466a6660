//! A full disk, as an unlucky operator meets it: `$ELASTOS_HOME` on a small ext4 file system
//! (`mkfs.ext4 -m 0`, loop-mounted) filled until writes themselves fail. Nothing that widens
//! authority may happen without its durable record; what narrows it always takes effect, and is
//! recorded from the audit log's reserve; the log says the disk is full and still verifies.
//!
//! Needs root (to mount the image), as CI has: without it these tests fail, loudly.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use elastos_e2e::Node;

use crate::livepath::{echo_calls, start_echo, token_for, ungranted_ping};
use crate::supervisor::{path, wait_until, Up};

/// A small ext4 file system mounted at a node's home; unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn at_home_of(node: &Node, mib: u64) -> SmallDisk {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the full-disk tests mount a loop image and need root; run the suite as root (CI does)"
        );
        let image = node.dir.path().join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        let mount = node.home();
        std::fs::create_dir_all(&mount).unwrap();
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(&mount));
        elastos_e2e::set_mode(&mount, 0o700);
        SmallDisk { mount }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes until the writes themselves fail: big chunks, then small ones (a file's last
    /// block still takes small appends after a big write hits ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0x5a; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
        // Once more after the sync: nothing more fits.
        assert!(f.write_all(&[0; 4096]).and_then(|_| f.sync_all()).is_err());
    }

    /// Removes the filler, and commits the removal: ext4 can reuse freed blocks only once the
    /// journal has committed it (every 5 s, later on a busy machine), and until then an
    /// allocation still fails for want of space.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
        let dir = std::fs::File::open(&self.mount).unwrap();
        nix::unistd::syncfs(&dir).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

fn actions(node: &Node) -> Vec<String> {
    node.run(&["audit", "--json"])
        .ok()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn count(actions: &[String], a: &str) -> usize {
    actions.iter().filter(|x| *x == a).count()
}

/// `token issue` with the usual notes token.
fn issue_args() -> Vec<&'static str> {
    [&["token", "issue"][..], elastos_e2e::NOTES_READ].concat()
}

fn check(node: &Node, token: &str) -> String {
    node.check(token, "notes", "localhost://storage/notes/a", "read")
        .stdout
}

fn delegatable(node: &Node) -> String {
    let mut args = elastos_e2e::NOTES_READ.to_vec();
    args.push("--delegatable");
    node.issue(&args)
}

/// No supervisor: each command opens the log itself.
#[test]
fn on_a_full_disk_the_cli_refuses_grants_and_revocations_still_take_effect_and_are_recorded() {
    let node = Node::new();
    let disk = SmallDisk::at_home_of(&node, 40);
    let stolen = delegatable(&node);
    let other = Node::new().did();
    assert_eq!(check(&node, &stolen).trim(), "allowed");
    disk.fill();

    let issued = node.run(&issue_args());
    assert_ne!(issued.code, 0, "{issued:#?}");
    assert!(
        issued.stdout.trim().is_empty(),
        "a token was printed: {issued:#?}"
    );
    assert!(issued.stderr.contains("not issued"), "{issued:#?}");

    let child = node.run(&["token", "delegate", &stolen, "--ttl", "10m"]);
    assert_ne!(child.code, 0, "{child:#?}");
    assert!(child.stdout.trim().is_empty(), "{child:#?}");

    let trusted = node.run(&["trust", "add", &other]);
    assert_ne!(trusted.code, 0, "{trusted:#?}");
    assert!(!node.run(&["trust", "ls"]).ok().contains(&other));

    // Narrowing takes effect and is recorded, disk full or not.
    let revoked = node.run(&["revoke", "--all"]);
    assert_eq!(revoked.code, 0, "{revoked:#?}");
    assert!(
        !revoked.stderr.contains("warning"),
        "the revocation was not recorded: {revoked:#?}"
    );
    assert!(check(&node, &stolen).starts_with("denied: epoch"));

    let acts = actions(&node);
    assert_eq!(count(&acts, "token.issue"), 1, "{acts:?}");
    assert_eq!(count(&acts, "token.delegate"), 0, "{acts:?}");
    assert_eq!(count(&acts, "trust.add"), 0, "{acts:?}");
    assert_eq!(count(&acts, "token.revoke-all"), 1, "{acts:?}");
    assert!(count(&acts, "audit.disk-full") >= 1, "{acts:?}");
    node.run(&["audit", "verify"]).ok();

    // With space again, grants are made again.
    disk.free();
    node.run(&issue_args()).ok();
}

/// With a supervisor: it learns that the disk is full at the first grant, says so in `status`,
/// and takes grants again once space is freed.
#[test]
fn on_a_full_disk_the_supervisor_refuses_grants_says_so_and_recovers_when_space_returns() {
    let node = Node::new();
    let disk = SmallDisk::at_home_of(&node, 40);
    let up = Up::with_node(node);
    let node = &up.node;
    let stolen = delegatable(node);
    let status = || node.run(&["status", "--json"]).json()["audit"].clone();
    assert_eq!(status()["disk_full"], false, "{}", status());
    assert!(status()["reserve_bytes"].as_u64().unwrap() >= 4 << 20);
    disk.fill();

    let issued = node.run(&issue_args());
    assert_ne!(issued.code, 0, "{issued:#?}");
    assert!(issued.stdout.trim().is_empty(), "{issued:#?}");
    assert!(issued.stderr.contains("refused"), "{issued:#?}");
    let s = status();
    assert_eq!(s["disk_full"], true, "{s}");
    assert_eq!(s["available"], false, "{s}");
    assert!(node.run(&["status"]).ok().contains("DISK FULL"));

    let child = node.run(&["token", "delegate", &stolen, "--ttl", "10m"]);
    assert_ne!(child.code, 0, "{child:#?}");
    let trusted = node.run(&["trust", "add", &Node::new().did()]);
    assert_ne!(trusted.code, 0, "{trusted:#?}");

    let revoked = node.run(&["revoke", "--all"]);
    assert_eq!(revoked.code, 0, "{revoked:#?}");
    assert!(!revoked.stderr.contains("warning"), "{revoked:#?}");
    assert!(check(node, &stolen).starts_with("denied: epoch"));

    disk.free();
    wait_until(
        "the supervisor to see space again",
        Duration::from_secs(10),
        || status()["disk_full"] == false,
    );
    node.run(&issue_args()).ok();

    node.run(&["down"]).ok();
    let acts = actions(node);
    assert_eq!(count(&acts, "token.issue"), 2, "{acts:?}");
    assert_eq!(count(&acts, "token.delegate"), 0, "{acts:?}");
    assert_eq!(count(&acts, "trust.add"), 0, "{acts:?}");
    assert_eq!(count(&acts, "token.revoke-all"), 1, "{acts:?}");
    assert_eq!(count(&acts, "audit.disk-full"), 1, "{acts:?}");
    assert_eq!(count(&acts, "audit.disk-ok"), 1, "{acts:?}");
    node.run(&["audit", "verify"]).ok();
    drop(up);
    drop(disk);
}

/// Calls that pass their checks are refused while the audit log cannot take their records, and
/// none reaches the provider; they go through again once space is back.
#[test]
fn on_a_full_disk_allowed_calls_are_refused_and_nothing_is_forwarded() {
    let node = Node::new();
    let disk = SmallDisk::at_home_of(&node, 40);
    let up = Up::with_node(node);
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo);
    let pinger = ungranted_ping(&up.node);
    let (tok, _) = token_for(&up.node, "p-full", &[]);
    up.node
        .run(&[
            "run",
            "-d",
            path(&pinger),
            "--name",
            "p-full",
            "--",
            "--count",
            "100000000",
            "--token",
            &tok,
        ])
        .ok();
    let calls = |name: &str| up.capsule(name)["calls"].as_u64().unwrap_or(0);
    wait_until("calls flowing", Duration::from_secs(20), || {
        echo_calls(&up) > 100
    });
    disk.fill();
    let full = || up.node.run(&["status", "--json"]).json()["audit"]["disk_full"] == true;
    wait_until(
        "the supervisor to see the disk full",
        Duration::from_secs(10),
        full,
    );
    let (served, made) = (echo_calls(&up), calls("p-full"));
    wait_until("more calls made", Duration::from_secs(20), || {
        calls("p-full") > made + 1000
    });
    assert_eq!(
        echo_calls(&up),
        served,
        "a call reached echo while nothing could be audited"
    );
    assert!(up
        .node
        .run(&["logs", "p-full"])
        .ok()
        .contains("audit unavailable"));
    disk.free();
    wait_until("space again", Duration::from_secs(30), || !full());
    wait_until("calls served again", Duration::from_secs(20), || {
        echo_calls(&up) > served + 100
    });
    up.node.run(&["down"]).ok();
    up.node.run(&["audit", "verify"]).ok();
    drop(up);
    drop(disk);
}

/// With the shell deciding, a grant a capsule's start needs (`host://libs` here) takes effect
/// only once its record is durable: on a full disk the capsule is not started, and says why;
/// with space back it starts.
#[test]
fn on_a_full_disk_a_start_that_needs_a_grant_does_not_happen() {
    let node = Node::new();
    let disk = SmallDisk::at_home_of(&node, 40);
    let shell = node.pack_first_party("shell");
    std::fs::write(
        node.home().join("config.toml"),
        format!(
            "format = 1\n[supervisor]\ndefault_capsules = [\"{}\"]\n[policy]\ndecider = \"shell\"\n",
            shell.display()
        ),
    )
    .unwrap();
    let up = Up::with_node(node);
    let node = &up.node;
    wait_until("the shell deciding", Duration::from_secs(20), || {
        node.run(&["status"])
            .ok()
            .contains("policy: shell (running)")
    });
    // First party (packed by the node): the shipped policy allows what its manifest asks.
    let dir = crate::supervisor::script_capsule(node, "sleeper", "while true; do sleep 1; done");
    let pkg = node.scratch().join("sleeper.capsule");
    node.run(&["capsule", "pack", path(&dir), "-o", path(&pkg)])
        .ok();
    node.run(&["run", "-d", path(&pkg)]).ok();
    let state = || {
        up.capsule("sleeper")["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    wait_until("sleeper running", Duration::from_secs(20), || {
        state() == "running"
    });
    node.run(&["stop", "sleeper"]).ok();
    let granted = || {
        node.run(&["audit", "--json"])
            .ok()
            .lines()
            .filter(|l| l.contains("\"action\":\"host.grant\"") && l.contains("sleeper"))
            .count()
    };
    assert_eq!(granted(), 1);

    disk.fill();
    node.run(&["start", "sleeper"]);
    wait_until("sleeper refused", Duration::from_secs(20), || {
        state() == "failed"
    });
    // Its log says why (the audit log could not take even that).
    let logs = node.run(&["logs", "sleeper"]).ok().to_string();
    assert!(
        logs.contains(
            "not started: read host://libs was allowed, but the audit log cannot record it"
        ),
        "{logs}"
    );
    assert_eq!(granted(), 1);

    disk.free();
    wait_until(
        "the supervisor to see space again",
        Duration::from_secs(10),
        || node.run(&["status", "--json"]).json()["audit"]["disk_full"] == false,
    );
    node.run(&["start", "sleeper"]).ok();
    wait_until("sleeper running again", Duration::from_secs(20), || {
        state() == "running"
    });
    assert_eq!(granted(), 2);
    node.run(&["audit", "verify"]).ok();
    drop(up);
    drop(disk);
}
