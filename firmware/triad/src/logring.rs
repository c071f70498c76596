//! The in-memory log ring: the last lines the supervisor logged, for
//! `triad logs` and the status report (and later the setup page). On the
//! appliance the console is a serial line nobody reads; this is how an
//! operator sees what happened without a shell.
//!
//! Owns: a bounded ring of formatted lines (both a line count and a byte
//! budget, so a burst of long lines cannot grow memory), and the
//! `tracing` writer that fills it: the same formatter as the console, no
//! colour codes. One ring per process, installed once by `main`.
//!
//! Must not: block the logging thread for long (one short mutex hold per
//! line; the loop logs at real-time priority), or grow past its bounds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

/// Lines kept by the process's ring.
pub const MAX_LINES: usize = 1000;
/// Bytes kept by the process's ring (the lines' text).
pub const MAX_BYTES: usize = 256 * 1024;

/// A bounded ring of log lines.
#[derive(Debug)]
pub struct LogRing {
    inner: Mutex<Inner>,
    max_lines: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<String>,
    bytes: usize,
    /// Lines pushed out (or too long to keep) since the start.
    dropped: u64,
    /// Lines pushed since the start.
    pushed: u64,
    /// Of them, warnings and errors.
    urgent: u64,
}

/// What the ring holds, copied out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Oldest first.
    pub lines: Vec<String>,
    /// Lines lost to the bounds since the start.
    pub dropped: u64,
}

impl LogRing {
    /// An empty ring keeping at most `max_lines` lines and `max_bytes`
    /// bytes of text.
    pub fn new(max_lines: usize, max_bytes: usize) -> LogRing {
        LogRing { inner: Mutex::new(Inner::default()), max_lines, max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves whole lines only; keep logging.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one line (without its newline), dropping the oldest lines
    /// to stay within bounds. A line longer than the whole byte budget is
    /// cut to it (at a character boundary) rather than lost.
    pub fn push(&self, line: &str) {
        let mut line = line;
        if line.len() > self.max_bytes {
            let mut end = self.max_bytes;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line = &line[..end];
        }
        let mut g = self.lock();
        g.pushed += 1;
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            g.urgent += 1;
        }
        while !g.lines.is_empty() && (g.lines.len() >= self.max_lines || g.bytes + line.len() > self.max_bytes) {
            if let Some(old) = g.lines.pop_front() {
                g.bytes -= old.len();
                g.dropped += 1;
            }
        }
        if self.max_lines == 0 {
            g.dropped += 1;
            return;
        }
        g.bytes += line.len();
        g.lines.push_back(line.to_string());
    }

    /// Every line held, oldest first, and how many were lost.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot { lines: g.lines.iter().cloned().collect(), dropped: g.dropped }
    }

    /// (lines pushed, warnings and errors among them) since the start:
    /// whether anything new, and anything urgent, came since a look.
    pub fn marks(&self) -> (u64, u64) {
        let g = self.lock();
        (g.pushed, g.urgent)
    }

    /// (lines held, bytes held, lines lost): small enough for status.
    pub fn counts(&self) -> (usize, usize, u64) {
        let g = self.lock();
        (g.lines.len(), g.bytes, g.dropped)
    }
}

static RING: OnceLock<Arc<LogRing>> = OnceLock::new();

/// The process's ring (created on first use).
pub fn global() -> Arc<LogRing> {
    RING.get_or_init(|| Arc::new(LogRing::new(MAX_LINES, MAX_BYTES))).clone()
}

/// The ring's part of the status report: counts only, so status stays
/// small (`triad logs` has the lines).
pub fn status_json() -> serde_json::Value {
    let (lines, bytes, dropped) = global().counts();
    serde_json::json!({ "lines": lines, "bytes": bytes, "dropped": dropped })
}

/// The writer `tracing_subscriber::fmt` formats each event into; the
/// text goes to the ring line by line when the event is written.
#[derive(Clone, Debug)]
pub struct RingWriter {
    ring: Arc<LogRing>,
}

impl RingWriter {
    /// A writer into `ring`.
    pub fn new(ring: Arc<LogRing>) -> RingWriter {
        RingWriter { ring }
    }
}

/// One event's text, pushed to the ring when dropped.
#[derive(Debug)]
pub struct EventBuf {
    ring: Arc<LogRing>,
    buf: Vec<u8>,
}

impl std::io::Write for EventBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Bounded too: an event's text never exceeds the ring's budget.
        let room = self.ring.max_bytes.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.ring.push(line);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RingWriter {
    type Writer = EventBuf;

    fn make_writer(&'a self) -> EventBuf {
        EventBuf { ring: self.ring.clone(), buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(r: &LogRing) -> Vec<String> {
        r.snapshot().lines
    }

    #[test]
    fn keeps_order_and_wraps_at_the_line_bound() {
        let r = LogRing::new(3, 1000);
        for i in 0..5 {
            r.push(&format!("line {i}"));
        }
        assert_eq!(lines(&r), ["line 2", "line 3", "line 4"]);
        assert_eq!(r.counts(), (3, 18, 2));
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_cuts_a_giant_line() {
        let r = LogRing::new(100, 10);
        r.push("aaaa");
        r.push("bbbb");
        r.push("ccc");
        assert_eq!(lines(&r), ["bbbb", "ccc"], "aaaa+bbbb+ccc is 11 bytes");
        assert_eq!(r.counts(), (2, 7, 1));
        r.push("0123456789ABCDEF");
        assert_eq!(lines(&r), ["0123456789"]);
        assert_eq!(r.counts(), (1, 10, 3));
        // A cut never splits a character.
        r.push("ééééééé");
        assert_eq!(lines(&r), ["ééééé"]);
    }

    #[test]
    fn a_zero_line_ring_keeps_nothing() {
        let r = LogRing::new(0, 10);
        r.push("x");
        assert_eq!(r.snapshot(), Snapshot { lines: vec![], dropped: 1 });
    }

    #[test]
    fn the_writer_splits_an_event_into_lines_when_done() {
        use tracing_subscriber::fmt::MakeWriter;
        let ring = Arc::new(LogRing::new(10, 1000));
        let w = RingWriter::new(ring.clone());
        {
            let mut e = w.make_writer();
            e.write_all(b"first ").unwrap_or_default();
            e.write_all(b"part\nsecond\n").unwrap_or_default();
            assert_eq!(lines(&ring), Vec::<String>::new(), "nothing before the event is written");
        }
        assert_eq!(lines(&ring), ["first part", "second"]);
    }

    #[test]
    fn formatted_events_reach_the_ring_without_colour() {
        use tracing_subscriber::layer::SubscriberExt;
        let ring = Arc::new(LogRing::new(10, 1000));
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(RingWriter::new(ring.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = 2, "hello");
            tracing::warn!("second");
        });
        let got = lines(&ring);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("INFO triad::logring::tests: hello node=2"), "{got:?}");
        assert!(got[1].ends_with("WARN triad::logring::tests: second"), "{got:?}");
        assert!(!got.concat().contains('\u{1b}'));
    }
}
