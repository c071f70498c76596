//! The PBX's health probe: one SIP OPTIONS request over UDP (and, if
//! configured, one over TCP) to the PBX's SIP port on loopback, and the
//! check of its answer (issue 11, item 2).
//! Any SIP response to *our* request (same Call-ID, same Via branch, CSeq
//! method OPTIONS) counts as alive: a PBX that answers at all has its
//! transaction layer running. The supervision state machine
//! (`triad_host::pbx`) decides what a failed probe means; this module only
//! builds, sends and checks.
//!
//! The request follows RFC 3261 section 11 (OPTIONS) and 8.1.1 (the
//! mandatory headers); the branch starts with the magic cookie `z9hG4bK`
//! (section 8.1.1.7) so that the PBX treats it as an RFC 3261 transaction.
//!
//! Must not: panic on any answer (the PBX may be broken or hostile), or
//! accept an answer from another address (the socket is connected).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Why a probe did not count as an answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer to our request within the timeout.
    #[error("no SIP answer from {addr} within {timeout:?}")]
    Timeout {
        /// The PBX's SIP address.
        addr: SocketAddr,
        /// The probe's timeout.
        timeout: Duration,
    },
    /// The PBX answered, but not through the test user's contact (404:
    /// its registrations are not loaded yet).
    #[error("the PBX at {addr} answered {code} for the test user, not routed to its contact")]
    NotRouted {
        /// The PBX's SIP address.
        addr: SocketAddr,
        /// Its answer.
        code: u16,
    },
    /// The socket could not be opened, or sending failed (e.g. ICMP port
    /// unreachable reported on a connected socket: nothing listens).
    #[error("probe socket to {addr}")]
    Io {
        /// The PBX's SIP address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why a datagram is not an answer to our request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not a SIP response line (`SIP/2.0 NNN reason`).
    #[error("not a SIP response: {0:?}")]
    NotAResponse(String),
    /// A response, but to another request.
    #[error("a SIP response to another request ({what} differs)")]
    NotOurs {
        /// The header that did not match.
        what: &'static str,
    },
}

/// One probe request: what identifies its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The bytes to send.
    pub bytes: String,
    /// Its Call-ID.
    pub call_id: String,
    /// Its Via branch.
    pub branch: String,
}

/// A transport for the probe (the Via header names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: one datagram each way.
    Udp,
    /// TCP: a connection per probe.
    Tcp,
}

/// Builds an OPTIONS request from `local` to `target` (e.g.
/// `sip:127.0.0.1:5060`) over UDP, unique per call.
pub fn options_request(local: SocketAddr, target: &str) -> Request {
    options_request_over(Transport::Udp, local, target)
}

/// The same over `transport`.
pub fn options_request_over(transport: Transport, local: SocketAddr, target: &str) -> Request {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let id = format!("{:x}{:x}{n:x}", std::process::id(), nanos);
    let branch = format!("z9hG4bK-triad-{id}");
    let call_id = format!("{id}@triad-probe");
    let bytes = format!(
        "OPTIONS {target} SIP/2.0\r\n\
         Via: SIP/2.0/{via} {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:triad-probe@{ip}>;tag={id}\r\n\
         To: <{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:triad-probe@{local}>\r\n\
         Accept: application/sdp\r\n\
         User-Agent: triad-probe\r\n\
         Content-Length: 0\r\n\r\n",
        ip = local.ip(),
        via = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        },
    );
    Request { bytes, call_id, branch }
}

/// The status code of `datagram` if it answers `request`.
pub fn check_answer(request: &Request, datagram: &[u8]) -> Result<u16, AnswerError> {
    let text = String::from_utf8_lossy(datagram);
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let first = lines.next().unwrap_or_default();
    let status = parse_status_line(first).ok_or_else(|| AnswerError::NotAResponse(first.chars().take(80).collect()))?;
    let mut call_id_ok = false;
    let mut branch_ok = false;
    let mut cseq_ok = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            // Compact forms: i = Call-ID, v = Via (RFC 3261 section 7.3.3).
            "call-id" | "i" => call_id_ok |= value == request.call_id,
            "via" | "v" => branch_ok |= via_branch(value) == Some(request.branch.as_str()),
            "cseq" => cseq_ok |= value.split_whitespace().nth(1).is_some_and(|m| m.eq_ignore_ascii_case("OPTIONS")),
            _ => {}
        }
    }
    match (call_id_ok, branch_ok, cseq_ok) {
        (false, _, _) => Err(AnswerError::NotOurs { what: "Call-ID" }),
        (_, false, _) => Err(AnswerError::NotOurs { what: "Via branch" }),
        (_, _, false) => Err(AnswerError::NotOurs { what: "CSeq method" }),
        _ => Ok(status),
    }
}

/// `SIP/2.0 200 OK` -> 200 (codes 100-699).
fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let code = rest.get(..3)?.parse::<u16>().ok()?;
    let after = rest.get(3..)?;
    ((100..700).contains(&code) && (after.is_empty() || after.starts_with(' '))).then_some(code)
}

/// The `branch` parameter of the first Via value in `value`.
fn via_branch(value: &str) -> Option<&str> {
    let first = value.split(',').next()?;
    first.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("branch").then(|| v.trim())
    })
}

/// Sends one OPTIONS to `addr` and waits up to `timeout` for its answer;
/// datagrams that do not answer it (a late answer to an earlier probe)
/// are skipped. Returns the status code.
pub async fn probe_udp(addr: SocketAddr, timeout: Duration) -> Result<u16, ProbeError> {
    options_udp(addr, &format!("sip:{addr}"), timeout).await.map(|(code, _)| code)
}

/// The header the supervisor's test-user responder puts in its answers:
/// an answer carrying it went through the PBX's lookup to the contact.
pub const ROUTED_MARK: &str = "X-Triad-Probe: routed";

/// Sends OPTIONS for `sip:USER@HOST` (the PBX's address) to the PBX at
/// `addr`: answered only if the PBX looked the user up and routed the
/// request to its contact, the supervisor's own responder
/// ([`serve_test_user`]), whose 200 carries [`ROUTED_MARK`]. Any other
/// answer (404: the registrations are not loaded yet) is an error.
pub async fn probe_routed(addr: SocketAddr, user: &str, timeout: Duration) -> Result<(), ProbeError> {
    let (code, text) = options_udp(addr, &format!("sip:{user}@{}", addr.ip()), timeout).await?;
    if routed(code, &text) {
        Ok(())
    } else {
        Err(ProbeError::NotRouted { addr, code })
    }
}

/// A 200 with the responder's mark.
fn routed(code: u16, answer: &str) -> bool {
    code == 200 && answer.split("\r\n").take_while(|l| !l.is_empty()).any(|l| l.eq_ignore_ascii_case(ROUTED_MARK))
}

/// One OPTIONS for `target` over UDP to `addr`: its status and text.
async fn options_udp(addr: SocketAddr, target: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let bind: SocketAddr =
        if addr.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(addr).await.map_err(io)?;
    let local = socket.local_addr().map_err(io)?;
    let request = options_request(local, target);
    socket.send(request.bytes.as_bytes()).await.map_err(io)?;
    let answer = async {
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            let datagram = buf.get(..n).unwrap_or_default();
            if let Ok(code) = check_answer(&request, datagram) {
                return Ok((code, String::from_utf8_lossy(datagram).into_owned()));
            }
        }
    };
    tokio::time::timeout(timeout, answer).await.map_err(|_| ProbeError::Timeout { addr, timeout })?
}

/// The supervisor's test user's phone: on `addr` (loopback), answers every
/// SIP request with a 200 carrying [`ROUTED_MARK`], so the probe can tell
/// an answer the PBX routed to the user from one the PBX gave itself.
/// Runs until the socket fails.
pub async fn serve_test_user(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        if let Some(reply) = routed_reply(&text) {
            let _ = socket.send_to(reply.as_bytes(), from).await;
        }
    }
}

/// The 200 for a request (its Via, From, To, Call-ID and CSeq echoed, the
/// mark added); `None` for a response or garbage. Also the lab's client
/// side phones' answer.
pub fn routed_reply(request: &str) -> Option<String> {
    let first = request.lines().next()?;
    if first.starts_with("SIP/2.0") || !first.ends_with("SIP/2.0") {
        return None;
    }
    let keep = ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"];
    let mut reply = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if keep.contains(&name.as_str()) {
            reply.push_str(line);
            reply.push_str("\r\n");
        }
    }
    reply.push_str(ROUTED_MARK);
    reply.push_str("\r\nContent-Length: 0\r\n\r\n");
    Some(reply)
}

/// The longest answer a TCP probe reads.
const MAX_TCP_ANSWER: usize = 65_535;

/// Opens a TCP connection to `addr`, sends one OPTIONS and waits up to
/// `timeout` (connection included) for its answer: the header of the
/// first message that answers it. Returns the status code.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<u16, ProbeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |source| ProbeError::Io { addr, source };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let local = stream.local_addr().map_err(io)?;
        let request = options_request_over(Transport::Tcp, local, &format!("sip:{addr};transport=tcp"));
        stream.write_all(request.bytes.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            // Every complete message in the buffer (requests and answers to
            // others are skipped; a body is not needed to judge).
            while let Some(end) = find_header_end(&buf) {
                let header = buf.get(..end).unwrap_or_default();
                if let Ok(code) = check_answer(&request, header) {
                    return Ok(code);
                }
                let whole = end + body_length(header);
                if buf.len() < whole {
                    break; // the rest of its body is still to come
                }
                buf.drain(..whole);
            }
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 || buf.len() + n > MAX_TCP_ANSWER {
                return Err(io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer on the connection")));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ProbeError::Timeout { addr, timeout })?
}

/// The end of the header block (after the blank line), if complete.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The Content-Length of a message's header block (0 if absent or bad).
fn body_length(header: &[u8]) -> usize {
    String::from_utf8_lossy(header)
        .split("\r\n")
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim().to_ascii_lowercase();
            (name == "content-length" || name == "l").then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        options_request("127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")), "sip:127.0.0.1:5060")
    }

    fn answer(req: &Request, status: &str) -> String {
        format!(
            "{status}\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch={};rport=40000\r\nFrom: <sip:triad-probe@127.0.0.1>;tag=x\r\n\
             To: <sip:127.0.0.1:5060>;tag=y\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            req.branch, req.call_id
        )
    }

    #[test]
    fn the_request_has_the_headers_rfc_3261_requires_and_a_magic_cookie_branch() {
        let r = request();
        assert!(r.bytes.starts_with("OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"), "{}", r.bytes);
        for h in [
            "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK",
            "Max-Forwards: 70",
            "From: ",
            "To: ",
            "Call-ID: ",
            "CSeq: 1 OPTIONS",
        ] {
            assert!(r.bytes.contains(h), "missing {h:?} in {}", r.bytes);
        }
        assert!(r.bytes.ends_with("Content-Length: 0\r\n\r\n"));
        assert_ne!(request().call_id, r.call_id, "every probe is its own transaction");
    }

    #[test]
    fn any_status_of_an_answer_to_our_request_counts() {
        let r = request();
        assert_eq!(check_answer(&r, answer(&r, "SIP/2.0 200 OK").as_bytes()), Ok(200));
        assert_eq!(check_answer(&r, answer(&r, "SIP/2.0 404 Not Here").as_bytes()), Ok(404));
        assert_eq!(check_answer(&r, answer(&r, "SIP/2.0 503 Service Unavailable").as_bytes()), Ok(503));
        // Compact header forms.
        let compact = answer(&r, "SIP/2.0 200 OK").replace("Via:", "v:").replace("Call-ID:", "i:");
        assert_eq!(check_answer(&r, compact.as_bytes()), Ok(200));
    }

    #[test]
    fn a_tcp_request_names_its_transport_and_messages_are_framed_by_their_header() {
        let local = "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}"));
        let r = options_request_over(Transport::Tcp, local, "sip:127.0.0.1:5060;transport=tcp");
        assert!(r.bytes.contains("Via: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bK"), "{}", r.bytes);
        let two = b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabcSIP/2.0 404 x\r\n\r\n";
        let end = find_header_end(two).unwrap_or_default();
        assert_eq!(end, 37);
        assert_eq!(body_length(&two[..end]), 3);
        assert_eq!(body_length(b"SIP/2.0 200 OK\r\nl: 7\r\n\r\n"), 7);
        assert_eq!(body_length(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n"), 0);
        assert_eq!(find_header_end(b"SIP/2.0 200 OK\r\nCall-ID: a\r\n"), None);
    }

    /// A TCP server that answers the probe (after an unrelated message
    /// with a body) is read correctly; a closed port is an error, not a
    /// timeout; a silent server is a timeout.
    #[tokio::test]
    async fn a_tcp_probe_reads_its_answer_among_other_messages() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let header =
                |name: &str| req.split("\r\n").find(|l| l.starts_with(name)).map(str::to_string).unwrap_or_default();
            let noise = "SIP/2.0 200 OK\r\nCall-ID: other\r\nContent-Length: 5\r\n\r\nhello";
            let answer = format!(
                "SIP/2.0 200 OK\r\n{}\r\n{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                header("Via:"),
                header("Call-ID:")
            );
            s.write_all(format!("{noise}{answer}").as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert_eq!(probe_tcp(addr, Duration::from_secs(2)).await.ok(), Some(200));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let closed_addr = closed.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(closed);
        assert!(matches!(probe_tcp(closed_addr, Duration::from_secs(2)).await, Err(ProbeError::Io { .. })));
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(probe_tcp(silent_addr, Duration::from_millis(200)).await, Err(ProbeError::Timeout { .. })));
        drop(silent);
    }

    #[test]
    fn only_a_200_with_the_responders_mark_is_routed_and_the_responder_answers_requests_only() {
        let r = request();
        let plain = answer(&r, "SIP/2.0 200 OK");
        assert!(!routed(200, &plain), "the PBX's own 200 is not routed");
        let marked = plain.replacen("CSeq: 1 OPTIONS\r\n", &format!("CSeq: 1 OPTIONS\r\n{ROUTED_MARK}\r\n"), 1);
        assert!(routed(200, &marked));
        assert!(!routed(404, &marked));
        let reply = routed_reply(&r.bytes).unwrap_or_default();
        assert!(reply.starts_with("SIP/2.0 200 OK\r\n") && reply.contains(ROUTED_MARK), "{reply}");
        assert_eq!(check_answer(&r, reply.as_bytes()), Ok(200), "the reply answers the request");
        assert_eq!(routed_reply(&plain), None, "a response is not answered");
        assert_eq!(routed_reply("garbage"), None);
    }

    #[test]
    fn answers_to_another_request_and_garbage_do_not_count() {
        let r = request();
        let other = request();
        assert_eq!(
            check_answer(&r, answer(&other, "SIP/2.0 200 OK").as_bytes()),
            Err(AnswerError::NotOurs { what: "Call-ID" })
        );
        let wrong_branch = answer(&r, "SIP/2.0 200 OK").replace(&r.branch, "z9hG4bK-other");
        assert_eq!(check_answer(&r, wrong_branch.as_bytes()), Err(AnswerError::NotOurs { what: "Via branch" }));
        let wrong_method = answer(&r, "SIP/2.0 200 OK").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
        assert_eq!(check_answer(&r, wrong_method.as_bytes()), Err(AnswerError::NotOurs { what: "CSeq method" }));
        // A request echoed back is not a response.
        assert!(matches!(check_answer(&r, r.bytes.as_bytes()), Err(AnswerError::NotAResponse(_))));
        for junk in [
            &b""[..],
            b"\xff\xfe\x00",
            b"SIP/2.0 99 Too Low\r\n\r\n",
            b"SIP/2.0 2000 OK",
            b"SIP/2.0 20",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(check_answer(&r, junk).is_err(), "{junk:?} counted");
        }
    }
}
