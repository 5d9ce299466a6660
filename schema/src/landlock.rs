//! What each Landlock ABI version adds, named once for every side that reports it: capsule-host
//! (the `landlock(abi=N,…)` layer `ps` shows) and `elastos doctor`. Confinement asks for the
//! newest rights it knows (ABI 6) and gets what the kernel has; these names say what is lost.

/// The newest ABI whose rights confinement uses.
pub const WANTED_ABI: i32 = 6;

/// The rights confinement asks for that a kernel offering `abi` lacks, in ABI order.
pub fn missing_rights(abi: i32) -> Vec<&'static str> {
    const ADDED: [(i32, &[&str]); 5] = [
        (2, &["refer"]),
        (3, &["truncate"]),
        (4, &["tcp"]),
        (5, &["ioctl-dev"]),
        (6, &["scope-signal", "scope-abstract-unix"]),
    ];
    ADDED
        .iter()
        .filter(|(since, _)| abi < *since)
        .flat_map(|(_, rights)| rights.iter().copied())
        .collect()
}

/// Whether a kernel offering `abi` scopes signals and abstract Unix sockets to the capsule.
pub fn scopes(abi: i32) -> bool {
    abi >= 6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_abi_lacks_exactly_what_later_ones_added() {
        assert!(missing_rights(WANTED_ABI).is_empty());
        assert!(missing_rights(7).is_empty());
        assert_eq!(missing_rights(5), ["scope-signal", "scope-abstract-unix"]);
        assert_eq!(
            missing_rights(3),
            ["tcp", "ioctl-dev", "scope-signal", "scope-abstract-unix"]
        );
        assert_eq!(missing_rights(1).len(), 6);
        assert!(scopes(6) && !scopes(5));
    }
}
