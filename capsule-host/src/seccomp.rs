//! The seccomp policies of the native substrate and of the WASM host, kept as data: one [`Entry`]
//! per rule, each with a test that makes the call under the filter and sees exactly the entry's
//! verdict.
//!
//! What it refuses and why:
//! - **Kill** (the process dies with SIGSYS; the supervisor audits it): calls no capsule needs
//!   and that widen the kernel's attack surface or reach outside the capsule — tracing other
//!   processes, BPF, perf, keyrings, userfaultfd, io_uring, kexec, kernel modules, mounts and
//!   namespace changes, chroot, swap, reboot, clocks, raw port I/O.
//! - **ENOSYS** for `clone3`: its flags sit in memory a filter cannot read, so it cannot be
//!   checked; libc falls back to `clone`, whose flags it can.
//! - **EPERM** for `clone` with any namespace flag, for the TIOCSTI and TIOCLINUX ioctls (typing
//!   into a terminal, the console's own requests; compared in the low 32 bits the kernel
//!   reads), for `personality` with any flag (turning off its own ASLR), and for `execveat`
//!   (exec by descriptor: code from a memfd, no path to check).
//! - **EAFNOSUPPORT** for sockets of any family but AF_UNIX: no network until a grant says so.
//!
//! - **ENOSYS** for every call not in [`ALLOWED`]: the obscure, the obsolete and whatever a
//!   future kernel adds, until someone decides a capsule needs it.
//!
//! The WASM host ([`wasm`], [`wasm_allowed`]) runs no program of the capsule's, only wasmtime
//! and WASI on its behalf, so it gets less: `execve` and `execveat` kill it (it never execs: an
//! attempt means the host itself was subverted), `clone` without `CLONE_THREAD` is EPERM
//! (threads, never processes), and [`WASM_REFUSED`] — sockets it does not already hold, SysV
//! IPC, identity changes, Landlock and seccomp calls, AIO, memory keys, ... — is off its
//! allow-list. What wasmtime needs stays: mmap/mprotect/madvise/mremap, signal handling for
//! traps (rt_sigaction, sigaltstack, rt_sigreturn, tgkill), futexes and threads.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Kill,
    Errno(i32),
}

/// When an entry applies to its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Argument `arg` has any of these bits set.
    AnyBit {
        arg: u8,
        bits: &'static [u64],
    },
    /// Argument `arg` (a 32-bit int) is none of `values`.
    NoneOf {
        arg: u8,
        values: &'static [u32],
    },
    /// Argument `arg` (a 32-bit int) differs from `value`.
    Ne {
        arg: u8,
        value: u32,
    },
    /// Argument `arg`, compared in its low 32 bits as the kernel reads it (an `int` or
    /// `unsigned int`: the upper half of the register is ignored), is any of `values`.
    AnyOf {
        arg: u8,
        values: &'static [u32],
    },
    /// Argument `arg` does not have bit `bit` set.
    LacksBit {
        arg: u8,
        bit: u64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// For the tests' and readers' sake: the kernel only sees `nr`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub nr: i64,
    pub verdict: Verdict,
    pub when: When,
}

const fn kill(name: &'static str, nr: i64) -> Entry {
    Entry {
        name,
        nr,
        verdict: Verdict::Kill,
        when: When::Always,
    }
}

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// The native substrate's policy.
pub const NATIVE: &[Entry] = &[
    kill("ptrace", libc::SYS_ptrace),
    kill("process_vm_readv", libc::SYS_process_vm_readv),
    kill("process_vm_writev", libc::SYS_process_vm_writev),
    kill("bpf", libc::SYS_bpf),
    kill("perf_event_open", libc::SYS_perf_event_open),
    kill("keyctl", libc::SYS_keyctl),
    kill("add_key", libc::SYS_add_key),
    kill("request_key", libc::SYS_request_key),
    kill("userfaultfd", libc::SYS_userfaultfd),
    kill("io_uring_setup", libc::SYS_io_uring_setup),
    kill("io_uring_enter", libc::SYS_io_uring_enter),
    kill("io_uring_register", libc::SYS_io_uring_register),
    kill("kexec_load", libc::SYS_kexec_load),
    kill("kexec_file_load", libc::SYS_kexec_file_load),
    kill("init_module", libc::SYS_init_module),
    kill("finit_module", libc::SYS_finit_module),
    kill("delete_module", libc::SYS_delete_module),
    kill("mount", libc::SYS_mount),
    kill("umount2", libc::SYS_umount2),
    kill("pivot_root", libc::SYS_pivot_root),
    kill("move_mount", libc::SYS_move_mount),
    kill("open_tree", libc::SYS_open_tree),
    kill("fsopen", libc::SYS_fsopen),
    kill("fsmount", libc::SYS_fsmount),
    kill("fsconfig", libc::SYS_fsconfig),
    kill("fspick", libc::SYS_fspick),
    kill("mount_setattr", libc::SYS_mount_setattr),
    kill("unshare", libc::SYS_unshare),
    kill("setns", libc::SYS_setns),
    kill("chroot", libc::SYS_chroot),
    kill("open_by_handle_at", libc::SYS_open_by_handle_at),
    kill("swapon", libc::SYS_swapon),
    kill("swapoff", libc::SYS_swapoff),
    kill("reboot", libc::SYS_reboot),
    kill("acct", libc::SYS_acct),
    kill("quotactl", libc::SYS_quotactl),
    kill("syslog", libc::SYS_syslog),
    kill("settimeofday", libc::SYS_settimeofday),
    kill("clock_settime", libc::SYS_clock_settime),
    kill("clock_adjtime", libc::SYS_clock_adjtime),
    kill("adjtimex", libc::SYS_adjtimex),
    kill("iopl", libc::SYS_iopl),
    kill("ioperm", libc::SYS_ioperm),
    kill("sethostname", libc::SYS_sethostname),
    kill("setdomainname", libc::SYS_setdomainname),
    kill("vhangup", libc::SYS_vhangup),
    Entry {
        name: "clone3",
        nr: libc::SYS_clone3,
        verdict: Verdict::Errno(libc::ENOSYS),
        when: When::Always,
    },
    // Exec by descriptor runs code no path names (a memfd, a deleted file), out of Landlock's
    // sight; glibc's fexecve falls back to /proc/self/fd, which Landlock refuses.
    Entry {
        name: "execveat",
        nr: libc::SYS_execveat,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::Always,
    },
    Entry {
        name: "clone (namespace flags)",
        nr: libc::SYS_clone,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::AnyBit {
            arg: 0,
            bits: NAMESPACE_FLAGS,
        },
    },
    // Typing into a terminal (TIOCSTI) and the Linux console's own requests (TIOCLINUX: its
    // selection pastes into the console, and more). The kernel takes the request as an
    // `unsigned int`, so only the low 32 bits are compared: 0x1_0000_5412 is TIOCSTI too.
    Entry {
        name: "ioctl TIOCSTI, TIOCLINUX",
        nr: libc::SYS_ioctl,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::AnyOf {
            arg: 1,
            values: &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32],
        },
    },
    // personality(): only asking (0xffffffff) and setting PER_LINUX, which changes nothing.
    // Any flag would weaken the capsule's own process: ADDR_NO_RANDOMIZE turns off its ASLR,
    // READ_IMPLIES_EXEC makes its readable memory executable.
    Entry {
        name: "personality (a flag or another persona)",
        nr: libc::SYS_personality,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::NoneOf {
            arg: 0,
            values: &[0xffff_ffff, 0],
        },
    },
    Entry {
        name: "socket (not AF_UNIX)",
        nr: libc::SYS_socket,
        verdict: Verdict::Errno(libc::EAFNOSUPPORT),
        when: When::Ne {
            arg: 0,
            value: libc::AF_UNIX as u32,
        },
    },
    Entry {
        name: "socketpair (not AF_UNIX)",
        nr: libc::SYS_socketpair,
        verdict: Verdict::Errno(libc::EAFNOSUPPORT),
        when: When::Ne {
            arg: 0,
            value: libc::AF_UNIX as u32,
        },
    },
];

/// The WASM host's additions to [`NATIVE`] (whose `execveat` entry they replace).
pub const WASM_EXTRA: &[Entry] = &[
    kill("execve", libc::SYS_execve),
    kill("execveat", libc::SYS_execveat),
    Entry {
        name: "clone (a process, not a thread)",
        nr: libc::SYS_clone,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::LacksBit {
            arg: 0,
            bit: libc::CLONE_THREAD as u64,
        },
    },
];

/// The WASM host's policy: [`NATIVE`] with exec killed and processes refused (less the
/// argument rules of calls it may not make at all).
pub fn wasm() -> Vec<Entry> {
    NATIVE
        .iter()
        .filter(|e| e.verdict == Verdict::Kill || !WASM_REFUSED.contains(&e.nr))
        .chain(WASM_EXTRA)
        .copied()
        .collect()
}

/// Calls on [`ALLOWED`] that the WASM host never makes (each then fails with ENOSYS, or kills
/// it where [`WASM_EXTRA`] says so).
pub const WASM_REFUSED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    // Its socket is fd 3, opened by the supervisor; WASI preview 1 opens none. (socketpair
    // stays, AF_UNIX only: the async runtime under WASI makes one for its signal driver.)
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semctl,
    libc::SYS_semtimedop,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    // Its identity was settled before the filter.
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_setrlimit,
    libc::SYS_personality,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    // (`seccomp` stays: the host adds `NO_NEW_EXEC` once its module is loaded, and a filter
    // can only narrow what is allowed.)
    // WASI has no owners, device nodes or watches.
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
    libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_send_signal,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setattr,
    libc::SYS_setpriority,
];

/// The WASM host's allow-list: [`ALLOWED`] less [`WASM_REFUSED`].
pub fn wasm_allowed() -> Vec<(&'static str, i64)> {
    ALLOWED
        .iter()
        .filter(|(_, nr)| !WASM_REFUSED.contains(nr))
        .copied()
        .collect()
}

/// Signalling calls the compile process has no use for: it runs no guest and starts no
/// process, and as `nobody` it could otherwise signal other processes of that uid.
pub const COMPILE_REFUSED: &[i64] = &[
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
];

/// The compile process's allow-list: the WASM host's, without [`COMPILE_REFUSED`].
pub fn compile_allowed() -> Vec<(&'static str, i64)> {
    wasm_allowed()
        .into_iter()
        .filter(|(_, nr)| !COMPILE_REFUSED.contains(nr))
        .collect()
}

/// Calls a native capsule may make at all; any other (an obscure or future one) fails with
/// ENOSYS. The kill list and the argument rules above still apply to the calls named here.
pub const ALLOWED: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("open", libc::SYS_open),
    ("close", libc::SYS_close),
    ("stat", libc::SYS_stat),
    ("fstat", libc::SYS_fstat),
    ("lstat", libc::SYS_lstat),
    ("poll", libc::SYS_poll),
    ("lseek", libc::SYS_lseek),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("brk", libc::SYS_brk),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("ioctl", libc::SYS_ioctl),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("access", libc::SYS_access),
    ("pipe", libc::SYS_pipe),
    ("select", libc::SYS_select),
    ("sched_yield", libc::SYS_sched_yield),
    ("mremap", libc::SYS_mremap),
    ("msync", libc::SYS_msync),
    ("mincore", libc::SYS_mincore),
    ("madvise", libc::SYS_madvise),
    ("shmget", libc::SYS_shmget),
    ("shmat", libc::SYS_shmat),
    ("shmctl", libc::SYS_shmctl),
    ("dup", libc::SYS_dup),
    ("dup2", libc::SYS_dup2),
    ("pause", libc::SYS_pause),
    ("nanosleep", libc::SYS_nanosleep),
    ("getitimer", libc::SYS_getitimer),
    ("alarm", libc::SYS_alarm),
    ("setitimer", libc::SYS_setitimer),
    ("getpid", libc::SYS_getpid),
    ("sendfile", libc::SYS_sendfile),
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("accept", libc::SYS_accept),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("shutdown", libc::SYS_shutdown),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("socketpair", libc::SYS_socketpair),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockopt", libc::SYS_getsockopt),
    ("clone", libc::SYS_clone),
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("execve", libc::SYS_execve),
    ("exit", libc::SYS_exit),
    ("wait4", libc::SYS_wait4),
    ("kill", libc::SYS_kill),
    ("uname", libc::SYS_uname),
    ("semget", libc::SYS_semget),
    ("semop", libc::SYS_semop),
    ("semctl", libc::SYS_semctl),
    ("shmdt", libc::SYS_shmdt),
    ("msgget", libc::SYS_msgget),
    ("msgsnd", libc::SYS_msgsnd),
    ("msgrcv", libc::SYS_msgrcv),
    ("msgctl", libc::SYS_msgctl),
    ("fcntl", libc::SYS_fcntl),
    ("flock", libc::SYS_flock),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("truncate", libc::SYS_truncate),
    ("ftruncate", libc::SYS_ftruncate),
    ("getdents", libc::SYS_getdents),
    ("getcwd", libc::SYS_getcwd),
    ("chdir", libc::SYS_chdir),
    ("fchdir", libc::SYS_fchdir),
    ("rename", libc::SYS_rename),
    ("mkdir", libc::SYS_mkdir),
    ("rmdir", libc::SYS_rmdir),
    ("creat", libc::SYS_creat),
    ("link", libc::SYS_link),
    ("unlink", libc::SYS_unlink),
    ("symlink", libc::SYS_symlink),
    ("readlink", libc::SYS_readlink),
    ("chmod", libc::SYS_chmod),
    ("fchmod", libc::SYS_fchmod),
    ("chown", libc::SYS_chown),
    ("fchown", libc::SYS_fchown),
    ("lchown", libc::SYS_lchown),
    ("umask", libc::SYS_umask),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getrlimit", libc::SYS_getrlimit),
    ("getrusage", libc::SYS_getrusage),
    ("sysinfo", libc::SYS_sysinfo),
    ("times", libc::SYS_times),
    ("getuid", libc::SYS_getuid),
    ("getgid", libc::SYS_getgid),
    ("setuid", libc::SYS_setuid),
    ("setgid", libc::SYS_setgid),
    ("geteuid", libc::SYS_geteuid),
    ("getegid", libc::SYS_getegid),
    ("setpgid", libc::SYS_setpgid),
    ("getppid", libc::SYS_getppid),
    ("getpgrp", libc::SYS_getpgrp),
    ("setsid", libc::SYS_setsid),
    ("setreuid", libc::SYS_setreuid),
    ("setregid", libc::SYS_setregid),
    ("getgroups", libc::SYS_getgroups),
    ("setgroups", libc::SYS_setgroups),
    ("setresuid", libc::SYS_setresuid),
    ("getresuid", libc::SYS_getresuid),
    ("setresgid", libc::SYS_setresgid),
    ("getresgid", libc::SYS_getresgid),
    ("getpgid", libc::SYS_getpgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setfsgid", libc::SYS_setfsgid),
    ("getsid", libc::SYS_getsid),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("rt_sigpending", libc::SYS_rt_sigpending),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("utime", libc::SYS_utime),
    ("mknod", libc::SYS_mknod),
    ("personality", libc::SYS_personality),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("getpriority", libc::SYS_getpriority),
    ("setpriority", libc::SYS_setpriority),
    ("sched_setparam", libc::SYS_sched_setparam),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
    ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
    ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
    ("mlock", libc::SYS_mlock),
    ("munlock", libc::SYS_munlock),
    ("mlockall", libc::SYS_mlockall),
    ("munlockall", libc::SYS_munlockall),
    ("prctl", libc::SYS_prctl),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("setrlimit", libc::SYS_setrlimit),
    ("sync", libc::SYS_sync),
    ("gettid", libc::SYS_gettid),
    ("readahead", libc::SYS_readahead),
    ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("getxattr", libc::SYS_getxattr),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("listxattr", libc::SYS_listxattr),
    ("llistxattr", libc::SYS_llistxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("tkill", libc::SYS_tkill),
    ("time", libc::SYS_time),
    ("futex", libc::SYS_futex),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("getdents64", libc::SYS_getdents64),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("semtimedop", libc::SYS_semtimedop),
    ("fadvise64", libc::SYS_fadvise64),
    ("timer_create", libc::SYS_timer_create),
    ("timer_settime", libc::SYS_timer_settime),
    ("timer_gettime", libc::SYS_timer_gettime),
    ("timer_getoverrun", libc::SYS_timer_getoverrun),
    ("timer_delete", libc::SYS_timer_delete),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("exit_group", libc::SYS_exit_group),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("tgkill", libc::SYS_tgkill),
    ("utimes", libc::SYS_utimes),
    ("mq_open", libc::SYS_mq_open),
    ("mq_unlink", libc::SYS_mq_unlink),
    ("mq_timedsend", libc::SYS_mq_timedsend),
    ("mq_timedreceive", libc::SYS_mq_timedreceive),
    ("mq_notify", libc::SYS_mq_notify),
    ("mq_getsetattr", libc::SYS_mq_getsetattr),
    ("waitid", libc::SYS_waitid),
    ("inotify_init", libc::SYS_inotify_init),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("openat", libc::SYS_openat),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknodat", libc::SYS_mknodat),
    ("fchownat", libc::SYS_fchownat),
    ("futimesat", libc::SYS_futimesat),
    ("newfstatat", libc::SYS_newfstatat),
    ("unlinkat", libc::SYS_unlinkat),
    ("renameat", libc::SYS_renameat),
    ("linkat", libc::SYS_linkat),
    ("symlinkat", libc::SYS_symlinkat),
    ("readlinkat", libc::SYS_readlinkat),
    ("fchmodat", libc::SYS_fchmodat),
    ("faccessat", libc::SYS_faccessat),
    ("pselect6", libc::SYS_pselect6),
    ("ppoll", libc::SYS_ppoll),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("splice", libc::SYS_splice),
    ("tee", libc::SYS_tee),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("vmsplice", libc::SYS_vmsplice),
    ("utimensat", libc::SYS_utimensat),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("signalfd", libc::SYS_signalfd),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("eventfd", libc::SYS_eventfd),
    ("fallocate", libc::SYS_fallocate),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("accept4", libc::SYS_accept4),
    ("signalfd4", libc::SYS_signalfd4),
    ("eventfd2", libc::SYS_eventfd2),
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("dup3", libc::SYS_dup3),
    ("pipe2", libc::SYS_pipe2),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("prlimit64", libc::SYS_prlimit64),
    ("syncfs", libc::SYS_syncfs),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("getcpu", libc::SYS_getcpu),
    ("sched_setattr", libc::SYS_sched_setattr),
    ("sched_getattr", libc::SYS_sched_getattr),
    ("renameat2", libc::SYS_renameat2),
    ("seccomp", libc::SYS_seccomp),
    ("getrandom", libc::SYS_getrandom),
    ("memfd_create", libc::SYS_memfd_create),
    ("membarrier", libc::SYS_membarrier),
    ("mlock2", libc::SYS_mlock2),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("preadv2", libc::SYS_preadv2),
    ("pwritev2", libc::SYS_pwritev2),
    ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("pkey_alloc", libc::SYS_pkey_alloc),
    ("pkey_free", libc::SYS_pkey_free),
    ("statx", libc::SYS_statx),
    ("rseq", libc::SYS_rseq),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("close_range", libc::SYS_close_range),
    ("openat2", libc::SYS_openat2),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("faccessat2", libc::SYS_faccessat2),
    ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ("futex_waitv", libc::SYS_futex_waitv),
    ("io_setup", libc::SYS_io_setup),
    ("io_destroy", libc::SYS_io_destroy),
    ("io_getevents", libc::SYS_io_getevents),
    ("io_submit", libc::SYS_io_submit),
    ("io_cancel", libc::SYS_io_cancel),
    // Named by entries above, which decide them: listed so that this list does not.
    ("clone3", libc::SYS_clone3),
    ("execveat", libc::SYS_execveat),
];

/// Socket families a capsule granted the network may open (not netlink, not packet, not raw
/// families beyond these).
const NET_FAMILIES: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// The native policy for a capsule with (`net`) or without a network grant: with it, IP sockets
/// are allowed besides Unix ones.
pub fn native(net: bool) -> Vec<Entry> {
    NATIVE
        .iter()
        .map(|e| match (net, e.nr) {
            (true, libc::SYS_socket | libc::SYS_socketpair) => Entry {
                when: When::NoneOf {
                    arg: 0,
                    values: NET_FAMILIES,
                },
                ..*e
            },
            _ => *e,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// The policy as BPF programs, one per verdict (the kernel applies the strictest verdict of all
/// installed filters). Built before any fork: building allocates, installing does not.
/// What the WASM host may no longer do once its module is loaded: map memory executable, or
/// make a mapping executable. A runner has no compiler, and the module's code is mapped by then,
/// so new executable memory could only be code that no compiler of ours made.
pub const NO_NEW_EXEC: &[Entry] = &[
    Entry {
        name: "mmap (PROT_EXEC)",
        nr: libc::SYS_mmap,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::AnyBit {
            arg: 2,
            bits: &[libc::PROT_EXEC as u64],
        },
    },
    Entry {
        name: "mprotect (PROT_EXEC)",
        nr: libc::SYS_mprotect,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::AnyBit {
            arg: 2,
            bits: &[libc::PROT_EXEC as u64],
        },
    },
    Entry {
        name: "pkey_mprotect (PROT_EXEC)",
        nr: libc::SYS_pkey_mprotect,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::AnyBit {
            arg: 2,
            bits: &[libc::PROT_EXEC as u64],
        },
    },
];

/// [`NO_NEW_EXEC`] as a filter of its own, added on top of the WASM host's (it allows every
/// other call: the first filter's allow-list still applies).
pub fn no_new_exec() -> Result<Vec<BpfProgram>, SeccompError> {
    compile_rules(NO_NEW_EXEC)
}

pub fn compile(policy: &[Entry], allowed: &[(&str, i64)]) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut out = compile_rules(policy)?;
    // The allow-list: listed calls pass this filter (the others may still refuse them), any
    // other fails with ENOSYS, which libc treats as "not on this kernel". Installed last: a
    // list without `seccomp` itself would refuse the installs after it.
    let nrs: Vec<i64> = allowed.iter().map(|(_, nr)| *nr).collect();
    out.push(allow_list(&nrs)?);
    Ok(out)
}

/// The programs for `policy`'s entries, one per verdict.
fn compile_rules(policy: &[Entry]) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut by_verdict: BTreeMap<(u8, i32), BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    let bad = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    for e in policy {
        let key = match e.verdict {
            Verdict::Kill => (0, 0),
            Verdict::Errno(n) => (1, n),
        };
        let rules = by_verdict.entry(key).or_default().entry(e.nr).or_default();
        match e.when {
            // An empty rule list matches the call whatever its arguments.
            When::Always => {}
            When::AnyBit { arg, bits } => {
                for &bit in bits {
                    rules.push(
                        SeccompRule::new(vec![SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(bit),
                            bit,
                        )
                        .map_err(bad)?])
                        .map_err(bad)?,
                    );
                }
            }
            // One rule, its conditions all true together: not this one, nor that one, ...
            When::NoneOf { arg, values } => rules.push(
                SeccompRule::new(
                    values
                        .iter()
                        .map(|v| {
                            SeccompCondition::new(
                                arg,
                                SeccompCmpArgLen::Dword,
                                SeccompCmpOp::Ne,
                                u64::from(*v),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(bad)?,
                )
                .map_err(bad)?,
            ),
            When::Ne { arg, value } => rules.push(
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    u64::from(value),
                )
                .map_err(bad)?])
                .map_err(bad)?,
            ),
            When::AnyOf { arg, values } => {
                for &value in values {
                    rules.push(
                        SeccompRule::new(vec![SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            u64::from(value),
                        )
                        .map_err(bad)?])
                        .map_err(bad)?,
                    );
                }
            }
            When::LacksBit { arg, bit } => rules.push(
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(bit),
                    0,
                )
                .map_err(bad)?])
                .map_err(bad)?,
            ),
        }
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let mut out = Vec::new();
    for ((kind, errno), rules) in by_verdict {
        // Calls refused whatever their arguments (the killed ones): a search by number, as the
        // allow-list below; seccompiler's filter for those with conditions.
        if rules.values().all(Vec::is_empty) {
            let nrs: Vec<i64> = rules.keys().copied().collect();
            let hit = if kind == 0 {
                libc::SECCOMP_RET_KILL_PROCESS
            } else {
                libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
            };
            out.push(lookup(&nrs, hit, RET_ALLOW)?);
            continue;
        }
        let action = if kind == 0 {
            SeccompAction::KillProcess
        } else {
            SeccompAction::Errno(errno as u32)
        };
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch).map_err(bad)?;
        out.push(filter.try_into().map_err(bad)?);
    }
    Ok(out)
}

/// The allow-list as one program: the architecture checked (another one is killed), then a
/// binary search over the sorted ranges of allowed numbers; in range allows, else ENOSYS.
///
/// Not a seccompiler filter: that tests each number in turn (1,395 instructions for the native
/// list), and the kernel, to cache which calls a filter always allows, runs the filter once per
/// system call number when it is installed: a linear list made that cost about 0.9 ms of every
/// capsule's start on this machine. This is some 200 instructions, ~10 deep.
pub fn allow_list(nrs: &[i64]) -> Result<BpfProgram, SeccompError> {
    lookup(nrs, RET_ALLOW, RET_ENOSYS)
}

/// A program returning `hit` for the calls numbered `nrs` and `miss` for any other (killing
/// another architecture's calls), by a binary search over their ranges.
pub fn lookup(nrs: &[i64], hit: u32, miss: u32) -> Result<BpfProgram, SeccompError> {
    let mut sorted: Vec<u32> = nrs
        .iter()
        .map(|&n| {
            u32::try_from(n).map_err(|_| SeccompError::Build(format!("system call number {n}")))
        })
        .collect::<Result<_, _>>()?;
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for n in sorted {
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => ranges.push((n, n)),
        }
    }
    let arch = audit_arch()?;
    let mut prog = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFFSET),
        jump(libc::BPF_JEQ, arch, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
    ];
    prog.extend(search(&ranges, hit, miss)?);
    Ok(prog)
}

const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn audit_arch() -> Result<u32, SeccompError> {
    match std::env::consts::ARCH {
        // EM_X86_64 and EM_AARCH64 with __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE (linux/audit.h).
        "x86_64" => Ok(62 | 0xC000_0000),
        "aarch64" => Ok(183 | 0xC000_0000),
        other => Err(SeccompError::Build(format!(
            "no seccomp architecture for {other}"
        ))),
    }
}

fn stmt(code: u32, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Code that, with the call's number loaded, returns `hit` if it lies in one of `ranges`
/// (sorted, disjoint), else `miss`. Jumps only go forward, at most 255 instructions.
fn search(ranges: &[(u32, u32)], hit: u32, miss: u32) -> Result<BpfProgram, SeccompError> {
    let ret = |k| stmt(libc::BPF_RET | libc::BPF_K, k);
    Ok(match ranges {
        [] => vec![ret(miss)],
        [(lo, hi)] => vec![
            // below lo: miss; above hi: miss; else hit.
            jump(libc::BPF_JGE, *lo, 0, 2),
            jump(libc::BPF_JGT, *hi, 1, 0),
            ret(hit),
            ret(miss),
        ],
        _ => {
            let (left, right) = ranges.split_at(ranges.len() / 2);
            let left = search(left, hit, miss)?;
            let over = u8::try_from(left.len()).map_err(|_| {
                SeccompError::Build("the allow-list is too long for one program".into())
            })?;
            let mut code = vec![jump(libc::BPF_JGE, right[0].0, over, 0)];
            code.extend(left);
            code.extend(search(right, hit, miss)?);
            code
        }
    })
}

/// Installs the programs on the calling thread. `no_new_privs` must already be set.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    /// Arguments that make the entry's condition true and, should a filter ever fail to stop the
    /// call, make the kernel refuse it without side effects (a bad length, a bad flag).
    fn args_for(e: &Entry) -> [u64; 6] {
        let mut a = [0u64; 6];
        match e.name {
            "sethostname" | "setdomainname" => a[1] = 1 << 20,
            "kexec_load" | "kexec_file_load" => a[3] = u64::from(u32::MAX),
            "reboot" => a[0] = 1,
            _ => {}
        }
        match e.when {
            When::Always => {}
            When::AnyBit { arg, bits } => a[arg as usize] = bits[0],
            When::Ne { arg, value } => a[arg as usize] = u64::from(value.wrapping_add(1)),
            When::NoneOf { arg, values } => {
                a[arg as usize] = if values.contains(&(libc::AF_NETLINK as u32)) {
                    libc::AF_PACKET as u64
                } else {
                    libc::AF_NETLINK as u64
                }
            }
            // With the upper half set: the filter must compare as the kernel reads it.
            When::AnyOf { arg, values } => a[arg as usize] = (1 << 32) | u64::from(values[0]),
            When::LacksBit { arg, .. } => a[arg as usize] = libc::SIGCHLD as u64,
        }
        a
    }

    /// Runs `nr(args)` in a child under the policy; the child's fate.
    fn under_policy(programs: &[BpfProgram], nr: i64, a: [u64; 6]) -> WaitStatus {
        // SAFETY: the child only makes raw system calls and `_exit`s: no allocation, no lock,
        // so the other test threads of this process cannot deadlock it.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                // SAFETY: prctl and syscall with integer arguments; `_exit` never returns.
                unsafe {
                    // No controlling terminal: a call that got through could not touch one.
                    libc::setsid();
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    for p in programs {
                        if seccompiler::apply_filter(p).is_err() {
                            libc::_exit(200);
                        }
                    }
                    let r = libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
                    let code = if r == -1 {
                        *libc::__errno_location()
                    } else {
                        0
                    };
                    // A call that went through (clone, socket) must not leave a second child.
                    if nr == libc::SYS_clone && r == 0 {
                        libc::_exit(0);
                    }
                    libc::_exit(code.min(199));
                }
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    /// Runs a program made of the instructions `allow_list` emits, as the kernel would;
    /// (verdict, instructions executed).
    fn interpret(prog: &[seccompiler::sock_filter], arch: u32, nr: u32) -> (u32, usize) {
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = &prog[pc];
            steps += 1;
            let code = u32::from(i.code);
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                a = match i.k {
                    NR_OFFSET => nr,
                    ARCH_OFFSET => arch,
                    k => panic!("loads offset {k}"),
                };
                pc += 1;
            } else if code == libc::BPF_RET | libc::BPF_K {
                return (i.k, steps);
            } else {
                let taken = match code & !(libc::BPF_JMP | libc::BPF_K) {
                    libc::BPF_JEQ => a == i.k,
                    libc::BPF_JGE => a >= i.k,
                    libc::BPF_JGT => a > i.k,
                    op => panic!("instruction {op:#x}"),
                };
                pc += 1 + usize::from(if taken { i.jt } else { i.jf });
            }
        }
    }

    #[test]
    fn the_allow_list_program_allows_exactly_its_calls_in_a_few_steps() {
        let arch = audit_arch().unwrap();
        for list in [ALLOWED.to_vec(), wasm_allowed()] {
            let nrs: Vec<i64> = list.iter().map(|(_, nr)| *nr).collect();
            let prog = allow_list(&nrs).unwrap();
            assert!(prog.len() < 400, "{} instructions", prog.len());
            let mut deepest = 0;
            // Every number the kernel has and then some, x32's, and the extremes.
            let probes = (0..2048u32)
                .chain((0..600).map(|n| n | 0x4000_0000))
                .chain([u32::MAX, u32::MAX - 1, 0x8000_0000]);
            for nr in probes {
                let (verdict, steps) = interpret(&prog, arch, nr);
                let want = if nrs.contains(&i64::from(nr)) {
                    RET_ALLOW
                } else {
                    RET_ENOSYS
                };
                assert_eq!(verdict, want, "system call {nr}");
                deepest = deepest.max(steps);
            }
            assert!(deepest <= 16, "{deepest} instructions for one call");
            // Another architecture's numbers mean other calls: killed, whatever the number.
            assert_eq!(
                interpret(&prog, arch ^ 1, 0).0,
                libc::SECCOMP_RET_KILL_PROCESS
            );
        }
        // The edges: nothing allowed, one call, two adjacent ranges.
        assert_eq!(interpret(&allow_list(&[]).unwrap(), arch, 0).0, RET_ENOSYS);
        let one = allow_list(&[7]).unwrap();
        let got: Vec<u32> = [6, 7, 8]
            .iter()
            .map(|&n| interpret(&one, arch, n).0)
            .collect();
        assert_eq!(got, [RET_ENOSYS, RET_ALLOW, RET_ENOSYS]);
        let two = allow_list(&[3, 4, 6, 5, 9]).unwrap();
        let got: Vec<bool> = (0..11)
            .map(|n| interpret(&two, arch, n).0 == RET_ALLOW)
            .collect();
        let want: Vec<bool> = (0..11).map(|n| (3..=6).contains(&n) || n == 9).collect();
        assert_eq!(got, want);
        assert!(allow_list(&[-1]).is_err());
        // The killed calls' program: killed exactly when listed, else allowed (to the next).
        let killed: Vec<i64> = NATIVE
            .iter()
            .filter(|e| e.verdict == Verdict::Kill)
            .map(|e| e.nr)
            .collect();
        let prog = lookup(&killed, libc::SECCOMP_RET_KILL_PROCESS, RET_ALLOW).unwrap();
        for nr in 0..2048u32 {
            let want = if killed.contains(&i64::from(nr)) {
                libc::SECCOMP_RET_KILL_PROCESS
            } else {
                RET_ALLOW
            };
            assert_eq!(interpret(&prog, arch, nr).0, want, "system call {nr}");
        }
    }

    #[test]
    fn every_entry_gets_exactly_its_verdict() {
        every_entry_of(NATIVE, ALLOWED);
    }

    #[test]
    fn every_entry_of_the_wasm_host_gets_exactly_its_verdict() {
        every_entry_of(&wasm(), &wasm_allowed());
    }

    #[test]
    fn the_wasm_host_cannot_exec_and_starts_threads_only() {
        let programs = compile(&wasm(), &wasm_allowed()).unwrap();
        for nr in [libc::SYS_execve, libc::SYS_execveat] {
            let st = under_policy(&programs, nr, [0; 6]);
            assert!(
                matches!(
                    st,
                    WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
                ),
                "{nr}: {st:?}"
            );
        }
        // A process: refused.
        let st = under_policy(
            &programs,
            libc::SYS_clone,
            [libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, libc::EPERM)), "{st:?}");
        // A thread passes the filter: these flags (CLONE_THREAD without CLONE_SIGHAND) then
        // make the kernel itself refuse it with EINVAL, so no thread runs on this stack.
        let st = under_policy(
            &programs,
            libc::SYS_clone,
            [libc::CLONE_THREAD as u64, 0, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, libc::EINVAL)), "{st:?}");
        // A refused call fails with ENOSYS; one wasmtime needs goes through.
        for nr in WASM_REFUSED
            .iter()
            .filter(|nr| !WASM_EXTRA.iter().any(|e| e.nr == **nr))
        {
            if matches!(
                *nr,
                libc::SYS_fork
                    | libc::SYS_vfork
                    | libc::SYS_execve
                    | libc::SYS_execveat
                    | libc::SYS_socket
            ) {
                continue;
            }
            let st = under_policy(&programs, *nr, [u64::MAX; 6]);
            assert!(
                matches!(st, WaitStatus::Exited(_, libc::ENOSYS)),
                "{nr}: {st:?}"
            );
        }
        let st = under_policy(&programs, libc::SYS_fork, [0; 6]);
        assert!(
            matches!(st, WaitStatus::Exited(_, libc::ENOSYS)),
            "fork: {st:?}"
        );
        let st = under_policy(
            &programs,
            libc::SYS_madvise,
            [0, 0, libc::MADV_DONTNEED as u64, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "madvise: {st:?}");
    }

    #[test]
    fn the_wasm_host_refuses_only_calls_on_the_native_list() {
        for nr in WASM_REFUSED {
            assert!(
                ALLOWED.iter().any(|(_, a)| a == nr),
                "{nr} is not on ALLOWED"
            );
        }
        for needed in [
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_rt_sigaction,
            libc::SYS_sigaltstack,
            libc::SYS_futex,
            libc::SYS_clone,
        ] {
            assert!(wasm_allowed().iter().any(|(_, a)| *a == needed), "{needed}");
        }
    }

    fn every_entry_of(policy: &[Entry], allowed: &[(&str, i64)]) {
        let programs = compile(policy, allowed).unwrap();
        for e in policy {
            let got = under_policy(&programs, e.nr, args_for(e));
            match e.verdict {
                Verdict::Kill => assert!(
                    matches!(
                        got,
                        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
                    ),
                    "{}: {got:?}",
                    e.name
                ),
                Verdict::Errno(n) => {
                    assert_eq!(got, WaitStatus::Exited(got.pid().unwrap(), n), "{}", e.name)
                }
            }
        }
    }

    #[test]
    fn what_the_conditions_leave_out_is_allowed() {
        let programs = compile(NATIVE, ALLOWED).unwrap();
        // A plain fork-style clone (SIGCHLD only): the child exits 0, the parent sees success.
        let st = under_policy(
            &programs,
            libc::SYS_clone,
            [libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
        // An AF_UNIX socket.
        let st = under_policy(
            &programs,
            libc::SYS_socket,
            [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
        // An ioctl other than TIOCSTI reaches the kernel (here: EBADF on fd -1).
        let st = under_policy(
            &programs,
            libc::SYS_ioctl,
            [u64::MAX, libc::TIOCGWINSZ, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, libc::EBADF)), "{st:?}");
        // personality: asking, and PER_LINUX, pass; turning off ASLR does not, nor TIOCLINUX
        // with junk in the upper half.
        for persona in [0xffff_ffff, 0] {
            let st = under_policy(&programs, libc::SYS_personality, [persona, 0, 0, 0, 0, 0]);
            assert!(
                matches!(st, WaitStatus::Exited(_, 0)),
                "{persona:#x}: {st:?}"
            );
        }
        let st = under_policy(
            &programs,
            libc::SYS_personality,
            [libc::ADDR_NO_RANDOMIZE as u64, 0, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, libc::EPERM)), "{st:?}");
        let st = under_policy(
            &programs,
            libc::SYS_ioctl,
            [0, (7 << 40) | libc::TIOCLINUX, 0, 0, 0, 0],
        );
        assert!(matches!(st, WaitStatus::Exited(_, libc::EPERM)), "{st:?}");
        // getpid: untouched.
        let st = under_policy(&programs, libc::SYS_getpid, [0; 6]);
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn a_network_grant_allows_ip_sockets_and_still_no_others() {
        let programs = compile(&native(true), ALLOWED).unwrap();
        for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX] {
            let st = under_policy(
                &programs,
                libc::SYS_socket,
                [family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            );
            assert!(matches!(st, WaitStatus::Exited(_, 0)), "{family}: {st:?}");
        }
        let st = under_policy(
            &programs,
            libc::SYS_socket,
            [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0],
        );
        assert!(
            matches!(st, WaitStatus::Exited(_, libc::EAFNOSUPPORT)),
            "{st:?}"
        );
        // Without the grant, IP sockets are refused.
        let programs = compile(&native(false), ALLOWED).unwrap();
        let st = under_policy(
            &programs,
            libc::SYS_socket,
            [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
        );
        assert!(
            matches!(st, WaitStatus::Exited(_, libc::EAFNOSUPPORT)),
            "{st:?}"
        );
    }

    #[test]
    fn calls_not_on_the_allow_list_fail_with_enosys() {
        let programs = compile(NATIVE, ALLOWED).unwrap();
        for nr in [
            libc::SYS_lookup_dcookie,
            libc::SYS_kcmp,
            libc::SYS_uselib,
            1000,
        ] {
            let st = under_policy(&programs, nr, [0; 6]);
            assert!(
                matches!(st, WaitStatus::Exited(_, libc::ENOSYS)),
                "{nr}: {st:?}"
            );
        }
    }

    #[test]
    fn after_loading_no_memory_can_be_made_executable() {
        let mut programs = compile(&wasm(), &wasm_allowed()).unwrap();
        programs.extend(no_new_exec().unwrap());
        let (rw, rx) = (
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
        );
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        // A writable anonymous mapping: allowed (its address, in the exit code's low byte).
        let st = under_policy(&programs, libc::SYS_mmap, [0, 4096, rw, anon, u64::MAX, 0]);
        assert!(!matches!(st, WaitStatus::Exited(_, libc::EPERM)), "{st:?}");
        let st = under_policy(&programs, libc::SYS_mmap, [0, 4096, rx, anon, u64::MAX, 0]);
        assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), libc::EPERM));
        // mprotect of anything to executable: refused before the kernel looks at the address.
        let st = under_policy(&programs, libc::SYS_mprotect, [4096, 4096, rx, 0, 0, 0]);
        assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), libc::EPERM));
        let st = under_policy(
            &programs,
            libc::SYS_pkey_mprotect,
            [4096, 4096, rx, 0, 0, 0],
        );
        assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), libc::EPERM));
    }

    #[test]
    fn the_compiler_cannot_signal_anyone() {
        let programs = compile(&wasm(), &compile_allowed()).unwrap();
        for nr in COMPILE_REFUSED {
            // Signal 0 to this test's own process: reachable unconfined, ENOSYS here.
            let me = u64::from(std::process::id());
            let st = under_policy(&programs, *nr, [me, 0, 0, 0, 0, 0]);
            assert!(
                matches!(st, WaitStatus::Exited(_, libc::ENOSYS)),
                "{nr}: {st:?}"
            );
        }
        assert!(wasm_allowed().iter().any(|(n, _)| *n == "kill"));
    }

    #[test]
    fn the_allow_list_never_names_a_killed_call() {
        let native: Vec<(&str, i64)> = ALLOWED.to_vec();
        for (policy, allowed) in [(NATIVE.to_vec(), native), (wasm(), wasm_allowed())] {
            for e in policy.iter().filter(|e| e.verdict == Verdict::Kill) {
                assert!(
                    !allowed.iter().any(|(_, nr)| *nr == e.nr),
                    "{} is both allowed and killed",
                    e.name
                );
            }
        }
    }

    #[test]
    fn the_policy_names_each_call_once() {
        for policy in [NATIVE.to_vec(), wasm()] {
            let mut seen = std::collections::HashSet::new();
            for e in &policy {
                assert!(seen.insert(e.name), "{} twice", e.name);
            }
            assert!(policy.len() >= 40);
        }
    }
}
