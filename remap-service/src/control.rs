//! The control socket of a running server: how operators' tools talk to it (the pair is
//! locked by the server, so they cannot open it themselves). The protocol's types, the
//! server ([`ControlServer`]) and the client ([`call`], [`call_as`]).
//!
//! # Protocol
//!
//! A Unix stream socket. The client sends one JSON object per line; the server answers each
//! with one JSON object on one line, in order, and the connection stays open for more.
//!
//! ```text
//! > {"cmd":"status"}
//! < {"ok":true,"result":{...the figures of `remap status --json`...}}
//! > {"cmd":"map","blocks":[{"first":10,"last":12}]}
//! < {"ok":true,"result":{"results":[...],"moved":3,...}}
//! > {"cmd":"frobnicate"}
//! < {"ok":false,"error":"bad request: unknown variant `frobnicate`, ..."}
//! ```
//!
//! Commands: `status`, `health`, `map` (`blocks`, optional `zero_unreadable` and
//! `partial`), `unmap` (`blocks`), `scrub-start` (optional `rate_bytes_per_s`), `scrub-stop`, `scrub-status`, `set`
//! (`changes`: thresholds and read retries, [`SettingChanges`]).
//!
//! # Limits
//!
//! A request line is at most [`MAX_REQUEST_BYTES`]; a longer one is answered with an error
//! and the connection is closed (the server cannot tell where the next request starts). Bad
//! JSON or an unknown command is answered with an error and the connection goes on. At most
//! [`MAX_CONNECTIONS`] connections at once (the next is told so and closed); a connection
//! idle for [`IDLE_TIMEOUT`] is closed. The socket is created mode 0600: whoever can open
//! it can move blocks.
//!
//! Every connection and every command is logged through `tracing` (info level).

use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use remap_core::BlockBackend;

use crate::blocks::BlockRange;
use crate::live::{Live, MapError, ScrubStartError};
use crate::settings::{SavedSettings, SettingChanges, SettingsError};

/// The longest request line, in bytes (newline excluded).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// The longest reply line a client accepts.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client waits for a reply (a `map` of many blocks takes a flush per block).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The figures of `remap status`, live.
    Status {},
    /// The health report with windowed rates and the projection.
    Health {},
    /// Move blocks to the spare now.
    Map {
        blocks: Vec<BlockRange>,
        #[serde(default)]
        zero_unreadable: bool,
        /// Move as many as the free spares allow instead of refusing a request that needs
        /// more.
        #[serde(default)]
        partial: bool,
    },
    /// Move blocks back to main, verified.
    Unmap {
        blocks: Vec<BlockRange>,
    },
    /// Start a background scrub from the persisted cursor.
    ScrubStart {
        #[serde(default)]
        rate_bytes_per_s: Option<u64>,
    },
    /// Stop the background scrub (its cursor is saved).
    ScrubStop {},
    ScrubStatus {},
    /// Change thresholds or read retries (persisted).
    Set {
        changes: SettingChanges,
    },
}

impl Request {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Health {} => "health",
            Request::Map { .. } => "map",
            Request::Unmap { .. } => "unmap",
            Request::ScrubStart { .. } => "scrub-start",
            Request::ScrubStop {} => "scrub-stop",
            Request::ScrubStatus {} => "scrub-status",
            Request::Set { .. } => "set",
        }
    }
}

/// One reply: `result` when `ok`, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The refusal is a usage error (a block past the end, inverted thresholds, a bad
    /// request): the client exits 2, as the same mistake does offline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage: bool,
}

impl Reply {
    fn ok(result: Value) -> Reply {
        Reply {
            ok: true,
            result: Some(result),
            error: None,
            usage: false,
        }
    }

    fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(message.into()),
            usage: false,
        }
    }

    fn usage_error(message: impl Into<String>) -> Reply {
        Reply {
            usage: true,
            ..Reply::error(message)
        }
    }
}

/// A request's refusal: its text, and whether the same mistake is a usage error offline
/// (then the reply says so and the client exits 2).
pub trait Refusal: std::fmt::Display {
    fn is_usage(&self) -> bool;
}

impl Refusal for Infallible {
    fn is_usage(&self) -> bool {
        match *self {}
    }
}

impl Refusal for MapError {
    fn is_usage(&self) -> bool {
        matches!(
            self,
            MapError::NoBlocks | MapError::TooMany { .. } | MapError::OutOfRange(_)
        )
    }
}

impl Refusal for ScrubStartError {
    fn is_usage(&self) -> bool {
        matches!(self, ScrubStartError::ZeroRate)
    }
}

impl Refusal for SettingsError {
    fn is_usage(&self) -> bool {
        self.is_invalid()
    }
}

/// Why talking over the control socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("{}: cannot connect to the control socket: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: control socket I/O failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: the server's reply is not understood: {reason}", path.display())]
    Protocol {
        path: PathBuf,
        #[source]
        reason: ProtocolFault,
    },
    #[error("{}: the server refused the request: {message}", path.display())]
    Refused { path: PathBuf, message: String },
    /// Refused as a usage error (the client exits 2, as offline).
    #[error("{}: the server refused the request: {message}", path.display())]
    UsageRefused { path: PathBuf, message: String },
    #[error("{}: another server already listens on this control socket", path.display())]
    InUse { path: PathBuf },
    #[error("{}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{}: cannot listen on the control socket: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What was wrong with a server's reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolFault {
    #[error("the server closed the connection without a reply")]
    NoReply,
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("a success without a result")]
    NoResult,
    #[error("{0}")]
    Decode(#[from] serde_json::Error),
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(Vec<u8>),
    /// The peer closed the connection.
    End,
    /// Longer than the limit; the bytes read are discarded.
    TooLong,
    /// Nothing came for the idle timeout, or the server is stopping.
    GiveUp,
}

/// Read one line of at most `max` bytes. A read timeout on the socket makes this wake up
/// every so often to ask `give_up`. After [`Line::TooLong`] the rest of that line is still
/// unread: the caller closes the connection.
fn read_line(
    reader: &mut impl BufRead,
    max: usize,
    give_up: &mut dyn FnMut() -> bool,
) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if give_up() {
                    return Ok(Line::GiveUp);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::End
            } else {
                Line::Text(line)
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Line::Text(line));
        }
    }
}

/// The control socket of a running server.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Listen on `path`. A stale socket (nobody listening) is replaced; a live one, or a
    /// file that is not a socket, is refused.
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let bind_error = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve connections on a thread until `live` stops; then remove the socket file.
    pub fn spawn<M: BlockBackend + 'static, S: BlockBackend + 'static>(
        self,
        live: Arc<Live<M, S>>,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("remap-control".into())
            .spawn(move || self.accept_loop(&live))
    }

    fn accept_loop<M: BlockBackend + 'static, S: BlockBackend + 'static>(
        self,
        live: &Arc<Live<M, S>>,
    ) {
        let active = Arc::new(AtomicUsize::new(0));
        let ids = AtomicU64::new(0);
        let mut handlers: Vec<JoinHandle<()>> = Vec::new();
        while !live.is_stopping() {
            handlers.retain(|h| !h.is_finished());
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let id = ids.fetch_add(1, Ordering::Relaxed) + 1;
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                tracing::warn!(
                    conn = id,
                    "control connection refused: too many connections"
                );
                let _ = stream.set_nonblocking(false);
                let _ = send(
                    &mut &stream,
                    &Reply::error(format!(
                        "too many control connections (at most {MAX_CONNECTIONS})"
                    )),
                );
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let slot = Slot(active.clone());
            let live = live.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("remap-control-{id}"))
                .spawn(move || {
                    // Released on return and on unwinding alike.
                    let _slot = slot;
                    serve_connection(stream, id, &live);
                });
            match spawned {
                Ok(h) => handlers.push(h),
                Err(e) => tracing::warn!(error = %e, "control connection dropped: no thread"),
            }
        }
        for h in handlers {
            let _ = h.join();
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] connection slots, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn send(out: &mut impl Write, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// One connection: requests in, replies out, until the peer closes it, it idles too long,
/// or the server stops.
fn serve_connection<M: BlockBackend + 'static, S: BlockBackend + 'static>(
    stream: UnixStream,
    id: u64,
    live: &Live<M, S>,
) {
    tracing::info!(conn = id, "control connection opened");
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .and_then(|()| stream.set_write_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|()| stream.try_clone());
    let mut writer = match setup {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(conn = id, error = %e, "control connection: socket setup failed");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut requests = 0u64;
    let why = loop {
        let idle_since = Instant::now();
        let mut give_up = || live.is_stopping() || idle_since.elapsed() >= IDLE_TIMEOUT;
        let line = match read_line(&mut reader, MAX_REQUEST_BYTES, &mut give_up) {
            Ok(l) => l,
            Err(e) => break format!("read failed: {e}"),
        };
        let reply = match line {
            Line::End => break "closed by the client".to_string(),
            Line::GiveUp => break "idle or server stopping".to_string(),
            Line::TooLong => {
                let _ = send(
                    &mut writer,
                    &Reply::error(format!(
                        "request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"
                    )),
                );
                break "request too long".to_string();
            }
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(text) => {
                requests += 1;
                handle(&text, id, live)
            }
        };
        if let Err(e) = send(&mut writer, &reply) {
            break format!("write failed: {e}");
        }
    };
    tracing::info!(conn = id, requests, reason = %why, "control connection closed");
}

/// Answer one request line.
fn handle<M: BlockBackend + 'static, S: BlockBackend + 'static>(
    text: &[u8],
    id: u64,
    live: &Live<M, S>,
) -> Reply {
    let request: Request = match serde_json::from_slice(text) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(conn = id, error = %e, "control: bad request");
            return Reply::usage_error(format!("bad request: {e}"));
        }
    };
    tracing::info!(conn = id, cmd = request.name(), "control command");
    let reply = match request {
        Request::Status {} => answer(Ok::<_, Infallible>(live.status())),
        Request::Health {} => answer(Ok::<_, Infallible>(live.health())),
        Request::Map {
            blocks,
            zero_unreadable,
            partial,
        } => answer(live.map(&blocks, zero_unreadable, partial)),
        Request::Unmap { blocks } => answer(live.unmap(&blocks)),
        Request::ScrubStart { rate_bytes_per_s } => answer(live.scrub_start(rate_bytes_per_s)),
        Request::ScrubStop {} => answer(Ok::<_, Infallible>(live.scrub_stop())),
        Request::ScrubStatus {} => answer(Ok::<_, Infallible>(live.scrub_status())),
        Request::Set { changes } => answer(live.set(&changes).map(SavedSettings::from)),
    };
    if let Some(message) = &reply.error {
        tracing::info!(conn = id, error = %message, "control: request refused");
    }
    reply
}

/// The reply to a request's outcome: its result encoded, or its error's text and whether
/// it is a usage error (the wire carries the message; the typed error stays in the
/// server's log).
fn answer<T: Serialize, E: Refusal>(result: Result<T, E>) -> Reply {
    match result {
        Ok(v) => match serde_json::to_value(&v) {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(format!("cannot encode the reply: {e}")),
        },
        Err(e) if e.is_usage() => Reply::usage_error(e.to_string()),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// Send one request to the server at `path` and return its result.
pub fn call(path: &Path, request: &Request) -> Result<Value, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_error)?;
    let mut line = serde_json::to_vec(request).map_err(|e| io_error(io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_error)?;
    let mut reader = BufReader::new(&stream);
    let text = match read_line(&mut reader, MAX_REPLY_BYTES, &mut || true).map_err(io_error)? {
        Line::Text(t) => t,
        Line::End => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                reason: ProtocolFault::NoReply,
            });
        }
        Line::TooLong => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                reason: ProtocolFault::TooLong,
            });
        }
        Line::GiveUp => {
            return Err(io_error(io::Error::new(
                io::ErrorKind::TimedOut,
                "no reply in time",
            )));
        }
    };
    let reply: Reply = serde_json::from_slice(&text).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: ProtocolFault::Decode(e),
    })?;
    match (reply.ok, reply.result, reply.error) {
        (true, Some(v), _) => Ok(v),
        (true, None, _) => Err(ControlError::Protocol {
            path: path.to_path_buf(),
            reason: ProtocolFault::NoResult,
        }),
        (false, _, message) => {
            let message = message.unwrap_or_else(|| "no reason given".to_string());
            let path = path.to_path_buf();
            Err(if reply.usage {
                ControlError::UsageRefused { path, message }
            } else {
                ControlError::Refused { path, message }
            })
        }
    }
}

/// [`call`], decoding the result as `T`.
pub fn call_as<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T, ControlError> {
    let v = call(path, request)?;
    serde_json::from_value(v).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: ProtocolFault::Decode(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            let l = read_line(&mut r, max, &mut || true).unwrap();
            let end = matches!(l, Line::End | Line::TooLong);
            out.push(l);
            if end {
                return out;
            }
        }
    }

    #[test]
    fn lines_are_bounded() {
        // Lines split across buffer refills, a last line without a newline.
        assert_eq!(
            lines(b"short\n0123456789\nok", 10),
            vec![
                Line::Text(b"short".to_vec()),
                Line::Text(b"0123456789".to_vec()),
                Line::Text(b"ok".to_vec()),
                Line::End
            ]
        );
        // One byte over the limit, whether or not its newline has arrived yet.
        assert_eq!(
            lines(b"ok\n0123456789a\nnever read", 10),
            vec![Line::Text(b"ok".to_vec()), Line::TooLong]
        );
        assert_eq!(lines(b"0123456789abcdef", 10), vec![Line::TooLong]);
    }

    #[test]
    fn requests_parse_and_unknown_fields_or_commands_are_refused() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"map","blocks":[{"first":1,"last":3}]}"#).unwrap();
        assert_eq!(
            r,
            Request::Map {
                blocks: vec![BlockRange { first: 1, last: 3 }],
                zero_unreadable: false,
                partial: false,
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"scrub-start"}"#).unwrap();
        assert_eq!(
            r,
            Request::ScrubStart {
                rate_bytes_per_s: None
            }
        );
        for bad in [
            r#"{"cmd":"frobnicate"}"#,
            r#"{"cmd":"status","extra":1}"#,
            r#"{"blocks":[]}"#,
            r#"{"cmd":"map","blocks":[{"first":"x"}]}"#,
            r#"[1,2]"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reply_round_trips() {
        let r = Reply::error("nope");
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"ok":false,"error":"nope"}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
    }
}
