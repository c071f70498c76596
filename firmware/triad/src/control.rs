//! The local control socket behind `triad status`, `switchover`, `standby`.
//!
//! Owns: the unix socket (mode 0600, in a 0700 directory it creates if
//! missing; a stale socket file from a crashed run is removed, a live one is
//! refused), the line protocol (one JSON request line, one JSON response
//! line, then close), the status report's JSON schema
//! (docs/status-schema.md), and the client side used by the CLI.
//!
//! ```text
//! client --{"cmd":"status"}\n--> conn task --ControlRequest--> runtime loop
//! client <--{"ok":true,...}\n--- conn task <--oneshot Response-- runtime loop
//! ```
//!
//! Must not: act on a request itself (the runtime loop owns all state and
//! answers through the oneshot), block the runtime loop on a slow client
//! (each connection has its own task and timeouts), or let a malformed
//! request do anything but earn an error response.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, warn};
use triad_core::{Epoch, NodeId, Position, Role, Status, VipPhase};

/// Version of the [`StatusReport`] JSON schema. Bump on any incompatible
/// change (removing or retyping a field); adding fields is compatible.
pub const STATUS_SCHEMA: u32 = 1;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4 * 1024;
/// Longest response line the client accepts.
const MAX_RESPONSE: u64 = 1024 * 1024;
/// A client must send its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The runtime must answer within this time (it answers between events).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control socket or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another supervisor answers on the socket.
    #[error("control socket {path} is in use by a running supervisor")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path; not removed.
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file-system or socket operation failed.
    #[error("control socket {path}: cannot {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor did not answer in time.
    #[error("control socket {path}: no answer within {secs} s")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The limit.
        secs: u64,
    },
    /// The supervisor closed the connection without answering.
    #[error("control socket {path}: closed without an answer")]
    NoAnswer {
        /// The socket.
        path: PathBuf,
    },
    /// The answer is not a valid response.
    #[error("control socket {path}: malformed answer")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A request or response could not be encoded.
    #[error("cannot encode control message")]
    Encode(#[source] serde_json::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ControlError + 'a {
    move |source| ControlError::Io { op, path: path.to_owned(), source }
}

// ---------------------------------------------------------------------------
// Protocol types.

/// A request line: `{"cmd":"status"}`, `{"cmd":"switchover","to":2}` (`to`
/// optional), `{"cmd":"standby","on":true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", try_from = "RawRequest")]
pub enum Request {
    /// The status report.
    Status,
    /// Move the active role (to the best peer when `to` is absent).
    Switchover {
        /// The chosen peer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<NodeId>,
    },
    /// Online verify of the replicated volume (active node): compare
    /// region hashes across the three nodes.
    Verify,
    /// Enter or leave standby.
    Standby {
        /// On or off.
        on: bool,
    },
    /// Create the replicated volume's filesystem (cluster creation): the
    /// active node only, and only when its check found no filesystem.
    #[serde(rename = "format-volume")]
    FormatVolume,
    /// Run the failover readiness check now; answered with its verdict.
    #[serde(rename = "check-readiness")]
    CheckReadiness,
    /// Forget the PBX's failures: a node that refused the active role
    /// after repeated failures may take it again.
    #[serde(rename = "clear-pbx-failures")]
    ClearPbxFailures,
    /// The log ring's lines (`crate::logring`), answered by the
    /// connection's task without the runtime loop: logs are most wanted
    /// when the loop is stuck.
    Logs,
}

/// What a request line may hold. serde's internally tagged enums ignore
/// unknown fields on unit variants (`{"cmd":"status","x":1}` would pass), so
/// requests are read flat and checked here, with messages naming the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    cmd: String,
    to: Option<NodeId>,
    on: Option<bool>,
}

impl TryFrom<RawRequest> for Request {
    type Error = String;
    fn try_from(r: RawRequest) -> Result<Request, String> {
        let no_arg = |name: &str, present: bool| {
            if present {
                Err(format!("field `{name}` is not allowed with cmd `{}`", r.cmd))
            } else {
                Ok(())
            }
        };
        match r.cmd.as_str() {
            "status" => {
                no_arg("to", r.to.is_some())?;
                no_arg("on", r.on.is_some())?;
                Ok(Request::Status)
            }
            "switchover" => {
                no_arg("on", r.on.is_some())?;
                Ok(Request::Switchover { to: r.to })
            }
            "standby" => {
                no_arg("to", r.to.is_some())?;
                let on = r.on.ok_or("missing field `on` (true or false) for cmd `standby`")?;
                Ok(Request::Standby { on })
            }
            "verify" => {
                no_arg("to", r.to.is_some())?;
                no_arg("on", r.on.is_some())?;
                Ok(Request::Verify)
            }
            "format-volume" | "check-readiness" | "clear-pbx-failures" | "logs" => {
                no_arg("to", r.to.is_some())?;
                no_arg("on", r.on.is_some())?;
                Ok(match r.cmd.as_str() {
                    "format-volume" => Request::FormatVolume,
                    "check-readiness" => Request::CheckReadiness,
                    "clear-pbx-failures" => Request::ClearPbxFailures,
                    _ => Request::Logs,
                })
            }
            other => Err(format!(
                "unknown cmd `{other}` (expected status, switchover, standby, verify, format-volume, \
                 check-readiness, clear-pbx-failures or logs)"
            )),
        }
    }
}

/// A response line: `{"ok":true,"status":{...}}`, `{"ok":true}` or
/// `{"ok":false,"error":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireResponse", try_from = "WireResponse")]
pub enum Response {
    /// The status report.
    Status(Box<StatusReport>),
    /// The request was carried out.
    Done,
    /// The request was carried out and produced a report (verify).
    Report(serde_json::Value),
    /// The request was refused or malformed; the text says why (the
    /// CLI exits 2: bad input).
    Error(String),
    /// The request was valid but carrying it out failed (the supervisor
    /// or its volume thread is gone, stuck or shutting down; the CLI exits
    /// 1: a runtime failure).
    Failed(String),
}

/// The flat wire shape of [`Response`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Box<StatusReport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report: Option<serde_json::Value>,
    /// With `ok: false`: the error is a failure to carry out a valid
    /// request, not a refusal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    failed: bool,
}

impl From<Response> for WireResponse {
    fn from(r: Response) -> WireResponse {
        let failed = matches!(r, Response::Failed(_));
        let (ok, status, error, report) = match r {
            Response::Status(s) => (true, Some(s), None, None),
            Response::Done => (true, None, None, None),
            Response::Report(v) => (true, None, None, Some(v)),
            Response::Error(e) | Response::Failed(e) => (false, None, Some(e), None),
        };
        WireResponse { ok, status, error, report, failed }
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = String;
    fn try_from(w: WireResponse) -> Result<Response, String> {
        match (w.ok, w.status, w.error, w.report) {
            (true, Some(s), None, None) if !w.failed => Ok(Response::Status(s)),
            (true, None, None, None) if !w.failed => Ok(Response::Done),
            (true, None, None, Some(v)) if !w.failed => Ok(Response::Report(v)),
            (false, None, Some(e), None) if w.failed => Ok(Response::Failed(e)),
            (false, None, Some(e), None) => Ok(Response::Error(e)),
            _ => Err("response must be ok with optional status, or not ok with an error".into()),
        }
    }
}

/// A request handed to the runtime loop, with the channel for its answer.
#[derive(Debug)]
pub struct ControlRequest {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The status report (schema in docs/status-schema.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    /// This node.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its epoch.
    pub epoch: Epoch,
    /// The leader it follows or is, if known.
    pub leader: Option<NodeId>,
    /// Lease left (leader only; 0 otherwise).
    pub lease_remaining_ms: u64,
    /// The VIP as seen from this node.
    pub vip: VipReport,
    /// Standby mode.
    pub standby: bool,
    /// This node's data position.
    pub position: Position,
    /// One entry per peer.
    pub peers: Vec<PeerReport>,
    /// Fields the runtime adds beyond the core's view; clients show them
    /// as they are and must ignore what they do not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `vip` in the status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipReport {
    /// The VIP in CIDR form.
    pub address: String,
    /// On this node.
    pub held: bool,
    /// VIP state machine phase.
    pub phase: VipPhase,
    /// MAC of another host seen answering for the VIP (`aa:bb:..`).
    pub conflict_mac: Option<String>,
}

/// One entry of `peers` in the status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer.
    pub node_id: NodeId,
    /// Its configured address, or "unknown".
    pub address: String,
    /// Heard from within the peer timeout.
    pub reachable: bool,
    /// Milliseconds since last heard; null if never.
    pub last_heard_ms: Option<u64>,
    /// It last said it is in standby.
    #[serde(default)]
    pub standby: bool,
    /// It last said its failover readiness check passes (a switchover
    /// target must be ready).
    #[serde(default)]
    pub ready: bool,
}

impl StatusReport {
    /// Builds the report from the core's status and the configured
    /// addresses (`peer_addrs` maps peer id to address).
    pub fn from_core(status: &Status, vip_addr: String, peer_addrs: &[(NodeId, String)]) -> StatusReport {
        let peers = status
            .peers
            .iter()
            .map(|p| PeerReport {
                node_id: p.node_id,
                address: peer_addrs
                    .iter()
                    .find(|(id, _)| *id == p.node_id)
                    .map_or_else(|| "unknown".to_string(), |(_, a)| a.clone()),
                reachable: p.reachable,
                last_heard_ms: p.last_heard_ms,
                standby: p.standby,
                ready: p.ready,
            })
            .collect();
        StatusReport {
            schema: STATUS_SCHEMA,
            node_id: status.node_id,
            role: status.role,
            epoch: status.epoch,
            leader: status.leader,
            lease_remaining_ms: status.lease_remaining_ms,
            vip: VipReport {
                address: vip_addr,
                held: status.vip_held,
                phase: status.vip_phase,
                conflict_mac: status.vip_conflict.map(|m| format_mac(&m)),
            },
            standby: status.standby,
            position: status.position,
            peers,
            extra: BTreeMap::new(),
        }
    }
}

fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

fn phase_name(p: VipPhase) -> &'static str {
    match p {
        VipPhase::Released => "released",
        VipPhase::Claiming => "claiming",
        VipPhase::Held => "held",
        VipPhase::Releasing => "releasing",
    }
}

/// The report as text for an operator's terminal.
pub fn render_status_human(r: &StatusReport) -> String {
    let mut s = String::new();
    let leader = r.leader.map_or_else(|| "none".to_string(), |l| format!("node {l}"));
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(s, "node {}: {} in epoch {} (leader: {leader})", r.node_id, role_name(r.role), r.epoch);
    if r.role == Role::Leader {
        let _ = writeln!(s, "lease:    {} ms left", r.lease_remaining_ms);
    }
    let _ = writeln!(
        s,
        "vip:      {} {} ({})",
        r.vip.address,
        if r.vip.held { "held here" } else { "not here" },
        phase_name(r.vip.phase)
    );
    if let Some(mac) = &r.vip.conflict_mac {
        let _ = writeln!(s, "          CONFLICT: {mac} also answers for the VIP");
    }
    let _ = writeln!(s, "standby:  {}", if r.standby { "yes" } else { "no" });
    let _ = writeln!(s, "position: epoch {} seq {}", r.position.epoch, r.position.seq);
    let _ = writeln!(s, "peers:");
    for p in &r.peers {
        let heard = p.last_heard_ms.map_or_else(|| "never heard".to_string(), |ms| format!("heard {ms} ms ago"));
        let _ = writeln!(
            s,
            "  node {} {:<24} {:<11} {heard}",
            p.node_id,
            p.address,
            if p.reachable { "reachable" } else { "UNREACHABLE" }
        );
    }
    for (k, v) in &r.extra {
        let _ = writeln!(s, "{k}: {v}");
    }
    s
}

// ---------------------------------------------------------------------------
// Server.

/// The bound control socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket at `path` (mode 0600). Creates the parent directory
    /// (0700) if missing, removes a stale socket left by a dead supervisor,
    /// and refuses a live one or a non-socket file. Must run inside a tokio
    /// runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<ControlServer, ControlError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                // 0700 closes the window between bind and chmod below: no
                // one else can reach the socket through the directory.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err("create directory of", &path))?;
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A socket someone answers on belongs to a live supervisor.
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(ControlError::InUse { path });
                }
                std::fs::remove_file(&path).map_err(io_err("remove stale", &path))?;
            }
            Ok(_) => return Err(ControlError::NotASocket { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io_err("bind", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set mode 0600 on", &path))?;
        Ok(ControlServer { listener, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections forever, forwarding each request to `tx`.
    /// Returns when the receiver is dropped.
    pub async fn run(self, tx: mpsc::Sender<ControlRequest>) {
        loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_conn(stream, tx.clone()));
                    }
                    Err(e) => {
                        warn!(path = %self.path.display(), error = %e, "control accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = tx.closed() => return,
            }
        }
    }

    /// Spawns [`ControlServer::run`] and returns the requests' receiver.
    pub fn spawn(self) -> mpsc::Receiver<ControlRequest> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.run(tx));
        rx
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket at `path` and serves it in a task; requests arrive on
/// the returned receiver. Must run inside a tokio runtime.
pub fn serve(path: impl AsRef<Path>) -> Result<mpsc::Receiver<ControlRequest>, ControlError> {
    Ok(ControlServer::bind(path)?.spawn())
}

/// Parses one request line; the error text says what was wrong.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))
}

async fn serve_conn(stream: UnixStream, tx: mpsc::Sender<ControlRequest>) {
    let (rd, mut wr) = stream.into_split();
    let mut line = Vec::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST + 1);
    let response = match timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await {
        Err(_) => Response::Error("no request line within 5 s".into()),
        Ok(Err(e)) => {
            debug!(error = %e, "control read failed");
            return;
        }
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => {
            Response::Error(format!("request longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match parse_request(&line) {
            Err(e) => Response::Error(e),
            Ok(Request::Logs) => logs_response(),
            Ok(request) => ask_runtime(request, &tx).await,
        },
    };
    let mut out = match serde_json::to_vec(&response) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "cannot encode control response");
            return;
        }
    };
    out.push(b'\n');
    if let Err(e) = wr.write_all(&out).await {
        debug!(error = %e, "control client went away");
    }
}

/// The answer to `logs`: the process's ring, `{"lines":[..],"dropped":N}`.
pub fn logs_response() -> Response {
    match serde_json::to_value(crate::logring::global().snapshot()) {
        Ok(v) => Response::Report(v),
        Err(e) => Response::Failed(format!("cannot encode the log lines: {e}")),
    }
}

async fn ask_runtime(request: Request, tx: &mpsc::Sender<ControlRequest>) -> Response {
    let (reply, answer) = oneshot::channel();
    if tx.send(ControlRequest { request, reply }).await.is_err() {
        return Response::Failed("supervisor is shutting down".into());
    }
    match timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Response::Failed("supervisor dropped the request".into()),
        Err(_) => Response::Failed("supervisor did not answer in time".into()),
    }
}

// ---------------------------------------------------------------------------
// Client.

/// Sends one request to the supervisor at `path` and returns its answer.
pub async fn request(path: impl AsRef<Path>, req: &Request) -> Result<Response, ControlError> {
    let path = path.as_ref();
    let limit = REQUEST_TIMEOUT + ANSWER_TIMEOUT;
    timeout(limit, request_inner(path, req))
        .await
        .map_err(|_| ControlError::Timeout { path: path.to_owned(), secs: limit.as_secs() })?
}

async fn request_inner(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let mut line = serde_json::to_vec(req).map_err(ControlError::Encode)?;
    line.push(b'\n');
    let stream = UnixStream::connect(path).await.map_err(io_err("connect to", path))?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(&line).await.map_err(io_err("write to", path))?;
    let mut answer = Vec::new();
    BufReader::new(rd).take(MAX_RESPONSE).read_until(b'\n', &mut answer).await.map_err(io_err("read from", path))?;
    if answer.is_empty() {
        return Err(ControlError::NoAnswer { path: path.to_owned() });
    }
    serde_json::from_slice(&answer).map_err(|source| ControlError::BadAnswer { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs::tests::TempDir;
    use triad_core::PeerStatus;

    fn status() -> Status {
        Status {
            node_id: 1,
            role: Role::Leader,
            epoch: 7,
            leader: Some(1),
            lease_remaining_ms: 300,
            vip_held: true,
            vip_phase: VipPhase::Held,
            standby: false,
            ready: true,
            position: Position { epoch: 7, seq: 12 },
            vip_conflict: Some([0xde, 0xad, 0xbe, 0xef, 0, 1]),
            peers: vec![
                PeerStatus {
                    node_id: 2,
                    reachable: true,
                    last_heard_ms: Some(12),
                    position: None,
                    standby: false,
                    ready: true,
                },
                PeerStatus {
                    node_id: 3,
                    reachable: false,
                    last_heard_ms: None,
                    position: None,
                    standby: false,
                    ready: false,
                },
            ],
        }
    }

    fn report() -> StatusReport {
        StatusReport::from_core(
            &status(),
            "10.77.0.100/24".into(),
            &[(2, "10.77.0.12".into()), (3, "10.77.0.13".into())],
        )
    }

    /// Answers every request like a runtime would, echoing what it got.
    fn fake_runtime(mut rx: mpsc::Receiver<ControlRequest>) {
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let answer = match r.request {
                    Request::Status => Response::Status(Box::new(report())),
                    Request::Switchover { to: Some(9) } => Response::Error("node 9 is not a peer".into()),
                    Request::Switchover { .. } | Request::Standby { .. } => Response::Done,
                    Request::Verify => Response::Report(serde_json::json!({"differing": []})),
                    Request::FormatVolume => Response::Error("not the active node".into()),
                    Request::CheckReadiness => Response::Report(serde_json::json!({"ready": true, "problems": []})),
                    Request::ClearPbxFailures => Response::Done,
                    Request::Logs => Response::Failed("logs never reach the runtime loop".into()),
                };
                let _ = r.reply.send(answer);
            }
        });
    }

    async fn raw(path: &Path, line: &[u8]) -> serde_json::Value {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(line).await.unwrap();
        let mut out = String::new();
        BufReader::new(s).read_line(&mut out).await.unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[tokio::test]
    async fn round_trip_over_a_real_socket() {
        let d = TempDir::new("control");
        let path = d.0.join("run/triad/control.sock");
        fake_runtime(serve(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let r = request(&path, &Request::Status).await.unwrap();
        assert_eq!(r, Response::Status(Box::new(report())));
        assert_eq!(request(&path, &Request::Standby { on: true }).await.unwrap(), Response::Done);
        assert_eq!(request(&path, &Request::Switchover { to: None }).await.unwrap(), Response::Done);
        assert_eq!(
            request(&path, &Request::Switchover { to: Some(9) }).await.unwrap(),
            Response::Error("node 9 is not a peer".into())
        );

        // The wire shape is the documented one.
        let v = raw(&path, b"{\"cmd\":\"status\"}\n").await;
        assert_eq!(v["ok"], true);
        assert_eq!(v["status"]["schema"], 1);
        assert_eq!(v["status"]["role"], "leader");
        assert_eq!(v["status"]["vip"]["phase"], "held");
        assert_eq!(v["status"]["vip"]["conflict_mac"], "de:ad:be:ef:00:01");
        assert_eq!(v["status"]["position"]["seq"], 12);
        assert_eq!(v["status"]["peers"][1]["last_heard_ms"], serde_json::Value::Null);
        assert_eq!(raw(&path, b"{\"cmd\":\"switchover\",\"to\":2}\n").await, serde_json::json!({"ok": true}));
    }

    #[tokio::test]
    async fn malformed_requests_get_named_errors() {
        let d = TempDir::new("control-bad");
        let path = d.0.join("control.sock");
        fake_runtime(serve(&path).unwrap());
        for (line, want) in [
            (&b"{\"cmd\":\"reboot\"}\n"[..], "unknown cmd `reboot`"),
            (b"{\"cmd\":\"status\",\"on\":true}\n", "field `on` is not allowed"),
            (b"{\"cmd\":\"switchover\",\"to\":300}\n", "300"),
            (b"{\"cmd\":\"standby\"}\n", "missing field `on`"),
            (b"{\"cmd\":\"standby\",\"on\":\"yes\"}\n", "expected a boolean"),
            (b"{\"cmd\":\"status\",\"x\":1}\n", "unknown field `x`"),
            (b"{\"to\":2}\n", "missing field `cmd`"),
            (b"not json\n", "malformed request"),
        ] {
            let v = raw(&path, line).await;
            assert_eq!(v["ok"], false, "{v}");
            let e = v["error"].as_str().unwrap();
            assert!(e.contains(want), "{e} should contain {want}");
        }
        let mut long = vec![b' '; 10_000];
        long.push(b'\n');
        let v = raw(&path, &long).await;
        assert!(v["error"].as_str().unwrap().contains("longer than"));
    }

    #[tokio::test]
    async fn logs_are_answered_while_the_loop_does_not_answer() {
        let d = TempDir::new("control-logs");
        let path = d.0.join("control.sock");
        // A runtime loop that never reads its requests (stuck).
        let _stuck = serve(&path).unwrap();
        crate::logring::global().push("a line only this test logs");
        match request(&path, &Request::Logs).await.unwrap() {
            Response::Report(v) => {
                let snap: crate::logring::Snapshot = serde_json::from_value(v).unwrap();
                assert!(snap.lines.iter().any(|l| l == "a line only this test logs"), "{snap:?}");
            }
            other => panic!("expected the log lines, got {other:?}"),
        }
        let v = raw(&path, b"{\"cmd\":\"logs\",\"to\":1}\n").await;
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("field `to` is not allowed with cmd `logs`"), "{e}");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_refused() {
        let d = TempDir::new("control-stale");
        let path = d.0.join("control.sock");
        // A socket file nobody listens on, as a crashed run leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ControlServer::bind(&path).unwrap();
        assert!(matches!(ControlServer::bind(&path), Err(ControlError::InUse { .. })));
        drop(server);
        assert!(!path.exists());
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(ControlServer::bind(&path), Err(ControlError::NotASocket { .. })));
    }

    #[tokio::test]
    async fn client_reports_missing_supervisor() {
        let d = TempDir::new("control-none");
        let e = request(d.0.join("nothing.sock"), &Request::Status).await.unwrap_err();
        assert!(matches!(e, ControlError::Io { op: "connect to", .. }), "{e}");
    }

    #[test]
    fn refusals_and_failures_stay_apart_on_the_wire() {
        for r in [Response::Error("node 9 is not a peer".into()), Response::Failed("the volume thread is gone".into())]
        {
            let line = serde_json::to_string(&WireResponse::from(r.clone())).expect("encode");
            let back: WireResponse = serde_json::from_str(&line).expect("decode");
            let back = Response::try_from(back).expect("valid");
            assert_eq!(format!("{back:?}"), format!("{r:?}"), "{line}");
        }
        // An older supervisor's error (no `failed` field) is a refusal.
        let old: WireResponse = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).expect("decode");
        assert!(matches!(Response::try_from(old), Ok(Response::Error(_))));
        let bad: WireResponse = serde_json::from_str(r#"{"ok":true,"failed":true}"#).expect("decode");
        assert!(Response::try_from(bad).is_err(), "ok and failed at once is malformed");
    }

    #[test]
    fn human_rendering_and_extra_fields() {
        let mut r = report();
        r.extra.insert("pbx".into(), serde_json::json!({"healthy": true}));
        let text = render_status_human(&r);
        assert!(text.contains("node 1: leader in epoch 7 (leader: node 1)"), "{text}");
        assert!(text.contains("CONFLICT: de:ad:be:ef:00:01"), "{text}");
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert!(text.contains("pbx: {\"healthy\":true}"), "{text}");
        // Extra fields sit at the top level and survive a round trip.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pbx"]["healthy"], true);
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
