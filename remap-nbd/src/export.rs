//! The one export a server offers: the backend, its optional state source, its name,
//! description, size constraints and the transmission flags derived from its capabilities.

use std::sync::Arc;

use remap_core::BlockBackend;

use crate::block_status::{BlockStateSource, MetaContext};
use crate::proto::{MAX_STRING_LEN, transmission_flags as tf};

/// The size constraints sent in `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest addressable unit the client should use. The server still serves unaligned
    /// requests correctly (the remapping device does read-modify-write), so a client that
    /// ignores it loses speed, not data.
    pub minimum: u32,
    /// The size at which aligned I/O avoids read-modify-write.
    pub preferred: u32,
    /// The largest read or write payload this server accepts.
    pub maximum: u32,
}

impl BlockSizes {
    /// Derive the constraints for an export of `size` bytes whose natural block is
    /// `block_size` (a power of two up to 64 KiB). The advertised minimum is the largest
    /// power of two not above `block_size` that divides `size`, so the last bytes of an
    /// export whose size is not a multiple of its block stay reachable by a client that
    /// honours the minimum.
    pub fn derive(block_size: u32, size: u64, max_request: u32) -> Result<Self, String> {
        if !block_size.is_power_of_two() || block_size > 65536 {
            return Err(format!(
                "block size {block_size} must be a power of two no larger than 65536"
            ));
        }
        let mut minimum = block_size;
        while minimum > 1 && !size.is_multiple_of(u64::from(minimum)) {
            minimum /= 2;
        }
        let preferred = block_size.max(4096);
        if max_request < preferred || max_request < 65536 {
            return Err(format!(
                "maximum request size {max_request} must be at least 65536 and at least the preferred block size {preferred}"
            ));
        }
        Ok(BlockSizes {
            minimum,
            preferred,
            maximum: max_request,
        })
    }
}

/// An export as the protocol layers see it.
pub(crate) struct Export {
    pub backend: Arc<dyn BlockBackend>,
    pub state: Option<Arc<dyn BlockStateSource>>,
    pub name: String,
    pub description: String,
    pub read_only: bool,
    pub size: u64,
    pub sizes: BlockSizes,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("sizes", &self.sizes)
            .field("has_state", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// Check a string the protocol will carry (export name, description).
pub(crate) fn check_wire_string(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_STRING_LEN {
        return Err(format!(
            "{what} is {} bytes; the NBD limit is {MAX_STRING_LEN}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{what} contains a NUL character"));
    }
    Ok(())
}

impl Export {
    /// Whether a client's export name refers to this export: its name, or the empty
    /// (default) name.
    pub fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// Transmission flags, derived from the backend's capabilities. Flush is global (one
    /// backend behind every connection), so multi-conn is always safe. Write zeroes is
    /// always offered (the backend's default writes zero buffers, correct if not fast);
    /// fast-zero requests succeed only where the backend says it zeroes natively. FUA is
    /// always offered: `write_at_fua` defaults to write + flush.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut flags =
            tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA | tf::CAN_MULTI_CONN | tf::SEND_CACHE;
        if structured {
            // Reads are always answered in one chunk, so "don't fragment" costs nothing.
            flags |= tf::SEND_DF;
        }
        if self.read_only {
            flags |= tf::READ_ONLY;
        } else {
            flags |= tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
            if self.backend.supports_trim() {
                flags |= tf::SEND_TRIM;
            }
        }
        flags
    }

    /// The metadata contexts this export offers.
    pub fn contexts(&self) -> &'static [MetaContext] {
        MetaContext::offered(self.state.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remap_core::MemBackend;

    #[test]
    fn block_sizes_follow_the_export() {
        let s = BlockSizes::derive(4096, 1 << 30, 32 << 20).unwrap();
        assert_eq!((s.minimum, s.preferred, s.maximum), (4096, 4096, 32 << 20));
        let s = BlockSizes::derive(512, 1 << 30, 32 << 20).unwrap();
        assert_eq!((s.minimum, s.preferred), (512, 4096));
        // A size that is not a multiple of the block: the minimum shrinks to fit.
        let s = BlockSizes::derive(4096, 4096 * 10 + 1024, 32 << 20).unwrap();
        assert_eq!(s.minimum, 1024);
        let s = BlockSizes::derive(4096, 4097, 32 << 20).unwrap();
        assert_eq!(s.minimum, 1);
        let s = BlockSizes::derive(65536, 1 << 20, 1 << 20).unwrap();
        assert_eq!(s.preferred, 65536);
        assert!(BlockSizes::derive(3000, 1 << 20, 32 << 20).is_err());
        assert!(BlockSizes::derive(1 << 17, 1 << 20, 32 << 20).is_err());
        assert!(BlockSizes::derive(4096, 1 << 20, 1024).is_err());
    }

    #[test]
    fn flags_follow_capabilities_and_mode() {
        let mut e = Export {
            backend: Arc::new(MemBackend::new(4096)),
            state: None,
            name: "x".into(),
            description: String::new(),
            read_only: false,
            size: 4096,
            sizes: BlockSizes::derive(512, 4096, 1 << 20).unwrap(),
        };
        let f = e.transmission_flags(false);
        assert_ne!(f & tf::SEND_TRIM, 0, "MemBackend trims");
        assert_eq!(f & (tf::READ_ONLY | tf::SEND_DF), 0);
        assert_ne!(e.transmission_flags(true) & tf::SEND_DF, 0);
        e.read_only = true;
        let f = e.transmission_flags(false);
        assert_ne!(f & tf::READ_ONLY, 0);
        assert_eq!(
            f & (tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO),
            0
        );
        assert!(e.matches(b"") && e.matches(b"x") && !e.matches(b"y"));
        assert!(check_wire_string("name", "a\0b").is_err());
        assert!(check_wire_string("name", &"a".repeat(5000)).is_err());
    }
}
