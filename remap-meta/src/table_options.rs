//! The optional arguments of the table line:
//!
//! ```text
//! <start> <len> dm-remap-v4 <main_dev> <spare_dev> [<#opt_args> <opt>...]
//! ```
//!
//! Each `<opt>` is `name:value`. Read retries and health thresholds default to what the spare
//! was formatted with (its superblock); an option overrides them for this activation only.
//! `main_identity` asserts the main device's serial number or WWN, which the kernel cannot
//! read by itself. The kernel target (remap-kmod) parses these; `remap table` and the boot
//! units (remap-service) write them; both use this one module.

use alloc::vec::Vec;
use core::fmt;

use remap_core::HealthThresholds;

/// The most optional arguments a table line may carry (each name at most once).
pub const MAX_OPTIONS: usize = 9;
pub use remap_core::policy::MAX_READ_RETRIES;
/// Longest identity value: what the superblock holds.
pub const MAX_IDENTITY: usize = crate::superblock::IDENTITY_MAX;

/// Parsed optional arguments. `None` means "as the superblock says".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub read_retries: Option<u32>,
    pub error_rate_degraded_ppm: Option<u32>,
    pub error_rate_critical_ppm: Option<u32>,
    pub min_ios_for_rate: Option<u64>,
    pub spare_degraded_pct: Option<u8>,
    pub spare_critical_pct: Option<u8>,
    pub pending_degraded: Option<u64>,
    pub pending_critical: Option<u64>,
    pub main_identity: Option<Vec<u8>>,
}

/// Why the optional arguments were refused. Each message names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    #[error("the optional argument count '{0}' is not a number")]
    BadCount(Lossy),
    #[error("the table line says {said} optional arguments but has {found}")]
    CountMismatch { said: usize, found: usize },
    #[error("too many optional arguments ({0}, at most {MAX_OPTIONS})")]
    TooMany(usize),
    #[error("optional argument '{0}' is not name:value")]
    NotNameValue(Lossy),
    #[error("unknown optional argument '{0}'")]
    Unknown(Lossy),
    #[error("optional argument '{0}' is given twice")]
    Duplicate(&'static str),
    #[error("optional argument {name}: '{value}' is not a number in range (at most {max})")]
    BadValue {
        name: &'static str,
        value: Lossy,
        max: u64,
    },
    #[error("main_identity is empty or longer than {MAX_IDENTITY} bytes")]
    BadIdentity,
}

/// Bytes shown as text in messages (the table line is ASCII in practice).
#[derive(Clone, PartialEq, Eq)]
pub struct Lossy(pub Vec<u8>);

impl fmt::Display for Lossy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter().take(64) {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        if self.0.len() > 64 {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Lossy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A decimal number, refusing signs, blanks, overflow and values above `max`.
pub fn parse_u64(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    (v <= max).then_some(v)
}

impl Options {
    /// Parse `args`: everything after the two device paths (possibly nothing).
    pub fn parse(args: &[&[u8]]) -> Result<Options, OptionsError> {
        let Some((count, rest)) = args.split_first() else {
            return Ok(Options::default());
        };
        let said = parse_u64(count, MAX_OPTIONS as u64 * 4)
            .ok_or_else(|| OptionsError::BadCount(Lossy(count.to_vec())))?
            as usize;
        if said != rest.len() {
            return Err(OptionsError::CountMismatch {
                said,
                found: rest.len(),
            });
        }
        if said > MAX_OPTIONS {
            return Err(OptionsError::TooMany(said));
        }
        let mut o = Options::default();
        for arg in rest {
            let Some(colon) = arg.iter().position(|&c| c == b':') else {
                return Err(OptionsError::NotNameValue(Lossy(arg.to_vec())));
            };
            let (name, value) = (&arg[..colon], &arg[colon + 1..]);
            fn set<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), OptionsError> {
                if slot.is_some() {
                    return Err(OptionsError::Duplicate(name));
                }
                *slot = Some(v);
                Ok(())
            }
            let num = |name: &'static str, max: u64| {
                parse_u64(value, max).ok_or_else(|| OptionsError::BadValue {
                    name,
                    value: Lossy(value.to_vec()),
                    max,
                })
            };
            match name {
                b"read_retries" => {
                    let v = num("read_retries", u64::from(MAX_READ_RETRIES))? as u32;
                    set(&mut o.read_retries, "read_retries", v)?;
                }
                b"error_rate_degraded_ppm" => {
                    let v = num("error_rate_degraded_ppm", 1_000_000)? as u32;
                    set(&mut o.error_rate_degraded_ppm, "error_rate_degraded_ppm", v)?;
                }
                b"error_rate_critical_ppm" => {
                    let v = num("error_rate_critical_ppm", 1_000_000)? as u32;
                    set(&mut o.error_rate_critical_ppm, "error_rate_critical_ppm", v)?;
                }
                b"min_ios_for_rate" => {
                    let v = num("min_ios_for_rate", u64::MAX)?;
                    set(&mut o.min_ios_for_rate, "min_ios_for_rate", v)?;
                }
                b"spare_degraded_pct" => {
                    let v = num("spare_degraded_pct", 100)? as u8;
                    set(&mut o.spare_degraded_pct, "spare_degraded_pct", v)?;
                }
                b"spare_critical_pct" => {
                    let v = num("spare_critical_pct", 100)? as u8;
                    set(&mut o.spare_critical_pct, "spare_critical_pct", v)?;
                }
                b"pending_degraded" => {
                    let v = num("pending_degraded", u64::MAX)?;
                    set(&mut o.pending_degraded, "pending_degraded", v)?;
                }
                b"pending_critical" => {
                    let v = num("pending_critical", u64::MAX)?;
                    set(&mut o.pending_critical, "pending_critical", v)?;
                }
                b"main_identity" => {
                    if value.is_empty() || value.len() > MAX_IDENTITY {
                        return Err(OptionsError::BadIdentity);
                    }
                    set(&mut o.main_identity, "main_identity", value.to_vec())?;
                }
                _ => return Err(OptionsError::Unknown(Lossy(name.to_vec()))),
            }
        }
        Ok(o)
    }

    /// The thresholds in force: `base` (the superblock's) with these overrides.
    pub fn thresholds(&self, base: HealthThresholds) -> HealthThresholds {
        HealthThresholds {
            error_rate_degraded_ppm: self
                .error_rate_degraded_ppm
                .unwrap_or(base.error_rate_degraded_ppm),
            error_rate_critical_ppm: self
                .error_rate_critical_ppm
                .unwrap_or(base.error_rate_critical_ppm),
            min_ios_for_rate: self.min_ios_for_rate.unwrap_or(base.min_ios_for_rate),
            spare_used_degraded_pct: self
                .spare_degraded_pct
                .unwrap_or(base.spare_used_degraded_pct),
            spare_used_critical_pct: self
                .spare_critical_pct
                .unwrap_or(base.spare_used_critical_pct),
            pending_degraded: self.pending_degraded.unwrap_or(base.pending_degraded),
            pending_critical: self.pending_critical.unwrap_or(base.pending_critical),
        }
    }

    /// The arguments as the table line carries them (for `dmsetup table`): the count, then
    /// each option given, in a fixed order. Empty when none was given.
    pub fn write_table_args(&self, w: &mut impl fmt::Write) -> fmt::Result {
        let mut n = 0;
        let mut parts: [Option<(&str, u64)>; 8] = [None; 8];
        for (name, v) in [
            ("read_retries", self.read_retries.map(u64::from)),
            (
                "error_rate_degraded_ppm",
                self.error_rate_degraded_ppm.map(u64::from),
            ),
            (
                "error_rate_critical_ppm",
                self.error_rate_critical_ppm.map(u64::from),
            ),
            ("min_ios_for_rate", self.min_ios_for_rate),
            ("spare_degraded_pct", self.spare_degraded_pct.map(u64::from)),
            ("spare_critical_pct", self.spare_critical_pct.map(u64::from)),
            ("pending_degraded", self.pending_degraded),
            ("pending_critical", self.pending_critical),
        ] {
            if let Some(v) = v {
                parts[n] = Some((name, v));
                n += 1;
            }
        }
        let total = n + usize::from(self.main_identity.is_some());
        if total == 0 {
            return Ok(());
        }
        write!(w, " {total}")?;
        for (name, v) in parts.iter().flatten() {
            write!(w, " {name}:{v}")?;
        }
        if let Some(id) = &self.main_identity {
            write!(w, " main_identity:{}", Lossy(id.clone()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn parse(s: &str) -> Result<Options, OptionsError> {
        let args: Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
        Options::parse(&args)
    }

    #[test]
    fn no_arguments_means_superblock_defaults() {
        assert_eq!(parse("").unwrap(), Options::default());
        let base = HealthThresholds::default();
        assert_eq!(Options::default().thresholds(base), base);
    }

    #[test]
    fn options_override_thresholds_and_round_trip_as_table_args() {
        let o = parse("3 read_retries:5 pending_critical:9 main_identity:WD-123").unwrap();
        assert_eq!(o.read_retries, Some(5));
        assert_eq!(o.main_identity.as_deref(), Some(&b"WD-123"[..]));
        let t = o.thresholds(HealthThresholds::default());
        assert_eq!(t.pending_critical, 9);
        assert_eq!(
            t.pending_degraded,
            HealthThresholds::default().pending_degraded
        );
        let mut s = String::new();
        o.write_table_args(&mut s).unwrap();
        assert_eq!(
            s,
            " 3 read_retries:5 pending_critical:9 main_identity:WD-123"
        );
        assert_eq!(parse(s.trim()).unwrap(), o);
    }

    #[test]
    fn bad_arguments_are_refused_with_their_name() {
        for (line, want) in [
            ("x", "not a number"),
            ("2 read_retries:1", "says 2 optional arguments but has 1"),
            ("1 read_retries", "not name:value"),
            ("1 colour:blue", "unknown optional argument 'colour'"),
            ("1 read_retries:17", "read_retries: '17'"),
            ("1 read_retries:-1", "read_retries: '-1'"),
            ("1 spare_degraded_pct:101", "spare_degraded_pct"),
            ("2 read_retries:1 read_retries:2", "given twice"),
            ("1 main_identity:", "main_identity is empty"),
            (
                "1 min_ios_for_rate:99999999999999999999999",
                "min_ios_for_rate",
            ),
        ] {
            let e = parse(line).unwrap_err();
            let msg = alloc::format!("{e}");
            assert!(msg.contains(want), "{line:?}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_u64(b"0", 5), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615", u64::MAX), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616", u64::MAX), None);
        for bad in [&b""[..], b" 1", b"+1", b"1a", b"0x10"] {
            assert_eq!(parse_u64(bad, u64::MAX), None);
        }
    }
}
