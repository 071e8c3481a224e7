//! [`JournalStore`]: remap-core's [`MetaStore`] on the spare device, through [`Journal`].

use std::sync::Arc;

use remap_core::record::Record;
use remap_core::store::{EngineView, MetaStore, Settings, StoreError};
use remap_core::{BlockBackend, IoError};

use crate::counters;
use crate::io::BackendIo;
use crate::journal::{CommitError, Journal, StateView};

/// The persistent store of an open device.
#[derive(Debug)]
pub struct JournalStore<S> {
    spare: Arc<S>,
    journal: Journal,
}

impl<S: BlockBackend> JournalStore<S> {
    pub fn new(spare: Arc<S>, journal: Journal) -> Self {
        JournalStore { spare, journal }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

fn store_error(e: CommitError<IoError>) -> StoreError {
    match e {
        CommitError::Write { source, .. } | CommitError::Flush(source) => StoreError::Io(source),
        CommitError::Failed => StoreError::Failed,
        other => StoreError::Other(Box::new(other)),
    }
}

impl<S: BlockBackend> MetaStore for JournalStore<S> {
    fn commit(&mut self, records: &[Record], view: &EngineView<'_>) -> Result<(), StoreError> {
        let counters = counters::from_snapshot(view.stats);
        let state = StateView {
            table: view.table,
            spares: view.spares,
            counters: &counters,
        };
        self.journal
            .commit(&mut BackendIo(&*self.spare), records, &state)
            .map(|_| ())
            .map_err(store_error)
    }

    fn checkpoint(&mut self, view: &EngineView<'_>) -> Result<(), StoreError> {
        let counters = counters::from_snapshot(view.stats);
        let state = StateView {
            table: view.table,
            spares: view.spares,
            counters: &counters,
        };
        self.journal
            .checkpoint(&mut BackendIo(&*self.spare), &state)
            .map_err(store_error)
    }

    fn sequence(&self) -> u64 {
        self.journal.next_sequence().saturating_sub(1)
    }

    fn settings(&self) -> Option<Settings> {
        let sb = self.journal.superblock();
        Some(Settings {
            thresholds: sb.thresholds,
            read_retries: sb.read_retries,
            scrub_cursor: sb.scrub_cursor,
            scrub_passes: sb.scrub_passes,
        })
    }

    /// Both superblock copies are rewritten (A, flush, B, flush).
    fn save_settings(&mut self, s: &Settings) -> Result<(), StoreError> {
        self.journal
            .update_superblock(&mut BackendIo(&*self.spare), |sb| {
                sb.thresholds = s.thresholds;
                sb.read_retries = s.read_retries;
                sb.scrub_cursor = s.scrub_cursor;
                sb.scrub_passes = s.scrub_passes;
            })
            .map_err(store_error)
    }
}
