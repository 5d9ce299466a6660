//! Calls between real capsules through the supervisor: the first-party `echo` and `ping`
//! (static musl builds from `scripts/build-capsules`), signed with the node's key.

use std::time::Duration;

use elastos_e2e::Node;

use crate::supervisor::{alive, audited_calls, path, wait_until, Up};

fn running(up: &Up, name: &str) -> bool {
    up.ps()
        .iter()
        .any(|c| c["name"] == name && c["state"] == "running")
}

/// Starts echo and waits until it serves (its `serve` is audited as allowed).
fn start_echo(up: &Up) -> std::path::PathBuf {
    let echo = up.node.pack_first_party("echo");
    let out = up.node.run(&["run", "-d", path(&echo)]);
    assert!(out.ok().starts_with("echo bafkrei"), "{out:#?}");
    wait_until("echo serving", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .contains("serving localhost://echo/*")
    });
    echo
}

#[test]
fn ping_calls_echo_through_the_supervisor_and_every_call_is_audited() {
    let up = Up::new();
    start_echo(&up);
    let ping = up.node.pack_first_party("ping");
    let out = up.node.run(&[
        "run",
        path(&ping),
        "--",
        "--count",
        "300",
        "--size",
        "100",
        "--concurrency",
        "4",
    ]);
    let stdout = out.ok();
    assert!(
        stdout.contains("ping: 300 calls of 100 bytes at concurrency 4: p50 ")
            && stdout.contains(", 0 errors"),
        "{out:#?}"
    );

    // ps: both listed, echo's pid is a live process, the calls are counted on both sides.
    let echo = up.capsule("echo");
    assert_eq!(echo["state"], "running");
    assert!(alive(echo["pid"].as_u64().unwrap() as u32));
    assert!(echo["calls"].as_u64().unwrap() >= 300, "{echo}");
    assert_eq!(echo["serves"], serde_json::json!(["localhost://echo/*"]));
    let ping_ps = up.capsule("ping");
    assert_eq!(ping_ps["state"], "exited");
    assert!(ping_ps["calls"].as_u64().unwrap() >= 300, "{ping_ps}");
    assert_ne!(echo["publisher"], "dev", "signed by the node: first-party");

    // A detached ping's report reaches its log.
    up.node
        .run(&[
            "run",
            "-d",
            path(&ping),
            "--name",
            "ping2",
            "--",
            "--count",
            "50",
        ])
        .ok();
    wait_until("ping2's report in its log", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "ping2"])
            .ok()
            .contains("ping: 50 calls of 64 bytes")
    });

    // The audit log: ping's token grant, echo's serve, and each call with its token id.
    wait_until("the call records", Duration::from_secs(10), || {
        audited_calls(&up.node, "ping") >= 300
            && up
                .node
                .run(&["audit", "--json", "--capsule", "ping"])
                .ok()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .any(|r| r["action"] == "token.grant" && r["decision"] == "allowed")
    });
    // Every call accounted for, exactly: the 300 and the one that waited for echo.
    assert_eq!(audited_calls(&up.node, "ping"), 301);
    let echo_records = up
        .node
        .run(&["audit", "--json", "--capsule", "echo"])
        .ok()
        .to_string();
    assert!(
        echo_records.contains("\"action\":\"serve\"")
            && echo_records.contains("localhost://echo/*"),
        "{echo_records}"
    );
    up.node.run(&["audit", "verify"]).ok();
}

#[test]
fn killing_echo_restarts_it_and_pings_calls_meanwhile_fail_cleanly() {
    let up = Up::new();
    start_echo(&up);
    let pid = up.capsule("echo")["pid"].as_u64().unwrap() as u32;
    let ping = up.node.pack_first_party("ping");
    // A long foreground run on another thread; echo is killed while it runs.
    let ping_path = ping.clone();
    let runner = {
        let mut cmd = up.node.command();
        cmd.args([
            "run",
            path(&ping_path),
            "--",
            "--count",
            "40000",
            "--concurrency",
            "8",
        ]);
        std::thread::spawn(move || -> elastos_e2e::Run { cmd.output().unwrap().into() })
    };
    wait_until("ping underway", Duration::from_secs(20), || {
        up.capsule("echo")["calls"].as_u64().unwrap_or(0) >= 500
    });
    up.node.run(&["kill", "echo", "--signal", "KILL"]).ok();
    wait_until("echo restarted", Duration::from_secs(20), || {
        let c = up.capsule("echo");
        c["restarts"] == 1 && c["state"] == "running"
    });
    assert!(!alive(pid), "the killed echo survived");
    // ping ends on its own (its calls failed cleanly, none hung to the 30 s deadline) and
    // counts the failures.
    let out = runner.join().unwrap();
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stdout.contains("ping: 40000 calls of 64 bytes") && !out.stdout.contains(", 0 errors"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("went away") || out.stderr.contains("no capsule serves"),
        "{out:#?}"
    );
    // The restarted echo serves again.
    wait_until("echo serving again", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .matches("serving localhost://echo/*")
            .count()
            >= 2
    });
    let again = up.node.run(&[
        "run",
        path(&ping),
        "--name",
        "ping-after",
        "--",
        "--count",
        "100",
    ]);
    assert!(again.ok().contains(", 0 errors"), "{again:#?}");
}

#[test]
fn a_capsule_claiming_a_served_namespace_is_refused_and_the_first_keeps_serving() {
    let up = Up::new();
    let echo = start_echo(&up);
    // The same package under another name, signed by the node: the namespace is taken.
    up.node
        .run(&[
            "run",
            "-d",
            path(&echo),
            "--name",
            "echo2",
            "--restart",
            "never",
        ])
        .ok();
    wait_until("echo2 refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo2"])
            .ok()
            .contains("already served by `echo`")
    });
    // Nor a namespace inside a served one: every URI has one provider.
    up.node
        .run(&[
            "run",
            "-d",
            path(&echo),
            "--name",
            "echo3",
            "--restart",
            "never",
            "--",
            "--serve",
            "localhost://echo/inner/*",
        ])
        .ok();
    wait_until("echo3 refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo3"])
            .ok()
            .contains("overlaps `localhost://echo/*`")
    });
    // A development package (publisher `dev`) may not provide at all, whatever the policy says.
    let dev = up.node.run(&[
        "run",
        "-d",
        path(&elastos_e2e::first_party_capsule("echo")),
        "--name",
        "echo-dev",
        "--restart",
        "never",
    ]);
    dev.ok();
    wait_until("echo-dev refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo-dev"])
            .ok()
            .contains("only first-party capsules may provide")
    });
    let audit = up.node.run(&["audit", "--json"]).ok().to_string();
    let refusals = audit
        .lines()
        .filter(|l| l.contains("\"action\":\"serve\"") && l.contains("\"decision\":\"denied\""))
        .count();
    assert!(refusals >= 1, "{audit}");
    // The first echo still answers.
    let ping = up.node.pack_first_party("ping");
    let out = up.node.run(&["run", path(&ping), "--", "--count", "20"]);
    assert!(out.ok().contains(", 0 errors"), "{out:#?}");
}

#[test]
fn up_starts_the_default_capsules_named_in_the_configuration() {
    let node = Node::new();
    let echo = node.pack_first_party("echo");
    // After the shell, which `up` starts first.
    node.grant_requests(&[&echo], "");
    let up = Up::with_node(node);
    wait_until("echo started by up", Duration::from_secs(20), || {
        running(&up, "echo")
    });
    // Default capsules restart always, even after a clean exit.
    assert_eq!(up.capsule("echo")["restart"], "always");
}

/// Trusting a DID as a token issuer does not make its packages first party; `--first-party`
/// does, and `trust rm` takes it back for the next start.
#[test]
fn only_a_first_party_publisher_s_package_may_provide() {
    let up = Up::new();
    let other = elastos_e2e::Node::new();
    let theirs = other.pack_first_party("echo");
    let start = |name: &str| {
        up.node.run(&[
            "run",
            "-d",
            path(&theirs),
            "--name",
            name,
            "--restart",
            "never",
        ])
    };
    let refused = |name: &str| {
        wait_until(&format!("{name} refused"), Duration::from_secs(20), || {
            up.node
                .run(&["logs", name])
                .ok()
                .contains("only first-party capsules may provide")
        })
    };
    // An issuer only: its echo is not first party here.
    up.node.run(&["trust", "add", &other.did()]).ok();
    start("echo-issuer");
    refused("echo-issuer");
    // A known publisher: it runs, and still may not provide.
    up.node
        .run(&["trust", "add", &other.did(), "--publisher"])
        .ok();
    start("echo-known");
    refused("echo-known");
    // First party: it serves.
    up.node
        .run(&["trust", "add", &other.did(), "--first-party"])
        .ok();
    start("echo").ok();
    wait_until("their echo serving", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .contains("serving localhost://echo/*")
    });
    let audit = up.node.run(&["audit", "--json"]).ok().to_string();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"action\":\"trust.add\"") && l.contains("publisher first party")),
        "{audit}"
    );
    // Forgotten: the next start of its package is not first party again.
    up.node.run(&["trust", "rm", &other.did()]).ok();
    assert!(up
        .node
        .run(&["trust", "ls"])
        .ok()
        .contains("nothing trusted"));
    up.node.run(&["stop", "echo"]).ok();
    start("echo-again");
    refused("echo-again");
}
