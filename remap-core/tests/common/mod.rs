//! Rigs shared by the integration tests: a device over fault-injecting memory backends with
//! an in-memory store, and data patterns that tell every block and write apart.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;

use remap_core::backend::MemBackend;
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::stats::StatsSnapshot;
use remap_core::testing::{FaultyBackend, MemStore, MemStoreHandle, device_from_mem_store};
use remap_core::{BlockBackend, BlockSize, Clock, RemapDevice, RemapTable, SpareAllocator};

pub type Faulty = FaultyBackend<MemBackend>;
pub type Dev = RemapDevice<Arc<Faulty>, Arc<Faulty>>;

/// Fault injection works in 512-byte units everywhere, so a test can fail one sector.
pub const SECTOR: u64 = 512;

/// A device over `main` and `spare` with an empty table, a pool of `spare_blocks` blocks at
/// offset 0 of the spare, an in-memory store, `clock` and the default configuration.
pub fn fresh_device<M: BlockBackend, S: BlockBackend>(
    main: M,
    spare: S,
    block_size: u64,
    spare_blocks: u64,
    clock: Arc<dyn Clock>,
) -> RemapDevice<M, S> {
    let (store, _handle) = MemStore::new();
    RemapDevice::new(
        main,
        spare,
        Layout {
            block_size: BlockSize::new(block_size).unwrap(),
            spare_offset: 0,
            spare_blocks,
        },
        InitialState {
            table: RemapTable::new(remap_core::testing::table_capacity_for(spare_blocks)),
            spares: SpareAllocator::new(spare_blocks).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        clock,
        DeviceConfig::default(),
    )
    .unwrap()
}

/// A device over a faulty main and a faulty spare, both in memory, with an in-memory store.
pub struct Rig {
    pub dev: Dev,
    pub main: Arc<Faulty>,
    pub spare: Arc<Faulty>,
    pub store: MemStoreHandle,
    pub clock: Arc<ManualClock>,
    pub layout: Layout,
    pub config: DeviceConfig,
}

impl Rig {
    /// `main_bytes` of main, a pool of `spare_blocks` blocks at offset 0 of the spare.
    pub fn new(block_size: u64, main_bytes: u64, spare_blocks: u64) -> Rig {
        Self::with_config(
            block_size,
            main_bytes,
            spare_blocks,
            DeviceConfig::default(),
        )
    }

    pub fn with_config(
        block_size: u64,
        main_bytes: u64,
        spare_blocks: u64,
        config: DeviceConfig,
    ) -> Rig {
        let block_size = BlockSize::new(block_size).unwrap();
        let main = Arc::new(FaultyBackend::new(
            MemBackend::new(main_bytes as usize),
            SECTOR,
        ));
        let spare = Arc::new(FaultyBackend::new(
            MemBackend::new((spare_blocks * block_size.bytes_u64()) as usize),
            SECTOR,
        ));
        let layout = Layout {
            block_size,
            spare_offset: 0,
            spare_blocks,
        };
        let (store, handle) = MemStore::new();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let dev = RemapDevice::new(
            main.clone(),
            spare.clone(),
            layout,
            InitialState {
                table: RemapTable::new(remap_core::testing::table_capacity_for(spare_blocks)),
                spares: SpareAllocator::new(spare_blocks).unwrap(),
                lifetime: StatsSnapshot::default(),
            },
            Box::new(store),
            clock.clone(),
            config.clone(),
        )
        .unwrap();
        Rig {
            dev,
            main,
            spare,
            store: handle,
            clock,
            layout,
            config,
        }
    }

    pub fn bs(&self) -> u64 {
        self.layout.block_size.bytes_u64()
    }

    /// Fault-injection units (sectors) of main block `lba`.
    pub fn main_sectors(&self, lba: u64) -> std::ops::Range<u64> {
        let per = self.bs() / SECTOR;
        lba * per..(lba + 1) * per
    }

    /// Fault-injection units (sectors) of spare block `spare`.
    pub fn spare_sectors(&self, spare: u64) -> std::ops::Range<u64> {
        let per = self.bs() / SECTOR;
        let first = self.layout.spare_offset / SECTOR + spare * per;
        first..first + per
    }

    /// Byte offset of block `lba` on the logical device.
    pub fn at(&self, lba: u64) -> u64 {
        lba * self.bs()
    }

    pub fn read_vec(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.dev.read(offset, &mut buf).unwrap();
        buf
    }

    /// Bytes of spare block `spare` as stored on the spare device.
    pub fn spare_block(&self, spare: u64) -> Vec<u8> {
        let mut buf = vec![0u8; self.bs() as usize];
        self.spare
            .inner()
            .read_at(self.layout.spare_offset + spare * self.bs(), &mut buf)
            .unwrap();
        buf
    }

    /// Bytes of main block `lba` as stored on the main device, under any faults.
    pub fn main_block(&self, lba: u64) -> Vec<u8> {
        let mut buf = vec![0u8; self.bs() as usize];
        self.main.inner().read_at(self.at(lba), &mut buf).unwrap();
        buf
    }

    /// Drop the device and open a new one over the same backends from the committed records.
    pub fn reopen(self) -> Rig {
        let Rig {
            dev,
            main,
            spare,
            store,
            clock,
            layout,
            config,
        } = self;
        drop(dev);
        let dev = device_from_mem_store(
            main.clone(),
            spare.clone(),
            layout,
            &store,
            clock.clone(),
            config.clone(),
        )
        .unwrap();
        Rig {
            dev,
            main,
            spare,
            store,
            clock,
            layout,
            config,
        }
    }
}

/// `len` bytes that differ for every `tag` and every offset: byte i is a mix of both.
pub fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 / 8).wrapping_mul(31))
                .rotate_left((i % 8) as u32 * 8);
            (x as u8) | 1 // never zero, so zeroes always mean "not this pattern"
        })
        .collect()
}
