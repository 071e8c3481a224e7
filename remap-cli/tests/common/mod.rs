//! Shared by the suites that run `remap serve`: starting it on temporary files, reading what
//! it prints, stopping it with SIGTERM, running other `remap` commands, finding tools.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BS: u64 = 4096;

/// Run `remap ARGS`.
pub fn remap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the remap binary runs")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `remap ARGS`, require success, parse stdout as JSON.
pub fn remap_json(args: &[&str]) -> Value {
    let o = remap(args);
    assert!(o.status.success(), "remap {args:?} failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A Debian tool a test needs: present, or the test fails naming the package.
pub fn require(tool: &str, package: &str) {
    let found = ["/usr/bin", "/usr/sbin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ))
        .any(|d| d.join(tool).is_file());
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` (scripts/install-deps.sh does it)"
    );
}

/// A system tool, with /usr/bin first on PATH (Debian's Python for nbdsh).
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:{path}"));
    c.stdin(Stdio::null());
    c
}

/// Run, require success, return stdout.
pub fn must(c: &mut Command) -> String {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(o.status.success(), "{c:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temporary main file of `size` bytes holding `fill(offset)` and an unformatted spare.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub main: PathBuf,
    pub spare: PathBuf,
}

impl Files {
    pub fn new(main_size: u64, spare_size: u64) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("main.img");
        let spare = dir.path().join("spare.img");
        std::fs::File::create(&main)
            .and_then(|f| f.set_len(main_size))
            .expect("main");
        std::fs::File::create(&spare)
            .and_then(|f| f.set_len(spare_size))
            .expect("spare");
        Files { dir, main, spare }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `remap create MAIN SPARE EXTRA...`.
    pub fn create(&self, extra: &[&str]) {
        let mut args = vec!["create", s(&self.main), s(&self.spare)];
        args.extend_from_slice(extra);
        let o = remap(&args);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// A running `remap serve`, killed on drop if still running.
pub struct Served {
    pub child: Child,
    /// What it printed up to its `listening on` lines.
    pub lines: Vec<String>,
    rest: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// `remap serve MAIN SPARE ARGS`, waiting until it listens on every address.
    pub fn start(files: &Files, args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_remap"))
            .arg("serve")
            .arg(&files.main)
            .arg(&files.spare)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn remap serve");
        let mut stderr = child.stderr.take().expect("stderr");
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let listeners = args
            .iter()
            .filter(|a| **a == "--socket" || **a == "--listen")
            .count()
            .max(1);
        let mut lines = Vec::new();
        let mut listening = 0;
        while listening < listeners {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stdout");
            if n == 0 {
                let e = err.join().unwrap_or_default();
                panic!("remap serve ended before listening: {lines:?}\n{e}");
            }
            if line.starts_with("listening on ") {
                listening += 1;
            }
            lines.push(line.trim_end().to_string());
        }
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = reader.read_to_string(&mut s);
            s
        });
        Served {
            child,
            lines,
            rest: Some(rest),
            err: Some(err),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of `metrics on http://ADDR/metrics`.
    pub fn metrics_addr(&self) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("metrics on http://"))
            .and_then(|r| r.strip_suffix("/metrics"))
            .expect("a metrics line")
            .to_string()
    }

    /// Send a signal, wait (bounded) for the exit; return (code, stdout rest, stderr).
    pub fn signal(mut self, signal: &str) -> (i32, String, String) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.code().expect("exited, not killed");
            }
            assert!(
                Instant::now() < deadline,
                "remap serve did not stop on {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.rest.take().map(|h| h.join().unwrap_or_default());
        let err = self.err.take().map(|h| h.join().unwrap_or_default());
        (code, out.unwrap_or_default(), err.unwrap_or_default())
    }

    /// SIGTERM; require the orderly stop's 143 (128 + SIGTERM). Returns (stdout rest,
    /// stderr), the exit summary being on stderr.
    pub fn stop(self) -> (String, String) {
        let (code, out, err) = self.signal("TERM");
        assert_eq!(code, 143, "remap serve exit status\n{out}\n{err}");
        (out, err)
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

/// Poll `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SHA-256 of the whole file or block device at `path`.
pub fn sha256(path: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    h.finalize().into()
}

/// SHA-256 of both devices, to show a refusal changed neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub main: [u8; 32],
    pub spare: [u8; 32],
}

impl Hashes {
    pub fn of(main: &Path, spare: &Path) -> Hashes {
        Hashes {
            main: sha256(main),
            spare: sha256(spare),
        }
    }

    #[track_caller]
    pub fn assert_unchanged(&self, main: &Path, spare: &Path, what: &str) {
        let now = Hashes::of(main, spare);
        assert_eq!(
            self.main,
            now.main,
            "{what}: MAIN ({}) changed",
            main.display()
        );
        assert_eq!(
            self.spare,
            now.spare,
            "{what}: SPARE ({}) changed",
            spare.display()
        );
    }
}

/// A loop device, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup --find --show ARGS FILE`.
    pub fn attach(file: &Path, args: &[&str]) -> Loop {
        require("losetup", "mount");
        let out = must(
            tool("losetup")
                .args(["--find", "--show"])
                .args(args)
                .arg(file),
        );
        Loop {
            dev: PathBuf::from(out.trim()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = tool("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Run `remap health ARGS --json`: its exit status is the verdict's (0 healthy,
/// 1 degraded, 2 critical) and must agree with the printed state.
pub fn health_json(args: &[&str]) -> Value {
    let o = remap(args);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)));
    let want = match v["state"].as_str() {
        Some("healthy") => 0,
        Some("degraded") => 1,
        Some("critical") => 2,
        other => panic!("no state ({other:?}): {}", text(&o)),
    };
    assert_eq!(o.status.code(), Some(want), "{}", text(&o));
    v
}
