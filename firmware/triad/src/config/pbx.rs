//! `[pbx]`: the PBX the active node runs (issue 11, item 1), validated.
//!
//! Bad input is refused at load, naming the field, before anything runs: a
//! command that is not an executable file, a user or group the system does
//! not know, a SIP port that is not a port, a mount point that exists but
//! is not a directory, a stop signal Linux does not have, or supervision
//! timings that contradict each other (`triad_host::pbx::PbxTiming`).
//!
//! Must not: start anything, or create the mount point (the promotion
//! does, after the volume is attached).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use serde::Deserialize;
use triad_host::pbx::PbxTiming;

use super::{absolute, int_in, invalid, required, ConfigError};

/// Default SIP port probed on loopback.
pub const DEFAULT_SIP_PORT: u16 = 5060;
/// Default mount point of the replicated volume's filesystem.
pub const DEFAULT_MOUNT_POINT: &str = "/srv/pbx";

/// `[pbx]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbxConfig {
    /// The PBX's executable (absolute, an executable file).
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The user it runs as (resolved at load).
    pub user: String,
    /// Its uid.
    pub uid: Uid,
    /// Its gid: `group`'s, or the user's primary group.
    pub gid: Gid,
    /// Extra environment; the supervisor adds `TRIAD_VIP` and
    /// `TRIAD_MOUNT_POINT` (and `TRIAD_PUBLIC_ADDRESS` when configured).
    pub env: BTreeMap<String, String>,
    /// Its working directory (default: the mount point).
    pub working_dir: PathBuf,
    /// Where the volume's filesystem is mounted on the active node.
    pub mount_point: PathBuf,
    /// The address phones reach the PBX at from outside (NAT), if any.
    pub public_address: Option<String>,
    /// The signal that asks it to stop (default SIGTERM), sent to its
    /// process group.
    pub stop_signal: Signal,
    /// The SIP port probed on loopback.
    pub sip_port: u16,
    /// cgroup v2 `memory.max`, if limited.
    pub memory_max: Option<u64>,
    /// cgroup v2 `cpu.max` as a percentage of one CPU, if limited.
    pub cpu_max_percent: Option<u32>,
    /// Supervision timing, checked.
    pub timing: PbxTiming,
    /// The PBX's own config check (program and arguments, run as the
    /// PBX's user with its environment) for the failover readiness check;
    /// `None`: only the program is checked.
    pub check: Option<Vec<String>>,
    /// Between two failover readiness checks.
    pub readiness_interval: Duration,
    /// Probe over TCP as well as UDP: a probe then counts as answered only
    /// when both transports answer.
    pub probe_tcp: bool,
    /// Probe the PBX on the VIP as well as on loopback (the node holds the
    /// VIP while its PBX runs): a PBX whose listener on the VIP died while
    /// loopback still answers is restarted.
    pub probe_vip: bool,
    /// Run before every start of the PBX (program and arguments, as the
    /// PBX's user with its environment, from the mount point): e.g.
    /// recover the PBX's database after the previous process or active
    /// node died mid-write. A failure is a failed start.
    pub prepare: Option<Vec<String>>,
    /// The test user a probe must be routed to, and the loopback port of
    /// the supervisor's responder that is its registered contact: the
    /// probe then proves the PBX's registrations are loaded, not only that
    /// it answers OPTIONS.
    pub probe_user: Option<(String, u16)>,
}

/// How long `pbx.prepare` may take.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Between two failover readiness checks, unless configured.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPbx {
    command: Option<PathBuf>,
    args: Option<Vec<String>>,
    user: Option<String>,
    group: Option<String>,
    env: Option<BTreeMap<String, String>>,
    working_dir: Option<PathBuf>,
    mount_point: Option<PathBuf>,
    public_address: Option<String>,
    stop_signal: Option<String>,
    sip_port: Option<i64>,
    memory_max_mib: Option<i64>,
    cpu_max_percent: Option<i64>,
    probe_interval_ms: Option<i64>,
    probe_timeout_ms: Option<i64>,
    probe_failures: Option<i64>,
    start_grace_ms: Option<i64>,
    backoff_first_ms: Option<i64>,
    backoff_max_ms: Option<i64>,
    stop_timeout_ms: Option<i64>,
    kill_timeout_ms: Option<i64>,
    failure_window_s: Option<i64>,
    failures_to_hand_over: Option<i64>,
    check: Option<Vec<String>>,
    readiness_interval_s: Option<i64>,
    probe_tcp: Option<bool>,
    probe_vip: Option<bool>,
    prepare: Option<Vec<String>>,
    probe_user: Option<String>,
    probe_user_port: Option<i64>,
}

/// Environment names the supervisor sets itself.
const RESERVED_ENV: [&str; 3] = ["TRIAD_VIP", "TRIAD_MOUNT_POINT", "TRIAD_PUBLIC_ADDRESS"];

impl TryFrom<RawPbx> for PbxConfig {
    type Error = ConfigError;

    fn try_from(r: RawPbx) -> Result<Self, ConfigError> {
        let timing = timing(&r)?;
        let command = absolute(required(r.command, "pbx.command")?, "pbx.command")?;
        executable(&command)?;
        let user = required(r.user, "pbx.user")?;
        let (uid, user_gid) = lookup(PASSWD, &user, |f| {
            Some((Uid::from_raw(f.get(2)?.parse().ok()?), Gid::from_raw(f.get(3)?.parse().ok()?)))
        })
        .map_err(|e| invalid("pbx.user", format!("cannot read {PASSWD}: {e}")))?
        .ok_or_else(|| invalid("pbx.user", format!("no such user {user:?} in {PASSWD}")))?;
        if uid.is_root() {
            return Err(invalid("pbx.user", "must not be root: the PBX runs unprivileged"));
        }
        let gid = match r.group {
            Some(g) => lookup(GROUP, &g, |f| Some(Gid::from_raw(f.get(2)?.parse().ok()?)))
                .map_err(|e| invalid("pbx.group", format!("cannot read {GROUP}: {e}")))?
                .ok_or_else(|| invalid("pbx.group", format!("no such group {g:?} in {GROUP}")))?,
            None => user_gid,
        };
        let env = r.env.unwrap_or_default();
        for name in env.keys() {
            let ok = !name.is_empty() && !name.contains('=') && !name.contains('\0');
            if !ok {
                return Err(invalid(format!("pbx.env.{name}"), "is not a valid environment variable name"));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return Err(invalid(format!("pbx.env.{name}"), "is set by the supervisor"));
            }
        }
        let mount_point = absolute(r.mount_point.unwrap_or_else(|| DEFAULT_MOUNT_POINT.into()), "pbx.mount_point")?;
        if mount_point.exists() && !mount_point.is_dir() {
            return Err(invalid("pbx.mount_point", format!("{} exists and is not a directory", mount_point.display())));
        }
        let working_dir = match r.working_dir {
            Some(d) => absolute(d, "pbx.working_dir")?,
            None => mount_point.clone(),
        };
        let stop_signal = match r.stop_signal {
            Some(s) => signal(&s)?,
            None => Signal::SIGTERM,
        };
        let sip_port = match r.sip_port {
            Some(p) => int_in(p, "pbx.sip_port", 1..=65535)?,
            None => DEFAULT_SIP_PORT,
        };
        let memory_max = match r.memory_max_mib {
            Some(m) => Some(int_in::<u64>(m, "pbx.memory_max_mib", 16..=1 << 20)? << 20),
            None => None,
        };
        let cpu_max_percent = match r.cpu_max_percent {
            Some(c) => Some(int_in(c, "pbx.cpu_max_percent", 1..=100_000)?),
            None => None,
        };
        let check = r.check.map(|argv| program_argv(argv, "pbx.check")).transpose()?;
        let prepare = r.prepare.map(|argv| program_argv(argv, "pbx.prepare")).transpose()?;
        let readiness_interval = match r.readiness_interval_s {
            Some(s) => Duration::from_secs(int_in(s, "pbx.readiness_interval_s", 1..=86_400)?),
            None => DEFAULT_READINESS_INTERVAL,
        };
        let probe_user = match (r.probe_user, r.probe_user_port) {
            (Some(user), port) => {
                let ok = !user.is_empty() && user.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(invalid("pbx.probe_user", "must be a SIP user name: letters, digits, '-', '_' or '.'"));
                }
                let port = int_in(port.unwrap_or(5099), "pbx.probe_user_port", 1..=65535)?;
                if port == sip_port {
                    return Err(invalid("pbx.probe_user_port", "must differ from pbx.sip_port"));
                }
                Some((user, port))
            }
            (None, Some(_)) => return Err(invalid("pbx.probe_user_port", "needs pbx.probe_user")),
            (None, None) => None,
        };
        Ok(PbxConfig {
            probe_user,
            probe_tcp: r.probe_tcp.unwrap_or(false),
            probe_vip: r.probe_vip.unwrap_or(false),
            prepare,
            check,
            readiness_interval,
            command,
            args: r.args.unwrap_or_default(),
            user,
            uid,
            gid,
            env,
            working_dir,
            mount_point,
            public_address: r.public_address,
            stop_signal,
            sip_port,
            memory_max,
            cpu_max_percent,
            timing,
        })
    }
}

/// The system's accounts. Read directly, not through NSS: the supervisor
/// is a static binary, and glibc's static getpwnam would load NSS modules
/// (it crashed in the tests); the appliance has only these files anyway.
const PASSWD: &str = "/etc/passwd";
/// The system's groups.
const GROUP: &str = "/etc/group";

/// The entry named `name` in a colon-separated account file, through
/// `pick` (fields split on ':'); `Ok(None)` if there is none (or its ids
/// do not parse).
fn lookup<T>(file: &str, name: &str, pick: impl Fn(&[&str]) -> Option<T>) -> std::io::Result<Option<T>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| pick(&f)))
}

/// A regular file with an execute bit.
/// A command line whose program is an absolute path to an executable file.
fn program_argv(argv: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
    let program = argv.first().ok_or_else(|| invalid(field, "must name a program"))?;
    let program = absolute(PathBuf::from(program), field)?;
    executable(&program).map_err(|_| invalid(field, format!("{} is not an executable file", program.display())))?;
    Ok(argv)
}

fn executable(path: &std::path::Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| invalid("pbx.command", format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid("pbx.command", format!("{} is not an executable file", path.display())));
    }
    Ok(())
}

/// "TERM", "SIGTERM", "term" -> SIGTERM; only signals that ask a process to
/// stop (SIGKILL is what follows the timeout, not a stop signal).
fn signal(s: &str) -> Result<Signal, ConfigError> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    match name.parse::<Signal>() {
        Ok(
            sig @ (Signal::SIGTERM
            | Signal::SIGINT
            | Signal::SIGQUIT
            | Signal::SIGHUP
            | Signal::SIGUSR1
            | Signal::SIGUSR2),
        ) => Ok(sig),
        Ok(other) => Err(invalid(
            "pbx.stop_signal",
            format!("{other} cannot ask a process to stop; use TERM, INT, QUIT, HUP, USR1 or USR2"),
        )),
        Err(_) => Err(invalid("pbx.stop_signal", format!("no such signal {s:?}"))),
    }
}

fn timing(r: &RawPbx) -> Result<PbxTiming, ConfigError> {
    let mut t = PbxTiming::default();
    let ms = |v: Option<i64>, field: &str, into: &mut Duration| -> Result<(), ConfigError> {
        if let Some(v) = v {
            *into = Duration::from_millis(int_in(v, field, 0..=i64::from(u32::MAX))?);
        }
        Ok(())
    };
    ms(r.probe_interval_ms, "pbx.probe_interval_ms", &mut t.probe_interval)?;
    ms(r.probe_timeout_ms, "pbx.probe_timeout_ms", &mut t.probe_timeout)?;
    ms(r.start_grace_ms, "pbx.start_grace_ms", &mut t.start_grace)?;
    ms(r.backoff_first_ms, "pbx.backoff_first_ms", &mut t.backoff_first)?;
    ms(r.backoff_max_ms, "pbx.backoff_max_ms", &mut t.backoff_max)?;
    ms(r.stop_timeout_ms, "pbx.stop_timeout_ms", &mut t.stop_timeout)?;
    ms(r.kill_timeout_ms, "pbx.kill_timeout_ms", &mut t.kill_timeout)?;
    if let Some(v) = r.failure_window_s {
        t.failure_window = Duration::from_secs(int_in(v, "pbx.failure_window_s", 0..=i64::from(u32::MAX))?);
    }
    if let Some(v) = r.probe_failures {
        t.probe_failures = int_in(v, "pbx.probe_failures", 0..=1000)?;
    }
    if let Some(v) = r.failures_to_hand_over {
        t.failures_to_hand_over = int_in(v, "pbx.failures_to_hand_over", 0..=1000)?;
    }
    // The state machine names its fields as `pbx.probe_timeout` etc.; the
    // file's keys carry their unit.
    t.validate().map_err(|e| invalid("pbx", e.to_string()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(extra: &str) -> Result<PbxConfig, ConfigError> {
        let text = format!("command = \"/bin/sh\"\nuser = \"nobody\"\n{extra}");
        let raw: RawPbx = toml::from_str(&text).map_err(|source| ConfigError::Syntax { source })?;
        PbxConfig::try_from(raw)
    }

    fn field_of(r: Result<PbxConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { field, rule }) => format!("{field}: {rule}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_table_takes_the_defaults() {
        let c = raw("").unwrap();
        assert_eq!(c.command, PathBuf::from("/bin/sh"));
        assert_eq!(c.user, "nobody");
        assert!(!c.uid.is_root());
        assert_eq!(c.stop_signal, Signal::SIGTERM);
        assert_eq!(c.sip_port, 5060);
        assert_eq!(c.mount_point, PathBuf::from(DEFAULT_MOUNT_POINT));
        assert_eq!(c.working_dir, c.mount_point);
        assert_eq!(c.timing, PbxTiming::default());
        assert_eq!((c.memory_max, c.cpu_max_percent), (None, None));
        assert_eq!((c.check, c.readiness_interval, c.probe_tcp), (None, DEFAULT_READINESS_INTERVAL, false));
        assert_eq!((c.probe_vip, c.prepare, c.probe_user), (false, None, None));
    }

    #[test]
    fn every_setting_is_read() {
        let c = raw("args = [\"-DD\", \"-E\"]\ngroup = \"nogroup\"\nenv = { LANG = \"C\" }\nworking_dir = \"/tmp\"\n\
             mount_point = \"/tmp\"\npublic_address = \"203.0.113.7\"\nstop_signal = \"INT\"\nsip_port = 5070\n\
             memory_max_mib = 256\ncpu_max_percent = 50\nprobe_interval_ms = 2000\nprobe_timeout_ms = 300\n\
             probe_failures = 2\nstart_grace_ms = 8000\nbackoff_first_ms = 100\nbackoff_max_ms = 5000\n\
             stop_timeout_ms = 3000\nkill_timeout_ms = 2000\nfailure_window_s = 120\nfailures_to_hand_over = 4\n\
             check = [\"/bin/sh\", \"-c\", \"true\"]\nreadiness_interval_s = 10\nprobe_tcp = true\n\
             probe_vip = true\nprepare = [\"/bin/true\"]\nprobe_user = \"triad-probe\"\nprobe_user_port = 5098\n")
        .unwrap();
        assert_eq!(c.args, ["-DD", "-E"]);
        let nogroup = std::fs::read_to_string(GROUP).unwrap();
        let nogroup = nogroup.lines().find(|l| l.starts_with("nogroup:")).unwrap().split(':').nth(2).unwrap();
        assert_eq!(c.gid, Gid::from_raw(nogroup.parse().unwrap()));
        assert_eq!(c.env.get("LANG").map(String::as_str), Some("C"));
        assert_eq!(c.stop_signal, Signal::SIGINT);
        assert_eq!(c.sip_port, 5070);
        assert_eq!(c.memory_max, Some(256 << 20));
        assert_eq!(c.cpu_max_percent, Some(50));
        assert_eq!(c.public_address.as_deref(), Some("203.0.113.7"));
        let t = c.timing;
        assert_eq!(
            (t.probe_interval, t.probe_timeout, t.probe_failures),
            (Duration::from_secs(2), Duration::from_millis(300), 2)
        );
        assert_eq!((t.failure_window, t.failures_to_hand_over), (Duration::from_secs(120), 4));
        assert_eq!(c.check, Some(vec!["/bin/sh".to_string(), "-c".into(), "true".into()]));
        assert_eq!(c.readiness_interval, Duration::from_secs(10));
        assert!(c.probe_tcp && c.probe_vip);
        assert_eq!(c.prepare, Some(vec!["/bin/true".to_string()]));
        assert_eq!(c.probe_user, Some(("triad-probe".to_string(), 5098)));
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let plain = std::env::temp_dir().join(format!("triad-pbx-not-executable-{}", std::process::id()));
        std::fs::write(&plain, b"not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let not_exec = format!("command = \"{}\"", plain.display());
        let not_exec_want = format!("pbx.command: {} is not an executable file", plain.display());
        let cases: [(&str, &str); 20] = [
            ("probe_user = \"a b\"", "pbx.probe_user: must be a SIP user name"),
            ("probe_user = \"p\"\nprobe_user_port = 5060", "pbx.probe_user_port: must differ from pbx.sip_port"),
            ("probe_user_port = 5099", "pbx.probe_user_port: needs pbx.probe_user"),
            ("prepare = [\"sqlite3\"]", "pbx.prepare: must be an absolute path"),
            ("check = []", "pbx.check: must name a program"),
            ("check = [\"kamailio\", \"-c\"]", "pbx.check: must be an absolute path"),
            ("check = [\"/nonexistent/kamailio\"]", "pbx.check: /nonexistent/kamailio is not an executable file"),
            ("readiness_interval_s = 0", "pbx.readiness_interval_s: must be 1..=86400, found 0"),
            ("command = \"/nonexistent/pbx\"", "pbx.command: /nonexistent/pbx"),
            (&not_exec, &not_exec_want),
            ("command = \"bin/pbx\"", "pbx.command: must be an absolute path"),
            ("user = \"no-such-user-triad\"", "pbx.user: no such user"),
            ("user = \"root\"", "pbx.user: must not be root"),
            ("group = \"no-such-group-triad\"", "pbx.group: no such group"),
            ("sip_port = 70000", "pbx.sip_port: must be 1..=65535, found 70000"),
            ("mount_point = \"/etc/hostname\"", "pbx.mount_point: /etc/hostname exists and is not a directory"),
            ("stop_signal = \"KILL\"", "pbx.stop_signal: SIGKILL cannot ask a process to stop"),
            ("stop_signal = \"BOGUS\"", "pbx.stop_signal: no such signal"),
            ("env = { TRIAD_VIP = \"x\" }", "pbx.env.TRIAD_VIP: is set by the supervisor"),
            ("probe_timeout_ms = 1000", "pbx: pbx.probe_timeout (1s) must be shorter than pbx.probe_interval (1s)"),
        ];
        for (extra, want) in cases {
            // A later key overrides the minimal one (TOML forbids
            // duplicates, so replace it).
            let text = if extra.starts_with("command") || extra.starts_with("user") {
                let (key, _) = extra.split_once(" = ").unwrap();
                let base = if key == "command" { "user = \"nobody\"" } else { "command = \"/bin/sh\"" };
                format!("{base}\n{extra}\n")
            } else {
                format!("command = \"/bin/sh\"\nuser = \"nobody\"\n{extra}\n")
            };
            let parsed: RawPbx = toml::from_str(&text).unwrap();
            let got = field_of(PbxConfig::try_from(parsed));
            assert!(got.starts_with(want), "{extra}: got {got:?}, want it to start with {want:?}");
        }
        assert!(matches!(raw("sip_prot = 5060"), Err(ConfigError::Syntax { .. })), "typo: unknown key");
        assert!(field_of(raw("probe_failures = 0")).starts_with("pbx: pbx.probe_failures must be more than zero"));
        std::fs::remove_file(&plain).unwrap();
    }
}
