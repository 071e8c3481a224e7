//! A checkpoint header from any bytes, and a whole checkpoint area (header and payload) from
//! any bytes behind a valid superblock: decoding never panics and never allocates by an
//! unchecked count; a table that loads satisfies its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remap_core::{BlockBackend, MemBackend};
use remap_meta::checkpoint::{Header, MAGIC};
use remap_meta::checksum::crc32c;
use remap_meta::error::Region;

static GOLDEN: &[u8] = include_bytes!("../../remap-meta/golden/v1-spare.bin");

fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(data, Region::Checkpoint(0));
    let mut image = GOLDEN.to_vec();
    let sb = remap_meta::inspect(&MemBackend::from_vec(image.clone()))
        .expect("golden image opens")
        .superblock;
    let area = sb.geometry.checkpoint_offsets[usize::from(sb.active_checkpoint)] as usize;
    let len = data.len().min(sb.geometry.checkpoint_area_bytes as usize);
    image[area..area + len].copy_from_slice(&data[..len]);
    if data.first().is_some_and(|x| x & 1 == 1) {
        // Stamp a valid header magic, uuid, sequence and checksum over the fuzzer's fields, so
        // the payload decoding behind the header is reached.
        let h = &mut image[area..area + 4096];
        h[..8].copy_from_slice(&MAGIC);
        h[8..24].copy_from_slice(&sb.uuid);
        h[24..32].copy_from_slice(&sb.checkpoint_sequence.to_le_bytes());
        h[32..40].copy_from_slice(&sb.journal_start_sequence.to_le_bytes());
        h[68..72].copy_from_slice(&32u32.to_le_bytes());
        let crc = crc32c(&h[..4092]);
        h[4092..].copy_from_slice(&crc.to_le_bytes());
    }
    let spare = MemBackend::from_vec(image);
    if let Ok(rec) = remap_meta::inspect(&spare) {
        rec.table.check_invariants().expect("table invariants");
        rec.spares.check_invariants().expect("pool invariants");
        assert!(spare.size_bytes() > 0);
    }
});
