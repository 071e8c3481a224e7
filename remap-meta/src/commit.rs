//! What the journal and the checkpoint writer share, below both: the state a commit
//! describes ([`StateView`]) and why a write sequence failed ([`CommitError`]). The journal
//! writes checkpoints when its ring is full, so the two cannot import each other.

use remap_core::{RemapTable, SpareAllocator};

use crate::counters::Counters;
use crate::error::FormatError;

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
