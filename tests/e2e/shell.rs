//! The shell capsule deciding token requests (`[policy] decider = "shell"`): the node's policy
//! out of the trusted base, the supervisor's ceilings kept whatever it says, and no grant while
//! no shell runs.

use std::path::Path;
use std::time::Duration;

use elastos_e2e::{first_party_capsule, Node, Run};

use crate::supervisor::{path, wait_until, Up};

/// A node whose shell decides, the shell (signed by the node) among its default capsules, each
/// request waiting at most `shell_wait` for it. `policy`: the node's own policy file, if any.
pub(crate) fn shell_node(policy: Option<&str>, with_shell: bool) -> Up {
    shell_node_with(policy, with_shell, "")
}

/// [`shell_node`] with more `[policy]` settings.
fn shell_node_with(policy: Option<&str>, with_shell: bool, settings: &str) -> Up {
    let node = Node::new();
    let shell = with_shell.then(|| node.pack_first_party("shell"));
    node_with_shell(node, shell.as_deref(), policy, settings)
}

fn node_with_shell(node: Node, shell: Option<&Path>, policy: Option<&str>, settings: &str) -> Up {
    shell_config(&node, shell, policy, settings);
    let up = Up::with_node(node);
    if shell.is_some() {
        wait_until("the shell took the policy", Duration::from_secs(20), || {
            audit_has(&up.node, "policy.load", "the shell took the node's policy")
        });
    }
    up
}

/// Writes a node's configuration with `shell` (if any) as its default capsule and the shell
/// deciding, its `[policy]` table ending with `settings`; and its own policy file, if any.
fn shell_config(node: &Node, shell: Option<&Path>, policy: Option<&str>, settings: &str) {
    std::fs::create_dir_all(node.home()).unwrap();
    elastos_e2e::set_mode(&node.home(), 0o700);
    let defaults = shell.map_or(String::new(), |s| format!("\"{}\"", s.display()));
    std::fs::write(
        node.home().join("config.toml"),
        format!(
            "format = 1\n[supervisor]\ndefault_capsules = [{defaults}]\n[policy]\ndecider = \"shell\"\nshell_wait = \"2s\"\n{settings}"
        ),
    )
    .unwrap();
    if let Some(text) = policy {
        std::fs::create_dir_all(node.home().join("policies")).unwrap();
        std::fs::write(node.home().join("policies/default.toml"), text).unwrap();
    }
}

/// A node whose shell is `test-shell MODE` (`tests/src/bin/test-shell.rs`), packed by the node
/// under the name the configuration gives the shell.
fn test_shell_node(mode: &str) -> Up {
    let node = Node::new();
    let pkg = test_shell_package(&node, mode);
    node_with_shell(node, Some(&pkg), None, "")
}

/// `test-shell MODE` packed by `node` as its `shell`.
fn test_shell_package(node: &Node, mode: &str) -> std::path::PathBuf {
    let dir = node.scratch().join("cap-test-shell");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        format!("format = 1\nname = \"shell\"\nversion = \"0.1.0\"\ndescription = \"a test shell\"\nsubstrate = \"native\"\nargs = [\"{mode}\"]\n[entrypoint]\nnative = \"bin/test-shell\"\n[[requests]]\nresource = \"host://libs\"\nactions = [\"read\"]\nreason = \"dynamically linked\"\n"),
    )
    .unwrap();
    let bin = elastos_e2e::elastos_bin().with_file_name("test-shell");
    std::fs::copy(&bin, dir.join("bin/test-shell")).unwrap();
    elastos_e2e::set_mode(&dir.join("bin/test-shell"), 0o755);
    let pkg = node.scratch().join("test-shell.capsule");
    node.run(&["capsule", "pack", path(&dir), "-o", path(&pkg)])
        .ok();
    pkg
}

pub(crate) fn audit_has(node: &Node, action: &str, text: &str) -> bool {
    node.run(&["audit", "--json"])
        .ok()
        .lines()
        .any(|l| l.contains(&format!("\"action\":\"{action}\"")) && l.contains(text))
}

pub(crate) fn start_echo(up: &Up) {
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
    let up = shell_node_with(None, true, "prompt_fallback = \"deny\"\n");
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

/// Replaceable: another shell, named by the configuration, decides instead, and the supervisor
/// is the same binary.
#[test]
fn a_second_shell_swapped_in_by_the_configuration_decides_instead() {
    let up = test_shell_node("deny-all");
    start_echo(&up);
    let run = ping(&up, &up.node.pack_first_party("ping"), "ping");
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(up
        .node
        .run(&["logs", "ping"])
        .ok()
        .contains("the test shell denies everything"));
    assert!(audit_has(
        &up.node,
        "token.request",
        "policy=shell: the test shell denies everything"
    ));
}

/// A shell that answers wider than the manifest, grants `admin`, answers twice or answers what
/// it was not asked: each refused and audited as a shell fault; what stayed within the ceilings
/// is granted.
#[test]
fn a_shell_answering_outside_its_ceilings_is_refused_and_audited() {
    for (mode, granted, fault) in [
        ("wider", false, "wider than the manifest"),
        ("admin", false, "`admin`, which the shell never may"),
        ("twice", true, "which is not pending"),
        ("unasked", true, "which is not pending"),
    ] {
        let up = test_shell_node(mode);
        start_echo(&up);
        let run = ping(&up, &up.node.pack_first_party("ping"), "ping");
        assert_eq!(run.code == 0, granted, "{mode}: {run:#?}");
        wait_until(
            &format!("{mode}: the fault audited"),
            Duration::from_secs(10),
            || audit_has(&up.node, "shell.fault", fault),
        );
        up.node.run(&["audit", "verify"]).ok();
    }
}

/// Starts the development `ping` (publisher `dev`) as `name`, detached, for `count` calls.
fn start_dev_ping(up: &Up, name: &str, count: &str) {
    let dev = first_party_capsule("ping");
    up.node
        .run(&[
            "run",
            "-d",
            path(&dev),
            "--name",
            name,
            "--restart",
            "never",
            "--",
            "--count",
            count,
        ])
        .ok();
}

/// The prompts waiting, as `elastos prompts --json` lists them.
pub(crate) fn prompts(up: &Up) -> Vec<serde_json::Value> {
    up.node
        .run(&["prompts", "--json"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// A prompt of `capsule`'s, once it waits.
fn prompt_of(up: &Up, capsule: &str) -> serde_json::Value {
    let mut found = None;
    wait_until(
        &format!("a prompt of {capsule}"),
        Duration::from_secs(20),
        || {
            found = prompts(up).into_iter().find(|p| p["capsule"] == capsule);
            found.is_some()
        },
    );
    found.unwrap()
}

/// The person in the loop: a development ping's request waits at a prompt the supervisor draws
/// from its own record; allowed once, it works, and its token ends with that instance; the next
/// instance is asked again, and denied, is told so.
#[test]
fn a_prompt_waits_for_the_person_and_allow_once_lasts_one_instance() {
    let up = shell_node(None, true);
    start_echo(&up);
    let dev = first_party_capsule("ping");
    let start = || {
        up.node.run(&[
            "run",
            "-d",
            path(&dev),
            "--name",
            "ping-dev",
            "--restart",
            "never",
            "--",
            "--count",
            "20",
        ])
    };
    start().ok();
    let p = prompt_of(&up, "ping-dev");
    for key in [
        "id",
        "capsule",
        "cid",
        "publisher",
        "resource",
        "actions",
        "reason",
        "requested_at",
        "expires_at",
    ] {
        assert!(!p[key].is_null(), "prompts --json lacks {key}: {p}");
    }
    assert_eq!(p["publisher"], "dev, unverified");
    assert_eq!(p["reason"], "measure round trips to echo");
    // The capsule is told only that it waits.
    wait_until("ping-dev told it waits", Duration::from_secs(10), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("ping: waiting for permission")
    });
    assert_eq!(p["actions"], serde_json::json!(["read"]));
    // The text listing says who asks and what, with the manifest's reason on its own line.
    let listing = up.node.run(&["prompts"]).ok().to_string();
    assert!(
        listing.contains("reason (from its manifest): measure round trips to echo"),
        "{listing}"
    );
    let id = p["id"].as_str().unwrap().to_string();
    up.node.run(&["allow", &id, "--once"]).ok();
    wait_until("ping-dev done", Duration::from_secs(30), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains(", 0 errors")
    });
    assert!(audit_has(&up.node, "prompt.open", "waiting for the person"));
    assert!(audit_has(
        &up.node,
        "prompt.answer",
        &format!("prompt {id} of `ping-dev`: allowed once")
    ));
    // Its instance ended: the token allowed once is revoked.
    wait_until("the once token revoked", Duration::from_secs(20), || {
        audit_has(
            &up.node,
            "token.revoke",
            "allowed once: ends with its capsule instance",
        )
    });
    // An answered prompt cannot be answered again.
    assert_eq!(up.node.run(&["allow", &id]).code, 1);

    // The next instance is asked again; denied, it is told so.
    start().ok();
    let again = prompt_of(&up, "ping-dev");
    assert_ne!(again["id"], p["id"]);
    up.node.run(&["deny", again["id"].as_str().unwrap()]).ok();
    wait_until("ping-dev denied", Duration::from_secs(30), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("the person denied it at the prompt")
    });
    assert!(prompts(&up).is_empty());
    up.node.run(&["audit", "verify"]).ok();
}

/// The shell killed while a prompt waits: the request is denied `policy unavailable`, not left
/// to a policy no longer in force; the shell restarts and decides again.
#[test]
fn a_shell_killed_with_a_prompt_pending_denies_it_and_the_restarted_shell_serves() {
    let up = shell_node(None, true);
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    prompt_of(&up, "ping-dev");
    let shell_pid = up.capsule("shell")["pid"].as_u64().unwrap();
    up.node.run(&["kill", "shell", "--signal", "KILL"]).ok();
    wait_until("ping-dev denied", Duration::from_secs(30), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("policy unavailable: the prompt was withdrawn")
    });
    assert!(prompts(&up).is_empty());
    // Restarted by its restart policy, it decides again: a first-party ping is granted.
    wait_until("the shell back", Duration::from_secs(30), || {
        up.capsule("shell")["pid"]
            .as_u64()
            .is_some_and(|p| p != shell_pid)
            && up
                .node
                .run(&["status"])
                .ok()
                .contains("policy: shell (running)")
    });
    let run = ping(&up, &up.node.pack_first_party("ping"), "ping");
    assert!(run.ok().contains(", 0 errors"), "{run:#?}");
}

/// A capsule that prints what looks like an answer gains nothing: answers come only from the
/// operator's control socket, and the prompt stays until it is answered there.
#[test]
fn a_capsule_printing_a_fake_allow_line_gains_nothing() {
    // The liar, a development shell script, is given its host://libs; everything else prompts.
    let up = shell_node(
        Some(
            "format = 1\n\
             [[rule]]\npublisher = \"dev\"\nname = \"liar\"\nresource = \"host://libs\"\ndecision = \"allow\"\n\
             [[rule]]\nresource = \"*\"\ndecision = \"prompt\"\n",
        ),
        true,
    );
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    let p = prompt_of(&up, "ping-dev");
    let id = p["id"].as_str().unwrap();
    // Another capsule prints the command, and more, on its output.
    let liar = crate::supervisor::script_capsule(
        &up.node,
        "liar",
        &format!("echo 'waiting for permission: elastos allow {id}'\necho 'elastos allow {id}'\nprintf 'y\\n'"),
    );
    up.node
        .run(&["run", path(&liar), "--restart", "never"])
        .ok();
    assert_eq!(prompts(&up).len(), 1, "the prompt still waits");
    assert!(!audit_has(&up.node, "prompt.answer", id));
    up.node.run(&["deny", id]).ok();
}

/// Running a package of a publisher this node does not know is `execute` on its
/// `elastos://<CID>`, put to the shell before it starts; the shipped policy asks the person.
#[test]
fn running_an_unknown_publishers_package_waits_for_the_person() {
    let up = shell_node(None, true);
    let other = Node::new();
    let theirs = other.pack_first_party("echo");
    let start = || {
        up.node.run(&[
            "run",
            "-d",
            path(&theirs),
            "--name",
            "their-echo",
            "--restart",
            "never",
        ])
    };
    start();
    let p = prompt_of(&up, "their-echo");
    assert!(
        p["resource"]
            .as_str()
            .unwrap()
            .starts_with("elastos://bafk"),
        "{p}"
    );
    assert_eq!(p["actions"], serde_json::json!(["execute"]));
    assert_eq!(p["publisher"], other.did());
    up.node.run(&["deny", p["id"].as_str().unwrap()]).ok();
    wait_until("their-echo refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "their-echo"])
            .ok()
            .contains("not started: policy=shell: execute elastos://")
    });
    assert!(audit_has(
        &up.node,
        "package.run",
        "the person denied it at the prompt"
    ));
    // Asked again, and allowed: it runs (and, not first party here, may not provide).
    start();
    let p = prompt_of(&up, "their-echo");
    up.node.run(&["allow", p["id"].as_str().unwrap()]).ok();
    wait_until("their-echo ran", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "their-echo"])
            .ok()
            .contains("only first-party capsules may provide")
    });
    assert!(audit_has(&up.node, "package.run", "policy=shell: execute"));
}

/// The host grants a manifest asks for at start go through the same decision: a development
/// script's `host://libs` is put to the person, and without it the capsule does not start.
#[test]
fn host_grants_at_start_go_through_the_shell() {
    let up = shell_node(None, true);
    let dir = crate::supervisor::script_capsule(&up.node, "script", "echo script-ran");
    let start = || {
        up.node
            .run(&["run", "-d", path(&dir), "--restart", "never"])
    };
    start();
    let p = prompt_of(&up, "script");
    assert_eq!(p["resource"], "host://libs");
    assert_eq!(p["reason"], "runs /bin/sh");
    up.node.run(&["deny", p["id"].as_str().unwrap()]).ok();
    wait_until("script refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "script"])
            .ok()
            .contains("not started: policy=shell: read host://libs: the person denied it")
    });
    assert!(!up.node.run(&["logs", "script"]).ok().contains("script-ran"));
    assert!(audit_has(&up.node, "host.request", "host://libs"));
    start();
    let p = prompt_of(&up, "script");
    up.node.run(&["allow", p["id"].as_str().unwrap()]).ok();
    wait_until("script ran", Duration::from_secs(20), || {
        up.node.run(&["logs", "script"]).ok().contains("script-ran")
    });
    assert!(audit_has(&up.node, "host.grant", "policy=shell: read"));
}

/// `policy reload`: the node's file again, all at once and recorded; one with a mistake is
/// refused with its line and column, and the policy in force stays.
#[test]
fn policy_reload_takes_a_new_policy_and_refuses_a_broken_one() {
    let allow = "format = 1\n[[rule]]\npublisher = \"first-party\"\nresource = \"*\"\ndecision = \"allow\"\n";
    let up = shell_node(Some(allow), true);
    start_echo(&up);
    let ours = up.node.pack_first_party("ping");
    ping(&up, &ours, "ping").ok();
    let file = up.node.home().join("policies/default.toml");
    std::fs::write(
        &file,
        "format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"sometimes\"\n",
    )
    .unwrap();
    let broken = up.node.run(&["policy", "reload"]);
    assert_eq!(broken.code, 1, "{broken:#?}");
    assert!(
        broken
            .stderr
            .contains("policies/default.toml:4:12: decision: allow, deny or prompt")
            && broken.stderr.contains("the policy in force stays"),
        "{broken:#?}"
    );
    assert!(audit_has(&up.node, "policy.reload", "refused"));
    ping(&up, &ours, "ping").ok();
    std::fs::write(
        &file,
        "format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"deny\"\nreason = \"closed for the night\"\n",
    )
    .unwrap();
    let reloaded = up.node.run(&["policy", "reload"]);
    assert!(
        reloaded.ok().contains("reloaded 1 rule(s)"),
        "{reloaded:#?}"
    );
    assert!(audit_has(&up.node, "policy.reload", "1 rule(s)"));
    let denied = ping(&up, &ours, "ping");
    assert_ne!(denied.code, 0);
    assert!(up
        .node
        .run(&["logs", "ping"])
        .ok()
        .contains("closed for the night"));
}

/// `policy explain` says what the shell would decide, which rule decides and why, and the
/// decision made for the same request agrees; nothing is granted by asking.
#[test]
fn policy_explain_agrees_with_the_decision_made() {
    let policy = "format = 1\n\
                  [[rule]]\nname = \"ping\"\nresource = \"localhost://echo/secret/*\"\ndecision = \"deny\"\nreason = \"not the secret\"\n\
                  [[rule]]\nname = \"ping\"\npublisher = \"first-party\"\nresource = \"localhost://echo/*\"\ndecision = \"allow\"\nttl = \"10m\"\nreason = \"our own ping\"\n";
    let up = shell_node(Some(policy), true);
    start_echo(&up);
    let ours = up.node.pack_first_party("ping");
    let explain = |resource: &str, action: &str| {
        up.node
            .run(&[
                "policy",
                "explain",
                "--as",
                "ping",
                "--resource",
                resource,
                "--action",
                action,
                "--json",
            ])
            .json()
    };
    let ping_at = |target: &str| {
        up.node.run(&[
            "run",
            path(&ours),
            "--name",
            "ping",
            "--restart",
            "never",
            "--",
            "--count",
            "3",
            "--target",
            target,
        ])
    };
    // Stored by its first run: allowed, as explained.
    ping_at("localhost://echo/a").ok();
    let allowed = explain("localhost://echo/a", "read");
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert_eq!(allowed["ttl_s"], 600);
    assert!(
        allowed["explanation"]
            .as_str()
            .unwrap()
            .contains("rule at line 7: our own ping"),
        "{allowed}"
    );
    // The secret part: explained as denied by the first rule, and denied so.
    let denied = explain("localhost://echo/secret/x", "read");
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert!(denied["explanation"]
        .as_str()
        .unwrap()
        .contains("rule at line 2: not the secret"));
    assert_ne!(ping_at("localhost://echo/secret/x").code, 0);
    assert!(up
        .node
        .run(&["logs", "ping"])
        .ok()
        .contains("rule at line 2: not the secret"));
    // Undeclared: denied without asking.
    let undeclared = explain("localhost://echo/a", "write");
    assert_eq!(undeclared["verdict"], "deny");
    assert!(undeclared["explanation"]
        .as_str()
        .unwrap()
        .contains("does not request"));
    // Each explanation is recorded; none granted anything.
    let explained = up
        .node
        .run(&["audit", "--json"])
        .ok()
        .lines()
        .filter(|l| l.contains("\"action\":\"policy.explain\""))
        .count();
    assert_eq!(explained, 3);
}

/// An attached `elastos run` is told by the supervisor that its capsule waits for the person,
/// with the commands that answer; the answer comes from the control socket.
#[test]
fn an_attached_run_hears_that_its_capsule_waits_for_permission() {
    use std::io::{BufRead, BufReader};
    let up = shell_node(None, true);
    start_echo(&up);
    let dev = first_party_capsule("ping");
    let mut child = up
        .node
        .command()
        .args([
            "run",
            path(&dev),
            "--name",
            "ping-att",
            "--restart",
            "never",
            "--",
            "--count",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let p = prompt_of(&up, "ping-att");
    let id = p["id"].as_str().unwrap().to_string();
    up.node.run(&["allow", &id]).ok();
    let status = child.wait().unwrap();
    let said = lines.join().unwrap().join("\n");
    assert!(status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "elastos: ping-att waits for permission to read localhost://echo/ping: `elastos allow {id}` or `elastos deny {id}`"
        )),
        "{said}"
    );
}

/// The shell's answers answer what the supervisor asked: they are never throttled by the
/// shell's audit budget (500 at once), whatever the number of decisions.
#[test]
fn the_shells_answers_are_not_held_back_by_its_audit_budget() {
    let up = shell_node(None, true);
    let ours = up.node.pack_first_party("ping");
    // Two runs of 400 requests (each run within its own budget): 800 answers from one shell.
    for round in 0..2 {
        let run = up.node.run(&[
            "run",
            path(&ours),
            "--name",
            "ping-tokens",
            "--restart",
            "never",
            "--",
            "--tokens",
            "--count",
            "400",
        ]);
        assert!(
            run.ok().contains("400 token requests") && run.ok().contains(" 0 errors"),
            "round {round}: {run:#?}"
        );
    }
}

/// Standing answers: allowed always, the same capsule's next instance and the next supervisor
/// are not asked again; `elastos grants` lists it; revoked, the running capsule's next call is
/// denied and the next instance is asked again; denied always, it is denied without asking.
#[test]
fn an_always_answer_stands_across_restarts_until_revoked() {
    let up = shell_node(None, true);
    start_echo(&up);
    let dev = first_party_capsule("ping");
    let start = |count: &str| {
        up.node.run(&[
            "run",
            "-d",
            path(&dev),
            "--name",
            "ping-dev",
            "--restart",
            "never",
            "--",
            "--count",
            count,
        ])
    };
    start("5").ok();
    let p = prompt_of(&up, "ping-dev");
    let answered = up
        .node
        .run(&["allow", p["id"].as_str().unwrap(), "--always"]);
    let grant = answered
        .ok()
        .split("standing grant ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    wait_until("ping-dev done", Duration::from_secs(30), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains(", 0 errors")
    });
    let grants = up.node.run(&["grants", "--json"]).json();
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
    let g = &grants[0];
    for key in [
        "id",
        "kind",
        "decision",
        "capsule",
        "publisher",
        "resource",
        "actions",
        "expires_at",
        "uses_left",
    ] {
        assert!(g.get(key).is_some(), "grants --json lacks {key}: {g}");
    }
    assert_eq!(
        (
            g["id"].as_str(),
            g["decision"].as_str(),
            g["capsule"].as_str()
        ),
        (Some(grant.as_str()), Some("allow"), Some("ping-dev"))
    );
    // The supervisor restarted: the same capsule runs without a prompt.
    up.node.run(&["down"]).ok();
    up.node.run(&["up"]).ok();
    wait_until("the shell back", Duration::from_secs(20), || {
        up.node
            .run(&["status"])
            .ok()
            .contains("policy: shell (running)")
    });
    start_echo(&up);
    let long = up.node.run(&[
        "run",
        "-d",
        path(&dev),
        "--name",
        "ping-dev",
        "--restart",
        "never",
        "--",
        "--count",
        "100000000",
    ]);
    long.ok();
    wait_until("ping-dev calling", Duration::from_secs(20), || {
        up.capsule("ping-dev")["calls"]
            .as_u64()
            .is_some_and(|c| c > 10)
    });
    assert!(prompts(&up).is_empty(), "asked again");
    // Revoked: its token goes with it, and the running capsule's next call is denied.
    up.node.run(&["revoke", &grant]).ok();
    wait_until("ping-dev denied", Duration::from_secs(20), || {
        up.node.run(&["logs", "ping-dev"]).ok().contains("denied")
    });
    assert!(audit_has(&up.node, "grant.revoke", &grant));
    up.node.run(&["stop", "ping-dev"]).ok();
    // Asked again; denied always, then denied without asking.
    start("5").ok();
    let p = prompt_of(&up, "ping-dev");
    up.node
        .run(&["deny", p["id"].as_str().unwrap(), "--always"])
        .ok();
    wait_until("denied", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("the person denied it")
    });
    start("5").ok();
    wait_until("denied without asking", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("denied always at an earlier prompt")
    });
    assert!(prompts(&up).is_empty());
}

/// Only a first-party package under the shell's name skips the start-time decisions (it cannot
/// ask itself): another publisher's package given that name is decided like any capsule.
#[test]
fn a_foreign_package_named_like_the_shell_is_still_decided() {
    let up = shell_node(None, false);
    let other = Node::new();
    let theirs = other.pack_first_party("echo");
    up.node.run(&[
        "run",
        "-d",
        path(&theirs),
        "--name",
        "shell",
        "--restart",
        "never",
    ]);
    wait_until("refused", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "shell"])
            .ok()
            .contains("not started: policy=shell: execute elastos://")
    });
    assert!(audit_has(&up.node, "package.run", "policy unavailable"));
}

/// Who decides for the node is recorded: the first shell, and a change of its package (here to
/// the test shell, under the same name), each audited `shell.changed`.
#[test]
fn a_change_of_the_nodes_shell_is_audited() {
    let up = shell_node(None, true);
    assert!(audit_has(
        &up.node,
        "shell.changed",
        "the node's first shell"
    ));
    let first = up.capsule("shell")["cid"].as_str().unwrap().to_string();
    up.node.run(&["down"]).ok();
    // The same shell again: nothing to record.
    up.node.run(&["up"]).ok();
    wait_until("the shell back", Duration::from_secs(20), || {
        up.node
            .run(&["status"])
            .ok()
            .contains("policy: shell (running)")
    });
    let changes = || {
        up.node
            .run(&["audit", "--json"])
            .ok()
            .lines()
            .filter(|l| l.contains("\"action\":\"shell.changed\""))
            .count()
    };
    assert_eq!(changes(), 1);
    up.node.run(&["down"]).ok();
    // Another package as the shell, signed by the node too.
    let pkg = test_shell_package(&up.node, "deny-all");
    let config = up.node.home().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let shell_pkg = up.node.scratch().join("shell.capsule");
    std::fs::write(
        &config,
        text.replace(&shell_pkg.display().to_string(), &pkg.display().to_string()),
    )
    .unwrap();
    up.node.run(&["up"]).ok();
    wait_until("the new shell changed", Duration::from_secs(20), || {
        audit_has(
            &up.node,
            "shell.changed",
            &format!("it was `shell` ({}, {first})", up.node.did()),
        )
    });
}

/// The ids of the grants `elastos grants --json` lists of `kind`.
fn grants_of(up: &Up, kind: &str) -> Vec<String> {
    up.node
        .run(&["grants", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == kind)
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect()
}

/// Session grants: `elastos run --allow` answers a development capsule's prompt before it is
/// asked (held to its manifest), `allow ID --session` answers every later instance too, and
/// both end with the supervisor: at `down`, or at the next `up` after a `kill -9`, with the
/// tokens minted under them.
#[test]
fn a_session_grant_answers_until_the_supervisor_stops() {
    let up = shell_node(None, true);
    start_echo(&up);
    let dev = first_party_capsule("ping");
    let run = |name: &str, count: &str, allow: Option<&str>| {
        let mut args = vec![
            "run",
            "-d",
            path(&dev),
            "--name",
            name,
            "--restart",
            "never",
        ];
        if let Some(a) = allow {
            args.extend(["--allow", a]);
        }
        args.extend(["--", "--count", count]);
        up.node.run(&args)
    };
    // Its log keeps every instance's lines: the `n`th instance is done at the `n`th summary.
    let done = |name: &str, n: usize| {
        wait_until(&format!("{name} done"), Duration::from_secs(30), || {
            up.node
                .run(&["logs", name])
                .ok()
                .matches(", 0 errors")
                .count()
                >= n
        });
    };
    // What the manifest does not request is refused, as is admin, before anything runs.
    let wider = run("ping-a", "5", Some("localhost://storage/*:read"));
    assert_eq!(wider.code, 2, "{wider:#?}");
    assert!(wider.stderr.contains("does not request it"), "{wider:#?}");
    assert_eq!(run("ping-a", "5", Some("localhost://echo/*:admin")).code, 2);
    assert!(grants_of(&up, "session").is_empty());

    // Allowed ahead: no prompt, and the grant is listed and recorded.
    run("ping-a", "5", Some("localhost://echo/*:read")).ok();
    done("ping-a", 1);
    assert!(prompts(&up).is_empty());
    assert_eq!(grants_of(&up, "session").len(), 1);
    assert!(audit_has(&up.node, "grant.add", "by `elastos run --allow`"));

    // Allowed for the session at the prompt: the next instance is not asked.
    run("ping-s", "5", None).ok();
    let p = prompt_of(&up, "ping-s");
    let answered = up
        .node
        .run(&["allow", p["id"].as_str().unwrap(), "--session"]);
    assert!(answered.ok().contains("allowed for this session"));
    done("ping-s", 1);
    run("ping-s", "5", None).ok();
    done("ping-s", 2);
    assert!(prompts(&up).is_empty(), "asked again within the session");
    assert_eq!(grants_of(&up, "session").len(), 2);

    // `down` ends them: the next session asks again.
    up.node.run(&["down"]).ok();
    up.node.run(&["up"]).ok();
    assert!(grants_of(&up, "session").is_empty());
    assert!(audit_has(&up.node, "grant.revoke", "the session ended"));
    start_echo(&up);
    run("ping-s", "5", None).ok();
    let p = prompt_of(&up, "ping-s");
    up.node.run(&["deny", p["id"].as_str().unwrap()]).ok();

    // A supervisor killed outright: its session grant, and the token minted under it, end at
    // the next `up`.
    run("ping-a", "100000000", Some("localhost://echo/*:read")).ok();
    wait_until("ping-a calling", Duration::from_secs(20), || {
        up.capsule("ping-a")["calls"]
            .as_u64()
            .is_some_and(|c| c > 10)
    });
    assert_eq!(grants_of(&up, "session").len(), 1);
    up.kill_9_supervisor();
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
    assert!(grants_of(&up, "session").is_empty());
    assert!(audit_has(
        &up.node,
        "grant.revoke",
        "session grant revoked, and 1 token(s) minted under it: the supervisor that granted it stopped without `down`"
    ));
    up.node.run(&["audit", "verify"]).ok();
}

/// `kill -9` of the supervisor while a prompt waits: nothing was granted, the prompt is gone
/// with it (its id answers nothing), and the next request of the capsule is asked afresh.
#[test]
fn a_prompt_pending_at_a_kill_9_of_the_supervisor_grants_nothing() {
    let up = shell_node(None, true);
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    let p = prompt_of(&up, "ping-dev");
    up.kill_9_supervisor();
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
    assert!(prompts(&up).is_empty());
    let late = up.node.run(&["allow", p["id"].as_str().unwrap()]);
    assert_eq!(late.code, 1, "{late:#?}");
    assert!(late.stderr.contains("no prompt"), "{late:#?}");
    assert!(grants_of(&up, "always").is_empty() && grants_of(&up, "session").is_empty());
    assert!(!audit_has(&up.node, "token.grant", "ping-dev"));
    up.node.run(&["audit", "verify"]).ok();
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    assert_ne!(prompt_of(&up, "ping-dev")["id"], p["id"]);
}

/// A standing deny edited by hand into an allow: the authority state's MAC refuses the file, so
/// the supervisor does not start on it; put back, the deny stands.
#[test]
fn a_standing_grant_edited_by_hand_is_refused() {
    let up = shell_node(None, true);
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    let p = prompt_of(&up, "ping-dev");
    up.node
        .run(&["deny", p["id"].as_str().unwrap(), "--always"])
        .ok();
    up.node.run(&["down"]).ok();
    let state = up.node.home().join("state/authority.json");
    let original = std::fs::read_to_string(&state).unwrap();
    assert!(original.contains("\"allow\": false"), "{original}");
    std::fs::write(
        &state,
        original.replace("\"allow\": false", "\"allow\": true"),
    )
    .unwrap();
    let refused = up.node.run(&["up"]);
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert!(refused.stderr.contains("MAC"), "{refused:#?}");
    std::fs::write(&state, original).unwrap();
    assert!(up.node.run(&["up"]).ok().contains("elastos is up"));
    start_echo(&up);
    start_dev_ping(&up, "ping-dev", "5");
    wait_until("denied without asking", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "ping-dev"])
            .ok()
            .contains("denied always at an earlier prompt")
    });
}

/// `up` starts the shell before every other default capsule, wherever the configuration lists
/// it, and has it deciding before the next starts; with none listed it takes the shell from the
/// store under its configured name.
#[test]
fn up_starts_the_shell_first_and_else_from_the_store() {
    let node = Node::new();
    let shell = node.pack_first_party("shell");
    let echo = node.pack_first_party("echo");
    let file = node.home().join("config.toml");
    let config = |defaults: &str| {
        std::fs::write(
            &file,
            format!("format = 1\n[supervisor]\ndefault_capsules = [{defaults}]\n[policy]\ndecider = \"shell\"\n"),
        )
        .unwrap();
    };
    std::fs::create_dir_all(node.home()).unwrap();
    elastos_e2e::set_mode(&node.home(), 0o700);
    config(&format!("\"{}\", \"{}\"", echo.display(), shell.display()));
    let up = Up::with_node(node);
    wait_until("echo serving", Duration::from_secs(20), || {
        audit_has(&up.node, "serve", "localhost://echo/*")
    });
    let records: Vec<serde_json::Value> = up
        .node
        .run(&["audit", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| {
        records
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("not in the audit log: {records:#?}"))
    };
    let attached = at(&|r| r["action"] == "shell.attach");
    let echo_started = at(&|r| {
        r["action"] == "capsule.start"
            && r["resource"]
                .as_str()
                .is_some_and(|s| s.starts_with("capsule:echo@"))
    });
    assert!(attached < echo_started, "{records:#?}");

    up.node.run(&["down"]).ok();
    config("");
    up.node.run(&["up"]).ok();
    wait_until("the stored shell deciding", Duration::from_secs(20), || {
        up.node
            .run(&["status"])
            .ok()
            .contains("policy: shell (running)")
    });
}

/// Tokens follow the rule that allowed them: a reload that moves or rewords the rule keeps
/// them; one without the rule revokes them at once (the running capsule's next call is denied);
/// and a rule removed while the supervisor was down revokes, at the next `up`, what an earlier
/// run minted under it (read back from the audit log).
#[test]
fn a_reload_without_the_rule_that_allowed_a_token_revokes_it() {
    let rule = |reason: &str| {
        format!("[[rule]]\nname = \"ping\"\npublisher = \"first-party\"\nresource = \"localhost://echo/*\"\ndecision = \"allow\"\nreason = \"{reason}\"\n")
    };
    let other = "[[rule]]\nresource = \"host://state\"\ndecision = \"deny\"\n";
    let with_rule = format!("format = 1\n{}", rule("ping may"));
    let without = format!("format = 1\n{other}");
    let up = shell_node(Some(&with_rule), true);
    let file = up.node.home().join("policies/default.toml");
    let reload = |text: &str| {
        std::fs::write(&file, text).unwrap();
        up.node.run(&["policy", "reload"]).ok();
    };
    let revoked = |up: &Up| {
        up.node
            .run(&["audit", "--json"])
            .ok()
            .lines()
            .filter(|l| {
                l.contains("\"action\":\"token.revoke\"") && l.contains("no longer has rule")
            })
            .count()
    };
    start_echo(&up);
    let ours = up.node.pack_first_party("ping");
    let long = |count: &str| {
        up.node
            .run(&[
                "run",
                "-d",
                path(&ours),
                "--name",
                "ping",
                "--restart",
                "never",
                "--",
                "--count",
                count,
            ])
            .ok();
    };
    long("100000000");
    wait_until("ping calling", Duration::from_secs(20), || {
        up.capsule("ping")["calls"].as_u64().is_some_and(|c| c > 10)
    });
    // Moved below another rule and reworded: the same rule.
    reload(&format!("format = 1\n{other}{}", rule("still ours")));
    let calls = up.capsule("ping")["calls"].as_u64().unwrap();
    wait_until("ping still calling", Duration::from_secs(20), || {
        up.capsule("ping")["calls"]
            .as_u64()
            .is_some_and(|c| c > calls + 10)
    });
    assert_eq!(revoked(&up), 0);
    assert!(!up.node.run(&["logs", "ping"]).ok().contains("denied"));
    // Gone: its token goes with it.
    reload(&without);
    assert_eq!(revoked(&up), 1);
    wait_until("ping denied", Duration::from_secs(20), || {
        up.node.run(&["logs", "ping"]).ok().contains("denied")
    });
    up.node.run(&["stop", "ping"]).ok();

    // Minted in one run, its rule removed while the supervisor is down: revoked at `up`.
    reload(&with_rule);
    long("5");
    wait_until("ping done", Duration::from_secs(30), || {
        up.node.run(&["logs", "ping"]).ok().contains(", 0 errors")
    });
    up.node.run(&["down"]).ok();
    std::fs::write(&file, &without).unwrap();
    up.node.run(&["up"]).ok();
    wait_until(
        "the earlier run's token revoked",
        Duration::from_secs(20),
        || revoked(&up) >= 2,
    );
    // Only it: the one revoked before is not revoked again.
    assert_eq!(revoked(&up), 2);
    up.node.run(&["audit", "verify"]).ok();
}

/// A known publisher's capsule (`trust add DID --publisher`) asking for what its manifest
/// requests is put to the person under the shipped policy, the prompt naming the publisher's
/// DID; an always answer binds that DID and the capsule's name, so the same capsule is not
/// asked again, and nothing is granted to the same name from the development key.
#[test]
fn a_known_publishers_capsule_is_asked_about_and_an_always_answer_binds_its_did() {
    let up = shell_node(None, true);
    start_echo(&up);
    let other = Node::new();
    let theirs = other.pack_first_party("ping");
    up.node
        .run(&["trust", "add", &other.did(), "--publisher"])
        .ok();
    let start = || {
        up.node
            .run(&[
                "run",
                "-d",
                path(&theirs),
                "--name",
                "ping",
                "--restart",
                "never",
                "--",
                "--count",
                "5",
            ])
            .ok();
    };
    start();
    let p = prompt_of(&up, "ping");
    assert_eq!(p["publisher"], other.did());
    up.node
        .run(&["allow", p["id"].as_str().unwrap(), "--always"])
        .ok();
    let done = |n: usize| {
        wait_until("ping done", Duration::from_secs(30), || {
            up.node
                .run(&["logs", "ping"])
                .ok()
                .matches(", 0 errors")
                .count()
                >= n
        })
    };
    done(1);
    let grants = up.node.run(&["grants", "--json"]).json();
    assert_eq!(grants[0]["publisher"], other.did(), "{grants}");
    start();
    done(2);
    assert!(prompts(&up).is_empty(), "asked again");
    // The same name from the development key is someone else: asked.
    start_dev_ping(&up, "ping", "5");
    assert_eq!(prompt_of(&up, "ping")["publisher"], "dev, unverified");
}

/// A node that names its shell's publisher (`[policy] shell_publisher`) takes only that
/// publisher's package as its shell: the node's own shell under another name's publisher is
/// refused, recorded, and decides nothing.
#[test]
fn a_shell_of_another_publisher_than_the_configured_one_decides_nothing() {
    let someone = Node::new().did();
    let up = {
        let node = Node::new();
        let shell = node.pack_first_party("shell");
        shell_config(
            &node,
            Some(&shell),
            None,
            &format!("shell_publisher = \"{someone}\"\n"),
        );
        Up::with_node(node)
    };
    wait_until("the shell refused", Duration::from_secs(20), || {
        audit_has(&up.node, "shell.refused", "[policy] shell_publisher")
    });
    assert!(up.node.run(&["status"]).ok().contains("NOT RUNNING"));
    assert_eq!(
        up.node.run(&["status", "--json"]).json()["shell_publisher"],
        someone.as_str()
    );
    // Named as its own: it decides.
    let own = up.node.did();
    up.node.run(&["down"]).ok();
    let config = up.node.home().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&someone, &own)).unwrap();
    up.node.run(&["up"]).ok();
    wait_until("the shell deciding", Duration::from_secs(20), || {
        up.node
            .run(&["status"])
            .ok()
            .contains("policy: shell (running)")
    });
}
