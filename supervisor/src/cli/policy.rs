//! `elastos policy check FILE`: reads a policy file as the shell capsule reads it, and says
//! where the first mistake is (`FILE:LINE:COLUMN: …`), so a policy is checked before it is
//! installed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use elastos_schema::policy::Policy;

/// A policy file is far smaller: the cap keeps a wrong path (a disk image, say) from being read
/// into memory.
const MAX_POLICY_BYTES: u64 = 1 << 20;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file: exit 0 and a summary, or exit 1 and `FILE:LINE:COLUMN: what is
    /// wrong`.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Hand the running shell the node's policy file again ($ELASTOS_HOME/policies/default.toml,
    /// else the shipped one): all at once, recorded; a file with a mistake is refused with its
    /// line and the policy in force stays.
    Reload,
    /// What the running shell would decide for a capsule's request, which rule decides, and why
    /// (a dry run: nothing is granted, no prompt opens; recorded).
    Explain {
        /// The capsule asking: its name (running or stored), optionally with its package CID.
        #[arg(long = "as", value_name = "NAME[@CID]")]
        caller: String,
        #[arg(long)]
        resource: String,
        /// Comma-separated: read, write, execute, message, delete, admin.
        #[arg(long)]
        action: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Explain {
            caller,
            resource,
            action,
            json,
        } => {
            let (name, cid) = match caller.split_once('@') {
                Some((n, c)) => (n.to_string(), Some(c.to_string())),
                None => (caller.clone(), None),
            };
            let home = elastos::home::Home::from_env()?;
            let r = super::ops::check(super::daemon::connect(&home)?.request(
                &elastos::control::Request::PolicyExplain {
                    name,
                    cid,
                    resource,
                    actions: action,
                },
            )?)?;
            if json {
                super::print_json(&r.data)?;
            } else {
                use elastos::text::sanitize;
                let d = &r.data;
                let field = |k: &str| sanitize(d[k].as_str().unwrap_or(""));
                match d["verdict"].as_str() {
                    Some("allow") => println!(
                        "allow {} on {} for {} s",
                        field("actions"),
                        field("resource"),
                        d["ttl_s"]
                    ),
                    Some(v) => println!("{v}"),
                    None => println!("?"),
                }
                println!("because: {}", field("explanation"));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Reload => {
            let home = elastos::home::Home::from_env()?;
            let r = super::ops::check(
                super::daemon::connect(&home)?.request(&elastos::control::Request::PolicyReload)?,
            )?;
            println!(
                "reloaded {} rule(s) from {}",
                r.data["rules"],
                elastos::text::sanitize(r.data["source"].as_str().unwrap_or("?"))
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { file, json } => {
            let meta =
                std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
            if meta.len() > MAX_POLICY_BYTES {
                anyhow::bail!(
                    "{}: {} bytes; a policy file is at most {MAX_POLICY_BYTES}",
                    file.display(),
                    meta.len()
                );
            }
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!("reading {} (a policy file is UTF-8 TOML)", file.display())
            })?;
            match Policy::parse(&text) {
                Ok(p) => {
                    if json {
                        super::print_json(&serde_json::json!({
                            "file": file.display().to_string(),
                            "ok": true,
                            "rules": p.rules.len(),
                        }))?;
                    } else {
                        println!("{}: ok, {} rule(s)", file.display(), p.rules.len());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        super::print_json(&serde_json::json!({
                            "file": file.display().to_string(),
                            "ok": false,
                            "line": e.line,
                            "column": e.column,
                            "error": e.message,
                        }))?;
                    }
                    eprintln!("{}:{e}", file.display());
                    Ok(ExitCode::from(super::EXIT_FAILED))
                }
            }
        }
    }
}

/// `elastos prompts [--json]`: the prompts waiting for the person.
pub fn prompts(json: bool) -> anyhow::Result<ExitCode> {
    use elastos::text::sanitize;
    let home = elastos::home::Home::from_env()?;
    let r = super::ops::check(
        super::daemon::connect(&home)?.request(&elastos::control::Request::Prompts)?,
    )?;
    if json {
        super::print_json(&r.data)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list = r.data.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("(no prompt waits)");
    }
    // Every field is the supervisor's own record; the manifest's reason is shown on its own
    // line, escaped and cut, never as part of the question.
    for p in list {
        let field = |k: &str| sanitize(p[k].as_str().unwrap_or("?"));
        let actions: Vec<String> = p["actions"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).map(sanitize).collect())
            .unwrap_or_default();
        println!(
            "{}  {} ({}, {}) wants {} on {}, until {}",
            field("id"),
            field("capsule"),
            field("publisher"),
            field("cid").chars().take(16).collect::<String>(),
            actions.join(","),
            field("resource"),
            field("expires_at"),
        );
        let reason: String = field("reason").chars().take(200).collect();
        println!("    reason (from its manifest): {reason}");
        println!(
            "    answer: elastos allow {} | elastos deny {}",
            field("id"),
            field("id")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `elastos allow ID [--once|--always]` and `elastos deny ID [--always]`.
pub fn answer(id: String, decision: elastos::control::PromptDecision) -> anyhow::Result<ExitCode> {
    use elastos::control::Request;
    let home = elastos::home::Home::from_env()?;
    let r = super::ops::check(
        super::daemon::connect(&home)?.request(&Request::PromptAnswer {
            id: id.clone(),
            answer: decision,
        })?,
    )?;
    let words = r.data["answer"].as_str().unwrap_or("answered");
    match r.data["grant"].as_str() {
        Some(g) => println!("{words}: {id} (standing grant {g}; `elastos revoke {g}` ends it)"),
        None => println!("{words}: {id}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `elastos grants [--json]`: the standing grants.
pub fn grants(json: bool) -> anyhow::Result<ExitCode> {
    use elastos::text::sanitize;
    let home = elastos::home::Home::from_env()?;
    let r = super::ops::check(
        super::daemon::connect(&home)?.request(&elastos::control::Request::Grants)?,
    )?;
    if json {
        super::print_json(&r.data)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list = r.data.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("(no grants)");
    }
    for g in list {
        let f = |k: &str| sanitize(g[k].as_str().unwrap_or("?"));
        println!(
            "{}  {} {}: {} ({}) {} on {}",
            f("id"),
            f("decision"),
            f("kind"),
            f("capsule"),
            f("publisher"),
            f("actions"),
            f("resource")
        );
    }
    Ok(ExitCode::SUCCESS)
}
