//! `deny-syscalls ERRNO SPEC... -- PROGRAM ARGS...`: runs PROGRAM under a seccomp filter that
//! fails the named system calls with ERRNO, as a container runtime's seccomp profile or an older
//! kernel would. The fail-closed tests run capsule-host this way, one confinement layer's calls
//! refused at a time, to show that a layer the machine cannot give stops the capsule.
//!
//! A SPEC is `NAME` (every call), `NAME@ARG=VALUE` (argument ARG equals VALUE) or
//! `NAME@ARG&FLAG` (argument ARG has the bits of FLAG set). Numbers may be hex (`0x...`).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::libc;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

fn number(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

fn syscall(name: &str) -> Result<i64, String> {
    Ok(match name {
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        "unshare" => libc::SYS_unshare,
        "pivot_root" => libc::SYS_pivot_root,
        "mount" => libc::SYS_mount,
        "mkdir" => libc::SYS_mkdir,
        "mkdirat" => libc::SYS_mkdirat,
        "prlimit64" => libc::SYS_prlimit64,
        "setrlimit" => libc::SYS_setrlimit,
        "setresuid" => libc::SYS_setresuid,
        "setuid" => libc::SYS_setuid,
        "setresgid" => libc::SYS_setresgid,
        "setgid" => libc::SYS_setgid,
        "setgroups" => libc::SYS_setgroups,
        "capset" => libc::SYS_capset,
        "prctl" => libc::SYS_prctl,
        "seccomp" => libc::SYS_seccomp,
        "landlock_create_ruleset" => libc::SYS_landlock_create_ruleset,
        "landlock_add_rule" => libc::SYS_landlock_add_rule,
        "landlock_restrict_self" => libc::SYS_landlock_restrict_self,
        other => return Err(format!("unknown system call {other}")),
    })
}

fn errno(name: &str) -> Result<u32, String> {
    Ok(match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "EINVAL" => libc::EINVAL,
        "ENOSYS" => libc::ENOSYS,
        "ENOSPC" => libc::ENOSPC,
        other => return Err(format!("unknown errno {other}")),
    } as u32)
}

/// One SPEC as a syscall number and its rule (none: every call).
fn spec(s: &str) -> Result<(i64, Option<SeccompRule>), String> {
    let Some((name, cond)) = s.split_once('@') else {
        return Ok((syscall(s)?, None));
    };
    let (arg, op, value) = if let Some((arg, v)) = cond.split_once('=') {
        (arg, SeccompCmpOp::Eq, number(v)?)
    } else if let Some((arg, flag)) = cond.split_once('&') {
        let flag = number(flag)?;
        (arg, SeccompCmpOp::MaskedEq(flag), flag)
    } else {
        return Err(format!("{s}: expected NAME@ARG=VALUE or NAME@ARG&FLAG"));
    };
    let arg: u8 = arg.parse().map_err(|e| format!("{s}: {e}"))?;
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("{s}: {e}"))?;
    let rule = SeccompRule::new(vec![condition]).map_err(|e| format!("{s}: {e}"))?;
    Ok((syscall(name)?, Some(rule)))
}

fn install(errno_name: &str, specs: &[String]) -> Result<(), String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in specs {
        let (nr, rule) = spec(s)?;
        // An unconditional entry is an empty rule list; a conditional one adds to it.
        let entry = rules.entry(nr).or_default();
        entry.extend(rule);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno(errno_name)?),
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| format!("{e:?}"))?,
    )
    .map_err(|e| e.to_string())?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e| format!("{e:?}"))?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: deny-syscalls ERRNO SPEC... -- PROGRAM ARGS...");
        return ExitCode::from(2);
    };
    let (Some(errno_name), Some(program)) = (args.first(), args.get(split + 1)) else {
        eprintln!("usage: deny-syscalls ERRNO SPEC... -- PROGRAM ARGS...");
        return ExitCode::from(2);
    };
    if let Err(e) = install(errno_name, &args[1..split]) {
        eprintln!("deny-syscalls: {e}");
        return ExitCode::from(2);
    }
    let e = std::process::Command::new(program)
        .args(&args[split + 2..])
        .exec();
    eprintln!("deny-syscalls: {program}: {e}");
    ExitCode::from(127)
}
