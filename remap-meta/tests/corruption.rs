//! Corruption of every metadata structure, one at a time: each superblock copy, both
//! together, each checkpoint area (header and payload), each copy of each live journal
//! block, and both copies of one. Each case ends one of two ways: the good copy wins and the
//! device opens with exactly the table it had, or the open is refused with a typed error.
//! Either way the files are unchanged byte for byte (SHA-256 before and after): opening
//! never writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use remap_core::clock::ManualClock;
use remap_core::testing::FaultyBackend;
use remap_core::{Entry, FileBackend};
use remap_meta::error::Region;
use remap_meta::open::MetaError;
use remap_meta::recovery::RecoverError;
use remap_meta::{CreateOptions, DeviceIdentity, Superblock, create, inspect, open};
use sha2::{Digest, Sha256};

const MAIN_BYTES: u64 = 4 << 20;
const SPARE_BYTES: u64 = 2 << 20;
const BS: u64 = 4096;

struct Pristine {
    _dir: tempfile::TempDir,
    main: PathBuf,
    spare: PathBuf,
    table: Vec<(u64, Entry)>,
    sb: Superblock,
    live: u32,
}

fn file(path: &Path, len: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

/// A device pair with a checkpoint behind it and a few live journal blocks after it.
fn pristine() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let (main, spare) = (dir.path().join("main.img"), dir.path().join("spare.img"));
    file(&main, MAIN_BYTES);
    file(&spare, SPARE_BYTES);
    {
        let s = FileBackend::open(&spare).unwrap();
        let opts = CreateOptions {
            journal_blocks: Some(8),
            pool_blocks: Some(64),
            ..Default::default()
        };
        create(&s, MAIN_BYTES, DeviceIdentity::NONE, &opts).unwrap();
    }
    {
        let m = FaultyBackend::new(FileBackend::open(&main).unwrap(), BS);
        let s = Arc::new(FileBackend::open(&spare).unwrap());
        let dev = open(
            m,
            s,
            &DeviceIdentity::NONE,
            Arc::new(ManualClock::new(5_000_000_000)),
        )
        .unwrap()
        .device;
        // 10 remaps fill the 8-block ring and force a checkpoint; 3 more stay in the journal.
        dev.main().fail_writes(0..13);
        for lba in 0..13u64 {
            dev.write(lba * BS, &[lba as u8; BS as usize]).unwrap();
        }
        dev.main().fail_reads([100]);
        assert!(dev.read(100 * BS, &mut [0u8; BS as usize]).is_err());
    }
    let s = FileBackend::open(&spare).unwrap();
    let rec = inspect(&s).unwrap();
    assert!(
        rec.superblock.checkpoint_sequence > 1,
        "a checkpoint was written"
    );
    assert!(
        rec.report.journal_blocks_replayed >= 2,
        "live journal blocks remain"
    );
    Pristine {
        table: rec.table.iter().collect(),
        sb: rec.superblock,
        live: rec.report.journal_blocks_replayed,
        main,
        spare,
        _dir: dir,
    }
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(path).unwrap()).to_vec()
}

/// Flip bytes of the spare image at `offsets`.
fn corrupt(path: &Path, offsets: &[u64]) {
    let mut bytes = fs::read(path).unwrap();
    for &o in offsets {
        bytes[o as usize] ^= 0x5A;
    }
    fs::write(path, bytes).unwrap();
}

enum Outcome {
    /// Opens with the pristine table.
    Same,
    /// Refused with this kind of error.
    Refused(fn(&MetaError) -> bool),
}

/// Overwrite `ranges` (offset, length) of the spare image with garbage: a region destroyed
/// whole.
fn destroy(path: &Path, ranges: &[(u64, u64)]) {
    let mut bytes = fs::read(path).unwrap();
    for &(at, len) in ranges {
        for (i, b) in bytes[at as usize..(at + len) as usize]
            .iter_mut()
            .enumerate()
        {
            *b = 0xA5 ^ (i as u8);
        }
    }
    fs::write(path, bytes).unwrap();
}

fn case(p: &Pristine, name: &str, offsets: &[u64], want: Outcome) {
    case_with(p, name, |spare| corrupt(spare, offsets), want);
}

fn case_with(p: &Pristine, name: &str, damage: impl FnOnce(&Path), want: Outcome) {
    let dir = tempfile::tempdir().unwrap();
    let (main, spare) = (dir.path().join("main.img"), dir.path().join("spare.img"));
    fs::copy(&p.main, &main).unwrap();
    fs::copy(&p.spare, &spare).unwrap();
    damage(&spare);
    let before = (sha(&main), sha(&spare));
    let result = open(
        FileBackend::open(&main).unwrap(),
        Arc::new(FileBackend::open(&spare).unwrap()),
        &DeviceIdentity::NONE,
        Arc::new(ManualClock::new(9_000_000_000)),
    );
    match (result, want) {
        (Ok(opened), Outcome::Same) => {
            let table: Vec<_> = opened.device.entries(0, u64::MAX);
            assert_eq!(table, p.table, "{name}: table differs");
        }
        (Err(e), Outcome::Refused(is_expected)) => {
            assert!(is_expected(&e), "{name}: unexpected error kind: {e}");
            assert!(!e.to_string().is_empty());
        }
        (Ok(_), Outcome::Refused(_)) => panic!("{name}: opened, expected a refusal"),
        (Err(e), Outcome::Same) => panic!("{name}: refused, expected the good copy to win: {e}"),
    }
    assert_eq!((sha(&main), sha(&spare)), before, "{name}: files changed");
}

fn no_superblock(e: &MetaError) -> bool {
    matches!(e, MetaError::Recover(RecoverError::NoSuperblock { .. }))
}

fn checkpoint_error(e: &MetaError) -> bool {
    matches!(e, MetaError::Recover(RecoverError::Checkpoint(_)))
}

fn journal_corrupt(e: &MetaError) -> bool {
    matches!(e, MetaError::Recover(RecoverError::JournalCorrupt { .. }))
}

#[test]
fn superblocks_one_at_a_time_and_both() {
    let p = pristine();
    for (name, base) in [("superblock A", 0u64), ("superblock B", 4096)] {
        for at in [0u64, 20, 60, 140, 300, 4000, 4095] {
            case(
                &p,
                &format!("{name} byte {at}"),
                &[base + at],
                Outcome::Same,
            );
        }
    }
    // Both head copies: the tail copy (format version 2) opens the device.
    case(&p, "both head superblocks", &[8, 4096 + 8], Outcome::Same);
    case(
        &p,
        "both head superblocks (crc)",
        &[4095, 8191],
        Outcome::Same,
    );
    let tail = SPARE_BYTES - 4096;
    for at in [0u64, 20, 4095] {
        case(
            &p,
            &format!("tail superblock byte {at}"),
            &[tail + at],
            Outcome::Same,
        );
    }
    case(
        &p,
        "all three superblock copies",
        &[8, 4096 + 8, tail + 8],
        Outcome::Refused(no_superblock),
    );
}

#[test]
fn checkpoint_areas() {
    let p = pristine();
    let g = p.sb.geometry;
    let active = g.checkpoint_offsets[usize::from(p.sb.active_checkpoint)];
    let inactive = g.checkpoint_offsets[usize::from(1 - p.sb.active_checkpoint)];
    for at in [0u64, 30, 70, 4095] {
        case(
            &p,
            &format!("active checkpoint header byte {at}"),
            &[active + at],
            Outcome::Refused(checkpoint_error),
        );
    }
    for at in [0u64, 9, 13, 100] {
        case(
            &p,
            &format!("active checkpoint payload byte {at}"),
            &[active + 4096 + at],
            Outcome::Refused(checkpoint_error),
        );
    }
    for at in [0u64, 30, 4095, 4096, 5000] {
        case(
            &p,
            &format!("inactive checkpoint byte {at}"),
            &[inactive + at],
            Outcome::Same,
        );
    }
}

#[test]
fn journal_blocks_each_copy_and_both() {
    let p = pristine();
    let g = p.sb.geometry;
    let ring = g.journal_blocks;
    let live: Vec<u32> = (0..p.live)
        .map(|i| (p.sb.journal_start_position + i) % ring)
        .collect();
    for &pos in &live {
        for copy in 0..2u8 {
            let base = g.journal_block_offset(copy, pos);
            for at in [0u64, 30, 45, 4095] {
                case(
                    &p,
                    &format!("journal block {pos} copy {copy} byte {at}"),
                    &[base + at],
                    Outcome::Same,
                );
            }
        }
    }
    // Both copies of a live block that later commits follow: refused, not truncated.
    let first = live[0];
    case(
        &p,
        "both copies of the first live journal block",
        &[
            g.journal_block_offset(0, first) + 50,
            g.journal_block_offset(1, first) + 50,
        ],
        Outcome::Refused(journal_corrupt),
    );
    // Blocks outside the live window are history: corrupting them changes nothing.
    let dead: Vec<u32> = (0..ring).filter(|p| !live.contains(p)).collect();
    for &pos in &dead {
        case(
            &p,
            &format!("stale journal block {pos}"),
            &[
                g.journal_block_offset(0, pos) + 60,
                g.journal_block_offset(1, pos) + 60,
            ],
            Outcome::Same,
        );
    }
}

#[test]
fn check_reports_and_repair_rewrites_bad_copies() {
    let p = pristine();
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join("spare.img");
    fs::copy(&p.spare, &spare).unwrap();
    let live0 = p.sb.journal_start_position;
    corrupt(
        &spare,
        &[100, p.sb.geometry.journal_block_offset(1, live0) + 77],
    );
    let s = FileBackend::open(&spare).unwrap();
    let report = remap_meta::check(&s).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.repairable.len(), 2, "{:?}", report.repairable);
    assert!(report.fatal.is_empty());
    let repaired = remap_meta::repair(&s).unwrap();
    assert_eq!(
        repaired.rewritten,
        vec![Region::SuperblockA, Region::Journal(live0)]
    );
    assert!(repaired.after.is_clean(), "{:?}", repaired.after.repairable);
    let rec = inspect(&s).unwrap();
    assert_eq!(rec.table.iter().collect::<Vec<_>>(), p.table);
}

/// The spares of the pristine pair, in the order remaps took them: block `lba` (0..13) on
/// spare `lba`.
fn pristine_spare(lba: u64) -> u64 {
    lba
}

/// Each area destroyed whole, one at a time: every superblock copy, all head copies, the
/// inactive checkpoint area and each journal ring copy open to the same table; the active
/// checkpoint area is refused by open (files unchanged) and then salvaged.
#[test]
fn each_area_destroyed_whole() {
    let p = pristine();
    let g = p.sb.geometry;
    let meta = 4096u64;
    let ring_bytes = u64::from(g.journal_blocks) * meta;
    let tail = SPARE_BYTES - meta;
    let inactive = g.checkpoint_offsets[usize::from(1 - p.sb.active_checkpoint)];
    for (name, ranges) in [
        ("superblock A whole", vec![(0, meta)]),
        ("superblock B whole", vec![(meta, meta)]),
        ("tail superblock whole", vec![(tail, meta)]),
        ("both head superblocks whole", vec![(0, 2 * meta)]),
        (
            "inactive checkpoint area whole",
            vec![(inactive, g.checkpoint_area_bytes)],
        ),
        (
            "journal ring copy 0 whole",
            vec![(g.journal_block_offset(0, 0), ring_bytes)],
        ),
        (
            "journal ring copy 1 whole",
            vec![(g.journal_block_offset(1, 0), ring_bytes)],
        ),
    ] {
        case_with(&p, name, |s| destroy(s, &ranges), Outcome::Same);
    }
    case_with(
        &p,
        "every superblock copy whole",
        |s| destroy(s, &[(0, 2 * meta), (tail, meta)]),
        Outcome::Refused(no_superblock),
    );
    let active = g.checkpoint_offsets[usize::from(p.sb.active_checkpoint)];
    case_with(
        &p,
        "active checkpoint area whole",
        |s| destroy(s, &[(active, g.checkpoint_area_bytes)]),
        Outcome::Refused(checkpoint_error),
    );
}

/// A salvage of `damage`d copy of the pristine pair: the report, the table after, and the
/// data of every block still remapped.
fn salvaged(
    p: &Pristine,
    damage: impl FnOnce(&Path),
) -> (remap_meta::SalvageReport, Vec<(u64, Entry)>) {
    let dir = tempfile::tempdir().unwrap();
    let (main, spare) = (dir.path().join("main.img"), dir.path().join("spare.img"));
    fs::copy(&p.main, &main).unwrap();
    fs::copy(&p.spare, &spare).unwrap();
    damage(&spare);
    let s = FileBackend::open(&spare).unwrap();
    assert!(inspect(&s).is_err(), "the damage makes recovery refuse");
    let repaired = remap_meta::repair(&s).unwrap();
    let report = repaired.salvage.clone().expect("repair salvaged");
    assert!(report.written);
    assert!(
        repaired.after.recovery.is_ok(),
        "{:?}",
        repaired.after.recovery
    );
    drop(s);
    let opened = open(
        FileBackend::open(&main).unwrap(),
        Arc::new(FileBackend::open(&spare).unwrap()),
        &DeviceIdentity::NONE,
        Arc::new(ManualClock::new(9_000_000_000)),
    )
    .unwrap();
    let table = opened.device.entries(0, u64::MAX);
    for (lba, e) in &table {
        if e.is_remapped() {
            let mut buf = vec![0u8; BS as usize];
            opened.device.read(lba * BS, &mut buf).unwrap();
            assert_eq!(buf, vec![*lba as u8; BS as usize], "block {lba} data");
        }
    }
    (report, table)
}

/// The active checkpoint destroyed whole: salvage starts from the older checkpoint (the
/// empty one `create` wrote), applies the commits still in the ring, and names the commits
/// whose records are gone (1..=5, overwritten by the ring's next lap, and 9, the commit the
/// checkpoint was written instead of). Their blocks cannot be named; every spare they may
/// have used is quarantined.
#[test]
fn salvage_after_the_active_checkpoint_is_destroyed() {
    let p = pristine();
    let g = p.sb.geometry;
    let active = g.checkpoint_offsets[usize::from(p.sb.active_checkpoint)];
    let (report, table) = salvaged(&p, |s| destroy(s, &[(active, g.checkpoint_area_bytes)]));
    assert!(!report.base_is_active);
    assert_eq!(report.base_sequence, 1);
    let runs: Vec<_> = report
        .lost
        .iter()
        .map(|l| (l.first_sequence, l.last_sequence, l.blocks.clone()))
        .collect();
    assert_eq!(runs, vec![(1, 5, vec![]), (9, 9, vec![])], "{report:?}");
    assert_eq!(report.unidentified_lost_commits, 6);
    assert!(!report.is_complete());
    // Blocks 0..=4 and 8 lost their mapping: exactly the unidentified commits' blocks.
    let lost_blocks = [0u64, 1, 2, 3, 4, 8];
    let expected: Vec<_> = p
        .table
        .iter()
        .filter(|(lba, _)| !lost_blocks.contains(lba))
        .cloned()
        .collect();
    assert_eq!(
        table.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        expected.iter().map(|(l, _)| *l).collect::<Vec<_>>()
    );
    let mut quarantined = report.quarantined_spares.clone();
    quarantined.sort_unstable();
    assert_eq!(
        quarantined,
        lost_blocks.map(pristine_spare).to_vec(),
        "the spares holding the lost blocks' data are kept out of service"
    );
}

/// Both copies of the first live journal block destroyed: salvage keeps the active
/// checkpoint, loses exactly that commit (block 9's remap) and applies the rest.
#[test]
fn salvage_after_a_journal_block_is_destroyed_in_both_copies() {
    let p = pristine();
    let g = p.sb.geometry;
    let first = p.sb.journal_start_position;
    let (report, table) = salvaged(&p, |s| {
        destroy(
            s,
            &[
                (g.journal_block_offset(0, first), 4096),
                (g.journal_block_offset(1, first), 4096),
            ],
        )
    });
    assert!(report.base_is_active);
    let seq = p.sb.journal_start_sequence;
    assert_eq!(report.lost.len(), 1);
    assert_eq!(
        (report.lost[0].first_sequence, report.lost[0].last_sequence),
        (seq, seq)
    );
    assert_eq!(report.unidentified_lost_commits, 1);
    let expected: Vec<u64> = p
        .table
        .iter()
        .map(|(l, _)| *l)
        .filter(|&l| l != 9)
        .collect();
    assert_eq!(table.iter().map(|(l, _)| *l).collect::<Vec<_>>(), expected);
    assert!(report.quarantined_spares.contains(&pristine_spare(9)));
}

/// Nothing to rebuild from: both checkpoint areas destroyed. Repair refuses and writes
/// nothing.
#[test]
fn repair_refuses_when_both_checkpoints_are_gone() {
    let p = pristine();
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join("spare.img");
    fs::copy(&p.spare, &spare).unwrap();
    let g = p.sb.geometry;
    destroy(
        &spare,
        &[
            (g.checkpoint_offsets[0], g.checkpoint_area_bytes),
            (g.checkpoint_offsets[1], g.checkpoint_area_bytes),
        ],
    );
    let before = sha(&spare);
    let s = FileBackend::open(&spare).unwrap();
    let err = remap_meta::repair(&s).unwrap_err();
    assert!(matches!(err, MetaError::Unrepairable(_)), "{err}");
    assert!(err.to_string().contains("never invents a table"), "{err}");
    assert_eq!(sha(&spare), before);
}
