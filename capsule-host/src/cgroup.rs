//! Mandatory process and memory caps, by the best mechanism the machine offers.
//!
//! capsule-host puts itself, before it forks anything, in a fresh group of its own with the
//! capsule's caps, so every process of the capsule is counted and a bomb meets the kernel's
//! limit, not ours; it leaves and removes the group when the capsule is gone. The empty groups
//! of capsule-hosts killed before they could clean up are removed once, when a supervisor
//! starts (`capsule-host sweep-cgroups`), not at every capsule's start: that scan costs a
//! `stat` per live capsule, which with 200 of them made every start slower.
//! - cgroup v2 (a unified hierarchy with `memory` and `pids`, as modern distributions mount it):
//!   `/sys/fs/cgroup/elastos/NAME.PID` with `memory.max` (resident memory, the manifest's
//!   `memory`), `memory.swap.max` 0, `pids.max` and `cpu.max`; the controllers are enabled for
//!   `elastos/`'s children, and `elastos/` itself never holds a process (v2's rule).
//! - cgroup v1 `memory` and `pids` (what this kind of machine has): the same caps in
//!   `/sys/fs/cgroup/{memory,pids,cpu}/elastos/NAME.PID`.
//!
//! Both need root (no delegation to a user is used). Without, the caps fall back to
//! `RLIMIT_DATA` (address space a process may allocate, not resident memory) and the per-uid
//! `RLIMIT_NPROC` (see `confine`); `ps` names the mechanism in force.

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The groups capsule-host entered.
pub struct Cgroups {
    dirs: Vec<PathBuf>,
    v2: bool,
    pub memory: u64,
    pub pids: u64,
    /// Share of one core, in percent, when the manifest asks for a cap.
    pub cpu: Option<u32>,
}

/// v1: capsule-host joins a group by writing `0` (itself) to `tasks`. Moving a whole process
/// through `cgroup.procs` write-locks the kernel's global threadgroup semaphore, which waits for
/// an RCU grace period (11 ms measured for a lone write); moving the calling
/// thread does not, and capsule-host is single-threaded when it joins (checked at its start), so
/// the thread is the process, and everything it forks follows.
const SELF_FILE: &str = "tasks";

/// The CFS period the cpu share is a fraction of.
const CPU_PERIOD_US: u64 = 100_000;

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

/// Enters fresh groups with these caps (v2 where the machine has it, else v1), or says why it
/// cannot (then the caller falls back to rlimits). `pids` counts capsule-host and init too.
pub fn enter(name: &str, memory: u64, pids: u64, cpu: Option<u32>) -> Result<Cgroups, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: cgroups are not delegated to this user".into());
    }
    let leaf = format!("{name}.{}", std::process::id());
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        enter_v2(root, &leaf, memory, pids, cpu)
    } else {
        enter_v1(root, &leaf, memory, pids, cpu)
    }
}

/// A unified hierarchy at `root`.
fn enter_v2(
    root: &Path,
    leaf: &str,
    memory: u64,
    pids: u64,
    cpu: Option<u32>,
) -> Result<Cgroups, String> {
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let available = read(&root.join("cgroup.controllers"))?;
    let mut wanted = vec!["memory", "pids"];
    if cpu.is_some() {
        wanted.push("cpu");
    }
    if let Some(gone) = wanted
        .iter()
        .find(|c| !available.split_whitespace().any(|a| a == **c))
    {
        return Err(format!("the cgroup v2 hierarchy has no {gone} controller"));
    }
    let enable: String = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    // Down the path to the capsule's group, each level hands the controllers to its children.
    write(&root.join("cgroup.subtree_control"), &enable)?;
    let parent = root.join("elastos");
    fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    write(&parent.join("cgroup.subtree_control"), &enable)?;
    let dir = parent.join(leaf);
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut settings = vec![
        ("memory.max", memory.to_string()),
        ("memory.swap.max", "0".to_string()),
        ("pids.max", pids.to_string()),
    ];
    if let Some(share) = cpu {
        settings.push(("cpu.max", format!("{} {CPU_PERIOD_US}", cpu_quota(share))));
    }
    let entered = settings
        .iter()
        // No swap file to cap where the kernel accounts no swap.
        .filter(|(file, _)| *file != "memory.swap.max" || dir.join(file).exists())
        .try_for_each(|(file, value)| write(&dir.join(file), value))
        .and_then(|()| write(&dir.join("cgroup.procs"), &std::process::id().to_string()));
    if let Err(e) = entered {
        let _ = fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(Cgroups {
        dirs: vec![dir],
        v2: true,
        memory,
        pids,
        cpu,
    })
}

/// At least 1 ms per period: the kernel refuses less.
fn cpu_quota(share: u32) -> u64 {
    (CPU_PERIOD_US * u64::from(share) / 100).max(1000)
}

/// Separate v1 hierarchies under `root`.
fn enter_v1(
    root: &Path,
    leaf: &str,
    memory: u64,
    pids: u64,
    cpu: Option<u32>,
) -> Result<Cgroups, String> {
    let mem_root = root.join("memory");
    let pids_root = root.join("pids");
    if !mem_root.join("memory.limit_in_bytes").exists() || !pids_root.is_dir() {
        return Err("no cgroup v1 memory and pids controllers".into());
    }
    let cpu_root = root.join("cpu");
    if cpu.is_some() && !cpu_root.join("cpu.cfs_quota_us").exists() {
        return Err("a cpu share was asked for, and there is no cgroup v1 cpu controller".into());
    }
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
        let quota = cpu_quota(share);
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
        let dir = parent.join(leaf);
        fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        dirs.push(dir.clone());
        for (file, value) in settings {
            let path = dir.join(file);
            if file == "memory.memsw.limit_in_bytes" && !path.exists() {
                continue;
            }
            write(&path, &value)?;
        }
        write(&dir.join(SELF_FILE), "0")?;
    }
    Ok(Cgroups {
        dirs,
        v2: false,
        memory,
        pids,
        cpu,
    })
}

/// Removes the groups of capsule-hosts that were killed before they could clean up, in every
/// hierarchy under `root`; returns how many.
pub fn sweep(root: &Path) -> usize {
    ["", "memory", "pids", "cpu"]
        .iter()
        .map(|h| root.join(h).join("elastos"))
        .filter(|dir| dir.is_dir())
        .map(|dir| remove_empty_children(&dir))
        .sum()
}

/// The system's hierarchies, for `sweep`.
pub fn system_root() -> &'static Path {
    Path::new(ROOT)
}

/// Groups of capsule-hosts that were killed before they could clean up: empty, so removable.
fn remove_empty_children(parent: &Path) -> usize {
    let mut removed = 0;
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            // A live capsule-host's group may be empty for a moment, between its mkdir and its
            // joining it: removing that would fail a capsule starting beside this one.
            if owner_lives(&e.file_name().to_string_lossy()) {
                continue;
            }
            // rmdir fails on a group that still has processes: exactly the ones to keep.
            if fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Whether the capsule-host of group `NAME.PID` is still running (a zombie is not: a killed
/// capsule-host whose parent, the supervisor, was killed too waits a while to be reaped).
fn owner_lives(leaf: &str) -> bool {
    leaf.rsplit_once('.')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        // The state follows the command name, which may itself hold ") ".
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Cgroups {
    /// Moves capsule-host back to the root groups and removes its own, once the capsule's
    /// processes are gone.
    pub fn leave_and_remove(&self) {
        let me = std::process::id().to_string();
        for dir in &self.dirs {
            // Back to the hierarchy's root: in v2 `elastos/` may hold no process itself.
            if let Some(root) = dir.parent().and_then(Path::parent) {
                let _ = if self.v2 {
                    fs::write(root.join("cgroup.procs"), &me)
                } else {
                    fs::write(root.join(SELF_FILE), "0")
                };
            }
            let _ = fs::remove_dir(dir);
        }
    }

    pub fn layer(&self) -> String {
        let cpu = self.cpu.map(|c| format!(",cpu={c}%")).unwrap_or_default();
        format!(
            "cgroup-{}(memory={}MiB,pids={}{cpu})",
            if self.v2 { "v2" } else { "v1" },
            self.memory >> 20,
            self.pids
        )
    }
}

#[cfg(test)]
mod tests {
    //! Against a file tree shaped like each hierarchy: what is written where. (The kernel's
    //! side, the caps biting, is the end-to-end tests' on this machine's v1; v2 has no machine
    //! here.)
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap().trim().to_string()
    }

    #[test]
    fn v2_hands_the_controllers_down_and_caps_the_capsule_group() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        // Left by a killed capsule-host (no such pid): empty, so a sweep removes it.
        fs::create_dir_all(root.join("elastos/old.4194305")).unwrap();
        let cg = enter_v2(root, "echo.42", 64 << 20, 10, Some(50)).unwrap();
        assert!(root.join("elastos/old.4194305").exists());
        assert_eq!(sweep(root), 1);
        assert_eq!(
            read(&root.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(&root.join("elastos/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert!(!root.join("elastos/old.4194305").exists());
        let leaf = root.join("elastos/echo.42");
        assert_eq!(read(&leaf.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&leaf.join("pids.max")), "10");
        assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
        assert_eq!(
            read(&leaf.join("cgroup.procs")),
            std::process::id().to_string()
        );
        assert_eq!(cg.layer(), "cgroup-v2(memory=64MiB,pids=10,cpu=50%)");
    }

    #[test]
    fn v2_without_a_controller_says_which_and_makes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(root.join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let e = enter_v2(root, "echo.42", 64 << 20, 10, None).err().unwrap();
        assert!(e.contains("no pids controller"), "{e}");
        assert!(!root.join("elastos").exists());
    }

    #[test]
    fn v1_caps_each_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("memory")).unwrap();
        fs::write(root.join("memory/memory.limit_in_bytes"), "").unwrap();
        fs::create_dir_all(root.join("pids")).unwrap();
        let cg = enter_v1(root, "echo.42", 64 << 20, 10, None).unwrap();
        assert_eq!(
            read(&root.join("memory/elastos/echo.42/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&root.join("pids/elastos/echo.42/pids.max")), "10");
        // Joined as the calling thread (see SELF_FILE), in every hierarchy.
        assert_eq!(read(&root.join("memory/elastos/echo.42/tasks")), "0");
        assert_eq!(read(&root.join("pids/elastos/echo.42/tasks")), "0");
        assert_eq!(cg.layer(), "cgroup-v1(memory=64MiB,pids=10)");
        // A cpu share without a cpu hierarchy is refused, not ignored.
        assert!(enter_v1(root, "echo.43", 64 << 20, 10, Some(50)).is_err());
    }

    #[test]
    fn a_sweep_removes_the_empty_groups_of_dead_capsule_hosts_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let live = format!("echo.{}", std::process::id());
        for h in ["memory", "pids"] {
            for g in ["echo.4194305", "ping.4194306", live.as_str()] {
                fs::create_dir_all(root.join(h).join("elastos").join(g)).unwrap();
            }
        }
        // A dead host's group that still holds a file stands in for one with processes left.
        fs::write(root.join("pids/elastos/ping.4194306/x"), "").unwrap();
        assert_eq!(sweep(root), 3);
        let left = |h: &str| {
            let mut v: Vec<String> = fs::read_dir(root.join(h).join("elastos"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(left("memory"), std::slice::from_ref(&live));
        assert_eq!(left("pids"), [live.clone(), "ping.4194306".to_string()]);
        // Starting a group no longer sweeps: a start costs no scan of the live ones.
        fs::create_dir_all(root.join("memory/elastos/old.4194307")).unwrap();
        fs::write(root.join("memory/memory.limit_in_bytes"), "").unwrap();
        let _ = enter_v1(root, "new.1", 1 << 20, 8, None);
        assert!(root.join("memory/elastos/old.4194307").is_dir());
    }

    #[test]
    fn only_the_groups_of_dead_capsule_hosts_are_cleared() {
        assert!(super::owner_lives(&format!("echo.{}", std::process::id())));
        assert!(super::owner_lives(&format!("a.b.{}", std::process::id())));
        // Beyond pid_max: no such process.
        assert!(!super::owner_lives("echo.4194305"));
        assert!(!super::owner_lives("no-pid"));
    }
}
