//! The token check on the live call path, tried the way a thief or an unlucky operator would:
//! each call below reaches a running supervisor with a token that must not pass (none at all,
//! revoked while the node runs, from before an epoch raise, used up, below the route's
//! classification), or at a moment it must not be forwarded (too many in flight, a provider that
//! never answers, an audit log that cannot be written). Each is refused with its reason, the
//! provider never sees it, and (where a token was presented) a durable denial names the token.
//!
//! The caller is `ping` repacked without any `[[requests]]`, so the supervisor grants it nothing
//! of its own: every call it makes carries the token the test hands it (`ping --token`).

use std::path::PathBuf;
use std::time::Duration;

use elastos_e2e::{first_party_capsule, Node, Run};

use crate::supervisor::{path, wait_until, Up};

/// A first-party capsule repacked with its manifest changed by `edit`, signed by this node.
pub(crate) fn variant(
    node: &Node,
    name: &str,
    tag: &str,
    edit: impl Fn(&str) -> String,
) -> PathBuf {
    let dir = node.scratch().join(format!("{name}-{tag}"));
    let src = first_party_capsule(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&src, &dir);
    let manifest = dir.join("capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&manifest, edited).unwrap();
    let out = node.scratch().join(format!("{name}-{tag}.capsule"));
    node.run(&["capsule", "pack", path(&dir), "-o", path(&out)])
        .ok();
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `ping` with no `[[requests]]`: it is granted nothing.
pub(crate) fn ungranted_ping(node: &Node) -> PathBuf {
    variant(node, "ping", "ungranted", |m| {
        m.split("[[requests]]").next().unwrap().to_string()
    })
}

/// Starts the echo package `pkg` and waits until it serves.
pub(crate) fn start_echo(up: &Up, pkg: &std::path::Path) {
    up.node.run(&["run", "-d", path(pkg)]).ok();
    wait_until("echo serving", Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .contains("serving localhost://echo/*")
    });
}

pub(crate) fn echo_calls(up: &Up) -> u64 {
    up.capsule("echo")["calls"].as_u64().unwrap()
}

/// Runs `pkg` as capsule `name` with `ping` arguments, attached.
pub(crate) fn ping(up: &Up, pkg: &std::path::Path, name: &str, args: &[&str]) -> Run {
    let mut all = vec!["run", path(pkg), "--name", name, "--"];
    all.extend_from_slice(&["--wait-for-provider", "0"]);
    all.extend_from_slice(args);
    up.node.run(&all)
}

/// A token for capsule `name` to read `localhost://echo/*`, with `extra` issue flags; its text
/// and id.
pub(crate) fn token_for(node: &Node, name: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "token",
        "issue",
        "--capsule",
        name,
        "--resource",
        "localhost://echo/*",
        "--action",
        "read",
        "--ttl",
        "1h",
        "--json",
    ];
    args.extend_from_slice(extra);
    let v = node.run(&args).json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// Denied calls of capsule `name`: (resource, reason, token) of each.
fn denials(node: &Node, name: &str) -> Vec<(String, String, serde_json::Value)> {
    node.run(&["audit", "--json", "--capsule", name])
        .ok()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "call" && r["decision"] == "denied")
        .map(|r| {
            (
                r["resource"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
                r["token"].clone(),
            )
        })
        .collect()
}

/// Asserts `run` failed on a denial whose reason starts with `check`, that the provider served
/// nothing more, and that the log holds a denial of `name`'s call for that check naming `token`.
#[track_caller]
fn denied(up: &Up, run: &Run, echo_before: u64, name: &str, check: &str, token: Option<&str>) {
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains(&format!("denied: {check}")),
        "expected a `{check}` denial: {run:#?}"
    );
    assert_eq!(
        echo_calls(up),
        echo_before,
        "the provider saw a denied call"
    );
    let found = denials(&up.node, name);
    assert!(
        found
            .iter()
            .any(|(res, why, tok)| res.starts_with("localhost://echo/")
                && why.starts_with(check)
                && tok.as_str() == token),
        "no `{check}` denial naming {token:?} in {found:#?}"
    );
}

#[test]
fn tokens_that_must_not_pass_are_denied_on_the_live_path_and_the_provider_never_sees_them() {
    let up = Up::new();
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo);
    let ping_pkg = ungranted_ping(&up.node);

    // No grant and no token of its own: its token request is refused, nothing is called.
    let before = echo_calls(&up);
    let run = ping(&up, &ping_pkg, "p-none", &["--count", "3"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("denied"), "{run:#?}");
    assert_eq!(echo_calls(&up), before);
    // No token at all on the wire: the first check fails.
    let run = ping(
        &up,
        &ping_pkg,
        "p-none",
        &["--count", "3", "--token", "none"],
    );
    denied(&up, &run, before, "p-none", "version", None);

    // A valid token works; revoked while the node runs, the same token is denied.
    let (tok, id) = token_for(&up.node, "p-rev", &[]);
    let run = ping(&up, &ping_pkg, "p-rev", &["--count", "3", "--token", &tok]);
    assert!(run.ok().contains(", 0 errors"), "{run:#?}");
    let before = echo_calls(&up);
    assert!(before >= 4);
    up.node.run(&["revoke", &id]).ok();
    let run = ping(&up, &ping_pkg, "p-rev", &["--count", "3", "--token", &tok]);
    denied(&up, &run, before, "p-rev", "revoked", Some(&id));

    // Issued before an epoch raise.
    let (tok, id) = token_for(&up.node, "p-epoch", &[]);
    up.node.run(&["revoke", "--all"]).ok();
    let run = ping(
        &up,
        &ping_pkg,
        "p-epoch",
        &["--count", "3", "--token", &tok],
    );
    denied(&up, &run, before, "p-epoch", "epoch", Some(&id));

    // Used up: three uses serve three calls, the fourth is denied.
    let (tok, id) = token_for(&up.node, "p-uses", &["--max-uses", "3"]);
    let run = ping(&up, &ping_pkg, "p-uses", &["--count", "5", "--token", &tok]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("denied: uses"), "{run:#?}");
    assert_eq!(echo_calls(&up), before + 3, "exactly max-uses calls served");
    let found = denials(&up.node, "p-uses");
    assert!(
        found
            .iter()
            .any(|(_, why, t)| why.starts_with("uses") && t.as_str() == Some(id.as_str())),
        "{found:#?}"
    );
}

#[test]
fn a_route_classified_above_the_token_is_denied() {
    let up = Up::new();
    let secret = variant(&up.node, "echo", "secret", |m| {
        m.replace("classification = \"public\"", "classification = \"secret\"")
    });
    start_echo(&up, &secret);
    let ping_pkg = ungranted_ping(&up.node);
    let before = echo_calls(&up);
    // Tokens reach `internal` by default: below the route's `secret`.
    let (tok, id) = token_for(&up.node, "p-class", &[]);
    let run = ping(
        &up,
        &ping_pkg,
        "p-class",
        &["--count", "2", "--token", &tok],
    );
    denied(&up, &run, before, "p-class", "classification", Some(&id));
    // The same route with a token that reaches it.
    let (tok, _) = token_for(&up.node, "p-class", &["--classification", "secret"]);
    let run = ping(
        &up,
        &ping_pkg,
        "p-class",
        &["--count", "2", "--token", &tok],
    );
    assert!(run.ok().contains(", 0 errors"), "{run:#?}");
    assert_eq!(echo_calls(&up), before + 3);
}

#[test]
fn calls_beyond_the_in_flight_limit_are_answered_busy() {
    let node = Node::new();
    node.grant_requests(&[], "max_in_flight = 2\n");
    let up = Up::with_node(node);
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo);
    let ping_pkg = up.node.pack_first_party("ping");
    let before = echo_calls(&up);
    let run = ping(
        &up,
        &ping_pkg,
        "p-busy",
        &["--count", "200", "--concurrency", "32"],
    );
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("too many calls in flight"), "{run:#?}");
    let errors: u64 = run
        .stdout
        .rsplit(", ")
        .next()
        .and_then(|e| e.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no error count in {run:#?}"));
    // Every call either reached echo or was answered busy, none both.
    assert!(errors > 0);
    assert_eq!(echo_calls(&up) - before, 200 + 1 - errors, "{run:#?}");
}

#[test]
fn a_provider_that_never_answers_times_out_the_call() {
    let node = Node::new();
    node.grant_requests(&[], "call_deadline = \"1s\"\n");
    let up = Up::with_node(node);
    let echo = up.node.pack_first_party("echo");
    start_echo(&up, &echo);
    let pid = up.capsule("echo")["pid"].as_u64().unwrap() as u32;
    // Stopped, with every process under it: it holds its socket but answers nothing.
    let tree = with_descendants(pid);
    let signal = |sig| {
        for p in &tree {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), sig);
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let ping_pkg = up.node.pack_first_party("ping");
    let run = ping(&up, &ping_pkg, "p-timeout", &["--count", "1"]);
    signal(nix::sys::signal::Signal::SIGCONT);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("did not answer in time"), "{run:#?}");
    let timeouts = up
        .node
        .run(&["audit", "--json", "--capsule", "p-timeout"])
        .ok()
        .lines()
        .filter(|l| l.contains("\"call.timeout\""))
        .count();
    assert!(timeouts >= 1);
}

/// `pid` and every process below it.
fn with_descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}
