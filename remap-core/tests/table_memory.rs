//! The remap table holds 1,000,000 entries in well under 64 MiB.
//!
//! Measured two ways: the table's own account of its allocations (`heap_bytes`, capacities
//! of every vector it owns), and the process's resident set (`VmRSS` in /proc/self/status)
//! before and after filling it. The second catches what the first could miss (allocator
//! overhead, forgotten allocations); a counting global allocator would be more exact but
//! needs `unsafe impl GlobalAlloc`, which the workspace forbids. This is a size bound, not
//! a speed test. It is the only test in this file, so no other test's memory shows up.

use remap_core::table::{Entry, RemapTable};

const ENTRIES: u64 = 1_000_000;
const MIB: u64 = 1 << 20;

/// Resident set size of this process in bytes, if the kernel tells.
fn vm_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Distinct block addresses spread over a 3x larger space, in a seeded random order.
fn shuffled_lbas() -> Vec<u64> {
    let mut lbas: Vec<u64> = (0..ENTRIES).map(|i| i * 3 + i % 3).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..lbas.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lbas.swap(i, (x % (i as u64 + 1)) as usize);
    }
    lbas
}

#[test]
fn a_million_entries_in_random_order_fit_well_under_64_mib() {
    let lbas = shuffled_lbas();
    let rss_before = vm_rss_bytes();
    let mut table = RemapTable::new(ENTRIES as usize);
    for (i, &lba) in lbas.iter().enumerate() {
        table
            .insert(lba, Entry::remapped(i as u64, 1, i as u32))
            .unwrap();
    }
    let rss_after = vm_rss_bytes();
    let heap = table.heap_bytes() as u64;

    assert_eq!(table.len() as u64, ENTRIES);
    table.check_invariants().unwrap();
    for (i, &lba) in lbas.iter().enumerate().step_by(9_973) {
        assert_eq!(table.get(lba).and_then(|e| e.spare), Some(i as u64));
    }
    assert!(
        table.get(1).is_none(),
        "1 = 0 * 3 + 1 is not an entry's address"
    );

    eprintln!(
        "1,000,000 entries: heap_bytes {:.1} MiB ({:.1} bytes/entry); VmRSS grew {}",
        heap as f64 / MIB as f64,
        heap as f64 / ENTRIES as f64,
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!("{:.1} MiB", a.saturating_sub(b) as f64 / MIB as f64),
            _ => "n/a (no /proc/self/status)".to_string(),
        }
    );
    assert!(
        heap < 40 * MIB,
        "table claims {heap} bytes for 1,000,000 entries"
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        // Looser than the heap bound: the allocator keeps some freed memory (chunk splits
        // reallocate), but the table must still be far below 64 MiB.
        let grown = after.saturating_sub(before);
        assert!(
            grown < 48 * MIB,
            "resident set grew by {grown} bytes while filling the table"
        );
        assert!(
            grown + 4 * MIB >= heap / 2,
            "resident set grew by only {grown} bytes for a table claiming {heap}: the \
             measurement is not measuring the table"
        );
    }
    drop(lbas);
}
