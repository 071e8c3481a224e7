//! Issue 4's acceptance for `remap serve` with real NBD clients (qemu-io from qemu-utils,
//! nbdsh from python3-libnbd): with `--fail-write` blocks inside the written area every
//! write succeeds and reads verify, `remap status --control` shows the remaps live, and
//! after SIGTERM and a restart `remap dump` lists them and the data still verifies.

mod common;

use common::*;
use serde_json::Value;

const MAIN_SIZE: u64 = 64 << 20;
/// Failing writes: inside the 1 MiB at 0, inside the 64 KiB at 8 MiB, and block 3000
/// (written by nbdsh with FUA).
const FAIL_WRITE: &str = "5,100-103,2050,3000";
const FAIL_WRITE_BLOCKS: [u64; 7] = [5, 100, 101, 102, 103, 2050, 3000];

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    require("qemu-io", "qemu-utils");
    let mut c = tool("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    let out = must(&mut c);
    assert!(!out.contains("error") && !out.contains("failed"), "{out}");
    out
}

fn nbdsh(script: &str) -> String {
    require("nbdsh", "python3-libnbd");
    must(tool("nbdsh").arg("-c").arg(script))
}

/// The nbdsh part: a FUA write of blocks 2999-3001 (3000 fails on main), read back on the
/// same connection.
fn nbdsh_script(uri: &str) -> String {
    format!(
        r#"
import nbd
h = nbd.NBD()
h.connect_uri("{uri}")
data = bytes((i * 7 + 3) % 251 for i in range(3 * 4096))
h.pwrite(data, 2999 * 4096, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 2999 * 4096) == data
h.flush()
h.shutdown()
print("nbdsh ok")
"#
    )
}

fn nbdsh_verify_script(uri: &str) -> String {
    format!(
        r#"
import nbd
h = nbd.NBD()
h.connect_uri("{uri}")
data = bytes((i * 7 + 3) % 251 for i in range(3 * 4096))
assert h.pread(len(data), 2999 * 4096) == data
h.shutdown()
print("nbdsh verified")
"#
    )
}

#[test]
fn failing_writes_all_succeed_show_live_and_survive_a_restart() {
    let f = Files::new(MAIN_SIZE, 4 << 20);
    // Old contents on main, so a block read from the wrong place shows.
    std::fs::write(&f.main, vec![0xEEu8; MAIN_SIZE as usize]).expect("fill main");
    let ctl = f.path("ctl");
    let sock = f.path("nbd.sock");
    let served = Served::start(
        &f,
        &[
            "--create",
            "--socket",
            s(&sock),
            "--control",
            s(&ctl),
            "--fail-write",
            FAIL_WRITE,
        ],
    );
    assert!(
        served.lines.iter().any(|l| l.starts_with("formatted ")),
        "{:?}",
        served.lines
    );
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    qemu_io(
        &uri,
        &[
            "write -P 0x61 0 1M",
            "read -P 0x61 0 1M",
            "write -f -P 0x62 8M 64k",
            "read -P 0x62 8M 64k",
            "flush",
        ],
    );
    assert!(nbdsh(&nbdsh_script(&uri)).contains("nbdsh ok"));

    // Live: the remaps are there while the server runs, and no write failed.
    let st = remap_json(&["status", "--control", s(&ctl), "--json"]);
    assert_eq!(st["blocks"]["remapped"], FAIL_WRITE_BLOCKS.len());
    assert_eq!(st["stats"]["failed_ios"], 0, "every write succeeded");
    assert!(st["stats"]["main_write_errors"].as_u64() >= Some(FAIL_WRITE_BLOCKS.len() as u64));
    assert_eq!(st["stats"]["remaps"], FAIL_WRITE_BLOCKS.len());
    let human = remap(&["status", "--control", s(&ctl)]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("blocks    7 remapped, 0 pending"),
        "{}",
        text(&human)
    );

    let (_, err) = served.stop();
    assert!(
        err.contains("remapped: 5,100,101,102,103,2050,3000"),
        "{err}"
    );

    // After the restart (fresh processes): the table lists them, the metadata checks.
    let dump = remap_json(&["dump", "--json", s(&f.main), s(&f.spare)]);
    let listed: Vec<(u64, String)> = dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["block"].as_u64().expect("block"),
                e["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = FAIL_WRITE_BLOCKS
        .iter()
        .map(|&b| (b, "remapped".to_string()))
        .collect();
    assert_eq!(listed, want);
    let o = remap(&["check", s(&f.main), s(&f.spare)]);
    assert!(o.status.success(), "{}", text(&o));
    // The failing blocks were never written on main: their data lives on the spare only.
    let main = std::fs::read(&f.main).expect("read main");
    for b in FAIL_WRITE_BLOCKS {
        let at = (b * BS) as usize;
        assert!(
            main[at..at + BS as usize].iter().all(|&x| x == 0xEE),
            "block {b} on main"
        );
    }

    // Served again, without faults: every byte written reads back.
    let served = Served::start(&f, &["--socket", s(&sock)]);
    qemu_io(
        &uri,
        &[
            "read -P 0x61 0 1M",
            "read -P 0x62 8M 64k",
            "read -P 0xee 2M 1M",
        ],
    );
    assert!(nbdsh(&nbdsh_verify_script(&uri)).contains("nbdsh verified"));
    let (_, err) = served.stop();
    assert!(
        err.contains("remapped: 5,100,101,102,103,2050,3000"),
        "{err}"
    );
    let st: Value = remap_json(&["status", "--json", s(&f.main), s(&f.spare)]);
    assert_eq!(st["counters"]["failed_ios"], 0);
}
