//! The PBX's health probe: one SIP OPTIONS request over UDP to the PBX's
//! SIP port on loopback, and the check of its answer (issue 11, item 2).
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

/// Builds an OPTIONS request from `local` to `target` (e.g.
/// `sip:127.0.0.1:5060`), unique per call.
pub fn options_request(local: SocketAddr, target: &str) -> Request {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let id = format!("{:x}{:x}{n:x}", std::process::id(), nanos);
    let branch = format!("z9hG4bK-triad-{id}");
    let call_id = format!("{id}@triad-probe");
    let bytes = format!(
        "OPTIONS {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
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
    let io = |source| ProbeError::Io { addr, source };
    let bind: SocketAddr =
        if addr.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(addr).await.map_err(io)?;
    let local = socket.local_addr().map_err(io)?;
    let request = options_request(local, &format!("sip:{addr}"));
    socket.send(request.bytes.as_bytes()).await.map_err(io)?;
    let answer = async {
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            if let Ok(code) = check_answer(&request, buf.get(..n).unwrap_or_default()) {
                return Ok(code);
            }
        }
    };
    tokio::time::timeout(timeout, answer).await.map_err(|_| ProbeError::Timeout { addr, timeout })?
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
