//! Large reads are spliced from the backend's file to the socket; small ones, and any read
//! whose transfer fails, are copied. The client sees the same bytes either way, in simple
//! and structured replies, and a pipe left holding bytes that were not sent is never reused.

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

/// A file-backed disk that counts the reads it serves by copying, and offers `splice` for
/// a file that may be shorter than the disk (so a transfer past its end fails part way,
/// with some bytes already in the pipe).
struct Disk {
    file: File,
    splice: File,
    copied: AtomicU64,
}

impl BlockBackend for Disk {
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.copied.fetch_add(1, Ordering::SeqCst);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| IoError::media(IoOp::Read, offset, buf.len() as u64, e))
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| IoError::media(IoOp::Write, offset, buf.len() as u64, e))
    }
    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.splice.as_fd())
    }
}

fn pattern() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i / 4096 * 31 + i % 4096) as u8)
        .collect()
}

/// A disk whose splice file holds only the first `splice_bytes` of it.
fn disk(dir: &std::path::Path, splice_bytes: u64) -> Arc<Disk> {
    let data = pattern();
    std::fs::write(dir.join("disk"), &data).unwrap();
    std::fs::write(dir.join("short"), &data[..splice_bytes as usize]).unwrap();
    let open = |name: &str| {
        File::options()
            .read(true)
            .write(true)
            .open(dir.join(name))
            .unwrap()
    };
    Arc::new(Disk {
        file: open("disk"),
        splice: open("short"),
        copied: AtomicU64::new(0),
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

#[test]
fn large_reads_are_spliced_and_read_the_same_in_both_reply_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), SIZE);
    let data = pattern();
    let (addr, stop, running) = serve(Arc::clone(&disk));
    for structured in [false, true] {
        let (mut c, _, _) = Raw::tcp(addr).negotiate("", structured, &[]);
        let before = disk.copied.load(Ordering::SeqCst);
        for (cookie, (offset, len)) in [
            (0u64, 256 * KIB),
            (12_345, 64 * KIB),
            (3 << 20, 1024 * KIB),
            (SIZE - 300 * 1024, 300 * KIB),
        ]
        .into_iter()
        .enumerate()
        {
            let got = c.read(cookie as u64, offset, len).expect("read");
            assert!(
                got == data[offset as usize..(offset + u64::from(len)) as usize],
                "read of {len} at {offset} (structured: {structured})"
            );
        }
        assert_eq!(
            disk.copied.load(Ordering::SeqCst),
            before,
            "reads of 64 KiB to 1 MiB are spliced, not copied"
        );
        // Small reads, and one larger than a pipe holds, are copied.
        assert!(c.read(9, 4096, 4 * KIB).expect("read") == data[4096..8192]);
        assert!(c.read(10, 0, 2048 * KIB).expect("read") == data[..2 << 20]);
        assert_eq!(disk.copied.load(Ordering::SeqCst), before + 2);
        c.disconnect();
    }
    stop.shutdown();
    running.join().unwrap();
}

#[test]
fn a_transfer_that_fails_part_way_is_copied_and_its_pipe_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    // Splicing works for the first 1 MiB only: a read across that line fails part way.
    let disk = disk(dir.path(), 1 << 20);
    let data = pattern();
    let (addr, stop, running) = serve(Arc::clone(&disk));
    let (mut c, _, _) = Raw::tcp(addr).negotiate("", true, &[]);
    for round in 0..3u64 {
        let at = (1 << 20) - 128 * 1024;
        let got = c
            .read(2 * round, at, 256 * KIB)
            .expect("read across the line");
        assert!(got == data[at as usize..at as usize + (256 << 10)]);
        // The next read on this connection is spliced again, and carries its own bytes,
        // not the ones left over from the failed transfer.
        let got = c.read(2 * round + 1, 4096, 128 * KIB).expect("read");
        assert!(got == data[4096..4096 + (128 << 10)], "round {round}");
    }
    assert_eq!(
        disk.copied.load(Ordering::SeqCst),
        3,
        "only the failed transfers are copied"
    );
    c.disconnect();
    stop.shutdown();
    running.join().unwrap();
}
