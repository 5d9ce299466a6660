//! What the hostile-capsule test (`confinement.rs`) builds around its control run, so that run
//! shows every escape reaches its target without being able to harm the machine:
//!
//! - [`TestNet`]: two network namespaces of the test's own, joined by a veth pair. `near` plays
//!   the host's network: the test's supervisor runs in it (so its capsules' "host" network is
//!   this one) and so does the control run; `far`, at [`FAR_ADDR`], plays another host. Nothing
//!   of the machine's own network is touched, and no name is left anywhere: the namespaces are
//!   held only by this process's descriptors and sockets, so they, and the veth pair with them,
//!   vanish when the test drops them, or when its process dies however it dies.
//! - [`Control`]: the probe run as [`CONTROL_UID`], an unprivileged host uid of no account, in
//!   `near` and in a user namespace of its own (that uid mapped onto root inside, so mount,
//!   chroot, unshare... succeed there, on nothing but its own namespaces) with fresh mount, UTS,
//!   IPC and cgroup namespaces. It keeps the host's PID namespace, so it can signal a process of
//!   its uid the test started, and nothing else: it holds no capability over anything the
//!   machine owns.
//! - [`Grant`]: read or search access for the control uid to a target someone else owns (the
//!   node's key, another capsule's data), as a POSIX ACL added for the control run alone; the
//!   owner, the mode and the file stay the real ones.

use std::ffi::CString;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::libc;
use nix::sched::CloneFlags;

/// The control run's host uid and gid: no account has it (the test of a normal user's supervisor
/// plays 4242).
pub(crate) const CONTROL_UID: u32 = 4243;

/// The near end of the veth pair (in `near`) and the far one (in `far`): a /30 of 198.18.0.0/15,
/// the range reserved for benchmarking networks (RFC 2544), never a real host.
pub(crate) const NEAR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 243, 1);
pub(crate) const FAR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 243, 2);

/// Two network namespaces and the veth pair between them.
pub(crate) struct TestNet {
    pub(crate) near: OwnedFd,
    pub(crate) far: OwnedFd,
}

impl TestNet {
    pub(crate) fn new() -> TestNet {
        let near = new_netns();
        let far = new_netns();
        ip(&near, &["link", "set", "lo", "up"]);
        ip(&far, &["link", "set", "lo", "up"]);
        // `ip` opens a namespace named by a path; this process's descriptor of `far` is one.
        let far_path = format!("/proc/{}/fd/{}", std::process::id(), far.as_raw_fd());
        ip(
            &near,
            &[
                "link", "add", "near0", "type", "veth", "peer", "name", "far0", "netns", &far_path,
            ],
        );
        ip(
            &near,
            &["addr", "add", &format!("{NEAR_ADDR}/30"), "dev", "near0"],
        );
        ip(&near, &["link", "set", "near0", "up"]);
        ip(
            &far,
            &["addr", "add", &format!("{FAR_ADDR}/30"), "dev", "far0"],
        );
        ip(&far, &["link", "set", "far0", "up"]);
        TestNet { near, far }
    }

    /// `cmd` joins `near` before it execs (it must start as root).
    pub(crate) fn enter_near(&self, cmd: &mut Command) {
        let fd = self.near.as_raw_fd();
        // SAFETY: only setns, async-signal-safe, in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Runs `f` on a thread that joined the network namespace `ns`: sockets it makes belong there
/// (a network namespace is per thread; this process's other threads keep theirs).
pub(crate) fn within<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).expect("joining a test namespace");
            f()
        })
        .join()
        .expect("a thread in a test namespace")
    })
}

/// A fresh, empty network namespace, held by the returned descriptor alone.
fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("a new network namespace");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("its descriptor"))
    })
    .join()
    .expect("the thread that made a network namespace")
}

/// `ip ARGS` inside the namespace `ns`.
fn ip(ns: &OwnedFd, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let fd = ns.as_raw_fd();
    // SAFETY: only setns, async-signal-safe, in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A TCP listener and a UDP socket, non-blocking, on `addr` of the namespace `ns`: the targets
/// of the network attempts, and the witnesses of what reached them.
pub(crate) struct Listeners {
    pub(crate) tcp: TcpListener,
    pub(crate) udp: UdpSocket,
}

impl Listeners {
    pub(crate) fn on(ns: &OwnedFd, addr: Ipv4Addr) -> Listeners {
        within(ns, || {
            let tcp = TcpListener::bind((addr, 0)).expect("a TCP listener");
            let udp = UdpSocket::bind((addr, 0)).expect("a UDP socket");
            tcp.set_nonblocking(true).expect("non-blocking");
            udp.set_nonblocking(true).expect("non-blocking");
            Listeners { tcp, udp }
        })
    }
    pub(crate) fn tcp_target(&self) -> String {
        self.tcp.local_addr().expect("its address").to_string()
    }
    pub(crate) fn udp_target(&self) -> String {
        self.udp.local_addr().expect("its address").to_string()
    }
    /// Connections and datagrams that arrived since the last call (each was sent before the
    /// probe that sent it exited, so it is already queued).
    pub(crate) fn take(&self) -> (usize, usize) {
        let mut conns = 0;
        while self.tcp.accept().is_ok() {
            conns += 1;
        }
        let mut grams = 0;
        let mut buf = [0u8; 16];
        while self.udp.recv(&mut buf).is_ok() {
            grams += 1;
        }
        (conns, grams)
    }
}

/// The control run: the probe, unconfined, as [`CONTROL_UID`] in throwaway namespaces (see the
/// module's documentation).
pub(crate) struct Control {
    /// A copy of the probe the control uid can reach and run.
    pub(crate) probe: PathBuf,
    /// Its working directory, its own (the relative-path attempt climbs from here).
    pub(crate) dir: PathBuf,
    /// Its TMPDIR, on the same file system as the targets (for the link attempts).
    tmp: PathBuf,
    /// The network namespace it joins.
    net: RawFd,
}

impl Control {
    /// Makes `dir` (which must not exist) the control run's, owned by the control uid, with a
    /// copy of `probe` in it.
    pub(crate) fn new(dir: &Path, probe: &Path, net: &TestNet) -> Control {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("the control run's directory");
        let copy = dir.join("probe");
        std::fs::copy(probe, &copy).expect("copying the probe");
        chmod(&copy, 0o755);
        chmod(&tmp, 0o700);
        chmod(dir, 0o755);
        for p in [dir, &tmp, &copy] {
            give(p, CONTROL_UID);
        }
        Control {
            probe: copy,
            dir: dir.to_path_buf(),
            tmp,
            net: net.near.as_raw_fd(),
        }
    }

    pub(crate) fn run(&self, attempt: &str, arg: &str) -> Output {
        let mut cmd = Command::new(&self.probe);
        cmd.arg(attempt)
            .arg(arg)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", &self.tmp)
            .current_dir(&self.dir);
        let net = self.net;
        let uid = CONTROL_UID;
        // Everything the child writes is made here, before the fork: the child may only make
        // async-signal-safe calls.
        let map = format!("0 {uid} 1\n");
        let paths = [
            "/proc/self/setgroups",
            "/proc/self/uid_map",
            "/proc/self/gid_map",
        ]
        .map(|p| CString::new(p).expect("no NUL"));
        // SAFETY: raw system calls (setrlimit, setns, setgroups, setres[ug]id, prctl, unshare,
        // open, write, close) on memory made before the fork, in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                // Limits first, while the child may still raise them: core dumps allowed and
                // open files up to the hard limit, as an unconfined process may have them.
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                check(libc::setrlimit(libc::RLIMIT_CORE, &unlimited))?;
                let mut nofile = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile))?;
                nofile.rlim_cur = nofile.rlim_max;
                check(libc::setrlimit(libc::RLIMIT_NOFILE, &nofile))?;
                // The test's network, joined while root (its owner is the host's user
                // namespace); the control uid holds no capability in it.
                check(libc::setns(net, libc::CLONE_NEWNET))?;
                // The unprivileged uid, for good: real, effective and saved.
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(uid, uid, uid))?;
                check(libc::setresuid(uid, uid, uid))?;
                // Changing the uid made it non-dumpable, which hands its /proc/self files to
                // root: it could not write its own maps below.
                check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
                check(libc::unshare(
                    libc::CLONE_NEWUSER
                        | libc::CLONE_NEWNS
                        | libc::CLONE_NEWUTS
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWCGROUP,
                ))?;
                // Root inside is the control uid outside, and nothing else is mapped. An
                // unprivileged process may map only itself, and its groups only once setgroups
                // is denied.
                for (path, data) in paths
                    .iter()
                    .zip([&b"deny"[..], map.as_bytes(), map.as_bytes()])
                {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, data.as_ptr().cast(), data.len());
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != data.len() as isize {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        cmd.output().expect("running the control probe")
    }
}

/// POSIX ACLs giving the control uid `perms` (rwx bits) on files it does not own, for as long as
/// this lives; then the ACLs are removed and each file's mode is put back as it was (the ACL's
/// mask shows in the group bits meanwhile: the node's own commands would refuse its home then,
/// so none runs while a grant lives).
pub(crate) struct Grant {
    files: Vec<(PathBuf, u32)>,
}

impl Grant {
    pub(crate) fn new(targets: &[(&Path, u32)]) -> Grant {
        let mut grant = Grant { files: Vec::new() };
        for (path, perms) in targets {
            let mode = std::fs::metadata(path)
                .expect("a target")
                .permissions()
                .mode()
                & 0o7777;
            // Kept before it is changed, so a failure below still restores it.
            grant.files.push((path.to_path_buf(), mode));
            let (owner, group, other) = ((mode >> 6) & 7, (mode >> 3) & 7, mode & 7);
            let undefined = u32::MAX;
            // system.posix_acl_access: version 2, then (tag, perm, id) sorted by tag.
            let mut acl = 2u32.to_le_bytes().to_vec();
            for (tag, perm, id) in [
                (0x01u16, owner, undefined),       // ACL_USER_OBJ
                (0x02, *perms, CONTROL_UID),       // ACL_USER
                (0x04, group, undefined),          // ACL_GROUP_OBJ
                (0x10, *perms | group, undefined), // ACL_MASK
                (0x20, other, undefined),          // ACL_OTHER
            ] {
                acl.extend_from_slice(&tag.to_le_bytes());
                acl.extend_from_slice(&(perm as u16).to_le_bytes());
                acl.extend_from_slice(&id.to_le_bytes());
            }
            let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
            // SAFETY: setxattr reads `acl` (length given) and two NUL-terminated strings.
            let r = unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    c"system.posix_acl_access".as_ptr(),
                    acl.as_ptr().cast(),
                    acl.len(),
                    0,
                )
            };
            assert_eq!(
                r,
                0,
                "an ACL on {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        grant
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        for (path, mode) in &self.files {
            if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
                // SAFETY: removexattr reads two NUL-terminated strings.
                unsafe {
                    libc::removexattr(c.as_ptr(), c"system.posix_acl_access".as_ptr());
                }
            }
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode));
        }
    }
}

/// A process of the control uid in the host's namespaces, killed when this is dropped: what the
/// control run signals in place of processes only root may signal.
pub(crate) struct StandInProcess(std::process::Child);

impl StandInProcess {
    pub(crate) fn start() -> StandInProcess {
        let child = Command::new("sleep")
            .arg("600")
            .uid(CONTROL_UID)
            .gid(CONTROL_UID)
            .spawn()
            .expect("starting a process of the control uid");
        StandInProcess(child)
    }
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for StandInProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub(crate) fn give(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
}

/// A Unix-socket server at `path` that anyone may connect to, answering every connection with a
/// line: a host socket that is not the node's, and what the control run asks in place of the
/// control socket (which answers only its own uid). Stopped when dropped.
pub(crate) struct UnixStandIn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UnixStandIn {
    pub(crate) fn at(path: &Path) -> UnixStandIn {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let listener = std::os::unix::net::UnixListener::bind(path).expect("a Unix listener");
        chmod(path, 0o777);
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"{\"ok\":true}\n");
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        UnixStandIn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UnixStandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
