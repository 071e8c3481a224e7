//! Records: the changes to the remap table and the spare pool that the engine asks a store to
//! make durable, and [`apply`], the one function that gives them meaning. The live engine,
//! journal replay in `remap-meta` and the kernel target all change state through `apply`, so
//! a replayed journal rebuilds exactly the state the engine had.

use crate::spare::{SpareAllocator, SpareError, SpareState};
use crate::table::{Entry, EntryFlags, RemapTable, TableError};

/// Why a block moved to a spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[cfg_attr(feature = "std", serde(rename_all = "kebab-case"))]
#[repr(u8)]
pub enum RemapCause {
    /// The main device failed a write there.
    WriteError = 1,
    /// A write covered a pending block.
    Rewrite = 2,
    /// The block's spare failed a write and the block moved to another spare.
    SpareFailure = 3,
    /// A user asked for it (`remap map`).
    Manual = 4,
}

impl RemapCause {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => RemapCause::WriteError,
            2 => RemapCause::Rewrite,
            3 => RemapCause::SpareFailure,
            4 => RemapCause::Manual,
            _ => return None,
        })
    }

    /// Whether the move was forced by a device error (counted in the entry's error count).
    pub fn is_error(self) -> bool {
        matches!(self, RemapCause::WriteError | RemapCause::SpareFailure)
    }
}

/// One persistent change. Times are seconds of the device's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[cfg_attr(feature = "std", serde(tag = "kind", rename_all = "kebab-case"))]
pub enum Record {
    /// Block `lba` now lives on spare block `spare`. A spare it had before is freed.
    Remap {
        lba: u64,
        spare: u64,
        cause: RemapCause,
        time_s: u32,
    },
    /// Block `lba` is back on the main device; its spare is freed.
    Unmap { lba: u64, time_s: u32 },
    /// Block `lba` failed a read where it lives; reads fail until a write moves it.
    Pending { lba: u64, time_s: u32 },
    /// Block `lba` is no longer pending: the main device holds its data again.
    Clear { lba: u64, time_s: u32 },
    /// Spare block `spare` is out of service for good. If it held block `lba`, that block
    /// becomes pending with no good copy.
    SpareRetired {
        spare: u64,
        lba: Option<u64>,
        time_s: u32,
    },
}

impl Record {
    /// The logical block the record is about, if any.
    pub fn lba(&self) -> Option<u64> {
        match *self {
            Record::Remap { lba, .. }
            | Record::Unmap { lba, .. }
            | Record::Pending { lba, .. }
            | Record::Clear { lba, .. } => Some(lba),
            Record::SpareRetired { lba, .. } => lba,
        }
    }
}

/// A record that cannot be applied to the state it meets: the journal contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Spare(#[from] SpareError),
    #[error("block {lba} is beyond the device ({blocks} blocks)")]
    BlockOutOfRange { lba: u64, blocks: u64 },
    #[error("block {lba}: {what}")]
    Contradiction { lba: u64, what: &'static str },
}

/// Apply `rec` to `table` and `spares`. On error nothing has changed. `blocks` is the number
/// of logical blocks, for range checks.
pub fn apply(
    table: &mut RemapTable,
    spares: &mut SpareAllocator,
    blocks: u64,
    rec: &Record,
) -> Result<(), ApplyError> {
    if let Some(lba) = rec.lba()
        && lba >= blocks
    {
        return Err(ApplyError::BlockOutOfRange { lba, blocks });
    }
    match *rec {
        Record::Remap {
            lba,
            spare,
            cause,
            time_s,
        } => {
            let old = table.get(lba);
            let old_spare = old.and_then(|e| e.spare);
            if old_spare != Some(spare) {
                // Check everything before changing anything.
                match spares.state(spare)? {
                    SpareState::Free => {}
                    state => {
                        return Err(SpareError::WrongState {
                            spare,
                            state,
                            expected: SpareState::Free,
                        }
                        .into());
                    }
                }
            }
            if let Some(s) = old_spare.filter(|&s| s != spare)
                && spares.state(s)? != SpareState::Used
            {
                return Err(ApplyError::Contradiction {
                    lba,
                    what: "remap of a block whose old spare is not in use",
                });
            }
            let errors = old.map_or(0, |e| e.error_count);
            // A spare failure was already counted when the old spare was retired.
            let errors = errors.saturating_add(u16::from(cause == RemapCause::WriteError));
            table.insert(lba, Entry::remapped(spare, errors, time_s))?;
            if old_spare != Some(spare) {
                spares.mark_used(spare)?;
                if let Some(s) = old_spare {
                    spares.free(s)?;
                }
            }
        }
        Record::Unmap { lba, .. } => {
            let Some(old) = table.get(lba) else {
                return Err(ApplyError::Contradiction {
                    lba,
                    what: "unmap of a block that has no entry",
                });
            };
            if let Some(s) = old.spare {
                if spares.state(s)? != SpareState::Used {
                    return Err(ApplyError::Contradiction {
                        lba,
                        what: "unmap of a block whose spare is not in use",
                    });
                }
                spares.free(s)?;
            }
            table.remove(lba);
        }
        Record::Pending { lba, time_s } => {
            let old = table.get(lba);
            if old.is_some_and(|e| e.is_remapped()) {
                return Err(ApplyError::Contradiction {
                    lba,
                    what: "pending on a remapped block (its spare must be retired first)",
                });
            }
            let flags = old.map_or(EntryFlags::empty(), |e| e.flags);
            let errors = old.map_or(0, |e| e.error_count).saturating_add(1);
            table.insert(
                lba,
                Entry {
                    spare: None,
                    flags: flags.union(EntryFlags::PENDING),
                    error_count: errors,
                    time_s,
                },
            )?;
        }
        Record::Clear { lba, .. } => match table.get(lba) {
            Some(e) if e.is_pending() => {
                table.remove(lba);
            }
            _ => {
                return Err(ApplyError::Contradiction {
                    lba,
                    what: "clear of a block that is not pending",
                });
            }
        },
        Record::SpareRetired { spare, lba, time_s } => {
            let state = spares.state(spare)?;
            match lba {
                Some(lba) => {
                    let Some(old) = table.get(lba).filter(|e| e.spare == Some(spare)) else {
                        return Err(ApplyError::Contradiction {
                            lba,
                            what: "retired spare does not belong to this block",
                        });
                    };
                    table.insert(
                        lba,
                        Entry {
                            spare: None,
                            flags: EntryFlags::PENDING.union(EntryFlags::SPARE_RETIRED),
                            error_count: old.error_count.saturating_add(1),
                            time_s,
                        },
                    )?;
                }
                None if state == SpareState::Used => {
                    return Err(SpareError::WrongState {
                        spare,
                        state,
                        expected: SpareState::Free,
                    }
                    .into());
                }
                None => {}
            }
            spares.retire(spare)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (RemapTable, SpareAllocator) {
        (RemapTable::new(100), SpareAllocator::new(10).unwrap())
    }

    #[test]
    fn remap_then_unmap_frees_the_spare() {
        let (mut t, mut s) = state();
        let r = Record::Remap {
            lba: 5,
            spare: 2,
            cause: RemapCause::WriteError,
            time_s: 7,
        };
        apply(&mut t, &mut s, 100, &r).unwrap();
        assert_eq!(t.get(5), Some(Entry::remapped(2, 1, 7)));
        assert_eq!(s.state(2).unwrap(), SpareState::Used);
        // The same spare for another block is a contradiction and changes nothing.
        let r2 = Record::Remap {
            lba: 6,
            spare: 2,
            cause: RemapCause::Manual,
            time_s: 8,
        };
        assert!(apply(&mut t, &mut s, 100, &r2).is_err());
        assert_eq!(t.len(), 1);
        apply(&mut t, &mut s, 100, &Record::Unmap { lba: 5, time_s: 9 }).unwrap();
        assert!(t.is_empty());
        assert_eq!(s.free_count(), 10);
        s.check_invariants().unwrap();
    }

    #[test]
    fn spare_failure_makes_the_block_pending_and_a_rewrite_moves_it() {
        let (mut t, mut s) = state();
        for rec in [
            Record::Remap {
                lba: 1,
                spare: 0,
                cause: RemapCause::WriteError,
                time_s: 1,
            },
            Record::SpareRetired {
                spare: 0,
                lba: Some(1),
                time_s: 2,
            },
        ] {
            apply(&mut t, &mut s, 100, &rec).unwrap();
        }
        let e = t.get(1).unwrap();
        assert!(e.is_pending() && !e.main_is_current());
        assert_eq!(e.error_count, 2);
        apply(
            &mut t,
            &mut s,
            100,
            &Record::Remap {
                lba: 1,
                spare: 1,
                cause: RemapCause::Rewrite,
                time_s: 3,
            },
        )
        .unwrap();
        assert_eq!(t.get(1).unwrap().spare, Some(1));
        assert_eq!((s.used_count(), s.retired_count()), (1, 1));
    }

    #[test]
    fn contradictions_are_refused() {
        let (mut t, mut s) = state();
        assert!(apply(&mut t, &mut s, 100, &Record::Unmap { lba: 1, time_s: 0 }).is_err());
        assert!(apply(&mut t, &mut s, 100, &Record::Clear { lba: 1, time_s: 0 }).is_err());
        assert!(
            apply(
                &mut t,
                &mut s,
                100,
                &Record::Pending {
                    lba: 100,
                    time_s: 0
                }
            )
            .is_err()
        );
        assert!(
            apply(
                &mut t,
                &mut s,
                100,
                &Record::SpareRetired {
                    spare: 3,
                    lba: Some(4),
                    time_s: 0
                }
            )
            .is_err()
        );
        assert!(t.is_empty());
        assert_eq!(s.free_count(), 10);
    }
}
