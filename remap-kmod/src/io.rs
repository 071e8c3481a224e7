//! The I/O seam between the target's logic and the kernel: synchronous block I/O on the main
//! and spare devices, as the slow path and the metadata code need it.
//!
//! In the kernel, [`BlockIo`] is implemented by the C glue (a bio submitted and waited for
//! from the target's work queue); in host tests by memory-backed simulated disks. The fast
//! path never comes through here: it only asks the table where a bio goes.

use core::fmt;

use remap_meta::MetaIo;

pub use remap_core::errno::{EINVAL, EIO, ENOMEM, ENOSPC, EOPNOTSUPP};
pub use remap_core::policy::Dev;

/// How a write must reach the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteFlags {
    /// Make every write completed before this one durable first (`REQ_PREFLUSH`).
    pub preflush: bool,
    /// Make this write durable before it completes (`REQ_FUA`).
    pub fua: bool,
}

impl WriteFlags {
    pub const PLAIN: WriteFlags = WriteFlags {
        preflush: false,
        fua: false,
    };
    pub const FUA: WriteFlags = WriteFlags {
        preflush: false,
        fua: true,
    };
}

/// A failed I/O: the positive `errno` the kernel reported, and whether it is a media error
/// (the block itself failed, so it is isolated and moved) or anything else (a transport
/// error, an unsupported operation, no memory), which is passed through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFailure {
    pub dev: Dev,
    pub offset: u64,
    pub errno: i32,
    pub media: bool,
}

impl IoFailure {
    pub fn is_media(&self) -> bool {
        self.media
    }
}

impl core::error::Error for IoFailure {}

impl remap_core::policy::IoFault for IoFailure {
    fn is_media(&self) -> bool {
        self.media
    }

    fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device I/O at byte {} failed with errno {}{}",
            self.dev,
            self.offset,
            self.errno,
            if self.media { " (media error)" } else { "" }
        )
    }
}

/// Synchronous block I/O on the two devices. Offsets and lengths are bytes, multiples of
/// 512; buffers are any memory (the kernel side bounces them through its own pages).
pub trait BlockIo {
    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure>;
    fn write(
        &mut self,
        dev: Dev,
        offset: u64,
        buf: &[u8],
        flags: WriteFlags,
    ) -> Result<(), IoFailure>;
    /// Make every completed write on `dev` durable.
    fn flush(&mut self, dev: Dev) -> Result<(), IoFailure>;
    /// Discard `len` bytes at `offset`; a device without discard support succeeds doing
    /// nothing (discard is advisory).
    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure>;
}

/// Metadata I/O on the spare device, as `remap-meta` drives it.
///
/// Journal blocks are written with FUA, and the first write after data went to the spare
/// carries a PREFLUSH: so one journal write makes both the remapped data and the record that
/// points at it durable, in that order (the data is on stable media before the record that
/// names it). `remap-meta` still calls [`MetaIo::flush`] after a commit; when every write
/// since the last flush was FUA that flush has nothing left to do and is skipped.
#[derive(Debug)]
pub struct SpareMeta<'a, I: ?Sized> {
    pub io: &'a mut I,
    /// Byte range of the journal ring on the spare.
    pub journal: (u64, u64),
    /// Whether writes to the spare completed since the last flush that were not FUA.
    pub dirty: &'a mut bool,
}

impl<I: BlockIo + ?Sized> MetaIo for SpareMeta<'_, I> {
    type Error = IoFailure;

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        self.io.read(Dev::Spare, offset, buf)
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), IoFailure> {
        let in_journal = offset >= self.journal.0 && offset < self.journal.1;
        if in_journal {
            let flags = WriteFlags {
                preflush: *self.dirty,
                fua: true,
            };
            self.io.write(Dev::Spare, offset, buf, flags)?;
            // The preflush covered every earlier write; this one is durable by FUA.
            *self.dirty = false;
        } else {
            // Checkpoint pieces and superblocks: remap-meta orders them with explicit
            // flushes, which must then really happen.
            *self.dirty = true;
            self.io.write(Dev::Spare, offset, buf, WriteFlags::PLAIN)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoFailure> {
        if *self.dirty {
            self.io.flush(Dev::Spare)?;
            *self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Records the calls it gets.
    #[derive(Default)]
    struct Log(Vec<(char, u64, WriteFlags)>);

    impl BlockIo for Log {
        fn read(&mut self, _: Dev, offset: u64, _: &mut [u8]) -> Result<(), IoFailure> {
            self.0.push(('r', offset, WriteFlags::PLAIN));
            Ok(())
        }
        fn write(&mut self, _: Dev, o: u64, _: &[u8], f: WriteFlags) -> Result<(), IoFailure> {
            self.0.push(('w', o, f));
            Ok(())
        }
        fn flush(&mut self, _: Dev) -> Result<(), IoFailure> {
            self.0.push(('f', 0, WriteFlags::PLAIN));
            Ok(())
        }
        fn discard(&mut self, _: Dev, _: u64, _: u64) -> Result<(), IoFailure> {
            Ok(())
        }
    }

    #[test]
    fn journal_writes_carry_preflush_only_after_plain_writes_and_skip_redundant_flushes() {
        let mut log = Log::default();
        let mut dirty = true; // remapped data was written to the spare
        let mut m = SpareMeta {
            io: &mut log,
            journal: (8192, 8192 + 4 * 4096),
            dirty: &mut dirty,
        };
        m.write(8192, &[0; 4096]).unwrap();
        m.write(12288, &[0; 4096]).unwrap();
        m.flush().unwrap();
        // A checkpoint piece outside the journal: plain, and the flush after it is real.
        m.write(1 << 20, &[0; 4096]).unwrap();
        m.flush().unwrap();
        let pre_fua = WriteFlags {
            preflush: true,
            fua: true,
        };
        assert_eq!(
            log.0,
            [
                ('w', 8192, pre_fua),
                ('w', 12288, WriteFlags::FUA),
                ('w', 1 << 20, WriteFlags::PLAIN),
                ('f', 0, WriteFlags::PLAIN),
            ]
        );
    }
}
