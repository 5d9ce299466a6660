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
    #[error("`{name}` {offered} is older than the {have} stored from the same publisher ({publisher}); run it with --allow-downgrade to replace the newer one (recorded in the audit log)")]
    Downgrade {
        name: String,
        publisher: String,
        have: String,
        offered: String,
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

    /// Verifies `bytes` and stores them; a package already stored is not written again. An
    /// older version of a capsule stored from the same publisher is refused unless
    /// `allow_downgrade`.
    pub fn add(&self, bytes: &[u8], allow_downgrade: bool) -> Result<Stored, StoreError> {
        let checked = self.check(bytes)?;
        self.add_checked(checked, bytes, allow_downgrade)
    }

    /// Verifies `bytes` and says whether storing them would replace a newer version of the
    /// same (publisher, name), without storing anything: a caller records a downgrade before it
    /// takes effect.
    pub fn check(&self, bytes: &[u8]) -> Result<Checked, StoreError> {
        let pkg = package::verify(bytes)?;
        let downgrade_from = self
            .names()?
            .get(&pkg.manifest.name)
            .filter(|cid| **cid != pkg.cid.to_string())
            .and_then(|cid| self.by_cid(cid).ok())
            .filter(|have| have.publisher == pkg.publisher)
            .and_then(|have| {
                let older = older(&pkg.manifest.version, &have.manifest.version);
                older.then_some(have.manifest.version)
            });
        Ok(Checked {
            pkg,
            downgrade_from,
        })
    }

    /// Stores what [`Store::check`] verified (`bytes` are the same bytes). On any failure
    /// nothing of it is left: no package file, no partial tree.
    pub fn add_checked(
        &self,
        checked: Checked,
        bytes: &[u8],
        allow_downgrade: bool,
    ) -> Result<Stored, StoreError> {
        let Checked {
            pkg,
            downgrade_from,
        } = checked;
        if let (Some(have), false) = (&downgrade_from, allow_downgrade) {
            return Err(StoreError::Downgrade {
                name: pkg.manifest.name.clone(),
                publisher: pkg.publisher.clone(),
                have: have.clone(),
                offered: pkg.manifest.version.clone(),
            });
        }
        let cid = pkg.cid.to_string();
        let file = self.dir.join(format!("{cid}.capsule"));
        let root = self.dir.join(&cid);
        let wrote_file = !file.exists();
        if wrote_file {
            write_atomic(&file, bytes, 0o444).map_err(io_err(&file))?;
        }
        let undo = |e: StoreError| {
            if wrote_file {
                let _ = fs::remove_file(&file);
            }
            e
        };
        if !root.exists() {
            let mut rnd = [0u8; 8];
            getrandom::fill(&mut rnd)
                .map_err(|e| undo(io_err(&root)(std::io::Error::other(e.to_string()))))?;
            let tmp = self.dir.join(format!(".{cid}.tmp.{}", hex::encode(rnd)));
            let extracted = pkg
                .extract(bytes, &tmp)
                .map_err(StoreError::from)
                .and_then(|()| fs::rename(&tmp, &root).map_err(io_err(&root)));
            if let Err(e) = extracted {
                let _ = remove_tree(&tmp);
                return Err(undo(e));
            }
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
            // Its own name already points here: re-extracting it replaces nothing.
            return self.add(&bytes, true);
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

/// A package verified by [`Store::check`], not stored yet.
pub struct Checked {
    pkg: package::VerifiedPackage,
    /// The newer version it would replace, when it would.
    pub downgrade_from: Option<String>,
}

impl Checked {
    pub fn manifest(&self) -> &Manifest {
        &self.pkg.manifest
    }
    pub fn publisher(&self) -> &str {
        &self.pkg.publisher
    }
}

/// Whether version `a` is older than `b`, both read as semantic versions; versions that are not
/// (a manifest's version is free text) have no order, and are never a downgrade.
fn older(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn package(version: &str, key: &NodeKey) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("capsule.toml"),
            format!("format = 1\nname = \"app\"\nversion = \"{version}\"\ndescription = \"x\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"run\"\n"),
        )
        .unwrap();
        fs::write(dir.path().join("run"), version).unwrap();
        package::pack(dir.path(), key).unwrap().bytes
    }

    #[test]
    fn an_older_version_of_the_same_publishers_capsule_needs_allow_downgrade() {
        let home_dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Home::at(home_dir.path().join("h"))).unwrap();
        let (key, other) = (NodeKey::from_seed(&[1; 32]), NodeKey::from_seed(&[2; 32]));
        let newer = store.add(&package("0.2.0", &key), false).unwrap();
        let old = package("0.1.0", &key);
        match store.add(&old, false) {
            Err(StoreError::Downgrade { have, offered, .. }) => {
                assert_eq!((have.as_str(), offered.as_str()), ("0.2.0", "0.1.0"))
            }
            other => panic!("{other:?}"),
        }
        // Refused, nothing of it was kept, and the name still means the newer one.
        assert_eq!(store.by_name("app").unwrap().cid, newer.cid);
        let kept = fs::read_dir(&store.dir).unwrap().count();
        assert_eq!(kept, 3, "names.json, the newer package and its tree only");
        assert!(store.check(&old).unwrap().downgrade_from.is_some());
        let downgraded = store.add(&old, true).unwrap();
        assert_eq!(store.by_name("app").unwrap().cid, downgraded.cid);
        // Newer again, and another publisher's older one: no downgrade of this one's.
        store.add(&package("0.3.0", &key), false).unwrap();
        store.add(&package("0.0.1", &other), false).unwrap();
        // Versions that are not semantic versions have no order.
        assert!(!older("dev", "0.1.0") && !older("0.1.0", "nightly"));
        assert!(older("0.1.0-rc.1", "0.1.0"));
    }
}
