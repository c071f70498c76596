//! A connection's reply line: lets the thread that completes a write (the
//! volume thread, once the write is committed) put the 16-byte success
//! reply on the client's socket itself, instead of waking the connection's
//! writer task to do it. That is one thread hand-off fewer on the leader's
//! write path (docs/volume-benchmark.md counts them), and on the appliance
//! the kernel's nbd driver hears of the commit straight from the disk thread.
//!
//! Framing is the whole difficulty: replies are whole messages, and a read
//! reply the writer task is halfway through must not be cut by 16 bytes
//! from another thread. So the line has one lock and a `writer_busy` flag:
//! the writer sets it before it puts any byte in its buffer and clears it
//! only once its buffer is flushed to the socket; a direct reply is sent
//! under the lock, only while the flag is clear, with one non-blocking
//! `send`. When it cannot go out whole at once (line busy, socket full,
//! connection closed), `send_ok` says so and the writer task sends the
//! reply as before: the direct path is an optimisation that is never
//! needed for correctness.
//!
//! The line holds its own duplicate of the socket's descriptor, so the
//! number can never be reused under it; [`ReplyLine::close`] shuts the
//! socket down (for every descriptor of it) when the connection ends, so a
//! step-down still closes the client's connection at once.
//!
//! Must not: block (the caller is the disk thread), or write anything but
//! a whole reply.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::proto::simple_reply;

/// How long a direct reply that went out in part may wait for the socket
/// to take the rest (while the writer task is kept off the line). On a unix
/// socket a 16-byte send is all or nothing, so this is for TCP only; past
/// it the connection is shut down rather than left with a torn reply.
const FINISH_PARTIAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct LineState {
    /// The writer task has bytes that are not all on the socket yet.
    writer_busy: bool,
    /// The connection ended (or a reply was torn): nothing more goes out here.
    closed: bool,
}

/// One connection's socket, shared by its writer task and whoever sends
/// direct replies.
#[derive(Debug)]
pub struct ReplyLine {
    fd: OwnedFd,
    state: Mutex<LineState>,
}

impl ReplyLine {
    /// A line on a duplicate of `socket`.
    pub fn new(socket: BorrowedFd<'_>) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self { fd: socket.try_clone_to_owned()?, state: Mutex::default() }))
    }

    fn lock(&self) -> MutexGuard<'_, LineState> {
        // The state is two flags, consistent after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer task is about to buffer a reply: no direct reply until
    /// [`end_write`](Self::end_write).
    pub fn begin_write(&self) {
        self.lock().writer_busy = true;
    }

    /// The writer task's buffer is all on the socket.
    pub fn end_write(&self) {
        self.lock().writer_busy = false;
    }

    /// The connection is over: no direct reply from now on, and the socket
    /// is shut down in both directions (the client sees the close even
    /// while this duplicate lives on).
    pub fn close(&self) {
        let mut s = self.lock();
        if !s.closed {
            s.closed = true;
            // SAFETY: shutdown on a descriptor this line owns.
            unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Sends the success reply for `cookie` if it can go out whole now.
    fn send_ok(&self, cookie: u64) -> bool {
        let mut s = self.lock();
        if s.writer_busy || s.closed {
            return false;
        }
        let msg = simple_reply(0, cookie);
        match send_nowait(&self.fd, &msg) {
            Ok(n) if n == msg.len() => true,
            Ok(0) | Err(_) => false, // nothing went out: the writer sends it
            Ok(n) => {
                // Part of it is on the socket: the rest must follow before
                // any other byte, or the stream is torn.
                let rest = msg.get(n..).unwrap_or_default();
                if finish(&self.fd, rest, FINISH_PARTIAL).is_err() {
                    tracing::warn!(
                        cookie,
                        "nbd: a direct reply went out in part and the socket took no more; closing the connection"
                    );
                    s.closed = true;
                    // SAFETY: shutdown on a descriptor this line owns.
                    unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
                true
            }
        }
    }
}

/// A write's permission to send its own success reply.
#[derive(Debug)]
pub struct DirectReply {
    line: Arc<ReplyLine>,
    cookie: u64,
}

impl DirectReply {
    /// For the request `cookie` on `line`.
    pub fn new(line: Arc<ReplyLine>, cookie: u64) -> Self {
        Self { line, cookie }
    }

    /// Sends "success" for this request now, without blocking, if the line
    /// is free; `false`: nothing was sent and the writer task must send
    /// the reply. Call only once the write is durable as NBD promises.
    pub fn send_ok(self) -> bool {
        self.line.send_ok(self.cookie)
    }
}

fn send_nowait(fd: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length; the fd is open.
        let n = unsafe {
            libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends all of `rest`, waiting for the socket up to `limit` in all.
fn finish(fd: &OwnedFd, mut rest: &[u8], limit: Duration) -> io::Result<()> {
    let end = Instant::now() + limit;
    while !rest.is_empty() {
        match send_nowait(fd, rest) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, ms) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::SIMPLE_REPLY_LEN;
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Arc<ReplyLine>, UnixStream, UnixStream) {
        let (ours, client) = UnixStream::pair().expect("socketpair");
        let line = ReplyLine::new(std::os::fd::AsFd::as_fd(&ours)).expect("dup");
        (line, ours, client)
    }

    #[test]
    fn a_free_line_sends_the_whole_reply() {
        let (line, _ours, mut client) = pair();
        assert!(DirectReply::new(line, 7).send_ok());
        let mut got = [0u8; SIMPLE_REPLY_LEN];
        client.read_exact(&mut got).expect("reply");
        assert_eq!(got, simple_reply(0, 7));
    }

    #[test]
    fn a_busy_or_closed_line_sends_nothing() {
        let (line, _ours, mut client) = pair();
        line.begin_write();
        assert!(!DirectReply::new(Arc::clone(&line), 1).send_ok());
        line.end_write();
        assert!(DirectReply::new(Arc::clone(&line), 2).send_ok());
        line.close();
        assert!(!DirectReply::new(Arc::clone(&line), 3).send_ok());
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("closed");
        assert_eq!(got, simple_reply(0, 2), "only the reply sent while the line was free, then the close");
    }

    #[test]
    fn a_full_socket_sends_nothing_rather_than_blocking() {
        let (line, ours, _client) = pair();
        ours.set_nonblocking(true).expect("nonblocking");
        let junk = [0u8; 4096];
        while std::io::Write::write(&mut &ours, &junk).is_ok() {}
        let started = Instant::now();
        assert!(!DirectReply::new(line, 9).send_ok());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
