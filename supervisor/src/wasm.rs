//! Compiled WASM modules for capsule-host: compiled outside any capsule's process, cached,
//! authenticated, handed over sealed.
//!
//! capsule-host runs untrusted guest code, so it never compiles for the cache nor writes it: the
//! supervisor runs `capsule-host compile` (a process that runs no guest code and confines itself
//! before it parses a byte), and keeps the artifact in
//! `$ELASTOS_HOME/cache/wasm/<module CID>.<compatibility hash>.cwasm`: a 32-byte
//! HMAC-SHA256 tag, then the artifact. The MAC key is derived from the node key under
//! `domains::WASM_CACHE_KEY`; the tag covers `domains::WASM_CACHE_ENTRY ‖ CID ‖ 0 ‖ hash ‖ 0 ‖
//! artifact`, so an entry can be neither altered nor moved to another module or engine. An entry
//! whose tag does not verify is rejected (the caller audits it) and compiled again.
//!
//! Compiling is bounded: the module's checked bytes go to `capsule-host compile` on its stdin and
//! the artifact comes back on its stdout (no path to swap), at most [`MAX_COMPILES`] at once,
//! each stopped after [`COMPILE_TIMEOUT`] and read up to [`MAX_ARTIFACT`]; a module that failed
//! is not compiled again until the supervisor restarts. The cache directory must be this user's
//! and private, and entries are read without following links.
//!
//! The artifact reaches capsule-host in a memfd sealed against writes, growth, shrinking and
//! further seals, at descriptor [`MODULE_FD`]: what was authenticated is what runs.
//!
//! The supervisor keeps the sealed memfd of each module it verified (at most [`LOADED_MAX`]
//! modules, [`LOADED_BYTES_MAX`] bytes): a sealed memfd cannot change, so a later start of the
//! same module reopens it read-only instead of reading and authenticating the entry again. An
//! entry altered on disk meanwhile is found, and rejected, the next time the supervisor reads it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::fsutil::write_atomic;
use crate::identity::NodeKey;
use elastos_schema::domains;

/// The descriptor capsule-host takes the module from (`--substrate wasm`).
pub const MODULE_FD: i32 = 5;
const TAG: usize = 32;
/// Verified modules kept sealed in memory, by count and by bytes (shared memory: outside the
/// supervisor's RSS, and the same pages the running capsule-hosts of a module map; the oldest
/// loaded goes first).
pub const LOADED_MAX: usize = 64;
pub const LOADED_BYTES_MAX: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WasmCacheError {
    #[error("the module {path} does not match its package's hash (the store was altered: remove the capsule's directory under store/ and run it again)")]
    ModuleChanged { path: String },
    #[error("compiling the module: {0}")]
    Compile(String),
    #[error("the WASM cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing the module for capsule-host: {0}")]
    Seal(std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WasmCacheError + '_ {
    move |source| WasmCacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a start's module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Verified by an earlier start of this supervisor, kept sealed.
    Memory,
    /// Read from the cache and authenticated.
    Cache,
    /// Compiled now (and stored).
    Compiled,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Memory => "from memory (verified at an earlier start)",
            Source::Cache => "from the cache",
            Source::Compiled => "compiled",
        }
    }
}

/// A module sealed for one capsule-host.
pub struct Sealed {
    /// A read-only descriptor of its own (not a dup: the file offset is not shared).
    pub fd: OwnedFd,
    /// Why the cached entry was refused before this one was compiled (to be audited).
    pub rejected: Option<String>,
    pub source: Source,
}

/// Sealed memfds of verified modules, by module CID, oldest loaded first.
#[derive(Default)]
struct Loaded {
    modules: VecDeque<(String, OwnedFd, usize)>,
    bytes: usize,
}

impl Loaded {
    fn get(&self, module_cid: &str) -> Option<&OwnedFd> {
        self.modules
            .iter()
            .find(|(cid, ..)| cid == module_cid)
            .map(|(_, fd, _)| fd)
    }

    fn insert(&mut self, module_cid: String, fd: OwnedFd, len: usize) {
        if let Some(i) = self.modules.iter().position(|(cid, ..)| *cid == module_cid) {
            if let Some((_, _, n)) = self.modules.remove(i) {
                self.bytes -= n;
            }
        }
        while self.modules.len() >= LOADED_MAX || self.bytes + len > LOADED_BYTES_MAX {
            let Some((_, _, n)) = self.modules.pop_front() else {
                break;
            };
            self.bytes -= n;
        }
        self.bytes += len;
        self.modules.push_back((module_cid, fd, len));
    }
}

/// A compiled module ready for capsule-host.
pub struct Compiled {
    pub artifact: Vec<u8>,
    /// Why the cached entry was refused before this one was compiled (to be audited).
    pub rejected: Option<String>,
    /// Whether the artifact came from the cache.
    pub hit: bool,
}

pub struct WasmCache {
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
    host_bin: PathBuf,
    /// capsule-host's compatibility hash, asked once.
    compat: Mutex<Option<String>>,
    loaded: Mutex<Loaded>,
    /// Modules whose compile failed, with why: not compiled again until the supervisor
    /// restarts (a module that fails to compile fails the same way every time). Bounded.
    failed: Mutex<HashMap<String, String>>,
    /// Compiles running now, against [`MAX_COMPILES`].
    compiles: (Mutex<usize>, Condvar),
}

/// At most this many compiles at once: each may take a core and gigabytes.
pub const MAX_COMPILES: usize = 2;
/// A compile's wall-clock limit (its CPU time is limited by its rlimit as well).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest artifact read back from the compiler, and the most of its stderr kept.
pub const MAX_ARTIFACT: u64 = 512 << 20;
const MAX_COMPILER_STDERR: u64 = 16 << 10;
/// Failed modules remembered at most.
const MAX_FAILED: usize = 256;

impl WasmCache {
    pub fn new(home_root: &Path, key: &NodeKey, host_bin: PathBuf) -> WasmCache {
        WasmCache {
            dir: home_root.join("cache").join("wasm"),
            key: key.derive_key(domains::WASM_CACHE_KEY),
            host_bin,
            compat: Mutex::new(None),
            loaded: Mutex::new(Loaded::default()),
            failed: Mutex::new(HashMap::new()),
            compiles: (Mutex::new(0), Condvar::new()),
        }
    }

    /// The module `module_cid` sealed for one capsule-host if it is kept in memory: no file is
    /// read, so a caller on the async runtime may call this without a blocking thread.
    pub fn kept(&self, module_cid: &str) -> Option<Result<Sealed, WasmCacheError>> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let fd = loaded.get(module_cid)?;
        Some(reopen_read_only(fd).map(|fd| Sealed {
            fd,
            rejected: None,
            source: Source::Memory,
        }))
    }

    /// The module at `module` (whose package lists `sha256`, hex) sealed for one capsule-host:
    /// kept from an earlier start, else as [`WasmCache::load`] gives it.
    pub fn sealed(
        &self,
        module_cid: &str,
        module: &Path,
        sha256: &str,
    ) -> Result<Sealed, WasmCacheError> {
        match self.kept(module_cid) {
            Some(kept) => kept,
            None => self.load(module_cid, module, sha256),
        }
    }

    /// The module from the cache, or compiled now, sealed for one capsule-host and kept for the
    /// next start (the caller found it not kept: this reads files, so off the async runtime).
    pub fn load(
        &self,
        module_cid: &str,
        module: &Path,
        sha256: &str,
    ) -> Result<Sealed, WasmCacheError> {
        // Not locked meanwhile: a compile takes seconds, and other modules' starts must not wait
        // on it (two first starts of one module may both compile it; the entry is written whole).
        let c = self.compiled(module_cid, module, sha256)?;
        let memfd = sealed_memfd(&c.artifact)?;
        let fd = reopen_read_only(&memfd)?;
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(module_cid.to_string(), memfd, c.artifact.len());
        Ok(Sealed {
            fd,
            rejected: c.rejected,
            source: if c.hit {
                Source::Cache
            } else {
                Source::Compiled
            },
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// capsule-host's engine compatibility hash (`capsule-host compat-hash`).
    pub fn compat_hash(&self) -> Result<String, WasmCacheError> {
        let mut c = self.compat.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = &*c {
            return Ok(h.clone());
        }
        let out = Command::new(&self.host_bin)
            .arg("compat-hash")
            .env_clear()
            .output()
            .map_err(|e| WasmCacheError::Compile(format!("running capsule-host: {e}")))?;
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !is_hash(&hash) {
            return Err(WasmCacheError::Compile(format!(
                "capsule-host compat-hash failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        *c = Some(hash.clone());
        Ok(hash)
    }

    /// Where the artifact of `module_cid` for engine `compat` is kept.
    pub fn entry_path(&self, module_cid: &str, compat: &str) -> PathBuf {
        self.dir.join(format!("{module_cid}.{compat}.cwasm"))
    }

    fn mac(&self, module_cid: &str, compat: &str, artifact: &[u8]) -> hmac::Hmac<Sha256> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes a key of any length");
        mac.update(domains::WASM_CACHE_ENTRY);
        mac.update(module_cid.as_bytes());
        mac.update(&[0]);
        mac.update(compat.as_bytes());
        mac.update(&[0]);
        mac.update(artifact);
        mac
    }

    fn tag(&self, module_cid: &str, compat: &str, artifact: &[u8]) -> [u8; TAG] {
        self.mac(module_cid, compat, artifact)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The artifact of the module at `module` (whose package lists `sha256`, hex), from the
    /// cache if an entry verifies, else compiled now and stored.
    pub fn compiled(
        &self,
        module_cid: &str,
        module: &Path,
        sha256: &str,
    ) -> Result<Compiled, WasmCacheError> {
        let compat = self.compat_hash()?;
        let failed_key = format!("{module_cid}.{compat}");
        if let Some(why) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&failed_key)
        {
            return Err(WasmCacheError::Compile(format!(
                "{why} (it failed to compile before; restart the supervisor to try again)"
            )));
        }
        self.check_dir()?;
        let entry = self.entry_path(module_cid, &compat);
        let mut rejected = None;
        match read_no_follow(&entry) {
            Ok(bytes) => match self.check(module_cid, &compat, bytes) {
                Ok(artifact) => {
                    return Ok(Compiled {
                        artifact,
                        rejected: None,
                        hit: true,
                    })
                }
                Err(why) => rejected = Some(format!("{}: {why}", entry.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => rejected = Some(format!("{}: unreadable: {e}", entry.display())),
        }
        // The store's copy is the package's: check it before a compiler parses it.
        let bytes = std::fs::read(module).map_err(io(module))?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(WasmCacheError::ModuleChanged {
                path: module.display().to_string(),
            });
        }
        let artifact = match self.compile(&bytes, &compat) {
            Ok(a) => a,
            Err(e) => {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                if failed.len() >= MAX_FAILED {
                    failed.clear();
                }
                failed.insert(failed_key, e.to_string());
                return Err(e);
            }
        };
        let mut stored = Vec::with_capacity(TAG + artifact.len());
        stored.extend_from_slice(&self.tag(module_cid, &compat, &artifact));
        stored.extend_from_slice(&artifact);
        write_atomic(&entry, &stored, 0o600).map_err(io(&entry))?;
        Ok(Compiled {
            artifact,
            rejected,
            hit: false,
        })
    }

    /// The artifact of a cache entry whose tag verifies, else why not.
    fn check(&self, module_cid: &str, compat: &str, mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        if bytes.len() <= TAG {
            return Err("truncated".into());
        }
        let artifact = bytes.split_off(TAG);
        // Constant time: the tag is a secret-keyed MAC.
        self.mac(module_cid, compat, &artifact)
            .verify_slice(&bytes)
            .map_err(|_| {
                "its MAC does not verify (altered, or made by another node)".to_string()
            })?;
        Ok(artifact)
    }

    /// The cache directory, created if needed: this user's, or refused (another user's
    /// directory could hold entries made to be loaded here); made private (0700) if it is not.
    fn check_dir(&self) -> Result<(), WasmCacheError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if std::fs::symlink_metadata(&self.dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io(&self.dir))?;
        }
        let meta = std::fs::symlink_metadata(&self.dir).map_err(io(&self.dir))?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != me {
            return Err(WasmCacheError::Compile(format!(
                "{} must be a directory of this user's (uid {me}); it is {}, of uid {}: check it, then remove it and it is made again",
                self.dir.display(),
                if meta.is_dir() { "a directory" } else { "not a directory" },
                meta.uid(),
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// Compiles `bytes` (the module, its hash checked) in `capsule-host compile`: the bytes go
    /// in on its stdin, the engine's hash and the artifact come back on its stdout; no path is
    /// involved, so nothing can be swapped under it. At most [`MAX_COMPILES`] at once, each
    /// killed after [`COMPILE_TIMEOUT`], its output read up to [`MAX_ARTIFACT`].
    fn compile(&self, bytes: &[u8], compat: &str) -> Result<Vec<u8>, WasmCacheError> {
        let _slot = self.compile_slot();
        let fail = |why: String| WasmCacheError::Compile(why);
        let mut child = Command::new(&self.host_bin)
            .arg("compile")
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("running capsule-host: {e}")))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Until it is waited for, its pid is its own: the watchdog cannot hit another process.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(COMPILE_TIMEOUT)
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return true;
            }
            false
        });
        let input = bytes.to_vec();
        let mut stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&input);
            }
        });
        let mut stderr = child.stderr.take();
        let errors = std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.by_ref().take(MAX_COMPILER_STDERR).read_to_end(&mut text);
                // Drained past the cap, so the compiler never blocks on a full pipe.
                let _ = std::io::copy(e, &mut std::io::sink());
            }
            String::from_utf8_lossy(&text).trim().to_string()
        });
        let mut out = Vec::new();
        let read = child
            .stdout
            .take()
            .map(|o| o.take(MAX_ARTIFACT + 1).read_to_end(&mut out));
        if out.len() as u64 > MAX_ARTIFACT {
            let _ = child.kill();
        }
        let status = child.wait();
        let _ = done_tx.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        let _ = writer.join();
        let errors = errors.join().unwrap_or_default();
        if timed_out {
            return Err(fail(format!(
                "it took longer than {} s to compile and was stopped",
                COMPILE_TIMEOUT.as_secs()
            )));
        }
        if out.len() as u64 > MAX_ARTIFACT {
            return Err(fail(format!(
                "its compiled code is larger than {} MiB",
                MAX_ARTIFACT >> 20
            )));
        }
        let status = status.map_err(|e| fail(format!("waiting for capsule-host: {e}")))?;
        if !status.success() || !matches!(read, Some(Ok(_))) {
            return Err(fail(errors));
        }
        // The engine's hash, a newline, then the artifact.
        let Some(nl) = out.iter().position(|b| *b == b'\n') else {
            return Err(fail("capsule-host compile printed no engine hash".into()));
        };
        let printed = String::from_utf8_lossy(&out[..nl]).to_string();
        if printed != compat {
            return Err(fail(format!(
                "capsule-host compiled for engine {printed}, not {compat} (was it replaced while running?)"
            )));
        }
        Ok(out.split_off(nl + 1))
    }

    /// Waits for one of the [`MAX_COMPILES`] compile slots; given back when dropped.
    fn compile_slot(&self) -> CompileSlot<'_> {
        let (count, freed) = &self.compiles;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_COMPILES {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        CompileSlot(&self.compiles)
    }
}

struct CompileSlot<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// A cache entry's bytes, never through a link.
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new open file description of `fd`'s file, read-only, close-on-exec.
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, WasmCacheError> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    File::open(path)
        .map(OwnedFd::from)
        .map_err(WasmCacheError::Seal)
}

/// `bytes` in a close-on-exec memfd sealed against writes, growth, shrinking and more seals.
pub fn sealed_memfd(bytes: &[u8]) -> Result<OwnedFd, WasmCacheError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        "elastos-module",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| WasmCacheError::Seal(e.into()))?;
    let mut f = File::from(fd);
    f.write_all(bytes).map_err(WasmCacheError::Seal)?;
    let seals = nix::libc::F_SEAL_WRITE
        | nix::libc::F_SEAL_GROW
        | nix::libc::F_SEAL_SHRINK
        | nix::libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) with integer arguments on a descriptor this function owns.
    if unsafe { nix::libc::fcntl(f.as_raw_fd(), nix::libc::F_ADD_SEALS, seals) } != 0 {
        return Err(WasmCacheError::Seal(std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> WasmCache {
        let c = WasmCache::new(dir, &NodeKey::from_seed(&[7; 32]), "/nonexistent".into());
        *c.compat.lock().unwrap() = Some("ab".repeat(32));
        c
    }

    #[test]
    fn an_entry_verifies_only_for_its_module_engine_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let compat = "ab".repeat(32);
        let mut entry = c.tag("bafkreimodule", &compat, b"artifact").to_vec();
        entry.extend_from_slice(b"artifact");
        assert_eq!(
            c.check("bafkreimodule", &compat, entry.clone()).unwrap(),
            b"artifact"
        );
        // Another module, another engine, another node, a changed byte: refused.
        assert!(c.check("bafkreiother", &compat, entry.clone()).is_err());
        assert!(c
            .check("bafkreimodule", &"cd".repeat(32), entry.clone())
            .is_err());
        let other = WasmCache::new(dir.path(), &NodeKey::from_seed(&[8; 32]), "/x".into());
        assert!(other
            .check("bafkreimodule", &compat, entry.clone())
            .is_err());
        let last = entry.len() - 1;
        entry[last] ^= 1;
        assert!(c.check("bafkreimodule", &compat, entry).is_err());
        assert!(c.check("bafkreimodule", &compat, vec![0; 32]).is_err());
    }

    #[test]
    fn the_cache_key_is_derived_not_the_signing_seed() {
        let key = NodeKey::from_seed(&[7; 32]);
        let derived = key.derive_key(domains::WASM_CACHE_KEY);
        assert_ne!(derived.as_ref(), &[7u8; 32]);
        assert_ne!(derived, key.derive_key(b"another use\0"));
    }

    #[test]
    fn a_module_that_differs_from_its_package_hash_is_not_compiled() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let m = dir.path().join("m.wasm");
        std::fs::write(&m, b"\0asm\x01\0\0\0").unwrap();
        let e = c
            .compiled("bafkreimodule", &m, &"00".repeat(32))
            .err()
            .unwrap();
        assert!(matches!(e, WasmCacheError::ModuleChanged { .. }), "{e}");
    }

    /// A cache with the real capsule-host (built with the workspace) as its compiler.
    fn real_cache(dir: &Path) -> WasmCache {
        let host =
            crate::host::find_host_binary().expect("capsule-host is built with the workspace");
        WasmCache::new(dir, &NodeKey::from_seed(&[7; 32]), host)
    }

    fn module_file(dir: &Path, bytes: &[u8]) -> (PathBuf, String) {
        let m = dir.join("m.wasm");
        std::fs::write(&m, bytes).unwrap();
        (m, hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn a_module_that_failed_to_compile_is_not_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = real_cache(dir.path());
        let (m, sha) = module_file(dir.path(), b"\0asm\x01\0\0\0\x01\xffjunk");
        let first = c
            .compiled("bafkreibad", &m, &sha)
            .err()
            .expect("refused")
            .to_string();
        assert!(!first.contains("before"), "{first}");
        let again = c
            .compiled("bafkreibad", &m, &sha)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            again.contains("failed to compile before") && again.contains("restart the supervisor"),
            "{again}"
        );
    }

    #[test]
    fn a_module_compiles_through_pipes_into_a_private_cache_read_without_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("h");
        let c = real_cache(&home);
        let wat = br#"(module (func (export "_start")))"#;
        let (m, sha) = module_file(dir.path(), wat);
        let compiled = c.compiled("bafkreigood", &m, &sha).unwrap();
        assert!(!compiled.hit && !compiled.artifact.is_empty());
        let mode = std::fs::metadata(c.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(c.compiled("bafkreigood", &m, &sha).unwrap().hit);
        // An entry replaced by a link is not followed: rejected, and compiled again.
        let entry = c.entry_path("bafkreigood", &c.compat_hash().unwrap());
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&entry, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
        let again = c.compiled("bafkreigood", &m, &sha).unwrap();
        assert!(
            !again.hit && again.rejected.is_some(),
            "{:?}",
            again.rejected
        );
        // A cache directory someone else owns is refused.
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root, as CI has: it gives the cache directory to another uid"
        );
        nix::unistd::chown(c.dir(), Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let e = c
            .compiled("bafkreigood", &m, &sha)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("uid 4242"), "{e}");
    }

    fn memfd(bytes: &[u8]) -> OwnedFd {
        sealed_memfd(bytes).unwrap()
    }

    #[test]
    fn kept_modules_are_bounded_by_count_and_bytes_oldest_first() {
        let mut l = Loaded::default();
        for i in 0..LOADED_MAX + 3 {
            l.insert(format!("m{i}"), memfd(b"x"), 1);
        }
        assert_eq!(l.modules.len(), LOADED_MAX);
        assert!(l.get("m0").is_none() && l.get("m2").is_none());
        assert!(l.get("m3").is_some() && l.get(&format!("m{}", LOADED_MAX + 2)).is_some());
        assert_eq!(l.bytes, LOADED_MAX);

        let mut l = Loaded::default();
        l.insert("a".into(), memfd(b"a"), LOADED_BYTES_MAX / 2);
        l.insert("b".into(), memfd(b"b"), LOADED_BYTES_MAX / 2);
        l.insert("c".into(), memfd(b"c"), 1);
        assert!(l.get("a").is_none() && l.get("b").is_some() && l.get("c").is_some());
        assert_eq!(l.bytes, LOADED_BYTES_MAX / 2 + 1);
        // The same module again replaces its entry rather than counting twice.
        l.insert("c".into(), memfd(b"c"), 1);
        assert_eq!((l.modules.len(), l.bytes), (2, LOADED_BYTES_MAX / 2 + 1));
        // One module larger than the whole budget is still kept (alone): it is running.
        l.insert("huge".into(), memfd(b"h"), LOADED_BYTES_MAX + 1);
        assert_eq!(l.modules.len(), 1);
    }

    #[test]
    fn a_kept_module_is_handed_out_read_only_with_an_offset_of_its_own() {
        let kept = memfd(b"artifact");
        let mut a = File::from(reopen_read_only(&kept).unwrap());
        let mut b = File::from(reopen_read_only(&kept).unwrap());
        assert!(a.write_all(b"x").is_err());
        let mut first = [0u8; 4];
        std::io::Read::read_exact(&mut a, &mut first).unwrap();
        let mut whole = String::new();
        std::io::Read::read_to_string(&mut b, &mut whole).unwrap();
        assert_eq!((&first, whole.as_str()), (b"arti", "artifact"));
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor this test owns.
        let seals = unsafe { nix::libc::fcntl(a.as_raw_fd(), nix::libc::F_GET_SEALS) };
        assert_eq!(
            seals & 0xf,
            0xf,
            "the seals are the file's, not the descriptor's"
        );
    }

    #[test]
    fn a_second_start_takes_the_module_from_memory_without_reading_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let compat = "ab".repeat(32);
        let entry = c.entry_path("bafkreimodule", &compat);
        std::fs::create_dir_all(c.dir()).unwrap();
        let mut stored = c.tag("bafkreimodule", &compat, b"artifact").to_vec();
        stored.extend_from_slice(b"artifact");
        std::fs::write(&entry, &stored).unwrap();
        let m = dir.path().join("m.wasm");
        let first = c.sealed("bafkreimodule", &m, "").unwrap();
        assert_eq!((first.source, first.rejected), (Source::Cache, None));
        // The entry is gone and the module file never existed: only memory can serve it.
        std::fs::remove_file(&entry).unwrap();
        let second = c.sealed("bafkreimodule", &m, "").unwrap();
        assert_eq!(second.source, Source::Memory);
        let mut back = String::new();
        std::io::Read::read_to_string(&mut File::from(second.fd), &mut back).unwrap();
        assert_eq!(back, "artifact");
        // Another module is not served from this one's memory.
        assert!(c.sealed("bafkreiother", &m, "").is_err());
    }

    #[test]
    fn the_memfd_is_sealed_and_holds_the_bytes() {
        let fd = sealed_memfd(b"artifact").unwrap();
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor this test owns.
        let seals = unsafe { nix::libc::fcntl(fd.as_raw_fd(), nix::libc::F_GET_SEALS) };
        assert_eq!(seals & 0xf, 0xf);
        let mut f = File::from(fd);
        assert!(f.write_all(b"x").is_err());
        let mut back = String::new();
        std::io::Seek::rewind(&mut f).unwrap();
        std::io::Read::read_to_string(&mut f, &mut back).unwrap();
        assert_eq!(back, "artifact");
    }
}
