//! The I/O seam: [`BlockBackend`], one small trait that every device, file, simulated disk and
//! the remapping device itself implement, so frontends can export any of them.
//!
//! Offsets and lengths are in bytes. A backend does not impose alignment; callers that need
//! it (the remapping device works in blocks) align themselves. Capabilities are methods with
//! conservative defaults, and frontends derive what they advertise from them.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

mod file;
mod mem;

#[cfg(feature = "fault-injection")]
pub mod crash;
#[cfg(feature = "fault-injection")]
pub mod faulty;

pub use file::{FileBackend, OpenError, OpenOptions};
pub use mem::MemBackend;

#[cfg(feature = "fault-injection")]
pub use crash::{CrashBackend, Survival};
#[cfg(feature = "fault-injection")]
pub use faulty::FaultyBackend;

/// Largest run of zeroes the default [`BlockBackend::write_zeroes`] writes per call.
const ZERO_CHUNK: usize = 64 * 1024;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// The operation an [`IoError`] comes from, for messages and for deciding what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Trim => "trim",
            IoOp::WriteZeroes => "write-zeroes",
        })
    }
}

/// An error from a [`BlockBackend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The medium or the OS failed the request. This is what a bad sector looks like.
    #[error("{op} of {len} bytes at offset {offset} failed: {source}")]
    Media {
        op: IoOp,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// The request reaches past the end of the backend.
    #[error(
        "{op} of {len} bytes at offset {offset} is beyond the end of the device ({size} bytes)"
    )]
    OutOfRange {
        op: IoOp,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The backend does not implement this operation (see the `supports_*` methods).
    #[error("{op} is not supported by this device")]
    Unsupported { op: IoOp },
    /// A layer above the medium (the remapping engine) refused or failed the request.
    /// `errno` is what a frontend should report; the source says why.
    #[error("{source}")]
    Engine {
        errno: i32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

pub use crate::errno;

impl IoError {
    /// A media error with the given OS error.
    pub fn media(op: IoOp, offset: u64, len: u64, source: io::Error) -> Self {
        IoError::Media {
            op,
            offset,
            len,
            source,
        }
    }

    /// The one place an error becomes an `errno` for a frontend (NBD error, dm status).
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Media { source, .. } => source.raw_os_error().unwrap_or(errno::EIO),
            IoError::OutOfRange { .. } => errno::EINVAL,
            IoError::Unsupported { .. } => errno::EOPNOTSUPP,
            IoError::Engine { errno, .. } => *errno,
        }
    }

    /// Whether this error says something about the medium at that offset, so that the
    /// remapping engine should isolate the block and move it. Range and capability errors
    /// are the caller's mistake and never cause a remap.
    pub fn is_media(&self) -> bool {
        match self {
            IoError::Media { source, .. } => !matches!(
                source.raw_os_error(),
                Some(errno::EINVAL | errno::EOPNOTSUPP | errno::EROFS | errno::EPERM)
            ),
            _ => false,
        }
    }
}

/// Check that `[offset, offset + len)` lies inside a device of `size` bytes.
pub fn check_range(op: IoOp, offset: u64, len: u64, size: u64) -> Result<(), IoError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(IoError::OutOfRange {
            op,
            offset,
            len,
            size,
        }),
    }
}

/// Moves the bytes of a write into a file without copying them through user memory (a
/// `splice` out of a pipe): called with the file and the offset in it of the first byte.
/// Either every byte was stored and it returns `Ok`, or it returns an error.
pub type Transfer<'a> = dyn FnMut(BorrowedFd<'_>, u64) -> io::Result<()> + 'a;

/// Fills the buffer with the bytes of a write whose transfer was not taken or failed (the
/// caller kept a copy of them, e.g. in a second pipe).
pub type Load<'a> = dyn FnMut(&mut [u8]) -> io::Result<()> + 'a;

/// How [`BlockBackend::write_through`] delivered a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// The transfer stored the bytes; the buffer was not touched.
    Transferred,
    /// The bytes went through the buffer (the transfer was not offered, or it failed).
    Buffered,
}

/// A byte-addressed block device: a disk, a file, a simulated device, or the remapping
/// device itself. Shared by many threads, so every method takes `&self`.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes. Fixed for the life of the backend.
    fn size_bytes(&self) -> u64;

    /// Fill `buf` from `offset`. Either the whole buffer is valid data or an error is
    /// returned; a backend never reports success for bytes it could not read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;

    /// Write all of `buf` at `offset`. Durable only after [`flush`](Self::flush) (or when
    /// written with [`write_at_fua`](Self::write_at_fua)).
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError>;

    /// Make every completed write durable.
    fn flush(&self) -> Result<(), IoError>;

    /// Write and make this write durable before returning (Force Unit Access). The default
    /// writes and then flushes everything, which is correct but slower than a native FUA.
    fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, buf)?;
        self.flush()
    }

    /// Whether [`write_at_fua`](Self::write_at_fua) is cheaper than a write plus a full flush.
    fn supports_fua(&self) -> bool {
        false
    }

    /// Whether [`trim`](Self::trim) does anything. Frontends advertise discard only if so.
    fn supports_trim(&self) -> bool {
        false
    }

    /// Tell the device the range is no longer needed. Afterwards the range reads as
    /// either its old contents or zeroes; use [`write_zeroes`](Self::write_zeroes) to
    /// guarantee zeroes.
    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let _ = (offset, len);
        Err(IoError::Unsupported { op: IoOp::Trim })
    }

    /// Whether [`write_zeroes`](Self::write_zeroes) is faster than writing zero buffers.
    fn supports_write_zeroes(&self) -> bool {
        false
    }

    /// Make the range read as zeroes. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size_bytes())?;
        let mut done = 0u64;
        while done < len {
            let step = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.write_at(offset + done, &ZEROES[..step])?;
            done += step as u64;
        }
        Ok(())
    }

    /// The file this backend writes at the same offsets, when a `splice` into it stores
    /// exactly what [`write_at`](Self::write_at) would: a buffered, writable file. `None`
    /// (the default) for every backend that must see each write, and for `O_DIRECT` files
    /// (a pipe's pages do not meet their alignment).
    fn splice_write_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Whether [`write_through`](Self::write_through) may take a transfer at all, so a
    /// frontend knows before it reads a write's payload whether to keep it in a pipe.
    fn takes_write_transfers(&self) -> bool {
        self.splice_write_fd().is_some()
    }

    /// Write `buf.len()` bytes at `offset`, preferably by `transfer`, which moves them
    /// into the file it is given at the offset it is given (a splice out of a pipe).
    /// When this backend offers no [`splice_write_fd`](Self::splice_write_fd) or the
    /// transfer fails, `load` fills `buf` with the same bytes and they are written with
    /// [`write_at`](Self::write_at) (a failing sector then reports its error, or is
    /// remapped, through the normal write). Bytes a failed transfer already stored are
    /// overwritten by that write. The remapping device overrides it to transfer only what
    /// its fast path would write to the main device.
    fn write_through(
        &self,
        offset: u64,
        buf: &mut [u8],
        transfer: &mut Transfer<'_>,
        load: &mut Load<'_>,
    ) -> Result<Through, IoError> {
        let len = buf.len() as u64;
        if len > 0
            && check_range(IoOp::Write, offset, len, self.size_bytes()).is_ok()
            && let Some(fd) = self.splice_write_fd()
            && transfer(fd, offset).is_ok()
        {
            return Ok(Through::Transferred);
        }
        load_payload(load, buf)?;
        self.write_at(offset, buf).map(|()| Through::Buffered)
    }
}

/// Run a [`Load`]. Its failure is the frontend's (a pipe), not the medium's, so it is an
/// engine error that never causes a remap.
pub fn load_payload(load: &mut Load<'_>, buf: &mut [u8]) -> Result<(), IoError> {
    load(buf).map_err(|e| IoError::Engine {
        errno: errno::EIO,
        source: Box::new(e),
    })
}

macro_rules! forward_backend {
    ($($wrapper:ty),*) => {$(
        impl<T: BlockBackend + ?Sized> BlockBackend for $wrapper {
            fn size_bytes(&self) -> u64 {
                (**self).size_bytes()
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
                (**self).read_at(offset, buf)
            }
            fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
                (**self).write_at(offset, buf)
            }
            fn flush(&self) -> Result<(), IoError> {
                (**self).flush()
            }
            fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
                (**self).write_at_fua(offset, buf)
            }
            fn supports_fua(&self) -> bool {
                (**self).supports_fua()
            }
            fn supports_trim(&self) -> bool {
                (**self).supports_trim()
            }
            fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
                (**self).trim(offset, len)
            }
            fn supports_write_zeroes(&self) -> bool {
                (**self).supports_write_zeroes()
            }
            fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
                (**self).write_zeroes(offset, len)
            }
            fn splice_write_fd(&self) -> Option<BorrowedFd<'_>> {
                (**self).splice_write_fd()
            }
            fn takes_write_transfers(&self) -> bool {
                (**self).takes_write_transfers()
            }
            fn write_through(
                &self,
                offset: u64,
                buf: &mut [u8],
                transfer: &mut Transfer<'_>,
                load: &mut Load<'_>,
            ) -> Result<Through, IoError> {
                (**self).write_through(offset, buf, transfer, load)
            }
        }
    )*};
}

forward_backend!(Arc<T>, Box<T>, &T);

impl crate::policy::IoFault for IoError {
    fn is_media(&self) -> bool {
        IoError::is_media(self)
    }

    fn errno(&self) -> i32 {
        IoError::errno(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_check_catches_overflow_and_end() {
        assert!(check_range(IoOp::Read, 0, 10, 10).is_ok());
        assert!(check_range(IoOp::Read, 1, 10, 10).is_err());
        assert!(check_range(IoOp::Read, u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn errno_mapping() {
        let e = IoError::media(IoOp::Read, 0, 1, io::Error::from_raw_os_error(errno::EIO));
        assert_eq!(e.errno(), errno::EIO);
        assert!(e.is_media());
        let e = IoError::OutOfRange {
            op: IoOp::Write,
            offset: 5,
            len: 1,
            size: 5,
        };
        assert_eq!(e.errno(), errno::EINVAL);
        assert!(!e.is_media());
        let e = IoError::media(
            IoOp::Write,
            0,
            1,
            io::Error::from_raw_os_error(errno::EINVAL),
        );
        assert!(!e.is_media());
    }

    #[test]
    fn default_write_zeroes_zeroes_the_range() {
        let m = MemBackend::new(200_000);
        m.write_at(0, &[0xAA; 200_000]).unwrap();
        m.write_zeroes(10, 150_000).unwrap();
        let mut b = vec![0u8; 200_000];
        m.read_at(0, &mut b).unwrap();
        assert!(b[..10].iter().all(|&x| x == 0xAA));
        assert!(b[10..150_010].iter().all(|&x| x == 0));
        assert!(b[150_010..].iter().all(|&x| x == 0xAA));
    }
}
