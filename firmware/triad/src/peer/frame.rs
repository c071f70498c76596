//! Wire framing of peer messages, generic over the message type.
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | len: u32 BE    | version: u16 BE| postcard(M)               |
//! +----------------+----------------+---------------------------+
//!                  |<------------- len bytes ------------------>|
//! ```
//!
//! Each link carries one message type `M`, which fixes the version and the
//! largest length field through [`WireMessage`]: the core's
//! [`Message`] (version [`PROTOCOL_VERSION`], [`MAX_FRAME`] = 64 KiB) on the
//! peer links, the volume's replication messages (megabytes) on the data
//! links.
//!
//! Owns: encoding and an incremental decoder that never panics on any byte
//! sequence. A frame with a readable length but a bad payload (other
//! protocol version, postcard error, trailing bytes) is reported and
//! skipped: the stream stays in sync. A length above `M::MAX_FRAME` means
//! the stream is not ours or is corrupt; the decoder then stays failed and
//! the connection must be closed.
//!
//! Buffering: a caller that decodes until [`Decoded::NeedMore`] after
//! each [`Decoder::extend`] (as the links do) has at most one partial frame
//! plus the last chunk buffered (`M::MAX_FRAME + 4 + chunk`). Consumed
//! bytes are dropped lazily, once per `extend`, and what moves then is only
//! the tail of the previous chunk, so each received byte is copied a
//! bounded number of times whatever the frame size: no quadratic copying
//! of a multi-megabyte frame arriving in 64 KiB reads.
//!
//! Must not: allocate per a length it has not checked, or act on messages.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use triad_core::{Message, NodeId, PROTOCOL_VERSION};

/// Largest accepted value of the length field (version + payload) for the
/// core's messages.
pub const MAX_FRAME: usize = 64 * 1024;

/// A message type one kind of link carries: its own protocol version and
/// frame limit. The core's heartbeats and the volume's bulk replication
/// travel on separate links, each with its own type.
pub trait WireMessage: Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static {
    /// Protocol version in every frame; a frame with another is skipped.
    const VERSION: u16;
    /// Largest length field (version + payload) accepted, and produced:
    /// [`encode`] refuses a larger message, the decoder treats a larger
    /// length as a lost stream. Also the per-connection buffer bound, so
    /// keep it to what one message really needs (below 4 GiB).
    const MAX_FRAME: usize;
    /// The sender the message claims, if it names one (checked against
    /// the peer's certificate).
    fn claimed_sender(&self) -> Option<NodeId>;
}

impl WireMessage for Message {
    const VERSION: u16 = PROTOCOL_VERSION;
    const MAX_FRAME: usize = MAX_FRAME;
    fn claimed_sender(&self) -> Option<NodeId> {
        Some(self.from)
    }
}

impl WireMessage for triad_repl::Msg {
    const VERSION: u16 = triad_repl::REPL_PROTOCOL_VERSION;
    // A batch of records (1 MiB) or a resync chunk, plus headers.
    const MAX_FRAME: usize = 4 << 20;
    fn claimed_sender(&self) -> Option<NodeId> {
        None
    }
}

const LEN_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;
/// Buffer capacity a decoder keeps once its buffer is empty; more (left by
/// a large frame) is released.
const KEEP_CAPACITY: usize = 128 * 1024;

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Length field above the link's maximum: the stream is unusable.
    #[error("frame length {len} exceeds the link's maximum; stream unusable")]
    Oversized {
        /// The length field read.
        len: u32,
    },
    /// Length too small to hold the version field.
    #[error("frame length {len} cannot hold the protocol version")]
    TooShort {
        /// The length field read.
        len: u32,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {found}, expected {expected}")]
    Version {
        /// The version in the frame.
        found: u16,
        /// Ours.
        expected: u16,
    },
    /// The payload is not a postcard `M`.
    #[error("payload does not decode")]
    Payload(#[source] postcard::Error),
    /// The payload decoded but left bytes over.
    #[error("payload has {extra} trailing bytes")]
    Trailing {
        /// Bytes left after the message.
        extra: usize,
    },
    /// Encoding failed (cannot happen for serde-derived types; kept so the
    /// encoder never panics).
    #[error("message does not encode")]
    Encode(#[source] postcard::Error),
    /// An encoded message exceeds its type's `MAX_FRAME`.
    #[error("encoded message of {len} bytes exceeds the link's maximum frame")]
    TooLarge {
        /// Its size.
        len: usize,
    },
}

impl FrameError {
    /// Whether the stream must be closed (framing is lost), as opposed to
    /// one frame being skipped.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::Oversized { .. })
    }
}

/// Encodes one message as a complete frame.
///
/// The payload is serialized straight after a placeholder header, so a
/// bulk message is not copied once more into a frame buffer.
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.extend_from_slice(&M::VERSION.to_be_bytes());
    let mut out = postcard::to_extend(msg, out).map_err(FrameError::Encode)?;
    let len = out.len() - LEN_BYTES;
    let len32 = u32::try_from(len).ok().filter(|_| len <= M::MAX_FRAME).ok_or(FrameError::TooLarge { len })?;
    out[..LEN_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<M = Message> {
    /// A complete, valid message.
    Frame(M),
    /// The buffer holds no complete frame yet.
    NeedMore,
    /// A bad frame: skipped, unless [`FrameError::is_fatal`], in which case
    /// every later call returns the same error.
    Bad(FrameError),
}

/// Incremental decoder over a byte stream of `M` frames.
#[derive(Debug)]
pub struct Decoder<M = Message> {
    buf: Vec<u8>,
    /// Start of undecoded bytes in `buf`; consumed bytes are dropped lazily
    /// so a read carrying many small frames costs one copy, not one each.
    pos: usize,
    failed: Option<FrameError>,
    _msg: PhantomData<fn() -> M>,
}

impl<M: WireMessage> Default for Decoder<M> {
    fn default() -> Self {
        Decoder { buf: Vec::new(), pos: 0, failed: None, _msg: PhantomData }
    }
}

impl<M: WireMessage> Decoder<M> {
    /// A decoder with an empty buffer.
    pub fn new() -> Decoder<M> {
        Decoder::default()
    }

    /// Appends bytes read from the stream. Ignored after a fatal error.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos == self.buf.len() && self.buf.capacity() > KEEP_CAPACITY {
            // Everything was consumed: give back what a large frame took.
            self.buf = Vec::new();
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
        // Room for the rest of a frame whose (checked) length is already
        // known, so a large frame grows the buffer once, not by doubling.
        if let Some(frame) = self.pending_frame_len() {
            self.buf.reserve_exact(frame.saturating_sub(self.buf.len()));
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Size (header included) of the frame at the start of the undecoded
    /// bytes, if its length field is readable and within `M::MAX_FRAME`.
    fn pending_frame_len(&self) -> Option<usize> {
        let len = self.buf.get(self.pos..)?.first_chunk::<LEN_BYTES>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        (len <= M::MAX_FRAME).then_some(LEN_BYTES + len)
    }

    /// Bytes held but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Decodes the next frame from the buffer.
    pub fn next_frame(&mut self) -> Decoded<M> {
        if let Some(e) = &self.failed {
            return Decoded::Bad(e.clone());
        }
        let rest = &self.buf[self.pos..];
        let Some(len_bytes) = rest.first_chunk::<LEN_BYTES>() else {
            return Decoded::NeedMore;
        };
        let len = u32::from_be_bytes(*len_bytes);
        // u32 -> usize is lossless on the 32/64-bit targets we build for;
        // saturate anyway rather than assume.
        let ulen = usize::try_from(len).unwrap_or(usize::MAX);
        if ulen > M::MAX_FRAME {
            let e = FrameError::Oversized { len };
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.pos = 0;
            return Decoded::Bad(e);
        }
        if rest.len() - LEN_BYTES < ulen {
            return Decoded::NeedMore;
        }
        let body = &rest[LEN_BYTES..LEN_BYTES + ulen];
        self.pos += LEN_BYTES + ulen;
        Decoded::from(decode_body(body, len))
    }
}

fn decode_body<M: WireMessage>(body: &[u8], len: u32) -> Result<M, FrameError> {
    let Some((version, payload)) = body.split_first_chunk::<VERSION_BYTES>() else {
        return Err(FrameError::TooShort { len });
    };
    let found = u16::from_be_bytes(*version);
    if found != M::VERSION {
        return Err(FrameError::Version { found, expected: M::VERSION });
    }
    let (msg, extra) = postcard::take_from_bytes::<M>(payload).map_err(FrameError::Payload)?;
    if !extra.is_empty() {
        return Err(FrameError::Trailing { extra: extra.len() });
    }
    Ok(msg)
}

impl<M> From<Result<M, FrameError>> for Decoded<M> {
    fn from(r: Result<M, FrameError>) -> Decoded<M> {
        match r {
            Ok(m) => Decoded::Frame(m),
            Err(e) => Decoded::Bad(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use triad_core::{Body, Position};

    fn msgs() -> Vec<Message> {
        vec![
            Message { from: 1, epoch: 7, body: Body::Heartbeat { round: 99 } },
            Message {
                from: 2,
                epoch: u64::MAX,
                body: Body::Vote { position: Position { epoch: 3, seq: 4 }, transfer: true },
            },
            Message { from: 3, epoch: 0, body: Body::TimeoutNow },
        ]
    }

    fn drain(d: &mut Decoder) -> Vec<Decoded> {
        let mut out = Vec::new();
        loop {
            match d.next_frame() {
                Decoded::NeedMore => return out,
                Decoded::Bad(e) if e.is_fatal() => {
                    out.push(Decoded::Bad(e));
                    return out;
                }
                other => out.push(other),
            }
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut stream = Vec::new();
        for m in msgs() {
            stream.extend(encode(&m).unwrap());
        }
        let mut d = Decoder::<Message>::new();
        let mut got = Vec::new();
        for b in stream {
            d.extend(&[b]);
            got.extend(drain(&mut d));
        }
        assert_eq!(got, msgs().into_iter().map(Decoded::Frame).collect::<Vec<_>>());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn bad_payload_is_skipped_and_stream_stays_in_sync() {
        let mut stream = Vec::new();
        // Wrong version.
        let mut f = encode(&msgs()[0]).unwrap();
        f[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        stream.extend(&f);
        // Garbage payload, valid length.
        stream.extend([0, 0, 0, 4, 0, PROTOCOL_VERSION as u8, 0xff, 0xff]);
        // Too short for a version.
        stream.extend([0, 0, 0, 1, 9]);
        // Trailing byte.
        let mut f = encode(&msgs()[2]).unwrap();
        f.push(0);
        f[3] += 1;
        stream.extend(&f);
        stream.extend(encode(&msgs()[1]).unwrap());
        let mut d = Decoder::<Message>::new();
        d.extend(&stream);
        let got = drain(&mut d);
        assert!(
            matches!(got[0], Decoded::Bad(FrameError::Version { found, expected: PROTOCOL_VERSION }) if found == PROTOCOL_VERSION + 1)
        );
        assert!(matches!(got[1], Decoded::Bad(FrameError::Payload(_))));
        assert!(matches!(got[2], Decoded::Bad(FrameError::TooShort { len: 1 })));
        assert!(matches!(got[3], Decoded::Bad(FrameError::Trailing { extra: 1 })));
        assert_eq!(got[4], Decoded::Frame(msgs()[1].clone()));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn oversized_length_is_fatal_and_sticky() {
        let mut d = Decoder::<Message>::new();
        d.extend(&[0, 1, 0, 1]); // 65537
        assert_eq!(d.next_frame(), Decoded::Bad(FrameError::Oversized { len: 65537 }));
        d.extend(&encode(&msgs()[0]).unwrap());
        assert_eq!(d.next_frame(), Decoded::Bad(FrameError::Oversized { len: 65537 }));
        // Exactly MAX_FRAME is allowed (and waits for its bytes).
        let mut d = Decoder::<Message>::new();
        d.extend(&(MAX_FRAME as u32).to_be_bytes());
        assert_eq!(d.next_frame(), Decoded::NeedMore);
    }

    /// A second message type: bulk data with its own version and limit.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Bulk {
        seq: u64,
        data: Vec<u8>,
    }

    impl WireMessage for Bulk {
        const VERSION: u16 = 0x0b01;
        const MAX_FRAME: usize = 2 << 20;
        fn claimed_sender(&self) -> Option<NodeId> {
            None
        }
    }

    fn bulk(seq: u64, len: usize) -> Bulk {
        Bulk { seq, data: (0..len).map(|i| (i * 31 + seq as usize) as u8).collect() }
    }

    #[test]
    fn bulk_frames_decode_from_64k_reads_with_bounded_buffer() {
        const CHUNK: usize = 64 * 1024;
        let sent = vec![bulk(1, 1536 * 1024), bulk(2, 10), bulk(3, 1536 * 1024), bulk(4, 0)];
        let mut stream = Vec::new();
        for m in &sent {
            stream.extend(encode(m).unwrap());
        }
        let mut d = Decoder::<Bulk>::new();
        let mut got = Vec::new();
        // An odd chunk size so frame ends fall inside chunks.
        for c in stream.chunks(CHUNK - 7) {
            d.extend(c);
            loop {
                match d.next_frame() {
                    Decoded::Frame(m) => got.push(m),
                    Decoded::NeedMore => break,
                    Decoded::Bad(e) => panic!("{e}"),
                }
            }
            assert!(d.buffered() <= Bulk::MAX_FRAME + LEN_BYTES + c.len());
            assert!(d.buf.capacity() <= 2 * (Bulk::MAX_FRAME + LEN_BYTES + CHUNK), "{}", d.buf.capacity());
        }
        assert_eq!(got, sent);
        assert_eq!(d.buffered(), 0);
        // Once empty, the large buffer is released.
        d.extend(&[]);
        assert!(d.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn each_type_has_its_own_version_and_limit() {
        // 1.5 MiB is fatal on the core's stream, fine on the bulk one.
        let big = encode(&bulk(1, 1536 * 1024)).unwrap();
        let mut core = Decoder::<Message>::new();
        core.extend(&big[..16]);
        assert!(matches!(core.next_frame(), Decoded::Bad(FrameError::Oversized { .. })));
        let mut d = Decoder::<Bulk>::new();
        d.extend(&big[..16]);
        assert_eq!(d.next_frame(), Decoded::NeedMore);

        // A core frame on the bulk stream: other version, skipped, in sync.
        let mut d = Decoder::<Bulk>::new();
        d.extend(&encode(&msgs()[0]).unwrap());
        d.extend(&encode(&bulk(5, 3)).unwrap());
        assert_eq!(
            d.next_frame(),
            Decoded::Bad(FrameError::Version { found: PROTOCOL_VERSION, expected: Bulk::VERSION })
        );
        assert_eq!(d.next_frame(), Decoded::Frame(bulk(5, 3)));

        // Exactly the limit waits for its bytes; one more is fatal and sticky.
        let mut d = Decoder::<Bulk>::new();
        d.extend(&(Bulk::MAX_FRAME as u32).to_be_bytes());
        assert_eq!(d.next_frame(), Decoded::NeedMore);
        let mut d = Decoder::<Bulk>::new();
        let over = Bulk::MAX_FRAME as u32 + 1;
        d.extend(&over.to_be_bytes());
        assert_eq!(d.next_frame(), Decoded::Bad(FrameError::Oversized { len: over }));
        d.extend(&encode(&bulk(6, 1)).unwrap());
        assert_eq!(d.next_frame(), Decoded::Bad(FrameError::Oversized { len: over }));
        assert_eq!(d.buffered(), 0);

        // The encoder refuses what the decoder would: version (2) + seq (1)
        // + length varint (4 for 2 MiB) + data.
        assert!(matches!(encode(&bulk(0, Bulk::MAX_FRAME)), Err(FrameError::TooLarge { .. })));
        let fits = Bulk::MAX_FRAME - 2 - 1 - 3;
        assert_eq!(encode(&bulk(0, fits)).unwrap().len(), LEN_BYTES + Bulk::MAX_FRAME);
        assert!(matches!(
            encode(&bulk(0, fits + 1)),
            Err(FrameError::TooLarge { len }) if len == Bulk::MAX_FRAME + 1
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut d = Decoder::<Message>::new();
            for c in &chunks {
                d.extend(c);
                let _ = drain(&mut d);
                prop_assert!(d.buffered() <= MAX_FRAME + LEN_BYTES + c.len());
            }
        }

        #[test]
        fn valid_frames_survive_arbitrary_splits(epoch in any::<u64>(), round in any::<u64>(), cut in 0usize..40) {
            let m = Message { from: 2, epoch, body: Body::HeartbeatAck { round } };
            let f = encode(&m).unwrap();
            let cut = cut.min(f.len());
            let mut d = Decoder::<Message>::new();
            d.extend(&f[..cut]);
            let mut got = drain(&mut d);
            d.extend(&f[cut..]);
            got.extend(drain(&mut d));
            prop_assert_eq!(got, vec![Decoded::Frame(m)]);
        }
    }
}
