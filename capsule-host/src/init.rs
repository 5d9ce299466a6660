//! Init's part of confinement: what the capsule's PID 1 does between its clone (step 3) and the
//! fork of the capsule, in order, through the narrow [`InitSys`] interface, so that the order and
//! every error path are tested without privileges by a recorder, as [`crate::confine`] does for
//! the capsule's own steps.
//!
//! With a user namespace: open the private root's sources (while init can still walk the node's
//! private home), wait for the maps and take the capsule's uid (step 1), arm the parent-death
//! signal again (a uid change cleared it) and make sure the parent is still there, make every
//! mount private and bring up the loopback when granted (step 2), build the root (step 4).
//! Without one (a root capsule-host, when the node allows it): init takes a mount namespace of
//! its own, opens the sources there, and builds the root.

use crate::confine::Failure;

/// The system calls of init's steps, one method per step.
pub trait InitSys {
    /// Opens every source of the private root (`newroot::pin`).
    fn pin_sources(&mut self) -> Result<(), String>;
    /// Waits for the maps and becomes the capsule's uid (`userns::enter`).
    fn enter_user_namespace(&mut self) -> Result<(), String>;
    /// Arms the parent-death signal again; fails if the parent is already gone.
    fn rearm_parent_death(&mut self) -> Result<(), String>;
    /// Makes every mount of init's mount namespace private.
    fn private_mounts(&mut self) -> Result<(), String>;
    fn loopback_up(&mut self) -> Result<(), String>;
    /// Without a user namespace: a mount namespace of init's own.
    fn own_mount_namespace(&mut self) -> Result<(), String>;
    /// Mounts the root and pivots into it (`newroot::apply`).
    fn build_root(&mut self) -> Result<(), String>;
}

/// What init has to do.
#[derive(Debug, Clone, Copy)]
pub struct InitPlan {
    pub user_namespace: bool,
    pub private_root: bool,
    pub loopback: bool,
}

/// Runs init's steps in order; the first failure stops them and names its step.
pub fn run(sys: &mut impl InitSys, plan: InitPlan) -> Result<(), Failure> {
    let step = |step: &'static str| move |why: String| Failure { step, why };
    if plan.user_namespace {
        if plan.private_root {
            sys.pin_sources().map_err(step("private root"))?;
        }
        sys.enter_user_namespace().map_err(step("user namespace"))?;
        sys.rearm_parent_death().map_err(step("parent check"))?;
        sys.private_mounts().map_err(step("mount namespace"))?;
        if plan.loopback {
            sys.loopback_up().map_err(|e| Failure {
                step: "network",
                why: format!("bringing up its loopback: {e}"),
            })?;
        }
    }
    if plan.private_root {
        if !plan.user_namespace {
            sys.own_mount_namespace().map_err(step("private root"))?;
            sys.pin_sources().map_err(step("private root"))?;
        }
        sys.build_root().map_err(step("private root"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        steps: Vec<&'static str>,
        fail_at: Option<&'static str>,
    }

    impl Recorder {
        fn step(&mut self, name: &'static str) -> Result<(), String> {
            self.steps.push(name);
            if self.fail_at == Some(name) {
                return Err("refused by the test".into());
            }
            Ok(())
        }
    }

    impl InitSys for Recorder {
        fn pin_sources(&mut self) -> Result<(), String> {
            self.step("pin")
        }
        fn enter_user_namespace(&mut self) -> Result<(), String> {
            self.step("enter")
        }
        fn rearm_parent_death(&mut self) -> Result<(), String> {
            self.step("rearm")
        }
        fn private_mounts(&mut self) -> Result<(), String> {
            self.step("private")
        }
        fn loopback_up(&mut self) -> Result<(), String> {
            self.step("loopback")
        }
        fn own_mount_namespace(&mut self) -> Result<(), String> {
            self.step("own-ns")
        }
        fn build_root(&mut self) -> Result<(), String> {
            self.step("root")
        }
    }

    fn plan(user_namespace: bool, private_root: bool, loopback: bool) -> InitPlan {
        InitPlan {
            user_namespace,
            private_root,
            loopback,
        }
    }

    #[test]
    fn with_a_user_namespace_the_sources_are_opened_before_the_uid_changes() {
        let mut r = Recorder::default();
        run(&mut r, plan(true, true, true)).unwrap();
        assert_eq!(
            r.steps,
            ["pin", "enter", "rearm", "private", "loopback", "root"]
        );
        let mut r = Recorder::default();
        run(&mut r, plan(true, false, false)).unwrap();
        assert_eq!(r.steps, ["enter", "rearm", "private"]);
    }

    #[test]
    fn without_one_init_takes_a_mount_namespace_of_its_own_first() {
        let mut r = Recorder::default();
        run(&mut r, plan(false, true, false)).unwrap();
        assert_eq!(r.steps, ["own-ns", "pin", "root"]);
        let mut r = Recorder::default();
        run(&mut r, plan(false, false, true)).unwrap();
        assert!(r.steps.is_empty(), "{:?}", r.steps);
    }

    #[test]
    fn a_failing_step_stops_everything_after_it_and_names_itself() {
        for (fail_at, step, ran) in [
            ("pin", "private root", 1),
            ("enter", "user namespace", 2),
            ("rearm", "parent check", 3),
            ("private", "mount namespace", 4),
            ("loopback", "network", 5),
            ("root", "private root", 6),
        ] {
            let mut r = Recorder {
                fail_at: Some(fail_at),
                ..Default::default()
            };
            let f = run(&mut r, plan(true, true, true)).unwrap_err();
            assert_eq!(f.step, step, "{fail_at}");
            assert!(f.why.contains("refused by the test"), "{f:?}");
            assert_eq!(r.steps.len(), ran, "{fail_at}: {:?}", r.steps);
        }
    }
}
