//! One ublk request, served by the engine: the only place that turns a ublk I/O descriptor
//! into a call on the device and the outcome into the value the kernel gets back (bytes
//! done, or a negative `errno` through [`IoError::errno`], the one mapping to the wire).
//!
//! What each operation means is the engine's (`docs/design.md`, "I/O semantics"): a
//! failing read fails the request and the buffer is never handed back as data; a failing
//! write moves its blocks before the request completes; FLUSH returns once data and
//! metadata are durable; a FUA write or write-zeroes is durable before it completes.

use libublk::sys;
use remap_core::BlockBackend;
use remap_core::backend::{IoError, IoOp};
use remap_core::errno;

/// The kernel's sector, in which ublk descriptors count.
const SECTOR: u64 = 512;

/// What the kernel asks, decoded from a `ublksrv_io_desc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// An operation this device does not offer (zones, write-same): `EOPNOTSUPP`.
    Unsupported {
        op: u32,
    },
}

impl Request {
    /// Decode the descriptor's fields (`op_flags`, `start_sector`, `nr_sectors`).
    pub fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Request {
        let offset = start_sector.saturating_mul(SECTOR);
        let len = u64::from(nr_sectors) * SECTOR;
        let fua = op_flags & sys::UBLK_IO_F_FUA != 0;
        match op_flags & 0xff {
            sys::UBLK_IO_OP_READ => Request::Read { offset, len },
            sys::UBLK_IO_OP_WRITE => Request::Write { offset, len, fua },
            sys::UBLK_IO_OP_FLUSH => Request::Flush,
            sys::UBLK_IO_OP_DISCARD => Request::Discard { offset, len },
            sys::UBLK_IO_OP_WRITE_ZEROES => Request::WriteZeroes { offset, len, fua },
            op => Request::Unsupported { op },
        }
    }
}

/// Serve `request` on `device` with `buf` (the request's data buffer, at least
/// `max_io_buf_bytes` long). Returns the bytes done, or a negative `errno`.
pub fn serve<B: BlockBackend + ?Sized>(device: &B, request: Request, buf: &mut [u8]) -> i32 {
    match run(device, request, buf) {
        Ok(done) => i32::try_from(done).unwrap_or(i32::MAX),
        Err(e) => {
            tracing::debug!("ublk request {request:?} failed: {e}");
            -e.errno()
        }
    }
}

fn run<B: BlockBackend + ?Sized>(
    device: &B,
    request: Request,
    buf: &mut [u8],
) -> Result<u64, IoError> {
    match request {
        Request::Read { offset, len } => {
            let data = data_buf(buf, IoOp::Read, offset, len)?;
            device.read_at(offset, data)?;
            Ok(len)
        }
        Request::Write { offset, len, fua } => {
            let data = data_buf(buf, IoOp::Write, offset, len)?;
            if fua {
                device.write_at_fua(offset, data)?;
            } else {
                device.write_at(offset, data)?;
            }
            Ok(len)
        }
        Request::Flush => device.flush().map(|()| 0),
        Request::Discard { offset, len } => device.trim(offset, len).map(|()| len),
        Request::WriteZeroes { offset, len, fua } => {
            device.write_zeroes(offset, len)?;
            if fua {
                device.flush()?;
            }
            Ok(len)
        }
        Request::Unsupported { op } => Err(IoError::Engine {
            errno: errno::EOPNOTSUPP,
            source: unsupported_name(op).into(),
        }),
    }
}

/// The part of the request buffer that carries this request's data. The kernel never asks
/// for more than the buffer it was told of; a request that does is refused, not truncated.
fn data_buf(buf: &mut [u8], op: IoOp, offset: u64, len: u64) -> Result<&mut [u8], IoError> {
    let n = usize::try_from(len).unwrap_or(usize::MAX);
    let size = buf.len() as u64;
    buf.get_mut(..n).ok_or(IoError::OutOfRange {
        op,
        offset,
        len,
        size,
    })
}

fn unsupported_name(op: u32) -> &'static str {
    match op {
        sys::UBLK_IO_OP_WRITE_SAME => "write-same is not supported",
        sys::UBLK_IO_OP_ZONE_OPEN..=sys::UBLK_IO_OP_REPORT_ZONES => {
            "zoned operations are not supported"
        }
        _ => "unknown ublk operation",
    }
}
