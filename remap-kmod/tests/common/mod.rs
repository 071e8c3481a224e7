//! A user-space stand-in for the kernel around the target's logic: two simulated disks
//! (remap-core's faulty memory main device and a crashable spare device) behind the
//! [`BlockIo`] seam, a spare formatted by remap-meta exactly as `remap create` does, and
//! `kwrite`/`kread`, which route requests the way `kernel/dm-remap.c` routes bios: the fast
//! path per run of blocks, and the slow path for a run that fails or needs a move.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use remap_core::backend::crash::CrashBackend;
use remap_core::backend::faulty::FaultyBackend;
use remap_core::{BlockBackend, HealthThresholds, IoError, MemBackend};
use remap_kmod::io::{BlockIo, Dev, IoFailure, WriteFlags};
use remap_kmod::target::{MAX_SLOW_BYTES, Op, OpenParams, Route, Shared, SlowError, State};
use remap_kmod::{Options, open};
use remap_meta::CreateOptions;
use remap_meta::superblock::DeviceIdentity;

pub const BS: u64 = 4096;

/// One I/O the logic asked for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Read {
        dev: Dev,
        offset: u64,
        len: u64,
    },
    Write {
        dev: Dev,
        offset: u64,
        len: u64,
        flags: WriteFlags,
    },
    Flush {
        dev: Dev,
    },
    Discard {
        dev: Dev,
        offset: u64,
        len: u64,
    },
}

/// The two devices.
pub struct Sim {
    pub main: Arc<FaultyBackend<MemBackend>>,
    pub spare: Arc<FaultyBackend<Arc<CrashBackend>>>,
    pub crash: Arc<CrashBackend>,
    pub log: Vec<Event>,
    /// Reads of these main blocks fail this many more times, then succeed (transient).
    pub flaky_reads: HashMap<u64, u32>,
}

fn failure(dev: Dev, offset: u64, e: IoError) -> IoFailure {
    IoFailure {
        dev,
        offset,
        errno: e.errno(),
        media: e.is_media(),
    }
}

impl Sim {
    fn dev(&self, dev: Dev) -> &dyn BlockBackend {
        match dev {
            Dev::Main => &*self.main,
            Dev::Spare => &*self.spare,
        }
    }

    /// The spare's events since `from`.
    pub fn spare_events(&self, from: usize) -> Vec<Event> {
        self.log[from..]
            .iter()
            .filter(|e| match e {
                Event::Read { dev, .. }
                | Event::Write { dev, .. }
                | Event::Flush { dev }
                | Event::Discard { dev, .. } => *dev == Dev::Spare,
            })
            .cloned()
            .collect()
    }
}

impl BlockIo for Sim {
    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        self.log.push(Event::Read {
            dev,
            offset,
            len: buf.len() as u64,
        });
        if dev == Dev::Main {
            let first = offset / BS;
            let last = (offset + buf.len() as u64 - 1) / BS;
            for b in first..=last {
                if let Some(n) = self.flaky_reads.get_mut(&b).filter(|n| **n > 0) {
                    *n -= 1;
                    return Err(IoFailure {
                        dev,
                        offset,
                        errno: 5,
                        media: true,
                    });
                }
            }
        }
        self.dev(dev)
            .read_at(offset, buf)
            .map_err(|e| failure(dev, offset, e))
    }

    fn write(
        &mut self,
        dev: Dev,
        offset: u64,
        buf: &[u8],
        flags: WriteFlags,
    ) -> Result<(), IoFailure> {
        self.log.push(Event::Write {
            dev,
            offset,
            len: buf.len() as u64,
            flags,
        });
        let d = self.dev(dev);
        if flags.preflush {
            d.flush().map_err(|e| failure(dev, offset, e))?;
        }
        let r = if flags.fua {
            d.write_at_fua(offset, buf)
        } else {
            d.write_at(offset, buf)
        };
        r.map_err(|e| failure(dev, offset, e))
    }

    fn flush(&mut self, dev: Dev) -> Result<(), IoFailure> {
        self.log.push(Event::Flush { dev });
        self.dev(dev).flush().map_err(|e| failure(dev, 0, e))
    }

    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure> {
        self.log.push(Event::Discard { dev, offset, len });
        let d = self.dev(dev);
        if !d.supports_trim() {
            return Ok(());
        }
        d.trim(offset, len).map_err(|e| failure(dev, offset, e))
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Setup {
    pub main_blocks: u64,
    pub spare_bytes: usize,
    pub pool_blocks: Option<u64>,
    pub journal_blocks: Option<u32>,
    pub read_retries: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            main_blocks: 1024,
            spare_bytes: 4 << 20,
            pool_blocks: None,
            journal_blocks: Some(16),
            read_retries: 2,
        }
    }
}

/// A formatted pair, opened.
pub struct Target {
    pub sim: Sim,
    pub state: State,
    pub shared: Shared,
    pub now_s: u32,
}

pub fn params(main_blocks: u64, spare_bytes: u64) -> OpenParams<'static> {
    OpenParams {
        target_bytes: main_blocks * BS,
        main_dev_bytes: main_blocks * BS,
        spare_dev_bytes: spare_bytes,
        main_dm_uuid: None,
        page_size: 4096,
        main_logical_block: 512,
        spare_logical_block: 512,
        now_ns: 1_000,
    }
}

/// Format a spare as `remap create` does, and open it as the ctr does.
pub fn setup(s: &Setup) -> Target {
    let crash = Arc::new(CrashBackend::new(s.spare_bytes));
    let spare = Arc::new(FaultyBackend::new(crash.clone(), BS));
    let main = Arc::new(FaultyBackend::new(
        MemBackend::new((s.main_blocks * BS) as usize),
        BS,
    ));
    let opts = CreateOptions {
        journal_blocks: s.journal_blocks,
        pool_blocks: s.pool_blocks,
        read_retries: s.read_retries,
        thresholds: HealthThresholds::default(),
        uuid: Some([7; 16]),
        created_ns: Some(1),
        ..CreateOptions::default()
    };
    remap_meta::create(&*spare, s.main_blocks * BS, DeviceIdentity::NONE, &opts)
        .expect("format the spare");
    let mut sim = Sim {
        main,
        spare,
        crash,
        log: Vec::new(),
        flaky_reads: HashMap::new(),
    };
    let (state, shared) = open(
        &mut sim,
        &params(s.main_blocks, s.spare_bytes as u64),
        Options::default(),
    )
    .expect("open the formatted spare");
    Target {
        sim,
        state,
        shared,
        now_s: 1_000,
    }
}

impl Target {
    /// Open the same spare again (a table reload, or after a crash when the spare's
    /// contents were replaced).
    pub fn reopen(&mut self) {
        let main_blocks = self.shared.blocks;
        let spare_bytes = self.sim.spare.size_bytes();
        let (state, shared) = open(
            &mut self.sim,
            &params(main_blocks, spare_bytes),
            Options::default(),
        )
        .expect("reopen");
        self.state = state;
        self.shared = shared;
    }

    /// Byte offset of spare pool block `spare` on the spare device.
    pub fn spare_byte(&self, spare: u64) -> u64 {
        self.shared.pool_offset + spare * BS
    }

    /// Fault-set index of spare pool block `spare` (the spare's faults are in 4 KiB units).
    pub fn spare_fault_block(&self, spare: u64) -> u64 {
        self.spare_byte(spare) / BS
    }

    fn work_queue_write(&mut self, lba: u64, data: &[u8], fua: bool) -> Result<(), SlowError> {
        for (i, chunk) in data.chunks(MAX_SLOW_BYTES as usize).enumerate() {
            let at = lba + (i as u64 * MAX_SLOW_BYTES) / BS;
            self.state
                .serve_write(&self.shared, &mut self.sim, at, chunk, fua, self.now_s)?;
        }
        Ok(())
    }

    fn work_queue_read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), SlowError> {
        for (i, chunk) in buf.chunks_mut(MAX_SLOW_BYTES as usize).enumerate() {
            let at = lba + (i as u64 * MAX_SLOW_BYTES) / BS;
            self.state
                .serve_read(&self.shared, &mut self.sim, at, chunk, self.now_s)?;
        }
        Ok(())
    }

    /// A write of whole blocks as the kernel glue handles the bio: run by run, fast path
    /// first, the slow path for a run that fails with a media error or must move.
    pub fn kwrite(&mut self, lba: u64, data: &[u8]) -> Result<(), i32> {
        self.kwrite_flags(lba, data, false)
    }

    pub fn kwrite_flags(&mut self, lba: u64, data: &[u8], fua: bool) -> Result<(), i32> {
        assert_eq!(data.len() as u64 % BS, 0);
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::PLAIN
        };
        let mut at = lba;
        let mut off = 0usize;
        while off < data.len() {
            let blocks = (data.len() - off) as u64 / BS;
            let (n, fast) = match self.state.route(&self.shared, at, blocks, Op::Write) {
                Route::Main { blocks } => (blocks, Some((Dev::Main, at * BS))),
                Route::Spare { blocks, offset } => (blocks, Some((Dev::Spare, offset))),
                Route::Slow { blocks } => (blocks, None),
                Route::Fail { .. } => return Err(5),
                r => panic!("a write routed to {r:?}"),
            };
            let chunk = &data[off..off + (n * BS) as usize];
            let needs_slow = match fast {
                None => true,
                Some((dev, offset)) => match self.sim.write(dev, offset, chunk, flags) {
                    Ok(()) => false,
                    Err(e) if e.is_media() => true,
                    Err(e) => return Err(e.errno),
                },
            };
            if needs_slow {
                self.work_queue_write(at, chunk, fua)
                    .map_err(|e| e.errno())?;
            }
            at += n;
            off += chunk.len();
        }
        Ok(())
    }

    /// A read of whole blocks as the kernel glue handles the bio.
    pub fn kread(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), i32> {
        assert_eq!(buf.len() as u64 % BS, 0);
        let mut at = lba;
        let mut off = 0usize;
        while off < buf.len() {
            let blocks = (buf.len() - off) as u64 / BS;
            let (n, dev, offset) = match self.state.route(&self.shared, at, blocks, Op::Read) {
                Route::Main { blocks } => (blocks, Dev::Main, at * BS),
                Route::Spare { blocks, offset } => (blocks, Dev::Spare, offset),
                Route::Fail { .. } => return Err(5),
                r => panic!("a read routed to {r:?}"),
            };
            let len = (n * BS) as usize;
            let chunk = &mut buf[off..off + len];
            match self.sim.read(dev, offset, chunk) {
                Ok(()) => {}
                Err(e) if e.is_media() => self.work_queue_read(at, chunk).map_err(|e| e.errno())?,
                Err(e) => return Err(e.errno),
            }
            at += n;
            off += len;
        }
        Ok(())
    }

    /// Read and unwrap.
    pub fn read_vec(&mut self, lba: u64, blocks: u64) -> Vec<u8> {
        let mut v = vec![0u8; (blocks * BS) as usize];
        self.kread(lba, &mut v)
            .unwrap_or_else(|e| panic!("read of {blocks} blocks at {lba}: errno {e}"));
        v
    }

    /// Recover the spare as it would be after a power loss now, keeping no write that was
    /// not yet durable: what a crash is guaranteed to leave.
    pub fn recover_after_crash(&self) -> remap_meta::Recovered {
        let image = self
            .sim
            .crash
            .crash_image(|_| remap_core::backend::crash::Survival::None);
        let dev = MemBackend::from_vec(image);
        remap_meta::recover(&mut remap_meta::io::BackendIo(&dev), dev.size_bytes())
            .expect("the crash image recovers")
    }
}

/// A deterministic pattern for `blocks` blocks starting at `lba`, distinct per `tag`.
pub fn pattern(lba: u64, blocks: u64, tag: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((blocks * BS) as usize);
    for b in lba..lba + blocks {
        for i in 0..BS {
            v.push((b as u8) ^ (i as u8).wrapping_mul(31) ^ tag);
        }
    }
    v
}

/// Every record in copy 0 of the journal ring, from the superblock's start, as the spare
/// holds it now (decoded with remap-meta, not with the target's own state).
pub fn journal_records(t: &Target) -> Vec<remap_core::record::Record> {
    let image = t.sim.crash.current_image();
    let dev = MemBackend::from_vec(image);
    let mut io = remap_meta::io::BackendIo(&dev);
    let copies = remap_meta::recovery::read_superblocks(&mut io).expect("superblocks");
    let (_, sb) = remap_meta::recovery::choose_superblock(&copies).expect("a valid superblock");
    let g = sb.geometry;
    let mut out = Vec::new();
    let mut block = vec![0u8; remap_meta::META_BLOCK];
    for i in 0..g.journal_blocks {
        let pos = (sb.journal_start_position + i) % g.journal_blocks;
        dev.read_at(g.journal_block_offset(0, pos), &mut block)
            .unwrap();
        match remap_meta::journal::JournalBlock::decode(&block, remap_meta::Region::Journal(pos)) {
            Ok(jb) if jb.sequence == sb.journal_start_sequence + u64::from(i) => {
                out.extend(jb.records)
            }
            _ => break,
        }
    }
    out
}
