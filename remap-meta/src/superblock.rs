//! The superblock: identity, geometry and where recovery starts. Two copies at the head, at
//! 0 and 4096, and (version 2) a third in the last 4 KiB of the spare device. Every update
//! writes all copies with the same contents, the copy recovery trusted last
//! ([`crate::journal::write_superblocks`]), so a torn write damages at most the copy being
//! written and another still describes a complete, intact state.

use remap_core::{BlockSize, HealthThresholds};

use crate::META_BLOCK;
use crate::checksum::crc32c;
use crate::error::{FormatError, Region};
use crate::layout::Geometry;
use crate::wire::Writer;

pub const MAGIC: [u8; 8] = *b"REMAP\0SB";
/// The format version this build writes when it formats a spare.
pub const VERSION: u32 = 2;
/// The oldest format version this build reads (and keeps writing, until upgraded).
pub const OLDEST_VERSION: u32 = 1;
/// Bytes of main-device identity a superblock holds.
pub const IDENTITY_MAX: usize = 128;
/// The most read retries a superblock may ask for: the engine's own limit.
pub use remap_core::policy::MAX_READ_RETRIES;
/// The checksum covers everything before it.
const CRC_AT: usize = META_BLOCK - 4;

// Field offsets (docs/format.md draws them).
const O_MAGIC: usize = 0;
const O_VERSION: usize = 8;
const O_META_BLOCK: usize = 12;
const O_SEQUENCE: usize = 16;
const O_UUID: usize = 24;
const O_CREATED: usize = 40;
const O_BLOCK_SIZE: usize = 48;
const O_FLAGS: usize = 52;
const O_MAIN_SIZE: usize = 56;
const O_SPARE_SIZE: usize = 64;
const O_JOURNAL_OFFSET: usize = 72;
const O_JOURNAL_BLOCKS: usize = 80;
const O_CK0: usize = 88;
const O_CK1: usize = 96;
const O_CK_BYTES: usize = 104;
const O_POOL_OFFSET: usize = 112;
const O_POOL_BLOCKS: usize = 120;
const O_CAPACITY: usize = 128;
const O_ACTIVE: usize = 136;
const O_ID_KIND: usize = 137;
const O_ID_LEN: usize = 138;
const O_RETRIES: usize = 140;
const O_CK_SEQ: usize = 144;
const O_J_SEQ: usize = 152;
const O_J_POS: usize = 160;
const O_THRESHOLDS: usize = 168;
const O_SCRUB_CURSOR: usize = 208;
const O_SCRUB_PASSES: usize = 216;
const O_IDENTITY: usize = 224;
const END: usize = O_IDENTITY + IDENTITY_MAX;

/// How the main device was identified when the spare was formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[cfg_attr(feature = "std", serde(rename_all = "kebab-case"))]
#[repr(u8)]
pub enum IdentityKind {
    /// A regular file or a device without a stable identity: only the size is checked.
    None = 0,
    /// The World Wide Name / `wwid` of a disk.
    Wwid = 1,
    /// The drive's serial number.
    Serial = 2,
    /// A device-mapper device's UUID.
    DmUuid = 3,
}

impl IdentityKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => IdentityKind::None,
            1 => IdentityKind::Wwid,
            2 => IdentityKind::Serial,
            3 => IdentityKind::DmUuid,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::None => "none",
            IdentityKind::Wwid => "wwid",
            IdentityKind::Serial => "serial",
            IdentityKind::DmUuid => "dm-uuid",
        }
    }
}

/// The main device's identity: a kind and up to 128 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    pub kind: IdentityKind,
    len: u8,
    bytes: [u8; IDENTITY_MAX],
}

impl core::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{:?}", self.kind.as_str(), self.value_lossy())
    }
}

impl DeviceIdentity {
    pub const NONE: DeviceIdentity = DeviceIdentity {
        kind: IdentityKind::None,
        len: 0,
        bytes: [0; IDENTITY_MAX],
    };

    /// An identity; values longer than 128 bytes are cut (identities are compared whole, so
    /// cutting both sides the same way is fine).
    pub fn new(kind: IdentityKind, value: &[u8]) -> Self {
        if kind == IdentityKind::None {
            return Self::NONE;
        }
        let n = value.len().min(IDENTITY_MAX);
        let mut bytes = [0u8; IDENTITY_MAX];
        bytes[..n].copy_from_slice(&value[..n]);
        DeviceIdentity {
            kind,
            len: n as u8,
            bytes,
        }
    }

    pub fn value(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The value as text, for messages.
    pub fn value_lossy(&self) -> &str {
        core::str::from_utf8(self.value()).unwrap_or("<binary>")
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for DeviceIdentity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("DeviceIdentity", 2)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("value", self.value_lossy())?;
        st.end()
    }
}

/// A decoded superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Superblock {
    /// Format version of this spare: 1 (two head copies, journal blocks without counters)
    /// or 2 (a tail copy too, counters in every journal block). An open never changes it;
    /// only [`crate::upgrade`] does.
    pub version: u32,
    /// Generation of the superblock; grows by one on every update.
    pub sequence: u64,
    pub uuid: [u8; 16],
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    pub geometry: Geometry,
    pub identity: DeviceIdentity,
    /// Which checkpoint area holds the newest checkpoint.
    pub active_checkpoint: u8,
    /// Generation of that checkpoint.
    pub checkpoint_sequence: u64,
    /// Sequence number of the first journal block after that checkpoint...
    pub journal_start_sequence: u64,
    /// ...and its position in the ring.
    pub journal_start_position: u32,
    pub read_retries: u32,
    pub thresholds: HealthThresholds,
    /// Next block a scrub will read (a scrub resumes here).
    pub scrub_cursor: u64,
    /// Completed scrub passes.
    pub scrub_passes: u64,
}

impl Superblock {
    /// Check the fields that encode does not police by construction. Used before every
    /// write and after every read.
    pub fn validate(&self, region: Region) -> Result<(), FormatError> {
        self.geometry.validate(region)?;
        let bad = |field, value| {
            Err(FormatError::BadField {
                region,
                field,
                value,
            })
        };
        if !(OLDEST_VERSION..=VERSION).contains(&self.version) {
            return bad("version", u64::from(self.version));
        }
        if self.version >= 2 && !self.geometry.leaves_room_for_tail() {
            return Err(FormatError::Geometry {
                region,
                why: "spare pool overlaps the tail superblock copy",
            });
        }
        if self.sequence == 0 {
            return bad("sequence", 0);
        }
        if self.active_checkpoint > 1 {
            return bad("active_checkpoint", u64::from(self.active_checkpoint));
        }
        if self.journal_start_position >= self.geometry.journal_blocks {
            return bad(
                "journal_start_position",
                u64::from(self.journal_start_position),
            );
        }
        if self.journal_start_sequence == 0 {
            return bad("journal_start_sequence", 0);
        }
        if self.read_retries > MAX_READ_RETRIES {
            return bad("read_retries", u64::from(self.read_retries));
        }
        if self.thresholds.validate().is_err() {
            return bad("thresholds", 0);
        }
        if self.scrub_cursor > self.geometry.main_blocks() {
            return bad("scrub_cursor", self.scrub_cursor);
        }
        Ok(())
    }

    /// The 4 KiB on-disk image. Refuses a superblock that would not decode.
    pub fn encode(&self, region: Region) -> Result<[u8; META_BLOCK], FormatError> {
        let mut b = [0u8; META_BLOCK];
        self.encode_into(region, &mut b)?;
        Ok(b)
    }

    /// [`Superblock::encode`] into a caller's 4 KiB buffer, so that no-std callers (the
    /// kernel target, whose stack is 16 KiB) can keep the image off the stack.
    pub fn encode_into(&self, region: Region, b: &mut [u8; META_BLOCK]) -> Result<(), FormatError> {
        self.validate(region)?;
        b.fill(0);
        let mut w = Writer(b);
        let g = &self.geometry;
        w.bytes(O_MAGIC, &MAGIC);
        w.u32(O_VERSION, self.version);
        w.u32(O_META_BLOCK, META_BLOCK as u32);
        w.u64(O_SEQUENCE, self.sequence);
        w.bytes(O_UUID, &self.uuid);
        w.u64(O_CREATED, self.created_ns);
        w.u32(O_BLOCK_SIZE, g.block_size.bytes());
        w.u32(O_FLAGS, 0);
        w.u64(O_MAIN_SIZE, g.main_size);
        w.u64(O_SPARE_SIZE, g.spare_size);
        w.u64(O_JOURNAL_OFFSET, crate::layout::JOURNAL_OFFSET);
        w.u32(O_JOURNAL_BLOCKS, g.journal_blocks);
        w.u64(O_CK0, g.checkpoint_offsets[0]);
        w.u64(O_CK1, g.checkpoint_offsets[1]);
        w.u64(O_CK_BYTES, g.checkpoint_area_bytes);
        w.u64(O_POOL_OFFSET, g.pool_offset);
        w.u64(O_POOL_BLOCKS, g.pool_blocks);
        w.u64(O_CAPACITY, g.table_capacity);
        w.u8(O_ACTIVE, self.active_checkpoint);
        w.u8(O_ID_KIND, self.identity.kind as u8);
        w.u16(O_ID_LEN, u16::from(self.identity.len));
        w.u32(O_RETRIES, self.read_retries);
        w.u64(O_CK_SEQ, self.checkpoint_sequence);
        w.u64(O_J_SEQ, self.journal_start_sequence);
        w.u32(O_J_POS, self.journal_start_position);
        let t = &self.thresholds;
        w.u32(O_THRESHOLDS, t.error_rate_degraded_ppm);
        w.u32(O_THRESHOLDS + 4, t.error_rate_critical_ppm);
        w.u64(O_THRESHOLDS + 8, t.min_ios_for_rate);
        w.u8(O_THRESHOLDS + 16, t.spare_used_degraded_pct);
        w.u8(O_THRESHOLDS + 17, t.spare_used_critical_pct);
        w.u64(O_THRESHOLDS + 24, t.pending_degraded);
        w.u64(O_THRESHOLDS + 32, t.pending_critical);
        w.u64(O_SCRUB_CURSOR, self.scrub_cursor);
        w.u64(O_SCRUB_PASSES, self.scrub_passes);
        w.bytes(O_IDENTITY, self.identity.value());
        let crc = crc32c(&b[..CRC_AT]);
        Writer(b).u32(CRC_AT, crc);
        Ok(())
    }

    /// Decode a superblock copy. Total: any bytes give a superblock or a typed error.
    pub fn decode(bytes: &[u8], region: Region) -> Result<Superblock, FormatError> {
        let r = crate::wire::checked_block(bytes, &MAGIC, region)?;
        let version = r.u32(O_VERSION);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                region,
                found: version,
            });
        }
        let bad = |field, value: u64| FormatError::BadField {
            region,
            field,
            value,
        };
        if r.u32(O_META_BLOCK) != META_BLOCK as u32 {
            return Err(bad("meta_block_size", u64::from(r.u32(O_META_BLOCK))));
        }
        if r.u32(O_FLAGS) != 0 {
            return Err(bad("flags", u64::from(r.u32(O_FLAGS))));
        }
        if r.u64(O_JOURNAL_OFFSET) != crate::layout::JOURNAL_OFFSET {
            return Err(bad("journal_offset", r.u64(O_JOURNAL_OFFSET)));
        }
        let block_size = BlockSize::new(u64::from(r.u32(O_BLOCK_SIZE)))
            .map_err(|_| bad("block_size", u64::from(r.u32(O_BLOCK_SIZE))))?;
        let kind = IdentityKind::from_u8(r.u8(O_ID_KIND))
            .ok_or_else(|| bad("identity_kind", u64::from(r.u8(O_ID_KIND))))?;
        let id_len = usize::from(r.u16(O_ID_LEN));
        if id_len > IDENTITY_MAX || (kind == IdentityKind::None && id_len != 0) {
            return Err(bad("identity_len", id_len as u64));
        }
        if !r.zero(O_IDENTITY + id_len, CRC_AT)
            || !r.zero(O_J_POS + 4, O_THRESHOLDS)
            || !r.zero(O_THRESHOLDS + 18, O_THRESHOLDS + 24)
        {
            return Err(FormatError::ReservedNotZero { region });
        }
        let identity = DeviceIdentity::new(kind, &bytes[O_IDENTITY..O_IDENTITY + id_len]);
        let sb = Superblock {
            version,
            sequence: r.u64(O_SEQUENCE),
            uuid: r.bytes(O_UUID),
            created_ns: r.u64(O_CREATED),
            geometry: Geometry {
                block_size,
                main_size: r.u64(O_MAIN_SIZE),
                spare_size: r.u64(O_SPARE_SIZE),
                journal_blocks: r.u32(O_JOURNAL_BLOCKS),
                checkpoint_offsets: [r.u64(O_CK0), r.u64(O_CK1)],
                checkpoint_area_bytes: r.u64(O_CK_BYTES),
                pool_offset: r.u64(O_POOL_OFFSET),
                pool_blocks: r.u64(O_POOL_BLOCKS),
                table_capacity: r.u64(O_CAPACITY),
            },
            identity,
            active_checkpoint: r.u8(O_ACTIVE),
            checkpoint_sequence: r.u64(O_CK_SEQ),
            journal_start_sequence: r.u64(O_J_SEQ),
            journal_start_position: r.u32(O_J_POS),
            read_retries: r.u32(O_RETRIES),
            thresholds: HealthThresholds {
                error_rate_degraded_ppm: r.u32(O_THRESHOLDS),
                error_rate_critical_ppm: r.u32(O_THRESHOLDS + 4),
                min_ios_for_rate: r.u64(O_THRESHOLDS + 8),
                spare_used_degraded_pct: r.u8(O_THRESHOLDS + 16),
                spare_used_critical_pct: r.u8(O_THRESHOLDS + 17),
                pending_degraded: r.u64(O_THRESHOLDS + 24),
                pending_critical: r.u64(O_THRESHOLDS + 32),
            },
            scrub_cursor: r.u64(O_SCRUB_CURSOR),
            scrub_passes: r.u64(O_SCRUB_PASSES),
        };
        sb.validate(region)?;
        Ok(sb)
    }

    /// Whether these bytes start with the superblock magic: a spare that already holds
    /// remap metadata (valid or not) is never formatted over without being told to.
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.get(..8) == Some(&MAGIC[..])
    }
}

const _: () = assert!(END <= CRC_AT);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Superblock {
        let geometry =
            Geometry::plan(32 << 20, 1 << 30, BlockSize::new(4096).unwrap(), 64, None).unwrap();
        Superblock {
            version: VERSION,
            sequence: 7,
            uuid: [0xAB; 16],
            created_ns: 1_700_000_000_000_000_000,
            geometry,
            identity: DeviceIdentity::new(IdentityKind::Serial, b"WD-WCC4N1234567"),
            active_checkpoint: 1,
            checkpoint_sequence: 3,
            journal_start_sequence: 42,
            journal_start_position: 17,
            read_retries: 3,
            thresholds: HealthThresholds::default(),
            scrub_cursor: 12,
            scrub_passes: 1,
        }
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        let bytes = sb.encode(Region::SuperblockA).unwrap();
        assert_eq!(Superblock::decode(&bytes, Region::SuperblockA).unwrap(), sb);
        assert!(Superblock::has_magic(&bytes));
        let v1 = Superblock { version: 1, ..sb };
        let bytes = v1.encode(Region::SuperblockB).unwrap();
        assert_eq!(Superblock::decode(&bytes, Region::SuperblockB).unwrap(), v1);
    }

    #[test]
    fn version_two_keeps_the_tail_free() {
        let mut sb = sample();
        sb.geometry.pool_blocks += 1;
        assert!(!sb.geometry.leaves_room_for_tail());
        if sb.geometry.validate(Region::SuperblockA).is_ok() {
            assert!(sb.encode(Region::SuperblockA).is_err());
            assert!(
                Superblock { version: 1, ..sb }
                    .encode(Region::SuperblockA)
                    .is_ok()
            );
        }
        let mut sb = sample();
        sb.version = 3;
        assert!(sb.encode(Region::SuperblockA).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = sample().encode(Region::SuperblockB).unwrap();
        for bit in (0..META_BLOCK * 8).step_by(13) {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Superblock::decode(&b, Region::SuperblockB).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        assert!(matches!(
            Superblock::decode(&[0u8; 100], Region::SuperblockA),
            Err(FormatError::BadLength { .. })
        ));
        assert!(matches!(
            Superblock::decode(&[0u8; META_BLOCK], Region::SuperblockA),
            Err(FormatError::BadMagic { .. })
        ));
        let mut s = sample();
        s.active_checkpoint = 2;
        assert!(s.encode(Region::SuperblockA).is_err());
    }
}
