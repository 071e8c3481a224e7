//! The server: listeners (TCP and Unix), one thread per connection (plus its workers),
//! connection limits, and graceful shutdown.
//!
//! ```no_run
//! use std::sync::Arc;
//! use remap_core::MemBackend;
//! use remap_nbd::{Server, ServerConfig};
//!
//! let disk = Arc::new(MemBackend::new(64 << 20));
//! let server = Server::new(disk, None, ServerConfig::default())?;
//! println!("serving on {}", server.local_addrs()[0]);
//! let stop = server.shutdown_handle();
//! // elsewhere, e.g. on SIGTERM: stop.shutdown();
//! let summary = server.run()?;
//! println!("{} connections, {} requests", summary.connections, summary.requests);
//! # Ok::<(), remap_nbd::ServerError>(())
//! ```

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use remap_core::BlockBackend;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::admission::{Slots, Waiting, WaitingPool};
use crate::block_status::BlockStateSource;
use crate::buffers::BufferPool;
use crate::error::{HandshakeError, ServerError};
use crate::export::{BlockSizes, Export, check_wire_string};
use crate::handshake;
use crate::input::Input;
use crate::refusals::{Refusal, RefusalLog};
use crate::socket::{Socket, SocketReader};
use crate::transmission::{Connection, End, Limits};

/// The IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// Bytes a connection's reader buffers from the socket (several small requests per `read`).
const READ_BUFFER: usize = 64 * 1024;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A Unix socket path. A stale socket file (nobody listening) is replaced; the file is
    /// removed when the server stops.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "nbd://{a}"),
            ListenAddr::Unix(p) => write!(f, "nbd+unix:///?socket={}", p.display()),
        }
    }
}

/// How to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Addresses to listen on (at least one). Port 0 picks a free port; see
    /// [`Server::local_addrs`].
    pub listen: Vec<ListenAddr>,
    /// The export's name. Clients asking for the empty (default) name get it too.
    pub name: String,
    /// A description shown by `nbdinfo` and `NBD_OPT_LIST`.
    pub description: String,
    /// Refuse writes, trims and write-zeroes with `EPERM`.
    pub read_only: bool,
    /// The export's natural block: advertised as the minimum block size (a power of two up
    /// to 64 KiB; 4096 for a remap device, 512 for a plain file).
    pub block_size: u32,
    /// Largest read or write payload (advertised as the maximum block size).
    pub max_request_bytes: u32,
    /// Connections in the transmission phase at once; while this many are served, new
    /// connections are accepted and closed at once.
    pub max_connections: usize,
    /// Connections greeted that have not sent anything yet, held without a thread; when
    /// full, the oldest is closed to make room.
    pub max_waiting: usize,
    /// Connections negotiating at once (a thread each); when full, the one negotiating
    /// longest is closed to make room.
    pub max_negotiating: usize,
    /// Requests in flight per connection (worker threads, started on demand).
    pub workers_per_connection: usize,
    /// Payload bytes in flight per connection.
    pub max_inflight_bytes: u64,
    /// Time from accept to the end of negotiation (all of it, reads and writes, not per
    /// read); then the connection is closed and its slot freed.
    pub handshake_timeout: Duration,
    /// Connections closed before negotiating are counted and logged as one summary line per
    /// interval, not one line each.
    pub refusal_log_interval: Duration,
    /// Time a reply may wait for the client to read before the connection is dropped.
    pub send_timeout: Duration,
    /// On shutdown, time given to in-flight requests before connections are cut.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![ListenAddr::Tcp(SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_PORT,
            )))],
            name: String::new(),
            description: String::new(),
            read_only: false,
            block_size: 512,
            max_request_bytes: 32 << 20,
            max_connections: 64,
            max_waiting: 256,
            max_negotiating: 16,
            workers_per_connection: 16,
            max_inflight_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            refusal_log_interval: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What a server did, returned by [`Server::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections accepted and greeted (including those that never finished negotiating).
    pub connections: u64,
    /// Connections closed before reaching the transmission phase: refused while
    /// `max_connections` were served, closed to make room, timed out, protocol errors, and
    /// clients that left.
    pub refused: u64,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// Stops a running [`Server`]; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    wake: Arc<Wake>,
}

#[derive(Debug)]
struct Wake {
    stop: Arc<AtomicBool>,
    eventfd: OwnedFd,
}

impl ShutdownHandle {
    /// Ask the server to stop: it stops accepting, lets in-flight requests finish, flushes
    /// the export, and [`Server::run`] returns. Idempotent.
    pub fn shutdown(&self) {
        self.wake.stop.store(true, Ordering::SeqCst);
        // A full counter or a closed descriptor means a wake-up is already pending or moot.
        let _ = rustix::io::write(&self.wake.eventfd, &1u64.to_ne_bytes());
    }

    pub fn is_shutdown(&self) -> bool {
        self.wake.stop.load(Ordering::SeqCst)
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

/// The server state shared with connection threads.
struct Shared {
    export: Arc<Export>,
    limits: Limits,
    max_connections: usize,
    max_negotiating: usize,
    send_timeout: Duration,
    stopping: Arc<AtomicBool>,
    /// Negotiating and established connections, so the accept loop can enforce deadlines
    /// and shutdown can reach their sockets.
    slots: Mutex<Slots>,
    gone: Condvar,
    refusals: RefusalLog,
    /// Worker buffers kept between connections.
    buffers: Arc<BufferPool>,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
}

/// An NBD server for one export.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    bound: Vec<ListenAddr>,
    wake: Arc<Wake>,
    max_waiting: usize,
    handshake_timeout: Duration,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("export", &self.shared.export)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> ServerError {
    ServerError::Config {
        reason: reason.into(),
    }
}

/// Descriptors kept free for everything but connection sockets (listeners, the devices,
/// the control socket, logs).
const RESERVED_DESCRIPTORS: usize = 64;

/// Every connection slot holds a descriptor: refuse limits the process cannot honour, since
/// `accept` failing with `EMFILE` would stall the accept loop for every client.
fn check_descriptors(config: &ServerConfig) -> Result<(), ServerError> {
    let needed = config
        .max_waiting
        .saturating_add(config.max_negotiating)
        .saturating_add(config.max_connections)
        .saturating_add(RESERVED_DESCRIPTORS);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match limit {
        Some(limit) if needed as u64 > limit => Err(config_error(format!(
            "max waiting + negotiating + connections ({}) plus {RESERVED_DESCRIPTORS} \
             descriptors is above the open-file limit of {limit} (ulimit -n)",
            needed - RESERVED_DESCRIPTORS
        ))),
        _ => Ok(()),
    }
}

fn bind_unix(path: &PathBuf) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        // Replace a socket nobody listens on (left by a server that did not stop cleanly).
        match UnixStream::connect(path) {
            Ok(_) => return Err(bind_err(std::io::ErrorKind::AddrInUse.into())),
            Err(_) => std::fs::remove_file(path).map_err(bind_err)?,
        }
    }
    UnixListener::bind(path).map_err(bind_err)
}

impl Server {
    /// Bind the listeners for serving `export`. `state`, when given, offers the
    /// `remap:state` metadata context (pass the same remap device as both).
    pub fn new(
        export: Arc<dyn BlockBackend>,
        state: Option<Arc<dyn BlockStateSource>>,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        if config.listen.is_empty() {
            return Err(config_error("no address to listen on"));
        }
        check_wire_string("export name", &config.name).map_err(config_error)?;
        check_wire_string("export description", &config.description).map_err(config_error)?;
        if !(1..=256).contains(&config.workers_per_connection) {
            return Err(config_error(
                "workers per connection must be between 1 and 256",
            ));
        }
        if config.max_connections == 0 || config.max_waiting == 0 || config.max_negotiating == 0 {
            return Err(config_error(
                "max connections, waiting and negotiating connections must each be at least 1",
            ));
        }
        if config.handshake_timeout.is_zero() || config.refusal_log_interval.is_zero() {
            return Err(config_error(
                "the handshake timeout and the refusal log interval must be above zero",
            ));
        }
        check_descriptors(&config)?;
        if config.max_inflight_bytes < u64::from(config.max_request_bytes) {
            return Err(config_error(
                "in-flight bytes per connection must be at least the maximum request size",
            ));
        }
        if config.max_request_bytes > 256 << 20 {
            return Err(config_error("maximum request size is limited to 256 MiB"));
        }
        let size = export.size_bytes();
        let sizes = BlockSizes::derive(config.block_size, size, config.max_request_bytes)
            .map_err(config_error)?;

        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for addr in &config.listen {
            match addr {
                ListenAddr::Tcp(a) => {
                    let bind_err = |source| ServerError::Bind {
                        addr: a.to_string(),
                        source,
                    };
                    let l = TcpListener::bind(a).map_err(bind_err)?;
                    l.set_nonblocking(true).map_err(bind_err)?;
                    bound.push(ListenAddr::Tcp(l.local_addr().map_err(bind_err)?));
                    listeners.push(Listener::Tcp(l));
                }
                ListenAddr::Unix(p) => {
                    let l = bind_unix(p)?;
                    l.set_nonblocking(true)
                        .map_err(|source| ServerError::Bind {
                            addr: p.display().to_string(),
                            source,
                        })?;
                    bound.push(ListenAddr::Unix(p.clone()));
                    listeners.push(Listener::Unix(l, p.clone()));
                }
            }
        }
        let eventfd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| ServerError::Wakeup(e.into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let export = Arc::new(Export {
            backend: export,
            state,
            name: config.name,
            description: config.description,
            read_only: config.read_only,
            size,
            sizes,
        });
        Ok(Server {
            shared: Arc::new(Shared {
                export,
                limits: Limits {
                    max_request: config.max_request_bytes,
                    workers: config.workers_per_connection,
                    max_inflight_bytes: config.max_inflight_bytes,
                },
                max_connections: config.max_connections,
                max_negotiating: config.max_negotiating,
                send_timeout: config.send_timeout,
                stopping: stop.clone(),
                slots: Mutex::new(Slots::default()),
                gone: Condvar::new(),
                refusals: RefusalLog::new(config.refusal_log_interval),
                buffers: Arc::default(),
                totals: Totals::default(),
            }),
            listeners,
            bound,
            wake: Arc::new(Wake { stop, eventfd }),
            max_waiting: config.max_waiting,
            handshake_timeout: config.handshake_timeout,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The addresses actually bound (with the real port where port 0 was asked for).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.bound
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            wake: self.wake.clone(),
        }
    }

    /// Serve until [`ShutdownHandle::shutdown`] is called; then stop accepting, let the
    /// requests in flight finish (cutting connections still busy after the grace period),
    /// flush the export, and return what was done. The caller then checkpoints its device.
    pub fn run(mut self) -> Result<ServeSummary, ServerError> {
        let export = &self.shared.export;
        for addr in &self.bound {
            tracing::info!(
                %addr,
                export = export.name.as_str(),
                size = export.size,
                read_only = export.read_only,
                "serving"
            );
        }
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let accepted = self.accept_loop(&mut threads);

        // Stop: no new connections, no new requests; finish what is in flight.
        self.shared.stopping.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            if let Listener::Unix(_, path) = l {
                let _ = std::fs::remove_file(path);
            }
        }
        self.listeners.clear();
        {
            let mut slots = self.shared.slots.lock();
            if slots.established() > 0 {
                tracing::info!(
                    connections = slots.established(),
                    "shutting down: finishing requests in flight"
                );
            }
            slots.stop_all();
            let deadline = Instant::now() + self.shutdown_grace;
            while !slots.is_empty() {
                if self
                    .shared
                    .gone
                    .wait_until(&mut slots, deadline)
                    .timed_out()
                {
                    tracing::warn!(
                        connections = slots.established(),
                        "connections still busy after the grace period; cutting them"
                    );
                    slots.cut_all();
                    break;
                }
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an NBD connection thread panicked");
            }
        }
        self.shared.refusals.flush();
        let summary = self.summary();
        accepted?;
        if !export.read_only {
            export.backend.flush().map_err(ServerError::FinalFlush)?;
        }
        tracing::info!(
            connections = summary.connections,
            requests = summary.requests,
            errors = summary.errors,
            "server stopped; export flushed"
        );
        Ok(summary)
    }

    fn summary(&self) -> ServeSummary {
        let t = &self.shared.totals;
        ServeSummary {
            connections: t.connections.load(Ordering::SeqCst),
            refused: self.shared.refusals.total(),
            requests: t.requests.load(Ordering::SeqCst),
            bytes_read: t.bytes_read.load(Ordering::SeqCst),
            bytes_written: t.bytes_written.load(Ordering::SeqCst),
            errors: t.errors.load(Ordering::SeqCst),
        }
    }

    /// Accept, greet and hold new connections until their clients speak; hand those to a
    /// negotiating thread; close connections past their negotiation deadline; write the
    /// refusal summary when it is due. Returns when the server is told to stop.
    fn accept_loop(&self, threads: &mut Vec<JoinHandle<()>>) -> Result<(), ServerError> {
        let mut waiting = WaitingPool::new(self.max_waiting);
        let mut next_id = 0u64;
        let mut accept_failures = 0u64;
        loop {
            if self.wake.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let now = Instant::now();
            self.expire(&mut waiting, now);
            let wake_at = [
                waiting.next_deadline(),
                self.shared.slots.lock().next_deadline(),
                self.shared.refusals.due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = wake_at.map(|t| {
                let left = t.saturating_duration_since(now) + Duration::from_millis(1);
                Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                })
            });
            let (listeners_ready, waiting_events): (Vec<bool>, Vec<PollFlags>) = {
                let mut fds: Vec<PollFd<'_>> = self
                    .listeners
                    .iter()
                    .map(|l| PollFd::from_borrowed_fd(l.fd(), PollFlags::IN))
                    .collect();
                fds.push(PollFd::new(&self.wake.eventfd, PollFlags::IN));
                fds.extend(waiting.poll_fds());
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(ServerError::Poll(e.into())),
                }
                let n = self.listeners.len();
                let listeners = fds[..n].iter().map(|f| !f.revents().is_empty()).collect();
                (
                    listeners,
                    fds[n + 1..].iter().map(PollFd::revents).collect(),
                )
            };
            if self.wake.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let (spoke, gone) = waiting.take_ready(&waiting_events);
            for w in gone {
                tracing::debug!(
                    conn = w.id,
                    peer = w.peer,
                    "closed by the client before negotiating"
                );
                self.shared.refusals.note(Refusal::Left);
            }
            for w in spoke {
                self.start_negotiating(w, threads);
            }
            let ready = self.listeners.iter().zip(listeners_ready);
            for (listener, _) in ready.filter(|(_, r)| *r) {
                // Accept everything pending on this listener.
                loop {
                    let accepted = match listener {
                        Listener::Tcp(l) => l
                            .accept()
                            .map(|(s, peer)| (Socket::Tcp(s), format!("tcp {peer}"))),
                        Listener::Unix(l, path) => l
                            .accept()
                            .map(|(s, _)| (Socket::Unix(s), format!("unix {}", path.display()))),
                    };
                    match accepted {
                        Ok((socket, peer)) => {
                            next_id += 1;
                            self.greet(socket, peer, next_id, &mut waiting);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                        Err(e) => {
                            // Out of descriptors or memory: back off instead of spinning, and
                            // log the 1st, 2nd, 4th, 8th... failure, not every one.
                            accept_failures += 1;
                            if accept_failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures = accept_failures, "accept failed; pausing");
                            }
                            std::thread::sleep(Duration::from_millis(100));
                            break;
                        }
                    }
                }
            }
            threads.retain(|t| !t.is_finished());
        }
    }

    /// Close the waiting and negotiating connections past their deadline; write the
    /// refusal summary if it is due.
    fn expire(&self, waiting: &mut WaitingPool, now: Instant) {
        let refusals = &self.shared.refusals;
        for w in waiting.expired(now) {
            tracing::debug!(
                conn = w.id,
                peer = w.peer,
                "closed: sent nothing before the negotiation deadline"
            );
            refusals.note(Refusal::TimedOut);
        }
        let expired = self.shared.slots.lock().expire(now);
        for _ in 0..expired {
            refusals.note(Refusal::TimedOut);
        }
        refusals.tick(now);
    }

    /// A new connection: refused at once while `max_connections` are served; otherwise
    /// greeted (without blocking) and held in the waiting pool until its client speaks.
    fn greet(&self, socket: Socket, peer: String, id: u64, waiting: &mut WaitingPool) {
        let refusals = &self.shared.refusals;
        let established = self.shared.slots.lock().established();
        if established >= self.shared.max_connections {
            tracing::debug!(conn = id, peer, "refused: serving the connection limit");
            refusals.note(Refusal::Full);
            return;
        }
        let greeting = crate::handshake::greeting_bytes();
        let sent = socket
            .set_nonblocking(true)
            .and_then(|()| (&socket).write(&greeting));
        if !matches!(sent, Ok(n) if n == greeting.len()) {
            tracing::debug!(conn = id, peer, "closed: the greeting could not be sent");
            refusals.note(Refusal::Left);
            return;
        }
        self.shared
            .totals
            .connections
            .fetch_add(1, Ordering::SeqCst);
        tracing::debug!(conn = id, peer, "connection opened");
        let deadline = Instant::now() + self.handshake_timeout;
        if let Some(old) = waiting.push(Waiting {
            id,
            socket,
            peer,
            deadline,
        }) {
            tracing::debug!(
                conn = old.id,
                peer = old.peer,
                "closed to make room: sent nothing yet"
            );
            refusals.note(Refusal::Evicted);
        }
    }

    /// The client of a waiting connection spoke: give it a negotiating thread (closing the
    /// connection negotiating longest if all slots are taken).
    fn start_negotiating(&self, w: Waiting, threads: &mut Vec<JoinHandle<()>>) {
        let Waiting {
            id,
            socket,
            peer,
            deadline,
        } = w;
        let socket = Arc::new(socket);
        let evicted = self.shared.slots.lock().start_negotiating(
            id,
            socket.clone(),
            deadline,
            self.shared.max_negotiating,
        );
        if evicted {
            self.shared.refusals.note(Refusal::Evicted);
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                serve_connection(&shared, socket, &peer, id);
                shared.gone.notify_all();
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::warn!(conn = id, error = %e, "cannot start a connection thread; closing it");
                self.shared.slots.lock().end_negotiating(id);
            }
        }
    }
}

/// One connection from its client's first bytes to close: negotiate, then serve requests.
fn serve_connection(shared: &Shared, socket: Arc<Socket>, peer: &str, id: u64) {
    let negotiated = negotiate(shared, &socket, peer, id);
    let Some((negotiated, reader)) = negotiated else {
        return;
    };
    tracing::info!(
        conn = id,
        peer,
        structured = negotiated.structured,
        "client connected"
    );
    serve_requests(shared, socket, reader, negotiated, peer, id);
    shared.slots.lock().end_established(id);
}

/// The negotiation of a connection; `None` if it ended there (counted in the refusal log
/// unless the server closed it, which counted it already).
fn negotiate(
    shared: &Shared,
    socket: &Arc<Socket>,
    peer: &str,
    id: u64,
) -> Option<(handshake::Negotiated, Input<SocketReader>)> {
    let setup = socket.prepare().and_then(|()| match &**socket {
        Socket::Tcp(s) => s.set_write_timeout(Some(shared.send_timeout)),
        Socket::Unix(s) => s.set_write_timeout(Some(shared.send_timeout)),
    });
    let mut reader = Input::new(
        SocketReader::new(socket.clone()),
        READ_BUFFER,
        crate::proto::REQUEST_HEADER_LEN,
    );
    let result = match setup {
        Ok(()) => handshake::negotiate(
            &mut reader,
            &**socket,
            &shared.export,
            &shared.stopping,
            &mut || shared.slots.lock().establish(id, shared.max_connections),
        ),
        Err(e) => {
            tracing::debug!(conn = id, peer, error = %e, "socket setup failed");
            Err(HandshakeError::Closed)
        }
    };
    match result {
        Ok(n) => Some((n, reader)),
        Err(e) => {
            socket.shutdown(Shutdown::Both);
            let counted_by_server = !shared.slots.lock().end_negotiating(id);
            tracing::debug!(conn = id, peer, reason = %e, "connection closed during negotiation");
            if !counted_by_server {
                shared.refusals.note(Refusal::of(&e));
            }
            None
        }
    }
}

/// The transmission phase of a negotiated connection.
fn serve_requests(
    shared: &Shared,
    socket: Arc<Socket>,
    reader: Input<SocketReader>,
    negotiated: handshake::Negotiated,
    peer: &str,
    id: u64,
) {
    tracing::debug!(conn = id, ?negotiated, "transmission phase");
    let conn = Arc::new(Connection::new(
        shared.export.clone(),
        negotiated,
        shared.limits,
        socket,
        reader,
        shared.stopping.clone(),
        shared.buffers.clone(),
    ));
    let end = conn.serve();
    let c = &conn.counters;
    let (requests, bytes_read, bytes_written, errors) = (
        c.requests.load(Ordering::SeqCst),
        c.bytes_read.load(Ordering::SeqCst),
        c.bytes_written.load(Ordering::SeqCst),
        c.errors.load(Ordering::SeqCst),
    );
    let t = &shared.totals;
    t.requests.fetch_add(requests, Ordering::SeqCst);
    t.bytes_read.fetch_add(bytes_read, Ordering::SeqCst);
    t.bytes_written.fetch_add(bytes_written, Ordering::SeqCst);
    t.errors.fetch_add(errors, Ordering::SeqCst);
    match end {
        End::Failed(_) => tracing::warn!(
            conn = id, peer, requests, bytes_read, bytes_written, errors, reason = %end,
            "connection closed"
        ),
        _ => tracing::info!(
            conn = id, peer, requests, bytes_read, bytes_written, errors, reason = %end,
            "connection closed"
        ),
    }
}
