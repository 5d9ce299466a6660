//! The confinement of the capsule process, step by step, in a fixed order, failing closed.
//!
//! Each step goes through the narrow [`Sys`] interface, so the order and the error paths are
//! tested without privileges by a recorder; the real [`Kernel`] makes the system calls. The
//! order of the whole design (docs/ARCHITECTURE.md) is: user namespace, the other namespaces,
//! PID 1, private root, limits, capabilities and uid, `no_new_privs`, Landlock, seccomp, exec.
//! Implemented so far, in that order: **limits**, **no_new_privs**, **seccomp**. A step that
//! fails stops the sequence and names itself; the capsule never runs half-confined.

use nix::sys::resource::Resource;
use seccompiler::BpfProgram;

use elastos_schema::Limits;

/// The system calls confinement needs, one method per step.
pub trait Sys {
    fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String>;
    fn no_new_privs(&mut self) -> Result<(), String>;
    fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String>;
}

/// What to apply, prepared before the fork (preparing allocates; applying does not).
pub struct Plan {
    pub rlimits: Vec<(Resource, u64)>,
    pub seccomp: Vec<BpfProgram>,
}

/// The step that failed and why: the capsule does not start.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub step: &'static str,
    pub why: String,
}

/// Open files when the manifest names no limit.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// The largest file a capsule may write (no key in `[limits]` yet: the storage quota comes
/// with the private state directory).
pub const MAX_FILE_SIZE: u64 = 1 << 30;

impl Plan {
    pub fn native(limits: &Limits) -> Result<Plan, String> {
        let mut rlimits = vec![
            (
                Resource::RLIMIT_NOFILE,
                limits.open_files.map_or(DEFAULT_OPEN_FILES, u64::from),
            ),
            (Resource::RLIMIT_FSIZE, MAX_FILE_SIZE),
            // No core dumps: a capsule's memory may hold what it was trusted with.
            (Resource::RLIMIT_CORE, 0),
        ];
        if let Some(s) = limits.cpu_seconds {
            rlimits.push((Resource::RLIMIT_CPU, s));
        }
        let seccomp = crate::seccomp::compile(crate::seccomp::NATIVE).map_err(|e| e.to_string())?;
        Ok(Plan { rlimits, seccomp })
    }

    /// The layers this plan puts in force, as `ps` shows them.
    pub fn layers(&self) -> Vec<String> {
        let mut names: Vec<&str> = self
            .rlimits
            .iter()
            .map(|(r, _)| match r {
                Resource::RLIMIT_NOFILE => "nofile",
                Resource::RLIMIT_FSIZE => "fsize",
                Resource::RLIMIT_CORE => "core",
                Resource::RLIMIT_CPU => "cpu",
                _ => "other",
            })
            .collect();
        names.sort_unstable();
        vec![
            format!("rlimits({})", names.join(",")),
            "no-new-privs".into(),
            "seccomp".into(),
        ]
    }
}

/// Applies `plan` through `sys`, in order; the first failure stops it.
pub fn apply(sys: &mut impl Sys, plan: &Plan) -> Result<(), Failure> {
    for &(resource, limit) in &plan.rlimits {
        sys.set_rlimit(resource, limit).map_err(|why| Failure {
            step: "limits",
            why: format!("{resource:?} = {limit}: {why}"),
        })?;
    }
    sys.no_new_privs().map_err(|why| Failure {
        step: "no_new_privs",
        why,
    })?;
    sys.seccomp(&plan.seccomp).map_err(|why| Failure {
        step: "seccomp",
        why,
    })?;
    Ok(())
}

/// The real system calls. Used in the capsule's process after fork, before exec: nothing here
/// allocates on success.
pub struct Kernel;

impl Sys for Kernel {
    fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String> {
        nix::sys::resource::setrlimit(resource, limit, limit).map_err(|e| e.desc().to_string())
    }
    fn no_new_privs(&mut self) -> Result<(), String> {
        nix::sys::prctl::set_no_new_privs().map_err(|e| e.desc().to_string())
    }
    fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String> {
        crate::seccomp::install(programs).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each step; fails the one named in `fail_at`.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<String>,
        fail_at: Option<&'static str>,
    }

    impl Recorder {
        fn step(&mut self, name: &str) -> Result<(), String> {
            self.steps.push(name.to_string());
            if self.fail_at.is_some_and(|f| name.starts_with(f)) {
                Err("refused by the test".into())
            } else {
                Ok(())
            }
        }
    }

    impl Sys for Recorder {
        fn set_rlimit(&mut self, resource: Resource, limit: u64) -> Result<(), String> {
            self.step(&format!("limit {resource:?}={limit}"))
        }
        fn no_new_privs(&mut self) -> Result<(), String> {
            self.step("no_new_privs")
        }
        fn seccomp(&mut self, programs: &[BpfProgram]) -> Result<(), String> {
            self.step(&format!("seccomp {}", programs.len()))
        }
    }

    fn plan() -> Plan {
        Plan::native(&Limits {
            open_files: Some(64),
            cpu_seconds: Some(30),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let mut r = Recorder::default();
        apply(&mut r, &plan()).unwrap();
        assert_eq!(
            r.steps,
            [
                "limit RLIMIT_NOFILE=64",
                &format!("limit RLIMIT_FSIZE={MAX_FILE_SIZE}"),
                "limit RLIMIT_CORE=0",
                "limit RLIMIT_CPU=30",
                "no_new_privs",
                "seccomp 4",
            ]
        );
    }

    #[test]
    fn a_failing_step_stops_everything_after_it_and_names_itself() {
        for (fail_at, step, ran) in [
            ("limit RLIMIT_NOFILE", "limits", 1),
            ("no_new_privs", "no_new_privs", 5),
            ("seccomp", "seccomp", 6),
        ] {
            let mut r = Recorder {
                fail_at: Some(fail_at),
                ..Default::default()
            };
            let f = apply(&mut r, &plan()).unwrap_err();
            assert_eq!(f.step, step);
            assert!(f.why.contains("refused by the test"), "{f:?}");
            assert_eq!(r.steps.len(), ran, "{fail_at}: {:?}", r.steps);
        }
    }

    #[test]
    fn layers_name_only_what_the_plan_enforces() {
        let p = Plan::native(&Limits::default()).unwrap();
        assert_eq!(
            p.layers(),
            ["rlimits(core,fsize,nofile)", "no-new-privs", "seccomp"]
        );
        assert_eq!(p.rlimits[0], (Resource::RLIMIT_NOFILE, DEFAULT_OPEN_FILES));
    }
}
