//! The library API as the CLI uses it: configuration, bound addresses, graceful shutdown,
//! connection limits, requests served concurrently and answered out of order, and the
//! `remap:state` context over a real remapping device.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::raw::*;
use common::{must, require, tool};
use remap_core::device::Layout;
use remap_core::testing::{FaultyBackend, ManualClock, MemStore, device_from_mem_store};
use remap_core::{BlockBackend, BlockSize, DeviceConfig, IoError, MemBackend};
use remap_nbd::{ListenAddr, ServeSummary, Server, ServerConfig, ServerError, ShutdownHandle};

/// A memory disk that counts flushes.
#[derive(Debug)]
struct CountingDisk {
    inner: FaultyBackend<MemBackend>,
    flushes: AtomicU64,
}

impl BlockBackend for CountingDisk {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
}

fn counting_disk(size: usize) -> Arc<CountingDisk> {
    Arc::new(CountingDisk {
        inner: FaultyBackend::new(MemBackend::new(size), 512),
        flushes: AtomicU64::new(0),
    })
}

fn local() -> Vec<ListenAddr> {
    vec![ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))]
}

fn tcp_of(server: &Server) -> SocketAddr {
    server
        .local_addrs()
        .iter()
        .find_map(|a| match a {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        })
        .expect("a TCP address")
}

fn spawn(
    server: Server,
) -> (
    ShutdownHandle,
    std::thread::JoinHandle<Result<ServeSummary, ServerError>>,
) {
    let stop = server.shutdown_handle();
    (stop, std::thread::spawn(move || server.run()))
}

#[test]
fn port_zero_unix_socket_name_and_description() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let mut listen = local();
    listen.push(ListenAddr::Unix(sock.clone()));
    let server = Server::new(
        Arc::new(MemBackend::new(8 << 20)),
        None,
        ServerConfig {
            listen,
            name: "lib".into(),
            description: "library test disk".into(),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    assert_ne!(tcp.port(), 0);
    assert_eq!(
        server.local_addrs()[1].to_string(),
        format!("nbd+unix:///?socket={}", sock.display())
    );
    let (stop, running) = spawn(server);
    let list = must(tool("nbdinfo").arg("--list").arg(format!("nbd://{tcp}")));
    assert!(
        list.contains("export=\"lib\"") && list.contains("description: library test disk"),
        "{list}"
    );
    let info = must(tool("nbdinfo").arg(format!("nbd+unix:///lib?socket={}", sock.display())));
    assert!(
        info.contains("export-size: 8388608") && info.contains("block_size_minimum: 512"),
        "{info}"
    );
    assert!(
        !info.contains("remap:state"),
        "a plain disk offers base:allocation only:\n{info}"
    );
    stop.shutdown();
    stop.shutdown();
    let summary = running.join().expect("thread").expect("run");
    assert!(summary.connections >= 2, "{summary:?}");
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[test]
fn shutdown_answers_requests_in_flight_then_flushes() {
    let disk = counting_disk(4 << 20);
    disk.inner.set_latency(Duration::from_millis(300));
    let server = Server::new(
        disk.clone(),
        None,
        ServerConfig {
            listen: local(),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut c, _, _) = Raw::tcp(tcp).negotiate("", false, &[]);
    c.request(0, CMD_WRITE, 77, 4096, 4096).expect("send");
    c.send(&[0x42; 4096]).expect("send");
    // Let the server read the request, then stop it while the write is under way.
    std::thread::sleep(Duration::from_millis(100));
    stop.shutdown();
    assert_eq!(
        c.reply().expect("the reply still comes"),
        Reply::Simple {
            error: 0,
            cookie: 77
        }
    );
    assert!(c.closed_by_server(), "then the connection is closed");
    let summary = running.join().expect("thread").expect("run");
    assert_eq!(summary.requests, 1);
    assert_eq!(summary.bytes_written, 4096);
    assert!(
        disk.flushes.load(Ordering::SeqCst) >= 1,
        "the export is flushed on the way out"
    );
    let mut b = vec![0u8; 4096];
    disk.read_at(4096, &mut b).expect("read");
    assert_eq!(b, vec![0x42; 4096]);
}

#[test]
fn flush_and_fua_reach_the_backend_before_the_reply() {
    let disk = counting_disk(1 << 20);
    let server = Server::new(
        disk.clone(),
        None,
        ServerConfig {
            listen: local(),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut c, _, _) = Raw::tcp(tcp).negotiate("", true, &[]);
    assert_eq!(c.simple_command(0, CMD_FLUSH, 1, 0, 0), 0);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    // CountingDisk has no native FUA: the default write_at_fua writes, then flushes.
    assert_eq!(c.write(FLAG_FUA, 2, 0, &[1; 512]), 0);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);
    assert_eq!(c.write(0, 3, 0, &[1; 512]), 0);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);
    c.disconnect();
    stop.shutdown();
    running.join().expect("thread").expect("run");
}

#[test]
fn connections_above_the_limit_are_closed_at_once() {
    let server = Server::new(
        Arc::new(MemBackend::new(1 << 20)),
        None,
        ServerConfig {
            listen: local(),
            max_connections: 2,
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut a, _, _) = Raw::tcp(tcp).negotiate("", false, &[]);
    let (b, _, _) = Raw::tcp(tcp).negotiate("", false, &[]);
    let mut third = Raw::tcp(tcp);
    assert!(
        third.closed_by_server(),
        "no greeting for the third connection"
    );
    assert_eq!(a.read(1, 0, 512), Ok(vec![0; 512]));
    b.disconnect();
    // The slot frees as soon as the server sees the disconnect.
    let mut fourth = None;
    for _ in 0..100 {
        let mut c = Raw::tcp(tcp);
        let mut probe = [0u8; 18];
        match c.recv(18) {
            Ok(g) => {
                probe.copy_from_slice(&g);
                fourth = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(fourth.is_some(), "a slot freed after a client left");
    drop(fourth);
    a.disconnect();
    stop.shutdown();
    let summary = running.join().expect("thread").expect("run");
    assert!(summary.refused >= 1, "{summary:?}");
}

#[test]
fn negotiation_has_a_deadline_even_for_a_client_that_trickles_bytes() {
    let server = Server::new(
        Arc::new(MemBackend::new(1 << 20)),
        None,
        ServerConfig {
            listen: local(),
            handshake_timeout: Duration::from_millis(600),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let start = std::time::Instant::now();
    let mut c = Raw::tcp(tcp);
    c.greeting();
    c.client_flags(1);
    // One byte every 100 ms for 4 s: no single read waits long, the whole is too slow. The
    // server must cut the client off while it is still sending (a per-read timeout would not).
    let mut option = b"IHAVEOPT\0\0\0\x07\0\0\0\x40".to_vec();
    option.extend_from_slice(&[0u8; 24]);
    let mut cut_at = None;
    for b in &option {
        if c.send(&[*b]).is_err() {
            cut_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut_at = cut_at.expect("the trickling client was never cut off");
    assert!(
        cut_at < Duration::from_millis(2500),
        "cut off only after {cut_at:?}"
    );
    // A client that negotiates normally is not affected, and keeps its connection after
    // the deadline has passed.
    let (mut ok, _, _) = Raw::tcp(tcp).negotiate("", false, &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(ok.read(1, 0, 512), Ok(vec![0; 512]));
    ok.disconnect();
    stop.shutdown();
    running.join().expect("thread").expect("run");
}

#[test]
fn full_waiting_and_negotiating_pools_close_their_oldest_for_newcomers() {
    let server = Server::new(
        Arc::new(MemBackend::new(1 << 20)),
        None,
        ServerConfig {
            listen: local(),
            max_waiting: 2,
            max_negotiating: 1,
            handshake_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    // Three connections that say nothing: the oldest is closed for the third.
    let mut idle: Vec<Raw> = (0..3).map(|_| Raw::tcp(tcp)).collect();
    idle[0].greeting();
    assert!(idle[0].closed_by_server(), "the oldest idle connection");
    // Two that stall after their flags: the first is closed when the second speaks.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::tcp(tcp);
        c.greeting();
        c.client_flags(1);
        stalled.push(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stalled[0].closed_by_server(),
        "the older stalled connection"
    );
    // A good client gets through, taking the negotiating slot of the other one.
    let (mut good, _, _) = Raw::tcp(tcp).negotiate("", false, &[]);
    assert_eq!(good.read(1, 0, 512), Ok(vec![0; 512]));
    assert!(
        stalled[1].closed_by_server(),
        "the younger stalled connection"
    );
    good.disconnect();
    stop.shutdown();
    let summary = running.join().expect("thread").expect("run");
    assert!(summary.refused >= 4, "{summary:?}");
}

/// A slow memory disk that records the most bytes being read at once.
#[derive(Debug)]
struct PeakProbe {
    inner: MemBackend,
    now: AtomicU64,
    peak: AtomicU64,
}

impl BlockBackend for PeakProbe {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let n = buf.len() as u64;
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        let r = self.inner.read_at(offset, buf);
        self.now.fetch_sub(n, Ordering::SeqCst);
        r
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
}

#[test]
fn bytes_in_flight_per_connection_stay_under_the_limit() {
    for (limit, expect_overlap) in [(1u64 << 20, false), (8 << 20, true)] {
        let disk = Arc::new(PeakProbe {
            inner: MemBackend::new(16 << 20),
            now: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let server = Server::new(
            disk.clone(),
            None,
            ServerConfig {
                listen: local(),
                max_request_bytes: 1 << 20,
                max_inflight_bytes: limit,
                ..ServerConfig::default()
            },
        )
        .expect("server");
        let tcp = tcp_of(&server);
        let (stop, running) = spawn(server);
        let (mut c, _, _) = Raw::tcp(tcp).negotiate("", true, &[]);
        for cookie in 0..8u64 {
            c.request(0, CMD_READ, cookie, cookie << 20, 1 << 20)
                .expect("send");
        }
        for _ in 0..8 {
            c.reply().expect("reply");
        }
        let peak = disk.peak.load(Ordering::SeqCst);
        assert!(
            peak <= limit,
            "{peak} bytes in flight with a limit of {limit}"
        );
        if expect_overlap {
            assert!(
                peak > 1 << 20,
                "reads never overlapped under a limit of {limit}"
            );
        }
        c.disconnect();
        stop.shutdown();
        running.join().expect("thread").expect("run");
    }
}

#[test]
fn requests_run_concurrently_and_replies_come_out_of_order() {
    let disk = counting_disk(32 << 20);
    disk.inner.set_latency(Duration::from_millis(40));
    let server = Server::new(
        disk,
        None,
        ServerConfig {
            listen: local(),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut c, _, _) = Raw::tcp(tcp).negotiate("", true, &[]);
    // A slow request (the cache reads 32 pieces of 1 MiB, 40 ms each), then fast reads.
    c.request(0, CMD_CACHE, 1, 0, 32 << 20).expect("send");
    for cookie in 2..10 {
        c.request(0, CMD_READ, cookie, cookie * 4096, 4096)
            .expect("send");
    }
    let mut order = Vec::new();
    for _ in 0..9 {
        let r = c.reply().expect("reply");
        assert_eq!(r.error(), 0);
        order.push(r.cookie());
    }
    assert_eq!(
        order.last(),
        Some(&1),
        "the slow request finishes last: {order:?}"
    );
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..10).collect::<Vec<_>>());
    c.disconnect();
    stop.shutdown();
    running.join().expect("thread").expect("run");
}

#[test]
fn remap_state_and_base_allocation_over_a_remap_device() {
    let bs = 4096u64;
    let main = FaultyBackend::new(MemBackend::new(256 * bs as usize), bs);
    main.fail_reads([7]);
    main.fail_writes([9]);
    let (_, handle) = MemStore::new();
    let dev = device_from_mem_store(
        main,
        MemBackend::new(16 * bs as usize),
        Layout {
            block_size: BlockSize::new(bs).expect("block size"),
            spare_offset: 0,
            spare_blocks: 16,
        },
        &handle,
        Arc::new(ManualClock::new(0)),
        DeviceConfig::default(),
    )
    .expect("device");
    let dev = Arc::new(dev);
    let server = Server::new(
        dev.clone(),
        Some(dev.clone()),
        ServerConfig {
            listen: local(),
            block_size: 4096,
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut c, _, _) = Raw::tcp(tcp).negotiate("", true, &["base:allocation", "remap:state"]);
    assert_eq!(c.read(1, 7 * bs, 4096), Err(EIO));
    assert_eq!(c.write(0, 2, 9 * bs, &[3; 4096]), 0);
    assert_eq!(c.read(3, 9 * bs, 4096), Ok(vec![3; 4096]));

    // Both contexts, one chunk each, DONE on the last only.
    c.request(0, CMD_BLOCK_STATUS, 4, 0, (256 * bs) as u32)
        .expect("send");
    let mut chunks = Vec::new();
    loop {
        match c.reply().expect("reply") {
            Reply::Chunk {
                flags,
                kind,
                payload,
                ..
            } => {
                assert_eq!(kind, CHUNK_BLOCK_STATUS);
                let id = u32::from_be_bytes(payload[..4].try_into().expect("4"));
                let extents: Vec<(u32, u32)> = payload[4..]
                    .chunks_exact(8)
                    .map(|e| {
                        (
                            u32::from_be_bytes(e[..4].try_into().expect("4")),
                            u32::from_be_bytes(e[4..].try_into().expect("4")),
                        )
                    })
                    .collect();
                chunks.push((id, extents));
                if flags & 1 != 0 {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(chunks.len(), 2);
    let b = bs as u32;
    for (id, extents) in chunks {
        match id {
            1 => assert_eq!(extents, vec![(256 * b, 0)], "base:allocation: all data"),
            2 => assert_eq!(
                extents,
                vec![(7 * b, 0), (b, 2), (b, 0), (b, 1), (246 * b, 0)],
                "remap:state"
            ),
            other => panic!("context id {other}"),
        }
    }
    // REQ_ONE: one extent per context, not longer than asked.
    c.request(8, CMD_BLOCK_STATUS, 5, 7 * bs, (2 * bs) as u32)
        .expect("send");
    for _ in 0..2 {
        match c.reply().expect("reply") {
            Reply::Chunk { payload, .. } => {
                assert_eq!(payload.len(), 12);
                let len = u32::from_be_bytes(payload[4..8].try_into().expect("4"));
                assert!(len <= 2 * b);
            }
            other => panic!("{other:?}"),
        }
    }
    c.disconnect();
    stop.shutdown();
    running.join().expect("thread").expect("run");
    assert_eq!(dev.stats().remaps, 1);
}

#[test]
fn an_exhausted_spare_pool_is_enospc_and_leaves_mapped_blocks_alone() {
    let bs = 4096u64;
    let main = FaultyBackend::new(MemBackend::new(64 * bs as usize), bs);
    main.fail_writes(0..10);
    let (_, handle) = MemStore::new();
    let dev = Arc::new(
        device_from_mem_store(
            main,
            MemBackend::new(2 * bs as usize),
            Layout {
                block_size: BlockSize::new(bs).expect("block size"),
                spare_offset: 0,
                spare_blocks: 2,
            },
            &handle,
            Arc::new(ManualClock::new(0)),
            DeviceConfig::default(),
        )
        .expect("device"),
    );
    let server = Server::new(
        dev.clone(),
        Some(dev.clone()),
        ServerConfig {
            listen: local(),
            block_size: 4096,
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    let (mut c, _, _) = Raw::tcp(tcp).negotiate("", true, &[]);
    assert_eq!(c.write(0, 1, 0, &[1; 4096]), 0);
    assert_eq!(c.write(0, 2, bs, &[2; 4096]), 0);
    assert_eq!(
        c.write(0, 3, 2 * bs, &[3; 4096]),
        ENOSPC,
        "the pool of 2 is used up"
    );
    assert_eq!(
        c.read(4, 0, 8192),
        Ok([vec![1; 4096], vec![2; 4096]].concat())
    );
    c.disconnect();
    stop.shutdown();
    running.join().expect("thread").expect("run");
}

#[test]
fn bad_configurations_are_refused_with_reasons() {
    let disk = || Arc::new(MemBackend::new(1 << 20)) as Arc<dyn BlockBackend>;
    let bad = |config: ServerConfig| match Server::new(disk(), None, config) {
        Err(ServerError::Config { reason }) => reason,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let base = ServerConfig {
        listen: local(),
        ..ServerConfig::default()
    };
    assert!(
        bad(ServerConfig {
            block_size: 3000,
            ..base.clone()
        })
        .contains("power of two")
    );
    assert!(
        bad(ServerConfig {
            listen: vec![],
            ..base.clone()
        })
        .contains("no address")
    );
    assert!(
        bad(ServerConfig {
            name: "a\0b".into(),
            ..base.clone()
        })
        .contains("NUL")
    );
    assert!(
        bad(ServerConfig {
            workers_per_connection: 0,
            ..base.clone()
        })
        .contains("workers")
    );
    assert!(
        bad(ServerConfig {
            max_inflight_bytes: 1,
            ..base.clone()
        })
        .contains("in-flight")
    );
    assert!(
        bad(ServerConfig {
            max_negotiating: 0,
            ..base.clone()
        })
        .contains("negotiating")
    );
    assert!(
        bad(ServerConfig {
            handshake_timeout: Duration::ZERO,
            ..base.clone()
        })
        .contains("handshake timeout")
    );
    assert!(
        bad(ServerConfig {
            max_waiting: 1 << 40,
            ..base.clone()
        })
        .contains("open-file limit")
    );

    // An address in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let r = Server::new(
        disk(),
        None,
        ServerConfig {
            listen: vec![ListenAddr::Tcp(addr)],
            ..base.clone()
        },
    );
    assert!(matches!(r, Err(ServerError::Bind { .. })), "{r:?}");

    // A stale Unix socket is replaced; a regular file is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let s = Server::new(
        disk(),
        None,
        ServerConfig {
            listen: vec![ListenAddr::Unix(stale)],
            ..base.clone()
        },
    );
    assert!(s.is_ok(), "{s:?}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let r = Server::new(
        disk(),
        None,
        ServerConfig {
            listen: vec![ListenAddr::Unix(file.clone())],
            ..base
        },
    );
    assert!(matches!(r, Err(ServerError::Bind { .. })), "{r:?}");
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

#[test]
fn pipelined_small_requests_are_all_answered_with_the_right_data() {
    // Fast requests arriving together are run by the worker that reads them, their
    // replies held and sent together (transmission.rs: INLINE_MAX_NS); a flush among them
    // goes to a worker of its own. Every request is answered once, with its own data.
    let server = Server::new(
        Arc::new(MemBackend::new(8 << 20)),
        None,
        ServerConfig {
            listen: local(),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let tcp = tcp_of(&server);
    let (stop, running) = spawn(server);
    for structured in [false, true] {
        let (mut c, _, _) = Raw::tcp(tcp).negotiate("", structured, &[]);
        let block = |i: u64| -> Vec<u8> { (0..4096u64).map(|j| (i * 13 + j) as u8).collect() };
        for i in 0..400u64 {
            if i == 200 {
                c.request(0, CMD_FLUSH, 10_000, 0, 0).expect("send flush");
            }
            c.request(0, CMD_WRITE, i, (i % 2000) * 4096, 4096)
                .expect("send");
            c.send(&block(i)).expect("send payload");
        }
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..401 {
            let r = c.reply().expect("reply");
            assert_eq!(r.error(), 0, "request {}", r.cookie());
            assert!(
                answered.insert(r.cookie()),
                "request {} answered twice",
                r.cookie()
            );
        }
        for i in 0..400u64 {
            c.request(0, CMD_READ, i, (i % 2000) * 4096, 4096)
                .expect("send");
        }
        for i in 0..400u64 {
            // Replies may come in any order: read each by its cookie.
            let got = c.read_reply_any(4096);
            assert!(got.1 == block(got.0), "read {i}: block {} wrong", got.0);
        }
        c.disconnect();
    }
    stop.shutdown();
    running.join().expect("thread").expect("run");
}
