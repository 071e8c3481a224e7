//! Any bytes decode to a superblock or a typed error; a decoded superblock re-encodes to the
//! very same bytes (the encoding is canonical: reserved space is zero, the CRC is checked).
//! Half the inputs get a valid magic and checksum stamped on, so the field checks behind
//! them are exercised too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remap_meta::Superblock;
use remap_meta::checksum::crc32c;
use remap_meta::error::Region;
use remap_meta::superblock::MAGIC;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data, Region::SuperblockA);
    let mut b = [0u8; 4096];
    let n = data.len().min(4096);
    b[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|x| x & 1 == 1) {
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let crc = crc32c(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(sb) = Superblock::decode(&b, Region::SuperblockA) {
        let again = sb.encode(Region::SuperblockA).expect("a decoded superblock encodes");
        assert_eq!(again, b);
    }
});
