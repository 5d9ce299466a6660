use super::*;
use elastos_schema::policy::{self as rules, Answer, Policy};
use proptest::prelude::*;

fn entry(resource: &str, actions: &str) -> ManifestRequest {
    ManifestRequest {
        resource: resource.into(),
        actions: ActionSet::parse_list(actions).unwrap(),
        reason: "r".into(),
    }
}

fn acts(s: &str) -> ActionSet {
    ActionSet::parse_list(s).unwrap()
}

const CID: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
const OTHER_CID: &str = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DID: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
const OTHER_DID: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doX";

/// A manifest named `name` with these `provides` and `requests` (resource, actions).
fn manifest(name: &str, provides: &[&str], requests: &[(&str, &str)]) -> Manifest {
    let mut t = format!(
        "format = 1\nname = \"{name}\"\nversion = \"1\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/x\"\n"
    );
    for uri in provides {
        t.push_str(&format!("[[provides]]\nuri = \"{uri}\"\n"));
    }
    for (resource, actions) in requests {
        let quoted: Vec<String> = actions.split(',').map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!(
            "[[requests]]\nresource = \"{resource}\"\nactions = [{}]\nreason = \"r\"\n",
            quoted.join(", ")
        ));
    }
    Manifest::parse(&t).unwrap()
}

#[test]
fn an_answer_is_held_within_the_manifest_and_the_nodes_ceilings() {
    let notes = entry("localhost://storage/notes/*", "read,write");
    let asked = "localhost://storage/notes/a";
    let rw = acts("read,write");
    let hour = Duration::from_secs(3600);
    // The asked resource, or the whole entry: fine.
    within_ceilings(asked, &notes, asked, rw, hour).unwrap();
    within_ceilings(asked, &notes, "localhost://storage/notes/*", rw, hour).unwrap();
    for (resource, actions, ttl, says) in [
        (
            "localhost://storage/*",
            "read",
            hour,
            "wider than the manifest",
        ),
        (
            "localhost://storage/notes/b",
            "read",
            hour,
            "does not hold the asked",
        ),
        ("localhost://storage/notes/*", "read,admin", hour, "admin"),
        (
            "localhost://storage/notes/*",
            "read,delete",
            hour,
            "beyond the manifest",
        ),
        (
            "localhost://storage/notes/*",
            "read",
            Duration::from_secs(3601),
            "1 s to 3600 s",
        ),
        (
            "localhost://storage/notes/*",
            "read",
            Duration::ZERO,
            "1 s to 3600 s",
        ),
        (
            "localhost://storage/notes/../x",
            "read",
            hour,
            "its resource",
        ),
    ] {
        let e = within_ceilings(asked, &notes, resource, acts(actions), ttl).unwrap_err();
        assert!(e.contains(says), "{resource} {actions}: {e}");
    }
    assert!(within_ceilings(asked, &notes, asked, ActionSet::EMPTY, hour).is_err());
}

#[test]
fn only_a_declared_request_is_put_to_the_shell() {
    let m = manifest("notes", &[], &[("localhost://storage/notes/*", "read")]);
    let read = acts("read");
    assert!(covering_entry(&m, "localhost://storage/notes/a", read).is_some());
    assert!(covering_entry(&m, "localhost://storage/notes/*", read).is_some());
    assert!(covering_entry(&m, "localhost://storage/mail/a", read).is_none());
    assert!(covering_entry(&m, "localhost://storage/notes/a", acts("read,write")).is_none());
    assert_eq!(
        before_asking(&m, true, "localhost://storage/mail/a", read, MAX_TTL),
        Err(Unasked::Undeclared)
    );
    assert!(matches!(
        before_asking(
            &m,
            true,
            "localhost://storage/notes/a",
            ActionSet::EMPTY,
            MAX_TTL
        ),
        Err(Unasked::Malformed(_))
    ));
}

/// `admin` is the provide capability, the supervisor's rule under any policy: a first-party
/// capsule gets it for what it provides, and nobody gets it for what a manifest lists in its
/// `requests` (the shell is never asked about `admin`, so that would be a grant past it).
#[test]
fn admin_is_only_the_provide_capability_and_explained_as_decided() {
    let m = manifest(
        "echo",
        &["localhost://echo/*"],
        &[("localhost://storage/*", "read,admin")],
    );
    let admin = acts("admin");
    let Err(Unasked::Provide(g @ Grant::Allow { .. })) =
        before_asking(&m, true, "localhost://echo/*", admin, Duration::ZERO)
    else {
        panic!("a first-party capsule provides what its manifest lists");
    };
    assert!(matches!(&g, Grant::Allow { ttl, .. } if *ttl == MAX_TTL));
    let explained = Unasked::Provide(g).explained("localhost://echo/*", admin);
    assert_eq!(explained["verdict"], "allow", "{explained}");
    assert_eq!(explained["ttl_s"], 3600);
    for (first_party, resource, says) in [
        (false, "localhost://echo/*", "only first-party"),
        (true, "localhost://storage/a", "does not list"),
    ] {
        let Err(Unasked::Provide(Grant::Deny(why))) =
            before_asking(&m, first_party, resource, admin, Duration::ZERO)
        else {
            panic!("{resource}: `admin` is denied");
        };
        assert!(why.contains(says), "{why}");
        let explained = Unasked::Provide(Grant::Deny(why.clone())).explained(resource, admin);
        assert_eq!(
            (&explained["verdict"], &explained["reason"]),
            (&json!("deny"), &json!(why))
        );
    }
}

#[test]
fn an_answer_outside_the_ceilings_is_refused_and_explained_so() {
    let ask = ask_for("localhost://storage/notes/a", "read", Duration::ZERO);
    let wider = ShellAnswer::Allow {
        resource: "localhost://storage/*".into(),
        actions: acts("read"),
        ttl: MAX_TTL,
    };
    let Outcome::Refused(why) = outcome(&ask, &wider) else {
        panic!("wider than the manifest");
    };
    let explained = outcome(&ask, &wider).explained("allow (rule at line 2)");
    assert_eq!(explained["verdict"], "deny");
    assert_eq!(
        explained["explanation"],
        format!("the shell's answer would be refused: {why} (allow (rule at line 2))")
    );
}

fn ask_for(resource: &str, actions: &str, ttl: Duration) -> Ask {
    Ask {
        name: "notes".into(),
        cid: CID.into(),
        publisher: DID.into(),
        standing: Standing::Known,
        resource: resource.into(),
        actions: acts(actions),
        ttl,
        covering: entry("localhost://storage/notes/*", "read,write"),
        dry_run: false,
    }
}

/// The shell capsule's answer to `ask` as it reaches the supervisor: `schema::policy` decides,
/// as `capsules/shell` has it do whether or not the ask is a dry run, and the wire carries
/// whole seconds.
fn shell(policy: &Policy, ask: &Ask) -> (ShellAnswer, String) {
    let asked = rules::Request {
        name: &ask.name,
        cid: &ask.cid,
        publisher: &ask.publisher,
        standing: ask.standing,
        resource: &ask.resource,
        actions: ask.actions,
    };
    let ttl = Duration::from_secs(ask.ttl.as_secs());
    let (answer, explanation) = policy.answer(&asked, &ask.covering.resource, ttl);
    let answer = match answer {
        Answer::Allow {
            resource,
            actions,
            ttl,
        } => ShellAnswer::Allow {
            resource,
            actions,
            ttl: Duration::from_secs(ttl.as_secs()),
        },
        Answer::Deny(why) => ShellAnswer::Deny(why),
        Answer::Prompt => ShellAnswer::Prompt,
    };
    (answer, explanation)
}

/// One random rule: its lines in a policy file.
fn rule() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::sample::select(vec!["notes", "mail"])),
        prop::option::weighted(0.2, prop::sample::select(vec![CID, OTHER_CID])),
        prop::option::of(prop::sample::select(vec![
            "first-party",
            "known",
            "dev",
            "unknown",
            DID,
            OTHER_DID,
        ])),
        prop::sample::select(vec![
            "*",
            "localhost://*",
            "host://*",
            "localhost://storage/*",
            "localhost://storage/notes/*",
            "localhost://storage/notes/secret/*",
            "localhost://storage/notes/a",
            "localhost://echo/*",
            "host://state",
        ]),
        prop::option::of(prop::sample::subsequence(
            vec!["read", "write", "delete", "admin"],
            1..=3,
        )),
        prop_oneof![
            Just("decision = \"deny\"\n".to_string()),
            Just("decision = \"prompt\"\n".to_string()),
            prop::option::of(prop::sample::select(vec![
                "10m", "90s", "1h", "500ms", "1500ms"
            ]))
            .prop_map(|ttl| match ttl {
                Some(t) => format!("decision = \"allow\"\nttl = \"{t}\"\n"),
                None => "decision = \"allow\"\n".to_string(),
            }),
        ],
    )
        .prop_map(|(name, cid, publisher, resource, actions, decision)| {
            let mut t = String::from("[[rule]]\n");
            for (k, v) in [("name", name), ("cid", cid), ("publisher", publisher)] {
                if let Some(v) = v {
                    t.push_str(&format!("{k} = \"{v}\"\n"));
                }
            }
            t.push_str(&format!("resource = \"{resource}\"\n"));
            if let Some(list) = actions {
                let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
                t.push_str(&format!("actions = [{}]\n", quoted.join(", ")));
            }
            t.push_str(&decision);
            t
        })
}

const REQUESTS: [(&str, &str); 6] = [
    ("localhost://storage/notes/*", "read,write"),
    ("localhost://storage/*", "read"),
    ("localhost://storage/notes/a", "read,delete"),
    ("host://state", "read,write"),
    ("localhost://echo/*", "read,admin"),
    ("host://net", "read,write"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// `elastos policy explain` agrees with the decision the same request gets: for random
    /// policies, manifests and requests, with the shell deciding by the real policy code for a
    /// dry run and a real one, what explain says (allow with its resource, actions and lifetime,
    /// deny, prompt) is what the request path (`before_asking`, the shell, `outcome`) decides.
    /// Explain names no lifetime; a request that does gets the shorter. The shell's answers
    /// never fall outside the ceilings.
    #[test]
    fn explain_agrees_with_the_decision_made(
        rules in prop::collection::vec(rule(), 0..6),
        name in prop::sample::select(vec!["notes", "mail"]),
        cid in prop::sample::select(vec![CID, OTHER_CID]),
        standing in prop::sample::select(Standing::ALL.to_vec()),
        did in prop::sample::select(vec![DID, OTHER_DID]),
        provides in prop::sample::subsequence(
            vec!["localhost://echo/*", "localhost://storage/notes/*"],
            0..=2,
        ),
        requests in prop::sample::subsequence(REQUESTS.to_vec(), 0..=4),
        resource in prop::sample::select(vec![
            "localhost://storage/notes/a",
            "localhost://storage/notes/secret/x",
            "localhost://storage/notes/*",
            "localhost://storage/mail/a",
            "localhost://storage/*",
            "localhost://echo/*",
            "localhost://echo/*",
            "localhost://echo/x/*",
            "host://state",
            "host://net",
        ]),
        actions in prop::sample::subsequence(vec!["read", "write", "delete"], 1..=2),
        // `admin` alone is the provide capability; with another action, never granted.
        admin in prop::sample::select(vec![None, None, None, Some(true), Some(false)]),
        ttl in prop::sample::select(vec![0u64, 1, 30, 600, 7200]),
    ) {
        let policy = Policy::parse(&format!("format = 1\n{}", rules.concat())).unwrap();
        let manifest = manifest(name, &provides, &requests);
        let actions = match admin {
            None => acts(&actions.join(",")),
            Some(true) => acts("admin"),
            Some(false) => acts(&format!("admin,{}", actions.join(","))),
        };
        let publisher = if standing == Standing::Dev { "dev" } else { did };
        let first_party = matches!(standing, Standing::ThisNode | Standing::FirstParty);
        let ttl = Duration::from_secs(ttl);
        let ask = |covering: &ManifestRequest, ttl, dry_run| Ask {
            name: name.into(),
            cid: cid.into(),
            publisher: publisher.into(),
            standing,
            resource: resource.into(),
            actions,
            ttl,
            covering: covering.clone(),
            dry_run,
        };

        // The request path: `conn::request_token`, then `decide::decide`.
        let decided = match before_asking(&manifest, first_party, resource, actions, ttl) {
            Err(unasked) => match unasked.grant(name, resource, actions) {
                Grant::Allow { resource, actions, ttl, .. } => Outcome::Allow { resource, actions, ttl },
                Grant::Deny(why) => Outcome::Deny(why),
            },
            Ok(covering) => {
                let real = ask(covering, ttl, false);
                let (answer, explanation) = shell(&policy, &real);
                let dry = shell(&policy, &ask(covering, Duration::ZERO, true));
                prop_assert_eq!(&explanation, &dry.1, "the shell explains a dry run as a real one");
                outcome(&real, &answer)
            }
        };
        // `control::policy_explain`.
        let explained = match before_asking(&manifest, first_party, resource, actions, Duration::ZERO) {
            Err(unasked) => unasked.explained(resource, actions),
            Ok(covering) => {
                let dry = ask(covering, Duration::ZERO, true);
                let (answer, explanation) = shell(&policy, &dry);
                outcome(&dry, &answer).explained(&explanation)
            }
        };

        match (&decided, explained["verdict"].as_str()) {
            (Outcome::Allow { resource: r, actions: a, ttl: t }, Some("allow")) => {
                prop_assert_eq!(&explained["resource"], &json!(r));
                prop_assert_eq!(&explained["actions"], &json!(a.to_string()));
                let said = explained["ttl_s"].as_u64().map(Duration::from_secs);
                let want = if ttl.is_zero() { said } else { said.map(|s| s.min(ttl)) };
                prop_assert_eq!(Some(*t), want, "{}", explained);
            }
            (Outcome::Deny(why), Some("deny")) => {
                if let Some(reason) = explained.get("reason") {
                    prop_assert_eq!(reason, &json!(why));
                }
            }
            (Outcome::Prompt, Some("prompt")) => {}
            (Outcome::Refused(why), _) => {
                prop_assert!(false, "the shell answered outside the ceilings: {}", why);
            }
            (d, _) => prop_assert!(false, "decided {:?}, explained {}", d, explained),
        }
    }
}
