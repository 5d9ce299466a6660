//! The cost of a mediated call, against the physical baseline measured in the same run
//! (plain `fn main`; run by `scripts/bench`, which builds the release binaries and capsules first).
//!
//! - Baseline: a raw Unix-socket round trip of length-prefixed frames, 1 hop (client ↔ server)
//!   and 2 hops (client ↔ forwarding process ↔ server), at concurrency 1 and 32. The helper
//!   processes are this same executable, re-run with a role. Every process of the baseline
//!   blocks in read(2), the plain way. The guest SDK waits in poll(2) instead, which spares a
//!   capsule the wake-up Linux gives a reader of a Unix stream socket each time its peer
//!   consumes what it sent; so the 2-hop baseline is also run with every process waiting in
//!   poll(2), and the mediated figures are given against both.
//! - Mediated: `ping` → supervisor → `echo`, the real capsules under a real `elastos up` (its
//!   shell deciding, with the shipped policy, as on every node: first party is allowed), at
//!   concurrency 1 and 32. Goal: p50 ≤ 1.5× and p99 ≤ 3× the 2-hop baseline.
//! - WASM: `ping` built for wasm32-wasip1 → supervisor → the native `echo`, at concurrency 1,
//!   against the native `ping`, in 10 pairs of half-length runs whose order alternates (native
//!   first, then WASM first), so that neither the machine's drift nor going second favours one;
//!   the ratio is the median of the pairs'. Goal: p50 ≤ 1.2×.
//! - The baselines and the mediated calls are measured side by side in 5 rounds (after an
//!   unmeasured warm-up run of ping), so that the machine's drift between them does not count:
//!   each figure is the median of its rounds, each ratio the median of its rounds' ratios.
//! - Scale: the call cost with 200 echo capsules running against 2 (goal ≤ 1.1×), and the
//!   supervisor's RSS idle (its shell running) and with 200 capsules (goal ≤ 15 MiB / ≤ 40 MiB).
//! - Audit volume: what the audit log grows by per second of calls at concurrency 8, with calls
//!   alike summed up (the default) and with `[audit] per_call = true`, on two nodes in
//!   alternating pairs of runs, and the p50 of each. Goal: ≤ 1 MiB/s summed up, with a p50 no
//!   worse than per call's.
//! - Token requests: `requestToken` with the shell deciding, against a mediated call on a strict
//!   node (goal p50 ≤ 2×); and on that node, idle with the shell running, the supervisor's RSS
//!   (goal ≤ 15 MiB) and, apart, the shell's own memory, after each round of requests.
//!
//! The same CPU pinning for all: this process pins itself to one CPU before it starts anything,
//! and every process it starts (the helpers, the supervisor, capsule-host, the capsules)
//! inherits that. On a small virtual machine unpinned figures swing by 10× from run to run with
//! where the scheduler happens to place each process; pinned, they repeat.
//! `ELASTOS_BENCH_CPU=N` picks the CPU (default 0); `ELASTOS_BENCH_CPU=all` pins nothing.
//! `ELASTOS_BENCH_QUICK=1` runs briefly (fewer calls, 20 capsules instead of 200).
//! `ELASTOS_BENCH_ONLY=flood` measures only the flood figure, in 5 rounds;
//! `ELASTOS_BENCH_ONLY=tokens` only the token requests and the node with the shell idle.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use elastos_e2e::Node;

/// Bytes of payload in every call: ping's default.
const PAYLOAD: usize = 64;
/// Where the helpers learn the answer frame's size, measured in this run.
const ANSWER_BYTES_ENV: &str = "ELASTOS_BENCH_ANSWER_BYTES";

/// The frames a mediated call puts on the wire, built here as ping and the supervisor build
/// them: the call (target, a real token of the node's, the payload) and its answer. The raw
/// baseline sends frames of exactly these sizes.
fn wire_sizes(node: &Node, target: &str) -> (usize, usize) {
    let issued = node.run(&[
        "token",
        "issue",
        "--capsule",
        "ping-bench",
        "--resource",
        "localhost://echo/*",
        "--action",
        "read",
        "--ttl",
        "1h",
        "--json",
    ]);
    assert_eq!(issued.code, 0, "{issued:#?}");
    let token = elastos::token::text_to_bytes(issued.json()["token"].as_str().expect("token"))
        .expect("token bytes");
    let payload = vec![0x5au8; PAYLOAD];
    let encode = |build: &dyn Fn(elastos_schema::wire_capnp::frame::Builder)| {
        let mut m = capnp::message::Builder::new_default();
        build(m.init_root());
        elastos_schema::wire::encode(&m).expect("frame").len()
    };
    let call = encode(&|f| {
        let mut c = f.init_call();
        c.set_id(1 << 20);
        c.set_target(target);
        c.set_action(elastos_schema::token_capnp::Action::Read);
        c.set_token(&token);
        c.set_payload(&payload);
    });
    let answer = encode(&|f| {
        let mut a = f.init_answer();
        a.set_id(1 << 20);
        a.set_status(elastos_schema::wire_capnp::Status::Ok);
        a.set_payload(&payload);
    });
    (call, answer)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--role-server") => return serve(Path::new(&args[2]), Wait::Read),
        Some("--role-relay") => return relay(Path::new(&args[2]), Path::new(&args[3]), Wait::Read),
        Some("--role-server-poll") => return serve(Path::new(&args[2]), Wait::Poll),
        Some("--role-relay-poll") => {
            return relay(Path::new(&args[2]), Path::new(&args[3]), Wait::Poll)
        }
        _ => {}
    }
    let pinning = elastos_e2e::pin_for_bench();
    let quick = std::env::var_os("ELASTOS_BENCH_QUICK").is_some();
    let calls: u64 = if quick { 2_000 } else { 20_000 };
    let many: usize = if quick { 20 } else { 200 };

    let rounds: usize = if quick { 1 } else { 5 };

    let scratch = tempfile::tempdir().expect("scratch dir");
    // On the disk the audit bench measures (the target directory), not a /tmp that may be
    // memory: the node's audit log fsyncs there.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    // A node as `scripts/up` makes one: its shell decides, with the shipped policy (first-party
    // capsules get what their manifests request).
    let node = Node::new_in(&base);
    node.shell_first(&[], "");
    let up = node.run(&["up"]);
    assert_eq!(up.code, 0, "elastos up: {up:#?}");
    wait_for_policy(&node);
    let idle_rss = rss(&node);
    let echo = node.pack_first_party("echo");
    let ping = node.pack_first_party("ping");
    start_echos(&node, &echo, 0..2);
    let (request_bytes, answer_bytes) = wire_sizes(&node, "localhost://echo/0/ping");
    // Set before any helper starts: the helper processes inherit it.
    std::env::set_var(ANSWER_BYTES_ENV, answer_bytes.to_string());
    // Unmeasured: the first calls after a start pay for pages and caches touched the first time.
    ping_run(&node, &ping, "localhost://echo/0/ping", 1, calls / 4);
    if std::env::var("ELASTOS_BENCH_ONLY").as_deref() == Ok("flood") {
        flood_p99(&node, &ping, calls.max(20_000), if quick { 1 } else { 5 }).print();
        return;
    }
    if std::env::var("ELASTOS_BENCH_ONLY").as_deref() == Ok("tokens") {
        token_requests(&base, if quick { 1 } else { 5 }).print();
        return;
    }

    // Each baseline and the mediated call it is compared with are measured side by side, in
    // rounds, so that the machine's drift between them does not pass for the supervisor's cost;
    // every figure is the median of its rounds, every ratio the median of its rounds' ratios.
    let mut runs: Vec<[Latency; 8]> = Vec::new();
    for _ in 0..rounds {
        let dir = scratch.path();
        runs.push([
            raw(dir, 1, 1, calls, Wait::Read, request_bytes),
            raw(dir, 2, 1, calls, Wait::Read, request_bytes),
            raw(dir, 2, 1, calls, Wait::Poll, request_bytes),
            ping_run(&node, &ping, "localhost://echo/0/ping", 1, calls),
            raw(dir, 1, 32, calls, Wait::Read, request_bytes),
            raw(dir, 2, 32, calls, Wait::Read, request_bytes),
            raw(dir, 2, 32, calls, Wait::Poll, request_bytes),
            ping_run(&node, &ping, "localhost://echo/0/ping", 32, calls),
        ]);
    }
    const RAW1_C1: usize = 0;
    const RAW2_C1: usize = 1;
    const POLL2_C1: usize = 2;
    const MED_C1: usize = 3;
    const RAW1_C32: usize = 4;
    const RAW2_C32: usize = 5;
    const POLL2_C32: usize = 6;
    const MED_C32: usize = 7;
    let fig = |i: usize| Latency {
        p50: median(runs.iter().map(|r| r[i].p50 as f64)) as u64,
        p99: median(runs.iter().map(|r| r[i].p99 as f64)) as u64,
    };
    let p50s = |i: usize, base: usize| median(runs.iter().map(|r| ratio(r[i].p50, r[base].p50)));
    let p99s = |i: usize, base: usize| median(runs.iter().map(|r| ratio(r[i].p99, r[base].p99)));

    // The WASM ping against the native one: a round's single pair swung 0.94-1.30x here, so
    // more and shorter pairs, and each substrate goes first in half of them.
    let pairs: usize = if quick { 1 } else { 10 };
    let mut wasm_pairs: Vec<(Latency, Latency)> = Vec::with_capacity(pairs);
    let run = |substrate| {
        ping_run_on(
            &node,
            &ping,
            "localhost://echo/0/ping",
            1,
            calls / 2,
            substrate,
        )
    };
    for i in 0..pairs {
        wasm_pairs.push(if i % 2 == 0 {
            let native = run("native");
            (run("wasm"), native)
        } else {
            let wasm = run("wasm");
            (wasm, run("native"))
        });
    }

    // Measured before and after the crowd, so that the machine's drift over the minute it takes
    // to start it does not pass for the crowd's cost; in rounds, each its own ratio.
    let crowd_rounds = if quick { 1 } else { 3 };
    let mut crowd: Vec<(u64, u64, u64)> = Vec::with_capacity(crowd_rounds);
    let mut many_rss = 0;
    for _ in 0..crowd_rounds {
        let before = ping_run(&node, &ping, "localhost://echo/1/ping", 1, calls);
        start_echos(&node, &echo, 2..many);
        let at_many = ping_run(&node, &ping, "localhost://echo/1/ping", 1, calls);
        many_rss = many_rss.max(rss(&node));
        stop_echos(&node, 2..many);
        let after = ping_run(&node, &ping, "localhost://echo/1/ping", 1, calls);
        crowd.push((before.p50, at_many.p50, after.p50));
    }
    let flood = flood_p99(&node, &ping, calls.max(20_000), if quick { 1 } else { 3 });
    let down = node.run(&["down", "--timeout", "5s"]);
    assert_eq!(down.code, 0, "elastos down: {down:#?}");
    let volume = audit_volume(calls, if quick { 1 } else { 5 });
    let tokens = token_requests(&base, if quick { 1 } else { 5 });

    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "call path, {PAYLOAD}-byte payloads, {calls} calls per figure, median of {rounds} interleaved round(s), {pinning}:"
    );
    for (what, i) in [
        ("raw socket, 1 hop, c=1 ", RAW1_C1),
        ("raw socket, 2 hops, c=1", RAW2_C1),
        ("raw socket, 1 hop, c=32", RAW1_C32),
        ("raw socket, 2 hops, c=32", RAW2_C32),
        ("raw socket, 2 hops, c=1, poll(2)", POLL2_C1),
        ("raw socket, 2 hops, c=32, poll(2)", POLL2_C32),
    ] {
        let l = fig(i);
        println!(
            "  {what:<34} p50 {:>8.1} us  p99 {:>8.1} us",
            us(l.p50),
            us(l.p99)
        );
    }
    for (what, i, base, polled) in [
        ("ping -> supervisor -> echo, c=1", MED_C1, RAW2_C1, POLL2_C1),
        (
            "ping -> supervisor -> echo, c=32",
            MED_C32,
            RAW2_C32,
            POLL2_C32,
        ),
    ] {
        let l = fig(i);
        println!(
            "  {what:<34} p50 {:>8.1} us  p99 {:>8.1} us  vs 2 hops: p50 {:.2}x (goal <= 1.5), p99 {:.2}x (goal <= 3); vs 2 hops in poll(2): p50 {:.2}x, p99 {:.2}x",
            us(l.p50),
            us(l.p99),
            p50s(i, base),
            p99s(i, base),
            p50s(i, polled),
            p99s(i, polled)
        );
    }
    let pair_p50: Vec<f64> = wasm_pairs
        .iter()
        .map(|(w, n)| ratio(w.p50, n.p50))
        .collect();
    println!(
        "  wasm ping -> supervisor -> echo, c=1 p50 {:>8.1} us  p99 {:>8.1} us  vs native ping ({pairs} alternating pairs of {} calls): p50 {:.2}x (goal <= 1.2), p99 {:.2}x",
        us(median(wasm_pairs.iter().map(|(w, _)| w.p50 as f64)) as u64),
        us(median(wasm_pairs.iter().map(|(w, _)| w.p99 as f64)) as u64),
        calls / 2,
        median(pair_p50.iter().copied()),
        median(wasm_pairs.iter().map(|(w, n)| ratio(w.p99, n.p99)))
    );
    // The spread shows how much of a ratio near its goal is the machine's noise.
    let spread: Vec<String> = pair_p50.iter().map(|x| format!("{x:.2}")).collect();
    println!("    p50 ratio of each pair: {}", spread.join(" "));
    let crowd_ratios: Vec<f64> = crowd
        .iter()
        .map(|(b, m, a)| ratio(*m, (b + a) / 2))
        .collect();
    let rounds_text: Vec<String> = crowd
        .iter()
        .zip(&crowd_ratios)
        .map(|((b, m, a), r)| format!("{:.1}/{:.1}/{:.1} us {r:.2}x", us(*b), us(*m), us(*a)))
        .collect();
    println!(
        "  {many} echo capsules against 2, c=1, p50 before/with/after each round: {}; median {:.2}x (goal <= 1.1)",
        rounds_text.join(", "),
        median(crowd_ratios.iter().copied())
    );
    println!(
        "  supervisor RSS: idle {:.1} MiB (its shell running; goal <= 15), with {many} capsules {:.1} MiB (goal <= 40)",
        mib(idle_rss),
        mib(many_rss)
    );
    volume.print(calls);
    flood.print();
    tokens.print();
}

/// `requestToken` to a minted token with the shell deciding under an `allow` rule, against one
/// mediated call on a strict node (each record durable before its answer), side by side in
/// rounds: what the policy's decision costs next to a call. Goal: p50 ≤ 2×.
struct Tokens {
    /// Per round: (token request p50, mediated call p50), in ns.
    rounds: Vec<(u64, u64)>,
    count: u64,
    /// The node whose shell decides, idle: once the shell took the policy, before any request.
    fresh: Idle,
    /// The same, after each round (its requests done, the strict node's calls since).
    idle: Vec<Idle>,
}

/// A node idle with its shell running, in bytes: the supervisor's RSS, apart from the shell's.
#[derive(Clone, Copy)]
struct Idle {
    supervisor: u64,
    /// The shell capsule's whole process tree: capsule-host's processes and the shell's.
    shell: u64,
    /// Of which the shell's own process (and any it started), without capsule-host's.
    shell_process: u64,
}

impl Tokens {
    fn print(&self) {
        let ratios: Vec<f64> = self.rounds.iter().map(|(t, c)| ratio(*t, *c)).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "  token requests, shell deciding under an allow rule: p50 {:.0} us, against one mediated call on a strict node: p50 {:.0} us; {:.2}x (goal <= 2), median of {} round(s) of {} (spread {lo:.2}-{hi:.2})",
            median(self.rounds.iter().map(|r| r.0 as f64)) / 1000.0,
            median(self.rounds.iter().map(|r| r.1 as f64)) / 1000.0,
            median(ratios.iter().copied()),
            self.rounds.len(),
            self.count,
        );
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let med = |of: fn(&Idle) -> u64| median(self.idle.iter().map(|i| of(i) as f64)) as u64;
        let spread = |of: fn(&Idle) -> u64| {
            let lo = self.idle.iter().map(of).min().unwrap_or(0);
            let hi = self.idle.iter().map(of).max().unwrap_or(0);
            format!("{:.1}-{:.1}", mib(lo), mib(hi))
        };
        // In the rounds' order: a supervisor that kept growing would show here.
        let rounds: Vec<String> = self
            .idle
            .iter()
            .map(|i| format!("{:.1}", mib(i.supervisor)))
            .collect();
        println!(
            "  supervisor RSS idle with the shell: {:.1} MiB (goal <= 15); the shell's own: {:.1} MiB (its process {:.1} MiB, the rest capsule-host's); median of {} round(s), each after its requests (rounds {} MiB; the shell's spread {} MiB); before any request {:.1} MiB, the shell's {:.1} MiB",
            mib(med(|i| i.supervisor)),
            mib(med(|i| i.shell)),
            mib(med(|i| i.shell_process)),
            self.idle.len(),
            rounds.join(" "),
            spread(|i| i.shell),
            mib(self.fresh.supervisor),
            mib(self.fresh.shell),
        );
    }
}

/// The supervisor's RSS and, apart, the shell's, once the shell is the only capsule running
/// (waited for, then a moment for anything in flight to settle).
///
/// The shell's memory is `elastos ps --json`'s `memory_bytes`: the supervisor sums VmRSS from
/// /proc over the capsule's process tree (capsule-host, the capsule-host that is init of its
/// namespaces, the shell). That is the shell's whole cost in resident memory, the host that
/// confines it included, and only what is resident: the capsule's cgroup (`memory.current`, or
/// v1's `memory.usage_in_bytes`) would also count page cache charged to it, and is absent where
/// the node falls back to uid-only confinement, so it would not be the same figure on every
/// machine. The shell's own process is told apart the same way, from /proc, here.
fn idle_with_shell(node: &Node) -> Idle {
    let start = Instant::now();
    let only_shell = || {
        let ps = node.run(&["ps", "--json"]).json();
        let live: Vec<serde_json::Value> = ps
            .as_array()
            .expect("ps is a list")
            .iter()
            .filter(|c| !c["pid"].is_null())
            .cloned()
            .collect();
        match &live[..] {
            [only] if only["name"] == "shell" && only["state"] == "running" => Ok(only.clone()),
            _ => Err(ps),
        }
    };
    loop {
        match only_shell() {
            Ok(_) => break,
            Err(ps) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the shell is not the only capsule running after 20 s: {ps:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let supervisor = rss(node);
    let shell = only_shell().unwrap_or_else(|ps| panic!("the shell stopped being idle: {ps:#}"));
    let host = shell["pid"].as_u64().expect("pid") as u32;
    let shell_process = proc_tree(host)
        .into_iter()
        .filter(|&p| proc_field(p, "comm").is_some_and(|c| c.trim() != "capsule-host"))
        .map(|p| {
            proc_field(p, "status")
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .map_or(0, |kb| kb * 1024)
        })
        .sum();
    let idle = Idle {
        supervisor,
        shell: shell["memory_bytes"].as_u64().expect("memory_bytes"),
        shell_process,
    };
    assert!(
        idle.shell > 0 && idle.shell_process > 0,
        "no memory found for the shell (pid {host}): {shell:#}"
    );
    idle
}

/// `/proc/PID/FILE`, if readable.
fn proc_field(pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// A process and its descendants, from /proc.
fn proc_tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        all.push(p);
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    all
}

/// Waits until the shell has taken the node's policy (its `policy.load` is in the audit log).
fn wait_for_policy(node: &Node) {
    let start = Instant::now();
    while !node
        .run(&["audit", "--json"])
        .stdout
        .lines()
        .any(|l| l.contains("\"action\":\"policy.load\""))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the shell did not take the policy within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Token requests per run: each grant is an audit record, and a capsule's audit budget takes a
/// burst of 500; more would measure the budget's `busy`, not the decision.
const TOKEN_REQUESTS: u64 = 400;

fn token_requests(base: &Path, rounds: usize) -> Tokens {
    let count = TOKEN_REQUESTS;
    // The node whose shell decides, with the shipped policy (first party: allowed).
    let shelled = Node::new_in(base);
    shelled.shell_first(&[], "");
    let up = shelled.run(&["up"]);
    assert_eq!(up.code, 0, "elastos up: {up:#?}");
    let shelled_ping = shelled.pack_first_party("ping");
    wait_for_policy(&shelled);
    let fresh = idle_with_shell(&shelled);
    // The strict node: every audit record durable before its call is answered.
    let strict = Node::new_in(base);
    strict.shell_first(&[], "[audit]\nstrict = true\n");
    let up = strict.run(&["up"]);
    assert_eq!(up.code, 0, "elastos up: {up:#?}");
    let echo = strict.pack_first_party("echo");
    let strict_ping = strict.pack_first_party("ping");
    start_echos(&strict, &echo, 0..1);
    let tokens = || {
        let out = shelled.run(&[
            "run",
            shelled_ping.to_str().expect("utf-8 path"),
            "--name",
            "ping-tokens",
            "--",
            "--tokens",
            "--count",
            &count.to_string(),
            "--target",
            "localhost://echo/ping",
            "--json",
        ]);
        assert_eq!(out.code, 0, "ping --tokens: {out:#?}");
        ping_report(&out)["p50_ns"].as_u64().expect("p50_ns")
    };
    // Unmeasured: first touches.
    tokens();
    let mut measured = Vec::with_capacity(rounds);
    let mut idle = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = tokens();
        let c = ping_run(
            &strict,
            &strict_ping,
            "localhost://echo/0/ping",
            1,
            5 * count,
        )
        .p50;
        measured.push((t, c));
        idle.push(idle_with_shell(&shelled));
    }
    for node in [&shelled, &strict] {
        let down = node.run(&["down", "--timeout", "5s"]);
        assert_eq!(down.code, 0, "elastos down: {down:#?}");
    }
    Tokens {
        rounds: measured,
        count,
        fresh,
        idle,
    }
}

/// Another capsule's call p99 with and without a flooder beside it.
struct Flood {
    quiet: Vec<u64>,
    flooded: Vec<u64>,
    calls: u64,
}

impl Flood {
    fn print(&self) {
        let ratios: Vec<f64> = self
            .quiet
            .iter()
            .zip(&self.flooded)
            .map(|(q, f)| ratio(*f, *q))
            .collect();
        println!(
            "  flood of oversized and unknown-signer tokens (flooder capped at 25% CPU), another capsule's c=1 p99 over {} calls: {:.1} us against {:.1} us quiet: {:.2}x (goal <= 1.5; rounds {})",
            self.calls,
            us(median(self.flooded.iter().map(|x| *x as f64)) as u64),
            us(median(self.quiet.iter().map(|x| *x as f64)) as u64),
            median(ratios.iter().copied()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// A capsule (a shell loop writing prepared frames, `[limits] cpu = 25`) floods the supervisor
/// with calls carrying an oversized token and calls carrying a token of a key nobody trusts;
/// ping's c=1 p99 is measured without it and with it, `rounds` times.
fn flood_p99(node: &Node, ping: &Path, calls: u64, rounds: usize) -> Flood {
    let dir = node.scratch().join("flooder");
    std::fs::create_dir_all(dir.join("bin")).expect("flooder dir");
    std::fs::write(
        dir.join("capsule.toml"),
        "format = 1\nname = \"flooder\"\nversion = \"0.1.0\"\ndescription = \"floods\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/run\"\n[limits]\ncpu = 25\n[[requests]]\nresource = \"host://libs\"\nactions = [\"read\"]\nreason = \"runs /bin/sh\"\n",
    )
    .expect("manifest");
    std::fs::write(
        dir.join("bin/run"),
        "#!/bin/sh\ncat <&3 >/dev/null &\nwhile true; do cat /capsule/frames.bin >&3 || exit 0; done\n",
    )
    .expect("script");
    elastos_e2e::set_mode(&dir.join("bin/run"), 0o755);
    // A hello, then calls: half with 8 KiB of junk as the token, half with a well-formed token
    // of a stranger's key.
    let stranger = Node::new();
    let foreign = stranger.issue(&[
        "--capsule",
        "flooder",
        "--resource",
        "localhost://echo/*",
        "--action",
        "read",
        "--ttl",
        "1h",
    ]);
    let foreign = elastos::token::text_to_bytes(&foreign).expect("foreign token");
    let junk = vec![0xa5u8; 8192];
    let frame = |build: &dyn Fn(elastos_schema::wire_capnp::frame::Builder)| {
        let mut m = capnp::message::Builder::new_default();
        build(m.init_root());
        elastos_schema::wire::encode(&m).expect("frame")
    };
    let mut frames = frame(&|f| {
        let mut h = f.init_hello();
        h.set_version(elastos_schema::versions::WIRE);
        h.set_sdk("flooder");
    });
    for i in 0..2000u64 {
        let token: &[u8] = if i % 2 == 0 { &junk } else { &foreign };
        frames.extend(frame(&|f| {
            let mut c = f.init_call();
            c.set_id(i + 1);
            c.set_target("localhost://echo/0/x");
            c.set_action(elastos_schema::token_capnp::Action::Read);
            c.set_token(token);
            c.set_payload(b"flood");
        }));
    }
    std::fs::write(dir.join("frames.bin"), &frames).expect("frames");
    // Packed by the node: first party, so the shipped policy grants its host://libs.
    let pkg = node.scratch().join("flooder.capsule");
    let packed = node.run(&[
        "capsule",
        "pack",
        dir.to_str().expect("utf-8"),
        "-o",
        pkg.to_str().expect("utf-8"),
    ]);
    assert_eq!(packed.code, 0, "packing the flooder: {packed:#?}");
    let mut f = Flood {
        quiet: Vec::new(),
        flooded: Vec::new(),
        calls,
    };
    for _ in 0..rounds {
        f.quiet
            .push(ping_run(node, ping, "localhost://echo/0/ping", 1, calls).p99);
        let out = node.run(&[
            "run",
            "-d",
            pkg.to_str().expect("utf-8"),
            "--restart",
            "never",
        ]);
        assert_eq!(out.code, 0, "starting the flooder: {out:#?}");
        // Flooding: its calls are being answered.
        let start = Instant::now();
        while node
            .run(&["ps", "--json"])
            .json()
            .as_array()
            .expect("ps")
            .iter()
            .find(|c| c["name"] == "flooder")
            .and_then(|c| c["calls"].as_u64())
            .unwrap_or(0)
            < 1000
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the flooder never flooded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f.flooded
            .push(ping_run(node, ping, "localhost://echo/0/ping", 1, calls).p99);
        let out = node.run(&["stop", "flooder"]);
        assert_eq!(out.code, 0, "stopping the flooder: {out:#?}");
    }
    f
}

/// One node's side of the audit volume figure, per run: bytes per second, bytes per call, p50.
struct Volume {
    summed: Vec<(f64, f64, u64)>,
    per_call: Vec<(f64, f64, u64)>,
}

impl Volume {
    fn print(&self, calls: u64) {
        let kib = |v: &[(f64, f64, u64)]| median(v.iter().map(|x| x.0 / 1024.0));
        let per = |v: &[(f64, f64, u64)]| median(v.iter().map(|x| x.1));
        let p50 = |v: &[(f64, f64, u64)]| median(v.iter().map(|x| x.2 as f64));
        let ratios: Vec<f64> = self
            .summed
            .iter()
            .zip(&self.per_call)
            .map(|(s, p)| ratio(s.2, p.2))
            .collect();
        let spread: Vec<String> = self
            .summed
            .iter()
            .map(|x| format!("{:.0}", x.0 / 1024.0))
            .collect();
        println!(
            "  audit volume, c=8, {calls} calls per run, {} alternating pair(s): calls alike summed up {:.1} KiB/s ({:.1} B/call; runs: {} KiB/s) (goal <= 1024 KiB/s), per call {:.1} KiB/s ({:.1} B/call); p50 {:.1} us against {:.1} us per call: {:.2}x (goal <= 1, within noise)",
            self.summed.len(),
            kib(&self.summed),
            per(&self.summed),
            spread.join(" "),
            kib(&self.per_call),
            per(&self.per_call),
            us(p50(&self.summed) as u64),
            us(p50(&self.per_call) as u64),
            median(ratios.into_iter())
        );
    }
}

/// The audit log's size on disk, all segments.
fn audit_bytes(node: &Node) -> u64 {
    std::fs::read_dir(node.home().join("audit"))
        .expect("the audit directory")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Two nodes, one summing calls up (the default), one with `per_call = true`, each with an echo;
/// ping runs at c=8 on each in turn, `pairs` times, the order alternating.
fn audit_volume(calls: u64, pairs: usize) -> Volume {
    let nodes: Vec<(Node, PathBuf)> = [false, true]
        .into_iter()
        .map(|per_call| {
            let node = Node::new();
            node.shell_first(
                &[],
                if per_call {
                    "[audit]\nper_call = true\n"
                } else {
                    ""
                },
            );
            let up = node.run(&["up"]);
            assert_eq!(up.code, 0, "elastos up: {up:#?}");
            let echo = node.pack_first_party("echo");
            let ping = node.pack_first_party("ping");
            start_echos(&node, &echo, 0..1);
            ping_run(&node, &ping, "localhost://echo/0/ping", 8, calls / 4);
            (node, ping)
        })
        .collect();
    let measure = |(node, ping): &(Node, PathBuf)| {
        let before = audit_bytes(node);
        let start = Instant::now();
        let l = ping_run(node, ping, "localhost://echo/0/ping", 8, calls);
        let secs = start.elapsed().as_secs_f64();
        // The last summaries are durable within a group-commit interval of the last call.
        std::thread::sleep(Duration::from_millis(50));
        let grew = audit_bytes(node).saturating_sub(before) as f64;
        (grew / secs, grew / calls as f64, l.p50)
    };
    let mut v = Volume {
        summed: Vec::new(),
        per_call: Vec::new(),
    };
    for i in 0..pairs {
        if i % 2 == 0 {
            v.summed.push(measure(&nodes[0]));
            v.per_call.push(measure(&nodes[1]));
        } else {
            v.per_call.push(measure(&nodes[1]));
            v.summed.push(measure(&nodes[0]));
        }
    }
    for (node, _) in &nodes {
        let down = node.run(&["down", "--timeout", "5s"]);
        assert_eq!(down.code, 0, "elastos down: {down:#?}");
    }
    v
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// Nanoseconds.
struct Latency {
    p50: u64,
    p99: u64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn rss(node: &Node) -> u64 {
    let status = node.run(&["status", "--json"]);
    status.json()["rss_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rss_bytes in status: {status:#?}"))
}

/// Starts `echo-i` serving `localhost://echo/i/*` for each i, and waits until all serve.
fn start_echos(node: &Node, package: &Path, range: std::ops::Range<usize>) {
    let package = package.to_str().expect("utf-8 path");
    for i in range.clone() {
        let name = format!("echo-{i}");
        let pattern = format!("localhost://echo/{i}/*");
        let out = node.run(&[
            "run", "-d", package, "--name", &name, "--", "--serve", &pattern,
        ]);
        assert_eq!(out.code, 0, "starting {name}: {out:#?}");
    }
    let start = Instant::now();
    loop {
        let ps = node.run(&["ps", "--json"]).json();
        let serving = ps
            .as_array()
            .expect("ps is a list")
            .iter()
            .filter(|c| {
                c["name"].as_str().is_some_and(|n| {
                    n.strip_prefix("echo-")
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| range.contains(&i))
                }) && c["serves"].as_array().is_some_and(|s| !s.is_empty())
            })
            .count();
        if serving == range.len() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {serving} of {} echo capsules serve after 120 s",
            range.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_echos(node: &Node, range: std::ops::Range<usize>) {
    for i in range {
        let name = format!("echo-{i}");
        let out = node.run(&["stop", &name]);
        assert_eq!(out.code, 0, "stopping {name}: {out:#?}");
    }
}

fn ping_run(node: &Node, package: &Path, target: &str, concurrency: usize, calls: u64) -> Latency {
    ping_run_on(node, package, target, concurrency, calls, "native")
}

fn ping_run_on(
    node: &Node,
    package: &Path,
    target: &str,
    concurrency: usize,
    calls: u64,
    substrate: &str,
) -> Latency {
    let out = node.run(&[
        "run",
        package.to_str().expect("utf-8 path"),
        "--substrate",
        substrate,
        "--name",
        "ping-bench",
        "--",
        "--count",
        &calls.to_string(),
        "--size",
        &PAYLOAD.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--target",
        target,
        "--json",
    ]);
    assert_eq!(out.code, 0, "ping: {out:#?}");
    let report = ping_report(&out);
    Latency {
        p50: report["p50_ns"].as_u64().expect("p50_ns"),
        p99: report["p99_ns"].as_u64().expect("p99_ns"),
    }
}

/// Ping's JSON report, the last JSON line of its output, checked to have no errors.
fn ping_report(out: &elastos_e2e::Run) -> serde_json::Value {
    let report: serde_json::Value = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report from ping: {out:#?}"));
    assert_eq!(report["errors"], 0, "{report}");
    report
}

/// A helper process of this executable in `role`, listening at `socket` once it returns.
fn helper(role: &str, args: &[&Path], socket: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .arg(role)
        .args(args)
        .spawn()
        .expect("spawning a helper");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{role} did not listen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// How the baseline's processes wait for input.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// Blocked in read(2).
    Read,
    /// In poll(2) for input, then read(2), as the guest SDK does.
    Poll,
}

/// A socket's read side that waits as `Wait` says.
struct Input {
    s: UnixStream,
    wait: Wait,
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.wait == Wait::Poll {
            let mut fds = [nix::poll::PollFd::new(
                self.s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)?;
        }
        self.s.read(buf)
    }
}

/// Round trips through 1 or 2 hops at `concurrency`.
fn raw(
    dir: &Path,
    hops: u32,
    concurrency: usize,
    calls: u64,
    wait: Wait,
    request_bytes: usize,
) -> Latency {
    let poll = if wait == Wait::Poll { "-poll" } else { "" };
    let id = format!("{hops}-{concurrency}{poll}");
    let server_at: PathBuf = dir.join(format!("server-{id}.sock"));
    let role = |r: &str| format!("--role-{r}{poll}");
    let mut children = vec![helper(&role("server"), &[&server_at], &server_at)];
    let target = if hops == 1 {
        server_at.clone()
    } else {
        let relay_at = dir.join(format!("relay-{id}.sock"));
        children.push(helper(&role("relay"), &[&relay_at, &server_at], &relay_at));
        relay_at
    };
    let mut s = UnixStream::connect(&target).expect("connect");
    let mut input = Input {
        s: s.try_clone().expect("clone"),
        wait,
    };
    let request = frame(request_bytes);
    let mut answer = vec![0u8; answer_bytes()];
    let mut sent_at = std::collections::VecDeque::with_capacity(concurrency);
    let mut latencies = Vec::with_capacity(calls as usize);
    let (mut sent, mut done) = (0u64, 0u64);
    while done < calls {
        while sent < calls && sent_at.len() < concurrency {
            sent_at.push_back(Instant::now());
            s.write_all(&request).expect("write");
            sent += 1;
        }
        // The server answers in order, so the oldest call is the one answered.
        input.read_exact(&mut answer).expect("read");
        let began = sent_at.pop_front().expect("a call in flight");
        latencies.push(began.elapsed().as_nanos() as u64);
        done += 1;
    }
    drop((s, input));
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // The next round binds the same names.
    let _ = std::fs::remove_file(&server_at);
    let _ = std::fs::remove_file(&target);
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// The answer frame's size, as measured by the main process.
fn answer_bytes() -> usize {
    std::env::var(ANSWER_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("the answer size, set by the bench's main process")
}

/// A length-prefixed frame of `total` bytes in all.
fn frame(total: usize) -> Vec<u8> {
    let mut f = vec![0x5au8; total];
    f[..4].copy_from_slice(&((total - 4) as u32).to_le_bytes());
    f
}

fn read_frame(s: &mut Input, buf: &mut Vec<u8>) -> bool {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u32::from_le_bytes(len) as usize;
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(4 + n, 0);
    s.read_exact(&mut buf[4..]).is_ok()
}

/// Answers every frame with an answer-sized frame, in order.
fn serve(at: &Path, wait: Wait) {
    let listener = UnixListener::bind(at).expect("bind");
    let (mut s, _) = listener.accept().expect("accept");
    let answer = frame(answer_bytes());
    let mut buf = Vec::new();
    let mut input = Input {
        s: s.try_clone().expect("clone"),
        wait,
    };
    while read_frame(&mut input, &mut buf) {
        if s.write_all(&answer).is_err() {
            break;
        }
    }
}

/// Forwards whole frames both ways between one client and the server, a thread per direction.
fn relay(at: &Path, upstream: &Path, wait: Wait) {
    let listener = UnixListener::bind(at).expect("bind");
    let (client, _) = listener.accept().expect("accept");
    let server = UnixStream::connect(upstream).expect("connect upstream");
    let pump = move |from: UnixStream, mut to: UnixStream| {
        let mut from = Input { s: from, wait };
        let mut buf = Vec::new();
        while read_frame(&mut from, &mut buf) {
            if to.write_all(&buf).is_err() {
                break;
            }
        }
    };
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let up = std::thread::spawn(move || pump(c2, s2));
    pump(server, client);
    let _ = up.join();
}
