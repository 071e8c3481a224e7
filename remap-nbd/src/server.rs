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

use std::collections::HashMap;
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
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::block_status::BlockStateSource;
use crate::error::ServerError;
use crate::export::{BlockSizes, Export, check_wire_string};
use crate::handshake;
use crate::input::Input;
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
    /// Connections served at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Requests in flight per connection (worker threads, started on demand).
    pub workers_per_connection: usize,
    /// Payload bytes in flight per connection.
    pub max_inflight_bytes: u64,
    /// Time a client may take to finish negotiating (all of it, not per read).
    pub handshake_timeout: Duration,
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
            workers_per_connection: 16,
            max_inflight_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What a server did, returned by [`Server::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections accepted and served (including those that never finished negotiating).
    pub connections: u64,
    /// Connections closed at once because `max_connections` were being served.
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
    handshake_timeout: Duration,
    send_timeout: Duration,
    stopping: Arc<AtomicBool>,
    /// Live connections by id, so shutdown can reach their sockets.
    live: Mutex<HashMap<u64, Arc<Socket>>>,
    gone: Condvar,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    refused: AtomicU64,
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
    max_connections: usize,
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
        if config.max_connections == 0 {
            return Err(config_error("max connections must be at least 1"));
        }
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
                handshake_timeout: config.handshake_timeout,
                send_timeout: config.send_timeout,
                stopping: stop.clone(),
                live: Mutex::new(HashMap::new()),
                gone: Condvar::new(),
                totals: Totals::default(),
            }),
            listeners,
            bound,
            wake: Arc::new(Wake { stop, eventfd }),
            max_connections: config.max_connections,
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
        let mut next_id = 0u64;
        let mut accept_failures = 0u64;
        let accepted = self.accept_loop(&mut threads, &mut next_id, &mut accept_failures);

        // Stop: no new connections, no new requests; finish what is in flight.
        self.shared.stopping.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            if let Listener::Unix(_, path) = l {
                let _ = std::fs::remove_file(path);
            }
        }
        self.listeners.clear();
        {
            let mut live = self.shared.live.lock();
            if !live.is_empty() {
                tracing::info!(
                    connections = live.len(),
                    "shutting down: finishing requests in flight"
                );
            }
            for socket in live.values() {
                socket.shutdown(Shutdown::Read);
            }
            let deadline = Instant::now() + self.shutdown_grace;
            while !live.is_empty() {
                if self.shared.gone.wait_until(&mut live, deadline).timed_out() {
                    tracing::warn!(
                        connections = live.len(),
                        "connections still busy after the grace period; cutting them"
                    );
                    for socket in live.values() {
                        socket.shutdown(Shutdown::Both);
                    }
                    break;
                }
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an NBD connection thread panicked");
            }
        }
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
            refused: t.refused.load(Ordering::SeqCst),
            requests: t.requests.load(Ordering::SeqCst),
            bytes_read: t.bytes_read.load(Ordering::SeqCst),
            bytes_written: t.bytes_written.load(Ordering::SeqCst),
            errors: t.errors.load(Ordering::SeqCst),
        }
    }

    fn accept_loop(
        &self,
        threads: &mut Vec<JoinHandle<()>>,
        next_id: &mut u64,
        accept_failures: &mut u64,
    ) -> Result<(), ServerError> {
        loop {
            if self.wake.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> = self
                    .listeners
                    .iter()
                    .map(|l| PollFd::from_borrowed_fd(l.fd(), PollFlags::IN))
                    .collect();
                fds.push(PollFd::new(&self.wake.eventfd, PollFlags::IN));
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(ServerError::Poll(e.into())),
                }
                fds.iter().map(|f| !f.revents().is_empty()).collect()
            };
            if self.wake.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            for (listener, _) in self.listeners.iter().zip(ready).filter(|(_, r)| *r) {
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
                            *next_id += 1;
                            self.start_connection(socket, peer, *next_id, threads);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                        Err(e) => {
                            // Out of descriptors or memory: back off instead of spinning, and
                            // log the 1st, 2nd, 4th, 8th... failure, not every one.
                            *accept_failures += 1;
                            if accept_failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures = *accept_failures, "accept failed; pausing");
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

    fn start_connection(
        &self,
        socket: Socket,
        peer: String,
        id: u64,
        threads: &mut Vec<JoinHandle<()>>,
    ) {
        let socket = Arc::new(socket);
        {
            let mut live = self.shared.live.lock();
            if live.len() >= self.max_connections {
                self.shared.totals.refused.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    conn = id,
                    peer,
                    limit = self.max_connections,
                    "connection refused: too many connections"
                );
                return;
            }
            live.insert(id, socket.clone());
        }
        self.shared
            .totals
            .connections
            .fetch_add(1, Ordering::SeqCst);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                serve_connection(&shared, socket, &peer, id);
                shared.live.lock().remove(&id);
                shared.gone.notify_all();
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::warn!(conn = id, error = %e, "cannot start a connection thread; closing it");
                self.shared.live.lock().remove(&id);
            }
        }
    }
}

/// One connection from accept to close: negotiate, then serve requests.
fn serve_connection(shared: &Shared, socket: Arc<Socket>, peer: &str, id: u64) {
    tracing::info!(conn = id, peer, "connection opened");
    let setup = socket.prepare().and_then(|()| match &*socket {
        Socket::Tcp(s) => s.set_write_timeout(Some(shared.send_timeout)),
        Socket::Unix(s) => s.set_write_timeout(Some(shared.send_timeout)),
    });
    if let Err(e) = setup {
        tracing::info!(conn = id, peer, error = %e, "connection closed: socket setup failed");
        return;
    }
    let mut reader = Input::new(
        SocketReader::new(socket.clone()),
        READ_BUFFER,
        crate::proto::REQUEST_HEADER_LEN,
    );
    // The whole negotiation must finish within the timeout, not each read.
    if let Err(e) = reader
        .get_mut()
        .set_deadline(Some(Instant::now() + shared.handshake_timeout))
    {
        tracing::info!(conn = id, peer, error = %e, "connection closed: socket setup failed");
        return;
    }
    let negotiated = match handshake::negotiate(
        &mut reader,
        &*socket,
        &shared.export,
        &shared.stopping,
    ) {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(conn = id, peer, reason = %e, "connection closed during negotiation");
            socket.shutdown(Shutdown::Both);
            return;
        }
    };
    if let Err(e) = reader.get_mut().set_deadline(None) {
        tracing::info!(conn = id, peer, error = %e, "connection closed: socket setup failed");
        return;
    }
    tracing::debug!(conn = id, ?negotiated, "transmission phase");
    let conn = Arc::new(Connection::new(
        shared.export.clone(),
        negotiated,
        shared.limits,
        socket,
        reader,
        shared.stopping.clone(),
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
