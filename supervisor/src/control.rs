//! The control protocol between the `elastos` command line and a running supervisor.
//!
//! JSON Lines over `$ELASTOS_HOME/control.sock` (mode 0600; the supervisor also checks the peer's
//! uid). Each connection carries one request line and then response lines: one [`Response`], and
//! for an attached `run` a stream of [`Event`]s ending with `exit`. JSON rather than Cap'n Proto
//! because this socket is for operators and scripts, never for capsules, and a person can debug it
//! with `socat`. The capsule wire protocol is a separate, binary contract (`schema/wire.capnp`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::home::Home;

/// File name of the control socket inside `$ELASTOS_HOME`.
pub const SOCKET_NAME: &str = "control.sock";
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// One request. `op` names it on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Ps,
    Run(RunRequest),
    Kill {
        name: String,
        signal: String,
    },
    Stop {
        name: String,
    },
    Start {
        name: String,
    },
    Restart {
        name: String,
    },
    Down {
        timeout_ms: u64,
    },
    /// On an attached run connection: deliver a signal to the capsule.
    Signal {
        signal: String,
    },
    /// On an interactive run connection: bytes for the capsule's stdin (base64).
    Stdin {
        data: String,
    },
    StdinClose,
    /// The trust-core commands, while the supervisor holds the state lock.
    Issue(IssueParams),
    Delegate(DelegateParams),
    Revoke {
        id: String,
    },
    RevokeAll,
    TrustAdd {
        did: String,
        /// What the DID is trusted as (an issuer when left out).
        #[serde(default)]
        kind: TrustKind,
    },
    TrustRm {
        did: String,
    },
    TrustLs,
    /// `elastos policy reload`: hand the running shell the node's policy file again.
    PolicyReload,
    /// `elastos policy explain`: what the shell would decide for this request, and why.
    PolicyExplain {
        name: String,
        #[serde(default)]
        cid: Option<String>,
        resource: String,
        actions: String,
    },
    /// `elastos prompts`: the prompts waiting for the person.
    Prompts,
    /// `elastos grants`: the standing grants.
    Grants,
    /// `elastos revoke GRANT_ID`: a standing grant and the tokens minted under it.
    RevokeGrant {
        id: String,
    },
    /// `elastos shell`: the prompts waiting, sent now and again whenever they change, on this
    /// connection until it closes.
    WatchPrompts,
    /// `elastos allow ID` / `elastos deny ID`: the person's answer to one prompt.
    PromptAnswer {
        id: String,
        answer: PromptDecision,
    },
    /// `elastos audit prune --before SEQ`.
    AuditPrune {
        before: u64,
    },
}

/// The person's answer to a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptDecision {
    /// Allowed for the capsule instance that asked: its tokens end when it does.
    AllowOnce,
    /// Allowed now and whenever the same capsule asks the same again until the supervisor
    /// stops (a session grant).
    AllowSession,
    /// Allowed now and whenever the same capsule asks the same again (a standing grant).
    AllowAlways,
    Deny,
    /// Denied now and whenever the same capsule asks the same again (a standing grant).
    DenyAlways,
}

/// What `elastos trust add` makes of a DID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustKind {
    /// Its tokens are accepted here.
    #[default]
    Issuer,
    /// A known publisher: its packages may run, under the node's policy.
    Publisher,
    /// A first-party publisher: its packages are treated as this node's own.
    FirstParty,
}

impl TrustKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustKind::Issuer => "issuer",
            TrustKind::Publisher => "publisher",
            TrustKind::FirstParty => "first-party",
        }
    }

    /// Makes `did` this kind in `authority` (the caller has recorded it first). Returns false
    /// if it already was.
    pub fn apply(
        self,
        authority: &mut crate::authority::Authority,
        did: &str,
    ) -> Result<bool, crate::authority::AuthorityError> {
        use crate::authority::PublisherKind;
        match self {
            TrustKind::Issuer => authority.trust_add(did),
            TrustKind::Publisher => authority.publisher_add(did, PublisherKind::Known),
            TrustKind::FirstParty => authority.publisher_add(did, PublisherKind::FirstParty),
        }
    }

    /// The words of its `trust.add` audit record.
    pub fn audit_reason(self) -> &'static str {
        match self {
            TrustKind::Issuer => "issuer trusted",
            TrustKind::Publisher => "publisher known: its packages may run, under policy",
            TrustKind::FirstParty => {
                "publisher first party: its packages are treated as this node's own"
            }
        }
    }
}

/// What `elastos run` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// A package file on this machine (the CLI packs a directory first), or a stored name.
    pub source: RunSource,
    pub name: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Stream output and the exit code on this connection.
    #[serde(default)]
    pub attach: bool,
    /// Forward stdin from this connection.
    #[serde(default)]
    pub interactive: bool,
    /// always, on-failure or never; default on-failure for a detached capsule, never attached.
    #[serde(default)]
    pub restart: Option<String>,
    /// `native` or `wasm`: run the manifest's entrypoint for that substrate instead of its
    /// default.
    #[serde(default)]
    pub substrate: Option<String>,
    /// Store it even if it is older than the version stored from the same publisher.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// `URI:ACTIONS` the developer allows for this session, answering the capsule's prompts
    /// before they are asked.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunSource {
    Package(PathBuf),
    Stored(String),
}

/// `elastos token issue` through the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueParams {
    pub subject_name: String,
    pub subject_cid: Option<String>,
    pub resource: String,
    pub actions: String,
    pub ttl_secs: u64,
    pub max_uses: u64,
    pub classification: String,
    pub delegatable: bool,
    pub not_before: Option<i64>,
}

/// `elastos token delegate` while the supervisor holds the state lock; `None` keeps the
/// parent's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DelegateParams {
    pub parent: String,
    pub subject_name: Option<String>,
    pub subject_cid: Option<String>,
    pub resource: Option<String>,
    pub actions: Option<String>,
    pub ttl_secs: Option<u64>,
    pub max_uses: Option<u64>,
    pub classification: Option<String>,
    pub delegatable: bool,
}

/// The first line of every answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code the CLI should use when `ok` is false (1 failed, 2 usage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            code: None,
            data,
        }
    }
    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            code: Some(1),
            data: serde_json::Value::Null,
        }
    }
}

/// What follows an attached run's response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Output of the capsule; `data` is text with invalid UTF-8 replaced.
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The capsule ended: its exit code, 128+N for signal N.
    Exit {
        code: i32,
    },
    /// The supervisor (never the capsule) says a request of the capsule waits for the person.
    Prompt {
        id: String,
        capsule: String,
        actions: String,
        resource: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no supervisor is running for {home} (start one with `elastos up`)")]
    NotRunning { home: PathBuf },
    #[error("the control socket path {path} is {len} bytes, longer than a Unix socket allows ({MAX_SOCKET_PATH}); set ELASTOS_HOME to a shorter directory")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("talking to the supervisor: {0}")]
    Io(#[from] std::io::Error),
    #[error("the supervisor answered something this elastos does not understand: {0}")]
    Protocol(String),
}

/// The control socket's path, refusing one the kernel cannot bind.
pub fn socket_path(home: &Home) -> Result<PathBuf, ControlError> {
    let path = home.root().join(SOCKET_NAME);
    check_path(&path)?;
    Ok(path)
}

fn check_path(path: &Path) -> Result<(), ControlError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ControlError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// A blocking connection to the supervisor, as the CLI uses it.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects, or says that no supervisor runs (a missing socket, or one nobody listens on).
    pub fn connect(home: &Home) -> Result<Client, ControlError> {
        let path = socket_path(home)?;
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning {
                    home: home.root().to_path_buf(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request line.
    pub fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Reads the next line as `T`; `None` when the supervisor closed the connection.
    pub fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ControlError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ControlError::Protocol(format!("{e}: {}", line.trim_end())))
    }

    /// One request, one response.
    pub fn request(&mut self, req: &Request) -> Result<Response, ControlError> {
        if let Err(sent) = self.send(req) {
            // A supervisor that refuses the connection (too many open) says why and closes it,
            // and may have closed it before the request went out: its reason is still there
            // to read, and says more than a broken pipe.
            return match self.recv::<Response>() {
                Ok(Some(r)) => Ok(r),
                _ => Err(sent),
            };
        }
        self.recv()?.ok_or_else(|| {
            ControlError::Protocol("the supervisor closed the connection without answering".into())
        })
    }

    /// A second handle for writing while another thread reads.
    pub fn writer(&self) -> Result<UnixStream, ControlError> {
        Ok(self.writer.try_clone()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let line = serde_json::to_string(&Request::Kill {
            name: "echo".into(),
            signal: "TERM".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"kill","name":"echo","signal":"TERM"}"#);
        let back: Request = serde_json::from_str(r#"{"op":"down","timeout_ms":10000}"#).unwrap();
        assert!(matches!(back, Request::Down { timeout_ms: 10000 }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"fly"}"#).is_err());
    }

    #[test]
    fn a_socket_path_too_long_is_refused_with_advice() {
        let home = Home::at(PathBuf::from(format!("/tmp/{}", "x".repeat(120))));
        let err = socket_path(&home).unwrap_err().to_string();
        assert!(err.contains("ELASTOS_HOME"), "{err}");
    }

    #[test]
    fn no_supervisor_is_its_own_error() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().to_path_buf());
        assert!(matches!(
            Client::connect(&home),
            Err(ControlError::NotRunning { .. })
        ));
    }
}
