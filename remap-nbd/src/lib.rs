//! `remap-nbd`: an NBD server for any [`remap_core::BlockBackend`], written from the NBD
//! protocol specification (NetworkBlockDevice/nbd `doc/proto.md`).
//!
//! - [`proto`]: the wire format and total decoders;
//! - `handshake`: fixed newstyle negotiation (EXPORT_NAME, GO, INFO, LIST, ABORT,
//!   STRUCTURED_REPLY, LIST/SET_META_CONTEXT; everything else refused politely);
//! - `transmission`: the command loop (READ, WRITE with FUA, FLUSH, TRIM, WRITE_ZEROES with
//!   NO_HOLE and FAST_ZERO, BLOCK_STATUS, CACHE, DISC), simple and structured replies, many
//!   requests in flight, replies out of order;
//! - [`block_status`]: the `base:allocation` and `remap:state` contexts and the
//!   [`BlockStateSource`] trait;
//! - [`server`]: TCP and Unix listeners, graceful shutdown;
//! - `admission`: connection slots by phase (waiting, negotiating, established), the
//!   negotiation deadline, and who is closed to make room;
//! - `refusals`: connections closed before negotiating, logged as one summary per interval;
//! - `replies`: the way out of a connection, small replies completing together sharing a
//!   write;
//! - `splice`: large read replies spliced from the backend's file to the socket.
//!
//! # Guarantees
//!
//! - A FLUSH reply, and the reply to a write with FUA, is sent only after the backend's
//!   `flush` / `write_at_fua` returned: for a `RemapDevice`, data and remap metadata are
//!   durable.
//! - A read that fails is answered with an error and no data.
//! - A bad request gets an error reply and the connection goes on; only a malformed frame
//!   (bad magic), a broken socket or `NBD_CMD_DISC` end a connection.
//! - Every length from the network is checked against a limit before anything is
//!   allocated for it.
//!
//! # Departures from the spec's SHOULDs, on purpose
//!
//! - Requests not aligned to the advertised minimum block size are served (read-modify-write
//!   in the remapping device) rather than refused with `EINVAL`.
//! - `base:allocation` reports everything as allocated data (see [`block_status`]).
//!
//! Writes to a closed socket: Rust programs ignore `SIGPIPE`, so a client that vanishes
//! gives an error on that connection only. A C program embedding this library must ignore
//! `SIGPIPE` itself.
#![forbid(unsafe_code)]

mod admission;
pub mod block_status;
mod buffers;
pub mod error;
mod export;
mod handshake;
mod input;
pub mod proto;
mod refusals;
mod replies;
pub mod server;
mod socket;
mod splice;
mod transmission;

pub use block_status::{BlockStateSource, Extent, REMAP_STATE_PENDING, REMAP_STATE_REMAPPED};
pub use error::{HandshakeError, ProtoError, ServerError, TransmissionError};
pub use export::BlockSizes;
pub use handshake::MAX_OPTIONS;
pub use server::{DEFAULT_PORT, ListenAddr, ServeSummary, Server, ServerConfig, ShutdownHandle};
pub use transmission::MAX_EXTENTS;
