//! The host imports a WASM capsule uses instead of the native socket on fd 3: one definition for
//! capsule-host (which provides them) and the guest SDK (which calls them).
//!
//! They carry the very frames of the native socket (`wire`), so the supervisor cannot tell a
//! WASM caller from a native one. All functions are in the import module [`MODULE`]; pointers are
//! offsets into the guest's exported `memory`, lengths are unsigned 32-bit values passed as `i32`.
//!
//! | import | signature | does |
//! | --- | --- | --- |
//! | `send` | `(ptr: i32, len: i32) -> i32` | writes one encoded frame, its `u32 LE` length prefix included (what `wire::encode` makes); 0, or an error |
//! | `recv_len` | `() -> i32` | blocks until the next frame has arrived and returns its body's length (without the prefix); the same length again until it is taken; [`CLOSED`] at the end of the stream |
//! | `recv` | `(ptr: i32, cap: i32) -> i32` | copies the frame `recv_len` announced into `ptr..ptr+cap` and drops it; returns its length |
//!
//! Errors are negative return values, never traps: a guest pointer or length outside its memory
//! is [`FAULT`], a frame above `wire::MAX_FRAME` is [`TOO_LONG`], a prefix that disagrees with
//! `len` is [`BAD_FRAME`]. The CPU budget (`[limits] call_budget_ms`) starts again each time
//! `recv_len` hands the guest a new frame.

/// The import module's name.
pub const MODULE: &str = "elastos";
/// `send(ptr, len) -> i32`.
pub const SEND: &str = "send";
/// `recv_len() -> i32`.
pub const RECV_LEN: &str = "recv_len";
/// `recv(ptr, cap) -> i32`.
pub const RECV: &str = "recv";

/// A pointer or length outside the guest's memory (or no exported `memory`).
pub const FAULT: i32 = -1;
/// A frame above `wire::MAX_FRAME`; from `recv_len`, the runtime sent one and the connection is
/// unusable.
pub const TOO_LONG: i32 = -2;
/// `send`: fewer than 4 bytes, or a length prefix that is not `len - 4`.
pub const BAD_FRAME: i32 = -3;
/// The connection to the supervisor failed.
pub const IO: i32 = -4;
/// `recv_len`: the supervisor closed the connection (a clean end of stream).
pub const CLOSED: i32 = -5;
/// `recv` without a frame announced by `recv_len`.
pub const NO_FRAME: i32 = -6;
/// `recv`: `cap` is smaller than the announced frame (which stays pending).
pub const SPACE: i32 = -7;

/// The guest's default CPU budget per frame, in milliseconds (`[limits] call_budget_ms`).
pub const DEFAULT_CALL_BUDGET_MS: u64 = 10_000;
