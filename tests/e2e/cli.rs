//! Exit codes and the command line's contract.

use elastos_e2e::Node;

#[test]
fn usage_errors_exit_2() {
    let node = Node::new();
    node.run(&["token", "issue", "--no-such-flag"]).code(2);
    node.run(&["no-such-command"]).code(2);
    node.run(&[]).code(2);
}

#[test]
fn completions_are_generated() {
    let node = Node::new();
    let out = node.run(&["completions", "bash"]);
    assert!(out.ok().contains("elastos"));
}

/// What this project claims of the machine it runs on: Landlock, seccomp and user namespaces
/// (confinement is built on them). A CI machine without one fails here, loudly, by name.
#[test]
fn doctor_reports_every_feature_and_the_required_ones_are_present() {
    let node = Node::new();
    let out = node.run(&["doctor", "--json"]);
    let report = out.json();
    let features = report["features"].as_array().expect("features");
    let names: Vec<&str> = features.iter().filter_map(|f| f["name"].as_str()).collect();
    for want in [
        "kernel",
        "landlock",
        "seccomp",
        "user_namespaces",
        "cgroups",
        "kvm",
        "qemu",
        "state_quotas",
        "wasm",
        "capnp",
        "elastos_home",
        "disk_space",
    ] {
        assert!(names.contains(&want), "doctor lacks {want}: {names:?}");
    }
    for f in features {
        for key in ["name", "ok", "required", "detail", "fix"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
        if f["required"] == true {
            assert_eq!(f["ok"], true, "a required feature is missing here: {f}");
        }
        if f["ok"] == false {
            assert_ne!(
                f["fix"], "",
                "a missing feature must say how to fix it: {f}"
            );
        }
    }
    // The project also claims the WASM substrate and state quotas on this kind of machine (run
    // as root, as CI is): their end-to-end tests rely on them.
    for claimed in ["wasm", "state_quotas"] {
        let f = features.iter().find(|f| f["name"] == claimed).unwrap();
        assert_eq!(f["ok"], true, "{claimed} is missing here: {f}");
    }
    out.code(0);
    // doctor only reads: it does not create the home it inspects.
    assert!(!node.home().exists());
}

#[test]
fn doctor_fails_when_the_home_is_open_to_others() {
    let node = Node::new();
    std::fs::create_dir_all(node.home()).unwrap();
    elastos_e2e::set_mode(&node.home(), 0o755);
    let out = node.run(&["doctor", "--json"]);
    out.code(1);
    let report = out.json();
    let home = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "elastos_home")
        .unwrap()
        .clone();
    assert_eq!(home["ok"], false, "{home}");
    assert!(
        home["fix"].as_str().unwrap().contains("chmod 700"),
        "{home}"
    );
    // The text form names it too.
    let text = node.run(&["doctor"]);
    text.code(1);
    assert!(text.stdout.contains("MISSING  elastos_home"), "{text:#?}");
}

/// `policy check`: the shipped default is valid; a mistake is named by file, line and column
/// (exit 1), in text and in JSON.
#[test]
fn policy_check_accepts_the_shipped_default_and_points_at_a_mistake() {
    let node = Node::new();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml");
    let ok = node.run(&["policy", "check", shipped.to_str().unwrap()]);
    assert!(ok.ok().contains(": ok, 6 rule(s)"), "{ok:#?}");

    let bad = node.scratch().join("bad.toml");
    std::fs::write(
        &bad,
        "format = 1\n\n[[rule]]\nresource = \"*\"\ndecision = \"allow\"\nttl = \"3h\"\n",
    )
    .unwrap();
    let out = node.run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "{}:6:7: ttl: more than zero and at most 1h",
            bad.display()
        )),
        "{out:#?}"
    );
    let json = node
        .run(&["policy", "check", "--json", bad.to_str().unwrap()])
        .json();
    assert_eq!(json["ok"], false);
    assert_eq!(
        (json["line"].as_u64(), json["column"].as_u64()),
        (Some(6), Some(7))
    );
    // Checking needs no node: nothing was created.
    assert!(!node.home().exists());
}
