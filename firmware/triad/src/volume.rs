//! The replicated volume in the supervisor: one OS thread owns the
//! node's [`Replica`] (journal, block store, replication decisions) and
//! does all its blocking disk I/O, so an fdatasync never delays a
//! heartbeat on the runtime loop; [`ReplicatedDevice`] is the NBD
//! server's view of it.
//!
//! ```text
//!  runtime loop ──View (after every core step)──┐
//!  data links (inbound Msg) ────────────────────┤   volume thread: drain commands,
//!  NBD writes (pool buffers, with a reply) ─────┼─▶ start a journal sync (group
//!  triad status / verify ───────────────────────┤   commit) if none runs, carry out
//!  sync thread: Synced ─────────────────────────┘   outputs
//!        ◀── Position / Electable (core inputs), replies, Msg to data links
//!        ──▶ sync thread: the fdatasync, while the next batches run
//!
//!  NBD reads: pread of the data file on the NBD task itself, no hand-off,
//!  between two checks of the serving state (below)
//! ```
//!
//! Reads (rule 15: only a serving leader inside its lease) do not go
//! through the thread: the store holds only committed, applied records and
//! is written with plain pwrite, so a pread of the data file sees exactly
//! what `Store::read` would. What the replica would check is kept in
//! [`ServeState`]: the volume thread publishes the epoch in which it is a
//! ready, consistent leader; the runtime publishes each view it hands over
//! (epoch and lease end) the moment it does so, before the thread takes it.
//! A read is served only if, both before and after its pread, the two
//! epochs agree and the lease has not ended: so the data is what a serving
//! leader held at some instant inside its lease. A step-down (a view that
//! is not ours) stops reads at once, even before the thread takes it, and
//! the handover's TimeoutNow is sent only after that.
//!
//! Must not: decide anything (the replica does), or run on the runtime
//! thread. A replica error is reported by the replica as a failed health
//! and refused requests; the thread itself never panics on input.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use triad_core::{Instant, NodeId};
use triad_host::volume::{ClientId, VolumeDriver, VolumeIn, VolumeOut};
use triad_repl::{Bytes, ClientError, Msg, Recovery, ReplConfig, ReplNotice, ReplStatus, Replica, VerifyReport, View};
use triad_volume::{Disk, FileDisk, JournalSync, Position, SyncJob};

use crate::nbd::device::{BlockDevice, DevResult, DeviceError};
use crate::nbd::{Activity, DirectReply, IoBuf};
use crate::sync_watch::{SyncWatch, Watched};

/// A disk of the supervisor's replica: a file or partition whose every
/// sync is watched (rule 16, `sync_watch.rs`).
pub type VolumeDisk = Watched<FileDisk>;

/// The replica the supervisor runs.
pub type FileReplica = Replica<VolumeDisk, VolumeDisk, VolumeDisk>;

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
    /// Rule 16: a sync of any of the volume's disks outstanding this long
    /// makes the node step down (`sync_watch.rs`).
    pub sync_stall: std::time::Duration,
    /// Bytes of NBD request buffers, allocated (and locked) at start; half
    /// of it is the largest request served (`nbd/pool.rs`).
    pub nbd_buffers: usize,
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
/// Every sync of its disks is marked in `watch`.
pub fn open_replica(
    id: NodeId,
    peers: [NodeId; 2],
    cfg: &VolumeConfig,
    watch: &Arc<SyncWatch>,
) -> Result<FileReplica, VolumeError> {
    let fresh = !cfg.meta.exists();
    let meta_len = triad_volume::store::meta_len_needed(cfg.size, cfg.granularity, 2);
    // The journal and metadata are written with zeroes when created, not
    // left sparse: an fdatasync after writing into a hole must also commit
    // the filesystem's block allocation, which is what every write's
    // latency would then pay for. The data file may stay sparse.
    let watched = |disk| Watched::new(disk, watch.clone());
    let journal = watched(open_file(&cfg.journal, cfg.journal_size, fresh, true)?);
    let data = watched(open_file(&cfg.data, cfg.size, fresh, false)?);
    let meta = watched(open_file(&cfg.meta, meta_len, fresh, true)?);
    let r = if fresh {
        info!(data = %cfg.data.display(), size = cfg.size, "formatting a new volume replica");
        // The box's incarnation (rule 18): peers tell this box from the one
        // it may replace by it. 0 means "unknown" (version 1 metadata).
        let incarnation = crate::runtime::random_u64().max(1);
        let learner = !cfg.new_cluster;
        if learner {
            warn!("new volume formatted as a replacement box: a learner until a leader has caught it up (set volume.new_cluster = true on all three boxes of a new cluster)");
        }
        let format = triad_volume::store::Format { granularity: cfg.granularity, incarnation, learner };
        Replica::format(id, peers, cfg.repl.clone(), journal, data, meta, format)?
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
    /// Whether the volume serves (a ready leader of its view): feed to the
    /// host as `Event::VolumeServing`.
    Serving(bool),
}

enum Cmd {
    /// A newer view is in the shared cell.
    View,
    /// As `View`, and answer once it is applied.
    ViewConfirmed(oneshot::Sender<()>),
    Peer(NodeId, Msg),
    /// A client write in the NBD server's buffers (returned to its pool
    /// once the replica has copied them into records).
    Write {
        offset: u64,
        data: IoBuf,
        reply: WriteReply,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        reply: WriteReply,
    },
    Verify {
        reply: oneshot::Sender<Result<VerifyReport, ClientError>>,
    },
    /// The sync thread ran journal sync `id`.
    Synced {
        id: u64,
        result: std::io::Result<()>,
    },
}

/// Handle to the volume thread; cheap to clone.
#[derive(Clone)]
pub struct VolumeHandle {
    tx: std_mpsc::Sender<Cmd>,
    /// The one state shared between the runtime and the thread: the view
    /// handed over and what a direct read checks (module doc).
    shared: Arc<Mutex<Shared>>,
    /// The NBD server's flag (set by the thread with the ready epoch).
    activity: Activity,
    /// The data file, read-only, for direct reads.
    data: Arc<File>,
    /// RWF_NOWAIT works on the data file (else every read goes to the blocking pool).
    nowait: Arc<AtomicBool>,
    now: Arc<dyn Fn() -> Instant + Send + Sync>,
    size: u64,
    /// Rule 16: when the sync in progress on the replica's disks began
    /// (sync_watch.rs; the disks mark it).
    sync_watch: Arc<SyncWatch>,
    /// The thread stops once every handle is gone (its own sync thread
    /// holds a sender too, so the channel alone never says so).
    _alive: Arc<()>,
}

impl std::fmt::Debug for VolumeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHandle").field("size", &self.size).field("serving", &self.serving()).finish()
    }
}

/// The state the runtime and the volume thread share, in one cell.
#[derive(Debug, Default)]
struct Shared {
    /// The core's latest view, until the thread takes it: read by the
    /// thread before every command and every sync, so a view never waits
    /// behind queued I/O (a stale lease end would refuse acknowledgements
    /// that are due).
    view: Option<View>,
    /// What a direct read checks.
    serve: ServeState,
    /// The replica's status as the thread last saw it, and when: `triad
    /// status` reads it here and never waits for the thread, which may be
    /// stuck in a sync (rule 16's case).
    status: Option<(ReplStatus, Instant)>,
}

/// What a direct read must know (module doc): the view the runtime handed
/// over last, and the epoch in which the thread's replica is a ready leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeState {
    /// Epoch of the latest view handed to the volume.
    pub view_epoch: u64,
    /// Its lease end, if that view makes this node the leader.
    pub lease_until: Option<Instant>,
    /// The epoch in which the replica (as the thread last saw it) leads,
    /// has its first record applied, and is consistent.
    pub ready_epoch: Option<u64>,
}

impl ServeState {
    /// Whether a read may be served at `now`.
    pub fn serves(&self, now: Instant) -> bool {
        self.ready_epoch == Some(self.view_epoch) && self.lease_until.is_some_and(|t| now < t)
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::View => "View",
            Cmd::ViewConfirmed(..) => "ViewConfirmed",
            Cmd::Peer(..) => "Peer",
            Cmd::Write { .. } => "Write",
            Cmd::WriteZeroes { .. } => "WriteZeroes",
            Cmd::Verify { .. } => "Verify",
            Cmd::Synced { .. } => "Synced",
        })
    }
}

/// Starts the volume thread. `now` is the core's clock; `send` puts a
/// message on the data link to a peer (non-blocking, may drop); `data` is
/// the replica's data file, opened again read-only for direct reads;
/// `sync_watch` is the watch the replica's disks mark their syncs in;
/// `reopen` takes a replica whose storage failed (rule 9) and opens its
/// disks again (`Recovery::Reopen`).
pub fn spawn<J, D, M>(
    replica: Replica<J, D, M>,
    data: &Path,
    now: impl Fn() -> Instant + Send + Sync + 'static,
    send: impl Fn(NodeId, &Msg) + Send + 'static,
    events: mpsc::UnboundedSender<VolumeEvent>,
    sync_watch: Arc<SyncWatch>,
    reopen: impl FnMut(Replica<J, D, M>) -> Result<Replica<J, D, M>, VolumeError> + Send + 'static,
) -> Result<VolumeHandle, VolumeError>
where
    J: Disk + Send + 'static,
    D: Disk + Send + 'static,
    M: Disk + Send + 'static,
{
    let reader = File::open(data).map_err(|source| VolumeError::Open { path: data.to_owned(), source })?;
    let (tx, rx) = std_mpsc::channel::<Cmd>();
    let size = replica.volume_len();
    let activity = Activity::new(false);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let now: Arc<dyn Fn() -> Instant + Send + Sync> = Arc::new(now);
    let alive = Arc::new(());
    let handles = Arc::downgrade(&alive);
    let synced = tx.clone();
    let handle = VolumeHandle {
        tx,
        shared: shared.clone(),
        activity: activity.clone(),
        data: Arc::new(reader),
        nowait: Arc::new(AtomicBool::new(true)),
        now: now.clone(),
        size,
        sync_watch: sync_watch.clone(),
        _alive: alive,
    };
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
            let jobs = match spawn_sync_thread(synced) {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %crate::errors::chain(&e), "volume: cannot start the sync thread; the volume stays down");
                    return;
                }
            };
            let mut t = Thread {
                next_client: 1,
                writes: HashMap::new(),
                verifies: HashMap::new(),
                events,
                send: Box::new(send),
                shared,
                activity,
                reboot_logged: false,
                jobs,
                handles,
                next_sync: 1,
            };
            t.run(replica, &*now, &rx, reopen);
        })
        .map_err(VolumeError::Thread)?;
    Ok(handle)
}

/// The thread that runs the journal's fdatasyncs while the volume thread
/// goes on appending, sending and applying: each job's result comes back
/// as `Cmd::Synced`. It ends when the volume thread drops `jobs`.
fn spawn_sync_thread(synced: std_mpsc::Sender<Cmd>) -> std::io::Result<std_mpsc::Sender<(u64, SyncJob)>> {
    let (jobs, rx) = std_mpsc::channel::<(u64, SyncJob)>();
    std::thread::Builder::new().name("triad-vol-sync".into()).spawn(move || {
        // Its fdatasync must not recurse into the writeback of the
        // filesystem this volume serves (as the volume thread).
        let _ = crate::os::realtime::set_io_flusher();
        for (id, job) in rx {
            if synced.send(Cmd::Synced { id, result: job.run() }).is_err() {
                return;
            }
        }
    })?;
    Ok(jobs)
}

/// Where a client write's answer goes: `Ok(true)` when its success reply
/// was already sent on the client's socket through `direct`.
struct WriteReply {
    done: oneshot::Sender<Result<bool, ClientError>>,
    /// The NBD connection's reply line, if the write came with one.
    direct: Option<DirectReply>,
}

impl WriteReply {
    fn new(direct: Option<DirectReply>) -> (Self, oneshot::Receiver<Result<bool, ClientError>>) {
        let (done, rx) = oneshot::channel();
        (Self { done, direct }, rx)
    }

    /// Answers the write. The success reply goes on the client's socket
    /// from this thread when the line takes it: the writer task, woken by
    /// `done`, then has nothing left to send (one hand-off fewer).
    fn answer(self, result: Result<(), ClientError>) {
        let sent = result.is_ok() && self.direct.is_some_and(DirectReply::send_ok);
        let _ = self.done.send(result.map(|()| sent));
    }
}

/// Puts a message on the data link to a peer (non-blocking, may drop).
type SendFn = Box<dyn Fn(NodeId, &Msg) + Send>;

/// The thread's side of the driver: where its outputs go.
struct Thread {
    next_client: ClientId,
    writes: HashMap<ClientId, WriteReply>,
    verifies: HashMap<ClientId, oneshot::Sender<Result<VerifyReport, ClientError>>>,
    events: mpsc::UnboundedSender<VolumeEvent>,
    send: SendFn,
    shared: Arc<Mutex<Shared>>,
    activity: Activity,
    /// Rule 9's "reboot" has been asked for in the log.
    reboot_logged: bool,
    /// The sync thread's queue.
    jobs: std_mpsc::Sender<(u64, SyncJob)>,
    /// Gone when every handle is.
    handles: std::sync::Weak<()>,
    /// The id of the next journal sync handed to the sync thread.
    next_sync: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Thread {
    /// The core's latest view, if a newer one arrived since the last look.
    fn latest_view(&self) -> Option<View> {
        lock(&self.shared).view.take()
    }

    /// One pass of the loop per wake-up: a batch of commands, one journal
    /// sync for all of them (group commit), in the driver's order
    /// (`triad_host::volume`): the clock and the latest view are read
    /// before each step, and again after the sync.
    fn run<J: Disk, D: Disk, M: Disk>(
        &mut self,
        replica: Replica<J, D, M>,
        now: &dyn Fn() -> Instant,
        rx: &std_mpsc::Receiver<Cmd>,
        mut reopen: impl FnMut(Replica<J, D, M>) -> Result<Replica<J, D, M>, VolumeError>,
    ) {
        let mut outs = Vec::new();
        let mut d = VolumeDriver::new(replica, now(), &mut outs);
        self.carry_out(&mut outs);
        self.snapshot(&d, now());
        // The journal sync on the sync thread, if one runs: its id and
        // what it covers.
        let mut running: Option<(u64, JournalSync)> = None;
        loop {
            // Rule 9: a replica whose storage failed has durably marked
            // itself inconsistent; it comes back only through its disks
            // opened again (journal cut to what it synced) and a resync.
            match d.recovery() {
                Some(Recovery::Reopen) => {
                    running = None;
                    d = match self.reopen(d, &mut reopen, now()) {
                        Some(d) => d,
                        None => return,
                    };
                }
                Some(Recovery::Reboot) if !self.reboot_logged => {
                    // Nothing on disk says the page cache lies: only a reboot
                    // makes the disks honest again. The supervisor is not PID
                    // 1 yet (issue 11): it stays failed, unfit, serving nothing.
                    tracing::error!("volume: storage failed and the failure could not be recorded on disk; this box must be rebooted");
                    self.reboot_logged = true;
                }
                _ => {}
            }
            let t = now();
            let wait = d.next_deadline().map_or(MAX_WAIT, |dl| dl.since(t).min(MAX_WAIT));
            let first = match rx.recv_timeout(wait) {
                Ok(cmd) => Some(cmd),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if self.handles.strong_count() == 0 {
                return;
            }
            for cmd in first.into_iter().chain(rx.try_iter().take(MAX_BATCH)) {
                if let Cmd::Synced { id, result } = cmd {
                    // A sync of a replica since reopened finishes nothing.
                    if let Some((_, sync)) = running.take_if(|(running, _)| *running == id) {
                        d.finish_sync(sync, result, &mut outs);
                        // The clock and the view read after the fdatasync.
                        d.after_sync(now, self.latest_view(), &mut outs);
                        self.carry_out(&mut outs);
                    }
                    continue;
                }
                self.command(&mut d, now, cmd, &mut outs);
                self.carry_out(&mut outs);
            }
            // Records go to the peers *before* this node's own fsync, so the
            // two journal syncs of a commit overlap instead of adding up.
            d.before_sync(now, self.latest_view(), &mut outs);
            self.carry_out(&mut outs);
            // One journal sync at a time, on the sync thread: this thread
            // goes on with the next batch while it runs (a sync covers only
            // what was appended before it started).
            if running.is_none() {
                if let Some((sync, job)) = d.start_sync(&mut outs) {
                    let id = self.next_sync;
                    self.next_sync += 1;
                    match self.jobs.send((id, job)) {
                        Ok(()) => running = Some((id, sync)),
                        // The sync thread is gone (it never exits first):
                        // sync here rather than never.
                        Err(std_mpsc::SendError((_, job))) => d.finish_sync(sync, job.run(), &mut outs),
                    }
                }
            }
            // What this pass's messages made possible (commits, replies,
            // applying), by the durable position as it stands.
            d.after_sync(now, self.latest_view(), &mut outs);
            self.carry_out(&mut outs);
            self.snapshot(&d, now());
        }
    }

    /// Publishes the replica's status after every pass (a few hundred
    /// bytes, against the pass's fdatasync).
    fn snapshot<J: Disk, D: Disk, M: Disk>(&mut self, d: &VolumeDriver<J, D, M>, now: Instant) {
        let status = d.replica().status(now);
        lock(&self.shared).status = Some((status, now));
    }

    /// Reopens the disks of a replica whose storage failed, under the view
    /// it had. `None` if they cannot be opened: the thread stops, the node
    /// stays unfit (its last report) and serves nothing.
    fn reopen<J: Disk, D: Disk, M: Disk>(
        &mut self,
        d: VolumeDriver<J, D, M>,
        reopen: &mut impl FnMut(Replica<J, D, M>) -> Result<Replica<J, D, M>, VolumeError>,
        now: Instant,
    ) -> Option<VolumeDriver<J, D, M>> {
        warn!("volume: storage failed; reopening the replica's disks (it will be resynced)");
        let view = d.view();
        let mut outs = Vec::new();
        let failed = d.into_replica(&mut outs);
        self.carry_out(&mut outs);
        match reopen(failed) {
            Ok(r) => {
                let mut d = VolumeDriver::new(r, now, &mut outs);
                d.take_view(now, Some(view), &mut outs);
                self.carry_out(&mut outs);
                self.snapshot(&d, now);
                info!(position = %show(d.replica().position()), "volume: replica reopened after a storage failure");
                Some(d)
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::chain(&e), "volume: cannot reopen the replica after a storage failure; not serving until restarted");
                None
            }
        }
    }

    fn client(&mut self) -> ClientId {
        let c = self.next_client;
        self.next_client += 1;
        c
    }

    fn command<J: Disk, D: Disk, M: Disk>(
        &mut self,
        d: &mut VolumeDriver<J, D, M>,
        clock: &dyn Fn() -> Instant,
        cmd: Cmd,
        outs: &mut Vec<VolumeOut>,
    ) {
        let now = clock();
        let view = self.latest_view();
        let input = match cmd {
            Cmd::View => return d.take_view(now, view, outs),
            // Taken by `run` before it gets here.
            Cmd::Synced { .. } => return,
            Cmd::ViewConfirmed(done) => {
                d.take_view(now, view, outs);
                let _ = done.send(());
                return;
            }
            Cmd::Peer(from, msg) => VolumeIn::Peer(from, msg),
            Cmd::Write { offset, data, reply } => {
                let client = self.client();
                self.writes.insert(client, reply);
                // The one copy of the payload on the leader: out of the NBD
                // pool (whose buffer goes back when `data` drops), into one
                // shared buffer that the records, the peers' messages and
                // the journal write all slice.
                let mut whole = Vec::with_capacity(data.len());
                let mut ends = Vec::new();
                for c in data.chunks() {
                    whole.extend_from_slice(c);
                    ends.push(whole.len());
                }
                drop(data);
                let whole = Bytes::from(whole);
                let mut at = 0;
                let pieces = ends
                    .into_iter()
                    .map(|end| {
                        let p = whole.slice(at..end);
                        at = end;
                        p
                    })
                    .collect();
                VolumeIn::Write { client, offset, pieces }
            }
            Cmd::WriteZeroes { offset, len, reply } => {
                let client = self.client();
                self.writes.insert(client, reply);
                VolumeIn::WriteZeroes { client, offset, len }
            }
            Cmd::Verify { reply } => {
                let client = self.client();
                self.verifies.insert(client, reply);
                VolumeIn::Verify { client }
            }
        };
        d.command(clock, view, input, outs);
    }

    fn carry_out(&mut self, outs: &mut Vec<VolumeOut>) {
        for o in outs.drain(..) {
            match o {
                VolumeOut::Send { to, msg } => (self.send)(to, &msg),
                VolumeOut::WriteDone { client, result } => {
                    if let Some(reply) = self.writes.remove(&client) {
                        reply.answer(result);
                    }
                }
                VolumeOut::VerifyDone { client, result } => {
                    if let Some(reply) = self.verifies.remove(&client) {
                        let _ = reply.send(result);
                    }
                }
                VolumeOut::Position(p) => {
                    let _ = self.events.send(VolumeEvent::Position(p));
                }
                VolumeOut::Electable(e) => {
                    let _ = self.events.send(VolumeEvent::Electable(e));
                }
                VolumeOut::Membership(m) => {
                    let _ = self.events.send(VolumeEvent::Membership(m));
                }
                VolumeOut::Notice(n) => log_notice(&n),
                VolumeOut::ViewTaken(_) => {}
                // Direct reads and the NBD server: a ready leader of the
                // view the replica took last.
                VolumeOut::Serving(epoch) => {
                    lock(&self.shared).serve.ready_epoch = epoch;
                    self.activity.set_active(epoch.is_some());
                    let _ = self.events.send(VolumeEvent::Serving(epoch.is_some()));
                }
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
        ReplNotice::DataLinksSilent { epoch, until } => {
            tracing::error!(epoch, until = ?until, "volume: no peer heard on the data links for the write timeout; stepping down")
        }
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
    /// Rule 16: a sync of one of the replica's disks has been outstanding
    /// for longer than `limit` (the disk hangs).
    pub fn sync_stalled(&self, limit: std::time::Duration) -> bool {
        self.sync_watch.stalled(limit)
    }

    /// The core's view after a step.
    pub fn set_view(&self, view: View) {
        self.put_view(view);
        let _ = self.tx.send(Cmd::View);
    }

    fn put_view(&self, view: View) {
        // Direct reads see the new view at once: a view that is not this
        // node's leadership (or a later epoch) stops them before the
        // thread has even taken it.
        let mut shared = lock(&self.shared);
        shared.serve.view_epoch = view.epoch;
        shared.serve.lease_until = view.lease_until.filter(|_| view.leader.is_some());
        shared.view = Some(view);
    }

    /// The view, returning whether the volume thread took it within
    /// `limit`. A handover (TimeoutNow) may let another node serve only
    /// after `true`: a thread stuck in a sync has not seen the step-down
    /// and could still acknowledge writes once the sync returns.
    pub async fn set_view_confirmed(&self, view: View, limit: Duration) -> bool {
        let (done, rx) = oneshot::channel();
        self.put_view(view);
        if self.tx.send(Cmd::ViewConfirmed(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// The NBD server's activity flag: true while this node leads and its
    /// epoch's first record is applied (the replica itself checks the
    /// lease on every acknowledgement, direct reads through [`ServeState`]).
    /// Going false closes the open NBD connections.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// A message from a peer's data link.
    pub fn peer_message(&self, from: NodeId, msg: Msg) {
        let _ = self.tx.send(Cmd::Peer(from, msg));
    }

    /// Whether this node serves the volume now (leader, no-op committed).
    pub fn serving(&self) -> bool {
        self.activity.is_active()
    }

    /// The replica's status.
    /// The replica's status as the thread last published it, and how old
    /// that snapshot is. Never waits for the thread: a snapshot older than
    /// a few tenths of a second means the thread is busy or stuck (a sync
    /// that does not return: `sync_stalled`).
    pub fn status(&self) -> Option<(ReplStatus, Duration)> {
        let (status, at) = lock(&self.shared).status.clone()?;
        let age = Duration::from_micros((self.now)().since(at).as_micros() as u64);
        Some((status, age))
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

    /// Whether a read may be served now (rule 15, module doc).
    fn check_serving(&self) -> Result<(), ClientError> {
        let s = lock(&self.shared).serve;
        if s.serves((self.now)()) {
            Ok(())
        } else if s.lease_until.is_some() && s.ready_epoch != Some(s.view_epoch) {
            Err(ClientError::NotReady) // leading, first record not applied yet
        } else {
            Err(ClientError::NotActive)
        }
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

/// Reads as much of `buf` as the page cache holds without blocking
/// (`preadv2(RWF_NOWAIT)`); returns the bytes read. `Err` only for a real
/// error; "would block" and "not supported" end the attempt with what it got.
fn pread_nowait(file: &File, offset: u64, buf: &mut [u8], nowait: &AtomicBool) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() && nowait.load(Ordering::Relaxed) {
        let rest = buf.get_mut(got..).unwrap_or_default();
        let iov = libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() };
        let Ok(off) = libc::off_t::try_from(offset + got as u64) else { break };
        // SAFETY: iov points at `rest`, which is valid for writes of
        // iov_len bytes and outlives the call; the fd is open.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        match n {
            0 => break, // end of file: the blocking read reports it
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                        nowait.store(false, Ordering::Relaxed);
                        break;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(got)
}

impl ReplicatedDevice {
    async fn send_write(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        cmd: Cmd,
        rx: oneshot::Receiver<Result<bool, ClientError>>,
    ) -> DevResult<bool> {
        self.handle.tx.send(cmd).map_err(|_| DeviceError::Worker { op })?;
        match rx.await {
            Ok(Ok(sent)) => Ok(sent),
            Ok(Err(e)) => Err(client_err(op, offset, len, e)),
            Err(_) => Err(DeviceError::Worker { op }),
        }
    }

    /// Fills `buf` from the data file: from the page cache on this task if
    /// it can, else on the blocking pool (a disk read must not stall the
    /// runtime thread, which also carries the heartbeats).
    async fn pread(&self, offset: u64, mut buf: IoBuf) -> DevResult<IoBuf> {
        let len = buf.len() as u64;
        let io = |e| DeviceError::Io { op: "read", offset, len, source: e };
        let (file, nowait) = (&self.handle.data, &self.handle.nowait);
        let mut done = 0u64;
        let mut complete = true;
        for c in buf.chunks_mut() {
            let got = pread_nowait(file, offset + done, c, nowait).map_err(io)?;
            done += got as u64;
            if got < c.len() {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(buf);
        }
        let file = Arc::clone(&self.handle.data);
        let blocking = tokio::task::spawn_blocking(move || {
            let mut at = 0u64;
            for c in buf.chunks_mut() {
                let end = at + c.len() as u64;
                if end > done {
                    let skip = done.saturating_sub(at) as usize;
                    let rest = c.get_mut(skip..).unwrap_or_default();
                    file.read_exact_at(rest, offset + at + skip as u64)?;
                }
                at = end;
            }
            Ok::<_, std::io::Error>(buf)
        });
        blocking.await.map_err(|_| DeviceError::Worker { op: "read" })?.map_err(io)
    }
}

impl BlockDevice for ReplicatedDevice {
    fn size(&self) -> u64 {
        self.handle.size
    }

    async fn read_at(&self, offset: u64, buf: IoBuf) -> DevResult<IoBuf> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.handle.size) {
            return Err(DeviceError::Range { op: "read", offset, len });
        }
        let refused = |e| client_err("read", offset, len, e);
        // Before: no point reading for a refusal. After: the bytes read are
        // what a serving leader held at an instant inside its lease.
        self.handle.check_serving().map_err(refused)?;
        let buf = self.pread(offset, buf).await?;
        self.handle.check_serving().map_err(refused)?;
        Ok(buf)
    }

    async fn write_at(&self, offset: u64, data: IoBuf, _fua: bool) -> DevResult<()> {
        // Returned = committed on a majority: FUA holds already.
        let len = data.len() as u64;
        let (reply, rx) = WriteReply::new(None);
        self.send_write("write", offset, len, Cmd::Write { offset, data, reply }, rx).await.map(|_| ())
    }

    async fn write_at_replying(&self, offset: u64, data: IoBuf, _fua: bool, direct: DirectReply) -> DevResult<bool> {
        // The volume thread sends the reply once the write is committed.
        let len = data.len() as u64;
        let (reply, rx) = WriteReply::new(Some(direct));
        self.send_write("write", offset, len, Cmd::Write { offset, data, reply }, rx).await
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
        let len = u64::from(len);
        let (reply, rx) = WriteReply::new(None);
        self.send_write("write-zeroes", offset, len, Cmd::WriteZeroes { offset, len, reply }, rx).await.map(|_| ())
    }
}

/// Converts a volume position for display.
pub fn show(p: Position) -> String {
    format!("{}/{}", p.epoch, p.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_the_ready_epoch_to_be_the_views_and_the_lease() {
        let lease = Some(Instant(1_000));
        let s = ServeState { view_epoch: 3, lease_until: lease, ready_epoch: Some(3) };
        assert!(s.serves(Instant(999)));
        assert!(!s.serves(Instant(1_000)), "the lease end is exclusive");
        // The runtime handed over a newer view; the thread has not taken it yet.
        assert!(!ServeState { view_epoch: 4, ..s }.serves(Instant(10)));
        // Stepped down (a view that is not this node's leadership).
        assert!(!ServeState { lease_until: None, ..s }.serves(Instant(10)));
        // Leading, but the epoch's first record is not applied (or storage failed).
        assert!(!ServeState { ready_epoch: None, ..s }.serves(Instant(10)));
        assert!(!ServeState::default().serves(Instant(0)));
    }
}

#[cfg(test)]
#[path = "volume_thread_tests.rs"]
mod thread_tests;
