//! The WASM substrate: a capsule's wasm32-wasip1 module run by wasmtime inside the capsule's own
//! process, after the same confinement as a native capsule, in place of the exec.
//!
//! What it trusts: the precompiled module, because the supervisor authenticated it (a MAC under
//! a key derived from the node key, over bytes that our own `capsule-host compile` produced) and
//! sealed it in a memfd before handing it over at [`MODULE_FD`]; and wasmtime's sandbox. What it
//! never does: run guest code before confinement is complete, run any file as code but that
//! sealed memfd, give the guest a directory but its state directory, or panic on a guest pointer.
//!
//! The guest reaches the supervisor only through the host imports of [`elastos_schema::wasm_abi`],
//! which carry the frames of the native socket on fd 3 unchanged. Limits:
//! - linear memory ≤ `[limits] memory`, one memory, one instance, at most [`MAX_TABLES`] tables of
//!   [`MAX_TABLE_ELEMENTS`] entries ([`Limiter`]); a guest that asks for more is stopped;
//! - a CPU budget per frame (`[limits] call_budget_ms`): epoch interruption, a ticker thread
//!   advancing the epoch every [`TICK`]; the deadline is set when `recv_len` hands the guest a new
//!   frame (and at start), so a guest that spins after receiving a call is stopped, and a guest
//!   waiting in `recv_len` costs nothing.
//!
//! Exit codes ([`Outcome::code`]): the guest's own (`proc_exit`, 0 when `_start` returns);
//! [`EXIT_TRAP`] a WebAssembly trap (a bug in the capsule); [`EXIT_CALL_BUDGET`] over its CPU
//! budget; [`EXIT_MEMORY`] over its memory limit; [`EXIT_TABLES`] over its table or instance
//! limit (a module defining more tables than allowed included); 126 a module that does not link
//! (an import elastos does not provide, no `_start`); [`EXIT_HOST`] the host could not give it
//! its CPU budget (it did not run).

use std::fmt::Write as _;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elastos_schema::{wasm_abi as abi, wire, Limits};
use nix::libc;
use sha2::Digest;
use wasmtime::{
    AsContextMut, Caller, Config, Engine, InstancePre, Linker, Memory, Module, OptLevel,
    ResourceLimiter, Store, Strategy, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, I32Exit, WasiCtxBuilder};

/// The descriptor the supervisor hands the sealed, precompiled module on.
pub const MODULE_FD: RawFd = 5;
/// The guest trapped: a bug in the capsule (unreachable, out-of-bounds access, stack overflow).
pub const EXIT_TRAP: i32 = 120;
/// The guest ran longer than `[limits] call_budget_ms` after taking a frame.
pub const EXIT_CALL_BUDGET: i32 = 121;
/// The guest asked for more linear memory than `[limits] memory`.
pub const EXIT_MEMORY: i32 = 122;
/// The guest asked for more or larger tables, or more instances, than the WASM host allows.
pub const EXIT_TABLES: i32 = 123;
/// The WASM host could not set up what the guest must run with; the guest did not run.
pub const EXIT_HOST: i32 = 125;
/// What the WASM host's process may hold besides the guest's linear memory (wasmtime, WASI's
/// runtime and threads, the mapped artifact): added to `[limits] memory` for its cgroup.
pub const HOST_MEMORY: u64 = 128 << 20;
/// The WASM host's own threads, added to `[limits] processes` (which counts threads too): the
/// epoch ticker, WASI's runtime with one worker (`TOKIO_WORKER_THREADS`, set by `main`; by
/// default it starts one per CPU) and its blocking pool (a single-threaded guest waits on each
/// call it makes, so one thread), and WASI's stdin reader.
pub const HOST_THREADS: u64 = 4;
/// The WASM host's own descriptors, added to `[limits] open_files`: the socket's second handle,
/// the mapped module, WASI's runtime (epoll, eventfd), with room to spare.
pub const HOST_OPEN_FILES: u64 = 16;

/// The limits the WASM host's process is confined to: the guest's, plus what the host itself
/// holds, as [`HOST_MEMORY`] is for memory; a guest with `processes = 1` must still run.
pub fn host_limits(guest: &Limits) -> Limits {
    let processes = guest
        .processes
        .map_or(crate::confine::DEFAULT_PROCESSES, u64::from)
        .saturating_add(HOST_THREADS);
    let open_files = guest
        .open_files
        .map_or(crate::confine::DEFAULT_OPEN_FILES, u64::from)
        .saturating_add(HOST_OPEN_FILES);
    Limits {
        processes: Some(u32::try_from(processes).unwrap_or(u32::MAX)),
        open_files: Some(u32::try_from(open_files).unwrap_or(u32::MAX)),
        ..guest.clone()
    }
}

/// How often the epoch advances: the resolution of the CPU budget.
pub const TICK: Duration = Duration::from_millis(10);
/// Entries of one table (function pointers of a Rust program: a few thousand).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
pub const MAX_TABLES: usize = 4;

const REQUIRED_SEALS: i32 =
    libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("setting up wasmtime: {0:#}")]
    Engine(wasmtime::Error),
    #[error("the module does not compile: {0:#}")]
    Compile(wasmtime::Error),
    #[error("the precompiled module is unusable (the supervisor recompiles it on its next start): {0:#}")]
    Load(wasmtime::Error),
    #[error("the module does not link: {0:#} (a capsule may import only WASI preview 1 and the `elastos` module)")]
    Link(wasmtime::Error),
    #[error("descriptor {fd} is not a sealed memfd ({why}); capsule-host takes a module only from the supervisor, sealed against writes, growth and shrinking")]
    Unsealed { fd: RawFd, why: String },
    #[error("the state directory: {0:#}")]
    State(wasmtime::Error),
    #[error("the capsule socket: {0}")]
    Socket(std::io::Error),
}

/// The one engine configuration of both `capsule-host compile` and the WASM runner, so that an
/// artifact always matches the engine that loads it (wasmtime checks, and refuses a mismatch).
/// Cranelift, epoch interruption on; no wasm threads, memory64 or several memories, which no
/// capsule needs and each of which widens what the host must get right. No native unwind
/// information: it serves only outside unwinders walking through guest frames (wasmtime's own
/// traps and backtraces do not use it), and registering it frame by frame was ~7 % of loading a
/// module at each start.
pub fn config() -> Config {
    let mut c = Config::new();
    c.strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .native_unwind_info(false)
        .epoch_interruption(true)
        .wasm_memory64(false)
        .wasm_multi_memory(false)
        .wasm_stack_switching(false);
    c
}

pub fn engine() -> Result<Engine, WasmError> {
    Engine::new(&config()).map_err(WasmError::Engine)
}

/// The engine that runs a precompiled module: `config` without its compiler, which the runner
/// never uses (building Cranelift's code generator for this CPU was a fifth of a WASM start).
/// wasmtime still checks each artifact against this engine and this CPU when it loads it.
pub fn runner() -> Result<Engine, WasmError> {
    let mut c = config();
    c.enable_compiler(false);
    Engine::new(&c).map_err(WasmError::Engine)
}

/// `capsule-host compile`: a module (binary or WAT text) to wasmtime's precompiled artifact.
pub fn precompile(engine: &Engine, module: &[u8]) -> Result<Vec<u8>, WasmError> {
    engine.precompile_module(module).map_err(WasmError::Compile)
}

/// wasmtime's precompile compatibility hash for `engine`, as 64 hex digits: artifacts are cached
/// under it, so a capsule-host whose engine differs never gets another's artifact.
pub fn compatibility_hash(engine: &Engine) -> String {
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Takes `fd` as the module's descriptor if it is sealed against writes, growth, shrinking and
/// further sealing (F_GET_SEALS fails on anything but a memfd): what the supervisor
/// authenticated is then what capsule-host loads, whatever happens after.
pub fn sealed_module(fd: RawFd) -> Result<File, WasmError> {
    let unsealed = |why: String| WasmError::Unsealed { fd, why };
    // SAFETY: fcntl(F_GET_SEALS) with an integer descriptor only reads its flags.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(unsealed(std::io::Error::last_os_error().to_string()));
    }
    let missing = REQUIRED_SEALS & !seals;
    if missing != 0 {
        let names: Vec<&str> = [
            (libc::F_SEAL_WRITE, "write"),
            (libc::F_SEAL_GROW, "grow"),
            (libc::F_SEAL_SHRINK, "shrink"),
            (libc::F_SEAL_SEAL, "seal"),
        ]
        .iter()
        .filter(|(bit, _)| missing & bit != 0)
        .map(|(_, n)| *n)
        .collect();
        return Err(unsealed(format!("missing seals: {}", names.join(", "))));
    }
    // SAFETY: the supervisor passed `fd` to this process for this use; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Loads the precompiled module from the sealed memfd (mapped, not copied).
pub fn load(engine: &Engine, sealed: File) -> Result<Module, WasmError> {
    // SAFETY: wasmtime runs the bytes of a precompiled artifact as machine code, so they must
    // come from wasmtime's own compiler. These do: the supervisor ran our own `capsule-host
    // compile` (which runs no guest code) on the module, stored the artifact with a MAC under a
    // key derived from the node key, checked that MAC before copying the bytes into a memfd and
    // sealing it, and `sealed_module` verified the seals, so neither the capsule nor anyone
    // else can have changed them since. wasmtime still checks the artifact's header and its
    // engine compatibility.
    unsafe { Module::deserialize_open_file(engine, sealed) }.map_err(WasmError::Load)
}

/// What the guest gets besides its imports.
#[derive(Debug, Clone, Default)]
pub struct Guest {
    /// argv, the capsule's name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The state directory as this process sees it, preopened as `/state` (its only directory).
    pub state: Option<PathBuf>,
    pub limits: Limits,
}

/// Memory, table and instance limits, remembering which was hit so the capsule's log can say.
pub struct Limiter {
    memory: usize,
    hit: Option<(i32, String)>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = Some((
                EXIT_MEMORY,
                format!(
                    "memory: the guest asked for {desired} bytes of linear memory, above its limit of {} bytes; raise [limits] memory in capsule.toml if it needs more",
                    self.memory
                ),
            ));
            wasmtime::bail!("memory limit");
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = Some((
                EXIT_TABLES,
                format!(
                    "tables: the guest asked for a table of {desired} entries, above the limit of {MAX_TABLE_ELEMENTS}"
                ),
            ));
            wasmtime::bail!("table limit");
        }
        Ok(true)
    }
    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        1
    }
}

/// The capsule's connection to the supervisor, as the imports see it.
struct Conn {
    reader: BufReader<PollRead>,
    writer: UnixStream,
    /// The last frame read, reused for the next: a round trip allocates nothing.
    frame: wire::FrameBuf,
    /// Whether `frame` holds one that `recv_len` announced and `recv` has not taken.
    pending: bool,
    /// A read error ends the stream for good: the framing is lost.
    broken: Option<i32>,
}

/// The socket's read side, waiting for input in poll(2) rather than in recv(2).
///
/// Linux wakes every task asleep on a Unix stream socket whenever the peer consumes data this
/// side sent (there is room to write again), and a task asleep in recv(2) cannot tell that from
/// input: a guest waiting for its answer would be woken, and switched to, for nothing each time
/// the supervisor reads its call. poll(2) wakes only for the events it asks for.
struct PollRead(UnixStream);

impl Read for PollRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut fds = [nix::poll::PollFd::new(
            self.0.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        loop {
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Input, end of stream or an error: the read does not wait.
        self.0.read(buf)
    }
}

pub struct Host {
    wasi: WasiP1Ctx,
    /// The guest's exported memory, once instantiated: looking it up by name in every import
    /// call was a quarter of the host's own user-space work per round trip.
    memory: Option<Memory>,
    limiter: Limiter,
    conn: Conn,
    budget_ticks: u64,
    ticker: Arc<Ticker>,
    /// The monotonic clock of both WASI's functions and [`clock_time_get`].
    clock: Monotonic,
}

/// The guest's monotonic clock: nanoseconds since the host set it up, as wasmtime-wasi counts
/// them. Its origin is kept here, and given to WASI too, so that a deadline the guest computes
/// from [`clock_time_get`] means the same to WASI's `poll_oneoff`.
#[derive(Clone, Copy)]
struct Monotonic(Instant);

impl HostMonotonicClock for Monotonic {
    fn resolution(&self) -> u64 {
        wasmtime_wasi::clocks::MonotonicClock::new().resolution()
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The epoch ticker's state, shared with the `recv_len` import. The ticker rests while the guest
/// waits for a frame (no guest code runs then, and `recv_len` gives it a fresh budget when one
/// comes), so an idle WASM capsule costs no wakeups instead of one per tick.
#[derive(Default)]
pub struct Ticker {
    waiting: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    /// Ticks so far, for the tests.
    ticks: AtomicU64,
}

impl Ticker {
    fn wait_begins(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    fn wait_ends(&self) {
        self.waiting.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.get() {
            // Cheap unless the ticker is parked: then one wake.
            t.unpark();
        }
    }

    /// The ticker thread's loop, for as long as the engine lives.
    fn run(&self, engine: wasmtime::EngineWeak) {
        while let Some(engine) = engine.upgrade() {
            if self.waiting.load(Ordering::SeqCst) {
                drop(engine);
                // An unpark between the load and here makes this return at once.
                std::thread::park();
                continue;
            }
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
            drop(engine);
            std::thread::sleep(TICK);
        }
    }
}

/// Everything but guest code: done before confinement, so the seccomp list and Landlock rules
/// need nothing for it.
pub struct Prepared {
    engine: Engine,
    pre: InstancePre<Host>,
    store: Store<Host>,
    budget_ms: u64,
}

pub fn prepare(
    engine: &Engine,
    module: &Module,
    guest: &Guest,
    socket: UnixStream,
) -> Result<Prepared, WasmError> {
    let mut linker: Linker<Host> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
        .map_err(WasmError::Engine)?;
    add_imports(&mut linker).map_err(WasmError::Engine)?;
    // Shadows WASI's own: see `clock_time_get`.
    linker.allow_shadowing(true);
    linker
        .func_wrap(WASI, "clock_time_get", clock_time_get)
        .map_err(WasmError::Engine)?;
    linker.allow_shadowing(false);
    let pre = linker.instantiate_pre(module).map_err(WasmError::Link)?;

    let clock = Monotonic(Instant::now());
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&guest.args)
        .monotonic_clock(clock)
        .envs(&guest.env)
        .inherit_stdin()
        .inherit_stdout()
        .inherit_stderr()
        // The guest is this process's only work: blocking its thread costs nobody.
        .allow_blocking_current_thread(true);
    if let Some(dir) = &guest.state {
        wasi.preopened_dir(dir, "/state", FsPerms::ReadWrite)
            .map_err(WasmError::State)?;
    }
    let reader = socket.try_clone().map_err(WasmError::Socket)?;
    // The manifest's bounds, again here: the host never trusts a budget it cannot keep.
    let budget_ms = guest
        .limits
        .call_budget_ms
        .unwrap_or(abi::DEFAULT_CALL_BUDGET_MS)
        .clamp(Limits::MIN_CALL_BUDGET_MS, Limits::MAX_CALL_BUDGET_MS);
    let memory = guest
        .limits
        .memory
        .unwrap_or(crate::confine::DEFAULT_MEMORY);
    let host = Host {
        wasi: wasi.build_p1(),
        memory: None,
        limiter: Limiter {
            memory: usize::try_from(memory).unwrap_or(usize::MAX),
            hit: None,
        },
        conn: Conn {
            reader: BufReader::with_capacity(64 * 1024, PollRead(reader)),
            writer: socket,
            frame: wire::FrameBuf::new(),
            pending: false,
            broken: None,
        },
        budget_ticks: budget_ticks(budget_ms),
        ticker: Arc::new(Ticker::default()),
        clock,
    };
    let mut store = Store::new(engine, host);
    store.limiter(|h| &mut h.limiter);
    store.epoch_deadline_trap();
    Ok(Prepared {
        engine: engine.clone(),
        pre,
        store,
        budget_ms,
    })
}

/// Ticks in `ms`, rounded up, plus one: a deadline set just before a tick still gets the time.
fn budget_ticks(ms: u64) -> u64 {
    ms.div_ceil(TICK.as_millis() as u64).saturating_add(1)
}

/// How a guest's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    CallBudget {
        ms: u64,
    },
    /// The exit code for the limit, and what the log says.
    Limit(i32, String),
    Trap(String),
    Link(String),
    /// The host could not give the guest what it must run with (its CPU budget's ticker): it
    /// was not run.
    Host(String),
}

impl Outcome {
    /// The process's exit code. A guest's own code that would read as one of the host's
    /// (120–123) becomes 1, so that a limit named on the status pipe is always a real one.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(c) if (EXIT_TRAP..=EXIT_TABLES).contains(c) => 1,
            Outcome::Exited(c) => *c,
            Outcome::CallBudget { .. } => EXIT_CALL_BUDGET,
            Outcome::Limit(code, _) => *code,
            Outcome::Trap(_) => EXIT_TRAP,
            Outcome::Link(_) => 126,
            Outcome::Host(_) => EXIT_HOST,
        }
    }

    /// What the capsule's log says, for anything but a normal exit.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited(c) if (EXIT_TRAP..=EXIT_TABLES).contains(c) => Some(format!(
                "the guest exited with code {c}, which means a limit or a trap here: reported as 1"
            )),
            Outcome::Exited(_) => None,
            Outcome::CallBudget { ms } => Some(format!(
                "stopped: over its CPU budget (call_budget_ms = {ms}): it ran that long after taking a call or answer without waiting for the next; raise [limits] call_budget_ms in capsule.toml if its work needs longer"
            )),
            Outcome::Limit(_, why) => Some(format!("stopped: over its limit of {why}")),
            Outcome::Trap(why) => Some(format!("the WebAssembly guest trapped: {why}")),
            Outcome::Link(why) => Some(why.clone()),
            Outcome::Host(why) => Some(why.clone()),
        }
    }
}

/// The limit an exit code of the WASM host names, for the status pipe.
pub fn limit_of(code: i32) -> Option<&'static str> {
    match code {
        EXIT_CALL_BUDGET => Some("call_budget_ms"),
        EXIT_MEMORY => Some("memory"),
        EXIT_TABLES => Some("tables"),
        _ => None,
    }
}

/// Runs the guest's `_start` to its end. Guest code runs only from here on: call it after
/// confinement. Starts the epoch ticker thread.
pub fn run(p: Prepared) -> Outcome {
    run_with(p, |f| {
        std::thread::Builder::new()
            .name("elastos-epoch".into())
            .spawn(f)
            .map(|h| h.thread().clone())
    })
}

/// [`run`], starting the ticker with `spawn`. Fails closed: without its ticker the guest would
/// run with no CPU budget at all, so it does not run.
fn run_with(
    p: Prepared,
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> io::Result<std::thread::Thread>,
) -> Outcome {
    let Prepared {
        engine,
        pre,
        mut store,
        budget_ms,
    } = p;
    // Counts the limiter is never asked about: wasmtime refuses them at instantiation with an
    // error of its own, which would read as a trap.
    let need = pre.module().resources_required();
    if need.num_tables as usize > MAX_TABLES {
        return Outcome::Limit(
            EXIT_TABLES,
            format!(
                "tables: the module defines {} tables, above the limit of {MAX_TABLES}",
                need.num_tables
            ),
        );
    }
    let weak = engine.weak();
    let ticker = store.data().ticker.clone();
    let shared = ticker.clone();
    // Ends with the engine.
    match spawn(Box::new(move || shared.run(weak))) {
        Ok(thread) => {
            let _ = ticker.thread.set(thread);
        }
        Err(e) => {
            return Outcome::Host(format!(
                "the CPU budget's ticker thread could not start ({e}): the guest is not run without its call_budget_ms"
            ))
        }
    }
    let ticks = store.data().budget_ticks;
    store.set_epoch_deadline(ticks);
    let result = match pre.instantiate(&mut store) {
        Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
            Ok(start) => {
                store.data_mut().memory = instance.get_memory(&mut store, "memory");
                start.call(&mut store, ())
            }
            Err(e) => {
                return Outcome::Link(format!(
                    "the module is not a WASI command: no `_start() -> ()` export ({e:#})"
                ))
            }
        },
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(()) => Outcome::Exited(0),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                Outcome::Exited(exit.0)
            } else if let Some((code, why)) = store.data_mut().limiter.hit.take() {
                Outcome::Limit(code, why)
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Outcome::CallBudget { ms: budget_ms }
            } else {
                // A trap, or a start function's failure: the capsule's own bug either way.
                Outcome::Trap(format!("{e:#}"))
            }
        }
    };
    let _ = std::io::stdout().flush();
    outcome
}

fn add_imports(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::MODULE,
        abi::SEND,
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> i32 {
            let Some((mem, host)) = memory(&mut caller) else {
                return abi::FAULT;
            };
            let Some(frame) = span(ptr, len, mem.len()).map(|r| &mem[r]) else {
                return abi::FAULT;
            };
            match check_frame(frame) {
                Ok(()) => match host.conn.writer.write_all(frame) {
                    Ok(()) => 0,
                    Err(_) => abi::IO,
                },
                Err(code) => code,
            }
        },
    )?;
    linker.func_wrap(
        abi::MODULE,
        abi::RECV_LEN,
        |mut caller: Caller<'_, Host>| -> i32 {
            let host = caller.data_mut();
            if host.conn.pending {
                // Announced before: no new budget for asking again.
                return host.conn.frame.bytes().len() as i32;
            }
            if let Some(code) = host.conn.broken {
                return code;
            }
            host.ticker.wait_begins();
            let conn = &mut host.conn;
            let got = wire::read_frame_into(&mut conn.reader, wire::MAX_FRAME, &mut conn.frame);
            host.ticker.wait_ends();
            let code = match got {
                Ok(true) => {
                    host.conn.pending = true;
                    host.conn.frame.bytes().len() as i32
                }
                Ok(false) => {
                    host.conn.broken = Some(abi::CLOSED);
                    abi::CLOSED
                }
                Err(wire::FrameError::TooLong { .. }) => {
                    host.conn.broken = Some(abi::TOO_LONG);
                    abi::TOO_LONG
                }
                Err(_) => {
                    host.conn.broken = Some(abi::IO);
                    abi::IO
                }
            };
            // The guest waited: from here it runs on a fresh budget.
            let ticks = host.budget_ticks;
            caller.as_context_mut().set_epoch_deadline(ticks);
            code
        },
    )?;
    linker.func_wrap(
        abi::MODULE,
        abi::RECV,
        |mut caller: Caller<'_, Host>, ptr: i32, cap: i32| -> i32 {
            let Some((mem, host)) = memory(&mut caller) else {
                return abi::FAULT;
            };
            if !host.conn.pending {
                return abi::NO_FRAME;
            }
            let frame = host.conn.frame.bytes();
            let Some(range) = span(ptr, cap, mem.len()) else {
                return abi::FAULT;
            };
            if range.len() < frame.len() {
                return abi::SPACE;
            }
            mem[range.start..range.start + frame.len()].copy_from_slice(frame);
            let n = frame.len() as i32;
            host.conn.pending = false;
            n
        },
    )?;
    Ok(())
}

/// The guest's memory and the host state, or `None` if it exports no memory. Before `_start`
/// (an import called from a module's start function) the memory is looked up by name.
fn memory<'a>(caller: &'a mut Caller<'_, Host>) -> Option<(&'a mut [u8], &'a mut Host)> {
    let mem = match caller.data().memory {
        Some(m) => m,
        None => caller.get_export("memory")?.into_memory()?,
    };
    Some(mem.data_and_store_mut(caller))
}

/// WASI preview 1's module name.
const WASI: &str = "wasi_snapshot_preview1";
/// WASI's errno values, as `clock_time_get` returns them.
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_OVERFLOW: i32 = 61;

/// WASI's `clock_time_get(id, precision, *time) -> errno`, in place of wasmtime-wasi's.
///
/// A Rust guest reads a clock in every `Instant::now()` and `SystemTime::now()`, and the guest
/// SDK checks its grants' expiry on every call: three reads a round trip for `ping`.
/// wasmtime-wasi's version looks the guest's memory up by name each time (a string hash and a
/// map lookup), about a quarter of the WASM host's own user-space work per round trip; this
/// one uses the memory kept at instantiation. Its results are wasmtime-wasi's: the realtime
/// clock in nanoseconds since 1970, the monotonic clock since the host set it up (the origin
/// WASI's `poll_oneoff` shares), BADF for the CPU-time clocks, INVAL for any other id, and a
/// trap for a pointer that is out of bounds or not 8-aligned, as the WASI spec says.
fn clock_time_get(
    mut caller: Caller<'_, Host>,
    id: i32,
    _precision: i64,
    out: i32,
) -> wasmtime::Result<i32> {
    let now = match id {
        0 => match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => match u64::try_from(since.as_nanos()) {
                Ok(ns) => ns,
                Err(_) => return Ok(ERRNO_OVERFLOW),
            },
            // A host clock before 1970 has no WASI timestamp.
            Err(_) => return Ok(ERRNO_OVERFLOW),
        },
        1 => caller.data().clock.now(),
        2 | 3 => return Ok(ERRNO_BADF),
        _ => return Ok(ERRNO_INVAL),
    };
    let Some((mem, _)) = memory(&mut caller) else {
        wasmtime::bail!("clock_time_get: the module exports no memory");
    };
    let Some(range) = span(out, 8, mem.len()).filter(|r| r.start % 8 == 0) else {
        wasmtime::bail!(
            "clock_time_get: the result pointer {out:#x} is out of bounds or not 8-aligned"
        );
    };
    mem[range].copy_from_slice(&now.to_le_bytes());
    Ok(0)
}

/// `ptr..ptr+len` as a range inside a memory of `size` bytes; both are unsigned 32-bit values.
fn span(ptr: i32, len: i32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= size).then_some(start..end)
}

/// A frame the guest sends: its prefix must be its own length, within `wire::MAX_FRAME`. Its
/// body is the supervisor's to judge, as for a native capsule.
fn check_frame(frame: &[u8]) -> Result<(), i32> {
    let Some(prefix) = frame.first_chunk::<4>() else {
        return Err(abi::BAD_FRAME);
    };
    let body = u32::from_le_bytes(*prefix);
    if body > wire::MAX_FRAME {
        return Err(abi::TOO_LONG);
    }
    if body as usize != frame.len() - 4 {
        return Err(abi::BAD_FRAME);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
