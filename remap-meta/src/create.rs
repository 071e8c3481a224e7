//! Formatting a spare device.

use remap_core::{BlockBackend, BlockSize, HealthThresholds};

use crate::counters::SLOTS;
use crate::error::Region;
use crate::io::BackendIo;
use crate::journal::{StateView, write_superblocks};
use crate::layout::{Geometry, SUPERBLOCK_A, SUPERBLOCK_B};
use crate::open::MetaError;
use crate::superblock::{DeviceIdentity, Superblock};
use crate::{META_BLOCK, MetaIo, checkpoint};

/// How to format a spare device.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub block_size: BlockSize,
    /// Journal ring size in 4 KiB blocks; default scales with the spare device.
    pub journal_blocks: Option<u32>,
    /// Spare blocks; default is all the room there is.
    pub pool_blocks: Option<u64>,
    pub thresholds: HealthThresholds,
    pub read_retries: u32,
    /// Format even if the device already holds remap metadata.
    pub force: bool,
    /// Fixed uuid and creation time (golden images, tests); random and now by default.
    pub uuid: Option<[u8; 16]>,
    pub created_ns: Option<u64>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            block_size: BlockSize::DEFAULT,
            journal_blocks: None,
            pool_blocks: None,
            thresholds: HealthThresholds::default(),
            read_retries: 3,
            force: false,
            uuid: None,
            created_ns: None,
        }
    }
}

/// The valid tail superblock copy in the last 4 KiB of `spare`, if there is one: the sign
/// of a remap spare whose head was overwritten (by a stray `dd`, say), whose spare blocks
/// may hold the only copy of user data. Reads only.
pub fn tail_copy<S: BlockBackend + ?Sized>(spare: &S) -> Result<Option<Superblock>, MetaError> {
    let size = spare.size_bytes();
    Ok(crate::recovery::read_tail_at_end(&mut BackendIo(spare), size)?.ok())
}

/// Format `spare` for a main device of `main_size` bytes identified as `identity`.
///
/// Refuses, unless `force`, a device that already holds remap metadata: either head
/// superblock copy starts with the magic, or a valid tail copy sits in its last 4 KiB.
/// Refuses one too small for metadata and one spare block. Writes the
/// empty checkpoint first and the superblocks last, so an interrupted format leaves no
/// superblock pointing at nothing. Returns the superblock, read back and checked.
pub fn create<S: BlockBackend + ?Sized>(
    spare: &S,
    main_size: u64,
    identity: DeviceIdentity,
    opts: &CreateOptions,
) -> Result<Superblock, MetaError> {
    let mut io = BackendIo(spare);
    if !opts.force {
        for offset in [SUPERBLOCK_A, SUPERBLOCK_B] {
            let mut block = [0u8; META_BLOCK];
            if spare.size_bytes() >= offset + META_BLOCK as u64 {
                io.read(offset, &mut block)?;
                if Superblock::has_magic(&block) {
                    return Err(MetaError::AlreadyFormatted);
                }
            }
        }
        if let Some(tail) = tail_copy(spare)? {
            return Err(MetaError::TailCopyFound {
                offset: crate::layout::tail_superblock_offset(spare.size_bytes()).unwrap_or(0),
                sequence: tail.sequence,
            });
        }
    }
    opts.thresholds
        .validate()
        .map_err(|e| MetaError::Settings(e.to_string()))?;
    if opts.read_retries > crate::superblock::MAX_READ_RETRIES {
        return Err(MetaError::Settings(format!(
            "read retries {} is above the limit of {}",
            opts.read_retries,
            crate::superblock::MAX_READ_RETRIES
        )));
    }
    let spare_size = spare.size_bytes();
    let journal_blocks = opts
        .journal_blocks
        .unwrap_or_else(|| Geometry::default_journal_blocks(spare_size));
    let geometry = Geometry::plan(
        spare_size,
        main_size,
        opts.block_size,
        journal_blocks,
        opts.pool_blocks,
    )?;
    let uuid = opts
        .uuid
        .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    let created_ns = opts.created_ns.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    });
    let sb = Superblock {
        version: crate::superblock::VERSION,
        sequence: 1,
        uuid,
        created_ns,
        geometry,
        identity,
        active_checkpoint: 0,
        checkpoint_sequence: 1,
        journal_start_sequence: 1,
        journal_start_position: 0,
        read_retries: opts.read_retries,
        thresholds: opts.thresholds,
        scrub_cursor: 0,
        scrub_passes: 0,
    };
    // Fail on a bad superblock before writing anything.
    sb.encode(Region::SuperblockA)?;
    let table = remap_core::RemapTable::new(geometry.table_capacity as usize);
    let spares = remap_core::SpareAllocator::new(geometry.pool_blocks)
        .map_err(|e| MetaError::Settings(e.to_string()))?;
    let counters = [0u64; SLOTS];
    let view = StateView {
        table: &table,
        spares: &spares,
        counters: &counters,
    };
    // Scrub the other checkpoint header and the first journal block: leftovers of an
    // earlier format carry another uuid and would be refused anyway, but zeroes are clearer
    // to anyone reading the device.
    let zero = [0u8; META_BLOCK];
    io.write(geometry.checkpoint_offsets[1], &zero)?;
    io.write(geometry.journal_block_offset(0, 0), &zero)?;
    io.write(geometry.journal_block_offset(1, 0), &zero)?;
    checkpoint::write(&mut io, &sb, 0, 1, 1, &view).map_err(MetaError::from_commit)?;
    io.flush()?;
    write_superblocks(&mut io, &sb, Region::SuperblockA).map_err(MetaError::from_commit)?;
    // Pair assertion: the device must now open to exactly this, empty.
    let back = crate::recovery::recover(&mut io, spare_size)?;
    if back.superblock != sb || !back.table.is_empty() {
        return Err(MetaError::Unrepairable(
            "the freshly formatted spare does not read back as written".into(),
        ));
    }
    Ok(sb)
}
