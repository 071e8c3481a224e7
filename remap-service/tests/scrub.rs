//! Scrub, in-process through the service: finds exactly the blocks that fail, marks them
//! pending durably, never changes user data, and resumes after a stop without rereading what
//! it finished. Faults come from `remap-core`'s `FaultyBackend` wrapped around the real main
//! file. (`remap-cli/tests/scrub.rs` drives the `remap scrub` binary: signals, rate limit.)

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use remap_core::FileBackend;
use remap_core::backend::FaultyBackend;
use remap_service::devices::{Access, Pair};
use remap_service::scrub::{self, ScrubPlan, ScrubState, ScrubStatus};
use sha2::{Digest, Sha256};

const BS: u64 = 4096;

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(fs::read(path).expect("read")).into()
}

/// A main file of `size` bytes, every block different, and a formatted spare.
fn pair(size: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("main.img");
    let spare = dir.path().join("spare.img");
    let data: Vec<u8> = (0..size)
        .map(|i| ((i / BS) as u8).wrapping_mul(31) ^ (i as u8))
        .collect();
    fs::write(&main, data).expect("write main");
    fs::File::create(&spare)
        .and_then(|f| f.set_len(4 << 20))
        .expect("spare");
    let p = Pair::open(&main, &spare, Access::ReadOnly, Access::ReadWrite).expect("open");
    assert!(
        p.format_if_blank().expect("format"),
        "a blank spare is formatted"
    );
    (dir, main, spare)
}

/// `(block, state)` of every table entry, read back from the spare by a fresh open.
fn dumped(main: &Path, spare: &Path) -> Vec<(u64, String)> {
    let p = Pair::open(main, spare, Access::ReadOnly, Access::ReadOnly).expect("open");
    let rec = p.inspect().expect("inspect");
    rec.table
        .iter()
        .map(|(lba, e)| {
            let state = if e.is_remapped() {
                "remapped"
            } else {
                "pending"
            };
            (lba, state.to_string())
        })
        .collect()
}

#[test]
fn scrub_finds_exactly_the_failing_blocks_marks_them_pending_and_changes_no_data() {
    let (_dir, main, spare) = pair(8 << 20);
    let failing = [3u64, 100, 101, 1500, 2047];
    let before = sha256(&main);

    let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite).expect("open");
    let opened = pair
        .into_device_over(|m: FileBackend| {
            let f = FaultyBackend::new(m, BS);
            f.fail_reads(failing);
            f
        })
        .expect("device");
    let device = opened.device;
    // Block 7 lives on the spare: the scrub reads it there, and it is not a finding.
    device.map_block(7, false).expect("map block 7");
    // Block 100 is already pending when the scrub starts: found, but not new.
    let mut buf = vec![0u8; BS as usize];
    assert!(device.read(100 * BS, &mut buf).is_err());

    let plan = ScrubPlan {
        first: 0,
        end: device.blocks(),
        resumable: true,
        rate_bytes_per_s: None,
        chunk_blocks: 64,
        save_interval: scrub::SAVE_INTERVAL,
    };
    let status = Mutex::new(ScrubStatus::default());
    let stop = AtomicBool::new(false);
    let scrubbed_before = device.stats().scrubbed_bytes;
    let result =
        scrub::run(&device, &plan, &stop, &status, &mut |_| {}).expect("the scrub runs to the end");
    assert_eq!(result.state, ScrubState::Finished);
    assert_eq!(
        result.unreadable,
        failing.to_vec(),
        "exactly the failing blocks"
    );
    assert_eq!(result.unreadable_count, failing.len() as u64);
    assert_eq!(
        result.newly_pending,
        failing.len() as u64 - 1,
        "100 was pending already"
    );
    assert_eq!(result.bytes_read, 8 << 20);
    assert!(result.pass_completed);
    assert_eq!((result.saved_cursor, result.passes), (0, 1));
    // The engine counts the chunks it read whole; the five with a bad block it did not.
    let scrubbed = device.stats().scrubbed_bytes - scrubbed_before;
    assert_eq!(
        scrubbed,
        (8 << 20) - 4 * 64 * BS,
        "scrubbed_bytes: {scrubbed}"
    );
    device.shutdown().expect("shutdown");
    drop(device);

    // Persisted: a fresh process sees the pending blocks and the pass.
    let mut want: Vec<(u64, String)> = failing.iter().map(|&b| (b, "pending".into())).collect();
    want.push((7, "remapped".into()));
    want.sort();
    assert_eq!(dumped(&main, &spare), want);
    let sb = Pair::open(&main, &spare, Access::ReadOnly, Access::ReadOnly)
        .and_then(|p| p.inspect())
        .expect("inspect")
        .superblock;
    assert_eq!((sb.scrub_passes, sb.scrub_cursor), (1, 0));
    // No user data changed: main is byte for byte what it was (block 7 was copied to the
    // spare, never written on main).
    assert_eq!(sha256(&main), before, "the scrub changed the main device");
}

#[test]
fn a_stopped_scrub_resumes_at_its_cursor_without_rereading() {
    let (_dir, main, spare) = pair(4 << 20);
    let blocks = (4u64 << 20) / BS;
    let run = |stop_after_chunks: Option<u64>| -> ScrubStatus {
        let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite).expect("open");
        let device = pair.into_device().expect("device").device;
        let settings = device.settings();
        let plan = ScrubPlan {
            first: settings.scrub_cursor,
            end: device.blocks(),
            resumable: true,
            rate_bytes_per_s: None,
            chunk_blocks: 16,
            save_interval: Duration::from_secs(3600),
        };
        let status = Mutex::new(ScrubStatus::default());
        let stop = AtomicBool::new(false);
        let mut chunks = 0;
        let s = scrub::run(&device, &plan, &stop, &status, &mut |_| {
            chunks += 1;
            if Some(chunks) == stop_after_chunks {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .expect("scrub");
        assert_eq!(
            device.stats().scrubbed_bytes,
            s.bytes_read,
            "the engine read exactly what the scrub reports"
        );
        s
    };
    let first = run(Some(10));
    assert_eq!(first.state, ScrubState::Stopped);
    assert_eq!((first.cursor, first.saved_cursor), (160, 160));
    assert_eq!(first.bytes_read, 160 * BS);
    let second = run(None);
    assert_eq!(second.first_block, 160, "resumes at the saved cursor");
    assert_eq!(second.bytes_read, (blocks - 160) * BS, "nothing reread");
    assert!(second.pass_completed);
    assert_eq!(first.bytes_read + second.bytes_read, 4 << 20);
    let third = run(Some(1));
    assert_eq!(third.first_block, 0, "a new pass starts at block 0");
    assert_eq!(third.passes, 1);
}
