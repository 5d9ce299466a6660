//! `test-shell MODE`: a second shell capsule for the end-to-end tests, built here and not in
//! `capsules/`, to show that the node's policy can be swapped without touching the supervisor,
//! and to play a shell that misbehaves. Every mode but `deny-all` misbehaves one way:
//!
//! - `deny-all`: every request denied, with its own reason.
//! - `wider`: allows a namespace the requester's manifest does not declare.
//! - `admin`: allows what was asked plus `admin`.
//! - `twice`: allows what was asked, then sends the same answer again.
//! - `unasked`: answers an id it was never asked, then allows what was asked.

use std::process::ExitCode;
use std::time::Duration;

use elastos_sdk::{Action, Capsule, PolicyAnswer, ShellEvent};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut capsule = match Capsule::connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("test-shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("test-shell: {mode}");
    loop {
        let event = match capsule.next_shell_event() {
            Ok(Some(e)) => e,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("test-shell: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match event {
            ShellEvent::Load(_) => capsule.policy_loaded(Ok(())),
            ShellEvent::Decide(req) => {
                let allow = |resource: &str, actions: Vec<Action>| PolicyAnswer::Allow {
                    resource: resource.to_string(),
                    actions,
                    ttl: Duration::from_secs(600),
                };
                let asked = allow(&req.resource, req.actions.clone());
                match mode.as_str() {
                    "deny-all" => capsule.answer_policy(
                        &req.id,
                        &PolicyAnswer::Deny("the test shell denies everything".into()),
                    ),
                    "wider" => capsule.answer_policy(
                        &req.id,
                        &allow("localhost://storage/*", req.actions.clone()),
                    ),
                    "admin" => {
                        let mut actions = req.actions.clone();
                        actions.push(Action::Admin);
                        capsule.answer_policy(&req.id, &allow(&req.resource, actions))
                    }
                    "twice" => capsule
                        .answer_policy(&req.id, &asked)
                        .and_then(|()| capsule.answer_policy(&req.id, &asked)),
                    "unasked" => capsule
                        .answer_policy(&[0x5a; 16], &asked)
                        .and_then(|()| capsule.answer_policy(&req.id, &asked)),
                    other => capsule.answer_policy(
                        &req.id,
                        &PolicyAnswer::Deny(format!("unknown mode {other}")),
                    ),
                }
            }
        };
        if let Err(e) = result {
            eprintln!("test-shell: {e}");
        }
    }
}
