//! Region hashes for hash resync and online verify: XXH3-128 over each
//! region's bytes as the block store holds them.

use triad_volume::{Disk, Store};

use crate::RegionHash;
use crate::StorageError;

/// Most regions hashed per request (bounds the work one message can ask for).
pub(crate) const MAX_REGIONS: u32 = 256;

/// Hashes of `count` consecutive regions of `region` bytes from `offset`
/// (the last region may be short at the volume's end; regions past the end
/// are not hashed).
pub(crate) fn region_hashes<D: Disk, M: Disk>(
    store: &Store<D, M>,
    offset: u64,
    count: u32,
    region: u64,
) -> Result<Vec<RegionHash>, StorageError> {
    let len = store.volume_len();
    let mut out = Vec::with_capacity(count.min(MAX_REGIONS) as usize);
    let mut buf = vec![0u8; region as usize];
    for i in 0..u64::from(count.min(MAX_REGIONS)) {
        let off = offset.saturating_add(i.saturating_mul(region));
        if off >= len {
            break;
        }
        let n = region.min(len - off) as usize;
        store.read(off, &mut buf[..n])?;
        out.push(xxhash_rust::xxh3::xxh3_128(&buf[..n]).to_le_bytes());
    }
    Ok(out)
}
