//! The content store: verified packages, kept by CID, from which capsules run.
//!
//! A package is verified before anything of it is written here, stored as `store/<cid>.capsule`
//! (the exact bytes, so its CID can be recomputed) and extracted read-only to `store/<cid>/`.
//! Extraction goes to a temporary directory that is renamed into place, so a directory named by a
//! CID is always complete. `store/names.json` maps a capsule name to the CID most recently stored
//! under it, for `elastos run <stored-name>`. Capsules run from here and never from the
//! operator's directory, so what runs is exactly what was verified.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use elastos_schema::manifest::Manifest;

use crate::fsutil::write_atomic;
use crate::home::Home;
use crate::package::{self, PackageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the package is refused: {0}")]
    Refused(#[from] PackageError),
    #[error("no capsule named `{0}` is in the store; run it from a directory or package first")]
    UnknownName(String),
    #[error("the stored package {cid} no longer verifies ({why}); remove {path} and run it again")]
    Corrupt {
        cid: String,
        path: PathBuf,
        why: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A verified package in the store.
#[derive(Debug, Clone)]
pub struct Stored {
    pub cid: String,
    pub publisher: String,
    pub manifest: Manifest,
    /// The extracted, read-only files.
    pub root: PathBuf,
    /// Each file's SHA-256 (hex) as the verified index lists it, by path.
    pub files: BTreeMap<String, String>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(home: &Home) -> Result<Store, StoreError> {
        let dir = home.ensure_dir("store").map_err(|e| StoreError::Io {
            path: home.root().join("store"),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Store { dir })
    }

    fn names_path(&self) -> PathBuf {
        self.dir.join("names.json")
    }

    fn names(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let path = self.names_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                path,
                source: std::io::Error::other(e.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Verifies `bytes` and stores them; a package already stored is not written again.
    pub fn add(&self, bytes: &[u8]) -> Result<Stored, StoreError> {
        let pkg = package::verify(bytes)?;
        let cid = pkg.cid.to_string();
        let file = self.dir.join(format!("{cid}.capsule"));
        let root = self.dir.join(&cid);
        if !file.exists() {
            write_atomic(&file, bytes, 0o444).map_err(io_err(&file))?;
        }
        if !root.exists() {
            let tmp = self.dir.join(format!(".{cid}.tmp{}", std::process::id()));
            if tmp.exists() {
                remove_tree(&tmp)?;
            }
            pkg.extract(bytes, &tmp)?;
            fs::rename(&tmp, &root).map_err(io_err(&root))?;
        }
        let mut names = self.names()?;
        if names.get(&pkg.manifest.name) != Some(&cid) {
            names.insert(pkg.manifest.name.clone(), cid.clone());
            let path = self.names_path();
            let text = serde_json::to_vec_pretty(&names).map_err(|e| StoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            write_atomic(&path, &text, 0o600).map_err(io_err(&path))?;
        }
        Ok(Stored {
            cid,
            publisher: pkg.publisher.clone(),
            manifest: pkg.manifest.clone(),
            root,
            files: hashes(&pkg),
        })
    }

    /// The capsule most recently stored under `name`, verified again from its stored bytes.
    pub fn by_name(&self, name: &str) -> Result<Stored, StoreError> {
        let cid = self
            .names()?
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownName(name.to_string()))?;
        self.by_cid(&cid)
    }

    pub fn by_cid(&self, cid: &str) -> Result<Stored, StoreError> {
        let file = self.dir.join(format!("{cid}.capsule"));
        let bytes = fs::read(&file).map_err(io_err(&file))?;
        let pkg = package::verify(&bytes).map_err(|e| StoreError::Corrupt {
            cid: cid.to_string(),
            path: file.clone(),
            why: e.to_string(),
        })?;
        if pkg.cid.to_string() != cid {
            return Err(StoreError::Corrupt {
                cid: cid.to_string(),
                path: file,
                why: "its CID changed".into(),
            });
        }
        let root = self.dir.join(cid);
        if !root.exists() {
            return self.add(&bytes);
        }
        Ok(Stored {
            cid: cid.to_string(),
            publisher: pkg.publisher.clone(),
            manifest: pkg.manifest.clone(),
            root,
            files: hashes(&pkg),
        })
    }
}

fn hashes(pkg: &package::VerifiedPackage) -> BTreeMap<String, String> {
    pkg.files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect()
}

/// Removes a tree whose directories were made read-only.
fn remove_tree(path: &Path) -> Result<(), StoreError> {
    for entry in walk_dirs(path) {
        let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o700));
    }
    fs::remove_dir_all(path).map_err(io_err(path))
}

fn walk_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let _ = fs::set_permissions(&out[i], fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}
