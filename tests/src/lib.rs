//! Helpers for the end-to-end tests: a [`Node`] is a temporary `$ELASTOS_HOME` plus a way to run
//! the real `elastos` binary against it, so tests never share state with each other or the user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `elastos` binary under test: `$ELASTOS_BIN`, else the one built beside this test binary.
pub fn elastos_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ELASTOS_BIN") {
        return PathBuf::from(p);
    }
    // The test executable lives in target/<profile>/deps/; the binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let bin = dir.join("elastos");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build --workspace`), or set ELASTOS_BIN",
        bin.display()
    );
    bin
}

/// A first-party capsule as `scripts/build-capsules` assembles it:
/// `<target dir>/capsules/<name>/` (the target directory of this test binary).
pub fn first_party_capsule(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary is in <target>/<profile>/deps");
    let dir = target.join("capsules").join(name);
    assert!(
        dir.join("capsule.toml").exists(),
        "{} does not exist: build the first-party capsules first (`scripts/build-capsules`; scripts/test does)",
        dir.display()
    );
    dir
}

/// `token issue` arguments of the tests' usual token: capsule `notes` may read
/// `localhost://storage/notes/*` for an hour.
pub const NOTES_READ: &[&str] = &[
    "--capsule",
    "notes",
    "--resource",
    "localhost://storage/notes/*",
    "--action",
    "read",
    "--ttl",
    "1h",
];

/// The policy the end-to-end tests give a node that runs development packages (publisher
/// `dev`, anyone's key): every capsule is allowed what it asks for, for an hour. It widens
/// nothing the supervisor holds: each grant stays within the requester's own manifest's
/// `requests`, never `admin` nor provide (a first-party rule), so a capsule gets exactly what its
/// manifest requests, as the development policy gave it. The prompts, denials and the shipped
/// policy have tests of their own (`e2e/shell.rs`, `e2e/terminal.rs`).
pub const GRANT_REQUESTS: &str = "format = 1\n\n[[rule]]\nresource = \"*\"\ndecision = \"allow\"\nttl = \"1h\"\nreason = \"the end-to-end tests: every capsule gets what its manifest requests\"\n";

/// One node: a private `$ELASTOS_HOME` in a temporary directory.
pub struct Node {
    pub dir: tempfile::TempDir,
    /// Run by this uid (and gid of the same number) instead of the test's own.
    user: Option<u32>,
}

/// What one run of `elastos` gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        &self.stdout
    }
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(self.code, want, "expected exit {want}, got {self:#?}");
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub fn new() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
            user: None,
        }
    }

    /// A node whose home is in a temporary directory under `parent` (for a benchmark that
    /// wants it on a given disk).
    pub fn new_in(parent: &Path) -> Node {
        std::fs::create_dir_all(parent).expect("parent dir");
        Node {
            dir: tempfile::tempdir_in(parent).expect("tempdir"),
            user: None,
        }
    }

    /// A node prepared by [`Node::grant_requests`] with no more settings.
    pub fn granting() -> Node {
        let node = Node::new();
        node.grant_requests(&[], "");
        node
    }

    /// Writes this node's `config.toml` as `scripts/up` does: the first-party shell, packed by
    /// this node, first in `[supervisor] default_capsules`, then `defaults`; `settings` follows
    /// that line, so it may go on with more `[supervisor]` keys and then other tables. The
    /// decider is left to its default, the shell, and the policy to the node's.
    pub fn shell_first(&self, defaults: &[&Path], settings: &str) {
        let shell = self.pack_first_party("shell");
        let list = std::iter::once(shell.as_path())
            .chain(defaults.iter().copied())
            .map(|p| format!("{:?}", p.to_str().expect("utf-8 path")))
            .collect::<Vec<_>>()
            .join(", ");
        // Packing made the home (0700, with the node's key).
        std::fs::write(
            self.home().join("config.toml"),
            format!("format = 1\n[supervisor]\ndefault_capsules = [{list}]\n{settings}"),
        )
        .expect("config.toml");
        if let Some(uid) = self.user {
            chown_tree(&self.home(), uid);
        }
    }

    /// [`Node::shell_first`], the node's policy [`GRANT_REQUESTS`]
    /// (`$ELASTOS_HOME/policies/default.toml`): for a node that runs development packages.
    pub fn grant_requests(&self, defaults: &[&Path], settings: &str) {
        self.shell_first(defaults, settings);
        let policies = self.home().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        std::fs::write(policies.join("default.toml"), GRANT_REQUESTS).expect("the policy");
        if let Some(uid) = self.user {
            chown_tree(&policies, uid);
        }
    }

    /// A node whose every command runs as the normal user `uid` (a test run by root plays a
    /// user this way). The user gets copies of the binaries and of `capsules` (first-party
    /// capsule directories, by name), since the build directory may be out of its reach, and
    /// owns the node's directory.
    pub fn run_by(uid: u32, capsules: &[&str]) -> Node {
        let node = Node {
            dir: tempfile::tempdir().expect("tempdir"),
            user: Some(uid),
        };
        let bin = node.dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let elastos = elastos_bin();
        for name in ["elastos", "capsule-host"] {
            std::fs::copy(elastos.with_file_name(name), bin.join(name)).expect("copying a binary");
        }
        for name in capsules {
            copy_tree(&first_party_capsule(name), &node.scratch().join(name));
        }
        chown_tree(node.dir.path(), uid);
        node
    }

    /// `$ELASTOS_HOME` of this node (not created until a command needs it).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A scratch directory for test files, outside the home.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).expect("scratch dir");
        if let Some(uid) = self.user {
            chown_tree(&p, uid);
        }
        p
    }

    pub fn command(&self) -> Command {
        let bin = match self.user {
            Some(_) => self.dir.path().join("bin").join("elastos"),
            None => elastos_bin(),
        };
        let mut c = Command::new(bin);
        if let Some(uid) = self.user {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(uid);
        }
        c.env_clear()
            .env("ELASTOS_HOME", self.home())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .current_dir(self.scratch())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command()
            .args(args)
            .output()
            .expect("running elastos")
            .into()
    }

    /// Packs a first-party capsule with this node's key (so it is first-party here) and returns
    /// the package's path.
    pub fn pack_first_party(&self, name: &str) -> PathBuf {
        let out = self.scratch().join(format!("{name}.capsule"));
        let dir = match self.user {
            Some(_) => self.scratch().join(name),
            None => first_party_capsule(name),
        };
        let run = self.run(&[
            "capsule",
            "pack",
            dir.to_str().expect("utf-8 path"),
            "-o",
            out.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(run.code, 0, "packing {name}: {run:#?}");
        out
    }

    /// Runs with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning elastos");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
        child
            .wait_with_output()
            .expect("waiting for elastos")
            .into()
    }

    /// The node's DID (creating the identity).
    pub fn did(&self) -> String {
        self.run(&["identity"]).ok().trim().to_string()
    }

    /// `token check TOKEN --as CALLER --resource RESOURCE --action ACTION` (a dry run).
    pub fn check(&self, token: &str, caller: &str, resource: &str, action: &str) -> Run {
        self.run(&[
            "token",
            "check",
            token,
            "--as",
            caller,
            "--resource",
            resource,
            "--action",
            action,
        ])
    }

    /// Issues a token; returns it.
    pub fn issue(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "issue"];
        args.extend_from_slice(extra);
        self.run(&args).ok().trim().to_string()
    }

    /// Writes a minimal native capsule directory and returns its path.
    pub fn capsule_dir(&self, name: &str) -> PathBuf {
        let dir = self.scratch().join(format!("capsule-{name}"));
        std::fs::create_dir_all(dir.join("bin")).expect("capsule dir");
        std::fs::write(
            dir.join("capsule.toml"),
            format!(
                "format = 1\nname = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"test capsule\"\nsubstrate = \"native\"\n\n[entrypoint]\nnative = \"bin/{name}\"\n"
            ),
        )
        .expect("manifest");
        std::fs::write(dir.join("bin").join(name), b"#!/bin/sh\necho hi\n").expect("entry");
        set_mode(&dir.join("bin").join(name), 0o755);
        std::fs::write(dir.join("README"), b"a test capsule\n").expect("readme");
        dir
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copying a directory");
    for e in std::fs::read_dir(from).expect("reading a directory") {
        let e = e.expect("a directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("a file type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copying a file");
        }
    }
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).expect("reading a directory") {
            chown_tree(&e.expect("a directory entry").path(), uid);
        }
    }
}

/// For benchmarks: pins this process (and so all it starts) as `ELASTOS_BENCH_CPU` says; describes it.
pub fn pin_for_bench() -> String {
    let want = std::env::var("ELASTOS_BENCH_CPU").unwrap_or_else(|_| "0".into());
    if want == "all" {
        return "no CPU pinning".into();
    }
    let cpu: usize = want
        .parse()
        .unwrap_or_else(|_| panic!("ELASTOS_BENCH_CPU={want}: a CPU number or `all`"));
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("a CPU number this machine has");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
    format!("every process pinned to CPU {cpu}")
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
