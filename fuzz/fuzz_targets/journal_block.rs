//! Any bytes decode to a journal block or a typed error; a decoded block re-encodes to the
//! same bytes. Half the inputs get a valid magic and checksum stamped on, so the record
//! decoding behind them is exercised too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remap_meta::checksum::crc32c;
use remap_meta::error::Region;
use remap_meta::journal::{JournalBlock, MAGIC};

fuzz_target!(|data: &[u8]| {
    let _ = JournalBlock::decode(data, Region::Journal(0));
    let mut b = [0u8; 4096];
    let n = data.len().min(4096);
    b[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|x| x & 1 == 1) {
        b[..8].copy_from_slice(&MAGIC);
        let crc = crc32c(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(jb) = JournalBlock::decode(&b, Region::Journal(0)) {
        let again = jb
            .encode_again(Region::Journal(0))
            .expect("a decoded block encodes");
        assert_eq!(again, b);
    }
});
