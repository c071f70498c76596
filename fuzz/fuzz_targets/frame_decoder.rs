//! Fuzz target: `triad::peer::frame::Decoder<Message>` (the core's peer
//! links), fed the bytes a peer sends.
//!
//! Input: one chunking byte, then the raw stream. The chunking byte picks
//! how the stream is cut into `extend` calls (see [`chunk_lens`]) so the
//! fuzzer explores arbitrary TCP segmentations without the stream itself
//! carrying a chunk script; a seed is therefore `0x00` + valid frames.
//!
//! Checked, beyond "never panics":
//! - chunking does not matter: the chunked decode yields exactly what one
//!   `extend` of the whole stream yields;
//! - the buffer stays bounded (`buffered() <= MAX_FRAME + 4 + chunk`);
//! - every decoded `Message` re-encodes with `frame::encode` to one frame
//!   that a fresh decoder turns back into the same `Message`, leaving
//!   nothing buffered.
//!
//! `TRIAD_FUZZ_DEBUG=1` prints each decode step (for triaging an input or
//! checking a seed: `cargo fuzz run -s none frame_decoder <file>`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use triad::peer::frame::{encode, Decoded, Decoder, MAX_FRAME};
use triad_core::Message;

const LEN_BYTES: usize = 4;

fn debug() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TRIAD_FUZZ_DEBUG").is_some())
}

/// Chunk lengths for `stream_len` bytes, derived from `sel`: the top two
/// bits pick the largest chunk (1, 7, 64 or everything), the rest seed a
/// xorshift that varies lengths within it.
fn chunk_lens(sel: u8, stream_len: usize) -> Vec<usize> {
    let max = match sel >> 6 {
        0 => stream_len.max(1),
        1 => 1,
        2 => 7,
        _ => 64,
    };
    let mut x = u32::from(sel) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut left = stream_len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if max == stream_len.max(1) { left } else { 1 + (x as usize % max) };
        let n = n.min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// Decodes until the buffer needs more bytes or framing is lost.
fn drain(d: &mut Decoder, out: &mut Vec<Decoded>) -> bool {
    loop {
        match d.next_frame() {
            Decoded::NeedMore => return true,
            Decoded::Bad(e) if e.is_fatal() => {
                out.push(Decoded::Bad(e));
                return false;
            }
            other => out.push(other),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else { return };

    // Reference: the whole stream in one extend.
    let mut whole = Vec::new();
    let mut d = Decoder::<Message>::new();
    d.extend(stream);
    drain(&mut d, &mut whole);

    // Same stream, cut into chunks.
    let mut chunked = Vec::new();
    let mut d = Decoder::<Message>::new();
    let mut at = 0;
    for n in chunk_lens(sel, stream.len()) {
        d.extend(&stream[at..at + n]);
        at += n;
        let alive = drain(&mut d, &mut chunked);
        assert!(d.buffered() <= MAX_FRAME + LEN_BYTES + n, "buffer grew to {} after a {n}-byte chunk", d.buffered());
        if !alive {
            break;
        }
    }
    if debug() {
        eprintln!("chunks {:?}", chunk_lens(sel, stream.len()));
        for step in &chunked {
            eprintln!("{step:?}");
        }
    }
    assert_eq!(chunked, whole, "chunking changed the decode");

    for step in &whole {
        let Decoded::Frame(msg) = step else { continue };
        let frame = encode(msg).unwrap_or_else(|e| panic!("decoded {msg:?} does not re-encode: {e}"));
        let mut d = Decoder::<Message>::new();
        d.extend(&frame);
        assert_eq!(d.next_frame(), Decoded::Frame(msg.clone()), "re-encoded frame {frame:02x?}");
        assert_eq!(d.next_frame(), Decoded::NeedMore);
        assert_eq!(d.buffered(), 0);
    }
});
