//! Shared by the suites that serve a pair in-process: temporary files, a formatted pair,
//! `serve()` with faults, polling.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use remap_service::blocks::{BlockList, BlockRange};
use remap_service::{Access, FaultPlan, ListenAddr, Pair, ServeConfig, Serving};

pub const BS: u64 = 4096;

/// A temporary main file and spare file.
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

    pub fn pair(&self) -> Pair {
        Pair::open(
            &self.main,
            &self.spare,
            Access::ReadWrite,
            Access::ReadWrite,
        )
        .expect("open")
    }

    /// Serve the pair on a Unix socket (formatting a blank spare first), with `faults`, a
    /// control socket and metrics as `config` adds them.
    pub fn serve(&self, faults: FaultPlan, config: ServeConfig) -> Serving {
        remap_service::serve(
            self.pair(),
            ServeConfig {
                listen: vec![ListenAddr::Unix(self.path("nbd.sock"))],
                faults,
                create_if_blank: true,
                ..config
            },
        )
        .expect("serve")
    }
}

/// The block list `first..=last`.
pub fn blocks(first: u64, last: u64) -> BlockList {
    BlockList::new(&[BlockRange { first, last }])
}

/// Poll `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
