//! The data world: the replicated volume's data path under faults.
//!
//! Three hosts, each running a model of the supervisor: the unmodified
//! `triad_core::Node` (election, lease) on the runtime loop and the
//! unmodified `triad_repl::Replica` over three in-memory disks (journal,
//! data, metadata) on its volume thread, glued as
//! `firmware/triad/src/volume.rs` does:
//!
//! - after every core step the runtime builds a `View` (epoch, leader —
//!   itself when it leads —, lease end) and hands it to the volume thread;
//! - the volume thread takes everything queued (views, peer messages,
//!   client writes, its sync thread's `Synced`) as one batch, ticks the
//!   replica if its deadline has come, starts the journal sync (group
//!   commit) on its sync thread if none runs, and carries out the
//!   outputs: `Send` to the network, `WriteDone` to the client,
//!   `Position` and `Electable` to the core; it does not wait for the
//!   sync: the next batches run while it does, and a sync covers only the
//!   records appended before it started (the `DurableOnDisk` check reads
//!   the journal back from the medium after every sync);
//! - the journal's fdatasync takes 20–400 µs (or hangs for seconds: the
//!   `disk-stall` scenario hangs a journal sync, or a store or metadata
//!   sync in a pass that syncs that disk, in its tick or in compaction);
//!   a hung journal sync holds back only the syncs after it, a hung store
//!   or metadata sync the whole thread and the pass's outputs;
//! - the thread wakes at the replica's deadline and at least every 100 ms.
//!
//! Core and replication messages both cross the faulty network (loss,
//! duplication, delay and reordering, directional cuts). The VIP is not
//! modelled (VIP actions complete at once; the VIP world covers them).
//! Faults: process kills (page cache kept), power cuts of one node or of
//! all three (`MemDisk::power_cut`: unsynced sectors lost, torn or
//! reordered), partitions, long follower outages (the leader compacts the
//! follower's range away), crashes aimed into block resyncs and at the
//! journal sync, operator switchovers, a replaced box with blank disks,
//! fdatasyncs that fail as Linux's do (rule 9, `disk-faults`).
//!
//! A simulated NBD client writes to whichever node serves and checks what
//! it reads back ([`client`]). Checks after every event: every
//! acknowledged write is readable on each new serving leader (also after a
//! power cut of all three), at most one node serves at any instant and
//! only inside a lease its core holds, no split brain, no storage failure
//! but where an injected disk fault fired (that node is then reopened or
//! rebooted, as `Replica::recovery` says, and must be resynced);
//! at the end, after healing, all three stores are byte-identical at one
//! applied position.
//!
//! The service scenarios ([`DataScenario::service`]) also run the PBX,
//! the filesystem and the watchdog of every host and simulate the OS side
//! of each with faults ([`service`]): crash loops, silent PBXs, hung
//! demotions, failing mounts. Their checks: one PBX per node and only over
//! its mount, the VIP only over a mount, no unmount under a live PBX, two
//! PBXs over mounts only while all but one node cannot acknowledge writes
//! and is being fenced, a hung demotion reset by the watchdog within its
//! bound, no self-fence without a hang, no host deadline left in the past,
//! and a healthy PBX behind the VIP after healing.

pub mod client;
mod figure8;
pub mod scenario;
pub mod service;

pub use scenario::{Blank, DataMutation, DataScenario, KNOWN_REPL_BUGS};
pub use service::{ServiceFaults, ServiceSpec};

use crate::clock::{Clock, Rng};
use crate::net::Net;
use client::{Client, BLOCK};
use core::time::Duration;
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::rc::Rc;
use triad_core::{AdminRequest, Body, HardState, Instant, Membership, Message, NodeId, Notice, Role, Setup};
use triad_host::volume::{VolumeDriver, VolumeIn, VolumeOut};
use triad_host::{Command, Event, Host as HostMachine, HostNotice, VipResult, VolumeStart};
use triad_repl::{core_position, Health, Msg, ReplNotice, Replica, View};
use triad_volume::{Disk, Journal, JournalSync, MemDisk, SyncCut, SyncFault, SyncJob};

/// Trace lines kept for a failure report.
const TRACE_TAIL: usize = 150;
/// The volume thread looks at its timers at least this often (volume.rs `MAX_WAIT`), µs.
const VOL_MAX_WAIT: u64 = 100_000;
/// Commands per batch (volume.rs `MAX_BATCH`).
const VOL_MAX_BATCH: usize = 64;
/// A serving leader's volume is read back and checked this often, µs.
const RECHECK_EVERY: u64 = 1_000_000;
/// Convergence is looked for this often after the writes stop, µs.
const CONVERGE_POLL: u64 = 50_000;
/// How long the runtime waits for the volume to confirm a step-down
/// (runtime.rs `VOLUME_STEP_DOWN_WAIT`), µs.
const STEP_DOWN_WAIT: u64 = 2_000_000;
/// Lease overrun of the `LeaseOverrun` mutation, µs.
const OVERRUN: u64 = 1_000_000;

/// Which of a node's three disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// The journal ring (synced at every group commit).
    Journal,
    /// The block store (synced at checkpoints and compaction).
    Data,
    /// Checkpoint, bitmaps, header (synced at checkpoints, compaction,
    /// bitmap persists, learner and resync marks).
    Meta,
}

impl DiskKind {
    fn bit(self) -> u8 {
        match self {
            DiskKind::Journal => 1,
            DiskKind::Data => 2,
            DiskKind::Meta => 4,
        }
    }
}

/// A disk of the simulated node: a `MemDisk`, whose fdatasync a mutation
/// can turn into a no-op, and whose next fdatasync the chaos process can
/// make fail (for the running process only: a restart disarms it). Every
/// sync sets its kind's bit in the host's `synced` mask, so the volume
/// thread's model knows which disks a step synced (a stall is injected
/// into a step that synced the stalled disk).
#[derive(Clone, Debug)]
pub struct SimDisk {
    mem: MemDisk,
    sync_skipped: bool,
    fault: Option<SyncFault>,
    kind: DiskKind,
    synced: Rc<Cell<u8>>,
}

impl SimDisk {
    fn new(len: u64, sync_skipped: bool, kind: DiskKind, synced: Rc<Cell<u8>>) -> SimDisk {
        SimDisk { mem: MemDisk::new(len as usize), sync_skipped, fault: None, kind, synced }
    }
}

impl SimDisk {
    /// Before a sync made by the thread itself: marks its kind synced in
    /// this step and arms an injected fault for it; false when the
    /// mutation skips syncs.
    fn inline_sync(&mut self) -> bool {
        self.synced.set(self.synced.get() | self.kind.bit());
        if self.sync_skipped {
            return false;
        }
        if let Some(f) = self.fault.take() {
            self.mem.fail_next_sync(f);
        }
        true
    }
}

impl Disk for SimDisk {
    fn len(&self) -> u64 {
        self.mem.len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_at(off, buf)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.mem.write_at(off, data)
    }
    fn sync(&mut self) -> io::Result<()> {
        if !self.inline_sync() {
            return Ok(());
        }
        self.mem.sync()
    }
    fn drop_cache(&mut self) -> io::Result<()> {
        if !self.inline_sync() {
            return Ok(());
        }
        self.mem.drop_cache()
    }
    /// An armed fault fires in the job (its writeback fails while it
    /// runs), so the thread's own syncs before the job's `Synced` is taken
    /// see it too, as on Linux with two open file descriptions.
    fn start_sync(&mut self) -> (SyncCut, SyncJob) {
        if !self.sync_skipped {
            if let Some(f) = self.fault.take() {
                self.mem.fail_next_sync(f);
            }
        }
        self.mem.start_sync()
    }
    fn finish_sync(&mut self, cut: SyncCut, result: io::Result<()>) -> io::Result<()> {
        if self.sync_skipped {
            return Ok(());
        }
        self.mem.finish_sync(cut, result)
    }
}

/// Injected sync failures that fired on a node's disks so far.
fn faults(j: &SimDisk, d: &SimDisk, m: &SimDisk) -> u64 {
    j.mem.faults() + d.mem.faults() + m.mem.faults()
}

/// Rule 9: the replica's storage failed, or it has not been resynced since.
fn marked(r: &SimReplica) -> bool {
    r.recovery().is_some() || r.store().checkpointed().failed.is_some()
}

/// The replica as the simulator runs it.
pub type SimReplica = Replica<SimDisk, SimDisk, SimDisk>;

/// The volume thread's driver, as the supervisor runs it.
type SimDriver = VolumeDriver<SimDisk, SimDisk, SimDisk>;
type Disks = (SimDisk, SimDisk, SimDisk);

/// One checked property of the data world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataCheck {
    /// A serving leader reads back every acknowledged write (per block: the
    /// last acknowledged content, or that of a later unacknowledged write).
    AckedReadable,
    /// The same, on the first leader after a power cut of all three nodes.
    AckedAfterPowerCut,
    /// At most one node serves at any real instant.
    OneServing,
    /// A node serves only inside a lease its core holds (or while the view
    /// that ends it is queued for the volume thread), never past the end
    /// of any lease its core granted.
    ServingInLease,
    /// A serving replica's read failed.
    ReadFailed,
    /// After healing and with writes stopped, all three nodes reach one
    /// applied position, consistent, with a serving leader.
    Converged,
    /// At one applied position, the three stores are byte-identical.
    Diverged,
    /// A replica reported split brain (rule 14: should be unreachable).
    SplitBrain,
    /// A replica's storage failed although no injected disk fault fired
    /// on that node (rule 9's recovery for injected ones is checked by
    /// convergence: the node must come back and be resynced).
    StorageFailed,
    /// A replica could not be opened after a restart.
    OpenFailed,
    /// A block resync in a run where none is needed (no faults at all).
    UnneededResync,
    /// A block resync restarted although the peer neither restarted nor
    /// saw its view change.
    ResyncRestarted,
    /// A core's persisted epoch went down.
    EpochMonotonic,
    /// After a tick the replica's deadline is still not in the future (the
    /// volume thread would spin).
    VolumeSpin,
    /// Rule 16: a leader whose journal sync has been stuck for longer than
    /// the stall limit plus half a second still leads.
    StalledLeader,
    /// After a journal sync finished, the journal's durable position is on
    /// the medium: a power cut then keeps every record through it (a sync
    /// covers only what was appended before it started).
    DurableOnDisk,
    /// Service (issue 11): two PBX processes alive on one node.
    OnePbx,
    /// A PBX process alive on a node whose filesystem is not mounted.
    PbxWithoutMount,
    /// The VIP added on a node without its filesystem mounted, or held
    /// on one with nothing attached.
    VipWithoutMount,
    /// The host unmounts while a PBX process of the node lives.
    UnmountUnderPbx,
    /// A node self-fenced (stopped petting for good) although nothing
    /// hung: no PBX that ignores SIGKILL, no hung unmount.
    NeedlessSelfFence,
    /// A PBX or a mount outlived the end of its node's serving, or a PBX
    /// its first stop signal, by more than the self-fence deadline plus
    /// the watchdog's timeout.
    DemotionBound,
    /// Two nodes with a live PBX over a mounted filesystem, and not all
    /// but one of them unable to acknowledge writes and being fenced.
    TwoWriters,
    /// After a Tick, the host's next deadline is not in the future (the
    /// runtime's timer-first loop would spin, starving every other event).
    HostSpin,
    /// After healing, no serving node runs a healthy PBX (answering, on
    /// its mount, behind the VIP) within the convergence bound.
    ServiceLive,
}

/// A broken data-world invariant.
#[derive(Clone, Debug)]
pub struct DataViolation {
    /// Which property.
    pub check: DataCheck,
    /// Real time, µs.
    pub at: u64,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for DataViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} violated at t={:.6}s: {}", self.check, self.at as f64 / 1e6, self.detail)
    }
}

/// What one data-world run produced.
#[derive(Debug, Default)]
pub struct DataOutcome {
    /// The seed.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: &'static str,
    /// Events processed.
    pub events: u64,
    /// Client writes issued, acknowledged, failed.
    pub writes: u64,
    /// Acknowledged writes.
    pub acked: u64,
    /// Failed or lost writes.
    pub failed: u64,
    /// Failed writes by reason: not active / not ready, timeout, storage
    /// (journal full), lost with their node.
    pub write_errors: [u64; 4],
    /// Leaderships that reached serving.
    pub leaderships: u64,
    /// Whole-volume read checks on serving leaders.
    pub read_checks: u64,
    /// Block resyncs started (bitmap, hash) and finished.
    pub bitmap_resyncs: u64,
    /// Hash resyncs started.
    pub hash_resyncs: u64,
    /// Resyncs finished.
    pub resyncs_done: u64,
    /// Kills, single-node power cuts, full power cuts.
    pub kills: u64,
    /// Single-node power cuts.
    pub power_cuts: u64,
    /// Power cuts of all three nodes.
    pub full_power_cuts: u64,
    /// Nodes whose journal had discarded records at the end.
    pub compacted_nodes: u64,
    /// Injected fdatasync failures that fired.
    pub disk_faults: u64,
    /// Failed nodes brought back: reopened (mark durable), rebooted (mark lost).
    pub recoveries: [u64; 2],
    /// Messages a mutation bent (relabelled, dropped, delayed).
    pub mutated: u64,
    /// Time from the end of writes to convergence, µs.
    pub converge: Option<u64>,
    /// Boxes reset by their watchdog (service scenarios).
    pub watchdog_resets: u64,
    /// Service faults injected (service scenarios).
    pub service_faults: u64,
    /// Longest time two nodes had a live PBX over a mounted filesystem
    /// (the old one unable to acknowledge writes, being fenced), µs.
    pub pbx_overlap: u64,
    /// The first broken invariant.
    pub violation: Option<DataViolation>,
    /// A violation in a run that set off a known triad-repl bug, with the bug.
    pub tolerated: Option<(DataViolation, &'static str)>,
    /// Known triad-repl bugs set off in this run (violation or not).
    pub known_bugs: Vec<&'static str>,
    /// The last events before the end (or the violation).
    pub trace_tail: Vec<String>,
}

#[derive(Clone, Debug)]
enum Wire {
    Core(Message),
    Repl(Msg),
}

#[derive(Clone, Debug)]
enum Ev {
    CoreWake {
        node: NodeId,
        inc: u64,
    },
    /// The runtime's wait for a step-down confirmation runs out.
    ConfirmTimeout {
        node: NodeId,
        inc: u64,
    },
    VolWake {
        node: NodeId,
        inc: u64,
    },
    /// The sync thread's journal sync returns.
    VolDone {
        node: NodeId,
        inc: u64,
    },
    /// The thread's own hang (a store or metadata sync) ends.
    VolFree {
        node: NodeId,
        inc: u64,
    },
    Deliver {
        to: NodeId,
        from: NodeId,
        wire: Wire,
    },
    Client,
    Chaos,
    Restart {
        node: NodeId,
    },
    /// Rule 9: the supervisor brings back a replica whose storage failed.
    Recover {
        node: NodeId,
        inc: u64,
    },
    Kill {
        node: NodeId,
        power: bool,
    },
    HealLinks {
        gen: u64,
    },
    /// `replace_then_failover`, second step: replace `replaced`, kill
    /// `leader`, let `lagging` back.
    ReplaceAndFailover {
        leader: NodeId,
        lagging: NodeId,
        replaced: NodeId,
    },
    /// The `figure8` scenario's timed steps.
    Figure8(figure8::Figure8Step),
    Heal,
    StopWrites,
    Check,
    /// The service's OS side (`service.rs`).
    Svc(service::SvcEv),
}

#[derive(Debug)]
struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A command for the volume thread.
#[derive(Debug)]
enum Cmd {
    Peer(NodeId, Msg),
    Write {
        id: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The sync thread's journal sync returned (volume.rs `Cmd::Synced`).
    Synced,
}

/// The volume thread of one process.
#[derive(Debug)]
struct Vol {
    /// The shipping driver of the volume thread, owning the replica.
    r: SimDriver,
    /// The driver's outputs from its start, carried out at the first pass.
    start: Vec<VolumeOut>,
    inbox: VecDeque<Cmd>,
    /// The shared view cell: the core's latest view (and its number),
    /// taken by the thread before every command and before its tick.
    cell: Option<(View, u64)>,
    /// The number of the last view the thread took.
    took_view: u64,
    /// The thread has not run yet (it starts with an empty view).
    fresh: bool,
    /// The thread hangs in a sync of its own (a store or metadata sync
    /// in its tick or compaction): nothing runs, the pass's outputs wait.
    busy: bool,
    /// Real time that hang began (while `busy`).
    busy_since: u64,
    /// The journal sync on the sync thread, if one runs (from
    /// `start_sync` until the thread takes its `Synced`), with its job's
    /// result.
    sync: Option<(JournalSync, io::Result<()>)>,
    /// The view last handed to the replica.
    view: View,
    /// A wake is scheduled for this real time.
    wake_at: u64,
    /// A wake for queued commands is pending.
    kicked: bool,
    /// The next periodic wake (`VOL_MAX_WAIT`).
    periodic_at: u64,
    /// Views that changed the epoch or the leader, so far.
    view_changes: u64,
    /// Recent Appends received (for the `NoEpochFence` mutation).
    old_appends: VecDeque<(NodeId, Msg)>,
    /// Real time the running journal sync began (while `sync`).
    sync_since: u64,
    /// The next step that syncs this disk hangs this long in that sync
    /// (a stuck disk), µs.
    stall_next: Option<(u64, DiskKind)>,
    /// The disk the thread hangs on (while `busy`).
    stalled_on: Option<DiskKind>,
    /// The journal sync running now was made to hang.
    sync_stalled: bool,
    /// Outputs of a pass that hangs: carried out when the hang ends.
    held: Vec<VolumeOut>,
    /// A storage failure was seen and its recovery scheduled.
    recovering: bool,
    /// Injected sync failures on these disks before this process started.
    faults_before: u64,
    /// The sync watch saw a stuck sync at its last look.
    stalled: bool,
}

/// One supervisor process.
#[derive(Debug)]
struct Proc {
    inc: u64,
    /// The supervisor's host (`triad-host`), as it ships.
    host: HostMachine,
    core_wake_at: u64,
    /// Views handed to the volume so far.
    view_seq: u64,
    /// The runtime waits (runtime.rs, `ConfirmStepDown`) until the volume
    /// thread has taken view number `.0`, or gives up at real time `.1`.
    confirm: Option<(u64, u64)>,
    /// The latest lease end the core ever reported in this process.
    lease_bound: Option<Instant>,
    vol: Vol,
}

#[derive(Debug)]
struct Host {
    id: NodeId,
    clock: Clock,
    hard: HardState,
    /// The disks while no process runs.
    parked: Option<Disks>,
    /// Times this box was replaced by one with blank disks.
    replacements: u64,
    proc: Option<Proc>,
    /// Real time the current (or last) serving period ends.
    serving_end: u64,
    /// (incarnation, epoch) of the last read check, and when.
    checked: Option<(u64, u64)>,
    last_check: u64,
    /// Disks whose fdatasync is skipped (mutations), by role.
    lying: (bool, bool),
    /// A disk fault was armed here and the node has not been resynced
    /// since (or the fault never fired): no fault is armed anywhere else
    /// meanwhile, as three nodes tolerate one failed node, not two.
    tainted: bool,
    /// Per peer: a block resync this node leads, started in (incarnation,
    /// epoch) while the peer was (incarnation, view changes).
    resyncing: [Option<ResyncKey>; 3],
    /// Kinds of disk synced since the volume thread's model last looked.
    synced: Rc<Cell<u8>>,
    /// The PBX process, the mount and the watchdog device (service scenarios).
    svc: service::BoxService,
}

type ResyncKey = (u64, u64, Option<(u64, u64)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Writing,
    Quiet,
}

/// One data-world run.
pub struct DataWorld {
    sc: DataScenario,
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Item>,
    hosts: Vec<Host>,
    net: Net,
    net_gen: u64,
    /// Last delivery time per link (`fifo_links`).
    link_last: [[u64; 3]; 3],
    client: Client,
    phase: Phase,
    quiet_at: u64,
    blanked: bool,
    /// The `figure8` scenario's script state.
    figure8: Option<figure8::Figure8>,
    next_inc: u64,
    full_cut_unchecked: bool,
    stats: DataOutcome,
    trace: VecDeque<String>,
    print_trace: bool,
    done: bool,
    /// The filesystem on the volume (service scenarios).
    volume_fs: service::VolumeFs,
    /// The last PBX process id handed out.
    next_pid: u64,
    /// Since when two nodes have had a live PBX over a mounted filesystem.
    svc_overlap_since: Option<u64>,
}

impl fmt::Debug for DataWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataWorld").field("seed", &self.seed).field("scenario", &self.sc.name).finish()
    }
}

fn peers_of(id: NodeId) -> [NodeId; 2] {
    match id {
        1 => [2, 3],
        2 => [1, 3],
        _ => [1, 2],
    }
}

fn idx(id: NodeId) -> usize {
    usize::from(id) - 1
}

type Res = Result<(), DataViolation>;

impl DataWorld {
    /// A freshly formatted cluster for `seed` under `sc`.
    pub fn new(seed: u64, sc: DataScenario, print_trace: bool) -> DataWorld {
        let mut rng = Rng::new(seed ^ 0xDA7A_0000_0000_0000);
        let bound = i64::from(sc.timing.drift_ppm);
        let lying = (sc.has(DataMutation::JournalSyncSkipped), sc.has(DataMutation::StoreSyncSkipped));
        let hosts = (1..=3u8)
            .map(|id| {
                let ppm = if rng.chance(0.5) {
                    if rng.chance(0.5) {
                        bound
                    } else {
                        -bound
                    }
                } else {
                    rng.range(0, 2 * bound as u64) as i64 - bound
                };
                let clock = Clock::new(ppm, 0, rng.range(1_000_000, 50_000_000));
                Host {
                    id,
                    clock,
                    hard: HardState::default(),
                    parked: None,
                    replacements: 0,
                    proc: None,
                    serving_end: 0,
                    checked: None,
                    last_check: 0,
                    lying,
                    tainted: false,
                    resyncing: [None; 3],
                    synced: Rc::new(Cell::new(0)),
                    svc: Default::default(),
                }
            })
            .collect();
        let net = Net::new(sc.net.clone());
        let client = Client::new(sc.volume);
        let mut w = DataWorld {
            sc,
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            net,
            net_gen: 0,
            link_last: [[0; 3]; 3],
            client,
            phase: Phase::Faults,
            quiet_at: 0,
            blanked: false,
            figure8: None,
            next_inc: 0,
            full_cut_unchecked: false,
            stats: DataOutcome::default(),
            trace: VecDeque::new(),
            print_trace,
            done: false,
            volume_fs: service::VolumeFs::Formatted,
            next_pid: 0,
            svc_overlap_since: None,
        };
        if w.sc.service.as_ref().is_some_and(|s| s.first_format) {
            w.volume_fs = service::VolumeFs::Empty;
        }
        for id in 1..=3u8 {
            // Cluster creation: every node formatted over the same zeroes.
            let disks = w.format_disks(id, 0);
            w.hosts[idx(id)].parked = Some(disks);
            let at = w.rng.range(0, 300_000);
            w.push(at, Ev::Restart { node: id });
        }
        w.push(w.sc.chaos_every, Ev::Chaos);
        w.push(400_000, Ev::Client);
        w.push(w.sc.fault_phase, Ev::Heal);
        w
    }

    /// Blank disks for node `id`; its box's `generation`-th (0 at cluster
    /// creation, then one more per replacement) gives the incarnation.
    fn format_disks(&self, id: NodeId, generation: u64) -> Disks {
        let sc = &self.sc;
        let (lj, ld) = self.hosts[idx(id)].lying;
        let meta = triad_volume::store::meta_len_needed(sc.volume, sc.granularity, 2);
        let synced = self.hosts[idx(id)].synced.clone();
        let r = SimReplica::format(
            id,
            peers_of(id),
            sc.repl_config(),
            SimDisk::new(sc.ring + 8192, lj, DiskKind::Journal, synced.clone()),
            SimDisk::new(sc.volume, ld, DiskKind::Data, synced.clone()),
            SimDisk::new(meta, false, DiskKind::Meta, synced),
            triad_volume::store::Format {
                granularity: sc.granularity,
                incarnation: (u64::from(id) << 32) | generation,
                // Rule 18: a replacement box is a learner; a new cluster's are voters.
                learner: generation > 0,
            },
        )
        .expect("formatting in-memory disks works");
        let (mut j, mut d, mut m) = r.into_disks();
        // The new cluster's disks are durable before anything starts.
        for disk in [&mut j.mem, &mut d.mem, &mut m.mem] {
            disk.sync().expect("a fresh MemDisk syncs");
        }
        (j, d, m)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item { at, seq: self.seq, ev });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if !self.print_trace && self.done {
            return;
        }
        let s = format!("{:>10.6}s {}", self.now as f64 / 1e6, line());
        if self.print_trace {
            println!("{s}");
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(s);
    }

    fn fail(&self, check: DataCheck, detail: String) -> Res {
        Err(DataViolation { check, at: self.now, detail })
    }

    fn local(&self, id: NodeId) -> Instant {
        self.hosts[idx(id)].clock.local(self.now)
    }

    /// Runs to the end or the first violation.
    pub fn run(mut self) -> DataOutcome {
        let mut violation = loop {
            let Some(item) = self.queue.pop() else { break None };
            self.now = item.at;
            self.stats.events += 1;
            let r = self.step(item.ev).and_then(|()| self.check_serving());
            if let Err(v) = r {
                break Some(v);
            }
            if self.done {
                break None;
            }
        };
        if let Some(v) = &violation {
            let msg = v.to_string();
            self.note(|| format!("VIOLATION {msg}"));
            let d = self.describe();
            self.note(|| format!("state: {d}"));
        }
        for h in &mut self.hosts {
            let n = match (h.proc.as_mut(), h.parked.as_ref()) {
                (Some(p), _) => {
                    let (j, d, m) = p.vol.r.replica_mut().disks_mut();
                    faults(j, d, m)
                }
                (None, Some((j, d, m))) => faults(j, d, m),
                (None, None) => 0,
            };
            self.stats.disk_faults += n;
        }
        let mut o = std::mem::take(&mut self.stats);
        if let (Some(v), true, Some(bug)) = (&violation, self.sc.tolerate_known_bugs, o.known_bugs.first()) {
            o.tolerated = Some((v.clone(), bug));
            violation = None;
        }
        o.seed = self.seed;
        o.scenario = self.sc.name;
        o.writes = self.client.writes.len() as u64 - 1;
        o.acked = self.client.acked;
        o.failed = self.client.failed;
        o.violation = violation;
        o.trace_tail = self.trace.into_iter().collect();
        o
    }

    fn describe(&self) -> String {
        let mut s = Vec::new();
        for h in &self.hosts {
            let local = h.clock.local(self.now);
            s.push(match &h.proc {
                None => format!("n{}: down", h.id),
                Some(p) => {
                    let st = p.vol.r.replica().status(local);
                    format!(
                        "n{}: {:?}@{} lease={} | repl {:?} serving={} last={:?} durable={:?} commit={} applied={:?} k={:?} discarded={:?} view={:?}/{:?} busy={} syncing={} inbox={}",
                        h.id,
                        p.host.node().role(),
                        p.host.node().epoch(),
                        p.host.node().lease_until(local).is_some(),
                        st.health,
                        st.serving,
                        (st.last.epoch, st.last.seq),
                        (st.durable.epoch, st.durable.seq),
                        st.commit,
                        (st.applied.epoch, st.applied.seq),
                        (st.k.epoch, st.k.seq),
                        (st.discarded.epoch, st.discarded.seq),
                        p.vol.view.epoch,
                        p.vol.view.leader,
                        p.vol.busy,
                        p.vol.sync.is_some(),
                        p.vol.inbox.len()
                    )
                }
            });
            if self.sc.service.is_some() {
                let d = self.svc_describe(h.id);
                if let Some(last) = s.last_mut() {
                    last.push_str(&d);
                }
            }
        }
        s.join("; ")
    }

    fn step(&mut self, ev: Ev) -> Res {
        match ev {
            Ev::CoreWake { node, inc } => {
                let local = self.local(node);
                let Some(p) = self.proc(node, inc) else { return Ok(()) };
                if local >= p.host.next_deadline() {
                    self.core_input(node, Event::Tick)?;
                } else {
                    self.core_schedule(node, false);
                }
            }
            Ev::VolWake { node, inc } => {
                if self.proc(node, inc).is_some() {
                    self.vol_wake(node)?;
                }
            }
            Ev::ConfirmTimeout { node, inc } => {
                if self.proc(node, inc).is_some() {
                    self.release_held(node)?;
                }
            }
            Ev::VolDone { node, inc } => {
                if self.proc(node, inc).is_some() {
                    self.vol_done(node)?;
                }
            }
            Ev::VolFree { node, inc } => {
                if self.proc(node, inc).is_some() {
                    self.vol_free(node)?;
                }
            }
            Ev::Deliver { to, from, wire } => self.deliver(to, from, wire)?,
            Ev::Client => self.client_tick(),
            Ev::Chaos => self.chaos()?,
            Ev::Restart { node } => self.restart(node)?,
            Ev::Recover { node, inc } => self.recover(node, inc),
            Ev::Kill { node, power } => {
                if self.phase == Phase::Faults && self.hosts[idx(node)].proc.is_some() {
                    self.take_down(node, power);
                    let d = self.rng.range(self.sc.restart_delay.0, self.sc.restart_delay.1);
                    self.push(self.now + d, Ev::Restart { node });
                }
            }
            Ev::HealLinks { gen } => {
                if gen == self.net_gen && self.net.partitioned() {
                    self.net.heal();
                    self.note(|| "links healed".into());
                }
            }
            Ev::ReplaceAndFailover { leader, lagging, replaced } => {
                self.blank(replaced, Blank::Unmarked)?;
                self.note(|| format!("n{leader} KILLED for 2.5 s; n{lagging} back"));
                self.take_down(leader, false);
                self.push(self.now + 2_500_000, Ev::Restart { node: leader });
                self.net.heal();
            }
            Ev::Figure8(step) => self.figure8_step(step)?,
            Ev::Heal => {
                self.phase = Phase::Writing;
                self.net.heal();
                self.note(|| "HEAL: links healed, every node up; writes go on".into());
                if self.sc.service.is_some() {
                    self.svc_heal();
                }
                for id in 1..=3 {
                    self.restart(id)?;
                }
                let at = self.now + self.sc.write_after_heal;
                self.push(at, Ev::StopWrites);
            }
            Ev::StopWrites => {
                self.phase = Phase::Quiet;
                self.quiet_at = self.now;
                self.note(|| "writes stopped; waiting for convergence".into());
                self.push(self.now + CONVERGE_POLL, Ev::Check);
            }
            Ev::Check => self.converge_check()?,
            Ev::Svc(e) => self.svc_step(e)?,
        }
        Ok(())
    }

    /// The running process of `node` if it is incarnation `inc`.
    fn proc(&self, node: NodeId, inc: u64) -> Option<&Proc> {
        self.hosts[idx(node)].proc.as_ref().filter(|p| p.inc == inc)
    }

    // ---- the core on the runtime loop ----

    /// sync_watch.rs: a sync outstanding past the limit; the value to hand
    /// the host when it changed.
    fn watch_sync(&mut self, id: NodeId) -> Option<bool> {
        if self.sc.has(DataMutation::NoSyncWatch) {
            return None;
        }
        let (now, limit) = (self.now, self.sc.sync_stall_limit);
        let p = self.hosts[idx(id)].proc.as_mut()?;
        // Both slots of the watch: the sync thread's journal sync, and
        // the thread's own (store, metadata) syncs.
        let journal = p.vol.sync.is_some() && now.saturating_sub(p.vol.sync_since) > limit;
        let inline = p.vol.busy && now.saturating_sub(p.vol.busy_since) > limit;
        // The watch as it was: around the journal sync only.
        let stalled = journal || (inline && !self.sc.has(DataMutation::SyncWatchJournalOnly));
        if stalled == p.vol.stalled {
            return None;
        }
        p.vol.stalled = stalled;
        self.note(|| format!("n{id} sync watch: stalled={stalled}"));
        Some(stalled)
    }

    /// Feeds `event` to the host of `id` (the shipping `triad-host`) and
    /// carries out its commands in order, as runtime.rs does; VIP actions
    /// complete at once (the VIP world covers them).
    fn core_input(&mut self, id: NodeId, event: Event) -> Res {
        let i = idx(id);
        let mut events = VecDeque::from([event]);
        // runtime.rs: the sync watch is looked at on every turn of the loop.
        if let Some(stalled) = self.watch_sync(id) {
            events.push_front(Event::SyncStalled(stalled));
        }
        while let Some(event) = events.pop_front() {
            let local = self.local(id);
            let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
            let is_tick = event == Event::Tick;
            let trace = self.print_trace && !is_tick;
            let line = trace.then(|| format!("n{id} host <- {event:?}"));
            let cmds = p.host.handle(local, event);
            // runtime.rs waits for the host's next deadline with its timer
            // first (`biased;`): one still due after a Tick would spin the
            // loop and starve every other event (the VIP world's
            // `Progress`; checked here where the service's timers run).
            // (Not while a handover waits for the volume's confirmation:
            // the runtime is blocked in it then, not looping.)
            let deadline = p.host.next_deadline();
            if is_tick && deadline <= local && self.sc.service.is_some() && !p.host.handing_over() {
                return self.fail(
                    DataCheck::HostSpin,
                    format!(
                        "node {id}: after a Tick at {local:?} next_deadline() is {deadline:?}; the runtime would spin"
                    ),
                );
            }
            if let Some(u) = p.host.node().lease_until(local) {
                p.lease_bound = Some(p.lease_bound.map_or(u, |b| b.max(u)));
            }
            if let Some(l) = line {
                self.note(|| l);
            }
            self.carry_core(id, cmds.into(), &mut events)?;
            self.core_schedule(id, is_tick);
        }
        Ok(())
    }

    /// Carries out the host's commands in order (runtime.rs `execute`).
    /// A step-down confirmation hands the view over and waits until the
    /// volume thread has taken it, or gives up after the runtime's wait;
    /// the host holds everything else meanwhile.
    fn carry_core(&mut self, id: NodeId, mut queue: VecDeque<Command>, events: &mut VecDeque<Event>) -> Res {
        let i = idx(id);
        while let Some(c) = queue.pop_front() {
            match c {
                Command::Persist(hard) => {
                    let prev = self.hosts[i].hard.epoch;
                    if hard.epoch < prev {
                        return self.fail(
                            DataCheck::EpochMonotonic,
                            format!("node {id} persisted epoch {} over {prev}", hard.epoch),
                        );
                    }
                    self.hosts[i].hard = hard;
                }
                Command::Send { to, msg } => {
                    if matches!(msg.body, Body::TimeoutNow | Body::Vote { .. }) {
                        let s = format!("n{id} -> n{to} {:?} epoch {}", msg.body, msg.epoch);
                        self.note(|| s);
                    }
                    self.send(id, to, Wire::Core(msg));
                }
                Command::Vip { action, .. } => {
                    if self.sc.service.is_some() {
                        self.svc_vip(id, action)?;
                    }
                    events.push_back(Event::VipDone { action, result: VipResult::Done })
                }
                Command::VolumeView(view) => self.hand_view(id, view),
                Command::ConfirmStepDown(view) => {
                    let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
                    p.view_seq += 1;
                    p.vol.cell = Some((view, p.view_seq));
                    let give_up = self.now + STEP_DOWN_WAIT;
                    p.confirm = Some((p.view_seq, give_up));
                    let inc = p.inc;
                    self.note(|| format!("n{id} runtime waits for its volume to take {view:?} before TimeoutNow"));
                    self.push(give_up, Ev::ConfirmTimeout { node: id, inc });
                    self.vol_kick(id);
                }
                // The data world reports no fence: the host hands out none.
                Command::Fence(op) => self.note(|| format!("n{id} fence {op:?} (not modelled)")),
                // Enabled only in service scenarios (the host hands out
                // none elsewhere).
                Command::Pbx(c) => self.svc_pbx(id, c, events),
                Command::Fs(c) => self.svc_fs(id, c)?,
                Command::PetWatchdog => self.svc_pet(id),
                Command::Notice(n) => {
                    if !matches!(n, HostNotice::Core(Notice::VipFailed { .. })) {
                        self.note(|| format!("n{id} host {n:?}"));
                    }
                    if matches!(n, HostNotice::Core(Notice::RoleChanged { role: Role::Leader, .. })) {
                        self.figure8_on_leader(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// The volume thread took the view a step-down confirmation waits for
    /// (or the runtime's wait ran out): the host hears the answer.
    fn release_held(&mut self, id: NodeId) -> Res {
        let i = idx(id);
        let now = self.now;
        let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
        let Some((need, give_up)) = p.confirm else { return Ok(()) };
        let taken = p.vol.took_view >= need;
        if !taken && now < give_up {
            return Ok(());
        }
        p.confirm = None;
        if !taken {
            self.note(|| format!("n{id} volume did not confirm the step-down in time"));
        }
        self.core_input(id, Event::StepDownConfirmed(taken))
    }

    /// The runtime hands the view to the volume thread (mutations may drop or bend it).
    fn hand_view(&mut self, id: NodeId, view: View) {
        let i = idx(id);
        let overrun = self.sc.has(DataMutation::LeaseOverrun);
        let no_change = self.sc.has(DataMutation::NoViewOnLeaderChange);
        let Some(p) = self.hosts[i].proc.as_mut() else { return };
        p.view_seq += 1;
        // What the replica will have once the cell is taken.
        let last = p.vol.cell.map_or(p.vol.view, |(v, _)| v);
        let mut view = view;
        if overrun {
            view.lease_until = view.lease_until.map(|u| u.add(Duration::from_micros(OVERRUN)));
            if last.leader == Some(id) && view.leader != Some(id) && view.epoch == last.epoch {
                return;
            }
        }
        if no_change && last != View::default() && (view.leader != last.leader || view.epoch != last.epoch) {
            return;
        }
        // volume.rs: the latest view goes into a shared cell (a newer one
        // replaces it), and a `View` command wakes the thread.
        p.vol.cell = Some((view, p.view_seq));
        self.vol_kick(id);
    }

    fn core_schedule(&mut self, id: NodeId, after_tick: bool) {
        let now = self.now;
        let h = &mut self.hosts[idx(id)];
        let Some(p) = h.proc.as_mut() else { return };
        let d = p.host.next_deadline();
        let mut at = h.clock.real_of(d).max(now);
        if at == now && after_tick {
            at = now + 1000; // the VIP world checks the core's progress
        }
        if p.core_wake_at != at || at == now {
            p.core_wake_at = at;
            let inc = p.inc;
            self.push(at, Ev::CoreWake { node: id, inc });
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, wire: Wire) {
        for d in self.net.plan(&mut self.rng, from, to) {
            let mut at = self.now + d;
            if self.sc.fifo_links {
                let last = &mut self.link_last[idx(from)][idx(to)];
                at = at.max(*last);
                *last = at;
            }
            self.push(at, Ev::Deliver { to, from, wire: wire.clone() });
        }
    }

    fn deliver(&mut self, to: NodeId, from: NodeId, wire: Wire) -> Res {
        if self.hosts[idx(to)].proc.is_none() {
            return Ok(());
        }
        match wire {
            Wire::Core(msg) => self.core_input(to, Event::Peer(msg)),
            Wire::Repl(msg) => {
                self.figure8_on_deliver(to, from, &msg);
                let unfenced = self.sc.has(DataMutation::NoEpochFence);
                let Some(p) = self.hosts[idx(to)].proc.as_mut() else { return Ok(()) };
                let (mut from, mut msg) = (from, msg);
                let v = p.vol.view;
                match (&mut msg, unfenced) {
                    (Msg::Append { epoch, .. }, true) if *epoch < v.epoch => {
                        if let Some(l) = v.leader.filter(|l| *l != to) {
                            *epoch = v.epoch;
                            from = l;
                            self.stats.mutated += 1;
                        }
                    }
                    (Msg::AppendReply { epoch, .. }, true) if *epoch < v.epoch && v.leader == Some(to) => {
                        *epoch = v.epoch;
                        self.stats.mutated += 1;
                    }
                    _ => {}
                }
                if unfenced {
                    // The stale frames a reconnecting link may still carry:
                    // keep recent Appends, and now and then replay an old
                    // one, relabelled, behind the current message.
                    if let Msg::Append { records, .. } = &msg {
                        if !records.is_empty() {
                            p.vol.old_appends.push_back((from, msg.clone()));
                            if p.vol.old_appends.len() > 16 {
                                p.vol.old_appends.pop_front();
                            }
                        }
                    }
                }
                p.vol.inbox.push_back(Cmd::Peer(from, msg));
                if unfenced && self.rng.chance(0.3) {
                    let p = self.hosts[idx(to)].proc.as_mut().expect("checked above");
                    let v = p.vol.view;
                    let stale = p.vol.old_appends.iter().position(|(_, m)| m.epoch() < v.epoch);
                    if let (Some(i), Some(l)) = (stale, v.leader.filter(|l| *l != to)) {
                        if let Some((_, mut m)) = p.vol.old_appends.remove(i) {
                            if let Msg::Append { epoch, .. } = &mut m {
                                *epoch = v.epoch;
                            }
                            p.vol.inbox.push_back(Cmd::Peer(l, m));
                            self.stats.mutated += 1;
                        }
                    }
                }
                self.vol_kick(to);
                Ok(())
            }
        }
    }

    // ---- the volume thread ----

    fn vol_kick(&mut self, id: NodeId) {
        let Some(p) = self.hosts[idx(id)].proc.as_mut() else { return };
        if !p.vol.busy && !p.vol.kicked {
            p.vol.kicked = true;
            let inc = p.inc;
            self.push(self.now, Ev::VolWake { node: id, inc });
        }
    }

    fn vol_schedule(&mut self, id: NodeId) {
        let now = self.now;
        let h = &mut self.hosts[idx(id)];
        let Some(p) = h.proc.as_mut() else { return };
        let mut at = p.vol.periodic_at;
        if let Some(d) = p.vol.r.next_deadline() {
            at = at.min(h.clock.real_of(d));
        }
        let at = at.max(now);
        if p.vol.wake_at != at {
            p.vol.wake_at = at;
            let inc = p.inc;
            self.push(at, Ev::VolWake { node: id, inc });
        }
    }

    /// One pass of the volume thread's loop (volume.rs `run`): the latest
    /// view before every command, the commands (a `Synced` among them
    /// finishes the running journal sync, then `after_sync`), the tick;
    /// the journal sync started if none runs (it goes to the sync thread:
    /// `Ev::VolDone` at its end); `after_sync`; then the outputs are
    /// carried out, unless the pass hung in a store or metadata sync
    /// (then when the hang ends: `Ev::VolFree`).
    fn vol_wake(&mut self, id: NodeId) -> Res {
        let i = idx(id);
        let now = self.now;
        let local = self.local(id);
        let ack_on_submit = self.sc.has(DataMutation::AckOnSubmit);
        let print = self.print_trace;
        if self.hosts[i].proc.as_ref().is_some_and(|p| !p.vol.busy) {
            self.disk_fault_atlas(id);
        }
        let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
        p.vol.kicked = false;
        if p.vol.busy {
            return Ok(());
        }
        let due = p.vol.r.next_deadline().is_some_and(|d| d <= local);
        let idle = p.vol.inbox.is_empty() && p.vol.cell.is_none() && !p.vol.fresh;
        if idle && !due && now < p.vol.periodic_at {
            self.vol_schedule(id);
            return Ok(());
        }
        self.hosts[i].synced.set(0);
        let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
        let v = &mut p.vol;
        let mut outs = Vec::new();
        let mut submitted = Vec::new();
        let mut lines = Vec::new();
        if v.fresh {
            // The driver started with an empty view (VolumeDriver::new).
            v.fresh = false;
            outs.append(&mut v.start);
        }
        let n = v.inbox.len().min(VOL_MAX_BATCH);
        let mut dishonest = None;
        for cmd in v.inbox.drain(..n).collect::<Vec<_>>() {
            let input = match cmd {
                Cmd::Synced => {
                    if let Some((sync, result)) = v.sync.take() {
                        v.r.finish_sync(sync, result, &mut outs);
                        if dishonest.is_none() {
                            dishonest = durable_beyond_medium(v.r.replica_mut());
                        }
                        let view = take_cell(v, id, print, &mut lines);
                        v.r.after_sync(&|| local, view, &mut outs);
                    }
                    continue;
                }
                Cmd::Peer(from, msg) => {
                    if print {
                        lines.push(format!("n{id} vol <- n{from} {}", brief(&msg)));
                    }
                    VolumeIn::Peer(from, msg)
                }
                Cmd::Write { id: wid, offset, data } => {
                    VolumeIn::Write { client: wid, offset, pieces: vec![triad_repl::Bytes::from(data)] }
                }
            };
            let view = take_cell(v, id, print, &mut lines);
            let wid = match &input {
                VolumeIn::Write { client, .. } => Some(*client),
                _ => None,
            };
            let before = outs.len();
            v.r.command(&|| local, view, input, &mut outs);
            if let Some(wid) = wid {
                let refused =
                    outs[before..].iter().any(|o| matches!(o, VolumeOut::WriteDone { client, .. } if *client == wid));
                if ack_on_submit && !refused {
                    submitted.push(wid);
                }
            }
        }
        let view = take_cell(v, id, print, &mut lines);
        let mut spin = None;
        if v.r.before_sync(&|| local, view, &mut outs) {
            if let Some(d) = v.r.next_deadline().filter(|d| *d <= local) {
                spin = Some(d);
            }
        }
        // One journal sync at a time, on the sync thread.
        let faults_before = v.r.replica_mut().disks_mut().0.mem.faults();
        let started = v.sync.is_none() && {
            v.sync = v.r.start_sync(&mut outs).map(|(sync, job)| (sync, job.run()));
            v.sync.is_some()
        };
        // The job's writeback failed (the fault fires when it starts).
        let job_failed = started && v.r.replica_mut().disks_mut().0.mem.faults() > faults_before;
        let view = take_cell(v, id, print, &mut lines);
        v.r.after_sync(&|| local, view, &mut outs);
        v.periodic_at = now + VOL_MAX_WAIT;
        let inc = p.inc;
        for l in lines {
            self.note(|| l);
        }
        for wid in submitted {
            self.client.done(wid, true);
        }
        if let Some(d) = spin {
            return self.fail(
                DataCheck::VolumeSpin,
                format!("node {id}: after tick at {local:?} the replica's next deadline is {d:?}"),
            );
        }
        if let Some(detail) = dishonest {
            return self.fail(DataCheck::DurableOnDisk, format!("node {id}: {detail}"));
        }
        if started {
            // A journal stall hangs the sync thread's fdatasync, not this
            // thread.
            let mut d = self.rng.range(20, 400);
            let stall = self.hosts[i].proc.as_mut().and_then(|p| {
                let (len, kind) = p.vol.stall_next.filter(|(_, k)| *k == DiskKind::Journal)?;
                p.vol.stall_next = None;
                Some((len, kind))
            });
            if let Some((len, kind)) = stall {
                d = len;
                self.note(|| format!("n{id} {kind:?} disk HANGS for {} ms", len / 1000));
            }
            if let Some(p) = self.hosts[i].proc.as_mut() {
                p.vol.sync_since = now;
                p.vol.sync_stalled = stall.is_some();
            }
            self.push(now + d, Ev::VolDone { node: id, inc });
            if job_failed && self.phase == Phase::Faults && self.rng.chance(self.sc.kill_in_failed_sync_p) {
                self.note(|| {
                    format!("n{id} KILLED while its failed journal sync job is out (before it can mark itself)")
                });
                self.push(now + d / 2, Ev::Kill { node: id, power: false });
            }
        }
        // A store or metadata stall hangs this pass if it synced that disk
        // (a checkpoint in the tick, compaction after a sync): its outputs
        // go out when the hang ends.
        let synced = self.hosts[i].synced.get();
        if let Some(p) = self.hosts[i].proc.as_mut() {
            if let Some((len, kind)) =
                p.vol.stall_next.filter(|(_, k)| *k != DiskKind::Journal && synced & k.bit() != 0)
            {
                p.vol.stall_next = None;
                p.vol.busy = true;
                p.vol.busy_since = now;
                p.vol.stalled_on = Some(kind);
                p.vol.held = outs;
                self.note(|| format!("n{id} {kind:?} disk HANGS for {} ms", len / 1000));
                self.push(now + len, Ev::VolFree { node: id, inc });
                return self.release_held(id);
            }
        }
        self.carry_vol(id, outs)?;
        match self.hosts[i].proc.as_ref() {
            Some(p) if !p.vol.inbox.is_empty() => self.vol_kick(id),
            Some(_) => self.vol_schedule(id),
            None => {}
        }
        self.release_held(id)
    }

    /// The sync thread's fdatasync returns: its `Synced` joins the
    /// thread's queue (the thread may be hung; it finishes the sync when it
    /// takes it).
    fn vol_done(&mut self, id: NodeId) -> Res {
        let i = idx(id);
        let local = self.local(id);
        self.disk_fault_atlas(id);
        if self.phase == Phase::Faults && self.rng.chance(self.sc.crash_at_sync_p) {
            let power = self.rng.chance(0.5);
            if power {
                self.note(|| format!("n{id} POWER CUT during its journal sync"));
            } else {
                let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
                let mut outs = Vec::new();
                if let Some((sync, result)) = p.vol.sync.take() {
                    p.vol.r.finish_sync(sync, result, &mut outs);
                }
                p.vol.r.after_sync(&|| local, None, &mut outs);
                self.note(|| format!("n{id} KILLED right after its journal sync, before its replies"));
            }
            self.take_down(id, power);
            let d = self.rng.range(self.sc.restart_delay.0, self.sc.restart_delay.1);
            self.push(self.now + d, Ev::Restart { node: id });
            return Ok(());
        }
        let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
        p.vol.sync_stalled = false;
        p.vol.inbox.push_back(Cmd::Synced);
        self.vol_kick(id);
        Ok(())
    }

    /// The thread's hang in a store or metadata sync ends: the pass's
    /// outputs go out, and the thread runs again.
    fn vol_free(&mut self, id: NodeId) -> Res {
        let i = idx(id);
        self.disk_fault_atlas(id);
        let Some(p) = self.hosts[i].proc.as_mut() else { return Ok(()) };
        let outs = std::mem::take(&mut p.vol.held);
        p.vol.busy = false;
        p.vol.stalled_on = None;
        self.carry_vol(id, outs)?;
        if self.hosts[i].proc.is_some() {
            self.vol_wake(id)?;
        }
        Ok(())
    }

    fn carry_vol(&mut self, id: NodeId, outs: Vec<VolumeOut>) -> Res {
        for o in outs {
            match o {
                VolumeOut::Send { to, msg } => {
                    if self.print_trace {
                        let s = format!("n{id} vol -> n{to} {}", brief(&msg));
                        self.note(|| s);
                    }
                    self.send(id, to, Wire::Repl(msg));
                }
                VolumeOut::WriteDone { client: wid, result } => {
                    let kind = match &result {
                        Ok(()) => None,
                        Err(triad_repl::ClientError::NotActive | triad_repl::ClientError::NotReady) => Some(0),
                        Err(triad_repl::ClientError::Timeout(_)) => Some(1),
                        Err(_) => Some(2),
                    };
                    if let Some(k) = kind {
                        self.stats.write_errors[k] += 1;
                    }
                    if self.client.done(wid, result.is_ok()) && (self.print_trace || result.is_err()) {
                        self.note(|| format!("n{id} write {wid} done: {result:?}"));
                    }
                }
                VolumeOut::Position(pos) => {
                    if !self.sc.has(DataMutation::NoPositionToCore) {
                        self.core_input(id, Event::VolumePosition(pos))?;
                    }
                }
                VolumeOut::Electable(e) => {
                    self.note(|| format!("n{id} vol electable {e}"));
                    if !self.sc.has(DataMutation::IgnoreElectable) {
                        self.core_input(id, Event::VolumeElectable(e))?;
                    }
                }
                VolumeOut::Membership(m) => {
                    self.note(|| format!("n{id} vol membership {m:?}"));
                    if !self.sc.has(DataMutation::IgnoreMembership) {
                        self.core_input(id, Event::VolumeMembership(m))?;
                    }
                }
                VolumeOut::VerifyDone { result, .. } => self.note(|| format!("n{id} verify done {result:?}")),
                VolumeOut::Notice(n) => self.repl_notice(id, n)?,
                // The view was logged when taken from the cell; the
                // serving state is read from the replica by the checks.
                VolumeOut::Serving(s) if self.sc.service.is_some() => {
                    self.core_input(id, Event::VolumeServing(s.is_some()))?;
                }
                VolumeOut::ViewTaken(_) | VolumeOut::Serving(_) => {}
            }
            if self.hosts[idx(id)].proc.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn repl_notice(&mut self, id: NodeId, n: ReplNotice) -> Res {
        let line = format!("n{id} vol {n:?}");
        self.note(|| line);
        match n {
            ReplNotice::SplitBrain { peer, detail } => {
                self.fail(DataCheck::SplitBrain, format!("node {id} reports split brain with node {peer}: {detail}"))
            }
            ReplNotice::StorageFailed { detail } => self.storage_failed(id, detail),
            ReplNotice::ResyncStarted { peer, hash, bytes } => {
                if self.sc.no_resync_expected {
                    return self.fail(
                        DataCheck::UnneededResync,
                        format!("node {id} starts a block resync of node {peer} (hash {hash}, {bytes} bytes) in a run without faults"),
                    );
                }
                let leader_inc = self.hosts[idx(id)].proc.as_ref().map_or(0, |p| p.inc);
                let epoch = self.hosts[idx(id)].proc.as_ref().map_or(0, |p| p.vol.view.epoch);
                let peer_state = self.hosts[idx(peer)].proc.as_ref().map(|p| (p.inc, p.vol.view_changes));
                let key = (leader_inc, epoch, peer_state);
                let prev = self.hosts[idx(id)].resyncing[idx(peer)].replace(key);
                if self.sc.strict_resync && prev == Some(key) && peer_state.is_some() {
                    return self.fail(
                        DataCheck::ResyncRestarted,
                        format!("node {id} restarts its block resync of node {peer} (now hash {hash}) though node {peer} neither restarted nor changed its view"),
                    );
                }
                if hash {
                    self.stats.hash_resyncs += 1;
                } else {
                    self.stats.bitmap_resyncs += 1;
                }
                if self.phase == Phase::Faults && self.rng.chance(self.sc.crash_in_resync_p) {
                    let node = if self.rng.chance(0.7) { peer } else { id };
                    let power = self.rng.chance(0.3);
                    let d = self.rng.range(1_000, 400_000);
                    self.push(self.now + d, Ev::Kill { node, power });
                }
                Ok(())
            }
            ReplNotice::ResyncFinished { peer, point, .. } => {
                self.hosts[idx(id)].resyncing[idx(peer)] = None;
                let p = &self.hosts[idx(peer)].proc;
                if p.as_ref().is_some_and(|p| !marked(p.vol.r.replica())) {
                    self.hosts[idx(peer)].tainted = false;
                }
                let _ = point;
                self.stats.resyncs_done += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    // ---- rule 9: storage failures ----

    /// Injected sync failures that fired on the running process of `id`.
    fn faults_fired(&mut self, id: NodeId) -> u64 {
        let Some(p) = self.hosts[idx(id)].proc.as_mut() else { return 0 };
        let before = p.vol.faults_before;
        let (j, d, m) = p.vol.r.replica_mut().disks_mut();
        faults(j, d, m) - before
    }

    /// A replica reports a storage failure: expected only where an
    /// injected fault fired; the supervisor then brings it back (a few
    /// tens of ms later, as a restart of the process or a reboot).
    fn storage_failed(&mut self, id: NodeId, detail: String) -> Res {
        if self.faults_fired(id) == 0 {
            return self.fail(DataCheck::StorageFailed, format!("node {id}: storage failed: {detail}"));
        }
        let Some(p) = self.hosts[idx(id)].proc.as_mut() else { return Ok(()) };
        if !p.vol.recovering {
            p.vol.recovering = true;
            let inc = p.inc;
            let d = self.rng.range(10_000, 300_000);
            self.push(self.now + d, Ev::Recover { node: id, inc });
        }
        Ok(())
    }

    /// `Replica::recovery`: a durable mark means reopen (modelled as a
    /// restart of the process, page cache kept: the hard case); a lost
    /// mark means reboot (a power cut of the node: the page cache goes).
    fn recover(&mut self, id: NodeId, inc: u64) {
        let Some(p) = self.proc(id, inc) else { return };
        let Some(how) = p.vol.r.recovery() else { return };
        let reboot = how == triad_repl::Recovery::Reboot;
        self.stats.recoveries[usize::from(reboot)] += 1;
        self.note(|| format!("n{id} storage failed: supervisor recovers it ({how:?})"));
        self.take_down(id, reboot);
        let d = if reboot { self.rng.range(self.sc.restart_delay.0, self.sc.restart_delay.1) } else { 20_000 };
        self.push(self.now + d, Ev::Restart { node: id });
    }

    /// The fault atlas (TigerBeetle's, in spirit): a fault fires only
    /// while another node is up, consistent, untouched by faults and able
    /// to win a vote (its journal at least as far as the failed node's
    /// durable position, which that node will vote with, or as the third
    /// node's): a good copy always survives to lead and resync the rest. A failed
    /// node never leads again before a resync, so failing the last good
    /// copy stalls the cluster until an operator steps in (see
    /// docs/replication.md, rule 9). Called before every step of the
    /// volume thread: a fault whose moment came at a bad time is disarmed.
    fn disk_fault_atlas(&mut self, id: NodeId) {
        let Some(mine) = self.hosts[idx(id)].proc.as_ref().map(|p| p.vol.r.replica().journal().durable()) else {
            return;
        };
        let position = |h: &Host| h.proc.as_ref().map(|p| p.vol.r.replica().position());
        let spare = self.hosts.iter().any(|h| {
            let third = self.hosts.iter().find(|t| t.id != id && t.id != h.id).and_then(position);
            let good = |p: &Proc| {
                let pos = p.vol.r.replica().position();
                p.vol.r.replica().electable() && (pos >= mine || third.is_some_and(|t| pos >= t))
            };
            h.id != id && !h.tainted && h.proc.as_ref().is_some_and(good)
        });
        if spare {
            return;
        }
        let Some(p) = self.hosts[idx(id)].proc.as_mut() else { return };
        let (j, d, m) = p.vol.r.replica_mut().disks_mut();
        if [&*j, &*d, &*m].iter().all(|disk| disk.fault.is_none()) {
            return;
        }
        for disk in [j, d, m] {
            disk.fault = None;
        }
        let tainted = marked(p.vol.r.replica());
        self.hosts[idx(id)].tainted = tainted;
        self.note(|| format!("n{id}: armed disk fault withdrawn: no other consistent node"));
    }

    /// Chaos: arm a Linux-style failure of the next fdatasync of one disk
    /// of a running node (and now and then of its metadata disk too).
    fn arm_disk_fault(&mut self) {
        let n = self.target();
        if self.hosts.iter().any(|h| h.tainted) {
            return;
        }
        let which = self.rng.range(0, 2);
        let meta_too = self.rng.chance(self.sc.disk_fault_meta_too);
        let fault = SyncFault::linux(self.rng.chance(0.5));
        let fault_meta = SyncFault::linux(self.rng.chance(0.5));
        let Some(p) = self.hosts[idx(n)].proc.as_mut() else { return };
        let (j, d, m) = p.vol.r.replica_mut().disks_mut();
        let disk = match which {
            0 => j,
            1 => d,
            _ => &mut *m,
        };
        disk.fault = Some(fault);
        let name = ["journal", "data", "metadata"][which as usize];
        if meta_too {
            m.fault = Some(fault_meta);
        }
        self.hosts[idx(n)].tainted = true;
        self.note(|| {
            format!("n{n}: next {name} fdatasync fails ({fault:?}){}", if meta_too { ", metadata's too" } else { "" })
        });
    }

    // ---- client ----

    fn serving_node(&self) -> Option<NodeId> {
        self.hosts.iter().find_map(|h| {
            let local = h.clock.local(self.now);
            h.proc.as_ref().filter(|p| p.vol.r.replica().serving(local)).map(|_| h.id)
        })
    }

    fn client_tick(&mut self) {
        if self.phase == Phase::Quiet {
            return;
        }
        let gap = self.rng.range(self.sc.write_gap.0, self.sc.write_gap.1);
        self.push(self.now + gap, Ev::Client);
        if self.client.inflight >= self.sc.max_inflight {
            return;
        }
        let target = match self.serving_node() {
            Some(n) => Some(n),
            // No one serves: now and then a write goes to some node anyway
            // (the client's idea of the active node is stale).
            None if self.rng.chance(0.1) => Some(self.rng.range(1, 3) as NodeId),
            None => None,
        };
        let Some(target) = target else { return };
        let Some(inc) = self.hosts[idx(target)].proc.as_ref().map(|p| p.inc) else { return };
        if self.rng.chance(0.05) {
            // FLUSH: completes at once, every acknowledged write is committed.
            self.client.flushes += 1;
            if self.print_trace {
                self.note(|| format!("client FLUSH on n{target}"));
            }
        }
        let blocks_total = self.sc.volume / BLOCK;
        let blocks = self.rng.range(1, self.sc.max_write_blocks.min(blocks_total));
        let block = self.rng.range(0, blocks_total - blocks);
        let (wid, data) = self.client.issue(target, inc, block, blocks, self.now);
        if self.print_trace {
            self.note(|| format!("client write {wid} to n{target}: blocks {block}..{}", block + blocks));
        }
        let p = self.hosts[idx(target)].proc.as_mut().expect("target runs");
        p.vol.inbox.push_back(Cmd::Write { id: wid, offset: block * BLOCK, data });
        self.vol_kick(target);
    }

    // ---- faults ----

    /// The serving node, else the core leader with the highest epoch.
    fn leader(&self) -> Option<NodeId> {
        self.serving_node().or_else(|| {
            self.hosts
                .iter()
                .filter_map(|h| {
                    h.proc
                        .as_ref()
                        .filter(|p| p.host.node().role() == Role::Leader)
                        .map(|p| (p.host.node().epoch(), h.id))
                })
                .max()
                .map(|(_, id)| id)
        })
    }

    fn target(&mut self) -> NodeId {
        match self.leader() {
            Some(l) if self.rng.chance(self.sc.leader_bias) => l,
            _ => self.rng.range(1, 3) as NodeId,
        }
    }

    fn chaos(&mut self) -> Res {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        self.push(self.now + self.sc.chaos_every, Ev::Chaos);
        let delay = |w: &mut DataWorld| w.rng.range(w.sc.restart_delay.0, w.sc.restart_delay.1);
        if self.rng.chance(self.sc.kill_p) {
            let n = self.target();
            if self.hosts[idx(n)].proc.is_some() {
                self.take_down(n, false);
                let d = delay(self);
                self.push(self.now + d, Ev::Restart { node: n });
            }
        }
        if self.rng.chance(self.sc.power_cut_p) {
            let n = self.target();
            let was_up = self.hosts[idx(n)].proc.is_some();
            self.take_down(n, true);
            if was_up {
                let d = delay(self);
                self.push(self.now + d, Ev::Restart { node: n });
            }
        }
        if self.rng.chance(self.sc.full_power_cut_p) {
            self.note(|| "POWER CUT OF ALL THREE NODES".into());
            self.stats.full_power_cuts += 1;
            self.full_cut_unchecked = true;
            for n in 1..=3u8 {
                let was_up = self.hosts[idx(n)].proc.is_some();
                self.take_down(n, true);
                if was_up {
                    let d = self.rng.range(50_000, 800_000);
                    self.push(self.now + d, Ev::Restart { node: n });
                }
            }
        }
        if self.rng.chance(self.sc.long_outage_p) {
            let leader = self.leader();
            let followers: Vec<NodeId> =
                (1..=3u8).filter(|n| Some(*n) != leader && self.hosts[idx(*n)].proc.is_some()).collect();
            if !followers.is_empty() && !self.net.partitioned() {
                let f = followers[self.rng.range(0, followers.len() as u64 - 1) as usize];
                let d = self.rng.range(self.sc.long_outage.0, self.sc.long_outage.1);
                if self.rng.chance(0.5) {
                    self.note(|| format!("n{f} goes away for {} ms (long outage)", d / 1000));
                    self.take_down(f, false);
                    self.push(self.now + d, Ev::Restart { node: f });
                } else {
                    self.net.isolate(f);
                    self.net_gen += 1;
                    self.note(|| format!("n{f} ISOLATED for {} ms (long outage)", d / 1000));
                    let gen = self.net_gen;
                    self.push(self.now + d, Ev::HealLinks { gen });
                }
            }
        }
        if self.rng.chance(self.sc.partition_p) {
            if self.net.partitioned() {
                self.net.heal();
                self.note(|| "links healed".into());
            } else {
                let n = self.target();
                let o = if n == 3 { 1 } else { n + 1 };
                match self.rng.range(0, 2) {
                    0 => {
                        self.net.isolate(n);
                        self.note(|| format!("n{n} ISOLATED"));
                    }
                    1 => {
                        self.net.set_cut(n, o, true);
                        self.note(|| format!("one-way cut n{n} -> n{o}"));
                    }
                    _ => {
                        self.net.set_cut(o, n, true);
                        self.net.set_cut(n, o, true);
                        self.note(|| format!("link n{n} <-> n{o} cut"));
                    }
                }
                self.net_gen += 1;
                let gen = self.net_gen;
                let d = self.rng.range(self.sc.partition_len.0, self.sc.partition_len.1);
                self.push(self.now + d, Ev::HealLinks { gen });
            }
        }
        if self.rng.chance(self.sc.disk_stall_p) {
            let n = self.target();
            let d = self.rng.range(self.sc.disk_stall.0, self.sc.disk_stall.1);
            let kind = match self.rng.range(0, 3) {
                0 => DiskKind::Journal,
                1 => DiskKind::Data,
                _ => DiskKind::Meta,
            };
            if let Some(p) = self.hosts[idx(n)].proc.as_mut() {
                p.vol.stall_next = Some((d, kind));
            }
        }
        // Drawn only where faults are on, so other scenarios' seeds replay as before.
        if self.sc.disk_fault_p > 0.0 && self.rng.chance(self.sc.disk_fault_p) {
            self.arm_disk_fault();
        }
        if self.rng.chance(self.sc.switchover_p) {
            if let Some(l) = self.leader() {
                self.note(|| format!("operator asks n{l} to switch over"));
                self.core_input(l, Event::Admin(AdminRequest::Switchover { to: None }))?;
            }
        }
        if self.sc.service.is_some() {
            self.svc_chaos();
        }
        Ok(())
    }

    /// Kills the process of `id` (page cache kept), with `power` also cuts
    /// the power of its disks (unsynced writes lost, torn, reordered).
    /// Works on a node that is already down, too (its parked disks).
    fn take_down(&mut self, id: NodeId, power: bool) {
        let i = idx(id);
        let now = self.now;
        let was_up = self.hosts[i].proc.is_some();
        if self.sc.service.is_some() && (was_up || power) {
            self.svc_down(id, power);
        }
        if let Some(p) = self.hosts[i].proc.take() {
            // Disarmed below; still tainted if its storage failed.
            self.hosts[i].tainted = marked(p.vol.r.replica());
            let (mut j, mut d, mut m) = p.vol.r.into_replica(&mut Vec::new()).into_disks();
            for disk in [&mut j, &mut d, &mut m] {
                disk.mem.crash();
                // An armed fault was for that process's next sync.
                disk.fault = None;
            }
            self.hosts[i].parked = Some((j, d, m));
            self.hosts[i].serving_end = self.hosts[i].serving_end.min(now);
            let lost = self.client.lost(id, p.inc);
            self.stats.write_errors[3] += lost as u64;
            if !power {
                self.stats.kills += 1;
                self.note(|| format!("n{id} KILLED ({lost} writes in flight lost)"));
            }
        }
        if power {
            self.stats.power_cuts += 1;
            self.note(|| format!("n{id} POWER CUT"));
            let rng = &mut self.rng;
            if let Some((j, d, m)) = self.hosts[i].parked.as_mut() {
                let mut bits = || rng.u64();
                for disk in [&mut j.mem, &mut d.mem, &mut m.mem] {
                    disk.power_cut(&mut bits);
                }
            }
        }
    }

    fn restart(&mut self, id: NodeId) -> Res {
        let i = idx(id);
        if self.hosts[i].proc.is_some() {
            return Ok(());
        }
        let Some((j, d, m)) = self.hosts[i].parked.take() else { return Ok(()) };
        let faults_before = faults(&j, &d, &m);
        self.next_inc += 1;
        let inc = self.next_inc;
        let origin = self.rng.range(1_000_000, 50_000_000);
        let seed = self.rng.u64();
        let now = self.now;
        let r = match SimReplica::open(id, peers_of(id), self.sc.repl_config(), j, d, m) {
            Ok(r) => r,
            Err(e) => {
                let mut s = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(c) = cur {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    cur = c.source();
                }
                return self.fail(DataCheck::OpenFailed, format!("node {id}: Replica::open failed: {s}"));
            }
        };
        let h = &mut self.hosts[i];
        h.clock.reorigin(now, origin);
        let local = h.clock.local(now);
        let position = core_position(r.position());
        let setup =
            Setup { id, peers: peers_of(id), timing: self.sc.timing.clone(), hard: h.hard, position, now: local, seed };
        // As the supervisor does, before the first message (mutations may
        // hide the replica's verdicts from the host).
        let start = VolumeStart {
            position,
            electable: r.electable() || self.sc.has(DataMutation::IgnoreElectable),
            membership: if self.sc.has(DataMutation::IgnoreMembership) {
                Membership::default()
            } else {
                r.membership()
            },
        };
        let (mut host, mut start_cmds) = HostMachine::new(setup, Some(start));
        // runtime.rs: the filesystem, the PBX, then the watchdog (which
        // requires the PBX's supervision when there is one).
        if let Some(svc) = &self.sc.service {
            start_cmds.extend(host.enable_filesystem(local, svc.fs));
            host.enable_pbx(svc.pbx);
            host.enable_watchdog(svc.dog, true);
        }
        let inbox = VecDeque::new();
        let mut start_outs = Vec::new();
        let r = SimDriver::new(r, local, &mut start_outs);
        h.proc = Some(Proc {
            inc,
            host,
            core_wake_at: 0,
            view_seq: 0,
            confirm: None,
            lease_bound: None,
            vol: Vol {
                r,
                start: start_outs,
                inbox,
                cell: None,
                took_view: 0,
                fresh: true,
                busy: false,
                busy_since: 0,
                sync: None,
                view: View::default(),
                wake_at: 0,
                kicked: false,
                periodic_at: now,
                view_changes: 0,
                old_appends: VecDeque::new(),
                sync_since: 0,
                stall_next: None,
                stalled_on: None,
                sync_stalled: false,
                held: Vec::new(),
                recovering: false,
                faults_before,
                stalled: false,
            },
        });
        let hard = h.hard;
        self.note(|| format!("n{id} STARTED (incarnation {inc}) from {hard:?}, journal at {position:?}"));
        if self.sc.service.is_some() {
            self.svc_started(id, inc);
        }
        let mut events = VecDeque::new();
        self.carry_core(id, start_cmds.into(), &mut events)?;
        for e in events {
            self.core_input(id, e)?;
        }
        self.vol_kick(id);
        self.core_schedule(id, false);
        Ok(())
    }

    /// A replaced box: blank formatted disks and a blank core state (epoch
    /// 0, no vote), as a new appliance has; with `Blank::Marked` the store
    /// is marked inconsistent first.
    fn blank(&mut self, id: NodeId, how: Blank) -> Res {
        self.take_down(id, false);
        self.hosts[idx(id)].hard = HardState::default();
        self.hosts[idx(id)].replacements += 1;
        let (j, mut d, m) = self.format_disks(id, self.hosts[idx(id)].replacements);
        if how == Blank::MarkedOldData {
            // What the disk held before (formatting leaves data as it is).
            let old: Vec<u8> = (0..self.sc.volume).map(|i| (i / 4096 % 251) as u8 | 1).collect();
            d.mem.write_at(0, &old).expect("in-memory writes");
            d.mem.sync().expect("a MemDisk syncs");
        }
        let (d, m) = if how != Blank::Unmarked {
            let mut s = triad_volume::Store::open(d, m).expect("a formatted store opens");
            s.mark_inconsistent(0).expect("in-memory metadata writes");
            s.into_disks()
        } else {
            (d, m)
        };
        self.hosts[idx(id)].parked = Some((j, d, m));
        self.note(|| format!("n{id} REPLACED: blank disks ({how:?}) and core state"));
        self.restart(id)
    }

    // ---- checks ----

    /// After every event: who serves, inside which lease; a read check on
    /// every new serving leadership and now and then.
    fn check_serving(&mut self) -> Res {
        if self.sc.service.is_some() {
            self.svc_check()?;
        }
        let now = self.now;
        let bound = self.sc.sync_stall_limit + 500_000;
        for h in &self.hosts {
            let Some(p) = h.proc.as_ref() else { continue };
            let journal = if p.vol.sync.is_some() { now.saturating_sub(p.vol.sync_since) } else { 0 };
            let inline = if p.vol.busy { now.saturating_sub(p.vol.busy_since) } else { 0 };
            let (stuck, kind) = if journal >= inline {
                (journal, DiskKind::Journal)
            } else {
                (inline, p.vol.stalled_on.unwrap_or(DiskKind::Data))
            };
            if stuck > bound && p.host.node().role() == Role::Leader {
                let id = h.id;
                return self.fail(
                    DataCheck::StalledLeader,
                    format!("node {id} still leads with a {kind:?} sync stuck for {} ms", stuck / 1000),
                );
            }
        }
        for i in 0..3 {
            let h = &self.hosts[i];
            let id = h.id;
            let Some(p) = h.proc.as_ref() else { continue };
            let local = h.clock.local(now);
            if !p.vol.r.replica().serving(local) {
                let h = &mut self.hosts[i];
                h.serving_end = h.serving_end.min(now);
                continue;
            }
            let view_end = p.vol.view.lease_until.unwrap_or(local);
            let end = h.clock.real_of(view_end);
            let core_lease = p.host.node().lease_until(local);
            let view_queued = p.vol.cell.is_some();
            let within = p.lease_bound.is_some_and(|b| local < b);
            if !within || (core_lease.is_none() && !view_queued) {
                return self.fail(
                    DataCheck::ServingInLease,
                    format!(
                        "node {id} serves at local {local:?} (view lease until {view_end:?}) but its core's lease is {core_lease:?} (latest lease end it ever reported {:?}, a newer view queued: {view_queued})",
                        p.lease_bound
                    ),
                );
            }
            for o in 0..3 {
                if o != i && self.hosts[o].serving_end > now {
                    let oe = self.hosts[o].serving_end;
                    return self.fail(
                        DataCheck::OneServing,
                        format!(
                            "node {id} serves (until t={end}µs) while node {} may serve until t={oe}µs",
                            self.hosts[o].id
                        ),
                    );
                }
            }
            let key = (p.inc, p.vol.view.epoch);
            let fresh = h.checked != Some(key);
            let due = fresh || now >= h.last_check + RECHECK_EVERY;
            self.hosts[i].serving_end = end;
            if fresh {
                self.stats.leaderships += 1;
                self.note(|| format!("n{id} SERVING in epoch {}", key.1));
            }
            if due {
                self.hosts[i].checked = Some(key);
                self.hosts[i].last_check = now;
                self.read_check(id)?;
            }
        }
        Ok(())
    }

    /// Reads the whole volume through the serving replica and checks it.
    fn read_check(&mut self, id: NodeId) -> Res {
        let local = self.local(id);
        let Some(p) = self.hosts[idx(id)].proc.as_ref() else { return Ok(()) };
        let mut image = vec![0u8; self.sc.volume as usize];
        if let Err(e) = p.vol.r.replica().read(local, 0, &mut image) {
            return self.fail(DataCheck::ReadFailed, format!("node {id} serves but its read failed: {e}"));
        }
        self.stats.read_checks += 1;
        if let Some(bad) = self.client.check(&image) {
            let check = if self.full_cut_unchecked { DataCheck::AckedAfterPowerCut } else { DataCheck::AckedReadable };
            return self.fail(check, format!("node {id} serving: {bad}"));
        }
        if self.full_cut_unchecked {
            self.full_cut_unchecked = false;
            self.note(|| format!("n{id}: every acknowledged write survived the power cut of all three"));
        }
        Ok(())
    }

    /// After the writes stop: one applied position everywhere, identical stores.
    fn converge_check(&mut self) -> Res {
        let now = self.now;
        let ready = self.client.inflight == 0 && self.serving_node().is_some() && {
            let mut applied = Vec::new();
            for h in &self.hosts {
                let Some(p) = h.proc.as_ref() else { break };
                let st = p.vol.r.replica().status(h.clock.local(now));
                if st.health != Health::Consistent {
                    break;
                }
                applied.push(st.applied);
            }
            applied.len() == 3 && applied.iter().all(|a| *a == applied[0])
        };
        let service_up = self.sc.service.is_none() || self.svc_up();
        if !ready || !service_up {
            if now > self.quiet_at + self.sc.converge_bound {
                let d = self.describe();
                let check = if ready { DataCheck::ServiceLive } else { DataCheck::Converged };
                return self.fail(
                    check,
                    format!(
                        "not converged {} ms after the writes stopped ({} writes in flight): {d}",
                        (now - self.quiet_at) / 1000,
                        self.client.inflight
                    ),
                );
            }
            self.push(now + CONVERGE_POLL, Ev::Check);
            return Ok(());
        }
        let len = self.sc.volume as usize;
        let mut images = Vec::new();
        for h in &self.hosts {
            let p = h.proc.as_ref().expect("all up");
            let mut img = vec![0u8; len];
            if let Err(e) = p.vol.r.replica().store().read(0, &mut img) {
                return self.fail(DataCheck::ReadFailed, format!("node {}: store read failed: {e}", h.id));
            }
            images.push(img);
        }
        for k in 1..3 {
            if images[k] != images[0] {
                let b = images[0]
                    .as_chunks::<{ BLOCK as usize }>()
                    .0
                    .iter()
                    .zip(images[k].as_chunks::<{ BLOCK as usize }>().0.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let word = |img: &Vec<u8>| {
                    let o = b * BLOCK as usize;
                    u64::from_le_bytes(img[o..o + 8].try_into().unwrap_or([0; 8]))
                };
                let d = self.describe();
                return self.fail(
                    DataCheck::Diverged,
                    format!(
                        "at one applied position, nodes 1 and {} differ first at block {b}: write {} vs write {}; {d}",
                        k + 1,
                        word(&images[0]),
                        word(&images[k])
                    ),
                );
            }
        }
        if let Some(bad) = self.client.check(&images[0]) {
            return self.fail(DataCheck::AckedReadable, format!("converged stores: {bad}"));
        }
        self.stats.converge = Some(now - self.quiet_at);
        let ms = (now - self.quiet_at) / 1000;
        self.note(|| format!("CONVERGED: three identical stores, {ms} ms after the writes stopped"));
        if let (true, false, Some(leader)) = (self.sc.figure8, self.blanked, self.leader()) {
            self.blanked = true;
            self.figure8_start(leader);
            self.phase = Phase::Writing;
            self.push(now + 10, Ev::Client);
            self.push(now + 8_000_000, Ev::StopWrites);
            return Ok(());
        }
        if let (true, false, Some(leader)) = (self.sc.replace_then_failover, self.blanked, self.leader()) {
            // Rule 18's hazard, aimed: a follower falls behind (isolated)
            // while writes commit on the leader and the other follower; that
            // one is replaced by a blank box and the leader dies. Only the
            // blank box's vote could now elect the lagging node.
            self.blanked = true;
            let lagging = if leader == 3 { 1 } else { leader + 1 };
            let replaced = 6 - leader - lagging;
            self.net.isolate(lagging);
            self.net_gen += 1;
            self.note(|| format!("n{lagging} ISOLATED; n{replaced} will be replaced, n{leader} killed"));
            self.phase = Phase::Writing;
            self.push(now + 10, Ev::Client);
            self.push(now + 500_000, Ev::ReplaceAndFailover { leader, lagging, replaced });
            let at = now + 500_000 + self.sc.write_after_heal * 2;
            self.push(at, Ev::StopWrites);
            return Ok(());
        }
        if let (Some(how), false) = (self.sc.blank_disk, self.blanked) {
            self.blanked = true;
            let n = self.rng.range(1, 3) as NodeId;
            self.blank(n, how)?;
            self.phase = Phase::Writing;
            self.push(now + 10, Ev::Client);
            let at = now + self.sc.write_after_heal * 2;
            self.push(at, Ev::StopWrites);
            return Ok(());
        }
        self.stats.compacted_nodes = self
            .hosts
            .iter()
            .filter(|h| h.proc.as_ref().is_some_and(|p| p.vol.r.replica().journal().discarded().seq > 0))
            .count() as u64;
        self.done = true;
        Ok(())
    }
}

/// volume.rs `latest_view`: the view cell's content, if a newer view
/// arrived, for the driver to take.
fn take_cell(v: &mut Vol, id: NodeId, print: bool, lines: &mut Vec<String>) -> Option<View> {
    let (view, seq) = v.cell.take()?;
    let changed = view.epoch != v.view.epoch || view.leader != v.view.leader;
    v.view_changes += u64::from(changed);
    if print || changed {
        lines
            .push(format!("n{id} vol view epoch {} leader {:?} lease {:?}", view.epoch, view.leader, view.lease_until));
    }
    v.view = view;
    v.took_view = seq;
    Some(view)
}

/// A disk's medium, read-only, for reading a journal back without a copy
/// (`Journal::open` only reads, and syncs, which has nothing to do here).
struct MediumView<'a>(&'a [u8]);

impl Disk for MediumView<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = usize::try_from(off).ok().and_then(|o| self.0.get(o..o.checked_add(buf.len())?));
        let bytes = bytes.ok_or_else(|| io::Error::other(format!("read of {} at {off} past the medium", buf.len())))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
    fn write_at(&mut self, off: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!("the medium view is read-only (write at {off})")))
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a power cut now would leave of the replica's journal, against the
/// position it reports durable: `Some(why)` if the medium holds less.
fn durable_beyond_medium(r: &mut SimReplica) -> Option<String> {
    if marked(r) {
        return None; // rule 9: a failed replica vouches for nothing
    }
    let durable = r.journal().durable();
    let medium = match Journal::open(MediumView(r.disks_mut().0.mem.durable_bytes())) {
        Ok(j) => j,
        Err(e) => return Some(format!("journal durable through {durable:?}, the medium's journal does not open: {e}")),
    };
    let last = medium.last();
    if last.seq < durable.seq {
        return Some(format!("journal durable through {durable:?}, the medium holds records through {last:?}"));
    }
    // The same record, not only the same seq: a truncation during a sync
    // replaces records at the seqs it covered.
    if durable.seq > medium.discarded().seq {
        match medium.read(durable.seq) {
            Ok(rec) if rec.position() == durable => {}
            Ok(rec) => {
                return Some(format!(
                    "journal durable through {durable:?}, the medium holds {:?} at that seq",
                    rec.position()
                ))
            }
            Err(e) => {
                return Some(format!("journal durable through {durable:?}, the medium's record is unreadable: {e}"))
            }
        }
    }
    None
}

/// One line for a replication message (no payloads).
fn brief(m: &Msg) -> String {
    match m {
        Msg::Append { epoch, prev, records, commit, .. } => {
            let seqs = match (records.first(), records.last()) {
                (Some(a), Some(b)) => format!("{}..={}", a.seq, b.seq),
                _ => "none".into(),
            };
            format!("Append e{epoch} prev {}/{} records {seqs} commit {commit}", prev.epoch, prev.seq)
        }
        Msg::AppendReply { epoch, inc, ok, matched, last, applied, k, consistent, learner, stream } => format!(
            "AppendReply e{epoch} inc {inc:x} ok={ok} matched {matched} last {}/{} applied {}/{} k {}/{} consistent={consistent} learner={learner} stream {stream}",
            last.epoch, last.seq, applied.epoch, applied.seq, k.epoch, k.seq
        ),
        Msg::ResyncData { epoch, id, n, offset, data } => {
            format!("ResyncData e{epoch} id {id} n {n} at {offset} len {}", data.len())
        }
        Msg::VerifyReply { epoch, inc, id, offset, applied, hashes } => format!(
            "VerifyReply e{epoch} inc {inc:x} id {id} at {offset} applied {}/{} ({} hashes)",
            applied.epoch,
            applied.seq,
            hashes.len()
        ),
        other => format!("{other:?}"),
    }
}

/// Runs `seed` under `sc`.
pub fn run_data(seed: u64, sc: DataScenario, print_trace: bool) -> DataOutcome {
    DataWorld::new(seed, sc, print_trace).run()
}

/// The command that replays `seed` of the data world under `sc`.
pub fn data_replay_command(seed: u64, sc: &DataScenario) -> String {
    let mut extra = String::new();
    for m in &sc.mutations {
        extra.push_str(&format!(" --mutation {}", m.name()));
    }
    if !sc.tolerate_known_bugs {
        extra.push_str(" --no-tolerate");
    }
    format!("cargo run --release -p triad-sim -- data --seed {seed} --scenario {}{extra} --trace", sc.name)
}
