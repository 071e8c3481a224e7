//! `read_through`: a read is handed to the caller's transfer (a splice in the NBD server)
//! only where the fast path would read main in one piece; everywhere else, and whenever the
//! transfer fails or races with a table change, the normal read fills the buffer with the
//! right data (or fails as a read does). Either way the read is counted once.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use remap_core::backend::{FileBackend, MemBackend, OpenOptions};
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::stats::StatsSnapshot;
use remap_core::testing::{FaultyBackend, MemStore, table_capacity_for};
use remap_core::{
    BlockBackend, BlockSize, IoError, RemapDevice, RemapTable, SpareAllocator, Through, Transfer,
};

const BS: u64 = 4096;
const BLOCKS: u64 = 64;
const SECTOR: u64 = 512;

/// A file on disk whose reads and writes can be made to fail (through `FaultyBackend`),
/// and which offers the file for splicing as `FileBackend` does.
struct SplicingMain {
    faulty: FaultyBackend<FileBackend>,
}

impl BlockBackend for SplicingMain {
    fn size_bytes(&self) -> u64 {
        self.faulty.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.faulty.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.faulty.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        self.faulty.flush()
    }
    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        self.faulty.inner().splice_fd()
    }
}

type Dev = RemapDevice<Arc<SplicingMain>, Arc<FaultyBackend<MemBackend>>>;

fn rig() -> (Dev, Arc<SplicingMain>, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("main");
    let data: Vec<u8> = (0..BLOCKS * BS).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = OpenOptions::new().open(&path).unwrap();
    let main = Arc::new(SplicingMain {
        faulty: FaultyBackend::new(file, SECTOR),
    });
    let spare = Arc::new(FaultyBackend::new(
        MemBackend::new((16 * BS) as usize),
        SECTOR,
    ));
    let (store, _handle) = MemStore::new();
    let dev = RemapDevice::new(
        main.clone(),
        spare,
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: 16,
        },
        InitialState {
            table: RemapTable::new(table_capacity_for(16)),
            spares: SpareAllocator::new(16).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        Arc::new(ManualClock::new(1_700_000_000_000_000_000)),
        DeviceConfig::default(),
    )
    .unwrap();
    (dev, main, data, dir)
}

fn sectors(block: u64) -> impl Iterator<Item = u64> {
    block * BS / SECTOR..(block + 1) * BS / SECTOR
}

/// A transfer that reads the range from the file into `into` (standing in for a pipe).
fn copy_into(
    into: &mut Vec<u8>,
    len: usize,
) -> impl FnMut(BorrowedFd<'_>, u64) -> io::Result<()> + '_ {
    move |fd, offset| {
        let file = std::fs::File::from(fd.try_clone_to_owned()?);
        into.resize(len, 0);
        file.read_exact_at(into, offset)
    }
}

#[test]
fn a_clean_range_is_transferred_and_the_buffer_untouched() {
    let (dev, _main, data, _dir) = rig();
    let mut moved = Vec::new();
    const LEN: usize = 16 * BS as usize;
    let mut buf = vec![0xEEu8; LEN];
    let through = dev
        .read_through(8 * BS, &mut buf, &mut copy_into(&mut moved, LEN))
        .unwrap();
    assert_eq!(through, Through::Transferred);
    assert!(moved == data[8 * BS as usize..24 * BS as usize]);
    assert!(buf.iter().all(|&b| b == 0xEE));
    let s = dev.stats();
    assert_eq!((s.reads, s.bytes_read), (1, 16 * BS));
    // Through the trait, as a frontend holding `dyn BlockBackend` calls it.
    let as_backend: &dyn BlockBackend = &dev;
    moved.clear();
    let through = as_backend
        .read_through(0, &mut buf, &mut copy_into(&mut moved, LEN))
        .unwrap();
    assert_eq!(through, Through::Transferred);
    assert!(moved == data[..16 * BS as usize]);
}

#[test]
fn a_remapped_block_in_the_range_is_read_by_the_engine() {
    let (dev, main, data, _dir) = rig();
    // Block 10 fails a write and moves to the spare with its new contents.
    main.faulty.fail_writes(sectors(10));
    let new = vec![0x5Au8; BS as usize];
    dev.write(10 * BS, &new).unwrap();
    assert!(dev.entry(10).is_some_and(|e| e.is_remapped()));

    let mut called = false;
    let mut transfer = |_: BorrowedFd<'_>, _: u64| {
        called = true;
        Ok(())
    };
    let mut buf = vec![0u8; 8 * BS as usize];
    let through = dev.read_through(8 * BS, &mut buf, &mut transfer).unwrap();
    assert_eq!(through, Through::Buffered);
    assert!(
        !called,
        "a range holding a remapped block is not transferred from main"
    );
    let mut want = data[8 * BS as usize..16 * BS as usize].to_vec();
    want[2 * BS as usize..3 * BS as usize].copy_from_slice(&new);
    assert!(buf == want);
    assert_eq!(dev.stats().reads, 1);
}

#[test]
fn a_failed_transfer_falls_back_to_the_read_and_its_errors() {
    let (dev, main, data, _dir) = rig();
    let mut fail = |_: BorrowedFd<'_>, _: u64| Err(io::Error::from_raw_os_error(5));
    let mut buf = vec![0u8; 4 * BS as usize];
    let through = dev.read_through(0, &mut buf, &mut fail).unwrap();
    assert_eq!(through, Through::Buffered);
    assert!(buf == data[..4 * BS as usize]);

    // A bad sector on main: the normal read fails it and marks the block pending, as
    // `read` does; no data comes back.
    main.faulty.fail_reads(sectors(2));
    let mut buf = vec![0u8; 4 * BS as usize];
    let err = dev.read_through(0, &mut buf, &mut fail).unwrap_err();
    assert_eq!(err.errno(), 5, "{err}");
    assert!(dev.entry(2).is_some_and(|e| e.is_pending()));
    assert!(buf.iter().all(|&b| b == 0));
    let s = dev.stats();
    assert_eq!((s.reads, s.failed_ios), (2, 1), "{s:?}");
    // Out of range: the read's own error, no transfer.
    assert!(dev.read_through(BLOCKS * BS, &mut buf, &mut fail).is_err());
}

#[test]
fn a_table_change_during_the_transfer_sends_the_read_down_the_normal_path() {
    let (dev, main, data, _dir) = rig();
    main.faulty.fail_writes(sectors(40));
    let mut moved = Vec::new();
    let mut buf = vec![0u8; 4 * BS as usize];
    let len = buf.len();
    let through = {
        let mut copy = copy_into(&mut moved, len);
        let mut racing = |fd: BorrowedFd<'_>, offset: u64| {
            copy(fd, offset)?;
            // Another request remaps a block elsewhere meanwhile: the generation moves.
            dev.write(40 * BS, &[1u8; BS as usize]).unwrap();
            Ok(())
        };
        dev.read_through(0, &mut buf, &mut racing).unwrap()
    };
    assert_eq!(
        through,
        Through::Buffered,
        "the transferred bytes are discarded"
    );
    assert!(buf == data[..4 * BS as usize]);
    assert_eq!(dev.stats().reads, 1);
}

#[test]
fn backends_that_must_see_every_read_never_transfer() {
    let mem = MemBackend::new(BS as usize);
    mem.write_at(0, &[3u8; BS as usize]).unwrap();
    let faulty = FaultyBackend::new(MemBackend::new(BS as usize), SECTOR);
    for backend in [&mem as &dyn BlockBackend, &faulty] {
        assert!(backend.splice_fd().is_none());
        let mut called = false;
        let mut transfer = |_: BorrowedFd<'_>, _: u64| {
            called = true;
            Ok(())
        };
        let t: &mut Transfer<'_> = &mut transfer;
        let mut buf = vec![9u8; BS as usize];
        assert_eq!(
            backend.read_through(0, &mut buf, t).unwrap(),
            Through::Buffered
        );
        assert!(!called);
    }
}
