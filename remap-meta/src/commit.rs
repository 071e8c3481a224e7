//! What every metadata write sequence shares: the state it writes ([`StateView`]), how it
//! fails ([`CommitError`]), and the heap buffer it encodes blocks in. Below both the journal
//! and the checkpoint code, which use it, so neither imports the other for it.

use remap_core::{RemapTable, SpareAllocator};

use crate::META_BLOCK;
use crate::counters::Counters;
use crate::error::{FormatError, Region};

/// The state a commit or checkpoint describes: the engine's table and pool after the
/// records were applied, and the lifetime counters.
#[derive(Debug, Clone, Copy)]
pub struct StateView<'a> {
    pub table: &'a RemapTable,
    pub spares: &'a SpareAllocator,
    pub counters: &'a Counters,
}

/// Why a metadata write sequence failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError<E: core::fmt::Debug + core::fmt::Display> {
    #[error("metadata write to the spare device failed at byte {offset}: {source}")]
    Write { offset: u64, source: E },
    #[error("metadata flush of the spare device failed: {0}")]
    Flush(E),
    #[error("metadata would not encode: {0}")]
    Format(#[from] FormatError),
    #[error("an earlier metadata write failed; the device must be reopened")]
    Failed,
}

/// A 4 KiB heap buffer viewed as a block (the length is right by construction; the error
/// keeps the conversion total).
pub(crate) fn heap_block(
    buf: &mut [u8],
    region: Region,
) -> Result<&mut [u8; META_BLOCK], FormatError> {
    let len = buf.len();
    buf.try_into().map_err(|_| FormatError::BadLength {
        region,
        len,
        expected: META_BLOCK,
    })
}
