//! Salvage a failing disk, in memory: a 64 MiB main device with bad blocks behind a
//! `RemapDevice`, written and read end to end, and a plain account of what the engine did.
//!
//!     cargo run --release -p remap-core --features test-support --example salvage
//!
//! The main device is simulated (`FaultyBackend` over memory): a run of blocks that refuse
//! writes, a block that refuses reads, and a single bad sector inside another block. The
//! spare pool is 1 MiB. The metadata store keeps its committed records in memory, and the
//! device is reopened from them at the end to show that the mapping persists.

use std::error::Error;
use std::sync::Arc;

use remap_core::backend::MemBackend;
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::record::Record;
use remap_core::stats::StatsSnapshot;
use remap_core::testing::{FaultyBackend, MemStore, device_from_mem_store};
use remap_core::{BlockSize, DeviceError, RemapDevice, RemapTable, SpareAllocator};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const MAIN_BYTES: u64 = 64 * MIB;
const SPARE_BLOCKS: u64 = 256;
const SECTOR: u64 = 512;

/// The data the demo writes: every byte depends on its offset, so a block read from the
/// wrong place (or zeroes) never passes for the right one.
fn data(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8 | 1
        })
        .collect()
}

fn sectors_of(block: u64) -> std::ops::Range<u64> {
    block * BLOCK / SECTOR..(block + 1) * BLOCK / SECTOR
}

fn main() -> Result<(), Box<dyn Error>> {
    let block_size = BlockSize::new(BLOCK)?;
    let main = Arc::new(FaultyBackend::new(
        MemBackend::new(MAIN_BYTES as usize),
        SECTOR,
    ));
    let spare = Arc::new(MemBackend::new((SPARE_BLOCKS * BLOCK) as usize));
    let layout = Layout {
        block_size,
        spare_offset: 0,
        spare_blocks: SPARE_BLOCKS,
    };
    let (store, records) = MemStore::new();
    let clock = Arc::new(ManualClock::new(1_767_225_600_000_000_000)); // 2026-01-01
    let device = RemapDevice::new(
        main.clone(),
        spare.clone(),
        layout,
        InitialState {
            table: RemapTable::new(2 * SPARE_BLOCKS as usize),
            spares: SpareAllocator::new(SPARE_BLOCKS)?,
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        clock.clone(),
        DeviceConfig::default(),
    )?;

    println!(
        "main device: {} MiB in {} blocks of {BLOCK} bytes; spare pool: {SPARE_BLOCKS} blocks ({} MiB)",
        MAIN_BYTES / MIB,
        device.blocks(),
        SPARE_BLOCKS * BLOCK / MIB
    );
    let write_bad = 1000..1008u64;
    let read_bad = 2000u64;
    let sector_bad = 5000u64;
    for b in write_bad.clone() {
        main.fail_writes(sectors_of(b));
    }
    main.fail_reads(sectors_of(read_bad));
    // One bad sector (the fourth) in block 5000: reads and writes touching it fail.
    let bad_sector = sectors_of(sector_bad).start + 3;
    main.fail_reads([bad_sector]);
    main.fail_writes([bad_sector]);
    println!(
        "simulated faults: blocks {}-{} refuse writes, block {read_bad} refuses reads, \
         block {sector_bad} has one bad sector ({bad_sector})",
        write_bad.start,
        write_bad.end - 1
    );

    // 1. Write the whole disk, 1 MiB at a time.
    println!("\n1. writing all {} MiB", MAIN_BYTES / MIB);
    for at in (0..MAIN_BYTES).step_by(MIB as usize) {
        device.write(at, &data(at, MIB as usize))?;
    }
    println!(
        "   every write succeeded; {} blocks moved to spares because main refused them",
        device.stats().remaps
    );

    // 2. Read it all back, one block at a time, and compare.
    println!("\n2. reading everything back");
    let mut buf = vec![0u8; BLOCK as usize];
    let mut unreadable = Vec::new();
    for lba in 0..device.blocks() {
        match device.read(lba * BLOCK, &mut buf) {
            Ok(()) => {
                if buf != data(lba * BLOCK, BLOCK as usize) {
                    return Err(format!("block {lba} read back wrong data").into());
                }
            }
            Err(e) => {
                println!("   {e}");
                unreadable.push(lba);
            }
        }
    }
    println!(
        "   {} blocks match what was written; {} failed (no data was returned for them)",
        device.blocks() - unreadable.len() as u64,
        unreadable.len()
    );

    // 3. Rewrite the unreadable blocks whole: each moves to a spare, like disk firmware
    //    reallocating a pending sector.
    println!("\n3. rewriting the pending blocks");
    for &lba in &unreadable {
        let d = data(lba * BLOCK, BLOCK as usize);
        device.write(lba * BLOCK, &d)?;
        device.read(lba * BLOCK, &mut buf)?;
        let spare_block = device.entry(lba).and_then(|e| e.spare);
        println!(
            "   block {lba}: rewritten, now on spare block {}, reads back {}",
            spare_block.map_or("-".to_string(), |s| s.to_string()),
            if buf == d { "correctly" } else { "WRONG" }
        );
    }
    // A partial write to a failing block needs the rest of the block: here it is readable.
    main.fail_writes(sectors_of(7000));
    device.write(
        7000 * BLOCK + 100,
        b"patched in the middle of a failing block",
    )?;
    println!(
        "   block 7000: a 40-byte write failed on main; the block moved with the rest of its data"
    );

    // 4. The remap table and the health verdict.
    println!("\n4. remap table");
    println!(
        "   {:>6}  {:<9} {:>11}  {:>6}",
        "BLOCK", "STATE", "SPARE-BLOCK", "ERRORS"
    );
    for (lba, e) in device.entries(0, device.blocks()) {
        let state = if e.is_remapped() {
            "remapped"
        } else {
            "pending"
        };
        let spare_block = e.spare.map_or("-".to_string(), |s| s.to_string());
        println!(
            "   {lba:>6}  {state:<9} {spare_block:>11}  {:>6}",
            e.error_count
        );
    }
    let s = device.stats();
    let health = device.health();
    println!(
        "\n   health: {} (spare pool {}% used, {} pending, error rate {} ppm)",
        health.state, health.spare_used_pct, health.pending, health.error_rate_ppm
    );
    for reason in health.reasons.descriptions() {
        println!("     - {reason}");
    }
    println!(
        "   I/O: {} reads, {} writes ({} MiB), {} served by main alone, {} touched moved blocks, {} failed",
        s.reads,
        s.writes,
        s.bytes_written / MIB,
        s.normal_ios,
        s.remapped_ios,
        s.failed_ios
    );
    println!(
        "   errors seen: {} main read, {} main write; {} remaps, {} pending marks, {} metadata commits",
        s.main_read_errors, s.main_write_errors, s.remaps, s.pending_marked, s.commits
    );
    println!(
        "   spares: {} used, {} free, {} retired",
        s.spares_used,
        s.spares_free(),
        s.spares_retired
    );

    // 5. Reopen from what was committed: same table, same data.
    let committed = records.records();
    let remaps = committed
        .iter()
        .filter(|r| matches!(r, Record::Remap { .. }))
        .count();
    let pendings = committed
        .iter()
        .filter(|r| matches!(r, Record::Pending { .. }))
        .count();
    let before = device.entries(0, device.blocks());
    drop(device);
    let device = device_from_mem_store(
        main.clone(),
        spare,
        layout,
        &records,
        clock,
        DeviceConfig::default(),
    )?;
    let same = device.entries(0, device.blocks()) == before;
    let mut all = vec![0u8; MAIN_BYTES as usize];
    device.read(0, &mut all)?;
    let mut want = data(0, MAIN_BYTES as usize);
    let patch = b"patched in the middle of a failing block";
    let at = (7000 * BLOCK + 100) as usize;
    want[at..at + patch.len()].copy_from_slice(patch);
    println!(
        "\n5. reopened from the {} committed records ({remaps} remaps, {pendings} pending marks): \
         table {}, all {} MiB {}",
        committed.len(),
        if same { "identical" } else { "DIFFERENT" },
        MAIN_BYTES / MIB,
        if all == want {
            "read back correctly"
        } else {
            "DO NOT MATCH"
        }
    );
    if !same || all != want {
        return Err("the reopened device differs".into());
    }
    // Main still fails reads at block 2000's old home; the block lives on its spare now.
    match device.read(read_bad * BLOCK, &mut buf) {
        Ok(()) => println!("   block {read_bad} is served from its spare block"),
        Err(DeviceError::Pending { lba }) => println!("   block {lba} is still pending"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
