//! The capsule's user namespace, the first step of confinement: every other namespace is
//! created together with it and belongs to it, so the set-up that follows (mounts, the
//! loopback device) needs capabilities only there, never on the host.
//!
//! The map holds one uid and one gid, [`INSIDE_ID`], onto the capsule's own host uid (a root
//! supervisor gives each capsule one from the node's range) or, for a supervisor run by a
//! normal user, onto that user. Root inside is not mapped at all: no process in the namespace
//! is or can become uid 0, and a file owned by anyone else shows as `nobody`. The process that
//! creates the namespace (init) holds the namespace's capabilities for the set-up; the capsule
//! clears them all before it runs (see [`crate::confine`]).

use std::os::fd::OwnedFd;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

/// The one uid and gid inside every capsule's user namespace.
pub const INSIDE_ID: u32 = 1000;

/// Whether this kernel lets this process create a user namespace, judged from its settings.
/// A wrong guess is not silent: creating it then fails, and so does the capsule.
pub fn available(root: bool) -> Result<(), String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    if !root && read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Err("unprivileged user namespaces are disabled \
                    (kernel.unprivileged_userns_clone = 0)"
            .into());
    }
    Ok(())
}

/// `fork` into new namespaces, all created by the one call: the child starts inside them (PID 1
/// of a new PID namespace when `flags` asks for one), and with `CLONE_NEWUSER` they all belong
/// to the new user namespace.
pub fn clone_into(flags: CloneFlags) -> nix::Result<ForkResult> {
    let flags = flags.bits() as nix::libc::c_ulong | nix::libc::SIGCHLD as nix::libc::c_ulong;
    // SAFETY: clone(2) without CLONE_VM and without a new stack is fork(2): the child runs on a
    // copy of this process's memory. The caller is single-threaded (checked at start), so no
    // lock can be held by a thread that does not exist in the child. The pointer arguments are
    // all null, so their order (which differs between architectures) does not matter.
    let r =
        unsafe { nix::libc::syscall(nix::libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// The map files' content: [`INSIDE_ID`] onto `host`.
pub fn map_line(host: u32) -> String {
    format!("{INSIDE_ID} {host} 1\n")
}

/// The parent's half: writes `child`'s maps, then lets it go on. Without privilege the kernel
/// takes only a map onto this process's own ids, and only once `setgroups` is denied.
pub fn write_maps(
    child: Pid,
    uid: u32,
    gid: u32,
    privileged: bool,
    go: &OwnedFd,
) -> Result<(), String> {
    let write = |file: &str, text: &str| {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, text).map_err(|e| format!("writing {path}: {e}"))
    };
    if !privileged {
        write("setgroups", "deny")?;
    }
    write("uid_map", &map_line(uid))?;
    write("gid_map", &map_line(gid))?;
    nix::unistd::write(go, b"1")
        .map(drop)
        .map_err(|e| format!("releasing the capsule's init: {e}"))
}

/// The child's half: waits for its maps, then becomes [`INSIDE_ID`], keeping the namespace's
/// capabilities for the set-up still to do (root inside is not mapped, so changing uid does not
/// count as leaving root and takes nothing away).
pub fn enter(go: &OwnedFd) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match nix::unistd::read(go, &mut byte) {
        Ok(1) => {}
        _ => return Err("the maps were not written".into()),
    }
    let id = INSIDE_ID;
    let last = |what: &str| format!("{what}: {}", nix::errno::Errno::last().desc());
    // SAFETY: set*id and setgroups with integer arguments and a null list.
    unsafe {
        // The supplementary groups of a root capsule-host: dropped where the kernel allows it
        // (a map written with privilege); confinement checks again before the exec.
        let _ = nix::libc::setgroups(0, std::ptr::null());
        if nix::libc::setresgid(id, id, id) != 0 {
            return Err(last("setresgid"));
        }
        if nix::libc::setresuid(id, id, id) != 0 {
            return Err(last("setresuid"));
        }
    }
    // A uid change resets this; the capsule's init must stay out of reach of ptrace and core
    // dumps all the same.
    let _ = nix::sys::prctl::set_dumpable(false);
    Ok(())
}

/// Whether the other end of `go` (held by the parent for its whole life) is closed.
pub fn parent_gone(go: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(go.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_map_holds_one_id_and_never_root_inside() {
        assert_eq!(map_line(200_001), "1000 200001 1\n");
        assert_ne!(INSIDE_ID, 0);
    }

    #[test]
    fn a_child_in_a_user_namespace_runs_as_the_inside_id_onto_its_host_id() {
        // Loud, not skipped: confinement needs user namespaces (`elastos doctor` reports them).
        available(nix::unistd::geteuid().is_root()).expect("user namespaces on this machine");
        let (go_r, go_w) = nix::unistd::pipe().unwrap();
        let (res_r, res_w) = nix::unistd::pipe().unwrap();
        let (done_r, done_w) = nix::unistd::pipe().unwrap();
        // As root, onto an unprivileged id, as a root supervisor does; else onto this user.
        let privileged = nix::unistd::geteuid().is_root();
        let (host_uid, host_gid) = if privileged {
            (200_999, 200_999)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        match clone_into(CloneFlags::CLONE_NEWUSER).unwrap() {
            ForkResult::Child => {
                // The test harness has other threads: nothing here allocates (their locks may
                // be held in this copy), except on the error path.
                drop(go_w);
                drop(res_r);
                drop(done_w);
                let uid: u32 = match enter(&go_r) {
                    Ok(()) => nix::unistd::getuid().as_raw(),
                    Err(_) => u32::MAX,
                };
                let _ = nix::unistd::write(&res_w, &uid.to_le_bytes());
                // Stays until the parent has read its map.
                let _ = nix::unistd::read(&done_r, &mut [0u8; 1]);
                // SAFETY: _exit in a forked child, skipping the test harness's destructors.
                unsafe { nix::libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                drop(go_r);
                drop(res_w);
                drop(done_r);
                write_maps(child, host_uid, host_gid, privileged, &go_w).unwrap();
                let mut uid = [0u8; 4];
                std::fs::File::from(res_r).read_exact(&mut uid).unwrap();
                let map = std::fs::read_to_string(format!("/proc/{child}/uid_map")).unwrap();
                let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
                drop(done_w);
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(u32::from_le_bytes(uid), INSIDE_ID, "the uid inside");
                let map: Vec<&str> = map.split_whitespace().collect();
                assert_eq!(
                    map,
                    [INSIDE_ID.to_string(), host_uid.to_string(), "1".into()]
                );
                // As the host sees it: the mapped host uid, not root.
                let seen = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                assert_eq!(seen, host_uid.to_string());
            }
        }
    }
}
