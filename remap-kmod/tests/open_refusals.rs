//! A table load refuses a spare that is not formatted, formatted for another main device,
//! or that the kernel cannot serve, with a message that says why, and writes nothing.

mod common;

use std::sync::Arc;

use common::{BS, Setup, Sim, params, setup};
use remap_core::backend::crash::CrashBackend;
use remap_core::backend::faulty::FaultyBackend;
use remap_core::{BlockSize, MemBackend};
use remap_kmod::{OpenError, Options, open};
use remap_meta::CreateOptions;
use remap_meta::superblock::{DeviceIdentity, IdentityKind};

fn sim(spare_bytes: usize, main_blocks: u64) -> Sim {
    let crash = Arc::new(CrashBackend::new(spare_bytes));
    Sim {
        main: Arc::new(FaultyBackend::new(
            MemBackend::new((main_blocks * BS) as usize),
            BS,
        )),
        spare: Arc::new(FaultyBackend::new(crash.clone(), BS)),
        crash,
        log: Vec::new(),
        flaky_reads: Default::default(),
    }
}

fn format(s: &Sim, main_bytes: u64, identity: DeviceIdentity, block: u64) {
    let opts = CreateOptions {
        block_size: BlockSize::new(block).unwrap(),
        ..CreateOptions::default()
    };
    remap_meta::create(&*s.spare, main_bytes, identity, &opts).unwrap();
}

#[test]
fn an_unformatted_spare_is_refused_and_left_untouched() {
    let mut s = sim(1 << 20, 64);
    let e = open(&mut s, &params(64, 1 << 20), Options::default()).unwrap_err();
    assert!(matches!(e, OpenError::NotFormatted { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("remap create") && msg.contains("never formats"),
        "{msg}"
    );
    assert_eq!(s.crash.history_len(), 0, "not one byte written");
    assert!(
        s.log
            .iter()
            .all(|e| matches!(e, common::Event::Read { .. }))
    );
}

#[test]
fn a_spare_formatted_for_another_size_is_refused() {
    let mut s = sim(1 << 20, 64);
    format(&s, 128 * BS, DeviceIdentity::NONE, BS);
    let e = open(&mut s, &params(64, 1 << 20), Options::default()).unwrap_err();
    assert!(
        matches!(e, OpenError::SizeMismatch { formatted, mapped } if formatted == 128 * BS && mapped == 64 * BS),
        "{e}"
    );
}

#[test]
fn a_main_device_smaller_than_the_table_is_refused() {
    let mut s = sim(1 << 20, 64);
    format(&s, 64 * BS, DeviceIdentity::NONE, BS);
    let mut p = params(64, 1 << 20);
    p.main_dev_bytes = 63 * BS;
    assert!(matches!(
        open(&mut s, &p, Options::default()),
        Err(OpenError::MainTooSmall { .. })
    ));
}

#[test]
fn the_main_device_identity_is_checked() {
    // A device-mapper UUID the kernel reads itself.
    let mut s = sim(1 << 20, 64);
    format(
        &s,
        64 * BS,
        DeviceIdentity::new(IdentityKind::DmUuid, b"LVM-abc"),
        BS,
    );
    let mut p = params(64, 1 << 20);
    p.main_dm_uuid = Some(b"LVM-other");
    assert!(matches!(
        open(&mut s, &p, Options::default()),
        Err(OpenError::IdentityMismatch { .. })
    ));
    p.main_dm_uuid = Some(b"LVM-abc");
    open(&mut s, &p, Options::default()).expect("the right device opens");

    // A serial number it cannot read: the table line must confirm it.
    let mut s = sim(1 << 20, 64);
    format(
        &s,
        64 * BS,
        DeviceIdentity::new(IdentityKind::Serial, b"WD-123"),
        BS,
    );
    let e = open(&mut s, &params(64, 1 << 20), Options::default()).unwrap_err();
    assert!(e.to_string().contains("main_identity:WD-123"), "{e}");
    let args: Vec<&[u8]> = vec![b"1", b"main_identity:WD-999"];
    assert!(matches!(
        open(&mut s, &params(64, 1 << 20), Options::parse(&args).unwrap()),
        Err(OpenError::IdentityMismatch { .. })
    ));
    let args: Vec<&[u8]> = vec![b"1", b"main_identity:WD-123"];
    open(&mut s, &params(64, 1 << 20), Options::parse(&args).unwrap())
        .expect("confirmed identity opens");
}

#[test]
fn block_sizes_the_kernel_cannot_export_are_refused() {
    let mut s = sim(4 << 20, 64);
    format(&s, 64 * 8192, DeviceIdentity::NONE, 8192);
    let e = open(&mut s, &params(128, 4 << 20), Options::default()).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::BlockTooLarge {
                block: 8192,
                page: 4096
            }
        ),
        "{e}"
    );
}

#[test]
fn devices_with_larger_logical_blocks_than_the_remap_block_are_refused() {
    let mut s = sim(1 << 20, 64);
    format(&s, 64 * 512, DeviceIdentity::NONE, 512);
    let mut p = params(8, 1 << 20);
    p.spare_logical_block = 4096;
    let e = open(&mut s, &p, Options::default()).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::DeviceBlockTooLarge {
                dev: "spare",
                logical: 4096,
                block: 512
            }
        ),
        "{e}"
    );
    p.spare_logical_block = 512;
    p.main_logical_block = 4096;
    assert!(matches!(
        open(&mut s, &p, Options::default()),
        Err(OpenError::DeviceBlockTooLarge { dev: "main", .. })
    ));
    p.main_logical_block = 512;
    open(&mut s, &p, Options::default()).expect("512-byte devices serve 512-byte blocks");
}

#[test]
fn contradicting_thresholds_are_refused() {
    let t = setup(&Setup::default());
    let mut s = t.sim;
    let args: Vec<&[u8]> = vec![b"2", b"pending_degraded:10", b"pending_critical:5"];
    let e = open(
        &mut s,
        &params(1024, 4 << 20),
        Options::parse(&args).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, OpenError::Thresholds(_)), "{e}");
}
