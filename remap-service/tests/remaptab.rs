//! `/etc/remaptab`: good lines become entries; every kind of bad line is reported with its
//! number and skipped while the good lines around it still count; the generator's units for
//! the entries (names escaped as systemd does, checked against `systemd-escape` itself).

use std::path::{Path, PathBuf};
use std::process::Command;

use remap_service::boot_units::{activation_unit, device_unit, escape, escape_path, unit_text};
use remap_service::remaptab::{DeviceSpec, LineError, parse};
use remap_service::settings::SettingChanges;
use remap_service::table_line::NameError;

const TAB: &str = "\
# name  main  spare  options
salvage   /dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567  UUID=6F1C1F3E-8d1b-4c52-9a7e-0c3b5d2e4a11  pending-critical=10,read-retries=2

   scratch\t/dev/sdb /dev/sdc1
lazy /dev/sdd /dev/sde nofail
plain /dev/sdf /dev/sdg -
";

#[test]
fn good_lines_become_entries() {
    let tab = parse(Path::new("/etc/remaptab"), TAB);
    assert_eq!(tab.errors, []);
    let names: Vec<&str> = tab.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["salvage", "scratch", "lazy", "plain"]);
    let lines: Vec<usize> = tab.entries.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 4, 5, 6]);
    let s = &tab.entries[0];
    assert_eq!(
        s.main,
        PathBuf::from("/dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567")
    );
    assert_eq!(
        s.spare.argument(),
        "UUID=6f1c1f3e-8d1b-4c52-9a7e-0c3b5d2e4a11"
    );
    assert_eq!(
        s.overrides,
        SettingChanges {
            pending_critical: Some(10),
            read_retries: Some(2),
            ..SettingChanges::default()
        }
    );
    assert!(!s.nofail);
    assert_eq!(tab.entries[1].spare, DeviceSpec::Path("/dev/sdc1".into()));
    assert_eq!(tab.entries[1].overrides, SettingChanges::default());
    assert!(tab.entries[2].nofail);
    assert!(!tab.entries[3].nofail);
}

#[test]
fn every_bad_line_is_reported_with_its_number() {
    let text = "\
good /dev/sda /dev/sdb
onlytwo /dev/sda
a b c d e
bad/name /dev/sda /dev/sdb
rel sda /dev/sdb
rel2 /dev/sda sdb
byuuid UUID=6f1c1f3e-8d1b-4c52-9a7e-0c3b5d2e4a11 /dev/sdb
baduuid /dev/sda UUID=6f1c1f3e-8d1b
same /dev/sda /dev/sda
unknown /dev/sda /dev/sdb frobnicate=1
range /dev/sda /dev/sdb spare-used-critical=101
notnum /dev/sda /dev/sdb read-retries=two
novalue /dev/sda /dev/sdb pending-critical
nofailvalue /dev/sda /dev/sdb nofail=yes
twice /dev/sda /dev/sdb nofail,nofail
good /dev/sdc /dev/sdd
last /dev/sde /dev/sdf
";
    let tab = parse(Path::new("/etc/remaptab"), text);
    let got: Vec<(usize, LineError)> = tab
        .errors
        .iter()
        .map(|e| (e.line, e.error.clone()))
        .collect();
    let want = vec![
        (2, LineError::FieldCount { found: 2 }),
        (3, LineError::FieldCount { found: 5 }),
        (
            4,
            LineError::Name(NameError::BadCharacter {
                name: "bad/name".into(),
                found: '/',
            }),
        ),
        (
            5,
            LineError::NotAbsolute {
                role: "main",
                value: "sda".into(),
            },
        ),
        (
            6,
            LineError::NotAbsolute {
                role: "spare",
                value: "sdb".into(),
            },
        ),
        (
            7,
            LineError::MainByUuid {
                value: "UUID=6f1c1f3e-8d1b-4c52-9a7e-0c3b5d2e4a11".into(),
            },
        ),
        (
            8,
            LineError::BadUuid {
                value: "6f1c1f3e-8d1b".into(),
            },
        ),
        (
            9,
            LineError::SameDevice {
                value: "/dev/sda".into(),
            },
        ),
        (
            10,
            LineError::UnknownOption {
                option: "frobnicate".into(),
            },
        ),
        (
            11,
            LineError::BadValue {
                option: "spare-used-critical".into(),
                value: "101".into(),
                max: 100,
            },
        ),
        (
            12,
            LineError::BadValue {
                option: "read-retries".into(),
                value: "two".into(),
                max: 16,
            },
        ),
        (
            13,
            LineError::MissingValue {
                option: "pending-critical".into(),
            },
        ),
        (
            14,
            LineError::UnexpectedValue {
                option: "nofail".into(),
            },
        ),
        (
            15,
            LineError::DuplicateOption {
                option: "nofail".into(),
            },
        ),
        (
            16,
            LineError::DuplicateName {
                name: "good".into(),
                first: 1,
            },
        ),
    ];
    assert_eq!(got, want);
    let names: Vec<&str> = tab.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["good", "last"], "the good lines still count");
    assert_eq!(
        tab.errors[0].to_string(),
        "/etc/remaptab:2: expected NAME MAIN SPARE [OPTIONS], found 2 field(s)"
    );
}

#[test]
fn unit_names_are_escaped_as_systemd_escape_does() {
    for path in [
        "/dev/sdb",
        "/dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567-part1",
        "/dev/mapper/sdb+remap.1",
        "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
    ] {
        let out = Command::new("systemd-escape")
            .args(["--path", "--suffix=device", path])
            .output()
            .expect("systemd-escape runs (Debian package systemd; scripts/install-deps.sh)");
        assert!(out.status.success());
        assert_eq!(
            device_unit(Path::new(path)),
            String::from_utf8_lossy(&out.stdout).trim(),
            "{path}"
        );
        assert_eq!(
            escape_path(Path::new(path)) + ".device",
            device_unit(Path::new(path))
        );
    }
    for name in ["salvage", "sdb-remap+1", "a.b_c"] {
        let out = Command::new("systemd-escape")
            .args(["--template=remap-activate@.service", name])
            .output()
            .expect("systemd-escape runs");
        assert_eq!(
            activation_unit(name),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        assert!(activation_unit(name).contains(&escape(name)));
    }
}

#[test]
fn a_unit_runs_activate_after_both_devices() {
    let tab = parse(Path::new("/etc/remaptab"), TAB);
    let text = unit_text(
        &tab.entries[0],
        Path::new("/etc/remaptab"),
        Path::new("/usr/bin/remap"),
    );
    assert!(text.contains("\nExecStart=/usr/bin/remap activate salvage /dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567 UUID=6f1c1f3e-8d1b-4c52-9a7e-0c3b5d2e4a11 --read-retries=2 --pending-critical=10\n"), "{text}");
    assert!(
        text.contains("\nExecStop=/usr/bin/remap deactivate salvage\n"),
        "{text}"
    );
    assert!(text.contains("\nBindsTo=dev-disk-by\\x2did-ata\\x2dWDC_WD10EZEX\\x2d00BN5A0_WD\\x2dWCC3F1234567.device\n"), "{text}");
    assert!(text.contains("\nBefore=local-fs-pre.target\n"), "{text}");
    assert!(
        text.contains("\nAfter=systemd-udev-settle.service\n"),
        "{text}"
    );
    let text = unit_text(
        &tab.entries[2],
        Path::new("/etc/remaptab"),
        Path::new("/usr/bin/remap"),
    );
    assert!(
        text.contains("\nBindsTo=dev-sdd.device dev-sde.device\n"),
        "{text}"
    );
    assert!(
        !text.contains("local-fs-pre"),
        "nofail: boot does not wait: {text}"
    );
    assert!(!text.contains("udev-settle"), "{text}");
}
