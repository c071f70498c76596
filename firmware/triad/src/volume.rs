//! The replicated volume in the supervisor: one OS thread owns the
//! node's [`Replica`] (journal, block store, replication decisions) and
//! does all its blocking disk I/O, so an fdatasync never delays a
//! heartbeat on the runtime loop; [`ReplicatedDevice`] is the NBD
//! server's view of it.
//!
//! ```text
//!  runtime loop ──View (after every core step)──┐
//!  data links (inbound Msg) ────────────────────┤   volume thread: drain commands,
//!  NBD requests (Write/Read, with a reply) ─────┼─▶ one journal sync for the batch
//!  triad status / verify ───────────────────────┘   (group commit), carry out outputs
//!        ◀── Position / Electable (core inputs), replies, Msg to data links
//! ```
//!
//! Must not: decide anything (the replica does), or run on the runtime
//! thread. A replica error is reported by the replica as a failed health
//! and refused requests; the thread itself never panics on input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use triad_core::{Instant, NodeId};
use triad_repl::{ClientError, Msg, Out, ReplConfig, ReplNotice, ReplStatus, Replica, VerifyReport, View};
use triad_volume::{FileDisk, Position};

use crate::nbd::device::{BlockDevice, DevResult, DeviceError};

/// The replica the supervisor runs.
pub type FileReplica = Replica<FileDisk, FileDisk, FileDisk>;

/// Longest the thread sleeps without looking at the replica's timers.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Commands taken per batch before syncing (bounds a batch's latency).
const MAX_BATCH: usize = 64;

/// Where the volume lives and how it replicates (the `[volume]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeConfig {
    /// The block store: a file (created at `size` if missing) or a block device.
    pub data: PathBuf,
    /// Volume size in bytes when the data file is created.
    pub size: u64,
    /// The journal ring: a file (created at `journal_size`) or a partition.
    pub journal: PathBuf,
    /// Journal size in bytes when created.
    pub journal_size: u64,
    /// Checkpoint and bitmaps.
    pub meta: PathBuf,
    /// Bytes per dirty-bitmap bit.
    pub granularity: u64,
    /// Unix socket of the NBD export (active node only).
    pub nbd_socket: PathBuf,
    /// TCP port of the data links between the nodes.
    pub data_port: u16,
    /// Replication tunables.
    pub repl: ReplConfig,
    /// Format a missing volume as a member of a new cluster (a voter from
    /// the start) rather than as a replacement box (a learner until caught
    /// up, rule 18). Only for the three boxes of a cluster being created.
    pub new_cluster: bool,
}

/// Why the volume could not start.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A backing file could not be created or opened.
    #[error("cannot open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be formatted or opened.
    #[error("replica")]
    Replica(#[from] triad_repl::ReplicaError),
    /// The thread could not be started.
    #[error("cannot start the volume thread")]
    Thread(#[source] std::io::Error),
}

/// Opens the node's replica, formatting it on the first start (all three
/// files absent): as a member of a new cluster (every node starting from
/// the same zeroes) with `new_cluster`, else as a replacement box, a
/// learner that neither votes nor stands until it has caught up.
pub fn open_replica(id: NodeId, peers: [NodeId; 2], cfg: &VolumeConfig) -> Result<FileReplica, VolumeError> {
    let fresh = !cfg.meta.exists();
    let meta_len = triad_volume::store::meta_len_needed(cfg.size, cfg.granularity, 2);
    // The journal and metadata are written with zeroes when created, not
    // left sparse: an fdatasync after writing into a hole must also commit
    // the filesystem's block allocation, which is what every write's
    // latency would then pay for. The data file may stay sparse.
    let journal = open_file(&cfg.journal, cfg.journal_size, fresh, true)?;
    let data = open_file(&cfg.data, cfg.size, fresh, false)?;
    let meta = open_file(&cfg.meta, meta_len, fresh, true)?;
    let r = if fresh {
        info!(data = %cfg.data.display(), size = cfg.size, "formatting a new volume replica");
        // The box's incarnation (rule 18): peers tell this box from the one
        // it may replace by it. 0 means "unknown" (version 1 metadata).
        let incarnation = crate::runtime::random_u64().max(1);
        let learner = !cfg.new_cluster;
        if learner {
            warn!("new volume formatted as a replacement box: a learner until a leader has caught it up (set volume.new_cluster = true on all three boxes of a new cluster)");
        }
        Replica::format(id, peers, cfg.repl.clone(), journal, data, meta, cfg.granularity, incarnation, learner)?
    } else {
        if cfg.new_cluster {
            warn!("volume.new_cluster is set but the volume exists: remove the setting, or a replaced box would be formatted as a voter before it holds the cluster's data");
        }
        Replica::open(id, peers, cfg.repl.clone(), journal, data, meta)?
    };
    Ok(r)
}

fn open_file(path: &Path, len: u64, create: bool, fill: bool) -> Result<FileDisk, VolumeError> {
    let err = |source| VolumeError::Open { path: path.to_owned(), source };
    if create && !path.exists() {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(err)?;
        if fill {
            use std::io::Write;
            let zeroes = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeroes.len() as u64) as usize;
                f.write_all(&zeroes[..n]).map_err(err)?;
                left -= n as u64;
            }
        } else {
            f.set_len(len).map_err(err)?;
        }
        f.sync_all().map_err(err)?;
    }
    FileDisk::open(path).map_err(err)
}

/// What the volume thread tells the runtime loop.
#[derive(Debug)]
pub enum VolumeEvent {
    /// Feed to the core as `Input::PositionChanged`.
    Position(triad_core::Position),
    /// Feed to the core as `Input::Electable`.
    Electable(bool),
    /// Feed to the core as `Input::Membership`.
    Membership(triad_core::Membership),
}

enum Cmd {
    /// A newer view is in the shared cell.
    View,
    /// As `View`, and answer once it is applied.
    ViewConfirmed(oneshot::Sender<()>),
    Peer(NodeId, Msg),
    Write {
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Read {
        offset: u64,
        len: u32,
        reply: oneshot::Sender<Result<Vec<u8>, ClientError>>,
    },
    Verify {
        reply: oneshot::Sender<Result<VerifyReport, ClientError>>,
    },
    Status {
        reply: oneshot::Sender<ReplStatus>,
    },
}

/// Handle to the volume thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    tx: std_mpsc::Sender<Cmd>,
    /// The core's latest view: read by the thread before every command and
    /// every sync, so a view never waits behind queued I/O (a stale lease
    /// end would refuse acknowledgements that are due).
    view: Arc<std::sync::Mutex<Option<View>>>,
    serving: Arc<AtomicBool>,
    size: u64,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::View => "View",
            Cmd::ViewConfirmed(..) => "ViewConfirmed",
            Cmd::Peer(..) => "Peer",
            Cmd::Write { .. } => "Write",
            Cmd::Read { .. } => "Read",
            Cmd::Verify { .. } => "Verify",
            Cmd::Status { .. } => "Status",
        })
    }
}

/// Starts the volume thread. `now` is the core's clock; `send` puts a
/// message on the data link to a peer (non-blocking, may drop).
pub fn spawn(
    mut replica: FileReplica,
    now: impl Fn() -> Instant + Send + 'static,
    send: impl Fn(NodeId, &Msg) + Send + 'static,
    events: mpsc::UnboundedSender<VolumeEvent>,
) -> Result<VolumeHandle, VolumeError> {
    let (tx, rx) = std_mpsc::channel::<Cmd>();
    let serving = Arc::new(AtomicBool::new(false));
    let size = replica.volume_len();
    let serving_flag = serving.clone();
    let view = Arc::new(std::sync::Mutex::new(None));
    let view_cell = view.clone();
    std::thread::Builder::new()
        .name("triad-volume".into())
        .spawn(move || {
            // Bulk work never at the heartbeats' real-time priority.
            if let Err(e) = crate::os::realtime::set_normal() {
                warn!(error = %crate::errors::chain(&e), "volume thread: could not leave SCHED_FIFO");
            }
            // This thread serves the filesystem the kernel may be flushing:
            // it must not recurse into that filesystem's writeback.
            if let Err(e) = crate::os::realtime::set_io_flusher() {
                warn!(error = %crate::errors::chain(&e), "volume thread: PR_SET_IO_FLUSHER not set");
            }
            let mut t = Thread {
                next_id: 1,
                writes: HashMap::new(),
                verifies: HashMap::new(),
                events,
                send: Box::new(send),
                view: view_cell,
            };
            t.run(&mut replica, &now, &rx, &serving_flag);
        })
        .map_err(VolumeError::Thread)?;
    Ok(VolumeHandle { tx, view, serving, size })
}

/// Puts a message on the data link to a peer (non-blocking, may drop).
type SendFn = Box<dyn Fn(NodeId, &Msg) + Send>;

struct Thread {
    next_id: u64,
    writes: HashMap<u64, oneshot::Sender<Result<(), ClientError>>>,
    verifies: HashMap<u64, oneshot::Sender<Result<VerifyReport, ClientError>>>,
    events: mpsc::UnboundedSender<VolumeEvent>,
    send: SendFn,
    view: Arc<std::sync::Mutex<Option<View>>>,
}

impl Thread {
    /// Applies the core's latest view, if a newer one arrived.
    fn fresh_view(&self, r: &mut FileReplica, now: Instant, out: &mut Vec<Out>) {
        let latest = match self.view.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(v) = latest {
            r.set_view(now, v, out);
        }
    }

    fn run(
        &mut self,
        r: &mut FileReplica,
        now: &dyn Fn() -> Instant,
        rx: &std_mpsc::Receiver<Cmd>,
        serving: &AtomicBool,
    ) {
        let mut out = Vec::new();
        r.set_view(now(), View::default(), &mut out);
        self.carry_out(&mut out);
        loop {
            let t = now();
            let wait = r.next_deadline().map_or(MAX_WAIT, |d| d.since(t).min(MAX_WAIT));
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.command(r, now(), cmd, &mut out),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            for cmd in rx.try_iter().take(MAX_BATCH) {
                self.command(r, now(), cmd, &mut out);
            }
            let t = now();
            self.fresh_view(r, t, &mut out);
            if r.next_deadline().is_some_and(|d| d <= t) {
                r.tick(t, &mut out);
            }
            // Records go to the peers *before* this node's own fsync, so the
            // two journal syncs of a commit overlap instead of adding up.
            self.carry_out(&mut out);
            r.sync(t, &mut out);
            self.carry_out(&mut out);
            serving.store(r.leading_and_ready(), Ordering::SeqCst);
        }
    }

    fn command(&mut self, r: &mut FileReplica, now: Instant, cmd: Cmd, out: &mut Vec<Out>) {
        self.fresh_view(r, now, out);
        match cmd {
            Cmd::View => {}
            Cmd::ViewConfirmed(done) => {
                let _ = done.send(());
            }
            Cmd::Peer(from, msg) => r.receive(now, from, msg, out),
            Cmd::Write { offset, data, reply } => {
                let id = self.next_id;
                self.next_id += 1;
                self.writes.insert(id, reply);
                r.write(now, id, offset, &data, out);
            }
            Cmd::Read { offset, len, reply } => {
                let mut buf = vec![0u8; len as usize];
                let _ = reply.send(r.read(now, offset, &mut buf).map(|()| buf));
            }
            Cmd::Verify { reply } => {
                let id = self.next_id;
                self.next_id += 1;
                match r.verify(now, id, out) {
                    Ok(()) => {
                        self.verifies.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Status { reply } => {
                let _ = reply.send(r.status(now));
            }
        }
    }

    fn carry_out(&mut self, out: &mut Vec<Out>) {
        for o in out.drain(..) {
            match o {
                Out::Send { to, msg } => (self.send)(to, &msg),
                Out::WriteDone { id, result } => {
                    if let Some(reply) = self.writes.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Out::Position(p) => {
                    let _ = self.events.send(VolumeEvent::Position(p));
                }
                Out::Electable(e) => {
                    let _ = self.events.send(VolumeEvent::Electable(e));
                }
                Out::Membership(m) => {
                    let _ = self.events.send(VolumeEvent::Membership(m));
                }
                Out::VerifyDone(report) => {
                    if let Some(reply) = self.verifies.remove(&report.id) {
                        let _ = reply.send(Ok(report));
                    }
                }
                Out::Notice(n) => log_notice(&n),
            }
        }
    }
}

fn log_notice(n: &ReplNotice) {
    match n {
        ReplNotice::Ready { epoch, seq } => info!(epoch, seq, "volume: first record of the epoch committed; serving"),
        ReplNotice::ResyncStarted { peer, hash, bytes } => info!(peer, hash, bytes, "volume: block resync started"),
        ReplNotice::ResyncFinished { peer, point, bytes } => {
            info!(peer, point = ?point, bytes, "volume: block resync finished")
        }
        ReplNotice::SplitBrain { peer, detail } => {
            tracing::error!(peer, %detail, "volume: divergent committed history; refusing to join")
        }
        ReplNotice::StorageFailed { detail } => tracing::error!(%detail, "volume: storage failed; not serving"),
        ReplNotice::Refused { peer, reason } => warn!(peer, %reason, "volume: message refused"),
        ReplNotice::PeerReplaced { peer, old, new } => {
            warn!(
                peer,
                old = format!("{old:x}"),
                new = format!("{new:x}"),
                "volume: peer box replaced (new incarnation)"
            )
        }
    }
}

impl VolumeHandle {
    /// The core's view after a step.
    pub fn set_view(&self, view: View) {
        self.put_view(view);
        let _ = self.tx.send(Cmd::View);
    }

    fn put_view(&self, view: View) {
        match self.view.lock() {
            Ok(mut g) => *g = Some(view),
            Err(p) => *p.into_inner() = Some(view),
        }
    }

    /// The view, returning once the volume thread has taken it (before a
    /// handover lets another node serve).
    pub async fn set_view_confirmed(&self, view: View) {
        let (done, rx) = oneshot::channel();
        self.put_view(view);
        if self.tx.send(Cmd::ViewConfirmed(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }

    /// The NBD server's activity flag: true while this node leads and its
    /// epoch's first record is applied (the replica itself checks the
    /// lease on every read and acknowledgement).
    pub fn activity(&self) -> crate::nbd::Activity {
        crate::nbd::Activity::from_flag(self.serving.clone())
    }

    /// A message from a peer's data link.
    pub fn peer_message(&self, from: NodeId, msg: Msg) {
        let _ = self.tx.send(Cmd::Peer(from, msg));
    }

    /// Whether this node serves the volume now (leader, no-op committed, in lease).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The replica's status.
    pub async fn status(&self) -> Option<ReplStatus> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Status { reply }).ok()?;
        tokio::time::timeout(Duration::from_secs(2), rx).await.ok()?.ok()
    }

    /// Runs an online verify to its end.
    pub async fn verify(&self) -> Result<VerifyReport, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Verify { reply }).map_err(|_| "the volume thread is gone".to_string())?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("verify abandoned (leadership changed)".into()),
        }
    }

    /// The NBD server's device over this volume.
    pub fn device(&self) -> ReplicatedDevice {
        ReplicatedDevice { handle: self.clone() }
    }
}

/// The NBD export's block device: every write is committed on a majority
/// before it returns, so FLUSH and FUA have nothing left to do.
#[derive(Clone, Debug)]
pub struct ReplicatedDevice {
    handle: VolumeHandle,
}

fn client_err(op: &'static str, offset: u64, len: u64, e: ClientError) -> DeviceError {
    DeviceError::Io { op, offset, len, source: std::io::Error::other(e.to_string()) }
}

impl ReplicatedDevice {
    async fn write(&self, op: &'static str, offset: u64, data: Vec<u8>) -> DevResult<()> {
        let len = data.len() as u64;
        let (reply, rx) = oneshot::channel();
        self.handle.tx.send(Cmd::Write { offset, data, reply }).map_err(|_| DeviceError::Worker { op })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(client_err(op, offset, len, e)),
            Err(_) => Err(DeviceError::Worker { op }),
        }
    }
}

impl BlockDevice for ReplicatedDevice {
    fn size(&self) -> u64 {
        self.handle.size
    }

    async fn read_at(&self, offset: u64, len: u32) -> DevResult<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.handle.tx.send(Cmd::Read { offset, len, reply }).map_err(|_| DeviceError::Worker { op: "read" })?;
        match rx.await {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => Err(client_err("read", offset, u64::from(len), e)),
            Err(_) => Err(DeviceError::Worker { op: "read" }),
        }
    }

    async fn write_at(&self, offset: u64, data: Vec<u8>, _fua: bool) -> DevResult<()> {
        // Returned = committed on a majority: FUA holds already.
        self.write("write", offset, data).await
    }

    async fn flush(&self) -> DevResult<()> {
        // Every write that returned is committed (durable on a majority).
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u32, _fua: bool) -> DevResult<()> {
        // A hint; contents afterwards are unspecified, so keeping them is correct.
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, _no_hole: bool) -> DevResult<()> {
        self.write("write-zeroes", offset, vec![0u8; len as usize]).await
    }
}

/// Converts a volume position for display.
pub fn show(p: Position) -> String {
    format!("{}/{}", p.epoch, p.seq)
}
