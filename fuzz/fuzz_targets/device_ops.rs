//! Sequences of engine operations with injected faults: reads, writes (any offset and
//! length), FUA writes, flushes, trims, write-zeroes, sticky read/write failures on main and
//! on the spare, hand-made maps and unmaps, checkpoints. Nothing panics; every read that
//! succeeds returns exactly the bytes last written where they are known (a failed write
//! leaves its range unknown; a trim leaves old bytes or zeroes); table and pool invariants
//! hold throughout.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::testing::{FaultyBackend, MemStore};
use remap_core::{BlockSize, MemBackend, RemapDevice, RemapTable, SpareAllocator, StatsSnapshot};

const MAIN: u64 = 64 * 1024;
const SPARE_BLOCKS: u64 = 12;

#[derive(Debug, Arbitrary)]
enum Op {
    Read { offset: u16, len: u16 },
    Write { offset: u16, len: u16, byte: u8, fua: bool },
    Zero { offset: u16, len: u16 },
    Trim { offset: u16, len: u16 },
    Flush,
    FailRead { block: u8 },
    FailWrite { block: u8 },
    FailSpare { block: u8 },
    Heal { block: u8 },
    Map { block: u8, zero: bool },
    Unmap { block: u8 },
    Checkpoint,
}

#[derive(Debug, Arbitrary)]
struct Input {
    block_shift: u8,
    ops: Vec<Op>,
}

/// What each byte must read as: one value, or either of two (trim), or anything (failed
/// write).
#[derive(Clone, Copy, PartialEq)]
enum Known {
    Is(u8),
    Either(u8, u8),
    Unknown,
}

fn range(offset: u16, len: u16) -> (u64, usize) {
    let off = u64::from(offset) % MAIN;
    let len = (usize::from(len) % 8192).min((MAIN - off) as usize);
    (off, len)
}

fuzz_target!(|input: Input| {
    let bs = BlockSize::new(512 << (input.block_shift % 4)).unwrap();
    let main = FaultyBackend::new(MemBackend::new(MAIN as usize), bs.bytes_u64());
    let spare = FaultyBackend::new(
        MemBackend::new((SPARE_BLOCKS * bs.bytes_u64()) as usize),
        bs.bytes_u64(),
    );
    let (store, _handle) = MemStore::new();
    let dev = RemapDevice::new(
        main,
        spare,
        Layout {
            block_size: bs,
            spare_offset: 0,
            spare_blocks: SPARE_BLOCKS,
        },
        InitialState {
            table: RemapTable::new(64),
            spares: SpareAllocator::new(SPARE_BLOCKS).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        Arc::new(ManualClock::new(0)),
        DeviceConfig::default(),
    )
    .unwrap();
    let blocks = MAIN / bs.bytes_u64();
    let mut shadow = vec![Known::Is(0); MAIN as usize];
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Read { offset, len } => {
                let (off, len) = range(offset, len);
                let mut buf = vec![0u8; len];
                if dev.read(off, &mut buf).is_ok() {
                    for (i, &b) in buf.iter().enumerate() {
                        match shadow[off as usize + i] {
                            Known::Is(v) => assert_eq!(b, v, "byte {}", off as usize + i),
                            Known::Either(x, y) => assert!(b == x || b == y),
                            Known::Unknown => {}
                        }
                    }
                }
            }
            Op::Write { offset, len, byte, fua } => {
                let (off, len) = range(offset, len);
                let buf = vec![byte; len];
                let ok = if fua { dev.write_fua(off, &buf) } else { dev.write(off, &buf) }.is_ok();
                let v = if ok { Known::Is(byte) } else { Known::Unknown };
                shadow[off as usize..off as usize + len].fill(v);
            }
            Op::Zero { offset, len } => {
                let (off, len) = range(offset, len);
                let ok = dev.write_zeroes(off, len as u64, false).is_ok();
                let v = if ok { Known::Is(0) } else { Known::Unknown };
                shadow[off as usize..off as usize + len].fill(v);
            }
            Op::Trim { offset, len } => {
                let (off, len) = range(offset, len);
                let _ = dev.trim(off, len as u64);
                for k in &mut shadow[off as usize..off as usize + len] {
                    *k = match *k {
                        Known::Is(v) => Known::Either(v, 0),
                        _ => Known::Unknown,
                    };
                }
            }
            Op::Flush => {
                let _ = dev.flush();
            }
            Op::FailRead { block } => dev.main().fail_reads([u64::from(block) % blocks]),
            Op::FailWrite { block } => dev.main().fail_writes([u64::from(block) % blocks]),
            Op::FailSpare { block } => dev
                .spare()
                .fail_writes([u64::from(block) % SPARE_BLOCKS]),
            Op::Heal { block } => dev.main().heal([u64::from(block) % blocks]),
            Op::Map { block, zero } => {
                let lba = u64::from(block) % blocks;
                if dev.map_block(lba, zero).is_err() {
                    // A refused map changes nothing; a zero-filled one zeroes the block.
                } else if zero {
                    let start = (lba * bs.bytes_u64()) as usize;
                    let end = (start + bs.bytes() as usize).min(MAIN as usize);
                    for k in &mut shadow[start..end] {
                        if let Known::Is(v) = *k {
                            *k = Known::Either(v, 0);
                        } else {
                            *k = Known::Unknown;
                        }
                    }
                }
            }
            Op::Unmap { block } => {
                let _ = dev.unmap_block(u64::from(block) % blocks);
            }
            Op::Checkpoint => {
                let _ = dev.checkpoint();
            }
        }
        dev.with_state(|t, s| {
            t.check_invariants().expect("table invariants");
            s.check_invariants().expect("pool invariants");
        });
    }
});
