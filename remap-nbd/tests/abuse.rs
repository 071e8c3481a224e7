//! Abuse over raw sockets: bad magic, unknown options and commands, huge lengths,
//! out-of-range offsets, disconnects in the middle of a request, floods of connections.
//!
//! Every test runs against the server under test ([`common::server_command`]) while a
//! well-behaved client reads and verifies data on its own connection the whole time. At the
//! end the server must still be running, the good client must have seen no error, the
//! server must stop cleanly, and the device must hold exactly what it held before (no abusive
//! request wrote anything).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::raw::*;
use common::*;

/// A server plus a well-behaved client verifying reads until told to stop.
struct Abused {
    served: Served,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    good: Option<JoinHandle<Result<(), String>>>,
}

impl Abused {
    fn start() -> Abused {
        let served = Served::start(Serve::default());
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (mut client, size, _) = Raw::unix(&served.socket).negotiate("disk", true, &[]);
        assert_eq!(size, DEV_SIZE);
        let (s, r) = (stop.clone(), reads.clone());
        let good = std::thread::spawn(move || {
            let mut x = 0x1234_5678_u64;
            let mut cookie = 0u64;
            while !s.load(Ordering::SeqCst) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len: u32 = if x.is_multiple_of(8) { 256 << 10 } else { 4096 };
                let offset = (x >> 20) % (DEV_SIZE - u64::from(len)) / 512 * 512;
                cookie += 1;
                match client.read(cookie, offset, len) {
                    Ok(data) if data == pattern(offset, len as usize) => {}
                    Ok(_) => return Err(format!("wrong data at offset {offset}")),
                    Err(e) => return Err(format!("error {e} reading at offset {offset}")),
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
            client.disconnect();
            Ok(())
        });
        Abused {
            served,
            stop,
            reads,
            good: Some(good),
        }
    }

    /// A fresh, negotiated connection.
    fn client(&self, structured: bool) -> Raw {
        Raw::unix(&self.served.socket)
            .negotiate("disk", structured, &[])
            .0
    }

    /// End the test: the server is alive, serves a new client, the good client saw no error,
    /// the server stops cleanly, and the device is unchanged. Returns the server's log.
    fn finish(mut self) -> String {
        self.served.assert_alive();
        let mut late = self.client(true);
        assert_eq!(late.read(1, 4096, 4096), Ok(pattern(4096, 4096)));
        late.disconnect();
        let before = self.reads.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::SeqCst);
        let good = self
            .good
            .take()
            .expect("good client")
            .join()
            .expect("good client thread");
        assert_eq!(good, Ok(()), "the well-behaved client failed");
        assert!(
            self.reads.load(Ordering::SeqCst) > before,
            "the good client made no progress"
        );
        let (out, err, served) = self.served.stop();
        assert!(out.contains("served:"), "{out}\n{err}");
        let main = std::fs::read(&served.main).expect("read main");
        let first_diff = main
            .iter()
            .zip(pattern(0, DEV_SIZE as usize))
            .position(|(a, b)| *a != b);
        assert_eq!(first_diff, None, "the device changed");
        err
    }
}

#[test]
fn bad_magic_closes_only_that_connection() {
    let a = Abused::start();
    // A bad option magic during negotiation.
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(1);
    c.send(b"IHAVEOPXsomejunk").expect("send");
    assert!(c.closed_by_server());
    // Unknown client flags.
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(0x8000_0001);
    assert!(c.closed_by_server());
    // Garbage at once.
    let mut c = Raw::tcp(a.served.tcp);
    c.send(&random_bytes(9, 4096)).expect("send");
    assert!(c.closed_by_server());
    // A bad request magic in transmission, after a good request.
    let mut c = a.client(false);
    assert_eq!(c.read(1, 0, 512), Ok(pattern(0, 512)));
    c.send(&[0xde, 0xad, 0xbe, 0xef]).expect("send");
    c.send(&[0u8; 24]).expect("send");
    assert!(c.closed_by_server());
    a.finish();
}

#[test]
fn unknown_options_and_commands_get_errors_and_the_connection_goes_on() {
    let a = Abused::start();
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(1);
    for (option, data, expected) in [
        (0xdead_u32, b"whatever".to_vec(), REP_ERR_UNSUP),
        (OPT_STARTTLS, Vec::new(), REP_ERR_POLICY),
        (OPT_LIST, b"x".to_vec(), REP_ERR_INVALID),
        (OPT_GO, vec![0, 0, 0, 9, 1], REP_ERR_INVALID),
        (
            OPT_SET_META_CONTEXT,
            Raw::meta_data("", &["base:allocation"]),
            REP_ERR_INVALID,
        ),
    ] {
        c.option(option, &data).expect("send option");
        let (o, kind, _) = c.option_reply().expect("reply");
        assert_eq!((o, kind), (option, expected), "option {option}");
    }
    assert_eq!(c.go("nope"), Err(REP_ERR_UNKNOWN));
    let (_, flags) = c.go("disk").expect("GO after refusals");
    assert_eq!(flags & 1, 1);

    // Unknown commands and flags, simple replies.
    assert_eq!(c.simple_command(0, 0x99, 7, 0, 0), EINVAL);
    assert_eq!(c.simple_command(0, 0xffff, 8, 0, 4096), EINVAL);
    c.request(0x8000, CMD_READ, 9, 0, 512).expect("send");
    assert_eq!(
        c.reply().expect("reply"),
        Reply::Simple {
            error: EINVAL,
            cookie: 9
        }
    );
    // DF without structured replies is not a valid flag.
    c.request(4, CMD_READ, 10, 0, 512).expect("send");
    assert_eq!(c.reply().expect("reply").error(), EINVAL);
    // Block status without structured replies and contexts.
    assert_eq!(c.simple_command(0, CMD_BLOCK_STATUS, 11, 0, 4096), EINVAL);
    assert_eq!(c.read(12, 8192, 4096), Ok(pattern(8192, 4096)));

    // Structured replies: errors come as error chunks with a message.
    let mut s = a.client(true);
    s.request(0, 0x42, 20, 0, 0).expect("send");
    match s.reply().expect("reply") {
        Reply::Chunk {
            flags,
            kind,
            cookie,
            payload,
        } => {
            assert_eq!((flags & 1, kind, cookie), (1, CHUNK_ERROR, 20));
            assert_eq!(
                u32::from_be_bytes(payload[..4].try_into().expect("4")),
                EINVAL
            );
            let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
            assert!(String::from_utf8_lossy(&payload[6..6 + msg_len]).contains("unknown command"));
        }
        other => panic!("expected an error chunk, got {other:?}"),
    }
    assert_eq!(s.simple_command(0, CMD_BLOCK_STATUS, 21, 0, 4096), EINVAL);
    assert_eq!(s.read(22, 12288, 4096), Ok(pattern(12288, 4096)));
    s.disconnect();
    c.disconnect();
    a.finish();
}

#[test]
fn huge_lengths_are_refused_without_allocating() {
    let a = Abused::start();
    let pid = a.served.pid();
    let rss_before = rss_bytes(pid);

    // An option longer than the server reads (64 KiB): refused and the connection closed,
    // without the server reading (or waiting for) its data.
    for (option, len) in [(0xbeef_u32, 1u32 << 20), (OPT_GO, 70_000)] {
        let mut c = Raw::unix(&a.served.socket);
        c.greeting();
        c.client_flags(1);
        let mut header = b"IHAVEOPT".to_vec();
        header.extend_from_slice(&option.to_be_bytes());
        header.extend_from_slice(&len.to_be_bytes());
        c.send(&header).expect("send");
        assert_eq!(c.option_reply().expect("reply").1, REP_ERR_TOO_BIG);
        assert!(c.closed_by_server(), "option {option:#x} of {len} bytes");
    }
    let mut c = a.client(false);

    // Reads and writes above the maximum request size.
    assert_eq!(c.simple_command(0, CMD_READ, 1, 0, u32::MAX), EOVERFLOW);
    assert_eq!(
        c.simple_command(0, CMD_READ, 2, 0, (32 << 20) + 1),
        EOVERFLOW
    );
    // A 40 MiB write: the payload is read and dropped, the stream stays in step.
    assert_eq!(c.write(0, 3, 0, &vec![0xee; 40 << 20]), EOVERFLOW);
    assert_eq!(c.read(4, 0, 4096), Ok(pattern(0, 4096)));
    // Commands without payload may be long, but not past the end.
    assert_eq!(
        c.simple_command(0, CMD_WRITE_ZEROES, 5, 0, u32::MAX),
        ENOSPC
    );
    assert_eq!(c.simple_command(0, CMD_TRIM, 6, 0, u32::MAX), EINVAL);
    assert_eq!(c.simple_command(0, CMD_CACHE, 7, 0, u32::MAX), EINVAL);
    // A cache of the whole device is fine (it only reads).
    assert_eq!(c.simple_command(0, CMD_CACHE, 8, 0, DEV_SIZE as u32), 0);
    c.disconnect();

    // Claimed lengths that never arrive: the server does not allocate for them (an option
    // is closed at once, a write waits for its bytes).
    let mut o = Raw::unix(&a.served.socket);
    o.greeting();
    o.client_flags(1);
    o.send(b"IHAVEOPT\0\0\0\x07\xff\xff\xff\xff").expect("send");
    let _ = o.send(&[0u8; 1000]);
    let mut w = a.client(false);
    w.request(0, CMD_WRITE, 1, 0, u32::MAX).expect("send");
    w.send(&[0u8; 1000]).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_bytes(pid);
    assert!(
        rss_after < rss_before + (48 << 20),
        "resident memory grew from {rss_before} to {rss_after} bytes"
    );
    drop(o);
    drop(w);
    a.finish();
}

#[test]
fn out_of_range_requests_get_errors_and_the_connection_lives() {
    let a = Abused::start();
    for structured in [false, true] {
        let mut c = a.client(structured);
        assert_eq!(c.read(1, DEV_SIZE, 512), Err(EINVAL));
        assert_eq!(c.read(2, DEV_SIZE - 512, 1024), Err(EINVAL));
        assert_eq!(c.read(3, u64::MAX - 100, 4096), Err(EINVAL));
        assert_eq!(c.write(0, 4, DEV_SIZE - 100, &[1u8; 4096]), ENOSPC);
        assert_eq!(c.write(FLAG_FUA, 5, u64::MAX, &[1u8; 512]), ENOSPC);
        assert_eq!(
            c.simple_command(0, CMD_WRITE_ZEROES, 6, DEV_SIZE, 512),
            ENOSPC
        );
        assert_eq!(
            c.simple_command(0, CMD_TRIM, 7, DEV_SIZE - 512, 1024),
            EINVAL
        );
        assert_eq!(c.simple_command(0, CMD_CACHE, 8, DEV_SIZE, 1), EINVAL);
        assert_eq!(c.simple_command(0, CMD_FLUSH, 9, 5, 5), EINVAL);
        assert_eq!(
            c.read(10, DEV_SIZE - 4096, 4096),
            Ok(pattern(DEV_SIZE - 4096, 4096))
        );
        assert_eq!(c.simple_command(0, CMD_FLUSH, 11, 0, 0), 0);
        c.disconnect();
    }
    // Block status beyond the end, with a context selected.
    let (mut c, _, _) = Raw::unix(&a.served.socket).negotiate("disk", true, &["remap:state"]);
    assert_eq!(
        c.simple_command(0, CMD_BLOCK_STATUS, 1, DEV_SIZE, 4096),
        EINVAL
    );
    assert_eq!(c.simple_command(0, CMD_BLOCK_STATUS, 2, 0, 0), EINVAL);
    c.request(0, CMD_BLOCK_STATUS, 3, DEV_SIZE - 4096, u32::MAX)
        .expect("send");
    match c.reply().expect("reply") {
        Reply::Chunk { kind, payload, .. } => {
            assert_eq!(kind, CHUNK_ERROR, "past the end even if it starts inside");
            assert_eq!(
                u32::from_be_bytes(payload[..4].try_into().expect("4")),
                EINVAL
            );
        }
        other => panic!("{other:?}"),
    }
    c.request(0, CMD_BLOCK_STATUS, 4, 4096, 8192).expect("send");
    match c.reply().expect("reply") {
        Reply::Chunk {
            flags,
            kind,
            payload,
            ..
        } => {
            assert_eq!((flags & 1, kind), (1, CHUNK_BLOCK_STATUS));
            assert_eq!(payload.len(), 12);
            assert_eq!(
                u32::from_be_bytes(payload[4..8].try_into().expect("4")),
                8192
            );
            assert_eq!(u32::from_be_bytes(payload[8..12].try_into().expect("4")), 0);
        }
        other => panic!("{other:?}"),
    }
    c.disconnect();
    a.finish();
}

#[test]
fn disconnects_in_the_middle_of_requests_change_nothing() {
    let a = Abused::start();
    // Half a write payload, then gone: the write never happens.
    let mut c = a.client(false);
    c.request(0, CMD_WRITE, 1, 0, 1 << 20).expect("send");
    c.send(&vec![0xaa; 512 << 10]).expect("send");
    drop(c);
    // Half a request header.
    let mut c = a.client(true);
    c.send(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0])
        .expect("send");
    drop(c);
    // Half an option.
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(1);
    c.send(b"IHAVEOPT\0\0\0\x07\0\0\0\x64").expect("send");
    c.send(&[0u8; 50]).expect("send");
    drop(c);
    // Many large reads in flight, then gone without reading a reply.
    let mut c = a.client(true);
    for i in 0..32 {
        c.request(0, CMD_READ, i, i * (1 << 20), 1 << 20)
            .expect("send");
    }
    drop(c);
    // Writes in flight with their replies unread, then gone. They may or may not land, so
    // they carry the data already there: the device must read the same either way.
    let mut c = a.client(false);
    for i in 0..16u64 {
        let offset = (i + 100) * 65536;
        c.request(0, CMD_WRITE, i, offset, 65536).expect("send");
        c.send(&pattern(offset, 65536)).expect("send");
    }
    drop(c);
    // Abort during negotiation, without waiting for the reply.
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(1);
    c.option(OPT_ABORT, &[]).expect("send");
    drop(c);
    a.finish();
}

#[test]
fn a_flood_of_connections_does_not_starve_a_connected_client() {
    let a = Abused::start();
    let socket = a.served.socket.clone();
    let tcp = a.served.tcp;
    let mut floods = Vec::new();
    for t in 0..4u64 {
        let socket = socket.clone();
        floods.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            for i in 0..60u64 {
                let kind = (t * 60 + i) % 4;
                let mut c = if kind % 2 == 0 {
                    Raw::unix(&socket)
                } else {
                    Raw::tcp(tcp)
                };
                match kind {
                    // Connect and say nothing (holds a slot until the handshake timeout).
                    0 => {}
                    // Garbage.
                    1 => {
                        let _ = c.send(&random_bytes(t * 1000 + i, 64));
                    }
                    // A full session: negotiate, read, leave. It may be refused when the
                    // server is full, which shows as a closed connection.
                    2 => {
                        let mut g = [0u8; 18];
                        if c.recv(18).map(|v| g.copy_from_slice(&v)).is_ok() {
                            c.client_flags(1);
                            let _ = c.option(OPT_ABORT, &[]);
                        }
                    }
                    // Half a handshake.
                    _ => c.client_flags(1),
                }
                held.push(c);
            }
            std::thread::sleep(Duration::from_millis(500));
            held.len()
        }));
    }
    for f in floods {
        assert_eq!(f.join().expect("flood thread"), 60);
    }
    // All flood connections are closed now; the server frees their slots and serves anew.
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..8 {
        let mut c = a.client(i % 2 == 0);
        assert_eq!(c.read(1, 65536, 4096), Ok(pattern(65536, 4096)));
        c.disconnect();
    }
    a.finish();
}

/// Connections held open during a flood: (idle: connect and say nothing, stalled: send the
/// client flags and stop, oversize: announce 2 GiB of option data).
const FLOOD_IDLE: usize = 300;
const FLOOD_STALLED: usize = 24;
const FLOOD_OVERSIZE: usize = 40;

/// Real clients (nbdsh over the Unix socket and over TCP) connect, negotiate and read
/// correct data; fails the test otherwise.
fn real_client_reads(a: &Abused) {
    require("nbdsh", "python3-libnbd");
    for uri in [a.served.uri(), a.served.tcp_uri()] {
        let script = format!(
            r#"
import nbd
def pattern(off, n):
    out = bytearray(n)
    for i in range(n):
        o = off + i
        blk = o // 512
        out[i] = (((blk * 0x9E3779B97F4A7C15) % (1 << 64)) >> 56) ^ (o & 0xff)
    return bytes(out)
h = nbd.NBD()
h.connect_uri("{uri}")
assert h.get_size() == {size}
for off in (0, 4096 * 1000, {size} - 65536):
    assert h.pread(65536, off) == pattern(off, 65536), off
h.shutdown()
print("read ok")
"#,
            size = DEV_SIZE
        );
        let out = must(tool("nbdsh").arg("-c").arg(&script));
        assert!(out.contains("read ok"), "{out}");
    }
}

/// The sum of `field=N` over the server's log lines.
fn logged_count(log: &str, field: &str) -> u64 {
    let key = format!("{field}=");
    log.lines()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix(&key))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// A held flood of connections that never negotiate does not deny service: while hundreds
/// of idle connections (more than every connection limit), connections stalled after their
/// flags, and connections announcing 2 GiB of option data are all held open, new real
/// clients negotiate and read correct data, the established client keeps reading, the
/// oversize ones are closed at once, the server's threads and memory stay bounded, and its
/// log holds a few summary lines instead of one per connection.
#[test]
fn a_held_flood_of_idle_and_oversize_negotiations_starves_no_one() {
    let a = Abused::start();
    let pid = a.served.pid();
    std::thread::sleep(Duration::from_millis(300));
    let (threads_before, rss_before) = (threads(pid), rss_bytes(pid));

    let connect = |i: usize| {
        if i.is_multiple_of(2) {
            Raw::unix(&a.served.socket)
        } else {
            Raw::tcp(a.served.tcp)
        }
    };
    let mut held = Vec::new();
    for i in 0..FLOOD_IDLE {
        held.push(connect(i));
    }
    for i in 0..FLOOD_STALLED {
        let mut c = connect(i);
        // Today's server may close at once; the flood goes on regardless.
        if c.recv(18).is_ok() {
            let _ = c.send(&1u32.to_be_bytes());
        }
        held.push(c);
    }
    let mut oversize = Vec::new();
    for i in 0..FLOOD_OVERSIZE {
        let mut c = connect(i);
        if c.recv(18).is_ok() {
            let _ = c.send(&1u32.to_be_bytes());
            let _ = c.send(b"IHAVEOPT\0\0\0\x07\x80\0\0\0");
            let _ = c.send(&[0u8; 1000]);
        }
        oversize.push(c);
    }

    // New clients are served while the flood is held.
    real_client_reads(&a);
    let mut raw = a.client(true);
    assert_eq!(raw.read(1, 8192, 4096), Ok(pattern(8192, 4096)));

    // The server closed every oversize connection without waiting for its data (well before
    // the 10 s negotiation deadline).
    for c in &mut oversize {
        c.set_read_timeout(Duration::from_secs(5));
        assert!(c.closed_by_server(), "an oversize option was not closed");
    }

    // Bounded while the flood is held: no thread per idle connection (at most one per
    // negotiating slot, plus a few for the client still connected), little memory.
    let (threads_during, rss_during) = (threads(pid), rss_bytes(pid));
    eprintln!(
        "flood of {} connections held: threads {threads_before} -> {threads_during}, \
         VmRSS {} -> {} KiB",
        FLOOD_IDLE + FLOOD_STALLED + FLOOD_OVERSIZE,
        rss_before >> 10,
        rss_during >> 10
    );
    let max_negotiating = remap_nbd::ServerConfig::default().max_negotiating as u64;
    assert!(
        threads_during <= threads_before + max_negotiating + 4,
        "threads grew from {threads_before} to {threads_during} under the flood"
    );
    assert!(
        rss_during <= rss_before + (32 << 20),
        "resident memory grew from {rss_before} to {rss_during} bytes under the flood"
    );
    raw.disconnect();
    drop(held);
    drop(oversize);

    let log = a.finish();
    for line in log.lines().filter(|l| l.contains("before negotiating")) {
        eprintln!("{line}");
    }
    // One summary line per interval (and one at the end), not a line per connection.
    let lines = log.lines().count();
    assert!(
        lines < 60,
        "{lines} log lines for a flood of {} connections:\n{log}",
        FLOOD_IDLE + FLOOD_STALLED + FLOOD_OVERSIZE
    );
    assert_eq!(
        logged_count(&log, "option_too_long"),
        FLOOD_OVERSIZE as u64,
        "every oversize option is counted in the summary:\n{log}"
    );
}

/// A client that trickles its negotiation (a byte now and then, never finishing) is closed
/// at the negotiation deadline (10 s by default), counted in the summary, and the server
/// serves others meanwhile.
#[test]
fn a_negotiation_that_never_finishes_is_closed_at_the_deadline() {
    let a = Abused::start();
    let mut c = Raw::unix(&a.served.socket);
    c.greeting();
    c.client_flags(1);
    c.set_read_timeout(Duration::from_millis(500));
    let header = b"IHAVEOPT\0\0\0\x07\0\0\0\x10";
    let started = std::time::Instant::now();
    let mut sent = 0;
    let closed = loop {
        // One byte every half second: each read finishes, the whole never does.
        if c.send(&header[sent % header.len()..][..1]).is_err() {
            break true;
        }
        sent += 1;
        match c.recv(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trickling negotiation was not closed"
        );
    };
    assert!(closed);
    real_client_reads(&a);
    let log = a.finish();
    assert!(
        logged_count(&log, "timed_out") >= 1,
        "the deadline is counted in the summary:\n{log}"
    );
}
