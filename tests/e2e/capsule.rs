//! Content addresses and signed capsule packages.

use std::path::Path;

use elastos_e2e::{set_mode, Node};

fn pack(node: &Node, dir: &Path, out: &Path, key: Option<&Path>) -> String {
    let mut args = vec![
        "capsule",
        "pack",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    if let Some(k) = key {
        args.extend(["--key", k.to_str().unwrap()]);
    }
    node.run(&args).ok().trim().to_string()
}

#[test]
fn cid_is_cidv1_raw_sha256_base32() {
    let node = Node::new();
    let f = node.scratch().join("empty");
    std::fs::write(&f, b"").unwrap();
    let out = node.run(&["cid", f.to_str().unwrap()]);
    assert_eq!(
        out.ok().trim(),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
    node.run(&["cid", "/no/such/file"]).code(1);
}

#[test]
fn packing_is_deterministic_whatever_the_file_order_and_mtimes() {
    let node = Node::new();
    let seed = node.scratch().join("seed");
    std::fs::write(&seed, "42".repeat(32)).unwrap();

    let a = node.capsule_dir("det");
    // The same files, written in another order, with other mtimes, in another directory.
    let b = node.scratch().join("det-b");
    std::fs::create_dir_all(b.join("bin")).unwrap();
    std::fs::write(b.join("README"), std::fs::read(a.join("README")).unwrap()).unwrap();
    std::fs::write(b.join("bin/det"), std::fs::read(a.join("bin/det")).unwrap()).unwrap();
    set_mode(&b.join("bin/det"), 0o755);
    std::fs::write(
        b.join("capsule.toml"),
        std::fs::read(a.join("capsule.toml")).unwrap(),
    )
    .unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(b.join("README"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let pa = node.scratch().join("a.capsule");
    let pb = node.scratch().join("b.capsule");
    let cid_a = pack(&node, &a, &pa, Some(&seed));
    let cid_b = pack(&node, &b, &pb, Some(&seed));
    assert_eq!(cid_a, cid_b);
    assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    assert!(cid_a.starts_with("bafkrei"), "{cid_a}");
    // The package's CID is `elastos cid` of the package file.
    assert_eq!(node.run(&["cid", pa.to_str().unwrap()]).ok().trim(), cid_a);

    // The executable bit is part of the content.
    set_mode(&b.join("bin/det"), 0o644);
    let cid_c = pack(&node, &b, &pb, Some(&seed));
    assert_ne!(cid_a, cid_c);
}

#[test]
fn verify_names_the_publisher_and_cid() {
    let node = Node::new();
    let did = node.did();
    let dir = node.capsule_dir("hello");
    let pkg = node.scratch().join("hello.capsule");
    let cid = pack(&node, &dir, &pkg, None);
    let out = node.run(&["capsule", "verify", pkg.to_str().unwrap()]);
    assert!(out.ok().contains(&did), "{out:#?}");
    assert!(out.stdout.contains(&cid), "{out:#?}");

    let v = node
        .run(&["capsule", "inspect", pkg.to_str().unwrap(), "--json"])
        .json();
    assert_eq!(v["cid"], cid.as_str());
    assert_eq!(v["publisher"], did.as_str());
    assert_eq!(v["manifest"]["name"], "hello");
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["README", "bin/hello", "capsule.toml"]);
}

#[test]
fn changing_any_byte_of_a_package_is_refused() {
    let node = Node::new();
    let dir = node.capsule_dir("tamper");
    let pkg = node.scratch().join("t.capsule");
    pack(&node, &dir, &pkg, None);
    let good = std::fs::read(&pkg).unwrap();
    let bad = node.scratch().join("bad.capsule");
    // Every byte of a small package: header, index, signature and file contents.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let out = node.run(&["capsule", "verify", bad.to_str().unwrap()]);
        assert_eq!(out.code, 1, "flipping byte {i} was not detected: {out:#?}");
        assert!(out.stderr.contains("refused"), "{out:#?}");
    }
    // A change inside a file's contents names that file.
    let readme = b"a test capsule\n";
    let at = good
        .windows(readme.len())
        .position(|w| w == readme)
        .expect("README contents in package");
    let mut b = good.clone();
    b[at] = b'A';
    std::fs::write(&bad, &b).unwrap();
    let out = node.run(&["capsule", "verify", bad.to_str().unwrap()]);
    assert!(out.stderr.contains("README"), "{out:#?}");
    // Truncated and extended packages too.
    std::fs::write(&bad, &good[..good.len() - 1]).unwrap();
    node.run(&["capsule", "verify", bad.to_str().unwrap()])
        .code(1);
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    node.run(&["capsule", "verify", bad.to_str().unwrap()])
        .code(1);
}

#[test]
fn pack_refuses_a_symlink_and_names_it() {
    let node = Node::new();
    let dir = node.capsule_dir("links");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let out = node.run(&["capsule", "pack", dir.to_str().unwrap()]);
    out.code(1);
    assert!(out.stderr.contains("passwd"), "{out:#?}");
}

#[test]
fn an_unknown_manifest_field_is_named_with_its_line() {
    let node = Node::new();
    let dir = node.capsule_dir("typo");
    let mut m = std::fs::read_to_string(dir.join("capsule.toml")).unwrap();
    m.push_str("colour = \"blue\"\n");
    let line = m.lines().count();
    std::fs::write(dir.join("capsule.toml"), m).unwrap();
    let out = node.run(&["capsule", "pack", dir.to_str().unwrap()]);
    out.code(1);
    assert!(out.stderr.contains("colour"), "{out:#?}");
    assert!(out.stderr.contains(&format!("line {line}")), "{out:#?}");
}

#[test]
fn a_manifest_of_an_unknown_format_is_refused() {
    let node = Node::new();
    let dir = node.capsule_dir("future");
    let m = std::fs::read_to_string(dir.join("capsule.toml"))
        .unwrap()
        .replace("format = 1", "format = 9");
    std::fs::write(dir.join("capsule.toml"), m).unwrap();
    let out = node.run(&["capsule", "pack", dir.to_str().unwrap()]);
    out.code(1);
    assert!(out.stderr.contains("format"), "{out:#?}");
}

/// A script capsule `name` at `version`, in a directory of its own.
fn versioned(node: &Node, name: &str, version: &str) -> std::path::PathBuf {
    let dir = node.scratch().join(format!("{name}-{version}"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(
        dir.join("capsule.toml"),
        format!("format = 1\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"test\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/run\"\n[[requests]]\nresource = \"host://libs\"\nactions = [\"read\"]\nreason = \"runs /bin/sh\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("bin/run"), format!("#!/bin/sh\necho {version}\n")).unwrap();
    set_mode(&dir.join("bin/run"), 0o755);
    dir
}

#[test]
fn an_older_version_replaces_a_newer_one_only_with_allow_downgrade_and_is_audited() {
    let up = crate::supervisor::Up::new();
    let node = &up.node;
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["run", dir.to_str().unwrap(), "--restart", "never"];
        args.extend_from_slice(extra);
        node.run(&args)
    };
    let out = run(&versioned(node, "app", "0.2.0"), &[]);
    assert!(out.ok().contains("0.2.0"), "{out:#?}");
    let old = versioned(node, "app", "0.1.0");
    let out = run(&old, &[]);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("older than the 0.2.0") && out.stderr.contains("--allow-downgrade"),
        "{out:#?}"
    );
    let audit = node.run(&["audit", "--json"]).ok().to_string();
    assert!(audit.contains("package.refused"), "{audit}");
    assert!(!audit.contains("package.downgrade"), "{audit}");
    let out = run(&old, &["--allow-downgrade"]);
    assert!(out.ok().contains("0.1.0"), "{out:#?}");
    let audit = node.run(&["audit", "--json"]).ok().to_string();
    assert!(
        audit.contains("package.downgrade") && audit.contains("replaces 0.2.0"),
        "{audit}"
    );
    // Each `run DIR` packed a temporary package for the supervisor; none is left.
    let tmp = node.home().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_capsule_cannot_take_the_nodes_own_names() {
    let up = crate::supervisor::Up::new();
    for name in ["supervisor", "elastos"] {
        let dir = versioned(&up.node, name, "0.1.0");
        let out = up.node.run(&["run", dir.to_str().unwrap()]);
        assert_ne!(out.code, 0, "{out:#?}");
        assert!(out.stderr.contains("reserved"), "{out:#?}");
        // Nor under --name.
        let dir = versioned(&up.node, "plain", "0.1.0");
        let out = up.node.run(&["run", dir.to_str().unwrap(), "--name", name]);
        assert_ne!(out.code, 0, "{out:#?}");
        assert!(out.stderr.contains("reserved"), "{out:#?}");
    }
}
