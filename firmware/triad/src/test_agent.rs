//! The debug image's test agent (cargo feature `test-agent`; never in a
//! production build): a TCP port on the node's own address through which
//! the hardware tests (hwtests/) reach an appliance that has no shell.
//!
//! One line per connection, then close:
//! - a control request, e.g. `{"cmd":"format-volume"}`: relayed as it is
//!   to the node's control socket (the same line protocol as `triad
//!   status`, `control.rs`) and its one-line answer relayed back;
//! - `hang`: blocks the supervisor's event loop for good, the "hung
//!   supervisor" of issue 12: no heartbeat, no lease renewal, no watchdog
//!   pet, so the hardware watchdog must reset the box;
//! - `write PATH TEXT`: writes TEXT to the file PATH (absolute, no `..`),
//!   fsyncs it and its directory, then answers `ok`: an acknowledged write
//!   through the filesystem on the replicated volume;
//! - `read PATH`: answers `ok ` and the file's text, or `error ...`.
//!
//! Must not: exist in the production image (the feature is off by
//! default and only `image/build.sh --variant debug` turns it on), or
//! accept anything but one short line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixStream};
use tokio::time::timeout;
use tracing::{error, info, warn};

/// The agent's TCP port on the node's address.
pub const PORT: u16 = 7199;
/// Longest line read from the test, and from the control socket.
const MAX_LINE: u64 = 1024 * 1024;
/// How long one exchange may take.
const EXCHANGE: Duration = Duration::from_secs(15);

/// Listens on `addr`:[`PORT`] and serves each connection in its own task.
pub async fn spawn(addr: IpAddr, control_socket: PathBuf) {
    let at = SocketAddr::new(addr, PORT);
    let listener = match TcpListener::bind(at).await {
        Ok(l) => l,
        Err(e) => return error!(%at, error = %e, "test agent: cannot listen"),
    };
    warn!(%at, "test agent listening (debug image only)");
    tokio::spawn(async move {
        loop {
            let Ok((conn, from)) = listener.accept().await else { continue };
            let control_socket = control_socket.clone();
            tokio::spawn(async move {
                if let Err(e) = timeout(EXCHANGE, serve(conn, control_socket)).await.unwrap_or_else(|_| {
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "exchange took too long"))
                }) {
                    info!(%from, error = %e, "test agent: exchange failed");
                }
            });
        }
    });
}

async fn serve(conn: tokio::net::TcpStream, control_socket: PathBuf) -> std::io::Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(MAX_LINE)).read_line(&mut line).await?;
    let request = line.trim();
    if request == "hang" {
        warn!("test agent: hanging the event loop for good (the watchdog must reset this box)");
        // Blocks the current-thread runtime: every task of the supervisor
        // stops, the watchdog thread's pets included (they are commands of
        // the host, which no longer runs).
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    // File I/O on a blocking thread: the file may be on the filesystem
    // this very process serves over NBD, so an fsync on the event loop's
    // thread would wait on the loop itself.
    if let Some(rest) = request.strip_prefix("write ") {
        let rest = rest.to_string();
        let answer = tokio::task::spawn_blocking(move || match rest.split_once(' ') {
            Some((path, text)) => file_write(path, text),
            None => Err("write PATH TEXT".into()),
        })
        .await
        .unwrap_or_else(|e| Err(format!("write: {e}")));
        return reply(&mut wr, answer.map(|()| String::new())).await;
    }
    if let Some(path) = request.strip_prefix("read ") {
        let path = path.to_string();
        let answer =
            tokio::task::spawn_blocking(move || file_read(&path)).await.unwrap_or_else(|e| Err(format!("read: {e}")));
        return reply(&mut wr, answer).await;
    }
    let mut control = UnixStream::connect(&control_socket).await?;
    control.write_all(request.as_bytes()).await?;
    control.write_all(b"\n").await?;
    let mut answer = String::new();
    BufReader::new(control.take(MAX_LINE)).read_line(&mut answer).await?;
    wr.write_all(answer.as_bytes()).await?;
    wr.shutdown().await
}

async fn reply(wr: &mut tokio::net::tcp::OwnedWriteHalf, answer: Result<String, String>) -> std::io::Result<()> {
    let line = match answer {
        Ok(text) => format!("ok {text}\n"),
        Err(e) => format!("error {e}\n"),
    };
    wr.write_all(line.as_bytes()).await?;
    wr.shutdown().await
}

/// An absolute path without `..`.
fn checked(path: &str) -> Result<&std::path::Path, String> {
    let p = std::path::Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{path:?}: an absolute path without .. is needed"));
    }
    Ok(p)
}

/// Blocking: call on a blocking thread.
fn file_write(path: &str, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let p = checked(path)?;
    let mut f = std::fs::File::create(p).map_err(|e| format!("create {path}: {e}"))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {path}: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync {path}: {e}"))?;
    let dir = p.parent().ok_or_else(|| format!("{path}: no directory"))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("fsync {}: {e}", dir.display()))?;
    info!(path, bytes = text.len(), "test agent: file written and synced");
    Ok(())
}

fn file_read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(checked(path)?).map_err(|e| format!("read {path}: {e}"))
}
