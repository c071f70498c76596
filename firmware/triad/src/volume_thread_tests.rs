//! The volume thread as it ships (`spawn`, `Thread::run`), driven over
//! in-memory disks whose syncs a test can slow down or hang, with a clock
//! the test moves and peers played by the test's `send` closure. These pin
//! the glue's ordering rules that the replica's own tests cannot see: the
//! lease is judged with the time after a sync, the core hears a position
//! before any peer is told of it, and every disk sync is under the watch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use triad_core::{Instant, NodeId};
use triad_repl::{ClientError, Msg, ReplConfig, Replica, View};
use triad_volume::store::Format;
use triad_volume::{Disk, MemDisk, Position};

use super::{Cmd, VolumeEvent, VolumeHandle, WriteReply};
use crate::sync_watch::{SyncWatch, Watched};

const VOL: u64 = 1 << 20;
const GRAN: u64 = 4096;

/// The test's clock, in core microseconds.
#[derive(Clone, Default)]
pub(crate) struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub(crate) fn now(&self) -> Instant {
        Instant(self.0.load(Ordering::SeqCst))
    }
    pub(crate) fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

/// What a [`TestDisk`]'s next sync does.
#[derive(Default)]
pub(crate) struct SyncFault {
    /// Move the clock by this much during the next sync (a slow fdatasync,
    /// or the process frozen inside it).
    slow: Mutex<Option<Duration>>,
    /// Block every sync until released (a hung disk).
    hang: Mutex<bool>,
    released: Condvar,
    /// A sync is blocked right now.
    hanging: AtomicBool,
    syncs: AtomicU64,
    /// Fail the next sync (an I/O error from fdatasync).
    fail: AtomicBool,
    /// Move the clock by this much during the next write (a pwrite
    /// throttled by dirty-page writeback, or a page read for it).
    slow_write: Mutex<Option<Duration>>,
}

impl SyncFault {
    pub(crate) fn slow_next(&self, d: Duration) {
        *super::lock(&self.slow) = Some(d);
    }
    pub(crate) fn hang(&self) {
        *super::lock(&self.hang) = true;
    }
    pub(crate) fn release(&self) {
        *super::lock(&self.hang) = false;
        self.released.notify_all();
    }
    pub(crate) fn fail_next(&self) {
        self.fail.store(true, Ordering::SeqCst);
    }
    pub(crate) fn slow_pending(&self) -> bool {
        super::lock(&self.slow).is_some()
    }
    pub(crate) fn hanging(&self) -> bool {
        self.hanging.load(Ordering::SeqCst)
    }
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

/// A disk (in memory, or the real data file for direct reads) whose
/// syncs obey a [`SyncFault`].
pub(crate) struct TestDisk<I = MemDisk> {
    mem: I,
    fault: Arc<SyncFault>,
    clock: TestClock,
}

impl<I: Disk> Disk for TestDisk<I> {
    fn len(&self) -> u64 {
        self.mem.len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.mem.read_at(off, buf)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(d) = super::lock(&self.fault.slow_write).take() {
            self.clock.advance(d);
        }
        self.mem.write_at(off, data)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.fault.obey(&self.clock)?;
        self.mem.sync()
    }
    /// As the supervisor's disks: the fault (slow, hung, failing) acts in
    /// the job, on the volume's sync thread, while the thread goes on.
    fn start_sync(&mut self) -> (triad_volume::SyncCut, triad_volume::SyncJob) {
        let (cut, inner) = self.mem.start_sync();
        let (fault, clock) = (self.fault.clone(), self.clock.clone());
        (
            cut,
            triad_volume::SyncJob::blocking(move || {
                fault.obey(&clock)?;
                inner.run()
            }),
        )
    }
    fn finish_sync(&mut self, cut: triad_volume::SyncCut, result: std::io::Result<()>) -> std::io::Result<()> {
        self.mem.finish_sync(cut, result)
    }
}

impl SyncFault {
    /// What one sync does under this fault: counted; failing, slow (the
    /// clock moves) or hung as armed.
    fn obey(&self, clock: &TestClock) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fdatasync failure"));
        }
        if let Some(d) = super::lock(&self.slow).take() {
            clock.advance(d);
        }
        let mut hang = super::lock(&self.hang);
        while *hang {
            self.hanging.store(true, Ordering::SeqCst);
            hang = match self.released.wait(hang) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        self.hanging.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// A message the thread sent, and the last position the core had been
/// sent by then.
pub(crate) type Sent = (NodeId, Msg, Option<triad_core::Position>);

/// One volume thread (node 1, peers 2 and 3) and the test's levers.
pub(crate) struct Rig {
    pub handle: VolumeHandle,
    pub clock: TestClock,
    pub journal: Arc<SyncFault>,
    pub data: Arc<SyncFault>,
    /// Every message the thread sent, with the positions the core had been
    /// sent by then.
    pub sent: Arc<Mutex<Vec<Sent>>>,
    _dir: TempDir,
}

/// A directory removed on drop (the direct-read file).
pub(crate) struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Peers played by the test: `auto_ack` makes both answer every Append at
/// once with its last record as durable (a fast, healthy follower).
pub(crate) fn rig(auto_ack: bool) -> Rig {
    let clock = TestClock::default();
    let journal = Arc::new(SyncFault::default());
    let data = Arc::new(SyncFault::default());
    let meta = Arc::new(SyncFault::default());
    // Watched as the supervisor's disks are (volume::VolumeDisk).
    let watch = Arc::new(SyncWatch::default());
    let disk = |len: u64, fault: &Arc<SyncFault>| {
        let disk = TestDisk { mem: MemDisk::new(len as usize), fault: fault.clone(), clock: clock.clone() };
        Watched::new(disk, watch.clone())
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::temp_dir().join(format!("triad-vol-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).unwrap();
    // The block store is a real file, as in the supervisor: direct reads
    // pread it.
    let data_file = dir.join("data");
    let data_disk = {
        let file = triad_volume::FileDisk::create(&data_file, VOL).unwrap();
        Watched::new(TestDisk { mem: file, fault: data.clone(), clock: clock.clone() }, watch.clone())
    };
    let meta_len = triad_volume::store::meta_len_needed(VOL, GRAN, 2);
    let cfg = ReplConfig { region: GRAN, resync_chunk: GRAN, ..ReplConfig::default() };
    let format = Format { granularity: GRAN, incarnation: 1, learner: false };
    let replica =
        Replica::format(1, [2, 3], cfg.clone(), disk(4 << 20, &journal), data_disk, disk(meta_len, &meta), format)
            .expect("format");
    // Rule 9's reopen, as the supervisor does it with files: the same
    // disks, opened again.
    let reopen = move |failed: Replica<_, _, _>| {
        let (j, d, m) = failed.into_disks();
        Ok(Replica::open(1, [2, 3], cfg.clone(), j, d, m)?)
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let events = Arc::new(Mutex::new(rx));
    let positions = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    // The peers answer through the handle, which exists only after spawn.
    let handle_cell: Arc<Mutex<Option<VolumeHandle>>> = Arc::new(Mutex::new(None));
    let send = {
        let (events, positions, sent, handle_cell) =
            (events.clone(), positions.clone(), sent.clone(), handle_cell.clone());
        move |to: NodeId, msg: &Msg| {
            // What the core has been told by the time this leaves.
            let seen = {
                let mut ev = super::lock(&events);
                let mut ps = super::lock(&positions);
                while let Ok(e) = ev.try_recv() {
                    if let VolumeEvent::Position(p) = e {
                        ps.push(p);
                    }
                }
                ps.last().copied()
            };
            super::lock(&sent).push((to, msg.clone(), seen));
            if let (true, Msg::Append { epoch, prev, records, stream, .. }) = (auto_ack, msg) {
                let last = records.last().map_or(*prev, |r| r.position());
                let reply = Msg::AppendReply {
                    epoch: *epoch,
                    inc: 100 + u64::from(to),
                    ok: true,
                    matched: last.seq,
                    last,
                    applied: Position::ZERO,
                    k: Position::ZERO,
                    consistent: true,
                    learner: false,
                    stream: *stream,
                };
                if let Some(h) = super::lock(&handle_cell).as_ref() {
                    h.peer_message(to, reply);
                }
            }
        }
    };
    let now = {
        let c = clock.clone();
        move || c.now()
    };
    let handle = super::spawn(replica, &data_file, now, send, tx, watch, reopen).expect("spawn");
    *super::lock(&handle_cell) = Some(handle.clone());
    Rig { handle, clock, journal, data, sent, _dir: TempDir(dir) }
}

impl Rig {
    /// Leads epoch 1 with a lease until `lease_until`, and waits until the
    /// epoch's first record is committed (the peers must auto-ack).
    pub(crate) fn lead(&self, lease_until: Instant) {
        self.handle.set_view(View { epoch: 1, leader: Some(1), lease_until: Some(lease_until) });
        wait_until("leader ready", || self.handle.serving());
    }

    /// Queues a write of `len` zero bytes at `offset`.
    pub(crate) fn write(&self, offset: u64, len: u64) -> oneshot::Receiver<Result<bool, ClientError>> {
        let (reply, rx) = WriteReply::new(None);
        self.handle.tx.send(Cmd::WriteZeroes { offset, len, reply }).expect("thread alive");
        rx
    }

    /// A round trip through the thread's queue: everything queued before
    /// has been handled.
    pub(crate) fn round_trip(&self) {
        let (done, rx) = oneshot::channel();
        self.handle.tx.send(Cmd::ViewConfirmed(done)).expect("thread alive");
        rx.blocking_recv().expect("answered");
    }
}

/// Leader 2's Append of epoch 1 from the start of the journal: its no-op
/// record, or none (a probe).
fn append_from_2(with_noop: bool) -> Msg {
    let noop =
        triad_volume::Record { epoch: 1, seq: 1, prev: Position::ZERO, offset: 0, payload: triad_repl::Bytes::new() };
    let records = if with_noop { vec![noop] } else { Vec::new() };
    Msg::Append { epoch: 1, prev: Position::ZERO, records, commit: 0, ks: Vec::new(), peer_inc: 1, stream: 0 }
}

pub(crate) fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A write is acknowledged only if the lease holds at the instant the
/// acknowledgement is decided: after the journal sync that made it
/// durable, not at the time read before that sync. Here a fast peer's
/// reply is taken in the same batch as the write, so the leader's own
/// journal sync is what commits it, and that sync outlasts the lease.
#[test]
fn no_acknowledgement_when_the_lease_ends_during_the_journal_sync() {
    let rig = rig(true);
    rig.lead(Instant(1_000_000));
    rig.journal.slow_next(Duration::from_secs(2));
    let mut reply = rig.write(0, 4096);
    wait_until("the slow sync ran", || !rig.journal.slow_pending());
    rig.round_trip();
    assert!(rig.clock.now() >= Instant(1_000_000), "the lease has ended during the sync");
    match reply.try_recv() {
        Err(oneshot::error::TryRecvError::Empty) => {}
        other => panic!("the write was answered after the lease ended: {other:?}"),
    }
    // Stepping down fails it, as it must.
    rig.handle.set_view(View { epoch: 2, leader: None, lease_until: None });
    assert_eq!(reply.blocking_recv().expect("answered"), Err(ClientError::NotActive));
}

/// Rule 1 across the glue: a follower's journal position reaches its core
/// (which judges votes with it) before the AppendReply that tells the
/// leader it holds those records, so the core never votes with a
/// position older than what this node acknowledged.
#[test]
fn the_core_hears_a_position_before_the_leader_hears_it_acknowledged() {
    let rig = rig(false);
    rig.handle.set_view(View { epoch: 1, leader: Some(2), lease_until: None });
    let append = append_from_2(true);
    rig.handle.peer_message(2, append);
    wait_until("a reply", || super::lock(&rig.sent).iter().any(|(_, m, _)| matches!(m, Msg::AppendReply { .. })));
    let sent = super::lock(&rig.sent);
    for (to, msg, seen) in sent.iter() {
        if let Msg::AppendReply { matched, .. } = msg {
            let told = seen.map_or(0, |p| p.seq);
            assert!(told >= *matched, "reply to n{to} acknowledges seq {matched}, the core was told only {seen:?}");
        }
    }
}

/// Rule 16 covers every sync of the volume, not only the journal's: a
/// store checkpoint that hangs (here the periodic one, from `tick`) is
/// seen by the watch, so the node stops leading instead of renewing its
/// lease with every write hanging behind the stuck thread.
#[test]
fn a_hung_store_checkpoint_is_seen_by_the_sync_watch() {
    let rig = rig(true);
    rig.lead(Instant(3_600_000_000));
    let reply = rig.write(0, 4096);
    assert_eq!(reply.blocking_recv().expect("answered"), Ok(false), "no reply line: nothing sent directly");
    let before = rig.data.syncs();
    rig.data.hang();
    // Past the periodic checkpoint's interval: the next tick checkpoints.
    rig.clock.advance(Duration::from_secs(3));
    wait_until("the checkpoint's store sync hangs", || rig.data.hanging());
    assert!(rig.data.syncs() > before);
    std::thread::sleep(Duration::from_millis(20));
    let stalled = rig.handle.sync_stalled(Duration::from_millis(10));
    rig.data.release();
    assert!(stalled, "a store sync hung for 20 ms and the watch (limit 10 ms) did not see it");
}

/// A serving leader (lease far away) whose journal sync of a write hangs
/// on the sync thread; the write's answer is still to come.
fn leader_stuck_in_a_journal_sync() -> (Rig, oneshot::Receiver<Result<bool, ClientError>>) {
    let rig = rig(true);
    rig.lead(Instant(3_600_000_000));
    rig.journal.hang();
    let reply = rig.write(0, 4096);
    wait_until("the journal sync hangs", || rig.journal.hanging());
    (rig, reply)
}

/// Rule 17 with the journal sync on its own thread: the volume thread is
/// free while that sync hangs, so it takes the step-down at once and says
/// so; when the sync returns, the write taken before the step-down is not
/// acknowledged (the view has no lease), and the next epoch fails it.
#[test]
fn a_step_down_is_confirmed_while_the_journal_sync_hangs_and_nothing_is_acknowledged_after_it() {
    let (rig, reply) = leader_stuck_in_a_journal_sync();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let down = View { epoch: 1, leader: Some(1), lease_until: None };
    let confirmed = rt.block_on(rig.handle.set_view_confirmed(down, Duration::from_secs(5)));
    assert!(confirmed, "the thread is not in the sync: it must take the step-down");
    assert!(rig.journal.hanging(), "the sync is still out");
    rig.journal.release();
    rig.round_trip();
    rig.handle.set_view(View { epoch: 2, leader: Some(2), lease_until: None });
    assert_eq!(reply.blocking_recv().expect("answered"), Err(ClientError::NotActive));
}

/// Rule 17: a handover may only proceed once the volume thread has taken
/// the step-down. A thread stuck in a sync of its own (a store checkpoint)
/// has not, and says so when the wait runs out (the runtime then does not
/// send TimeoutNow); once the sync returns, the thread confirms.
#[test]
fn a_step_down_is_not_confirmed_while_the_thread_is_stuck_in_a_store_sync() {
    let rig = rig(true);
    rig.lead(Instant(3_600_000_000));
    let reply = rig.write(0, 4096);
    assert_eq!(reply.blocking_recv().expect("answered"), Ok(false));
    rig.data.hang();
    rig.clock.advance(Duration::from_secs(3));
    wait_until("the checkpoint's store sync hangs", || rig.data.hanging());
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let down = View { epoch: 1, leader: Some(1), lease_until: None };
    let confirmed = rt.block_on(rig.handle.set_view_confirmed(down, Duration::from_millis(50)));
    assert!(!confirmed, "confirmed while the thread was stuck in a sync");
    rig.data.release();
    let confirmed = rt.block_on(rig.handle.set_view_confirmed(down, Duration::from_secs(5)));
    assert!(confirmed, "not confirmed after the sync returned");
}

/// `triad status` never waits on the disk: while the thread hangs in a
/// journal sync, the volume's status still answers at once, from the
/// thread's last snapshot, with the snapshot's age.
#[test]
fn status_answers_at_once_while_the_thread_is_stuck_in_a_sync() {
    let (rig, _reply) = leader_stuck_in_a_journal_sync();
    rig.clock.advance(Duration::from_secs(3));
    let asked = std::time::Instant::now();
    let status = rig.handle.status();
    assert!(asked.elapsed() < Duration::from_millis(100), "status waited {:?} for the thread", asked.elapsed());
    let (status, age) = status.expect("a snapshot from before the sync");
    assert!(status.serving, "the snapshot is from the serving leader");
    assert!(age >= Duration::from_secs(3), "the snapshot's age ({age:?}) hides that the thread is stuck");
    rig.journal.release();
}

/// Rule 15 on the direct-read path as it ships (`ReplicatedDevice::
/// read_at`: a pread of the data file between two checks of the serving
/// state, no hand-off to the thread): reads return what was acknowledged
/// while this node serves, and are refused at once when the runtime hands
/// over a view that ends the leadership (before the thread has taken it),
/// when the lease ends with no view change at all, and while a new
/// epoch's first record is not yet committed.
#[test]
fn direct_reads_serve_only_a_ready_leader_inside_its_lease() {
    use crate::nbd::device::BlockDevice;
    let rig = rig(true);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let pool = crate::nbd::pool::BufPool::new(crate::nbd::pool::PoolSize::default());
    let dev = rig.handle.device();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let read = |len: usize| rt.block_on(async { dev.read_at(8192, pool.acquire(len).await.expect("buffer")).await });
    // (Never prints the buffer: its Debug shows the whole pool.)
    let refused = |r: Result<crate::nbd::pool::IoBuf, crate::nbd::device::DeviceError>, why: &str| match r {
        Ok(_) => panic!("served, but should be refused because {why}"),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(text.contains(why), "refused, but not because {why}: {text}");
        }
    };

    rig.lead(Instant(10_000_000));
    let mut buf = rt.block_on(pool.acquire(4096)).expect("buffer");
    buf.copy_from(&pattern);
    rt.block_on(dev.write_at(8192, buf, false)).expect("acknowledged");
    assert_eq!(read(4096).map(|b| b.to_vec()).ok(), Some(pattern.clone()), "a read returns the acknowledged write");

    // Stepped down: refused at once, even before the thread takes the view
    // (the thread is stuck in a sync here).
    rig.journal.hang();
    let _stuck = rig.write(0, 4096);
    wait_until("the journal sync hangs", || rig.journal.hanging());
    rig.handle.set_view(View { epoch: 2, leader: Some(2), lease_until: None });
    refused(read(4096), "not the active node");
    rig.journal.release();

    // Leading epoch 3, ready, then the lease runs out with no new view.
    rig.handle.set_view(View { epoch: 3, leader: Some(1), lease_until: Some(Instant(20_000_000)) });
    wait_until("serving in epoch 3", || read(512).is_ok());
    rig.clock.advance(Duration::from_secs(20));
    refused(read(4096), "not the active node");

    // Epoch 4's first record cannot commit (the journal hangs): not ready.
    rig.journal.hang();
    let lease = Instant(rig.clock.now().0 + 60_000_000);
    rig.handle.set_view(View { epoch: 4, leader: Some(1), lease_until: Some(lease) });
    wait_until("the no-op's sync hangs", || rig.journal.hanging());
    refused(read(4096), "not ready");
    rig.journal.release();
    wait_until("serving in epoch 4", || read(512).is_ok());
    assert_eq!(read(4096).map(|b| b.to_vec()).ok(), Some(pattern.clone()));
}

/// Rule 9 in the supervisor: after a failed fdatasync the replica marks
/// itself failed on disk; the volume thread then opens its disks again
/// (`Recovery::Reopen`), so the node comes back inconsistent (to be block
/// resynced by the leader) without a process restart, instead of staying
/// failed and refusing everything until someone restarts it.
#[test]
fn a_failed_journal_sync_reopens_the_replica_for_a_resync() {
    let rig = rig(false);
    rig.handle.set_view(View { epoch: 1, leader: Some(2), lease_until: None });
    rig.journal.fail_next();
    let append = append_from_2(true);
    rig.handle.peer_message(2, append);
    wait_until("the journal sync failed", || !rig.journal.fail.load(Ordering::SeqCst));
    let mut health = None;
    wait_until("the replica is reopened", || {
        health = rig.handle.status().map(|(s, _)| s.health);
        health == Some(triad_repl::Health::Resyncing)
    });
    // The leader's next Append is answered "not consistent": it will resync this node.
    let probe = append_from_2(false);
    rig.handle.peer_message(2, probe);
    wait_until("an inconsistent reply", || {
        super::lock(&rig.sent).iter().any(|(_, m, _)| matches!(m, Msg::AppendReply { consistent: false, .. }))
    });
}

/// Invariant 1: the lease is judged with the time after the store apply
/// (a pwrite that may block on writeback), not with a time read before it.
/// Found by review: the replica judged it with the `now` of the step.
#[test]
fn no_acknowledgement_when_the_lease_ends_during_the_store_apply() {
    let rig = rig(true);
    rig.lead(Instant(1_000_000));
    *super::lock(&rig.data.slow_write) = Some(Duration::from_secs(2));
    let mut reply = rig.write(0, 4096);
    wait_until("the slow apply ran", || super::lock(&rig.data.slow_write).is_none());
    rig.round_trip();
    assert!(rig.clock.now() >= Instant(1_000_000), "the lease has ended during the apply");
    match reply.try_recv() {
        Err(oneshot::error::TryRecvError::Empty) => {}
        other => panic!("the write was answered after the lease ended (clock {:?}): {other:?}", rig.clock.now()),
    }
}

/// Issue 9's hand-off count: a committed write's success reply is sent on
/// the client's socket by the volume thread itself (through the NBD
/// connection's reply line), and the answer tells the NBD writer so; a
/// refused write sends nothing there (its error reply is the writer's).
#[test]
fn a_committed_write_is_replied_to_on_the_socket_by_the_volume_thread() {
    use crate::nbd::proto::{simple_reply, SIMPLE_REPLY_LEN};
    use crate::nbd::{DirectReply, ReplyLine};
    use std::io::Read;
    let (ours, mut client) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let line = ReplyLine::new(std::os::fd::AsFd::as_fd(&ours)).expect("dup");
    let rig = rig(true);
    let queue = |cookie| {
        let (reply, rx) = WriteReply::new(Some(DirectReply::new(std::sync::Arc::clone(&line), cookie)));
        rig.handle.tx.send(Cmd::WriteZeroes { offset: 0, len: 4096, reply }).expect("thread alive");
        rx
    };
    // Not the leader: refused, and nothing on the socket.
    assert_eq!(queue(1).blocking_recv().expect("answered"), Err(ClientError::NotActive));
    rig.lead(Instant(3_600_000_000));
    assert_eq!(queue(2).blocking_recv().expect("answered"), Ok(true), "sent by the thread");
    line.close();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("closed");
    assert_eq!(got.len(), SIMPLE_REPLY_LEN);
    assert_eq!(got, simple_reply(0, 2), "only the committed write's success reply");
}
