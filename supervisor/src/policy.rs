//! The built-in **development policy**, for a node that sets `[policy] decider = "development"`
//! (by default the shell capsule decides, with the node's policy, and may ask the person), and
//! the supervisor's own rules that hold whichever decides (the provide capability, the `host://`
//! grants once allowed).
//!
//! It is deliberately narrow and always named in the audit log (`policy=development`):
//! - a capsule gets a token for what its own `capsule.toml` `requests`, and nothing else: the
//!   asked resource must lie within a requested pattern and the asked actions within that entry's
//!   actions; the token names the requested pattern (so one grant covers the namespace), carries
//!   only the asked actions, lives at most an hour, and is bound to the capsule's name and CID;
//! - the "provide" capability (`admin` on exactly a namespace pattern) goes only to a first-party
//!   capsule — one published by this node's key or a publisher marked first party — for a pattern its
//!   manifest `provides`. Development packages (publisher `dev`) never provide.
//!
//! Everything else is denied, with a reason that says what to add to the manifest.

use std::time::Duration;

use elastos_schema::manifest::{Manifest, Provide};
use elastos_schema::{Action, ActionSet, Classification};

use crate::token::{resource_matches, resource_within, validate_pattern};

/// Shown in audit records and `elastos status`.
pub const NAME: &str = "development";
/// The longest lifetime this policy grants; the SDK renews before expiry.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What the policy decided for one token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Allow {
        resource: String,
        actions: ActionSet,
        ttl: Duration,
        classification: Classification,
    },
    Deny(String),
}

/// Whether the capsule may see the host's libraries read-only (`host://libs` in its manifest's
/// `requests`): granted when asked for (with the shell deciding, once it allowed the start), and
/// shown in `ps`.
pub fn grants_host_libs(manifest: &Manifest) -> bool {
    manifest.requests_host_libs()
}

/// The network the capsule gets (`host://net` → `host`, `host://loopback` → `loopback`):
/// granted when asked for (with the shell deciding, once it allowed the start), and shown in
/// `ps`.
pub fn grants_net(manifest: &Manifest) -> Option<&'static str> {
    manifest.requested_net()
}

/// Whether the capsule gets its private persistent directory (`host://state` read+write in its
/// manifest): granted when asked for (with the shell deciding, once it allowed the start), and
/// shown in `ps`.
pub fn grants_state(manifest: &Manifest) -> bool {
    manifest.requests_state()
}

/// `URI:ACTIONS`, as `elastos run --allow` takes it: the resource pattern and its actions, split
/// at the last colon (the URI has its own).
pub fn parse_allow(s: &str) -> Result<(String, ActionSet), String> {
    let bad = || format!("`{s}`: expected URI:ACTIONS, such as localhost://echo/*:read,write");
    let (resource, actions) = s
        .rsplit_once(':')
        .filter(|(r, a)| !r.is_empty() && !a.contains('/'))
        .ok_or_else(bad)?;
    validate_pattern(resource).map_err(|e| format!("`{s}`: {e}"))?;
    let actions = ActionSet::parse_list(actions).map_err(|e| format!("`{s}`: {e}"))?;
    Ok((resource.to_string(), actions))
}

/// Decides a capsule's `requestToken`.
pub fn decide(
    manifest: &Manifest,
    first_party: bool,
    resource: &str,
    actions: ActionSet,
    ttl: Duration,
) -> Grant {
    if actions.is_empty() {
        return Grant::Deny("no actions asked for".into());
    }
    if let Some(g) = decide_provide(manifest, first_party, resource, actions, ttl) {
        return g;
    }
    let ttl = if ttl.is_zero() {
        MAX_TTL
    } else {
        ttl.min(MAX_TTL)
    };
    if validate_pattern(resource).is_err() {
        return Grant::Deny(format!("`{resource}` is not a resource or pattern"));
    }
    for r in &manifest.requests {
        let covers = resource_within(&r.resource, resource).unwrap_or(false)
            || resource_matches(&r.resource, resource).unwrap_or(false);
        if covers && actions.is_subset_of(r.actions) {
            return Grant::Allow {
                resource: r.resource.clone(),
                actions,
                ttl,
                classification: Classification::Internal,
            };
        }
    }
    Grant::Deny(format!(
        "capsule.toml of `{}` does not request `{resource}` for {actions}; add a [[requests]] entry with that resource and actions",
        manifest.name
    ))
}

/// The provide capability (`admin` on a namespace the manifest `provides`, to a first-party
/// capsule): its grant or denial, or `None` when the request is not for it. The rule holds
/// whichever policy decides the rest.
pub fn decide_provide(
    manifest: &Manifest,
    first_party: bool,
    resource: &str,
    actions: ActionSet,
    ttl: Duration,
) -> Option<Grant> {
    if !actions.contains(Action::Admin) {
        return None;
    }
    let p = provides_entry(manifest, resource)?;
    if actions != single(Action::Admin) {
        return Some(Grant::Deny(
            "the provide capability is `admin` alone".into(),
        ));
    }
    if !first_party {
        return Some(Grant::Deny(format!(
            "only first-party capsules may provide `{resource}`; sign the package with this node's key, or mark its publisher first party (`elastos trust add DID --first-party`)"
        )));
    }
    Some(Grant::Allow {
        resource: resource.to_string(),
        actions,
        ttl: if ttl.is_zero() {
            MAX_TTL
        } else {
            ttl.min(MAX_TTL)
        },
        classification: p.classification,
    })
}

fn single(a: Action) -> ActionSet {
    let mut s = ActionSet::EMPTY;
    s.insert(a);
    s
}

/// The `provides` entry that covers `pattern`: the listed namespace itself, or one inside it
/// (one echo binary, many instances, each serving its own part). Where entries nest, the most
/// specific (longest) one decides, whatever the order they are listed in: a manifest that lists
/// `localhost://notes/*` as internal and `localhost://notes/secret/*` as confidential serves
/// the secret part as confidential.
fn provides_entry<'m>(manifest: &'m Manifest, pattern: &str) -> Option<&'m Provide> {
    manifest
        .provides
        .iter()
        .filter(|p| {
            p.uri == pattern
                || (pattern.ends_with("/*") && resource_within(&p.uri, pattern).unwrap_or(false))
        })
        .max_by_key(|p| p.uri.len())
}

pub fn may_provide(
    manifest: &Manifest,
    first_party: bool,
    pattern: &str,
) -> Result<Classification, String> {
    let Some(p) = provides_entry(manifest, pattern) else {
        return Err(format!(
            "capsule.toml of `{}` does not list `{pattern}` (or a namespace around it) in `provides`",
            manifest.name
        ));
    };
    if !first_party {
        return Err(format!(
            "only first-party capsules may provide (`{}` is not)",
            manifest.name
        ));
    }
    Ok(p.classification)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            r#"format = 1
name = "notes"
version = "1.0.0"
description = "notes"
substrate = "native"
[entrypoint]
native = "bin/notes"
[[provides]]
uri = "localhost://notes/*"
classification = "confidential"
[[requests]]
resource = "localhost://storage/notes/*"
actions = ["read", "write"]
reason = "keep notes"
"#,
        )
        .unwrap()
    }

    fn acts(s: &str) -> ActionSet {
        ActionSet::parse_list(s).unwrap()
    }

    #[test]
    fn an_allow_on_the_command_line_is_a_resource_and_its_actions() {
        let (r, a) = parse_allow("localhost://echo/*:read,write").unwrap();
        assert_eq!(r, "localhost://echo/*");
        assert_eq!(a, ActionSet::parse_list("read,write").unwrap());
        assert_eq!(parse_allow("host://net:message").unwrap().0, "host://net");
        for bad in [
            "localhost://echo/*",
            ":read",
            "localhost://echo/*:",
            "localhost://echo/*:fly",
            "nowhere:read",
        ] {
            assert!(parse_allow(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_what_the_manifest_requests_and_no_more() {
        let m = manifest();
        let g = decide(
            &m,
            false,
            "localhost://storage/notes/a",
            acts("read"),
            Duration::from_secs(7200),
        );
        assert_eq!(
            g,
            Grant::Allow {
                resource: "localhost://storage/notes/*".into(),
                actions: acts("read"),
                ttl: MAX_TTL,
                classification: Classification::Internal
            }
        );
        for (res, a) in [
            ("localhost://storage/notes/a", "delete"),
            ("localhost://storage/other/a", "read"),
            ("localhost://storage/notes", "read"),
            ("localhost://storage/*", "read"),
        ] {
            assert!(
                matches!(decide(&m, true, res, acts(a), MAX_TTL), Grant::Deny(_)),
                "{res} {a}"
            );
        }
    }

    #[test]
    fn the_most_specific_provides_entry_classifies_whatever_the_order() {
        for order in [[0, 1], [1, 0]] {
            let entries = [
                ("localhost://notes/*", "internal"),
                ("localhost://notes/secret/*", "confidential"),
            ];
            let mut text = String::from(
                "format = 1\nname = \"notes\"\nversion = \"1.0.0\"\ndescription = \"n\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/notes\"\n",
            );
            for i in order {
                let (uri, class) = entries[i];
                text.push_str(&format!(
                    "[[provides]]\nuri = \"{uri}\"\nclassification = \"{class}\"\n"
                ));
            }
            let m = Manifest::parse(&text).unwrap();
            for (pattern, want) in [
                ("localhost://notes/secret/*", Classification::Confidential),
                (
                    "localhost://notes/secret/deep/*",
                    Classification::Confidential,
                ),
                ("localhost://notes/*", Classification::Internal),
                ("localhost://notes/other/*", Classification::Internal),
            ] {
                assert_eq!(
                    may_provide(&m, true, pattern),
                    Ok(want),
                    "{pattern} {order:?}"
                );
                assert!(
                    matches!(
                        decide(&m, true, pattern, acts("admin"), MAX_TTL),
                        Grant::Allow { classification, .. } if classification == want
                    ),
                    "{pattern} {order:?}"
                );
            }
        }
    }

    #[test]
    fn only_first_party_capsules_provide_their_own_namespaces() {
        let m = manifest();
        let ok = decide(&m, true, "localhost://notes/*", acts("admin"), MAX_TTL);
        assert!(matches!(
            ok,
            Grant::Allow {
                classification: Classification::Confidential,
                ..
            }
        ));
        assert!(matches!(
            decide(&m, false, "localhost://notes/*", acts("admin"), MAX_TTL),
            Grant::Deny(_)
        ));
        assert!(matches!(
            decide(&m, true, "localhost://echo/*", acts("admin"), MAX_TTL),
            Grant::Deny(_)
        ));
        assert!(may_provide(&m, true, "localhost://notes/*").is_ok());
        assert!(may_provide(&m, false, "localhost://notes/*").is_err());
        assert!(may_provide(&m, true, "localhost://echo/*").is_err());
        assert!(may_provide(&m, true, "localhost://notes/work/*").is_ok());
        assert!(may_provide(&m, true, "localhost://notes/work").is_err());
        assert!(may_provide(&m, true, "localhost://notesx/*").is_err());
        // A part of a listed namespace is granted as asked, not widened to the whole.
        match decide(&m, true, "localhost://notes/work/*", acts("admin"), MAX_TTL) {
            Grant::Allow { resource, .. } => assert_eq!(resource, "localhost://notes/work/*"),
            Grant::Deny(why) => panic!("{why}"),
        }
    }
}
