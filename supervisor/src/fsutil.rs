//! Crash-safe file replacement: write a temporary file, fsync it, rename it over the target, fsync
//! the directory. After a crash the target holds either the old or the new bytes, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably, creating it with `mode` (e.g. 0o600).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A name no one can have prepared: created exclusively (an existing file or link there
    // is an error, never followed or truncated), unique to this write.
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}.{}", std::process::id(), hex::encode(rnd)));
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How deep [`chown_tree`] goes: it holds a descriptor per level.
pub const CHOWN_MAX_DEPTH: usize = 256;

/// Gives the tree at `path` (a directory) to `uid` and the group of the same number, walking by
/// directory descriptors: each entry is changed relative to its directory's descriptor, a
/// subdirectory is opened with `O_NOFOLLOW` from its parent's, and a symbolic link is changed
/// itself, never what it points to. So a tree its former owner (a capsule, say) filled with
/// links and raced renames in cannot steer root's walk outside it. Deeper than
/// [`CHOWN_MAX_DEPTH`] is an error.
pub fn chown_tree(path: &Path, uid: u32) -> io::Result<()> {
    use nix::fcntl::{AtFlags, OFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let id = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    );
    fn walk(
        dir: nix::dir::Dir,
        id: (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>),
        flags: OFlag,
        depth: usize,
    ) -> io::Result<()> {
        use std::os::fd::AsFd;
        if depth > CHOWN_MAX_DEPTH {
            return Err(io::Error::other(format!(
                "more than {CHOWN_MAX_DEPTH} directories deep"
            )));
        }
        nix::unistd::fchown(dir.as_fd(), id.0, id.1)?;
        // Read first, then changed: the entries' names, and whether each may be a directory.
        let mut dir = dir;
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            // Some file systems do not say; then the open below decides (a non-directory fails
            // with ENOTDIR and is skipped).
            let maybe_dir = matches!(entry.file_type(), Some(nix::dir::Type::Directory) | None);
            entries.push((name.to_owned(), maybe_dir));
        }
        let mut subdirs = Vec::new();
        for (name, maybe_dir) in entries {
            nix::unistd::fchownat(
                dir.as_fd(),
                name.as_c_str(),
                id.0,
                id.1,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            if maybe_dir {
                subdirs.push(name);
            }
        }
        for name in subdirs {
            match nix::dir::Dir::openat(
                dir.as_fd(),
                name.as_c_str(),
                flags,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(sub) => walk(sub, id, flags, depth + 1)?,
                Err(nix::errno::Errno::ENOTDIR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    let root = nix::dir::Dir::open(path, flags, nix::sys::stat::Mode::empty())?;
    walk(root, id, flags, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_link_at_the_target_is_replaced_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"theirs").unwrap();
        let p = dir.path().join("state");
        std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
        write_atomic(&p, b"ours", 0o600).unwrap();
        assert_eq!(fs::read(&elsewhere).unwrap(), b"theirs");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"ours");
    }

    #[test]
    fn chown_tree_changes_links_not_what_they_point_to() {
        use std::os::unix::fs::MetadataExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root, as CI has: it gives files to another uid"
        );
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("file"), b"x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("file"), tree.join("to-file")).unwrap();
        chown_tree(&tree, 4243).unwrap();
        for p in ["", "a", "a/b", "a/b/f", "a/to-dir", "to-file"] {
            let m = fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4243, 4243), "{p}");
        }
        for p in [outside.clone(), outside.join("file")] {
            assert_eq!(fs::metadata(&p).unwrap().uid(), 0, "{}", p.display());
        }
        // The root itself may not be a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(chown_tree(&link, 4243).is_err());
        // Nor is the walk endless.
        let mut deep = dir.path().join("deep");
        for _ in 0..=CHOWN_MAX_DEPTH + 1 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        assert!(chown_tree(&dir.path().join("deep"), 4243).is_err());
    }

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
