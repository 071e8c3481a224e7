//! `remap-ublk`: a remapped device pair served as a local block device, `/dev/ublkbN`,
//! through Linux's ublk (`ublk_drv`: a block device served from userspace over io_uring),
//! with no kernel module of ours. The engine, health, scrub, metrics and control are
//! those of `remap-service`; this crate adds the ublk side:
//!
//! - [`support`]: whether the kernel has ublk (a clear refusal when it does not);
//! - [`attach()`](attach::attach): open the pair, add (or recover) the device, serve it;
//! - [`request`]: one ublk request through the engine, and its result on the wire;
//! - [`registry`]: the ublk devices and which pair each serves (`--recover`, detach);
//! - [`detach()`](detach::detach): stop the daemon serving a device, or remove a device
//!   whose daemon died.
//!
//! The ublk control commands, queue rings and buffers come from `libublk` (see README.md).
#![forbid(unsafe_code)]

pub mod attach;
pub mod detach;
pub mod error;
pub mod registry;
pub mod request;
pub mod support;

pub use attach::{AttachConfig, AttachSummary, Attached, AttachedInfo, Stopper, attach};
pub use detach::{Detached, detach};
pub use error::{AttachError, DetachError};
pub use support::check_kernel;
