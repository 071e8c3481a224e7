//! Test helpers, public behind the test-only `test-support` feature so every crate (and every
//! user testing their own storage code) can reuse them:
//!
//! - [`crate::backend::faulty::FaultyBackend`] and [`crate::backend::crash::CrashBackend`]
//!   again (they themselves are the product feature `fault-injection`);
//! - [`MemStore`]: a [`MetaStore`] in memory whose committed records survive a simulated
//!   crash, and from which a device can be reopened;
//! - [`EventLog`] and [`RecordingBackend`]: the order of data writes, flushes and commits;
//! - [`model`]: the reference model and the model-based state-machine test, generic over
//!   the store so `remap-meta` runs it again with the real on-disk format.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{BlockBackend, IoError};
use crate::clock::Clock;
use crate::device::{DeviceConfig, DeviceError, InitialState, Layout, RemapDevice};
use crate::record::{self, ApplyError, Record};
use crate::spare::SpareAllocator;
use crate::stats::StatsSnapshot;
use crate::store::{EngineView, MetaStore, StoreError};
use crate::table::RemapTable;

pub use crate::backend::crash::{CrashBackend, Survival};
pub use crate::backend::faulty::FaultyBackend;
pub use crate::clock::ManualClock;

pub mod model;

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Write {
        device: &'static str,
        offset: u64,
        len: u64,
    },
    Flush {
        device: &'static str,
    },
    Commit {
        records: Vec<Record>,
    },
    Checkpoint,
}

/// A shared, ordered log of [`Event`]s.
#[derive(Debug, Default, Clone)]
pub struct EventLog(Arc<Mutex<Vec<Event>>>);

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, e: Event) {
        self.0.lock().push(e);
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// A backend that logs its writes and flushes to an [`EventLog`].
#[derive(Debug)]
pub struct RecordingBackend<B> {
    inner: B,
    name: &'static str,
    log: EventLog,
}

impl<B> RecordingBackend<B> {
    pub fn new(inner: B, name: &'static str, log: EventLog) -> Self {
        RecordingBackend { inner, name, log }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: BlockBackend> BlockBackend for RecordingBackend<B> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write_at(offset, buf)?;
        self.log.push(Event::Write {
            device: self.name,
            offset,
            len: buf.len() as u64,
        });
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        self.inner.flush()?;
        self.log.push(Event::Flush { device: self.name });
        Ok(())
    }
}

#[derive(Debug, Default)]
struct MemStoreState {
    records: Vec<Record>,
    settings: Option<crate::store::Settings>,
    checkpoints: u64,
    fail_commits: bool,
}

/// A [`MetaStore`] in memory. `commit` is atomic and durable the moment it returns, which is
/// the contract the real store must honour too. Clone the [`MemStoreHandle`] to look inside
/// or to reopen a device from the committed records after a simulated crash.
#[derive(Debug)]
pub struct MemStore {
    shared: Arc<Mutex<MemStoreState>>,
    log: Option<EventLog>,
}

/// Access to a [`MemStore`]'s durable contents from outside the device.
#[derive(Debug, Clone)]
pub struct MemStoreHandle(Arc<Mutex<MemStoreState>>);

impl MemStore {
    pub fn new() -> (Self, MemStoreHandle) {
        let shared = Arc::new(Mutex::new(MemStoreState::default()));
        (
            MemStore {
                shared: shared.clone(),
                log: None,
            },
            MemStoreHandle(shared),
        )
    }

    /// Log commits to `log` as well.
    pub fn with_log(mut self, log: EventLog) -> Self {
        self.log = Some(log);
        self
    }

    /// A new store for a device reopened from `handle`'s records.
    pub fn reopen(handle: &MemStoreHandle) -> Self {
        handle.0.lock().fail_commits = false;
        MemStore {
            shared: handle.0.clone(),
            log: None,
        }
    }
}

impl MemStoreHandle {
    /// Every committed record, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.0.lock().records.clone()
    }

    pub fn checkpoints(&self) -> u64 {
        self.0.lock().checkpoints
    }

    /// Make every later commit fail (a dying metadata device).
    pub fn fail_commits(&self, fail: bool) {
        self.0.lock().fail_commits = fail;
    }

    /// Rebuild the table and pool from the committed records.
    pub fn replay(
        &self,
        blocks: u64,
        spare_blocks: u64,
        table_capacity: usize,
    ) -> Result<(RemapTable, SpareAllocator), ApplyError> {
        let mut table = RemapTable::new(table_capacity);
        let mut spares = SpareAllocator::new(spare_blocks)?;
        for rec in self.0.lock().records.iter() {
            record::apply(&mut table, &mut spares, blocks, rec)?;
        }
        Ok((table, spares))
    }
}

impl MetaStore for MemStore {
    fn commit(&mut self, records: &[Record], _view: &EngineView<'_>) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        if st.fail_commits {
            return Err(StoreError::Refused("injected commit failure".into()));
        }
        st.records.extend_from_slice(records);
        if let Some(log) = &self.log {
            log.push(Event::Commit {
                records: records.to_vec(),
            });
        }
        Ok(())
    }

    fn checkpoint(&mut self, _view: &EngineView<'_>) -> Result<(), StoreError> {
        self.shared.lock().checkpoints += 1;
        if let Some(log) = &self.log {
            log.push(Event::Checkpoint);
        }
        Ok(())
    }

    fn sequence(&self) -> u64 {
        self.shared.lock().records.len() as u64
    }

    fn settings(&self) -> Option<crate::store::Settings> {
        self.shared.lock().settings
    }

    fn save_settings(&mut self, settings: &crate::store::Settings) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        if st.fail_commits {
            return Err(StoreError::Refused("injected commit failure".into()));
        }
        st.settings = Some(*settings);
        Ok(())
    }
}

/// Build a device with a spare pool at offset 0 of `spare`, from `store`'s committed records.
/// The table capacity is the pool size plus as many pending entries.
pub fn device_from_mem_store<M: BlockBackend, S: BlockBackend>(
    main: M,
    spare: S,
    layout: Layout,
    handle: &MemStoreHandle,
    clock: Arc<dyn Clock>,
    config: DeviceConfig,
) -> Result<RemapDevice<M, S>, DeviceError> {
    let blocks = layout.block_size.blocks_for(main.size_bytes());
    let capacity = table_capacity_for(layout.spare_blocks);
    let (table, spares) = handle.replay(blocks, layout.spare_blocks, capacity)?;
    RemapDevice::new(
        main,
        spare,
        layout,
        InitialState {
            table,
            spares,
            lifetime: StatsSnapshot::default(),
        },
        Box::new(MemStore::reopen(handle)),
        clock,
        config,
    )
}

/// The table capacity used by the test helpers: room for every spare plus as many pending
/// blocks.
pub fn table_capacity_for(spare_blocks: u64) -> usize {
    (spare_blocks as usize).saturating_mul(2).max(16)
}
