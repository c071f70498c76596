//! Per-peer dirty bitmap: which regions of the volume changed since the
//! peer's checkpoint K, for journal records that were discarded before the
//! peer had them (rule 10).
//!
//! One bit covers `granularity` bytes (a power of two, at least one 4 KiB
//! block). Size: `volume_len / granularity` bits. For a 64 GiB volume at
//! the default 64 KiB per bit that is 1 Mi bits = 128 KiB per peer (256
//! KiB on disk with both copies); at 4 KiB per bit it would be 2 MiB. The
//! bitmap carries its base: the peer's K when it started; a resync from
//! this bitmap is valid only for a peer whose K is at or after the base
//! (rule 11).
//!
//! It owns the bits and their encoding; it must not decide when to set or
//! clear them, nor persist on its own (the store persists it, bitmaps
//! before the journal header, rule 9).
//!
//! Persisted payload (little-endian, inside a [`crate::slots`] slot of
//! kind 3): version u32, reserved u32, granularity u64, volume length u64,
//! base epoch u64, base seq u64, then the bit words as u64 (bit i of word
//! w covers chunk 64·w + i).

use crate::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::store::BLOCK_SIZE;
use crate::Position;

/// Default bytes per bit.
pub const DEFAULT_GRANULARITY: u64 = 64 * 1024;
const VERSION: u32 = 1;
const FIXED_LEN: usize = 40;

/// What can go wrong building, changing or decoding a bitmap.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// Granularity not a power of two of at least one block.
    #[error("granularity {0} is not a power of two of at least 4096 bytes")]
    Granularity(u64),
    /// A range outside the volume.
    #[error("range of {len} bytes at {offset} is outside the {volume_len}-byte volume")]
    OutOfRange { offset: u64, len: u64, volume_len: u64 },
    /// A persisted bitmap that does not decode or does not match.
    #[error("persisted bitmap unusable: {reason}")]
    Decode { reason: &'static str },
}

/// A dirty bitmap for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    granularity: u64,
    volume_len: u64,
    base: Position,
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// An all-clean bitmap for a peer whose checkpoint K is `base`.
    pub fn new(volume_len: u64, granularity: u64, base: Position) -> Result<Self, BitmapError> {
        if !granularity.is_power_of_two() || granularity < BLOCK_SIZE {
            return Err(BitmapError::Granularity(granularity));
        }
        let bits = volume_len.div_ceil(granularity);
        Ok(DirtyBitmap { granularity, volume_len, base, words: vec![0; bits.div_ceil(64) as usize] })
    }

    /// The volume size the bitmap covers.
    pub fn volume_len(&self) -> u64 {
        self.volume_len
    }

    /// Bytes the encoded bitmap takes (payload of one slot).
    pub fn encoded_len(volume_len: u64, granularity: u64) -> usize {
        FIXED_LEN + volume_len.div_ceil(granularity).div_ceil(64) as usize * 8
    }

    /// The peer's K when this bitmap started.
    pub fn base(&self) -> Position {
        self.base
    }

    /// Bytes per bit.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    fn chunks(&self, offset: u64, len: u64) -> Result<std::ops::Range<u64>, BitmapError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.volume_len);
        let Some(end) = end else {
            return Err(BitmapError::OutOfRange { offset, len, volume_len: self.volume_len });
        };
        Ok(offset / self.granularity..end.div_ceil(self.granularity))
    }

    /// Mark `[offset, offset + len)` changed (every chunk it touches).
    pub fn set_range(&mut self, offset: u64, len: u64) -> Result<(), BitmapError> {
        for c in self.chunks(offset, len)? {
            self.words[(c / 64) as usize] |= 1 << (c % 64);
        }
        Ok(())
    }

    /// Mark clean the chunks lying entirely inside `[offset, offset+len)`
    /// (a partly covered chunk may still hold other changes). The volume's
    /// last chunk counts as whole if the range reaches the volume's end.
    pub fn clear_range(&mut self, offset: u64, len: u64) -> Result<(), BitmapError> {
        let end = self.chunks(offset, len)?.end;
        let range_end = offset + len;
        let first = offset.div_ceil(self.granularity);
        let last = if range_end == self.volume_len { end } else { range_end / self.granularity };
        for c in first..last {
            self.words[(c / 64) as usize] &= !(1 << (c % 64));
        }
        Ok(())
    }

    /// Clean everything and start over from a new base.
    pub fn reset(&mut self, base: Position) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.base = base;
    }

    /// Whether any chunk is dirty.
    pub fn is_clean(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Dirty byte ranges `(offset, len)`, adjacent chunks merged, clamped
    /// to the volume.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let bits = self.volume_len.div_ceil(self.granularity);
        let is_set = move |c: u64| self.words[(c / 64) as usize] & (1 << (c % 64)) != 0;
        let mut c = 0;
        std::iter::from_fn(move || {
            while c < bits && !is_set(c) {
                c += 1;
            }
            if c >= bits {
                return None;
            }
            let start = c;
            while c < bits && is_set(c) {
                c += 1;
            }
            let off = start * self.granularity;
            Some((off, (c * self.granularity).min(self.volume_len) - off))
        })
    }

    /// Total dirty bytes (what a resync from this bitmap would copy).
    /// A population count of the words, not a walk of the bits: `triad
    /// status` asks after every pass of the volume thread (a walk of a
    /// 256 MiB volume's 65,536 bits per peer cost about 300 µs a write).
    pub fn dirty_bytes(&self) -> u64 {
        let bits = self.volume_len.div_ceil(self.granularity);
        if bits == 0 {
            return 0;
        }
        let full = (bits / 64) as usize;
        let mut set: u64 = self.words.iter().take(full).map(|w| u64::from(w.count_ones())).sum();
        let rest = bits % 64;
        if rest > 0 {
            let last = self.words.get(full).copied().unwrap_or(0);
            set += u64::from((last & ((1u64 << rest) - 1)).count_ones());
        }
        let mut bytes = set * self.granularity;
        // The last chunk is shorter when the volume is not a multiple of it.
        let last_bit = bits - 1;
        let last_set = self.words.get((last_bit / 64) as usize).is_some_and(|w| w & (1 << (last_bit % 64)) != 0);
        if last_set {
            bytes -= bits * self.granularity - self.volume_len;
        }
        bytes
    }

    /// The persisted form (see the module comment).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; FIXED_LEN + self.words.len() * 8];
        put_u32(&mut buf, 0, VERSION);
        put_u64(&mut buf, 8, self.granularity);
        put_u64(&mut buf, 16, self.volume_len);
        put_u64(&mut buf, 24, self.base.epoch);
        put_u64(&mut buf, 32, self.base.seq);
        for (i, w) in self.words.iter().enumerate() {
            put_u64(&mut buf, FIXED_LEN + i * 8, *w);
        }
        buf
    }

    /// Decode a persisted bitmap, checking it matches the volume.
    pub fn decode(buf: &[u8], volume_len: u64, granularity: u64) -> Result<Self, BitmapError> {
        if buf.len() < FIXED_LEN || get_u32(buf, 0) != VERSION {
            return Err(BitmapError::Decode { reason: "unknown version" });
        }
        if get_u64(buf, 8) != granularity || get_u64(buf, 16) != volume_len {
            return Err(BitmapError::Decode { reason: "geometry differs from the volume's" });
        }
        let base = Position::new(get_u64(buf, 24), get_u64(buf, 32));
        let mut bm = DirtyBitmap::new(volume_len, granularity, base)?;
        if buf.len() != FIXED_LEN + bm.words.len() * 8 {
            return Err(BitmapError::Decode { reason: "length" });
        }
        for (i, w) in bm.words.iter_mut().enumerate() {
            *w = get_u64(buf, FIXED_LEN + i * 8);
        }
        Ok(bm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn size_for_64_gib_stays_small() {
        assert_eq!(DirtyBitmap::encoded_len(64 * GIB, DEFAULT_GRANULARITY), 40 + 128 * 1024);
    }

    proptest::proptest! {
        #[test]
        fn dirty_bytes_is_the_sum_of_the_ranges(
            chunks in 1u64..300,
            short in 0u64..4096,
            sets in proptest::collection::vec((0u64..300 * 4096, 1u64..20_000), 0..20),
        ) {
            let volume_len = chunks * 4096 - short.min(4095);
            let mut b = DirtyBitmap::new(volume_len, 4096, Position::ZERO).unwrap();
            for (off, len) in sets {
                let off = off % volume_len;
                let len = len.min(volume_len - off);
                b.set_range(off, len).unwrap();
            }
            let walked: u64 = b.ranges().map(|(_, l)| l).sum();
            proptest::prop_assert_eq!(b.dirty_bytes(), walked);
        }
    }

    #[test]
    fn set_iterate_clear() {
        let mut b = DirtyBitmap::new(1 << 20, 65536, Position::new(1, 5)).unwrap();
        assert!(b.is_clean());
        b.set_range(100, 1).unwrap();
        b.set_range(65536 * 2, 65537).unwrap();
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![(0, 65536), (131072, 131072)]);
        assert_eq!(b.dirty_bytes(), 196608);
        // A partial clear does not clean a chunk.
        b.clear_range(0, 100).unwrap();
        assert_eq!(b.ranges().count(), 2);
        b.clear_range(0, 65536 * 3).unwrap();
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![(196608, 65536)]);
        assert!(b.set_range(1 << 20, 1).is_err());
        b.reset(Position::new(2, 9));
        assert!(b.is_clean());
        assert_eq!(b.base(), Position::new(2, 9));
    }

    #[test]
    fn ragged_volume_end() {
        let mut b = DirtyBitmap::new(70000, 65536, Position::ZERO).unwrap();
        b.set_range(69999, 1).unwrap();
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![(65536, 70000 - 65536)]);
        b.clear_range(65536, 70000 - 65536).unwrap();
        assert!(b.is_clean());
    }

    #[test]
    fn encode_decode() {
        let mut b = DirtyBitmap::new(10 << 20, 4096, Position::new(3, 4)).unwrap();
        b.set_range(12345, 99999).unwrap();
        let enc = b.encode();
        assert_eq!(DirtyBitmap::decode(&enc, 10 << 20, 4096).unwrap(), b);
        assert!(DirtyBitmap::decode(&enc, 10 << 20, 8192).is_err());
        assert!(DirtyBitmap::decode(&enc[..30], 10 << 20, 4096).is_err());
        assert_eq!(DirtyBitmap::new(1, 1000, Position::ZERO), Err(BitmapError::Granularity(1000)));
    }
}
