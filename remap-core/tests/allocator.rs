//! The spare allocator and the remap table under random operation sequences (proptest,
//! shrinking to a minimal sequence):
//!
//! - allocator: free ∪ used ∪ retired = pool, pairwise disjoint, counts right, after every
//!   step; every result equals that of a naive reference (lowest free block, or the block
//!   after the hint when free), so the order is deterministic;
//! - table: equals a `BTreeMap` after random inserts and removes (enough to split chunks),
//!   its structure checks pass, and segments/any_in/range agree with the map;
//! - records: `record::apply` keeps table and pool consistent (each remapped block owns a
//!   distinct used spare), and a refused record changes nothing.

use std::collections::BTreeMap;

use proptest::prelude::*;
use remap_core::record::{self, Record, RemapCause};
use remap_core::spare::{SpareAllocator, SpareError, SpareState};
use remap_core::table::{Entry, RemapTable, Segment, TableError};

// ----- allocator -----

#[derive(Debug, Clone)]
enum AllocOp {
    Allocate,
    AllocateAfter(u64),
    NextFree(Option<u64>),
    Free(u64),
    Retire(u64),
    MarkUsed(u64),
}

fn alloc_op(pool: u64) -> impl Strategy<Value = AllocOp> {
    // Indices reach a little past the pool, to exercise out-of-pool refusals.
    let i = 0..pool + 3;
    prop_oneof![
        4 => Just(AllocOp::Allocate),
        3 => i.clone().prop_map(AllocOp::AllocateAfter),
        1 => proptest::option::of(i.clone()).prop_map(AllocOp::NextFree),
        3 => i.clone().prop_map(AllocOp::Free),
        2 => i.clone().prop_map(AllocOp::Retire),
        2 => i.prop_map(AllocOp::MarkUsed),
    ]
}

/// The naive reference: one state per block, linear scans.
struct RefPool(Vec<SpareState>);

impl RefPool {
    fn lowest_free(&self) -> Option<u64> {
        self.0
            .iter()
            .position(|s| *s == SpareState::Free)
            .map(|i| i as u64)
    }
    fn next_free(&self, after: Option<u64>) -> Option<u64> {
        if let Some(n) = after.map(|p| p + 1)
            && self.0.get(n as usize) == Some(&SpareState::Free)
        {
            return Some(n);
        }
        self.lowest_free()
    }
    fn get(&self, i: u64) -> Option<SpareState> {
        self.0.get(i as usize).copied()
    }
}

/// Apply `op` to both and compare: `Ok(Ok(block))` on success (the block allocated or
/// peeked, if any), `Ok(Err(()))` when both refused, `Err(why)` when they disagree.
type StepResult = Result<Result<Option<u64>, ()>, String>;

fn step(a: &mut SpareAllocator, r: &mut RefPool, op: &AllocOp) -> StepResult {
    let pool = r.0.len() as u64;
    let got: Result<Option<u64>, SpareError> = match *op {
        AllocOp::Allocate => a.allocate().map(Some),
        AllocOp::AllocateAfter(p) => a.allocate_after(p).map(Some),
        AllocOp::NextFree(p) => a.next_free(p).map(Some),
        AllocOp::Free(i) => a.free(i).map(|()| None),
        AllocOp::Retire(i) => a.retire(i).map(|()| None),
        AllocOp::MarkUsed(i) => a.mark_used(i).map(|()| None),
    };
    let want: Result<Option<u64>, ()> = match *op {
        AllocOp::Allocate | AllocOp::AllocateAfter(_) => {
            let after = match *op {
                AllocOp::AllocateAfter(p) => Some(p),
                _ => None,
            };
            match r.next_free(after) {
                Some(i) => {
                    r.0[i as usize] = SpareState::Used;
                    Ok(Some(i))
                }
                None => Err(()),
            }
        }
        AllocOp::NextFree(p) => r.next_free(p).map(Some).ok_or(()),
        AllocOp::Free(i) => match r.get(i) {
            Some(SpareState::Used) => {
                r.0[i as usize] = SpareState::Free;
                Ok(None)
            }
            _ => Err(()),
        },
        AllocOp::Retire(i) => match r.get(i) {
            Some(_) => {
                r.0[i as usize] = SpareState::Retired;
                Ok(None)
            }
            None => Err(()),
        },
        AllocOp::MarkUsed(i) => match r.get(i) {
            Some(SpareState::Free) => {
                r.0[i as usize] = SpareState::Used;
                Ok(None)
            }
            _ => Err(()),
        },
    };
    match (&got, &want) {
        (Ok(g), Ok(w)) if g == w => {}
        (Err(SpareError::Exhausted { pool: p }), Err(()))
            if *p == pool && r.lowest_free().is_none() => {}
        (Err(SpareError::OutOfPool { .. } | SpareError::WrongState { .. }), Err(()))
            if !matches!(
                op,
                AllocOp::Allocate | AllocOp::AllocateAfter(_) | AllocOp::NextFree(_)
            ) => {}
        _ => return Err(format!("{op:?}: allocator {got:?}, reference {want:?}")),
    }
    Ok(got.map_err(|_| ()))
}

fn check_pool(a: &SpareAllocator, r: &RefPool) -> Result<(), String> {
    a.check_invariants().map_err(str::to_string)?;
    let pool = r.0.len() as u64;
    let (mut free, mut used, mut retired) = (0, 0, 0);
    for i in 0..pool {
        let s = a.state(i).map_err(|e| e.to_string())?;
        if s != r.0[i as usize] {
            return Err(format!("block {i}: {s:?}, reference {:?}", r.0[i as usize]));
        }
        match s {
            SpareState::Free => free += 1,
            SpareState::Used => used += 1,
            SpareState::Retired => retired += 1,
        }
    }
    // Each block in exactly one set, and the sets make up the pool.
    if (a.free_count(), a.used_count(), a.retired_count()) != (free, used, retired) {
        return Err("counts differ from the block states".into());
    }
    if free + used + retired != pool || a.pool_blocks() != pool {
        return Err("free ∪ used ∪ retired is not the pool".into());
    }
    if a.state(pool).is_ok() {
        return Err("a block beyond the pool has a state".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn allocator_matches_the_reference_and_keeps_its_invariant(
        (pool, ops) in (0u64..200).prop_flat_map(|pool| {
            (Just(pool), proptest::collection::vec(alloc_op(pool), 0..300))
        })
    ) {
        let mut a = SpareAllocator::new(pool).unwrap();
        let mut r = RefPool(vec![SpareState::Free; pool as usize]);
        let mut results = Vec::new();
        for op in &ops {
            let before = a.clone();
            let result = step(&mut a, &mut r, op).map_err(TestCaseError::fail)?;
            if result.is_err() {
                prop_assert_eq!(&a, &before, "refused {:?} changed the pool", op);
            }
            results.push(result);
            check_pool(&a, &r).map_err(TestCaseError::fail)?;
        }
        // Deterministic: the same sequence gives the same answers and the same pool.
        let mut a2 = SpareAllocator::new(pool).unwrap();
        let mut r2 = RefPool(vec![SpareState::Free; pool as usize]);
        let again: Vec<_> = ops.iter().map(|op| step(&mut a2, &mut r2, op).unwrap()).collect();
        prop_assert_eq!(results, again);
        prop_assert_eq!(a, a2);
    }
}

// ----- table -----

#[derive(Debug, Clone)]
enum TableOp {
    /// Insert `n` entries at `start`, `start + stride`, ...
    Run {
        start: u64,
        n: u64,
        stride: u64,
        pending: bool,
    },
    Remove {
        start: u64,
        n: u64,
    },
}

fn table_op() -> impl Strategy<Value = TableOp> {
    prop_oneof![
        3 => (0u64..5_000, 1u64..700, 1u64..4, any::<bool>())
            .prop_map(|(start, n, stride, pending)| TableOp::Run { start, n, stride, pending }),
        1 => (0u64..5_000, 1u64..900).prop_map(|(start, n)| TableOp::Remove { start, n }),
    ]
}

fn entry_for(lba: u64, pending: bool) -> Entry {
    if pending {
        Entry::pending(1, lba as u32)
    } else {
        // Spares follow the block so that runs of blocks make runs of spares.
        Entry::remapped(lba + 1_000, 1, lba as u32)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn table_matches_a_btreemap_and_segments_cover_exactly(
        ops in proptest::collection::vec(table_op(), 1..40),
        capacity in 500usize..6_000,
        probes in proptest::collection::vec((0u64..6_000, 1u64..600), 20),
    ) {
        let mut t = RemapTable::new(capacity);
        let mut m: BTreeMap<u64, Entry> = BTreeMap::new();
        for op in &ops {
            match *op {
                TableOp::Run { start, n, stride, pending } => {
                    for k in 0..n {
                        let lba = start + k * stride;
                        let e = entry_for(lba, pending);
                        let r = t.insert(lba, e);
                        if m.contains_key(&lba) || m.len() < capacity {
                            prop_assert_eq!(r, Ok(m.insert(lba, e)));
                        } else {
                            prop_assert_eq!(r, Err(TableError::Full { lba, capacity }));
                        }
                    }
                }
                TableOp::Remove { start, n } => {
                    for lba in start..start + n {
                        prop_assert_eq!(t.remove(lba), m.remove(&lba));
                    }
                }
            }
            prop_assert_eq!(t.check_invariants(), Ok(()));
        }
        prop_assert_eq!(t.len(), m.len());
        prop_assert!(t.iter().eq(m.iter().map(|(&k, &e)| (k, e))));
        prop_assert_eq!(t.remapped_count(), m.values().filter(|e| e.is_remapped()).count());
        prop_assert_eq!(t.pending_count(), m.values().filter(|e| e.is_pending()).count());
        for &(lba, blocks) in &probes {
            prop_assert_eq!(t.any_in(lba, blocks), m.range(lba..lba + blocks).next().is_some());
            prop_assert!(t.range(lba, lba + blocks).eq(m.range(lba..lba + blocks).map(|(&k, &e)| (k, e))));
            // Segments tile the range in order, and each block is where the map says.
            let mut at = lba;
            for seg in t.segments(lba, blocks) {
                prop_assert_eq!(seg.lba(), at);
                prop_assert!(seg.blocks() > 0);
                for b in at..at + seg.blocks() {
                    let want = m.get(&b);
                    match seg {
                        Segment::Main { .. } => prop_assert!(want.is_none()),
                        Segment::Spare { spare, .. } => {
                            prop_assert_eq!(want.and_then(|e| e.spare), Some(spare + (b - at)))
                        }
                        Segment::Pending { .. } => prop_assert!(want.is_some_and(|e| e.is_pending())),
                    }
                }
                at += seg.blocks();
            }
            prop_assert_eq!(at, lba + blocks);
        }
    }
}

// ----- records -----

fn record() -> impl Strategy<Value = Record> {
    let lba = 0u64..24;
    let spare = 0u64..10;
    prop_oneof![
        4 => (lba.clone(), spare.clone(), 1u8..=4).prop_map(|(lba, spare, c)| Record::Remap {
            lba,
            spare,
            cause: RemapCause::from_u8(c).unwrap_or(RemapCause::Manual),
            time_s: 1,
        }),
        1 => lba.clone().prop_map(|lba| Record::Unmap { lba, time_s: 2 }),
        2 => lba.clone().prop_map(|lba| Record::Pending { lba, time_s: 3 }),
        1 => lba.clone().prop_map(|lba| Record::Clear { lba, time_s: 4 }),
        2 => (spare, proptest::option::of(lba))
            .prop_map(|(spare, lba)| Record::SpareRetired { spare, lba, time_s: 5 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn applied_records_keep_table_and_pool_consistent(
        recs in proptest::collection::vec(record(), 0..80)
    ) {
        let mut t = RemapTable::new(32);
        let mut s = SpareAllocator::new(10).unwrap();
        for rec in &recs {
            let (t0, s0) = (t.clone(), s.clone());
            if record::apply(&mut t, &mut s, 20, rec).is_err() {
                prop_assert!(t.iter().eq(t0.iter()), "refused {:?} changed the table", rec);
                prop_assert_eq!(&s, &s0, "refused {:?} changed the pool", rec);
            }
            prop_assert_eq!(t.check_invariants(), Ok(()));
            prop_assert_eq!(s.check_invariants(), Ok(()));
            let mut owners = BTreeMap::new();
            for (lba, e) in t.iter() {
                prop_assert!(lba < 20);
                prop_assert_eq!(e.is_remapped(), e.spare.is_some());
                if let Some(sp) = e.spare {
                    prop_assert_eq!(s.state(sp), Ok(SpareState::Used));
                    prop_assert!(owners.insert(sp, lba).is_none(), "spare {} owned twice", sp);
                }
            }
            prop_assert_eq!(s.used_count(), owners.len() as u64);
            prop_assert_eq!(t.remapped_count(), owners.len());
        }
    }
}
