//! `probe ATTEMPT`: one escape attempt of the hostile test capsule, without side effects.
//!
//! Prints `reached: ...` when the call got to the kernel and did what it asks (the control run,
//! outside elastos, shows every attempt can succeed), or `blocked: ...` with the error when it
//! was refused. A call the seccomp filter forbids outright kills the process instead (SIGSYS).
//! Network targets are `PORT` (on 127.0.0.1) or `ADDRESS:PORT`.

use std::process::ExitCode;

use nix::libc;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn verdict(ok: bool, what: &str) -> ExitCode {
    if ok {
        println!("reached: {what}");
    } else {
        println!(
            "blocked: {what}: {}",
            std::io::Error::from_raw_os_error(errno())
        );
    }
    ExitCode::SUCCESS
}

/// `PORT` (127.0.0.1) or `ADDRESS:PORT`; port 1 (nothing listens there) when unreadable, so a
/// bad argument can only look blocked, never reached.
fn target(arg: &str) -> std::net::SocketAddr {
    arg.parse().unwrap_or_else(|_| {
        std::net::SocketAddr::from(([127, 0, 0, 1], arg.parse::<u16>().unwrap_or(1)))
    })
}

fn main() -> ExitCode {
    let attempt = std::env::args().nth(1).unwrap_or_default();
    let arg = std::env::args().nth(2).unwrap_or_default();
    let carg = std::ffi::CString::new(arg.clone()).unwrap_or_default();
    // SAFETY (for every block below): raw system calls with integer or null arguments that the
    // kernel validates; none of them writes to memory of this process except where noted.
    unsafe {
        match attempt.as_str() {
            // Becoming traceable is harmless, and proves ptrace is reachable.
            "ptrace" => verdict(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == 0, "ptrace"),
            // A map of one u32: creates and closes a BPF object, nothing attached.
            "bpf" => {
                let mut attr = [0u32; 12];
                attr[0] = 2; // BPF_MAP_TYPE_ARRAY
                attr[1] = 4;
                attr[2] = 4;
                attr[3] = 1;
                let fd = libc::syscall(
                    libc::SYS_bpf,
                    0, // BPF_MAP_CREATE
                    attr.as_mut_ptr(),
                    std::mem::size_of_val(&attr),
                );
                verdict(fd >= 0, "bpf map create")
            }
            "keyctl" => {
                // KEYCTL_GET_KEYRING_ID of the session keyring, without creating it.
                let r = libc::syscall(libc::SYS_keyctl, 0, -3i64, 0);
                verdict(r >= 0 || errno() == libc::ENOKEY, "keyctl")
            }
            // User-mode faults only (UFFD_USER_MODE_ONLY): what any process may ask for even when
            // `vm.unprivileged_userfaultfd` is 0, so the unprivileged control run reaches it too.
            "userfaultfd" => {
                let r = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1);
                verdict(r >= 0, "userfaultfd")
            }
            // A software clock counting this process's own user time, created disabled: what
            // `perf_event_paranoid` 2 allows anyone.
            "perf_event_open" => {
                let mut attr = [0u64; 8];
                attr[0] = 1 | (64 << 32); // type PERF_TYPE_SOFTWARE, size PERF_ATTR_SIZE_VER0
                attr[1] = 1; // config PERF_COUNT_SW_TASK_CLOCK
                attr[5] = 1 | (1 << 5) | (1 << 6); // disabled, exclude_kernel, exclude_hv
                let fd = libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_mut_ptr(),
                    0,                        // this process
                    -1,                       // any CPU
                    -1,                       // no group
                    libc::c_ulong::from(8u8), // PERF_FLAG_FD_CLOEXEC
                );
                verdict(fd >= 0, "perf_event_open")
            }
            // Loads nothing: fd -1. EBADF means the kernel let the caller load a module and only
            // then looked at the file; without CAP_SYS_MODULE of the host it answers EPERM.
            "finit_module" => {
                let r = libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0);
                verdict(r == 0 || errno() == libc::EBADF, "finit_module")
            }
            "io_uring" => {
                let mut params = [0u8; 120];
                let r = libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr());
                verdict(r >= 0, "io_uring_setup")
            }
            // A UTS namespace for this short-lived process alone: nothing outside changes.
            "unshare" => verdict(
                libc::unshare(libc::CLONE_NEWUTS) == 0,
                "unshare(CLONE_NEWUTS)",
            ),
            "mount" => {
                let r = libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/nonexistent-elastos-probe".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0,
                );
                // ENOENT means the kernel looked at the path: reached.
                verdict(r == 0 || errno() == libc::ENOENT, "mount")
            }
            "chroot" => verdict(libc::chroot(c"/".as_ptr()) == 0, "chroot(/)"),
            "inet_socket" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                verdict(fd >= 0, "socket(AF_INET)")
            }
            "netlink_socket" => {
                let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                verdict(fd >= 0, "socket(AF_NETLINK)")
            }
            "clone_newuser" => {
                let pid = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                );
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid > 0 {
                    libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                }
                verdict(pid > 0, "clone(CLONE_NEWUSER)")
            }
            "core_dump" => {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_CORE, &mut lim);
                println!(
                    "{}: core dumps (limit {})",
                    if lim.rlim_max > 0 {
                        "reached"
                    } else {
                        "blocked"
                    },
                    lim.rlim_max
                );
                ExitCode::SUCCESS
            }
            "new_privs" => {
                let nnp = libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
                println!(
                    "{}: exec may gain privileges (no_new_privs = {nnp})",
                    if nnp == 0 { "reached" } else { "blocked" }
                );
                ExitCode::SUCCESS
            }
            // Opens read-only, reads nothing: reaching the file is the proof.
            "read_file" => {
                let fd = libc::open(carg.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                verdict(fd >= 0, &format!("open {arg} for reading"))
            }
            // Creates the file the test names (in the test's own scratch directory).
            "write_file" => {
                let fd = libc::open(
                    carg.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o600,
                );
                verdict(fd >= 0, &format!("create {arg}"))
            }
            "list_dir" => {
                let d = libc::opendir(carg.as_ptr());
                verdict(!d.is_null(), &format!("list {arg}"))
            }
            // Signal 0: checks the right to signal, delivers nothing.
            "signal" => {
                let pid: i32 = arg.parse().unwrap_or(1);
                verdict(libc::kill(pid, 0) == 0, &format!("signal pid {pid}"))
            }
            "exec" => {
                let argv = [
                    carg.as_ptr(),
                    c"-c".as_ptr(),
                    c"true".as_ptr(),
                    std::ptr::null(),
                ];
                libc::execv(carg.as_ptr(), argv.as_ptr());
                verdict(false, &format!("exec {arg}"))
            }
            // Asks a Unix-socket server for its status (the supervisor's control socket: what
            // an operator may do, a capsule must not).
            "unix_request" => {
                use std::io::{Read, Write};
                match std::os::unix::net::UnixStream::connect(&arg) {
                    Ok(mut s) => {
                        let _ = s.write_all(b"{\"op\":\"status\"}\n");
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                        let mut buf = [0u8; 256];
                        let n = s.read(&mut buf).unwrap_or(0);
                        if n > 0 {
                            println!("reached: {arg} answered");
                        } else {
                            println!("blocked: {arg} closed the connection unanswered");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        println!("blocked: connect {arg}: {e}");
                        ExitCode::SUCCESS
                    }
                }
            }
            "tcp_connect" => {
                let to = target(&arg);
                let ok =
                    std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5));
                verdict(ok.is_ok(), &format!("TCP connect {to}"))
            }
            "udp_send" => {
                let to = target(&arg);
                let ok = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"x", to));
                verdict(ok.is_ok(), &format!("UDP send to {to}"))
            }
            // A listener of its own on 127.0.0.1, and a connection to it.
            "tcp_self" => {
                let ok = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| {
                    let addr = l.local_addr()?;
                    let stream = std::net::TcpStream::connect(addr)?;
                    Ok((l, stream))
                });
                verdict(ok.is_ok(), "TCP to its own listener on 127.0.0.1")
            }
            "tcp_bind" => {
                let ok = std::net::TcpListener::bind("127.0.0.1:0");
                verdict(ok.is_ok(), "TCP bind 127.0.0.1")
            }
            // A link in the capsule's own tmp that points at a file outside.
            "symlink_read" => {
                let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
                let link =
                    std::ffi::CString::new(format!("{tmp}/probe-link-{}", std::process::id()))
                        .unwrap_or_default();
                libc::symlink(carg.as_ptr(), link.as_ptr());
                let fd = libc::open(link.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                libc::unlink(link.as_ptr());
                verdict(fd >= 0, &format!("read {arg} through a symlink"))
            }
            "hardlink" => {
                let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
                let link =
                    std::ffi::CString::new(format!("{tmp}/probe-hard-{}", std::process::id()))
                        .unwrap_or_default();
                let r = libc::link(carg.as_ptr(), link.as_ptr());
                if r == 0 {
                    libc::unlink(link.as_ptr());
                }
                verdict(r == 0, &format!("hard-link {arg}"))
            }
            "setuid_root" => verdict(libc::setuid(0) == 0, "setuid(0)"),
            // Runs code that is in no file: a copy of `arg` (a program) in a memfd, executed.
            "memfd_exec" => {
                let Ok(bytes) = std::fs::read(&arg) else {
                    println!("blocked: memfd exec: cannot read {arg}");
                    return ExitCode::SUCCESS;
                };
                let fd = libc::memfd_create(c"probe".as_ptr(), 0);
                if fd < 0 {
                    return verdict(false, "memfd_create");
                }
                libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                let argv = [c"probe".as_ptr(), c"memfd_ran".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                libc::fexecve(fd, argv.as_ptr(), envp.as_ptr());
                verdict(false, "exec from a memfd")
            }
            // Spins for 500 ms of wall time; prints the share of a core it got.
            "cpu_burn" => {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(500) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
                let cpu = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
                println!("share: {:.2} ({x})", cpu / start.elapsed().as_secs_f64());
                ExitCode::SUCCESS
            }
            "memfd_ran" => {
                println!("reached: code from a memfd ran");
                ExitCode::SUCCESS
            }
            // Opens /dev/null up to 4096 times (the bound of both runs).
            "fd_exhaustion" => {
                let mut n = 0;
                while n < 4096 {
                    if libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) < 0 {
                        break;
                    }
                    n += 1;
                }
                if n >= 4096 {
                    println!("reached: 4096 descriptors");
                } else {
                    println!("blocked: open failed after {n} descriptors");
                }
                ExitCode::SUCCESS
            }
            // Types into a terminal: a pty this probe opens itself, made the controlling terminal
            // of a child in a session of its own (without CAP_SYS_ADMIN of the host, TIOCSTI
            // works only there). The child reports by its exit code: 0, or the errno.
            // Its own ASLR turned off, as `setarch -R` would.
            "aslr_off" => {
                let done = libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) != -1
                    && libc::personality(0xffff_ffff) & libc::ADDR_NO_RANDOMIZE != 0;
                verdict(done, "personality(ADDR_NO_RANDOMIZE)")
            }
            "tiocsti" | "tiocsti_wide" => {
                let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                if master < 0 || libc::grantpt(master) != 0 || libc::unlockpt(master) != 0 {
                    return verdict(false, "open a pty");
                }
                let name = libc::ptsname(master);
                if name.is_null() {
                    return verdict(false, "name the pty");
                }
                let pid = libc::fork();
                if pid == 0 {
                    libc::setsid();
                    // A session leader without a terminal: opening one (no O_NOCTTY) makes it
                    // the controlling terminal.
                    let slave = libc::open(name, libc::O_RDWR);
                    let c: libc::c_char = b'x' as libc::c_char;
                    // The kernel reads the request's low 32 bits only.
                    let request = if attempt == "tiocsti_wide" {
                        (1 << 32) | libc::TIOCSTI
                    } else {
                        libc::TIOCSTI
                    };
                    if slave < 0 || libc::ioctl(slave, request, &c) != 0 {
                        libc::_exit(errno().clamp(1, 255));
                    }
                    libc::_exit(0);
                }
                if pid < 0 {
                    return verdict(false, "fork");
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    println!("reached: TIOCSTI on a pty");
                } else if libc::WIFEXITED(status) {
                    println!(
                        "blocked: TIOCSTI on a pty: {}",
                        std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status))
                    );
                } else {
                    println!("blocked: TIOCSTI on a pty: the child died (status {status})");
                }
                ExitCode::SUCCESS
            }
            // Touches up to 512 MiB, 16 MiB at a time: the bound of both runs. A memory cap
            // kills the process (SIGKILL from the OOM killer) or refuses the allocation.
            "memory_bomb" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                let chunk = 16 << 20;
                while held.len() * chunk < 512 << 20 {
                    let mut v: Vec<u8> = Vec::new();
                    if v.try_reserve_exact(chunk).is_err() {
                        break;
                    }
                    v.resize(chunk, 1);
                    held.push(v);
                }
                let mib = held.len() * 16;
                if mib >= 512 {
                    println!("reached: 512 MiB resident");
                } else {
                    println!("blocked: allocation refused at {mib} MiB");
                }
                ExitCode::SUCCESS
            }
            // Past the capsule's 1024 (its soft and hard limit): raising a soft limit up to the
            // hard one is always allowed, raising the hard one needs CAP_SYS_RESOURCE.
            "raise_nofile" => {
                let want = libc::rlimit {
                    rlim_cur: 2048,
                    rlim_max: libc::RLIM_INFINITY,
                };
                let mut now = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
                let target = libc::rlimit {
                    rlim_cur: want.rlim_cur,
                    rlim_max: now.rlim_max.max(want.rlim_cur),
                };
                verdict(
                    libc::setrlimit(libc::RLIMIT_NOFILE, &target) == 0,
                    "raise RLIMIT_NOFILE to 2048",
                )
            }
            // At most 256 children (the bound; a capsule's cap, 256 processes of its uid,
            // counts its init and itself too), each waiting on a pipe and gone when it closes: a
            // bounded bomb that harms nothing in the control run either.
            "fork_bomb" | "fork_bomb_on_cue" => {
                // On cue: once a byte arrives on stdin (the test changes a limit meanwhile).
                if attempt == "fork_bomb_on_cue" {
                    println!("waiting for the cue");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    let mut b = [0u8; 1];
                    libc::read(0, b.as_mut_ptr().cast(), 1);
                }
                const BOMB: i32 = 256;
                let mut fds = [0i32; 2];
                libc::pipe(fds.as_mut_ptr());
                let mut n = 0;
                while n < BOMB {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::close(fds[1]);
                        let mut b = [0u8; 1];
                        libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                        libc::_exit(0);
                    }
                    if pid < 0 {
                        break;
                    }
                    n += 1;
                }
                libc::close(fds[1]);
                while libc::wait(std::ptr::null_mut()) > 0 {}
                if n >= BOMB {
                    println!("reached: {BOMB} processes");
                } else {
                    println!("blocked: fork failed after {n} processes");
                }
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("probe: unknown attempt `{other}`");
                ExitCode::from(2)
            }
        }
    }
}
