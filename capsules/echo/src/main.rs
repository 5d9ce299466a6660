//! `echo`: the simplest provider. It serves `localhost://echo/*` and answers every call with the
//! call's own payload, which makes it the reference peer for latency measurements (`ping`) and
//! end-to-end tests of the call path. `echo --serve localhost://echo/NAME/*` serves a part of
//! the namespace instead, so that many instances can run side by side.

use std::io::Write;
use std::process::ExitCode;

use elastos_sdk::Capsule;

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

fn run() -> Result<(), String> {
    let pattern = pattern(std::env::args().skip(1))?;
    let mut capsule = Capsule::connect().map_err(|e| e.to_string())?;
    capsule.serve(&pattern).map_err(|e| e.to_string())?;
    // The ready line is what supervisors' logs and tests wait for: flush it at once.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "echo: serving {pattern}");
    let _ = out.flush();
    drop(out);
    loop {
        match capsule.next_incoming() {
            Ok(Some(call)) => {
                let id = call.id;
                if let Err(e) = capsule.reply(id, Ok(call.payload)) {
                    if !capsule.is_connected() {
                        return Err(e.to_string());
                    }
                    eprintln!("echo: replying to call {id}: {e}");
                }
            }
            // The supervisor closed the socket: it is stopping this capsule.
            Ok(None) => return Ok(()),
            // A frame this SDK could not use spoils only itself; a failed socket ends the loop.
            Err(e) if capsule.is_connected() => eprintln!("echo: {e}"),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn pattern(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => Ok(PATTERN.to_string()),
        (Some("--serve"), Some(p), None) => Ok(p),
        _ => Err("usage: echo [--serve localhost://echo/NAME/*]".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manifest_is_valid() {
        let m = elastos_schema::manifest::Manifest::parse(include_str!("../capsule.toml")).unwrap();
        assert_eq!(m.name, "echo");
        assert_eq!(m.provides[0].uri, super::PATTERN);
        // Both substrates from one source (scripts/build-capsules puts both files in place).
        use elastos_schema::manifest::Substrate;
        assert_eq!(m.entrypoint[&Substrate::Native], "bin/echo");
        assert_eq!(m.entrypoint[&Substrate::Wasm], "bin/echo.wasm");
    }

    #[test]
    fn arguments() {
        let p = |a: &[&str]| super::pattern(a.iter().map(|s| s.to_string()));
        assert_eq!(p(&[]).unwrap(), super::PATTERN);
        assert_eq!(
            p(&["--serve", "localhost://echo/a/*"]).unwrap(),
            "localhost://echo/a/*"
        );
        assert!(p(&["--serve"]).is_err());
        assert!(p(&["--other", "x"]).is_err());
    }
}
