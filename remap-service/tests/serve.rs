//! `serve()` refuses what it cannot serve with a typed error naming the device, and writes
//! nothing when it refuses (SHA-256 of both files before and after); a served pair stops
//! cleanly from another thread through a `Stopper`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use remap_service::devices::PairError;
use remap_service::serve::MAX_FAULT_BLOCKS;
use remap_service::{Access, FaultPlan, Pair, ServeConfig, ServeError};
use sha2::{Digest, Sha256};

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).expect("read")).into()
}

fn refused(f: &Files, faults: FaultPlan, create_if_blank: bool) -> ServeError {
    let pair = f.pair();
    let config = ServeConfig {
        listen: vec![remap_service::ListenAddr::Unix(f.path("nbd.sock"))],
        faults,
        create_if_blank,
        ..ServeConfig::default()
    };
    match remap_service::serve(pair, config) {
        Ok(s) => panic!("served: {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn refusals_name_the_device_and_write_nothing() {
    let f = Files::new(4 << 20, 1 << 20);
    // Unformatted, and not asked to format: refused, nothing written.
    let (main, spare) = (sha256(&f.main), sha256(&f.spare));
    let e = refused(&f, FaultPlan::default(), false);
    assert!(
        matches!(e, ServeError::Pair(PairError::NotFormatted { .. })),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&f.spare.display().to_string()),
        "{e}"
    );
    assert_eq!((sha256(&f.main), sha256(&f.spare)), (main, spare));

    // Format it; then faults past the end and too many faults are refused before anything
    // is opened for I/O.
    Pair::open(&f.main, &f.spare, Access::ReadOnly, Access::ReadWrite)
        .and_then(|p| p.format_if_blank())
        .expect("format");
    let (main, spare) = (sha256(&f.main), sha256(&f.spare));
    let e = refused(
        &f,
        FaultPlan {
            fail_read: blocks(1024, 1024),
            ..FaultPlan::default()
        },
        false,
    );
    match &e {
        ServeError::FaultOutOfRange(o) => assert_eq!((o.lba, o.blocks), (1024, 1024)),
        other => panic!("expected a fault past the end, got {other}"),
    }
    assert!(
        e.to_string().starts_with(&f.main.display().to_string()),
        "{e}"
    );
    let e = refused(
        &f,
        FaultPlan {
            fail_write: blocks(0, MAX_FAULT_BLOCKS),
            ..FaultPlan::default()
        },
        false,
    );
    assert!(matches!(e, ServeError::TooManyFaultBlocks { .. }), "{e}");
    assert_eq!((sha256(&f.main), sha256(&f.spare)), (main, spare));

    // The same file as main and spare.
    let e = Pair::open(&f.main, &f.main, Access::ReadWrite, Access::ReadWrite).unwrap_err();
    assert!(matches!(e, PairError::SameDevice { .. }), "{e}");
}

#[test]
fn a_stopper_from_another_thread_ends_the_serving_cleanly() {
    let f = Files::new(4 << 20, 1 << 20);
    let serving = f.serve(FaultPlan::default(), ServeConfig::default());
    assert!(serving.formatted(), "a blank spare was formatted first");
    let stopper = serving.stopper();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stopper.stop();
    });
    let summary = serving.wait().expect("a clean end");
    t.join().expect("stopper thread");
    assert_eq!(summary.nbd.connections, 0);
    assert!(summary.remapped.is_empty() && summary.pending.is_empty());
    assert!(!f.path("nbd.sock").exists(), "the NBD socket is removed");
    // The pair is free again and opens cleanly.
    let rec = f.pair().inspect().expect("inspect");
    assert_eq!(rec.table.len(), 0);
}
