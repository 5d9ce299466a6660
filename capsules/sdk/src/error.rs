//! The SDK's two error types: [`SdkError`] for everything but the outcome of a call, and
//! [`CallError`] for that outcome, which a caller usually wants to match on by [`ErrorKind`].

use std::fmt;
use std::io;

use elastos_schema::wire_capnp::Status;

/// Why a call (or a request to the supervisor) did not succeed: the wire `Status` values other
/// than `ok`, plus the failures that happen on this side of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A token check failed; the message names the check and the reason.
    Denied,
    /// No provider serves the URI.
    NotFound,
    /// Too many calls in flight; retry later.
    Busy,
    /// The provider did not answer before the deadline.
    Timeout,
    /// The provider is down or restarting, or the supervisor cannot audit.
    Unavailable,
    /// The supervisor could not make sense of a frame.
    BadRequest,
    /// The provider answered with an error.
    ProviderError,
    /// The payload does not fit one frame (chunk streams are not supported yet).
    TooLarge,
    /// The socket failed or was closed.
    Transport,
    /// The supervisor sent something this SDK cannot use.
    Protocol,
}

impl ErrorKind {
    /// `None` for `ok`, which is not an error.
    pub(crate) fn from_wire(status: Status) -> Option<ErrorKind> {
        Some(match status {
            Status::Ok => return None,
            Status::Denied => ErrorKind::Denied,
            Status::NotFound => ErrorKind::NotFound,
            Status::Busy => ErrorKind::Busy,
            Status::Timeout => ErrorKind::Timeout,
            Status::Unavailable => ErrorKind::Unavailable,
            Status::BadRequest => ErrorKind::BadRequest,
            Status::ProviderError => ErrorKind::ProviderError,
            // Only a token request may be told to wait (`Event::TokenPending`).
            Status::Pending => ErrorKind::Protocol,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::NotFound => "not found",
            ErrorKind::Busy => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::ProviderError => "provider error",
            ErrorKind::TooLarge => "too large",
            ErrorKind::Transport => "transport",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failed outcome of one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallError {
    pub kind: ErrorKind,
    /// The supervisor's or provider's reason, or this SDK's.
    pub message: String,
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
        }
    }

    /// Whether the same call may succeed later without any change: nobody serves the URI yet,
    /// the provider is restarting, or the supervisor is busy.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Busy
        )
    }
}

/// Everything that can go wrong outside a call's own outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The supervisor said no: a token or `serve` request was refused, or it refused a frame.
    #[error("{kind}: {message}")]
    Refused { kind: ErrorKind, message: String },
    /// A frame would exceed the supervisor's limit. Chunk streams will lift this later.
    #[error(
        "a payload of {size} bytes does not fit the supervisor's frame limit of {max} bytes \
         (chunk streams are not supported yet)"
    )]
    TooLarge { size: usize, max: u32 },
    /// The supervisor sent a frame this SDK cannot use. Unless the connection also failed (see
    /// [`crate::Capsule::is_connected`]), later frames are still read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The supervisor's `welcome` names a wire version this SDK does not speak.
    #[error("the supervisor speaks wire protocol version {theirs}; this SDK speaks {ours}")]
    Version { ours: u16, theirs: u16 },
    /// The supervisor closed the socket.
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("i/o on the capsule socket: {0}")]
    Io(#[from] io::Error),
    /// The process was not started the way the runtime starts capsules.
    #[error("{0}")]
    Env(String),
}

impl From<SdkError> for CallError {
    fn from(e: SdkError) -> Self {
        let kind = match &e {
            SdkError::Refused { kind, .. } => *kind,
            SdkError::TooLarge { .. } => ErrorKind::TooLarge,
            SdkError::Protocol(_) | SdkError::Version { .. } => ErrorKind::Protocol,
            SdkError::Closed | SdkError::Io(_) | SdkError::Env(_) => ErrorKind::Transport,
        };
        let message = match e {
            SdkError::Refused { message, .. } => message,
            other => other.to_string(),
        };
        CallError { kind, message }
    }
}
