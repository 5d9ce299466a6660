//! The size limit of a capsule's private state directory (`[limits] storage`).
//!
//! A directory has no size of its own, and this machine's file system offers no project quotas
//! to a supervisor, so the directory is a file system of its own: a sparse ext4 image
//! (`state/capsules/NAME.img`, costing only what is written) loop-mounted at the directory
//! (`nosuid,nodev,noexec`). A capsule that fills it gets ENOSPC and nothing else is touched: not
//! the node's audit log, nor another capsule's state. The image is made once, at the first size
//! asked for, and stays mounted for the supervisor's life (a later start finds it mounted and
//! uses it as it is); `down` unmounts it and the kernel frees the loop device.
//!
//! Mounting needs root: a supervisor run by a normal user cannot give a quota, and its capsules
//! with state run without one only where the node allows it (`storage-quota` in
//! `[confinement] allow_without`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// When the manifest names no `storage`.
pub const DEFAULT_STORAGE: u64 = 256 << 20;
/// ext4 needs room for its own metadata and journal.
pub const MIN_STORAGE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("a state quota of {0} bytes is below the smallest, {MIN_STORAGE} bytes (4 MiB): raise [limits] storage")]
    TooSmall(u64),
    #[error("{0} holds files from before it had a quota: move them aside, and back in once the capsule has started")]
    NotEmpty(PathBuf),
    #[error("{what}: {why}")]
    Io { what: String, why: String },
    #[error("`{cmd}` failed: {out}; `elastos doctor` checks for mkfs.ext4 and loop devices")]
    Command { cmd: String, out: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QuotaError {
    let what = what.into();
    move |e| QuotaError::Io {
        what,
        why: e.to_string(),
    }
}

/// The image behind state directory `dir`.
pub fn image_of(dir: &Path) -> PathBuf {
    dir.with_extension("img")
}

/// Makes `dir` a file system of `bytes` (or of the size its existing image already has), and
/// returns the size in force.
pub fn ensure(dir: &Path, bytes: u64) -> Result<u64, QuotaError> {
    let image = image_of(dir);
    if let Some(size) = mounted_size(dir, &image)? {
        return Ok(size);
    }
    if bytes < MIN_STORAGE {
        return Err(QuotaError::TooSmall(bytes));
    }
    let size = match std::fs::metadata(&image) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = std::fs::read_dir(dir)
                .map_err(io(format!("reading {}", dir.display())))?
                .next()
                .is_none();
            if !empty {
                return Err(QuotaError::NotEmpty(dir.to_path_buf()));
            }
            create(&image, bytes)?;
            bytes
        }
        Err(e) => return Err(io(format!("reading {}", image.display()))(e)),
    };
    run(Command::new("mount")
        .args([
            "-t",
            "ext4",
            "-o",
            "loop,nosuid,nodev,noexec,errors=remount-ro",
        ])
        .arg(&image)
        .arg(dir))?;
    Ok(size)
}

/// A sparse file formatted as ext4; written beside the final name and renamed, so a failure
/// never leaves a half-made image to be mounted later.
fn create(image: &Path, bytes: u64) -> Result<(), QuotaError> {
    let part = image.with_extension("img.part");
    let _ = std::fs::remove_file(&part);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(io(format!("creating {}", part.display())))?;
    file.set_len(bytes)
        .map_err(io(format!("sizing {}", part.display())))?;
    drop(file);
    // No blocks reserved for root: the capsule is the only user. Quiet, forced (a file, not a
    // device), and no lazy initialisation left running in the kernel after the mount.
    let made = run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
        ])
        .arg(&part));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, image).map_err(io(format!("naming {}", image.display())))
}

/// The size of `image` if it is what is mounted at `dir` now.
fn mounted_size(dir: &Path, image: &Path) -> Result<Option<u64>, QuotaError> {
    if !is_mount_point(dir)? {
        return Ok(None);
    }
    let size = std::fs::metadata(image)
        .map_err(io(format!("reading {}", image.display())))?
        .len();
    Ok(Some(size))
}

/// Whether `dir` is a mount point in this mount namespace (`/proc/self/mountinfo`, whose paths
/// escape space, tab, newline and backslash in octal).
fn is_mount_point(dir: &Path) -> Result<bool, QuotaError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("reading /proc/self/mountinfo"))?;
    let dir = dir.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == dir))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every state directory under `parent` that has an image mounted; the loop devices
/// go with them (mount made them auto-clearing).
pub fn unmount_all(parent: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return errors;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !image_of(&dir).exists() || !dir.is_dir() {
            continue;
        }
        if let Ok(true) = is_mount_point(&dir) {
            if let Err(e) = run(Command::new("umount").arg(&dir)) {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

fn run(cmd: &mut Command) -> Result<(), QuotaError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| QuotaError::Command {
        cmd: shown.clone(),
        out: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(QuotaError::Command {
            cmd: shown,
            out: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn a_quota_below_the_smallest_is_refused_before_anything_is_made() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cap");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            ensure(&dir, 1 << 20),
            Err(QuotaError::TooSmall(_))
        ));
        assert!(!image_of(&dir).exists());
    }

    #[test]
    fn state_from_before_a_quota_is_never_hidden_under_a_mount() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cap");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data"), b"kept").unwrap();
        assert!(matches!(
            ensure(&dir, 8 << 20),
            Err(QuotaError::NotEmpty(_))
        ));
        assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"kept");
    }
}
