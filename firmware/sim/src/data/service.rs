//! The service on the active node, as the data world simulates its OS
//! side (issue 11): the PBX process, the volume's filesystem and the
//! hardware watchdog of each box. The decisions are the shipping host's
//! (`triad_host::pbx`, `filesystem`, `watchdog`, enabled in every process
//! as `runtime.rs` enables them); this module only plays the executors
//! (`firmware/triad/src/pbx.rs`, `filesystem.rs`, `os/watchdog.rs`) and
//! the kernel and processes behind them, with faults:
//!
//! - **PBX process.** `Spawn` reports `Spawned` at once (fork and exec
//!   return at once, as `PbxExecutor::carry` feeds the outcome back), or
//!   `SpawnFailed`; the process answers probes after a start delay. A
//!   probe is sent to the SIP port, so any live PBX process of the box
//!   answers it (the executor ignores `run`); a closed port fails at once,
//!   a process that does not answer fails at the executor's own timeout.
//!   The stop signal ends it after a delay, unless it ignores SIGTERM;
//!   SIGKILL of the group ends it unless it is unkillable (D state). Faults
//!   per box, set by the chaos process until the heal: crash loop (every
//!   start dies 5-300 ms later), never answering, ignoring the stop signal,
//!   unkillable, failed spawns, and crashes of the running PBX at random
//!   instants.
//! - **Filesystem.** One step at a time with a delay; the attach makes
//!   the device, a mount takes effect when it is issued (conservative for
//!   the checks) and an unmount when it returns; `umount2` without flags
//!   fails with EBUSY while a PBX process of the box is alive, as the real
//!   one does. The check reads the volume through the node's own export,
//!   so it fails while the volume does not serve. Faults per box: failing
//!   mounts, failing checks (a read error), an unmount that hangs in the
//!   kernel and never returns. The filesystem on the volume is one state
//!   for the cluster: formatted at cluster creation (the default), or, in
//!   `first-format`, absent until the first active node's check finds none
//!   and the simulated operator asks that node to format (as the lab does
//!   at cluster creation); a format completes only while the node serves.
//! - **Watchdog device.** Opening it (at process start) starts the count
//!   if it was not running; a pet restarts it; a process that dies without
//!   the magic close leaves it running (the kernel pings once at release);
//!   when the count runs out the box resets: its process, PBX, mount and
//!   page cache are gone (a power cut of that node), and it boots again.
//!   The volume thread's progress reaches the host as `runtime.rs` sends
//!   it: every quarter of the stall limit, if the thread's last pass is
//!   younger than half of it.
//!
//! A supervisor kill takes the box's PBX and mounts with it (the lab's
//! namespaces; on the appliance PID 1's death resets the box).

use super::{idx, DataCheck, DataMutation, DataWorld, Ev, Res};
use core::time::Duration;
use triad_core::{NodeId, VipAction};
use triad_host::filesystem::{CheckVerdict, FsNotice, StepOutcome};
use triad_host::pbx::{PbxCommand, PbxEvent};
use triad_host::{Event, FsCommand, FsEvent, FsStep, FsTiming, PbxState, PbxTiming, WatchdogTiming};

/// Per chaos tick, the probability of each service fault on a box (the
/// serving leader's, most of the time). All are cleared at the heal.
#[derive(Clone, Debug, Default)]
pub struct ServiceFaults {
    /// Every PBX started on the box dies 5-300 ms later (crash loop).
    pub crash_loop_p: f64,
    /// The running PBX dies now.
    pub crash_p: f64,
    /// The box's PBX never answers its probe (it runs, holds the port).
    pub silent_p: f64,
    /// The box's PBX ignores the stop signal and SIGKILL does not end it
    /// (D state): a hung demotion, the self-fence expected.
    pub unkillable_p: f64,
    /// The box's PBX ignores the stop signal only (SIGKILL ends it).
    pub ignores_stop_p: f64,
    /// Spawns fail (the binary is missing).
    pub spawn_fail_p: f64,
    /// Mounts fail.
    pub mount_fail_p: f64,
    /// Checks fail (a read error, retried).
    pub check_fail_p: f64,
    /// The next unmount hangs in the kernel: a hung demotion.
    pub unmount_hang_p: f64,
}

/// The service of a data scenario: the host's timing and the faults.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// The PBX's supervision timing (validated).
    pub pbx: PbxTiming,
    /// The filesystem's timing.
    pub fs: FsTiming,
    /// When to pet.
    pub dog: WatchdogTiming,
    /// The device's timeout, µs (whole seconds, as `WDIOC_SETTIMEOUT`).
    pub dog_timeout: u64,
    /// The faults.
    pub faults: ServiceFaults,
    /// The volume starts without a filesystem; the operator formats it on
    /// the first node whose check finds none.
    pub first_format: bool,
}

impl ServiceSpec {
    /// Short timers, so runs stay short; each is in the ratio the defaults
    /// keep (pet ≤ stale/2, stale < timeout, probe timeout < interval).
    pub fn new(faults: ServiceFaults) -> ServiceSpec {
        let pbx = PbxTiming {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            probe_failures: 3,
            start_grace: Duration::from_millis(1000),
            backoff_first: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1000),
            stop_timeout: Duration::from_millis(500),
            kill_timeout: Duration::from_millis(500),
            // Short: a node that handed over after repeated failures
            // refuses the role until they age out of the window, and a
            // cluster whose other nodes cannot lead then has no active
            // node for that long (`pbx-refusal` keeps 20 s and shows it).
            failure_window: Duration::from_secs(3),
            failures_to_hand_over: 3,
        };
        assert!(pbx.validate().is_ok(), "the simulator's PBX timing is valid");
        ServiceSpec {
            pbx,
            fs: FsTiming { retry: Duration::from_millis(200), down_deadline: Duration::from_millis(2000) },
            dog: WatchdogTiming { pet_interval: Duration::from_millis(200), stale_after: Duration::from_millis(1000) },
            dog_timeout: 2_000_000,
            faults,
            first_format: false,
        }
    }

    /// Slack for the host to act on a deadline (its loop turns within
    /// milliseconds; the simulator's tick granularity is 1 ms).
    const SLACK: u64 = 300_000;

    /// From the first stop signal to a PBX that will not die, at most
    /// this long until its box resets: `stop_timeout + kill_timeout`
    /// (`StopHung`, the self-fence), then the device's timeout.
    pub fn stop_bound(&self) -> u64 {
        micros(self.pbx.stop_timeout + self.pbx.kill_timeout) + self.dog_timeout + Self::SLACK
    }

    /// From the end of a node's serving (its lease, its volume) to no PBX
    /// and no mount left on it, at most: the later of the PBX's and the
    /// filesystem's self-fence deadlines, then the device's timeout.
    pub fn demotion_bound(&self) -> u64 {
        let fence = micros(self.pbx.stop_timeout + self.pbx.kill_timeout).max(micros(self.fs.down_deadline));
        fence + self.dog_timeout + Self::SLACK
    }
}

/// Between two failover readiness checks (`pbx.readiness_interval`), µs.
const READINESS_EVERY: u64 = 1_000_000;

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// The filesystem on the replicated volume (one for the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VolumeFs {
    Formatted,
    Empty,
}

/// A simulated PBX process.
#[derive(Clone, Debug)]
pub(super) struct SimPbx {
    pid: u64,
    run: u64,
    /// Real time from which it answers probes (`u64::MAX`: never).
    answers_at: u64,
    ignores_stop: bool,
    unkillable: bool,
    /// An exit is scheduled.
    exiting: bool,
    /// The first stop signal or SIGKILL reached it.
    stop_sent: Option<u64>,
}

/// Service faults active on a box.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BoxFaults {
    crash_loop: bool,
    silent: bool,
    ignores_stop: bool,
    unkillable: bool,
    spawn_fails: bool,
    mount_fails: bool,
    check_fails: bool,
    unmount_hangs: bool,
}

/// The OS side of one box's service.
#[derive(Debug, Default)]
pub(super) struct BoxService {
    pbx: Vec<SimPbx>,
    attached: bool,
    mounted: bool,
    /// An unmount hangs in the kernel (its step never returns).
    unmount_hung: bool,
    vip_on: bool,
    /// When the watchdog resets the box (real time), if it runs.
    dog_until: Option<u64>,
    dog_gen: u64,
    faults: BoxFaults,
    /// A fault that may rightly hang a demotion was active in this boot:
    /// a self-fence is expected (anywhere else it is a violation).
    hang_seen: bool,
    /// Since when this box has had a PBX or a mount while its volume did
    /// not serve.
    demoted_since: Option<u64>,
}

impl BoxService {
    /// A live PBX process with its filesystem mounted: it can write.
    fn writer(&self) -> bool {
        self.mounted && !self.pbx.is_empty()
    }
}

/// Events of the service's OS side.
#[derive(Clone, Debug)]
pub(super) enum SvcEv {
    /// A PBX process exits (crash, stop signal, SIGKILL).
    PbxExit { node: NodeId, pid: u64 },
    /// A probe's answer (or failure) reaches the executor.
    Probe { node: NodeId, inc: u64, probe: u64, ok: bool },
    /// A filesystem step returns.
    FsDone { node: NodeId, inc: u64, step: FsStep, outcome: StepOutcome },
    /// The watchdog's count may have run out.
    Dog { node: NodeId, gen: u64 },
    /// runtime.rs `stall_check`: the volume thread's progress.
    StallCheck { node: NodeId, inc: u64 },
    /// The operator asks the node to format the volume (cluster creation).
    Format { node: NodeId, inc: u64 },
    /// runtime.rs `readiness_tick`: the failover readiness check (the PBX's
    /// binary and config) ends.
    Readiness { node: NodeId, inc: u64 },
}

impl DataWorld {
    fn spec(&self) -> &ServiceSpec {
        self.sc.service.as_ref().expect("service scenario")
    }

    fn svc(&mut self, id: NodeId) -> &mut BoxService {
        &mut self.hosts[idx(id)].svc
    }

    /// A process of `id` started (`restart`): the watchdog is opened.
    pub(super) fn svc_started(&mut self, id: NodeId, inc: u64) {
        let now = self.now;
        let timeout = self.spec().dog_timeout;
        let every = self.sc.sync_stall_limit / 4;
        let s = self.svc(id);
        if s.dog_until.is_none() {
            s.dog_until = Some(now + timeout);
            s.dog_gen += 1;
            let gen = s.dog_gen;
            self.push(now + timeout, Ev::Svc(SvcEv::Dog { node: id, gen }));
        }
        self.push(now + every, Ev::Svc(SvcEv::StallCheck { node: id, inc }));
        let d = self.rng.range(5_000, 50_000);
        self.push(now + d, Ev::Svc(SvcEv::Readiness { node: id, inc }));
    }

    /// The process of `id` is gone (`take_down`); with `reset`, the whole
    /// box (a power cut or the watchdog).
    pub(super) fn svc_down(&mut self, id: NodeId, reset: bool) {
        let now = self.now;
        let timeout = self.sc.service.as_ref().map_or(0, |s| s.dog_timeout);
        let s = self.svc(id);
        let gone = s.pbx.len();
        s.pbx.clear();
        s.attached = false;
        s.mounted = false;
        s.unmount_hung = false;
        s.vip_on = false;
        s.demoted_since = None;
        if reset {
            s.dog_until = None;
            s.hang_seen = false;
        } else if s.dog_until.is_some() {
            // Closed without the magic 'V': the kernel pings once and the
            // count runs on.
            s.dog_until = Some(now + timeout);
            s.dog_gen += 1;
            let gen = s.dog_gen;
            self.push(now + timeout, Ev::Svc(SvcEv::Dog { node: id, gen }));
        }
        if gone > 0 {
            self.note(|| format!("n{id} its {gone} PBX process(es) and mounts vanish with it"));
        }
    }

    pub(super) fn svc_step(&mut self, ev: SvcEv) -> Res {
        match ev {
            SvcEv::PbxExit { node, pid } => {
                let s = self.svc(node);
                let Some(i) = s.pbx.iter().position(|p| p.pid == pid) else { return Ok(()) };
                let run = s.pbx.remove(i).run;
                self.note(|| format!("n{node} PBX run {run} (pid {pid}) exited"));
                // The reaper reports it to the executor of this process
                // (every live PBX belongs to the running incarnation).
                if self.hosts[idx(node)].proc.is_some() && !self.sc.has(DataMutation::PbxExitNotReported) {
                    self.core_input(node, Event::Pbx(PbxEvent::Exited { run }))?;
                }
            }
            SvcEv::Probe { node, inc, probe, ok } => {
                if self.proc(node, inc).is_some() {
                    self.core_input(node, Event::Pbx(PbxEvent::ProbeDone { probe, ok }))?;
                }
            }
            SvcEv::FsDone { node, inc, step, outcome } => {
                if self.proc(node, inc).is_none() {
                    return Ok(());
                }
                let outcome = self.fs_effect(node, step, outcome);
                self.note(|| format!("n{node} filesystem {step:?} returns {outcome:?}"));
                self.core_input(node, Event::Fs(FsEvent { step, outcome }))?;
            }
            SvcEv::Dog { node, gen } => {
                let now = self.now;
                let s = self.svc(node);
                if s.dog_gen != gen || s.dog_until.is_none_or(|u| u > now) {
                    return Ok(());
                }
                self.note(|| format!("n{node} WATCHDOG RESET"));
                self.stats.watchdog_resets += 1;
                // A reset, not a power cut, but the same for the disks:
                // the page cache is gone.
                self.take_down(node, true);
                self.stats.power_cuts -= 1;
                let d = self.rng.range(self.sc.restart_delay.0, self.sc.restart_delay.1);
                self.push(self.now + d, Ev::Restart { node });
            }
            SvcEv::StallCheck { node, inc } => {
                let now = self.now;
                let half = self.sc.sync_stall_limit / 2;
                let Some(p) = self.proc(node, inc) else { return Ok(()) };
                let fresh = !(p.vol.busy && now.saturating_sub(p.vol.busy_since) >= half);
                self.push(now + self.sc.sync_stall_limit / 4, Ev::Svc(SvcEv::StallCheck { node, inc }));
                if fresh {
                    self.core_input(node, Event::Progress(triad_host::Critical::VolumeThread))?;
                }
                if self.sc.has(DataMutation::PetOnTimer) && self.proc(node, inc).is_some() {
                    self.svc_pet(node);
                }
            }
            SvcEv::Readiness { node, inc } => {
                if self.proc(node, inc).is_none() {
                    return Ok(());
                }
                // The check runs the PBX's own config check: a binary that
                // cannot be spawned fails it.
                let problems = if self.svc(node).faults.spawn_fails {
                    vec!["the PBX binary cannot be run".to_string()]
                } else {
                    Vec::new()
                };
                self.push(self.now + READINESS_EVERY, Ev::Svc(SvcEv::Readiness { node, inc }));
                self.core_input(node, Event::ReadinessChecked(problems))?;
            }
            SvcEv::Format { node, inc } => {
                let local = self.local(node);
                let Some(p) = self.hosts[idx(node)].proc.as_mut().filter(|p| p.inc == inc) else { return Ok(()) };
                match p.host.format_volume(local) {
                    Ok(cmds) => {
                        self.note(|| format!("operator formats the volume on n{node}"));
                        let mut events = std::collections::VecDeque::new();
                        self.carry_core(node, cmds.into(), &mut events)?;
                        for e in events {
                            self.core_input(node, e)?;
                        }
                    }
                    Err(e) => self.note(|| format!("operator's format on n{node} refused: {e}")),
                }
            }
        }
        Ok(())
    }

    /// The chaos process's service faults (drawn only in service scenarios).
    pub(super) fn svc_chaos(&mut self) {
        let f = self.spec().faults.clone();
        let draws = [
            f.crash_loop_p,
            f.crash_p,
            f.silent_p,
            f.unkillable_p,
            f.ignores_stop_p,
            f.spawn_fail_p,
            f.mount_fail_p,
            f.check_fail_p,
            f.unmount_hang_p,
        ];
        for (k, p) in draws.into_iter().enumerate() {
            if p <= 0.0 || !self.rng.chance(p) {
                continue;
            }
            let n = self.target();
            let s = self.svc(n);
            let name = match k {
                0 => {
                    s.faults.crash_loop = true;
                    "every PBX start crashes"
                }
                1 => {
                    let Some(pid) = s.pbx.iter().find(|p| !p.exiting).map(|p| p.pid) else { continue };
                    self.pbx_exit_in(n, pid, 0);
                    "the PBX crashes now"
                }
                2 => {
                    s.faults.silent = true;
                    "the PBX never answers its probe"
                }
                3 => {
                    s.faults.unkillable = true;
                    s.faults.ignores_stop = true;
                    s.hang_seen = true;
                    "the PBX ignores SIGTERM and SIGKILL (D state)"
                }
                4 => {
                    s.faults.ignores_stop = true;
                    "the PBX ignores SIGTERM"
                }
                5 => {
                    s.faults.spawn_fails = true;
                    "PBX spawns fail"
                }
                6 => {
                    s.faults.mount_fails = true;
                    "mounts fail"
                }
                7 => {
                    s.faults.check_fails = true;
                    "filesystem checks fail (read error)"
                }
                _ => {
                    s.faults.unmount_hangs = true;
                    s.hang_seen = true;
                    "the next unmount hangs"
                }
            };
            self.stats.service_faults += 1;
            self.note(|| format!("n{n} SERVICE FAULT: {name}"));
        }
        // Processes already running with a fault keep it; later spawns
        // take the box's faults when they start.
        for i in 0..3 {
            let f = self.hosts[i].svc.faults;
            let svc = &mut self.hosts[i].svc;
            svc.hang_seen |= f.unkillable && !svc.pbx.is_empty();
            for p in &mut self.hosts[i].svc.pbx {
                p.ignores_stop |= f.ignores_stop;
                p.unkillable |= f.unkillable;
                if f.silent {
                    p.answers_at = u64::MAX;
                }
            }
        }
    }

    /// The heal: no new fault takes effect (a process already in D state
    /// or an unmount already hung stays so until the box resets).
    pub(super) fn svc_heal(&mut self) {
        for h in &mut self.hosts {
            h.svc.faults = BoxFaults::default();
        }
    }

    /// The executor carries out a PBX command; a spawn's outcome goes back
    /// at once (`events`).
    pub(super) fn svc_pbx(&mut self, id: NodeId, c: PbxCommand, events: &mut std::collections::VecDeque<Event>) {
        let now = self.now;
        let f = self.svc(id).faults;
        match c {
            PbxCommand::Spawn { run } => {
                if f.spawn_fails {
                    self.note(|| format!("n{id} PBX spawn {run} fails"));
                    events.push_back(Event::Pbx(PbxEvent::SpawnFailed { run }));
                    return;
                }
                self.next_pid += 1;
                let pid = self.next_pid;
                let answers_at = if f.silent { u64::MAX } else { now + self.rng.range(2_000, 50_000) };
                let s = self.svc(id);
                s.hang_seen |= f.unkillable;
                s.pbx.push(SimPbx {
                    pid,
                    run,
                    answers_at,
                    ignores_stop: f.ignores_stop,
                    unkillable: f.unkillable,
                    exiting: false,
                    stop_sent: None,
                });
                self.note(|| format!("n{id} PBX run {run} spawned (pid {pid})"));
                if f.crash_loop {
                    let d = self.rng.range(5_000, 300_000);
                    self.pbx_exit_in(id, pid, d);
                }
                events.push_back(Event::Pbx(PbxEvent::Spawned { run }));
            }
            PbxCommand::Probe { probe, .. } => {
                let inc = self.hosts[idx(id)].proc.as_ref().map_or(0, |p| p.inc);
                let s = &self.hosts[idx(id)].svc;
                // The port answers if any PBX process of the box answers.
                let (delay, ok) = if s.pbx.iter().any(|p| p.answers_at <= now) {
                    (self.rng.range(100, 3_000), true)
                } else if s.pbx.iter().any(|p| p.answers_at == u64::MAX) {
                    // It holds the port and never answers: the probe's own
                    // timeout (probe_timeout) ends it.
                    (micros(self.spec().pbx.probe_timeout), false)
                } else {
                    // Nothing listens yet: ICMP port unreachable.
                    (self.rng.range(50, 500), false)
                };
                self.push(now + delay, Ev::Svc(SvcEv::Probe { node: id, inc, probe, ok }));
            }
            PbxCommand::Stop { run } | PbxCommand::Kill { run } => {
                let kill = matches!(c, PbxCommand::Kill { .. });
                let s = self.svc(id);
                let Some(p) = s.pbx.iter_mut().find(|p| p.run == run) else { return };
                p.stop_sent.get_or_insert(now);
                let ends = if kill { !p.unkillable } else { !p.ignores_stop };
                if !ends || p.exiting {
                    return;
                }
                let pid = p.pid;
                let d = if kill {
                    self.rng.range(100, 2_000)
                } else if self.rng.chance(0.1) {
                    self.rng.range(100_000, 400_000)
                } else {
                    self.rng.range(1_000, 60_000)
                };
                self.pbx_exit_in(id, pid, d);
            }
            PbxCommand::Notice(n) => self.note(|| format!("n{id} pbx {n:?}")),
        }
    }

    fn pbx_exit_in(&mut self, id: NodeId, pid: u64, d: u64) {
        if let Some(p) = self.svc(id).pbx.iter_mut().find(|p| p.pid == pid) {
            p.exiting = true;
        }
        self.push(self.now + d, Ev::Svc(SvcEv::PbxExit { node: id, pid }));
    }

    /// The executor starts a filesystem step (or logs a notice).
    pub(super) fn svc_fs(&mut self, id: NodeId, c: FsCommand) -> Res {
        let step = match c {
            FsCommand::Run(step) => step,
            FsCommand::Notice(n) => {
                self.note(|| format!("n{id} filesystem {n:?}"));
                if n == FsNotice::Blocked(triad_host::filesystem::Blocker::NoFilesystem) {
                    if let Some(inc) = self.hosts[idx(id)].proc.as_ref().map(|p| p.inc) {
                        let d = self.rng.range(20_000, 300_000);
                        self.push(self.now + d, Ev::Svc(SvcEv::Format { node: id, inc }));
                    }
                }
                return Ok(());
            }
        };
        let now = self.now;
        let inc = self.hosts[idx(id)].proc.as_ref().map_or(0, |p| p.inc);
        let f = self.svc(id).faults;
        let (lo, hi) = match step {
            FsStep::Attach | FsStep::Mount | FsStep::Detach => (1_000, 20_000),
            FsStep::Check => (5_000, 80_000),
            FsStep::Unmount => (1_000, 50_000),
            FsStep::Format => (50_000, 300_000),
        };
        let d = self.rng.range(lo, hi);
        if step == FsStep::Unmount && !self.svc(id).pbx.is_empty() {
            self.unmount_under_pbx(id)?;
        }
        let outcome = match step {
            FsStep::Attach => {
                self.svc(id).attached = true;
                StepOutcome::Done
            }
            FsStep::Mount if f.mount_fails => StepOutcome::Failed,
            FsStep::Mount => {
                // Conservative: mounted from the moment it is asked.
                self.svc(id).mounted = true;
                StepOutcome::Done
            }
            FsStep::Check if f.check_fails => StepOutcome::Failed,
            FsStep::Check => StepOutcome::Done, // the verdict is read at the end
            FsStep::Unmount if f.unmount_hangs => {
                let s = self.svc(id);
                s.unmount_hung = true;
                s.hang_seen = true;
                self.note(|| format!("n{id} filesystem Unmount hangs in the kernel"));
                return Ok(());
            }
            _ => StepOutcome::Done,
        };
        self.push(now + d, Ev::Svc(SvcEv::FsDone { node: id, inc, step, outcome }));
        Ok(())
    }

    /// A step returns: its effect on the box, and how it ended.
    fn fs_effect(&mut self, id: NodeId, step: FsStep, outcome: StepOutcome) -> StepOutcome {
        let serving = {
            let h = &self.hosts[idx(id)];
            h.proc.as_ref().is_some_and(|p| p.vol.r.replica().serving(h.clock.local(self.now)))
        };
        let fs = self.volume_fs;
        let s = self.svc(id);
        if outcome == StepOutcome::Failed {
            return outcome;
        }
        match step {
            // Reads go through the node's own export: nothing while it
            // does not serve.
            FsStep::Check if !serving => StepOutcome::Failed,
            FsStep::Check if fs == VolumeFs::Empty => StepOutcome::Checked(CheckVerdict::NoFilesystem),
            FsStep::Check => StepOutcome::Checked(CheckVerdict::Clean),
            // EBUSY while a PBX holds files on it (umount2 without flags).
            FsStep::Unmount if !s.pbx.is_empty() => StepOutcome::Failed,
            FsStep::Unmount => {
                s.mounted = false;
                StepOutcome::Done
            }
            FsStep::Detach => {
                s.attached = false;
                StepOutcome::Done
            }
            FsStep::Format if !serving => StepOutcome::Failed,
            FsStep::Format => {
                self.volume_fs = VolumeFs::Formatted;
                StepOutcome::Done
            }
            _ => StepOutcome::Done,
        }
    }

    fn unmount_under_pbx(&mut self, id: NodeId) -> Res {
        let pids: Vec<u64> = self.svc(id).pbx.iter().map(|p| p.pid).collect();
        self.fail(DataCheck::UnmountUnderPbx, format!("node {id} unmounts while PBX process(es) {pids:?} live"))
    }

    /// The executor pets the device.
    pub(super) fn svc_pet(&mut self, id: NodeId) {
        let now = self.now;
        let timeout = self.spec().dog_timeout;
        let s = self.svc(id);
        s.dog_until = Some(now + timeout);
        s.dog_gen += 1;
        let gen = s.dog_gen;
        self.push(now + timeout, Ev::Svc(SvcEv::Dog { node: id, gen }));
    }

    /// A VIP action was carried out (at once, in the data world).
    pub(super) fn svc_vip(&mut self, id: NodeId, action: VipAction) -> Res {
        let s = self.svc(id);
        match action {
            VipAction::Add => {
                let mounted = s.mounted;
                s.vip_on = true;
                if !mounted {
                    return self.fail(DataCheck::VipWithoutMount, format!("node {id} adds the VIP without a mount"));
                }
            }
            VipAction::Remove => s.vip_on = false,
            _ => {}
        }
        Ok(())
    }

    /// The service's properties, after every event.
    pub(super) fn svc_check(&mut self) -> Res {
        let now = self.now;
        let (stop_bound, demotion_bound) = (self.spec().stop_bound(), self.spec().demotion_bound());
        let mut writers = Vec::new();
        for i in 0..3 {
            let h = &self.hosts[i];
            let id = h.id;
            let local = h.clock.local(now);
            let serving = h.proc.as_ref().is_some_and(|p| p.vol.r.replica().serving(local));
            let fenced = h.proc.as_ref().and_then(|p| p.host.watchdog().and_then(|w| w.fenced()));
            let draining = h.proc.as_ref().is_some_and(|p| p.host.draining());
            let s = &h.svc;
            // One PBX at a time, and only over its mounted filesystem.
            if s.pbx.len() > 1 {
                let runs: Vec<u64> = s.pbx.iter().map(|p| p.run).collect();
                return self.fail(DataCheck::OnePbx, format!("node {id} has PBX runs {runs:?} alive at once"));
            }
            if !s.pbx.is_empty() && !s.mounted {
                return self.fail(DataCheck::PbxWithoutMount, format!("node {id} runs a PBX without its mount"));
            }
            // The VIP goes first on a lost lease; only a drained handover
            // (switchover, standby) keeps it from the unmount to the detach.
            if s.vip_on && !(s.mounted || s.attached && draining) {
                let what = if s.attached { "unmounted, not draining" } else { "nothing attached" };
                return self.fail(DataCheck::VipWithoutMount, format!("node {id} holds the VIP with {what}"));
            }
            if let (Some(why), false) = (fenced, s.hang_seen) {
                return self.fail(
                    DataCheck::NeedlessSelfFence,
                    format!("node {id} self-fenced ({why:?}) with no hung PBX or unmount"),
                );
            }
            // A PBX that will not die: its box resets within the bound.
            if let Some(t) = s.pbx.iter().filter_map(|p| p.stop_sent).min() {
                if now > t + stop_bound {
                    return self.fail(
                        DataCheck::DemotionBound,
                        format!(
                            "node {id}'s PBX still lives {} ms after its first stop signal (bound {} ms)",
                            (now - t) / 1000,
                            stop_bound / 1000
                        ),
                    );
                }
            }
            let lingering = !s.pbx.is_empty() || s.mounted;
            let since =
                if lingering && !serving { Some(*self.hosts[i].svc.demoted_since.get_or_insert(now)) } else { None };
            self.hosts[i].svc.demoted_since = since;
            if let Some(t) = since.filter(|t| now > t + demotion_bound) {
                return self.fail(
                    DataCheck::DemotionBound,
                    format!(
                        "node {id} still has a {} {} ms after its volume stopped serving (bound {} ms)",
                        if self.hosts[i].svc.pbx.is_empty() { "mount" } else { "PBX" },
                        (now - t) / 1000,
                        demotion_bound / 1000
                    ),
                );
            }
            if self.hosts[i].svc.writer() {
                writers.push((id, serving, since));
            }
        }
        // Two PBXs over the volume at once: all but one must be on nodes
        // that can no longer acknowledge a write (the volume does not
        // serve there) and are being fenced (within their bound, checked
        // above). At most one serves (`OneServing`).
        if writers.len() >= 2 {
            let serving: Vec<NodeId> = writers.iter().filter(|w| w.1).map(|w| w.0).collect();
            if serving.len() > 1 || writers.iter().any(|w| !w.1 && w.2.is_none()) {
                return self.fail(
                    DataCheck::TwoWriters,
                    format!("PBXs over mounted filesystems on {writers:?} (node, serving, demoted since)"),
                );
            }
            self.svc_overlap_since.get_or_insert(now);
        } else if let Some(t) = self.svc_overlap_since.take() {
            self.stats.pbx_overlap = self.stats.pbx_overlap.max(now - t);
        }
        Ok(())
    }

    /// Liveness: the serving node runs a healthy PBX (answering, on its
    /// mount, the VIP up).
    pub(super) fn svc_up(&self) -> bool {
        self.serving_node().is_some_and(|id| {
            let h = &self.hosts[idx(id)];
            let s = &h.svc;
            let healthy = h
                .proc
                .as_ref()
                .and_then(|p| p.host.pbx())
                .is_some_and(|p| matches!(p.state(), PbxState::Running { .. }));
            healthy && s.mounted && s.vip_on && s.pbx.iter().any(|p| p.answers_at <= self.now)
        })
    }

    /// For failure reports.
    pub(super) fn svc_describe(&self, id: NodeId) -> String {
        let h = &self.hosts[idx(id)];
        let s = &h.svc;
        let pbx = h.proc.as_ref().and_then(|p| p.host.pbx()).map(|p| p.state());
        let fs = h.proc.as_ref().and_then(|p| p.host.filesystem()).map(|f| (f.in_flight(), f.blocked()));
        format!(
            " svc: pbx {:?} procs {:?} attached={} mounted={} hung_unmount={} vip={} faults {:?} fs {:?}",
            pbx,
            s.pbx.iter().map(|p| (p.run, p.answers_at <= self.now)).collect::<Vec<_>>(),
            s.attached,
            s.mounted,
            s.unmount_hung,
            s.vip_on,
            s.faults,
            fs
        )
    }
}
