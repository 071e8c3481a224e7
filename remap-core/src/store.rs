//! The persistence seam. The engine never knows the on-disk format: it hands [`Record`]s to a
//! [`MetaStore`] and waits until they are durable. `remap-meta` implements the trait with a
//! journal and checkpoints on the spare device; [`crate::testing::MemStore`] keeps them in
//! memory for tests.

use crate::record::Record;
use crate::spare::SpareAllocator;
use crate::stats::StatsSnapshot;
use crate::table::RemapTable;

/// The engine's state after the records being committed were applied: what a store writes
/// when it checkpoints instead of (or after) appending.
#[derive(Debug, Clone, Copy)]
pub struct EngineView<'a> {
    pub table: &'a RemapTable,
    pub spares: &'a SpareAllocator,
    /// Lifetime counters, carried in checkpoints.
    pub stats: &'a StatsSnapshot,
}

/// Settings kept beside the table: health thresholds, read retries and scrub progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Settings {
    pub thresholds: crate::health::HealthThresholds,
    pub read_retries: u32,
    /// Next block a scrub reads; a scrub resumes here.
    pub scrub_cursor: u64,
    /// Completed scrub passes.
    pub scrub_passes: u64,
}

/// Why a store could not make records durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("metadata I/O failed: {0}")]
    Io(#[from] crate::backend::IoError),
    #[error("metadata store refused the change: {0}")]
    Refused(String),
    #[error("metadata store failed earlier and accepts no more changes")]
    Failed,
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Durable storage for records.
pub trait MetaStore: Send {
    /// Make `records` durable, in order, before returning. `view` is the state with the
    /// records applied. The caller has already flushed any data the records point at.
    fn commit(&mut self, records: &[Record], view: &EngineView<'_>) -> Result<(), StoreError>;

    /// Write the whole state (on clean shutdown, on request, or when the store wants to).
    fn checkpoint(&mut self, view: &EngineView<'_>) -> Result<(), StoreError>;

    /// Sequence number of the newest durable change, for status displays.
    fn sequence(&self) -> u64 {
        0
    }

    /// The persisted settings, if the store keeps any.
    fn settings(&self) -> Option<Settings> {
        None
    }

    /// Persist new settings durably.
    fn save_settings(&mut self, settings: &Settings) -> Result<(), StoreError> {
        let _ = settings;
        Err(StoreError::Refused("this store keeps no settings".into()))
    }
}

impl<T: MetaStore + ?Sized> MetaStore for Box<T> {
    fn commit(&mut self, records: &[Record], view: &EngineView<'_>) -> Result<(), StoreError> {
        (**self).commit(records, view)
    }
    fn checkpoint(&mut self, view: &EngineView<'_>) -> Result<(), StoreError> {
        (**self).checkpoint(view)
    }
    fn sequence(&self) -> u64 {
        (**self).sequence()
    }
    fn settings(&self) -> Option<Settings> {
        (**self).settings()
    }
    fn save_settings(&mut self, settings: &Settings) -> Result<(), StoreError> {
        (**self).save_settings(settings)
    }
}
