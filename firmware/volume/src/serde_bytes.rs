//! `#[serde(with = "triad_volume::serde_bytes")]` for `Vec<u8>` (or
//! `bytes::Bytes`) fields:
//! serialized as one byte string rather than a sequence of `u8`.
//!
//! For postcard (the peer links' format) both are a varint length and the
//! raw bytes, so the wire format is the same; what changes is the cost: a
//! sequence goes through serde one byte at a time (a `push` per byte on
//! decode), a byte string is one copy. That was half of the CPU of a
//! replicated 1 MiB sequential write (docs/volume-benchmark.md). A
//! sequence of `u8` is still accepted on decode (formats that produce
//! one, e.g. JSON arrays).

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Serializes `bytes` as a byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Deserializes a byte string (or a sequence of `u8`) into a `Vec<u8>`,
/// or into anything made from one without a copy (`bytes::Bytes`).
pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
    d.deserialize_byte_buf(BytesVisitor).map(T::from)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Bounded by what the input holds, not by a length it claims.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSeq {
        a: u64,
        data: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        a: u64,
        #[serde(with = "super")]
        data: Vec<u8>,
    }

    #[test]
    fn postcard_bytes_are_the_same_either_way_and_read_back() {
        for len in [0usize, 1, 127, 128, 4096, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let seq = postcard::to_allocvec(&AsSeq { a: 9, data: data.clone() }).unwrap();
            let bytes = postcard::to_allocvec(&AsBytes { a: 9, data: data.clone() }).unwrap();
            assert_eq!(seq, bytes, "wire format differs at {len} bytes");
            assert_eq!(postcard::from_bytes::<AsBytes>(&seq).unwrap(), AsBytes { a: 9, data });
        }
    }

    #[test]
    fn a_length_beyond_the_input_is_an_error_not_an_allocation() {
        // a = 9, then a length of 2^35 and three bytes.
        let input = [9u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 2, 3];
        assert!(postcard::from_bytes::<AsBytes>(&input).is_err());
    }
}
