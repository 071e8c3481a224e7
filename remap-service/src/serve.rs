//! Serving a pair over NBD with its operator side: [`serve`] opens the pair as a remapping
//! device (optionally behind a fault injector), exports it with `remap-nbd`, starts the
//! health-window feeder, the control socket and the metrics endpoint, and returns a
//! [`Serving`] handle. [`Serving::stop`] (or a [`Stopper`] from another thread, such as a
//! signal handler, followed by [`Serving::wait`]) stops accepting, lets requests in flight
//! finish, stops a background scrub (saving its cursor), flushes, checkpoints, and returns
//! a [`ServeSummary`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use remap_core::backend::FaultyBackend;
use remap_core::backend::faulty::InjectedFaults;
use remap_core::{BlockBackend, BlockSize, DeviceError, FileBackend, StatsSnapshot};
use remap_nbd::{BlockStateSource, Server, ServerConfig, ServerError, ShutdownHandle};

/// Where to listen (re-exported so that an embedder needs no `remap-nbd` dependency).
pub use remap_nbd::ListenAddr;

use crate::blocks::{BlockList, OutOfRange};
use crate::control::ControlError;
use crate::devices::{Pair, PairError};
use crate::live::{Live, ServedDevice};
use crate::metrics::MetricsError;
use crate::operator;

/// The most blocks the fault lists may name together: each is kept in memory.
pub const MAX_FAULT_BLOCKS: u64 = 1 << 20;

/// Faults injected on the main device, for testers: reproducible faulty devices.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Blocks of main that fail every read.
    pub fail_read: BlockList,
    /// Blocks of main that fail every write.
    pub fail_write: BlockList,
    /// Fraction (0 to 1) of main reads and writes that fail at random.
    pub flaky_rate: f64,
    /// Seed for the random failures: the same seed fails the same requests.
    pub seed: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            fail_read: BlockList::new(&[]),
            fail_write: BlockList::new(&[]),
            flaky_rate: 0.0,
            seed: 0,
        }
    }
}

impl FaultPlan {
    /// Whether anything is injected.
    pub fn is_empty(&self) -> bool {
        self.fail_read.is_empty() && self.fail_write.is_empty() && self.flaky_rate <= 0.0
    }
}

/// How to serve a pair.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// Addresses to listen on; empty: `remap-nbd`'s default (127.0.0.1:10809).
    pub listen: Vec<ListenAddr>,
    /// The export's name.
    pub name: String,
    /// The export's description; `None`: one naming the pair.
    pub description: Option<String>,
    /// Refuse client writes.
    pub read_only: bool,
    pub faults: FaultPlan,
    /// Where to put the control socket, if anywhere.
    pub control: Option<PathBuf>,
    /// Where to serve metrics, if anywhere (port 0 picks a free one).
    pub metrics: Option<SocketAddr>,
    /// Format the spare with the defaults first if it holds no remap metadata.
    pub create_if_blank: bool,
    /// How many clients, in which phase, and for how long (the NBD server's limits).
    pub connection_limits: ConnectionLimits,
}

/// The NBD server's limits on connections that an operator may want to set; the defaults
/// are `remap-nbd`'s (`ServerConfig::default()`), defined there once. See
/// `remap-nbd/README.md` for what each protects against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Clients in the transmission phase at once.
    pub max_connections: usize,
    /// Connections greeted that have sent nothing yet (held without a thread).
    pub max_waiting: usize,
    /// Connections negotiating at once (a thread each).
    pub max_negotiating: usize,
    /// From accept to the end of negotiation; then the connection is closed.
    pub handshake_timeout: Duration,
    /// One summary line of refused connections per interval.
    pub refusal_log_interval: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        let nbd = ServerConfig::default();
        ConnectionLimits {
            max_connections: nbd.max_connections,
            max_waiting: nbd.max_waiting,
            max_negotiating: nbd.max_negotiating,
            handshake_timeout: nbd.handshake_timeout,
            refusal_log_interval: nbd.refusal_log_interval,
        }
    }
}

/// Why serving failed to start or ended in failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Pair(#[from] PairError),

    /// A fault list names a block beyond the main device.
    #[error(transparent)]
    FaultOutOfRange(#[from] OutOfRange),

    /// The fault lists name more blocks than [`MAX_FAULT_BLOCKS`].
    #[error("the fault lists name {blocks} blocks together; at most {max} may be injected")]
    TooManyFaultBlocks { blocks: u64, max: u64 },

    /// The NBD server could not listen (the message names the address).
    #[error("{0}")]
    Listen(#[source] ServerError),

    /// The NBD server failed while serving.
    #[error("{}: cannot serve: {source}", path.display())]
    Nbd {
        path: PathBuf,
        #[source]
        source: ServerError,
    },

    #[error(transparent)]
    Control(#[from] ControlError),

    #[error(transparent)]
    Metrics(#[from] MetricsError),

    /// A helper thread of the server could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The final flush and checkpoint failed. What was made durable is in the journal.
    #[error("{}: flush and checkpoint at exit failed: {source}", path.display())]
    Shutdown {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },
}

/// Stops a [`Serving`] from another thread (a signal handler): the server stops accepting
/// and [`Serving::wait`] returns once everything is flushed.
#[derive(Debug, Clone)]
pub struct Stopper(ShutdownHandle);

impl Stopper {
    pub fn stop(&self) {
        self.0.shutdown();
    }
}

/// What a served session did.
#[derive(Debug, Clone)]
pub struct ServeSummary {
    /// What the NBD server did.
    pub nbd: remap_nbd::ServeSummary,
    /// The device's counters when serving started and after the final checkpoint.
    pub before: StatsSnapshot,
    pub after: StatsSnapshot,
    /// Faults injected, when a fault plan was given.
    pub injected: Option<InjectedFaults>,
    /// Remapped and pending blocks at the end, ascending.
    pub remapped: Vec<u64>,
    pub pending: Vec<u64>,
}

/// A served pair, running.
pub struct Serving {
    live: Arc<Live<Arc<dyn BlockBackend>, Arc<FileBackend>>>,
    server: JoinHandle<Result<remap_nbd::ServeSummary, ServerError>>,
    stopper: Stopper,
    helpers: Vec<JoinHandle<()>>,
    before: StatsSnapshot,
    /// The metadata sequence at open: unchanged at exit (and no I/O counted) means nothing
    /// to checkpoint.
    sequence_at_open: u64,
    faulty: Option<Arc<FaultyBackend<FileBackend>>>,
    listening: Vec<ListenAddr>,
    control: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    formatted: bool,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("live", &self.live)
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

/// Open `pair` as a remapping device and serve it as `config` says. Returns once every
/// listener, the control socket and the metrics endpoint are up.
pub fn serve(pair: Pair, config: ServeConfig) -> Result<Serving, ServeError> {
    let faults = &config.faults;
    let fault_blocks = faults
        .fail_read
        .len()
        .saturating_add(faults.fail_write.len());
    if fault_blocks > MAX_FAULT_BLOCKS {
        return Err(ServeError::TooManyFaultBlocks {
            blocks: fault_blocks,
            max: MAX_FAULT_BLOCKS,
        });
    }
    let formatted = config.create_if_blank && pair.format_if_blank()?;
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let spare_size = pair.spare.size_bytes();
    // Fault lists are checked against the device before anything starts. Without a valid
    // superblock, opening the device below reports why.
    let block_size = match pair.superblock()? {
        Some(sb) => {
            let g = sb.geometry;
            for list in [&faults.fail_read, &faults.fail_write] {
                list.check_within(&main_path, g.main_blocks(), g.block_size.bytes())?;
            }
            g.block_size
        }
        None => BlockSize::DEFAULT,
    };
    let mut faulty: Option<Arc<FaultyBackend<FileBackend>>> = None;
    let opened = pair.into_device_over(|main| -> Arc<dyn BlockBackend> {
        if faults.is_empty() {
            return Arc::new(main);
        }
        let f = Arc::new(FaultyBackend::new(main, block_size.bytes_u64()));
        f.fail_reads(faults.fail_read.iter());
        f.fail_writes(faults.fail_write.iter());
        f.set_transient((faults.flaky_rate * 1e6).round() as u32, faults.seed);
        faulty = Some(f.clone());
        f
    })?;
    let superblock = opened.superblock;
    let device: Arc<ServedDevice> = Arc::new(opened.device);
    let before = device.stats();
    let sequence_at_open = device.sequence();

    let mut nbd = ServerConfig {
        name: config.name.clone(),
        description: config.description.clone().unwrap_or_else(|| {
            format!(
                "remap of {} (spare {})",
                main_path.display(),
                spare_path.display()
            )
        }),
        read_only: config.read_only,
        block_size: device.block_size().bytes(),
        max_connections: config.connection_limits.max_connections,
        max_waiting: config.connection_limits.max_waiting,
        max_negotiating: config.connection_limits.max_negotiating,
        handshake_timeout: config.connection_limits.handshake_timeout,
        refusal_log_interval: config.connection_limits.refusal_log_interval,
        ..ServerConfig::default()
    };
    if !config.listen.is_empty() {
        nbd.listen = config.listen.clone();
    }
    let export: Arc<dyn BlockBackend> = device.clone();
    let state: Arc<dyn BlockStateSource> = device.clone();
    // A listen failure is about the address, not about MAIN: its message names it.
    let server = Server::new(export, Some(state), nbd).map_err(ServeError::Listen)?;
    let stopper = Stopper(server.shutdown_handle());
    let listening = server.local_addrs().to_vec();

    let live = Live::new(
        device,
        main_path.clone(),
        spare_path,
        spare_size,
        superblock,
    );
    let operator::OperatorSide {
        threads: helpers,
        control,
        metrics,
    } = operator::start(
        &live,
        config.control.as_deref(),
        config.metrics,
        |what, source| ServeError::Thread { what, source },
    )
    .inspect_err(|_| live.stop())?;
    let server = std::thread::Builder::new()
        .name("remap-nbd".into())
        .spawn(move || server.run())
        .map_err(|source| {
            live.stop();
            ServeError::Thread {
                what: "NBD server",
                source,
            }
        })?;
    Ok(Serving {
        live,
        server,
        stopper,
        helpers,
        before,
        sequence_at_open,
        faulty,
        listening,
        control,
        metrics,
        formatted,
    })
}

impl Serving {
    /// The running service: status, health, map, scrub, settings.
    pub fn live(&self) -> &Arc<Live<Arc<dyn BlockBackend>, Arc<FileBackend>>> {
        &self.live
    }

    /// Where NBD clients connect (ports resolved).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.listening
    }

    /// The control socket, if one was asked for.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_deref()
    }

    /// The metrics address (port resolved), if one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Whether [`serve`] formatted a blank spare first.
    pub fn formatted(&self) -> bool {
        self.formatted
    }

    /// The injector's lists, when faults are injected: (blocks failing reads, writes).
    pub fn fault_blocks(&self) -> Option<(usize, usize)> {
        self.faulty
            .as_ref()
            .map(|f| (f.read_failing().len(), f.write_failing().len()))
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stop and wait for the clean end.
    pub fn stop(self) -> Result<ServeSummary, ServeError> {
        self.stopper.stop();
        self.wait()
    }

    /// Wait until a [`Stopper`] stops the server; then stop the operator side (the
    /// background scrub saves its cursor, control commands in progress finish, the socket
    /// file goes), flush and checkpoint.
    pub fn wait(self) -> Result<ServeSummary, ServeError> {
        let main_path = self.live.main_path.clone();
        let served = match self.server.join() {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("the NBD server thread panicked");
                Ok(remap_nbd::ServeSummary::default())
            }
        };
        self.live.stop();
        for h in self.helpers {
            if h.join().is_err() {
                tracing::error!("a helper thread of the server panicked");
            }
        }
        // End with a clean shutdown of the device (flush + checkpoint), unless nothing
        // changed since the open (no metadata change, no I/O counted but the server's own
        // final flush): then nothing is written.
        let device = &self.live.device;
        let idle = {
            let mut now = device.stats();
            now.flushes = self.before.flushes;
            now.latency = self.before.latency.clone();
            device.sequence() == self.sequence_at_open && now == self.before
        };
        let shutdown = if idle { Ok(()) } else { device.shutdown() };
        let nbd = served.map_err(|source| ServeError::Nbd {
            path: main_path,
            source,
        })?;
        shutdown.map_err(|source| ServeError::Shutdown {
            path: self.live.spare_path.clone(),
            source,
        })?;
        let entries = device.entries(0, u64::MAX);
        let blocks = |remapped: bool| -> Vec<u64> {
            entries
                .iter()
                .filter(|(_, e)| e.is_remapped() == remapped)
                .map(|(lba, _)| *lba)
                .collect()
        };
        Ok(ServeSummary {
            nbd,
            before: self.before,
            after: device.stats(),
            injected: self.faulty.as_ref().map(|f| f.injected()),
            remapped: blocks(true),
            pending: blocks(false),
        })
    }
}
