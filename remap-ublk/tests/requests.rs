//! ublk requests through the engine, without a kernel: each descriptor as the kernel sends
//! it, decoded and served by `request::serve` on a remapping device over memory whose main
//! device fails where told, with the real on-disk format. What the kernel gets back is
//! what is checked: bytes done, or a negative errno.

use std::sync::Arc;

use libublk::sys;
use remap_core::backend::FaultyBackend;
use remap_core::clock::ManualClock;
use remap_core::errno::{EINVAL, EIO, EOPNOTSUPP};
use remap_core::{MemBackend, RemapDevice};
use remap_meta::{CreateOptions, DeviceIdentity};
use remap_ublk::request::{self, Request};

const BS: u64 = 4096;
const MAIN: usize = 1 << 20;
const SPARE: usize = 2 << 20;
/// Sectors per block, as the kernel counts.
const SPB: u64 = BS / 512;

type Main = Arc<FaultyBackend<MemBackend>>;

fn device() -> (Main, RemapDevice<Main, Arc<MemBackend>>) {
    let spare = Arc::new(MemBackend::new(SPARE));
    let opts = CreateOptions {
        journal_blocks: Some(8),
        pool_blocks: Some(16),
        ..CreateOptions::default()
    };
    remap_meta::create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts).unwrap();
    let main = Arc::new(FaultyBackend::new(MemBackend::new(MAIN), BS));
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let device = remap_meta::open(main.clone(), spare, &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    (main, device)
}

fn req(op: u32, block: u64, blocks: u32) -> Request {
    Request::decode(op, block * SPB, blocks * SPB as u32)
}

#[test]
fn descriptors_decode() {
    assert_eq!(
        req(sys::UBLK_IO_OP_READ, 3, 2),
        Request::Read {
            offset: 3 * BS,
            len: 2 * BS
        }
    );
    assert_eq!(
        req(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 1, 1),
        Request::Write {
            offset: BS,
            len: BS,
            fua: true
        }
    );
    assert_eq!(req(sys::UBLK_IO_OP_FLUSH, 0, 0), Request::Flush);
    assert_eq!(
        req(sys::UBLK_IO_OP_DISCARD, 2, 4),
        Request::Discard {
            offset: 2 * BS,
            len: 4 * BS
        }
    );
    assert_eq!(
        req(sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_FUA, 2, 4),
        Request::WriteZeroes {
            offset: 2 * BS,
            len: 4 * BS,
            fua: true
        }
    );
    assert_eq!(
        req(sys::UBLK_IO_OP_ZONE_APPEND, 0, 1),
        Request::Unsupported {
            op: sys::UBLK_IO_OP_ZONE_APPEND
        }
    );
}

#[test]
fn write_then_read_back() {
    let (_, dev) = device();
    let mut buf = vec![0xA5u8; 64 << 10];
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_WRITE, 5, 4), &mut buf),
        4 * BS as i32
    );
    let mut back = vec![0u8; 64 << 10];
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_READ, 5, 4), &mut back),
        4 * BS as i32
    );
    assert_eq!(&back[..4 * BS as usize], &buf[..4 * BS as usize]);
    assert_eq!(request::serve(&dev, Request::Flush, &mut back), 0);
}

#[test]
fn a_failing_read_is_eio_and_marks_the_block_pending() {
    let (main, dev) = device();
    main.fail_reads([7]);
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_READ, 6, 3), &mut buf),
        -EIO
    );
    assert_eq!(dev.stats().pending_blocks, 1);
}

#[test]
fn a_failing_write_moves_the_block_before_completing() {
    let (main, dev) = device();
    main.fail_writes([9]);
    main.fail_reads([9]);
    let mut buf = vec![0x3Cu8; 64 << 10];
    assert_eq!(
        request::serve(
            &dev,
            req(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 8, 2),
            &mut buf
        ),
        2 * BS as i32
    );
    assert_eq!(dev.stats().remapped_blocks, 1);
    let mut back = vec![0u8; 64 << 10];
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_READ, 8, 2), &mut back),
        2 * BS as i32
    );
    assert_eq!(&back[..2 * BS as usize], &buf[..2 * BS as usize]);
}

#[test]
fn write_zeroes_reads_back_zeroes() {
    let (_, dev) = device();
    let mut buf = vec![0x77u8; 64 << 10];
    request::serve(&dev, req(sys::UBLK_IO_OP_WRITE, 0, 4), &mut buf);
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_WRITE_ZEROES, 1, 2), &mut buf),
        2 * BS as i32
    );
    let mut back = vec![0xFFu8; 64 << 10];
    request::serve(&dev, req(sys::UBLK_IO_OP_READ, 0, 4), &mut back);
    let b = BS as usize;
    assert!(back[..b].iter().all(|&x| x == 0x77));
    assert!(back[b..3 * b].iter().all(|&x| x == 0));
    assert!(back[3 * b..4 * b].iter().all(|&x| x == 0x77));
}

#[test]
fn requests_beyond_the_buffer_or_device_or_unknown_are_refused() {
    let (_, dev) = device();
    let mut small = vec![0u8; 4096];
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_READ, 0, 2), &mut small),
        -EINVAL
    );
    let blocks = (MAIN as u64 / BS) as u32;
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(
        request::serve(
            &dev,
            req(sys::UBLK_IO_OP_READ, u64::from(blocks) - 1, 2),
            &mut buf
        ),
        -EINVAL
    );
    assert_eq!(
        request::serve(&dev, req(sys::UBLK_IO_OP_WRITE_SAME, 0, 1), &mut buf),
        -EOPNOTSUPP
    );
}
