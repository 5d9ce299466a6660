//! `shell`: the node's policy, as a capsule. The supervisor is mechanism: it mints, checks,
//! revokes and audits tokens, and holds every answer within its ceilings. This capsule is policy:
//! it reads the node's policy file (`schema::policy`), which the supervisor hands it whole, and
//! answers each request the supervisor asks it to decide with allow, deny or prompt. It holds no
//! key, sees no token, and can be swapped for another shell without touching the trusted base.

use std::io::Write;
use std::process::ExitCode;

use elastos_schema::policy::{self, Answer, Policy, Rule};
use elastos_sdk::{Capsule, PolicyAnswer, PolicyRequest, ShellEvent};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shell: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut capsule = Capsule::connect().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "shell: deciding for {}", capsule.name());
    let _ = out.flush();
    drop(out);
    let mut policy: Option<Policy> = None;
    loop {
        match capsule.next_shell_event() {
            Ok(Some(ShellEvent::Load(text))) => match Policy::parse(&text) {
                Ok(p) => {
                    println!("shell: policy loaded, {} rule(s)", p.rules.len());
                    let ids: Vec<String> = p.rules.iter().map(rule_id).collect();
                    policy = Some(p);
                    capsule.policy_taken(&ids).map_err(|e| e.to_string())?;
                }
                // The policy in force stays; the supervisor reports where the new one is wrong.
                Err(e) => capsule
                    .policy_loaded(Err((e.line as u32, e.column as u32, &e.message)))
                    .map_err(|e| e.to_string())?,
            },
            Ok(Some(ShellEvent::Decide(req))) => {
                let (answer, explanation, rule) = decide(policy.as_ref(), &req);
                capsule
                    .answer_policy_by_rule(&req.id, &answer, &explanation, &rule)
                    .map_err(|e| e.to_string())?;
            }
            // The supervisor closed the socket: it is stopping this capsule.
            Ok(None) => return Ok(()),
            Err(e) if capsule.is_connected() => eprintln!("shell: {e}"),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A rule's id, as answers and `policy_taken` name it: a digest of what the rule says, not of
/// where it stands, so moving a rule keeps its tokens and changing or removing it revokes them.
fn rule_id(rule: &Rule) -> String {
    use sha2::Digest;
    let what = format!(
        "{:?}",
        Rule {
            line: 0,
            reason: None,
            ..rule.clone()
        }
    );
    sha2::Sha256::digest(what.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The answer to one request under `policy` (none loaded yet: deny), which rule decided and
/// why, and that rule's id (empty for the implicit deny). What a policy answers is
/// `schema::policy`'s, so the supervisor's tests decide the same way.
fn decide(policy: Option<&Policy>, req: &PolicyRequest) -> (PolicyAnswer, String, String) {
    let Some(policy) = policy else {
        let why = "the shell has no policy loaded".to_string();
        return (PolicyAnswer::Deny(why.clone()), why, String::new());
    };
    let asked = policy::Request {
        name: &req.name,
        cid: &req.cid,
        publisher: &req.publisher,
        standing: req.standing,
        resource: &req.resource,
        actions: req.actions.iter().copied().collect(),
    };
    let (answer, explanation) = policy.answer(&asked, &req.covering, req.ttl);
    let rule = policy.decide(&asked).rule.map(rule_id).unwrap_or_default();
    let answer = match answer {
        Answer::Allow {
            resource,
            actions,
            ttl,
        } => PolicyAnswer::Allow {
            resource,
            actions: actions.iter().collect(),
            ttl,
        },
        Answer::Deny(why) => PolicyAnswer::Deny(why),
        Answer::Prompt => PolicyAnswer::Prompt,
    };
    (answer, explanation, rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use elastos_schema::policy::Standing;
    use elastos_schema::Action;
    use std::time::Duration;

    fn req(standing: Standing, resource: &str, covering: &str) -> PolicyRequest {
        PolicyRequest {
            id: [7; 16],
            name: "notes".into(),
            cid: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
            publisher: "dev".into(),
            standing,
            resource: resource.into(),
            actions: vec![Action::Read],
            ttl: Duration::ZERO,
            covering: covering.into(),
            covering_actions: vec![Action::Read, Action::Write],
            reason: "keeps notes".into(),
            dry_run: false,
        }
    }

    #[test]
    fn the_manifest_is_valid() {
        let m = elastos_schema::manifest::Manifest::parse(include_str!("../capsule.toml")).unwrap();
        assert_eq!(m.name, "shell");
        // The shell may not hold the network, and asks for nothing.
        assert!(m.requests.is_empty() && m.provides.is_empty());
    }

    #[test]
    fn decisions_follow_the_shipped_policy() {
        let p = Policy::parse(include_str!("../../../policies/default.toml")).unwrap();
        let ns = "localhost://echo/*";
        // First party: allowed, for the manifest's whole namespace, an hour at most.
        assert_eq!(
            decide(Some(&p), &req(Standing::ThisNode, "localhost://echo/a", ns)).0,
            PolicyAnswer::Allow {
                resource: ns.into(),
                actions: vec![Action::Read],
                ttl: Duration::from_secs(3600),
            }
        );
        // A shorter ask is kept short.
        let mut short = req(Standing::ThisNode, "localhost://echo/a", ns);
        short.ttl = Duration::from_secs(60);
        assert!(
            matches!(decide(Some(&p), &short).0, PolicyAnswer::Allow { ttl, .. } if ttl == Duration::from_secs(60))
        );
        assert_eq!(
            decide(Some(&p), &req(Standing::Dev, "localhost://echo/a", ns)).0,
            PolicyAnswer::Prompt
        );
        let (PolicyAnswer::Deny(why), explained, _) =
            decide(Some(&p), &req(Standing::Unknown, "localhost://echo/a", ns))
        else {
            panic!("an unknown publisher's request is denied");
        };
        assert!(why.starts_with("policy: deny (rule at line"), "{why}");
        assert_eq!(why, format!("policy: {explained}"));
        // Before any policy is loaded, nothing is granted.
        assert!(matches!(
            decide(None, &req(Standing::ThisNode, "localhost://echo/a", ns)).0,
            PolicyAnswer::Deny(_)
        ));
    }

    #[test]
    fn a_rule_keeps_its_id_where_it_moves_and_changes_it_when_it_changes() {
        let rule = |ttl: &str| {
            format!("[[rule]]\nresource = \"localhost://echo/*\"\ndecision = \"allow\"\nttl = \"{ttl}\"\nreason = \"ours\"\n")
        };
        let p = |text: &str| Policy::parse(&format!("format = 1\n{text}")).unwrap();
        let other = "[[rule]]\nresource = \"host://state\"\ndecision = \"deny\"\n";
        let first = p(&rule("10m"));
        let moved = p(&format!(
            "{other}{}",
            rule("10m").replace("ours", "still ours")
        ));
        let changed = p(&rule("5m"));
        let id = rule_id(&first.rules[0]);
        assert_eq!(id.len(), 16);
        assert_eq!(rule_id(&moved.rules[1]), id);
        assert_ne!(rule_id(&changed.rules[0]), id);
        // Answers name it, and the implicit deny names none.
        let ask = req(Standing::Dev, "localhost://echo/a", "localhost://echo/*");
        assert_eq!(decide(Some(&first), &ask).2, id);
        assert_eq!(decide(Some(&p(other)), &ask).2, "");
    }
}
