//! The exhaustion projection is fitted on the remaps that failures forced: blocks moved by
//! hand consume spares (counted) but do not set the rate (issue: 400 hand-made moves once
//! projected exhaustion "in about 2.5 minutes").

use std::sync::Arc;

use remap_core::MemBackend;
use remap_core::backend::FaultyBackend;
use remap_core::clock::ManualClock;
use remap_meta::{CreateOptions, DeviceIdentity};
use remap_service::health;
use remap_service::predict::NoProjection;

const BS: u64 = 4096;
const MAIN: u64 = 4 << 20;
const SPARE: u64 = 4 << 20;
const START_NS: u64 = 1_700_000_000_000_000_000;
const HOUR_NS: u64 = 3_600_000_000_000;

#[test]
fn manual_moves_consume_spares_but_do_not_set_the_rate() {
    let spare = Arc::new(MemBackend::new(SPARE as usize));
    let opts = CreateOptions {
        journal_blocks: Some(8),
        pool_blocks: Some(600),
        ..CreateOptions::default()
    };
    remap_meta::create(&*spare, MAIN, DeviceIdentity::NONE, &opts).unwrap();
    let main = Arc::new(FaultyBackend::new(MemBackend::new(MAIN as usize), BS));
    let clock = Arc::new(ManualClock::new(START_NS));
    let device = remap_meta::open(
        main.clone(),
        spare.clone(),
        &DeviceIdentity::NONE,
        clock.clone(),
    )
    .unwrap()
    .device;

    // 400 blocks moved by hand within a few minutes: a fast "rate" if they counted.
    for lba in 0..400 {
        device.map_block(lba, false).unwrap();
        if lba % 100 == 99 {
            clock.advance_ns(60_000_000_000);
        }
    }
    device.checkpoint().unwrap();
    let rec = remap_meta::inspect(&*spare).unwrap();
    let now_s = (START_NS + HOUR_NS) / 1_000_000_000;
    let view = health::at_rest(&rec, now_s);
    assert_eq!(view.spares.used, 400, "the hand-made moves use spares");
    assert!(
        view.projection.is_none(),
        "no rate from hand-made moves: {view:?}"
    );
    assert_eq!(
        view.no_projection.as_deref(),
        Some(NoProjection::TooFewRemaps.to_string().as_str())
    );

    // Then the disk fails: four write failures, one a day.
    for (day, lba) in [1000u64, 1001, 1002, 1003].into_iter().enumerate() {
        clock.set_ns(START_NS + (day as u64 + 1) * 24 * HOUR_NS);
        main.fail_writes([lba]);
        device.write(lba * BS, &[0xA5; BS as usize]).unwrap();
    }
    device.checkpoint().unwrap();
    let rec = remap_meta::inspect(&*spare).unwrap();
    let now_s = (START_NS + 5 * 24 * HOUR_NS) / 1_000_000_000;
    let view = health::at_rest(&rec, now_s);
    assert_eq!(view.spares.used, 404);
    let p = view
        .projection
        .expect("four failures a day apart give a rate");
    assert_eq!(p.samples, 4, "fitted over the failures only");
    assert!(
        (p.blocks_per_day - 1.0).abs() < 0.01,
        "one failure a day, not hundreds: {}",
        p.blocks_per_day
    );
    // The pool left is counted whole: 196 free spares at one a day.
    let days_left = p.seconds_left / 86_400.0;
    assert!((190.0..200.0).contains(&days_left), "{days_left} days");
}
