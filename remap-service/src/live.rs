//! The running service: what the control socket, the metrics endpoint and an embedding
//! program read and start while the device is exported.
//!
//! - the served device itself (its counters, table and settings are live);
//! - [`HealthWindows`] fed every second with the counter totals by a feeder thread, for the
//!   minute/hour/day rates of `remap health --control`;
//! - the exhaustion projection, recomputed when spare use changes (or every minute);
//! - the background scrub: at most one at a time, on its own thread, rate-limited and in
//!   small chunks so that client I/O keeps priority.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use remap_core::clock::{Clock, SystemClock};
use remap_core::store::Settings;
use remap_core::{BlockBackend, Entry, FileBackend, RemapDevice};
use remap_meta::{Superblock, counters};
use serde::{Deserialize, Serialize};

use crate::blocks::{BlockList, BlockRange, OutOfRange};
use crate::budget::{self, BudgetError};
use crate::health::{self, HealthView, Inputs, ProjectionView, Verdict};
use crate::predict::NoProjection;
use crate::scrub::{self, ScrubPlan, ScrubStatus};
use crate::settings::{self, SettingChanges, SettingsError};
use crate::status::{
    BlockSection, LiveSection, LiveSequence, LiveStatus, OwnedDevice, SpareSection, uuid_text,
};
use crate::time::utc;
use crate::transfer::{self, Outcome, Paths};
use crate::window::{Counts, HealthWindows};

/// The device `remap serve` exports: main behind an optional fault injector, spare a file
/// or block device.
pub type ServedDevice = RemapDevice<Arc<dyn BlockBackend>, Arc<FileBackend>>;

/// Why a live map request was refused before any block moved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    #[error("no blocks given")]
    NoBlocks,
    #[error("{requested} blocks requested; one request may name at most {max}")]
    TooMany { requested: u64, max: u64 },
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    /// The blocks need more spare blocks than are free (and no partial move was asked).
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Why a background scrub was not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubStartError {
    #[error("a scrub is already running (at block {cursor} of {end_block}); stop it first")]
    AlreadyRunning { cursor: u64, end_block: u64 },
    #[error("the rate must be above 0 bytes per second")]
    ZeroRate,
    #[error("the server is stopping")]
    Stopping,
    #[error("cannot start the scrub thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The most blocks one control `map` request may name.
pub const MAX_MAP_BLOCKS: u64 = 65_536;
/// Chunk size of the background scrub: small, so a client request waits at most for one
/// such read.
pub const BACKGROUND_CHUNK_BYTES: u64 = 128 << 10;
/// Background scrub rate when the request names none: 16 MiB/s.
pub const DEFAULT_BACKGROUND_RATE: u64 = 16 << 20;
/// How often the feeder samples the counters.
const FEED_INTERVAL: Duration = Duration::from_secs(1);
/// The projection is recomputed at least this often.
const PROJECTION_MAX_AGE: Duration = Duration::from_secs(60);

/// A cached projection and the spare use it was computed for.
type CachedProjection = (u64, u64, Instant, Result<ProjectionView, NoProjection>);

/// The running background scrub, if any.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Everything the operator side of a running server shares: the served device, generic
/// over its main and spare backends.
pub struct Live<M: BlockBackend + 'static, S: BlockBackend + 'static> {
    pub device: Arc<RemapDevice<M, S>>,
    pub main_path: PathBuf,
    pub spare_path: PathBuf,
    pub spare_size: u64,
    /// The superblock as opened (identity, geometry, creation time).
    pub superblock: Superblock,
    started: Instant,
    started_unix_s: u64,
    windows: Mutex<HealthWindows>,
    projection: Mutex<Option<CachedProjection>>,
    scrub_status: Arc<Mutex<ScrubStatus>>,
    scrub: Mutex<Option<Running>>,
    stopping: AtomicBool,
}

impl<M: BlockBackend + 'static, S: BlockBackend + 'static> std::fmt::Debug for Live<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("main", &self.main_path)
            .field("spare", &self.spare_path)
            .finish_non_exhaustive()
    }
}

/// A control `map` or `unmap` request's outcome for one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapResult {
    pub block: u64,
    /// `mapped`, `zeroed` (mapped with zeroes: data unreadable), `already`, `unmapped`
    /// (moved back to main), `unchanged` (not remapped), or `failed`.
    pub outcome: String,
    pub spare_block: Option<u64>,
    pub error: Option<String>,
}

/// The reply to a control `map` or `unmap` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapReply {
    pub results: Vec<MapResult>,
    pub moved: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub requested: u64,
    /// Blocks never tried because an error stopped the run first.
    #[serde(default)]
    pub not_tried: u64,
    /// The error that stopped the run before its end (the pair is in trouble).
    pub stopped_by: Option<String>,
}

impl<M: BlockBackend + 'static, S: BlockBackend + 'static> Live<M, S> {
    pub fn new(
        device: Arc<RemapDevice<M, S>>,
        main_path: PathBuf,
        spare_path: PathBuf,
        spare_size: u64,
        superblock: Superblock,
    ) -> Arc<Live<M, S>> {
        let live = Arc::new(Live {
            device,
            main_path,
            spare_path,
            spare_size,
            superblock,
            started: Instant::now(),
            started_unix_s: SystemClock.now_s(),
            windows: Mutex::new(HealthWindows::default()),
            projection: Mutex::new(None),
            scrub_status: Arc::new(Mutex::new(ScrubStatus::default())),
            scrub: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        live.feed();
        live
    }

    /// Seconds since the server started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Whether the server is stopping: threads that serve the operator side end.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Feed the windows once.
    fn feed(&self) {
        let totals = Counts::from_snapshot(&self.device.stats());
        self.windows.lock().observe(SystemClock.now_ns(), totals);
    }

    /// Start the thread that feeds the windows every second until [`Live::stop`].
    pub fn spawn_feeder(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let live = self.clone();
        std::thread::Builder::new()
            .name("remap-windows".into())
            .spawn(move || {
                while !live.is_stopping() {
                    std::thread::sleep(FEED_INTERVAL);
                    live.feed();
                }
            })
    }

    /// Stop the operator side: the background scrub (its cursor is saved) and the threads
    /// that watch [`Live::is_stopping`].
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.scrub_stop();
    }

    /// The live status: the figures of `remap status`, from the running device.
    pub fn status(&self) -> LiveStatus {
        let d = &self.device;
        let stats = d.stats();
        let settings = d.settings();
        let g = self.superblock.geometry;
        let table_entries = d.with_state(|t, _| t.len() as u64);
        let counters = counters::NAMES
            .iter()
            .zip(counters::from_snapshot(&stats))
            .map(|(name, value)| ((*name).to_string(), value))
            .collect::<BTreeMap<_, _>>();
        let sequence = d.sequence();
        LiveStatus {
            live: LiveSection {
                pid: std::process::id(),
                started: utc(self.started_unix_s),
                uptime_s: self.uptime_s(),
            },
            main: OwnedDevice {
                path: self.main_path.clone(),
                size_bytes: g.main_size,
            },
            spare: OwnedDevice {
                path: self.spare_path.clone(),
                size_bytes: self.spare_size,
            },
            uuid: uuid_text(&self.superblock.uuid),
            created: utc(self.superblock.created_ns / 1_000_000_000),
            main_blocks: d.blocks(),
            geometry: serde_json::to_value(g).unwrap_or_default(),
            spares: SpareSection {
                total: stats.spares_total,
                used: stats.spares_used,
                free: stats.spares_free(),
                retired: stats.spares_retired,
                block_size: g.block_size.bytes(),
                capacity_bytes: g.pool_blocks.saturating_mul(g.block_size.bytes_u64()),
            },
            blocks: BlockSection {
                remapped: stats.remapped_blocks,
                pending: stats.pending_blocks,
                table_entries,
                table_capacity: g.table_capacity,
            },
            health: Verdict::from(&d.health()),
            thresholds: d.thresholds(),
            read_retries: settings.read_retries,
            sequence: LiveSequence {
                newest_durable: sequence,
                journal_next: sequence.saturating_add(1),
            },
            scrub_cursor: settings.scrub_cursor,
            scrub_passes: settings.scrub_passes,
            scrub: self.scrub_status(),
            counters,
            stats: serde_json::to_value(&stats).unwrap_or_default(),
        }
    }

    /// The exhaustion projection, cached while spare use does not change.
    pub fn projection(&self) -> Result<ProjectionView, NoProjection> {
        let stats = self.device.stats();
        let mut cache = self.projection.lock();
        if let Some((used, retired, at, p)) = cache.as_ref()
            && *used == stats.spares_used
            && *retired == stats.spares_retired
            && at.elapsed() < PROJECTION_MAX_AGE
        {
            return p.clone();
        }
        let times = self.device.with_state(|t, _| {
            let entries: Vec<Entry> = t.iter().map(|(_, e)| e).collect();
            health::failure_remap_times(&entries)
        });
        let p = health::projection(&times, &stats, SystemClock.now_s());
        *cache = Some((
            stats.spares_used,
            stats.spares_retired,
            Instant::now(),
            p.clone(),
        ));
        p
    }

    /// The live health report (without SMART, which the client folds in).
    pub fn health(&self) -> HealthView {
        let stats = self.device.stats();
        let thresholds = self.device.thresholds();
        let report = remap_core::health::evaluate(
            &remap_core::health::HealthInputs::from_snapshot(&stats),
            &thresholds,
        );
        let windows = self.windows.lock().clone();
        health::live(
            Inputs {
                stats: &stats,
                report: &report,
                thresholds: &thresholds,
                projection: self.projection(),
            },
            &windows,
            self.uptime_s(),
        )
    }

    /// Move blocks to the spare now, as a map of a pair at rest does. Blocks that fail are
    /// reported in the reply; only a request refused as a whole is an error, among them one
    /// that needs more spare blocks than are free, unless `partial` (then as many move as
    /// fit, the rest are counted as not tried).
    pub fn map(
        &self,
        ranges: &[BlockRange],
        zero_unreadable: bool,
        partial: bool,
    ) -> Result<MapReply, MapError> {
        let list = self.control_list(ranges)?;
        if !partial {
            budget::check_spares(&self.device, &list, &self.spare_path)?;
        }
        let mut results = Vec::new();
        let summary = transfer::map_blocks(
            &*self.device,
            &list,
            zero_unreadable,
            self.paths(),
            &mut |o| {
                results.push(map_result(o));
                ControlFlow::Continue(())
            },
        );
        Ok(reply(results, summary))
    }

    /// Move blocks back to main, verified, as an unmap of a pair at rest does.
    pub fn unmap(&self, ranges: &[BlockRange]) -> Result<MapReply, MapError> {
        let list = self.control_list(ranges)?;
        let mut results = Vec::new();
        let summary = transfer::unmap_blocks(&*self.device, &list, self.paths(), &mut |o| {
            results.push(map_result(o));
            ControlFlow::Continue(())
        });
        Ok(reply(results, summary))
    }

    fn paths(&self) -> Paths<'_> {
        Paths {
            main: &self.main_path,
            spare: &self.spare_path,
        }
    }

    /// The blocks of a control `map` or `unmap`, checked against the limit and the device.
    fn control_list(&self, ranges: &[BlockRange]) -> Result<BlockList, MapError> {
        let list = BlockList::new(ranges);
        if list.is_empty() {
            return Err(MapError::NoBlocks);
        }
        if list.len() > MAX_MAP_BLOCKS {
            return Err(MapError::TooMany {
                requested: list.len(),
                max: MAX_MAP_BLOCKS,
            });
        }
        let d = &self.device;
        list.check_within(&self.main_path, d.blocks(), d.block_size().bytes())?;
        Ok(list)
    }

    /// Start a background scrub from the persisted cursor to the end of the device, at
    /// `rate` bytes per second (default [`DEFAULT_BACKGROUND_RATE`]).
    pub fn scrub_start(&self, rate: Option<u64>) -> Result<ScrubStatus, ScrubStartError> {
        if rate == Some(0) {
            return Err(ScrubStartError::ZeroRate);
        }
        let mut slot = self.scrub.lock();
        if let Some(r) = slot.as_ref()
            && !r.thread.is_finished()
        {
            let s = self.scrub_status.lock().clone();
            return Err(ScrubStartError::AlreadyRunning {
                cursor: s.cursor,
                end_block: s.end_block,
            });
        }
        if let Some(old) = slot.take() {
            let _ = old.thread.join();
        }
        if self.is_stopping() {
            return Err(ScrubStartError::Stopping);
        }
        let d = &self.device;
        let rate = rate.unwrap_or(DEFAULT_BACKGROUND_RATE);
        let block_size = d.block_size().bytes_u64();
        let plan = ScrubPlan {
            first: d.settings().scrub_cursor.min(d.blocks()),
            end: d.blocks(),
            resumable: true,
            rate_bytes_per_s: Some(rate),
            chunk_blocks: ScrubPlan::chunk_blocks_for(
                block_size,
                Some(rate),
                BACKGROUND_CHUNK_BYTES,
            ),
            save_interval: scrub::SAVE_INTERVAL,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let device = d.clone();
        let status = self.scrub_status.clone();
        let thread_stop = stop.clone();
        // Shown as running from the moment the request is answered.
        {
            let mut s = status.lock();
            s.state = scrub::ScrubState::Running;
            s.first_block = plan.first;
            s.end_block = plan.end;
            s.cursor = plan.first;
        }
        let thread = std::thread::Builder::new()
            .name("remap-scrub".into())
            .spawn(move || {
                if let Err(e) = scrub::run(&*device, &plan, &thread_stop, &status, &mut |_| {}) {
                    tracing::error!(error = %e, "background scrub failed");
                }
            })
            .map_err(ScrubStartError::Thread)?;
        *slot = Some(Running { stop, thread });
        tracing::info!(rate, "background scrub started");
        Ok(self.scrub_status.lock().clone())
    }

    /// Stop the background scrub, if one runs, and wait until its cursor is saved.
    pub fn scrub_stop(&self) -> ScrubStatus {
        let running = self.scrub.lock().take();
        if let Some(r) = running {
            r.stop.store(true, Ordering::Relaxed);
            if r.thread.join().is_err() {
                tracing::error!("the scrub thread panicked");
            }
        }
        self.scrub_status()
    }

    /// The background scrub's progress (the persisted cursor and passes if none ran yet).
    pub fn scrub_status(&self) -> ScrubStatus {
        let mut s = self.scrub_status.lock().clone();
        if s.state == scrub::ScrubState::Idle {
            let settings = self.device.settings();
            s.saved_cursor = settings.scrub_cursor;
            s.cursor = settings.scrub_cursor;
            s.passes = settings.scrub_passes;
            s.end_block = self.device.blocks();
        }
        s
    }

    /// Change the persisted settings; the device applies them at once.
    pub fn set(&self, changes: &SettingChanges) -> Result<Settings, SettingsError> {
        settings::update(&self.device, changes, &self.spare_path)
    }
}

/// One block's outcome of a control `map` or `unmap`, for the reply.
fn map_result(o: &Outcome) -> MapResult {
    let (block, outcome, spare_block, error) = match o {
        Outcome::Mapped { lba, spare, zeroed } => {
            let what = if *zeroed { "zeroed" } else { "mapped" };
            (*lba, what, Some(*spare), None)
        }
        Outcome::AlreadyMapped { lba, spare } => (*lba, "already", Some(*spare), None),
        Outcome::Unmapped { lba, spare } => (*lba, "unmapped", Some(*spare), None),
        Outcome::AlreadyOnMain { lba } => (*lba, "unchanged", None, None),
        Outcome::Failed(e) => (e.lba, "failed", None, Some(e.to_string())),
    };
    MapResult {
        block,
        outcome: outcome.to_string(),
        spare_block,
        error,
    }
}

/// The reply to a control `map` or `unmap`.
fn reply(results: Vec<MapResult>, summary: transfer::Summary) -> MapReply {
    MapReply {
        results,
        moved: summary.changed,
        unchanged: summary.unchanged,
        failed: summary.failed,
        requested: summary.requested,
        not_tried: summary.not_tried,
        stopped_by: summary.stopped_by.map(|e| e.to_string()),
    }
}
