//! `echo`: the simplest provider. It serves `localhost://echo/*` and answers every call with the
//! call's own payload, which makes it the reference peer for latency measurements (`ping`) and
//! end-to-end tests of the call path.

use std::io::Write;
use std::process::ExitCode;

use elastos_sdk::{Capsule, SdkError};

const PATTERN: &str = "localhost://echo/*";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), SdkError> {
    let mut capsule = Capsule::connect()?;
    capsule.serve(PATTERN)?;
    // The ready line is what supervisors' logs and tests wait for: flush it at once.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "echo: serving {PATTERN}");
    let _ = out.flush();
    drop(out);
    loop {
        match capsule.next_incoming() {
            Ok(Some(call)) => {
                let id = call.id;
                if let Err(e) = capsule.reply(id, Ok(call.payload)) {
                    if !capsule.is_connected() {
                        return Err(e);
                    }
                    eprintln!("echo: replying to call {id}: {e}");
                }
            }
            // The supervisor closed the socket: it is stopping this capsule.
            Ok(None) => return Ok(()),
            // A frame this SDK could not use spoils only itself; a failed socket ends the loop.
            Err(e) if capsule.is_connected() => eprintln!("echo: {e}"),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manifest_is_valid() {
        let m = elastos_schema::manifest::Manifest::parse(include_str!("../capsule.toml")).unwrap();
        assert_eq!(m.name, "echo");
        assert_eq!(m.provides[0].uri, super::PATTERN);
    }
}
