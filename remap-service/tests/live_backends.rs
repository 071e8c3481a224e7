//! The running service is generic over the device's backends: a device over a memory main
//! device behind a fault injector and a memory spare (no files at all) gets the same control
//! socket, map, scrub and health as a served pair of files.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::wait_for;
use remap_core::backend::FaultyBackend;
use remap_core::clock::ManualClock;
use remap_core::{HealthState, MemBackend};
use remap_meta::{CreateOptions, DeviceIdentity};
use remap_service::Live;
use remap_service::blocks::BlockRange;
use remap_service::control::{self, ControlServer, Request};
use remap_service::health::HealthView;
use remap_service::live::MapReply;
use remap_service::scrub::{ScrubState, ScrubStatus};

const BS: u64 = 4096;
const MAIN: u64 = 4 << 20;
const SPARE: usize = 2 << 20;

#[test]
fn a_memory_device_gets_the_same_operator_side() {
    let spare = Arc::new(MemBackend::new(SPARE));
    remap_meta::create(
        &*spare,
        MAIN,
        DeviceIdentity::NONE,
        &CreateOptions::default(),
    )
    .expect("format");
    let main = Arc::new(FaultyBackend::new(MemBackend::new(MAIN as usize), BS));
    main.fail_reads([77]);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let opened =
        remap_meta::open(main.clone(), spare.clone(), &DeviceIdentity::NONE, clock).expect("open");
    let live = Live::new(
        Arc::new(opened.device),
        PathBuf::from("mem:main"),
        PathBuf::from("mem:spare"),
        SPARE as u64,
        opened.superblock,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl");
    let server = ControlServer::bind(&ctl).expect("bind");
    let thread = server.spawn(live.clone()).expect("spawn");

    let reply: MapReply = control::call_as(
        &ctl,
        &Request::Map {
            blocks: vec![BlockRange { first: 5, last: 6 }],
            zero_unreadable: false,
            partial: false,
        },
    )
    .expect("map");
    assert_eq!(reply.moved, 2);
    control::call_as::<ScrubStatus>(
        &ctl,
        &Request::ScrubStart {
            rate_bytes_per_s: None,
        },
    )
    .expect("scrub");
    let done = wait_for(Duration::from_secs(60), "the scrub", || {
        let s: ScrubStatus = control::call_as(&ctl, &Request::ScrubStatus {}).expect("status");
        (s.state == ScrubState::Finished).then_some(s)
    });
    assert_eq!(done.unreadable, vec![77]);
    let health: HealthView = control::call_as(&ctl, &Request::Health {}).expect("health");
    assert_eq!(health.state, HealthState::Degraded, "block 77 is pending");
    let status = live.status();
    assert_eq!((status.blocks.remapped, status.blocks.pending), (2, 1));

    live.stop();
    thread.join().expect("the control thread ends");
    assert!(!ctl.exists());
    // What the service did is on the memory spare: a fresh open sees it.
    live.device.shutdown().expect("shutdown");
    let rec = remap_meta::inspect(&*spare).expect("inspect");
    assert_eq!(rec.table.remapped_count(), 2);
    assert_eq!(rec.table.pending_count(), 1);
    assert_eq!(rec.superblock.scrub_passes, 1);
}
