//! The confinement of the capsule process, step by step, in a fixed order, failing closed.
//!
//! Each step goes through the narrow [`Sys`] interface, so the order and the error paths are
//! tested without privileges by a recorder; the real [`Kernel`] makes the system calls. The
//! order of the whole design (docs/ARCHITECTURE.md) is: user namespace, the other namespaces,
//! PID 1, private root, limits, capabilities and uid, `no_new_privs`, Landlock, seccomp, exec.
//! The first steps happen before this process exists ([`crate::userns`], [`crate::newroot`]);
//! here, in that order: **limits**, **identity** (its uid, no capabilities), **no_new_privs**,
//! **Landlock**, **seccomp** (what identity needs from `/proc` is read first: the limits may
//! leave no descriptor free for it).
//! A step that fails stops the sequence and names itself; the capsule never runs half-confined.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::sys::resource::Resource;
use seccompiler::BpfProgram;

use elastos_schema::Limits;

/// The system calls confinement needs, one method per step.
pub trait Sys {
    /// Reads what the identity step needs from `/proc` while descriptors can still be opened:
    /// `RLIMIT_NOFILE` may leave none free until the exec closes what this process inherited.
    fn before_limits(&mut self) {}
    fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String>;
    fn switch_uid(&mut self, uid: u32) -> Result<(), String>;
    fn no_new_privs(&mut self) -> Result<(), String>;
    fn landlock(&mut self, rules: &FsRules) -> Result<(), String>;
    fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String>;
}

/// What the capsule may reach in the file system; everything else (the host's files, other
/// capsules', `/proc`, `/sys`, devices) is out of reach. TCP bind and connect, signals to
/// processes outside the capsule and abstract Unix sockets are refused too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRules {
    /// Read and execute: the package, and the host's libraries when granted.
    pub read_exec: Vec<PathBuf>,
    /// Everything: the capsule's private tmp.
    pub read_write: Vec<PathBuf>,
    /// Read and write of single files: `/dev/null`, `/dev/zero`, `/dev/urandom`.
    pub devices: Vec<PathBuf>,
    /// Granted the network (`host://net` or `host://loopback`): TCP is not refused here, and
    /// seccomp allows IP sockets. Which network it reaches is its namespace's business.
    pub network: bool,
}

/// The host's libraries and programs, read-only, for a capsule granted `host://libs`.
pub const HOST_LIB_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
];

impl FsRules {
    pub fn native(root: PathBuf, tmp: Option<PathBuf>, host_libs: bool) -> FsRules {
        let mut read_exec = vec![root];
        if host_libs {
            read_exec.extend(
                HOST_LIB_PATHS
                    .iter()
                    .map(PathBuf::from)
                    .filter(|p| p.exists()),
            );
        }
        FsRules {
            read_exec,
            read_write: tmp.into_iter().collect(),
            devices: ["/dev/null", "/dev/zero", "/dev/urandom"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            network: false,
        }
    }
}

/// Who the capsule runs as: a uid (and gid of the same number) of its own on the host, with no
/// capability anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The uid to become, as the capsule's process sees it: inside a user namespace, the one
    /// uid its map holds ([`crate::userns::INSIDE_ID`]); without one, the host uid itself.
    pub uid: u32,
    /// The same uid as the host sees it: what `ps` shows and RLIMIT_NPROC counts.
    pub host_uid: u32,
    /// Whether the host uid is the capsule's own, or the invoking user's (a supervisor run
    /// without root): then it is not shown as a layer, and RLIMIT_NPROC would count the user's
    /// own processes.
    pub own: bool,
}

impl FsRules {
    /// A WASM capsule's host: no package, no tmp, no libraries — the module arrives as a
    /// descriptor and the guest's only directory is its state directory, added when granted.
    pub fn wasm() -> FsRules {
        FsRules {
            read_exec: Vec::new(),
            ..FsRules::none()
        }
    }

    /// No path at all (the compile process, which works on descriptors it opened before).
    pub fn none() -> FsRules {
        FsRules {
            read_exec: Vec::new(),
            read_write: Vec::new(),
            devices: Vec::new(),
            network: false,
        }
    }
}

/// What to apply, prepared before the fork (preparing allocates; applying does not).
pub struct Plan {
    /// The Landlock ABI this kernel offers (`None`: none, and applying Landlock fails).
    pub landlock_abi: Option<i32>,
    pub rlimits: Vec<(Resource, u64)>,
    /// `None` keeps the invoking user's uid (never root's: a root supervisor always gives each
    /// capsule one of its own).
    pub identity: Option<Identity>,
    pub fs: FsRules,
    pub host_libs: bool,
    pub seccomp: Vec<BpfProgram>,
}

/// The step that failed and why: the capsule does not start.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub step: &'static str,
    pub why: String,
}

/// Resident memory of a capsule when the manifest names no limit.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Processes and threads of a capsule with its own uid, when the manifest names no limit.
pub const DEFAULT_PROCESSES: u64 = 256;
/// Open files when the manifest names no limit.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// The largest file a capsule may write (no key in `[limits]` yet: the storage quota comes
/// with the private state directory).
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// Locked memory: the kernel's historical default for an unprivileged user.
pub const MAX_LOCKED: u64 = 64 << 10;
/// POSIX message-queue bytes: the kernel's default.
pub const MAX_MSGQUEUE: u64 = 819_200;

impl Plan {
    /// `data_limit`: the memory cap as `RLIMIT_DATA`, when no cgroup enforces it.
    pub fn native(
        limits: &Limits,
        identity: Option<Identity>,
        data_limit: Option<u64>,
        fs: FsRules,
        host_libs: bool,
    ) -> Result<Plan, String> {
        let policy = crate::seccomp::native(fs.network);
        Plan::with_policy(
            limits,
            identity,
            data_limit,
            fs,
            host_libs,
            &policy,
            crate::seccomp::ALLOWED,
        )
    }

    /// The compile process: the WASM host's steps and policy, and no signals to anyone
    /// (`seccomp::COMPILE_REFUSED`).
    pub fn compiler(
        limits: &Limits,
        identity: Option<Identity>,
        data_limit: Option<u64>,
    ) -> Result<Plan, String> {
        let policy = crate::seccomp::wasm();
        let allowed = crate::seccomp::compile_allowed();
        Plan::with_policy(
            limits,
            identity,
            data_limit,
            FsRules::none(),
            false,
            &policy,
            &allowed,
        )
    }

    /// A WASM capsule's host: the same steps, the WASM host's seccomp list (no exec, no new
    /// processes; see `seccomp::WASM`).
    pub fn wasm(
        limits: &Limits,
        identity: Option<Identity>,
        data_limit: Option<u64>,
        fs: FsRules,
    ) -> Result<Plan, String> {
        let policy = crate::seccomp::wasm();
        let allowed = crate::seccomp::wasm_allowed();
        Plan::with_policy(limits, identity, data_limit, fs, false, &policy, &allowed)
    }

    fn with_policy(
        limits: &Limits,
        identity: Option<Identity>,
        data_limit: Option<u64>,
        fs: FsRules,
        host_libs: bool,
        policy: &[crate::seccomp::Entry],
        allowed: &[(&str, i64)],
    ) -> Result<Plan, String> {
        let mut rlimits = vec![
            (
                Resource::RLIMIT_NOFILE,
                limits.open_files.map_or(DEFAULT_OPEN_FILES, u64::from),
            ),
            (Resource::RLIMIT_FSIZE, MAX_FILE_SIZE),
            // No core dumps: a capsule's memory may hold what it was trusted with.
            (Resource::RLIMIT_CORE, 0),
            // What the supervisor's user may have been given, the capsule is not: no real-time
            // scheduling (sched_setscheduler and sched_setattr are allowed for the ordinary
            // policies; these make the real-time ones EPERM), no raised priority, no more
            // locked memory or message-queue bytes than an unprivileged login gets.
            (Resource::RLIMIT_RTPRIO, 0),
            (Resource::RLIMIT_RTTIME, 0),
            (Resource::RLIMIT_NICE, 0),
            (Resource::RLIMIT_MEMLOCK, MAX_LOCKED),
            (Resource::RLIMIT_MSGQUEUE, MAX_MSGQUEUE),
        ];
        if let Some(s) = limits.cpu_seconds {
            rlimits.push((Resource::RLIMIT_CPU, s));
        }
        if let Some(d) = data_limit {
            rlimits.push((Resource::RLIMIT_DATA, d));
        }
        // Counted per uid: meaningful only when the capsule has a uid of its own.
        if identity.is_some_and(|id| id.own) {
            rlimits.push((
                Resource::RLIMIT_NPROC,
                limits.processes.map_or(DEFAULT_PROCESSES, u64::from),
            ));
        }
        let seccomp = crate::seccomp::compile(policy, allowed).map_err(|e| e.to_string())?;
        Ok(Plan {
            landlock_abi: landlock_abi(),
            rlimits,
            identity,
            fs,
            host_libs,
            seccomp,
        })
    }

    /// The layers this plan puts in force, as `ps` shows them.
    pub fn layers(&self) -> Vec<String> {
        let mut names: Vec<&str> = self
            .rlimits
            .iter()
            .map(|(r, _)| match r {
                Resource::RLIMIT_NOFILE => "nofile",
                Resource::RLIMIT_FSIZE => "fsize",
                Resource::RLIMIT_CORE => "core",
                Resource::RLIMIT_CPU => "cpu",
                Resource::RLIMIT_NPROC => "nproc",
                Resource::RLIMIT_DATA => "data",
                Resource::RLIMIT_RTPRIO => "rtprio",
                Resource::RLIMIT_RTTIME => "rttime",
                Resource::RLIMIT_NICE => "nice",
                Resource::RLIMIT_MEMLOCK => "memlock",
                Resource::RLIMIT_MSGQUEUE => "msgqueue",
                _ => "other",
            })
            .collect();
        names.sort_unstable();
        let mut out = vec![format!("rlimits({})", names.join(","))];
        if let Some(id) = self.identity.filter(|id| id.own) {
            out.push(format!("uid({})", id.host_uid));
        }
        out.push("no-new-privs".into());
        out.push(landlock_label(self.landlock_abi));
        if self.host_libs {
            out.push("host-libs".into());
        }
        out.push("seccomp".into());
        out
    }
}

/// The layers this machine cannot give (name, why) against those the node lets capsules run
/// without: the markers `ps` shows (`WITHOUT-name`), or the first layer that stops the capsule.
pub fn without(
    missing: &[(&'static str, &str)],
    allowed: &[String],
) -> Result<Vec<String>, Failure> {
    missing
        .iter()
        .map(|(name, why)| {
            if allowed.iter().any(|l| l == name) {
                Ok(format!("WITHOUT-{name}"))
            } else {
                Err(Failure {
                    step: name,
                    why: format!(
                        "{why}; see `elastos doctor`, or run capsules without it on purpose by setting [confinement] allow_without = [\"{name}\"] in config.toml"
                    ),
                })
            }
        })
        .collect()
}

/// Applies `plan` through `sys`, in order; the first failure stops it.
pub fn apply(sys: &mut impl Sys, plan: &Plan) -> Result<(), Failure> {
    sys.before_limits();
    for &(resource, limit) in &plan.rlimits {
        sys.set_rlimit(resource, limit).map_err(|why| Failure {
            step: "limits",
            why: format!("{resource:?} = {limit}: {why}"),
        })?;
    }
    if let Some(id) = plan.identity {
        sys.switch_uid(id.uid).map_err(|why| Failure {
            step: "identity",
            why: format!("uid {}: {why}", id.host_uid),
        })?;
    }
    sys.no_new_privs().map_err(|why| Failure {
        step: "no_new_privs",
        why,
    })?;
    sys.landlock(&plan.fs).map_err(|why| Failure {
        step: "landlock",
        why,
    })?;
    sys.seccomp(&plan.seccomp).map_err(|why| Failure {
        step: "seccomp",
        why,
    })?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// The real system calls, in the capsule's process after fork, before exec.
pub struct Kernel {
    /// Built (its paths opened) before the fork: after the uid switch the capsule could not walk
    /// the paths through the node's private home any more.
    landlock: Option<RulesetCreated>,
    /// The ruleset's descriptor, once checked to be one (looked for only when asked: a WASM host
    /// closes everything it inherited but this before it runs a guest; an exec closes the rest).
    landlock_fd: Option<RawFd>,
    /// Whether this user namespace denies `setgroups`, read before the limits.
    setgroups_denied: bool,
}

impl Kernel {
    /// The Landlock ruleset's descriptor, when it was checked at creation to be the ruleset.
    pub fn landlock_fd(&self) -> Option<RawFd> {
        self.landlock.as_ref().and(self.landlock_fd)
    }

    /// Builds the Landlock ruleset; with `find_fd`, also finds its descriptor ([`Kernel::landlock_fd`]).
    pub fn prepare(rules: &FsRules, find_fd: bool) -> Result<Kernel, Failure> {
        let fail = |why: String| Failure {
            step: "landlock",
            why,
        };
        // The newest ABI this crate knows; what the kernel lacks beyond ABI 1 (file system
        // rules) degrades, and a kernel without Landlock at all fails at restrict time.
        let abi = ABI::V6;
        // The ruleset takes the lowest free descriptor: this process is single-threaded here and
        // nothing else opens one in between. Which one it is is confirmed below, not assumed.
        let lowest = find_fd
            .then(|| {
                nix::fcntl::open(
                    "/",
                    nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .ok()
                .map(|fd| fd.as_raw_fd())
            })
            .flatten();
        let ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| {
                if rules.network {
                    Ok(r)
                } else {
                    r.handle_access(AccessNet::from_all(abi))
                }
            })
            .and_then(|r| r.scope(Scope::from_all(abi)))
            .and_then(|r| r.create())
            .map_err(|e| fail(e.to_string()))?;
        let file_rw = AccessFs::ReadFile | AccessFs::WriteFile;
        let ruleset = ruleset
            .add_rules(landlock::path_beneath_rules(
                &rules.read_exec,
                AccessFs::from_read(abi),
            ))
            .and_then(|r| {
                r.add_rules(landlock::path_beneath_rules(
                    &rules.read_write,
                    writable(abi),
                ))
            })
            .and_then(|r| r.add_rules(landlock::path_beneath_rules(&rules.devices, file_rw)))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Kernel {
            landlock: Some(ruleset),
            landlock_fd: lowest.filter(|&fd| is_landlock_ruleset(fd)),
            setgroups_denied: false,
        })
    }
}

/// The Landlock ABI version the kernel offers, if any.
pub fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: nix::libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag only
    // returns the ABI version (or an error); it reads no memory and creates no descriptor.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(r).ok().filter(|v| *v > 0)
}

/// The Landlock layer as `ps` shows it: the ABI, and each right asked for that it lacks.
pub fn landlock_label(abi: Option<i32>) -> String {
    match abi {
        None => "landlock".into(),
        Some(a) => {
            let missing = elastos_schema::landlock::missing_rights(a);
            if missing.is_empty() {
                format!("landlock(abi={a})")
            } else {
                format!("landlock(abi={a},missing={})", missing.join("+"))
            }
        }
    }
}

/// What a capsule may do in its writable directories (tmp, state): everything but execute.
/// Their mounts are noexec as well; this holds where a mount is not the capsule's own.
fn writable(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_all(abi) & !AccessFs::Execute
}

/// A handle on the prepared Landlock ruleset, for a directory that exists only once the
/// capsule's root is built: its `/tmp`, a tmpfs mounted over its run directory. Landlock looks
/// through a mount at the directory it covers for no rule, so the tmpfs needs its own, added
/// before the capsule restricts itself (the ruleset is shared by both handles).
pub struct LateRule(RulesetCreated);

impl Kernel {
    /// A second handle on the ruleset, when there is one.
    pub fn late_rule(&self) -> Result<Option<LateRule>, Failure> {
        self.landlock
            .as_ref()
            .map(|r| r.try_clone().map(LateRule))
            .transpose()
            .map_err(|e| Failure {
                step: "landlock",
                why: format!("a second handle on the ruleset: {e}"),
            })
    }
}

impl LateRule {
    /// Lets the capsule read and write (not execute) beneath `dir`.
    pub fn writable(self, dir: &std::path::Path) -> Result<(), String> {
        let fd = PathFd::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.0
            .add_rule(PathBeneath::new(fd, writable(ABI::V6)))
            .map(drop)
            .map_err(|e| format!("a rule for {}: {e}", dir.display()))
    }
}

/// Whether this process has exactly one thread, asked of the kernel rather than of `/proc`
/// (which a private root may not have): unsharing the address space is a no-op it refuses
/// (EINVAL) to a process with another thread, or whose memory another process shares.
pub fn single_threaded() -> bool {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_VM).is_ok()
}

/// Whether `fd` is a Landlock ruleset: the kernel looks the descriptor up before the rule type,
/// so an unknown rule type (0) is `EINVAL` for a ruleset and `EBADF` or `EBADFD` for anything
/// else.
pub fn is_landlock_ruleset(fd: RawFd) -> bool {
    // SAFETY: landlock_add_rule(2) with integer arguments and a null attribute, which it never
    // reads for an unknown rule type; it adds nothing.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_add_rule,
            fd,
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    r == -1 && nix::errno::Errno::last() == nix::errno::Errno::EINVAL
}

impl Sys for Kernel {
    fn before_limits(&mut self) {
        self.setgroups_denied = setgroups_denied();
    }
    fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String> {
        nix::sys::resource::setrlimit(resource, limit, limit).map_err(|e| e.desc().to_string())
    }
    fn switch_uid(&mut self, uid: u32) -> Result<(), String> {
        use nix::libc;
        let last = |what: &str| format!("{what}: {}", nix::errno::Errno::last().desc());
        // SAFETY (each call below): prctl and set*id with integer arguments only.
        unsafe {
            // Locked before anything else, while CAP_SETPCAP is still held: uid 0 would
            // bring no capabilities back, and neither would keep-caps or ambient raises.
            const BITS: libc::c_ulong = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80;
            if libc::prctl(libc::PR_SET_SECUREBITS, BITS, 0, 0, 0) != 0 {
                return Err(last("securebits"));
            }
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && nix::errno::Errno::last() != nix::errno::Errno::EINVAL
                {
                    return Err(last("dropping the bounding set"));
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return Err(last("clearing ambient capabilities"));
            }
            // A user namespace set up without privilege may not drop the invoking user's
            // supplementary groups (its `setgroups` is denied): they are all it can keep.
            if libc::setgroups(0, std::ptr::null()) != 0 && !self.setgroups_denied {
                return Err(last("setgroups"));
            }
            if libc::setresgid(uid, uid, uid) != 0 {
                return Err(last("setresgid"));
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(last("setresuid"));
            }
            // Leaving root drops every capability, but in a user namespace the capsule never was
            // root: it holds its namespace's capabilities as its creator's child. Cleared
            // explicitly, for both.
            let header = CapHeader {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
                return Err(last("clearing capabilities"));
            }
        }
        // Trust, then verify: no way back to root, no capability left.
        let (r, e, s) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        if r != uid || e != uid || s != uid {
            return Err(format!("still uid {r}/{e}, gid {s}"));
        }
        // Asked of the kernel, not read from /proc/self/status: the limits are in force, and
        // `open_files` may leave no descriptor free to open it with until the exec.
        let header = CapHeader {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut now = [CapData::default(); 2];
        // SAFETY: capget with a v3 header writes two `CapData` records, which `now` holds.
        if unsafe { libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) } != 0 {
            return Err(last("reading capabilities back"));
        }
        if now.iter().any(|d| d.effective != 0 || d.permitted != 0) {
            return Err(format!(
                "capabilities remain: effective {:08x}{:08x}, permitted {:08x}{:08x}",
                now[1].effective, now[0].effective, now[1].permitted, now[0].permitted
            ));
        }
        Ok(())
    }
    fn no_new_privs(&mut self) -> Result<(), String> {
        nix::sys::prctl::set_no_new_privs().map_err(|e| e.desc().to_string())
    }
    fn landlock(&mut self, _rules: &FsRules) -> Result<(), String> {
        let ruleset = self
            .landlock
            .take()
            .ok_or("the Landlock ruleset was not prepared")?;
        let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
        if status.ruleset == RulesetStatus::NotEnforced {
            return Err("the kernel enforces no Landlock rules (see `elastos doctor`)".into());
        }
        Ok(())
    }
    fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String> {
        crate::seccomp::install(programs).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod landlock_alone;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_thread_is_seen_and_a_single_one_passes() {
        // The test harness runs tests on threads of their own.
        assert!(!single_threaded());
        // SAFETY: the child makes one system call and `_exit`s: no allocation, no lock.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if single_threaded() { 0 } else { 1 };
                // SAFETY: `_exit` ends the child without running the parent's destructors.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => assert_eq!(
                nix::sys::wait::waitpid(child, None).unwrap(),
                nix::sys::wait::WaitStatus::Exited(child, 0)
            ),
        }
    }

    /// The descriptor a WASM host keeps open through its closing of everything else is the
    /// ruleset's, and nothing else passes for one.
    #[test]
    fn the_ruleset_descriptor_is_found_and_only_a_ruleset_passes_for_one() {
        // Other tests open descriptors on other threads meanwhile, and may take the number the
        // ruleset was expected at; then it is not recorded (`None`), never recorded wrong.
        let mut found = 0;
        for _ in 0..5 {
            let k = Kernel::prepare(&FsRules::wasm(), true).unwrap();
            if let Some(fd) = k.landlock_fd() {
                found += 1;
                let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
                assert_eq!(target.to_str(), Some("anon_inode:[landlock-ruleset]"));
                assert!(is_landlock_ruleset(fd));
            }
        }
        assert!(found > 0, "the ruleset's descriptor was never found");
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(!is_landlock_ruleset(r.as_raw_fd()));
        assert!(!is_landlock_ruleset(w.as_raw_fd()));
        let gone = r.as_raw_fd();
        drop(r);
        assert!(!is_landlock_ruleset(gone));
    }

    /// Records each step; fails the one named in `fail_at`.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<String>,
        fail_at: Option<&'static str>,
    }

    impl Recorder {
        fn step(&mut self, name: &str) -> Result<(), String> {
            self.steps.push(name.to_string());
            if self.fail_at.is_some_and(|f| name.starts_with(f)) {
                Err("refused by the test".into())
            } else {
                Ok(())
            }
        }
    }

    impl Sys for Recorder {
        fn before_limits(&mut self) {
            self.steps.push("read /proc".into());
        }
        fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String> {
            self.step(&format!("limit {resource:?}={limit}"))
        }
        fn switch_uid(&mut self, uid: u32) -> Result<(), String> {
            self.step(&format!("uid {uid}"))
        }
        fn no_new_privs(&mut self) -> Result<(), String> {
            self.step("no_new_privs")
        }
        fn landlock(&mut self, rules: &FsRules) -> Result<(), String> {
            self.step(&format!("landlock {}", rules.read_exec.len()))
        }
        fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String> {
            self.step(&format!("seccomp {}", programs.len()))
        }
    }

    fn plan() -> Plan {
        Plan::native(
            &Limits {
                open_files: Some(64),
                cpu_seconds: Some(30),
                processes: Some(16),
                ..Default::default()
            },
            Some(Identity {
                uid: 1000,
                host_uid: 200_001,
                own: true,
            }),
            None,
            FsRules::native("/capsule".into(), None, false),
            false,
        )
        .unwrap()
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let mut r = Recorder::default();
        apply(&mut r, &plan()).unwrap();
        assert_eq!(
            r.steps,
            [
                // Before the limits: RLIMIT_NOFILE may leave no descriptor free to read with.
                "read /proc",
                "limit RLIMIT_NOFILE=64",
                &format!("limit RLIMIT_FSIZE={MAX_FILE_SIZE}"),
                "limit RLIMIT_CORE=0",
                "limit RLIMIT_RTPRIO=0",
                "limit RLIMIT_RTTIME=0",
                "limit RLIMIT_NICE=0",
                &format!("limit RLIMIT_MEMLOCK={MAX_LOCKED}"),
                &format!("limit RLIMIT_MSGQUEUE={MAX_MSGQUEUE}"),
                "limit RLIMIT_CPU=30",
                "limit RLIMIT_NPROC=16",
                "uid 1000",
                "no_new_privs",
                "landlock 1",
                "seccomp 5",
            ]
        );
    }

    #[test]
    fn a_failing_step_stops_everything_after_it_and_names_itself() {
        for (fail_at, step, ran) in [
            ("limit RLIMIT_NOFILE", "limits", 2),
            ("uid", "identity", 12),
            ("no_new_privs", "no_new_privs", 13),
            ("landlock", "landlock", 14),
            ("seccomp", "seccomp", 15),
        ] {
            let mut r = Recorder {
                fail_at: Some(fail_at),
                ..Default::default()
            };
            let f = apply(&mut r, &plan()).unwrap_err();
            assert_eq!(f.step, step);
            assert!(f.why.contains("refused by the test"), "{f:?}");
            assert_eq!(r.steps.len(), ran, "{fail_at}: {:?}", r.steps);
        }
    }

    #[test]
    fn a_missing_layer_stops_the_capsule_unless_the_node_allows_it() {
        let missing = [("namespaces", "need root"), ("cgroups", "no controllers")];
        let f = without(&missing, &[]).unwrap_err();
        assert_eq!(f.step, "namespaces");
        assert!(
            f.why.contains("allow_without = [\"namespaces\"]"),
            "{}",
            f.why
        );
        let f = without(&missing, &["namespaces".into()]).unwrap_err();
        assert_eq!(f.step, "cgroups");
        assert_eq!(
            without(&missing, &["cgroups".into(), "namespaces".into()]).unwrap(),
            ["WITHOUT-namespaces", "WITHOUT-cgroups"]
        );
        assert!(without(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn the_landlock_layer_names_its_abi_and_what_it_lacks() {
        assert_eq!(landlock_label(Some(6)), "landlock(abi=6)");
        assert_eq!(landlock_label(Some(7)), "landlock(abi=7)");
        assert_eq!(
            landlock_label(Some(4)),
            "landlock(abi=4,missing=ioctl-dev+scope-signal+scope-abstract-unix)"
        );
        // This project's machines offer Landlock (see `elastos doctor`).
        assert!(landlock_abi().is_some_and(|a| a >= 1));
    }

    #[test]
    fn layers_name_only_what_the_plan_enforces() {
        let p = Plan::native(
            &Limits::default(),
            None,
            None,
            FsRules::native("/capsule".into(), None, false),
            false,
        )
        .unwrap();
        assert_eq!(
            p.layers(),
            [
                "rlimits(core,fsize,memlock,msgqueue,nice,nofile,rtprio,rttime)",
                "no-new-privs",
                &landlock_label(landlock_abi()),
                "seccomp"
            ]
        );
        let libs = Plan::native(
            &Limits::default(),
            Some(Identity {
                uid: 200_000,
                host_uid: 200_000,
                own: true,
            }),
            Some(1 << 30),
            FsRules::native("/capsule".into(), None, true),
            true,
        )
        .unwrap();
        assert!(libs.layers().contains(&"host-libs".to_string()));
        assert!(libs.layers().contains(&"uid(200000)".to_string()));
        assert!(libs.layers()[0].contains("nproc"));
        assert!(libs.layers()[0].contains("data"));
        assert!(libs.fs.read_exec.contains(&PathBuf::from("/usr")));
        assert_eq!(p.rlimits[0], (Resource::RLIMIT_NOFILE, DEFAULT_OPEN_FILES));
    }
}
