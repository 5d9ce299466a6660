//! Building the frames a capsule sends and reading the frames it receives into owned values.
//! Reading never panics: anything unexpected becomes an error naming what was wrong.

use std::sync::Arc;
use std::time::Duration;

use elastos_schema::wire_capnp::{frame, Status};
use elastos_schema::{token_capnp, wire, Action};

use crate::{CallError, Caller, ErrorKind, Grant, Incoming, SdkError};

/// Builds one frame sized for `variable` bytes of fields (see [`wire::builder_for`]) and
/// encodes it into `out`, the capsule's reused send buffer, in place of what it held.
pub(crate) fn build(
    out: &mut Vec<u8>,
    variable: usize,
    fill: impl FnOnce(frame::Builder<'_>) -> capnp::Result<()>,
) -> Result<(), SdkError> {
    out.clear();
    let mut m = wire::builder_for(variable);
    fill(m.init_root::<frame::Builder>())
        .map_err(|e| SdkError::Protocol(format!("building a frame: {e}")))?;
    wire::encode_into(&m, out, u32::MAX)
        .map_err(|e| SdkError::Protocol(format!("encoding a frame: {e}")))
}

pub(crate) fn hello(out: &mut Vec<u8>, version: u16, sdk: &str) -> Result<(), SdkError> {
    build(out, sdk.len(), |f| {
        let mut h = f.init_hello();
        h.set_version(version);
        h.set_sdk(sdk);
        Ok(())
    })
}

pub(crate) fn call(
    out: &mut Vec<u8>,
    id: u64,
    target: &str,
    action: Action,
    token: &[u8],
    payload: &[u8],
    deadline_ms: u32,
) -> Result<(), SdkError> {
    build(out, target.len() + token.len() + payload.len(), |f| {
        let mut c = f.init_call();
        c.set_id(id);
        c.set_target(target);
        c.set_action(token_capnp::Action::from(action));
        c.set_token(token);
        c.set_payload(payload);
        c.set_deadline_ms(deadline_ms);
        Ok(())
    })
}

pub(crate) fn request_token(
    out: &mut Vec<u8>,
    id: u64,
    resource: &str,
    actions: &[Action],
    reason: &str,
    ttl_seconds: u32,
) -> Result<(), SdkError> {
    build(
        out,
        resource.len() + reason.len() + actions.len() * 2,
        |f| {
            let mut r = f.init_request_token();
            r.set_id(id);
            r.set_resource(resource);
            r.set_reason(reason);
            r.set_ttl_seconds(ttl_seconds);
            let n = u32::try_from(actions.len())
                .map_err(|_| capnp::Error::failed("too many actions".into()))?;
            let mut list = r.init_actions(n);
            for (i, a) in (0..n).zip(actions) {
                list.set(i, token_capnp::Action::from(*a));
            }
            Ok(())
        },
    )
}

pub(crate) fn serve(
    out: &mut Vec<u8>,
    id: u64,
    pattern: &str,
    token: &[u8],
) -> Result<(), SdkError> {
    build(out, pattern.len() + token.len(), |f| {
        let mut s = f.init_serve();
        s.set_id(id);
        s.set_pattern(pattern);
        s.set_token(token);
        Ok(())
    })
}

pub(crate) fn reply(
    out: &mut Vec<u8>,
    id: u64,
    status: Status,
    message: &str,
    payload: &[u8],
) -> Result<(), SdkError> {
    build(out, message.len() + payload.len(), |f| {
        let mut r = f.init_reply();
        r.set_id(id);
        r.set_status(status);
        r.set_message(message);
        r.set_payload(payload);
        Ok(())
    })
}

/// A received frame, read out of its message.
#[derive(Debug)]
pub(crate) enum Event {
    Welcome {
        version: u16,
        name: String,
        cid: String,
        max_frame: u32,
    },
    Answer {
        id: u64,
        result: Result<Vec<u8>, CallError>,
    },
    TokenReply {
        id: u64,
        result: Result<Grant, SdkError>,
    },
    /// A token request waits for the person; its reply follows.
    TokenPending {
        id: u64,
    },
    ServeReply {
        id: u64,
        result: Result<(), SdkError>,
    },
    Incoming(Incoming),
    /// An incoming call this SDK cannot hand to the capsule; it is answered with an error.
    Unservable {
        id: u64,
        why: String,
    },
    /// Part of a stream. Streams are not supported yet, and whatever they belonged to has
    /// already failed, so chunks are dropped.
    Chunk,
    /// To the node's shell: something to decide, or the policy to decide with.
    Shell(crate::ShellEvent),
    /// A request to decide that this SDK cannot read: denied at once, with why.
    ShellUnreadable {
        id: Option<[u8; crate::shell::ID_LEN]>,
        why: String,
    },
}

fn protocol(what: &str, e: impl std::fmt::Display) -> SdkError {
    SdkError::Protocol(format!("{what}: {e}"))
}

fn text(what: &str, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, SdkError> {
    let t = t.map_err(|e| protocol(what, e))?;
    t.to_string().map_err(|_| protocol(what, "not UTF-8"))
}

/// Human-readable text is shown, not interpreted: invalid UTF-8 is replaced, not refused.
fn lossy(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn status_of(
    what: &str,
    s: Result<Status, capnp::NotInSchema>,
) -> Result<Option<ErrorKind>, SdkError> {
    s.map(ErrorKind::from_wire)
        .map_err(|e| protocol(what, format!("unknown status {}", e.0)))
}

/// Text of a caller field, borrowed from the frame.
fn text_ref<'a>(
    what: &str,
    t: capnp::Result<capnp::text::Reader<'a>>,
) -> Result<&'a str, SdkError> {
    let t = t.map_err(|e| protocol(what, e))?;
    t.to_str().map_err(|_| protocol(what, "not UTF-8"))
}

/// Reads one frame body from the supervisor. `last_caller` is the caller of the previous
/// incoming call: a provider mostly hears from the same few, and shares it rather than copying
/// three strings per call.
pub(crate) fn parse(body: &[u8], last_caller: &mut Option<Arc<Caller>>) -> Result<Event, SdkError> {
    let msg = wire::decode(body).map_err(|e| SdkError::Protocol(e.to_string()))?;
    let root = msg
        .get_root::<frame::Reader>()
        .map_err(|e| protocol("frame", e))?;
    let which = root
        .which()
        .map_err(|e| protocol("frame", format!("unknown kind {}", e.0)))?;
    match which {
        frame::Which::Welcome(w) => {
            let w = w.map_err(|e| protocol("welcome", e))?;
            Ok(Event::Welcome {
                version: w.get_version(),
                name: text("welcome name", w.get_name())?,
                cid: text("welcome cid", w.get_cid())?,
                max_frame: w.get_max_frame(),
            })
        }
        frame::Which::Answer(a) => {
            let a = a.map_err(|e| protocol("answer", e))?;
            let id = a.get_id();
            let result = match status_of("answer", a.get_status()) {
                Err(e) => Err(CallError::new(ErrorKind::Protocol, e.to_string())),
                Ok(Some(kind)) => Err(CallError::new(kind, lossy(a.get_message()))),
                Ok(None) if a.get_stream() != 0 => Err(CallError::new(
                    ErrorKind::Protocol,
                    "the answer is a chunk stream, which this SDK does not support yet",
                )),
                Ok(None) => match a.get_payload() {
                    Ok(p) => Ok(p.to_vec()),
                    Err(e) => Err(CallError::new(
                        ErrorKind::Protocol,
                        format!("answer payload: {e}"),
                    )),
                },
            };
            Ok(Event::Answer { id, result })
        }
        frame::Which::TokenReply(t) => {
            let t = t.map_err(|e| protocol("tokenReply", e))?;
            let id = t.get_id();
            if t.get_status() == Ok(Status::Pending) {
                return Ok(Event::TokenPending { id });
            }
            let result = (|| match status_of("tokenReply", t.get_status())? {
                Some(kind) => Err(SdkError::Refused {
                    kind,
                    message: lossy(t.get_message()),
                }),
                None => {
                    let token = t.get_token().map_err(|e| protocol("tokenReply token", e))?;
                    if token.is_empty() {
                        return Err(protocol("tokenReply", "granted without a token"));
                    }
                    let list = t
                        .get_actions()
                        .map_err(|e| protocol("tokenReply actions", e))?;
                    let mut actions = Vec::with_capacity(list.len() as usize);
                    for a in list.iter() {
                        let a = a.map_err(|e| {
                            protocol("tokenReply actions", format!("unknown action {}", e.0))
                        })?;
                        actions.push(Action::from(a));
                    }
                    Ok(Grant {
                        token: token.to_vec(),
                        resource: text("tokenReply resource", t.get_resource())?,
                        actions,
                        expiry: t.get_expiry(),
                    })
                }
            })();
            Ok(Event::TokenReply { id, result })
        }
        frame::Which::ServeReply(s) => {
            let s = s.map_err(|e| protocol("serveReply", e))?;
            let result = match status_of("serveReply", s.get_status())? {
                None => Ok(()),
                Some(kind) => Err(SdkError::Refused {
                    kind,
                    message: lossy(s.get_message()),
                }),
            };
            Ok(Event::ServeReply {
                id: s.get_id(),
                result,
            })
        }
        frame::Which::Incoming(i) => {
            let i = i.map_err(|e| protocol("incoming", e))?;
            let id = i.get_id();
            let mut read = || -> Result<Incoming, SdkError> {
                if i.get_stream() != 0 {
                    return Err(SdkError::Protocol(
                        "the payload is a chunk stream, which this provider's SDK does not \
                         support yet"
                            .into(),
                    ));
                }
                let caller = i.get_caller().map_err(|e| protocol("incoming caller", e))?;
                let action = i
                    .get_action()
                    .map_err(|e| protocol("incoming", format!("unknown action {}", e.0)))?;
                let deadline_ms = i.get_deadline_ms();
                let (name, cid, publisher) = (
                    text_ref("caller name", caller.get_name())?,
                    text_ref("caller cid", caller.get_cid())?,
                    text_ref("caller publisher", caller.get_publisher())?,
                );
                let caller = match last_caller {
                    Some(c) if c.name == name && c.cid == cid && c.publisher == publisher => {
                        c.clone()
                    }
                    _ => {
                        let c = Arc::new(Caller {
                            name: name.to_string(),
                            cid: cid.to_string(),
                            publisher: publisher.to_string(),
                        });
                        *last_caller = Some(c.clone());
                        c
                    }
                };
                Ok(Incoming {
                    id,
                    caller,
                    action: Action::from(action),
                    resource: text("incoming resource", i.get_resource())?,
                    payload: i
                        .get_payload()
                        .map_err(|e| protocol("incoming payload", e))?
                        .to_vec(),
                    deadline: (deadline_ms != 0)
                        .then(|| Duration::from_millis(u64::from(deadline_ms))),
                })
            };
            Ok(match read() {
                Ok(incoming) => Event::Incoming(incoming),
                Err(e) => Event::Unservable {
                    id,
                    why: e.to_string(),
                },
            })
        }
        frame::Which::Chunk(_) => Ok(Event::Chunk),
        frame::Which::PolicyRequest(r) => {
            let r = r.map_err(|e| protocol("policyRequest", e))?;
            Ok(match crate::shell::read_request(r) {
                Ok(req) => Event::Shell(crate::ShellEvent::Decide(Box::new(req))),
                Err((id, why)) => Event::ShellUnreadable { id, why },
            })
        }
        frame::Which::PolicyLoad(l) => {
            let l = l.map_err(|e| protocol("policyLoad", e))?;
            if l.get_version() != elastos_schema::versions::POLICY {
                return Err(protocol(
                    "policyLoad",
                    format!("decision protocol version {} is unknown", l.get_version()),
                ));
            }
            Ok(Event::Shell(crate::ShellEvent::Load(text(
                "policyLoad text",
                l.get_text(),
            )?)))
        }
        frame::Which::Hello(_)
        | frame::Which::Call(_)
        | frame::Which::RequestToken(_)
        | frame::Which::Serve(_)
        | frame::Which::PolicyAnswer(_)
        | frame::Which::PolicyLoaded(_)
        | frame::Which::Reply(_) => Err(SdkError::Protocol(
            "the supervisor sent a frame only capsules send".into(),
        )),
    }
}
