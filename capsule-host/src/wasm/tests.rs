use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use super::*;

/// A guest that answers every frame with itself, until the stream ends.
pub const ECHO: &str = r#"(module
  (import "elastos" "recv_len" (func $recv_len (result i32)))
  (import "elastos" "recv" (func $recv (param i32 i32) (result i32)))
  (import "elastos" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (loop $next
      (local.set $n (call $recv_len))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return)))
      (if (i32.ne (call $recv (i32.const 4) (local.get $n)) (local.get $n)) (then (unreachable)))
      (i32.store (i32.const 0) (local.get $n))
      (if (i32.ne (call $send (i32.const 0) (i32.add (local.get $n) (i32.const 4))) (i32.const 0))
        (then (unreachable)))
      (br $next))))"#;

fn module(engine: &Engine, wat: &str) -> Module {
    let bytes = precompile(engine, wat.as_bytes()).unwrap();
    // SAFETY: precompiled just now by this engine.
    unsafe { Module::deserialize(engine, bytes) }.unwrap()
}

fn guest(limits: Limits) -> Guest {
    Guest {
        args: vec!["test".into()],
        limits,
        ..Default::default()
    }
}

/// Runs `wat` on its own thread with one end of a socketpair; the other end is returned.
fn start(wat: &str, limits: Limits) -> (UnixStream, std::thread::JoinHandle<Outcome>) {
    let engine = engine().unwrap();
    let m = module(&engine, wat);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let p = prepare(&engine, &m, &guest(limits), theirs).unwrap();
    (ours, std::thread::spawn(move || run(p)))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    wire::read_frame(s, wire::MAX_FRAME).unwrap().unwrap()
}

#[test]
fn frames_go_through_the_imports_unchanged_until_the_stream_ends() {
    let (mut s, guest) = start(ECHO, Limits::default());
    // A short frame after a long one: the host's reused buffer must not leak the long one's tail.
    for body in [&b"01234567"[..], &[7u8; 4096][..], &b"xy"[..], &[][..]] {
        s.write_all(&frame(body)).unwrap();
        assert_eq!(read_frame(&mut s), body);
    }
    drop(s);
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
}

#[test]
fn a_guest_that_grows_past_its_memory_limit_is_stopped_naming_the_limit() {
    let hog = r#"(module (memory (export "memory") 1)
      (func (export "_start") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#;
    let (_s, guest) = start(
        hog,
        Limits {
            memory: Some(4 << 20),
            ..Default::default()
        },
    );
    let out = guest.join().unwrap();
    assert_eq!(out.code(), EXIT_MEMORY, "{out:?}");
    assert_eq!(limit_of(out.code()), Some("memory"));
    let msg = out.message().unwrap();
    assert!(
        msg.contains("4194304") && msg.contains("[limits] memory"),
        "{msg}"
    );
}

#[test]
fn a_module_defining_more_tables_than_allowed_stops_with_the_tables_code() {
    let tables: String = (0..=MAX_TABLES).map(|_| "(table 1 funcref)").collect();
    let wat = format!(r#"(module {tables} (memory (export "memory") 1) (func (export "_start")))"#);
    let (_s, guest) = start(&wat, Limits::default());
    let out = guest.join().unwrap();
    assert_eq!(out.code(), EXIT_TABLES, "{out:?}");
    assert_eq!(limit_of(out.code()), Some("tables"));
    assert!(out.message().unwrap().contains("tables"), "{out:?}");
}

#[test]
fn a_guest_whose_budget_ticker_cannot_start_is_not_run() {
    // It would spin for ever: without its ticker nothing could stop it.
    let spin = r#"(module (memory (export "memory") 1)
      (func (export "_start") (loop $l (br $l))))"#;
    let engine = engine().unwrap();
    let m = module(&engine, spin);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let p = prepare(&engine, &m, &guest(Limits::default()), theirs).unwrap();
    let out = run_with(p, |_| Err(io::Error::from_raw_os_error(libc::EAGAIN)));
    assert_eq!(out.code(), EXIT_HOST, "{out:?}");
    assert!(out.message().unwrap().contains("ticker"), "{out:?}");
}

#[test]
fn a_module_whose_initial_memory_exceeds_the_limit_does_not_start() {
    let big = r#"(module (memory (export "memory") 256) (func (export "_start")))"#;
    let (_s, guest) = start(
        big,
        Limits {
            memory: Some(1 << 20),
            ..Default::default()
        },
    );
    assert_eq!(guest.join().unwrap().code(), EXIT_MEMORY);
}

/// A guest waiting for its next frame sleeps until the frame comes: the supervisor reading what
/// it sent (which tells the kernel there is room to write) does not wake it.
#[test]
fn a_waiting_guest_is_woken_by_its_next_frame_only() {
    const ROUNDS: i64 = 40;
    let engine = engine().unwrap();
    let m = module(&engine, ECHO);
    let (mut s, theirs) = UnixStream::pair().unwrap();
    let p = prepare(&engine, &m, &guest(Limits::default()), theirs).unwrap();
    // This thread's voluntary context switches so far.
    let switches = || {
        // SAFETY: getrusage(2) fills the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_THREAD reads the calling thread only.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
        u.ru_nvcsw
    };
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let guest = std::thread::spawn(move || {
        // SAFETY: gettid(2) has no arguments and cannot fail.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let before = switches();
        let out = run(p);
        (out, switches() - before)
    });
    let tid = tid_rx.recv().unwrap();
    // Each step happens while the guest is asleep (state S), as it would be waiting on a
    // supervisor that is slower than it: seen in /proc, not waited for by a guessed time.
    let asleep = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]);
            if state == Some(b'S') {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guest never slept: {stat}"
            );
            std::thread::yield_now();
        }
    };
    for i in 0..ROUNDS {
        asleep();
        s.write_all(&frame(&[i as u8; 8])).unwrap();
        asleep();
        assert_eq!(read_frame(&mut s), [i as u8; 8]);
    }
    drop(s);
    let (out, woken) = guest.join().unwrap();
    assert_eq!(out, Outcome::Exited(0));
    // One wake-up per frame; waiting in recv(2) it was two.
    assert!(
        woken < ROUNDS + ROUNDS / 2,
        "{woken} wake-ups in {ROUNDS} round trips"
    );
}

/// Waits for a frame, then spins.
const SPIN: &str = r#"(module
      (import "elastos" "recv_len" (func $recv_len (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (drop (call $recv_len)) (loop $l (br $l))))"#;

#[test]
fn a_guest_that_spins_after_taking_a_frame_is_stopped_but_waiting_costs_nothing() {
    let (mut s, guest) = start(
        SPIN,
        Limits {
            call_budget_ms: Some(50),
            ..Default::default()
        },
    );
    // Several budgets' worth of waiting in recv_len (time passing is the test): not counted.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!guest.is_finished(), "stopped while it waited");
    s.write_all(&frame(b"go")).unwrap();
    let out = guest.join().unwrap();
    assert_eq!(out, Outcome::CallBudget { ms: 50 });
    assert_eq!(out.code(), EXIT_CALL_BUDGET);
    assert!(out.message().unwrap().contains("call_budget_ms"));
}

#[test]
fn the_epoch_ticker_rests_while_the_guest_waits_and_ticks_while_it_runs() {
    let engine = engine().unwrap();
    let m = module(&engine, SPIN);
    let (mut s, theirs) = UnixStream::pair().unwrap();
    let limits = Limits {
        call_budget_ms: Some(50),
        ..Default::default()
    };
    let p = prepare(&engine, &m, &guest(limits), theirs).unwrap();
    let ticker = p.store.data().ticker.clone();
    let guest = std::thread::spawn(move || run(p));
    let ticks = || ticker.ticks.load(Ordering::Relaxed);
    // Waiting in recv_len (seen by the flag the ticker reads): twenty ticks' time then brings
    // at most the one that was under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ticker.waiting.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never waited"
        );
        std::thread::yield_now();
    }
    let before = ticks();
    // Time passing is what is tested here, not a wait for something to happen.
    std::thread::sleep(TICK * 20);
    let idle = ticks() - before;
    assert!(idle <= 1, "{idle} ticks while the guest waited");
    // Running: ticks again, until the 50 ms budget stops it.
    s.write_all(&frame(b"go")).unwrap();
    assert_eq!(guest.join().unwrap(), Outcome::CallBudget { ms: 50 });
    assert!(ticks() - before >= 4, "{} ticks", ticks() - before);
}

#[test]
fn a_bad_pointer_is_an_error_for_the_guest_not_a_host_crash() {
    // Exits with the number of calls that did not return FAULT.
    let bad = r#"(module
      (import "elastos" "send" (func $send (param i32 i32) (result i32)))
      (import "elastos" "recv" (func $recv (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func $not_fault (param i32) (result i32) (i32.ne (local.get 0) (i32.const -1)))
      (func (export "_start")
        (call $exit
          (i32.add
            (i32.add
              (call $not_fault (call $send (i32.const -16) (i32.const 100)))
              (call $not_fault (call $send (i32.const 65530) (i32.const 10))))
            (call $not_fault (call $send (i32.const 8) (i32.const -1)))))))"#;
    let (_s, guest) = start(bad, Limits::default());
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
}

#[test]
fn an_import_called_by_a_start_function_before_start_reaches_memory() {
    // The module's start function runs inside instantiation, before the host has kept the
    // guest's memory for its imports: `send` must find it by name then.
    let t = r#"(module
      (import "elastos" "send" (func $send (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "\02\00\00\00hi")
      (global $sent (mut i32) (i32.const -1))
      (func $early (global.set $sent (call $send (i32.const 0) (i32.const 6))))
      (start $early)
      (func (export "_start") (call $exit (i32.add (global.get $sent) (i32.const 7)))))"#;
    let (mut s, guest) = start(t, Limits::default());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_frame(&mut s), b"hi");
    assert_eq!(guest.join().unwrap(), Outcome::Exited(7));
}

/// Reads the clocks as WASI's `clock_time_get` and sends one frame: for ids 0, 1, 1 again, 2, 3,
/// 9 and -1, the errno (u32) and, where it is 0, the time (u64), 16 bytes each.
const CLOCKS: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "elastos" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $read (param $slot i32) (param $id i32)
    ;; slot n: errno at 8+16n, time at 16+16n
    (i32.store (i32.add (i32.const 8) (i32.mul (local.get $slot) (i32.const 16)))
      (call $clock (local.get $id) (i64.const 0)
        (i32.add (i32.const 16) (i32.mul (local.get $slot) (i32.const 16))))))
  (func (export "_start")
    (call $read (i32.const 0) (i32.const 0))
    (call $read (i32.const 1) (i32.const 1))
    (call $read (i32.const 2) (i32.const 1))
    (call $read (i32.const 3) (i32.const 2))
    (call $read (i32.const 4) (i32.const 3))
    (call $read (i32.const 5) (i32.const 9))
    (call $read (i32.const 6) (i32.const -1))
    (i32.store (i32.const 4) (i32.const 112))
    (drop (call $send (i32.const 4) (i32.const 116)))))"#;

#[test]
fn the_clocks_read_as_wasi_defines_them() {
    let began = Instant::now();
    let before = SystemTime::now();
    let (mut s, guest) = start(CLOCKS, Limits::default());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = read_frame(&mut s);
    let after = SystemTime::now();
    let up_to = began.elapsed();
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
    let errno = |n: usize| u32::from_le_bytes(body[16 * n..16 * n + 4].try_into().unwrap());
    let time = |n: usize| u64::from_le_bytes(body[16 * n + 8..16 * n + 16].try_into().unwrap());
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;

    assert_eq!([0, 1, 2].map(errno), [0, 0, 0]);
    assert!(
        (nanos(before)..=nanos(after)).contains(&time(0)),
        "realtime {}",
        time(0)
    );
    // Nanoseconds since the host set the guest up, which happened within this test.
    assert!(
        time(1) <= time(2),
        "monotonic went back: {} then {}",
        time(1),
        time(2)
    );
    assert!(
        time(2) <= up_to.as_nanos() as u64,
        "monotonic {} after {up_to:?}",
        time(2)
    );
    // CPU-time clocks are not offered; other ids are no clock.
    assert_eq!([3, 4].map(errno), [ERRNO_BADF as u32; 2]);
    assert_eq!([5, 6].map(errno), [ERRNO_INVAL as u32; 2]);
}

#[test]
fn a_clock_result_pointer_out_of_bounds_or_misaligned_traps() {
    for out in ["65532", "12", "-8"] {
        let t = format!(
            r#"(module
              (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
              (memory (export "memory") 1)
              (func (export "_start") (drop (call $clock (i32.const 1) (i64.const 0) (i32.const {out})))))"#
        );
        let (_s, guest) = start(&t, Limits::default());
        let out = guest.join().unwrap();
        assert_eq!(out.code(), EXIT_TRAP, "{out:?}");
        assert!(out.message().unwrap().contains("clock_time_get"), "{out:?}");
    }
}

#[test]
fn a_deadline_from_the_monotonic_clock_means_the_same_to_poll_oneoff() {
    // Reads the monotonic clock, sleeps in poll_oneoff until 50 ms past that reading (an
    // absolute deadline), reads it again and sends both readings.
    let sleeper = r#"(module
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "elastos" "send" (func $send (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 8)))
        ;; one subscription at 64: a clock (tag 0) on the monotonic clock (1), absolute (flags 1)
        (i32.store8 (i32.const 72) (i32.const 0))
        (i32.store (i32.const 80) (i32.const 1))
        (i64.store (i32.const 88) (i64.add (i64.load (i32.const 8)) (i64.const 50000000)))
        (i64.store (i32.const 96) (i64.const 0))
        (i32.store16 (i32.const 104) (i32.const 1))
        (if (i32.ne (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 192)) (i32.const 0))
          (then (unreachable)))
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 16)))
        (i32.store (i32.const 4) (i32.const 16))
        (drop (call $send (i32.const 4) (i32.const 20)))))"#;
    let (mut s, guest) = start(sleeper, Limits::default());
    // Were the two clocks' origins apart by the machine's uptime, the guest would sleep for it.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = wire::read_frame(&mut s, wire::MAX_FRAME)
        .expect("the guest did not wake from a 50 ms deadline within 10 s: its clock and poll_oneoff's disagree")
        .unwrap();
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
    let t0 = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let t1 = u64::from_le_bytes(body[8..16].try_into().unwrap());
    // Woken early, it would be before its deadline: the origins differ the other way.
    assert!(
        t1 - t0 >= 50_000_000,
        "slept {} ns of a 50 ms deadline",
        t1 - t0
    );
}

#[test]
fn recv_without_an_announced_frame_or_with_too_little_room_is_refused() {
    // recv before recv_len: NO_FRAME (exit 6); then a 16-byte frame into 8 bytes: SPACE (7),
    // still pending: a second recv with room gets it (exit 16).
    let t = r#"(module
      (import "elastos" "recv_len" (func $recv_len (result i32)))
      (import "elastos" "recv" (func $recv (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (if (i32.ne (call $recv (i32.const 0) (i32.const 64)) (i32.const -6)) (then (call $exit (i32.const 1))))
        (if (i32.ne (call $recv_len) (i32.const 16)) (then (call $exit (i32.const 2))))
        (if (i32.ne (call $recv (i32.const 0) (i32.const 8)) (i32.const -7)) (then (call $exit (i32.const 3))))
        (call $exit (call $recv (i32.const 0) (i32.const 64)))))"#;
    let (mut s, guest) = start(t, Limits::default());
    s.write_all(&frame(&[1; 16])).unwrap();
    assert_eq!(guest.join().unwrap(), Outcome::Exited(16));
}

#[test]
fn a_sent_frame_is_checked_against_its_prefix_and_the_frame_limit() {
    assert_eq!(check_frame(&frame(b"abcdefgh")), Ok(()));
    assert_eq!(check_frame(b"abc"), Err(abi::BAD_FRAME));
    let mut lying = frame(b"abcdefgh");
    lying[0] = 9;
    assert_eq!(check_frame(&lying), Err(abi::BAD_FRAME));
    let mut huge = (wire::MAX_FRAME + 1).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 8]);
    assert_eq!(check_frame(&huge), Err(abi::TOO_LONG));
    assert_eq!(span(0, 10, 10), Some(0..10));
    assert_eq!(span(1, 10, 10), None);
    assert_eq!(span(-1, 2, 1 << 20), None);
    assert_eq!(span(8, -1, 1 << 20), None);
}

#[test]
fn an_oversized_frame_from_the_supervisor_ends_the_stream_for_the_guest() {
    let t = r#"(module
      (import "elastos" "recv_len" (func $recv_len (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (if (i32.ne (call $recv_len) (i32.const -2)) (then (call $exit (i32.const 1))))
        (if (i32.ne (call $recv_len) (i32.const -2)) (then (call $exit (i32.const 2))))))"#;
    let (mut s, guest) = start(t, Limits::default());
    s.write_all(&(wire::MAX_FRAME + 1).to_le_bytes()).unwrap();
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
}

#[test]
fn a_guest_cannot_pass_its_own_exit_for_a_limit() {
    for (code, want) in [(0, 0), (7, 7), (121, 1), (122, 1), (125, 125)] {
        let t = format!(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (func (export "_start") (call $exit (i32.const {code}))))"#
        );
        let (_s, running) = start(&t, Limits::default());
        let out = running.join().unwrap();
        assert_eq!(out.code(), want, "{out:?}");
        assert_eq!(limit_of(out.code()), None);
    }
}

#[test]
fn a_module_without_start_is_not_a_command() {
    let (_s, running) = start(
        r#"(module (memory (export "memory") 1))"#,
        Limits::default(),
    );
    let out = running.join().unwrap();
    assert_eq!(out.code(), 126, "{out:?}");
    assert!(out.message().unwrap().contains("_start"));
}

#[test]
fn a_trap_and_a_missing_import_are_told_apart_from_limits() {
    let trap = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
    let (_s, running) = start(trap, Limits::default());
    let out = running.join().unwrap();
    assert_eq!(out.code(), EXIT_TRAP, "{out:?}");
    assert_eq!(limit_of(out.code()), None);

    let engine = engine().unwrap();
    let m = module(
        &engine,
        r#"(module (import "env" "system" (func)) (func (export "_start")))"#,
    );
    let (_a, b) = UnixStream::pair().unwrap();
    assert!(matches!(
        prepare(&engine, &m, &guest(Limits::default()), b),
        Err(WasmError::Link(_))
    ));
}

fn memfd(bytes: &[u8], seals: i32) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(
        "test-module",
        nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING | nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .unwrap();
    let mut f = File::from(fd);
    f.write_all(bytes).unwrap();
    if seals != 0 {
        // SAFETY: fcntl with integer arguments on a descriptor this test owns.
        assert_eq!(
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) },
            0
        );
    }
    OwnedFd::from(f)
}

#[test]
fn a_module_descriptor_without_every_seal_is_refused() {
    let engine = engine().unwrap();
    let bytes = precompile(&engine, ECHO.as_bytes()).unwrap();
    let loose = memfd(&bytes, 0).into_raw_fd();
    let e = sealed_module(loose).unwrap_err().to_string();
    assert!(
        e.contains("missing seals: write, grow, shrink, seal"),
        "{e}"
    );
    let partly = memfd(&bytes, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW).into_raw_fd();
    let e = sealed_module(partly).unwrap_err().to_string();
    assert!(e.contains("missing seals: write, seal"), "{e}");
    let file = tempfile::tempfile().unwrap().into_raw_fd();
    assert!(matches!(
        sealed_module(file),
        Err(WasmError::Unsealed { .. })
    ));
    for fd in [loose, partly, file] {
        // SAFETY: descriptors this test opened and sealed_module refused to take.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

#[test]
fn a_sealed_memfd_loads_and_runs() {
    // Compiled as `capsule-host compile` does, run by the runner's engine (no compiler).
    let bytes = precompile(&engine().unwrap(), ECHO.as_bytes()).unwrap();
    let engine = runner().unwrap();
    let fd = memfd(&bytes, REQUIRED_SEALS).into_raw_fd();
    let m = load(&engine, sealed_module(fd).unwrap()).unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let p = prepare(&engine, &m, &guest(Limits::default()), theirs).unwrap();
    let guest = std::thread::spawn(move || run(p));
    ours.write_all(&frame(b"sealed!!")).unwrap();
    assert_eq!(read_frame(&mut ours), b"sealed!!");
    drop(ours);
    assert_eq!(guest.join().unwrap(), Outcome::Exited(0));
}

#[test]
fn an_artifact_of_another_engine_configuration_is_refused() {
    let mut other = Config::new();
    other.epoch_interruption(false);
    let other = Engine::new(&other).unwrap();
    let bytes = other.precompile_module(ECHO.as_bytes()).unwrap();
    let engine = engine().unwrap();
    assert_ne!(compatibility_hash(&engine), compatibility_hash(&other));
    for engine in [engine, runner().unwrap()] {
        let fd = memfd(&bytes, REQUIRED_SEALS).into_raw_fd();
        assert!(matches!(
            load(&engine, sealed_module(fd).unwrap()),
            Err(WasmError::Load(_))
        ));
    }
}

#[test]
fn the_hosts_own_threads_and_descriptors_come_on_top_of_the_guests_limits() {
    let tight = host_limits(&Limits {
        processes: Some(1),
        open_files: Some(5),
        memory: Some(1 << 20),
        ..Default::default()
    });
    assert_eq!(tight.processes, Some(1 + HOST_THREADS as u32));
    assert_eq!(tight.open_files, Some(5 + HOST_OPEN_FILES as u32));
    // Only those two: the guest's memory stays its linear memory's limit.
    assert_eq!(tight.memory, Some(1 << 20));
    let defaults = host_limits(&Limits::default());
    assert_eq!(
        defaults.processes,
        Some((crate::confine::DEFAULT_PROCESSES + HOST_THREADS) as u32)
    );
    assert_eq!(
        defaults.open_files,
        Some((crate::confine::DEFAULT_OPEN_FILES + HOST_OPEN_FILES) as u32)
    );
}
