//! Checkpoints: the whole table, the retired spares and the lifetime counters, written into
//! the inactive of two areas. The payload is streamed in pieces (no allocation the size of
//! the table), then the header, which carries the payload's length and checksum, is written
//! last at the start of the area.

use remap_core::record::ApplyError;
use remap_core::spare::SpareState;
use remap_core::{Entry, EntryFlags, RemapTable, SpareAllocator};

use crate::checksum::{Crc32c, crc32c};
use crate::commit::{CommitError, StateView};
use crate::counters::{Counters, SLOTS};
use crate::error::{EntryProblem, FormatError, Region};
use crate::layout::{ENTRY_BYTES, RETIRED_BYTES};
use crate::superblock::Superblock;
use crate::wire::{Reader, Writer};
use crate::{META_BLOCK, MetaIo};

pub const MAGIC: [u8; 8] = *b"REMAP\0CK";
/// Payload I/O unit: a multiple of 4 KiB, of an entry (24 B) and of a retired index (4 B),
/// so no item straddles two pieces.
pub const PIECE: usize = 48 * 1024;
const CRC_AT: usize = META_BLOCK - 4;
const O_COUNTERS: usize = 72;
const COUNTERS_END: usize = O_COUNTERS + SLOTS * 8;
const NO_SPARE: u32 = u32::MAX;

const _: () = assert!(PIECE.is_multiple_of(META_BLOCK) && PIECE.is_multiple_of(24));

/// A decoded checkpoint header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uuid: [u8; 16],
    pub sequence: u64,
    pub journal_next_sequence: u64,
    pub entry_count: u64,
    pub retired_count: u64,
    pub payload_bytes: u64,
    pub payload_crc: u32,
    pub counters: Counters,
}

impl Header {
    pub fn encode(&self) -> [u8; META_BLOCK] {
        let mut b = [0u8; META_BLOCK];
        self.encode_into(&mut b);
        b
    }

    /// [`Header::encode`] into a caller's 4 KiB buffer (kept off the kernel stack).
    pub fn encode_into(&self, b: &mut [u8; META_BLOCK]) {
        b.fill(0);
        let mut w = Writer(b);
        w.bytes(0, &MAGIC);
        w.bytes(8, &self.uuid);
        w.u64(24, self.sequence);
        w.u64(32, self.journal_next_sequence);
        w.u64(40, self.entry_count);
        w.u64(48, self.retired_count);
        w.u64(56, self.payload_bytes);
        w.u32(64, self.payload_crc);
        w.u32(68, SLOTS as u32);
        for (i, c) in self.counters.iter().enumerate() {
            w.u64(O_COUNTERS + i * 8, *c);
        }
        let crc = crc32c(&b[..CRC_AT]);
        Writer(b).u32(CRC_AT, crc);
    }

    /// Decode a header. Total; checks only what the header alone can show.
    pub fn decode(bytes: &[u8], region: Region) -> Result<Header, FormatError> {
        let r = crate::wire::checked_block(bytes, &MAGIC, region)?;
        if r.u32(68) != SLOTS as u32 {
            return Err(FormatError::BadField {
                region,
                field: "counter_slots",
                value: u64::from(r.u32(68)),
            });
        }
        if !r.zero(COUNTERS_END, CRC_AT) {
            return Err(FormatError::ReservedNotZero { region });
        }
        let mut counters = [0u64; SLOTS];
        for (i, c) in counters.iter_mut().enumerate() {
            *c = r.u64(O_COUNTERS + i * 8);
        }
        let h = Header {
            uuid: r.bytes(8),
            sequence: r.u64(24),
            journal_next_sequence: r.u64(32),
            entry_count: r.u64(40),
            retired_count: r.u64(48),
            payload_bytes: r.u64(56),
            payload_crc: r.u32(64),
            counters,
        };
        let expected = h
            .entry_count
            .checked_mul(ENTRY_BYTES)
            .and_then(|e| e.checked_add(h.retired_count.checked_mul(RETIRED_BYTES)?));
        if expected != Some(h.payload_bytes) {
            return Err(FormatError::BadField {
                region,
                field: "payload_bytes",
                value: h.payload_bytes,
            });
        }
        Ok(h)
    }
}

fn encode_entry(lba: u64, e: &Entry, out: &mut [u8]) {
    let mut w = Writer(out);
    w.u64(0, lba);
    // Spare indices fit in 32 bits: the pool size is bounded by the format.
    w.u32(8, e.spare.map_or(NO_SPARE, |s| s as u32));
    w.u16(12, e.flags.bits());
    w.u16(14, e.error_count);
    w.u32(16, e.time_s);
    w.u32(20, 0);
}

/// Stream the checkpoint of `view` into area `area`, header last. Does not flush.
pub fn write<I: MetaIo>(
    io: &mut I,
    sb: &Superblock,
    area: u8,
    sequence: u64,
    journal_next_sequence: u64,
    view: &StateView<'_>,
) -> Result<(), CommitError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let region = Region::Checkpoint(area);
    let g = &sb.geometry;
    let base = g.checkpoint_offsets[usize::from(area & 1)];
    let entry_count = view.table.len() as u64;
    let retired_count = view.spares.retired_count();
    let payload_bytes = entry_count * ENTRY_BYTES + retired_count * RETIRED_BYTES;
    if entry_count > g.table_capacity
        || view.spares.pool_blocks() != g.pool_blocks
        || payload_bytes > g.checkpoint_area_bytes - META_BLOCK as u64
    {
        return Err(FormatError::Geometry {
            region,
            why: "state does not fit the checkpoint area",
        }
        .into());
    }
    let mut piece = alloc::vec![0u8; PIECE];
    let mut fill = 0usize;
    let mut written = 0u64;
    let mut crc = Crc32c::default();
    let mut emit =
        |piece: &mut [u8], len: usize, io: &mut I| -> Result<(), CommitError<I::Error>> {
            crc.update(&piece[..len]);
            // Pad the last piece to whole 4 KiB blocks; the padding is outside the checksum.
            let padded = len.div_ceil(META_BLOCK) * META_BLOCK;
            piece[len..padded].fill(0);
            let offset = base + META_BLOCK as u64 + written;
            io.write(offset, &piece[..padded])
                .map_err(|source| CommitError::Write { offset, source })?;
            written += len as u64;
            Ok(())
        };
    for (lba, e) in view.table.iter() {
        encode_entry(lba, &e, &mut piece[fill..fill + ENTRY_BYTES as usize]);
        fill += ENTRY_BYTES as usize;
        if fill == PIECE {
            emit(&mut piece, fill, io)?;
            fill = 0;
        }
    }
    for spare in view.spares.retired() {
        piece[fill..fill + 4].copy_from_slice(&(spare as u32).to_le_bytes());
        fill += RETIRED_BYTES as usize;
        if fill == PIECE {
            emit(&mut piece, fill, io)?;
            fill = 0;
        }
    }
    if fill > 0 {
        emit(&mut piece, fill, io)?;
    }
    let header = Header {
        uuid: sb.uuid,
        sequence,
        journal_next_sequence,
        entry_count,
        retired_count,
        payload_bytes,
        payload_crc: crc.finish(),
        counters: *view.counters,
    };
    // The piece buffer is free again: encode the header there, off the stack.
    let block = crate::commit::heap_block(&mut piece[..META_BLOCK], region)?;
    header.encode_into(block);
    io.write(base, &block[..])
        .map_err(|source| CommitError::Write {
            offset: base,
            source,
        })?;
    Ok(())
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError<E: core::fmt::Debug + core::fmt::Display> {
    #[error("reading checkpoint area {area} failed at byte {offset}: {source}")]
    Read { area: u8, offset: u64, source: E },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// The state a checkpoint holds.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub header: Header,
    pub table: RemapTable,
    pub spares: SpareAllocator,
}

/// Read and check the checkpoint the superblock points at: its header must carry the
/// superblock's uuid, checkpoint sequence and journal start; every entry must be in order,
/// in range and consistent; the payload checksum must match.
pub fn load<I: MetaIo>(io: &mut I, sb: &Superblock) -> Result<Loaded, LoadError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let expect = (sb.checkpoint_sequence, sb.journal_start_sequence);
    load_area(io, sb, sb.active_checkpoint, Some(expect))
}

/// Read and check the checkpoint in `area`, as [`load`] does; its header must carry
/// `expect` (checkpoint sequence, journal start) if given, else only the superblock's uuid
/// (salvage reads the older area this way).
pub fn load_area<I: MetaIo>(
    io: &mut I,
    sb: &Superblock,
    area: u8,
    expect: Option<(u64, u64)>,
) -> Result<Loaded, LoadError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let area = area & 1;
    let region = Region::Checkpoint(area);
    let g = &sb.geometry;
    let base = g.checkpoint_offsets[usize::from(area & 1)];
    // On the heap: the kernel target runs this on a 16 KiB stack.
    let mut block = alloc::vec![0u8; META_BLOCK];
    io.read(base, &mut block)
        .map_err(|source| LoadError::Read {
            area,
            offset: base,
            source,
        })?;
    let header = Header::decode(&block, region)?;
    let bad = |field, value| FormatError::BadField {
        region,
        field,
        value,
    };
    if header.uuid != sb.uuid {
        return Err(FormatError::ForeignUuid { region }.into());
    }
    if let Some((sequence, journal_next)) = expect {
        if header.sequence != sequence {
            return Err(bad("sequence", header.sequence).into());
        }
        if header.journal_next_sequence != journal_next {
            return Err(bad("journal_next_sequence", header.journal_next_sequence).into());
        }
    }
    if header.entry_count > g.table_capacity {
        return Err(bad("entry_count", header.entry_count).into());
    }
    if header.retired_count > g.pool_blocks {
        return Err(bad("retired_count", header.retired_count).into());
    }
    if header.payload_bytes > g.checkpoint_area_bytes - META_BLOCK as u64 {
        return Err(bad("payload_bytes", header.payload_bytes).into());
    }
    let main_blocks = g.main_blocks();
    let mut table = RemapTable::new(g.table_capacity as usize);
    let mut spares =
        SpareAllocator::new(g.pool_blocks).map_err(|_| bad("pool_blocks", g.pool_blocks))?;
    let mut piece = alloc::vec![0u8; PIECE];
    let mut crc = Crc32c::default();
    let entries_end = header.entry_count * ENTRY_BYTES;
    let mut at = 0u64;
    let mut prev_lba: Option<u64> = None;
    let mut prev_retired: Option<u64> = None;
    while at < header.payload_bytes {
        let len = (header.payload_bytes - at).min(PIECE as u64) as usize;
        let padded = len.div_ceil(META_BLOCK) * META_BLOCK;
        let offset = base + META_BLOCK as u64 + at;
        io.read(offset, &mut piece[..padded])
            .map_err(|source| LoadError::Read {
                area,
                offset,
                source,
            })?;
        crc.update(&piece[..len]);
        let mut i = 0usize;
        while i < len {
            let pos = at + i as u64;
            if pos < entries_end {
                let index = pos / ENTRY_BYTES;
                let r = Reader(&piece[i..i + ENTRY_BYTES as usize]);
                let entry_err = |why| FormatError::BadEntry { region, index, why };
                let lba = r.u64(0);
                if prev_lba.is_some_and(|p| p >= lba) {
                    return Err(entry_err(EntryProblem::Unordered { lba }).into());
                }
                prev_lba = Some(lba);
                if lba >= main_blocks {
                    return Err(
                        entry_err(EntryProblem::Rejected(ApplyError::BlockOutOfRange {
                            lba,
                            blocks: main_blocks,
                        }))
                        .into(),
                    );
                }
                let flags = EntryFlags::from_bits(r.u16(12))
                    .ok_or_else(|| entry_err(EntryProblem::UnknownKind(r.u16(12))))?;
                if r.u32(20) != 0 {
                    return Err(FormatError::ReservedNotZero { region }.into());
                }
                let spare = (r.u32(8) != NO_SPARE).then_some(u64::from(r.u32(8)));
                let entry = Entry {
                    spare,
                    flags,
                    error_count: r.u16(14),
                    time_s: r.u32(16),
                };
                if let Some(s) = spare {
                    spares
                        .mark_used(s)
                        .map_err(|e| entry_err(EntryProblem::Rejected(e.into())))?;
                }
                table
                    .insert(lba, entry)
                    .map_err(|e| entry_err(EntryProblem::Rejected(e.into())))?;
                i += ENTRY_BYTES as usize;
            } else {
                let index = (pos - entries_end) / RETIRED_BYTES;
                let spare = u64::from(Reader(&piece[i..i + 4]).u32(0));
                let entry_err = |why| FormatError::BadEntry { region, index, why };
                if prev_retired.is_some_and(|p| p >= spare) {
                    return Err(entry_err(EntryProblem::Unordered { lba: spare }).into());
                }
                prev_retired = Some(spare);
                match spares.state(spare) {
                    Ok(SpareState::Free) => {}
                    Ok(state) => {
                        return Err(entry_err(EntryProblem::Rejected(
                            remap_core::SpareError::WrongState {
                                spare,
                                state,
                                expected: SpareState::Free,
                            }
                            .into(),
                        ))
                        .into());
                    }
                    Err(e) => return Err(entry_err(EntryProblem::Rejected(e.into())).into()),
                }
                spares
                    .retire(spare)
                    .map_err(|e| entry_err(EntryProblem::Rejected(e.into())))?;
                i += RETIRED_BYTES as usize;
            }
        }
        at += len as u64;
    }
    let computed = crc.finish();
    if computed != header.payload_crc {
        return Err(FormatError::BadChecksum {
            region,
            stored: header.payload_crc,
            computed,
        }
        .into());
    }
    Ok(Loaded {
        header,
        table,
        spares,
    })
}
