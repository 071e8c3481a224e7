//! A simulated life of a failing disk, on the clock seam: blocks go bad on a seeded random
//! schedule over simulated hours, the workload writes over them (each one is remapped), and a
//! steady stream of good reads runs beside. The health verdict must move healthy → degraded
//! → critical exactly when spare use crosses the configured thresholds, and a projection of
//! pool exhaustion made part-way must contain the true exhaustion time within its stated
//! uncertainty.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use remap_core::clock::{Clock, ManualClock};
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::testing::{FaultyBackend, MemStore};
use remap_core::{
    BlockSize, DeviceError, HealthState, HealthThresholds, MemBackend, RemapDevice, RemapTable,
    SpareAllocator, StatsSnapshot,
};
use remap_service::predict::project_exhaustion;

const BS: u64 = 4096;
const MAIN_BLOCKS: u64 = 4096;
const POOL: u64 = 200;
const HOUR_NS: u64 = 3_600_000_000_000;

fn life(seed: u64) {
    let thresholds = HealthThresholds {
        spare_used_degraded_pct: 25,
        spare_used_critical_pct: 75,
        // The error rate stays out of the way: this life is about spare use.
        error_rate_degraded_ppm: 200_000,
        error_rate_critical_ppm: 500_000,
        ..HealthThresholds::default()
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let (store, _handle) = MemStore::new();
    let dev = RemapDevice::new(
        FaultyBackend::new(MemBackend::new((MAIN_BLOCKS * BS) as usize), BS),
        MemBackend::new((POOL * BS) as usize),
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: POOL,
        },
        InitialState {
            table: RemapTable::new(1024),
            spares: SpareAllocator::new(POOL).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        clock.clone(),
        DeviceConfig {
            read_retries: 1,
            thresholds,
        },
    )
    .unwrap();
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    // About 0.6 new bad blocks an hour: 12 Bernoulli trials of p = 0.05.
    let mut bad = std::collections::BTreeSet::new();
    let mut transitions: Vec<(u64, HealthState, u64)> = vec![];
    let mut state = dev.health().state;
    let mut projection = None;
    let mut exhausted_at = None;
    let block = vec![0x5Au8; BS as usize];
    let mut good = vec![0u8; BS as usize];
    for hour in 1..10_000u64 {
        clock.advance_ns(HOUR_NS);
        let new = (0..12).filter(|_| rng.random_bool(0.05)).count();
        for _ in 0..new {
            let lba = loop {
                let l = rng.random_range(0..MAIN_BLOCKS);
                if bad.insert(l) {
                    break l;
                }
            };
            dev.main().fail_writes([lba]);
            match dev.write(lba * BS, &block) {
                Ok(()) => {}
                Err(DeviceError::SpareExhausted { .. }) => {
                    exhausted_at.get_or_insert(clock.now_ns());
                }
                Err(e) => panic!("hour {hour}: {e}"),
            }
        }
        // The good traffic of an hour.
        for i in 0..200 {
            let lba = (hour * 7 + i * 13) % MAIN_BLOCKS;
            if !bad.contains(&lba) {
                dev.read(lba * BS, &mut good).unwrap();
            }
        }
        let s = dev.stats();
        let now = dev.health().state;
        let expected = match s.spares_used * 100 / POOL {
            0..25 => HealthState::Healthy,
            25..75 => HealthState::Degraded,
            _ => HealthState::Critical,
        };
        assert_eq!(
            now, expected,
            "seed {seed} hour {hour}: {} of {POOL} spares used",
            s.spares_used
        );
        if now != state {
            transitions.push((hour, now, s.spares_used));
            state = now;
        }
        if projection.is_none() && s.spares_used * 100 >= POOL * 40 {
            let times: Vec<u64> = dev
                .entries(0, u64::MAX)
                .into_iter()
                .filter(|(_, e)| e.is_remapped())
                .map(|(_, e)| u64::from(e.time_s))
                .collect();
            let p = project_exhaustion(&times, s.spares_used, POOL).unwrap();
            projection = Some((clock.now_ns(), p));
        }
        if exhausted_at.is_some() {
            break;
        }
    }
    // Every hour the verdict matched spare use (asserted above); over the life it went
    // healthy -> degraded -> critical.
    assert_eq!(
        transitions.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![HealthState::Degraded, HealthState::Critical],
        "seed {seed}: {transitions:?}"
    );
    let (made_at, p) = projection.expect("projection made at 40 % use");
    let truth_s = (exhausted_at.expect("the pool ran out") - made_at) as f64 / 1e9;
    eprintln!(
        "seed {seed}: projected exhaustion in {:.0} h (interval {:.0} h .. {:.0} h), truth {:.0} h; {:.2} blocks/day from {} remaps",
        p.seconds_left / 3600.0,
        p.seconds_left_low / 3600.0,
        p.seconds_left_high / 3600.0,
        truth_s / 3600.0,
        p.blocks_per_day,
        p.samples
    );
    assert!(
        p.seconds_left_low <= truth_s && truth_s <= p.seconds_left_high,
        "seed {seed}: truth {truth_s} s outside [{}, {}]",
        p.seconds_left_low,
        p.seconds_left_high
    );
}

#[test]
fn health_follows_spare_use_and_the_projection_holds() {
    for seed in [1, 2, 3, 4, 5] {
        life(seed);
    }
}
