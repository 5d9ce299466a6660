//! `elastos audit [--json] [-f] [--capsule NAME] [--since T]` and `elastos audit verify`.
//! Reading never takes the state lock: the writer only appends, so a reader sees a prefix.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use elastos::audit::{self, AuditLog, AuditOptions, Decision, Durability, Event};
use elastos::config::Config;
use elastos::home::Home;
use elastos::identity::{self, NodeKey};
use elastos::text::sanitize;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// JSON Lines, one record per line.
    #[arg(long)]
    json: bool,
    /// Keep printing new records as they are appended.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only records whose actor is this capsule.
    #[arg(long, value_name = "NAME")]
    capsule: Option<String>,
    /// Only records at or after this time: RFC 3339, or an age such as 10m or 2h.
    #[arg(long, value_name = "T", value_parser = super::parse_since)]
    since: Option<SystemTime>,
    #[command(subcommand)]
    command: Option<AuditCommand>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, the signed checkpoints and the head; exit 0 with the record count
    /// and head hash, or non-zero naming the first bad record.
    Verify {
        /// Also require record SEQ to have hash HASH (an anchor saved earlier).
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<String>,
        /// Check signatures against this DID instead of the node's own.
        #[arg(long)]
        did: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the old part of the log: every whole segment whose records all come before SEQ
    /// (never the live one). Recorded first; a signed `anchor` keeps the rest verifiable.
    /// Anchors saved for `verify --expect` inside what goes no longer match.
    Prune {
        /// Remove records before this sequence number (whole segments only).
        #[arg(long, value_name = "SEQ")]
        before: u64,
        #[arg(long)]
        json: bool,
    },
}

/// The actor name of the person at the command line.
pub fn operator() -> String {
    format!("operator:uid={}", nix::unistd::getuid())
}

/// Appends one durable operator record (a grant, a revocation, a trust change…). The caller
/// holds the state lock. The record is durable before this returns; if it cannot be, the
/// command fails, so nothing takes effect unaudited without the operator being told.
pub fn record_operator(
    home: &Home,
    key: &NodeKey,
    action: &str,
    resource: &str,
    reason: &str,
    token: Option<String>,
) -> anyhow::Result<()> {
    record_operator_decision(
        home,
        key,
        action,
        resource,
        reason,
        token,
        Decision::Allowed,
    )
}

/// [`record_operator`] with a decision of the caller's.
pub fn record_operator_decision(
    home: &Home,
    key: &NodeKey,
    action: &str,
    resource: &str,
    reason: &str,
    token: Option<String>,
    decision: Decision,
) -> anyhow::Result<()> {
    let log = open_log(home, key)?;
    log.append(
        Event {
            actor: operator().into(),
            action: action.to_string().into(),
            resource: resource.to_string(),
            decision,
            reason: reason.to_string(),
            token,
        },
        Durability::Sync,
    )
    .context("writing the audit record")?;
    log.close().context("closing the audit log")?;
    Ok(())
}

fn prune(home: &Home, before: u64, json: bool) -> anyhow::Result<ExitCode> {
    use elastos::control::{Client, ControlError, Request};
    let pruned: audit::Pruned = match Client::connect(home) {
        Ok(mut c) => {
            let r = c.request(&Request::AuditPrune { before })?;
            if !r.ok {
                return Err(super::Failure {
                    code: r.code.unwrap_or(super::EXIT_FAILED),
                    message: r.error.unwrap_or_else(|| "the prune failed".into()),
                }
                .into());
            }
            let n = |k: &str| r.data[k].as_u64().unwrap_or(0);
            audit::Pruned {
                first: n("first"),
                last: n("last"),
                segments: n("segments") as usize,
                bytes: n("bytes"),
            }
        }
        Err(ControlError::NotRunning { .. }) => {
            let _lock = super::token::state_lock(home)?;
            let key = NodeKey::load(home)?.ok_or_else(|| {
                anyhow::anyhow!("this node has no identity, and so no audit log to prune")
            })?;
            let log = open_log(home, &key)?;
            let pruned = log
                .prune(&home.audit_dir(), before, &operator(), &key)
                .context("pruning the audit log")?;
            log.close().context("closing the audit log")?;
            pruned
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        super::print_json(&pruned)?;
    } else if pruned.segments == 0 {
        println!("nothing to prune: no whole segment before #{before} but the live one");
    } else {
        println!(
            "pruned records #{}..#{} ({} segment(s), {:.1} MiB); the log now begins at #{} and still verifies from its signed anchor",
            pruned.first,
            pruned.last,
            pruned.segments,
            pruned.bytes as f64 / f64::from(1 << 20),
            pruned.last + 1
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn open_log(home: &Home, key: &NodeKey) -> anyhow::Result<AuditLog> {
    let cfg = Config::load(home)?;
    let opts = AuditOptions {
        strict: cfg.audit.strict,
        per_call: cfg.audit.per_call || cfg.audit.strict,
        segment_bytes: cfg
            .audit
            .segment_size
            .unwrap_or(AuditOptions::default().segment_bytes)
            .max(4096),
        ..AuditOptions::default()
    };
    // What checkpoints and the head record of the authority's state: as it is on disk now (a
    // command records after it changed the state, or before it changes it), checked first
    // like any writer's, so an older copy put back is never signed over.
    let stamp = Some(
        super::token::checked_authority(home, Arc::new(NodeKey::from_hex(&key.seed_hex())?))?
            .stamp(),
    );
    let opts = AuditOptions {
        state: Some(Arc::new(std::sync::Mutex::new(stamp))),
        ..opts
    };
    home.ensure_dir("audit")?;
    let key = Arc::new(NodeKey::from_hex(&key.seed_hex())?);
    AuditLog::open(&home.audit_dir(), key, opts).context("opening the audit log")
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    match args.command {
        Some(AuditCommand::Verify { expect, did, json }) => {
            return verify(&home, expect, did, json)
        }
        Some(AuditCommand::Prune { before, json }) => return prune(&home, before, json),
        None => {}
    }
    let dir = home.audit_dir();
    if !dir.exists() && !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Followed from where it got to: only what was appended is read again.
    let mut cursor = audit::Cursor::default();
    loop {
        if dir.exists() {
            for rec in audit::read_since(&dir, &mut cursor)? {
                let rec = rec?;
                if let Some(c) = &args.capsule {
                    if !audit::actor_is_capsule(&rec.actor, c) {
                        continue;
                    }
                }
                if let Some(since) = args.since {
                    if rec.time_system().is_some_and(|t| t < since) {
                        continue;
                    }
                }
                if args.json {
                    println!("{}", serde_json::to_string(&rec)?);
                } else {
                    println!(
                        "{} #{} {} {} {} {} {}{}",
                        rec.time,
                        rec.seq,
                        rec.decision,
                        sanitize(&rec.actor),
                        sanitize(&rec.action),
                        sanitize(&rec.resource),
                        sanitize(&rec.reason),
                        rec.token
                            .as_deref()
                            .map(|t| format!(" token={t}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verify(
    home: &Home,
    expect: Option<String>,
    did: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let public = match did {
        Some(d) => identity::public_from_did(&d)?,
        None => NodeKey::load(home)?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "this node has no identity; pass --did to verify another node's log"
                )
            })?
            .public_bytes(),
    };
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public)
        .map_err(|_| anyhow::anyhow!("the DID does not name a valid Ed25519 key"))?;
    let expect = expect
        .map(|e| -> anyhow::Result<(u64, [u8; 32])> {
            let (seq, hash) = e
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--expect takes SEQ:HASH"))?;
            let seq = seq.parse().context("--expect: SEQ is a number")?;
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("--expect: HASH is 64 hex characters"))?;
            Ok((seq, hash))
        })
        .transpose()?;
    match audit::verify(&home.audit_dir(), &public, expect) {
        Ok(report) => {
            if json {
                super::print_json(&serde_json::json!({
                    "ok": true,
                    "records": report.records,
                    "head_seq": report.head_seq,
                    "head_hash": hex::encode(report.head_hash),
                    "signed": report.signed,
                    "unsigned": report.records - report.signed,
                }))?;
            } else {
                println!(
                    "ok: {} records, head #{} {}",
                    report.records,
                    report.head_seq,
                    hex::encode(report.head_hash)
                );
                let unsigned = report.records - report.signed;
                if unsigned == 0 {
                    println!("all {} covered by a signature", report.records);
                } else {
                    println!(
                        "{} covered by a signature; {unsigned} (#{}..#{}) not yet: written after the last signed head before an unclean stop, they are signed when the node next starts",
                        report.signed,
                        report.signed + 1,
                        report.records
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                super::print_json(&serde_json::json!({"ok": false, "error": e.to_string()}))?;
            } else {
                println!("FAILED: {e}");
            }
            Ok(ExitCode::from(super::EXIT_FAILED))
        }
    }
}
