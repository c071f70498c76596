//! Polling with deadlines. Correctness in the lab never rests on a fixed
//! sleep: every wait names what it waits for and gives up at a deadline.

use std::time::{Duration, Instant};

/// Polls `f` every `every` until it returns `Some`, or returns `None` once
/// `timeout` has passed (after one last try).
pub fn until<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
