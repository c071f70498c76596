//! The NBD server: a unix-socket accept loop, the handshake, and the
//! pipelined transmission phase, over any [`BlockDevice`].
//!
//! One connection:
//! ```text
//!                 ┌──────────── reader (this task) ────────────────────┐
//!  socket ──────▶ │ header → payload → request::check → start the op:   │
//!                 │ polled once here, so a device that hands work to    │
//!                 │ another thread has it before this task reads on     │
//!                 └──┬──────────────┬───────────────────────────────────┘
//!                    │ error reply, │ still running: the op's future
//!                    │ finished op  │
//!                    ▼              ▼
//!                 jobs channel (mpsc) ──▶ writer task: drives the running
//!                                          ops, writes each reply ──▶ socket
//! ```
//! No task per request: a replicated write's completion (the volume
//! thread's answer) wakes the writer itself, which writes the reply; on
//! the leader's write path that is one hand-off fewer than a request task
//! relaying to the writer (docs/volume-benchmark.md counts them). On a
//! unix socket the connection also has a [`ReplyLine`]: a WRITE's success
//! reply is then sent by the thread that commits it, when the line is free
//! (`reply_line.rs`), and the writer only retires the request.
//! Replies complete in any order (the spec allows it; cookies match them
//! up). Memory: every payload and read buffer comes from the server's
//! [`BufPool`], allocated when the server is built (see `pool.rs` for why:
//! the filesystem the kernel is flushing may live on this export). A
//! request takes its buffers before its payload is read or its read is
//! started, and gives them back only once its reply is written, so a
//! client that stops reading replies stops being read instead of growing
//! our memory. Requests without a buffer (FLUSH, TRIM, WRITE_ZEROES) are
//! bounded per connection by [`MAX_INFLIGHT`].
//!
//! Step-down: when the [`Activity`] flag goes false (this node stops being
//! the active node), every open connection is closed at once: requests
//! still in flight are abandoned (the replica fails its pending writes),
//! and the client learns on its socket, not from a stream of errors, that
//! it must reconnect to the new active node.
//!
//! FLUSH ordering: every WRITE/TRIM/WRITE_ZEROES task holds a clone of the
//! current "write gate" sender. A FLUSH swaps in a new gate and waits until
//! every sender of the old one is gone (its receiver then yields `None`),
//! i.e. until every modifying request received before the FLUSH has
//! completed on the device, then calls [`BlockDevice::flush`]. That is
//! stronger than the spec's rule (only writes already *replied to* must be
//! covered) and keeps the rule true for devices whose writes complete out
//! of order.
//!
//! Failure isolation: every connection runs in its own task and its errors
//! end only that connection (logged once, here). Garbage that breaks the
//! framing (bad magic, oversized write payload, truncated header, unknown
//! client flags) closes the connection; a well-framed bad request gets an
//! error reply and the connection carries on.
//!
//! Must not: write to the device on a node that is not [`Activity`]-active
//! (checked per request, so a step-down takes effect at once), or panic.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::device::BlockDevice;
use super::handshake::{on_option, ExportView, Next};
use super::pool::{BufPool, IoBuf, PoolSize};
use super::proto::{
    greeting, simple_reply, ClientFlags, Geometry, OptionHeader, ProtoError, OPTION_HEADER_LEN, REQUEST_LEN,
};
use super::reply_line::{DirectReply, ReplyLine};
use super::request::{check, Cmd, Command, RequestHeader};

/// Time a client gets to finish option haggling.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Options accepted per connection before it is treated as a denial of
/// service and closed (real clients send fewer than ten).
pub const MAX_OPTIONS: usize = 256;
/// Requests in flight per connection (each holds a task and a reply slot;
/// the buffers are bounded by the pool).
pub const MAX_INFLIGHT: usize = 1024;

/// What failed while serving NBD.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket is at the socket path.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// Socket path.
        path: PathBuf,
    },
    /// `accept` failed.
    #[error("accept failed")]
    Accept(#[source] io::Error),
    /// Socket I/O failed.
    #[error("connection I/O failed during {during}")]
    Io {
        /// Phase.
        during: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The client broke the protocol so the stream cannot be trusted.
    #[error("protocol violation")]
    Proto(#[from] ProtoError),
    /// Option haggling took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("handshake not finished within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    /// More than [`MAX_OPTIONS`] options.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// The node stopped being the active node: the connection is closed.
    #[error("this node stopped serving the volume; connection closed")]
    NotActive,
    /// No buffers for a request (a request larger than the pool).
    #[error("no I/O buffers for the request")]
    Pool(#[from] super::pool::PoolError),
}

fn io_err(during: &'static str) -> impl FnOnce(io::Error) -> NbdError {
    move |source| NbdError::Io { during, source }
}

/// Whether this node serves the volume; set by whoever decides it (the
/// volume thread), read by every request, and watched by every connection
/// so a step-down closes them.
#[derive(Debug, Clone)]
pub struct Activity {
    flag: Arc<AtomicBool>,
    /// (active, number of times it went from true to false): a connection
    /// closes when the count moves, even if the flag is back to true by
    /// the time it looks (leadership lost and regained).
    changes: Arc<watch::Sender<(bool, u64)>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new(false)
    }
}

impl Activity {
    /// A handle starting in the given state.
    pub fn new(active: bool) -> Self {
        let (tx, _) = watch::channel((active, 0));
        Self { flag: Arc::new(AtomicBool::new(active)), changes: Arc::new(tx) }
    }
    /// Sets the state; requests parsed afterwards see it, and a change to
    /// false closes every open connection.
    pub fn set_active(&self, active: bool) {
        self.flag.store(active, Ordering::SeqCst);
        self.changes.send_if_modified(|(a, losses)| {
            if *a == active {
                return false;
            }
            if *a && !active {
                *losses += 1;
            }
            *a = active;
            true
        });
    }
    /// Current state.
    pub fn is_active(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Completes once the node stops being active after this call (at
    /// once if it is not active now).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.changes.subscribe();
        let start = rx.borrow().1;
        async move {
            // An error means the sender is gone: nobody can make us active again.
            let _ = rx.wait_for(|(a, losses)| !*a || *losses != start).await;
        }
    }
}

/// One export served over NBD.
#[derive(Debug)]
pub struct NbdServer<D> {
    name: String,
    device: Arc<D>,
    activity: Activity,
    pool: Arc<BufPool>,
}

impl<D> Clone for NbdServer<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            device: Arc::clone(&self.device),
            activity: self.activity.clone(),
            pool: Arc::clone(&self.pool),
        }
    }
}

/// A reply on its way to the writer, holding its buffers (read data) and
/// its request slot until it is written.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<IoBuf>,
    /// Already on the socket (sent by the device through the reply line):
    /// the writer only drops it.
    sent: bool,
    _slot: OwnedSemaphorePermit,
}

/// Ends when every holder of a clone of its sender is done.
struct WriteGate {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

impl WriteGate {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self { tx, rx }
    }
}

impl<D: BlockDevice> NbdServer<D> {
    /// A server for `device` under the export name `name`, with the
    /// default buffer pool ([`PoolSize::default`], 64 MiB) allocated now.
    pub fn new(name: impl Into<String>, device: D, activity: Activity) -> Self {
        Self::with_pool(name, device, activity, PoolSize::default())
    }

    /// The same with a pool of `size`; requests larger than the pool's
    /// largest are refused (and that maximum is what the handshake offers).
    pub fn with_pool(name: impl Into<String>, device: D, activity: Activity, size: PoolSize) -> Self {
        Self { name: name.into(), device: Arc::new(device), activity, pool: BufPool::new(size) }
    }

    /// The export's geometry: its size, and the largest payload the pool serves.
    fn geometry(&self) -> Geometry {
        let mut g = Geometry::new(self.device.size());
        let pool_max = u32::try_from(self.pool.max_request()).unwrap_or(u32::MAX);
        // A multiple of the block size, so the advertised maximum is itself valid.
        g.max_payload = g.max_payload.min(pool_max / g.min_block.max(1) * g.min_block.max(1));
        g
    }

    /// Binds `path` and serves `device` there until an accept error.
    pub async fn serve_unix(path: &Path, name: &str, device: D, activity: Activity) -> Result<(), NbdError> {
        let server = Self::new(name, device, activity);
        server.serve_listener(bind_unix(path)?).await
    }

    /// Accepts connections forever, one task each.
    pub async fn serve_listener(&self, listener: UnixListener) -> Result<(), NbdError> {
        loop {
            let (stream, _) = listener.accept().await.map_err(NbdError::Accept)?;
            let server = self.clone();
            let line = match ReplyLine::new(std::os::fd::AsFd::as_fd(&stream)) {
                Ok(line) => Some(line),
                Err(e) => {
                    // Only the direct replies are lost: the writer sends them all.
                    tracing::warn!(error = %e, "nbd: cannot duplicate the connection's socket; replies go through its writer");
                    None
                }
            };
            tokio::spawn(async move {
                match server.serve_connection_with(stream, line).await {
                    Ok(()) => tracing::debug!("nbd connection closed"),
                    Err(e) => tracing::info!(error = %crate::errors::chain(&e), "nbd connection ended"),
                }
            });
        }
    }

    /// Serves one connection: handshake, then transmission.
    pub async fn serve_connection<S>(&self, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_connection_with(stream, None).await
    }

    /// As [`serve_connection`](Self::serve_connection), with `line` (on
    /// this very socket) for direct write replies.
    pub async fn serve_connection_with<S>(&self, mut stream: S, line: Option<Arc<ReplyLine>>) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let next = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut stream))
            .await
            .map_err(|_| NbdError::HandshakeTimeout)??;
        match next {
            Next::Transmit => self.serve_transmission_with(stream, line).await,
            Next::Haggle | Next::Close => Ok(()),
        }
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&self, s: &mut S) -> Result<Next, NbdError> {
        s.write_all(&greeting()).await.map_err(io_err("greeting"))?;
        s.flush().await.map_err(io_err("greeting"))?;
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).await.map_err(io_err("client flags"))?;
        let flags = ClientFlags::parse(&flags)?;
        for _ in 0..MAX_OPTIONS {
            let mut hdr = [0u8; OPTION_HEADER_LEN];
            s.read_exact(&mut hdr).await.map_err(io_err("option header"))?;
            let hdr = OptionHeader::parse(&hdr)?;
            // len <= MAX_OPTION_DATA (64 KiB), checked by parse.
            let mut data = vec![0u8; hdr.len as usize];
            s.read_exact(&mut data).await.map_err(io_err("option data"))?;
            let export = ExportView { name: &self.name, geometry: self.geometry(), active: self.activity.is_active() };
            let out = on_option(hdr.option, &data, &export, flags.no_zeroes);
            s.write_all(&out.reply).await.map_err(io_err("option reply"))?;
            s.flush().await.map_err(io_err("option reply"))?;
            if out.next != Next::Haggle {
                return Ok(out.next);
            }
        }
        Err(NbdError::TooManyOptions)
    }

    /// Serves the transmission phase only: for a socket whose handshake
    /// happened elsewhere (the kernel nbd driver on a socketpair is told the
    /// size and flags by ioctl and starts straight with requests).
    pub async fn serve_transmission<S>(&self, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.serve_transmission_with(stream, None).await
    }

    /// As [`serve_transmission`](Self::serve_transmission), with `line`
    /// (on this very socket) for direct write replies.
    pub async fn serve_transmission_with<S>(&self, stream: S, line: Option<Arc<ReplyLine>>) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        // However this ends, the line sends nothing more and the socket is
        // shut down (the line's duplicate would otherwise keep it open).
        let _closing = line.clone().map(CloseOnDrop);
        let lost = self.activity.lost();
        let (mut rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut writer = tokio::spawn(write_replies(wr, rx, line.clone()));
        let result = tokio::select! {
            biased;
            () = lost => {
                // Stepped down: close now. Aborting the writer drops the
                // write half; returning drops the read half and closes the
                // line: the socket closes.
                writer.abort();
                return Err(NbdError::NotActive);
            }
            r = self.read_requests(&mut rd, &tx, line.as_ref()) => r,
        };
        // In-flight requests finish and are answered (spec: DISC "MUST
        // handle all outstanding requests"); the writer ends with the last
        // sender, or the connection closes at a step-down meanwhile.
        drop(tx);
        let lost = self.activity.lost();
        let written = tokio::select! {
            biased;
            () = lost => {
                writer.abort();
                return Err(NbdError::NotActive);
            }
            w = &mut writer => w.unwrap_or(Ok(())),
        };
        result?;
        written.map_err(io_err("reply"))
    }

    async fn read_requests<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        tx: &mpsc::UnboundedSender<Job>,
        line: Option<&Arc<ReplyLine>>,
    ) -> Result<(), NbdError> {
        let geometry = self.geometry();
        let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
        let mut gate = WriteGate::new();
        loop {
            let Some(hdr) = read_header(rd).await? else { return Ok(()) };
            let h = RequestHeader::parse(&hdr)?;
            let payload_len = h.payload_len(geometry.max_payload)?;
            let slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .map_err(|_| NbdError::Io { during: "slots", source: io::Error::other("request slots closed") })?;
            // A write's payload is read into pool buffers (even one that is
            // refused below: the stream must stay in step); a read takes its
            // buffers now if it is within the maximum (else it is refused
            // below, without any).
            let is_read = h.kind == Cmd::Read.to_wire();
            let want = if is_read && h.len <= geometry.max_payload { h.len as usize } else { payload_len };
            let mut buf = self.pool.acquire(want).await?;
            if payload_len > 0 {
                for c in buf.chunks_mut() {
                    rd.read_exact(c).await.map_err(io_err("write payload"))?;
                }
            }
            let cmd = match check(&h, &geometry, self.activity.is_active()) {
                Ok(cmd) => cmd,
                Err(e) => {
                    tracing::debug!(cookie = h.cookie, error = %e, "nbd request refused");
                    drop(buf);
                    let _ = tx.send(Job::Done(Reply {
                        cookie: h.cookie,
                        error: e.errno().code(),
                        data: None,
                        sent: false,
                        _slot: slot,
                    }));
                    continue;
                }
            };
            if cmd == Command::Disc {
                return Ok(());
            }
            let gate_hold = match cmd {
                Command::Flush => {
                    let old = std::mem::replace(&mut gate, WriteGate::new());
                    drop(old.tx);
                    Some(GateUse::Wait(old.rx))
                }
                Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. } => {
                    Some(GateUse::Hold(gate.tx.clone()))
                }
                Command::Read { .. } | Command::Disc => None,
            };
            let device = Arc::clone(&self.device);
            let direct = match cmd {
                Command::Write { .. } => line.map(|l| DirectReply::new(Arc::clone(l), h.cookie)),
                _ => None,
            };
            let mut op: RunningOp = Box::pin(async move {
                let result = execute(&*device, cmd, buf, gate_hold, direct).await;
                let (error, data, sent) = match result {
                    Ok(Done { data, sent }) => (0, data, sent),
                    Err(e) => {
                        tracing::warn!(cookie = h.cookie, error = %crate::errors::chain(&e), "nbd request failed on the device");
                        (e.errno().code(), None, false)
                    }
                };
                Reply { cookie: h.cookie, error, data, sent, _slot: slot }
            });
            // Started here: a replicated write is on its way to the volume
            // thread before the next request is read. (A later poll by the
            // writer replaces this task's waker; at worst this task is
            // woken once for nothing.)
            let job = match futures::poll!(op.as_mut()) {
                std::task::Poll::Ready(reply) => Job::Done(reply),
                std::task::Poll::Pending => Job::Running(op),
            };
            // The writer is gone only if the client is: nothing to do.
            let _ = tx.send(job);
        }
    }
}

/// How a request takes part in FLUSH ordering.
enum GateUse {
    /// A modifying request: holds the gate open until it completes.
    Hold(mpsc::Sender<()>),
    /// A FLUSH: waits for the gate it closed.
    Wait(mpsc::Receiver<()>),
}

/// Shuts a connection's reply line when the connection's serving ends.
struct CloseOnDrop(Arc<ReplyLine>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A request that succeeded.
struct Done {
    /// A read's data.
    data: Option<IoBuf>,
    /// The device already sent the reply (through a [`DirectReply`]).
    sent: bool,
}

/// Runs one request; a read's data comes back in `buf`. A write given
/// `direct` may have its reply sent by the device.
async fn execute<D: BlockDevice>(
    device: &D,
    cmd: Command,
    buf: IoBuf,
    gate: Option<GateUse>,
    direct: Option<DirectReply>,
) -> Result<Done, super::device::DeviceError> {
    let _hold = match gate {
        Some(GateUse::Wait(mut rx)) => {
            // Nothing is ever sent: recv returns None once all holders left.
            let _ = rx.recv().await;
            None
        }
        Some(GateUse::Hold(tx)) => Some(tx),
        None => None,
    };
    let plain = |()| Done { data: None, sent: false };
    match cmd {
        Command::Read { offset, .. } => device.read_at(offset, buf).await.map(|b| Done { data: Some(b), sent: false }),
        Command::Write { offset, fua, .. } => match direct {
            Some(d) => device.write_at_replying(offset, buf, fua, d).await.map(|sent| Done { data: None, sent }),
            None => device.write_at(offset, buf, fua).await.map(plain),
        },
        Command::Flush => device.flush().await.map(plain),
        Command::Trim { offset, len, fua } => device.trim(offset, len, fua).await.map(plain),
        Command::WriteZeroes { offset, len, fua, no_hole } => {
            device.write_zeroes(offset, len, fua, no_hole).await.map(plain)
        }
        Command::Disc => Ok(Done { data: None, sent: false }),
    }
}

/// Reads one request header; `None` on a clean end of stream between
/// requests (a client hard disconnect), an error if it ends mid-header.
async fn read_header<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Option<[u8; REQUEST_LEN]>, NbdError> {
    let mut hdr = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        let n = rd.read(&mut hdr[got..]).await.map_err(io_err("request header"))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ProtoError::Truncated { what: "request", need: REQUEST_LEN, got }.into());
        }
        got += n;
    }
    Ok(Some(hdr))
}

/// A request still running on the device; yields its reply.
type RunningOp = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// What the reader hands the writer.
enum Job {
    /// A reply ready to write.
    Done(Reply),
    /// A request to drive to its reply.
    Running(RunningOp),
}

/// Drives the running requests and writes replies in the order they
/// complete, flushing once nothing else is ready. Ends when the reader is
/// gone and every request is answered. While it has bytes not yet on the
/// socket it keeps `line` (if any) busy, so no direct reply cuts them.
async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Job>,
    line: Option<Arc<ReplyLine>>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, wr);
    let mut running = futures::stream::FuturesUnordered::new();
    let mut reader_open = true;
    let mut out = Outgoing { line, busy: false };
    loop {
        // Replies written are sent before this task waits for anything:
        // a finished reply is never held behind a request still running.
        // Jobs already queued are taken first, so a burst is one write.
        if out.busy && rx.is_empty() {
            w.flush().await?;
            out.flushed();
        }
        let reply = tokio::select! {
            biased;
            Some(reply) = futures::StreamExt::next(&mut running), if !running.is_empty() => reply,
            job = rx.recv(), if reader_open => match job {
                Some(Job::Done(reply)) => reply,
                Some(Job::Running(op)) => {
                    running.push(op);
                    continue;
                }
                None => {
                    reader_open = false;
                    continue;
                }
            },
            else => break,
        };
        write_reply(&mut w, &mut out, reply).await?;
        // Others finished at the same time (a batch the volume thread
        // committed together): one flush for all of them.
        while let Some(Some(reply)) = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut running)) {
            write_reply(&mut w, &mut out, reply).await?;
        }
    }
    w.flush().await?;
    out.flushed();
    w.shutdown().await
}

/// The writer's side of the reply line.
struct Outgoing {
    line: Option<Arc<ReplyLine>>,
    /// Bytes were buffered since the last complete flush.
    busy: bool,
}

impl Outgoing {
    fn begin(&mut self) {
        if !self.busy {
            self.busy = true;
            if let Some(l) = &self.line {
                l.begin_write();
            }
        }
    }
    fn flushed(&mut self) {
        if self.busy {
            self.busy = false;
            if let Some(l) = &self.line {
                l.end_write();
            }
        }
    }
}

async fn write_reply<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, out: &mut Outgoing, reply: Reply) -> io::Result<()> {
    if reply.sent {
        // On the socket already; dropping it returns its slot.
        return Ok(());
    }
    out.begin();
    w.write_all(&simple_reply(reply.error, reply.cookie)).await?;
    if let Some(data) = &reply.data {
        for c in data.chunks() {
            w.write_all(c).await?;
        }
    }
    // Dropping the reply returns its buffers and its slot.
    drop(reply);
    Ok(())
}

/// Binds a unix socket at `path`, replacing a stale socket (never another
/// kind of file).
pub fn bind_unix(path: &Path) -> Result<UnixListener, NbdError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| NbdError::Bind { path: path.to_owned(), source })?;
        }
        Ok(_) => return Err(NbdError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(NbdError::Bind { path: path.to_owned(), source }),
    }
    UnixListener::bind(path).map_err(|source| NbdError::Bind { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::super::device::MemDevice;
    use super::super::proto::{
        simple_reply, Errno, InfoRequest, CMD_FLAG_FUA, INFO_BLOCK_SIZE, MAX_PAYLOAD, OPT_GO, REP_ACK,
        SIMPLE_REPLY_LEN, SIMPLE_REPLY_MAGIC,
    };
    use super::*;
    use tokio::io::DuplexStream;

    const SIZE: usize = 4 << 20;

    fn req(cmd: Cmd, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        RequestHeader { flags, kind: cmd.to_wire(), cookie, offset, len }.encode().to_vec()
    }

    async fn reply(c: &mut DuplexStream, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        c.read_exact(&mut h).await.expect("reply header");
        assert_eq!(&h[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        let mut data = vec![0u8; if err == 0 { data_len } else { 0 }];
        c.read_exact(&mut data).await.expect("reply data");
        (err, cookie, data)
    }

    fn start(active: bool) -> (DuplexStream, tokio::task::JoinHandle<Result<(), NbdError>>, Activity) {
        let activity = Activity::new(active);
        // 4 MiB of buffers: 1 MiB requests and larger chains are exercised.
        let pool = PoolSize { small: (256 << 10, 4), large: (1 << 20, 4) };
        let server = NbdServer::with_pool("vol", MemDevice::new(SIZE), activity.clone(), pool);
        let (client, srv) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move { server.serve_transmission(srv).await });
        (client, task, activity)
    }

    #[tokio::test]
    async fn transmission_write_read_flush_errors_disc() {
        let (mut c, task, activity) = start(true);
        let mut w = req(Cmd::Write, CMD_FLAG_FUA, 1, 4096, 4096);
        w.extend(vec![0x5a; 4096]);
        c.write_all(&w).await.expect("send");
        assert_eq!(reply(&mut c, 0).await, (0, 1, vec![]));
        c.write_all(&req(Cmd::Flush, 0, 2, 0, 0)).await.expect("send");
        assert_eq!(reply(&mut c, 0).await.0, 0);
        c.write_all(&req(Cmd::Read, 0, 3, 4096, 4096)).await.expect("send");
        assert_eq!(reply(&mut c, 4096).await, (0, 3, vec![0x5a; 4096]));
        // Refused requests keep the connection usable; a refused write's
        // payload is consumed.
        let mut mis = req(Cmd::Write, 0, 4, 512, 4096);
        mis.extend(vec![1; 4096]);
        c.write_all(&mis).await.expect("send");
        assert_eq!(reply(&mut c, 0).await.0, Errno::Inval.code());
        c.write_all(&req(Cmd::Read, 0, 5, SIZE as u64, 4096)).await.expect("send");
        assert_eq!(reply(&mut c, 0).await.0, Errno::Inval.code());
        c.write_all(&RequestHeader { flags: 0, kind: 99, cookie: 6, offset: 0, len: 0 }.encode()).await.expect("send");
        assert_eq!(reply(&mut c, 0).await, (Errno::Inval.code(), 6, vec![]));
        // A read larger than the pool can hold is refused, not served.
        c.write_all(&req(Cmd::Read, 0, 7, 0, 8 << 20)).await.expect("send");
        assert_eq!(reply(&mut c, 0).await, (Errno::Inval.code(), 7, vec![]));
        // A 3 MiB write and read: chains of pool buffers.
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i / 4096) as u8).collect();
        let mut w = req(Cmd::Write, 0, 8, 0, big.len() as u32);
        w.extend(&big);
        c.write_all(&w).await.expect("send");
        assert_eq!(reply(&mut c, 0).await, (0, 8, vec![]));
        c.write_all(&req(Cmd::Read, 0, 9, 0, big.len() as u32)).await.expect("send");
        assert!(reply(&mut c, big.len()).await == (0, 9, big));
        c.write_all(&req(Cmd::Disc, 0, 10, 0, 0)).await.expect("send");
        assert!(task.await.expect("join").is_ok());
        drop(activity);
    }

    #[tokio::test]
    async fn stepping_down_closes_the_connection() {
        let (mut c, task, activity) = start(true);
        c.write_all(&req(Cmd::Read, 0, 1, 0, 4096)).await.expect("send");
        assert_eq!(reply(&mut c, 4096).await.0, 0);
        activity.set_active(false);
        assert!(matches!(task.await.expect("join"), Err(NbdError::NotActive)));
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.expect("eof"), 0, "closed, nothing more sent");
        // Lost and regained before the connection looked: still closed.
        let (mut c, task, activity) = start(true);
        c.write_all(&req(Cmd::Read, 0, 1, 0, 4096)).await.expect("send");
        assert_eq!(reply(&mut c, 4096).await.0, 0);
        activity.set_active(false);
        activity.set_active(true);
        assert!(matches!(task.await.expect("join"), Err(NbdError::NotActive)));
        assert_eq!(c.read_to_end(&mut rest).await.expect("eof"), 0);
        // A request that arrives in the window before the close is refused.
        let (mut c, _task, activity) = start(true);
        activity.flag.store(false, Ordering::SeqCst);
        let mut w = req(Cmd::Write, 0, 2, 0, 4096);
        w.extend(vec![0; 4096]);
        c.write_all(&w).await.expect("send");
        assert_eq!(reply(&mut c, 0).await.0, Errno::Perm.code());
    }

    #[tokio::test]
    async fn bad_magic_and_oversized_write_close() {
        let (mut c, task, _) = start(true);
        c.write_all(&[0u8; REQUEST_LEN]).await.expect("send");
        assert!(matches!(task.await.expect("join"), Err(NbdError::Proto(ProtoError::BadMagic { .. }))));
        let (mut c, task, _) = start(true);
        c.write_all(&req(Cmd::Write, 0, 1, 0, MAX_PAYLOAD + 1)).await.expect("send");
        assert!(matches!(task.await.expect("join"), Err(NbdError::Proto(ProtoError::PayloadTooLarge { .. }))));
        let (mut c, task, _) = start(true);
        c.write_all(&req(Cmd::Read, 0, 1, 0, 4096)[..10]).await.expect("send");
        drop(c);
        assert!(matches!(task.await.expect("join"), Err(NbdError::Proto(ProtoError::Truncated { .. }))));
    }

    /// Reads at once; writes wait until `go` is notified.
    #[derive(Clone)]
    struct HeldWrites {
        mem: MemDevice,
        go: Arc<tokio::sync::Notify>,
    }

    /// The methods a test device takes from its `mem` as they are.
    macro_rules! from_mem {
        () => {
            fn size(&self) -> u64 {
                self.mem.size()
            }
            async fn read_at(&self, offset: u64, buf: IoBuf) -> super::super::device::DevResult<IoBuf> {
                self.mem.read_at(offset, buf).await
            }
            async fn flush(&self) -> super::super::device::DevResult<()> {
                Ok(())
            }
            async fn trim(&self, _o: u64, _l: u32, _f: bool) -> super::super::device::DevResult<()> {
                Ok(())
            }
            async fn write_zeroes(&self, o: u64, l: u32, f: bool, n: bool) -> super::super::device::DevResult<()> {
                self.mem.write_zeroes(o, l, f, n).await
            }
        };
    }

    impl BlockDevice for HeldWrites {
        from_mem!();
        async fn write_at(&self, offset: u64, data: IoBuf, fua: bool) -> super::super::device::DevResult<()> {
            self.go.notified().await;
            self.mem.write_at(offset, data, fua).await
        }
    }

    /// A finished reply reaches the socket even while a later request is
    /// still running on the device (it was held in the writer's buffer
    /// until the next reply, found by review of 77eb2fe).
    #[tokio::test]
    async fn a_finished_reply_is_not_held_behind_a_running_request() {
        let go = Arc::new(tokio::sync::Notify::new());
        let dev = HeldWrites { mem: MemDevice::new(SIZE), go: go.clone() };
        let pool = PoolSize { small: (256 << 10, 4), large: (1 << 20, 4) };
        let server = NbdServer::with_pool("vol", dev, Activity::new(true), pool);
        let (mut c, srv) = tokio::io::duplex(1 << 20);
        let _task = tokio::spawn(async move { server.serve_transmission(srv).await });
        // A read (answered at once) and a write (held), sent together.
        let mut both = req(Cmd::Read, 0, 1, 0, 4096);
        both.extend(req(Cmd::Write, 0, 2, 4096, 4096));
        both.extend(vec![7u8; 4096]);
        c.write_all(&both).await.expect("send");
        let got = tokio::time::timeout(Duration::from_secs(2), reply(&mut c, 4096)).await;
        go.notify_one();
        assert!(got.is_ok(), "the read's reply was held in the writer's buffer while the write ran");
    }

    /// Completes writes on a thread of its own, which sends each success
    /// reply through the connection's reply line (as the volume thread
    /// does) after a pseudo-random delay; reads come from memory at once.
    #[derive(Clone)]
    struct ThreadReplies {
        mem: MemDevice,
        to_thread: std::sync::mpsc::Sender<(DirectReply, tokio::sync::oneshot::Sender<bool>)>,
        /// Replies sent by the thread, and left to the writer.
        sent: Arc<[std::sync::atomic::AtomicUsize; 2]>,
    }

    impl ThreadReplies {
        fn new() -> Self {
            let (to_thread, rx) = std::sync::mpsc::channel::<(DirectReply, tokio::sync::oneshot::Sender<bool>)>();
            let sent: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
            let counts = Arc::clone(&sent);
            std::thread::spawn(move || {
                let mut x = 0x2545_f491_u32;
                for (direct, done) in rx {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    std::thread::sleep(Duration::from_micros(u64::from(x % 200)));
                    let ok = direct.send_ok();
                    counts[usize::from(!ok)].fetch_add(1, Ordering::SeqCst);
                    let _ = done.send(ok);
                }
            });
            Self { mem: MemDevice::new(SIZE), to_thread, sent }
        }
    }

    impl BlockDevice for ThreadReplies {
        from_mem!();
        async fn write_at(&self, offset: u64, data: IoBuf, fua: bool) -> super::super::device::DevResult<()> {
            self.mem.write_at(offset, data, fua).await
        }
        async fn write_at_replying(
            &self,
            offset: u64,
            data: IoBuf,
            fua: bool,
            reply: DirectReply,
        ) -> super::super::device::DevResult<bool> {
            self.mem.write_at(offset, data, fua).await?;
            let (done, rx) = tokio::sync::oneshot::channel();
            let _ = self.to_thread.send((reply, done));
            Ok(rx.await.unwrap_or(false))
        }
    }

    /// Direct replies from another thread never cut the writer's replies:
    /// 600 pipelined requests (writes answered from a thread at random
    /// instants, 64 KiB reads answered by the writer) over a real unix
    /// socket; every reply parses, every cookie is answered exactly once,
    /// and every read returns its data. Some writes must have gone each
    /// way, or the test proves nothing about their meeting.
    #[tokio::test]
    async fn direct_replies_never_cut_the_writers_replies() {
        let pool = PoolSize { small: (256 << 10, 8), large: (1 << 20, 4) };
        let device = ThreadReplies::new();
        let sent = Arc::clone(&device.sent);
        let server = NbdServer::with_pool("vol", device, Activity::new(true), pool);
        let (srv, client) = tokio::net::UnixStream::pair().expect("socketpair");
        let line = ReplyLine::new(std::os::fd::AsFd::as_fd(&srv)).expect("dup");
        let _task = tokio::spawn(async move { server.serve_transmission_with(srv, Some(line)).await });
        let (mut rd, mut wr) = client.into_split();
        const N: u64 = 600;
        const READ: u32 = 64 << 10;
        let block = |i: u64| vec![(i % 251) as u8; READ as usize];
        // 32 read slots in the first 2 MiB get their contents first; the
        // concurrent writes go to the 1 MiB after them.
        const SLOTS: u64 = 32;
        for i in 0..SLOTS {
            let mut w = req(Cmd::Write, 0, 1_000_000 + i, i * u64::from(READ), READ);
            w.extend(block(i));
            wr.write_all(&w).await.expect("send");
            let mut h = [0u8; SIMPLE_REPLY_LEN];
            rd.read_exact(&mut h).await.expect("setup reply");
            assert_eq!(h, simple_reply(0, 1_000_000 + i));
        }
        let sender = tokio::spawn(async move {
            for i in 0..N {
                if i % 2 == 0 {
                    let mut w = req(Cmd::Write, 0, i, (2 << 20) + (i * 4096) % (1 << 20), 4096);
                    w.extend(vec![1u8; 4096]);
                    wr.write_all(&w).await.expect("send");
                } else {
                    let at = (i / 2) % SLOTS * u64::from(READ);
                    wr.write_all(&req(Cmd::Read, 0, i, at, READ)).await.expect("send");
                }
            }
            wr
        });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..N {
            let mut h = [0u8; SIMPLE_REPLY_LEN];
            rd.read_exact(&mut h).await.expect("reply header");
            assert_eq!(&h[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes(), "torn stream");
            assert_eq!(&h[4..8], &[0; 4], "no error");
            let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
            assert!(cookie < N && seen.insert(cookie), "cookie {cookie} unknown or answered twice");
            if cookie % 2 == 1 {
                let mut data = vec![0u8; READ as usize];
                rd.read_exact(&mut data).await.expect("read data");
                assert!(data == block(cookie / 2 % SLOTS), "read {cookie} returned the wrong bytes");
            }
        }
        drop(sender.await.expect("sender"));
        assert_eq!(seen.len(), N as usize);
        let (direct, by_writer) = (sent[0].load(Ordering::SeqCst), sent[1].load(Ordering::SeqCst));
        assert!(direct > 0 && by_writer > 0, "direct {direct}, by the writer {by_writer}: the two paths never met");
    }

    /// With a reply line (which holds a duplicate of the socket), a
    /// step-down still closes the client's connection at once.
    #[tokio::test]
    async fn stepping_down_closes_a_connection_with_a_reply_line() {
        let activity = Activity::new(true);
        let server = NbdServer::new("vol", MemDevice::new(SIZE), activity.clone());
        let (srv, mut client) = tokio::net::UnixStream::pair().expect("socketpair");
        let line = ReplyLine::new(std::os::fd::AsFd::as_fd(&srv)).expect("dup");
        let task = tokio::spawn(async move { server.serve_transmission_with(srv, Some(line)).await });
        client.write_all(&req(Cmd::Read, 0, 1, 0, 4096)).await.expect("send");
        let mut r = vec![0u8; SIMPLE_REPLY_LEN + 4096];
        client.read_exact(&mut r).await.expect("reply");
        activity.set_active(false);
        assert!(matches!(task.await.expect("join"), Err(NbdError::NotActive)));
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest)).await;
        assert_eq!(n.expect("closed within 2 s").expect("eof"), 0);
    }

    #[tokio::test]
    async fn handshake_go_then_transmission() {
        let server = NbdServer::new("vol", MemDevice::new(SIZE), Activity::new(true));
        let (mut c, srv) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move { server.serve_connection(srv).await });
        let mut g = [0u8; 18];
        c.read_exact(&mut g).await.expect("greeting");
        assert_eq!(&g[..8], b"NBDMAGIC");
        c.write_all(&3u32.to_be_bytes()).await.expect("flags");
        let data = InfoRequest { name: "vol".into(), infos: vec![INFO_BLOCK_SIZE] }.encode();
        c.write_all(&OptionHeader { option: OPT_GO, len: data.len() as u32 }.encode()).await.expect("opt");
        c.write_all(&data).await.expect("opt data");
        // INFO_EXPORT (20 + 12), INFO_BLOCK_SIZE (20 + 14), ACK (20).
        let mut r = vec![0u8; 32 + 34 + 20];
        c.read_exact(&mut r).await.expect("go replies");
        assert_eq!(&r[66 + 12..66 + 16], &REP_ACK.to_be_bytes());
        c.write_all(&req(Cmd::Read, 0, 9, 0, 4096)).await.expect("read");
        assert_eq!(reply(&mut c, 4096).await, (0, 9, vec![0; 4096]));
        drop(c);
        assert!(task.await.expect("join").is_ok());
    }
}
