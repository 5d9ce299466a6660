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
            key.install(&home, force)?;
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
