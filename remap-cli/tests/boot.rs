//! Boot-time pieces through the binary: `remap systemd-generator` run into a temporary
//! directory from a remaptab with good and bad lines (units and links for the good lines,
//! each bad line named with its number, exit 1), `systemd-analyze verify` on what it wrote
//! and on `dist/systemd/remap-serve@.service`; `remap serve` telling systemd it is ready
//! and stopping over `$NOTIFY_SOCKET`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Files, remap, require, s, text};

fn verify(units: &[PathBuf]) {
    require("systemd-analyze", "systemd");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()
        .expect("systemd-analyze runs");
    let err = String::from_utf8_lossy(&o.stderr);
    // Only the units under test: the host's own units may have findings of their own.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| {
            units
                .iter()
                .any(|u| l.contains(&*u.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn the_generator_writes_a_unit_per_good_line() {
    let dir = tempfile::tempdir().unwrap();
    let tab = dir.path().join("remaptab");
    std::fs::write(
        &tab,
        "# test\nsalvage /dev/sdb /dev/sdc1 pending-critical=10\nbad/name /dev/sdb /dev/sdc\nlazy /dev/disk/by-id/ata-X-1 /dev/sdd nofail\n",
    )
    .unwrap();
    let out = dir.path().join("normal");
    std::fs::create_dir(&out).unwrap();
    let bin = env!("CARGO_BIN_EXE_remap");
    let o = remap(&[
        "systemd-generator",
        s(&out),
        "/tmp/early-unused",
        "/tmp/late-unused",
        "--remaptab",
        s(&tab),
        "--remap-binary",
        bin,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:3: device name 'bad/name' holds '/'", s(&tab))),
        "{}",
        text(&o)
    );
    assert!(err.contains("1 bad line(s) skipped"), "{}", text(&o));

    let unit = out.join("remap-activate@salvage.service");
    let body = std::fs::read_to_string(&unit).expect("unit written");
    assert!(
        body.contains(&format!(
            "\nExecStart={bin} activate salvage /dev/sdb /dev/sdc1 --pending-critical=10\n"
        )),
        "{body}"
    );
    assert!(
        body.contains("\nBindsTo=dev-sdb.device dev-sdc1.device\n"),
        "{body}"
    );
    let link = |p: &str| std::fs::read_link(out.join(p)).ok();
    assert_eq!(
        link("dev-mapper-salvage.device.requires/remap-activate@salvage.service"),
        Some(Path::new("..").join("remap-activate@salvage.service"))
    );
    assert!(link("local-fs-pre.target.requires/remap-activate@salvage.service").is_some());
    assert!(link("local-fs-pre.target.wants/remap-activate@lazy.service").is_some());
    assert!(link("local-fs-pre.target.requires/remap-activate@lazy.service").is_none());
    let units: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    assert_eq!(units.len(), 2, "{units:?}");
    verify(&units);
}

#[test]
fn no_remaptab_means_no_units() {
    let dir = tempfile::tempdir().unwrap();
    let o = remap(&[
        "systemd-generator",
        s(dir.path()),
        "--remaptab",
        s(&dir.path().join("missing")),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_serve_template_verifies() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/remap-serve@.service");
    let body = std::fs::read_to_string(&dist).expect("dist/systemd/remap-serve@.service");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("remap-serve@test.service");
    // The installed path of the binary is not there on a build machine: verify against
    // the one just built.
    std::fs::write(
        &unit,
        body.replace("/usr/bin/remap", env!("CARGO_BIN_EXE_remap")),
    )
    .unwrap();
    verify(&[unit]);
}

#[test]
fn serve_tells_systemd_it_is_ready_and_stopping() {
    let f = Files::new(4 << 20, 4 << 20);
    f.create(&[]);
    let sock_path = f.path("notify");
    let rx = UnixDatagram::bind(&sock_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let nbd = f.path("nbd.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(["serve", s(&f.main), s(&f.spare), "--socket", s(&nbd)])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(nbd.exists(), "ready before listening");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let n = rx.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    // The orderly stop on SIGTERM exits 143 (issue 11); the unit counts it a success
    // (SuccessExitStatus).
    assert_eq!(status.code(), Some(143), "{status}");
}

#[test]
fn the_attach_template_verifies() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/remap-attach@.service");
    let body = std::fs::read_to_string(&dist).expect("dist/systemd/remap-attach@.service");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("remap-attach@test.service");
    std::fs::write(
        &unit,
        body.replace("/usr/bin/remap", env!("CARGO_BIN_EXE_remap")),
    )
    .unwrap();
    verify(&[unit]);
}
