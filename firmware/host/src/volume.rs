//! The volume thread's driver: owns the node's [`Replica`] and runs one
//! pass of the thread's loop in the order the safety rules need. The
//! supervisor's volume thread (`triad/src/volume.rs`) and the simulator's
//! data world both run it; each only reads its clock, takes the latest
//! view from where the host put it, and carries out the outputs.
//!
//! One pass, in this order (each `view` argument is the host's latest view
//! if a newer one arrived since the last call, taken *before* the step;
//! `clock` is the caller's clock, read by the driver before the step and
//! again after the step's disk I/O):
//! ```text
//!  command(clock, view, c) …  each command under the latest view (a step-down
//!                             refuses writes at once, even queued ones)
//!  before_sync(clock, view)   tick if due; the caller carries the outputs out
//!                             now: records reach the peers before this node's
//!                             own fdatasync, so the two syncs of a commit overlap
//!  sync()                     the journal's fdatasync (group commit); may take long
//!  after_sync(clock, view)    the clock and `view` read after the sync
//! ```
//! or, overlapping the fdatasync with the next passes (the supervisor):
//! `start_sync()` hands out the fdatasync of everything appended so far
//! as a job for another thread; passes go on (`command`, `before_sync`,
//! `after_sync`, with no new sync while one runs); when the job returns,
//! `finish_sync(result)` then `after_sync(clock, view)`. A sync covers
//! only the records appended before it started, and what it covers is
//! what becomes durable (`triad_volume::Journal::finish_sync`).
//! Every step that may apply records ends with the replica's
//! acknowledgements judged at a time read *after* the step's I/O (the
//! store's pwrite may block on writeback): a write is answered only if
//! the lease still held then.
//!
//! A client write may be several replica writes (one per NBD pool buffer,
//! or per megabyte of zeroes); it is answered once, when all are done,
//! with the first error if any.
//!
//! Must not: read a clock, touch a channel or a socket, or decide anything
//! the replica decides (it only orders the calls and groups the answers).

use std::collections::HashMap;

use triad_core::{Instant, Membership, NodeId, Position};
use triad_repl::{Bytes, ClientError, Msg, Out, Recovery, ReplNotice, Replica, VerifyReport, View};
use triad_volume::{Disk, JournalSync, SyncJob};

/// A client's write, verify or status asks for an answer by this id.
pub type ClientId = u64;

/// WRITE_ZEROES is written from one shared buffer of zeroes this long.
const ZEROES_LEN: usize = 1 << 20;

/// What the volume thread asks of the replica.
#[derive(Debug)]
pub enum VolumeIn {
    /// A message from a peer's data link.
    Peer(NodeId, Msg),
    /// A client write of `pieces` laid end to end from `offset`.
    Write {
        /// Answered as [`VolumeOut::WriteDone`] with this id.
        client: ClientId,
        /// Byte offset in the volume.
        offset: u64,
        /// The data, in pieces that share their buffers with the records.
        pieces: Vec<Bytes>,
    },
    /// A client write of `len` zero bytes at `offset`.
    WriteZeroes {
        /// Answered as [`VolumeOut::WriteDone`] with this id.
        client: ClientId,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes of zeroes.
        len: u64,
    },
    /// Start an online verify; answered as [`VolumeOut::VerifyDone`].
    Verify {
        /// The answer's id.
        client: ClientId,
    },
}

/// What the caller carries out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOut {
    /// Put `msg` on the data link to `to` (non-blocking, may drop).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Msg,
    },
    /// A client write finished.
    WriteDone {
        /// Its id.
        client: ClientId,
        /// Committed and applied, or why not.
        result: Result<(), ClientError>,
    },
    /// A verify finished (or could not start).
    VerifyDone {
        /// Its id.
        client: ClientId,
        /// The report, or why there is none.
        result: Result<VerifyReport, ClientError>,
    },
    /// For the host: `Event::VolumePosition`.
    Position(Position),
    /// For the host: `Event::VolumeElectable`.
    Electable(bool),
    /// For the host: `Event::VolumeMembership`.
    Membership(Membership),
    /// For the log.
    Notice(ReplNotice),
    /// The replica took this view (the step-down a handover waits for is
    /// taken once this is out).
    ViewTaken(View),
    /// Whether the replica serves, and in which epoch: a ready leader of
    /// the view it took last. Published for direct reads and the NBD
    /// server; out only when it changes.
    Serving(Option<u64>),
}

/// One client write's replica writes.
#[derive(Debug)]
struct Group {
    client: ClientId,
    left: usize,
    result: Result<(), ClientError>,
}

/// The replica and the bookkeeping of one volume thread.
#[derive(Debug)]
pub struct VolumeDriver<J: Disk, D: Disk, M: Disk> {
    replica: Replica<J, D, M>,
    /// The view the replica took last (a reopened replica starts from it).
    view: View,
    /// What was published last as [`VolumeOut::Serving`].
    serving: Option<Option<u64>>,
    next_piece: u64,
    /// Replica write id → its group (by the group's first piece id).
    pieces: HashMap<u64, u64>,
    groups: HashMap<u64, Group>,
    /// Replica verify id → client.
    verifies: HashMap<u64, ClientId>,
    zeroes: Option<Bytes>,
    out: Vec<Out>,
}

impl<J: Disk, D: Disk, M: Disk> VolumeDriver<J, D, M> {
    /// The driver of a replica just opened: it starts under an empty view
    /// (no leader), serving nothing, until the host hands it one.
    pub fn new(replica: Replica<J, D, M>, now: Instant, outs: &mut Vec<VolumeOut>) -> Self {
        let mut d = VolumeDriver {
            replica,
            view: View::default(),
            serving: None,
            next_piece: 1,
            pieces: HashMap::new(),
            groups: HashMap::new(),
            verifies: HashMap::new(),
            zeroes: None,
            out: Vec::new(),
        };
        d.replica.set_view(now, View::default(), &mut d.out);
        d.carry(outs);
        d
    }

    /// The replica (status, tests).
    pub fn replica(&self) -> &Replica<J, D, M> {
        &self.replica
    }

    /// The replica, writable: for fault injection by simulators and tests
    /// (the supervisor never needs it).
    pub fn replica_mut(&mut self) -> &mut Replica<J, D, M> {
        &mut self.replica
    }

    /// The view the replica took last.
    pub fn view(&self) -> View {
        self.view
    }

    /// When the replica next needs a tick.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.replica.next_deadline()
    }

    /// Rule 9: what a replica whose storage failed needs.
    pub fn recovery(&self) -> Option<Recovery> {
        self.replica.recovery()
    }

    /// A newer view from the host, if there is one (also taken by every
    /// other step first).
    pub fn take_view(&mut self, now: Instant, view: Option<View>, outs: &mut Vec<VolumeOut>) {
        if let Some(v) = view {
            self.replica.set_view(now, v, &mut self.out);
            self.view = v;
            outs.push(VolumeOut::ViewTaken(v));
        }
        self.carry(outs);
    }

    /// One command, under the latest view.
    pub fn command(
        &mut self,
        clock: &dyn Fn() -> Instant,
        view: Option<View>,
        cmd: VolumeIn,
        outs: &mut Vec<VolumeOut>,
    ) {
        let now = clock();
        self.take_view(now, view, outs);
        match cmd {
            VolumeIn::Peer(from, msg) => self.replica.receive(now, from, msg, &mut self.out),
            VolumeIn::Write { client, offset, pieces } => {
                let g = self.group(client, pieces.len());
                if pieces.is_empty() {
                    self.piece(now, g, offset, Bytes::new());
                }
                let mut at = offset;
                for p in pieces {
                    let len = p.len() as u64;
                    self.piece(now, g, at, p);
                    at += len;
                }
            }
            VolumeIn::WriteZeroes { client, offset, len } => {
                let zeroes = self.zeroes.get_or_insert_with(|| Bytes::from(vec![0u8; ZEROES_LEN])).clone();
                let n = usize::try_from(len.div_ceil(ZEROES_LEN as u64)).unwrap_or(usize::MAX);
                let g = self.group(client, n);
                if len == 0 {
                    self.piece(now, g, offset, Bytes::new());
                }
                let mut at = 0;
                while at < len {
                    let k = (len - at).min(ZEROES_LEN as u64) as usize;
                    self.piece(now, g, offset + at, zeroes.slice(..k));
                    at += k as u64;
                }
            }
            VolumeIn::Verify { client } => {
                let id = self.next_piece;
                self.next_piece += 1;
                match self.replica.verify(now, id, &mut self.out) {
                    Ok(()) => {
                        self.verifies.insert(id, client);
                    }
                    Err(e) => outs.push(VolumeOut::VerifyDone { client, result: Err(e) }),
                }
            }
        }
        self.replica.acknowledge(clock(), &mut self.out);
        self.carry(outs);
    }

    /// The end of a pass's commands: the latest view, then the replica's
    /// timers if due. Returns whether it ticked. The caller carries the
    /// outputs out before [`VolumeDriver::sync`].
    pub fn before_sync(&mut self, clock: &dyn Fn() -> Instant, view: Option<View>, outs: &mut Vec<VolumeOut>) -> bool {
        let now = clock();
        self.take_view(now, view, outs);
        let due = self.replica.next_deadline().is_some_and(|d| d <= now);
        if due {
            self.replica.tick(now, &mut self.out);
        }
        self.replica.acknowledge(clock(), &mut self.out);
        self.carry(outs);
        due
    }

    /// The journal's fdatasync: one for every record appended so far.
    pub fn sync(&mut self, outs: &mut Vec<VolumeOut>) {
        self.replica.sync_journal(&mut self.out);
        self.carry(outs);
    }

    /// The journal's fdatasync without waiting for it: starts one that
    /// covers every record appended so far, if any needs it and none is
    /// running. The caller runs the job (the supervisor on its sync
    /// thread) and goes on with more passes meanwhile; when the job
    /// returns, [`finish_sync`](Self::finish_sync), then
    /// [`after_sync`](Self::after_sync).
    pub fn start_sync(&mut self, outs: &mut Vec<VolumeOut>) -> Option<(JournalSync, SyncJob)> {
        let started = self.replica.start_sync(&mut self.out);
        self.carry(outs);
        started
    }

    /// A started sync's job returned `result`.
    pub fn finish_sync(&mut self, sync: JournalSync, result: std::io::Result<()>, outs: &mut Vec<VolumeOut>) {
        self.replica.finish_sync(sync, result, &mut self.out);
        self.carry(outs);
    }

    /// Whether a started sync has not finished.
    pub fn sync_running(&self) -> bool {
        self.replica.sync_running()
    }

    /// What the sync made possible (replies, commits, applying), at a
    /// time read after the sync, under the view taken after it; then the
    /// acknowledgements, at a time read after that.
    pub fn after_sync(&mut self, clock: &dyn Fn() -> Instant, view: Option<View>, outs: &mut Vec<VolumeOut>) {
        let now = clock();
        self.take_view(now, view, outs);
        self.replica.after_sync(now, &mut self.out);
        self.replica.acknowledge(clock(), &mut self.out);
        self.carry(outs);
    }

    /// Takes the replica out (to reopen its disks), failing every write
    /// still waiting and publishing that nothing is served.
    pub fn into_replica(mut self, outs: &mut Vec<VolumeOut>) -> Replica<J, D, M> {
        let err = ClientError::Storage("the volume's storage failed".into());
        self.fail_waiting(err.clone(), outs);
        let mut verifies: Vec<(u64, ClientId)> = self.verifies.drain().collect();
        verifies.sort_unstable();
        for (_, client) in verifies {
            outs.push(VolumeOut::VerifyDone { client, result: Err(err.clone()) });
        }
        if self.serving != Some(None) {
            outs.push(VolumeOut::Serving(None));
        }
        self.replica
    }

    fn fail_waiting(&mut self, err: ClientError, outs: &mut Vec<VolumeOut>) {
        let mut groups: Vec<Group> = self.groups.drain().map(|(_, g)| g).collect();
        groups.sort_by_key(|g| g.client);
        for g in groups {
            let result = if g.result.is_err() { g.result } else { Err(err.clone()) };
            outs.push(VolumeOut::WriteDone { client: g.client, result });
        }
        self.pieces.clear();
    }

    fn group(&mut self, client: ClientId, pieces: usize) -> u64 {
        let g = self.next_piece;
        self.groups.insert(g, Group { client, left: pieces.max(1), result: Ok(()) });
        g
    }

    fn piece(&mut self, now: Instant, group: u64, offset: u64, data: Bytes) {
        let id = self.next_piece;
        self.next_piece += 1;
        self.pieces.insert(id, group);
        self.replica.write(now, id, offset, data, &mut self.out);
    }

    fn piece_done(&mut self, id: u64, result: Result<(), ClientError>, outs: &mut Vec<VolumeOut>) {
        let Some(g) = self.pieces.remove(&id) else { return };
        let Some(group) = self.groups.get_mut(&g) else { return };
        if let (Err(e), Ok(())) = (result, &group.result) {
            group.result = Err(e);
        }
        group.left -= 1;
        if group.left == 0 {
            if let Some(group) = self.groups.remove(&g) {
                outs.push(VolumeOut::WriteDone { client: group.client, result: group.result });
            }
        }
    }

    /// The replica's outputs, translated, then the serving state if it changed.
    fn carry(&mut self, outs: &mut Vec<VolumeOut>) {
        let mut out = std::mem::take(&mut self.out);
        for o in out.drain(..) {
            match o {
                Out::Send { to, msg } => outs.push(VolumeOut::Send { to, msg }),
                Out::WriteDone { id, result } => self.piece_done(id, result, outs),
                Out::Position(p) => outs.push(VolumeOut::Position(p)),
                Out::Electable(e) => outs.push(VolumeOut::Electable(e)),
                Out::Membership(m) => outs.push(VolumeOut::Membership(m)),
                Out::VerifyDone(report) => {
                    if let Some(client) = self.verifies.remove(&report.id) {
                        outs.push(VolumeOut::VerifyDone { client, result: Ok(report) });
                    }
                }
                Out::Notice(n) => outs.push(VolumeOut::Notice(n)),
            }
        }
        self.out = out;
        // A verify the replica no longer runs (it stepped down, or a newer
        // one replaced it) will never report: answer its client now.
        let running = self.replica.verifying();
        let mut abandoned: Vec<(u64, ClientId)> =
            self.verifies.iter().filter(|(id, _)| Some(**id) != running).map(|(id, c)| (*id, *c)).collect();
        abandoned.sort_unstable();
        for (id, client) in abandoned {
            self.verifies.remove(&id);
            outs.push(VolumeOut::VerifyDone { client, result: Err(ClientError::NotActive) });
        }
        let serving = self.replica.leading_and_ready().then_some(self.view.epoch);
        if self.serving != Some(serving) {
            self.serving = Some(serving);
            outs.push(VolumeOut::Serving(serving));
        }
    }
}
