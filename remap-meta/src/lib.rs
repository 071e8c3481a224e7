//! `remap-meta`: the on-disk format of remap's spare device and everything that reads or
//! writes it. `docs/format.md` at the top of the repository draws every byte.
//!
//! The spare device starts with two superblock copies, a journal ring and two checkpoint
//! areas; the spare block pool follows. A change to the remap table costs one journal block
//! write and a flush; when the journal fills, the whole table is checkpointed into the
//! inactive area and the superblocks are updated to point at it. Recovery is the newest valid
//! checkpoint plus the valid, contiguous tail of the journal.
//!
//! Without the default `std` feature the crate is `no_std` + `alloc`: encode/decode, the
//! geometry, recovery and the commit/checkpoint sequencing, all over the small [`MetaIo`]
//! trait, so the kernel target runs exactly this code against its own block I/O.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod checkpoint;
pub mod checksum;
pub mod commit;
pub mod counters;
pub mod error;
pub mod journal;
pub mod layout;
pub mod recovery;
pub mod superblock;
pub mod table_options;
pub mod wire;

#[cfg(feature = "std")]
pub mod check;
#[cfg(feature = "std")]
pub mod create;
#[cfg(feature = "std")]
pub mod identity;
#[cfg(feature = "std")]
pub mod io;
#[cfg(feature = "std")]
pub mod open;
#[cfg(feature = "std")]
pub mod salvage;
#[cfg(feature = "std")]
pub mod store;
#[cfg(feature = "std")]
pub mod upgrade;

pub use error::{FormatError, Region};
pub use journal::{Journal, StateView};
pub use layout::Geometry;
pub use recovery::{Recovered, RecoveryReport, recover};
pub use superblock::{DeviceIdentity, IdentityKind, Superblock};

#[cfg(feature = "std")]
pub use check::{CheckReport, RepairReport, check, repair};
#[cfg(feature = "std")]
pub use create::{CreateOptions, create};
#[cfg(feature = "std")]
pub use open::{MetaError, OpenedDevice, inspect, open};
#[cfg(feature = "std")]
pub use salvage::{SalvageReport, salvage};
#[cfg(feature = "std")]
pub use upgrade::{UpgradeReport, upgrade};

/// The unit of every metadata write: superblocks, journal blocks, checkpoint pieces.
pub const META_BLOCK: usize = 4096;

/// Synchronous block I/O on the spare device, as the format code needs it. The userspace
/// store implements it over a `BlockBackend`; the kernel target over bios. Offsets and
/// lengths are multiples of 512 (every metadata write is whole 4 KiB blocks).
pub trait MetaIo {
    type Error;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}
