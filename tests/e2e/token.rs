//! Capability tokens through the command line: issue, inspect, the dry-run check of all 12
//! checks, delegation, revocation and trusted issuers.

use elastos_e2e::{Node, Run, NOTES_READ};

const RES: &str = "localhost://storage/notes/*";

#[track_caller]
fn assert_denied(run: &Run, check: &str) {
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.starts_with(&format!("denied: {check}: ")),
        "expected a `{check}` denial, got {run:#?}"
    );
}

#[track_caller]
fn assert_allowed(run: &Run) {
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.stdout.trim(), "allowed");
}

fn notes_token(node: &Node, extra: &[&str]) -> String {
    let mut args = vec![
        "--capsule",
        "notes",
        "--resource",
        RES,
        "--action",
        "read,write",
        "--ttl",
        "1h",
    ];
    args.extend_from_slice(extra);
    node.issue(&args)
}

#[test]
fn an_issued_token_allows_exactly_what_it_names() {
    let node = Node::new();
    let t = notes_token(&node, &[]);
    assert_allowed(&node.check(&t, "notes", "localhost://storage/notes/today", "write"));
    assert_allowed(&node.check(&t, "notes", "localhost://storage/notes/a/b", "read"));
    assert_denied(
        &node.check(&t, "mail", "localhost://storage/notes/a", "read"),
        "subject",
    );
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notes/a", "delete"),
        "action",
    );
    // `P/*` never matches P itself, nor a sibling, nor a traversal out of it.
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notes", "read"),
        "resource",
    );
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notesx/a", "read"),
        "resource",
    );
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notes/../mail", "read"),
        "resource",
    );
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notes/a%2f", "read"),
        "resource",
    );
    assert_denied(
        &node.check(&t, "notes", "LOCALHOST://storage/notes/a", "read"),
        "resource",
    );
    let secret = node.run(&[
        "token",
        "check",
        &t,
        "--as",
        "notes",
        "--resource",
        "localhost://storage/notes/a",
        "--action",
        "read",
        "--classification",
        "secret",
    ]);
    assert_denied(&secret, "classification");
}

#[test]
fn a_token_bound_to_a_cid_is_only_for_that_package() {
    let node = Node::new();
    let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let t = node.issue(&[
        "--capsule",
        &format!("notes@{cid}"),
        "--resource",
        RES,
        "--action",
        "read",
        "--ttl",
        "1h",
    ]);
    let res = "localhost://storage/notes/a";
    assert_allowed(&node.check(&t, &format!("notes@{cid}"), res, "read"));
    assert_denied(&node.check(&t, "notes", res, "read"), "subject");
    let other = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";
    assert_denied(
        &node.check(&t, &format!("notes@{other}"), res, "read"),
        "subject",
    );
}

#[test]
fn time_bounds_are_enforced() {
    let node = Node::new();
    let later = notes_token(&node, &["--not-before", "2999-01-01T00:00:00Z"]);
    let read = |token: &str, at: Option<&str>| {
        let mut args = vec![
            "token",
            "check",
            token,
            "--as",
            "notes",
            "--resource",
            "localhost://storage/notes/a",
            "--action",
            "read",
        ];
        if let Some(at) = at {
            args.extend_from_slice(&["--at", at]);
        }
        node.run(&args)
    };
    // Now: not yet.
    assert_denied(&read(&later, None), "not_before");
    // Its hour, checked at given times (`--at` is the clock): the bounds are exact, with the
    // 30 s grace for an issuer's clock ahead of ours on `not_before` and none on expiry.
    assert_denied(&read(&later, Some("2998-12-31T23:59:29Z")), "not_before");
    assert_allowed(&read(&later, Some("2998-12-31T23:59:30Z")));
    assert_allowed(&read(&later, Some("2999-01-01T00:59:59Z")));
    assert_denied(&read(&later, Some("2999-01-01T01:00:00Z")), "expired");
    // A token whose second of validity ended long ago is expired now, without waiting for it.
    let past = node.issue(&[
        "--capsule",
        "notes",
        "--resource",
        RES,
        "--action",
        "read",
        "--ttl",
        "1s",
        "--not-before",
        "2001-01-01T00:00:00Z",
    ]);
    assert_denied(&read(&past, None), "expired");
    assert_allowed(&read(&past, Some("2001-01-01T00:00:00Z")));
    // A time that is not one is a usage error.
    assert_eq!(read(&later, Some("tomorrow")).code, 2);
}

#[test]
fn a_tampered_token_fails_its_signature() {
    let node = Node::new();
    let t = notes_token(&node, &[]);
    // Change one character in the middle of the base64url text.
    let mut chars: Vec<char> = t.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    let run = node.check(&forged, "notes", "localhost://storage/notes/a", "read");
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.starts_with("denied: signature: ")
            || run.stdout.starts_with("denied: version: "),
        "{run:#?}"
    );
    assert_denied(
        &node.check(
            "not-a-token",
            "notes",
            "localhost://storage/notes/a",
            "read",
        ),
        "version",
    );
}

#[test]
fn revoking_a_token_denies_it_and_survives_restart() {
    let node = Node::new();
    let t = notes_token(&node, &[]);
    let keep = notes_token(&node, &[]);
    let id = node.run(&["token", "inspect", &t, "--json"]).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    node.run(&["revoke", &id]).ok();
    // Each command is a new process: the revocation was persisted.
    assert_denied(
        &node.check(&t, "notes", "localhost://storage/notes/a", "read"),
        "revoked",
    );
    assert_allowed(&node.check(&keep, "notes", "localhost://storage/notes/a", "read"));
    node.run(&["revoke", "zz"]).code(1);
}

#[test]
fn revoke_all_raises_the_epoch() {
    let node = Node::new();
    let before = notes_token(&node, &[]);
    let out = node.run(&["revoke", "--all"]);
    assert!(out.ok().contains("epoch"), "{out:#?}");
    assert_denied(
        &node.check(&before, "notes", "localhost://storage/notes/a", "read"),
        "epoch",
    );
    let after = notes_token(&node, &[]);
    assert_allowed(&node.check(&after, "notes", "localhost://storage/notes/a", "read"));
    node.run(&["revoke"]).code(2);
}

#[test]
fn delegation_only_narrows_and_dies_with_its_parent() {
    let node = Node::new();
    let parent = notes_token(&node, &["--delegatable"]);
    let child = node
        .run(&[
            "token",
            "delegate",
            &parent,
            "--action",
            "read",
            "--resource",
            "localhost://storage/notes/shared/*",
            "--ttl",
            "10m",
        ])
        .ok()
        .trim()
        .to_string();
    let shared = "localhost://storage/notes/shared/a";
    assert_allowed(&node.check(&child, "notes", shared, "read"));
    assert_denied(&node.check(&child, "notes", shared, "write"), "action");
    assert_denied(
        &node.check(&child, "notes", "localhost://storage/notes/a", "read"),
        "resource",
    );

    let v = node.run(&["token", "inspect", &child, "--json"]).json();
    let parent_id = node.run(&["token", "inspect", &parent, "--json"]).json()["id"].clone();
    assert_eq!(v["parent"], parent_id);

    // Widening anything is refused.
    for widen in [
        vec!["--action", "read,delete"],
        vec!["--resource", "localhost://storage/*"],
        vec!["--ttl", "1000h"],
        vec!["--classification", "secret"],
    ] {
        let mut args = vec!["token", "delegate", &parent];
        args.extend(widen.iter().copied());
        let run = node.run(&args);
        assert_eq!(run.code, 1, "widening {widen:?} was accepted: {run:#?}");
    }
    // A non-delegatable token has no children.
    node.run(&["token", "delegate", &child, "--action", "read"])
        .code(1);

    node.run(&["revoke", parent_id.as_str().unwrap()]).ok();
    assert_denied(&node.check(&child, "notes", shared, "read"), "revoked");
}

#[test]
fn issue_delegate_and_revoke_go_through_a_running_supervisor() {
    let node = Node::new();
    assert!(node.run(&["up"]).ok().contains("elastos is up"));
    let parent = notes_token(&node, &["--delegatable"]);
    let child = node
        .run(&["token", "delegate", &parent, "--action", "read"])
        .ok()
        .trim()
        .to_string();
    let shared = "localhost://storage/notes/a";
    assert_allowed(&node.check(&child, "notes", shared, "read"));
    assert_denied(&node.check(&child, "notes", shared, "write"), "action");
    node.run(&["token", "delegate", &parent, "--action", "read,delete"])
        .code(1);
    let parent_id = node.run(&["token", "inspect", &parent, "--json"]).json()["id"].clone();
    node.run(&["revoke", parent_id.as_str().unwrap()]).ok();
    assert_denied(&node.check(&child, "notes", shared, "read"), "revoked");
    // Each went through the supervisor's audit log.
    let audit = node.run(&["audit", "--json"]).ok().to_string();
    for action in ["token.issue", "token.delegate", "token.revoke"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} not audited"
        );
    }
    node.run(&["down"]).ok();
}

#[test]
fn tokens_from_another_node_need_trust() {
    let ours = Node::new();
    ours.did();
    let theirs = Node::new();
    let their_did = theirs.did();
    let t = notes_token(&theirs, &[]);
    let res = "localhost://storage/notes/a";
    assert_denied(&ours.check(&t, "notes", res, "read"), "issuer");
    ours.run(&["trust", "add", &their_did]).ok();
    assert_allowed(&ours.check(&t, "notes", res, "read"));
    let listed = ours.run(&["trust", "ls", "--json"]).json();
    assert_eq!(
        listed,
        serde_json::json!([{"did": their_did, "kind": "issuer"}])
    );
    ours.run(&["trust", "rm", &their_did]).ok();
    assert_denied(&ours.check(&t, "notes", res, "read"), "issuer");
    ours.run(&["trust", "add", "did:web:example.com"]).code(1);
    // A publisher, of either kind, is not an issuer: its tokens stay refused.
    ours.run(&["trust", "add", &their_did, "--first-party"])
        .ok();
    ours.run(&["trust", "add", &their_did, "--publisher"]).ok();
    assert_denied(&ours.check(&t, "notes", res, "read"), "issuer");
    assert_eq!(
        ours.run(&["trust", "ls", "--json"]).json(),
        serde_json::json!([{"did": their_did, "kind": "publisher"}])
    );
    ours.run(&["trust", "add", &their_did, "--publisher", "--first-party"])
        .code(2);
}

#[test]
fn inspect_shows_every_field_and_exactly_what_was_signed() {
    let node = Node::new();
    let did = node.did();
    let t = notes_token(
        &node,
        &["--max-uses", "5", "--classification", "confidential"],
    );
    let v = node.run(&["token", "inspect", &t, "--json"]).json();
    for key in [
        "version",
        "id",
        "issuer",
        "subject",
        "resource",
        "actions",
        "not_before",
        "expiry",
        "epoch",
        "max_uses",
        "classification",
        "delegatable",
        "parent",
        "signed_bytes_hex",
        "signature_hex",
    ] {
        assert!(v.get(key).is_some(), "inspect --json lacks `{key}`: {v:#}");
    }
    assert_eq!(v["issuer"], did.as_str());
    assert_eq!(v["resource"], RES);
    assert_eq!(v["actions"], serde_json::json!(["read", "write"]));
    assert_eq!(v["max_uses"], 5);
    assert_eq!(v["classification"], "confidential");

    // The signature verifies over exactly signed_bytes_hex, which starts with the domain prefix.
    let signed = hex::decode(v["signed_bytes_hex"].as_str().unwrap()).unwrap();
    assert!(signed.starts_with(b"elastos/token/v1\0"));
    let sig: [u8; 64] = hex::decode(v["signature_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = elastos::identity::public_from_did(&did).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    key.verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("signature over signed_bytes_hex");

    let text = node.run(&["token", "inspect", &t]);
    assert!(text.ok().contains(&did));
    node.run(&["token", "inspect", "garbage"]).code(1);
}

#[test]
fn an_older_copy_of_the_authority_state_put_back_is_refused_and_revives_nothing() {
    let node = Node::new();
    let tok = node.issue(NOTES_READ);
    let state = node.home().join("state/authority.json");
    node.run(&["trust", "add", &Node::new().did()]).ok();
    let before_revoke = std::fs::read(&state).unwrap();
    node.run(&["revoke", "--all"]).ok();
    let check = || node.check(&tok, "notes", "localhost://storage/notes/a", "read");
    check().code(1);
    // Up and down: the clean head records the state.
    let up = node.run(&["up"]);
    assert_eq!(up.code, 0, "{up:#?}");
    node.run(&["down"]).ok();

    // Rolled back by hand to the copy from before the revocation.
    std::fs::write(&state, &before_revoke).unwrap();
    let up = node.run(&["up"]);
    assert_ne!(up.code, 0, "{up:#?}");
    assert!(up.stderr.contains("older or different copy"), "{up:#?}");
    let c = check();
    assert_ne!(c.code, 0);
    assert!(!c.stdout.contains("allowed"), "{c:#?}");
    let issue = node.run(&["revoke", "--all"]);
    assert_ne!(issue.code, 0, "{issue:#?}");

    // Edited by hand: refused for its MAC.
    let text = String::from_utf8(before_revoke).unwrap();
    std::fs::write(&state, text.replace("\"epoch\": 0", "\"epoch\": 9")).unwrap();
    let up = node.run(&["up"]);
    assert_ne!(up.code, 0, "{up:#?}");
    assert!(up.stderr.contains("MAC"), "{up:#?}");
}
