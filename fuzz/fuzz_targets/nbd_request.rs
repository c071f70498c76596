//! Fuzz target: the NBD parsers in `triad::nbd::{proto, request}` and the option
//! handling in `triad::nbd::handshake`, fed what an NBD client sends.
//!
//! Input: one mode byte, then the client's bytes. `(mode & 0x7f) % 3` picks the
//! phase; bit 7 says whether the node is active.
//! - 0, handshake: 4 bytes of client flags, then options (16-byte header
//!   and its data) until the bytes run out or an option ends haggling.
//! - 1, transmission: requests (28-byte header, then a WRITE's payload)
//!   until the bytes run out or one breaks the framing.
//! - 2, the data of `NBD_OPT_GO`/`NBD_OPT_INFO` alone.
//!
//! Checked, beyond "never panics":
//! - a parsed option or request header re-encodes to the bytes it came from;
//! - an accepted request lies inside the export and is aligned to the
//!   minimum block; a READ/WRITE/WRITE_ZEROES is at most the maximum payload;
//!   a standby accepts nothing but DISC; every refusal has a nonzero errno;
//! - option replies are well framed and each echoes the option it answers;
//!   haggling ends in transmission only after GO or EXPORT_NAME, and only
//!   on an active node;
//! - a parsed info request re-encodes to exactly its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triad::nbd::handshake::{on_option, ExportView, Next};
use triad::nbd::proto::{
    ClientFlags, Geometry, InfoRequest, OptionHeader, MAX_PAYLOAD, OPTION_HEADER_LEN, OPT_EXPORT_NAME, OPT_GO,
    OPT_REPLY_MAGIC, REQUEST_LEN,
};
use triad::nbd::request::{check, Command, RequestHeader};

/// 1 GiB + 64 KiB: not a power of two, so range checks near the end matter.
const SIZE: u64 = (1 << 30) + (64 << 10);

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every reply is `magic | option | type | len | data[len]`, echoing `option`.
fn check_replies(mut b: &[u8], option: u32) {
    while !b.is_empty() {
        assert!(b.len() >= 20, "short option reply {b:02x?}");
        assert_eq!(&b[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(be32(b, 8), option, "reply names another option");
        let len = be32(b, 16) as usize;
        assert!(b.len() >= 20 + len, "reply data shorter than its length");
        b = &b[20 + len..];
    }
}

fn handshake(mut b: &[u8], active: bool) {
    let Some((flags, rest)) = b.split_first_chunk::<4>() else { return };
    if ClientFlags::parse(flags).is_err() {
        return;
    }
    b = rest;
    let export = ExportView { name: "volume", geometry: Geometry::new(SIZE), active };
    while b.len() >= OPTION_HEADER_LEN {
        let Ok(h) = OptionHeader::parse(b) else { return };
        assert_eq!(h.encode(), b[..OPTION_HEADER_LEN]);
        let Some(data) = b.get(OPTION_HEADER_LEN..OPTION_HEADER_LEN + h.len as usize) else { return };
        let out = on_option(h.option, data, &export, true);
        match out.next {
            // EXPORT_NAME cannot carry an error: its refusal is a silent close.
            Next::Close if out.reply.is_empty() => assert_eq!(h.option, OPT_EXPORT_NAME),
            Next::Transmit => {
                assert!(active, "transmission on a standby");
                assert!(h.option == OPT_GO || h.option == OPT_EXPORT_NAME, "option {} entered transmission", h.option);
            }
            _ => {}
        }
        if h.option != OPT_EXPORT_NAME {
            check_replies(&out.reply, h.option);
        }
        if out.next != Next::Haggle {
            return;
        }
        b = &b[OPTION_HEADER_LEN + data.len()..];
    }
}

fn transmission(mut b: &[u8], active: bool) {
    let g = Geometry::new(SIZE);
    while b.len() >= REQUEST_LEN {
        let Ok(h) = RequestHeader::parse(b) else { return };
        assert_eq!(h.encode(), b[..REQUEST_LEN]);
        let Ok(payload) = h.payload_len(MAX_PAYLOAD) else { return };
        let Some(rest) = b.get(REQUEST_LEN + payload..) else { return };
        match check(&h, &g, active) {
            Err(e) => assert_ne!(e.errno().code(), 0, "{e}"),
            Ok(Command::Disc) => return,
            Ok(Command::Flush) => assert!(active),
            Ok(
                Command::Read { offset, len }
                | Command::Write { offset, len, .. }
                | Command::Trim { offset, len, .. }
                | Command::WriteZeroes { offset, len, .. },
            ) => {
                assert!(active, "standby accepted {h:?}");
                assert!(offset.checked_add(u64::from(len)).is_some_and(|end| end <= SIZE), "{h:?} out of range");
                assert!(offset % u64::from(g.min_block) == 0 && len % g.min_block == 0, "{h:?} misaligned");
                if h.kind != 4 {
                    assert!(len <= g.max_payload, "{h:?} above the maximum payload");
                }
            }
        }
        b = rest;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let active = mode & 0x80 == 0;
    match (mode & 0x7f) % 3 {
        0 => handshake(rest, active),
        1 => transmission(rest, active),
        _ => {
            if let Ok(r) = InfoRequest::parse(rest) {
                assert_eq!(r.encode(), rest, "{r:?} does not re-encode to its input");
            }
        }
    }
});
