//! The replicated-volume benchmark: the same I/O patterns against an
//! unreplicated baseline (nbdkit's file plugin on a file of the same size
//! on the same filesystem) and against a subject given as an NBD URI
//! (Triad's active node, once the lab serves one), in one run.
//!
//! This is a command that prints a table, not a timed test (see
//! docs/volume-benchmark.md). The entry points are [`run`] (baseline
//! started here, subject given) and [`print_table`]; [`run_self_test`]
//! uses a second nbdkit as a clearly labelled stand-in subject.
//!
//! Each pattern runs `reps` times per side, alternating baseline and
//! subject (A B A B ...; the repetition loop is outermost, so one
//! repetition runs every pattern), and every figure in the table is the median of
//! that figure over the repetitions (the median of the p99s, for example).
//! Before the patterns both exports are filled once with sequential 1 MiB
//! writes and a flush, so no pattern writes into holes or reads holes.
//!
//! Patterns (the same arguments for both sides):
//!
//! | pattern | tool | figures |
//! |---|---|---|
//! | 4 KiB random write + flush, QD1 | the pair timer below | p50, p99, mean of write+flush |
//! | the same, cross-check | fio `--fsync=1` | mean write + mean flush |
//! | 4 KiB random write, QD1, no flush | fio | IOPS, p50, p99 |
//! | 4 KiB random write, QD16, no flush | fio | IOPS |
//! | 1 MiB sequential write, QD8, one flush at the end | fio `--end_fsync=1` | MB/s |
//! | 4 KiB random read, QD16 | fio | IOPS |
//!
//! Why the write+flush percentiles do not come from fio: with `--fsync=1`
//! fio reports the writes (`write.lat_ns`) and the flushes (`sync.lat_ns`)
//! as two separate distributions, and logs no per-flush samples
//! (`--write_lat_log` records the writes only). The mean of the pair is
//! the sum of the two means, but a percentile of a sum is not the sum of
//! the percentiles, so p50 and p99 of write+flush cannot be recovered from
//! fio's output. `qemu-img bench -t none --flush-interval=1` reports only
//! the total run time, i.e. the mean. So the harness times each pair
//! itself with a minimal NBD client ([`time_write_flush_pairs`]: fixed
//! newstyle, `NBD_OPT_GO`, simple replies; one WRITE of 4 KiB at a random
//! aligned offset, wait for its reply, FLUSH, wait for its reply, the pair
//! timed on the monotonic clock), and runs fio `--fsync=1` as well, whose
//! exact mean (write mean + flush mean) cross-checks the timer's mean.
//!
//! The baseline nbdkit is started with `--exit-with-parent` (so it dies
//! with `triad-lab` even on a crash or Ctrl-C; the kernel's parent-death
//! signal fires when the *thread* that spawned it exits, so call [`run`]
//! from a thread that outlives it) and is stopped by [`Nbdkit`]'s `Drop`
//! (SIGTERM, then SIGKILL), which also removes its file and socket.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, CmdError};
use crate::wait;

/// Default export size: 1 GiB.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Size for quick runs: 256 MiB.
pub const QUICK_SIZE: u64 = 256 << 20;
/// Default time per run of one pattern on one side.
pub const DEFAULT_RUNTIME: Duration = Duration::from_secs(5);
/// Default repetitions per side.
pub const DEFAULT_REPS: usize = 3;

/// A benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeBenchError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("nbdkit did not come up on {socket}: {why}")]
    Nbdkit { socket: PathBuf, why: String },
    #[error("fio output for {pattern} on {side}: {why}")]
    Fio { pattern: String, side: String, why: String },
    #[error("NBD {uri}: {why}")]
    Nbd { uri: String, why: String },
    #[error("bad NBD URI `{uri}`: {why}")]
    Uri { uri: String, why: String },
    #[error("export {uri} is {actual} bytes, smaller than the benchmark size {size}")]
    TooSmall { uri: String, actual: u64, size: u64 },
    #[error("bad options: {0}")]
    Opts(String),
}

type Result<T> = std::result::Result<T, VolumeBenchError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeBenchError {
    let what = what.into();
    move |source| VolumeBenchError::Io { what, source }
}

/// How a benchmark is run.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Time of one run of one pattern on one side (fio `--runtime`).
    pub runtime: Duration,
    /// Runs per pattern per side, alternating A B A B; the table shows
    /// the median.
    pub reps: usize,
    /// The subject's column header ("triad" for the real thing).
    pub subject_label: String,
    /// The subject is not Triad but a stand-in (self-test): the table
    /// says so in its header.
    pub subject_is_stand_in: bool,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            runtime: DEFAULT_RUNTIME,
            reps: DEFAULT_REPS,
            subject_label: "triad".into(),
            subject_is_stand_in: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Patterns, metrics, targets, verdicts

/// One I/O pattern, run identically on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// 4 KiB random write then FLUSH, QD1, each pair timed by this harness.
    WriteFlushQd1,
    /// The same with fio `--fsync=1`: exact mean, as a cross-check.
    WriteFlushQd1Fio,
    /// 4 KiB random write, QD1, no flush.
    WriteQd1,
    /// 4 KiB random write, QD16, no flush.
    WriteQd16,
    /// 1 MiB sequential write, QD8, one FLUSH at the end (counted).
    SeqWrite1m,
    /// 4 KiB random read, QD16.
    ReadQd16,
}

impl Pattern {
    /// Every pattern, in the order they run and are printed.
    pub const ALL: [Pattern; 6] = [
        Pattern::WriteFlushQd1,
        Pattern::WriteFlushQd1Fio,
        Pattern::WriteQd1,
        Pattern::WriteQd16,
        Pattern::SeqWrite1m,
        Pattern::ReadQd16,
    ];

    /// The pattern's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Pattern::WriteFlushQd1 => "4k randwrite+flush QD1",
            Pattern::WriteFlushQd1Fio => "4k randwrite+flush QD1 (fio)",
            Pattern::WriteQd1 => "4k randwrite QD1 no flush",
            Pattern::WriteQd16 => "4k randwrite QD16 no flush",
            Pattern::SeqWrite1m => "1M seqwrite QD8 +end flush",
            Pattern::ReadQd16 => "4k randread QD16",
        }
    }

    /// fio's job name (no spaces: fio derives file names from it).
    fn fio_name(self) -> &'static str {
        match self {
            Pattern::WriteFlushQd1 => "pairs",
            Pattern::WriteFlushQd1Fio => "wflush",
            Pattern::WriteQd1 => "w4k-qd1",
            Pattern::WriteQd16 => "w4k-qd16",
            Pattern::SeqWrite1m => "seq1m",
            Pattern::ReadQd16 => "r4k-qd16",
        }
    }

    /// fio's job arguments for this pattern (None: the pair timer).
    fn fio_args(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Pattern::WriteFlushQd1 => return None,
            Pattern::WriteFlushQd1Fio => &["--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"],
            Pattern::WriteQd1 => &["--rw=randwrite", "--bs=4k", "--iodepth=1"],
            Pattern::WriteQd16 => &["--rw=randwrite", "--bs=4k", "--iodepth=16"],
            Pattern::SeqWrite1m => &["--rw=write", "--bs=1M", "--iodepth=8", "--end_fsync=1"],
            Pattern::ReadQd16 => &["--rw=randread", "--bs=4k", "--iodepth=16"],
        })
    }

    /// The figures this pattern yields, in the order [`Pattern::extract`]
    /// returns them.
    pub fn metrics(self) -> Vec<MetricSpec> {
        let lat = |name, target| MetricSpec { name, unit: Unit::Micros, better: Better::Lower, target };
        let flush_target = Some(Target { bound: 1.5, source: "spec" });
        match self {
            Pattern::WriteFlushQd1 => vec![
                lat("p50 write+flush", flush_target),
                lat("p99 write+flush", flush_target),
                lat("mean write+flush", None),
            ],
            Pattern::WriteFlushQd1Fio => vec![lat("mean write+mean flush", None)],
            Pattern::WriteQd1 => vec![
                MetricSpec { name: "IOPS", unit: Unit::Iops, better: Better::Higher, target: None },
                lat("p50 write", None),
                lat("p99 write", None),
            ],
            Pattern::WriteQd16 => {
                vec![MetricSpec { name: "IOPS", unit: Unit::Iops, better: Better::Higher, target: None }]
            }
            Pattern::SeqWrite1m => vec![MetricSpec {
                name: "throughput",
                unit: Unit::MBps,
                better: Better::Higher,
                target: Some(Target { bound: 0.7, source: "spec" }),
            }],
            Pattern::ReadQd16 => vec![MetricSpec {
                name: "IOPS",
                unit: Unit::Iops,
                better: Better::Higher,
                target: Some(Target { bound: 0.9, source: "brief" }),
            }],
        }
    }

    /// The figures of one fio run, in the order of [`Pattern::metrics`].
    pub fn extract(self, r: &FioResult) -> std::result::Result<Vec<f64>, String> {
        let us = |v: Option<f64>, what: &str| v.map(|ns| ns / 1000.0).ok_or_else(|| format!("no {what} in fio output"));
        match self {
            Pattern::WriteFlushQd1 => Err("the write+flush pattern is timed by the harness, not fio".into()),
            Pattern::WriteFlushQd1Fio => {
                let sync = r.sync.as_ref().ok_or("no sync section in fio output")?;
                if r.write.total_ios == 0 || sync.count == 0 {
                    return Err("fio did no writes or no flushes".into());
                }
                Ok(vec![(r.write.lat.mean_ns + sync.mean_ns) / 1000.0])
            }
            Pattern::WriteQd1 => {
                Ok(vec![r.write.iops, us(r.write.lat.p50_ns, "write p50")?, us(r.write.lat.p99_ns, "write p99")?])
            }
            Pattern::WriteQd16 => Ok(vec![r.write.iops]),
            Pattern::SeqWrite1m => Ok(vec![r.write.bw_bytes / 1e6]),
            Pattern::ReadQd16 => Ok(vec![r.read.iops]),
        }
    }
}

/// The unit a figure is printed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Micros,
    Iops,
    MBps,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::Iops => "IOPS",
            Unit::MBps => "MB/s",
        }
    }
    fn format(self, v: f64) -> String {
        match self {
            Unit::Micros | Unit::MBps => format!("{v:.1}"),
            Unit::Iops => format!("{v:.0}"),
        }
    }
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Latency: the subject passes when subject/baseline is at most the bound.
    Lower,
    /// IOPS, MB/s: the subject passes when subject/baseline is at least the bound.
    Higher,
}

/// A target on the ratio subject/baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub bound: f64,
    /// Where the target comes from ("spec": shared/DESIGN.md).
    pub source: &'static str,
}

/// One figure of a pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    pub name: &'static str,
    pub unit: Unit,
    pub better: Better,
    pub target: Option<Target>,
}

/// Against its target, the subject's median...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// No target for this figure, or no ratio (a side has no value).
    NoTarget,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NoTarget => "-",
        }
    }
}

/// The verdict for `ratio` = subject/baseline against `target`.
pub fn verdict(ratio: Option<f64>, better: Better, target: Option<Target>) -> Verdict {
    match (ratio, target) {
        (Some(r), Some(t)) if r.is_finite() => {
            let ok = match better {
                Better::Lower => r <= t.bound,
                Better::Higher => r >= t.bound,
            };
            if ok {
                Verdict::Pass
            } else {
                Verdict::Miss
            }
        }
        (Some(_), Some(_)) => Verdict::Miss,
        _ => Verdict::NoTarget,
    }
}

/// subject / baseline, the one direction every ratio in the table has.
pub fn ratio(baseline: Option<f64>, subject: Option<f64>) -> Option<f64> {
    match (baseline, subject) {
        (Some(b), Some(s)) if b > 0.0 => Some(s / b),
        _ => None,
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The p-th percentile of sorted samples by nearest rank.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One row of the table: a figure of a pattern, every repetition's value
/// on each side.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub pattern: Pattern,
    pub metric: MetricSpec,
    pub baseline: Vec<f64>,
    pub subject: Vec<f64>,
}

impl Row {
    pub fn baseline_median(&self) -> Option<f64> {
        median(&self.baseline)
    }
    pub fn subject_median(&self) -> Option<f64> {
        median(&self.subject)
    }
    /// subject median / baseline median.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.baseline_median(), self.subject_median())
    }
    pub fn verdict(&self) -> Verdict {
        verdict(self.ratio(), self.metric.better, self.metric.target)
    }
}

/// The result of one benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeBench {
    /// e.g. "nbdkit 1.32.5 file plugin".
    pub baseline_label: String,
    /// The file the baseline serves, and the filesystem it is on.
    pub baseline_file: PathBuf,
    pub filesystem: String,
    pub subject_label: String,
    pub subject_uri: String,
    pub subject_is_stand_in: bool,
    pub size: u64,
    pub runtime: Duration,
    pub reps: usize,
    pub fio_version: String,
    pub rows: Vec<Row>,
}

fn size_str(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

/// The table, as [`print_table`] prints it.
pub fn format_table(b: &VolumeBench) -> String {
    let mut out = String::new();
    let sub = if b.subject_is_stand_in { format!("{} (stand-in)", b.subject_label) } else { b.subject_label.clone() };
    let header = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if b.subject_is_stand_in {
        header(
            &mut out,
            "SELF-TEST: the subject is NOT Triad but a second nbdkit; these figures only show the harness works."
                .into(),
        );
    }
    header(
        &mut out,
        format!(
            "volume benchmark: {} export, {} reps per side (A B A B), {:.1} s per run, median of reps; {}",
            size_str(b.size),
            b.reps,
            b.runtime.as_secs_f64(),
            b.fio_version
        ),
    );
    header(
        &mut out,
        format!("baseline  nbdkit: {}, {} on {}", b.baseline_label, b.baseline_file.display(), b.filesystem),
    );
    header(&mut out, format!("subject   {sub}: {}", b.subject_uri));
    header(
        &mut out,
        "ratio = subject / nbdkit in every row. us (latency): lower is better, target ratio <= bound; \
         IOPS, MB/s: higher is better, target ratio >= bound."
            .into(),
    );
    let w_sub = sub.len().max(10);
    header(
        &mut out,
        format!(
            "{:<29} {:<22} {:>5} {:>10} {:>w_sub$} {:>7} {:>13} {:>7}",
            "pattern", "metric", "unit", "nbdkit", sub, "ratio", "target", "verdict"
        ),
    );
    for r in &b.rows {
        let val = |v: Option<f64>| v.map_or("-".into(), |v| r.metric.unit.format(v));
        let target = r.metric.target.map_or("-".into(), |t| {
            let op = if r.metric.better == Better::Lower { "<=" } else { ">=" };
            format!("{op}{:.2} {}", t.bound, t.source)
        });
        header(
            &mut out,
            format!(
                "{:<29} {:<22} {:>5} {:>10} {:>w_sub$} {:>7} {:>13} {:>7}",
                r.pattern.label(),
                r.metric.name,
                r.metric.unit.as_str(),
                val(r.baseline_median()),
                val(r.subject_median()),
                r.ratio().map_or("-".into(), |x| format!("{x:.3}")),
                target,
                r.verdict().as_str()
            ),
        );
    }
    header(&mut out, "runs (nbdkit | subject), in order:".into());
    for r in &b.rows {
        let list = |v: &[f64]| v.iter().map(|x| r.metric.unit.format(*x)).collect::<Vec<_>>().join(" ");
        header(
            &mut out,
            format!("  {} / {}: {} | {}", r.pattern.label(), r.metric.name, list(&r.baseline), list(&r.subject)),
        );
    }
    out
}

/// Prints [`format_table`].
pub fn print_table(b: &VolumeBench) {
    print!("{}", format_table(b));
}

// ---------------------------------------------------------------------------
// fio's JSON output

/// Latency figures of one direction (or of the flushes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Number of samples (`N`; fio's `total_ios` for the flushes).
    pub count: u64,
    pub mean_ns: f64,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
}

/// One direction of a fio job.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DirStats {
    pub total_ios: u64,
    pub iops: f64,
    pub bw_bytes: f64,
    /// Total latency (`lat_ns`: submission + completion), which has
    /// percentiles with `--lat_percentiles=1`; else completion latency.
    pub lat: Latency,
}

/// What the benchmark reads of one fio job's JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FioResult {
    pub fio_version: String,
    pub job_runtime_ms: u64,
    pub read: DirStats,
    pub write: DirStats,
    /// The flushes (`--fsync=N`); `None` when there were none.
    pub sync: Option<Latency>,
}

fn num(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

fn percentile(lat: &serde_json::Value, p: f64) -> Option<f64> {
    lat.get("percentile")?.as_object()?.iter().find_map(|(k, v)| {
        let key: f64 = k.parse().ok()?;
        ((key - p).abs() < 1e-6).then(|| num(v)).flatten()
    })
}

fn latency(v: &serde_json::Value) -> Latency {
    Latency {
        count: v.get("N").and_then(|n| n.as_u64()).unwrap_or(0),
        mean_ns: v.get("mean").and_then(num).unwrap_or(0.0),
        p50_ns: percentile(v, 50.0),
        p99_ns: percentile(v, 99.0),
    }
}

fn dir_stats(v: Option<&serde_json::Value>) -> DirStats {
    let Some(v) = v else { return DirStats::default() };
    // lat_ns carries percentiles only with --lat_percentiles=1.
    let lat = match v.get("lat_ns") {
        Some(l) if l.get("percentile").is_some() => latency(l),
        _ => v.get("clat_ns").map(latency).unwrap_or_default(),
    };
    DirStats {
        total_ios: v.get("total_ios").and_then(|n| n.as_u64()).unwrap_or(0),
        iops: v.get("iops").and_then(num).unwrap_or(0.0),
        bw_bytes: v.get("bw_bytes").and_then(num).unwrap_or(0.0),
        lat,
    }
}

/// Parses fio's `--output-format=json` output for one job. fio's nbd
/// engine prints a line ("fio: connected to NBD server") before the JSON,
/// so everything before the first line that starts with `{` is skipped.
pub fn parse_fio_json(out: &str) -> std::result::Result<FioResult, String> {
    let start = if out.starts_with('{') { Some(0) } else { out.find("\n{").map(|i| i + 1) };
    let json = &out[start.ok_or("no JSON object in fio output")?..];
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    let job = v.get("jobs").and_then(|j| j.get(0)).ok_or("fio JSON has no jobs")?;
    if let Some(err) = job.get("error").and_then(|e| e.as_i64()).filter(|e| *e != 0) {
        return Err(format!("fio job error {err}"));
    }
    let sync = job.get("sync").and_then(|s| {
        let n = s.get("total_ios").and_then(|n| n.as_u64()).unwrap_or(0);
        let mut l = latency(s.get("lat_ns")?);
        l.count = l.count.max(n);
        (n > 0).then_some(l)
    });
    Ok(FioResult {
        fio_version: v.get("fio version").and_then(|s| s.as_str()).unwrap_or("fio").to_string(),
        job_runtime_ms: job.get("job_runtime").and_then(|n| n.as_u64()).unwrap_or(0),
        read: dir_stats(job.get("read")),
        write: dir_stats(job.get("write")),
        sync,
    })
}

fn fio_common(name: &str, uri: &str, size: u64) -> Vec<String> {
    vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        format!("--size={size}"),
        "--lat_percentiles=1".into(),
        "--output-format=json".into(),
    ]
}

fn run_fio(args: &[String], workdir: &Path, pattern: &str, side: &str) -> Result<FioResult> {
    let out = Command::new("fio")
        .args(args)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("could not start fio (Debian package fio)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fail = |why: String| VolumeBenchError::Fio { pattern: pattern.into(), side: side.into(), why };
    if !out.status.success() {
        return Err(fail(format!(
            "fio {} ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_fio_json(&stdout).map_err(fail)
}

// ---------------------------------------------------------------------------
// A minimal NBD client: enough to time write+flush pairs

/// Where an NBD URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    Unix(PathBuf),
    /// `host:port`, for `ToSocketAddrs`.
    Tcp(String),
}

/// A parsed `nbd://` or `nbd+unix://` URI (no TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub addr: NbdAddr,
    pub export: String,
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding".to_string())
}

/// Parses `nbd+unix:///[EXPORT]?socket=PATH` or `nbd://HOST[:PORT][/EXPORT]`
/// (the subset of the NBD URI spec the benchmark needs).
pub fn parse_nbd_uri(uri: &str) -> Result<NbdUri> {
    let bad = |why: &str| VolumeBenchError::Uri { uri: uri.into(), why: why.into() };
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let export = percent_decode(path).map_err(|e| bad(&e))?;
    match scheme {
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(bad("nbd+unix URIs have no host"));
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("no socket= parameter"))?;
            let socket = percent_decode(socket).map_err(|e| bad(&e))?;
            Ok(NbdUri { addr: NbdAddr::Unix(socket.into()), export })
        }
        "nbd" => {
            if authority.is_empty() {
                return Err(bad("no host"));
            }
            let has_port = match authority.rfind(']') {
                Some(close) => authority[close..].contains(':'),
                None => authority.contains(':'),
            };
            let addr = if has_port { authority.to_string() } else { format!("{authority}:10809") };
            Ok(NbdUri { addr: NbdAddr::Tcp(addr), export })
        }
        "nbds" | "nbds+unix" => Err(bad("TLS is not supported by the benchmark's client")),
        _ => Err(bad("scheme must be nbd or nbd+unix")),
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// A connected NBD client in transmission phase.
struct NbdConn {
    s: Box<dyn Stream>,
    /// The same socket, for timeouts (unix sockets only).
    unix: Option<UnixStream>,
    uri: String,
    size: u64,
    tflags: u16,
    cookie: u64,
}

fn rd<const N: usize>(s: &mut dyn Stream) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

impl NbdConn {
    fn connect(uri: &str) -> Result<NbdConn> {
        let parsed = parse_nbd_uri(uri)?;
        let fail = |why: String| VolumeBenchError::Nbd { uri: uri.into(), why };
        let mut unix = None;
        let mut s: Box<dyn Stream> = match &parsed.addr {
            NbdAddr::Unix(p) => {
                let u = UnixStream::connect(p).map_err(|e| fail(format!("connect {}: {e}", p.display())))?;
                unix = u.try_clone().ok();
                Box::new(u)
            }
            NbdAddr::Tcp(a) => {
                let addrs: Vec<_> = a.to_socket_addrs().map_err(|e| fail(format!("resolve {a}: {e}")))?.collect();
                let t = TcpStream::connect(&addrs[..]).map_err(|e| fail(format!("connect {a}: {e}")))?;
                t.set_nodelay(true).map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
                Box::new(t)
            }
        };
        let (size, tflags) = Self::handshake(&mut *s, &parsed.export).map_err(|e| fail(format!("handshake: {e}")))?;
        Ok(NbdConn { s, unix, uri: uri.into(), size, tflags, cookie: 0 })
    }

    /// Fixed newstyle with NBD_OPT_GO; returns (export size, transmission flags).
    fn handshake(s: &mut dyn Stream, export: &str) -> io::Result<(u64, u16)> {
        let proto = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if u64::from_be_bytes(rd::<8>(s)?) != NBDMAGIC || u64::from_be_bytes(rd::<8>(s)?) != IHAVEOPT {
            return Err(proto("not a newstyle NBD server".into()));
        }
        let hflags = u16::from_be_bytes(rd::<2>(s)?);
        if hflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("server is not fixed newstyle".into()));
        }
        let cflags = u32::from(FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES));
        let mut msg = cflags.to_be_bytes().to_vec();
        let name = export.as_bytes();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        msg.extend_from_slice(&(name.len() as u32).to_be_bytes());
        msg.extend_from_slice(name);
        msg.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&msg)?;
        let mut export_info = None;
        loop {
            let magic = u64::from_be_bytes(rd::<8>(s)?);
            let _opt = u32::from_be_bytes(rd::<4>(s)?);
            let rep = u32::from_be_bytes(rd::<4>(s)?);
            let len = u32::from_be_bytes(rd::<4>(s)?) as usize;
            if magic != REPLY_MAGIC || len > 1 << 20 {
                return Err(proto(format!("bad option reply (magic {magic:#x}, length {len})")));
            }
            let mut data = vec![0u8; len];
            s.read_exact(&mut data)?;
            if rep & (1 << 31) != 0 {
                return Err(proto(format!("NBD_OPT_GO refused ({rep:#x}): {}", String::from_utf8_lossy(&data))));
            }
            match rep {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    let mut sz = [0u8; 8];
                    sz.copy_from_slice(&data[2..10]);
                    export_info = Some((u64::from_be_bytes(sz), u16::from_be_bytes([data[10], data[11]])));
                }
                _ => {}
            }
        }
        export_info.ok_or_else(|| proto("no NBD_INFO_EXPORT before NBD_REP_ACK".into()))
    }

    fn request(&mut self, cmd: u16, offset: u64, data: &[u8]) -> Result<()> {
        self.cookie += 1;
        let mut msg = Vec::with_capacity(28 + data.len());
        msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&cmd.to_be_bytes());
        msg.extend_from_slice(&self.cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        let uri = &self.uri;
        self.s.write_all(&msg).map_err(|e| VolumeBenchError::Nbd { uri: uri.clone(), why: format!("send: {e}") })
    }

    fn reply(&mut self, what: &str) -> Result<()> {
        let fail = |why: String| VolumeBenchError::Nbd { uri: self.uri.clone(), why };
        let b = rd::<16>(&mut *self.s).map_err(|e| fail(format!("{what} reply: {e}")))?;
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let error = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&b[8..16]);
        if magic != SIMPLE_REPLY_MAGIC || u64::from_be_bytes(c) != self.cookie {
            return Err(fail(format!("{what}: unexpected reply (magic {magic:#x})")));
        }
        if error != 0 {
            return Err(fail(format!("{what} failed with NBD error {error}")));
        }
        Ok(())
    }

    fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, &[]);
    }
}

const CMD_READ: u16 = 0;

/// A minimal blocking NBD client (fixed newstyle, `NBD_OPT_GO`, simple
/// replies, one request at a time), for the lab tests.
pub struct NbdClient {
    conn: NbdConn,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient").field("uri", &self.conn.uri).field("size", &self.conn.size).finish()
    }
}

impl NbdClient {
    /// Connects and negotiates (`nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]`).
    pub fn connect(uri: &str) -> Result<NbdClient> {
        Ok(NbdClient { conn: NbdConn::connect(uri)? })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.conn.size
    }

    /// WRITE and its reply.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.conn.request(CMD_WRITE, offset, data)?;
        self.conn.reply("WRITE")
    }

    /// FLUSH and its reply: everything written before it is durable.
    pub fn flush(&mut self) -> Result<()> {
        self.conn.request(CMD_FLUSH, 0, &[])?;
        self.conn.reply("FLUSH")
    }

    /// READ of `len` bytes and its reply.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.conn.cookie += 1;
        let mut msg = Vec::with_capacity(28);
        msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&CMD_READ.to_be_bytes());
        msg.extend_from_slice(&self.conn.cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        let uri = self.conn.uri.clone();
        let fail = |why: String| VolumeBenchError::Nbd { uri: uri.clone(), why };
        self.conn.s.write_all(&msg).map_err(|e| fail(format!("send: {e}")))?;
        self.conn.reply("READ")?;
        let mut data = vec![0u8; len as usize];
        self.conn.s.read_exact(&mut data).map_err(|e| fail(format!("READ data: {e}")))?;
        Ok(data)
    }

    /// Whether the server closes the connection within `within`, without
    /// this client sending anything (unix sockets only; false otherwise).
    pub fn closed_by_server_within(&mut self, within: Duration) -> bool {
        let Some(u) = &self.conn.unix else { return false };
        let deadline = Instant::now() + within;
        let mut b = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || u.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match (&*u).read(&mut b) {
                Ok(0) => return true,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Unsolicited bytes or another error: not a clean close.
                _ => return false,
            }
        }
    }

    /// Sends DISC and drops the connection.
    pub fn disconnect(self) {
        self.conn.disconnect();
    }
}

/// splitmix64: the offsets and the data of the pair timer.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The distribution of one pair-timer run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStats {
    pub pairs: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl PairStats {
    /// From the pairs' durations in ns (any order).
    pub fn from_ns(mut ns: Vec<u64>) -> Option<PairStats> {
        ns.sort_unstable();
        let mean = ns.iter().map(|v| *v as f64).sum::<f64>() / ns.len().max(1) as f64;
        Some(PairStats {
            pairs: ns.len(),
            p50_us: nearest_rank(&ns, 50.0)? as f64 / 1000.0,
            p99_us: nearest_rank(&ns, 99.0)? as f64 / 1000.0,
            mean_us: mean / 1000.0,
        })
    }
}

/// For `runtime`, one 4 KiB WRITE at a random 4 KiB-aligned offset in the
/// first `size` bytes, its reply, a FLUSH, its reply; each pair timed from
/// before the WRITE is sent to the FLUSH's reply. `seed` fixes the offsets
/// and data, so both sides see the same sequence.
pub fn time_write_flush_pairs(uri: &str, size: u64, runtime: Duration, seed: u64) -> Result<PairStats> {
    let mut c = NbdConn::connect(uri)?;
    if c.tflags & TFLAG_SEND_FLUSH == 0 || c.tflags & TFLAG_READ_ONLY != 0 {
        return Err(VolumeBenchError::Nbd { uri: uri.into(), why: "export is read-only or has no FLUSH".into() });
    }
    let blocks = (size.min(c.size) / 4096).max(1);
    let mut rng = seed;
    let mut buf = vec![0u8; 4096];
    for chunk in buf.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut rng).to_le_bytes());
    }
    let mut samples = Vec::with_capacity(65536);
    let end = Instant::now() + runtime;
    while Instant::now() < end {
        let offset = (splitmix(&mut rng) % blocks) * 4096;
        // Every write differs, so nothing can deduplicate it away.
        buf[..8].copy_from_slice(&rng.to_le_bytes());
        let t0 = Instant::now();
        c.request(CMD_WRITE, offset, &buf)?;
        c.reply("WRITE")?;
        c.request(CMD_FLUSH, 0, &[])?;
        c.reply("FLUSH")?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    c.disconnect();
    PairStats::from_ns(samples)
        .ok_or_else(|| VolumeBenchError::Nbd { uri: uri.into(), why: "no write+flush pair completed".into() })
}

/// Connects, negotiates, and returns the export's size and flags.
pub fn probe(uri: &str) -> Result<(u64, u16)> {
    let c = NbdConn::connect(uri)?;
    let r = (c.size, c.tflags);
    c.disconnect();
    Ok(r)
}

// ---------------------------------------------------------------------------
// nbdkit

/// An nbdkit file-plugin server on a unix socket, stopped (SIGTERM, then
/// SIGKILL) and its file, socket and pid file removed on drop.
#[derive(Debug)]
pub struct Nbdkit {
    child: Child,
    pub socket: PathBuf,
    pub file: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
}

impl Nbdkit {
    /// Creates `DIR/NAME.img` of `size` bytes (sparse; [`run`] fills it)
    /// and serves it with `nbdkit --exit-with-parent -U DIR/NAME.sock -P
    /// DIR/NAME.pid file DIR/NAME.img`, waiting until the pid file appears
    /// (nbdkit writes it once it accepts connections).
    pub fn start_file(dir: &Path, name: &str, size: u64) -> Result<Nbdkit> {
        let path = |ext: &str| dir.join(format!("{name}.{ext}"));
        let (file, socket, pidfile, log) = (path("img"), path("sock"), path("pid"), path("log"));
        for p in [&socket, &pidfile] {
            let _ = fs::remove_file(p);
        }
        let f = File::create(&file).map_err(io_err(format!("could not create {}", file.display())))?;
        f.set_len(size).map_err(io_err(format!("could not size {}", file.display())))?;
        drop(f);
        let logf = File::create(&log).map_err(io_err(format!("could not create {}", log.display())))?;
        let child = Command::new("nbdkit")
            .arg("--exit-with-parent")
            .arg("-U")
            .arg(&socket)
            .arg("-P")
            .arg(&pidfile)
            .arg("file")
            .arg(format!("file={}", file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(io_err("could not start nbdkit (Debian package nbdkit)"))?;
        let mut me = Nbdkit { child, socket, file, pidfile, log };
        let ready = wait::until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Ok(Some(st)) = me.child.try_wait() {
                return Some(Err(format!("nbdkit exited ({st})")));
            }
            let pid = fs::read_to_string(&me.pidfile).ok()?;
            (pid.trim().parse::<u32>().ok()? == me.child.id() && me.socket.exists()).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(me),
            r => {
                let why = match r {
                    Some(Err(e)) => e,
                    _ => "no pid file within 10 s".into(),
                };
                let log = fs::read_to_string(&me.log).unwrap_or_default();
                Err(VolumeBenchError::Nbdkit { socket: me.socket.clone(), why: format!("{why}; log: {}", log.trim()) })
            }
        }
    }

    /// The export's URI.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// `nbdkit --version`, e.g. "nbdkit 1.32.5".
    pub fn version() -> String {
        cmd::run("nbdkit", &["--version"]).map_or("nbdkit".into(), |s| s.trim().to_string())
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(pid, Signal::SIGTERM);
            let gone = wait::until(Duration::from_secs(5), Duration::from_millis(20), || {
                matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
            });
            if gone.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for p in [&self.file, &self.socket, &self.pidfile, &self.log] {
            let _ = fs::remove_file(p);
        }
    }
}

/// The filesystem `dir` is on, as `findmnt` names it ("ext4 /dev/vda on /").
pub(crate) fn filesystem_of(dir: &Path) -> String {
    let d = dir.display().to_string();
    cmd::run("findmnt", &["-n", "-o", "FSTYPE,SOURCE,TARGET", "-T", &d]).map_or("unknown filesystem".into(), |s| {
        let f: Vec<&str> = s.split_whitespace().collect();
        match f[..] {
            [fs, src, target] => format!("{fs} {src} on {target}"),
            _ => s.trim().to_string(),
        }
    })
}

// ---------------------------------------------------------------------------
// The benchmark

/// Parses a size: bytes, or a number with K, M, G (KiB, MiB, GiB; "MiB"
/// and "M" alike).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        u => return Err(format!("unknown size unit `{u}` (K, M, G)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

fn check_opts(size: u64, opts: &BenchOpts) -> Result<()> {
    if size < 16 << 20 || !size.is_multiple_of(1 << 20) {
        return Err(VolumeBenchError::Opts(format!("size {size} must be a multiple of 1 MiB, at least 16 MiB")));
    }
    if opts.reps == 0 {
        return Err(VolumeBenchError::Opts("reps must be at least 1".into()));
    }
    if opts.runtime < Duration::from_millis(500) {
        return Err(VolumeBenchError::Opts("runtime must be at least 0.5 s".into()));
    }
    Ok(())
}

/// Fills the first `size` bytes of an export (1 MiB sequential writes and
/// a flush), so that later writes overwrite and reads read data.
fn fill(uri: &str, size: u64, workdir: &Path, side: &str) -> Result<()> {
    let mut args = fio_common("fill", uri, size);
    args.extend(["--rw=write", "--bs=1M", "--iodepth=8", "--end_fsync=1"].map(String::from));
    run_fio(&args, workdir, "fill", side).map(|_| ())
}

/// One run of one pattern on one side (`(label, uri)`): its figures, and
/// fio's version if fio ran. Repetition `rep` of the pair timer uses the
/// same offsets on both sides.
fn run_pattern(
    p: Pattern,
    (side, uri): (&str, &str),
    size: u64,
    opts: &BenchOpts,
    rep: usize,
    workdir: &Path,
) -> Result<(Vec<f64>, Option<String>)> {
    let Some(extra) = p.fio_args() else {
        let s = time_write_flush_pairs(uri, size, opts.runtime, 0x7472_6961_6400 + rep as u64)?;
        return Ok((vec![s.p50_us, s.p99_us, s.mean_us], None));
    };
    let mut args = fio_common(p.fio_name(), uri, size);
    args.extend(["--time_based".to_string(), format!("--runtime={}ms", opts.runtime.as_millis())]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run_fio(&args, workdir, p.label(), side)?;
    let v = p.extract(&r).map_err(|why| VolumeBenchError::Fio { pattern: p.label().into(), side: side.into(), why })?;
    Ok((v, Some(r.fio_version)))
}

/// Runs the benchmark: starts nbdkit's file plugin on a `size`-byte file
/// in `baseline_dir` (which should be on the filesystem that holds the
/// subject's backing store), fills both exports, then runs every pattern
/// `opts.reps` times per side, alternating baseline and subject. The
/// subject's first `size` bytes are overwritten. The baseline nbdkit is
/// stopped and its file removed before this returns, error or not.
pub fn run(baseline_dir: &Path, subject: &str, size: u64, opts: &BenchOpts) -> Result<VolumeBench> {
    check_opts(size, opts)?;
    fs::create_dir_all(baseline_dir).map_err(io_err(format!("could not create {}", baseline_dir.display())))?;
    let (actual, _) = probe(subject)?;
    if actual < size {
        return Err(VolumeBenchError::TooSmall { uri: subject.into(), actual, size });
    }
    let base = Nbdkit::start_file(baseline_dir, "nbdkit-baseline", size)?;
    let base_uri = base.uri();
    let sides = [("nbdkit", base_uri.as_str()), (opts.subject_label.as_str(), subject)];
    for (side, uri) in sides {
        eprintln!("fill {side}: {} sequentially", size_str(size));
        fill(uri, size, baseline_dir, side)?;
    }
    let mut fio_version = String::from("fio");
    // Repetitions outermost: a burst of load on the shared machine lands in
    // one repetition of every pattern (which the median discards), not in
    // every repetition of one pattern. Within a pattern: baseline, subject.
    // got[pattern][side][rep] = that run's figures.
    let mut got: Vec<[Vec<Vec<f64>>; 2]> = Pattern::ALL.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for rep in 0..opts.reps {
        for (pi, p) in Pattern::ALL.into_iter().enumerate() {
            let specs = p.metrics();
            for (i, &(side, uri)) in sides.iter().enumerate() {
                let (v, version) = run_pattern(p, (side, uri), size, opts, rep, baseline_dir)?;
                fio_version = version.unwrap_or(fio_version);
                let shown: Vec<String> = specs
                    .iter()
                    .zip(&v)
                    .map(|(m, x)| format!("{} {} {}", m.name, m.unit.format(*x), m.unit.as_str()))
                    .collect();
                eprintln!("rep {}/{} {} {side}: {}", rep + 1, opts.reps, p.label(), shown.join(", "));
                got[pi][i].push(v);
            }
        }
    }
    let mut rows = Vec::new();
    for (p, got) in Pattern::ALL.into_iter().zip(&got) {
        for (k, metric) in p.metrics().into_iter().enumerate() {
            let col = |side: &Vec<Vec<f64>>| side.iter().filter_map(|v| v.get(k).copied()).collect();
            rows.push(Row { pattern: p, metric, baseline: col(&got[0]), subject: col(&got[1]) });
        }
    }
    let bench = VolumeBench {
        baseline_label: format!("{} file plugin", Nbdkit::version()),
        baseline_file: base.file.clone(),
        filesystem: filesystem_of(baseline_dir),
        subject_label: opts.subject_label.clone(),
        subject_uri: subject.into(),
        subject_is_stand_in: opts.subject_is_stand_in,
        size,
        runtime: opts.runtime,
        reps: opts.reps,
        fio_version,
        rows,
    };
    drop(base);
    Ok(bench)
}

/// The benchmark with a second nbdkit file plugin (on a second file in the
/// same directory) as a stand-in subject, labelled as such in the table.
/// For testing the harness while no Triad export exists.
pub fn run_self_test(dir: &Path, size: u64, opts: &BenchOpts) -> Result<VolumeBench> {
    check_opts(size, opts)?;
    fs::create_dir_all(dir).map_err(io_err(format!("could not create {}", dir.display())))?;
    let standin = Nbdkit::start_file(dir, "nbdkit-standin", size)?;
    let opts = BenchOpts { subject_label: "nbdkit#2".into(), subject_is_stand_in: true, ..opts.clone() };
    let r = run(dir, &standin.uri(), size, &opts);
    drop(standin);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSYNC_SAMPLE: &str = include_str!("../tests/data/fio-randwrite-fsync1.json");
    const READ_SAMPLE: &str = include_str!("../tests/data/fio-randread-qd16.json");

    #[test]
    fn fio_json_with_flushes_parses_writes_and_syncs() {
        let r = parse_fio_json(FSYNC_SAMPLE).expect("sample parses");
        assert_eq!(r.fio_version, "fio-3.33");
        assert!(r.job_runtime_ms > 0);
        assert!(r.write.total_ios > 0 && r.write.iops > 0.0);
        assert!(r.write.lat.p50_ns.is_some() && r.write.lat.p99_ns.is_some());
        assert!(r.write.lat.p50_ns <= r.write.lat.p99_ns);
        let sync = r.sync.expect("flushes");
        assert_eq!(sync.count, r.write.total_ios, "--fsync=1: one flush per write");
        assert!(sync.p50_ns.is_some() && sync.p99_ns.is_some());
        assert_eq!(r.read.total_ios, 0);
        let v = Pattern::WriteFlushQd1Fio.extract(&r).expect("figures");
        assert_eq!(v.len(), Pattern::WriteFlushQd1Fio.metrics().len());
        assert!((v[0] - (r.write.lat.mean_ns + sync.mean_ns) / 1000.0).abs() < 1e-9);
    }

    #[test]
    fn fio_json_exact_numbers_from_the_read_sample() {
        let r = parse_fio_json(READ_SAMPLE).expect("sample parses");
        assert_eq!(r.read.total_ios, 104_515);
        assert!((r.read.iops - 69_491.356_383).abs() < 1e-6);
        assert_eq!(r.read.lat.p50_ns, Some(181_248.0));
        assert_eq!(r.read.lat.p99_ns, Some(1_761_280.0));
        assert_eq!(r.write.total_ios, 0);
        assert_eq!(r.sync, None, "no flushes: no sync figures");
        assert_eq!(Pattern::ReadQd16.extract(&r), Ok(vec![r.read.iops]));
    }

    #[test]
    fn fio_json_errors() {
        assert!(parse_fio_json("fio: something went wrong\n").is_err());
        assert!(parse_fio_json("{\"jobs\": []}").is_err());
        assert!(parse_fio_json("{\"jobs\": [{\"error\": 5}]}").unwrap_err().contains("error 5"));
        // Percentiles fall back to clat when lat has none (no --lat_percentiles).
        let j = r#"{"jobs":[{"write":{"total_ios":3,"iops":2.5,"bw_bytes":10,
            "lat_ns":{"N":3,"mean":9.0},
            "clat_ns":{"N":3,"mean":7.0,"percentile":{"50.000000":6,"99.000000":8}}}}]}"#;
        let r = parse_fio_json(j).expect("parses");
        assert_eq!(r.write.lat.mean_ns, 7.0);
        assert_eq!(r.write.lat.p99_ns, Some(8.0));
        assert_eq!(Pattern::WriteQd1.extract(&r), Ok(vec![2.5, 0.006, 0.008]));
    }

    #[test]
    fn ratio_is_subject_over_baseline_and_verdicts_follow_direction() {
        let t = |b| Some(Target { bound: b, source: "spec" });
        assert_eq!(ratio(Some(200.0), Some(300.0)), Some(1.5));
        assert_eq!(ratio(Some(0.0), Some(1.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        // Latency: at most the bound.
        assert_eq!(verdict(Some(1.5), Better::Lower, t(1.5)), Verdict::Pass);
        assert_eq!(verdict(Some(1.51), Better::Lower, t(1.5)), Verdict::Miss);
        assert_eq!(verdict(Some(0.2), Better::Lower, t(1.5)), Verdict::Pass);
        // Throughput: at least the bound.
        assert_eq!(verdict(Some(0.7), Better::Higher, t(0.7)), Verdict::Pass);
        assert_eq!(verdict(Some(0.69), Better::Higher, t(0.7)), Verdict::Miss);
        assert_eq!(verdict(Some(3.0), Better::Higher, t(0.9)), Verdict::Pass);
        assert_eq!(verdict(Some(f64::NAN), Better::Higher, t(0.9)), Verdict::Miss);
        assert_eq!(verdict(Some(1.0), Better::Higher, None), Verdict::NoTarget);
        assert_eq!(verdict(None, Better::Lower, t(1.5)), Verdict::NoTarget);
    }

    #[test]
    fn medians_and_nearest_rank() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50));
        assert_eq!(nearest_rank(&v, 99.0), Some(99));
        assert_eq!(nearest_rank(&v[..20], 99.0), Some(20));
        let s = PairStats::from_ns((1..=1000).rev().map(|x| x * 1000).collect()).expect("stats");
        assert_eq!((s.pairs, s.p50_us, s.p99_us, s.mean_us), (1000, 500.0, 990.0, 500.5));
        assert_eq!(PairStats::from_ns(vec![]), None);
    }

    #[test]
    fn targets_are_the_spec_and_brief_ones() {
        let targets: Vec<(Pattern, &str, Better, f64)> = Pattern::ALL
            .iter()
            .flat_map(|p| p.metrics().into_iter().map(move |m| (*p, m)))
            .filter_map(|(p, m)| m.target.map(|t| (p, m.name, m.better, t.bound)))
            .collect();
        assert_eq!(
            targets,
            vec![
                (Pattern::WriteFlushQd1, "p50 write+flush", Better::Lower, 1.5),
                (Pattern::WriteFlushQd1, "p99 write+flush", Better::Lower, 1.5),
                (Pattern::SeqWrite1m, "throughput", Better::Higher, 0.7),
                (Pattern::ReadQd16, "IOPS", Better::Higher, 0.9),
            ]
        );
    }

    fn bench(stand_in: bool) -> VolumeBench {
        let row = |pattern, k: usize, baseline: Vec<f64>, subject: Vec<f64>| Row {
            pattern,
            metric: Pattern::metrics(pattern)[k],
            baseline,
            subject,
        };
        VolumeBench {
            baseline_label: "nbdkit 1.32.5 file plugin".into(),
            baseline_file: "/var/tmp/b/nbdkit-baseline.img".into(),
            filesystem: "ext4 /dev/vda on /".into(),
            subject_label: if stand_in { "nbdkit#2".into() } else { "triad".into() },
            subject_uri: "nbd+unix:///?socket=/run/x.sock".into(),
            subject_is_stand_in: stand_in,
            size: QUICK_SIZE,
            runtime: Duration::from_secs(5),
            reps: 3,
            fio_version: "fio-3.33".into(),
            rows: vec![
                row(Pattern::WriteFlushQd1, 0, vec![200.0, 210.0, 220.0], vec![290.0, 300.0, 900.0]),
                row(Pattern::WriteFlushQd1, 1, vec![400.0, 400.0, 400.0], vec![700.0, 700.0, 700.0]),
                row(Pattern::WriteQd16, 0, vec![12000.0], vec![3000.0]),
                row(Pattern::SeqWrite1m, 0, vec![1700.0, 1600.0], vec![1300.0, 1200.0]),
            ],
        }
    }

    #[test]
    fn table_shows_medians_ratios_targets_and_verdicts() {
        let t = format_table(&bench(false));
        assert!(!t.contains("SELF-TEST"), "{t}");
        assert!(t.contains("ratio = subject / nbdkit in every row"), "{t}");
        assert!(t.contains("subject   triad: nbd+unix:///?socket=/run/x.sock"), "{t}");
        let line = |needle: &str| {
            t.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in\n{t}")).to_string()
        };
        let cols = |l: String| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        // p50: median 210 vs 300 -> 1.429, at most 1.5: PASS.
        let p50 = cols(line("p50 write+flush"));
        assert_eq!(p50[p50.len() - 6..], ["210.0", "300.0", "1.429", "<=1.50", "spec", "PASS"], "{t}");
        // p99: 400 vs 700 -> 1.750: MISS.
        let p99 = cols(line("p99 write+flush"));
        assert_eq!(p99[p99.len() - 6..], ["400.0", "700.0", "1.750", "<=1.50", "spec", "MISS"], "{t}");
        // No target: a dash.
        let qd16 = cols(line("4k randwrite QD16"));
        assert_eq!(qd16[qd16.len() - 4..], ["3000", "0.250", "-", "-"], "{t}");
        // Throughput: medians 1650 vs 1250 -> 0.758, at least 0.7: PASS.
        let seq = cols(line("throughput"));
        assert_eq!(seq[seq.len() - 6..], ["1650.0", "1250.0", "0.758", ">=0.70", "spec", "PASS"], "{t}");
        assert!(t.contains("  4k randwrite+flush QD1 / p50 write+flush: 200.0 210.0 220.0 | 290.0 300.0 900.0"), "{t}");
    }

    #[test]
    fn a_stand_in_subject_is_never_shown_as_triad() {
        let t = format_table(&bench(true));
        assert!(t.starts_with("SELF-TEST: the subject is NOT Triad"), "{t}");
        assert!(!t.contains("triad"), "{t}");
        let head = t.lines().find(|l| l.starts_with("pattern")).expect("header");
        assert!(head.contains("nbdkit#2 (stand-in)"), "{head}");
    }

    #[test]
    fn nbd_uris() {
        let u = parse_nbd_uri("nbd+unix:///?socket=/tmp/a%20b.sock").expect("unix");
        assert_eq!(u, NbdUri { addr: NbdAddr::Unix("/tmp/a b.sock".into()), export: String::new() });
        let u = parse_nbd_uri("nbd+unix:///vol?socket=/run/n1/nbd.sock").expect("unix with export");
        assert_eq!(u.export, "vol");
        assert_eq!(parse_nbd_uri("nbd://10.77.0.100").expect("tcp").addr, NbdAddr::Tcp("10.77.0.100:10809".into()));
        assert_eq!(parse_nbd_uri("nbd://h:7000/e").expect("tcp").addr, NbdAddr::Tcp("h:7000".into()));
        assert_eq!(parse_nbd_uri("nbd://[::1]").expect("v6").addr, NbdAddr::Tcp("[::1]:10809".into()));
        assert_eq!(parse_nbd_uri("nbd://[::1]:99").expect("v6").addr, NbdAddr::Tcp("[::1]:99".into()));
        for bad in ["nbd+unix:///", "nbds://h", "http://h", "/tmp/sock", "nbd://", "nbd+unix://h/?socket=/s"] {
            assert!(parse_nbd_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(QUICK_SIZE));
        assert_eq!(parse_size("1G"), Ok(DEFAULT_SIZE));
        assert_eq!(parse_size("1GiB"), Ok(DEFAULT_SIZE));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1T").is_err() && parse_size("x").is_err() && parse_size("").is_err());
        let o = BenchOpts::default();
        assert!(check_opts(QUICK_SIZE, &o).is_ok());
        assert!(check_opts(QUICK_SIZE + 4096, &o).is_err());
        assert!(check_opts(1 << 20, &o).is_err());
        assert!(check_opts(QUICK_SIZE, &BenchOpts { reps: 0, ..o.clone() }).is_err());
    }
}
