//! `$ELASTOS_HOME`: where a node keeps its key, its state and its audit log.
//!
//! Every command resolves the home the same way (the `ELASTOS_HOME` variable, else the XDG data
//! directory), so tests and several nodes on one machine never share state. The directory is 0700
//! and secret files 0600; a secret with looser permissions is refused, not silently fixed, because
//! someone else may already have read it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Neither `ELASTOS_HOME` nor a home directory is known.
    #[error("cannot find a place for elastos state: set ELASTOS_HOME to a directory")]
    NoHome,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A secret file or the home directory is readable by others.
    #[error("{path} has mode {mode:03o}, which lets other users read it; fix it with `chmod {want:o} {path}` and check that no one copied it")]
    LoosePermissions { path: PathBuf, mode: u32, want: u32 },
    /// A secret file or the home directory belongs to another user.
    #[error("{path} belongs to uid {owner}, not to this user (uid {me}): a file someone else owns may have been put there; check it, then give it back with `chown {me} {path}`")]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    /// A secret file is a symbolic link.
    #[error("{path} is a symbolic link: a secret is read only from a plain file of its own; replace the link with the file it points to, after checking it")]
    Symlink { path: PathBuf },
    /// The state lock is held by a running supervisor or another command.
    #[error(
        "another elastos process holds {path} (a running supervisor, or a command in progress)"
    )]
    Locked { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The resolved `$ELASTOS_HOME`. Resolving it never touches the disk.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `ELASTOS_HOME`, else `$XDG_DATA_HOME/elastos` (normally `~/.local/share/elastos`).
    pub fn from_env() -> Result<Home, HomeError> {
        if let Some(dir) = std::env::var_os("ELASTOS_HOME").filter(|v| !v.is_empty()) {
            return Ok(Home::at(PathBuf::from(dir)));
        }
        let base = directories::BaseDirs::new().ok_or(HomeError::NoHome)?;
        Ok(Home::at(base.data_dir().join("elastos")))
    }

    pub fn at(root: PathBuf) -> Home {
        Home { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Creates the home (0700) if needed. An existing home that others can read is refused.
    pub fn ensure(&self) -> Result<(), HomeError> {
        if !self.root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(io_err(&self.root))?;
            // The umask may have narrowed the mode of parents, never widened ours; set it exactly.
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.root))?;
        }
        // The home may be a link (to another disk, say): what it leads to is checked.
        let real = fs::canonicalize(&self.root).map_err(io_err(&self.root))?;
        check_private(&real, 0o700)
    }

    /// Creates a sub-directory (0700) of the home, creating the home first.
    pub fn ensure_dir(&self, name: &str) -> Result<PathBuf, HomeError> {
        self.ensure()?;
        let dir = self.root.join(name);
        if !dir.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
        }
        Ok(dir)
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// Takes the node's state lock without waiting. The supervisor holds it for its whole life;
    /// a command that writes state directly holds it while it writes. `Locked` means: go through
    /// the supervisor (or wait for the other command).
    pub fn try_lock(&self) -> Result<StateLock, HomeError> {
        self.ensure()?;
        let path = self.lock_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StateLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(HomeError::Locked { path }),
            Err((_, e)) => Err(HomeError::Io {
                path,
                source: io::Error::from(e),
            }),
        }
    }

    /// Like [`Home::try_lock`], but waits up to `patience` for another short command to finish.
    pub fn lock_with_patience(
        &self,
        patience: std::time::Duration,
    ) -> Result<StateLock, HomeError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.try_lock() {
                Err(HomeError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }
}

/// The held state lock; released on drop.
pub struct StateLock {
    _lock: Flock<File>,
}

/// Refuses a file or directory that group or others can access.
pub fn check_private(path: &Path, want: u32) -> Result<(), HomeError> {
    use std::os::unix::fs::MetadataExt;
    // Not followed: a link could point anywhere, and its target's mode is not the link's.
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.file_type().is_symlink() {
        return Err(HomeError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(HomeError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HomeError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        assert!(!home.exists());
        home.ensure().unwrap();
        let mode = fs::metadata(home.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_home_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        home.ensure().unwrap();
        fs::set_permissions(home.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = home.ensure().unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_secret_must_be_a_plain_file_of_this_user() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("node.key");
        fs::write(&secret, "x").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&secret, 0o600).unwrap();
        // A link to a private file is still refused.
        let link = tmp.path().join("link.key");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(matches!(
            check_private(&link, 0o600),
            Err(HomeError::Symlink { .. })
        ));
        // Another user's file, private as it is: only root can make one here.
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root, as CI has: it gives a file to another uid"
        );
        nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let e = check_private(&secret, 0o600).unwrap_err();
        assert!(matches!(e, HomeError::NotOwned { owner: 4242, .. }), "{e}");
        assert!(e.to_string().contains("chown"), "{e}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        let held = home.try_lock().unwrap();
        assert!(matches!(home.try_lock(), Err(HomeError::Locked { .. })));
        drop(held);
        home.try_lock().unwrap();
    }
}
