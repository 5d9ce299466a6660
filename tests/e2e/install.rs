//! `scripts/install` (run by `scripts/up`): `elastos` where a user can run it, copied out of the
//! build and working from there, with a word when it is not on `PATH`.

use std::path::Path;
use std::process::Command;

use elastos_e2e::{elastos_bin, Node, Run};

use crate::supervisor::{path, script_capsule};

fn install(node: &Node, path_var: &str) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install");
    let built = elastos_bin();
    Command::new("bash")
        .arg(script)
        .arg(built.parent().unwrap())
        .env_clear()
        .env("HOME", node.home().parent().unwrap())
        .env("PATH", path_var)
        .output()
        .expect("running scripts/install")
        .into()
}

#[test]
fn scripts_install_puts_a_working_elastos_in_local_bin_and_says_when_it_is_not_on_path() {
    let node = Node::new();
    let home = node.home().parent().unwrap().to_path_buf();
    let bindir = home.join(".local/bin");
    let libdir = home.join(".local/lib/elastos");

    let out = install(&node, "/usr/bin:/bin");
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains(&format!("{} is not on your PATH", bindir.display())),
        "{out:#?}"
    );
    // The link, to copies that a `cargo clean` cannot take away.
    let link = bindir.join("elastos");
    assert_eq!(std::fs::read_link(&link).unwrap(), libdir.join("elastos"));
    for b in ["elastos", "capsule-host"] {
        let meta = std::fs::symlink_metadata(libdir.join(b)).unwrap();
        assert!(meta.file_type().is_file(), "{b} is not a copy");
    }

    // Run through the link, with nothing pointing at the build: it finds its capsule-host next
    // to the real binary and runs a capsule.
    let run = |args: &[&str]| -> Run {
        Command::new(&link)
            .args(args)
            .env_clear()
            .env("ELASTOS_HOME", node.home())
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .current_dir(node.scratch())
            .output()
            .unwrap()
            .into()
    };
    // Its shell decides for the development capsule below.
    node.grant_requests(&[], "");
    assert!(run(&["up"]).ok().contains("elastos is up"));
    let dir = script_capsule(&node, "hello", "echo installed-and-running");
    let ran = run(&["run", path(&dir), "--restart", "never"]);
    let logs = run(&["logs", "hello"]);
    let pid = run(&["status", "--json"]).json()["pid"].as_u64().unwrap();
    // The supervisor is the installed copy, not the build.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    run(&["down"]).ok();
    assert_eq!(exe, libdir.join("elastos"));
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(logs.ok().contains("installed-and-running"), "{logs:#?}");

    // Again, with ~/.local/bin on PATH: replaced in place, and nothing to say about PATH.
    let again = install(&node, &format!("{}:/usr/bin:/bin", bindir.display()));
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(!again.stderr.contains("not on your PATH"), "{again:#?}");
    assert!(run(&["--version"]).ok().starts_with("elastos "));
}
