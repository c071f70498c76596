//! Unit tests of the journal ring over `MemDisk`.

use super::*;
use crate::disk::MemDisk;
use bytes::Bytes;

fn journal(ring: usize) -> Journal<MemDisk> {
    Journal::format(MemDisk::new(2 * HEADER_SLOT_LEN as usize + ring)).unwrap()
}

fn reopen(j: Journal<MemDisk>) -> Journal<MemDisk> {
    let mut d = j.into_disk();
    d.crash();
    Journal::open(d).unwrap()
}

#[test]
fn append_sync_reopen() {
    let mut j = journal(8192);
    assert_eq!(j.last(), Position::ZERO);
    j.append_next(1, 0, b"hello").unwrap();
    j.append_next(1, 4096, b"").unwrap(); // a no-op record
    assert_eq!(j.durable(), Position::ZERO);
    assert_eq!(j.sync().unwrap(), Position::new(1, 2));
    let j = reopen(j);
    assert_eq!(j.last(), Position::new(1, 2));
    let recs: Vec<Record> = j.iter_from(1).collect::<Result<_, _>>().unwrap();
    assert_eq!(recs[0].payload, &b"hello"[..]);
    assert_eq!(recs[1].payload, &b""[..]);
    assert_eq!(recs[1].prev, Position::new(1, 1));
}

#[test]
fn one_sync_per_batch() {
    let mut j = journal(65536);
    let before = j.disk_mut().sync_count();
    for _ in 0..50 {
        j.append_next(1, 0, &[1; 100]).unwrap();
    }
    j.sync().unwrap();
    assert_eq!(j.disk_mut().sync_count(), before + 1);
}

#[test]
fn refuses_records_that_do_not_chain() {
    let mut j = journal(8192);
    j.append_next(2, 0, b"a").unwrap();
    let bad = Record { epoch: 2, seq: 3, prev: Position::new(2, 2), offset: 0, payload: Bytes::new() };
    assert!(matches!(j.append(&bad), Err(JournalError::NotChained { .. })));
    let older = Record { epoch: 1, seq: 2, prev: Position::new(2, 1), offset: 0, payload: Bytes::new() };
    assert!(matches!(j.append(&older), Err(JournalError::NotChained { .. })));
}

#[test]
fn truncate_after_is_not_undone_by_a_restart() {
    let mut j = journal(8192);
    for _ in 0..5 {
        j.append_next(1, 0, b"x").unwrap();
    }
    j.sync().unwrap();
    j.truncate_after(2).unwrap();
    assert_eq!(j.last(), Position::new(1, 2));
    j.sync().unwrap();
    let mut j = reopen(j);
    assert_eq!(j.last(), Position::new(1, 2));
    // A new leader's record replaces the conflicting tail.
    j.append_next(2, 0, b"y").unwrap();
    j.sync().unwrap();
    let mut j = reopen(j);
    assert_eq!(j.last(), Position::new(2, 3));
    assert!(j.truncate_after(9).is_err());
}

#[test]
fn wraps_with_padding_and_reports_full() {
    let mut j = journal(4096);
    let mut n = 0;
    loop {
        match j.append_next(1, 0, &[7; 300]) {
            Ok(_) => n += 1,
            Err(JournalError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n >= 10);
    j.sync().unwrap();
    // Compact and keep going round the ring many times.
    for _ in 0..100 {
        let last = j.last().seq;
        j.discard_through(last - 2).unwrap();
        while j.append_next(1, 0, &[7; 300]).is_ok() {}
        j.sync().unwrap();
        let expect = j.last();
        let discarded = j.discarded();
        j = reopen(j);
        assert_eq!(j.last(), expect);
        assert_eq!(j.discarded(), discarded);
        for r in j.iter_from(0) {
            assert_eq!(r.unwrap().payload, vec![7; 300]);
        }
    }
}

#[test]
fn emptied_journal_keeps_its_position() {
    let mut j = journal(8192);
    j.append_next(3, 0, b"a").unwrap();
    j.append_next(3, 0, b"b").unwrap();
    assert!(matches!(j.discard_through(2), Err(JournalError::NotDurable { .. })));
    j.sync().unwrap();
    j.discard_through(2).unwrap();
    let mut j = reopen(j);
    assert_eq!(j.last(), Position::new(3, 2));
    assert_eq!(j.discarded(), Position::new(3, 2));
    j.append_next(4, 0, b"c").unwrap();
    j.sync().unwrap();
    let j = reopen(j);
    assert_eq!(j.last(), Position::new(4, 3));
}

#[test]
fn failed_sync_is_never_retried() {
    let mut j = journal(8192);
    j.append_next(1, 0, b"a").unwrap();
    j.disk_mut().fail_next_sync(crate::disk::SyncFault::KeepClean);
    assert!(j.sync().is_err());
    assert!(j.is_failed());
    assert!(matches!(j.sync(), Err(JournalError::Failed)));
    assert!(matches!(j.append_next(1, 0, b"b"), Err(JournalError::Failed)));
}

#[test]
fn after_a_failed_sync_a_reopen_vouches_only_for_what_was_synced() {
    use crate::disk::SyncFault;
    for fault in [SyncFault::KeepClean, SyncFault::DropPages] {
        let mut j = journal(8192);
        j.append_next(1, 0, b"a").unwrap();
        let vouched = j.sync().unwrap();
        j.append_next(1, 0, b"b").unwrap();
        j.disk_mut().fail_next_sync(fault);
        assert!(j.sync().is_err());
        let mut d = j.into_disk();
        d.crash();
        // A plain open would take the cached record for durable (KeepClean).
        let j = Journal::open_vouched(d, vouched).unwrap();
        assert_eq!(j.last(), vouched, "{fault:?}");
        assert_eq!(j.durable(), vouched);
        // The cut is on the medium: a power cut changes nothing.
        let mut d = j.into_disk();
        d.power_cut(&mut || 0);
        let mut j = Journal::open(d).unwrap();
        assert_eq!(j.last(), vouched, "{fault:?}");
        j.append_next(2, 0, b"c").unwrap();
        j.sync().unwrap();
        assert_eq!(reopen(j).last(), Position::new(2, 2));
    }
}

#[test]
fn oversized_payload_is_refused() {
    let mut j = journal(4096);
    let max = j.max_payload() as usize;
    assert!(matches!(j.append_next(1, 0, &vec![0; max + 1]), Err(JournalError::TooLarge { .. })));
    j.append_next(1, 0, &vec![0; max]).unwrap();
}

#[test]
fn unformatted_disk_has_no_header() {
    assert!(matches!(Journal::open(MemDisk::new(16384)), Err(JournalError::NoHeader)));
    assert!(matches!(Journal::format(MemDisk::new(9000)), Err(JournalError::TooSmall { .. })));
}

/// A sync started before more appends makes only what came before it
/// durable, on the journal's position and on the medium alike.
#[test]
fn a_started_sync_covers_only_the_records_before_it() {
    let mut j = journal(65536);
    j.append_next(1, 0, b"a").unwrap();
    j.append_next(1, 0, b"b").unwrap();
    let (sync, job) = j.start_sync().unwrap();
    j.append_next(1, 0, b"c").unwrap();
    assert_eq!(j.durable(), Position::ZERO, "nothing is durable before the finish");
    assert_eq!(j.finish_sync(sync, job.run()).unwrap(), Position::new(1, 2));
    assert_eq!(j.last(), Position::new(1, 3));
    // A power cut now keeps records 1-2 and may lose 3.
    let mut d = j.into_disk();
    d.power_cut(&mut || 0);
    let j = Journal::open(d).unwrap();
    assert_eq!(j.last(), Position::new(1, 2));
}

/// A truncation (rule 5) while a sync runs may replace the records it
/// covers: its finish then vouches for nothing, and the next sync does.
#[test]
fn a_truncation_during_a_sync_voids_it() {
    let mut j = journal(65536);
    for _ in 0..3 {
        j.append_next(1, 0, b"x").unwrap();
    }
    j.sync().unwrap();
    j.append_next(1, 0, b"y").unwrap();
    j.append_next(1, 0, b"y").unwrap();
    let (sync, job) = j.start_sync().unwrap();
    j.truncate_after(3).unwrap();
    j.append_next(2, 0, b"z").unwrap();
    j.append_next(2, 0, b"z").unwrap();
    assert_eq!(j.finish_sync(sync, job.run()).unwrap(), Position::new(1, 3), "(2, 5) is not durable");
    assert_eq!(j.sync().unwrap(), Position::new(2, 5));
}

/// A failed finish is rule 9's failed sync: the journal refuses from then on.
#[test]
fn a_started_sync_that_fails_fails_the_journal() {
    let mut j = journal(65536);
    j.append_next(1, 0, b"a").unwrap();
    let (sync, _job) = j.start_sync().unwrap();
    assert!(j.finish_sync(sync, Err(std::io::Error::other("EIO"))).is_err());
    assert!(j.append_next(1, 0, b"b").is_err());
    assert!(j.sync().is_err());
}

/// Review of 342adc4: the sync job's fdatasync fails (the kernel keeps the
/// pages clean); before the volume thread takes its result, a compaction's
/// header sync runs inline. That sync must fail too (a second open file
/// description is told of the writeback error as well), or `discard_through`
/// would set durable to the last record and the journal would vouch for
/// records the medium lacks.
/// Records 1-3 synced, 4-5 appended, and the next sync's writeback set to
/// fail with the pages kept clean (what Linux does after an I/O error).
fn journal_whose_next_sync_fails() -> Journal<MemDisk> {
    let mut j = journal(65536);
    for _ in 0..3 {
        j.append_next(1, 0, b"x").unwrap();
    }
    j.sync().unwrap();
    j.append_next(1, 0, b"y").unwrap();
    j.append_next(1, 0, b"y").unwrap();
    j.disk_mut().fail_next_sync(crate::disk::SyncFault::KeepClean);
    j
}

#[test]
fn a_failed_sync_job_fails_the_next_inline_sync_too() {
    let mut j = journal_whose_next_sync_fails();
    let (sync, job) = j.start_sync().unwrap();
    let result = std::thread::spawn(move || job.run()).join().unwrap();
    // The volume thread, not yet at the job's result: more, and a compaction.
    j.append_next(1, 0, b"z").unwrap();
    assert!(j.discard_through(2).is_err(), "the header sync vouched for pages the kernel dropped");
    assert_eq!(j.durable(), Position::new(1, 3), "nothing past what a sync really covered");
    assert!(j.finish_sync(sync, result).is_err());
    assert!(j.append_next(1, 0, b"w").is_err(), "failed for good (rule 9)");
}

/// Second review of 342adc4: the process dies after its sync job's
/// fdatasync failed (the kernel keeps the pages, clean) and before it could
/// mark itself failed. The next process is told of no error; the journal
/// it opens must stand where the medium does, not where the cache does.
#[test]
fn a_journal_reopened_after_a_failed_sync_job_stands_where_the_medium_does() {
    let mut j = journal_whose_next_sync_fails();
    let (_sync, job) = j.start_sync().unwrap();
    let _ = job.run();
    let j = reopen(j);
    let durable = j.durable();
    let mut disk = j.into_disk();
    let medium = Journal::open(MemDisk::from_bytes(disk.durable_bytes().to_vec())).unwrap();
    assert!(
        medium.last().seq >= durable.seq,
        "reopened durable through {durable:?}, the medium holds {:?}",
        medium.last()
    );
    assert_eq!(durable, Position::new(1, 3));
    let _ = disk.sync();
}
