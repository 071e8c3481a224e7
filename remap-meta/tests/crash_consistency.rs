//! Crash consistency of the on-disk format, exhaustively.
//!
//! A workload remaps, rewrites, marks pending, retires a failing spare, unmaps, maps by hand,
//! checkpoints and wraps the journal several times, on a spare device that records every
//! write and flush (`CrashBackend`). Then, for every crash point (before each write and each
//! flush of the history) and for every allowed outcome of the writes not yet flushed there
//! (each lost, kept, or torn at 512-byte sectors; all combinations while there are few, a
//! seeded sample beyond), the spare image is recovered and checked:
//!
//! - recovery succeeds (a crash never makes a device unopenable);
//! - every remap acknowledged before the crash is present and its block reads back its data;
//! - every acknowledged unmap and pending mark is present;
//! - no spare block is owned twice, and the table and pool invariants hold;
//! - the journal sequence is at least that of the last acknowledged commit, and grows again
//!   on the next commit after reopening.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use remap_core::backend::crash::{Survival, Unflushed};
use remap_core::clock::ManualClock;
use remap_core::testing::{CrashBackend, FaultyBackend};
use remap_core::{BlockBackend, MemBackend, RemapDevice};
use remap_meta::{CreateOptions, DeviceIdentity, create, inspect, open};

const BS: usize = 4096;
const MAIN_BLOCKS: u64 = 256;
/// Exhaustive below this many unflushed writes (4 outcomes each), sampled above.
const EXHAUSTIVE_UNFLUSHED: usize = 4;
const SAMPLES: usize = 64;

type Spare = FaultyBackend<CrashBackend>;
type Dev = RemapDevice<FaultyBackend<MemBackend>, Arc<Spare>>;

/// The content of a block written with `tag`: each 512-byte sector says (tag, sector).
fn block(tag: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for (i, chunk) in b.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&tag.to_le_bytes());
        chunk[8..].copy_from_slice(&((i / 32) as u64).to_le_bytes());
    }
    b
}

/// The tag of each sector of a block (None where a sector is not a tagged sector).
fn sector_tags(b: &[u8]) -> Vec<Option<u64>> {
    b.chunks(512)
        .map(|s| {
            let tag = u64::from_le_bytes(s[..8].try_into().unwrap());
            let same = s.chunks(16).all(|c| c[..8] == s[..8]);
            same.then_some(tag)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Pending,
    Remapped,
}

/// One operation of the workload, with the history span it covered.
#[derive(Debug, Clone)]
struct Op {
    start: usize,
    end: usize,
    /// Block and the table state the op leaves it in (if it changes the table).
    lba: Option<(u64, State)>,
    /// Block, data tag written to it by this op, and whether the op made it durable.
    data: Option<(u64, u64, bool)>,
    /// Journal sequence after the op.
    sequence: u64,
    flush: bool,
}

struct Workload {
    spare: Arc<Spare>,
    main: Option<Dev>,
    ops: Vec<Op>,
    tag: u64,
}

impl Workload {
    fn hist(&self) -> usize {
        self.spare.inner().history_len()
    }

    fn dev(&self) -> &Dev {
        self.main.as_ref().unwrap()
    }

    fn run(
        &mut self,
        lba: Option<(u64, State)>,
        data: Option<(u64, u64, bool)>,
        flush: bool,
        f: impl FnOnce(&Dev),
    ) {
        let start = self.hist();
        f(self.dev());
        let end = self.hist();
        let sequence = self.dev().sequence();
        self.ops.push(Op {
            start,
            end,
            lba,
            data,
            sequence,
            flush,
        });
    }

    fn next_tag(&mut self) -> u64 {
        self.tag += 1;
        self.tag
    }

    /// A write that fails on main and moves the block.
    fn remap_write(&mut self, lba: u64) {
        self.dev().main().fail_writes([lba]);
        let tag = self.next_tag();
        self.run(
            Some((lba, State::Remapped)),
            Some((lba, tag, true)),
            false,
            |d| d.write(lba * BS as u64, &block(tag)).unwrap(),
        );
    }
}

fn build() -> (Workload, Vec<u8>) {
    let fmt = MemBackend::new(208 * 1024);
    let opts = CreateOptions {
        journal_blocks: Some(4),
        pool_blocks: Some(24),
        uuid: Some([7; 16]),
        created_ns: Some(1),
        ..Default::default()
    };
    create(&fmt, MAIN_BLOCKS * BS as u64, DeviceIdentity::NONE, &opts).unwrap();
    let image = fmt.to_vec();
    let spare = Arc::new(FaultyBackend::new(
        CrashBackend::from_image(image.clone()),
        BS as u64,
    ));
    let main = FaultyBackend::new(
        MemBackend::new((MAIN_BLOCKS * BS as u64) as usize),
        BS as u64,
    );
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let dev = open(main, spare.clone(), &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    (
        Workload {
            spare,
            main: Some(dev),
            ops: Vec::new(),
            tag: 0,
        },
        image,
    )
}

fn workload() -> (Workload, Vec<u8>) {
    let (mut w, image) = build();
    // Six remaps through a 4-block journal: the ring fills and a checkpoint is written.
    for lba in 3..9 {
        w.remap_write(lba);
    }
    // A write to a remapped block goes to its spare, durable at the next flush.
    let tag = w.next_tag();
    w.run(
        Some((4, State::Remapped)),
        Some((4, tag, false)),
        false,
        |d| d.write(4 * BS as u64, &block(tag)).unwrap(),
    );
    w.run(None, None, true, |d| d.flush().unwrap());
    // An unreadable block becomes pending; a whole-block rewrite moves it.
    w.dev().main().fail_reads([20]);
    w.run(Some((20, State::Pending)), None, false, |d| {
        assert!(d.read(20 * BS as u64, &mut [0u8; BS]).is_err())
    });
    let tag = w.next_tag();
    w.run(
        Some((20, State::Remapped)),
        Some((20, tag, true)),
        false,
        |d| d.write(20 * BS as u64, &block(tag)).unwrap(),
    );
    // Main heals under block 5: move it back.
    w.dev().main().heal([5]);
    w.run(Some((5, State::Absent)), None, false, |d| {
        d.unmap_block(5).unwrap()
    });
    // The next spare block fails its write: it is retired and the block lands elsewhere.
    let next_free = w.dev().with_state(|_, s| s.next_free(None).unwrap());
    let pool_offset = inspect(w.spare.inner())
        .unwrap()
        .superblock
        .geometry
        .pool_offset;
    w.spare.fail_writes([pool_offset / BS as u64 + next_free]);
    w.remap_write(30);
    w.run(None, None, false, |d| d.checkpoint().unwrap());
    // Map by hand: copy the block's current data to a spare.
    let tag = w.next_tag();
    w.run(None, Some((40, tag, false)), false, |d| {
        d.write(40 * BS as u64, &block(tag)).unwrap()
    });
    w.run(
        Some((40, State::Remapped)),
        Some((40, tag, true)),
        false,
        |d| {
            d.map_block(40, false).unwrap();
        },
    );
    // More remaps: the journal wraps again.
    for lba in 50..57 {
        w.remap_write(lba);
    }
    w.dev().main().heal([3, 4]);
    w.run(Some((3, State::Absent)), None, false, |d| {
        d.unmap_block(3).unwrap()
    });
    w.run(Some((4, State::Absent)), None, false, |d| {
        d.unmap_block(4).unwrap()
    });
    w.remap_write(60);
    w.run(None, None, true, |d| d.flush().unwrap());
    (w, image)
}

/// What must hold after a crash at history point `p`.
struct Expectation {
    /// Per block: the allowed table states, and the data tags its sectors may hold if it is
    /// remapped.
    blocks: Vec<(u64, BTreeSet<StateKey>, BTreeSet<u64>)>,
    min_sequence: u64,
}

type StateKey = u8;
fn key(s: State) -> StateKey {
    s as u8
}

fn expectation(ops: &[Op], p: usize) -> Expectation {
    let mut lbas: BTreeSet<u64> = BTreeSet::new();
    for op in ops {
        lbas.extend(op.lba.map(|(l, _)| l));
        lbas.extend(op.data.map(|(l, _, _)| l));
    }
    let mut blocks = Vec::new();
    for &lba in &lbas {
        let mut allowed = BTreeSet::from([key(State::Absent)]);
        // Tags durable on the medium, and tags written since then (may or may not be there).
        let mut durable: BTreeSet<u64> = BTreeSet::new();
        let mut recent: BTreeSet<u64> = BTreeSet::new();
        for op in ops.iter().take_while(|op| op.start < p) {
            let done = op.end <= p;
            if op.flush && done && !recent.is_empty() {
                durable = std::mem::take(&mut recent);
            }
            if let Some((l, s)) = op.lba.filter(|&(l, _)| l == lba) {
                let _ = l;
                if done {
                    allowed = BTreeSet::from([key(s)]);
                    if s == State::Absent {
                        durable.clear();
                        recent.clear();
                    }
                } else {
                    allowed.insert(key(s));
                }
            }
            if let Some((_, tag, durable_on_ack)) = op.data.filter(|&(l, _, _)| l == lba) {
                if done && durable_on_ack {
                    durable = BTreeSet::from([tag]);
                    recent.clear();
                } else {
                    recent.insert(tag);
                }
            }
        }
        let mut tags = durable;
        tags.extend(recent);
        blocks.push((lba, allowed, tags));
    }
    let min_sequence = ops
        .iter()
        .filter(|op| op.end <= p)
        .map(|op| op.sequence)
        .max()
        .unwrap_or(0);
    Expectation {
        blocks,
        min_sequence,
    }
}

/// A block whose state and data a first recovery showed: a second crash must keep both.
struct Fixed {
    lba: u64,
    state: State,
    data: Option<Vec<u8>>,
}

fn state_of(table: &remap_core::RemapTable, lba: u64) -> State {
    match table.get(lba) {
        None => State::Absent,
        Some(e) if e.is_remapped() => State::Remapped,
        Some(_) => State::Pending,
    }
}

fn check(image: Vec<u8>, exp: &Expectation, fixed: &[Fixed], what: &str) {
    let spare = Arc::new(MemBackend::from_vec(image));
    let rec = inspect(&*spare).unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    rec.table.check_invariants().unwrap();
    rec.spares.check_invariants().unwrap();
    let mut owners = BTreeSet::new();
    for (lba, e) in rec.table.iter() {
        if let Some(s) = e.spare {
            assert!(
                owners.insert(s),
                "{what}: spare {s} owned twice (block {lba})"
            );
        }
    }
    assert!(
        rec.journal.next_sequence() > exp.min_sequence,
        "{what}: journal sequence went back: next {} <= acknowledged {}",
        rec.journal.next_sequence(),
        exp.min_sequence
    );
    let main = FaultyBackend::new(
        MemBackend::new((MAIN_BLOCKS * BS as u64) as usize),
        BS as u64,
    );
    let clock = Arc::new(ManualClock::new(2_000_000_000_000));
    let dev = open(main, spare.clone(), &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    for f in fixed {
        let state = state_of(&rec.table, f.lba);
        assert_eq!(
            state, f.state,
            "{what}: block {} was {:?} after the first recovery",
            f.lba, f.state
        );
        if let Some(data) = &f.data {
            let mut buf = vec![0u8; BS];
            dev.read(f.lba * BS as u64, &mut buf)
                .unwrap_or_else(|e| panic!("{what}: block {}: {e}", f.lba));
            assert!(
                buf == *data,
                "{what}: block {} data differs from what the first recovery read",
                f.lba
            );
        }
    }
    for (lba, allowed, tags) in &exp.blocks {
        let state = state_of(&rec.table, *lba);
        assert!(
            allowed.contains(&key(state)),
            "{what}: block {lba} is {state:?}, allowed {allowed:?}"
        );
        if state != State::Remapped {
            continue;
        }
        let mut buf = vec![0u8; BS];
        dev.read(lba * BS as u64, &mut buf)
            .unwrap_or_else(|e| panic!("{what}: block {lba}: {e}"));
        for (i, t) in sector_tags(&buf).into_iter().enumerate() {
            let ok = t.is_some_and(|t| tags.contains(&t));
            assert!(
                ok,
                "{what}: block {lba} sector {i} holds {t:?}, allowed {tags:?}"
            );
        }
    }
    // The sequence grows on the next commit after reopening.
    let before = dev.sequence();
    dev.main().fail_writes([200]);
    dev.write(200 * BS as u64, &block(999)).unwrap();
    assert!(
        dev.sequence() > before,
        "{what}: sequence did not grow after reopen"
    );
}

/// Outcomes for one unflushed write: lost, kept, torn two ways.
fn outcome(choice: usize, w: &Unflushed<'_>, seed: u64) -> Survival {
    match choice {
        0 => Survival::None,
        1 => Survival::All,
        2 => {
            let n = w.sectors();
            Survival::Sectors((0..n).map(|i| i < n / 2).collect())
        }
        _ => {
            let mut rng = Pcg64Mcg::seed_from_u64(seed ^ w.op_index as u64);
            Survival::Sectors((0..w.sectors()).map(|_| rng.random_bool(0.5)).collect())
        }
    }
}

#[test]
fn every_crash_point_recovers_every_acknowledged_change() {
    let (w, _initial) = workload();
    let crash = w.spare.inner();
    let points = crash.history_len();
    assert!(
        inspect(crash).unwrap().superblock.checkpoint_sequence >= 4,
        "the workload must checkpoint several times"
    );
    let mut states_checked = 0usize;
    let mut max_unflushed = 0usize;
    for p in 0..=points {
        let exp = expectation(&w.ops, p);
        let n = crash.unflushed_at(p);
        max_unflushed = max_unflushed.max(n);
        if n <= EXHAUSTIVE_UNFLUSHED {
            for combo in 0..4usize.pow(n as u32) {
                let mut k = 0;
                let image = crash.crash_image_at(p, |u| {
                    let c = (combo / 4usize.pow(k)) % 4;
                    k += 1;
                    outcome(c, u, combo as u64)
                });
                check(
                    image,
                    &exp,
                    &[],
                    &format!("crash point {p}/{points}, outcome {combo}"),
                );
                states_checked += 1;
            }
        } else {
            let mut rng = Pcg64Mcg::seed_from_u64(p as u64);
            for s in 0..SAMPLES {
                let seed: u64 = rng.random();
                let image = crash.crash_image_at(p, |u| outcome(rng.random_range(0..4), u, seed));
                check(
                    image,
                    &exp,
                    &[],
                    &format!("crash point {p}/{points}, sample {s}"),
                );
                states_checked += 1;
            }
        }
    }
    eprintln!(
        "crash consistency: {states_checked} crash states over {} crash points (at most {max_unflushed} unflushed writes at a point)",
        points + 1
    );
    assert!(states_checked > points);
}

/// Open `image` as the spare of a fresh device pair (main contents do not matter: the blocks
/// checked are remapped).
fn open_image(image: Vec<u8>) -> (Arc<Spare>, Dev) {
    let spare = Arc::new(FaultyBackend::new(
        CrashBackend::from_image(image),
        BS as u64,
    ));
    let main = FaultyBackend::new(
        MemBackend::new((MAIN_BLOCKS * BS as u64) as usize),
        BS as u64,
    );
    let clock = Arc::new(ManualClock::new(1_500_000_000_000));
    let dev = open(main, spare.clone(), &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    (spare, dev)
}

/// History indices of the writes to a superblock copy (head or tail) at or after `from`.
fn superblock_writes(crash: &CrashBackend, from: usize) -> Vec<usize> {
    use remap_core::backend::crash::Op as HistOp;
    let tail = crash.size_bytes() - BS as u64;
    let heads = [0u64, BS as u64, tail];
    crash
        .history()
        .iter()
        .enumerate()
        .skip(from)
        .filter_map(|(i, op)| match op {
            HistOp::Write { offset, .. } if heads.contains(offset) => Some(i),
            _ => None,
        })
        .collect()
}

/// The sequence, step by step: (1) a checkpoint flushes superblock A and loses the
/// write of B; (2) the next open recovers from A; (3) the next command checkpoints into the
/// area the stale B points at and rewrites the superblocks; (4) a second power cut tears one
/// of those superblock writes; (5) recovery must still succeed and block 200, acknowledged
/// before the first cut, must read back. Every superblock write of step 3 is torn in turn
/// (and lost, and kept), so the test does not depend on which copy is written first.
#[test]
fn second_power_cut_after_a_lost_superblock_write_keeps_acknowledged_remaps() {
    let (w, _) = build();
    let dev = w.dev();
    dev.main().fail_writes([200]);
    dev.write(200 * BS as u64, &block(200)).unwrap();
    let crash = w.spare.inner();
    let from = crash.history_len();
    dev.checkpoint().unwrap();
    // Step 1: crash just before the checkpoint's last superblock write (the earlier ones
    // were flushed): the copies now disagree.
    let sb_writes = superblock_writes(crash, from);
    assert!(sb_writes.len() >= 2, "a checkpoint writes every copy");
    let first_cut = crash.crash_image_at(*sb_writes.last().unwrap(), |_| Survival::All);
    // Step 2: the next open recovers and does its work.
    let (spare2, dev2) = open_image(first_cut);
    let mut buf = vec![0u8; BS];
    dev2.read(200 * BS as u64, &mut buf).unwrap();
    assert_eq!(buf, block(200));
    // Step 3: more remaps, then a checkpoint.
    let crash2 = spare2.inner();
    dev2.main().fail_writes([210, 211]);
    dev2.write(210 * BS as u64, &block(210)).unwrap();
    dev2.write(211 * BS as u64, &block(211)).unwrap();
    let from2 = crash2.history_len();
    dev2.checkpoint().unwrap();
    let sb_writes2 = superblock_writes(crash2, from2);
    assert!(!sb_writes2.is_empty());
    // Steps 4 and 5: tear (or lose, or keep) each superblock write in turn.
    let mut states = 0;
    for &at in &sb_writes2 {
        for how in 0..3 {
            let image = crash2.crash_image_at(at + 1, |u| {
                if u.op_index != at {
                    return Survival::All;
                }
                match how {
                    0 => Survival::None,
                    1 => Survival::All,
                    _ => Survival::Sectors((0..u.sectors()).map(|i| i % 2 == 0).collect()),
                }
            });
            let what = format!("second cut at history {at} (outcome {how})");
            let rec = inspect(&MemBackend::from_vec(image.clone()))
                .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
            for lba in [200u64, 210, 211] {
                assert!(
                    rec.table.get(lba).is_some_and(|e| e.is_remapped()),
                    "{what}: block {lba} lost its remap"
                );
            }
            let (_, dev3) = open_image(image);
            for lba in [200u64, 210, 211] {
                dev3.read(lba * BS as u64, &mut buf).unwrap();
                assert_eq!(buf, block(lba), "{what}: block {lba} data");
            }
            states += 1;
        }
    }
    eprintln!("second power cut: {states} crash states");
}

/// First-crash outcomes tried at each crash point of the first run: every combination while
/// there are at most this many unflushed writes, else `DOUBLE_FIRST_SAMPLES` seeded samples.
const DOUBLE_FIRST_EXHAUSTIVE: usize = 2;
const DOUBLE_FIRST_SAMPLES: usize = 4;
/// The same bounds for the second crash, at every crash point of the second run.
const DOUBLE_SECOND_EXHAUSTIVE: usize = 2;
const DOUBLE_SECOND_SAMPLES: usize = 4;

/// The images of crash point `p` of `crash`: exhaustive up to `exhaustive` unflushed writes
/// (4 outcomes each), `samples` seeded samples beyond.
fn crash_images(
    crash: &CrashBackend,
    p: usize,
    exhaustive: usize,
    samples: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    let n = crash.unflushed_at(p);
    if n <= exhaustive {
        (0..4usize.pow(n as u32))
            .map(|combo| {
                let mut k = 0;
                let image = crash.crash_image_at(p, |u| {
                    let c = (combo / 4usize.pow(k)) % 4;
                    k += 1;
                    outcome(c, u, combo as u64)
                });
                (format!("outcome {combo}"), image)
            })
            .collect()
    } else {
        let mut rng = Pcg64Mcg::seed_from_u64(seed ^ p as u64);
        (0..samples)
            .map(|s| {
                let sd: u64 = rng.random();
                let image = crash.crash_image_at(p, |u| outcome(rng.random_range(0..4), u, sd));
                (format!("sample {s}"), image)
            })
            .collect()
    }
}

/// The run after the first recovery: remaps that fill the 4-block ring (so the first
/// commits after recovery include a checkpoint and superblock updates), an explicit
/// checkpoint, an unmap and a last remap. Touches only blocks the first run never did.
fn second_run(w: &mut Workload) {
    for lba in 100..105 {
        w.remap_write(lba);
    }
    w.run(None, None, false, |d| d.checkpoint().unwrap());
    w.dev().main().heal([101]);
    w.run(Some((101, State::Absent)), None, false, |d| {
        d.unmap_block(101).unwrap()
    });
    w.remap_write(105);
}

/// A crash, recovery, more commits, and a second crash at every point of them.
///
/// For every crash point of the first run's history (every write and flush of the
/// workload above) and a bounded set of outcomes of its unflushed writes, the image is
/// opened (recovery; it writes nothing, so a crash during recovery leaves this same image),
/// the state of every block is read, and [`second_run`] runs on it. Then for every crash
/// point of that second run and a bounded set of outcomes, the image must recover, keep
/// every block of the first run exactly as the first recovery showed it (state and data),
/// keep every change acknowledged in the second run, and accept a new commit.
#[test]
fn double_crash_every_second_crash_point_after_every_first() {
    let (w, _) = workload();
    let crash = w.spare.inner();
    let points = crash.history_len();
    let lbas: BTreeSet<u64> = w
        .ops
        .iter()
        .flat_map(|op| {
            op.lba
                .map(|(l, _)| l)
                .into_iter()
                .chain(op.data.map(|d| d.0))
        })
        .collect();
    let (mut first_states, mut second_states) = (0usize, 0usize);
    for p1 in 0..=points {
        for (how1, image1) in crash_images(
            crash,
            p1,
            DOUBLE_FIRST_EXHAUSTIVE,
            DOUBLE_FIRST_SAMPLES,
            0xD0_0B1E,
        ) {
            first_states += 1;
            let (spare2, dev2) = open_image(image1);
            let fixed: Vec<Fixed> = dev2.with_state(|t, _| {
                lbas.iter()
                    .map(|&lba| Fixed {
                        lba,
                        state: state_of(t, lba),
                        data: None,
                    })
                    .collect()
            });
            let fixed: Vec<Fixed> = fixed
                .into_iter()
                .map(|mut f| {
                    if f.state == State::Remapped {
                        let mut buf = vec![0u8; BS];
                        dev2.read(f.lba * BS as u64, &mut buf).unwrap();
                        f.data = Some(buf);
                    }
                    f
                })
                .collect();
            let mut w2 = Workload {
                spare: spare2,
                main: Some(dev2),
                ops: Vec::new(),
                tag: 1000,
            };
            second_run(&mut w2);
            let crash2 = w2.spare.inner();
            let points2 = crash2.history_len();
            for p2 in 0..=points2 {
                let exp = expectation(&w2.ops, p2);
                for (how2, image2) in crash_images(
                    crash2,
                    p2,
                    DOUBLE_SECOND_EXHAUSTIVE,
                    DOUBLE_SECOND_SAMPLES,
                    p1 as u64,
                ) {
                    check(
                        image2,
                        &exp,
                        &fixed,
                        &format!(
                            "first crash at {p1}/{points} ({how1}), second at {p2}/{points2} ({how2})"
                        ),
                    );
                    second_states += 1;
                }
            }
        }
    }
    eprintln!(
        "double crash: {first_states} first-crash states over {} points, {second_states} second-crash states",
        points + 1
    );
    assert!(second_states > first_states * 10);
}

/// The health verdict and the error counters behind it survive a crash: they are carried in
/// every journal block (format version 2), not only in checkpoints.
///
/// 1,000 reads are checkpointed (healthy); then each of 12 remaps (a main write error each,
/// committed to a 64-block journal, no checkpoint) pushes the error rate past the critical
/// threshold. A crash at every point of that history, with every outcome of the unflushed
/// writes, must recover at least the error counters of the last acknowledged remap, and
/// exactly them, with the same verdict, right after it.
#[test]
fn health_verdict_and_error_counters_survive_a_crash() {
    let fmt = MemBackend::new(720 * 1024);
    let opts = CreateOptions {
        journal_blocks: Some(64),
        pool_blocks: Some(24),
        uuid: Some([9; 16]),
        created_ns: Some(1),
        ..Default::default()
    };
    create(&fmt, MAIN_BLOCKS * BS as u64, DeviceIdentity::NONE, &opts).unwrap();
    let (spare, dev) = open_image(fmt.to_vec());
    let mut buf = vec![0u8; BS];
    for i in 0..1000u64 {
        dev.read((i % MAIN_BLOCKS) * BS as u64, &mut buf).unwrap();
    }
    dev.checkpoint().unwrap();
    assert_eq!(dev.health().state, remap_core::HealthState::Healthy);
    let crash = spare.inner();
    let start = crash.history_len();
    // (history end, main write errors, verdict) after each acknowledged remap.
    let mut acked = Vec::new();
    for lba in 100..112u64 {
        dev.main().fail_writes([lba]);
        dev.write(lba * BS as u64, &block(lba)).unwrap();
        acked.push((
            crash.history_len(),
            dev.stats().main_write_errors,
            dev.health().state,
        ));
    }
    assert_eq!(dev.health().state, remap_core::HealthState::Critical);
    let rec = inspect(crash).unwrap();
    assert_eq!(
        rec.superblock.checkpoint_sequence,
        inspect(&MemBackend::from_vec(
            crash.crash_image_at(start, |_| Survival::None)
        ))
        .unwrap()
        .superblock
        .checkpoint_sequence,
        "no checkpoint after the reads: the counters must come from the journal"
    );
    let mut states = 0;
    for p in start..=crash.history_len() {
        let last = acked.iter().rev().find(|(end, _, _)| *end <= p);
        for (how, image) in crash_images(crash, p, 3, 8, 0xC0_C0) {
            let what = format!("crash point {p} ({how})");
            let (_, after) = open_image(image);
            let errors = after.stats().main_write_errors;
            if let Some(&(end, want, verdict)) = last {
                assert!(
                    errors >= want,
                    "{what}: {errors} main write errors recovered, {want} acknowledged"
                );
                if end == p {
                    assert_eq!(errors, want, "{what}");
                    assert_eq!(after.health().state, verdict, "{what}: verdict");
                }
            }
            states += 1;
        }
    }
    eprintln!("health after a crash: {states} crash states");
}

/// A crash during salvage: at every write and flush of it, with every outcome of up to
/// three unflushed writes (8 seeded samples beyond), the spare either recovers to the
/// salvaged table or is salvaged again to the same table. Salvage never leaves a spare that
/// neither opens nor repairs.
#[test]
fn crash_during_salvage_leaves_a_spare_that_opens_or_salvages_again() {
    let (w, _) = workload();
    let mut image = w.spare.inner().current_image();
    drop(w);
    let rec = inspect(&MemBackend::from_vec(image.clone())).unwrap();
    let g = rec.superblock.geometry;
    let active = g.checkpoint_offsets[usize::from(rec.superblock.active_checkpoint)] as usize;
    image[active..active + g.checkpoint_area_bytes as usize].fill(0x5A);
    let damaged = CrashBackend::from_image(image);
    assert!(inspect(&damaged).is_err());
    let report = remap_meta::salvage(&damaged, true).unwrap();
    let table: Vec<_> = inspect(&damaged).unwrap().table.iter().collect();
    let mut states = 0;
    for p in 0..=damaged.history_len() {
        for (how, img) in crash_images(&damaged, p, 3, 8, 0x5A1) {
            let what = format!("crash at {p} of the salvage ({how})");
            let spare = MemBackend::from_vec(img);
            let got = match inspect(&spare) {
                Ok(r) => r,
                Err(_) => {
                    let again = remap_meta::salvage(&spare, true)
                        .unwrap_or_else(|e| panic!("{what}: salvage refused: {e}"));
                    assert_eq!(again.lost, report.lost, "{what}");
                    inspect(&spare).unwrap()
                }
            };
            assert_eq!(got.table.iter().collect::<Vec<_>>(), table, "{what}");
            states += 1;
        }
    }
    eprintln!("crash during salvage: {states} crash states");
}

/// A crash during `upgrade`: at every write and flush, the spare opens as version 1 or
/// version 2 with the same table.
#[test]
fn crash_during_upgrade_leaves_version_one_or_two_complete() {
    let (w, _) = workload();
    let image = w.spare.inner().current_image();
    drop(w);
    // Make it a version 1 spare: rewrite its superblocks as version 1 (the pool keeps the
    // tail's room, so the upgrade takes no pool block).
    let spare = CrashBackend::from_image(image);
    let rec = inspect(&spare).unwrap();
    let table: Vec<_> = rec.table.iter().collect();
    let v1 = remap_meta::Superblock {
        version: 1,
        sequence: rec.superblock.sequence + 1,
        ..rec.superblock
    };
    remap_meta::journal::write_superblocks(
        &mut remap_meta::io::BackendIo(&spare),
        &v1,
        remap_meta::Region::SuperblockA,
    )
    .unwrap();
    let v1_image = spare.current_image();
    let spare = CrashBackend::from_image(v1_image);
    assert_eq!(inspect(&spare).unwrap().superblock.version, 1);
    remap_meta::upgrade(&spare).unwrap();
    assert_eq!(inspect(&spare).unwrap().superblock.version, 2);
    let mut states = 0;
    for p in 0..=spare.history_len() {
        for (how, img) in crash_images(&spare, p, 3, 8, 0x0962) {
            let what = format!("crash at {p} of the upgrade ({how})");
            let rec = inspect(&MemBackend::from_vec(img))
                .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
            assert!([1, 2].contains(&rec.superblock.version), "{what}");
            assert_eq!(rec.table.iter().collect::<Vec<_>>(), table, "{what}");
            states += 1;
        }
    }
    eprintln!("crash during upgrade: {states} crash states");
}
