//! Where a request splits: into runs of blocks on main, runs on their spare blocks, and
//! pending blocks. These functions only read the table, so a frontend runs them under a
//! shared lock (userspace) or its open gate (the kernel routes bios with the same
//! [`RemapTable::segments`]). They answer [`Runs::Slow`] when a run failed with a media error
//! or a pending block is touched: then the request goes to the serialized slow path
//! ([`Policy`](super::Policy)), which isolates block by block.

use super::geometry::Geometry;
use super::seam::{BlockIo, Dev, IoFault};
use crate::table::{RemapTable, Segment};

/// How a request went, run by run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Done; `remapped` if some run went to the spare or touched a pending block.
    Done { remapped: bool },
    /// A run failed with a media error or must move: do it again on the slow path.
    Slow,
}

/// Where one segment of a request lies: the device, its byte offset there, and its range in
/// the request buffer. `None` for a pending segment.
fn locate(
    geometry: &Geometry,
    seg: Segment,
    offset: u64,
    len: u64,
) -> Option<(Dev, u64, core::ops::Range<usize>)> {
    let (at, range) = geometry.clip(seg.lba(), seg.blocks(), offset, len);
    match seg {
        Segment::Main { .. } => Some((Dev::Main, at, range)),
        Segment::Spare { lba, spare, .. } => {
            let inner = at - (lba << geometry.block_size.shift());
            Some((Dev::Spare, geometry.spare_byte(spare) + inner, range))
        }
        Segment::Pending { .. } => None,
    }
}

/// Settle one run's I/O result: a media error sends the request to the slow path.
fn settle<E: IoFault>(r: Result<(), E>) -> Result<bool, E> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_media() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Run `op` on every run of `[offset, offset + len)` where it lives, in order. A pending
/// block, or a run whose `op` fails with a media error, sends the request to the slow path.
fn each_run<E: IoFault>(
    table: &RemapTable,
    geometry: &Geometry,
    offset: u64,
    len: u64,
    mut op: impl FnMut(Dev, u64, core::ops::Range<usize>) -> Result<(), E>,
) -> Result<Runs, E> {
    let (first, count) = geometry.blocks_of(offset, len);
    let mut remapped = false;
    for seg in table.segments(first, count) {
        let Some((dev, at, range)) = locate(geometry, seg, offset, len) else {
            return Ok(Runs::Slow);
        };
        remapped |= dev == Dev::Spare;
        if !settle(op(dev, at, range))? {
            return Ok(Runs::Slow);
        }
    }
    Ok(Runs::Done { remapped })
}

/// Read `buf` at byte `offset`, each run from where it lives.
pub fn read<I: BlockIo + ?Sized>(
    table: &RemapTable,
    geometry: &Geometry,
    io: &mut I,
    offset: u64,
    buf: &mut [u8],
) -> Result<Runs, I::Error> {
    let len = buf.len() as u64;
    each_run(table, geometry, offset, len, |dev, at, range| {
        io.read(dev, at, &mut buf[range])
    })
}

/// Write `buf` at byte `offset`, each run where it lives.
pub fn write<I: BlockIo + ?Sized>(
    table: &RemapTable,
    geometry: &Geometry,
    io: &mut I,
    offset: u64,
    buf: &[u8],
    fua: bool,
) -> Result<Runs, I::Error> {
    let len = buf.len() as u64;
    each_run(table, geometry, offset, len, |dev, at, range| {
        io.write(dev, at, &buf[range], fua)
    })
}

/// Zero `[offset, offset + len)` in place, each run where it lives. A failing run or a
/// pending block sends the whole request through the write path
/// ([`Policy::zero_through_writes`](super::Policy::zero_through_writes)), exactly as a write
/// of zeroes: every block that must move does, not only those before the first failure.
pub fn write_zeroes<I: BlockIo + ?Sized>(
    table: &RemapTable,
    geometry: &Geometry,
    io: &mut I,
    offset: u64,
    len: u64,
) -> Result<Runs, I::Error> {
    each_run(table, geometry, offset, len, |dev, at, range| {
        io.write_zeroes(dev, at, range.len() as u64)
    })
}

/// Discard `[offset, offset + len)` where each run lives. Remapped blocks stay remapped;
/// pending blocks have nothing to discard and stay pending. A failure is returned as is:
/// discard is advisory and never moves a block.
pub fn discard<I: BlockIo + ?Sized>(
    table: &RemapTable,
    geometry: &Geometry,
    io: &mut I,
    offset: u64,
    len: u64,
) -> Result<Runs, I::Error> {
    let (first, count) = geometry.blocks_of(offset, len);
    let mut remapped = false;
    for seg in table.segments(first, count) {
        match locate(geometry, seg, offset, len) {
            Some((dev, at, range)) => {
                remapped |= dev == Dev::Spare;
                io.discard(dev, at, range.len() as u64)?;
            }
            None => remapped = true,
        }
    }
    Ok(Runs::Done { remapped })
}
