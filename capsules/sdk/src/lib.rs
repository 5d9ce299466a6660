//! The elastos guest SDK: how a capsule talks to its supervisor.
//!
//! A capsule has exactly one channel to the world, a socket to the supervisor, and every call it
//! makes carries a capability token. This crate hides both: [`Capsule::call`] finds or asks for a
//! token that covers the target and renews it before it expires; [`Capsule::serve`] asks for the
//! "provide" capability and registers a namespace; [`Capsule::next_incoming`] and
//! [`Capsule::reply`] answer the calls routed to it.
//!
//! The API is blocking and single-threaded on purpose: the same code must run in a WebAssembly
//! guest, where there are no threads and no async runtime. Calls are still pipelined: send many
//! with [`Capsule::send_call`], then collect the answers with [`Capsule::wait`] or
//! [`Capsule::wait_any`]. Frames that arrive while the capsule waits for something else
//! (answers to other calls, incoming calls) are buffered until asked for.
//!
//! ```no_run
//! use elastos_sdk::{Action, Capsule};
//! let mut capsule = Capsule::connect()?;
//! let answer = capsule.call("localhost://echo/hi", Action::Read, b"hello")?;
//! assert_eq!(answer, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

mod error;
mod frames;
mod shell;
mod transport;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use elastos_schema::versions;
use elastos_schema::wire_capnp::Status;

pub use elastos_schema::policy::Standing;
pub use elastos_schema::wire::{FrameBuf, FrameError};
pub use elastos_schema::Action;
pub use error::{CallError, ErrorKind, SdkError};
pub use shell::{PolicyAnswer, PolicyRequest, ShellEvent};
pub use transport::Transport;
#[cfg(target_os = "wasi")]
pub use transport::WasmTransport;
#[cfg(unix)]
pub use transport::{UnixTransport, SOCKET_FD_ENV};

use frames::Event;

/// The lifetime asked for when the SDK requests a token on its own; policy may shorten it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// A cached grant is renewed this long before it expires, or sooner for short-lived grants
/// (see [`RENEW_FRACTION`]).
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// For grants shorter than ten minutes: renew in the last tenth of the lifetime.
const RENEW_FRACTION: i64 = 10;
/// Grants differ by target namespace and action; a capsule uses few of them.
const GRANT_CACHE: usize = 32;
/// Error replies are short; the supervisor caps them further.
const MAX_ERROR_MESSAGE: usize = 4096;

const SUBSTRATE: &str = if cfg!(target_os = "wasi") {
    "wasm"
} else {
    "native"
};

/// A capability the supervisor granted.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `SignedToken` message bytes, sent with every call it covers.
    pub token: Vec<u8>,
    /// What the token covers: an exact URI, or a pattern `P/*`. May be wider than asked.
    pub resource: String,
    pub actions: Vec<Action>,
    /// Unix seconds, exclusive.
    pub expiry: i64,
}

impl Grant {
    /// Whether this grant's resource and actions reach `action` on `target`.
    pub fn covers(&self, target: &str, action: Action) -> bool {
        self.actions.contains(&action) && resource_covers(&self.resource, target)
    }
}

// The token itself stays out of logs.
impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("resource", &self.resource)
            .field("actions", &self.actions)
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// The supervisor's matching rule: the resource itself, or `P/*` for anything strictly below
/// `P` (never `P` itself).
fn resource_covers(resource: &str, target: &str) -> bool {
    if resource == target {
        return true;
    }
    resource.strip_suffix("/*").is_some_and(|base| {
        target
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty())
    })
}

/// Identifies one call in flight on this connection. Ids increase from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(u64);

impl CallId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who made an incoming call, as verified by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// The caller's package CID.
    pub cid: String,
    /// A DID, or `dev` for development packages.
    pub publisher: String,
}

/// A call routed to this capsule as a provider. Answer it with [`Capsule::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Chosen by the supervisor; pass it to [`Capsule::reply`].
    pub id: u64,
    /// Shared among the calls of the same caller.
    pub caller: Arc<Caller>,
    pub action: Action,
    /// The URI called, within a pattern this capsule serves.
    pub resource: String,
    pub payload: Vec<u8>,
    /// How long the caller waits, counted by the supervisor from when it forwarded the call.
    pub deadline: Option<Duration>,
}

struct Cached {
    grant: Grant,
    granted_at: i64,
    /// Lets an answer name the grant its call used, without keeping a copy of the token.
    serial: u64,
}

impl Cached {
    fn fresh_at(&self, now: i64) -> bool {
        let lifetime = self.grant.expiry.saturating_sub(self.granted_at);
        let margin = (RENEW_BEFORE.as_secs() as i64).min(lifetime / RENEW_FRACTION);
        self.grant.expiry.saturating_sub(now) > margin
    }
}

/// Why the connection can no longer be used.
enum Dead {
    Closed,
    Io(io::ErrorKind, String),
    Protocol(String),
}

impl Dead {
    fn error(&self) -> SdkError {
        match self {
            Dead::Closed => SdkError::Closed,
            Dead::Io(kind, msg) => SdkError::Io(io::Error::new(*kind, msg.clone())),
            Dead::Protocol(msg) => SdkError::Protocol(msg.clone()),
        }
    }
}

/// A capsule's connection to its supervisor.
pub struct Capsule<T: Transport> {
    transport: T,
    /// Every frame is received into this buffer and decoded in place,
    rx: FrameBuf,
    /// and encoded into this one to be sent: no allocation per frame for either.
    tx: Vec<u8>,
    /// Who made the last incoming call (see `frames::parse`).
    last_caller: Option<Arc<Caller>>,
    name: String,
    cid: String,
    max_frame: u32,
    next_call: u64,
    /// Token and serve requests, numbered apart from calls: their replies are other frame kinds.
    next_request: u64,
    /// Calls sent and not yet answered, with the serial of the grant each one used.
    calls: HashMap<u64, u64>,
    /// Answers not yet collected. Ordered so that `wait_any` hands them out oldest call first.
    answers: BTreeMap<u64, Result<Vec<u8>, CallError>>,
    tokens: HashMap<u64, Option<Result<Grant, SdkError>>>,
    serves: HashMap<u64, Option<Result<(), SdkError>>>,
    incoming: VecDeque<Incoming>,
    /// What the supervisor asked of this capsule as the node's shell.
    shell: VecDeque<ShellEvent>,
    grants: Vec<Cached>,
    next_serial: u64,
    dead: Option<Dead>,
    clock: Box<dyn Fn() -> i64 + Send>,
    /// Told when a token request waits for the person (see [`Capsule::on_waiting`]).
    waiting: Option<Box<dyn FnMut() + Send>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(unix)]
impl Capsule<UnixTransport> {
    /// Connects over the socket the runtime handed to this process (see [`SOCKET_FD_ENV`]) and
    /// greets the supervisor.
    pub fn connect() -> Result<Self, SdkError> {
        Capsule::with_transport(UnixTransport::from_env()?)
    }
}

#[cfg(target_os = "wasi")]
impl Capsule<WasmTransport> {
    /// Connects through the host imports of the WASM substrate and greets the supervisor.
    pub fn connect() -> Result<Self, SdkError> {
        Capsule::with_transport(WasmTransport::take()?)
    }
}

impl<T: Transport> Capsule<T> {
    /// Greets the supervisor over `transport`: sends `hello` and waits for its `welcome`.
    pub fn with_transport(transport: T) -> Result<Self, SdkError> {
        let mut capsule = Capsule {
            transport,
            rx: FrameBuf::new(),
            tx: Vec::new(),
            last_caller: None,
            name: String::new(),
            cid: String::new(),
            max_frame: 0,
            next_call: 1,
            next_request: 1,
            calls: HashMap::new(),
            answers: BTreeMap::new(),
            tokens: HashMap::new(),
            serves: HashMap::new(),
            incoming: VecDeque::new(),
            shell: VecDeque::new(),
            waiting: None,
            grants: Vec::new(),
            next_serial: 1,
            dead: None,
            clock: Box::new(unix_now),
        };
        let sdk = format!("elastos-sdk {} {SUBSTRATE}", env!("CARGO_PKG_VERSION"));
        frames::hello(&mut capsule.tx, versions::WIRE, &sdk)?;
        capsule.send_tx()?;
        match capsule.transport.recv_into(&mut capsule.rx) {
            Ok(true) => {}
            Ok(false) => return Err(SdkError::Closed),
            Err(e) => return Err(frame_error(e)),
        }
        match frames::parse(capsule.rx.bytes(), &mut capsule.last_caller)? {
            Event::Welcome {
                version,
                name,
                cid,
                max_frame,
            } => {
                if version != versions::WIRE {
                    return Err(SdkError::Version {
                        ours: versions::WIRE,
                        theirs: version,
                    });
                }
                if max_frame == 0 {
                    return Err(SdkError::Protocol("welcome with a frame limit of 0".into()));
                }
                capsule.name = name;
                capsule.cid = cid;
                capsule.max_frame = max_frame;
                Ok(capsule)
            }
            // The supervisor refuses a hello (an unknown version) with an answer to id 0.
            Event::Answer {
                id: 0,
                result: Err(e),
            } => Err(SdkError::Refused {
                kind: e.kind,
                message: e.message,
            }),
            other => Err(SdkError::Protocol(format!(
                "expected a welcome, got {}",
                event_name(&other)
            ))),
        }
    }

    /// This capsule's name, as the supervisor knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This capsule's package CID.
    pub fn cid(&self) -> &str {
        &self.cid
    }

    /// The largest frame the supervisor accepts, in bytes.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// False once the socket closed or failed; buffered answers and incoming calls can still be
    /// collected.
    pub fn is_connected(&self) -> bool {
        self.dead.is_none()
    }

    /// How many calls were sent and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.calls.len() + self.answers.len()
    }

    /// Asks the supervisor for a token. The grant is also cached for later calls it covers.
    pub fn request_token(
        &mut self,
        resource: &str,
        actions: &[Action],
        reason: &str,
        ttl: Duration,
    ) -> Result<Grant, SdkError> {
        let ttl_seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let ttl_seconds = u32::try_from(ttl_seconds).unwrap_or(u32::MAX);
        let id = self.next_request;
        frames::request_token(&mut self.tx, id, resource, actions, reason, ttl_seconds)?;
        self.check_fits(resource.len() + reason.len())?;
        self.send_tx()?;
        self.next_request += 1;
        self.tokens.insert(id, None);
        let grant = self.block_on(|c| match c.tokens.get(&id) {
            Some(Some(_)) => c.tokens.remove(&id).flatten(),
            _ => None,
        })??;
        self.cache(grant.clone());
        Ok(grant)
    }

    /// Calls `told` whenever a token request (made by [`Capsule::request_token`], or by a call
    /// that needs a token) waits for the person to answer a prompt: the app may say it waits
    /// for permission. The request goes on waiting (up to the prompt's minute) for the answer.
    pub fn on_waiting(&mut self, told: impl FnMut() + Send + 'static) {
        self.waiting = Some(Box::new(told));
    }

    /// Uses `grant` for the calls it covers, instead of asking the supervisor for a token: a
    /// token the operator issued for this capsule (`elastos token issue --capsule NAME`) and
    /// handed to it. The supervisor checks it on every call like any other; a denied one is
    /// dropped, as a granted one is.
    pub fn add_grant(&mut self, grant: Grant) {
        self.cache(grant);
    }

    /// Calls `target` and waits for the answer.
    pub fn call(
        &mut self,
        target: &str,
        action: Action,
        payload: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let id = self.send_call(target, action, payload, None)?;
        self.wait(id)
    }

    /// Sends a call without waiting for its answer; collect it with [`Capsule::wait`] or
    /// [`Capsule::wait_any`]. Uses a cached token that covers the target and is not about to
    /// expire, or asks the supervisor for one first. `deadline` is capped by the supervisor;
    /// `None` takes its default.
    pub fn send_call(
        &mut self,
        target: &str,
        action: Action,
        payload: &[u8],
        deadline: Option<Duration>,
    ) -> Result<CallId, SdkError> {
        if let Some(d) = &self.dead {
            return Err(d.error());
        }
        self.check_payload(payload.len())?;
        let deadline_ms = match deadline {
            None => 0,
            // 0 on the wire means "the default", so a zero deadline is the shortest one instead.
            Some(d) => u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1),
        };
        let index = self.grant_for(target, action)?;
        let cached = &self.grants[index];
        let serial = cached.serial;
        let id = self.next_call;
        frames::call(
            &mut self.tx,
            id,
            target,
            action,
            &cached.grant.token,
            payload,
            deadline_ms,
        )?;
        self.check_fits(payload.len())?;
        self.send_tx()?;
        self.next_call += 1;
        self.calls.insert(id, serial);
        Ok(CallId(id))
    }

    /// Waits for the answer to one call. Frames for other calls and incoming calls that arrive
    /// meanwhile are kept for later. A `Transport` or `Protocol` error that is not the call's own
    /// answer leaves the call pending.
    pub fn wait(&mut self, id: CallId) -> Result<Vec<u8>, CallError> {
        loop {
            if let Some(result) = self.answers.remove(&id.0) {
                return result;
            }
            if !self.calls.contains_key(&id.0) {
                return Err(CallError::new(
                    ErrorKind::Protocol,
                    format!("call {id} is not in flight (never sent, or already collected)"),
                ));
            }
            match self.pump() {
                Ok(true) => {}
                Ok(false) => {
                    return Err(CallError::new(
                        ErrorKind::Transport,
                        format!("the supervisor closed the connection before answering call {id}"),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for whichever call is answered first (the oldest, if several already are).
    /// `Ok(None)` when no call is in flight; `Err` when the connection fails or the supervisor
    /// sends something that cannot be tied to one call.
    #[allow(clippy::type_complexity)]
    pub fn wait_any(&mut self) -> Result<Option<(CallId, Result<Vec<u8>, CallError>)>, SdkError> {
        loop {
            if let Some((id, result)) = self.answers.pop_first() {
                return Ok(Some((CallId(id), result)));
            }
            if self.calls.is_empty() {
                return Ok(None);
            }
            if !self.pump()? {
                return Err(SdkError::Closed);
            }
        }
    }

    /// Registers this capsule as the provider of `pattern` (e.g. `localhost://echo/*`). Asks for
    /// the "provide" capability first: a token granting `admin` on exactly the pattern.
    pub fn serve(&mut self, pattern: &str) -> Result<(), SdkError> {
        let grant = self.request_token(
            pattern,
            &[Action::Admin],
            &format!("provide {pattern}"),
            DEFAULT_TTL,
        )?;
        let id = self.next_request;
        frames::serve(&mut self.tx, id, pattern, &grant.token)?;
        self.check_fits(pattern.len())?;
        self.send_tx()?;
        self.next_request += 1;
        self.serves.insert(id, None);
        self.block_on(|c| match c.serves.get(&id) {
            Some(Some(_)) => c.serves.remove(&id).flatten(),
            _ => None,
        })?
    }

    /// The next call routed to this capsule; `None` once the supervisor closed the connection.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming>, SdkError> {
        loop {
            if let Some(incoming) = self.incoming.pop_front() {
                return Ok(Some(incoming));
            }
            if !self.pump()? {
                return Ok(None);
            }
        }
    }

    /// Answers an incoming call: `Ok(payload)`, or `Err(message)` for a provider error. A
    /// payload too large for one frame is refused with [`SdkError::TooLarge`], after telling the
    /// caller so with an error reply.
    pub fn reply(&mut self, id: u64, result: Result<Vec<u8>, String>) -> Result<(), SdkError> {
        match &result {
            Ok(payload) => match self.check_payload(payload.len()) {
                Ok(()) => frames::reply(&mut self.tx, id, Status::Ok, "", payload)?,
                Err(e) => return self.refuse_reply(id, e),
            },
            Err(message) => {
                let message = truncate(message, MAX_ERROR_MESSAGE);
                frames::reply(&mut self.tx, id, Status::ProviderError, message, &[])?
            }
        }
        let size = result.as_ref().map_or(0, Vec::len);
        if let Err(e) = self.check_fits(size) {
            return self.refuse_reply(id, e);
        }
        self.send_tx()
    }

    /// Answers every incoming call with `handler` until the supervisor closes the connection
    /// (`Ok`) or the connection fails (`Err`). A reply too large to send is turned into an error
    /// reply and does not stop the loop.
    pub fn handle_forever(
        &mut self,
        mut handler: impl FnMut(&Incoming) -> Result<Vec<u8>, String>,
    ) -> Result<(), SdkError> {
        while let Some(incoming) = self.next_incoming()? {
            let result = handler(&incoming);
            match self.reply(incoming.id, result) {
                Ok(()) | Err(SdkError::TooLarge { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// [`Capsule::serve`] then [`Capsule::handle_forever`].
    pub fn serve_forever(
        &mut self,
        pattern: &str,
        handler: impl FnMut(&Incoming) -> Result<Vec<u8>, String>,
    ) -> Result<(), SdkError> {
        self.serve(pattern)?;
        self.handle_forever(handler)
    }

    fn refuse_reply(&mut self, id: u64, e: SdkError) -> Result<(), SdkError> {
        frames::reply(&mut self.tx, id, Status::ProviderError, &e.to_string(), &[])?;
        self.send_tx()?;
        Err(e)
    }

    /// The index in the cache of a grant to call `target` with: a fresh cached one, or a new one.
    fn grant_for(&mut self, target: &str, action: Action) -> Result<usize, SdkError> {
        let now = (self.clock)();
        if let Some(i) = self
            .grants
            .iter()
            .position(|c| c.grant.covers(target, action) && c.fresh_at(now))
        {
            return Ok(i);
        }
        let grant =
            self.request_token(target, &[action], &format!("call {target}"), DEFAULT_TTL)?;
        // Just granted: used even if it looks stale, so a skewed clock cannot stop every call.
        self.grants
            .iter()
            .rposition(|c| c.grant == grant)
            .ok_or_else(|| SdkError::Protocol("a granted token vanished from the cache".into()))
    }

    fn cache(&mut self, grant: Grant) {
        let now = (self.clock)();
        self.grants.retain(|c| {
            c.grant.expiry > now
                && !(c.grant.resource == grant.resource
                    && c.grant.actions.iter().all(|a| grant.actions.contains(a)))
        });
        if self.grants.len() >= GRANT_CACHE {
            if let Some(oldest) =
                (0..self.grants.len()).min_by_key(|&i| self.grants[i].grant.expiry)
            {
                self.grants.swap_remove(oldest);
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.grants.push(Cached {
            grant,
            granted_at: now,
            serial,
        });
    }

    /// Before encoding: a payload alone larger than the limit cannot fit.
    fn check_payload(&self, size: usize) -> Result<(), SdkError> {
        if size > self.max_frame as usize {
            return Err(SdkError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// After encoding: the whole frame body in the send buffer must fit.
    fn check_fits(&self, size: usize) -> Result<(), SdkError> {
        if self.tx.len().saturating_sub(4) > self.max_frame as usize {
            return Err(SdkError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// Sends the frame in the send buffer.
    fn send_tx(&mut self) -> Result<(), SdkError> {
        if let Some(d) = &self.dead {
            return Err(d.error());
        }
        self.transport.send(&self.tx).map_err(|e| {
            self.dead = Some(Dead::Io(e.kind(), e.to_string()));
            SdkError::Io(e)
        })
    }

    /// Reads until `take` finds what it waits for.
    fn block_on<R>(&mut self, mut take: impl FnMut(&mut Self) -> Option<R>) -> Result<R, SdkError> {
        loop {
            if let Some(r) = take(self) {
                return Ok(r);
            }
            if !self.pump()? {
                return Err(SdkError::Closed);
            }
        }
    }

    /// Reads and files one frame. `Ok(false)` once the connection is closed.
    fn pump(&mut self) -> Result<bool, SdkError> {
        match &self.dead {
            Some(Dead::Closed) => return Ok(false),
            Some(d) => return Err(d.error()),
            None => {}
        }
        match self.transport.recv_into(&mut self.rx) {
            Ok(true) => {}
            Ok(false) => {
                self.dead = Some(Dead::Closed);
                return Ok(false);
            }
            // A frame that could not be read leaves the stream out of step: nothing after it can
            // be trusted. One that was read but does not decode spoils only itself.
            Err(FrameError::Io(e)) => {
                self.dead = Some(Dead::Io(e.kind(), e.to_string()));
                return Err(SdkError::Io(e));
            }
            Err(e @ FrameError::TooLong { .. }) => {
                let dead = Dead::Protocol(e.to_string());
                let err = dead.error();
                self.dead = Some(dead);
                return Err(err);
            }
            Err(e @ FrameError::Malformed(_)) => return Err(SdkError::Protocol(e.to_string())),
        }
        let event = frames::parse(self.rx.bytes(), &mut self.last_caller)?;
        self.file(event)?;
        Ok(true)
    }

    fn file(&mut self, event: Event) -> Result<(), SdkError> {
        match event {
            Event::Answer { id: 0, result } => Err(match result {
                // The supervisor reports a frame it could not use with an answer to id 0.
                Err(e) => SdkError::Refused {
                    kind: e.kind,
                    message: e.message,
                },
                Ok(_) => SdkError::Protocol("an answer to call 0, which was never sent".into()),
            }),
            Event::Answer { id, result } => {
                let Some(serial) = self.calls.remove(&id) else {
                    return Err(SdkError::Protocol(format!(
                        "an answer to call {id}, which is not in flight"
                    )));
                };
                // A denied token (revoked, or the policy changed) must not be reused.
                if matches!(&result, Err(e) if e.kind == ErrorKind::Denied) {
                    self.grants.retain(|c| c.serial != serial);
                }
                self.answers.insert(id, result);
                Ok(())
            }
            // Only the fact: which prompt, and its answer, are the person's and the supervisor's.
            Event::TokenPending { id } => match self.tokens.get(&id) {
                Some(None) => {
                    if let Some(told) = self.waiting.as_mut() {
                        told();
                    }
                    Ok(())
                }
                _ => Err(SdkError::Protocol(format!(
                    "a pending token reply to request {id}, which is not pending"
                ))),
            },
            Event::TokenReply { id, result } => match self.tokens.get_mut(&id) {
                Some(slot @ None) => {
                    *slot = Some(result);
                    Ok(())
                }
                _ => Err(SdkError::Protocol(format!(
                    "a token reply to request {id}, which is not pending"
                ))),
            },
            Event::ServeReply { id, result } => match self.serves.get_mut(&id) {
                Some(slot @ None) => {
                    *slot = Some(result);
                    Ok(())
                }
                _ => Err(SdkError::Protocol(format!(
                    "a serve reply to request {id}, which is not pending"
                ))),
            },
            Event::Incoming(incoming) => {
                self.incoming.push_back(incoming);
                Ok(())
            }
            Event::Unservable { id, why } => {
                frames::reply(&mut self.tx, id, Status::ProviderError, &why, &[])?;
                self.send_tx()
            }
            Event::Chunk => Ok(()),
            Event::Shell(e) => {
                self.shell.push_back(e);
                Ok(())
            }
            // Unreadable, it is denied; without an id, there is nothing to answer.
            Event::ShellUnreadable { id: Some(id), why } => self.answer_policy(
                &id,
                &PolicyAnswer::Deny(format!("the shell could not read the request: {why}")),
            ),
            Event::ShellUnreadable { id: None, .. } => Ok(()),
            Event::Welcome { .. } => Err(SdkError::Protocol("a second welcome".into())),
        }
    }

    #[cfg(test)]
    fn set_clock(&mut self, clock: impl Fn() -> i64 + Send + 'static) {
        self.clock = Box::new(clock);
    }
}

fn frame_error(e: FrameError) -> SdkError {
    match e {
        FrameError::Io(e) => SdkError::Io(e),
        other => SdkError::Protocol(other.to_string()),
    }
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Welcome { .. } => "a welcome",
        Event::Answer { .. } => "an answer",
        Event::TokenReply { .. } | Event::TokenPending { .. } => "a token reply",
        Event::ServeReply { .. } => "a serve reply",
        Event::Incoming(_) | Event::Unservable { .. } => "an incoming call",
        Event::Chunk => "a chunk",
        Event::Shell(_) | Event::ShellUnreadable { .. } => "a request to the shell",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
