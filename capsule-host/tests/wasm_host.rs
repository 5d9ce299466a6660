//! The WASM host as the supervisor drives it: `capsule-host compile`, the artifact in a sealed
//! memfd at fd 5, and `capsule-host --substrate wasm` under its full confinement — its own
//! seccomp list, Landlock, limits — talking frames on fd 3 and reporting on fd 4.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

const HOST: &str = env!("CARGO_BIN_EXE_capsule-host");

const ECHO: &str = r#"(module
  (import "elastos" "recv_len" (func $recv_len (result i32)))
  (import "elastos" "recv" (func $recv (param i32 i32) (result i32)))
  (import "elastos" "send" (func $send (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "echo ready\n")
  (func (export "_start") (local $n i32)
    ;; A 1 ms sleep first (a clock subscription at 4096, its event at 4160): WASI's async
    ;; runtime starts its threads and drivers under the seccomp list.
    (i32.store8 (i32.const 4104) (i32.const 0))
    (i32.store (i32.const 4112) (i32.const 1))
    (i64.store (i32.const 4120) (i64.const 1000000))
    (if (i32.ne (call $poll (i32.const 4096) (i32.const 4160) (i32.const 1) (i32.const 4200)) (i32.const 0))
      (then unreachable))
    ;; iovec at 2048: {ptr 1024, len 11}; written count at 2056
    (i32.store (i32.const 2048) (i32.const 1024))
    (i32.store (i32.const 2052) (i32.const 11))
    (drop (call $fd_write (i32.const 2) (i32.const 2048) (i32.const 1) (i32.const 2056)))
    (loop $next
      (local.set $n (call $recv_len))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return)))
      (drop (call $recv (i32.const 4) (local.get $n)))
      (i32.store (i32.const 0) (local.get $n))
      (drop (call $send (i32.const 0) (i32.add (local.get $n) (i32.const 4))))
      (br $next))))"#;

/// `capsule-host compile` on `wat` (on its stdin): the artifact and the engine hash it printed
/// before it (its first line).
fn compile(wat: &str) -> (Vec<u8>, String) {
    let o = compile_output(wat.as_bytes());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nl = o.stdout.iter().position(|b| *b == b'\n').unwrap();
    (
        o.stdout[nl + 1..].to_vec(),
        String::from_utf8(o.stdout[..nl].to_vec()).unwrap(),
    )
}

/// `capsule-host compile` with `module` written to its stdin (from a thread of its own: the
/// compiler may stop reading), all it said.
fn compile_output(module: &[u8]) -> std::process::Output {
    let mut child = Command::new(HOST)
        .arg("compile")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let module = module.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&module);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

/// The compiler reads nothing but its stdin: a path argument is a usage error, and a module
/// larger than any package's is refused.
#[test]
fn the_compiler_takes_its_module_on_stdin_only() {
    let o = Command::new(HOST)
        .args(["compile", "/etc/passwd", "/tmp/out"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = compile_output(&vec![0u8; 65 << 20]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("larger than"),
        "{o:?}"
    );
}

fn memfd(bytes: &[u8], seal: bool) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(
        "module",
        nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING | nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .unwrap();
    let mut f = File::from(fd);
    f.write_all(bytes).unwrap();
    if seal {
        let seals = nix::libc::F_SEAL_WRITE
            | nix::libc::F_SEAL_GROW
            | nix::libc::F_SEAL_SHRINK
            | nix::libc::F_SEAL_SEAL;
        // SAFETY: fcntl with integer arguments on a descriptor this test owns.
        assert_eq!(
            unsafe { nix::libc::fcntl(f.as_raw_fd(), nix::libc::F_ADD_SEALS, seals) },
            0
        );
    }
    OwnedFd::from(f)
}

struct Running {
    child: Child,
    socket: UnixStream,
    status: BufReader<File>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// capsule-host for a WASM capsule, as the supervisor starts it (as root: its own uid).
fn start(module: OwnedFd, limits: &str) -> Running {
    start_with(module, limits, None)
}

fn start_with(module: OwnedFd, limits: &str, state: Option<&std::path::Path>) -> Running {
    let root = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    // Close-on-exec: no other test's capsule-host may hold it open.
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut cmd = Command::new(HOST);
    cmd.args([
        "--name",
        "wasmtest",
        "--entry",
        "bin/m.wasm",
        "--substrate",
        "wasm",
    ])
    .arg("--root")
    .arg(root.path())
    .arg("--tmp")
    .arg(tmp.path())
    .arg("--parent-pid")
    .arg(std::process::id().to_string())
    .args(["--limits", limits]);
    if nix::unistd::geteuid().is_root() {
        cmd.args(["--uid", "200777"]);
    }
    if let Some(dir) = state {
        cmd.arg("--state").arg(dir);
    }
    // Whatever this machine lacks (a test may run unprivileged); ps would show it. A state
    // directory's quota is the supervisor's to mount: none here.
    for layer in [
        "namespaces",
        "private-root",
        "uid",
        "cgroups",
        "storage-quota",
    ] {
        cmd.args(["--allow-without", layer]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fds = [theirs.as_raw_fd(), status_w.as_raw_fd(), module.as_raw_fd()];
    // SAFETY: only dup/dup2/close between fork and exec, on descriptors this test owns.
    unsafe {
        cmd.pre_exec(move || {
            let spare: Vec<i32> = fds.iter().map(|fd| nix::libc::dup(*fd)).collect();
            for (i, fd) in spare.iter().enumerate() {
                if *fd < 0 || nix::libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in spare {
                if !(3..=5).contains(&fd) {
                    nix::libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop((theirs, status_w, module));
    Running {
        child,
        socket: ours,
        status: BufReader::new(File::from(status_r)),
        _dirs: (root, tmp),
    }
}

fn status_line(r: &mut Running) -> serde_json::Value {
    let mut line = String::new();
    r.status.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("status: {line:?}"))
}

fn finish(mut r: Running) -> (i32, String) {
    let code = r.child.wait().unwrap().code().unwrap_or(-1);
    let mut err = String::new();
    r.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn compile_prints_the_hash_the_runner_checks_against() {
    let (artifact, hash) = compile(ECHO);
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(!artifact.is_empty());
    let o = Command::new(HOST).arg("compat-hash").output().unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), hash);
}

#[test]
fn compile_refuses_bytes_that_are_no_module() {
    let o = compile_output(b"\0asm\x01\0\0\0garbage");
    assert_eq!(o.status.code(), Some(1));
    // Nothing on stdout: no engine hash, no artifact, for what does not compile.
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not compile"));
}

#[test]
fn a_wasm_capsule_serves_frames_under_the_wasm_hosts_confinement() {
    let (artifact, _) = compile(ECHO);
    let mut r = start(memfd(&artifact, true), "{}");
    let started = status_line(&mut r);
    assert_eq!(started["event"], "started", "{started}");
    let layers = started["layers"].to_string();
    for layer in ["seccomp", "landlock", "no-new-privs"] {
        assert!(layers.contains(layer), "{layers}");
    }
    for body in [&b"hello wasm frames"[..], &[9u8; 8000][..]] {
        r.socket.write_all(&frame(body)).unwrap();
        let got = elastos_schema::wire::read_frame(&mut r.socket, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(got, body);
    }
    r.socket.shutdown(std::net::Shutdown::Both).unwrap();
    let (code, err) = finish(r);
    assert_eq!(code, 0, "{err}");
    // WASI stderr is the capsule's stderr, the log.
    assert!(err.contains("echo ready"), "{err}");
}

#[test]
fn a_memory_hog_is_stopped_and_its_limit_reported_on_the_status_pipe() {
    let hog = r#"(module (memory (export "memory") 1)
      (func (export "_start") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#;
    let (artifact, _) = compile(hog);
    let mut r = start(memfd(&artifact, true), r#"{"memory":8388608}"#);
    assert_eq!(status_line(&mut r)["event"], "started");
    let limit = status_line(&mut r);
    assert_eq!(limit["event"], "limit", "{limit}");
    assert_eq!(limit["limit"], "memory");
    assert_eq!(limit["code"], 122);
    let (code, err) = finish(r);
    assert_eq!(code, 122);
    assert!(
        err.contains("over its limit of memory") && err.contains("[limits] memory"),
        "{err}"
    );
}

#[test]
fn a_guest_spinning_after_a_call_is_stopped_by_its_budget() {
    let spin = r#"(module
      (import "elastos" "recv_len" (func $recv_len (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (drop (call $recv_len)) (loop $l (br $l))))"#;
    let (artifact, _) = compile(spin);
    let mut r = start(memfd(&artifact, true), r#"{"call_budget_ms":100}"#);
    assert_eq!(status_line(&mut r)["event"], "started");
    r.socket.write_all(&frame(b"work")).unwrap();
    assert_eq!(status_line(&mut r)["limit"], "call_budget_ms");
    let (code, err) = finish(r);
    assert_eq!(code, 121);
    assert!(err.contains("call_budget_ms = 100"), "{err}");
}

#[test]
fn an_unsealed_module_is_refused_before_anything_runs() {
    let (artifact, _) = compile(ECHO);
    let mut r = start(memfd(&artifact, false), "{}");
    let st = status_line(&mut r);
    assert_eq!(st["event"], "error", "{st}");
    assert_eq!(st["stage"], "module");
    assert!(
        st["message"].as_str().unwrap().contains("missing seals"),
        "{st}"
    );
    assert_eq!(finish(r).0, 125);
}

/// Creates `/state/note` through the guest's first preopened directory (WASI fd 3) and writes
/// "kept" into it; exits with the errno of whichever call failed.
const WRITE_STATE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "note")
  (data (i32.const 16) "kept")
  (func (export "_start") (local $e i32)
    ;; fd 3, no dirflags, "note", O_CREAT|O_TRUNC, rights fd_write, new fd at 64
    (local.set $e (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4)
      (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 64)))
    (if (local.get $e) (then (call $exit (local.get $e))))
    (i32.store (i32.const 32) (i32.const 16))
    (i32.store (i32.const 36) (i32.const 4))
    (call $exit (call $write (i32.load (i32.const 64)) (i32.const 32) (i32.const 1) (i32.const 48)))))"#;

#[test]
fn the_state_directory_is_the_guests_only_directory() {
    let (artifact, _) = compile(WRITE_STATE);
    let state = tempfile::tempdir().unwrap();
    if nix::unistd::geteuid().is_root() {
        // The capsule's uid owns its state directory, as the supervisor arranges.
        nix::unistd::chown(
            state.path(),
            Some(nix::unistd::Uid::from_raw(200777)),
            Some(nix::unistd::Gid::from_raw(200777)),
        )
        .unwrap();
    }
    let mut r = start_with(memfd(&artifact, true), "{}", Some(state.path()));
    assert_eq!(status_line(&mut r)["event"], "started");
    let (code, err) = finish(r);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(state.path().join("note")).unwrap(), b"kept");

    // Without the grant there is no directory at all: WASI's EBADF (8) for fd 3.
    let mut r = start(memfd(&artifact, true), "{}");
    assert_eq!(status_line(&mut r)["event"], "started");
    assert_eq!(finish(r).0, 8);
}
