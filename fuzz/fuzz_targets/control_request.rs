//! Fuzz target: `triad::control::parse_request`, fed request lines as a
//! local client writes them to the control socket.
//!
//! Checked, beyond "never panics": an accepted request serializes back to
//! JSON that parses to the same request (the CLI's client side writes
//! requests with the same serde types).
#![no_main]

use libfuzzer_sys::fuzz_target;
use triad::control::parse_request;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else { return };
    let line = serde_json::to_vec(&req).unwrap_or_else(|e| panic!("{req:?} does not serialize: {e}"));
    assert_eq!(parse_request(&line), Ok(req), "round trip through {}", String::from_utf8_lossy(&line));
});
