//! The trusted base of elastos and the `elastos` command.
//!
//! This crate holds what the whole runtime's security rests on: the node identity ([`identity`]),
//! content addresses and signed capsule packages ([`cid`], [`package`]), capability tokens and
//! their twelve checks ([`token`], [`authority`]), and the tamper-evident audit log ([`audit`]).
//! It trusts the kernel, its own `$ELASTOS_HOME`, and nothing a capsule or a package says until it
//! has been verified. It must never answer "allowed" when a check could not be made: every error
//! path denies.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod audit;
pub mod authority;
pub mod ceilings;
pub mod cid;
pub mod config;
pub mod control;
pub mod doctor;
pub mod frames;
pub mod fsutil;
pub mod home;
pub mod host;
pub mod identity;
pub mod package;
pub mod policy;
pub mod quota;
pub mod store;
pub mod text;
pub mod token;
pub mod wasm;
