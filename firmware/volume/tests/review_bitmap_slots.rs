//! Review (issue 8, rule 9): the two-slot scheme of the per-peer bitmaps
//! assumes the slot it overwrites is not the only durable copy. After a
//! failed metadata fsync whose pages Linux keeps in the cache marked clean
//! (KeepClean) and a `Recovery::Reopen` (same page cache), the next
//! `persist_bitmap` takes its generation from the cached copy that never
//! reached the medium and overwrites the *other* slot: the last copy that
//! did. A power cut before that write's sync (a torn multi-sector slot)
//! leaves only a bitmap two generations old, missing bits for records the
//! journal already discarded. Fixed: `Store::open` settles every bitmap
//! pair of a failure-marked store (`SlotPair::settle`) before anything
//! else writes to it (docs/replication.md, rule 9).
#![allow(clippy::unwrap_used)]

use triad_volume::store::{meta_len_needed, Format};
use triad_volume::{DirtyBitmap, MemDisk, Position, Store, SyncFault};

const VOL: u64 = 16 << 20;
const GRAN: u64 = 4096;

#[test]
fn a_bitmap_persisted_before_a_failed_meta_sync_survives_the_reopen_and_a_power_cut() {
    let data = MemDisk::new(VOL as usize);
    let meta = MemDisk::new(meta_len_needed(VOL, GRAN, 2) as usize);
    let mut s = Store::format(data, meta, Format { granularity: GRAN, incarnation: 7, learner: false }).unwrap();
    let base = Position::new(1, 1);
    // Generation 1: bits for block 0.
    let mut b = DirtyBitmap::new(VOL, GRAN, base).unwrap();
    b.set_range(0, 4096).unwrap();
    s.persist_bitmap(0, &b).unwrap();
    // Generation 2: block 100 too. It is durable, so the journal now
    // discards the records that wrote block 100 (rule 10).
    b.set_range(100 * 4096, 4096).unwrap();
    s.persist_bitmap(0, &b).unwrap();
    let durable_b2 = b.clone();
    // Generation 3: its fsync fails, pages kept in the cache, clean. The
    // node marks itself failed (that sync succeeds): Recovery::Reopen.
    b.set_range(200 * 4096, 4096).unwrap();
    s.disks_mut().1.fail_next_sync(SyncFault::KeepClean);
    assert!(s.persist_bitmap(0, &b).is_err());
    s.mark_failed(Position::new(1, 10)).unwrap();
    // Reopen over the same page cache (process restart, new descriptors).
    let (mut d, mut m) = s.into_disks();
    d.crash();
    m.crash();
    let mut s = Store::open(d, m).unwrap();
    assert!(s.checkpointed().failed.is_some());
    // The recovery persists the bitmap again (a resync's end rebases it,
    // or a later compaction): power is cut before that write's sync.
    let mut again = DirtyBitmap::new(VOL, GRAN, Position::new(1, 5)).unwrap();
    again.set_range(100 * 4096, 4096).unwrap();
    again.set_range(4000 * 4096, 4096).unwrap(); // a bit in the slot's second sector
    s.disks_mut().1.fail_next_sync(SyncFault::Sticky);
    assert!(s.persist_bitmap(0, &again).is_err());
    let (mut d, mut m) = s.into_disks();
    // The slot write spans two sectors: the first lands, the second not.
    let mut picks = [1u64, 0].into_iter().cycle();
    m.power_cut(&mut || picks.next().unwrap());
    d.power_cut(&mut || 0);
    let s = Store::open(d, m).unwrap();
    let loaded = s.load_bitmap(0).unwrap().expect("a bitmap");
    let covers_100 = loaded.ranges().any(|(off, len)| off <= 100 * 4096 && 100 * 4096 < off + len);
    assert!(
        covers_100,
        "the bitmap that reached the medium before the failure (generation 2, block 100 dirty, base {:?}) \
         is gone: loaded base {:?}, ranges {:?}",
        durable_b2.base(),
        loaded.base(),
        loaded.ranges().collect::<Vec<_>>()
    );
}
