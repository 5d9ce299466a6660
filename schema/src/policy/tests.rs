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
    // A pattern asked for is matched as a whole: inside the rule's, or not; and a rule about a
    // part of it comes first, or the grant of the whole would hold the secrets too.
    assert_eq!(
        verdict(
            &p,
            req(Standing::Known, "localhost://storage/notes/work/*", "read")
        ),
        Verdict::Allow {
            ttl: Duration::from_secs(600)
        }
    );
    let d = p.decide(&req(Standing::Known, "localhost://storage/notes/*", "read"));
    assert_eq!(
        (d.verdict, d.rule.map(|r| r.line), d.part),
        (Verdict::Deny, Some(2), true)
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
        let expected = rules.iter().position(|(n, p, res, a, verdict)| {
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
                && a.is_none_or(|a| {
                    let listed = acts(&a.replace("\", \"", ","));
                    // An allow covers all of the request; a deny or prompt holds for any of it.
                    match *verdict {
                        "allow" => acts(actions).is_subset_of(listed),
                        _ => acts(actions).iter().any(|x| listed.contains(x)),
                    }
                })
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

#[test]
fn a_pattern_asked_for_is_denied_when_a_rule_decides_part_of_it() {
    let p = Policy::parse(
        "format = 1\n\
         [[rule]]\nresource = \"localhost://storage/notes/secret/*\"\ndecision = \"deny\"\nreason = \"not the secrets\"\n\
         [[rule]]\nresource = \"localhost://storage/notes/*\"\ndecision = \"allow\"\n",
    )
    .unwrap();
    let whole = req(Standing::Known, "localhost://storage/notes/*", "read");
    let (answer, explained) = p.answer(&whole, "localhost://storage/notes/*", Duration::ZERO);
    assert_eq!(
        explained,
        "deny (rule at line 2 decides part of the pattern asked for, so none of it is granted: not the secrets)"
    );
    assert_eq!(answer, Answer::Deny(format!("policy: {explained}")));
    // A part the deny does not touch is allowed, and for the whole manifest entry only when no
    // part of it is ruled otherwise.
    let (answer, _) = p.answer(
        &req(Standing::Known, "localhost://storage/notes/a", "read"),
        "localhost://storage/notes/*",
        Duration::from_secs(60),
    );
    assert_eq!(
        answer,
        Answer::Allow {
            resource: "localhost://storage/notes/a".into(),
            actions: acts("read"),
            ttl: Duration::from_secs(60),
        }
    );
}

/// The parts random policies are made of: `name`, `cid`, `publisher`, `resource`, `actions`,
/// the decision and its `ttl`, and `reason`.
type RuleParts = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    Option<Vec<&'static str>>,
    (&'static str, Option<&'static str>),
    Option<&'static str>,
);

const OTHER_CID: &str = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER_DID: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doX";

fn rule_parts() -> impl Strategy<Value = RuleParts> {
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
            "host://state",
            "host://net",
        ]),
        prop::option::of(prop::sample::subsequence(
            vec!["read", "write", "delete", "execute"],
            1..=3,
        )),
        prop_oneof![
            Just(("deny", None)),
            Just(("prompt", None)),
            prop::option::of(prop::sample::select(vec![
                "10m", "90s", "1h", "500ms", "1500ms"
            ]))
            .prop_map(|ttl| ("allow", ttl)),
        ],
        prop::option::of(prop::sample::select(vec![
            "because",
            "a reason: with a colon",
        ])),
    )
}

/// A rule's lines, as a policy file holds them.
fn rule_text(
    (name, cid, publisher, resource, actions, (decision, ttl), reason): &RuleParts,
) -> String {
    let mut t = String::from("[[rule]]\n");
    let mut key = |k: &str, v: &str| t.push_str(&format!("{k} = \"{v}\"\n"));
    if let Some(v) = name {
        key("name", v);
    }
    if let Some(v) = cid {
        key("cid", v);
    }
    if let Some(v) = publisher {
        key("publisher", v);
    }
    key("resource", resource);
    key("decision", decision);
    if let Some(v) = ttl {
        key("ttl", v);
    }
    if let Some(v) = reason {
        key("reason", v);
    }
    if let Some(list) = actions {
        let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!("actions = [{}]\n", quoted.join(", ")));
    }
    t
}

/// Concrete resources a grant may cover: what a rule or a request names, and their neighbours.
const UNIVERSE: [&str; 10] = [
    "localhost://storage/notes/a",
    "localhost://storage/notes/b",
    "localhost://storage/notes/secret",
    "localhost://storage/notes/secret/x",
    "localhost://storage/mail/a",
    "localhost://storage/x",
    "localhost://echo/a",
    "localhost://echo/x/y",
    "host://state",
    "host://net",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The answer and its explanation, against rules taken one at a time: the rule named (its
    /// line) is the first that decides the request on its own, saying what that rule alone says,
    /// and none deciding is the implicit deny. Whatever an allow or a prompt would grant is
    /// decided by that same rule for every resource within it: asking for a namespace, or being
    /// handed the manifest's whole entry, never gets round a rule about a part of it.
    #[test]
    fn the_rule_an_answer_names_is_the_first_that_decides_on_its_own(
        rules in prop::collection::vec(rule_parts(), 0..7),
        name in prop::sample::select(vec!["notes", "mail"]),
        cid in prop::sample::select(vec![CID, OTHER_CID]),
        standing in prop::sample::select(Standing::ALL.to_vec()),
        did in prop::sample::select(vec![DID, OTHER_DID]),
        resource in prop::sample::select(vec![
            "localhost://storage/notes/a",
            "localhost://storage/notes/secret/x",
            "localhost://storage/notes/*",
            "localhost://storage/notes/secret/*",
            "localhost://storage/mail/a",
            "localhost://storage/*",
            "localhost://echo/*",
            "host://state",
            "host://net",
        ]),
        actions in prop::sample::subsequence(vec!["read", "write", "delete", "execute"], 1..=3),
        covering in any::<prop::sample::Index>(),
        asked_ttl in prop::sample::select(vec![0u64, 1, 30, 600, 7200]),
    ) {
        let blocks: Vec<String> = rules.iter().map(rule_text).collect();
        let mut text = String::from("format = 1\n");
        let mut lines = Vec::new();
        for b in &blocks {
            lines.push(text.lines().count() + 1);
            text.push_str(b);
        }
        let policy = Policy::parse(&text).unwrap();
        let alone: Vec<Policy> = blocks
            .iter()
            .map(|b| Policy::parse(&format!("format = 1\n{b}")).unwrap())
            .collect();
        let publisher = if standing == Standing::Dev { "dev" } else { did };
        let actions = acts(&actions.join(","));
        let asked = Request { name, cid, publisher, standing, resource, actions };
        // The manifest's entry: the asked resource itself, or a pattern around it.
        let around: Vec<&str> = std::iter::once(resource)
            .chain(
                ["localhost://storage/notes/*", "localhost://storage/*", "localhost://echo/*"]
                    .into_iter()
                    .filter(|c| *c != resource && resource_within(c, resource).unwrap_or(false)),
            )
            .collect();
        let covering = *covering.get(&around);
        let ttl = Duration::from_secs(asked_ttl);
        let (answer, explanation) = policy.answer(&asked, covering, ttl);

        // Which rule decides `r` when each is the only one.
        let first = |r: &Request<'_>| alone.iter().position(|p| p.decide(r).rule.is_some());
        let Some(i) = first(&asked) else {
            prop_assert_eq!(&explanation, "deny (no rule matches: denied by default)");
            prop_assert_eq!(answer, Answer::Deny(format!("policy: {explanation}")));
            return Ok(());
        };
        let on_its_own = alone[i].decide(&asked);
        let named: Option<usize> = explanation
            .split_once("(rule at line ")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok());
        prop_assert_eq!(named, Some(lines[i]), "{}\n{}", explanation, text);
        prop_assert_eq!(
            &explanation,
            &on_its_own.explain().replacen("rule at line 2", &format!("rule at line {}", lines[i]), 1)
        );
        // Every resource a grant would name is decided by the rule that decided the request.
        let decided_whole = |granted: &str| -> Result<(), TestCaseError> {
            for x in UNIVERSE.iter().filter(|x| resource_within(granted, x).unwrap_or(false)) {
                let by = first(&Request { resource: x, ..asked });
                prop_assert_eq!(by, Some(i), "`{}` within `{}`\n{}", x, granted, text);
            }
            Ok(())
        };
        match (on_its_own.verdict, answer) {
            (Verdict::Allow { ttl: longest }, Answer::Allow { resource: granted, actions: a, ttl: t }) => {
                prop_assert_eq!(a, actions);
                let want = if ttl.is_zero() { longest } else { ttl.min(longest) };
                prop_assert_eq!(t, want.max(Duration::from_secs(1)));
                prop_assert!(granted == resource || granted == covering, "{}", granted);
                decided_whole(&granted)?;
            }
            (Verdict::Deny, Answer::Deny(why)) => {
                prop_assert_eq!(why, format!("policy: {explanation}"));
            }
            (Verdict::Prompt, Answer::Prompt) => decided_whole(resource)?,
            (v, a) => prop_assert!(false, "the rule alone says {}, the policy answers {:?}", v, a),
        }
    }
}

#[test]
fn a_rule_against_an_action_holds_for_a_request_that_includes_it() {
    let p = Policy::parse(
        "format = 1\n\
         [[rule]]\nresource = \"localhost://storage/notes/secret/*\"\nactions = [\"write\"]\ndecision = \"deny\"\n\
         [[rule]]\nresource = \"localhost://storage/notes/secret/*\"\nactions = [\"delete\"]\ndecision = \"prompt\"\n\
         [[rule]]\nresource = \"localhost://storage/notes/*\"\ndecision = \"allow\"\nttl = \"10m\"\n",
    )
    .unwrap();
    let ask = |actions: &str| {
        p.decide(&Request {
            name: "notes",
            cid: "bafy",
            publisher: "dev",
            standing: Standing::Dev,
            resource: "localhost://storage/notes/secret/x",
            actions: ActionSet::parse_list(actions).unwrap(),
        })
        .verdict
    };
    assert_eq!(ask("read,write"), Verdict::Deny);
    assert_eq!(ask("read,delete"), Verdict::Prompt);
    assert!(matches!(ask("read"), Verdict::Allow { .. }));
}
