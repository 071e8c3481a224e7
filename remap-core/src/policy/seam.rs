//! The seams the policy runs against: block I/O on two devices and a journal. Time is a
//! plain `now_s` the caller passes in.

use core::fmt;

use crate::record::Record;
use crate::spare::SpareAllocator;
use crate::table::RemapTable;

/// Which of the two devices an I/O goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Dev {
    Main = 0,
    Spare = 1,
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dev::Main => "main",
            Dev::Spare => "spare",
        })
    }
}

/// What the policy needs to know about a failed I/O.
pub trait IoFault: core::error::Error + 'static {
    /// The block itself failed (it is isolated and moved); anything else (a transport error,
    /// an unsupported operation, no memory) is passed through untouched.
    fn is_media(&self) -> bool;
    /// The positive `errno` a frontend reports for it.
    fn errno(&self) -> i32;
}

/// Synchronous block I/O on the main and the spare device. Offsets and lengths are bytes.
pub trait BlockIo {
    type Error: IoFault;

    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Write; with `fua`, durable before it returns.
    fn write(&mut self, dev: Dev, offset: u64, buf: &[u8], fua: bool) -> Result<(), Self::Error>;

    /// Make every completed write on `dev` durable.
    fn flush(&mut self, dev: Dev) -> Result<(), Self::Error>;

    /// "Data durable before record": the spare-block writes done so far must reach stable
    /// media before the next journal record does. Userspace flushes the spare here; the
    /// kernel defers it to a `REQ_PREFLUSH` on the journal write that follows.
    fn order_spare_data(&mut self) -> Result<(), Self::Error>;

    /// Discard (advisory): a device without support succeeds doing nothing.
    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), Self::Error>;

    /// Make `[offset, offset + len)` read as zeroes.
    fn write_zeroes(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), Self::Error>;
}

/// Durable storage for records, over the same I/O the policy uses (the kernel's journal
/// lives on the spare device and shares its bios; userspace keeps its own handle).
pub trait Journal<I: ?Sized> {
    type Error: core::error::Error + 'static;

    /// Make `records` durable, in order, before returning. They are already applied to
    /// `table` and `spares`; the data they point at was ordered before them
    /// ([`BlockIo::order_spare_data`]).
    fn commit_records(
        &mut self,
        io: &mut I,
        records: &[Record],
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), Self::Error>;

    /// Write the whole state (on a clean shutdown, a suspend, or on request).
    fn write_checkpoint(
        &mut self,
        io: &mut I,
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), Self::Error>;
}
