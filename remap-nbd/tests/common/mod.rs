//! Shared by the integration suites: starting the server under test, finding tools, test
//! data.
//!
//! The server under test is chosen in ONE place, [`server_command`]: the `remap serve`
//! command of the `remap` binary built beside these tests (`cargo test --workspace` builds
//! it), formatting the blank spare itself (`--create`). `REMAP_NBD_SERVER` overrides it, e.g.
//! with the library's own example: `REMAP_NBD_SERVER="target/release/examples/nbd-serve
//! remap"`. Both take `MAIN SPARE --listen ADDR --socket PATH --name NAME [--read-only]
//! [--fail-read BLOCKS] [--fail-write BLOCKS] [--flaky RATE --seed N]`.
#![allow(dead_code)]

pub mod raw;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Size of the test device.
pub const DEV_SIZE: u64 = 64 << 20;
/// Block size of the remapping device under test.
pub const BLOCK: u64 = 4096;
/// Spare blocks in the test device's pool.
pub const SPARE_BLOCKS: u64 = 1024;

/// The command that serves a device: program and leading arguments; the suites append
/// `MAIN SPARE` and options. THE one line to change to test `remap serve` instead.
pub fn server_command() -> Command {
    if let Ok(line) = std::env::var("REMAP_NBD_SERVER") {
        let mut words = line.split_whitespace();
        let program = words.next().expect("REMAP_NBD_SERVER is empty");
        let mut c = Command::new(program);
        c.args(words);
        return c;
    }
    let mut c = Command::new(remap_binary());
    c.args(["serve", "--create"]);
    c
}

/// The `remap` binary of the same build profile: target/<profile>/remap.
pub fn remap_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let hint = "run the tests with `cargo test --workspace` (which builds the remap binary), or \
                build it with `cargo build -p remap-cli` for the same profile";
    fresh(
        &dir.join("remap"),
        &[
            "src",
            "../remap-cli/src",
            "../remap-core/src",
            "../remap-meta/src",
        ],
        hint,
    )
}

/// Create MAIN (filled with [`pattern_byte`] data) and SPARE for the server under test.
pub fn prepare_device(main: &Path, spare: &Path) {
    std::fs::write(main, pattern(0, DEV_SIZE as usize)).expect("write main");
    let f = std::fs::File::create(spare).expect("create spare");
    f.set_len(SPARE_BLOCKS * BLOCK).expect("size spare");
}

/// The path of an example binary built alongside this test (`cargo test` builds examples).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join("examples").join(name);
    let hint = format!(
        "run the tests with `cargo test -p remap-nbd` (which builds the examples), or build it \
         with `cargo build -p remap-nbd --example {name}` for the same profile"
    );
    fresh(&path, &["src", "examples", "../remap-core/src"], &hint)
}

/// `path`, after checking it exists and is not older than the sources under `dirs` (relative
/// to this crate): `cargo test --test X` does not rebuild binaries, so refuse a stale one.
/// Sources edited after the tests began (someone else working in the same tree) do not
/// count: the binary was built from the sources as they were when the run started.
fn fresh(path: &Path, dirs: &[&str], hint: &str) -> PathBuf {
    let built = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {hint}", path.display()));
    static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    let started = *STARTED.get_or_init(std::time::SystemTime::now);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(newest) = dirs
        .iter()
        .filter_map(|d| newest_mtime(&manifest.join(d), started))
        .max()
    {
        assert!(
            built >= newest,
            "{} is older than its sources: {hint}",
            path.display()
        );
    }
    path.to_path_buf()
}

/// The newest modification time under `dir`, ignoring anything modified after `before`.
fn newest_mtime(dir: &Path, before: std::time::SystemTime) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path, before)
        } else {
            entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .filter(|t| *t <= before)
        };
        newest = newest.max(t);
    }
    newest
}

/// The byte at `offset` of the initial device contents: varied, so a misplaced block shows.
pub fn pattern_byte(offset: u64) -> u8 {
    let block = offset / 512;
    (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset as u8)
}

pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// Deterministic pseudo-random bytes (xorshift), for source images.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A Debian tool the suite needs: present, or the test fails naming the package.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/bin")])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` \
         (scripts/install-deps.sh does it)"
    );
}

/// A command for a system tool, with Debian's Python first on PATH (for nbdsh).
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:{path}"));
    c
}

/// Run, returning the output.
pub fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null());
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run and require success; returns stdout.
pub fn must(c: &mut Command) -> String {
    let o = run(c);
    assert!(o.status.success(), "{c:?} failed\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run and require failure; returns stdout + stderr.
pub fn must_fail(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        !o.status.success(),
        "{c:?} should have failed\n{}",
        text(&o)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Options for a served device.
#[derive(Debug, Default, Clone)]
pub struct Serve {
    pub name: Option<String>,
    pub read_only: bool,
    pub fail_read: Option<String>,
    pub fail_write: Option<String>,
    pub flaky: Option<(f64, u64)>,
    pub extra: Vec<String>,
}

/// A running server under test, on a temporary device; killed on drop. Its stdout and
/// stderr are drained continuously (a server blocked on a full log pipe would look hung).
pub struct Served {
    pub child: Child,
    stdout: Drain,
    stderr: Drain,
    pub dir: tempfile::TempDir,
    pub main: PathBuf,
    pub spare: PathBuf,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    pub name: String,
}

/// Collects everything a pipe delivers, on its own thread.
struct Drain(Option<std::thread::JoinHandle<String>>);

impl Drain {
    fn new(pipe: Option<impl Read + Send + 'static>) -> Drain {
        Drain(pipe.map(|mut p| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        }))
    }

    /// Everything, once the writer has exited.
    fn collect(&mut self) -> String {
        self.0
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

impl Served {
    pub fn start(opts: Serve) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("main.img");
        let spare = dir.path().join("spare.img");
        prepare_device(&main, &spare);
        Self::start_on(dir, main, spare, opts)
    }

    /// Start on an existing device (e.g. after a restart).
    pub fn start_on(dir: tempfile::TempDir, main: PathBuf, spare: PathBuf, opts: Serve) -> Served {
        let socket = dir.path().join("nbd.sock");
        let tcp = free_port();
        let name = opts.name.clone().unwrap_or_else(|| "disk".into());
        let mut c = server_command();
        c.arg(&main).arg(&spare);
        c.arg("--listen").arg(tcp.to_string());
        c.arg("--socket").arg(&socket);
        c.arg("--name").arg(&name);
        if opts.read_only {
            c.arg("--read-only");
        }
        if let Some(b) = &opts.fail_read {
            c.arg("--fail-read").arg(b);
        }
        if let Some(b) = &opts.fail_write {
            c.arg("--fail-write").arg(b);
        }
        if let Some((rate, seed)) = opts.flaky {
            c.arg("--flaky")
                .arg(rate.to_string())
                .arg("--seed")
                .arg(seed.to_string());
        }
        c.args(&opts.extra);
        c.env("RUST_LOG", "info");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let stdout = Drain::new(child.stdout.take());
        let stderr = Drain::new(child.stderr.take());
        let mut s = Served {
            child,
            stdout,
            stderr,
            dir,
            main,
            spare,
            socket,
            tcp,
            name,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err = self.stderr.collect();
                panic!("server exited at start ({status}):\n{err}");
            }
            if UnixStream::connect(&self.socket).is_ok()
                && std::net::TcpStream::connect(self.tcp).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start listening in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// URI over the Unix socket.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.name, self.socket.display())
    }

    /// URI over TCP.
    pub fn tcp_uri(&self) -> String {
        format!("nbd://{}/{}", self.tcp, self.name)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, wait (bounded), and return the exit status and stdout. The server must exit
    /// by itself within `limit`.
    pub fn stop_within(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, String, String, Self) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.collect();
        let err = self.stderr.collect();
        (status, out, err, self)
    }

    /// SIGTERM; require the orderly stop's status 143 (128 + SIGTERM). Returns (the exit
    /// summary, which `remap serve` prints on stderr when a signal stops it, all of stderr,
    /// the server).
    pub fn stop(self) -> (String, String, Self) {
        let (status, out, err, s) = self.stop_within(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(143),
            "server exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
        );
        (err.clone(), err, s)
    }

    /// The server still runs.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "the server died"
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The block list printed by the server on exit, e.g. the `remapped:` line.
pub fn listed_blocks(stdout: &str, label: &str) -> Vec<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|rest| {
            rest.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("block number"))
                .collect()
        })
        .unwrap_or_default()
}

/// `nbdinfo --map[=CONTEXT]` as (offset, length, flags).
pub fn map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u32)> {
    require("nbdinfo", "libnbd-bin");
    let flag = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    let out = must(tool("nbdinfo").arg(flag).arg(uri));
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
            ))
        })
        .collect()
}
