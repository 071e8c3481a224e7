//! `remap serve` through the built binary, spoken to by a minimal NBD client written here
//! from the protocol (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple replies), so the test
//! needs no external tool: injected write faults become remaps, injected read faults become
//! EIO and pending blocks, the pair is locked while served, and SIGTERM ends in a clean
//! shutdown whose table `remap dump` then shows.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BS: u64 = 4096;
const MAIN_SIZE: u64 = 16 << 20;
const SPARE_SIZE: u64 = 2 << 20;

const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const EIO: u32 = 5;
const EPERM: u32 = 1;

fn remap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A tiny NBD client: enough to read, write and flush one export.
struct Client {
    sock: UnixStream,
    size: u64,
    handle: u64,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let mut sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greeting = [0u8; 18];
        sock.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        assert_eq!(server_flags & 1, 1, "fixed newstyle");
        let no_zeroes = server_flags & 2 != 0;
        let client_flags: u32 = 1 | if no_zeroes { 2 } else { 0 };
        sock.write_all(&client_flags.to_be_bytes()).unwrap();
        // NBD_OPT_EXPORT_NAME with the default (empty) name.
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&1u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes());
        sock.write_all(&opt).unwrap();
        let mut export = [0u8; 10];
        sock.read_exact(&mut export).unwrap();
        if !no_zeroes {
            let mut zeroes = [0u8; 124];
            sock.read_exact(&mut zeroes).unwrap();
        }
        Client {
            sock,
            size: u64::from_be_bytes(export[..8].try_into().unwrap()),
            handle: 0,
        }
    }

    /// Send one request, return (error, data read).
    fn request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        self.handle += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.sock.write_all(&req).unwrap();
        if kind == CMD_DISC {
            return (0, Vec::new());
        }
        let mut reply = [0u8; 16];
        self.sock.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            NBD_SIMPLE_REPLY_MAGIC
        );
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        assert_eq!(
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
            self.handle
        );
        let mut data = Vec::new();
        if kind == CMD_READ && error == 0 {
            data = vec![0u8; len as usize];
            self.sock.read_exact(&mut data).unwrap();
        }
        (error, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(CMD_WRITE, offset, data.len() as u32, data).0
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.request(CMD_READ, offset, len, &[]) {
            (0, data) => Ok(data),
            (e, _) => Err(e),
        }
    }

    fn flush(&mut self) -> u32 {
        self.request(CMD_FLUSH, 0, 0, &[]).0
    }

    fn disconnect(mut self) {
        self.request(CMD_DISC, 0, 0, &[]);
    }
}

struct Served {
    child: Child,
    socket: PathBuf,
    lines: Vec<String>,
    /// Reads the rest of stdout (the end-of-run summary) so the pipe never fills.
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// Start `remap serve` and wait for it to say where it listens.
    fn start(main: &Path, spare: &Path, socket: &Path, extra: &[&str]) -> Served {
        let mut args = vec![main.to_str().unwrap(), spare.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::start_in(Path::new("."), socket, &args)
    }

    /// `remap serve ARGS --socket SOCKET`, run in `cwd`.
    fn start_in(cwd: &Path, socket: &Path, args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_remap"))
            .current_dir(cwd)
            .arg("serve")
            .args(args)
            .arg("--socket")
            .arg(socket)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "remap serve ended before listening: {lines:?}");
            let done = line.starts_with("listening on ");
            lines.push(line.trim_end().to_string());
            if done {
                break;
            }
        }
        // Keep the rest of stdout for the end-of-run summary.
        child.stdout = None;
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = reader.read_to_string(&mut s);
            s
        });
        Served {
            child,
            socket: socket.to_path_buf(),
            lines,
            rest: Some(rest),
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status and the rest of stdout.
    fn stop(mut self) -> (i32, String, String) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code().expect("exited, not killed");
            }
            assert!(
                Instant::now() < deadline,
                "remap serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let out = self
            .rest
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (code, out, err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BS as usize)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.img");
    let spare = dir.path().join("spare.img");
    fs::File::create(&main).unwrap().set_len(MAIN_SIZE).unwrap();
    fs::File::create(&spare)
        .unwrap()
        .set_len(SPARE_SIZE)
        .unwrap();
    let o = remap(&["create", main.to_str().unwrap(), spare.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (dir, main, spare)
}

fn read_file(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn injected_faults_become_remaps_and_pending_blocks_that_survive_a_restart() {
    let (dir, main, spare) = setup();
    let socket = dir.path().join("nbd.sock");
    let served = Served::start(
        &main,
        &spare,
        &socket,
        &["--fail-write", "5,20-22", "--fail-read", "7"],
    );
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.contains("1 blocks fail reads, 4 fail writes"))
    );
    assert!(served.lines.last().unwrap().contains("nbd.sock"));

    // The pair is locked by the server, and the message names its pid.
    let o = remap(&["status", main.to_str().unwrap(), spare.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("in use by pid {}", served.child.id())),
        "{err}"
    );

    let mut c = Client::connect(&served.socket);
    assert_eq!(c.size, MAIN_SIZE);
    for lba in [4u64, 5, 6, 20, 21, 22] {
        assert_eq!(
            c.write(lba * BS, &pattern(lba as u8)),
            0,
            "write of block {lba}"
        );
    }
    assert_eq!(c.flush(), 0);
    for lba in [4u64, 5, 6, 20, 21, 22] {
        assert_eq!(
            c.read(lba * BS, BS as u32).unwrap(),
            pattern(lba as u8),
            "block {lba}"
        );
    }
    assert_eq!(
        c.read(7 * BS, BS as u32),
        Err(EIO),
        "a failing read is an error, never data"
    );
    assert_eq!(c.read(7 * BS, 512), Err(EIO), "and stays one (pending)");
    c.disconnect();

    let (code, out, err) = served.stop();
    assert_eq!(code, 143, "orderly stop on SIGTERM: {out}\n{err}");
    assert!(
        err.contains("4 remapped, 1 pending"),
        "summary on stderr: {err}"
    );

    // After the restart (a fresh process), the table and the data are on disk.
    let o = remap(&[
        "dump",
        "--json",
        main.to_str().unwrap(),
        spare.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let dump: Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = dump["entries"].as_array().unwrap();
    let summary: Vec<(u64, &str)> = entries
        .iter()
        .map(|e| (e["block"].as_u64().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (5, "remapped"),
            (7, "pending"),
            (20, "remapped"),
            (21, "remapped"),
            (22, "remapped")
        ]
    );
    let o = remap(&[
        "status",
        "--json",
        main.to_str().unwrap(),
        spare.to_str().unwrap(),
    ]);
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    let pool = status["geometry"]["pool_offset"].as_u64().unwrap();
    for e in entries.iter().filter(|e| e["state"] == "remapped") {
        let lba = e["block"].as_u64().unwrap();
        let at = pool + e["spare_block"].as_u64().unwrap() * BS;
        assert_eq!(
            read_file(&spare, at, BS as usize),
            pattern(lba as u8),
            "block {lba}"
        );
    }
    // Blocks that did not fail were written in place.
    assert_eq!(read_file(&main, 4 * BS, BS as usize), pattern(4));
    assert!(status["counters"]["main_write_errors"].as_u64().unwrap() >= 4);
    let o = remap(&["check", main.to_str().unwrap(), spare.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Served again, without faults: the remapped blocks read from the spare, and a whole
    // write clears the pending block.
    let served = Served::start(&main, &spare, &socket, &[]);
    let mut c = Client::connect(&served.socket);
    assert_eq!(c.read(21 * BS, BS as u32).unwrap(), pattern(21));
    assert_eq!(c.read(7 * BS, BS as u32), Err(EIO));
    assert_eq!(c.write(7 * BS, &pattern(77)), 0);
    assert_eq!(c.read(7 * BS, BS as u32).unwrap(), pattern(77));
    c.disconnect();
    let (code, _, err) = served.stop();
    assert_eq!(code, 143, "{err}");
}

#[test]
fn read_only_refuses_writes_and_bad_fault_lists_are_usage_errors() {
    let (dir, main, spare) = setup();
    let socket = dir.path().join("ro.sock");
    let served = Served::start(&main, &spare, &socket, &["--read-only"]);
    let mut c = Client::connect(&served.socket);
    assert_eq!(c.write(0, &pattern(1)), EPERM);
    assert_eq!(c.read(0, BS as u32).unwrap(), vec![0u8; BS as usize]);
    c.disconnect();
    let (code, _, err) = served.stop();
    assert_eq!(code, 143, "{err}");

    let (m, s) = (main.to_str().unwrap(), spare.to_str().unwrap());
    let sock = socket.to_str().unwrap();
    for bad in [
        &["--fail-read", "9-3"][..],
        &["--fail-write", "x"][..],
        &["--flaky", "1.5"][..],
        &["--fail-read", "99999999"][..],
        &["--fail-read", "0-2000000"][..],
    ] {
        let mut args = vec!["serve", m, s, "--socket", sock];
        args.extend_from_slice(bad);
        let o = remap(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn demo_creates_a_pair_with_failing_blocks_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("demo.sock");
    let served = Served::start_in(dir.path(), &socket, &["--demo"]);
    let text = served.lines.join("\n");
    assert!(text.contains("formatted remap-demo/spare.img"), "{text}");
    assert!(
        text.contains("2 blocks fail reads, 10 fail writes"),
        "{text}"
    );
    let main = dir.path().join("remap-demo/main.img");
    let spare = dir.path().join("remap-demo/spare.img");
    assert_eq!(fs::metadata(&main).unwrap().len(), 1 << 30);
    let mut c = Client::connect(&socket);
    assert_eq!(c.write(1000 * BS, &pattern(10)), 0);
    assert_eq!(c.read(1000 * BS, BS as u32).unwrap(), pattern(10));
    assert_eq!(c.read(2000 * BS, BS as u32), Err(EIO));
    c.disconnect();
    // The demo listens for control commands in its directory.
    let ctl = dir.path().join("remap-demo/control.sock");
    let o = remap(&["status", "--control", ctl.to_str().unwrap(), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let live: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(live["blocks"]["remapped"], 1);
    assert_eq!(live["blocks"]["pending"], 1);
    let (code, out, err) = served.stop();
    assert_eq!(code, 143, "{err}");
    assert!(
        out.contains("remap status --control remap-demo/control.sock"),
        "{out}"
    );

    // A second demo keeps the pair and its table.
    let served = Served::start_in(dir.path(), &socket, &["--demo"]);
    let text = served.lines.join("\n");
    assert!(!text.contains("formatted"), "{text}");
    let mut c = Client::connect(&socket);
    assert_eq!(c.read(1000 * BS, BS as u32).unwrap(), pattern(10));
    c.disconnect();
    let (code, _, err) = served.stop();
    assert_eq!(code, 143, "{err}");
    let o = remap(&[
        "dump",
        "--json",
        main.to_str().unwrap(),
        spare.to_str().unwrap(),
    ]);
    let dump: Value = serde_json::from_slice(&o.stdout).unwrap();
    let states: Vec<(u64, &str)> = dump["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["block"].as_u64().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(1000, "remapped"), (2000, "pending")]);
}
