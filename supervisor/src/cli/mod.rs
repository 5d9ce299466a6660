//! The command-line interface: clap definitions and dispatch. Each sub-module runs one group of
//! commands. Errors carry context at this edge (anyhow) and say what to do next.

mod audit;
mod capsule;
mod daemon;
mod identity;
mod ops;
mod policy;
mod shell;
mod token;

pub use audit::operator;
pub use token::checked_authority;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use elastos::home::Home;

/// Exit codes: a contract for scripts.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NO_SUPERVISOR: u8 = 3;

#[derive(Parser)]
#[command(
    name = "elastos",
    about = "elastos: a capability-secured capsule runtime",
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "Exit codes: 0 ok, 1 denied or failed, 2 usage error, 3 no supervisor running.\nState lives in $ELASTOS_HOME (default ~/.local/share/elastos)."
)]
struct Cli {
    /// Print the version and the node's DID.
    #[arg(short = 'V', long = "version", global = false)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show, export or import the node's did:key identity.
    Identity(identity::IdentityArgs),
    /// Print a file's content identifier (CIDv1, raw, sha2-256).
    Cid {
        /// The file (a package's CID is the CID of the package file).
        file: PathBuf,
    },
    /// Pack, verify and inspect signed capsule packages.
    #[command(subcommand)]
    Capsule(capsule::CapsuleCommand),
    /// Issue, delegate, inspect and dry-run-check capability tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Revoke one token and its descendants, or every token (--all raises the epoch).
    Revoke(token::RevokeArgs),
    /// Manage the issuers (besides this node) whose tokens are accepted.
    #[command(subcommand)]
    Trust(token::TrustCommand),
    /// Read and verify the audit log.
    Audit(audit::AuditArgs),
    /// Check the node's policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List the prompts waiting for the person (the shell asked: `[policy] decider = "shell"`).
    Prompts {
        #[arg(long)]
        json: bool,
    },
    /// Allow what a prompt asks: for the capsule instance that asked (its tokens end with it),
    /// with --session until the supervisor stops, or with --always from now on (a standing
    /// grant, until `elastos revoke GRANT_ID`).
    Allow {
        /// The prompt's id (`elastos prompts`).
        id: String,
        /// For this instance only (the default).
        #[arg(long, conflicts_with_all = ["always", "session"])]
        once: bool,
        /// Whenever the same capsule asks the same again, until `elastos down`.
        #[arg(long, conflicts_with = "always")]
        session: bool,
        /// Whenever the same capsule asks the same again, across restarts.
        #[arg(long)]
        always: bool,
    },
    /// Deny what a prompt asks; with --always, whenever the same capsule asks the same again.
    Deny {
        /// The prompt's id (`elastos prompts`).
        id: String,
        #[arg(long)]
        always: bool,
    },
    /// The person's terminal: the prompts waiting (answered with a key) and the live audit
    /// tail.
    Shell,
    /// List the standing grants (`allow --always`, `deny --always`) and session grants
    /// (`allow --session`, `run --allow`).
    Grants {
        #[arg(long)]
        json: bool,
    },
    /// Start the supervisor (in the background unless --foreground) with the default capsules.
    Up(daemon::UpArgs),
    /// Stop every capsule and the supervisor.
    Down(daemon::DownArgs),
    /// Whether the supervisor runs: pid, uptime, DID, socket.
    Status(daemon::StatusArgs),
    /// Run a capsule from a directory, a package or the store.
    Run(ops::RunArgs),
    /// List the capsules.
    Ps(ops::PsArgs),
    /// Send a signal to a capsule (its restart policy applies).
    Kill(ops::KillArgs),
    /// Stop a capsule; it stays down until `start`.
    Stop(ops::NameArgs),
    /// Start a stopped, exited or failed capsule again.
    Start(ops::NameArgs),
    /// Stop and start a capsule.
    Restart(ops::NameArgs),
    /// Show a capsule's output and lifecycle events.
    Logs(ops::LogsArgs),
    /// Everything about one capsule: state, package, what it serves, the confinement layers
    /// in force and what each means, its manifest's requests and limits.
    Inspect(ops::InspectArgs),
    /// Report the kernel features the runtime uses, whether this machine has them, and how
    /// to fix what is missing. Exits 1 when a required one is missing.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0 and usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    init_tracing();
    // A listing piped into `head` ends quietly, as in any Unix tool, instead of a panic on
    // EPIPE. Not for the supervisor itself: a capsule closing its socket must never kill it.
    if !matches!(&cli.command, Some(Command::Up(a)) if a.foreground) {
        // SAFETY: restoring the default disposition of a signal, before any other thread
        // exists; no handler function is installed.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let result = if cli.version {
        print_version()
    } else {
        match cli.command {
            Some(cmd) => run(cmd),
            None => {
                let _ = Cli::command().print_help();
                Ok(ExitCode::from(EXIT_USAGE))
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<Failure>()
                .map(|f| f.code)
                .unwrap_or(EXIT_FAILED);
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Identity(args) => identity::run(args),
        Command::Cid { file } => {
            let cid = elastos::cid::of_file(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            println!("{cid}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Capsule(c) => capsule::run(c),
        Command::Token(c) => token::run(c),
        Command::Revoke(a) => token::revoke(a),
        Command::Trust(c) => token::trust(c),
        Command::Audit(a) => audit::run(a),
        Command::Policy(c) => policy::run(c),
        Command::Prompts { json } => policy::prompts(json),
        Command::Allow {
            id,
            always,
            session,
            ..
        } => policy::answer(
            id,
            if always {
                elastos::control::PromptDecision::AllowAlways
            } else if session {
                elastos::control::PromptDecision::AllowSession
            } else {
                elastos::control::PromptDecision::AllowOnce
            },
        ),
        Command::Deny { id, always } => policy::answer(
            id,
            if always {
                elastos::control::PromptDecision::DenyAlways
            } else {
                elastos::control::PromptDecision::Deny
            },
        ),
        Command::Grants { json } => policy::grants(json),
        Command::Shell => shell::run(),
        Command::Up(a) => daemon::up(a),
        Command::Down(a) => daemon::down(a),
        Command::Status(a) => daemon::status(a),
        Command::Run(a) => ops::run(a),
        Command::Ps(a) => ops::ps(a),
        Command::Kill(a) => ops::kill(a),
        Command::Stop(a) => ops::simple("stop", a),
        Command::Start(a) => ops::simple("start", a),
        Command::Restart(a) => ops::simple("restart", a),
        Command::Logs(a) => ops::logs(a),
        Command::Inspect(a) => ops::inspect(a),
        Command::Doctor { json } => doctor(json),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "elastos",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn doctor(json: bool) -> anyhow::Result<ExitCode> {
    // Reads only: the home is measured, never created.
    let home = elastos::home::Home::from_env()?;
    let features = elastos::doctor::run(home.root());
    if json {
        print_json(&serde_json::json!({ "features": features }))?;
    } else {
        for f in &features {
            let mark = match (f.ok, f.required) {
                (true, _) => "ok  ",
                (false, true) => "MISSING",
                (false, false) => "missing",
            };
            println!("{mark:<8} {:<16} {}", f.name, f.detail);
            if !f.ok {
                println!("{:<8} {:<16} fix: {}", "", "", f.fix);
            }
        }
    }
    Ok(if elastos::doctor::healthy(&features) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `--since T`, in every command that takes it: an RFC 3339 time, or an age such as `10m`. A
/// clap value parser, so a bad one is a usage error (exit 2) everywhere.
pub fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor an age like 10m"))?;
    std::time::SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| format!("`{s}` reaches before the epoch"))
}

fn print_version() -> anyhow::Result<ExitCode> {
    println!("elastos {}", env!("CARGO_PKG_VERSION"));
    // Read-only: --version never creates a key or the home directory.
    let home = Home::from_env()?;
    match elastos::identity::NodeKey::load(&home) {
        Ok(Some(key)) => println!("{}", key.did()),
        Ok(None) => println!("no identity yet"),
        Err(e) => println!("identity unreadable: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ELASTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

/// An error with a specific exit code (e.g. 3 when no supervisor runs).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
