//! Mandatory process and memory caps, by the best mechanism the machine offers.
//!
//! cgroup v1 `memory` and `pids` (what this kind of machine has: no v2 delegation): capsule-host
//! puts itself, before it forks anything, in `/sys/fs/cgroup/{memory,pids}/elastos/NAME.PID`
//! with `memory.limit_in_bytes` (resident memory, the manifest's `memory`) and `pids.max`, so
//! every process of the capsule is counted and a bomb meets the kernel's limit, not ours. It
//! leaves and removes the groups when the capsule is gone, and removes the empty groups that a
//! killed capsule-host left behind. Without root or without those controllers, the caps fall
//! back to `RLIMIT_DATA` (address space a process may allocate, not resident memory) and the
//! per-uid `RLIMIT_NPROC` (see `confine`); `ps` names the mechanism in force.

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The groups capsule-host entered.
pub struct Cgroups {
    dirs: Vec<PathBuf>,
    pub memory: u64,
    pub pids: u64,
    /// Share of one core, in percent, when the manifest asks for a cap.
    pub cpu: Option<u32>,
}

/// The CFS period the cpu share is a fraction of.
const CPU_PERIOD_US: u64 = 100_000;

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

/// Enters fresh v1 `memory` and `pids` groups with these caps, or says why it cannot (then the
/// caller falls back to rlimits). `pids` counts capsule-host and init too.
pub fn enter(name: &str, memory: u64, pids: u64, cpu: Option<u32>) -> Result<Cgroups, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: cgroups are not delegated to this user".into());
    }
    let mem_root = Path::new(ROOT).join("memory");
    let pids_root = Path::new(ROOT).join("pids");
    if !mem_root.join("memory.limit_in_bytes").exists() || !pids_root.is_dir() {
        return Err("no cgroup v1 memory and pids controllers".into());
    }
    let cpu_root = Path::new(ROOT).join("cpu");
    if cpu.is_some() && !cpu_root.join("cpu.cfs_quota_us").exists() {
        return Err("a cpu share was asked for, and there is no cgroup v1 cpu controller".into());
    }
    let leaf = format!("{name}.{}", std::process::id());
    let mut dirs = Vec::new();
    let mut groups = vec![
        (
            &mem_root,
            vec![
                ("memory.limit_in_bytes", memory.to_string()),
                // No swap beyond the limit where the kernel accounts swap.
                ("memory.memsw.limit_in_bytes", memory.to_string()),
            ],
        ),
        (&pids_root, vec![("pids.max", pids.to_string())]),
    ];
    if let Some(share) = cpu {
        // At least 1 ms per period: the kernel refuses less.
        let quota = (CPU_PERIOD_US * u64::from(share) / 100).max(1000);
        groups.push((
            &cpu_root,
            vec![
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ],
        ));
    }
    for (root, settings) in groups {
        let parent = root.join("elastos");
        fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        remove_empty_children(&parent);
        let dir = parent.join(&leaf);
        fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        dirs.push(dir.clone());
        for (file, value) in settings {
            let path = dir.join(file);
            if file == "memory.memsw.limit_in_bytes" && !path.exists() {
                continue;
            }
            write(&path, &value)?;
        }
        write(&dir.join("cgroup.procs"), &std::process::id().to_string())?;
    }
    Ok(Cgroups {
        dirs,
        memory,
        pids,
        cpu,
    })
}

/// Groups of capsule-hosts that were killed before they could clean up: empty, so removable.
fn remove_empty_children(parent: &Path) {
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            // A live capsule-host's group may be empty for a moment, between its mkdir and its
            // joining it: removing that would fail a capsule starting beside this one.
            if owner_lives(&e.file_name().to_string_lossy()) {
                continue;
            }
            // rmdir fails on a group that still has processes: exactly the ones to keep.
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// Whether the capsule-host of group `NAME.PID` is still running.
fn owner_lives(leaf: &str) -> bool {
    leaf.rsplit_once('.')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

impl Cgroups {
    /// Moves capsule-host back to the root groups and removes its own, once the capsule's
    /// processes are gone.
    pub fn leave_and_remove(&self) {
        let me = std::process::id().to_string();
        for dir in &self.dirs {
            if let Some(root) = dir.parent().and_then(Path::parent) {
                let _ = fs::write(root.join("cgroup.procs"), &me);
            }
            let _ = fs::remove_dir(dir);
        }
    }

    pub fn layer(&self) -> String {
        let cpu = self.cpu.map(|c| format!(",cpu={c}%")).unwrap_or_default();
        format!(
            "cgroup-v1(memory={}MiB,pids={}{cpu})",
            self.memory >> 20,
            self.pids
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_groups_of_dead_capsule_hosts_are_cleared() {
        assert!(super::owner_lives(&format!("echo.{}", std::process::id())));
        assert!(super::owner_lives(&format!("a.b.{}", std::process::id())));
        // Beyond pid_max: no such process.
        assert!(!super::owner_lives("echo.4194305"));
        assert!(!super::owner_lives("no-pid"));
    }
}
