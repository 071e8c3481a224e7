//! Metadata contexts for `NBD_CMD_BLOCK_STATUS`.
//!
//! Two contexts are offered:
//!
//! - `base:allocation` (the spec's): this server reports every byte as allocated data whose
//!   contents are not known to be zero (flags `0`). The [`BlockBackend`] seam has no
//!   allocation query, and finding zeroes by reading would make a status query touch the
//!   disk (and, on a failing disk, mark blocks pending), so the server does not guess.
//!   Clients such as `nbdcopy` and `qemu-img` then simply copy everything.
//! - `remap:state` (ours, offered only when the export has a [`BlockStateSource`]): where
//!   each block's data lives. Flags:
//!
//!   | bit | constant | meaning |
//!   | --- | --- | --- |
//!   | — | `0` | the block lives on the main device, at its own address |
//!   | 0 | [`REMAP_STATE_REMAPPED`] | the block was moved to a spare block |
//!   | 1 | [`REMAP_STATE_PENDING`] | the block's data could not be read; reads fail with `EIO` until a write covering the whole block moves it |
//!
//!   `nbdinfo --map=remap:state URI` prints a disk's damage this way.

use remap_core::{BlockBackend, RemapDevice, Segment};

/// `remap:state` flag: the block lives on a spare block.
pub const REMAP_STATE_REMAPPED: u32 = 1 << 0;
/// `remap:state` flag: the block is pending (unreadable until rewritten).
pub const REMAP_STATE_PENDING: u32 = 1 << 1;

/// `base:allocation` flag: the extent is a hole (never reported by this server).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes (never reported by this server).
pub const STATE_ZERO: u32 = 1 << 1;

/// A run of bytes with the same status flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub flags: u32,
}

/// Something that can say where each block of an export lives: the source of the
/// `remap:state` context.
pub trait BlockStateSource: Send + Sync {
    /// Describe `[offset, offset + len)` as consecutive extents starting at `offset`, each with
    /// its `remap:state` flags, adjacent extents with different flags. Return at most
    /// `max_extents` extents; they may cover less than `len` (the client asks again for the
    /// rest) but never more, and at least one byte when `len > 0` and `offset` lies inside the
    /// export.
    fn states(&self, offset: u64, len: u64, max_extents: usize) -> Vec<Extent>;
}

impl<M: BlockBackend, S: BlockBackend> BlockStateSource for RemapDevice<M, S> {
    fn states(&self, offset: u64, len: u64, max_extents: usize) -> Vec<Extent> {
        let end = offset.saturating_add(len).min(self.size_bytes());
        if offset >= end || max_extents == 0 {
            return Vec::new();
        }
        let block_size = self.block_size();
        let first = block_size.block_of(offset);
        let count = block_size.block_of(end - 1) - first + 1;
        self.with_state(|table, _| {
            let mut out: Vec<Extent> = Vec::new();
            let mut at = offset;
            for segment in table.segments(first, count) {
                let flags = match segment {
                    Segment::Main { .. } => 0,
                    Segment::Spare { .. } => REMAP_STATE_REMAPPED,
                    Segment::Pending { .. } => REMAP_STATE_PENDING,
                };
                let segment_end = block_size
                    .offset_of(segment.lba().saturating_add(segment.blocks()))
                    .unwrap_or(u64::MAX)
                    .min(end);
                if segment_end <= at {
                    continue;
                }
                let n = segment_end - at;
                let full = out.len() == max_extents;
                match out.last_mut() {
                    Some(last) if last.flags == flags => last.len += n,
                    _ if full => break,
                    _ => out.push(Extent { len: n, flags }),
                }
                at = segment_end;
                if at >= end {
                    break;
                }
            }
            out
        })
    }
}

/// The metadata contexts this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaContext {
    BaseAllocation,
    RemapState,
}

impl MetaContext {
    pub const BASE_ALLOCATION: &'static str = "base:allocation";
    pub const REMAP_STATE: &'static str = "remap:state";

    pub fn name(self) -> &'static str {
        match self {
            MetaContext::BaseAllocation => Self::BASE_ALLOCATION,
            MetaContext::RemapState => Self::REMAP_STATE,
        }
    }

    /// The context ID sent in `NBD_REP_META_CONTEXT` and `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub fn id(self) -> u32 {
        match self {
            MetaContext::BaseAllocation => 1,
            MetaContext::RemapState => 2,
        }
    }

    /// The contexts offered on an export, with or without a state source.
    pub fn offered(has_state: bool) -> &'static [MetaContext] {
        if has_state {
            &[MetaContext::BaseAllocation, MetaContext::RemapState]
        } else {
            &[MetaContext::BaseAllocation]
        }
    }

    /// The contexts a `LIST_META_CONTEXT` query names: an exact name, or a namespace with an
    /// empty leaf (`base:`, `remap:`) as a wildcard. Unknown namespaces match nothing.
    pub fn listed_by(query: &str, has_state: bool) -> impl Iterator<Item = MetaContext> + '_ {
        Self::offered(has_state).iter().copied().filter(move |c| {
            let name = c.name();
            query == name || (query.ends_with(':') && name.starts_with(query) && query.len() > 1)
        })
    }

    /// The context a `SET_META_CONTEXT` query selects: exact names only (the spec says the
    /// `base:` wildcard MUST be ignored there, and ours follows the same rule).
    pub fn selected_by(query: &str, has_state: bool) -> Option<MetaContext> {
        Self::offered(has_state)
            .iter()
            .copied()
            .find(|c| c.name() == query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remap_core::testing::{FaultyBackend, ManualClock, MemStore, device_from_mem_store};
    use remap_core::{BlockSize, DeviceConfig, MemBackend};
    use std::sync::Arc;

    #[test]
    fn queries_select_the_right_contexts() {
        let names = |q, s| {
            MetaContext::listed_by(q, s)
                .map(MetaContext::name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("base:", true), vec!["base:allocation"]);
        assert_eq!(names("remap:", true), vec!["remap:state"]);
        assert!(names("remap:", false).is_empty());
        assert_eq!(names("base:allocation", false), vec!["base:allocation"]);
        assert!(names("qemu:dirty-bitmap:x", true).is_empty());
        assert!(names(":", true).is_empty());
        assert!(names("bas:", true).is_empty());
        assert_eq!(MetaContext::selected_by("base:", true), None);
        assert_eq!(
            MetaContext::selected_by("remap:state", true),
            Some(MetaContext::RemapState)
        );
        assert_eq!(MetaContext::selected_by("remap:state", false), None);
    }

    #[test]
    fn remap_device_reports_remapped_and_pending_runs() {
        let bs = 4096u64;
        let main = FaultyBackend::new(MemBackend::new(64 * bs as usize), bs);
        main.fail_reads([3, 4]);
        main.fail_writes([10]);
        let (_store, handle) = MemStore::new();
        let layout = remap_core::device::Layout {
            block_size: BlockSize::new(bs).unwrap(),
            spare_offset: 0,
            spare_blocks: 16,
        };
        let dev = device_from_mem_store(
            main,
            MemBackend::new(16 * bs as usize),
            layout,
            &handle,
            Arc::new(ManualClock::new(0)),
            DeviceConfig::default(),
        )
        .unwrap();
        assert_eq!(
            dev.states(0, 64 * bs, 100),
            vec![Extent {
                len: 64 * bs,
                flags: 0
            }]
        );
        assert!(dev.read(3 * bs, &mut vec![0; 2 * bs as usize]).is_err());
        dev.write(10 * bs, &vec![1; bs as usize]).unwrap();
        dev.write(11 * bs, &[1; 10]).unwrap();
        let s = dev.states(0, 64 * bs, 100);
        assert_eq!(
            s,
            vec![
                Extent {
                    len: 3 * bs,
                    flags: 0
                },
                Extent {
                    len: 2 * bs,
                    flags: REMAP_STATE_PENDING
                },
                Extent {
                    len: 5 * bs,
                    flags: 0
                },
                Extent {
                    len: bs,
                    flags: REMAP_STATE_REMAPPED
                },
                Extent {
                    len: 53 * bs,
                    flags: 0
                },
            ]
        );
        // Unaligned start and end, clipped to the request.
        let s = dev.states(3 * bs + 100, bs, 100);
        assert_eq!(
            s,
            vec![Extent {
                len: bs,
                flags: REMAP_STATE_PENDING
            }]
        );
        let s = dev.states(2 * bs + 1, 2 * bs, 100);
        assert_eq!(
            s,
            vec![
                Extent {
                    len: bs - 1,
                    flags: 0
                },
                Extent {
                    len: bs + 1,
                    flags: REMAP_STATE_PENDING
                },
            ]
        );
        // The extent bound holds and the result covers less, never more.
        let s = dev.states(0, 64 * bs, 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().map(|e| e.len).sum::<u64>(), 5 * bs);
        // Past the end: nothing; straddling the end: clipped.
        assert!(dev.states(64 * bs, 10, 10).is_empty());
        assert_eq!(
            dev.states(63 * bs, 10 * bs, 10),
            vec![Extent { len: bs, flags: 0 }]
        );
        assert!(dev.states(0, 10, 0).is_empty());
        // Rewriting a pending block moves it: now remapped.
        dev.write(3 * bs, &vec![2; bs as usize]).unwrap();
        assert_eq!(
            dev.states(3 * bs, 2 * bs, 10),
            vec![
                Extent {
                    len: bs,
                    flags: REMAP_STATE_REMAPPED
                },
                Extent {
                    len: bs,
                    flags: REMAP_STATE_PENDING
                },
            ]
        );
    }
}
