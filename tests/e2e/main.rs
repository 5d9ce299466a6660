//! End-to-end tests: each drives the real `elastos` binary against a private, temporary
//! `$ELASTOS_HOME`. One test binary with a module per area: one place to look, fast to link.

mod audit;
mod calls;
mod capsule;
mod cli;
mod confinement;
mod fulldisk;
mod identity;
mod install;
mod livepath;
mod shell;
mod supervisor;
mod terminal;
mod throwaway;
mod token;
mod wasm;
