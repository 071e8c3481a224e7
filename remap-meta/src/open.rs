//! Opening a formatted device pair as a [`RemapDevice`], and reading a spare's state without
//! opening it for I/O.

use std::sync::Arc;

use remap_core::clock::Clock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::{BlockBackend, DeviceError, IoError, RemapDevice};

use crate::counters;
use crate::error::FormatError;
use crate::io::BackendIo;
use crate::journal::CommitError;
use crate::layout::PlanError;
use crate::recovery::{RecoverError, Recovered, RecoveryReport, recover};
use crate::store::JournalStore;
use crate::superblock::{DeviceIdentity, IdentityKind, Superblock};

/// Why a spare device could not be created, opened, checked or repaired.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Recover(#[from] RecoverError<IoError>),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "the spare device already holds remap metadata; pass --force to format it anyway (its remap table will be lost)"
    )]
    AlreadyFormatted,
    #[error(
        "the spare device holds a valid remap superblock copy in its last 4 KiB (byte {offset}, sequence {sequence}): its head may have been overwritten and its spare blocks may hold the only copy of user data; run `remap check` first, or pass --force to format it anyway"
    )]
    TailCopyFound { offset: u64, sequence: u64 },
    #[error(
        "wrong main device: the spare was formatted for a main device of {expected} bytes, this one has {actual} bytes"
    )]
    WrongMainSize { expected: u64, actual: u64 },
    #[error("wrong main device: the spare was formatted for {} {:?}, this device is {} {:?}", expected.kind.as_str(), expected.value_lossy(), actual.kind.as_str(), actual.value_lossy())]
    WrongMainIdentity {
        expected: Box<DeviceIdentity>,
        actual: Box<DeviceIdentity>,
    },
    #[error("metadata write failed: {0}")]
    Commit(Box<CommitError<IoError>>),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("bad settings: {0}")]
    Settings(String),
    #[error("cannot repair: {0}")]
    Unrepairable(String),
    #[error("cannot upgrade the format: {0}")]
    CannotUpgrade(String),
}

impl MetaError {
    pub(crate) fn from_commit(e: CommitError<IoError>) -> Self {
        MetaError::Commit(Box::new(e))
    }
}

/// A device pair opened for I/O, and what recovery found.
#[derive(Debug)]
pub struct OpenedDevice<M, S> {
    pub device: RemapDevice<M, Arc<S>>,
    pub superblock: Superblock,
    pub report: RecoveryReport,
}

/// Read the spare's state (both superblocks, checkpoint, journal) without opening it for I/O
/// and without writing anything.
pub fn inspect<S: BlockBackend + ?Sized>(spare: &S) -> Result<Recovered, MetaError> {
    Ok(recover(&mut BackendIo(spare), spare.size_bytes())?)
}

/// Check that `main` is the device the spare was formatted for.
pub fn check_main(
    sb: &Superblock,
    main_size: u64,
    identity: &DeviceIdentity,
) -> Result<(), MetaError> {
    if main_size != sb.geometry.main_size {
        return Err(MetaError::WrongMainSize {
            expected: sb.geometry.main_size,
            actual: main_size,
        });
    }
    if sb.identity.kind != IdentityKind::None && sb.identity != *identity {
        return Err(MetaError::WrongMainIdentity {
            expected: Box::new(sb.identity),
            actual: Box::new(*identity),
        });
    }
    Ok(())
}

/// Open the pair: recover the spare's state, check the main device against it, and build
/// the remapping device with the journal store behind it. Nothing is written unless the
/// device is then used.
pub fn open<M: BlockBackend, S: BlockBackend + 'static>(
    main: M,
    spare: Arc<S>,
    identity: &DeviceIdentity,
    clock: Arc<dyn Clock>,
) -> Result<OpenedDevice<M, S>, MetaError> {
    let rec = recover(&mut BackendIo(&*spare), spare.size_bytes())?;
    let sb = rec.superblock;
    check_main(&sb, main.size_bytes(), identity)?;
    let layout = Layout {
        block_size: sb.geometry.block_size,
        spare_offset: sb.geometry.pool_offset,
        spare_blocks: sb.geometry.pool_blocks,
    };
    let config = DeviceConfig {
        read_retries: sb.read_retries,
        thresholds: sb.thresholds,
    };
    let store = JournalStore::new(spare.clone(), rec.journal);
    let device = RemapDevice::new(
        main,
        spare,
        layout,
        InitialState {
            table: rec.table,
            spares: rec.spares,
            lifetime: counters::to_snapshot(&rec.counters),
        },
        Box::new(store),
        clock,
        config,
    )?;
    Ok(OpenedDevice {
        device,
        superblock: sb,
        report: rec.report,
    })
}
