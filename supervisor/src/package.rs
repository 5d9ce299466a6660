//! Signed, content-addressed capsule packages.
//!
//! Layout: the magic `ELCAPSUL`, a little-endian `u32` length, one canonical single-segment
//! `SignedIndex` message (`schema/package.capnp`), then every file's bytes in index order. The
//! index lists each file's normalised path, executable bit, size and SHA-256; its body is signed
//! by the publisher's key under the `elastos/package/v1` prefix. The package's CID is the CID of
//! the whole file.
//!
//! - Deterministic: packing sorts paths bytewise and records nothing but path, executable bit and
//!   content, so the same files give the same bytes whatever their order, mtimes or owners.
//! - Sign before parse: the signature is checked over the exact body bytes received, before the
//!   body is interpreted; then the body must be canonical (re-encoding it gives the same bytes),
//!   so one index has exactly one encoding and nothing unsigned can hide in slack space.
//! - Nothing in a package is trusted until all of it verified: every hash, the sizes adding up to
//!   exactly the bytes present, the manifest parsing. Each refusal says what failed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capnp::message::{Builder, HeapAllocator, ReaderOptions, ReaderSegments};
use cid::Cid;
use ed25519_dalek::{Signature, VerifyingKey};
use elastos_schema::manifest::{validate_path, Manifest};
use elastos_schema::package_capnp::{package_index, signed_index};
use elastos_schema::{domains, versions};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::identity::{did_from_public, NodeKey};
use crate::text::sanitize;

pub const MAGIC: &[u8; 8] = b"ELCAPSUL";
pub const MAX_FILES: usize = 4096;
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
pub const MAX_INDEX_BYTES: u32 = 1 << 20;
pub const MANIFEST_FILE: &str = "capsule.toml";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("not an elastos package (no ELCAPSUL header)")]
    NotAPackage,
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("package format version {0} is unknown to this elastos (it reads {known}); use a newer elastos", known = versions::PACKAGE)]
    UnknownVersion(u16),
    #[error("index: {0}")]
    Index(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("file {path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Manifest(String),
    #[error("{path}: {why}")]
    Pack { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackedFile {
    pub path: String,
    pub executable: bool,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub cid: Cid,
    pub manifest: Manifest,
    pub file_count: usize,
}

/// A package whose every byte was checked.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    pub cid: Cid,
    /// The publisher's DID.
    pub publisher: String,
    pub manifest: Manifest,
    pub files: Vec<PackedFile>,
    /// Where the first file's bytes start in the package.
    data_offset: usize,
}

/// Packs the capsule directory `dir`, signed by `key`.
pub fn pack(dir: &Path, key: &NodeKey) -> Result<Packed, PackageError> {
    let mut found = Vec::new();
    collect(dir, dir, &mut found)?;
    found.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if found.len() > MAX_FILES {
        return Err(PackageError::Pack {
            path: dir.to_path_buf(),
            why: format!("{} files; a package holds at most {MAX_FILES}", found.len()),
        });
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = Manifest::parse(&text).map_err(|e| PackageError::Manifest(e.to_string()))?;
    for (s, entry) in &manifest.entrypoint {
        if !found.iter().any(|(p, _)| p == entry) {
            return Err(PackageError::Pack {
                path: dir.join(entry),
                why: format!("the {s} entrypoint named in capsule.toml is not in the directory"),
            });
        }
    }
    let mut files = Vec::with_capacity(found.len());
    let mut data = Vec::new();
    let mut total = 0u64;
    for (rel, executable) in &found {
        let path = dir.join(rel);
        let (size, sha256) = append_file(&path, &mut data, total)?;
        total += size;
        files.push(PackedFile {
            path: rel.clone(),
            executable: *executable,
            size,
            sha256,
        });
    }
    let publisher = key.did();
    let body = encode_index(&publisher, &files)?;
    let signature = key.sign(domains::PACKAGE, &body);
    let signed = encode_signed(&body, &signature.to_bytes(), &key.public_bytes())?;
    let mut bytes = Vec::with_capacity(12 + signed.len() + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(signed.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&signed);
    bytes.extend_from_slice(&data);
    Ok(Packed {
        cid: crate::cid::of_bytes(&bytes),
        bytes,
        manifest,
        file_count: files.len(),
    })
}

/// Appends the file at `path` to `data`, `total` bytes being packed before it: its size is
/// checked against the limits before anything is read (a sparse file of terabytes costs a
/// `stat`), the file is opened without following a link, and its hash is computed over what
/// was read. A file that grows while it is read is refused rather than read without end.
fn append_file(path: &Path, data: &mut Vec<u8>, total: u64) -> Result<(u64, String), PackageError> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if size > MAX_FILE_BYTES {
        return Err(PackageError::Pack {
            path: path.to_path_buf(),
            why: format!("{size} bytes; a file is at most {MAX_FILE_BYTES}"),
        });
    }
    if total + size > MAX_TOTAL_BYTES {
        return Err(PackageError::Pack {
            path: path.to_path_buf(),
            why: format!("more than {MAX_TOTAL_BYTES} bytes in all"),
        });
    }
    let start = data.len();
    file.take(size + 1)
        .read_to_end(data)
        .map_err(io_err(path))?;
    let read = (data.len() - start) as u64;
    if read != size {
        data.truncate(start);
        return Err(PackageError::Pack {
            path: path.to_path_buf(),
            why: format!("changed while it was packed ({size} bytes, then {read})"),
        });
    }
    Ok((size, hex::encode(Sha256::digest(&data[start..]))))
}

/// Walks `dir` without following links; anything but a directory or a regular file is refused.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> Result<(), PackageError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = meta.file_type();
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| PackageError::Pack {
                path: path.clone(),
                why: "the path is not UTF-8".into(),
            })?
            .to_string();
        if ft.is_dir() {
            collect(root, &path, out)?;
        } else if ft.is_file() {
            validate_path(&rel).map_err(|why| PackageError::Pack {
                path: path.clone(),
                why,
            })?;
            out.push((rel, meta.permissions().mode() & 0o111 != 0));
        } else {
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file (device, fifo or socket)"
            };
            return Err(PackageError::Pack {
                path,
                why: format!("{kind}: a package holds only regular files"),
            });
        }
    }
    Ok(())
}

/// A package whose index body is `body` exactly (any bytes), validly signed by `key`, then
/// `data`: what a hostile publisher can make. For the fuzz target, so that its input passes the
/// signature and reaches the index checks behind it.
#[doc(hidden)]
pub fn signed_with_body(body: &[u8], data: &[u8], key: &NodeKey) -> Vec<u8> {
    let sig = key.sign(domains::PACKAGE, body);
    let Ok(signed) = encode_signed(body, &sig.to_bytes(), &key.public_bytes()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(12 + signed.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(signed.len() as u32).to_le_bytes());
    out.extend_from_slice(&signed);
    out.extend_from_slice(data);
    out
}

fn encode_index(publisher: &str, files: &[PackedFile]) -> Result<Vec<u8>, PackageError> {
    let mut m = Builder::new_default();
    {
        let mut idx = m.init_root::<package_index::Builder>();
        idx.set_version(versions::PACKAGE);
        idx.set_publisher(publisher);
        let mut list = idx.init_files(files.len() as u32);
        for (i, f) in files.iter().enumerate() {
            let mut e = list.reborrow().get(i as u32);
            e.set_path(&f.path);
            e.set_executable(f.executable);
            e.set_size(f.size);
            let digest = hex::decode(&f.sha256).map_err(|e| PackageError::Index(e.to_string()))?;
            e.set_sha256(&digest);
        }
    }
    canonical_bytes(m)
}

fn encode_signed(body: &[u8], sig: &[u8; 64], signer: &[u8; 32]) -> Result<Vec<u8>, PackageError> {
    let mut m = Builder::new_default();
    {
        let mut s = m.init_root::<signed_index::Builder>();
        s.set_version(versions::PACKAGE);
        s.set_body(body);
        s.set_signature(sig);
        s.set_signer(signer);
    }
    canonical_bytes(m)
}

/// Frames a message canonically: segment table, then the canonical segment.
fn canonical_bytes(m: Builder<HeapAllocator>) -> Result<Vec<u8>, PackageError> {
    let canonical = m
        .into_reader()
        .canonicalize()
        .map_err(|e| PackageError::Index(e.to_string()))?;
    let mut out = Vec::with_capacity(8 + canonical.len() * 8);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(canonical.len() as u32).to_le_bytes());
    out.extend_from_slice(capnp::Word::words_to_bytes(&canonical));
    Ok(out)
}

/// Reads one single-segment message with limits set by its own size.
fn read_message(
    bytes: &[u8],
    what: &str,
) -> Result<capnp::message::Reader<capnp::serialize::OwnedSegments>, PackageError> {
    let bad = |why: String| PackageError::Index(format!("{what}: {why}"));
    if bytes.len() < 8 || !bytes.len().is_multiple_of(8) {
        return Err(bad("not a whole number of 8-byte words".into()));
    }
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(bytes.len() / 8 * 2 + 16))
        .nesting_limit(8);
    let mut rest = bytes;
    let reader =
        capnp::serialize::read_message(&mut rest, options).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    if reader.get_segments().len() != 1 {
        return Err(bad("more than one segment".into()));
    }
    Ok(reader)
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String, PackageError> {
    t.map_err(|e| PackageError::Index(format!("{what}: {e}")))?
        .to_str()
        .map(str::to_string)
        .map_err(|_| PackageError::Index(format!("{what}: not UTF-8")))
}

/// Checks everything about a package; never panics on any input.
pub fn verify(bytes: &[u8]) -> Result<VerifiedPackage, PackageError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(PackageError::NotAPackage);
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if len > MAX_INDEX_BYTES {
        return Err(PackageError::Index(format!(
            "{len} bytes; the index is at most {MAX_INDEX_BYTES}"
        )));
    }
    let end = 12 + len as usize;
    if bytes.len() < end {
        return Err(PackageError::Truncated(format!(
            "the index needs {len} bytes, {} present",
            bytes.len() - 12
        )));
    }
    let signed_bytes = &bytes[12..end];
    let signed = read_message(signed_bytes, "signed index")?;
    let s = signed
        .get_root::<signed_index::Reader>()
        .map_err(|e| PackageError::Index(e.to_string()))?;
    if s.get_version() != versions::PACKAGE {
        return Err(PackageError::UnknownVersion(s.get_version()));
    }
    let body = s
        .get_body()
        .map_err(|e| PackageError::Index(e.to_string()))?
        .to_vec();
    let sig: [u8; 64] = s
        .get_signature()
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Signature("not 64 bytes".into()))?;
    let signer: [u8; 32] = s
        .get_signer()
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Signature("the signer key is not 32 bytes".into()))?;
    let vk = VerifyingKey::from_bytes(&signer)
        .map_err(|_| PackageError::Signature("the signer key is not a valid Ed25519 key".into()))?;
    let mut msg = Vec::with_capacity(domains::PACKAGE.len() + body.len());
    msg.extend_from_slice(domains::PACKAGE);
    msg.extend_from_slice(&body);
    vk.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| {
            PackageError::Signature(
                "does not verify: the index was changed or not signed by its signer".into(),
            )
        })?;
    if encode_signed(&body, &sig, &signer)? != signed_bytes {
        return Err(PackageError::Index(
            "the signed index is not canonical".into(),
        ));
    }
    // Only now is the body read.
    let index = read_message(&body, "index body")?;
    let idx = index
        .get_root::<package_index::Reader>()
        .map_err(|e| PackageError::Index(e.to_string()))?;
    if idx.get_version() != versions::PACKAGE {
        return Err(PackageError::UnknownVersion(idx.get_version()));
    }
    let publisher = text(idx.get_publisher(), "publisher")?;
    if publisher != did_from_public(&signer) {
        return Err(PackageError::Signature(format!(
            "the index names publisher {} but was signed by {}",
            sanitize(&publisher),
            did_from_public(&signer)
        )));
    }
    let list = idx
        .get_files()
        .map_err(|e| PackageError::Index(e.to_string()))?;
    if list.len() as usize > MAX_FILES {
        return Err(PackageError::Index(format!("more than {MAX_FILES} files")));
    }
    let mut files: Vec<PackedFile> = Vec::with_capacity(list.len() as usize);
    let mut total = 0u64;
    for e in list.iter() {
        let path = text(e.get_path(), "file path")?;
        validate_path(&path).map_err(|why| PackageError::File {
            path: sanitize(&path),
            why,
        })?;
        if let Some(prev) = files.last() {
            if prev.path.as_bytes() >= path.as_bytes() {
                return Err(PackageError::Index(format!(
                    "paths are not sorted and unique at {}",
                    sanitize(&path)
                )));
            }
        }
        let digest = e.get_sha256().map_err(|err| PackageError::File {
            path: sanitize(&path),
            why: err.to_string(),
        })?;
        if digest.len() != 32 {
            return Err(PackageError::File {
                path: sanitize(&path),
                why: "the hash is not 32 bytes".into(),
            });
        }
        let size = e.get_size();
        if size > MAX_FILE_BYTES {
            return Err(PackageError::File {
                path: sanitize(&path),
                why: format!("{size} bytes; a file is at most {MAX_FILE_BYTES}"),
            });
        }
        total = total.saturating_add(size);
        files.push(PackedFile {
            path,
            executable: e.get_executable(),
            size,
            sha256: hex::encode(digest),
        });
    }
    // A file may not stand where another's directory is (`bin` and `bin/echo`): no tree
    // holds both, so such a package could never be extracted.
    let paths: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in &files {
        for (i, _) in f.path.match_indices('/') {
            if paths.contains(&f.path[..i]) {
                return Err(PackageError::File {
                    path: sanitize(&f.path),
                    why: format!(
                        "lies under {}, which the package lists as a file",
                        sanitize(&f.path[..i])
                    ),
                });
            }
        }
    }
    if encode_index(&publisher, &files)? != body {
        return Err(PackageError::Index(
            "the index body is not canonical".into(),
        ));
    }
    let data = &bytes[end..];
    if total != data.len() as u64 {
        return Err(if total > data.len() as u64 {
            PackageError::Truncated(format!(
                "the files need {total} bytes, {} present",
                data.len()
            ))
        } else {
            PackageError::Index(format!(
                "{} bytes after the last file",
                data.len() as u64 - total
            ))
        });
    }
    let mut at = 0usize;
    let mut manifest_text = None;
    for f in &files {
        let content = &data[at..at + f.size as usize];
        at += f.size as usize;
        if hex::encode(Sha256::digest(content)) != f.sha256 {
            return Err(PackageError::File {
                path: sanitize(&f.path),
                why: "content hash mismatch: the file was changed".into(),
            });
        }
        if f.path == MANIFEST_FILE {
            manifest_text = Some(
                std::str::from_utf8(content)
                    .map_err(|_| PackageError::Manifest("capsule.toml is not UTF-8".into()))?,
            );
        }
    }
    let manifest_text = manifest_text
        .ok_or_else(|| PackageError::Manifest("the package has no capsule.toml".into()))?;
    let manifest =
        Manifest::parse(manifest_text).map_err(|e| PackageError::Manifest(e.to_string()))?;
    Ok(VerifiedPackage {
        cid: crate::cid::of_bytes(bytes),
        publisher,
        manifest,
        files,
        data_offset: end,
    })
}

impl VerifiedPackage {
    pub fn inspect_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cid": self.cid.to_string(),
            "publisher": self.publisher,
            "manifest": self.manifest,
            "files": self.files,
        })
    }

    pub fn inspect_text(&self) -> String {
        let m = &self.manifest;
        let mut out = String::new();
        out += &format!("name: {} {}\n", sanitize(&m.name), sanitize(&m.version));
        out += &format!("description: {}\n", sanitize(&m.description));
        out += &format!("cid: {}\n", self.cid);
        out += &format!("publisher: {}\n", self.publisher);
        out += &format!("substrate: {}\n", m.substrate);
        for (s, e) in &m.entrypoint {
            out += &format!("entrypoint {s}: {}\n", sanitize(e));
        }
        for p in &m.provides {
            out += &format!("provides: {} ({})\n", sanitize(&p.uri), p.classification);
        }
        for r in &m.requests {
            out += &format!(
                "requests: {} [{}] because {}\n",
                sanitize(&r.resource),
                r.actions,
                sanitize(&r.reason)
            );
        }
        out += &format!("files ({}):\n", self.files.len());
        for f in &self.files {
            out += &format!(
                "  {} {:>10} {} {}\n",
                if f.executable { "x" } else { "-" },
                f.size,
                &f.sha256[..16],
                sanitize(&f.path)
            );
        }
        out
    }

    /// Writes the files under `dest` (which must not exist), read-only: files 0444 or 0555,
    /// directories 0555 once filled. `bytes` are the package this was verified from.
    pub fn extract(&self, bytes: &[u8], dest: &Path) -> Result<(), PackageError> {
        if crate::cid::of_bytes(bytes) != self.cid {
            return Err(PackageError::Index(
                "these are not the bytes that were verified".into(),
            ));
        }
        fs::create_dir(dest).map_err(io_err(dest))?;
        let mut dirs = vec![dest.to_path_buf()];
        let mut at = self.data_offset;
        for f in &self.files {
            // Paths were validated (relative, no `..`), and every directory here is new: nothing
            // can point outside `dest`.
            let path = dest.join(&f.path);
            if let Some(parent) = path.parent() {
                if !parent.exists() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                    let mut p = parent.to_path_buf();
                    while p != dest {
                        dirs.push(p.clone());
                        if !p.pop() {
                            break;
                        }
                    }
                }
            }
            let mode = if f.executable { 0o555 } else { 0o444 };
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(io_err(&path))?;
            out.write_all(&bytes[at..at + f.size as usize])
                .map_err(io_err(&path))?;
            out.sync_all().map_err(io_err(&path))?;
            at += f.size as usize;
        }
        dirs.sort();
        dirs.dedup();
        for d in dirs.iter().rev() {
            fs::set_permissions(d, fs::Permissions::from_mode(0o555)).map_err(io_err(d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(
            dir.join("capsule.toml"),
            "format = 1\nname = \"hello\"\nversion = \"0.1.0\"\ndescription = \"hi\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/hello\"\n",
        )
        .unwrap();
        fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("README"), b"readme\n").unwrap();
    }

    fn key() -> NodeKey {
        NodeKey::from_seed(&[7; 32])
    }

    #[test]
    fn pack_verify_extract_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        let p = pack(&dir, &key()).unwrap();
        let v = verify(&p.bytes).unwrap();
        assert_eq!(v.cid, p.cid);
        assert_eq!(v.publisher, key().did());
        assert_eq!(v.files.len(), 3);
        let dest = tmp.path().join("x");
        v.extract(&p.bytes, &dest).unwrap();
        assert_eq!(
            fs::read(dest.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = fs::metadata(dest.join("bin/hello"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555);
        let mode = fs::metadata(dest.join("README"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        for d in [&dest, &dest.join("bin")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// A package signed by `key` listing exactly `files` (path, content) in this order, as a
    /// hostile publisher would craft it: no check of `pack`'s is applied.
    fn crafted(key: &NodeKey, files: &[(&str, &[u8])]) -> Vec<u8> {
        crafted_with(key, files, |_| {}, |_| {})
    }

    /// One zero word more in a framed single-segment message: it reads the same, but is no
    /// longer the canonical encoding.
    fn padded(message: &mut Vec<u8>) {
        let words = u32::from_le_bytes(message[4..8].try_into().unwrap());
        message[4..8].copy_from_slice(&(words + 1).to_le_bytes());
        message.extend_from_slice(&[0; 8]);
    }

    /// A package signed by `key` whose index body and signed index are changed by the two
    /// functions before they are signed and framed: each stays validly signed.
    fn crafted_with(
        key: &NodeKey,
        files: &[(&str, &[u8])],
        body_tweak: impl Fn(&mut Vec<u8>),
        signed_tweak: impl Fn(&mut Vec<u8>),
    ) -> Vec<u8> {
        let listed: Vec<PackedFile> = files
            .iter()
            .map(|(path, content)| PackedFile {
                path: path.to_string(),
                executable: false,
                size: content.len() as u64,
                sha256: hex::encode(Sha256::digest(content)),
            })
            .collect();
        let mut body = encode_index(&key.did(), &listed).unwrap();
        body_tweak(&mut body);
        let sig = key.sign(domains::PACKAGE, &body);
        let mut signed = encode_signed(&body, &sig.to_bytes(), &key.public_bytes()).unwrap();
        signed_tweak(&mut signed);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(signed.len() as u32).to_le_bytes());
        out.extend_from_slice(&signed);
        for (_, content) in files {
            out.extend_from_slice(content);
        }
        out
    }

    #[test]
    fn a_validly_signed_package_with_a_hostile_index_is_refused() {
        let manifest: &[u8] = b"format = 1\nname = \"evil\"\nversion = \"0.1.0\"\ndescription = \"x\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin\"\n";
        // Well formed, it verifies: the cases below differ from it in one way each.
        verify(&crafted(
            &key(),
            &[("bin", b"x"), ("capsule.toml", manifest)],
        ))
        .unwrap();
        for (what, files) in [
            (
                "a file where a directory is",
                vec![
                    ("bin", &b"x"[..]),
                    ("bin/echo", b"y"),
                    ("capsule.toml", manifest),
                ],
            ),
            (
                "the same, not adjacent once sorted",
                vec![
                    ("bin", &b"x"[..]),
                    ("bin-x", b"z"),
                    ("bin/echo", b"y"),
                    ("capsule.toml", manifest),
                ],
            ),
            (
                "unsorted",
                vec![("capsule.toml", manifest), ("bin", &b"x"[..])],
            ),
            (
                "twice",
                vec![
                    ("bin", &b"x"[..]),
                    ("bin", b"x"),
                    ("capsule.toml", manifest),
                ],
            ),
            (
                "traversal",
                vec![("../bin", &b"x"[..]), ("capsule.toml", manifest)],
            ),
            (
                "absolute",
                vec![("/bin", &b"x"[..]), ("capsule.toml", manifest)],
            ),
            ("no manifest", vec![("bin", &b"x"[..])]),
        ] {
            let bytes = crafted(&key(), &files);
            assert!(verify(&bytes).is_err(), "{what}: accepted");
        }
        let e = verify(&crafted(
            &key(),
            &[
                ("bin", b"x"),
                ("bin/echo", b"y"),
                ("capsule.toml", manifest),
            ],
        ))
        .unwrap_err();
        assert!(e.to_string().contains("lists as a file"), "{e}");
    }

    #[test]
    fn a_validly_signed_index_that_is_not_canonical_is_refused() {
        let manifest: &[u8] = b"format = 1\nname = \"evil\"\nversion = \"0.1.0\"\ndescription = \"x\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin\"\n";
        let files: &[(&str, &[u8])] = &[("bin", b"x"), ("capsule.toml", manifest)];
        // Two encodings of one index would be two CIDs of one package, and bytes no check reads.
        let e = verify(&crafted_with(&key(), files, padded, |_| {})).unwrap_err();
        assert!(
            e.to_string().contains("the index body is not canonical"),
            "{e}"
        );
        let e = verify(&crafted_with(&key(), files, |_| {}, padded)).unwrap_err();
        assert!(
            e.to_string().contains("the signed index is not canonical"),
            "{e}"
        );
        // Untouched, the same package verifies.
        verify(&crafted_with(&key(), files, |_| {}, |_| {})).unwrap();
    }

    #[test]
    fn packing_checks_a_files_size_before_reading_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        // Sparse: 4 GiB long, nothing on disk. Read whole first, it would take 4 GiB of memory.
        let big = fs::File::create(dir.join("big")).unwrap();
        big.set_len(4 << 30).unwrap();
        let e = pack(&dir, &key()).unwrap_err();
        assert!(e.to_string().contains("a file is at most"), "{e}");
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        let p = pack(&dir, &key()).unwrap();
        for i in 0..p.bytes.len() {
            let mut b = p.bytes.clone();
            b[i] ^= 0x01;
            assert!(
                verify(&b).is_err(),
                "flip at {i} of {} accepted",
                p.bytes.len()
            );
        }
    }

    #[test]
    fn refusals_say_what_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        let p = pack(&dir, &key()).unwrap();
        let mut b = p.bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        let e = verify(&b).unwrap_err().to_string();
        assert!(e.contains("file capsule.toml") && e.contains("hash"), "{e}");
        let mut b = p.bytes.clone();
        b.push(0);
        assert!(verify(&b)
            .unwrap_err()
            .to_string()
            .contains("after the last file"));
        let e = verify(&p.bytes[..p.bytes.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        // A byte of the signed body: the signature no longer verifies.
        let mut b = p.bytes.clone();
        b[12 + 8 + 40] ^= 0x80;
        let e = verify(&b).unwrap_err().to_string();
        assert!(e.contains("signature") || e.contains("index"), "{e}");
        assert!(matches!(
            verify(b"nonsense"),
            Err(PackageError::NotAPackage)
        ));
    }

    #[test]
    fn packing_refuses_links_and_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let e = pack(&dir, &key()).unwrap_err().to_string();
        assert!(e.contains("link") && e.contains("symbolic"), "{e}");
        fs::remove_file(dir.join("link")).unwrap();
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = pack(&dir, &key()).unwrap_err().to_string();
        assert!(e.contains("fifo"), "{e}");
    }

    #[test]
    fn a_missing_entrypoint_is_refused_when_packing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        capsule(&dir);
        fs::remove_file(dir.join("bin/hello")).unwrap();
        let e = pack(&dir, &key()).unwrap_err().to_string();
        assert!(e.contains("entrypoint"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = verify(&bytes);
        }

        #[test]
        fn verify_never_panics_behind_a_valid_header(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600), len in 0u32..700) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            let _ = verify(&b);
        }

        #[test]
        fn random_file_sets_round_trip(files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8})?", proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..6)) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("c");
            capsule(&dir);
            for (p, content) in &files {
                let path = dir.join(p);
                if path.exists() || path.parent().is_some_and(|q| q.is_file()) { continue; }
                if fs::create_dir_all(path.parent().unwrap()).is_err() { continue; }
                if path.is_dir() { continue; }
                fs::write(&path, content).unwrap();
            }
            let p = pack(&dir, &key()).unwrap();
            let v = verify(&p.bytes).unwrap();
            proptest::prop_assert_eq!(v.cid, p.cid);
        }
    }
}
