//! Large writes are spliced from the socket to the backend's file; small ones, FUA writes,
//! and any whose transfer fails are copied. The disk holds the same bytes either way, in
//! simple and structured replies, pipelined or not, and a pipe left holding bytes that were
//! not written is never reused.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::raw::*;
use remap_core::{BlockBackend, IoError, IoOp};
use remap_nbd::{ListenAddr, Server, ServerConfig};

const SIZE: u64 = 4 << 20;
const KIB: u32 = 1024;

/// A file-backed disk that counts the writes it takes by copying, and offers its file for
/// spliced writes.
struct Disk {
    file: File,
    /// Offered for spliced writes: the file itself, or a read-only descriptor of it (so
    /// every write transfer fails).
    splice_write: File,
    copied_writes: AtomicU64,
}

impl BlockBackend for Disk {
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| IoError::media(IoOp::Read, offset, buf.len() as u64, e))
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.copied_writes.fetch_add(1, Ordering::SeqCst);
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| IoError::media(IoOp::Write, offset, buf.len() as u64, e))
    }
    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
    fn splice_write_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.splice_write.as_fd())
    }
}

fn pattern() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i / 4096 * 31 + i % 4096) as u8)
        .collect()
}

/// A disk whose write transfers work if `writable_splice`.
fn disk(dir: &std::path::Path, writable_splice: bool) -> Arc<Disk> {
    std::fs::write(dir.join("disk"), pattern()).unwrap();
    let open = |name: &str| {
        File::options()
            .read(true)
            .write(true)
            .open(dir.join(name))
            .unwrap()
    };
    Arc::new(Disk {
        file: open("disk"),
        splice_write: if writable_splice {
            open("disk")
        } else {
            File::open(dir.join("disk")).unwrap()
        },
        copied_writes: AtomicU64::new(0),
    })
}

fn serve(
    disk: Arc<Disk>,
) -> (
    SocketAddr,
    remap_nbd::ShutdownHandle,
    std::thread::JoinHandle<()>,
) {
    let server = Server::new(
        disk,
        None,
        ServerConfig {
            listen: vec![ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))],
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = match &server.local_addrs()[0] {
        ListenAddr::Tcp(a) => *a,
        ListenAddr::Unix(_) => unreachable!("listening on TCP"),
    };
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || {
        server.run().unwrap();
    });
    (addr, stop, running)
}

/// Write `writes` (offset, length, flags) pipelined: every request and payload sent before
/// any reply is read, so payloads arrive partly with the next header. Returns the data.
/// The writes of one call must not overlap: the server may run them in any order.
fn pipelined_writes(c: &mut Raw, writes: &[(u64, u32, u16)], seed: u8) -> Vec<(u64, Vec<u8>)> {
    for (i, a) in writes.iter().enumerate() {
        for b in &writes[i + 1..] {
            assert!(
                a.0 + u64::from(a.1) <= b.0 || b.0 + u64::from(b.1) <= a.0,
                "overlapping pipelined writes {a:?} and {b:?} have no defined order"
            );
        }
    }
    let mut sent = Vec::new();
    for (i, &(offset, len, flags)) in writes.iter().enumerate() {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(seed) ^ i as u8)
            .collect();
        c.request(flags, CMD_WRITE, 100 + i as u64, offset, len)
            .expect("send");
        c.send(&data).expect("send payload");
        sent.push((offset, data));
    }
    for _ in writes {
        let r = c.reply().expect("reply");
        assert_eq!(r.error(), 0, "write {}", r.cookie());
    }
    sent
}

fn check_and_apply(c: &mut Raw, model: &mut [u8], sent: Vec<(u64, Vec<u8>)>) {
    for (offset, data) in sent {
        model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
    }
    let got = c.read(1, 0, SIZE as u32).expect("read all");
    assert!(got == model, "the disk holds what was written");
}

#[test]
fn large_writes_are_spliced_and_store_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), true);
    let mut model = pattern();
    let (addr, stop, running) = serve(Arc::clone(&disk));
    for (structured, seed) in [(false, 3u8), (true, 5)] {
        let (mut c, _, _) = Raw::tcp(addr).negotiate("", structured, &[]);
        let before = disk.copied_writes.load(Ordering::SeqCst);
        let sent = pipelined_writes(
            &mut c,
            &[
                (0, 256 * KIB, 0),
                (300 * 1024 + 777, 64 * KIB, 0),
                (1 << 20, 1024 * KIB, 0),
                (SIZE - 100 * 1024, 100 * KIB, 0),
            ],
            seed,
        );
        assert_eq!(
            disk.copied_writes.load(Ordering::SeqCst),
            before,
            "writes of 64 KiB to 1 MiB are spliced"
        );
        check_and_apply(&mut c, &mut model, sent);
        // Small, FUA, and larger than a pipe: copied.
        let sent = pipelined_writes(
            &mut c,
            &[
                (4096, 4 * KIB, 0),
                (8192, 128 * KIB, FLAG_FUA),
                (2 << 20, 2048 * KIB, 0),
            ],
            seed + 1,
        );
        assert_eq!(disk.copied_writes.load(Ordering::SeqCst), before + 3);
        check_and_apply(&mut c, &mut model, sent);
        c.disconnect();
    }
    stop.shutdown();
    running.join().unwrap();
}

#[test]
fn a_write_transfer_that_fails_is_written_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), false);
    let mut model = pattern();
    let (addr, stop, running) = serve(Arc::clone(&disk));
    let (mut c, _, _) = Raw::tcp(addr).negotiate("", true, &[]);
    for round in 0..3u8 {
        let sent = pipelined_writes(
            &mut c,
            &[
                (65_536 * u64::from(round), 192 * KIB, 0),
                (2 << 20, 512 * KIB, 0),
            ],
            7 + round,
        );
        check_and_apply(&mut c, &mut model, sent);
    }
    assert_eq!(
        disk.copied_writes.load(Ordering::SeqCst),
        6,
        "every write fell back"
    );
    c.disconnect();
    stop.shutdown();
    running.join().unwrap();
}
