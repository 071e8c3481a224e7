//! Why a request or an operation failed, and the one mapping to an `errno`.

use alloc::string::String;

use crate::errno;
use crate::policy::seam::IoFault;
use crate::record::ApplyError;

/// Why a request or an operation failed. `E` is the I/O seam's error, `M` the journal's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError<E, M> {
    #[error("block {lba}: read failed on the main device; the block is now pending: {source}")]
    ReadFailed { lba: u64, source: E },
    #[error(
        "block {lba} is pending: its data could not be read; a write covering the whole block restores it"
    )]
    Pending { lba: u64 },
    #[error(
        "block {lba}: spare block {spare} failed a read and was retired; the block is pending: {source}"
    )]
    SpareReadFailed { lba: u64, spare: u64, source: E },
    #[error("block {lba}: write failed and the spare pool is exhausted ({pool} blocks)")]
    SpareExhausted { lba: u64, pool: u64 },
    #[error("block {lba}: the remap table is full ({capacity} entries)")]
    TableFull { lba: u64, capacity: usize },
    #[error(
        "block {lba}: partial write to a block that must move, and the rest of the block cannot be read"
    )]
    PartialWriteUnreadable { lba: u64 },
    #[error("block {lba}: no spare block accepted the write after {attempts} attempts")]
    SpareWritesFailed { lba: u64, attempts: u32 },
    #[error("metadata commit failed; the device refuses writes until it is reopened: {source}")]
    MetadataFailed { source: M },
    #[error("the device refuses writes after an earlier metadata failure; reopen it")]
    Poisoned,
    #[error("spare device flush failed: {source}")]
    SpareFlush { source: E },
    #[error("block {lba} is not remapped")]
    NotRemapped { lba: u64 },
    #[error("block {lba} is already remapped to spare block {spare}")]
    AlreadyRemapped { lba: u64, spare: u64 },
    #[error("block {lba} cannot be read (pass zero_unreadable to map it with zeroes): {reason}")]
    Unreadable { lba: u64, reason: String },
    #[error("block {lba}: the main device still fails there: {reason}")]
    MainStillFailing { lba: u64, reason: String },
    #[error("block {lba} is beyond the device ({blocks} blocks)")]
    BlockOutOfRange { lba: u64, blocks: u64 },
    #[error("request of {len} bytes at block {lba} is not whole blocks or is too large")]
    BadRequest { lba: u64, len: u64 },
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("state does not match the layout: {0}")]
    Inconsistent(#[from] ApplyError),
    #[error(transparent)]
    Io(E),
}

impl<E: IoFault, M> PolicyError<E, M> {
    /// The one mapping from an engine error to an `errno`, for every frontend.
    pub fn errno(&self) -> i32 {
        match self {
            PolicyError::SpareExhausted { .. } | PolicyError::TableFull { .. } => errno::ENOSPC,
            PolicyError::BlockOutOfRange { .. }
            | PolicyError::BadRequest { .. }
            | PolicyError::AlreadyRemapped { .. }
            | PolicyError::Config(_) => errno::EINVAL,
            PolicyError::Io(e) => e.errno(),
            _ => errno::EIO,
        }
    }
}
