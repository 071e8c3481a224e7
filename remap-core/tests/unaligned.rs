//! Unaligned and partial-block I/O over blocks that move: a partial write merges the rest of
//! the block from where its data lives; if the rest is unreadable the write fails and the
//! block stays pending until a whole-block write; requests that span main, spare and
//! pending runs; the last block when the device size is not a multiple of the block size.
//! Every scenario runs at block sizes 512, 4096 and 65536.

mod common;

use common::{Rig, SECTOR, pattern};
use remap_core::backend::errno;
use remap_core::table::Segment;
use remap_core::{DeviceError, IoError};

const SIZES: [u64; 3] = [512, 4096, 65536];

/// `base` with `patch` laid over it at `at`.
fn overlay(base: &[u8], at: u64, patch: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    v[at as usize..at as usize + patch.len()].copy_from_slice(patch);
    v
}

fn partial_write_merges_the_rest_from_main(bs: u64) {
    let rig = Rig::new(bs, 4 * bs, 4);
    let a = pattern(1, (4 * bs) as usize);
    rig.dev.write(0, &a).unwrap();
    rig.main.fail_writes(rig.main_sectors(2));
    // Odd offset and length inside block 2.
    let off = 2 * bs + bs / 3 + 1;
    let patch = pattern(2, (bs / 4).max(7) as usize);
    rig.dev.write(off, &patch).unwrap();
    let want = overlay(&a, off, &patch);
    assert_eq!(rig.read_vec(0, want.len()), want, "bs {bs}");
    assert!(rig.dev.entry(2).is_some_and(|e| e.is_remapped()));

    // A request from the middle of block 1 to the middle of block 3 that hits a failing
    // block in its middle (whole) and failing partial blocks at both ends.
    rig.main.fail_writes(rig.main_sectors(1));
    rig.main.fail_writes(rig.main_sectors(3));
    let start = bs + bs / 2 + 3;
    let span = pattern(3, (2 * bs) as usize);
    rig.dev.write(start, &span).unwrap();
    let want = overlay(&want, start, &span);
    assert_eq!(rig.read_vec(0, want.len()), want, "bs {bs}");
    assert_eq!(
        rig.dev.segments(0, 4),
        vec![
            Segment::Main { lba: 0, blocks: 1 },
            Segment::Spare {
                lba: 1,
                spare: 1,
                blocks: 1
            },
            Segment::Spare {
                lba: 2,
                spare: 0,
                blocks: 1
            },
            Segment::Spare {
                lba: 3,
                spare: 2,
                blocks: 1
            },
        ],
        "bs {bs}"
    );
}

#[test]
fn a_partial_write_over_a_moving_block_merges_the_rest_from_main() {
    for bs in SIZES {
        partial_write_merges_the_rest_from_main(bs);
    }
}

fn unreadable_rest_fails_and_stays_pending(bs: u64) {
    let rig = Rig::new(bs, 4 * bs, 4);
    let a = pattern(1, (4 * bs) as usize);
    rig.dev.write(0, &a).unwrap();
    // Block 2 refuses writes, and its last sector cannot be read.
    rig.main.fail_writes(rig.main_sectors(2));
    rig.main.fail_reads([rig.main_sectors(2).end - 1]);
    let err = rig.dev.write(2 * bs + 10, &[7u8; 100]).unwrap_err();
    assert!(
        matches!(err, DeviceError::PartialWriteUnreadable { lba: 2 }),
        "bs {bs}: {err}"
    );
    let e = rig.dev.entry(2).unwrap();
    assert!(e.is_pending() && e.main_is_current(), "bs {bs}: {e:?}");
    assert!(matches!(
        rig.dev.read(2 * bs, &mut [0u8; 1]),
        Err(DeviceError::Pending { lba: 2 })
    ));
    // Still pending: a second partial write fails the same way, touching no spare.
    assert!(rig.dev.write(2 * bs, &[8u8; 1]).is_err());
    assert_eq!(rig.dev.stats().spares_used, 0);
    // A write covering the whole block moves it; the neighbours are untouched.
    let whole = pattern(4, bs as usize);
    rig.dev.write(2 * bs, &whole).unwrap();
    let want = overlay(&a, 2 * bs, &whole);
    assert_eq!(rig.read_vec(0, want.len()), want, "bs {bs}");
    // Now partial writes go to its spare.
    rig.dev.write(2 * bs + 1, &[9u8; 3]).unwrap();
    let want = overlay(&want, 2 * bs + 1, &[9u8; 3]);
    assert_eq!(rig.read_vec(0, want.len()), want, "bs {bs}");
}

#[test]
fn a_partial_write_whose_rest_is_unreadable_fails_and_the_block_stays_pending() {
    for bs in SIZES {
        unreadable_rest_fails_and_stays_pending(bs);
    }
}

fn spanning_runs(bs: u64) {
    let rig = Rig::new(bs, 12 * bs, 8);
    let a = pattern(1, (12 * bs) as usize);
    for lba in [2, 3, 7] {
        rig.main.fail_writes(rig.main_sectors(lba));
    }
    rig.dev.write(0, &a).unwrap();
    rig.main.fail_reads(rig.main_sectors(5));
    assert!(rig.dev.read(5 * bs, &mut vec![0u8; bs as usize]).is_err());
    assert_eq!(
        rig.dev.segments(0, 12),
        vec![
            Segment::Main { lba: 0, blocks: 2 },
            Segment::Spare {
                lba: 2,
                spare: 0,
                blocks: 2
            },
            Segment::Main { lba: 4, blocks: 1 },
            Segment::Pending { lba: 5, blocks: 1 },
            Segment::Main { lba: 6, blocks: 1 },
            Segment::Spare {
                lba: 7,
                spare: 2,
                blocks: 1
            },
            Segment::Main { lba: 8, blocks: 4 },
        ],
        "bs {bs}"
    );
    let slice = |from: u64, to: u64| a[from as usize..to as usize].to_vec();
    // Main -> spare run -> main, unaligned at both ends.
    let (from, to) = (bs + 5, 4 * bs + bs / 2);
    assert_eq!(rig.read_vec(from, (to - from) as usize), slice(from, to));
    // Main -> spare -> main around block 7.
    let (from, to) = (6 * bs + 1, 8 * bs + 1);
    assert_eq!(rig.read_vec(from, (to - from) as usize), slice(from, to));
    // Anything touching the pending block fails.
    let mut buf = vec![0u8; (2 * bs) as usize];
    assert!(matches!(
        rig.dev.read(4 * bs + 7, &mut buf),
        Err(DeviceError::Pending { lba: 5 })
    ));

    // An unaligned write over all kinds of runs, covering the pending block whole.
    let (from, to) = (bs + bs / 2 + 1, 9 * bs - 3);
    let b = pattern(2, (to - from) as usize);
    rig.dev.write(from, &b).unwrap();
    let want = overlay(&a, from, &b);
    assert_eq!(rig.read_vec(0, want.len()), want, "bs {bs}");
    assert!(rig.dev.entry(5).is_some_and(|e| e.is_remapped()));

    // A write whose last block is pending and only partly covered: that block fails, the
    // rest of the request lands (or not: a failed write may leave old or new data), and
    // nothing outside the request changes.
    rig.main.fail_reads(rig.main_sectors(10));
    assert!(rig.dev.read(10 * bs, &mut [0u8; 1]).is_err());
    let (from, to) = (9 * bs + 2, 10 * bs + bs / 2);
    let c = pattern(3, (to - from) as usize);
    assert!(matches!(
        rig.dev.write(from, &c),
        Err(DeviceError::PartialWriteUnreadable { lba: 10 })
    ));
    let got = rig.read_vec(0, (10 * bs) as usize);
    let (before, after) = (
        want[..(10 * bs) as usize].to_vec(),
        overlay(&want, from, &c),
    );
    assert_eq!(got[..from as usize], before[..from as usize]);
    let landed = &got[from as usize..];
    assert!(
        landed == &before[from as usize..] || landed == &after[from as usize..(10 * bs) as usize],
        "bs {bs}: block 9 holds neither the old nor the new data"
    );
    assert_eq!(
        rig.read_vec(11 * bs, bs as usize),
        want[(11 * bs) as usize..]
    );
}

#[test]
fn requests_spanning_main_spare_and_pending_runs() {
    for bs in SIZES {
        spanning_runs(bs);
    }
}

fn last_partial_block(bs: u64) {
    // Five whole blocks and half of a sixth (for 512-byte blocks, a block of 256 bytes).
    let size = 5 * bs + bs / 2;
    let rig = Rig::new(bs, size, 4);
    assert_eq!(rig.dev.blocks(), 6);
    let a = pattern(1, size as usize);
    rig.dev.write(0, &a).unwrap();
    let last = 5 * bs;
    // The last block fails writes; a small write at its start moves it, merging the rest.
    rig.main.fail_writes(
        rig.main_sectors(5).start..(size.div_ceil(SECTOR)).max(rig.main_sectors(5).start + 1),
    );
    rig.dev.write(last, &[0xABu8; 10]).unwrap();
    let want = overlay(&a, last, &[0xABu8; 10]);
    assert_eq!(rig.read_vec(0, size as usize), want, "bs {bs}");
    let spare = rig.dev.entry(5).and_then(|e| e.spare).unwrap();
    let on_spare = rig.spare_block(spare);
    assert_eq!(
        on_spare[..(bs / 2) as usize],
        want[last as usize..],
        "bs {bs}"
    );
    // A write ending exactly at the end of the device goes to the spare.
    let tail = pattern(2, (bs / 2 - 3) as usize);
    rig.dev.write(size - tail.len() as u64, &tail).unwrap();
    let want = overlay(&want, size - tail.len() as u64, &tail);
    assert_eq!(rig.read_vec(0, size as usize), want, "bs {bs}");
    // Past the end: refused as the caller's mistake, with no remap and no pending mark.
    let entries = rig.dev.entries(0, 6);
    let err = rig.dev.write(size - 5, &[1u8; 10]).unwrap_err();
    assert!(
        matches!(err, DeviceError::Io(IoError::OutOfRange { .. })),
        "{err}"
    );
    assert_eq!(err.errno(), errno::EINVAL);
    assert!(rig.dev.read(size, &mut [0u8; 1]).is_err());
    assert!(rig.dev.read(size, &mut []).is_ok());
    assert_eq!(rig.dev.entries(0, 6), entries);
}

#[test]
fn the_last_block_may_be_partial() {
    for bs in SIZES {
        last_partial_block(bs);
    }
}
