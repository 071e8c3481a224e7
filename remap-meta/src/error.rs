//! Errors of the format layer. Every decoder returns one of these for bad bytes; none panics.

use core::fmt;

use remap_core::record::ApplyError;

/// Which on-disk structure an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum Region {
    SuperblockA,
    SuperblockB,
    /// The copy in the last 4 KiB of the spare device (format version 2).
    SuperblockTail,
    /// A journal block at this ring position.
    Journal(u32),
    /// Checkpoint area 0 or 1.
    Checkpoint(u8),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::SuperblockA => f.write_str("superblock A"),
            Region::SuperblockB => f.write_str("superblock B"),
            Region::SuperblockTail => f.write_str("superblock tail copy"),
            Region::Journal(p) => write!(f, "journal block {p}"),
            Region::Checkpoint(a) => write!(f, "checkpoint area {a}"),
        }
    }
}

/// Bytes that are not a valid structure of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{region}: no remap metadata here (bad magic)")]
    BadMagic { region: Region },
    #[error(
        "{region}: format version {found} is not supported (this build reads versions 1 and 2)"
    )]
    UnsupportedVersion { region: Region, found: u32 },
    #[error("{region}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        region: Region,
        stored: u32,
        computed: u32,
    },
    #[error("{region}: block is {len} bytes, expected {expected}")]
    BadLength {
        region: Region,
        len: usize,
        expected: usize,
    },
    #[error("{region}: field {field} has an invalid value {value}")]
    BadField {
        region: Region,
        field: &'static str,
        value: u64,
    },
    #[error("{region}: reserved bytes are not zero")]
    ReservedNotZero { region: Region },
    #[error("{region}: belongs to another device (uuid differs)")]
    ForeignUuid { region: Region },
    #[error("{region}: geometry is inconsistent: {why}")]
    Geometry { region: Region, why: &'static str },
    #[error("{region}: entry {index} is invalid: {why}")]
    BadEntry {
        region: Region,
        index: u64,
        why: EntryProblem,
    },
}

/// What is wrong with a checkpoint entry or journal record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    #[error("blocks out of order or duplicated (block {lba})")]
    Unordered { lba: u64 },
    #[error("unknown kind or flags {0:#x}")]
    UnknownKind(u16),
    #[error(transparent)]
    Rejected(#[from] ApplyError),
}

impl FormatError {
    pub fn region(&self) -> Region {
        match self {
            FormatError::BadMagic { region }
            | FormatError::UnsupportedVersion { region, .. }
            | FormatError::BadChecksum { region, .. }
            | FormatError::BadLength { region, .. }
            | FormatError::BadField { region, .. }
            | FormatError::ReservedNotZero { region }
            | FormatError::ForeignUuid { region }
            | FormatError::Geometry { region, .. }
            | FormatError::BadEntry { region, .. } => *region,
        }
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for FormatError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
