//! What the kernel says about a capsule's processes that the supervisor cannot see itself: a
//! child of a capsule killed by its seccomp filter, or killed for memory in its cgroup. Only
//! the capsule's main process is the supervisor's child; the rest are reaped inside the
//! capsule. The kernel reports both kinds in its log (`/dev/kmsg`): seccomp kills as audit
//! records (`type=1326 … uid=U pid=P comm="C" … sig=31 … syscall=N`), memory kills as
//! `oom-kill:…,task_memcg=/elastos/NAME.PID,task=C,pid=P,uid=U`. A root supervisor gives every
//! capsule its own uid and cgroup, so each line names its capsule. They are audited as
//! denials of that capsule (`capsule.process-seccomp`, `capsule.oom`), so a flood of them is
//! coalesced like any other (at most 20 a second a capsule and kind, the rest counted). The
//! kernel rate-limits these reports itself, so under a burst of kills some are never seen; the
//! capsule's own main process is audited from its exit code (`capsule.seccomp`) all the same. A supervisor that is not root reads nothing
//! here: its capsules share its uid and have no cgroups (`elastos doctor` says so under `child_kills`).

use std::io::Read;
use std::sync::Arc;

use elastos::audit::Decision;

use super::Shared;

/// One kernel report about a process of a capsule.
#[derive(Debug, PartialEq, Eq)]
pub enum Kill {
    /// Killed by its seccomp filter (SIGSYS) for system call `syscall`.
    Seccomp {
        uid: u32,
        pid: u32,
        comm: String,
        syscall: String,
    },
    /// Killed by the out-of-memory killer of cgroup `elastos/NAME.PID`.
    Oom {
        capsule: String,
        pid: u32,
        comm: String,
    },
}

/// Reads one `/dev/kmsg` record (`PRIO,SEQ,TIME,FLAGS;MESSAGE`).
pub fn parse(record: &str) -> Option<Kill> {
    let msg = record.split_once(';').map_or(record, |(_, m)| m);
    let msg = msg.lines().next()?;
    if msg.contains("type=1326") {
        let field = |k: &str| {
            msg.split_whitespace()
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if field("sig") != Some("31") {
            return None;
        }
        return Some(Kill::Seccomp {
            uid: field("uid")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
            comm: field("comm")?.trim_matches('"').to_string(),
            syscall: field("syscall")?.to_string(),
        });
    }
    let rest = msg.trim_start().strip_prefix("oom-kill:")?;
    let field = |k: &str| {
        rest.split(',')
            .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let memcg = field("task_memcg")?;
    // `/elastos/NAME.PID`: the capsule's name is everything before the last dot.
    let group = memcg.strip_prefix("/elastos/")?;
    let (capsule, _) = group.rsplit_once('.')?;
    Some(Kill::Oom {
        capsule: capsule.to_string(),
        pid: field("pid")?.parse().ok()?,
        comm: field("task")?.to_string(),
    })
}

/// Follows the kernel log from now on, for the supervisor's life, auditing what [`parse`]
/// finds about its capsules. Returns at once when the log cannot be read.
pub fn watch(shared: Arc<Shared>) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open("/dev/kmsg")
    else {
        tracing::warn!("cannot read /dev/kmsg: kills of capsules' child processes are not audited");
        return;
    };
    shared
        .kmsg_active
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // From now on: what happened before this supervisor is not its capsules'.
    // SAFETY: lseek on a descriptor this function owns, integer arguments only.
    unsafe {
        nix::libc::lseek(
            std::os::fd::AsRawFd::as_raw_fd(&kmsg),
            0,
            nix::libc::SEEK_END,
        );
    }
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(kill) = parse(&record) {
                    report(&shared, kill);
                }
            }
            // EPIPE: records were overwritten before this read; go on with the next.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(
                    "reading /dev/kmsg: {e}; kills of capsules' children are no longer audited"
                );
                shared
                    .kmsg_active
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    }
}

fn report(shared: &Shared, kill: Kill) {
    let (name, action, why) = match kill {
        Kill::Seccomp {
            uid,
            pid,
            comm,
            syscall,
        } => {
            let Some(name) = shared.capsule_of_uid(uid) else {
                return;
            };
            (
                name,
                "capsule.process-seccomp",
                format!(
                    "its process {pid} ({}) was killed by the seccomp filter for system call {syscall}",
                    elastos::text::sanitize_capped(&comm, 64)
                ),
            )
        }
        Kill::Oom { capsule, pid, comm } => (
            capsule,
            "capsule.oom",
            format!(
                "its process {pid} ({}) was killed: out of memory in its cgroup (raise [limits] memory in capsule.toml if it needs more)",
                elastos::text::sanitize_capped(&comm, 64)
            ),
        ),
    };
    let Some(actor) = shared.actor_of(&name) else {
        return;
    };
    // Durable before the next report is read (this thread of its own may wait).
    let _ = shared.audit.append(
        elastos::audit::Event {
            actor: actor.into(),
            action: action.into(),
            resource: String::new(),
            decision: Decision::Denied,
            reason: why,
            token: None,
        },
        elastos::audit::Durability::Sync,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reports_of_seccomp_and_memory_kills_are_read() {
        let seccomp = "6,4321,4350691095,-;audit: type=1326 audit(1796667294.546:341): auid=4294967295 uid=200039 gid=200039 ses=4294967295 pid=22358 comm=\"probe\" exe=\"/capsule/bin/probe\" sig=31 arch=c000003e syscall=165 compat=0 ip=0x7fe9ca816829 code=0x80000000";
        assert_eq!(
            parse(seccomp),
            Some(Kill::Seccomp {
                uid: 200039,
                pid: 22358,
                comm: "probe".into(),
                syscall: "165".into()
            })
        );
        // Another signal, or another audit type: not a seccomp kill.
        assert_eq!(parse(&seccomp.replace("sig=31", "sig=0")), None);
        assert_eq!(parse(&seccomp.replace("type=1326", "type=1300")), None);
        let oom = "6,999,1234,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/elastos/my.app.4242,task_memcg=/elastos/my.app.4242,task=probe,pid=22400,uid=200041";
        assert_eq!(
            parse(oom),
            Some(Kill::Oom {
                capsule: "my.app".into(),
                pid: 22400,
                comm: "probe".into()
            })
        );
        // Outside elastos's groups: not a capsule's.
        assert_eq!(parse(&oom.replace("/elastos/", "/user.slice/")), None);
        assert_eq!(parse("6,1,1,-;eth0: link up"), None);
        assert_eq!(parse(""), None);
    }
}
