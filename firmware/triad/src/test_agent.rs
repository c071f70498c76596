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
//!   pet, so the hardware watchdog must reset the box.
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
    let mut control = UnixStream::connect(&control_socket).await?;
    control.write_all(request.as_bytes()).await?;
    control.write_all(b"\n").await?;
    let mut answer = String::new();
    BufReader::new(control.take(MAX_LINE)).read_line(&mut answer).await?;
    wr.write_all(answer.as_bytes()).await?;
    wr.shutdown().await
}
