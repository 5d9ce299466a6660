//! Generates Rust from the `.capnp` contracts at build time. Needs the `capnp` compiler
//! (Debian package `capnproto`), which `scripts/setup` installs.

fn main() {
    println!("cargo:rerun-if-changed=token.capnp");
    println!("cargo:rerun-if-changed=package.capnp");
    println!("cargo:rerun-if-changed=wire.capnp");
    if let Err(e) = capnpc::CompilerCommand::new()
        .file("token.capnp")
        .file("package.capnp")
        .file("wire.capnp")
        .run()
    {
        panic!(
            "compiling the Cap'n Proto schemas failed: {e}\n\
             The `capnp` compiler is needed: run scripts/setup (or `apt-get install capnproto`)."
        );
    }
}
