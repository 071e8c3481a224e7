//! The errors of each layer: decoding ([`ProtoError`]), negotiation ([`HandshakeError`]),
//! the command loop ([`TransmissionError`]) and the server itself ([`ServerError`]).
//!
//! A client's bad *request* is never one of these: it gets an NBD error reply and the
//! connection goes on. These errors end a connection (or, for [`ServerError`], the server).

use std::io;

use remap_core::IoError;

/// A frame that does not decode. Every decoder in [`crate::proto`] returns this instead of
/// panicking, and checks every length against the bytes at hand before using it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("{what}: bad magic {found:#x} (expected {expected:#x})")]
    BadMagic {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("{what}: {have} bytes where {need} are needed")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("{what}: length {len} is above the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what}: {count} items is above the limit of {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: u64,
    },
    #[error("{what}: {extra} bytes left over after the last field")]
    TrailingBytes { what: &'static str, extra: u64 },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}

/// Why option haggling ended without reaching the transmission phase (or why the connection
/// was closed during it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("reading the client flags failed: {0}")]
    ReadClientFlags(#[source] io::Error),
    #[error("client sent flags {flags:#x}, which include flags this server does not know")]
    UnknownClientFlags { flags: u32 },
    #[error("reading an option header failed: {0}")]
    ReadOptionHeader(#[source] io::Error),
    #[error("malformed option header: {0}")]
    DecodeOptionHeader(#[source] ProtoError),
    #[error("reading the {len} data bytes of option {option} failed: {source}")]
    ReadOptionData {
        option: u32,
        len: u32,
        #[source]
        source: io::Error,
    },
    #[error("replying to option {option} failed: {source}")]
    SendReply {
        option: u32,
        #[source]
        source: io::Error,
    },
    #[error("client aborted the negotiation")]
    Aborted,
    #[error("client asked for export {name:?} with NBD_OPT_EXPORT_NAME, which does not exist")]
    UnknownExport { name: String },
    #[error("client sent more than {max} options")]
    TooManyOptions { max: u32 },
    #[error(
        "option {option} announced {len} bytes of data, above this server's limit of {max}; \
         closed without reading it"
    )]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("the server is serving its limit of {max} connections")]
    NoSlot { max: usize },
    #[error("closed by the server (negotiation deadline, or room made for a newer client)")]
    Closed,
}

/// Why the transmission phase of a connection ended other than by `NBD_CMD_DISC`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransmissionError {
    #[error("reading a request header failed: {0}")]
    ReadRequest(#[source] io::Error),
    #[error("malformed request header: {0}")]
    DecodeRequest(#[source] ProtoError),
    #[error("reading the {len}-byte payload of the write at offset {offset} failed: {source}")]
    ReadPayload {
        offset: u64,
        len: u32,
        #[source]
        source: io::Error,
    },
    #[error("sending the reply to request {cookie:#x} failed: {source}")]
    SendReply {
        cookie: u64,
        #[source]
        source: io::Error,
    },
}

/// Why the server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("bad server configuration: {reason}")]
    Config { reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the shutdown wake-up: {0}")]
    Wakeup(#[source] io::Error),
    #[error("waiting for connections failed: {0}")]
    Poll(#[source] io::Error),
    #[error(
        "the final flush of the export failed; data written by clients may not be durable: {0}"
    )]
    FinalFlush(#[source] IoError),
}
