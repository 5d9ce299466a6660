//! The native substrate's seccomp policy, kept as data: one [`Entry`] per rule, each with a
//! test that makes the call under the filter and sees exactly the entry's verdict.
//!
//! What it refuses and why:
//! - **Kill** (the process dies with SIGSYS; the supervisor audits it): calls no capsule needs
//!   and that widen the kernel's attack surface or reach outside the capsule — tracing other
//!   processes, BPF, perf, keyrings, userfaultfd, io_uring, kexec, kernel modules, mounts and
//!   namespace changes, chroot, swap, reboot, clocks, raw port I/O.
//! - **ENOSYS** for `clone3`: its flags sit in memory a filter cannot read, so it cannot be
//!   checked; libc falls back to `clone`, whose flags it can.
//! - **EPERM** for `clone` with any namespace flag, for the TIOCSTI ioctl (typing into a
//!   terminal), and for `execveat` (exec by descriptor: code from a memfd, no path to check).
//! - **EAFNOSUPPORT** for sockets of any family but AF_UNIX: no network until a grant says so.
//!
//! Everything else is allowed for now; the allow-list with ENOSYS for unknown calls comes with
//! the rest of the confinement (user namespace and private root), when the set of calls a
//! capsule's runtime needs is fixed by its substrate.

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
    /// Argument `arg` (a 32-bit int) differs from `value`.
    Ne {
        arg: u8,
        value: u32,
    },
    /// Argument `arg` (a 64-bit value) equals `value`.
    Eq {
        arg: u8,
        value: u64,
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
    Entry {
        name: "ioctl TIOCSTI",
        nr: libc::SYS_ioctl,
        verdict: Verdict::Errno(libc::EPERM),
        when: When::Eq {
            arg: 1,
            value: libc::TIOCSTI,
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

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// The policy as BPF programs, one per verdict (the kernel applies the strictest verdict of all
/// installed filters). Built before any fork: building allocates, installing does not.
pub fn compile(policy: &[Entry]) -> Result<Vec<BpfProgram>, SeccompError> {
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
            When::Eq { arg, value } => rules.push(
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::Eq,
                    value,
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
            When::Eq { arg, value } => a[arg as usize] = value,
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

    #[test]
    fn every_entry_gets_exactly_its_verdict() {
        let programs = compile(NATIVE).unwrap();
        for e in NATIVE {
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
        let programs = compile(NATIVE).unwrap();
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
        // getpid: untouched.
        let st = under_policy(&programs, libc::SYS_getpid, [0; 6]);
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn the_policy_names_each_call_once() {
        let mut seen = std::collections::HashSet::new();
        for e in NATIVE {
            assert!(seen.insert(e.name), "{} twice", e.name);
        }
        assert!(NATIVE.len() >= 40);
    }
}
