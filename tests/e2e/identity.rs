//! Node identity: creation, did:key, export/import, permissions, read-only commands.

use elastos_e2e::{set_mode, Node};

#[test]
fn version_shows_no_identity_until_one_is_created() {
    let node = Node::new();
    let out = node.run(&["--version"]);
    let lines: Vec<&str> = out.ok().lines().collect();
    assert!(lines[0].starts_with("elastos "), "{lines:?}");
    let semver = lines[0].trim_start_matches("elastos ");
    assert_eq!(semver.split('.').count(), 3, "{semver}");
    assert_eq!(lines[1], "no identity yet");
    assert!(
        !node.home().exists(),
        "--version must not create $ELASTOS_HOME"
    );

    let did = node.did();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    let out = node.run(&["--version"]);
    assert_eq!(out.ok().lines().nth(1), Some(did.as_str()));
}

#[test]
fn identity_json_names_the_did_and_its_public_key() {
    let node = Node::new();
    let v = node.run(&["identity", "--json"]).json();
    let did = v["did"].as_str().unwrap();
    let public = v["public_key_hex"].as_str().unwrap();
    assert_eq!(public.len(), 64);
    assert_eq!(node.did(), did, "the identity is stable across commands");
}

#[test]
fn home_and_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    node.did();
    let mode = |p| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(node.home()), 0o700);
    assert_eq!(mode(node.home().join("node.key")), 0o600);
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let node = Node::new();
    node.did();
    set_mode(&node.home().join("node.key"), 0o644);
    let out = node.run(&["identity"]);
    out.code(1);
    assert!(out.stderr.contains("chmod 600"), "{out:#?}");
}

#[test]
fn export_then_import_restores_the_same_identity() {
    let a = Node::new();
    let did = a.did();
    let out = a.run(&["identity", "export"]);
    let seed = out.ok().trim().to_string();
    assert_eq!(seed.len(), 64);
    assert!(out.stderr.contains("secret"), "export warns on stderr");

    let b = Node::new();
    let imported = b.run_with_stdin(&["identity", "import"], &seed);
    assert_eq!(imported.ok().trim(), did);
    assert_eq!(b.did(), did);
}

#[test]
fn import_refuses_to_replace_an_identity_without_force() {
    let node = Node::new();
    let original = node.did();
    let other_seed = "11".repeat(32);
    let out = node.run_with_stdin(&["identity", "import"], &other_seed);
    out.code(1);
    assert!(out.stderr.contains("--force"), "{out:#?}");
    assert_eq!(node.did(), original);

    let forced = node.run_with_stdin(&["identity", "import", "--force"], &other_seed);
    assert_ne!(forced.ok().trim(), original);
    assert_eq!(node.did(), forced.stdout.trim());
}

#[test]
fn import_refuses_a_malformed_seed() {
    let node = Node::new();
    node.run_with_stdin(&["identity", "import"], "not hex")
        .code(1);
    node.run_with_stdin(&["identity", "import"], &"ab".repeat(31))
        .code(1);
    assert!(!node.home().join("node.key").exists());
}

#[test]
fn read_only_commands_never_write_to_the_home() {
    let node = Node::new();
    // A package and a token made by another node, so this node's home stays untouched.
    let other = Node::new();
    let dir = other.capsule_dir("ro");
    let pkg = node.scratch().join("ro.capsule");
    other
        .run(&[
            "capsule",
            "pack",
            dir.to_str().unwrap(),
            "-o",
            pkg.to_str().unwrap(),
        ])
        .ok();
    let tok = other.issue(&[
        "--capsule",
        "ro",
        "--resource",
        "localhost://x/*",
        "--action",
        "read",
        "--ttl",
        "1h",
    ]);
    let p = pkg.to_str().unwrap();
    node.run(&["cid", p]).ok();
    node.run(&["capsule", "verify", p]).ok();
    node.run(&["capsule", "inspect", p, "--json"]).ok();
    node.run(&["token", "inspect", &tok]).ok();
    node.run(&["token", "inspect", &tok, "--json"]).ok();
    // Not allowed here (this node does not trust the issuer), but still a read-only dry run.
    node.run(&[
        "token",
        "check",
        &tok,
        "--as",
        "ro",
        "--resource",
        "localhost://x/y",
        "--action",
        "read",
    ])
    .code(1);
    node.run(&["audit"]).ok();
    assert!(
        !node.home().exists(),
        "a read-only command created {}",
        node.home().display()
    );
}

#[test]
fn replacing_the_key_keeps_the_log_verifiable_ends_old_tokens_and_keeps_its_packages_first_party() {
    use crate::supervisor::{path, wait_until, Up};
    let node = Node::new();
    let old = node.did();
    // Made under the old key: a package, a token, some history.
    let echo = node.pack_first_party("echo");
    let tok = node.issue(elastos_e2e::NOTES_READ);
    node.run(&["trust", "add", &Node::new().did()]).ok();

    let forced = node.run_with_stdin(&["identity", "import", "--force"], &"11".repeat(32));
    let new = forced.ok().trim().to_string();
    assert_ne!(new, old);

    // One chain of keys, followed with no flag.
    node.run(&["audit", "verify"]).ok();
    node.run(&["audit", "verify", "--did", &old]).code(1);
    let recs: Vec<serde_json::Value> = node
        .run(&["audit", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |a: &str| recs.iter().position(|r| r["action"] == a).unwrap();
    assert_eq!(at("key.retire") + 1, at("key.adopt"));
    assert_eq!(recs[at("key.retire")]["resource"], new.as_str());
    assert_eq!(recs[at("key.adopt")]["resource"], old.as_str());

    // The old key's tokens end.
    let check = node.check(&tok, "notes", "localhost://storage/notes/a", "read");
    check.code(1);
    assert!(check.stdout.starts_with("denied: "), "{check:#?}");

    // Its packages stay first party: echo may still serve its namespace.
    let up = Up::with_node(node);
    up.node.run(&["run", "-d", path(&echo)]).ok();
    wait_until("echo serving", std::time::Duration::from_secs(20), || {
        up.node
            .run(&["logs", "echo"])
            .ok()
            .contains("serving localhost://echo/*")
    });
    up.node.run(&["down"]).ok();
    up.node.run(&["audit", "verify"]).ok();
}

#[test]
fn an_import_that_stopped_after_recording_the_key_change_is_finished_by_running_it_again() {
    let node = Node::new();
    node.did();
    node.run(&["revoke", "--all"]).ok();
    let key_file = node.home().join("node.key");
    let old_key = std::fs::read(&key_file).unwrap();
    let seed = "22".repeat(32);
    let new = node
        .run_with_stdin(&["identity", "import", "--force"], &seed)
        .ok()
        .trim()
        .to_string();
    // As if it had stopped before the new key was installed.
    std::fs::write(&key_file, &old_key).unwrap();
    assert_ne!(node.did(), new);
    assert!(node.run(&["up"]).code != 0);
    node.run_with_stdin(&["identity", "import", "--force"], &seed)
        .ok();
    assert_eq!(node.did(), new);
    node.run(&["audit", "verify"]).ok();
}
