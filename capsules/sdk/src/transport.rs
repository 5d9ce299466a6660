//! How frames move between a capsule and its supervisor. The protocol logic in [`crate::Capsule`]
//! only sees whole frames, so a substrate (native process, WebAssembly host) supplies nothing but
//! a [`Transport`].

use std::io;

use elastos_schema::wire::{FrameBuf, FrameError};

/// A blocking, ordered, reliable carrier of frames.
pub trait Transport {
    /// Writes one encoded frame (length prefix included, as made by `wire::encode`).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Reads one frame body (without its length prefix); `None` at a clean end of stream.
    fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError>;
    /// Reads one frame body into `buf`, reused from frame to frame; `false` at a clean end of
    /// stream. The SDK reads every frame this way: a transport that can fill `buf` directly
    /// saves an allocation and a copy per frame.
    fn recv_into(&mut self, buf: &mut FrameBuf) -> Result<bool, FrameError> {
        match self.recv()? {
            Some(body) => {
                buf.prepare(body.len()).copy_from_slice(&body);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send(frame)
    }
    fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        (**self).recv()
    }
    fn recv_into(&mut self, buf: &mut FrameBuf) -> Result<bool, FrameError> {
        (**self).recv_into(buf)
    }
}

#[cfg(unix)]
pub use unix::{UnixTransport, SOCKET_FD_ENV};

#[cfg(unix)]
mod unix {
    use std::io::{self, BufReader, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    use elastos_schema::wire::{self, FrameError};

    use super::Transport;
    use crate::SdkError;

    /// The environment variable naming the descriptor of the pre-connected capsule socket.
    pub const SOCKET_FD_ENV: &str = "ELASTOS_SOCKET_FD";

    /// The inherited descriptor may be wrapped once: a second owner would close it under the
    /// first.
    static TAKEN: AtomicBool = AtomicBool::new(false);

    /// A Unix stream socket to the supervisor.
    pub struct UnixTransport {
        // Buffered for reads only; writes go straight to the socket through `get_mut`, one
        // `write_all` per frame.
        stream: BufReader<Polled>,
        max: u32,
    }

    /// The socket's read side, waiting for input in poll(2) rather than in recv(2).
    ///
    /// Linux wakes every task asleep on a Unix stream socket whenever the peer consumes data
    /// this side sent (there is room to write again), and a task asleep in recv(2) cannot tell
    /// that from input: a capsule waiting for its answer would be woken, and switched to, for
    /// nothing each time the supervisor reads its call. poll(2) wakes only for the events it
    /// asks for.
    struct Polled(UnixStream);

    impl Read for Polled {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut p = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: poll(2) on one pollfd that outlives the call.
                #[allow(unsafe_code)]
                let r = unsafe { libc::poll(&mut p, 1, -1) };
                if r >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // Input, end of stream or an error: the read does not wait.
            self.0.read(buf)
        }
    }

    impl UnixTransport {
        /// Wraps a connected stream; frames longer than `wire::MAX_FRAME` are refused.
        pub fn new(stream: UnixStream) -> Self {
            UnixTransport {
                stream: BufReader::with_capacity(64 * 1024, Polled(stream)),
                max: wire::MAX_FRAME,
            }
        }

        /// Takes the socket the runtime handed to this process: the descriptor named by
        /// `ELASTOS_SOCKET_FD`. Works once per process.
        pub fn from_env() -> Result<Self, SdkError> {
            let raw = std::env::var(SOCKET_FD_ENV).map_err(|_| {
                SdkError::Env(format!(
                    "{SOCKET_FD_ENV} is not set: a capsule must be started by the elastos supervisor"
                ))
            })?;
            // 0..=2 are stdio: the runtime never passes the socket there, so such a value is a
            // mistake that would otherwise turn stdin into "the supervisor".
            let fd: RawFd = raw
                .trim()
                .parse()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| {
                    SdkError::Env(format!(
                        "{SOCKET_FD_ENV}={raw:?} is not a descriptor number above 2"
                    ))
                })?;
            if TAKEN.swap(true, Ordering::SeqCst) {
                return Err(SdkError::Env(
                    "the capsule socket was already taken by this process".into(),
                ));
            }
            // SAFETY: the runtime hands this process the descriptor named by ELASTOS_SOCKET_FD as
            // its pre-connected capsule socket; nothing else in the process owns it, and `TAKEN`
            // guarantees it is wrapped at most once.
            #[allow(unsafe_code)]
            let inherited = unsafe { UnixStream::from_raw_fd(fd) };
            // SO_ERROR fails on a descriptor that is not an open socket. Such a descriptor was
            // never ours: give it back untouched rather than close it.
            if let Err(e) = inherited.take_error() {
                let _ = inherited.into_raw_fd();
                TAKEN.store(false, Ordering::SeqCst);
                return Err(SdkError::Env(format!(
                    "{SOCKET_FD_ENV}={fd} is not an open socket: {e}"
                )));
            }
            // The inherited descriptor survives exec; a close-on-exec duplicate keeps children
            // this capsule may start from speaking to the supervisor as the capsule.
            let stream = inherited.try_clone()?;
            drop(inherited);
            Ok(UnixTransport::new(stream))
        }
    }

    impl Transport for UnixTransport {
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            self.stream.get_mut().0.write_all(frame)
        }

        fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
            wire::read_frame(&mut self.stream, self.max)
        }

        fn recv_into(&mut self, buf: &mut wire::FrameBuf) -> Result<bool, FrameError> {
            wire::read_frame_into(&mut self.stream, self.max, buf)
        }
    }

    #[cfg(test)]
    mod tests {
        use std::io::{Read, Write};
        use std::time::Duration;

        use super::*;

        /// This thread's voluntary context switches so far.
        fn switches() -> i64 {
            // SAFETY: getrusage(2) fills the zeroed struct it is given.
            #[allow(unsafe_code)]
            unsafe {
                let mut u: libc::rusage = std::mem::zeroed();
                assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
                u.ru_nvcsw
            }
        }

        fn frame(byte: u8) -> Vec<u8> {
            let mut f = 8u32.to_le_bytes().to_vec();
            f.extend([byte; 8]);
            f
        }

        /// A capsule waiting for its answer sleeps until the answer comes: the supervisor
        /// reading its call (which tells the kernel there is room to write) does not wake it.
        #[test]
        fn a_waiting_capsule_is_woken_by_its_answer_only() {
            const ROUNDS: i64 = 40;
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let capsule = std::thread::spawn(move || {
                // SAFETY: gettid(2) has no arguments and cannot fail.
                #[allow(unsafe_code)]
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let mut t = UnixTransport::new(ours);
                let mut buf = wire::FrameBuf::new();
                let before = switches();
                for i in 0..ROUNDS {
                    t.send(&frame(i as u8)).unwrap();
                    assert!(t.recv_into(&mut buf).unwrap());
                    assert_eq!(buf.bytes(), [i as u8; 8]);
                }
                switches() - before
            });
            let tid = tid_rx.recv().unwrap();
            // Each step happens while the capsule is asleep (state S), as it is when its
            // supervisor is slower than it: seen in /proc, not waited for by a guessed time.
            let asleep = || {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let stat =
                        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
                    // The state follows the command name, which is in parentheses.
                    if stat.rsplit_once(") ").map(|(_, r)| r.as_bytes()[0]) == Some(b'S') {
                        return;
                    }
                    assert!(std::time::Instant::now() < deadline, "never slept: {stat}");
                    std::thread::yield_now();
                }
            };
            let mut call = [0u8; 12];
            for i in 0..ROUNDS {
                asleep();
                theirs.read_exact(&mut call).unwrap();
                assert_eq!(call[4..], [i as u8; 8]);
                asleep();
                theirs.write_all(&frame(i as u8)).unwrap();
            }
            let woken = capsule.join().unwrap();
            // One wake-up per answer; waiting in recv(2) it was two per round.
            assert!(
                woken < ROUNDS + ROUNDS / 2,
                "{woken} wake-ups in {ROUNDS} round trips"
            );
        }
    }
}

#[cfg(target_os = "wasi")]
pub use wasm::WasmTransport;

/// A WASM guest's carrier: the host imports of `elastos_schema::wasm_abi`, which move the same
/// frames as the native socket.
#[cfg(target_os = "wasi")]
#[allow(unsafe_code)]
mod wasm {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    use elastos_schema::wasm_abi as abi;
    use elastos_schema::wire::{self, FrameError};

    use super::Transport;
    use crate::SdkError;

    // The names are `abi::MODULE`, `abi::SEND`, `abi::RECV_LEN` and `abi::RECV` (attributes take
    // only literals). On wasm32 a pointer and a `usize` are the ABI's `i32`.
    #[link(wasm_import_module = "elastos")]
    extern "C" {
        #[link_name = "send"]
        fn host_send(ptr: *const u8, len: usize) -> i32;
        #[link_name = "recv_len"]
        fn host_recv_len() -> i32;
        #[link_name = "recv"]
        fn host_recv(ptr: *mut u8, cap: usize) -> i32;
    }

    /// The connection is the process's; a second transport would steal the first one's frames.
    static TAKEN: AtomicBool = AtomicBool::new(false);

    pub struct WasmTransport {
        _once: (),
    }

    impl WasmTransport {
        /// Takes the guest's connection to the supervisor. Works once per process.
        pub fn take() -> Result<Self, SdkError> {
            if TAKEN.swap(true, Ordering::SeqCst) {
                return Err(SdkError::Env(
                    "the capsule connection was already taken by this process".into(),
                ));
            }
            Ok(WasmTransport { _once: () })
        }
    }

    fn failed(code: i32) -> io::Error {
        let what = match code {
            abi::FAULT => "a buffer outside the guest's memory",
            abi::TOO_LONG => "a frame above the limit",
            abi::BAD_FRAME => "a frame whose length prefix is wrong",
            abi::IO => "the connection to the supervisor failed",
            abi::NO_FRAME => "no frame announced",
            abi::SPACE => "a buffer smaller than the frame",
            _ => "an unknown error",
        };
        io::Error::other(format!("elastos host import: {what} ({code})"))
    }

    impl Transport for WasmTransport {
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            // SAFETY: the host reads exactly `frame.len()` bytes at `frame.as_ptr()`, a live
            // slice of this guest's memory, and keeps no reference to them.
            match unsafe { host_send(frame.as_ptr(), frame.len()) } {
                0 => Ok(()),
                code => Err(failed(code)),
            }
        }

        fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
            // SAFETY: no arguments; the host only blocks and returns a length or an error code.
            let n = unsafe { host_recv_len() };
            match n {
                abi::CLOSED => return Ok(None),
                abi::TOO_LONG => {
                    return Err(FrameError::TooLong {
                        len: wire::MAX_FRAME.saturating_add(1),
                        max: wire::MAX_FRAME,
                    })
                }
                n if n < 0 => return Err(failed(n).into()),
                _ => {}
            }
            let mut body = vec![0u8; n as usize];
            // SAFETY: the host writes at most `body.len()` bytes into `body`, a live, owned
            // buffer of this guest's memory.
            let got = unsafe { host_recv(body.as_mut_ptr(), body.len()) };
            if got != n {
                return Err(failed(if got < 0 { got } else { abi::IO }).into());
            }
            Ok(Some(body))
        }
    }
}
