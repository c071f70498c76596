//! Wire framing of peer messages.
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | len: u32 BE    | version: u16 BE| postcard(Message)         |
//! +----------------+----------------+---------------------------+
//!                  |<------------- len bytes ------------------>|
//! ```
//!
//! Owns: encoding and an incremental decoder that never panics on any byte
//! sequence. A frame with a readable length but a bad payload (other
//! protocol version, postcard error, trailing bytes) is reported and
//! skipped: the stream stays in sync. A length above [`MAX_FRAME`] means
//! the stream is not ours or is corrupt; the decoder then stays failed and
//! the connection must be closed.
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
    /// Protocol version in every frame.
    const VERSION: u16;
    /// Largest length field accepted.
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
    /// The payload is not a postcard `Message`.
    #[error("payload does not decode")]
    Payload(#[source] postcard::Error),
    /// The payload decoded but left bytes over.
    #[error("payload has {extra} trailing bytes")]
    Trailing {
        /// Bytes left after the message.
        extra: usize,
    },
    /// Encoding failed (cannot happen for the current `Message`; kept so the
    /// encoder never panics).
    #[error("message does not encode")]
    Encode(#[source] postcard::Error),
    /// An encoded message exceeds [`MAX_FRAME`].
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
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_allocvec(msg).map_err(FrameError::Encode)?;
    let len = VERSION_BYTES + payload.len();
    if len > M::MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(LEN_BYTES + len);
    // len <= M::MAX_FRAME (< 4 GiB), so the cast is lossless.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&M::VERSION.to_be_bytes());
    out.extend_from_slice(&payload);
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
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
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
        assert!(matches!(got[0], Decoded::Bad(FrameError::Version { found: 2, expected: 1 })));
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
