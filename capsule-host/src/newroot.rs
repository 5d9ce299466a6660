//! The capsule's private root (step 4 of confinement): a small tmpfs holding only what the
//! capsule was given, made its `/` with `pivot_root`, the host's tree detached.
//!
//! ```text
//! /capsule   its package, read-only (nosuid, nodev)        /tmp   its private tmpfs, sized (noexec)
//! /state     its persistent directory, when granted (noexec)
//! /dev/null, /dev/zero, /dev/urandom (bind-mounted nodes)  /proc  its own PID namespace's
//! /usr, /etc/ld.so.cache and /bin /lib /lib64 /sbin links: only with `host://libs`
//! ```
//!
//! Built by init (PID 1 of the capsule's PID namespace: its `/proc` must be mounted from inside
//! that namespace, before the old root is detached) in the private mount namespace. The mounts
//! are data ([`plan`]), tested for what they give; [`apply`] carries them out. Landlock rules
//! were attached to the same inodes before, so they hold on these views unchanged.
//!
//! Init builds the root as the capsule's uid (see [`crate::userns`]), which cannot walk the
//! paths to the package, tmp and state directories through the node's private home. So
//! capsule-host opens every source first ([`pin`]) and init binds them through its descriptors,
//! `/proc/self/fd/N`: no path is looked up twice, and none as the capsule. The new root is a
//! tmpfs mounted over `/tmp` of init's own mount namespace, a directory anyone can reach.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One step of building the root, relative to the new root's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Dir(&'static str),
    /// Bind `source` at `target`; `read_only`, `exec` as given; always nosuid, nodev (but for
    /// device nodes, which need dev).
    Bind {
        source: PathBuf,
        target: &'static str,
        read_only: bool,
        exec: bool,
        device: bool,
    },
    /// An empty file to bind a file or device node onto.
    File(&'static str),
    Symlink {
        link: &'static str,
        to: &'static str,
    },
    Proc(&'static str),
    /// A tmpfs of `size` bytes at `target`, owned by `owner` (as seen in the capsule's user
    /// namespace), mode 0700, nosuid, nodev, noexec. Mounted over the bind of the capsule's
    /// run directory: Landlock, walking up from a file in it, crosses the mount point onto
    /// that directory, whose rule it finds, so no new rule is needed.
    Tmpfs {
        target: &'static str,
        size: u64,
        owner: u32,
    },
}

/// Where the capsule's private `/tmp` comes from and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmp {
    /// Its run directory, which the tmpfs covers (and Landlock's rule names).
    pub dir: PathBuf,
    pub size: u64,
    /// Its uid as seen where the root is built.
    pub owner: u32,
}

/// What the capsule's root holds.
pub fn plan(package: &Path, tmp: &Tmp, state: Option<&Path>, host_libs: bool) -> Vec<Op> {
    let mut ops = vec![
        Op::Dir("capsule"),
        Op::Bind {
            source: package.to_path_buf(),
            target: "capsule",
            read_only: true,
            exec: true,
            device: false,
        },
        Op::Dir("tmp"),
        Op::Bind {
            source: tmp.dir.clone(),
            target: "tmp",
            read_only: false,
            exec: false,
            device: false,
        },
        Op::Tmpfs {
            target: "tmp",
            size: tmp.size,
            owner: tmp.owner,
        },
        Op::Dir("dev"),
    ];
    if let Some(state) = state {
        ops.push(Op::Dir("state"));
        ops.push(Op::Bind {
            source: state.to_path_buf(),
            target: "state",
            read_only: false,
            exec: false,
            device: false,
        });
    }
    for node in ["null", "zero", "urandom"] {
        let target: &'static str = match node {
            "null" => "dev/null",
            "zero" => "dev/zero",
            _ => "dev/urandom",
        };
        ops.push(Op::File(target));
        ops.push(Op::Bind {
            source: PathBuf::from("/dev").join(node),
            target,
            read_only: false,
            exec: false,
            device: true,
        });
    }
    ops.push(Op::Dir("proc"));
    ops.push(Op::Proc("proc"));
    if host_libs {
        ops.push(Op::Dir("usr"));
        ops.push(Op::Bind {
            source: "/usr".into(),
            target: "usr",
            read_only: true,
            exec: true,
            device: false,
        });
        // Debian's merged /usr: the top-level directories are links into it.
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            ops.push(Op::Symlink { link, to });
        }
        if Path::new("/etc/ld.so.cache").exists() {
            ops.push(Op::Dir("etc"));
            ops.push(Op::File("etc/ld.so.cache"));
            ops.push(Op::Bind {
                source: "/etc/ld.so.cache".into(),
                target: "etc/ld.so.cache",
                read_only: true,
                exec: false,
                device: false,
            });
        }
    }
    ops
}

/// Where init mounts the new root, in its own mount namespace.
pub const NEW_ROOT: &str = "/tmp";

/// Opens every bind source (`O_PATH`: nothing is read, no device is opened) and names it by its
/// descriptor instead; the descriptors must live until [`apply`] has run.
pub fn pin(ops: &[Op]) -> Result<(Vec<OwnedFd>, Vec<Op>), String> {
    use nix::fcntl::{open, OFlag};
    let mut fds = Vec::new();
    let mut pinned = Vec::with_capacity(ops.len());
    for op in ops {
        let mut op = op.clone();
        if let Op::Bind { source, .. } = &mut op {
            let fd = open(
                source.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| err(&format!("opening {}", source.display()), e))?;
            *source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            fds.push(fd);
        }
        pinned.push(op);
    }
    Ok((fds, pinned))
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: nix::libc::c_uint = 0x8000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `attrs` on the mount at `at` and every mount below it (mount_setattr with
/// AT_RECURSIVE, Linux 5.12).
fn set_recursively(at: &Path, attrs: u64) -> Result<(), nix::errno::Errno> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(at.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes of `attr` and the NUL-ended
    // `path`, both alive for the call; it writes no memory of this process.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Builds the root in `new_root` (an empty directory), pivots into it, detaches the old one and
/// changes to `/capsule`. In a private mount namespace, as root (inside it).
pub fn apply(new_root: &Path, ops: &[Op]) -> Result<(), String> {
    let none = None::<&str>;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| err("tmpfs for the root", e))?;
    for op in ops {
        match op {
            Op::Dir(d) => std::fs::create_dir(new_root.join(d)).map_err(|e| err(d, e))?,
            Op::File(f) => {
                std::fs::File::create(new_root.join(f)).map_err(|e| err(f, e))?;
            }
            Op::Symlink { link, to } => {
                std::os::unix::fs::symlink(to, new_root.join(link)).map_err(|e| err(link, e))?
            }
            Op::Tmpfs {
                target,
                size,
                owner,
            } => mount(
                Some("tmpfs"),
                &new_root.join(target),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=0700,size={size},uid={owner},gid={owner}").as_str()),
            )
            .map_err(|e| err(&format!("a tmpfs of {size} bytes at /{target}"), e))?,
            Op::Proc(p) => mount(
                Some("proc"),
                &new_root.join(p),
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                none,
            )
            .map_err(|e| err("/proc", e))?,
            Op::Bind {
                source,
                target,
                read_only,
                exec,
                device,
            } => {
                let at = new_root.join(target);
                mount(
                    Some(source.as_path()),
                    &at,
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )
                .map_err(|e| err(&format!("binding {} at /{target}", source.display()), e))?;
                // Flags apply on a remount of the bind, not on the bind itself.
                let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
                if !device {
                    flags |= MsFlags::MS_NODEV;
                }
                if *read_only {
                    flags |= MsFlags::MS_RDONLY;
                }
                if !exec {
                    flags |= MsFlags::MS_NOEXEC;
                }
                mount(none, &at, none, flags, none)
                    .map_err(|e| err(&format!("remounting {target}"), e))?;
                // A remount changes the bind's top mount only: a mount below it in the source
                // tree would stay writable. Read-only (and the rest) for every one of them.
                if *read_only {
                    let mut attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
                    if !exec {
                        attrs |= MOUNT_ATTR_NOEXEC;
                    }
                    set_recursively(&at, attrs).map_err(|e| {
                        err(&format!("making every mount under /{target} read-only"), e)
                    })?;
                }
            }
        }
    }
    let old = new_root.join(".old-root");
    std::fs::create_dir(&old).map_err(|e| err("old root mount point", e))?;
    nix::unistd::pivot_root(new_root, &old).map_err(|e| err("pivot_root", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(|e| err("detaching the old root", e))?;
    std::fs::remove_dir("/.old-root").map_err(|e| err("removing the old root's mount point", e))?;
    // The tmpfs itself read-only now: the capsule writes only to /tmp.
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .map_err(|e| err("making / read-only", e))?;
    std::env::set_current_dir("/capsule").map_err(|e| err("chdir /capsule", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(dir: impl AsRef<Path>) -> Tmp {
        Tmp {
            dir: dir.as_ref().to_path_buf(),
            size: 5 << 20,
            owner: 1000,
        }
    }

    fn binds(ops: &[Op]) -> Vec<(&str, bool, bool)> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Bind {
                    target,
                    read_only,
                    exec,
                    ..
                } => Some((*target, *read_only, *exec)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_root_holds_only_what_was_given() {
        let ops = plan(Path::new("/store/x"), &tmp("/run/t"), None, false);
        assert_eq!(
            binds(&ops),
            [
                ("capsule", true, true),
                ("tmp", false, false),
                ("dev/null", false, false),
                ("dev/zero", false, false),
                ("dev/urandom", false, false),
            ]
        );
        assert!(ops.contains(&Op::Proc("proc")));
        assert!(!ops.iter().any(|o| matches!(o, Op::Symlink { .. })));
        // Its /tmp is a tmpfs of its size, over the bind of its run directory.
        let bind = ops
            .iter()
            .position(|o| matches!(o, Op::Bind { target: "tmp", .. }))
            .unwrap();
        assert_eq!(
            ops[bind + 1],
            Op::Tmpfs {
                target: "tmp",
                size: 5 << 20,
                owner: 1000
            }
        );
    }

    #[test]
    fn host_libs_add_usr_read_only_and_the_loader_cache() {
        let ops = plan(
            Path::new("/store/x"),
            &tmp("/run/t"),
            Some(Path::new("/h/state/x")),
            true,
        );
        let b = binds(&ops);
        assert!(b.contains(&("usr", true, true)), "{b:?}");
        assert!(b.contains(&("state", false, false)), "{b:?}");
        assert!(ops.contains(&Op::Symlink {
            link: "bin",
            to: "usr/bin"
        }));
        // Nothing writable but /tmp, nothing executable from /tmp.
        assert!(b.iter().all(|(t, ro, exec)| *ro
            || t.starts_with("dev/")
            || ((*t == "tmp" || *t == "state") && !exec)));
    }

    #[test]
    fn pinned_sources_are_the_same_files_through_descriptors() {
        use std::os::unix::fs::MetadataExt;
        let pkg = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ops = plan(pkg.path(), &tmp(dir.path()), None, false);
        let (fds, pinned) = pin(&ops).unwrap();
        assert_eq!(fds.len(), binds(&ops).len());
        for (a, b) in ops.iter().zip(&pinned) {
            match (a, b) {
                (Op::Bind { source: was, .. }, Op::Bind { source: now, .. }) => {
                    assert!(now.starts_with("/proc/self/fd/"), "{}", now.display());
                    let (was, now) = (
                        std::fs::metadata(was).unwrap(),
                        std::fs::metadata(now).unwrap(),
                    );
                    assert_eq!((was.dev(), was.ino()), (now.dev(), now.ino()));
                }
                _ => assert_eq!(a, b),
            }
        }
        assert!(pin(&plan(
            &pkg.path().join("gone"),
            &tmp(dir.path()),
            None,
            false
        ))
        .is_err());
    }
}
