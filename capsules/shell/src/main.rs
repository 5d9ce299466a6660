//! `shell`: the node's policy, as a capsule. The supervisor is mechanism: it mints, checks,
//! revokes and audits tokens, and holds every answer within its ceilings. This capsule is policy:
//! it reads the node's policy file (`schema::policy`), which the supervisor hands it whole, and
//! answers each request the supervisor asks it to decide with allow, deny or prompt. It holds no
//! key, sees no token, and can be swapped for another shell without touching the trusted base.

use std::io::Write;
use std::process::ExitCode;

use elastos_schema::policy::{self, Answer, Policy};
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
                    policy = Some(p);
                    capsule.policy_loaded(Ok(())).map_err(|e| e.to_string())?;
                }
                // The policy in force stays; the supervisor reports where the new one is wrong.
                Err(e) => capsule
                    .policy_loaded(Err((e.line as u32, e.column as u32, &e.message)))
                    .map_err(|e| e.to_string())?,
            },
            Ok(Some(ShellEvent::Decide(req))) => {
                let (answer, explanation) = decide(policy.as_ref(), &req);
                capsule
                    .answer_policy_explained(&req.id, &answer, &explanation)
                    .map_err(|e| e.to_string())?;
            }
            // The supervisor closed the socket: it is stopping this capsule.
            Ok(None) => return Ok(()),
            Err(e) if capsule.is_connected() => eprintln!("shell: {e}"),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The answer to one request under `policy` (none loaded yet: deny), and which rule decided.
/// What a policy answers is `schema::policy`'s, so the supervisor's tests decide the same way.
fn decide(policy: Option<&Policy>, req: &PolicyRequest) -> (PolicyAnswer, String) {
    let Some(policy) = policy else {
        let why = "the shell has no policy loaded".to_string();
        return (PolicyAnswer::Deny(why.clone()), why);
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
    (answer, explanation)
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
        let (PolicyAnswer::Deny(why), explained) =
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
}
