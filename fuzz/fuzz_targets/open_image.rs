//! Open an arbitrary spare image: the golden image with fuzzer-chosen bytes overwritten
//! anywhere (superblocks, journal, checkpoints), or fuzzer bytes alone. Recovery never
//! panics; when it succeeds the state is consistent and the device serves reads.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use remap_core::clock::ManualClock;
use remap_core::MemBackend;

static GOLDEN: &[u8] = include_bytes!("../../remap-meta/golden/v1-spare.bin");

#[derive(Debug, Arbitrary)]
enum Input {
    /// Overwrite (offset, bytes) pairs in the golden image.
    Patch(Vec<(u32, Vec<u8>)>),
    /// The image is these bytes, zero-padded to the golden image's size.
    Raw(Vec<u8>),
}

fuzz_target!(|input: Input| {
    let mut image = GOLDEN.to_vec();
    match input {
        Input::Patch(patches) => {
            for (offset, bytes) in patches.into_iter().take(16) {
                let at = offset as usize % image.len();
                let n = bytes.len().min(image.len() - at);
                image[at..at + n].copy_from_slice(&bytes[..n]);
            }
        }
        Input::Raw(bytes) => {
            image.fill(0);
            let n = bytes.len().min(image.len());
            image[..n].copy_from_slice(&bytes[..n]);
        }
    }
    let spare = Arc::new(MemBackend::from_vec(image));
    let Ok(rec) = remap_meta::inspect(&*spare) else {
        return;
    };
    rec.table.check_invariants().expect("table invariants");
    rec.spares.check_invariants().expect("pool invariants");
    let main = MemBackend::new(rec.superblock.geometry.main_size.min(64 << 20) as usize);
    if let Ok(opened) = remap_meta::open(
        main,
        spare,
        &rec.superblock.identity,
        Arc::new(ManualClock::new(0)),
    ) {
        let dev = opened.device;
        let mut buf = vec![0u8; 4096];
        let _ = dev.read(0, &mut buf);
    }
});
