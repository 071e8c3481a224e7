//! `remap table` / `activate` / `deactivate` on the host: the table line for a formatted
//! pair of files, its options, the refusals that need no kernel (bad names, a spare without
//! metadata or for another main, a locked spare), each leaving both files unchanged. The
//! kernel side (dmsetup, the module, busy devices) runs in the guest test
//! (`remap-kmod/scripts/guest/test.sh`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::Files;
use remap_meta::{DeviceIdentity, IdentityKind};
use remap_service::activation::{self, ActivationError};
use remap_service::devices::{Access, Pair, PairError};
use remap_service::dmsetup::{Dmsetup, Udev};
use remap_service::settings::SettingChanges;
use remap_service::table_line::{NameError, TableLine, TableLineError};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(fs::read(path).expect("read")).into()
}

fn formatted(main_size: u64) -> Files {
    let f = Files::new(main_size, 4 * MIB);
    assert!(f.pair().format_if_blank().expect("format"));
    f
}

/// A dmsetup that must never run: the refusals tested here come before it.
fn no_dmsetup() -> Dmsetup {
    Dmsetup {
        program: PathBuf::from("/nonexistent/dmsetup"),
        udev: Udev::Absent,
    }
}

#[test]
fn the_line_carries_the_size_in_sectors_and_the_paths() {
    let f = formatted(32 * MIB);
    let line = activation::table_line(&f.main, &f.spare, &SettingChanges::default()).unwrap();
    assert_eq!(
        line.text(),
        format!(
            "0 65536 dm-remap-v4 {} {}",
            f.main.display(),
            f.spare.display()
        )
    );
    assert_eq!(line.sectors, 65536);
    assert!(line.options.is_empty());
    assert!(line.dm_uuid().starts_with("REMAP-"));
    assert_eq!(line.dm_uuid().len(), "REMAP-".len() + 36);
}

#[test]
fn thresholds_are_options_only_when_asked() {
    let f = formatted(8 * MIB);
    let asked = SettingChanges {
        read_retries: Some(1),
        pending_critical: Some(10),
        ..SettingChanges::default()
    };
    let line = activation::table_line(&f.main, &f.spare, &asked).unwrap();
    assert_eq!(line.options, ["read_retries:1", "pending_critical:10"]);
    assert!(
        line.text()
            .ends_with(" 2 read_retries:1 pending_critical:10"),
        "{}",
        line.text()
    );
}

#[test]
fn a_recorded_serial_number_becomes_main_identity() {
    let f = formatted(8 * MIB);
    let pair = Pair::open(&f.main, &f.spare, Access::ReadOnly, Access::ReadOnly).unwrap();
    let mut sb = pair.inspect().unwrap().superblock;
    sb.identity = DeviceIdentity::new(IdentityKind::Serial, b"WD-WCC4N1234567");
    let line = TableLine::for_pair(&pair, &sb, &SettingChanges::default()).unwrap();
    assert!(
        line.text().ends_with(" 1 main_identity:WD-WCC4N1234567"),
        "{}",
        line.text()
    );
    // A device-mapper UUID the kernel reads itself: no option.
    sb.identity = DeviceIdentity::new(IdentityKind::DmUuid, b"LVM-abc");
    let line = TableLine::for_pair(&pair, &sb, &SettingChanges::default()).unwrap();
    assert!(line.options.is_empty());
    // A serial number with a blank cannot go on a table line: refused, not mangled.
    sb.identity = DeviceIdentity::new(IdentityKind::Serial, b"WD 123");
    let e = TableLine::for_pair(&pair, &sb, &SettingChanges::default()).unwrap_err();
    assert!(
        matches!(e, TableLineError::IdentityNotWritable { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("'WD 123'"), "{e}");
}

#[test]
fn refusals_name_the_device_and_change_nothing() {
    let f = formatted(8 * MIB);
    let other = Files::new(16 * MIB, 4 * MIB);
    let before = [&f.main, &f.spare, &other.main, &other.spare].map(|p| sha256(p));
    let none = SettingChanges::default();

    // Bad names, before any device is opened or any program run.
    for (name, want) in [
        ("", NameError::Empty),
        (
            "a/b",
            NameError::BadCharacter {
                name: "a/b".into(),
                found: '/',
            },
        ),
    ] {
        let e = activation::activate(&no_dmsetup(), name, &f.main, &f.spare, &none).unwrap_err();
        assert!(matches!(&e, ActivationError::Name(n) if *n == want), "{e}");
        assert!(e.is_usage());
        let e = activation::deactivate(&no_dmsetup(), name).unwrap_err();
        assert!(matches!(&e, ActivationError::Name(n) if *n == want), "{e}");
    }

    // A spare with no metadata.
    let e = activation::table_line(&other.main, &other.spare, &none).unwrap_err();
    assert!(
        matches!(e, ActivationError::Pair(PairError::NotFormatted { .. })),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&other.spare.display().to_string())
    );

    // A spare formatted for a main device of another size.
    let e = activation::table_line(&other.main, &f.spare, &none).unwrap_err();
    assert!(
        matches!(e, ActivationError::Pair(PairError::WrongMain { .. })),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&other.main.display().to_string()),
        "{e}"
    );

    // The same file twice is a usage error.
    let e = activation::table_line(&f.main, &f.main, &none).unwrap_err();
    assert!(e.is_usage(), "{e}");

    // A spare a writer holds (as `remap serve` does): in use, with the holder.
    {
        let _held = f.pair();
        let e = activation::table_line(&f.main, &f.spare, &none).unwrap_err();
        match &e {
            ActivationError::InUse { path, holders, .. } => {
                assert_eq!(path, &f.main);
                assert_eq!(holders, &[format!("locked by pid {}", std::process::id())]);
            }
            other => panic!("expected in use, got {other}"),
        }
    }

    let after = [&f.main, &f.spare, &other.main, &other.spare].map(|p| sha256(p));
    assert_eq!(before, after, "a refusal changed a device");
}

#[test]
fn a_missing_dmsetup_is_reported_as_such() {
    let f = formatted(8 * MIB);
    let e = activation::activate(
        &no_dmsetup(),
        "salvage",
        &f.main,
        &f.spare,
        &SettingChanges::default(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("salvage: cannot run /nonexistent/dmsetup"),
        "{text}"
    );
}
