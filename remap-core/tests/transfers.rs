//! `write_through`: a write is handed to the caller's transfer (a splice in the NBD server)
//! only where the fast path would write main in one piece; everywhere else, and whenever
//! the transfer fails or races with a table change, the normal write takes the payload
//! (loaded from the caller's copy), with the same errors and remaps. Either way the write
//! is counted once.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

mod common;
use common::fresh_device;

use remap_core::backend::{FileBackend, MemBackend, OpenOptions};
use remap_core::clock::ManualClock;
use remap_core::testing::FaultyBackend;
use remap_core::{BlockBackend, IoError, RemapDevice, Through, Transfer};

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
    fn splice_write_fd(&self) -> Option<BorrowedFd<'_>> {
        self.faulty.inner().splice_write_fd()
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
    let dev = fresh_device(
        main.clone(),
        spare,
        BS,
        16,
        Arc::new(ManualClock::new(1_700_000_000_000_000_000)),
    );
    (dev, main, data, dir)
}

fn sectors(block: u64) -> impl Iterator<Item = u64> {
    block * BS / SECTOR..(block + 1) * BS / SECTOR
}

/// A write transfer that stores `data` into the file it is given (standing in for a
/// splice out of a pipe), counting its calls.
fn store<'a>(
    data: &'a [u8],
    calls: &'a mut u32,
) -> impl FnMut(BorrowedFd<'_>, u64) -> io::Result<()> + 'a {
    move |fd, offset| {
        *calls += 1;
        std::fs::File::from(fd.try_clone_to_owned()?).write_all_at(data, offset)
    }
}

fn read_all(dev: &Dev) -> Vec<u8> {
    let mut all = vec![0u8; (BLOCKS * BS) as usize];
    dev.read(0, &mut all).unwrap();
    all
}

#[test]
fn a_clean_write_is_transferred_and_nothing_loaded() {
    let (dev, _main, mut data, _dir) = rig();
    let new = vec![0x77u8; 8 * BS as usize];
    let (mut calls, mut loaded) = (0, false);
    let mut buf = vec![0u8; new.len()];
    let through = dev
        .write_through(4 * BS, &mut buf, &mut store(&new, &mut calls), &mut |_| {
            loaded = true;
            Ok(())
        })
        .unwrap();
    assert_eq!((through, calls, loaded), (Through::Transferred, 1, false));
    data[4 * BS as usize..12 * BS as usize].copy_from_slice(&new);
    assert!(read_all(&dev) == data);
    let s = dev.stats();
    assert_eq!((s.writes, s.bytes_written), (1, 8 * BS));
}

#[test]
fn a_write_near_a_remapped_block_goes_through_the_engine() {
    let (dev, main, mut data, _dir) = rig();
    main.faulty.fail_writes(sectors(20));
    dev.write(20 * BS, &[1u8; BS as usize]).unwrap();
    data[20 * BS as usize..21 * BS as usize].fill(1);
    // A range holding the remapped block, and one beside it in the same region: neither
    // is offered to the transfer (the engine decides where each block goes).
    for at in [18u64, 24] {
        let new: Vec<u8> = (0..4 * BS).map(|i| (i as u8) ^ at as u8).collect();
        let mut calls = 0;
        let mut buf = vec![0u8; new.len()];
        let through = dev
            .write_through(at * BS, &mut buf, &mut store(&new, &mut calls), &mut |b| {
                b.copy_from_slice(&new);
                Ok(())
            })
            .unwrap();
        assert_eq!((through, calls), (Through::Buffered, 0), "block {at}");
        data[(at * BS) as usize..((at + 4) * BS) as usize].copy_from_slice(&new);
    }
    assert!(read_all(&dev) == data);
}

#[test]
fn a_write_transfer_failing_on_a_bad_block_is_remapped_by_the_engine() {
    let (dev, main, mut data, _dir) = rig();
    // The kernel fails the splice at the bad block (the fault lives in the wrapper, so the
    // transfer stands in for the kernel and fails), and the normal write meets it too.
    main.faulty.fail_writes(sectors(30));
    let new = vec![0x24u8; 4 * BS as usize];
    let mut calls = 0;
    let mut eio = |_: BorrowedFd<'_>, _: u64| {
        calls += 1;
        Err(io::Error::from_raw_os_error(5))
    };
    let mut buf = vec![0u8; new.len()];
    let through = dev
        .write_through(28 * BS, &mut buf, &mut eio, &mut |b| {
            b.copy_from_slice(&new);
            Ok(())
        })
        .unwrap();
    assert_eq!((through, calls), (Through::Buffered, 1));
    assert!(dev.entry(30).is_some_and(|e| e.is_remapped()));
    data[28 * BS as usize..32 * BS as usize].copy_from_slice(&new);
    assert!(read_all(&dev) == data);
}

#[test]
fn a_failed_or_racing_write_transfer_is_loaded_and_written_normally() {
    let (dev, main, mut data, _dir) = rig();
    main.faulty.fail_writes(sectors(50));
    let new = vec![0x42u8; 2 * BS as usize];
    let mut buf = vec![0u8; new.len()];
    let mut load = |b: &mut [u8]| {
        b.copy_from_slice(&new);
        Ok(())
    };
    // The transfer stores half and fails.
    let mut half = |fd: BorrowedFd<'_>, offset: u64| {
        std::fs::File::from(fd.try_clone_to_owned()?).write_all_at(&new[..BS as usize], offset)?;
        Err(io::Error::from_raw_os_error(5))
    };
    assert_eq!(
        dev.write_through(0, &mut buf, &mut half, &mut load)
            .unwrap(),
        Through::Buffered
    );
    // The transfer stores it all, but a remap happens meanwhile.
    let mut calls = 0;
    let mut racing = {
        let mut inner = store(&new, &mut calls);
        let dev = &dev;
        move |fd: BorrowedFd<'_>, offset: u64| {
            inner(fd, offset)?;
            dev.write(50 * BS, &[3u8; BS as usize]).unwrap();
            Ok(())
        }
    };
    assert_eq!(
        dev.write_through(8 * BS, &mut buf, &mut racing, &mut load)
            .unwrap(),
        Through::Buffered
    );
    data[..2 * BS as usize].copy_from_slice(&new);
    data[8 * BS as usize..10 * BS as usize].copy_from_slice(&new);
    data[50 * BS as usize..51 * BS as usize].fill(3);
    assert!(read_all(&dev) == data);
    assert_eq!(dev.stats().writes, 3);
    // A load that fails fails the write, without a remap; out of range is refused first.
    let mut fail = |_: &mut [u8]| Err(io::Error::other("pipe"));
    let mut never = |_: BorrowedFd<'_>, _: u64| Err(io::Error::other("no"));
    assert!(
        dev.write_through(0, &mut buf, &mut never, &mut fail)
            .is_err()
    );
    assert!(dev.entry(0).is_none());
    assert!(
        dev.write_through(BLOCKS * BS, &mut buf, &mut never, &mut fail)
            .is_err()
    );
}

#[test]
fn backends_that_must_see_every_write_never_transfer() {
    let mem = MemBackend::new(BS as usize);
    let faulty = FaultyBackend::new(MemBackend::new(BS as usize), SECTOR);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, vec![0u8; BS as usize]).unwrap();
    let read_only = OpenOptions::new().read_only(true).open(&path).unwrap();
    for backend in [&mem as &dyn BlockBackend, &faulty, &read_only] {
        assert!(backend.splice_write_fd().is_none());
        assert!(!backend.takes_write_transfers());
    }
    for backend in [&mem as &dyn BlockBackend, &faulty] {
        let mut called = false;
        let mut transfer = |_: BorrowedFd<'_>, _: u64| {
            called = true;
            Ok(())
        };
        let t: &mut Transfer<'_> = &mut transfer;
        let mut buf = vec![0u8; BS as usize];
        let mut load = |b: &mut [u8]| {
            b.fill(6);
            Ok(())
        };
        assert_eq!(
            backend.write_through(0, &mut buf, t, &mut load).unwrap(),
            Through::Buffered
        );
        assert!(!called);
        let mut back = vec![0u8; BS as usize];
        backend.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 6));
    }
}
