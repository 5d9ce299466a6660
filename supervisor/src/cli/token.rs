//! `elastos token issue|delegate|inspect|check`, `elastos revoke`, `elastos trust`.
//!
//! Commands that change state take the node's state lock; while a supervisor holds it (from the
//! next issue on) they will go through the supervisor instead. Read-only commands (`inspect`,
//! `check`) never write to `$ELASTOS_HOME`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use elastos::authority::{Authority, CallRequest, IssueRequest, Narrowing};
use elastos::home::{Home, HomeError, StateLock};
use elastos::identity::NodeKey;
use elastos::token::{self, TokenId};
use elastos_schema::{Action, ActionSet, Classification};

use super::audit::record_operator;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token (an operator's tool; capsules ask the shell for theirs).
    Issue(IssueArgs),
    /// Mint a narrower child of a delegatable token.
    Delegate(DelegateArgs),
    /// Show every field of a token (reads nothing from $ELASTOS_HOME).
    Inspect {
        token: String,
        #[arg(long)]
        json: bool,
    },
    /// Dry run of the 12 checks: prints `allowed`, or `denied: <check>: <reason>` and exits 1.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct IssueArgs {
    /// The subject: a capsule name, optionally bound to its package CID (NAME@CID).
    #[arg(long, value_name = "NAME[@CID]")]
    capsule: String,
    /// A URI, or a pattern ending in /* (matches anything below it, never itself).
    #[arg(long, value_name = "URI")]
    resource: String,
    /// Comma-separated: read, write, execute, message, delete, admin.
    #[arg(long, value_name = "A[,A…]")]
    action: String,
    /// How long the token lives: 30s, 10m, 1h, 7d…
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Valid at most N times (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    max_uses: u64,
    /// The highest classification the token may reach.
    #[arg(long, default_value = "internal")]
    classification: Classification,
    /// Allow narrower children (`elastos token delegate`).
    #[arg(long)]
    delegatable: bool,
    /// Not valid before this time (RFC 3339), default now.
    #[arg(long, value_parser = parse_time)]
    not_before: Option<i64>,
    /// Print the token with its id and expiry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DelegateArgs {
    /// The parent token.
    parent: String,
    /// A narrower subject for the child (default: the parent's).
    #[arg(long, value_name = "NAME[@CID]")]
    capsule: Option<String>,
    /// A resource inside the parent's (default: the parent's).
    #[arg(long)]
    resource: Option<String>,
    /// A subset of the parent's actions (default: the parent's).
    #[arg(long)]
    action: Option<String>,
    /// Lifetime of the child, capped by the parent's expiry.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// At most this many uses (at most the parent's, when it has a limit).
    #[arg(long)]
    max_uses: Option<u64>,
    /// A ceiling at most the parent's.
    #[arg(long)]
    classification: Option<Classification>,
    /// Let the child be delegated further.
    #[arg(long)]
    delegatable: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    token: String,
    /// The caller: capsule name, optionally with its package CID.
    #[arg(long = "as", value_name = "NAME[@CID]")]
    caller: String,
    #[arg(long)]
    resource: String,
    #[arg(long)]
    action: Action,
    /// The resource's classification (normally from its provider's manifest).
    #[arg(long, default_value = "internal")]
    classification: Classification,
    /// Check as of this time (RFC 3339) instead of now: whether the token will still hold then,
    /// or already held. Revocations are those known now.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    at: Option<i64>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["token_id", "all"])))]
pub struct RevokeArgs {
    /// The id of the token to revoke (32 hex characters; `token inspect` shows it), or of a
    /// standing grant (`g-…`; `elastos grants` lists them), which revokes its tokens too.
    token_id: Option<String>,
    /// Raise the epoch: every token issued before becomes invalid at once.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum TrustCommand {
    /// Accept tokens issued by this DID; with --publisher or --first-party, run its packages
    /// instead (accepting its tokens is a separate `trust add`).
    Add {
        did: String,
        /// A known publisher: its packages may run, under the node's policy; nothing more.
        #[arg(long, conflicts_with = "first_party")]
        publisher: bool,
        /// A first-party publisher: its packages are treated as this node's own (they may
        /// provide services, and the policy's `first-party` rules apply).
        #[arg(long)]
        first_party: bool,
    },
    /// Stop trusting this DID, as an issuer and as a publisher.
    Rm { did: String },
    /// List the DIDs trusted besides this node, each with its kind (issuer, publisher,
    /// first-party).
    Ls {
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e} (expected RFC 3339)"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| "times before 1970 are not supported".into())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Splits `NAME[@CID]`.
fn subject(s: &str) -> anyhow::Result<(String, Option<String>)> {
    let (name, cid) = match s.split_once('@') {
        Some((n, c)) => (n, Some(c)),
        None => (s, None),
    };
    elastos_schema::manifest::validate_name(name)
        .map_err(|e| anyhow::anyhow!("--capsule {s}: {e}"))?;
    if let Some(c) = cid {
        elastos::cid::parse(c).map_err(|e| anyhow::anyhow!("--capsule {s}: {e}"))?;
    }
    Ok((name.to_string(), cid.map(str::to_string)))
}

/// Takes the state lock for a command that writes state directly.
/// While a supervisor runs it holds the state lock, so state-changing commands go through it.
/// `None` when none runs (the command then takes the lock itself).
fn via_supervisor(
    home: &Home,
    req: &elastos::control::Request,
) -> anyhow::Result<Option<serde_json::Value>> {
    use elastos::control::{Client, ControlError};
    match Client::connect(home) {
        Ok(mut c) => {
            let r = c.request(req)?;
            if r.ok {
                Ok(Some(r.data))
            } else {
                Err(super::Failure {
                    code: r.code.unwrap_or(super::EXIT_FAILED),
                    message: r.error.unwrap_or_else(|| "failed".into()),
                }
                .into())
            }
        }
        Err(ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn state_lock(home: &Home) -> anyhow::Result<StateLock> {
    match home.lock_with_patience(Duration::from_secs(5)) {
        Ok(lock) => Ok(lock),
        Err(HomeError::Locked { path }) => Err(anyhow::anyhow!(
            "{} is held by another elastos process (a running supervisor or another command); try again when it has finished",
            path.display()
        )),
        Err(e) => Err(e.into()),
    }
}

fn writable_authority(home: &Home) -> anyhow::Result<(StateLock, Arc<NodeKey>, Authority)> {
    let lock = state_lock(home)?;
    let key = Arc::new(NodeKey::load_or_create(home).context("loading the node identity")?);
    let authority = checked_authority(home, key.clone())?;
    authority.ensure_state_reserve();
    Ok((lock, key, authority))
}

/// The authority, opened under `key` (its state's MAC checked) and compared with what the audit
/// log's signed head recorded of its state: an older copy put back is refused.
pub fn checked_authority(home: &Home, key: Arc<NodeKey>) -> anyhow::Result<Authority> {
    let authority =
        Authority::open(home, Some(key.clone())).context("opening the token authority")?;
    if let Some(recorded) = elastos::audit::recorded_state(&home.audit_dir(), &key.verifying_key())
        .context("reading the audit log's signed head")?
    {
        authority
            .check_against_log(recorded)
            .context("checking the token authority's state against the audit log")?;
    }
    Ok(authority)
}

/// Prints a token the supervisor issued or delegated.
fn print_remote(data: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    let text = data["token"].as_str().unwrap_or_default();
    let decoded = token::decode(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    print_issued(&decoded.token, text, json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_issued(tok: &token::Token, encoded: &str, json: bool) -> anyhow::Result<()> {
    if json {
        super::print_json(&serde_json::json!({
            "token": encoded,
            "id": tok.id.to_string(),
            "expiry": humantime::format_rfc3339_seconds(token::unix_to_system(tok.expiry)).to_string(),
        }))
    } else {
        println!("{encoded}");
        Ok(())
    }
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Issue(a) => {
            let (name, cid) = subject(&a.capsule)?;
            let actions = ActionSet::parse_list(&a.action)?;
            let home = Home::from_env()?;
            let remote = elastos::control::Request::Issue(elastos::control::IssueParams {
                subject_name: name.clone(),
                subject_cid: cid.clone(),
                resource: a.resource.clone(),
                actions: actions.to_string(),
                ttl_secs: a.ttl.as_secs(),
                max_uses: a.max_uses,
                classification: a.classification.to_string(),
                delegatable: a.delegatable,
                not_before: a.not_before,
            });
            if let Some(data) = via_supervisor(&home, &remote)? {
                return print_remote(&data, a.json);
            }
            let (_lock, key, mut authority) = writable_authority(&home)?;
            let (tok, encoded) = authority.issue(IssueRequest {
                subject_name: name,
                subject_cid: cid,
                resource: a.resource,
                actions,
                not_before: a.not_before,
                ttl: a.ttl,
                max_uses: a.max_uses,
                classification: a.classification,
                delegatable: a.delegatable,
            })?;
            // Signed, but handed out only once its record is durable.
            record_operator(
                &home,
                &key,
                "token.issue",
                &tok.resource,
                &format!(
                    "issued to {} for {} until {}",
                    tok.subject_display(),
                    tok.actions,
                    humantime::format_rfc3339_seconds(token::unix_to_system(tok.expiry))
                ),
                Some(tok.id.to_string()),
            )
            .context("the token was not issued")?;
            print_issued(&tok, &encoded, a.json)?;
        }
        TokenCommand::Delegate(a) => {
            let home = Home::from_env()?;
            let subject = a.capsule.as_deref().map(subject).transpose()?;
            let actions = a.action.as_deref().map(ActionSet::parse_list).transpose()?;
            let remote = elastos::control::Request::Delegate(elastos::control::DelegateParams {
                parent: a.parent.clone(),
                subject_name: subject.as_ref().map(|s| s.0.clone()),
                subject_cid: subject.as_ref().and_then(|s| s.1.clone()),
                resource: a.resource.clone(),
                actions: actions.map(|a| a.to_string()),
                ttl_secs: a.ttl.map(|t| t.as_secs()),
                max_uses: a.max_uses,
                classification: a.classification.map(|c| c.to_string()),
                delegatable: a.delegatable,
            });
            if let Some(data) = via_supervisor(&home, &remote)? {
                return print_remote(&data, a.json);
            }
            let (_lock, key, mut authority) = writable_authority(&home)?;
            let staged = authority.prepare_delegate(
                &a.parent,
                Narrowing {
                    subject,
                    resource: a.resource,
                    actions,
                    ttl: a.ttl,
                    max_uses: a.max_uses,
                    classification: a.classification,
                    delegatable: a.delegatable,
                },
                now(),
            )?;
            let tok = &staged.token;
            // Widening: the record is durable before the child exists.
            record_operator(
                &home,
                &key,
                "token.delegate",
                &tok.resource,
                &format!(
                    "child of {} for {}",
                    tok.parent_display(),
                    tok.subject_display()
                ),
                Some(tok.id.to_string()),
            )
            .context("the token was not delegated")?;
            if let Err(e) = authority.apply_delegation(&staged) {
                let _ = record_undone(&home, &key, "token.delegate", &tok.resource, &e);
                return Err(e.into());
            }
            print_issued(tok, &staged.text, a.json)?;
        }
        TokenCommand::Inspect { token, json } => {
            let decoded = token::decode(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                super::print_json(&decoded.inspect_json())?;
            } else {
                print!("{}", decoded.inspect_text());
            }
        }
        TokenCommand::Check(a) => {
            let (name, cid) = subject(&a.caller)?;
            let home = Home::from_env()?;
            // Read-only: the node key is loaded if present, never created; with it, the state
            // is checked as a writer checks it (an older copy put back is refused).
            let mut authority = match NodeKey::load(&home)?.map(Arc::new) {
                Some(key) => checked_authority(&home, key)?,
                None => Authority::open(&home, None)?,
            };
            let req = CallRequest {
                caller_name: &name,
                caller_cid: cid.as_deref(),
                resource: &a.resource,
                action: a.action,
                classification: a.classification,
            };
            match authority.check(&a.token, &req, a.at.unwrap_or_else(now), false) {
                Ok(_) => println!("allowed"),
                Err(denial) => {
                    println!("denied: {denial}");
                    return Ok(ExitCode::from(super::EXIT_FAILED));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    if let Some(id) = a.token_id.as_deref().filter(|id| id.starts_with("g-")) {
        return revoke_grant(&home, id);
    }
    let remote = match (&a.token_id, a.all) {
        (_, true) => elastos::control::Request::RevokeAll,
        (Some(id), false) => elastos::control::Request::Revoke { id: id.clone() },
        (None, false) => anyhow::bail!("name a token id or --all"),
    };
    if let Some(data) = via_supervisor(&home, &remote)? {
        if let Some(w) = data.get("warning").and_then(|w| w.as_str()) {
            eprintln!("elastos: warning: {w}");
        }
        match data.get("epoch") {
            Some(e) => println!("epoch raised to {e}: every token issued before is revoked"),
            None => println!(
                "revoked {} ({} token(s) including descendants)",
                a.token_id.unwrap_or_default(),
                data["revoked"]
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (_lock, key, mut authority) = writable_authority(&home)?;
    // Narrowing: it takes effect whatever the disk holds, and its record goes into the audit
    // log's reserve.
    if a.all {
        let epoch = authority.revoke_all()?;
        warn_unrecorded(record_operator(
            &home,
            &key,
            "token.revoke-all",
            "*",
            &format!("epoch raised to {epoch}: every earlier token is invalid"),
            None,
        ));
        println!("epoch raised to {epoch}: every token issued before is revoked");
    } else if let Some(id) = a.token_id {
        let id = TokenId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = authority.revoke(&id)?;
        warn_unrecorded(record_operator(
            &home,
            &key,
            "token.revoke",
            "*",
            &format!("revoked with {} descendant(s)", n.saturating_sub(1)),
            Some(id.to_string()),
        ));
        println!("revoked {id} ({n} token(s) including descendants)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A narrowing action took effect; if even the reserve could not take its record, say so.
fn warn_unrecorded(r: anyhow::Result<()>) {
    if let Err(e) = r {
        eprintln!(
            "elastos: warning: it took effect, but its audit record could not be written ({e:#}); free space in $ELASTOS_HOME"
        );
    }
}

/// A widening action whose record was durable but whose state change then failed.
fn record_undone(
    home: &Home,
    key: &NodeKey,
    action: &str,
    resource: &str,
    why: &dyn std::fmt::Display,
) -> anyhow::Result<()> {
    super::audit::record_operator_decision(
        home,
        key,
        action,
        resource,
        &format!("not made after all: {why}"),
        None,
        elastos::audit::Decision::Denied,
    )
}

pub fn trust(cmd: TrustCommand) -> anyhow::Result<ExitCode> {
    use elastos::control::TrustKind;
    let home = Home::from_env()?;
    match cmd {
        TrustCommand::Add {
            did,
            publisher,
            first_party,
        } => {
            let kind = match (publisher, first_party) {
                (true, _) => TrustKind::Publisher,
                (_, true) => TrustKind::FirstParty,
                _ => TrustKind::Issuer,
            };
            let said = format!("trusted {did} as {}", kind.as_str());
            let remote = elastos::control::Request::TrustAdd {
                did: did.clone(),
                kind,
            };
            if via_supervisor(&home, &remote)?.is_some() {
                println!("{said}");
                return Ok(ExitCode::SUCCESS);
            }
            elastos::identity::public_from_did(&did)?;
            let (_lock, key, mut authority) = writable_authority(&home)?;
            record_operator(&home, &key, "trust.add", &did, kind.audit_reason(), None)
                .context("the DID was not trusted")?;
            if let Err(e) = kind.apply(&mut authority, &did) {
                let _ = record_undone(&home, &key, "trust.add", &did, &e);
                return Err(e.into());
            }
            println!("{said}");
        }
        TrustCommand::Rm { did } => {
            let remote = elastos::control::Request::TrustRm { did: did.clone() };
            if via_supervisor(&home, &remote)?.is_some() {
                println!("no longer trusted: {did}");
                return Ok(ExitCode::SUCCESS);
            }
            let (_lock, key, mut authority) = writable_authority(&home)?;
            authority.forget(&did)?;
            warn_unrecorded(record_operator(
                &home,
                &key,
                "trust.rm",
                &did,
                "no longer trusted, as an issuer or a publisher",
                None,
            ));
            println!("no longer trusted: {did}");
        }
        TrustCommand::Ls { json } => {
            let authority = Authority::open(&home, None)?;
            let list = authority.trust_entries();
            if json {
                super::print_json(
                    &list
                        .iter()
                        .map(|(did, kind)| serde_json::json!({"did": did, "kind": kind}))
                        .collect::<Vec<_>>(),
                )?;
            } else if list.is_empty() {
                println!("(nothing trusted besides this node)");
            } else {
                for (did, kind) in list {
                    println!("{kind:<12} {did}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `elastos revoke GRANT_ID`: the standing grant and every token minted under it.
fn revoke_grant(home: &Home, id: &str) -> anyhow::Result<ExitCode> {
    let remote = elastos::control::Request::RevokeGrant { id: id.to_string() };
    if let Some(data) = via_supervisor(home, &remote)? {
        if let Some(w) = data.get("warning").and_then(|w| w.as_str()) {
            eprintln!("elastos: warning: {w}");
        }
        println!(
            "revoked {id} and {} token(s) minted under it",
            data["revoked"]
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (_lock, key, mut authority) = writable_authority(home)?;
    let Some(n) = authority.grant_revoke(id, now())? else {
        anyhow::bail!(
            "no standing grant {id}; `elastos grants` lists them (with the supervisor up)"
        );
    };
    warn_unrecorded(record_operator(
        home,
        &key,
        "grant.revoke",
        id,
        &format!("standing grant revoked, and {n} token(s) minted under it"),
        None,
    ));
    println!("revoked {id} and {n} token(s) minted under it");
    Ok(ExitCode::SUCCESS)
}
