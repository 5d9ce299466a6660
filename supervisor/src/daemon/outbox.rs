//! The write side of a capsule socket.
//!
//! Whoever has a frame for a capsule (its own reader answering it, another capsule's reader
//! forwarding a call or an answer to it) writes it straight into the socket when nothing is
//! queued before it: no hand-off to a writer task, so a call crosses the supervisor without a
//! thread wake-up of its own. Only when the socket is full does the rest wait in a bounded queue
//! that a writer task drains as the capsule reads. Frames are never reordered.
//!
//! [`Outbox::send`] never waits for the capsule: a capsule that stops reading fills its queue,
//! and the next frame for it is refused ([`SendError::Full`]) instead of buffering without end.
//! That is for frames other capsules cause (calls, answers). What a capsule causes itself (the
//! replies to its own malformed frames, token requests, ...) goes through [`Outbox::send_wait`],
//! which waits for room: a capsule that floods without reading only slows its own reader. That
//! wait is bounded ([`STALL`]): a capsule that has not read for that long is stalled, and its
//! connection is closed. Draining and closing wake every waiter, so no task (and no connection
//! it holds) is left waiting on a closed outbox.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

/// Frames that may wait for a capsule to read, beyond what its socket buffer holds.
pub const MAX_QUEUED: usize = 256;

/// How long a reply to a capsule's own frame may wait for the capsule to read before the
/// capsule counts as stalled.
pub const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the capsule is not reading.
    Full,
    /// The socket failed or the connection ended.
    Closed,
}

pub struct Outbox {
    half: OwnedWriteHalf,
    stall: Duration,
    state: Mutex<State>,
    /// Wakes the writer task: a frame was queued behind a full socket.
    queued: Notify,
    /// Wakes a `send_wait`: the writer task made room in the queue.
    room: Notify,
}

struct State {
    queue: VecDeque<Vec<u8>>,
    /// How much of the first queued frame is written already.
    offset: usize,
    closed: bool,
}

impl Outbox {
    pub fn new(half: OwnedWriteHalf) -> Outbox {
        Outbox::with_stall(half, STALL)
    }

    /// An outbox whose `send_wait` gives up after `stall` without room.
    pub fn with_stall(half: OwnedWriteHalf, stall: Duration) -> Outbox {
        Outbox {
            half,
            stall,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                offset: 0,
                closed: false,
            }),
            queued: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Writes `frame` now if the socket takes it, else queues it; never waits.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), SendError> {
        self.try_send(frame).map_err(|(e, _)| e)
    }

    /// Like `send`, but waits for room in a full queue instead of refusing the frame, for at
    /// most the stall time in all: then [`SendError::Full`] (the capsule is stalled).
    pub async fn send_wait(&self, mut frame: Vec<u8>) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + self.stall;
        loop {
            // Registered before the attempt: a drain or close between the two still wakes it.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(frame) {
                Ok(()) => return Ok(()),
                Err((SendError::Full, f)) => {
                    frame = f;
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        return Err(SendError::Full);
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn try_send(&self, frame: Vec<u8>) -> Result<(), (SendError, Vec<u8>)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return Err((SendError::Closed, frame));
        }
        if !st.queue.is_empty() {
            // The writer task is already draining: it will reach this frame in turn.
            if st.queue.len() >= MAX_QUEUED {
                return Err((SendError::Full, frame));
            }
            st.queue.push_back(frame);
            return Ok(());
        }
        // try_write is one non-blocking sendmsg; holding the lock across it keeps frames whole
        // and in order when several tasks write to one capsule.
        let written = match self.half.try_write(&frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                st.closed = true;
                return Err((SendError::Closed, frame));
            }
        };
        st.queue.push_back(frame);
        st.offset = written;
        drop(st);
        self.queued.notify_one();
        Ok(())
    }

    /// Drains the queue as the socket becomes writable; returns when the socket fails.
    pub async fn write_queued(&self) {
        loop {
            self.queued.notified().await;
            loop {
                if self.half.writable().await.is_err() {
                    self.close();
                    return;
                }
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let before = st.queue.len();
                while let Some(front) = st.queue.front() {
                    let offset = st.offset;
                    match self.half.try_write(&front[offset..]) {
                        Ok(n) if offset + n == front.len() => {
                            st.queue.pop_front();
                            st.offset = 0;
                        }
                        Ok(n) => st.offset += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            st.closed = true;
                            st.queue.clear();
                            drop(st);
                            self.room.notify_waiters();
                            return;
                        }
                    }
                }
                if st.queue.len() < before {
                    self.room.notify_waiters();
                }
                // Empty under the lock: the next `send` writes directly again.
                if st.queue.is_empty() {
                    break;
                }
            }
        }
    }

    pub fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        st.queue.clear();
        drop(st);
        // Every waiter: each holds a frame and, through its task, the connection.
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    /// An outbox on one end of a socket pair with its writer task running; the other end.
    fn drained_outbox() -> (Arc<Outbox>, UnixStream, tokio::task::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        // Dropping the read half closes nothing: the socket lives as long as the write half.
        let (_, wr) = a.into_split();
        let out = Arc::new(Outbox::new(wr));
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.write_queued().await }
        });
        (out, b, writer)
    }

    fn frame(i: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(i % 251) as u8; len];
        f[..4].copy_from_slice(&i.to_le_bytes());
        f
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_past_a_full_socket() {
        let (out, mut b, writer) = drained_outbox();
        // Far more than a socket buffer holds, but within the queue: nothing is refused.
        let len = 64 * 1024;
        let n = 100u32;
        for i in 0..n {
            out.send(frame(i, len)).unwrap();
        }
        let mut buf = vec![0u8; len];
        for i in 0..n {
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, frame(i, len), "frame {i}");
        }
        writer.abort();
    }

    #[tokio::test]
    async fn a_capsule_that_does_not_read_is_refused_not_buffered() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (_rd, wr) = a.into_split();
        let out = Outbox::new(wr);
        let mut refused = None;
        for i in 0..10_000u32 {
            if let Err(e) = out.send(frame(i, 4096)) {
                refused = Some((i, e));
                break;
            }
        }
        let (at, e) = refused.expect("an unread socket must fill up");
        assert_eq!(e, SendError::Full);
        assert!(at as usize >= MAX_QUEUED, "refused after {at} frames");
        out.close();
        assert_eq!(out.send(frame(0, 8)), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn send_wait_waits_for_a_slow_reader_instead_of_refusing() {
        let (out, mut b, writer) = drained_outbox();
        let n = 2_000u32;
        let sender = tokio::spawn({
            let out = out.clone();
            async move {
                for i in 0..n {
                    out.send_wait(frame(i, 4096)).await.unwrap();
                }
            }
        });
        let mut buf = vec![0u8; 4096];
        for i in 0..n {
            if i % 100 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, frame(i, 4096), "frame {i}");
        }
        sender.await.unwrap();
        writer.abort();
    }

    /// An outbox over a socket nobody reads, filled to its queue's limit.
    fn full_outbox(stall: Duration) -> (Arc<Outbox>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (_rd, wr) = a.into_split();
        let out = Arc::new(Outbox::with_stall(wr, stall));
        let mut i = 0u32;
        while out.send(frame(i, 4096)).is_ok() {
            i += 1;
        }
        (out, b)
    }

    #[tokio::test]
    async fn close_wakes_every_waiter_so_none_keeps_its_connection() {
        let (out, _b) = full_outbox(Duration::from_secs(3600));
        let waiters: Vec<_> = (0..8u32)
            .map(|i| {
                let out = out.clone();
                tokio::spawn(async move { out.send_wait(frame(i, 64)).await })
            })
            .collect();
        // Let every waiter reach its wait.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        out.close();
        for w in waiters {
            let r = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken by close")
                .unwrap();
            assert_eq!(r, Err(SendError::Closed));
        }
        assert_eq!(
            Arc::strong_count(&out),
            1,
            "a waiter still holds the outbox"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_waits_longer_than_the_stall_time_gives_up() {
        let (out, _b) = full_outbox(Duration::from_secs(10));
        let r = out.send_wait(frame(0, 64)).await;
        assert_eq!(r, Err(SendError::Full));
    }

    #[tokio::test]
    async fn a_closed_peer_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let (_rd, wr) = a.into_split();
        let out = Outbox::new(wr);
        assert_eq!(out.send(frame(0, 8)), Err(SendError::Closed));
    }
}
