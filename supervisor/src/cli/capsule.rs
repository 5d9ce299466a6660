//! `elastos capsule pack|verify|inspect`. `verify` and `inspect` only read the package.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use elastos::home::Home;
use elastos::identity::NodeKey;
use elastos::package;
use elastos::text::sanitize;

#[derive(Subcommand)]
pub enum CapsuleCommand {
    /// Make a deterministic, signed package of a capsule directory and print its CID.
    Pack {
        /// The capsule directory (with capsule.toml).
        dir: PathBuf,
        /// Where to write the package (default: NAME-VERSION.capsule in the current directory).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Sign with this key (a file holding a hex seed) instead of the node's key.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Check a package's signature and every file hash; print its publisher and CID.
    Verify {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show a package's manifest, files, publisher and CID.
    Inspect {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: CapsuleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CapsuleCommand::Pack { dir, output, key } => {
            let key = match key {
                Some(path) => NodeKey::from_hex_file(&path)
                    .with_context(|| format!("reading the key in {}", path.display()))?,
                None => {
                    let home = Home::from_env()?;
                    super::identity::node_key(&home)?
                }
            };
            let packed =
                package::pack(&dir, &key).with_context(|| format!("packing {}", dir.display()))?;
            let out = match output {
                Some(o) => o,
                None => PathBuf::from(format!(
                    "{}-{}.capsule",
                    packed.manifest.name, packed.manifest.version
                )),
            };
            std::fs::write(&out, &packed.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "packed {} {} ({} files, {} bytes) signed by {} into {}",
                packed.manifest.name,
                packed.manifest.version,
                packed.file_count,
                packed.bytes.len(),
                key.did(),
                out.display()
            );
            println!("{}", packed.cid);
        }
        CapsuleCommand::Verify {
            package: path,
            json,
        } => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let pkg = match package::verify(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    // A refused package is a failure (exit 1) that says exactly what failed.
                    anyhow::bail!("{} is refused: {e}", path.display());
                }
            };
            if json {
                super::print_json(&serde_json::json!({
                    "ok": true,
                    "cid": pkg.cid.to_string(),
                    "publisher": pkg.publisher,
                    "name": pkg.manifest.name,
                    "version": pkg.manifest.version,
                }))?;
            } else {
                println!(
                    "ok: {} {}",
                    sanitize(&pkg.manifest.name),
                    sanitize(&pkg.manifest.version)
                );
                println!("publisher: {}", pkg.publisher);
                println!("cid: {}", pkg.cid);
            }
        }
        CapsuleCommand::Inspect {
            package: path,
            json,
        } => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let pkg = package::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is refused: {e}", path.display()))?;
            if json {
                super::print_json(&pkg.inspect_json())?;
            } else {
                print!("{}", pkg.inspect_text());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
