//! The transmission phase: requests in, replies out, many in flight, replies in any order.
//!
//! # Threads
//!
//! Each connection has a small pool of worker threads (at most
//! [`Limits::workers`], started on demand) working leader/follower style: a worker takes
//! the read lock, reads one request (and a write's payload), lets go of the lock, executes
//! the request against the backend and sends the reply. No request is handed from thread
//! to thread, and a reply leaves in one `write` (header and data share one buffer). While
//! one worker executes, the next reads; replies go out in completion order, tagged with
//! the client's cookie.
//!
//! While requests finish fast (the page cache, not a disk), a worker keeps the read lock
//! and runs what it reads itself, holding small replies back until nothing more is
//! buffered, and no more than [`FAST_WORKERS`] are started: a connection is then one
//! thread in a loop, as a single-threaded server would be, with no wake-ups between
//! requests. See [`INLINE_MAX_NS`]. Large writes are spliced from the socket to the
//! backend's file when it offers one (`splice.rs`).
//!
//! # Bounds
//!
//! - In-flight requests per connection: the number of workers.
//! - In-flight payload bytes per connection: [`Limits::max_inflight_bytes`] (a worker waits
//!   for room before it reads a write's payload or reads data for a read).
//! - One request's payload: [`Limits::max_request`]; a larger read or write gets
//!   `NBD_EOVERFLOW` (a write's payload is read and dropped in small pieces to keep the stream
//!   in step), never an allocation.
//! - Block status replies: at most [`MAX_EXTENTS`] extents per context.
//!
//! # Errors
//!
//! A bad request (unknown command or flags, out of range, too large, forbidden on a
//! read-only export, failed by the backend) gets an error reply and the connection goes on.
//! Only a malformed frame (bad request magic), a broken socket, or the client's
//! `NBD_CMD_DISC` end the connection, and then only after the requests already read have
//! been answered.

use std::borrow::Cow;
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use remap_core::{IoError, Through};

use crate::block_status::{Extent, MetaContext};
use crate::buffers::{BufferPool, Buffers, DATA_AT};
use crate::error::TransmissionError;
use crate::export::Export;
use crate::handshake::Negotiated;
use crate::input::Input;
use crate::proto::{
    Command, OFFSET_DATA_HEADER_LEN, REQUEST_HEADER_LEN, RequestHeader, SIMPLE_REPLY_LEN, chunk,
    chunk_header, command_flags as cf, nbd_error, nbd_error_from_errno, offset_data_header,
    put_error_chunk, simple_reply, transmission_flags as tf,
};
use crate::replies::Replies;
use crate::socket::{Socket, SocketReader};

/// The most extents sent for one context in one block status reply.
pub const MAX_EXTENTS: usize = 64 * 1024;
/// A small read or write is executed by the worker that read it, which then reads the next
/// request itself, if requests on this connection have been taking less than this on
/// average: handing a request to another thread (a futex wake and a context switch, and
/// another when the first wants the read lock back) then costs more than the request.
/// Slower requests (a disk, not the page cache) go to a worker of their own, so they run in
/// parallel. The price: a request that turns out slow (a failing sector being retried)
/// holds up the requests behind it on its connection until it finishes, as a disk's error
/// handling holds up its queue; the average then sends the next ones to workers.
pub(crate) const INLINE_MAX_NS: u64 = 20_000;
/// While requests are that fast, a connection starts no more workers than this: one
/// reads (and runs what it reads) while another executes; more only wait for the read
/// lock and cost wake-ups. Slow requests start more, up to `workers_per_connection`, so a
/// disk gets many requests at once.
pub(crate) const FAST_WORKERS: usize = 2;
/// The largest read or write run that way.
pub(crate) const INLINE_MAX_LEN: u32 = 64 * 1024;
/// The most requests one worker runs that way before it hands the lock on once (and its
/// held replies leave), so a client that keeps the buffer full still sees replies.
pub(crate) const INLINE_RUN: u32 = 32;
/// `NBD_CMD_CACHE` reads ahead in pieces of this size.
const CACHE_PIECE: u64 = 1 << 20;

/// The bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_request: u32,
    pub workers: usize,
    pub max_inflight_bytes: u64,
}

/// What one connection did, for its closing log line and the server's totals.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
}

/// Why a connection's transmission phase ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the socket between requests.
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
    Failed(TransmissionError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Disconnect => f.write_str("client disconnected (NBD_CMD_DISC)"),
            End::ClientClosed => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutdown"),
            End::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A refusal: the NBD error and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejection {
    error: u32,
    message: Cow<'static, str>,
}

fn reject(error: u32, message: impl Into<Cow<'static, str>>) -> Rejection {
    Rejection {
        error,
        message: message.into(),
    }
}

impl From<IoError> for Rejection {
    fn from(e: IoError) -> Self {
        reject(nbd_error_from_errno(e.errno()), e.to_string())
    }
}

/// Payload bytes in flight on a connection, bounded.
#[derive(Debug)]
struct ByteBudget {
    used: Mutex<u64>,
    freed: Condvar,
    limit: u64,
}

/// Room taken from a [`ByteBudget`], given back on drop.
struct Reservation<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
}

impl ByteBudget {
    /// Take `bytes`, waiting until they fit. A request alone is always let through, so one
    /// larger than the limit cannot wait forever.
    fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let mut used = self.used.lock();
        while *used > 0 && used.saturating_add(bytes) > self.limit {
            self.freed.wait(&mut used);
        }
        *used += bytes;
        Reservation {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.budget.used.lock() -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// One request read off the wire, checked, with its payload (if a write) in the worker's
/// buffer.
struct Job<'a> {
    request: RequestHeader,
    checked: Result<Command, Rejection>,
    /// A write's payload is in the worker's pipes, not its buffer.
    spliced: bool,
    _reservation: Option<Reservation<'a>>,
}

impl Job<'_> {
    /// A read, or a write without FUA, of at most [`INLINE_MAX_LEN`] bytes: the requests
    /// a worker may run inline. Flushes, FUA writes, trims, caches and the rest go to a
    /// worker of their own however fast recent requests were.
    fn is_small_io(&self) -> bool {
        let r = &self.request;
        match self.checked {
            Ok(Command::Read) => r.len <= INLINE_MAX_LEN,
            Ok(Command::Write) => r.len <= INLINE_MAX_LEN && r.flags & cf::FUA == 0,
            _ => false,
        }
    }
}

/// What executing a request produced.
enum Outcome {
    /// Success without data.
    Done,
    /// Success; this many bytes of data sit in the worker's buffer at `DATA_AT`.
    Data(usize),
    /// Success; the complete structured reply sits in the worker's small buffer.
    Status,
    Failed(Rejection),
}

/// One client connection in the transmission phase.
pub(crate) struct Connection {
    export: Arc<Export>,
    session: Negotiated,
    limits: Limits,
    socket: Arc<Socket>,
    /// The read side. A std (futex) mutex rather than parking_lot's: it is held across a
    /// blocking `read`, so spinning and yielding for it only burns CPU the workers need.
    reader: std::sync::Mutex<Input<SocketReader>>,
    /// The way out: replies never interleave, and small ones completing together share a
    /// write.
    replies: Replies,
    closing: AtomicBool,
    /// The server is stopping: an end of input is then a shutdown, not the client leaving.
    server_stopping: Arc<AtomicBool>,
    /// Workers waiting for the read lock.
    waiting: AtomicUsize,
    /// Moving average of how long a request takes to execute and answer, in ns.
    recent_ns: AtomicU64,
    workers: AtomicUsize,
    handles: Mutex<Vec<JoinHandle<()>>>,
    budget: ByteBudget,
    pool: Arc<BufferPool>,
    pub counters: Counters,
    end: Mutex<Option<End>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .field("limits", &self.limits)
            .field("workers", &self.workers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(
        export: Arc<Export>,
        session: Negotiated,
        limits: Limits,
        socket: Arc<Socket>,
        reader: Input<SocketReader>,
        server_stopping: Arc<AtomicBool>,
        pool: Arc<BufferPool>,
    ) -> Self {
        Connection {
            export,
            session,
            limits,
            socket,
            reader: std::sync::Mutex::new(reader),
            replies: Replies::default(),
            closing: AtomicBool::new(false),
            server_stopping,
            waiting: AtomicUsize::new(0),
            recent_ns: AtomicU64::new(0),
            workers: AtomicUsize::new(1),
            handles: Mutex::new(Vec::new()),
            budget: ByteBudget {
                used: Mutex::new(0),
                freed: Condvar::new(),
                limit: limits.max_inflight_bytes,
            },
            pool,
            counters: Counters::default(),
            end: Mutex::new(None),
        }
    }

    /// Serve requests until the connection ends; the calling thread is the first worker.
    /// Returns once every request read has been answered (or the socket broke) and every
    /// worker has stopped.
    pub fn serve(self: &Arc<Self>) -> End {
        self.work();
        self.closing.store(true, Ordering::SeqCst);
        // Nobody reads any more: wake a worker blocked in `read` (if the connection ended
        // for another reason than its input), then wait for any worker being started.
        self.socket.shutdown(Shutdown::Read);
        drop(lock(&self.reader));
        loop {
            let next = self.handles.lock().pop();
            match next {
                Some(h) => {
                    if h.join().is_err() {
                        tracing::error!("an NBD worker thread panicked");
                    }
                }
                None => break,
            }
        }
        self.socket.shutdown(Shutdown::Both);
        let end = self.end.lock().take().unwrap_or(End::ClientClosed);
        match end {
            End::ClientClosed | End::Failed(TransmissionError::ReadRequest(_))
                if self.server_stopping.load(Ordering::SeqCst) =>
            {
                End::Shutdown
            }
            end => end,
        }
    }

    /// Record why the connection ends (the first reason wins) and stop reading.
    fn finish(&self, end: End) {
        self.closing.store(true, Ordering::SeqCst);
        let mut slot = self.end.lock();
        if slot.is_none() {
            *slot = Some(end);
        }
    }

    /// A worker: take the read lock, read a request, and either hand the lock on and
    /// execute it (so the next request is read meanwhile by another worker), or, while
    /// requests are finishing fast, execute it here and go on reading (see
    /// [`INLINE_MAX_NS`]). The replies of such a run are held and leave together when
    /// nothing more is buffered, before the worker waits for more.
    fn work(self: &Arc<Self>) {
        let mut buffers = self.pool.take();
        'lock: loop {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut input = lock(&self.reader);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            let mut held = false;
            for run in 1.. {
                let Some(job) = self.read_request(&mut input, &mut buffers) else {
                    if held {
                        let _ = self.replies.release(&self.socket);
                    }
                    break 'lock;
                };
                let inline = run < INLINE_RUN
                    && job.is_small_io()
                    && self.recent_ns.load(Ordering::Relaxed) < INLINE_MAX_NS;
                if inline {
                    if !held {
                        held = self.replies.hold();
                    }
                    let cookie = job.request.cookie;
                    let done = self.execute_timed(job, &mut buffers);
                    // Nothing more to read at once: the held replies leave before this
                    // worker waits for the next request.
                    let flushed =
                        if held && (done.is_err() || input.buffered() < REQUEST_HEADER_LEN) {
                            held = false;
                            self.replies.release(&self.socket)
                        } else {
                            Ok(())
                        };
                    if let Err(e) = done {
                        self.fail_to_send(e);
                        break 'lock;
                    }
                    if let Err(e) = flushed {
                        self.fail_to_send(TransmissionError::SendReply { cookie, source: e });
                        break 'lock;
                    }
                    buffers.trim();
                    continue;
                }
                self.maybe_spawn();
                drop(input);
                // The replies of the run leave together, before this request executes.
                if held && let Err(e) = self.replies.release(&self.socket) {
                    self.fail_to_send(TransmissionError::SendReply {
                        cookie: job.request.cookie,
                        source: e,
                    });
                    break 'lock;
                }
                if let Err(e) = self.execute_timed(job, &mut buffers) {
                    self.fail_to_send(e);
                    break 'lock;
                }
                buffers.trim();
                continue 'lock;
            }
        }
        self.pool.give(buffers);
    }

    /// A reply could not be sent: the connection ends.
    fn fail_to_send(&self, e: TransmissionError) {
        self.finish(End::Failed(e));
        // Replies can no longer be delivered: stop everything.
        self.socket.shutdown(Shutdown::Both);
    }

    /// [`execute`](Self::execute), keeping the moving average of how long requests take.
    fn execute_timed(&self, job: Job<'_>, buffers: &mut Buffers) -> Result<(), TransmissionError> {
        let started = Instant::now();
        let r = self.execute(job, buffers);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let avg = self.recent_ns.load(Ordering::Relaxed);
        self.recent_ns
            .store(avg - avg / 8 + took / 8, Ordering::Relaxed);
        r
    }

    /// Start one more worker if nobody is waiting to read and the limit allows. Called with
    /// the read lock held, so two workers never race to start a third.
    fn maybe_spawn(self: &Arc<Self>) {
        let workers = self.workers.load(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0
            || workers >= self.limits.workers
            || (workers >= FAST_WORKERS && self.recent_ns.load(Ordering::Relaxed) < INLINE_MAX_NS)
            || self.closing.load(Ordering::SeqCst)
        {
            return;
        }
        self.workers.fetch_add(1, Ordering::SeqCst);
        let me = Arc::clone(self);
        match std::thread::Builder::new()
            .name("nbd-worker".into())
            .spawn(move || me.work())
        {
            Ok(h) => self.handles.lock().push(h),
            Err(e) => {
                self.workers.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start another NBD worker; going on with fewer");
            }
        }
    }

    /// Read the next request. `None` when the connection is ending.
    fn read_request(
        &self,
        input: &mut Input<SocketReader>,
        buffers: &mut Buffers,
    ) -> Option<Job<'_>> {
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        // Tell "the client left between requests" from "the client broke off a request".
        match input.at_eof() {
            Ok(false) => {}
            Ok(true) => {
                self.finish(End::ClientClosed);
                return None;
            }
            Err(e) => {
                self.finish(End::Failed(TransmissionError::ReadRequest(e)));
                return None;
            }
        }
        let mut head = [0u8; REQUEST_HEADER_LEN];
        if let Err(e) = input.read_exact(&mut head) {
            self.finish(End::Failed(TransmissionError::ReadRequest(e)));
            return None;
        }
        let request = match RequestHeader::decode(&head) {
            Ok(r) => r,
            Err(e) => {
                self.finish(End::Failed(TransmissionError::DecodeRequest(e)));
                return None;
            }
        };
        let checked = self.check(&request);
        let mut reservation = None;
        let mut spliced = false;
        // A write's payload follows its header whether or not the write is acceptable.
        if request.command == Command::Write.code() {
            let read = if matches!(checked, Ok(Command::Write)) {
                reservation = Some(self.budget.reserve(request.len.into()));
                let len = request.len as usize;
                let pipes = if request.flags & cf::FUA == 0
                    && self.export.backend.takes_write_transfers()
                {
                    buffers.write_pipes(len)
                } else {
                    None
                };
                match pipes {
                    Some((pipe, copy)) => {
                        match input.splice_into(pipe, len) {
                            Ok(()) if pipe.tee_into(copy).is_ok() => {
                                spliced = true;
                                Ok(())
                            }
                            // No second reference: take the payload out of the pipe.
                            Ok(()) => match buffers.write_target(len) {
                                (buf, Some(pipe), _) => pipe.read_into(buf),
                                _ => Err(std::io::Error::other("the write's pipe is gone")),
                            },
                            Err(e) => Err(e),
                        }
                    }
                    None => input.read_exact(buffers.payload(len)),
                }
            } else {
                input.discard(request.len.into())
            };
            if let Err(source) = read {
                self.finish(End::Failed(TransmissionError::ReadPayload {
                    offset: request.offset,
                    len: request.len,
                    source,
                }));
                return None;
            }
        }
        if matches!(checked, Ok(Command::Disconnect)) {
            self.finish(End::Disconnect);
            return None;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        Some(Job {
            request,
            checked,
            spliced,
            _reservation: reservation,
        })
    }

    /// Decide whether a request is acceptable, and if not, which error it gets.
    fn check(&self, r: &RequestHeader) -> Result<Command, Rejection> {
        let export = &*self.export;
        let Some(command) = Command::from_code(r.command) else {
            return Err(reject(
                nbd_error::EINVAL,
                format!("unknown command {}", r.command),
            ));
        };
        let mut allowed = command.allowed_flags();
        if self.session.flags & tf::SEND_DF == 0 {
            allowed &= !cf::DF;
        }
        if self.session.flags & tf::SEND_FAST_ZERO == 0 {
            allowed &= !cf::FAST_ZERO;
        }
        if r.flags & !allowed != 0 {
            return Err(reject(
                nbd_error::EINVAL,
                format!("command flags {:#x} are not valid for {command:?}", r.flags),
            ));
        }
        let len = u64::from(r.len);
        let in_range = r
            .offset
            .checked_add(len)
            .is_some_and(|end| end <= export.size);
        let out_of_range = || {
            format!(
                "{command:?} of {len} bytes at offset {} reaches past the end of the export ({} bytes)",
                r.offset, export.size
            )
        };
        let too_large = || {
            format!(
                "{command:?} of {len} bytes is above the maximum request size of {} bytes",
                self.limits.max_request
            )
        };
        const READ_ONLY: &str = "the export is read-only";
        match command {
            Command::Read => {
                if r.len > self.limits.max_request {
                    return Err(reject(nbd_error::EOVERFLOW, too_large()));
                }
                if !in_range {
                    return Err(reject(nbd_error::EINVAL, out_of_range()));
                }
            }
            Command::Write => {
                if export.read_only {
                    return Err(reject(nbd_error::EPERM, READ_ONLY));
                }
                if r.len > self.limits.max_request {
                    return Err(reject(nbd_error::EOVERFLOW, too_large()));
                }
                if !in_range {
                    return Err(reject(nbd_error::ENOSPC, out_of_range()));
                }
            }
            Command::WriteZeroes => {
                if export.read_only {
                    return Err(reject(nbd_error::EPERM, READ_ONLY));
                }
                if !in_range {
                    return Err(reject(nbd_error::ENOSPC, out_of_range()));
                }
            }
            Command::Trim => {
                if export.read_only {
                    return Err(reject(nbd_error::EPERM, READ_ONLY));
                }
                if self.session.flags & tf::SEND_TRIM == 0 {
                    return Err(reject(
                        nbd_error::EINVAL,
                        "trim is not supported by this export",
                    ));
                }
                if !in_range {
                    return Err(reject(nbd_error::EINVAL, out_of_range()));
                }
            }
            Command::Cache => {
                if !in_range {
                    return Err(reject(nbd_error::EINVAL, out_of_range()));
                }
            }
            Command::BlockStatus => {
                if !self.session.structured || self.session.contexts.is_empty() {
                    return Err(reject(
                        nbd_error::EINVAL,
                        "no metadata context was selected (NBD_OPT_SET_META_CONTEXT)",
                    ));
                }
                if len == 0 {
                    return Err(reject(nbd_error::EINVAL, "block status of zero bytes"));
                }
                if !in_range {
                    return Err(reject(nbd_error::EINVAL, out_of_range()));
                }
            }
            Command::Flush => {
                if r.offset != 0 || r.len != 0 {
                    return Err(reject(
                        nbd_error::EINVAL,
                        "flush takes no offset and no length",
                    ));
                }
            }
            Command::Disconnect => {}
        }
        Ok(command)
    }

    fn execute(&self, job: Job<'_>, buffers: &mut Buffers) -> Result<(), TransmissionError> {
        let request = job.request;
        // Room for the data a read brings in, held until its reply has been sent.
        let _room = match job.checked {
            Ok(Command::Read) if request.len > 0 => Some(self.budget.reserve(request.len.into())),
            Ok(Command::Cache) => {
                Some(self.budget.reserve(u64::from(request.len).min(CACHE_PIECE)))
            }
            _ => None,
        };
        let outcome = match job.checked {
            Err(rejection) => Outcome::Failed(rejection),
            Ok(Command::Write) if job.spliced => self.write_spliced(&request, buffers),
            Ok(command) => self.run(command, &request, buffers),
        };
        self.reply(&request, outcome, buffers)
    }

    fn run(&self, command: Command, r: &RequestHeader, buffers: &mut Buffers) -> Outcome {
        let backend = &*self.export.backend;
        let fua = r.flags & cf::FUA != 0;
        let len = u64::from(r.len);
        let done = |result: Result<(), IoError>| match result {
            Ok(()) => Outcome::Done,
            Err(e) => {
                tracing::debug!(error = %e, ?command, offset = r.offset, len, "request failed");
                Outcome::Failed(e.into())
            }
        };
        let flush_if = |fua: bool| if fua { backend.flush() } else { Ok(()) };
        match command {
            Command::Read => {
                if len == 0 {
                    return Outcome::Done;
                }
                match backend.read_at(r.offset, buffers.payload(len as usize)) {
                    Ok(()) => {
                        self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
                        Outcome::Data(len as usize)
                    }
                    Err(e) => done(Err(e)),
                }
            }
            Command::Write => {
                let data = &buffers.data[DATA_AT..DATA_AT + len as usize];
                let result = if fua {
                    backend.write_at_fua(r.offset, data)
                } else {
                    backend.write_at(r.offset, data)
                };
                if result.is_ok() {
                    self.counters
                        .bytes_written
                        .fetch_add(len, Ordering::Relaxed);
                }
                done(result)
            }
            Command::Flush => {
                if self.export.read_only {
                    // Nothing was written through this export.
                    Outcome::Done
                } else {
                    done(backend.flush())
                }
            }
            Command::Trim => done(backend.trim(r.offset, len).and_then(|()| flush_if(fua))),
            Command::WriteZeroes => {
                if r.flags & cf::FAST_ZERO != 0 && !backend.supports_write_zeroes() {
                    return Outcome::Failed(reject(
                        nbd_error::ENOTSUP,
                        "this export has no fast way to write zeroes",
                    ));
                }
                // The backends never deallocate on write-zeroes, so NO_HOLE holds either way.
                done(
                    backend
                        .write_zeroes(r.offset, len)
                        .and_then(|()| flush_if(fua)),
                )
            }
            Command::Cache => {
                // Read ahead (and let a failing block show itself now, not later).
                let piece = len.min(CACHE_PIECE);
                let mut at = 0;
                while at < len {
                    let step = (len - at).min(piece);
                    if let Err(e) = backend.read_at(r.offset + at, buffers.payload(step as usize)) {
                        return done(Err(e));
                    }
                    at += step;
                }
                Outcome::Done
            }
            Command::BlockStatus => self.block_status(r, &mut buffers.small),
            // Handled when it was read; never executed.
            Command::Disconnect => Outcome::Done,
        }
    }

    /// Build the block status reply (one chunk per selected context) in `out`.
    fn block_status(&self, r: &RequestHeader, out: &mut Vec<u8>) -> Outcome {
        out.clear();
        // `check` made sure 0 < len and offset + len <= size.
        let span = u64::from(r.len).min(self.export.size - r.offset);
        let req_one = r.flags & cf::REQ_ONE != 0;
        let contexts = &self.session.contexts;
        for (i, context) in contexts.iter().enumerate() {
            let mut extents = match (context, &self.export.state) {
                (MetaContext::RemapState, Some(source)) => {
                    source.states(r.offset, span, if req_one { 1 } else { MAX_EXTENTS })
                }
                _ => Vec::new(),
            };
            // Keep what a source returns honest: nonzero lengths, inside the request, at
            // least one extent (allocated data, the safe answer, if it gave none).
            let mut covered = 0u64;
            extents.retain_mut(|e| {
                e.len = e.len.min(span - covered);
                covered += e.len;
                e.len > 0
            });
            if extents.is_empty() {
                extents.push(Extent {
                    len: span,
                    flags: 0,
                });
            }
            extents.truncate(if req_one { 1 } else { MAX_EXTENTS });
            let payload_len = 4 + 8 * extents.len() as u32;
            let flags = if i + 1 == contexts.len() {
                chunk::FLAG_DONE
            } else {
                0
            };
            out.extend_from_slice(&chunk_header(
                flags,
                chunk::BLOCK_STATUS,
                r.cookie,
                payload_len,
            ));
            out.extend_from_slice(&context.id().to_be_bytes());
            for e in &extents {
                // Every extent lies inside the request, whose length is a u32.
                out.extend_from_slice(&(e.len as u32).to_be_bytes());
                out.extend_from_slice(&e.flags.to_be_bytes());
            }
        }
        Outcome::Status
    }

    /// Send the reply for `r`: one contiguous piece of the stream.
    fn reply(
        &self,
        r: &RequestHeader,
        outcome: Outcome,
        buffers: &mut Buffers,
    ) -> Result<(), TransmissionError> {
        let structured = self.session.structured;
        let is_read = r.command == Command::Read.code();
        let bytes: &[u8] = match outcome {
            Outcome::Data(n) => {
                if structured {
                    let mut head = [0u8; OFFSET_DATA_HEADER_LEN];
                    offset_data_header(&mut head, r.cookie, r.offset, n as u32);
                    buffers.data[..DATA_AT].copy_from_slice(&head);
                    &buffers.data[..DATA_AT + n]
                } else {
                    let at = DATA_AT - SIMPLE_REPLY_LEN;
                    buffers.data[at..DATA_AT].copy_from_slice(&simple_reply(0, r.cookie));
                    &buffers.data[at..DATA_AT + n]
                }
            }
            Outcome::Status => &buffers.small,
            Outcome::Done if structured && is_read => {
                // A zero-length read: a read must not get a simple reply once structured
                // replies are on.
                buffers.small.clear();
                buffers.small.extend_from_slice(&chunk_header(
                    chunk::FLAG_DONE,
                    chunk::NONE,
                    r.cookie,
                    0,
                ));
                &buffers.small
            }
            Outcome::Done => {
                buffers.small.clear();
                buffers.small.extend_from_slice(&simple_reply(0, r.cookie));
                &buffers.small
            }
            Outcome::Failed(rejection) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                buffers.small.clear();
                if structured {
                    put_error_chunk(
                        &mut buffers.small,
                        r.cookie,
                        rejection.error,
                        &rejection.message,
                    );
                } else {
                    buffers
                        .small
                        .extend_from_slice(&simple_reply(rejection.error, r.cookie));
                }
                &buffers.small
            }
        };
        self.replies
            .send(&self.socket, bytes)
            .map_err(|source| TransmissionError::SendReply {
                cookie: r.cookie,
                source,
            })
    }

    /// Execute a write whose payload sits in the worker's two pipes: the first is spliced
    /// into the backend's file if it takes the transfer; otherwise the copy is loaded into
    /// the buffer and written normally.
    fn write_spliced(&self, r: &RequestHeader, buffers: &mut Buffers) -> Outcome {
        let len = u64::from(r.len);
        let (buf, Some(pipe), Some(copy)) = buffers.write_target(r.len as usize) else {
            return Outcome::Failed(reject(nbd_error::EIO, "the write's pipes are gone"));
        };
        let result = self.export.backend.write_through(
            r.offset,
            buf,
            &mut |fd, at| pipe.drain_to_file(fd, at),
            &mut |buf| copy.read_into(buf),
        );
        match result {
            Ok(through) => {
                // Drop the reference not used (a pipe left holding bytes is not reused).
                let _ = match through {
                    Through::Transferred => copy.discard(),
                    Through::Buffered => pipe.discard(),
                };
                self.counters
                    .bytes_written
                    .fetch_add(len, Ordering::Relaxed);
                Outcome::Done
            }
            Err(e) => {
                tracing::debug!(error = %e, offset = r.offset, len, "spliced write failed");
                Outcome::Failed(e.into())
            }
        }
    }
}

/// Lock a std mutex. A worker that panicked while holding it (a bug) leaves the data in a
/// state the next holder can still use: a buffered reader or nothing at all.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
