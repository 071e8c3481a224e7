//! `remap-core`: the bad-block remapping engine.
//!
//! A [`RemapDevice`] sits on a failing *main* device and a healthy *spare* device. Every
//! logical block reads and writes its own block on the main device until that block fails;
//! then it moves to a block of the spare pool and stays there. This crate holds the engine:
//!
//! - [`table`]: the remap table (logical block → spare block, pending and retired flags);
//! - [`spare`]: the spare pool allocator;
//! - [`stats`] and [`health`]: counters, latency histogram and the health verdict;
//! - [`record`]: the vocabulary of persistent changes the engine asks a store to make durable;
//! - [`policy`]: what every request and every failure does, over small I/O and journal seams,
//!   run by [`RemapDevice`] and by the kernel target alike;
//! - with `std`: [`backend`] (the [`BlockBackend`] seam and file/memory backends),
//!   [`store`] (the persistence trait) and [`device`] (the remapping device);
//! - with `fault-injection` (a product feature): faulty and crashing backends in [`backend`];
//! - with `test-support` (for tests only): [`testing`], an in-memory store, event logs and a
//!   reference model.
//!
//! Without the default `std` feature the crate is `no_std` + `alloc` and uses no floating
//! point and no 128-bit division, so the kernel target can link the table, allocator,
//! statistics and health.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clock;
pub mod errno;
pub mod geometry;
pub mod health;
pub mod policy;
pub mod record;
pub mod spare;
pub mod stats;
pub mod table;

#[cfg(feature = "std")]
pub mod backend;
#[cfg(feature = "std")]
pub mod device;
#[cfg(feature = "std")]
pub mod hot;
#[cfg(feature = "std")]
pub mod regions;
#[cfg(feature = "std")]
pub mod store;

#[cfg(feature = "test-support")]
pub mod testing;

pub use clock::Clock;
pub use geometry::{BlockSize, GeometryError};
pub use health::{HealthReport, HealthState, HealthThresholds};
pub use record::Record;
pub use spare::{SpareAllocator, SpareError};
pub use stats::{Stats, StatsSnapshot};
pub use table::{Entry, EntryFlags, RemapTable, Segment, TableError};

#[cfg(feature = "std")]
pub use backend::{BlockBackend, FileBackend, IoError, IoOp, Load, MemBackend, Through, Transfer};
#[cfg(feature = "std")]
pub use device::{DeviceConfig, DeviceError, RemapDevice};
#[cfg(feature = "std")]
pub use store::{MetaStore, StoreError};
