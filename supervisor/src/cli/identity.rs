//! `elastos identity [--json] | export | import [--force]`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use elastos::home::Home;
use elastos::identity::NodeKey;
use zeroize::Zeroizing;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IdentityArgs {
    /// Print `{"did": …, "public_key_hex": …}`.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<IdentityCommand>,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Print the node's secret seed as hex (a backup; keep it private).
    Export,
    /// Read a hex seed on stdin and make it the node's key.
    Import {
        /// Replace an existing, different identity.
        #[arg(long)]
        force: bool,
    },
}

/// The node's key, created on first use. An existing key is only read (a running supervisor
/// holds the lock); creating one takes the lock so two commands never create two keys.
pub fn node_key(home: &Home) -> anyhow::Result<NodeKey> {
    match NodeKey::load(home).context("loading the node identity")? {
        Some(k) => Ok(k),
        None => {
            let _lock = super::token::state_lock(home)?;
            NodeKey::load_or_create(home).context("loading the node identity")
        }
    }
}

pub fn run(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    match args.command {
        None => {
            let key = node_key(&home)?;
            if args.json {
                super::print_json(&serde_json::json!({
                    "did": key.did(),
                    "public_key_hex": hex::encode(key.public_bytes()),
                }))?;
            } else {
                println!("{}", key.did());
            }
        }
        Some(IdentityCommand::Export) => {
            let key = NodeKey::load(&home)?.ok_or_else(|| {
                anyhow::anyhow!("this node has no identity yet; create one with `elastos identity`")
            })?;
            eprintln!("warning: this is the node's secret key; anyone who has it can act as this node. Store it offline.");
            println!("{}", key.seed_hex().as_str());
        }
        Some(IdentityCommand::Import { force }) => {
            let mut text = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the seed from stdin")?;
            let key = NodeKey::from_hex(&text)?;
            let _lock = super::token::state_lock(&home)?;
            let old = NodeKey::load(&home)?.filter(|o| o.public_bytes() != key.public_bytes());
            match old {
                Some(old) if force => rekey(&home, &old, &key)?,
                // Refuses without --force, saying how.
                _ => key.install(&home, force)?,
            }
            super::audit::record_operator(
                &home,
                &key,
                "identity.import",
                &key.did(),
                "node identity imported",
                None,
            )?;
            println!("{}", key.did());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces the node key `old` with `new`, keeping the audit log verifiable and ending every
/// token of the old key. The log records the change first, under both keys (nothing changes if
/// it cannot); then the new key is installed, and the authority remembers the old key (its
/// packages stay first party) and raises the epoch.
fn rekey(home: &Home, old: &NodeKey, new: &NodeKey) -> anyhow::Result<()> {
    use elastos::authority::Authority;
    let old_key = std::sync::Arc::new(NodeKey::from_hex(&old.seed_hex())?);
    let new_key = std::sync::Arc::new(NodeKey::from_hex(&new.seed_hex())?);
    // The state is checked under the key that sealed it: the old one, or the new one if an
    // earlier import got that far before it stopped. Likewise the log's head.
    let mut authority = Authority::open(home, Some(old_key.clone()))
        .or_else(|_| Authority::open(home, Some(new_key.clone())))
        .context("opening the token authority")?;
    let dir = home.audit_dir();
    let recorded = elastos::audit::recorded_state(&dir, &old.verifying_key())
        .or_else(|_| elastos::audit::recorded_state(&dir, &new.verifying_key()))
        .context("reading the audit log's signed head")?;
    if let Some(r) = recorded {
        authority
            .check_against_log(r)
            .context("checking the token authority's state against the audit log")?;
    }
    if dir.join("head").exists() {
        match super::audit::open_log(home, old) {
            Ok(log) => {
                log.rekey(new_key.clone()).context(
                    "recording the key change in the audit log; the identity was not replaced",
                )?;
                log.close().context("closing the audit log")?;
            }
            // An earlier import recorded the change and stopped: the log is the new key's.
            Err(e) => match super::audit::open_log(home, new) {
                Ok(log) => log.close().context("closing the audit log")?,
                Err(_) => return Err(e),
            },
        }
    }
    // Re-sealed under the new key, the old one retired, and only then the new key installed:
    // an import stopped anywhere before is finished by running it again.
    authority.rekey_to(new_key);
    let epoch = authority.retire_key(&old.did())?;
    new.install(home, true)?;
    if let Err(e) = super::audit::record_operator(
        home,
        new,
        "token.revoke-all",
        "*",
        &format!(
            "epoch raised to {epoch}: the node key was replaced, every token issued before ends"
        ),
        None,
    ) {
        eprintln!("elastos: warning: the epoch was raised, but its audit record could not be written ({e:#})");
    }
    eprintln!(
        "the node key {} is retired: every token issued before is revoked (epoch {epoch}); its packages stay first party",
        old.did()
    );
    Ok(())
}
