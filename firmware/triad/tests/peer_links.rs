//! Peer links over loopback with real certificates (no root needed).
//!
//! Two CAs: A (the cluster: nodes 1, 2) and B (an outsider whose cert says
//! node 3). Checks that members exchange messages, the outsider is refused,
//! and garbage on the listener closes only the offending connection; and
//! that a second instance for another message type (bulk, 2 MiB frames)
//! carries megabyte messages next to the core's links, within its limit.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use triad::certs::{create_ca, issue_node};
use triad::peer::frame::{encode, FrameError};
use triad::peer::tls::{client_config, server_config, server_name, Credentials};
use triad::peer::{LinkConfig, LinkTiming, PeerLinks, SendError, WireMessage};
use triad_core::{Body, Message, NodeId};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("triad-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn creds(dir: &Path, id: NodeId) -> Credentials {
    Credentials::load(&dir.join("ca.pem"), &dir.join(format!("node-{id}.pem")), &dir.join(format!("node-{id}.key")))
        .unwrap()
}

fn msg(from: NodeId, round: u64) -> Message {
    Message { from, epoch: 1, body: Body::Heartbeat { round } }
}

fn timing() -> LinkTiming {
    LinkTiming { handshake_timeout: Duration::from_millis(300), ..LinkTiming::default() }
}

/// A cluster CA in a fresh directory with nodes 1 and 2 issued, and their
/// credentials (keep the directory alive while they are used).
fn two_members(tag: &str) -> (TempDir, Credentials, Credentials) {
    let dir = TempDir::new(tag);
    create_ca(&dir.0).unwrap();
    issue_node(&dir.0, 1).unwrap();
    issue_node(&dir.0, 2).unwrap();
    let (c1, c2) = (creds(&dir.0, 1), creds(&dir.0, 2));
    (dir, c1, c2)
}

/// Two loopback listeners with their addresses (nodes 1 and 2), and an
/// address nothing listens on (node 3 is down).
async fn two_listeners() -> ((TcpListener, SocketAddr), (TcpListener, SocketAddr), SocketAddr) {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    ((l1, a1), (l2, a2), dead_addr().await)
}

/// An address nothing listens on (node 3 is down).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn start(
    c: &Credentials,
    id: NodeId,
    listener: TcpListener,
    peers: Vec<(NodeId, SocketAddr)>,
) -> (PeerLinks, mpsc::Receiver<(NodeId, Message)>) {
    let mut cfg = LinkConfig::new(id, peers, server_config(c).unwrap(), client_config(c).unwrap());
    cfg.timing = timing();
    PeerLinks::start_with_listener(cfg, listener).unwrap()
}

/// Sends `from`→`to` until one arrives (links come up asynchronously).
async fn deliver(links: &PeerLinks, rx: &mut mpsc::Receiver<(NodeId, Message)>, from: NodeId, to: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut round = 0;
    loop {
        assert!(Instant::now() < deadline, "no message from {from} to {to} within 5 s");
        round += 1;
        let _ = links.send(to, &msg(from, round));
        if let Ok(Some((who, m))) = timeout(Duration::from_millis(50), rx.recv()).await {
            assert_eq!(who, from);
            assert_eq!(m.from, from);
            return;
        }
    }
}

/// Expects the server to close the connection within `limit`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let t0 = Instant::now();
    loop {
        match timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn members_talk_outsiders_and_garbage_are_refused() {
    let a = TempDir::new("ca-a");
    let b = TempDir::new("ca-b");
    create_ca(&a.0).unwrap();
    issue_node(&a.0, 1).unwrap();
    issue_node(&a.0, 2).unwrap();
    create_ca(&b.0).unwrap();
    issue_node(&b.0, 3).unwrap();
    let (c1, c2, c3_foreign) = (creds(&a.0, 1), creds(&a.0, 2), creds(&b.0, 3));

    let ((l1, a1), (l2, a2), a3) = two_listeners().await;
    let (n1, mut rx1) = start(&c1, 1, l1, vec![(2, a2), (3, a3)]).await;
    let (n2, mut rx2) = start(&c2, 2, l2, vec![(1, a1), (3, a3)]).await;

    // 1. Members exchange messages both ways; node 3 is down, not fatal.
    deliver(&n1, &mut rx2, 1, 2).await;
    deliver(&n2, &mut rx1, 2, 1).await;
    assert!(!n1.is_up(3));
    assert!(n1.send(3, &msg(1, 0)).is_err());
    assert!(n1.send(7, &msg(1, 0)).is_err());

    // 2. An outsider: trusts CA A (so it accepts node 1's server cert) but
    //    presents a CA-B cert claiming node 3. Node 1 must refuse it.
    let mut roots = rustls::RootCertStore::empty();
    let ca_a = std::fs::read(a.0.join("ca.pem")).unwrap();
    for c in rustls_pemfile::certs(&mut ca_a.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let foreign_pem = std::fs::read(b.0.join("node-3.pem")).unwrap();
    let foreign_chain: Vec<_> = rustls_pemfile::certs(&mut foreign_pem.as_slice()).map(|c| c.unwrap()).collect();
    let foreign_key_pem = std::fs::read(b.0.join("node-3.key")).unwrap();
    let foreign_key = rustls_pemfile::private_key(&mut foreign_key_pem.as_slice()).unwrap().unwrap();
    let outsider = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(foreign_chain, foreign_key)
        .unwrap();
    let tcp = TcpStream::connect(a1).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(outsider)).connect(server_name(1).unwrap(), tcp).await;
    if let Ok(mut s) = connected {
        // TLS 1.3: the client learns of the refusal on its next read.
        let _ = s.write_all(&encode(&msg(3, 1)).unwrap()).await;
        assert!(closed_within(&mut s, Duration::from_secs(2)).await, "outsider not disconnected");
    }
    // An outsider running full links (trusting its own CA B) never gets up.
    let l3 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (n3, _rx3) = start(&c3_foreign, 3, l3, vec![(1, a1), (2, a2)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!n3.is_up(1) && !n3.is_up(2));
    while let Ok((who, _)) = rx1.try_recv() {
        assert_eq!(who, 2, "node 1 delivered a message not from node 2");
    }

    // 3. Garbage on raw TCP: closed (not a TLS ClientHello).
    let mut raw = TcpStream::connect(a1).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff\xff\xff\xff").await.unwrap();
    assert!(closed_within(&mut raw, Duration::from_secs(2)).await, "garbage client not disconnected");
    // A truncated handshake (half a TLS record header) times out.
    let mut raw = TcpStream::connect(a1).await.unwrap();
    raw.write_all(&[0x16, 0x03]).await.unwrap();
    assert!(closed_within(&mut raw, Duration::from_secs(2)).await, "stalled client not disconnected");

    // 4. A member's cert, but bad frames inside TLS: a bad version and a
    //    forged sender are dropped without closing; an oversized length
    //    closes this connection only.
    let cc2 = client_config(&c2).unwrap();
    let tcp = TcpStream::connect(a1).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cc2).connect(server_name(1).unwrap(), tcp).await.unwrap();
    let mut bad_version = encode(&msg(2, 1000)).unwrap();
    bad_version[4] ^= 0xff;
    s.write_all(&bad_version).await.unwrap();
    s.write_all(&encode(&msg(3, 1001)).unwrap()).await.unwrap(); // forged `from`
    s.write_all(&encode(&msg(2, 1002)).unwrap()).await.unwrap(); // fine
    s.flush().await.unwrap();
    let (who, m) = timeout(Duration::from_secs(2), async {
        loop {
            let (who, m) = rx1.recv().await.unwrap();
            // Skip the regular link's traffic (rounds below 1000).
            if matches!(m.body, Body::Heartbeat { round } if round >= 1000) {
                return (who, m);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((who, m), (2, msg(2, 1002)), "only the valid frame is delivered");
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 1]).await.unwrap();
    s.write_all(&encode(&msg(2, 1003)).unwrap()).await.unwrap();
    s.flush().await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await, "oversized frame did not close");

    // 5. The listener still serves the legitimate peer.
    deliver(&n2, &mut rx1, 2, 1).await;
    let late = std::iter::from_fn(|| rx1.try_recv().ok()).any(|(_, m)| m == msg(2, 1003));
    assert!(!late, "a frame after the oversized length was delivered");
}

#[tokio::test]
async fn restarted_peer_is_reached_quickly() {
    let (_a, c1, c2) = two_members("restart");
    let ((l1, a1), (l2, a2), a3) = two_listeners().await;
    let (n1, _rx1) = start(&c1, 1, l1, vec![(2, a2), (3, a3)]).await;
    let (n2, mut rx2) = start(&c2, 2, l2, vec![(1, a1), (3, a3)]).await;
    deliver(&n1, &mut rx2, 1, 2).await;

    // Node 2 dies and comes back on the same port.
    drop(n2);
    drop(rx2);
    tokio::time::sleep(Duration::from_millis(1200)).await; // backoff reaches its cap
    let l2 = TcpListener::bind(a2).await.unwrap();
    let back = Instant::now();
    let (_n2, mut rx2) = start(&c2, 2, l2, vec![(1, a1), (3, a3)]).await;
    deliver(&n1, &mut rx2, 1, 2).await;
    assert!(back.elapsed() < Duration::from_millis(900), "took {:?}", back.elapsed());
}

/// A bulk message type, as the replication link's: its own version and a
/// 2 MiB frame limit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Bulk {
    from: NodeId,
    seq: u64,
    data: Vec<u8>,
}

impl WireMessage for Bulk {
    const VERSION: u16 = 0x0b01;
    const MAX_FRAME: usize = 2 << 20;
    fn claimed_sender(&self) -> Option<NodeId> {
        Some(self.from)
    }
}

fn bulk(from: NodeId, seq: u64, len: usize) -> Bulk {
    Bulk { from, seq, data: (0..len).map(|i| (i as u64 * 131 + seq) as u8).collect() }
}

async fn start_bulk(
    c: &Credentials,
    id: NodeId,
    listener: TcpListener,
    peers: Vec<(NodeId, SocketAddr)>,
) -> (PeerLinks<Bulk>, mpsc::Receiver<(NodeId, Bulk)>) {
    let mut cfg = LinkConfig::new(id, peers, server_config(c).unwrap(), client_config(c).unwrap());
    cfg.timing = timing();
    cfg.queue_len = 8;
    cfg.inbound_len = 4;
    PeerLinks::start_with_listener(cfg, listener).unwrap()
}

async fn wait_up<M: WireMessage>(links: &PeerLinks<M>, to: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !links.is_up(to) {
        assert!(Instant::now() < deadline, "link to {to} not up within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bulk_links_carry_megabytes_next_to_core_links_within_their_limit() {
    let (_a, c1, c2) = two_members("bulk");
    // Core links and bulk links, each pair on its own port.
    let ((l1, a1), (l2, a2), a3) = two_listeners().await;
    let (n1, mut rx1) = start(&c1, 1, l1, vec![(2, a2), (3, a3)]).await;
    let (n2, mut rx2) = start(&c2, 2, l2, vec![(1, a1), (3, a3)]).await;
    let (d1, d2) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (ad1, ad2) = (d1.local_addr().unwrap(), d2.local_addr().unwrap());
    let (b1, mut brx1) = start_bulk(&c1, 1, d1, vec![(2, ad2), (3, a3)]).await;
    let (b2, mut brx2) = start_bulk(&c2, 2, d2, vec![(1, ad1), (3, a3)]).await;

    // 1. A 1.5 MiB message each way, byte for byte, over mutual TLS.
    wait_up(&b1, 2).await;
    wait_up(&b2, 1).await;
    let big = bulk(1, 1, 1536 * 1024);
    b1.send(2, &big).unwrap();
    b2.send(1, &bulk(2, 2, 1536 * 1024)).unwrap();
    let (who, got) = timeout(Duration::from_secs(10), brx2.recv()).await.unwrap().unwrap();
    assert_eq!(who, 1);
    assert!(got == big, "1.5 MiB message corrupted in transit");
    let (who, got) = timeout(Duration::from_secs(10), brx1.recv()).await.unwrap().unwrap();
    assert_eq!((who, got.seq, got.data.len()), (2, 2, 1536 * 1024));
    // The core links, on their own ports, work alongside.
    deliver(&n1, &mut rx2, 1, 2).await;
    deliver(&n2, &mut rx1, 2, 1).await;

    // 2. Over the limit: refused at send, nothing goes on the wire.
    let over = bulk(1, 3, Bulk::MAX_FRAME);
    assert!(matches!(b1.send(2, &over), Err(SendError::Frame { to: 2, source: FrameError::TooLarge { .. } })));
    // A core message of 1.5 MiB does not exist; the core links' limit is
    // their own (64 KiB): a 1.5 MiB frame there closes the connection.
    let cc2 = client_config(&c2).unwrap();
    let tcp = TcpStream::connect(a1).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cc2.clone()).connect(server_name(1).unwrap(), tcp).await.unwrap();
    s.write_all(&encode(&bulk(2, 4, 1536 * 1024)).unwrap()).await.unwrap_or(());
    assert!(closed_within(&mut s, Duration::from_secs(2)).await, "core link accepted a 1.5 MiB length");

    // 3. Raw frames from a member on the bulk listener: a core frame (other
    //    version) is skipped, a bulk frame just under the limit is
    //    delivered, a length over the limit closes the connection.
    let tcp = TcpStream::connect(ad1).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cc2).connect(server_name(1).unwrap(), tcp).await.unwrap();
    s.write_all(&encode(&msg(2, 1)).unwrap()).await.unwrap();
    let near = bulk(2, 5, Bulk::MAX_FRAME - 64);
    s.write_all(&encode(&near).unwrap()).await.unwrap();
    s.flush().await.unwrap();
    let (who, got) = timeout(Duration::from_secs(10), brx1.recv()).await.unwrap().unwrap();
    assert_eq!((who, got.seq), (2, 5), "the core frame was not skipped");
    assert!(got == near);
    let len = Bulk::MAX_FRAME as u32 + 1;
    s.write_all(&len.to_be_bytes()).await.unwrap();
    s.write_all(&Bulk::VERSION.to_be_bytes()).await.unwrap();
    s.flush().await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await, "oversized bulk frame did not close");
    assert!(brx1.try_recv().is_err(), "something delivered after the oversized length");

    // 4. The regular bulk link is unaffected.
    b2.send(1, &bulk(2, 6, 100)).unwrap();
    let (who, got) = timeout(Duration::from_secs(5), brx1.recv()).await.unwrap().unwrap();
    assert_eq!((who, got.seq), (2, 6));
}

/// The data links hand what an inbound connection decodes straight to the
/// receiver (the volume thread's queue), with no channel or task between.
#[tokio::test]
async fn direct_delivery_hands_messages_to_the_receiver_from_the_connection_task() {
    let (_d, c1, c2) = two_members("direct");
    let ((l1, a1), (l2, a2), a3) = two_listeners().await;
    let (n1, _rx1) = start(&c1, 1, l1, vec![(2, a2), (3, a3)]).await;
    let (tx, rx) = std::sync::mpsc::channel::<(NodeId, Message)>();
    let tx = std::sync::Mutex::new(tx);
    let mut cfg = LinkConfig::new(2, vec![(1, a1), (3, a3)], server_config(&c2).unwrap(), client_config(&c2).unwrap());
    cfg.timing = timing();
    let _n2: PeerLinks =
        PeerLinks::start_direct_with_listener(cfg, l2, move |from, m| tx.lock().unwrap().send((from, m)).is_ok())
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut round = 0;
    loop {
        assert!(Instant::now() < deadline, "nothing delivered within 5 s");
        round += 1;
        let _ = n1.send(2, &msg(1, round));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok((from, m)) = rx.try_recv() {
            assert_eq!((from, m.from), (1, 1), "the sender is the certificate's node");
            assert!(matches!(m.body, Body::Heartbeat { .. }));
            break;
        }
    }
}

/// Node 1's link to node 2 while nothing is sent on it for 1.5 s: whether
/// node 1 ever saw it down (polled every 2 ms). Node 2's inbound side uses
/// `idle`.
async fn silent_link_went_down(tag: &str, idle: Option<Duration>) -> bool {
    let (_dir, c1, c2) = two_members(tag);
    let ((l1, a1), (l2, a2), _) = two_listeners().await;
    let (links1, _rx1) = start(&c1, 1, l1, vec![(2, a2)]).await;
    let mut cfg = LinkConfig::new(2, vec![(1, a1)], server_config(&c2).unwrap(), client_config(&c2).unwrap());
    cfg.timing = LinkTiming { idle_timeout: idle, ..timing() };
    let (_links2, _rx2): (PeerLinks, _) = PeerLinks::start_with_listener(cfg, l2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !links1.is_up(2) {
        assert!(Instant::now() < deadline, "node 1's link to node 2 never came up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        if !links1.is_up(2) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// The data links between two followers carry nothing (only the leader
/// talks to followers), so an idle timeout on them closed and reopened
/// both every 5 s, with a TLS handshake and two warnings each time (seen
/// in the lab and on the image's consoles). Without one, a silent link
/// stays up; with one, the same silence closes it.
#[tokio::test]
async fn a_silent_link_without_an_idle_timeout_stays_up() {
    assert!(
        silent_link_went_down("idle-some", Some(Duration::from_millis(300))).await,
        "a link silent for 1.5 s with a 300 ms idle timeout was never closed"
    );
    assert!(!silent_link_went_down("idle-none", None).await, "a link without an idle timeout was closed while silent");
}
