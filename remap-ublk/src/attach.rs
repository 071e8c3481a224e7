//! `attach`: a pair served as `/dev/ublkbN`. The pair is opened as a remapping device
//! through `remap-service` (as `remap serve` does), with the same operator side (health
//! windows, control socket, metrics); the ublk device is added (or, with `recover`, taken
//! over from a daemon that died) and served by one thread per queue, each request through
//! [`crate::request`].
//!
//! Lifetime: [`attach`] returns an [`Attached`] handle once the block device exists.
//! [`Stopper::stop`] (a signal, `remap detach`) stops the device: the kernel drains the
//! requests in flight (the queues keep serving until then), the queues end, the device is
//! deleted, then the pair is flushed and checkpointed ([`Attached::wait`]).
//!
//! The device is added with `UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE`: if the
//! daemon dies (`kill -9`), the kernel keeps `/dev/ublkbN`, holds new requests, and
//! re-issues those in flight to the daemon that recovers it; block writes are idempotent,
//! so re-issuing is safe, and every write acknowledged before the death is on the backing
//! devices already (or, for a remap, in the journal, made durable before the reply).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkFlags, UblkIORes, sys};
use remap_core::{BlockBackend, StatsSnapshot};
use remap_service::Live;
use remap_service::devices::Pair;
use remap_service::live::ServedDevice;
use remap_service::operator;

use crate::error::{AttachError, describe};
use crate::registry::{self, TARGET_NAME, TargetData};
use crate::request::{self, Request};
use crate::support;

/// The largest request, in bytes: the kernel splits larger ones. Each queue keeps one
/// buffer of this size per tag, so the daemon's buffers are bounded by
/// `queues * depth * MAX_IO_BYTES`.
pub const MAX_IO_BYTES: u32 = 256 << 10;
/// Queues and depth limits (the driver's own: `UBLK_MAX_NR_QUEUES`, `UBLK_MAX_QUEUE_DEPTH`).
pub const MAX_QUEUES: u16 = 16;
pub const MAX_DEPTH: u16 = 4096;
/// Default depth of each queue.
pub const DEFAULT_DEPTH: u16 = 64;

/// How to attach.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// Hardware queues, each served by one thread (1 to [`MAX_QUEUES`]).
    pub queues: u16,
    /// Requests each queue holds at once (1 to [`MAX_DEPTH`]).
    pub depth: u16,
    /// Where to put the control socket, if anywhere.
    pub control: Option<PathBuf>,
    /// Where to serve metrics, if anywhere (port 0 picks a free one).
    pub metrics: Option<SocketAddr>,
    /// Only take over the device a killed daemon of this pair left (an error if there is
    /// none). Without it such a device is taken over too, and a new one added otherwise.
    pub recover: bool,
}

impl Default for AttachConfig {
    fn default() -> Self {
        AttachConfig {
            queues: default_queues(),
            depth: DEFAULT_DEPTH,
            control: None,
            metrics: None,
            recover: false,
        }
    }
}

/// One queue per CPU, up to 4: each queue thread serves its requests one after another.
pub fn default_queues() -> u16 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4) as u16)
        .unwrap_or(1)
}

/// Stops an [`Attached`] from another thread (a signal handler).
#[derive(Debug, Clone, Default)]
pub struct Stopper(Arc<(Mutex<bool>, Condvar)>);

impl Stopper {
    pub fn stop(&self) {
        let (lock, cond) = &*self.0;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }

    /// Wait up to `timeout`; whether a stop was asked.
    fn wait(&self, timeout: Duration) -> bool {
        let (lock, cond) = &*self.0;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cond
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// What is attached where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachedInfo {
    /// `/dev/ublkbN`.
    pub device: PathBuf,
    pub id: u32,
    pub main: PathBuf,
    pub spare: PathBuf,
    pub block_size: u32,
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    /// Whether an orphaned device was taken over (`--recover`).
    pub recovered: bool,
    /// Whether `PR_SET_IO_FLUSHER` took effect (it needs `CAP_SYS_RESOURCE`).
    pub io_flusher: bool,
    pub control: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
}

/// What an attached session did.
#[derive(Debug, Clone)]
pub struct AttachSummary {
    pub info: AttachedInfo,
    /// The device's counters when serving started and after the final checkpoint.
    pub before: StatsSnapshot,
    pub after: StatsSnapshot,
}

/// A pair attached as a ublk device, being served.
pub struct Attached {
    info: AttachedInfo,
    live: Arc<Live<Arc<dyn BlockBackend>, Arc<remap_core::FileBackend>>>,
    stopper: Stopper,
    daemon: JoinHandle<Result<(), AttachError>>,
    helpers: Vec<JoinHandle<()>>,
    before: StatsSnapshot,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Attached {
    pub fn info(&self) -> &AttachedInfo {
        &self.info
    }

    /// The running service: status, health, map, scrub, settings.
    pub fn live(&self) -> &Arc<Live<Arc<dyn BlockBackend>, Arc<remap_core::FileBackend>>> {
        &self.live
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Wait until stopped (or the device is deleted from outside); then the queues have
    /// drained and the device is gone: stop the operator side, flush and checkpoint.
    pub fn wait(self) -> Result<AttachSummary, AttachError> {
        let served = self.daemon.join().unwrap_or_else(|_| {
            tracing::error!("the ublk daemon thread panicked");
            Ok(())
        });
        self.live.stop();
        for h in self.helpers {
            if h.join().is_err() {
                tracing::error!("a helper thread of the daemon panicked");
            }
        }
        let device = &self.live.device;
        let shutdown = device.shutdown();
        served?;
        shutdown.map_err(|source| AttachError::Shutdown {
            path: self.live.spare_path.clone(),
            source,
        })?;
        Ok(AttachSummary {
            info: self.info,
            before: self.before,
            after: device.stats(),
        })
    }
}

/// Open `pair`, add (or recover) its ublk device and serve it. Returns once
/// `/dev/ublkbN` exists. Refuses before touching the pair when the kernel has no ublk.
pub fn attach(pair: Pair, config: &AttachConfig) -> Result<Attached, AttachError> {
    support::check_kernel()?;
    let io_flusher = set_io_flusher();
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    // A device this pair's killed daemon left is resumed, never doubled: with `recover`
    // it must exist; without, it is taken over if it does (a systemd restart).
    let orphan = match find_orphan(&main_path) {
        Ok(found) => Some(found),
        Err(e) if config.recover => return Err(e),
        Err(_) => None,
    };
    if let Some(o) = &orphan {
        tracing::info!("resuming /dev/ublkb{} left by a daemon that died", o.id);
    }
    let served = open_served(pair, config)?;
    let device = served.live.device.clone();
    let (queues, depth) = match &orphan {
        Some(o) => (o.queues, o.depth),
        None => (config.queues, config.depth),
    };
    let plan = DaemonPlan {
        device: device.clone(),
        data: TargetData {
            main: main_path.clone(),
            spare: spare_path.clone(),
            block_size: device.block_size().bytes(),
        },
        recover_id: orphan.as_ref().map(|o| o.id),
        queues,
        depth,
    };
    let stopper = Stopper::default();
    let (daemon, id) = match start_daemon(plan, &main_path, &stopper) {
        Ok(started) => started,
        Err(e) => {
            served.live.stop();
            for h in served.helpers {
                let _ = h.join();
            }
            return Err(e);
        }
    };
    let info = AttachedInfo {
        device: PathBuf::from(format!("/dev/ublkb{id}")),
        id,
        main: main_path,
        spare: spare_path,
        block_size: device.block_size().bytes(),
        size_bytes: device.size_bytes(),
        queues,
        depth,
        recovered: orphan.is_some(),
        io_flusher,
        control: served.control,
        metrics: served.metrics,
    };
    Ok(Attached {
        info,
        live: served.live,
        stopper,
        daemon,
        helpers: served.helpers,
        before: served.before,
    })
}

/// The pair opened as a remapping device, with its operator side running.
struct Served {
    live: Arc<Live<Arc<dyn BlockBackend>, Arc<remap_core::FileBackend>>>,
    helpers: Vec<JoinHandle<()>>,
    control: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    before: StatsSnapshot,
}

fn open_served(pair: Pair, config: &AttachConfig) -> Result<Served, AttachError> {
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let spare_size = pair.spare.size_bytes();
    let opened = pair.into_device_over(|main| -> Arc<dyn BlockBackend> { Arc::new(main) })?;
    let superblock = opened.superblock;
    let device: Arc<ServedDevice> = Arc::new(opened.device);
    let before = device.stats();
    let live = Live::new(device, main_path, spare_path, spare_size, superblock);
    // The operator side, as `remap serve` has it.
    let operator::OperatorSide {
        threads: helpers,
        control,
        metrics,
    } = operator::start(
        &live,
        config.control.as_deref(),
        config.metrics,
        |what, source| AttachError::Thread { what, source },
    )
    .inspect_err(|_| live.stop())?;
    Ok(Served {
        live,
        helpers,
        control,
        metrics,
        before,
    })
}

/// Start the daemon thread; returns it and the device id once the device has started, or
/// why it did not.
fn start_daemon(
    plan: DaemonPlan,
    main: &std::path::Path,
    stopper: &Stopper,
) -> Result<(JoinHandle<Result<(), AttachError>>, u32), AttachError> {
    let (started_tx, started_rx) = mpsc::channel();
    let daemon = {
        let stopper = stopper.clone();
        let main = main.to_path_buf();
        std::thread::Builder::new()
            .name("remap-ublk".into())
            .spawn(move || run_daemon(plan, &main, stopper, started_tx))
            .map_err(|source| AttachError::Thread {
                what: "ublk daemon",
                source,
            })?
    };
    match started_rx.recv() {
        Ok(id) => Ok((daemon, id)),
        // The daemon ended before the device started: its result says why.
        Err(_) => {
            daemon.join().unwrap_or(Ok(()))?;
            Err(AttachError::Ublk {
                path: main.to_path_buf(),
                what: "start",
                reason: "the daemon ended before the device started".into(),
            })
        }
    }
}

/// The daemon serves I/O that memory reclaim may wait on: allocations it makes must not
/// recurse into writeback of its own device (`PR_SET_IO_FLUSHER`).
fn set_io_flusher() -> bool {
    match rustix::process::configure_io_flusher_behavior(true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "PR_SET_IO_FLUSHER failed ({e}): under memory pressure the device may stall"
            );
            false
        }
    }
}

/// The device a killed `remap attach` of `main` left, waiting for a daemon.
fn find_orphan(main: &std::path::Path) -> Result<registry::UblkDevice, AttachError> {
    let all = registry::devices();
    let ours = all
        .iter()
        .find(|d| d.target.as_deref() == Some(TARGET_NAME) && d.serves(main));
    match ours {
        Some(d) if d.awaits_recovery() => Ok(d.clone()),
        Some(d) => Err(AttachError::StillServed {
            path: main.to_path_buf(),
            id: d.id,
            pid: d.daemon_pid,
        }),
        None => Err(AttachError::NothingToRecover {
            path: main.to_path_buf(),
            found: all
                .iter()
                .map(|d| format!("ublkb{} {}", d.id, d.state_name()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What the daemon thread needs.
struct DaemonPlan {
    device: Arc<ServedDevice>,
    data: TargetData,
    recover_id: Option<u32>,
    queues: u16,
    depth: u16,
}

/// The daemon thread: everything ublk lives here (libublk's control ring is per thread).
/// Sends the device id once started; returns when the device is stopped.
fn run_daemon(
    plan: DaemonPlan,
    main: &std::path::Path,
    stopper: Stopper,
    started: mpsc::Sender<u32>,
) -> Result<(), AttachError> {
    let ctrl = build_ctrl(&plan, main)?;

    let device = plan.device.clone();
    let data = plan.data.clone();
    let tgt_init = move |dev: &mut UblkDev| {
        set_params(dev, &device);
        dev.set_target_json(serde_json::to_value(&data).unwrap_or_default());
        Ok(())
    };
    let device = plan.device.clone();
    let queue_fn = move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &device);
    let device_fn = move |ctrl: &UblkCtrl| {
        let id = ctrl.dev_info().dev_id;
        let _ = started.send(id);
        let block = format!("/sys/block/ublkb{id}");
        loop {
            if stopper.wait(Duration::from_secs(1)) {
                tracing::info!("stopping /dev/ublkb{id}: draining requests in flight");
                if let Err(e) = ctrl.kill_dev() {
                    tracing::warn!("stopping /dev/ublkb{id}: {}", describe(&e));
                }
                break;
            }
            if !std::path::Path::new(&block).exists() {
                tracing::warn!("/dev/ublkb{id} was removed from outside");
                break;
            }
        }
    };
    let served = ctrl
        .run_target(tgt_init, queue_fn, device_fn)
        .map(|_| ())
        .map_err(ublk_error(main, "serve"));
    // Remove the device (a recovered control does not on drop); gone already is fine.
    let _ = ctrl.del_dev();
    served
}

/// Add the device, or take over the one `plan.recover_id` names.
fn build_ctrl(plan: &DaemonPlan, main: &std::path::Path) -> Result<UblkCtrl, AttachError> {
    let ublk_err = |what| ublk_error(main, what);
    let (id, dev_flags) = match plan.recover_id {
        Some(id) => {
            let old = UblkCtrl::new_simple(id as i32).map_err(ublk_err("open for recovery"))?;
            old.start_user_recover()
                .map_err(ublk_err("start of user recovery"))?;
            (id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        }
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id)
        .nr_queues(plan.queues)
        .depth(plan.depth)
        .io_buf_bytes(MAX_IO_BYTES)
        .ctrl_flags(u64::from(
            sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE,
        ))
        .dev_flags(dev_flags)
        .build()
        .map_err(ublk_err(if plan.recover_id.is_some() {
            "recovery"
        } else {
            "add"
        }))
}

/// A failed ublk command, as an error naming the main device.
fn ublk_error(
    main: &std::path::Path,
    what: &'static str,
) -> impl FnOnce(libublk::UblkError) -> AttachError + use<> {
    let path = main.to_path_buf();
    move |e| AttachError::Ublk {
        path,
        what,
        reason: describe(&e),
    }
}

/// The device's limits as the block layer sees them: the logical block size is the remap
/// block size (so no request is smaller than a block), a volatile cache (FLUSH reaches
/// us) with FUA, discard and write-zeroes in whole blocks when the engine offers them.
fn set_params(dev: &mut UblkDev, device: &ServedDevice) {
    let block = device.block_size().bytes();
    let shift = block.trailing_zeros() as u8;
    let size = device.size_bytes();
    let max_sectors = dev.dev_info.max_io_buf_bytes >> 9;
    dev.tgt.dev_size = size;
    let mut params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: shift,
            physical_bs_shift: shift,
            io_opt_shift: shift,
            io_min_shift: shift,
            max_sectors,
            dev_sectors: size >> 9,
            ..Default::default()
        },
        ..Default::default()
    };
    if device.supports_trim() || device.supports_write_zeroes() {
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.discard = sys::ublk_param_discard {
            discard_granularity: block,
            max_discard_sectors: if device.supports_trim() {
                max_sectors
            } else {
                0
            },
            max_write_zeroes_sectors: if device.supports_write_zeroes() {
                max_sectors
            } else {
                0
            },
            max_discard_segments: 1,
            ..Default::default()
        };
    }
    dev.tgt.params = params;
}

/// One queue: a buffer per tag, each request served in turn through the engine.
fn serve_queue(qid: u16, dev: &UblkDev, device: &Arc<ServedDevice>) {
    let mut bufs = dev.alloc_queue_io_bufs();
    let queue = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("ublk queue {qid}: cannot start: {}", describe(&e));
            return;
        }
    };
    let handler = |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let iod = q.get_iod(tag);
        let req = Request::decode(iod.op_flags, iod.start_sector, iod.nr_sectors);
        let Some(buf) = bufs.get_mut(usize::from(tag)) else {
            tracing::error!("ublk queue {qid}: tag {tag} beyond the queue depth");
            return;
        };
        let res = request::serve(&**device, req, buf.as_mut_slice());
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            tracing::error!(
                "ublk queue {qid}: tag {tag}: cannot complete: {}",
                describe(&e)
            );
        }
    };
    queue.wait_and_handle_io(handler);
}
