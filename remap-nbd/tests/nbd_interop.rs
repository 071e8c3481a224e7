//! Real NBD clients (libnbd's nbdinfo, nbdcopy and nbdsh, qemu-img, qemu-io, fio's nbd
//! engine) against the server under test ([`common::server_command`]) exporting a remapping
//! device over a simulated failing disk.
//!
//! A missing tool fails the test with the Debian package to install; nothing is skipped.

mod common;

use std::time::Duration;

use common::*;

fn qemu_io(uri: &str, commands: &[&str]) -> std::process::Command {
    require("qemu-io", "qemu-utils");
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]).arg(uri);
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    c
}

fn nbdsh(script: &str) -> String {
    require("nbdsh", "python3-libnbd");
    must(tool("nbdsh").arg("-c").arg(script))
}

/// fio, run in the test's directory (fio leaves verify state files in its working
/// directory) and told not to keep verify state at all.
fn fio(s: &Served) -> std::process::Command {
    require("fio", "fio");
    let mut c = tool("fio");
    c.current_dir(s.dir.path()).arg("--verify_state_save=0");
    c
}

fn write_file(path: &std::path::Path, data: &[u8]) {
    std::fs::write(path, data).expect("write file");
}

#[test]
fn nbdinfo_reports_size_exports_contexts_and_maps() {
    require("nbdinfo", "libnbd-bin");
    let s = Served::start(Serve::default());
    for uri in [s.uri(), s.tcp_uri()] {
        let size = must(tool("nbdinfo").arg("--size").arg(&uri));
        assert_eq!(size.trim(), DEV_SIZE.to_string());
    }
    let info = must(tool("nbdinfo").arg(s.uri()));
    for line in [
        "export=\"disk\"",
        "base:allocation",
        "remap:state",
        "block_size_minimum: 4096",
        "block_size_maximum: 33554432",
        "can_multi_conn: true",
        "can_flush: true",
        "can_fua: true",
        "can_zero: true",
        "is_read_only: false",
    ] {
        assert!(info.contains(line), "nbdinfo lacks {line:?}:\n{info}");
    }
    let list = must(tool("nbdinfo").arg("--list").arg(s.tcp_uri()));
    assert!(list.contains("export=\"disk\""), "{list}");
    assert_eq!(map(&s.uri(), None), vec![(0, DEV_SIZE, 0)]);
    assert_eq!(
        map(&s.tcp_uri(), Some("remap:state")),
        vec![(0, DEV_SIZE, 0)]
    );
    // An export that does not exist is refused with a message, not a hang-up.
    let bad = format!("nbd+unix:///nope?socket={}", s.socket.display());
    let out = must_fail(tool("nbdinfo").arg(bad));
    // NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT.
    assert!(out.contains("No such file or directory"), "{out}");
}

#[test]
fn qemu_img_info_convert_and_compare() {
    require("qemu-img", "qemu-utils");
    let s = Served::start(Serve::default());
    let info = must(
        tool("qemu-img")
            .args(["info", "--output=json", "-f", "raw"])
            .arg(s.uri()),
    );
    assert!(
        info.contains(&format!("\"virtual-size\": {DEV_SIZE}")),
        "{info}"
    );

    let src = s.dir.path().join("src.img");
    write_file(&src, &random_bytes(1, DEV_SIZE as usize));
    must(
        tool("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(s.tcp_uri()),
    );
    must(
        tool("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(s.uri()),
    );
    // compare can fail: change one sector behind its back.
    must(&mut qemu_io(&s.uri(), &["write -P 0x5a 1048576 512"]));
    let o = run(tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(s.uri()));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (_, _, s) = s.stop();
    let main = std::fs::read(&s.main).expect("read main");
    let mut expected = random_bytes(1, DEV_SIZE as usize);
    expected[1 << 20..(1 << 20) + 512].fill(0x5a);
    assert!(
        main == expected,
        "the main file does not hold what was written"
    );
}

#[test]
fn qemu_io_write_read_flush_fua_zero_discard_unaligned_and_last_block() {
    let s = Served::start(Serve::default());
    let last = DEV_SIZE - BLOCK;
    let unaligned = 5 * 1024 * 1024 + 513;
    let commands = [
        "write -P 0xab 0 1M".to_string(),
        "read -P 0xab 0 1M".to_string(),
        "flush".to_string(),
        "write -f -P 0xcd 1M 64k".to_string(),
        "read -P 0xcd 1M 64k".to_string(),
        "write -z 2M 256k".to_string(),
        "read -P 0 2M 256k".to_string(),
        "write -P 0x11 3M 64k".to_string(),
        "discard 3M 64k".to_string(),
        "read 3M 64k".to_string(),
        format!("write -P 0x77 {unaligned} 1000"),
        format!("read -P 0x77 {unaligned} 1000"),
        format!("write -P 0x22 {last} 4096"),
        format!("read -P 0x22 {last} 4096"),
        format!("write -P 0x23 {} 1", DEV_SIZE - 1),
        format!("read -P 0x23 {} 1", DEV_SIZE - 1),
        "flush".to_string(),
    ];
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = must(&mut qemu_io(&s.uri(), &refs));
    assert!(!out.contains("failed"), "{out}");
    // A pattern check that must fail, to show the checks above mean something.
    let o = run(&mut qemu_io(&s.uri(), &["read -P 0xac 0 4096"]));
    assert!(!o.status.success(), "{}", text(&o));
    // Reading or writing past the end is refused.
    let o = run(&mut qemu_io(
        &s.tcp_uri(),
        &[&format!("read {DEV_SIZE} 4096")],
    ));
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("error"),
        "{}",
        text(&o)
    );

    // The main device holds exactly that, and nothing else changed.
    let (_, _, s) = s.stop();
    let main = std::fs::read(&s.main).expect("read main");
    let mut expected = pattern(0, DEV_SIZE as usize);
    expected[..1 << 20].fill(0xab);
    expected[1 << 20..(1 << 20) + (64 << 10)].fill(0xcd);
    expected[2 << 20..(2 << 20) + (256 << 10)].fill(0);
    let u = unaligned as usize;
    expected[u..u + 1000].fill(0x77);
    expected[last as usize..].fill(0x22);
    expected[DEV_SIZE as usize - 1] = 0x23;
    // The discarded range may read as anything; take it from the file.
    let d = 3 << 20;
    expected[d..d + (64 << 10)].copy_from_slice(&main[d..d + (64 << 10)]);
    let first_diff = main.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "main differs from what was written");
}

#[test]
fn nbdcopy_both_ways_over_unix_and_multi_conn_tcp() {
    require("nbdcopy", "libnbd-bin");
    require("cmp", "diffutils");
    let s = Served::start(Serve::default());
    let src = s.dir.path().join("src.img");
    let out = s.dir.path().join("out.img");
    write_file(&src, &random_bytes(2, DEV_SIZE as usize));
    must(tool("nbdcopy").arg(&src).arg(s.uri()));
    std::fs::File::create(&out)
        .expect("create")
        .set_len(DEV_SIZE)
        .expect("size");
    // TCP with four connections (the server offers multi-conn).
    must(
        tool("nbdcopy")
            .args(["--connections=4", "--requests=16"])
            .arg(s.tcp_uri())
            .arg(&out),
    );
    must(tool("cmp").arg(&src).arg(&out));
    let (_, _, s) = s.stop();
    must(tool("cmp").arg(&src).arg(&s.main));
}

#[test]
fn nbdsh_option_mode_simple_replies_errors_and_pipelining() {
    let s = Served::start(Serve::default());
    let script = format!(
        r#"
import nbd
uri = "{uri}"
SIZE = {size}

def pattern(off, n):
    out = bytearray(n)
    for i in range(n):
        o = off + i
        blk = o // 512
        out[i] = (((blk * 0x9E3779B97F4A7C15) % (1 << 64)) >> 56) ^ (o & 0xff)
    return bytes(out)

def err(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return None

# Option mode: list, list contexts, info on a bad name, info, go.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
names = []
h.opt_list(lambda n, d: names.append(n))
assert names == ["disk"], names
ctx = []
h.opt_list_meta_context(lambda c: ctx.append(c))
assert sorted(ctx) == ["base:allocation", "remap:state"], ctx
h.set_export_name("nope")
assert err(lambda: h.opt_info()) is not None
h.set_export_name("disk")
h.opt_info()
assert h.get_size() == SIZE
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096
h.add_meta_context("remap:state")
h.opt_go()
assert h.can_meta_context("remap:state")
seen = []
h.block_status(SIZE, 0, lambda c, off, ents, e: seen.append((c, list(ents))))
assert seen == [("remap:state", [SIZE, 0])], seen
h.shutdown()

# Simple and structured replies: errors for bad requests, and the connection lives.
for structured in (False, True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    assert h.get_structured_replies_negotiated() == structured
    h.set_strict_mode(0)
    assert err(lambda: h.pread(512, SIZE)) == "EINVAL"
    assert err(lambda: h.pread(1024, SIZE - 512)) == "EINVAL"
    assert err(lambda: h.pread(512, 2**63)) == "EINVAL"
    assert err(lambda: h.pwrite(b"x" * 512, SIZE)) == "ENOSPC"
    assert err(lambda: h.pread(40 << 20, 0)) == "EOVERFLOW"
    assert err(lambda: h.trim(4096, SIZE)) == "EINVAL"
    assert err(lambda: h.zero(4096, SIZE)) == "ENOSPC"
    assert h.pread(8192, 65536) == pattern(65536, 8192)
    h.pwrite(b"\x5a" * 4096, 8192, nbd.CMD_FLAG_FUA)
    assert h.pread(4096, 8192) == b"\x5a" * 4096
    h.flush()
    # Many requests in flight; every reply finds its request.
    bufs = []
    for i in range(64):
        b = nbd.Buffer(4096)
        bufs.append((h.aio_pread(b, (100 + i) * 4096), b, (100 + i) * 4096))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for (c, b, off) in bufs:
        assert h.aio_command_completed(c)
        assert bytes(b.to_bytearray()) == pattern(off, 4096), off
    h.shutdown()
print("nbdsh: all checks passed")
"#,
        uri = s.uri(),
        size = DEV_SIZE
    );
    let out = nbdsh(&script);
    assert!(out.contains("nbdsh: all checks passed"), "{out}");
}

#[test]
fn fio_four_jobs_depth_sixteen_verify() {
    require("fio", "fio");
    let s = Served::start(Serve::default());
    let out = must(
        fio(&s)
            .args([
                "--name=verify",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--size=8m",
                "--offset_increment=8m",
                "--numjobs=4",
                "--iodepth=16",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--group_reporting",
            ])
            .arg(format!("--uri={}", s.tcp_uri())),
    );
    assert!(out.contains("verify"), "{out}");
    assert!(!out.contains("verify: bad"), "{out}");
}

/// Blocks 5, 100-103 and 2050 fail every write on the main disk.
const FAIL_WRITE: &str = "5,100-103,2050";
const FAIL_WRITE_BLOCKS: [u64; 6] = [5, 100, 101, 102, 103, 2050];

#[test]
fn failing_writes_are_remapped_every_write_succeeds_and_reads_verify() {
    let s = Served::start(Serve {
        fail_write: Some(FAIL_WRITE.into()),
        ..Serve::default()
    });
    must(&mut qemu_io(
        &s.uri(),
        &[
            "write -P 0x61 0 1M",
            "read -P 0x61 0 1M",
            "write -f -P 0x62 8M 64k",
            "read -P 0x62 8M 64k",
        ],
    ));
    let src = s.dir.path().join("src.img");
    let out = s.dir.path().join("out.img");
    write_file(&src, &random_bytes(3, DEV_SIZE as usize));
    must(tool("nbdcopy").arg(&src).arg(s.tcp_uri()));
    std::fs::File::create(&out)
        .expect("create")
        .set_len(DEV_SIZE)
        .expect("size");
    must(tool("nbdcopy").arg(s.uri()).arg(&out));
    must(tool("cmp").arg(&src).arg(&out));
    require("fio", "fio");
    must(
        fio(&s)
            .args([
                "--name=remapped",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--offset=0",
                "--size=4m",
                "--offset_increment=4m",
                "--numjobs=4",
                "--iodepth=16",
                "--verify=crc32c",
                "--verify_fatal=1",
            ])
            .arg(format!("--uri={}", s.uri())),
    );
    let state = map(&s.uri(), Some("remap:state"));
    for b in FAIL_WRITE_BLOCKS {
        assert!(
            state.iter().any(|&(off, len, flags)| flags == 1
                && off <= b * BLOCK
                && b * BLOCK + BLOCK <= off + len),
            "block {b} is not shown remapped: {state:?}"
        );
    }
    let remapped_bytes: u64 = state.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
    assert_eq!(
        remapped_bytes,
        FAIL_WRITE_BLOCKS.len() as u64 * BLOCK,
        "{state:?}"
    );
    let (out, _, _) = s.stop();
    assert_eq!(
        listed_blocks(&out, "remapped:"),
        FAIL_WRITE_BLOCKS.to_vec(),
        "{out}"
    );
}

#[test]
fn fio_verifies_on_a_flaky_disk() {
    require("fio", "fio");
    let s = Served::start(Serve {
        flaky: Some((0.002, 7)),
        ..Serve::default()
    });
    must(
        fio(&s)
            .args([
                "--name=flaky",
                "--ioengine=nbd",
                "--rw=randrw",
                "--bs=4k",
                "--size=4m",
                "--offset_increment=4m",
                "--numjobs=4",
                "--iodepth=16",
                "--verify=crc32c",
                "--verify_fatal=1",
            ])
            .arg(format!("--uri={}", s.uri())),
    );
    let (out, _, _) = s.stop();
    // Faults were injected (about 0.2 % of some 16,000 operations), and still every block verified.
    let injected: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("injected_transient="))
        .and_then(|n| n.parse().ok())
        .expect("device summary");
    assert!(injected >= 5, "only {injected} faults injected:\n{out}");
}

#[test]
fn failing_reads_give_eio_never_data_show_pending_and_heal_on_rewrite() {
    let s = Served::start(Serve {
        fail_read: Some("10,11".into()),
        ..Serve::default()
    });
    // qemu-io: the read fails with EIO.
    let out = must_fail(&mut qemu_io(&s.uri(), &["read 40960 4096"]));
    assert!(out.contains("Input/output error"), "{out}");
    let script = format!(
        r#"
import nbd
uri = "{uri}"
def pattern(off, n):
    out = bytearray(n)
    for i in range(n):
        o = off + i
        out[i] = ((((o // 512) * 0x9E3779B97F4A7C15) % (1 << 64)) >> 56) ^ (o & 0xff)
    return bytes(out)
for structured in (False, True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    for (off, n) in [(40960, 4096), (45056, 4096), (36864, 8192), (0, 1 << 20)]:
        try:
            data = h.pread(n, off)
            raise AssertionError("read at %d returned data" % off)
        except nbd.Error as e:
            assert e.errno == "EIO", e.errno
    # The neighbours read fine, on the same connection.
    assert h.pread(4096, 36864) == pattern(36864, 4096)
    assert h.pread(4096, 49152) == pattern(49152, 4096)
    h.shutdown()
# A write over part of a pending block cannot complete the block: it fails, nothing changes.
h = nbd.NBD()
h.connect_uri(uri)
h.set_strict_mode(0)
try:
    h.pwrite(b"p" * 512, 45056)
    raise AssertionError("partial write over a pending block succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
h.shutdown()
print("nbdsh: reads failed as they must")
"#,
        uri = s.uri()
    );
    let out = nbdsh(&script);
    assert!(out.contains("reads failed as they must"), "{out}");
    // Both blocks are pending now.
    let state = map(&s.uri(), Some("remap:state"));
    assert!(state.contains(&(40960, 8192, 2)), "{state:?}");
    // nbdcopy cannot copy the disk: never zeroes or stale data for a bad block.
    let out_img = s.dir.path().join("out.img");
    std::fs::File::create(&out_img)
        .expect("create")
        .set_len(DEV_SIZE)
        .expect("size");
    must_fail(tool("nbdcopy").arg(s.uri()).arg(&out_img));
    // Rewriting block 10 moves it; it reads back. Block 11 stays pending.
    must(&mut qemu_io(
        &s.tcp_uri(),
        &["write -P 0x6b 40960 4096", "read -P 0x6b 40960 4096"],
    ));
    let state = map(&s.uri(), Some("remap:state"));
    assert!(state.contains(&(40960, 4096, 1)), "{state:?}");
    assert!(state.contains(&(45056, 4096, 2)), "{state:?}");
    must_fail(&mut qemu_io(&s.uri(), &["read 45056 4096"]));
    must(&mut qemu_io(
        &s.uri(),
        &[
            "write -P 0x6c 45056 4096",
            "read -P 0x6c 45056 4096",
            "read -P 0x6b 40960 4096",
        ],
    ));
    let (out, _, _) = s.stop();
    assert_eq!(listed_blocks(&out, "remapped:"), vec![10, 11], "{out}");
    assert!(listed_blocks(&out, "pending:").is_empty(), "{out}");
}

#[test]
fn read_only_export_serves_reads_and_refuses_writes() {
    let s = Served::start(Serve {
        read_only: true,
        ..Serve::default()
    });
    let info = must(tool("nbdinfo").arg(s.uri()));
    assert!(info.contains("is_read_only: true"), "{info}");
    let out = must_fail(&mut qemu_io(&s.uri(), &["write -P 1 0 4096"]));
    assert!(
        out.contains("ermission")
            || out.contains("not permitted")
            || out.contains("read-only")
            || out.contains("read only"),
        "{out}"
    );
    let script = format!(
        r#"
import nbd
h = nbd.NBD()
h.connect_uri("{uri}")
assert h.is_read_only()
h.set_strict_mode(0)
for f in (lambda: h.pwrite(b"x" * 4096, 0), lambda: h.zero(4096, 0), lambda: h.trim(4096, 0)):
    try:
        f()
        raise AssertionError("a write succeeded on a read-only export")
    except nbd.Error as e:
        assert e.errno == "EPERM", e.errno
h.flush()
assert len(h.pread(4096, 0)) == 4096
h.shutdown()
print("read-only ok")
"#,
        uri = s.uri()
    );
    assert!(nbdsh(&script).contains("read-only ok"));
    let (_, _, s) = s.stop();
    assert!(std::fs::read(&s.main).expect("read") == pattern(0, DEV_SIZE as usize));
}

#[test]
fn sigterm_finishes_and_exits_cleanly_with_clients_connected() {
    use common::raw::Raw;
    let s = Served::start(Serve::default());
    // One client idle in transmission, one idle in negotiation.
    let (mut idle, _, _) = Raw::unix(&s.socket).negotiate("disk", true, &[]);
    assert_eq!(idle.read(1, 0, 4096).expect("read"), pattern(0, 4096));
    let mut half = Raw::tcp(s.tcp);
    half.greeting();
    let (status, out, err, _s) = s.stop_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{status}\n{out}\n{err}");
    // The two clients, plus the harness's readiness probes; the summary is on stderr.
    let served: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("served: connections="))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("summary line");
    assert!(served >= 2, "{err}");
    assert!(err.contains("server stopped; export flushed"), "{err}");
    assert!(idle.closed_by_server());
    assert!(half.closed_by_server());
}
