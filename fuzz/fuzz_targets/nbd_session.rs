//! Whole NBD sessions from arbitrary bytes: a real server (over a memory disk, on a Unix
//! socket) is fed the fuzzer's bytes as a client would send them, handshake and requests
//! alike, and the reply is drained. A panic in any server thread aborts the process (the
//! fuzzer reports it); after the input, a well-behaved exchange must still work.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use remap_core::MemBackend;
use remap_nbd::{ListenAddr, Server, ServerConfig};

fn server() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        // Any panic, in any thread, is a finding.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let dir = std::env::temp_dir().join(format!("remap-fuzz-nbd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("nbd.sock");
        let config = ServerConfig {
            listen: vec![ListenAddr::Unix(path.clone())],
            name: "fuzz".into(),
            handshake_timeout: Duration::from_millis(200),
            send_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let export = Arc::new(MemBackend::new(1 << 20));
        let server = Server::new(export, None, config).expect("server");
        std::thread::spawn(move || server.run());
        for _ in 0..200 {
            if UnixStream::connect(&path).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        path
    })
}

/// The fixed newstyle greeting: NBDMAGIC, IHAVEOPT, flags.
fn greeting_ok(path: &PathBuf) -> bool {
    let Ok(mut s) = UnixStream::connect(path) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut g = [0u8; 18];
    s.read_exact(&mut g).is_ok() && &g[..8] == b"NBDMAGIC"
}

/// Client flags (FIXED_NEWSTYLE | NO_ZEROES) and NBD_OPT_EXPORT_NAME "fuzz": straight into
/// the transmission phase.
fn handshake() -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(b"IHAVEOPT");
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&4u32.to_be_bytes());
    h.extend_from_slice(b"fuzz");
    h
}

/// What the client sends, chosen by the first byte: the raw bytes; a handshake then the raw
/// bytes; or a handshake then requests whose 28-byte headers carry the right magic (so the
/// fuzzer spends its effort on commands, flags, offsets and lengths).
fn client_bytes(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    match mode % 3 {
        0 => rest.to_vec(),
        1 => [handshake(), rest.to_vec()].concat(),
        _ => {
            let mut out = handshake();
            for chunk in rest.chunks(28) {
                let mut header = [0u8; 28];
                header[..chunk.len()].copy_from_slice(chunk);
                header[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
                out.extend_from_slice(&header);
            }
            out
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = server();
    if let Ok(mut s) = UnixStream::connect(path) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = s.write_all(&client_bytes(data));
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 65536];
        let mut total = 0usize;
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 || total > 64 << 20 {
                break;
            }
            total += n;
        }
    }
    assert!(greeting_ok(path), "the server stopped answering");
});
