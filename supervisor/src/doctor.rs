//! `elastos doctor`: what this machine offers the runtime, and what a missing feature costs.
//!
//! Every probe reads the kernel's own answer (a syscall, `/proc`, `/sys`) rather than guessing
//! from versions, and none changes the machine: the user-namespace probe runs in a child that
//! exits at once, the KVM probe creates a VM and closes it. The parsing is separate from the
//! reading so that each verdict is tested against recorded inputs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

/// One feature, as `elastos doctor --json` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub ok: bool,
    /// The node cannot run safely without it: `doctor` exits non-zero when it is missing.
    pub required: bool,
    pub detail: String,
    /// What to do when it is missing; empty when `ok`.
    pub fix: String,
}

fn feature(name: &str, ok: bool, required: bool, detail: String, fix: &str) -> Feature {
    Feature {
        name: name.into(),
        ok,
        required,
        detail,
        fix: if ok { String::new() } else { fix.into() },
    }
}

/// Every probe, in the order a reader wants them.
pub fn run(home: &Path) -> Vec<Feature> {
    vec![
        kernel(),
        landlock(),
        seccomp(),
        user_namespaces(),
        cgroups(),
        kvm(),
        tool(
            "qemu",
            "qemu-system-x86_64",
            false,
            "microVM capsules cannot run; every other substrate is unaffected",
            "apt-get install qemu-system-x86",
        ),
        state_quotas(),
        wasm(),
        tool(
            "capnp",
            "capnp",
            false,
            "only needed to build elastos from source (schema/ is compiled at build time)",
            "apt-get install capnproto (scripts/setup does)",
        ),
        home_permissions(home),
        disk_space(home),
        audit_size(home),
        child_kills(),
        tiocsti(),
        io_uring(),
    ]
}

/// Whether every required feature is present.
pub fn healthy(features: &[Feature]) -> bool {
    features.iter().all(|f| f.ok || !f.required)
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn kernel() -> Feature {
    let uts = nix::sys::utsname::uname();
    let (release, machine) = match &uts {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        ),
        Err(_) => ("unknown".into(), "unknown".into()),
    };
    feature(
        "kernel",
        true,
        true,
        format!("Linux {release} ({machine})"),
        "",
    )
}

fn landlock() -> Feature {
    landlock_verdict(landlock_abi())
}

/// The Landlock ABI version the kernel offers, or the errno that says why none.
fn landlock_abi() -> Result<i64, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: nix::libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute pointer, size 0 and the VERSION flag
    // only returns the ABI version (or an error); it reads no memory and creates no descriptor.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last_raw())
    } else {
        Ok(r)
    }
}

fn landlock_verdict(abi: Result<i64, i32>) -> Feature {
    match abi {
        Ok(v) => {
            let scope = match v {
                v if v >= 6 => "file system, TCP bind/connect, signal and abstract-socket scoping",
                v if v >= 4 => "file system and TCP bind/connect (no signal or socket scoping)",
                _ => "file system only (no network rules)",
            };
            let missing =
                elastos_schema::landlock::missing_rights(i32::try_from(v).unwrap_or(i32::MAX));
            let detail = if missing.is_empty() {
                format!("ABI {v}: {scope}")
            } else {
                format!(
                    "ABI {v}: {scope}; lacks {} (a capsule granted host://net, or without a PID namespace, then needs allow_without = [\"landlock-scope\"])",
                    missing.join(", ")
                )
            };
            feature("landlock", true, true, detail, "")
        }
        Err(e) => feature(
            "landlock",
            false,
            true,
            format!("not available ({})", nix::errno::Errno::from_raw(e).desc()),
            "boot a kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and `landlock` in the lsm= list",
        ),
    }
}

fn seccomp() -> Feature {
    seccomp_verdict(read("/proc/sys/kernel/seccomp/actions_avail"))
}

fn seccomp_verdict(actions: Option<String>) -> Feature {
    match actions {
        Some(a) => {
            let have: Vec<&str> = a.split_whitespace().collect();
            let missing: Vec<&str> = ["kill_process", "errno", "allow"]
                .into_iter()
                .filter(|w| !have.contains(w))
                .collect();
            if missing.is_empty() {
                feature("seccomp", true, true, format!("filter actions: {a}"), "")
            } else {
                feature(
                    "seccomp",
                    false,
                    true,
                    format!("the kernel lacks the actions {}", missing.join(", ")),
                    "boot a kernel with CONFIG_SECCOMP_FILTER=y (Linux >= 4.14)",
                )
            }
        }
        None => feature(
            "seccomp",
            false,
            true,
            "no seccomp filter support".into(),
            "boot a kernel with CONFIG_SECCOMP_FILTER=y",
        ),
    }
}

fn user_namespaces() -> Feature {
    // Proven, not inferred from sysctls: a child unshares a user namespace and execs `true`.
    let tried = {
        let mut cmd = Command::new("/bin/true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the child only calls unshare(2), which is
        // async-signal-safe; it touches no memory of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.status()
    };
    let max = read("/proc/sys/user/max_user_namespaces");
    match tried {
        Ok(s) if s.success() => feature(
            "user_namespaces",
            true,
            true,
            format!(
                "an unprivileged child created one (max_user_namespaces = {})",
                max.as_deref().unwrap_or("?")
            ),
            "",
        ),
        other => feature(
            "user_namespaces",
            false,
            true,
            match other {
                Err(e) => format!("unshare(CLONE_NEWUSER) failed: {e}"),
                Ok(s) => format!("the probe exited with {s}"),
            },
            "set sysctl user.max_user_namespaces > 0 (and kernel.unprivileged_userns_clone = 1 on Debian kernels that have it)",
        ),
    }
}

/// How process and memory caps can be enforced.
#[derive(Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    V2Delegated,
    V2NotDelegated,
    V1 { pids: bool, memory: bool },
    None,
}

fn cgroups() -> Feature {
    let root = Path::new("/sys/fs/cgroup");
    let v2_controllers = read("/sys/fs/cgroup/cgroup.controllers");
    let v2_writable = nix::unistd::access(
        &root.join("cgroup.subtree_control"),
        nix::unistd::AccessFlags::W_OK,
    )
    .is_ok();
    let layout = cgroup_layout(
        v2_controllers.as_deref(),
        v2_writable,
        root.join("pids").is_dir(),
        root.join("memory").is_dir(),
    );
    cgroup_verdict(&layout)
}

pub fn cgroup_layout(
    v2_controllers: Option<&str>,
    v2_writable: bool,
    v1_pids: bool,
    v1_memory: bool,
) -> CgroupLayout {
    match v2_controllers {
        Some(c) if c.contains("pids") && c.contains("memory") && v2_writable => {
            CgroupLayout::V2Delegated
        }
        Some(_) if !(v1_pids || v1_memory) => CgroupLayout::V2NotDelegated,
        _ if v1_pids || v1_memory => CgroupLayout::V1 {
            pids: v1_pids,
            memory: v1_memory,
        },
        _ => CgroupLayout::None,
    }
}

pub fn cgroup_verdict(layout: &CgroupLayout) -> Feature {
    let fallback = "process and memory caps fall back to a uid per capsule with RLIMIT_NPROC and RLIMIT_DATA (address space, not resident memory)";
    match layout {
        CgroupLayout::V2Delegated => feature(
            "cgroups",
            true,
            false,
            "cgroup v2 with pids and memory, delegated to this user".into(),
            "",
        ),
        CgroupLayout::V1 {
            pids: true,
            memory: true,
        } => feature(
            "cgroups",
            true,
            false,
            "cgroup v1 pids and memory controllers (no v2 delegation)".into(),
            "",
        ),
        CgroupLayout::V1 { pids, memory } => feature(
            "cgroups",
            false,
            false,
            format!(
                "cgroup v1 with {} only: {fallback}",
                if *pids { "pids" } else if *memory { "memory" } else { "neither pids nor memory" }
            ),
            "mount the missing v1 controller, or boot with cgroup v2 and delegate pids+memory (systemd: Delegate=yes)",
        ),
        CgroupLayout::V2NotDelegated => feature(
            "cgroups",
            false,
            false,
            format!("cgroup v2 without pids+memory delegated to this user: {fallback}"),
            "run elastos from a systemd unit with Delegate=pids memory, or as root",
        ),
        CgroupLayout::None => feature(
            "cgroups",
            false,
            false,
            format!("no cgroup controllers: {fallback}"),
            "mount cgroup v2 at /sys/fs/cgroup",
        ),
    }
}

/// What KVM can do here: absent, paravirtual (guests do not boot: use TCG), or present.
#[derive(Debug, PartialEq, Eq)]
pub enum Kvm {
    Absent,
    NoHardwareVirt { create_vm: bool },
    Present { create_vm: bool },
}

fn kvm() -> Feature {
    let dev = Path::new("/dev/kvm");
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let state = kvm_state(dev.exists(), &cpuinfo, || kvm_create_vm(dev));
    kvm_verdict(&state)
}

pub fn kvm_state(dev: bool, cpuinfo: &str, create_vm: impl FnOnce() -> bool) -> Kvm {
    if !dev {
        return Kvm::Absent;
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let create_vm = create_vm();
    if hw {
        Kvm::Present { create_vm }
    } else {
        Kvm::NoHardwareVirt { create_vm }
    }
}

fn kvm_create_vm(dev: &Path) -> bool {
    use std::os::fd::AsRawFd;
    const KVM_CREATE_VM: nix::libc::c_ulong = 0xAE01;
    let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(dev) else {
        return false;
    };
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a new descriptor or
    // -1; it reads or writes no memory of ours. The descriptor is closed at once below.
    let vm = unsafe { nix::libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a descriptor the ioctl just created and nothing else owns.
    unsafe { nix::libc::close(vm) };
    true
}

pub fn kvm_verdict(state: &Kvm) -> Feature {
    match state {
        Kvm::Absent => feature(
            "kvm",
            false,
            false,
            "no /dev/kvm: microVM capsules run under QEMU's TCG emulation (slower)".into(),
            "load kvm_intel or kvm_amd and give this user access to /dev/kvm",
        ),
        Kvm::NoHardwareVirt { create_vm } => feature(
            "kvm",
            false,
            false,
            format!(
                "/dev/kvm exists (KVM_CREATE_VM {}), but the CPU shows no vmx/svm: a paravirtual KVM on which real guests do not boot; microVM capsules use TCG",
                if *create_vm { "works" } else { "fails" }
            ),
            "run on hardware (or a VM with nested virtualisation) that exposes vmx or svm",
        ),
        Kvm::Present { create_vm: true } => feature(
            "kvm",
            true,
            false,
            "vmx/svm and KVM_CREATE_VM work: present, not proven (no guest booted yet)".into(),
            "",
        ),
        Kvm::Present { create_vm: false } => feature(
            "kvm",
            false,
            false,
            "the CPU has vmx/svm but KVM_CREATE_VM fails: microVM capsules use TCG".into(),
            "give this user read/write access to /dev/kvm (group kvm)",
        ),
    }
}

fn tool(name: &str, program: &str, required: bool, cost: &str, fix: &str) -> Feature {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let first = text.lines().next().unwrap_or("").trim().to_string();
            feature(name, true, required, first, "")
        }
        _ => feature(
            name,
            false,
            required,
            format!("`{program}` not found: {cost}"),
            fix,
        ),
    }
}

/// What the size limit of a capsule's state directory needs: root (to mount), loop devices and
/// mkfs.ext4. Not required: only capsules granted state need it, and a node may run them
/// without (`allow_without = ["storage-quota"]`).
fn state_quotas() -> Feature {
    let root = nix::unistd::geteuid().is_root();
    let loop_control = Path::new("/dev/loop-control").exists();
    let mkfs = Command::new("mkfs.ext4")
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!root, "a root supervisor"),
        (!loop_control, "/dev/loop-control"),
        (!mkfs, "mkfs.ext4"),
    ]
    .into_iter()
    .filter_map(|(gone, what)| gone.then_some(what))
    .collect();
    if missing.is_empty() {
        feature(
            "state_quotas",
            true,
            false,
            "a capsule's state directory is a loop-mounted ext4 image of its [limits] storage"
                .into(),
            "",
        )
    } else {
        feature(
            "state_quotas",
            false,
            false,
            format!(
                "no {}: capsules granted host://state start only with allow_without = [\"storage-quota\"]",
                missing.join(", no ")
            ),
            "run the supervisor as root, with loop devices and e2fsprogs (scripts/setup installs it)",
        )
    }
}

/// The WASM substrate: capsule-host builds wasmtime's engine on this CPU and names the
/// compatibility hash its compiled modules are cached under.
fn wasm() -> Feature {
    let out = crate::host::find_host_binary()
        .map_err(|e| e.to_string())
        .and_then(|bin| {
            Command::new(bin)
                .arg("compat-hash")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| e.to_string())
        });
    match out {
        Ok(o) if o.status.success() => feature(
            "wasm",
            true,
            false,
            format!(
                "wasmtime runs here; compiled modules are cached for engine {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ),
            "",
        ),
        Ok(o) => feature(
            "wasm",
            false,
            false,
            format!(
                "capsule-host cannot build wasmtime's engine: {}; WASM capsules cannot run, native ones are unaffected",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "run `capsule-host compat-hash` to see why",
        ),
        Err(e) => feature(
            "wasm",
            false,
            false,
            format!("{e}; WASM capsules cannot run, native ones are unaffected"),
            "build the workspace with `cargo build` (scripts/up does)",
        ),
    }
}

fn home_permissions(home: &Path) -> Feature {
    let meta = fs::metadata(home);
    let me = nix::unistd::geteuid().as_raw();
    home_verdict(
        home,
        meta.as_ref()
            .ok()
            .map(|m| (m.permissions().mode() & 0o777, m.uid())),
        me,
    )
}

pub fn home_verdict(home: &Path, meta: Option<(u32, u32)>, me: u32) -> Feature {
    let shown = home.display();
    match meta {
        None => feature(
            "elastos_home",
            true,
            true,
            format!("{shown} does not exist yet; it will be created with mode 0700"),
            "",
        ),
        Some((_, uid)) if uid != me => feature(
            "elastos_home",
            false,
            true,
            format!("{shown} belongs to uid {uid}, not to this user ({me})"),
            "use your own ELASTOS_HOME, or chown it to the user that runs elastos",
        ),
        Some((mode, _)) if mode & 0o077 != 0 => feature(
            "elastos_home",
            false,
            true,
            format!("{shown} has mode {mode:04o}: others can reach the node's key and audit log"),
            "chmod 700 \"$ELASTOS_HOME\"",
        ),
        Some((mode, _)) => feature(
            "elastos_home",
            true,
            true,
            format!("{shown}, mode {mode:04o}, owned by this user"),
            "",
        ),
    }
}

/// Below this the audit log cannot promise to take the next burst of records.
const MIN_FREE: u64 = 512 << 20;

fn disk_space(home: &Path) -> Feature {
    // The home may not exist yet: measure the nearest existing ancestor.
    let probe = home
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(probe) {
        Ok(s) => disk_verdict(probe, s.blocks_available() * s.fragment_size()),
        Err(e) => feature(
            "disk_space",
            false,
            true,
            format!("statvfs({}) failed: {e}", probe.display()),
            "check that the file system holding ELASTOS_HOME is mounted",
        ),
    }
}

fn audit_size(home: &Path) -> Feature {
    let size = crate::audit::size(&home.join("audit"));
    let max = crate::config::Config::load(&crate::home::Home::at(home.to_path_buf()))
        .ok()
        .and_then(|c| c.audit.max_size);
    audit_size_verdict(size, max)
}

/// Whether the audit log (`size` bytes) has reached its `[audit] max_size`: a warning, never
/// a failure, and nothing is dropped.
pub fn audit_size_verdict(size: u64, max: Option<u64>) -> Feature {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    feature(
        "audit_size",
        max.is_none_or(|m| size < m),
        false,
        match max {
            Some(m) => format!(
                "the audit log holds {:.1} MiB; [audit] max_size is {:.1} MiB",
                mib(size),
                mib(m)
            ),
            None => format!(
                "the audit log holds {:.1} MiB ([audit] max_size not set)",
                mib(size)
            ),
        },
        "remove what need not be kept: `elastos audit prune --before SEQ` (copy the log first if it must be archived), or raise [audit] max_size; elastos never drops records by itself",
    )
}

pub fn disk_verdict(at: &Path, free: u64) -> Feature {
    let mib = free >> 20;
    feature(
        "disk_space",
        free >= MIN_FREE,
        true,
        format!("{mib} MiB free at {}", at.display()),
        "free space on that file system (at least 512 MiB): when the audit log cannot write, every call is denied",
    )
}

/// Whether a supervisor started by this user would audit kills of capsules' child processes:
/// it learns of them only from the kernel log, and can tell whose they are only when each
/// capsule has its own uid and cgroup, which only a root supervisor gives.
fn child_kills() -> Feature {
    let root = nix::unistd::geteuid().is_root();
    let kmsg = std::fs::File::open("/dev/kmsg").map(|_| ());
    child_kills_verdict(root, kmsg)
}

pub fn child_kills_verdict(root: bool, kmsg: std::io::Result<()>) -> Feature {
    let fix = "run `elastos up` as root (each capsule its own uid and cgroup) with /dev/kmsg readable; a capsule's main process is audited from its exit code either way";
    match (root, kmsg) {
        (true, Ok(())) => feature(
            "child_kills",
            true,
            false,
            "seccomp and memory kills of capsules' child processes are read from /dev/kmsg and audited".into(),
            "",
        ),
        (true, Err(e)) => feature(
            "child_kills",
            false,
            false,
            format!("/dev/kmsg cannot be read ({e}): kills of capsules' child processes are not audited, only their main processes'"),
            fix,
        ),
        (false, _) => feature(
            "child_kills",
            false,
            false,
            "not root: capsules share this user's uid and have no cgroups, so a kill in the kernel log cannot be told to be a capsule's; kills of capsules' child processes are not audited, only their main processes'".into(),
            fix,
        ),
    }
}

fn tiocsti() -> Feature {
    let v = read("/proc/sys/dev/tty/legacy_tiocsti");
    feature(
        "tiocsti",
        true,
        false,
        match v.as_deref() {
            Some("1") => "legacy TIOCSTI is enabled: a process holding a terminal can inject input into it; capsules never get the operator's terminal (their stdio are pipes)".into(),
            Some("0") => "legacy TIOCSTI is disabled".into(),
            _ => "this kernel has no legacy_tiocsti switch".into(),
        },
        "",
    )
}

fn io_uring() -> Feature {
    let v = read("/proc/sys/kernel/io_uring_disabled");
    feature(
        "io_uring",
        true,
        false,
        match v.as_deref() {
            Some("0") | None => "io_uring is enabled for every process (a large kernel surface; capsule confinement must refuse it)".into(),
            Some(x) => format!("io_uring_disabled = {x}"),
        },
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_kills_are_reported_missing_unless_root_can_read_the_kernel_log() {
        assert!(child_kills_verdict(true, Ok(())).ok);
        let denied = || Err(std::io::Error::from_raw_os_error(nix::libc::EPERM));
        let f = child_kills_verdict(true, denied());
        assert!(!f.ok && !f.required, "{f:?}");
        assert!(f.detail.contains("/dev/kmsg"), "{f:?}");
        let f = child_kills_verdict(false, Ok(()));
        assert!(!f.ok && f.detail.contains("not root"), "{f:?}");
        assert!(f.fix.contains("as root"), "{f:?}");
    }

    #[test]
    fn landlock_abi_levels_name_what_they_cover() {
        let f = landlock_verdict(Ok(7));
        assert!(f.ok && f.required && f.detail.contains("scoping"), "{f:?}");
        assert!(!f.detail.contains("lacks"), "{f:?}");
        let f = landlock_verdict(Ok(3));
        assert!(f.ok && f.detail.contains("file system only"), "{f:?}");
        assert!(
            f.detail
                .contains("lacks tcp, ioctl-dev, scope-signal, scope-abstract-unix")
                && f.detail.contains("landlock-scope"),
            "{f:?}"
        );
        let f = landlock_verdict(Err(nix::libc::ENOSYS));
        assert!(!f.ok && f.required && !f.fix.is_empty(), "{f:?}");
    }

    #[test]
    fn seccomp_needs_the_actions_the_filters_use() {
        assert!(seccomp_verdict(Some("kill_process kill_thread trap errno allow".into())).ok);
        let f = seccomp_verdict(Some("kill_thread allow".into()));
        assert!(!f.ok && f.detail.contains("kill_process"), "{f:?}");
        assert!(!seccomp_verdict(None).ok);
    }

    #[test]
    fn the_cgroup_layout_is_read_from_what_is_mounted() {
        // This machine's kind: v1 controllers, a v2 hierarchy without them.
        assert_eq!(
            cgroup_layout(Some(""), false, true, true),
            CgroupLayout::V1 {
                pids: true,
                memory: true
            }
        );
        assert_eq!(
            cgroup_layout(Some("cpu io memory pids"), true, false, false),
            CgroupLayout::V2Delegated
        );
        assert_eq!(
            cgroup_layout(Some("cpu io memory pids"), false, false, false),
            CgroupLayout::V2NotDelegated
        );
        assert_eq!(cgroup_layout(None, false, false, false), CgroupLayout::None);
        assert!(cgroup_verdict(&CgroupLayout::V2Delegated).ok);
        let f = cgroup_verdict(&CgroupLayout::None);
        assert!(
            !f.ok && !f.required && f.detail.contains("RLIMIT_NPROC"),
            "{f:?}"
        );
    }

    #[test]
    fn paravirtual_kvm_is_not_taken_for_the_real_thing() {
        let pvm = "processor: 0\nflags\t\t: fpu vme de pse tsc hypervisor\n";
        let real = "processor: 0\nflags\t\t: fpu vme vmx ept\n";
        assert_eq!(kvm_state(false, real, || true), Kvm::Absent);
        assert_eq!(
            kvm_state(true, pvm, || true),
            Kvm::NoHardwareVirt { create_vm: true }
        );
        assert_eq!(
            kvm_state(true, real, || true),
            Kvm::Present { create_vm: true }
        );
        let f = kvm_verdict(&Kvm::NoHardwareVirt { create_vm: true });
        assert!(!f.ok && !f.required && f.detail.contains("TCG"), "{f:?}");
        let f = kvm_verdict(&Kvm::Present { create_vm: true });
        assert!(f.ok && f.detail.contains("not proven"), "{f:?}");
    }

    #[test]
    fn the_home_must_be_private_and_ours() {
        let home = Path::new("/h");
        assert!(home_verdict(home, None, 1000).ok);
        assert!(home_verdict(home, Some((0o700, 1000)), 1000).ok);
        let f = home_verdict(home, Some((0o755, 1000)), 1000);
        assert!(!f.ok && f.required && f.fix.contains("chmod 700"), "{f:?}");
        assert!(!home_verdict(home, Some((0o700, 0)), 1000).ok);
    }

    #[test]
    fn too_little_disk_is_a_required_failure() {
        assert!(disk_verdict(Path::new("/"), 10 << 30).ok);
        let f = disk_verdict(Path::new("/"), 100 << 20);
        assert!(!f.ok && f.required, "{f:?}");
        assert!(!healthy(&[f]));
    }
}
