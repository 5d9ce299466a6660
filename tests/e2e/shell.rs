//! The shell capsule deciding token requests (`[policy] decider = "shell"`): the node's policy
//! out of the trusted base, the supervisor's ceilings kept whatever it says, and no grant while
//! no shell runs.

use std::path::Path;
use std::time::Duration;

use elastos_e2e::{first_party_capsule, Node, Run};

use crate::supervisor::{path, wait_until, Up};

/// A node whose shell decides, the shell (signed by the node) among its default capsules, each
/// request waiting at most `shell_wait` for it. `policy`: the node's own policy file, if any.
fn shell_node(policy: Option<&str>, with_shell: bool) -> Up {
    let node = Node::new();
    let shell = node.pack_first_party("shell");
    std::fs::create_dir_all(node.home()).unwrap();
    elastos_e2e::set_mode(&node.home(), 0o700);
    let defaults = if with_shell {
        format!("\"{}\"", shell.display())
    } else {
        String::new()
    };
    std::fs::write(
        node.home().join("config.toml"),
        format!(
            "format = 1\n[supervisor]\ndefault_capsules = [{defaults}]\n[policy]\ndecider = \"shell\"\nshell_wait = \"2s\"\n"
        ),
    )
    .unwrap();
    if let Some(text) = policy {
        std::fs::create_dir_all(node.home().join("policies")).unwrap();
        std::fs::write(node.home().join("policies/default.toml"), text).unwrap();
    }
    let up = Up::with_node(node);
    if with_shell {
        wait_until("the shell took the policy", Duration::from_secs(20), || {
            audit_has(&up.node, "policy.load", "the shell took the node's policy")
        });
    }
    up
}

fn audit_has(node: &Node, action: &str, text: &str) -> bool {
    node.run(&["audit", "--json"])
        .ok()
        .lines()
        .any(|l| l.contains(&format!("\"action\":\"{action}\"")) && l.contains(text))
}

fn start_echo(up: &Up) {
    let echo = up.node.pack_first_party("echo");
    up.node.run(&["run", "-d", path(&echo)]).ok();
    wait_until("echo serving", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .contains("serving localhost://echo/*")
    });
}

fn ping(up: &Up, pkg: &Path, name: &str) -> Run {
    up.node.run(&[
        "run",
        path(pkg),
        "--name",
        name,
        "--restart",
        "never",
        "--",
        "--count",
        "20",
    ])
}

#[test]
fn the_shell_decides_with_the_shipped_policy() {
    let up = shell_node(None, true);
    assert!(up
        .node
        .run(&["status"])
        .ok()
        .contains("policy: shell (running)"));
    start_echo(&up);
    // First party: what its manifest requests, granted by the shell.
    let ours = up.node.pack_first_party("ping");
    let run = ping(&up, &ours, "ping");
    assert!(run.ok().contains(", 0 errors"), "{run:#?}");
    assert!(audit_has(&up.node, "token.grant", "policy=shell"));
    // A development package: the shipped policy says prompt, and with no one to ask (this
    // node's prompt_fallback) that is a denial the capsule is told.
    let dev = ping(&up, &first_party_capsule("ping"), "ping-dev");
    assert_ne!(dev.code, 0, "{dev:#?}");
    let log = up.node.run(&["logs", "ping-dev"]).ok().to_string();
    assert!(log.contains("prompt_fallback"), "{log}");
    assert!(audit_has(
        &up.node,
        "token.request",
        "policy=shell: a person must decide"
    ));
}

#[test]
fn the_nodes_own_policy_file_replaces_the_shipped_one() {
    let up = shell_node(
        Some(
            "format = 1\n\
             [[rule]]\npublisher = \"dev\"\nname = \"ping-dev\"\nresource = \"localhost://echo/*\"\nactions = [\"read\"]\ndecision = \"allow\"\nttl = \"5m\"\n\
             [[rule]]\nresource = \"*\"\ndecision = \"deny\"\nreason = \"this node allows one development ping\"\n",
        ),
        true,
    );
    assert!(audit_has(&up.node, "shell.attach", "policies/default.toml"));
    start_echo(&up);
    let dev = ping(&up, &first_party_capsule("ping"), "ping-dev");
    assert!(dev.ok().contains(", 0 errors"), "{dev:#?}");
    // The same package under another name: denied, with the rule's reason.
    let other = ping(&up, &first_party_capsule("ping"), "ping-other");
    assert_ne!(other.code, 0);
    assert!(
        up.node
            .run(&["logs", "ping-other"])
            .ok()
            .contains("this node allows one development ping"),
        "{other:#?}"
    );
    // Even first party: this policy grants nothing else.
    let ours = ping(&up, &up.node.pack_first_party("ping"), "ping");
    assert_ne!(ours.code, 0, "{ours:#?}");
}

#[test]
fn without_a_shell_nothing_is_granted() {
    let up = shell_node(None, false);
    let status = up.node.run(&["status"]).ok().to_string();
    assert!(status.contains("NOT RUNNING"), "{status}");
    assert_eq!(
        up.node.run(&["status", "--json"]).json()["shell_running"],
        false
    );
    start_echo(&up);
    let run = ping(&up, &up.node.pack_first_party("ping"), "ping");
    assert_ne!(run.code, 0, "{run:#?}");
    let log = up.node.run(&["logs", "ping"]).ok().to_string();
    assert!(log.contains("policy unavailable"), "{log}");
    assert!(audit_has(&up.node, "token.request", "policy unavailable"));
}
