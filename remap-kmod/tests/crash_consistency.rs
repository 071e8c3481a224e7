//! The target's metadata writes survive a power loss at any instant: a workload of moves,
//! pending marks, rewrites, manual maps, spare failures and checkpoints (a 4-block journal
//! ring, so commits wrap and turn into checkpoints) runs on a spare that records every
//! write and flush; at every point of that history, with seeded choices of which unflushed
//! writes survive (torn at 512 bytes), the spare recovers to the state after the last
//! request that had completed, or after the one in flight, and every remapped block's
//! spare holds that block's data.

mod common;

use std::collections::BTreeMap;

use common::{BS, Setup, Target, pattern, setup};
use remap_core::{BlockBackend, Entry, MemBackend};

/// What an acknowledged state looks like.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    entries: Vec<(u64, Entry)>,
    /// Data of every remapped block.
    data: BTreeMap<u64, Vec<u8>>,
}

fn snapshot(t: &Target, data: &BTreeMap<u64, Vec<u8>>) -> Expected {
    let entries: Vec<(u64, Entry)> = t.state.table().iter().collect();
    let data = entries
        .iter()
        .filter(|(_, e)| e.is_remapped())
        .map(|(lba, _)| (*lba, data[lba].clone()))
        .collect();
    Expected { entries, data }
}

#[test]
fn every_crash_point_recovers_to_an_acknowledged_state() {
    let mut t = setup(&Setup {
        main_blocks: 256,
        spare_bytes: 1 << 20,
        journal_blocks: Some(4),
        ..Setup::default()
    });
    // Last data written to each block.
    let mut data: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // (history length when the request completed, state it acknowledged)
    let mut acked: Vec<(usize, Expected)> = vec![(t.sim.crash.history_len(), snapshot(&t, &data))];
    let write = |t: &mut Target, data: &mut BTreeMap<u64, Vec<u8>>, lba: u64, n: u64, tag| {
        let d = pattern(lba, n, tag);
        t.kwrite(lba, &d).expect("write");
        for i in 0..n {
            data.insert(
                lba + i,
                d[(i * BS) as usize..((i + 1) * BS) as usize].to_vec(),
            );
        }
    };

    write(&mut t, &mut data, 30, 1, 1); // data for the manual map later
    t.sim.main.fail_writes([10, 11]);
    write(&mut t, &mut data, 10, 2, 2);
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    t.sim.main.fail_reads([20]);
    let mut b = vec![0u8; BS as usize];
    assert_eq!(t.kread(20, &mut b), Err(5));
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    write(&mut t, &mut data, 20, 1, 3);
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    let (state, shared) = (&mut t.state, &t.shared);
    state
        .serve_map(shared, &mut t.sim, 30, t.now_s)
        .expect("map");
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    let old = t.state.table().get(10).unwrap().spare.unwrap();
    t.sim.spare.fail_writes([t.spare_fault_block(old)]);
    write(&mut t, &mut data, 10, 1, 4);
    t.sim.spare.heal_all();
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    let (state, shared) = (&mut t.state, &t.shared);
    state
        .serve_checkpoint(shared, &mut t.sim, t.now_s)
        .expect("checkpoint");
    acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));

    for i in 0..12 {
        t.sim.main.fail_writes([40 + i]);
        write(&mut t, &mut data, 40 + i, 1, 5);
        acked.push((t.sim.crash.history_len(), snapshot(&t, &data)));
    }
    assert!(t.state.table().len() >= 16);

    let history = t.sim.crash.history_len();
    let mut states_checked = 0usize;
    // From the end of the format (the formatting itself is remap-meta's to test).
    for point in acked[0].0..=history {
        // The last request complete at this point, and the one that may be in flight.
        let k = acked.iter().rposition(|(at, _)| *at <= point).unwrap();
        let allowed: Vec<&Expected> = acked[k..(k + 2).min(acked.len())]
            .iter()
            .map(|(_, e)| e)
            .collect();
        for seed in 0..6u64 {
            let image = t
                .sim
                .crash
                .crash_image_seeded(point, seed ^ (point as u64) << 8);
            let dev = MemBackend::from_vec(image.clone());
            let r = remap_meta::recover(&mut remap_meta::io::BackendIo(&dev), dev.size_bytes())
                .unwrap_or_else(|e| {
                    panic!("crash point {point} seed {seed}: recovery failed: {e}")
                });
            let entries: Vec<(u64, Entry)> = r.table.iter().collect();
            let Some(want) = allowed.iter().find(|e| e.entries == entries) else {
                panic!(
                    "crash point {point} seed {seed}: recovered {entries:?}, which is none of {:?}",
                    allowed.iter().map(|e| &e.entries).collect::<Vec<_>>()
                );
            };
            for (lba, e) in &entries {
                if let Some(spare) = e.spare {
                    let at = t.spare_byte(spare) as usize;
                    assert!(
                        image[at..at + BS as usize] == want.data[lba][..],
                        "crash point {point} seed {seed}: block {lba}: spare block {spare} does not hold its data"
                    );
                }
            }
            states_checked += 1;
        }
    }
    println!("{states_checked} crash states checked over {history} history points");
    assert!(states_checked > 300);
}
