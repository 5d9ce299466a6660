//! `elastos`: the command line of the elastos runtime, and (with `up --foreground`) the
//! supervisor itself. Parses the command, runs it, and maps the outcome onto the exit codes
//! scripts rely on: 0 ok, 1 denied or failed, 2 usage error, 3 no supervisor running.

mod cli;
mod daemon;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
