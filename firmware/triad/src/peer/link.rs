//! Peer links: one outgoing connection per peer, one accept loop.
//!
//! ```text
//!  runtime --send()--> [bounded queue per peer] --> outgoing task --TLS--> peer's listener
//!  runtime <--mpsc---- inbound conn task <--TLS-- peer's outgoing task
//!  (data links: volume thread's queue <-- inbound conn task, no channel between)
//! ```
//!
//! Each direction has its own connection: a node writes only on the
//! connections it opened and reads only on those it accepted, so there is
//! no tie-breaking between simultaneous dials.
//!
//! Outgoing task states: `connecting` (TCP connect with a short timeout,
//! then the TLS handshake with a timeout) → `up` (drain the queue onto the
//! wire; watch the read side for the peer closing) → back to `connecting`
//! after a short, capped backoff. The backoff is short on purpose: a peer
//! that restarts must be reached within a fraction of a second, and a
//! refused connect costs nothing.
//!
//! Generic over the message type `M` ([`WireMessage`]): the core's
//! heartbeats and the volume's bulk replication each run their own
//! `PeerLinks` on their own port, so a megabyte in flight on one never
//! delays a heartbeat on the other. Frames are coalesced into writes of at
//! most 64 KiB and larger ones are written in 64 KiB pieces, each under the
//! write timeout.
//!
//! Owns: connections, timeouts, identity checks at the link (the client
//! certificate must name one of this node's two peers; a message that
//! names its sender, [`WireMessage::claimed_sender`], must name that
//! peer), and logging of refusals.
//!
//! Must not: block the caller of [`PeerLinks::send`] (heartbeats are best
//! effort: a full queue or a down link drops the message), deliver a message
//! whose sender is not the authenticated peer, or let a bad connection
//! affect any other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};
use triad_core::{Message, NodeId};

use super::frame::{self, Decoded, Decoder, FrameError, WireMessage};
use super::tls::{peer_node_id, server_name};

/// Timeouts and backoff of the links.
#[derive(Debug, Clone)]
pub struct LinkTiming {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// TLS handshake timeout, both directions.
    pub handshake_timeout: Duration,
    /// A write of one piece (at most 64 KiB) or a flush that takes longer
    /// means the peer is stuck: reconnect. Per piece, so a large frame on
    /// a slow but moving link is not mistaken for a stuck peer.
    pub write_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// An inbound connection silent this long is closed. On the core's
    /// links peers send every heartbeat interval, so silence means a dead
    /// or half-open connection. `None` for links that may rightly stay
    /// silent (the data links between two followers): TCP keepalive,
    /// on every link, finds a dead peer there ([`TCP_KEEPALIVE`]).
    pub idle_timeout: Option<Duration>,
}

impl Default for LinkTiming {
    fn default() -> Self {
        LinkTiming {
            connect_timeout: Duration::from_millis(200),
            handshake_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            idle_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// What the links need to start.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This node.
    pub own_id: NodeId,
    /// The peers and where to reach them.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Server side TLS (demands CA-signed client certs).
    pub server: Arc<ServerConfig>,
    /// Client side TLS (verifies the peer against the CA).
    pub client: Arc<ClientConfig>,
    /// Timeouts.
    pub timing: LinkTiming,
    /// Frames queued per peer before new ones are dropped. The default
    /// suits heartbeats; a bulk link sets its own, knowing the memory it
    /// may hold is up to `queue_len` × the frame size per peer.
    pub queue_len: usize,
    /// Inbound messages buffered for the runtime before readers wait (and
    /// TCP pushes back on the sender). Bounds memory the same way.
    pub inbound_len: usize,
    /// Inbound connections served at once; more are closed at accept.
    pub max_inbound: usize,
}

impl LinkConfig {
    /// A config with default timing and queue sizes.
    pub fn new(
        own_id: NodeId,
        peers: Vec<(NodeId, SocketAddr)>,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> LinkConfig {
        LinkConfig {
            own_id,
            peers,
            server,
            client,
            timing: LinkTiming::default(),
            // ~3 s of heartbeats at 50 ms: enough to ride out a stall, small
            // enough that stale messages are not kept.
            queue_len: 64,
            inbound_len: 256,
            max_inbound: 16,
        }
    }
}

/// Why the links could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no local address.
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    /// A peer id is this node's own, or appears twice.
    #[error("peer list is invalid: {reason}")]
    Peers {
        /// What is wrong.
        reason: String,
    },
}

/// Why a message was not queued. Callers normally ignore this: the core
/// tolerates lost messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not one of the peers.
    #[error("node {0} is not a peer")]
    UnknownPeer(NodeId),
    /// No connection to the peer right now.
    #[error("link to node {0} is down")]
    LinkDown(NodeId),
    /// The peer's queue is full (it or the network is slow).
    #[error("queue to node {0} is full")]
    QueueFull(NodeId),
    /// The message could not be framed.
    #[error("message to node {to} cannot be framed")]
    Frame {
        /// The peer.
        to: NodeId,
        /// Why.
        #[source]
        source: FrameError,
    },
}

#[derive(Debug)]
struct Outgoing {
    id: NodeId,
    tx: mpsc::Sender<Vec<u8>>,
    up: Arc<AtomicBool>,
}

/// Messages received from the peers, each with the authenticated sender.
pub type Inbound<M> = mpsc::Receiver<(NodeId, M)>;

/// Where inbound connections put what they decode: a channel to the
/// runtime loop, or, for the data links, straight into the volume
/// thread's queue (no task in between only to move messages along).
enum Sink<M> {
    Channel(mpsc::Sender<(NodeId, M)>),
    /// Returns false once the receiver is gone.
    Direct(Arc<dyn Fn(NodeId, M) -> bool + Send + Sync>),
}

impl<M> Clone for Sink<M> {
    fn clone(&self) -> Self {
        match self {
            Sink::Channel(tx) => Sink::Channel(tx.clone()),
            Sink::Direct(f) => Sink::Direct(f.clone()),
        }
    }
}

impl<M> Sink<M> {
    /// Hands a message on; false once the receiver is gone.
    async fn deliver(&self, from: NodeId, msg: M) -> bool {
        match self {
            Sink::Channel(tx) => tx.send((from, msg)).await.is_ok(),
            Sink::Direct(f) => f(from, msg),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sink::Channel(tx) => tx.is_closed(),
            Sink::Direct(_) => false,
        }
    }
}

/// Handle to the running links for messages of type `M`. Dropping it
/// stops every link task.
#[derive(Debug)]
pub struct PeerLinks<M = Message> {
    out: Vec<Outgoing>,
    local_addr: SocketAddr,
    tasks: Vec<AbortHandle>,
    _msg: std::marker::PhantomData<fn(M)>,
}

impl<M: WireMessage> PeerLinks<M> {
    /// Binds `listen` and starts the links. Must run inside a tokio runtime.
    pub async fn start(cfg: LinkConfig, listen: SocketAddr) -> Result<(PeerLinks<M>, Inbound<M>), LinkError> {
        let listener = TcpListener::bind(listen).await.map_err(|source| LinkError::Bind { addr: listen, source })?;
        PeerLinks::start_with_listener(cfg, listener)
    }

    /// Starts the links on an already bound listener (tests bind port 0
    /// first to learn the address). Must run inside a tokio runtime.
    pub fn start_with_listener(
        cfg: LinkConfig,
        listener: TcpListener,
    ) -> Result<(PeerLinks<M>, Inbound<M>), LinkError> {
        let (in_tx, in_rx) = mpsc::channel(cfg.inbound_len.max(1));
        let links = PeerLinks::start_sink(cfg, listener, Sink::Channel(in_tx))?;
        Ok((links, in_rx))
    }

    /// Binds `listen` and starts the links; each inbound connection's task
    /// hands what it decodes to `deliver` itself (which must not block),
    /// with no channel or task in between. Must run inside a tokio runtime.
    pub async fn start_direct(
        cfg: LinkConfig,
        listen: SocketAddr,
        deliver: impl Fn(NodeId, M) -> bool + Send + Sync + 'static,
    ) -> Result<PeerLinks<M>, LinkError> {
        let listener = TcpListener::bind(listen).await.map_err(|source| LinkError::Bind { addr: listen, source })?;
        PeerLinks::start_direct_with_listener(cfg, listener, deliver)
    }

    /// [`PeerLinks::start_direct`] on an already bound listener.
    pub fn start_direct_with_listener(
        cfg: LinkConfig,
        listener: TcpListener,
        deliver: impl Fn(NodeId, M) -> bool + Send + Sync + 'static,
    ) -> Result<PeerLinks<M>, LinkError> {
        PeerLinks::start_sink(cfg, listener, Sink::Direct(Arc::new(deliver)))
    }

    fn start_sink(cfg: LinkConfig, listener: TcpListener, sink: Sink<M>) -> Result<PeerLinks<M>, LinkError> {
        let local_addr = listener.local_addr().map_err(LinkError::LocalAddr)?;
        let ids: Vec<NodeId> = cfg.peers.iter().map(|p| p.0).collect();
        for (i, id) in ids.iter().enumerate() {
            if *id == cfg.own_id || ids[..i].contains(id) {
                return Err(LinkError::Peers { reason: format!("node {id} is this node or listed twice") });
            }
        }
        let mut tasks = Vec::new();
        let mut out = Vec::new();
        let connector = TlsConnector::from(cfg.client.clone());
        for &(id, addr) in &cfg.peers {
            let (tx, rx) = mpsc::channel(cfg.queue_len.max(1));
            let up = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(outgoing(id, addr, connector.clone(), cfg.timing.clone(), rx, up.clone()));
            tasks.push(task.abort_handle());
            out.push(Outgoing { id, tx, up });
        }
        let accept = tokio::spawn(accept_loop::<M>(
            listener,
            TlsAcceptor::from(cfg.server.clone()),
            ids,
            sink,
            cfg.timing.clone(),
            Arc::new(Semaphore::new(cfg.max_inbound.max(1))),
        ));
        tasks.push(accept.abort_handle());
        Ok(PeerLinks { out, local_addr, tasks, _msg: std::marker::PhantomData })
    }

    /// Queues `msg` for peer `to` without waiting. Dropped (with the reason
    /// returned) if the link is down or the queue is full.
    pub fn send(&self, to: NodeId, msg: &M) -> Result<(), SendError> {
        let peer = self.out.iter().find(|o| o.id == to).ok_or(SendError::UnknownPeer(to))?;
        // While down, queueing would only deliver stale heartbeats later.
        if !peer.up.load(Ordering::Acquire) {
            return Err(SendError::LinkDown(to));
        }
        let bytes = frame::encode(msg).map_err(|source| SendError::Frame { to, source })?;
        peer.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => SendError::LinkDown(to),
        })
    }

    /// Whether the outgoing link to `to` is connected.
    pub fn is_up(&self, to: NodeId) -> bool {
        self.out.iter().any(|o| o.id == to && o.up.load(Ordering::Acquire))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl<M> Drop for PeerLinks<M> {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // inbound connection task with it.
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Outgoing.

/// Why an up link went down.
#[derive(Debug, thiserror::Error)]
enum Down {
    #[error("the handle was dropped")]
    Stopped,
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("write timed out")]
    WriteTimeout,
    #[error("I/O error")]
    Io(#[source] std::io::Error),
}

async fn outgoing(
    id: NodeId,
    addr: SocketAddr,
    connector: TlsConnector,
    timing: LinkTiming,
    mut rx: mpsc::Receiver<Vec<u8>>,
    up: Arc<AtomicBool>,
) {
    let mut backoff = timing.backoff_min;
    // Log the first failure after a success at warn, repeats at debug: a
    // dead peer would otherwise log twenty lines a second.
    let mut quiet = false;
    loop {
        match connect(id, addr, &connector, &timing).await {
            Ok(stream) => {
                // Anything queued belongs to the previous connection's era.
                while rx.try_recv().is_ok() {}
                up.store(true, Ordering::Release);
                info!(peer = id, %addr, "outgoing link up");
                backoff = timing.backoff_min;
                quiet = false;
                let why = pump(stream, &mut rx, &timing).await;
                up.store(false, Ordering::Release);
                match why {
                    Down::Stopped => return,
                    why => {
                        warn!(peer = id, %addr, reason = %why, error = ?std::error::Error::source(&why), "outgoing link down")
                    }
                }
            }
            Err(e) if quiet => debug!(peer = id, %addr, error = %e, "connect failed"),
            Err(e) => {
                warn!(peer = id, %addr, error = %e, "cannot reach peer; retrying");
                quiet = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(timing.backoff_max);
        if rx.is_closed() {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("TCP connect timed out")]
    ConnectTimeout,
    #[error("TCP connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("no valid server name for node {0}")]
    Name(NodeId),
    #[error("server certificate names node {found:?}, expected {expected}")]
    WrongIdentity { expected: NodeId, found: Option<NodeId> },
}

async fn connect(
    id: NodeId,
    addr: SocketAddr,
    connector: &TlsConnector,
    timing: &LinkTiming,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let tcp = timeout(timing.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::ConnectTimeout)?
        .map_err(ConnectError::Connect)?;
    // Heartbeats are tiny and latency-bound; Nagle would delay them.
    tcp.set_nodelay(true).map_err(ConnectError::Connect)?;
    set_keepalive(&tcp);
    let name = server_name(id).ok_or(ConnectError::Name(id))?;
    let tls = timeout(timing.handshake_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| ConnectError::HandshakeTimeout)?
        .map_err(ConnectError::Handshake)?;
    // rustls checked the name; this also refuses a wildcard certificate
    // that would match every node.
    let found = peer_node_id(tls.get_ref().1.peer_certificates());
    if found != Some(id) {
        return Err(ConnectError::WrongIdentity { expected: id, found });
    }
    Ok(tls)
}

/// Queued frames are coalesced into one write up to this many bytes; a
/// larger frame is written on its own, without a copy.
const COALESCE_MAX: usize = 64 * 1024;

/// Writes are issued in pieces of at most this size, each under
/// [`LinkTiming::write_timeout`], so the timeout bounds a stall, not the
/// time a multi-megabyte frame takes on the wire.
const WRITE_PIECE: usize = 64 * 1024;

/// TCP keepalive on every link's socket: probes after 2 s of silence,
/// every 1 s, 3 unanswered ones end the connection. A dead or partitioned
/// peer on a link that may stay silent (no idle timeout) is found in about
/// 5 s, without any message of ours on the wire, so it works with a peer
/// of any version.
pub const TCP_KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(2), Duration::from_secs(1), 3);

fn set_keepalive(tcp: &TcpStream) {
    let (time, interval, retries) = TCP_KEEPALIVE;
    let ka = socket2::TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(retries);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        warn!(error = %e, "cannot enable TCP keepalive on a peer link");
    }
}

/// Moves queued frames onto the connection until it fails or the handle
/// is dropped.
async fn pump<S: AsyncRead + AsyncWrite>(stream: S, rx: &mut mpsc::Receiver<Vec<u8>>, timing: &LinkTiming) -> Down {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut sink = [0u8; 512];
    // Never holds more than COALESCE_MAX bytes.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { return Down::Stopped };
                let mut next = Some(first);
                while let Some(frame) = next.take() {
                    let bytes = if frame.len() >= COALESCE_MAX {
                        &frame
                    } else {
                        // Coalesce whatever else is queued, up to the cap.
                        batch.clear();
                        batch.extend_from_slice(&frame);
                        while let Ok(more) = rx.try_recv() {
                            if batch.len() + more.len() > COALESCE_MAX {
                                next = Some(more);
                                break;
                            }
                            batch.extend_from_slice(&more);
                        }
                        &batch
                    };
                    if let Err(down) = write_frames(&mut wr, bytes, timing).await {
                        return down;
                    }
                }
            }
            // The peer never writes on this connection; a read completing
            // means it closed (or broke) it, which we want to know at once.
            r = rd.read(&mut sink) => match r {
                Ok(0) => return Down::PeerClosed,
                Ok(_) => {}
                Err(e) => return Down::Io(e),
            }
        }
    }
}

/// Writes and flushes `bytes`, each piece of at most [`WRITE_PIECE`] bytes
/// and the flush under the write timeout.
async fn write_frames<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8], timing: &LinkTiming) -> Result<(), Down> {
    for piece in bytes.chunks(WRITE_PIECE) {
        timeout(timing.write_timeout, wr.write_all(piece)).await.map_err(|_| Down::WriteTimeout)?.map_err(Down::Io)?;
    }
    timeout(timing.write_timeout, wr.flush()).await.map_err(|_| Down::WriteTimeout)?.map_err(Down::Io)
}

// ---------------------------------------------------------------------------
// Incoming.

async fn accept_loop<M: WireMessage>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    peers: Vec<NodeId>,
    inbound: Sink<M>,
    timing: LinkTiming,
    limit: Arc<Semaphore>,
) {
    let peers: Arc<[NodeId]> = peers.into();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, addr)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        warn!(%addr, "refused connection: too many inbound connections");
                        continue;
                    };
                    let (acceptor, peers, inbound, timing) =
                        (acceptor.clone(), peers.clone(), inbound.clone(), timing.clone());
                    conns.spawn(async move {
                        serve(tcp, addr, acceptor, &peers, inbound, &timing).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
        if inbound.is_closed() {
            return;
        }
    }
}

/// Serves one inbound connection: handshake, identity, then frames.
async fn serve<M: WireMessage>(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    peers: &[NodeId],
    inbound: Sink<M>,
    timing: &LinkTiming,
) {
    set_keepalive(&tcp);
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%addr, error = %e, "set_nodelay failed");
    }
    let mut tls = match timeout(timing.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%addr, error = %e, "refused connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            warn!(%addr, "refused connection: TLS handshake timed out");
            return;
        }
    };
    let id = match peer_node_id(tls.get_ref().1.peer_certificates()) {
        Some(id) if peers.contains(&id) => id,
        other => {
            warn!(%addr, claimed = ?other, "refused connection: certificate names no peer of this node");
            return;
        }
    };
    debug!(peer = id, %addr, "inbound link up");
    let mut dec = Decoder::<M>::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tls.read(&mut buf);
        let n = match timing.idle_timeout {
            Some(idle) => timeout(idle, read).await,
            None => Ok(read.await),
        };
        let n = match n {
            Err(_) => {
                warn!(peer = id, %addr, "closing inbound link: idle");
                return;
            }
            // A stream that ends inside a frame carried a truncated message:
            // worth a warning, as garbage is (the partial frame is dropped).
            Ok(Ok(0)) if dec.buffered() > 0 => {
                warn!(peer = id, %addr, bytes = dec.buffered(), "dropped truncated frame: link closed mid-frame");
                return;
            }
            Ok(Ok(0)) => {
                debug!(peer = id, %addr, "inbound link closed by peer");
                return;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) if dec.buffered() > 0 => {
                warn!(peer = id, %addr, bytes = dec.buffered(), error = %e, "dropped truncated frame: link broke mid-frame");
                return;
            }
            Ok(Err(e)) => {
                debug!(peer = id, %addr, error = %e, "inbound link read failed");
                return;
            }
        };
        let Some(bytes) = buf.get(..n) else { return };
        dec.extend(bytes);
        loop {
            match dec.next_frame() {
                Decoded::NeedMore => break,
                Decoded::Frame(m) if m.claimed_sender().is_some_and(|c| c != id) => {
                    warn!(peer = id, claimed = ?m.claimed_sender(), "dropped message: sender does not match certificate");
                }
                Decoded::Frame(m) => {
                    if !inbound.deliver(id, m).await {
                        return; // the receiver is gone
                    }
                }
                Decoded::Bad(e) if e.is_fatal() => {
                    warn!(peer = id, %addr, error = %e, "closing inbound link: framing lost");
                    return;
                }
                Decoded::Bad(e) => {
                    warn!(peer = id, error = %e, "dropped bad frame");
                }
            }
        }
    }
}
