//! Landlock on its own: the same ruleset a native capsule gets (its package, its tmp, the host's
//! libraries), put on a process of the host's own file system with no private root, no
//! namespace and no seccomp, so that nothing but Landlock stands between it and each target.
//! The control run is the same process without the ruleset: it reaches every target, so each
//! refusal in the confined run is Landlock's.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// Every attempt, in order, and whether Landlock must refuse it.
const ATTEMPTS: &[(&str, bool)] = &[
    ("read-package", false),
    ("write-tmp", false),
    ("read-outside", true),
    ("write-outside", true),
    ("list-root", true),
    ("read-etc-passwd", true),
    ("exec-outside", true),
    ("exec-from-tmp", true),
    ("tcp-connect", true),
    ("tcp-bind", true),
    ("abstract-socket", true),
    ("signal-outside", true),
];

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set: run by the test below"))
}

fn attempt(name: &str) -> std::io::Result<()> {
    let pkg = PathBuf::from(env("LL_PKG"));
    let tmp = PathBuf::from(env("LL_TMP"));
    let outside = PathBuf::from(env("LL_OUTSIDE"));
    match name {
        "read-package" => std::fs::read(pkg.join("file")).map(drop),
        "write-tmp" => std::fs::write(tmp.join("new"), b"x"),
        "read-outside" => std::fs::read(outside.join("secret")).map(drop),
        "write-outside" => std::fs::write(outside.join("new"), b"x"),
        "list-root" => std::fs::read_dir("/").map(drop),
        "read-etc-passwd" => std::fs::read("/etc/passwd").map(drop),
        "exec-outside" => std::process::Command::new(outside.join("true"))
            .status()
            .map(drop),
        "exec-from-tmp" => {
            let copy = tmp.join("true");
            std::fs::copy("/bin/true", &copy)?;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
            std::process::Command::new(&copy).status().map(drop)
        }
        "tcp-connect" => std::net::TcpStream::connect(env("LL_TCP")).map(drop),
        "tcp-bind" => std::net::TcpListener::bind("127.0.0.1:0").map(drop),
        "abstract-socket" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(env("LL_ABSTRACT"))?;
            std::os::unix::net::UnixStream::connect_addr(&addr).map(drop)
        }
        "signal-outside" => {
            let pid: i32 = env("LL_PID").parse().map_err(std::io::Error::other)?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .map_err(std::io::Error::from)
        }
        other => Err(std::io::Error::other(format!("no attempt {other}"))),
    }
}

/// Run by `landlock_alone_refuses_what_the_control_run_reaches` in a process of its own.
#[test]
#[ignore = "a helper process of landlock_alone_refuses_what_the_control_run_reaches"]
fn landlocked_child() {
    if env("LL_ON") == "1" {
        let rules = FsRules::native(
            PathBuf::from(env("LL_PKG")),
            Some(PathBuf::from(env("LL_TMP"))),
            true,
        );
        let mut kernel = Kernel::prepare(&rules, false).unwrap();
        kernel.no_new_privs().unwrap();
        kernel.landlock(&rules).unwrap();
    }
    for (name, _) in ATTEMPTS {
        match attempt(name) {
            // Marked: libtest's own "test … " may start the first line.
            Ok(()) => println!("@@{name} reached"),
            Err(e) => println!("@@{name} blocked: {e}"),
        }
    }
}

fn run_child(dir: &Path, on: bool, tcp: &str, abstract_name: &str) -> BTreeMap<String, String> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "confine::landlock_alone::landlocked_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LL_ON", if on { "1" } else { "0" })
        .env("LL_PKG", dir.join("pkg"))
        .env("LL_TMP", dir.join("tmp"))
        .env("LL_OUTSIDE", dir.join("outside"))
        .env("LL_TCP", tcp)
        .env("LL_ABSTRACT", abstract_name)
        .env("LL_PID", std::process::id().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            let (_, line) = l.split_once("@@")?;
            let (name, verdict) = line.split_once(' ')?;
            ATTEMPTS
                .iter()
                .any(|(a, _)| *a == name)
                .then(|| (name.to_string(), verdict.to_string()))
        })
        .collect()
}

#[test]
fn landlock_alone_refuses_what_the_control_run_reaches() {
    assert!(
        landlock_abi().is_some_and(|a| a >= 6),
        "this test needs Landlock ABI 6 or later (signal and abstract-socket scoping), as CI's \
         kernel has; this one has {:?} (see `elastos doctor`)",
        landlock_abi()
    );
    let dir = tempfile::tempdir().unwrap();
    for sub in ["pkg", "tmp", "outside"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("pkg/file"), b"package").unwrap();
    std::fs::write(dir.path().join("outside/secret"), b"secret").unwrap();
    std::fs::copy("/bin/true", dir.path().join("outside/true")).unwrap();
    // Targets that stay open for both runs: a TCP listener (the kernel's backlog completes a
    // connection without an accept) and an abstract Unix socket.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap().to_string();
    let abstract_name = format!("elastos-landlock-test-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };

    let control = run_child(dir.path(), false, &tcp_addr, &abstract_name);
    for (name, _) in ATTEMPTS {
        assert_eq!(
            control.get(*name).map(String::as_str),
            Some("reached"),
            "the control run must reach {name}: {control:?}"
        );
    }
    for f in ["tmp/new", "tmp/true", "outside/new"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }

    let confined = run_child(dir.path(), true, &tcp_addr, &abstract_name);
    for (name, refused) in ATTEMPTS {
        let verdict = confined
            .get(*name)
            .unwrap_or_else(|| panic!("no verdict for {name}: {confined:?}"));
        if *refused {
            // Landlock's refusals are EACCES (paths, TCP) and EPERM (scopes), not a target
            // that happened to be missing.
            assert!(
                verdict.starts_with("blocked")
                    && (verdict.ends_with("(os error 13)") || verdict.ends_with("(os error 1)")),
                "Landlock alone let {name} through: {confined:?}"
            );
        } else {
            assert_eq!(verdict, "reached", "{name}: {confined:?}");
        }
    }
    assert!(!dir.path().join("outside/new").exists());
    drop((tcp, abstract_listener));
}
