//! capsule-host: the per-capsule process. The supervisor starts one per capsule; it confines
//! itself (namespaces, Landlock, seccomp, limits) and then runs the capsule on its substrate.
//! The supervisor and the substrates arrive with issues 4–6; until then this binary only refuses
//! to run, so nothing can mistake it for a working sandbox.

fn main() {
    eprintln!(
        "capsule-host: not started by a supervisor; capsules are run with `elastos run` (this build has no substrate yet)"
    );
    std::process::exit(2);
}
