//! Sizes as people read them. Machine output (`--json`) keeps the raw integers; this is for
//! the human form only. (Times are `remap_service::time::utc`, which the reports carry.)

/// `4194304 bytes (4.00 MiB)`: the exact figure first, the readable one after.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{n} bytes ({value:.2} {})", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(4 << 20), "4194304 bytes (4.00 MiB)");
        assert_eq!(bytes(3 << 29), "1610612736 bytes (1.50 GiB)");
        assert!(bytes(u64::MAX).ends_with("EiB)"));
    }
}
