//! One decision with the shell deciding: the shell's answer held within the ceilings, a prompt
//! put to the person. Used for a capsule's `requestToken` (`conn.rs`) and, before a capsule
//! starts, for running a package of an unknown publisher and for each `host://` grant its
//! manifest asks for (`decide_start`).

use std::sync::Arc;

use elastos::audit::Decision;
use elastos::ceilings::{outcome, Outcome};
use elastos::config::PromptFallback;
use elastos::policy::Grant;
use elastos_schema::manifest::{
    Request as ManifestRequest, HOST_LIBS, NET_HOST, NET_LOOPBACK, STATE,
};
use elastos_schema::policy::Standing;
use elastos_schema::{Action, Classification};

use super::{prompts, shell, Shared};

/// Where an attached `elastos run` hears about its capsule.
pub type Attached = tokio::sync::mpsc::UnboundedSender<elastos::control::Event>;

/// How long a grant lasts beyond its token's lifetime.
#[derive(Clone, PartialEq, Eq)]
pub enum Lasts {
    /// Its TTL.
    Ttl,
    /// Its TTL, or until the capsule instance that asked ends (allowed once at a prompt).
    Instance,
    /// Its TTL, or until the standing grant of this id is revoked.
    Grant(String),
    /// Its TTL, or until the shell takes a policy without the rule of this id.
    Rule(String),
}

/// A capsule's token request: its connection and the request's id, so it can be told when the
/// request waits for the person.
pub type Requester<'a> = (&'a Arc<super::conn::Conn>, u64);

/// Asks the shell, and the person if it says so, about `ask`, for `owner`'s prompts, recorded
/// under `actor`.
pub async fn decide(
    shared: &Arc<Shared>,
    owner: usize,
    actor: &str,
    ask: &shell::Ask,
    attached: Option<&Attached>,
    requester: Option<Requester<'_>>,
) -> (Grant, Lasts) {
    let deny = |why: String| (Grant::Deny(why), Lasts::Ttl);
    let (answer, rule) = match shared.shell.ask(ask, shared.config.policy.shell_wait).await {
        Ok(a) => (a.answer, a.rule),
        Err(unavailable) => return deny(unavailable),
    };
    match outcome(ask, &answer) {
        Outcome::Allow {
            resource,
            actions,
            ttl,
        } => (
            Grant::Allow {
                resource,
                actions,
                ttl,
                classification: Classification::Internal,
            },
            if rule.is_empty() {
                Lasts::Ttl
            } else {
                Lasts::Rule(rule)
            },
        ),
        Outcome::Deny(why) => deny(why),
        Outcome::Prompt => match shared.config.policy.prompt_fallback {
            PromptFallback::Deny => deny(
                "a person must decide this (the policy says prompt), and this node answers prompts with deny ([policy] prompt_fallback)".into(),
            ),
            PromptFallback::Prompt => {
                ask_person(shared, owner, actor, ask, attached, requester).await
            }
        },
        Outcome::Refused(why) => {
            let why = format!("the shell's answer was refused: {why}");
            shared
                .audit_sync("supervisor", "shell.fault", &ask.resource, Decision::Denied, &why, None)
                .await;
            deny(why)
        }
    }
}

/// The shell said prompt: the person decides. The prompt is drawn from the supervisor's own
/// record of the request; it is audited when it opens and when it is answered or runs out.
async fn ask_person(
    shared: &Arc<Shared>,
    owner: usize,
    actor: &str,
    ask: &shell::Ask,
    attached: Option<&Attached>,
    requester: Option<Requester<'_>>,
) -> (Grant, Lasts) {
    let now = super::conn::now_unix();
    // Anyone can sign as `dev`: a standing answer for a development package binds its CID.
    let bind = if ask.standing == Standing::Dev {
        ask.cid.clone()
    } else {
        ask.publisher.clone()
    };
    let standing = shared
        .authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .grant_find(&ask.name, &bind, &ask.resource, ask.actions);
    if let Some((id, g)) = standing {
        return if g.allow {
            (allowed(ask), Lasts::Grant(id))
        } else {
            (
                Grant::Deny(format!(
                    "denied always at an earlier prompt (grant {id}); `elastos revoke {id}` to be asked again"
                )),
                Lasts::Ttl,
            )
        };
    }
    let publisher = match ask.standing {
        Standing::ThisNode => "this node".to_string(),
        Standing::Dev => "dev, unverified".to_string(),
        _ => ask.publisher.clone(),
    };
    let prompt = prompts::Prompt {
        id: String::new(),
        capsule: ask.name.clone(),
        cid: ask.cid.clone(),
        publisher,
        resource: ask.resource.clone(),
        actions: ask.actions,
        reason: ask.covering.reason.clone(),
        requested_at: now,
        expires_at: now + prompts::PROMPT_TIMEOUT.as_secs() as i64,
        // What `decide_start` asks (a `host://` grant, running a package) lasts the instance.
        duration: match ask.resource.split_once("://") {
            Some(("host", _)) => "while it runs".into(),
            Some(("elastos", _)) if ask.actions == std::iter::once(Action::Execute).collect() => {
                "while it runs".into()
            }
            _ => match allowed(ask) {
                Grant::Allow { ttl, .. } => format!(
                    "{} (renewed while the grant stands)",
                    humantime::format_duration(ttl)
                ),
                Grant::Deny(_) => String::new(),
            },
        },
        bind,
    };
    let opened = shared
        .audit_sync(
            actor,
            "prompt.open",
            &ask.resource,
            Decision::Info,
            &format!(
                "{}: waiting for the person (`elastos prompts`)",
                ask.actions
            ),
            None,
        )
        .await;
    if !opened {
        return (Grant::Deny("audit unavailable".into()), Lasts::Ttl);
    }
    let asked = match shared.prompts.open(owner, prompt) {
        Ok((id, rx)) => {
            // An attached `elastos run` hears it from the supervisor, never from the capsule.
            if let Some(tx) = attached {
                let _ = tx.send(elastos::control::Event::Prompt {
                    id: id.clone(),
                    capsule: ask.name.clone(),
                    actions: ask.actions.to_string(),
                    resource: ask.resource.clone(),
                });
            }
            // The capsule hears only that it waits: not the prompt's id, not the answer's way.
            if let Some((conn, request)) = requester {
                super::conn::send_pending(conn, request).await;
            }
            shared.prompts.wait(&id, rx).await
        }
        Err(e) => Err(e),
    };
    match asked {
        Ok(prompts::Answer::AllowOnce) => (allowed(ask), Lasts::Instance),
        Ok(prompts::Answer::AllowGrant(id)) => (allowed(ask), Lasts::Grant(id)),
        Ok(prompts::Answer::Deny) => (
            Grant::Deny("the person denied it at the prompt".into()),
            Lasts::Ttl,
        ),
        Err(why) => {
            shared
                .audit_sync(
                    actor,
                    "prompt.expired",
                    &ask.resource,
                    Decision::Denied,
                    &why,
                    None,
                )
                .await;
            (Grant::Deny(why), Lasts::Ttl)
        }
    }
}

/// What the person allows: what was asked, for at most the node's longest grant.
fn allowed(ask: &shell::Ask) -> Grant {
    Grant::Allow {
        resource: ask.resource.clone(),
        actions: ask.actions,
        ttl: if ask.ttl.is_zero() {
            shell::MAX_TTL
        } else {
            ask.ttl.min(shell::MAX_TTL)
        },
        classification: Classification::Internal,
    }
}

/// Before a capsule starts, with the shell deciding: running a package of an unknown publisher
/// (`execute` on `elastos://<CID>`), then each `host://` grant its manifest asks for. Every
/// answer is recorded; `Err` is why the capsule may not start. (Nothing is granted by asking:
/// each grant is its manifest's, or none.)
pub async fn decide_start(shared: &Arc<Shared>, peer: &super::conn::Peer) -> Result<(), String> {
    let (name, cid, publisher, standing) = (&peer.name, &peer.cid, &peer.publisher, peer.standing);
    let (manifest, actor, attached) = (&peer.manifest, peer.actor(), peer.attached.as_ref());
    let owner = prompts::start_owner();
    let mut asks: Vec<ManifestRequest> = Vec::new();
    if standing == Standing::Unknown {
        asks.push(ManifestRequest {
            resource: format!("elastos://{cid}"),
            actions: std::iter::once(Action::Execute).collect(),
            reason: format!("run `{name}`, a package of a publisher this node does not know"),
        });
    }
    asks.extend(
        manifest
            .requests
            .iter()
            .filter(|r| [HOST_LIBS, NET_HOST, NET_LOOPBACK, STATE].contains(&r.resource.as_str()))
            .cloned(),
    );
    for covering in asks {
        let ask = shell::Ask {
            name: name.clone(),
            cid: cid.clone(),
            publisher: publisher.clone(),
            standing,
            resource: covering.resource.clone(),
            actions: covering.actions,
            ttl: shell::MAX_TTL,
            covering: covering.clone(),
            dry_run: false,
        };
        let (grant, _) = decide(shared, owner, actor, &ask, attached, None).await;
        let run = covering.resource.starts_with("elastos://");
        match grant {
            // For a start the grant is all or nothing: the manifest's entry, whole.
            Grant::Allow {
                resource, actions, ..
            } if resource == covering.resource && covering.actions.is_subset_of(actions) => {
                // A grant takes effect only once its record is durable.
                let recorded = shared
                    .audit_sync(
                        actor,
                        if run { "package.run" } else { "host.grant" },
                        &covering.resource,
                        Decision::Allowed,
                        &format!("policy=shell: {}", covering.actions),
                        None,
                    )
                    .await;
                if !recorded {
                    return Err(format!(
                        "not started: {} {} was allowed, but the audit log cannot record it (is the disk holding $ELASTOS_HOME full? `elastos status` says)",
                        covering.actions, covering.resource
                    ));
                }
            }
            other => {
                let why = match other {
                    Grant::Deny(why) => why,
                    Grant::Allow { resource, .. } => format!(
                        "the policy allowed only part of it (`{resource}`), and a start takes the manifest's entry whole"
                    ),
                };
                let why = format!(
                    "policy=shell: {} {}: {why}",
                    covering.actions, covering.resource
                );
                shared
                    .audit_sync(
                        actor,
                        if run { "package.run" } else { "host.request" },
                        &covering.resource,
                        Decision::Denied,
                        &why,
                        None,
                    )
                    .await;
                return Err(format!("not started: {why}"));
            }
        }
    }
    Ok(())
}
