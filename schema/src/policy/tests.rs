use super::*;
use proptest::prelude::*;

const DEFAULT: &str = include_str!("../../../policies/default.toml");
const CID: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
const DID: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

fn acts(s: &str) -> ActionSet {
    ActionSet::parse_list(s).unwrap()
}

fn req<'a>(standing: Standing, resource: &'a str, actions: &str) -> Request<'a> {
    Request {
        name: "notes",
        cid: CID,
        publisher: DID,
        standing,
        resource,
        actions: acts(actions),
    }
}

fn verdict(p: &Policy, r: Request<'_>) -> Verdict {
    p.decide(&r).verdict
}

const HOUR: Verdict = Verdict::Allow {
    ttl: Duration::from_secs(3600),
};

#[test]
fn the_shipped_default_decides_as_documented() {
    let p = Policy::parse(DEFAULT).unwrap();
    // First party (this node's own, or a first-party publisher's): what the manifest asks.
    for s in [Standing::ThisNode, Standing::FirstParty] {
        assert_eq!(verdict(&p, req(s, "localhost://echo/a", "read")), HOUR);
        assert_eq!(verdict(&p, req(s, "host://net", "read,write")), HOUR);
    }
    // Everyone keeps a state directory.
    for s in Standing::ALL {
        assert_eq!(
            verdict(&p, req(s, "host://state", "read,write")),
            HOUR,
            "{s:?}"
        );
    }
    // Known publishers and dev packages reaching beyond it: the person is asked.
    for s in [Standing::Known, Standing::Dev] {
        assert_eq!(
            verdict(&p, req(s, "localhost://echo/a", "read")),
            Verdict::Prompt
        );
        assert_eq!(
            verdict(&p, req(s, "host://net", "read,write")),
            Verdict::Prompt
        );
    }
    // An unknown publisher's package: asked before it runs, denied the rest.
    let run = format!("elastos://{CID}");
    assert_eq!(
        verdict(&p, req(Standing::Unknown, &run, "execute")),
        Verdict::Prompt
    );
    assert_eq!(
        verdict(&p, req(Standing::Unknown, "localhost://echo/a", "read")),
        Verdict::Deny
    );
    assert_eq!(
        verdict(
            &p,
            req(Standing::Unknown, "host://state", "read,write,delete")
        ),
        Verdict::Deny,
        "the state rule names read and write only"
    );
}

#[test]
fn the_first_matching_rule_decides_and_nothing_matching_is_a_deny() {
    let p = Policy::parse(
        "format = 1\n\
         [[rule]]\nname = \"notes\"\nresource = \"localhost://storage/notes/secret/*\"\ndecision = \"deny\"\nreason = \"not the secrets\"\n\
         [[rule]]\nname = \"notes\"\nresource = \"localhost://storage/notes/*\"\nactions = [\"read\"]\ndecision = \"allow\"\nttl = \"10m\"\n\
         [[rule]]\nname = \"notes\"\nresource = \"localhost://storage/*\"\ndecision = \"prompt\"\n",
    )
    .unwrap();
    let d = p.decide(&req(
        Standing::Known,
        "localhost://storage/notes/secret/a",
        "read",
    ));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.explain(), "deny (rule at line 2: not the secrets)");
    assert_eq!(
        verdict(
            &p,
            req(Standing::Known, "localhost://storage/notes/a", "read")
        ),
        Verdict::Allow {
            ttl: Duration::from_secs(600)
        }
    );
    // A pattern asked for is matched as a whole: inside the rule's, or not.
    assert_eq!(
        verdict(
            &p,
            req(Standing::Known, "localhost://storage/notes/*", "read")
        ),
        Verdict::Allow {
            ttl: Duration::from_secs(600)
        }
    );
    // Read and write is not within `read`: the next rule decides.
    assert_eq!(
        verdict(
            &p,
            req(Standing::Known, "localhost://storage/notes/a", "read,write")
        ),
        Verdict::Prompt
    );
    // Nothing matches another capsule, or another namespace.
    let mut other = req(Standing::Known, "localhost://storage/notes/a", "read");
    other.name = "mail";
    let d = p.decide(&other);
    assert_eq!((d.verdict, d.rule), (Verdict::Deny, None));
    assert!(d.explain().contains("no rule matches"), "{}", d.explain());
    assert_eq!(
        verdict(&p, req(Standing::Known, "localhost://mail/a", "read")),
        Verdict::Deny
    );
}

#[test]
fn a_grant_may_name_the_whole_namespace_only_when_one_rule_decides_all_of_it() {
    let p = Policy::parse(
        "format = 1\n\
         [[rule]]\nname = \"notes\"\nresource = \"localhost://storage/notes/secret/*\"\ndecision = \"deny\"\n\
         [[rule]]\nresource = \"localhost://storage/*\"\ndecision = \"allow\"\n",
    )
    .unwrap();
    let asked = req(Standing::Known, "localhost://storage/notes/a", "read");
    assert!(
        !p.decides_whole(&asked, "localhost://storage/notes/*"),
        "the secret part is denied"
    );
    assert!(p.decides_whole(&asked, "localhost://storage/notes/a"));
    let mut mail = asked;
    mail.name = "mail";
    assert!(
        p.decides_whole(&mail, "localhost://storage/notes/*"),
        "the deny is notes' alone"
    );
    let other = req(Standing::Known, "localhost://storage/mail/a", "read");
    assert!(
        !p.decides_whole(&other, "localhost://storage/notes/*"),
        "a part of it is denied to notes"
    );
    let p = Policy::parse(
        "format = 1\n[[rule]]\nresource = \"localhost://storage/notes/a\"\ndecision = \"allow\"\n",
    )
    .unwrap();
    assert!(
        !p.decides_whole(&asked, "localhost://storage/notes/*"),
        "an exact rule covers one resource"
    );
}

#[test]
fn each_key_narrows_a_rule() {
    let rule = |key: &str| {
        Policy::parse(&format!(
            "format = 1\n[[rule]]\n{key}\nresource = \"*\"\ndecision = \"allow\"\n"
        ))
        .unwrap()
    };
    let r = req(Standing::Known, "localhost://echo/a", "read");
    for (key, matches) in [
        (format!("cid = \"{CID}\""), true),
        ("cid = \"bafkreiaaaa\"".to_string(), false),
        (format!("publisher = \"{DID}\""), true),
        (
            "publisher = \"did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doX\"".into(),
            false,
        ),
        ("publisher = \"known\"".into(), true),
        ("publisher = \"first-party\"".into(), false),
        ("publisher = \"dev\"".into(), false),
        ("actions = [\"read\", \"write\"]".into(), true),
        ("actions = [\"write\"]".into(), false),
        ("name = \"notes\"".into(), true),
        ("name = \"mail\"".into(), false),
    ] {
        let allowed = verdict(&rule(&key), r) != Verdict::Deny;
        assert_eq!(allowed, matches, "{key}");
    }
    // `SCHEME://*` is that scheme and no other.
    let host =
        Policy::parse("format = 1\n[[rule]]\nresource = \"host://*\"\ndecision = \"prompt\"\n")
            .unwrap();
    assert_eq!(
        verdict(&host, req(Standing::Dev, "host://net", "read")),
        Verdict::Prompt
    );
    assert_eq!(
        verdict(&host, req(Standing::Dev, "hostx://net", "read")),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&host, req(Standing::Dev, "localhost://host/a", "read")),
        Verdict::Deny
    );
}

#[test]
fn mistakes_are_refused_with_their_line_and_column() {
    for (text, line, column, says) in [
        ("format = 2\n", 1, 10, "format = 2"),
        ("format = 1\n[[rule]]\nresorce = \"*\"\ndecision = \"deny\"\n", 3, 1, "unknown field"),
        ("format = 1\n[[rule]]\nresource = \"*\"\n", 2, 1, "missing field `decision`"),
        ("format = 1\n[[rule]]\nresource = \"local://a/../b\"\ndecision = \"deny\"\n", 3, 12, "resource"),
        ("format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"maybe\"\n", 4, 12, "allow, deny or prompt"),
        ("format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"allow\"\nttl = \"2h\"\n", 5, 7, "at most 1h"),
        ("format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"deny\"\nttl = \"1h\"\n", 5, 7, "only an `allow`"),
        ("format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"allow\"\nttl = \"soon\"\n", 5, 7, "ttl"),
        ("format = 1\n[[rule]]\npublisher = \"friends\"\nresource = \"*\"\ndecision = \"deny\"\n", 3, 13, "publisher"),
        ("format = 1\n[[rule]]\nname = \"Notes\"\nresource = \"*\"\ndecision = \"deny\"\n", 3, 8, "name"),
        ("format = 1\n[[rule]]\nactions = [\"fly\"]\nresource = \"*\"\ndecision = \"deny\"\n", 3, 11, "actions"),
        ("format = 1\n[[rule]]\nactions = []\nresource = \"*\"\ndecision = \"deny\"\n", 3, 11, "empty"),
        ("format = 1\n[[rule]]\nresource = \"*\"\ndecision = \"deny\"\nreason = \"a\\u001bb\"\n", 5, 10, "control"),
        ("format = 1\n[[rule]]\nresource = \"HOST://*\"\ndecision = \"deny\"\n", 3, 12, "lower-case"),
        ("format = 1\nrule = 3\n", 2, 8, "invalid type"),
    ] {
        let e = Policy::parse(text).unwrap_err();
        assert_eq!((e.line, e.column), (line, column), "{text:?}: {e}");
        assert!(e.message.contains(says), "{text:?}: {e}");
    }
    // An empty policy is valid: it denies everything.
    let p = Policy::parse("format = 1\n").unwrap();
    assert_eq!(
        verdict(&p, req(Standing::ThisNode, "host://state", "read")),
        Verdict::Deny
    );
}

proptest! {
    /// Whatever the text, parsing returns; it never panics.
    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,400}") {
        let _ = Policy::parse(&text);
    }

    /// Rules put together from the grammar's parts parse, and a decision names the first rule
    /// that matches, or none when no rule does.
    #[test]
    fn a_decision_is_the_first_matching_rule(
        rules in prop::collection::vec(
            (
                prop::option::of(prop::sample::select(vec!["notes", "mail"])),
                prop::option::of(prop::sample::select(vec!["first-party", "known", "dev", "unknown"])),
                prop::sample::select(vec!["*", "host://*", "localhost://storage/*", "localhost://storage/notes/*", "host://state"]),
                prop::option::of(prop::sample::select(vec!["read", "write", "read\", \"write"])),
                prop::sample::select(vec!["allow", "deny", "prompt"]),
            ),
            0..8,
        ),
        name in prop::sample::select(vec!["notes", "mail"]),
        standing in prop::sample::select(Standing::ALL.to_vec()),
        resource in prop::sample::select(vec!["host://state", "host://net", "localhost://storage/notes/a", "localhost://storage/mail/*"]),
        actions in prop::sample::select(vec!["read", "write", "read,write"]),
    ) {
        let mut text = String::from("format = 1\n");
        for (n, p, r, a, d) in &rules {
            text.push_str("[[rule]]\n");
            if let Some(n) = n { text.push_str(&format!("name = \"{n}\"\n")); }
            if let Some(p) = p { text.push_str(&format!("publisher = \"{p}\"\n")); }
            text.push_str(&format!("resource = \"{r}\"\n"));
            if let Some(a) = a { text.push_str(&format!("actions = [\"{a}\"]\n")); }
            text.push_str(&format!("decision = \"{d}\"\n"));
        }
        let policy = Policy::parse(&text).unwrap();
        prop_assert_eq!(policy.rules.len(), rules.len());
        let mut r = req(standing, resource, actions);
        r.name = name;
        let d = policy.decide(&r);
        // Checked against the rule's parts directly, not through `Rule::matches`.
        let expected = rules.iter().position(|(n, p, res, a, _)| {
            n.is_none_or(|n| n == name)
                && p.is_none_or(|p| match p {
                    "first-party" => matches!(standing, Standing::ThisNode | Standing::FirstParty),
                    other => other == standing.as_str(),
                })
                && match *res {
                    "*" => true,
                    "host://*" => resource.starts_with("host://"),
                    "localhost://storage/*" => resource.starts_with("localhost://storage/"),
                    "localhost://storage/notes/*" => resource.starts_with("localhost://storage/notes/"),
                    exact => exact == resource,
                }
                && a.is_none_or(|a| acts(actions).is_subset_of(acts(&a.replace("\", \"", ","))))
        });
        match expected {
            Some(i) => {
                prop_assert_eq!(d.rule.map(|r| r.line), Some(policy.rules[i].line));
                prop_assert_eq!(d.verdict, policy.rules[i].verdict);
            }
            None => prop_assert_eq!((d.verdict, d.rule), (Verdict::Deny, None)),
        }
    }
}
