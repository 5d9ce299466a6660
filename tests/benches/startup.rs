//! Capsule cold start, against a plain spawn and `bwrap --unshare-all` of a trivial program, in
//! one run (plain `fn main`; run by `scripts/bench` after building the release binaries).
//!
//! - plain: spawn `/bin/echo` and wait for its first byte on a pipe.
//! - bwrap: `bwrap --unshare-all` (user, mount, PID, IPC, UTS, net, cgroup namespaces) with a
//!   read-only `/usr`, `/proc` and `/dev`, running `/bin/echo`, until its first byte.
//!
//! Each baseline times the interval the capsule figure times: from the spawn to the program's
//! first word (a capsule's hello), not its exit and teardown. All four are interleaved, one
//! start of each per round, so that the machine's drift weighs on them alike.
//! - elastos: `echo` started by the supervisor — capsule-host spawned, cgroups entered, limits,
//!   uid switch, `no_new_privs`, Landlock, seccomp, exec — until its hello arrives on its
//!   socket, as the supervisor measures it ("ready on its socket X ms after spawn" in the log).
//!
//! - elastos WASM: the same `echo` as a wasm32-wasip1 module, its artifact cached (spawn,
//!   confine, load the sealed artifact, instantiate, hello); and wasmtime's own instantiate of
//!   the module in this process, for scale.
//!
//! Goal: elastos ≤ 1.5× bwrap; WASM ≤ 1.2× native (the ratio of the medians; the median of each
//! WASM start's ratio to the native start just before it is printed beside it, as a check on
//! drift). Same CPU pinning for all (see `pin_for_bench`).
//! `ELASTOS_BENCH_QUICK=1` starts 5 of each instead of 40.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use elastos_e2e::Node;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// From the spawn of `cmd` to the first byte it writes on its stdout (a pipe), in ms; then it
/// is waited for, untimed.
fn timed(cmd: &mut Command) -> f64 {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning");
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("its first byte");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let st = child.wait().expect("waiting");
    assert!(st.success(), "{cmd:?} failed: {st}");
    ms
}

fn main() {
    let pinning = elastos_e2e::pin_for_bench();
    let quick = std::env::var_os("ELASTOS_BENCH_QUICK").is_some();
    let n = if quick { 5 } else { 40 };

    let bwrap_bin = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("bwrap is not installed: scripts/setup installs Debian's bubblewrap");
    let bwrap = || {
        timed(Command::new(bwrap_bin).args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/echo",
            "ready",
        ]))
    };

    // A node as `scripts/up` makes one: its shell decides (echo asks it nothing to start).
    let node = Node::new();
    node.shell_first(&[], "");
    let up = node.run(&["up"]);
    assert_eq!(up.code, 0, "elastos up: {up:#?}");
    let echo = node.pack_first_party("echo");
    let echo = echo.to_str().expect("utf-8 path");
    // One WASM start first compiles the module into the cache (not measured).
    cold_start(&node, echo, "warm-wasm", "wasm");
    let (mut plain, mut bwrapped) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut cold = Vec::with_capacity(n);
    let mut cold_wasm = Vec::with_capacity(n);
    for i in 0..n {
        plain.push(timed(Command::new("/bin/echo").arg("ready")));
        bwrapped.push(bwrap());
        cold.push(cold_start(&node, echo, &format!("cold-{i}"), "native"));
        cold_wasm.push(cold_start(&node, echo, &format!("cold-wasm-{i}"), "wasm"));
    }
    let bwrap = bwrapped;
    let down = node.run(&["down", "--timeout", "5s"]);
    assert_eq!(down.code, 0, "{down:#?}");
    let module = elastos_e2e::first_party_capsule("echo").join("bin/echo.wasm");
    let instantiate = wasmtime_instantiate(&module, n);

    // Each WASM start against the native start just before it: drift over the run cancels.
    let paired = median(cold.iter().zip(&cold_wasm).map(|(n, w)| w / n).collect());
    let (p, b, e, w) = (
        median(plain),
        median(bwrap),
        median(cold),
        median(cold_wasm),
    );
    println!("capsule cold start, {n} of each, {pinning}:");
    println!("  plain spawn of /bin/echo, to its first byte       median {p:>7.2} ms");
    println!("  bwrap --unshare-all /bin/echo, to its first byte  median {b:>7.2} ms");
    println!(
        "  elastos echo, spawn to ready      median {e:>7.2} ms   {:.2}x bwrap (goal <= 1.5), {:.2}x plain",
        e / b,
        e / p
    );
    println!(
        "  elastos echo.wasm, cached module  median {w:>7.2} ms   {:.2}x native echo (goal <= 1.2); median of each pair's ratio {paired:.2}x",
        w / e
    );
    println!("  wasmtime instantiate of echo.wasm median {instantiate:>7.3} ms   (no process, no confinement)");
}

/// Starts echo on `substrate` as `name` (serving a namespace of its own), waits until the
/// supervisor logs it ready, stops it; the supervisor's "ready on its socket X ms" figure.
fn cold_start(node: &Node, echo: &str, name: &str, substrate: &str) -> f64 {
    let pattern = format!("localhost://echo/{name}/*");
    let out = node.run(&[
        "run",
        "-d",
        echo,
        "--name",
        name,
        "--substrate",
        substrate,
        "--",
        "--serve",
        &pattern,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    // The figure is the supervisor's own clock, so asking late costs it nothing, while asking
    // early would run `elastos logs` on the pinned CPU in the middle of the start it measures.
    std::thread::sleep(Duration::from_millis(60));
    let start = Instant::now();
    let ms = loop {
        let log = node.run(&["logs", name]);
        if let Some(ms) = log.stdout.lines().find_map(|l| {
            l.split_once("ready on its socket ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        }) {
            break ms;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never became ready: {log:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // One at a time: the next start does not share the CPU with this one.
    let stop = node.run(&["stop", name]);
    assert_eq!(stop.code, 0, "{stop:#?}");
    ms
}

/// wasmtime alone: instantiating the compiled module (WASI linked, the elastos imports as
/// stubs) in a fresh store, as capsule-host does, without running it. The same engine settings
/// as capsule-host's `wasm::config` (Cranelift, epoch interruption).
fn wasmtime_instantiate(module: &std::path::Path, n: usize) -> f64 {
    use wasmtime::{Config, Engine, Linker, Module, Store};
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::from_file(&engine, module).expect("compiling echo.wasm");
    let mut linker: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("WASI");
    linker
        .define_unknown_imports_as_traps(&module)
        .expect("stubs");
    let pre = linker.instantiate_pre(&module).expect("linking");
    let times: Vec<f64> = (0..n.max(20))
        .map(|_| {
            let start = Instant::now();
            let mut store = Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
            store.set_epoch_deadline(1 << 40);
            pre.instantiate(&mut store).expect("instantiating");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(times)
}
