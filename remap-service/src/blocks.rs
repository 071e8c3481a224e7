//! Block lists: `N`, `N-M` (inclusive), several or comma-separated, in the device's block
//! size, as operators write them and as control requests carry them.
//!
//! Syntax is checked by [`BlockRange::from_str`] (a frontend parses its arguments with it,
//! so a bad list is refused before any device is opened); the range against the device is
//! checked by [`BlockList::check_within`] after opening and before anything is changed.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An inclusive run of blocks `first..=last`, `first <= last`. In control-socket requests
/// it travels as `{"first": N, "last": M}`; a reversed one is refused while decoding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "RawRange")]
pub struct BlockRange {
    pub first: u64,
    pub last: u64,
}

/// A range as decoded, before its order is checked.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    first: u64,
    last: u64,
}

impl TryFrom<RawRange> for BlockRange {
    type Error = BlockSyntaxError;

    fn try_from(r: RawRange) -> Result<Self, Self::Error> {
        if r.first > r.last {
            return Err(BlockSyntaxError::Reversed {
                first: r.first,
                last: r.last,
            });
        }
        Ok(BlockRange {
            first: r.first,
            last: r.last,
        })
    }
}

/// Why a block list argument does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockSyntaxError {
    #[error("empty block number")]
    Empty,
    #[error("{text:?} is not a block number (expected a decimal number such as 1234)")]
    NotANumber { text: String },
    #[error("range {first}-{last} is reversed (write it {last}-{first})")]
    Reversed { first: u64, last: u64 },
}

fn parse_number(text: &str) -> Result<u64, BlockSyntaxError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BlockSyntaxError::Empty);
    }
    // `u64::from_str` accepts a leading '+'; a block list has no signs.
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BlockSyntaxError::NotANumber {
            text: text.to_string(),
        });
    }
    text.parse().map_err(|_| BlockSyntaxError::NotANumber {
        text: text.to_string(),
    })
}

impl FromStr for BlockRange {
    type Err = BlockSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('-') {
            None => {
                let n = parse_number(s)?;
                Ok(BlockRange { first: n, last: n })
            }
            Some((a, b)) => {
                let (first, last) = (parse_number(a)?, parse_number(b)?);
                if first > last {
                    return Err(BlockSyntaxError::Reversed { first, last });
                }
                Ok(BlockRange { first, last })
            }
        }
    }
}

/// A block number beyond the main device. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: block {lba} is beyond the end of the device ({blocks} blocks of {block_size} bytes, numbered 0 to {})", path.display(), blocks.saturating_sub(1))]
pub struct OutOfRange {
    pub path: PathBuf,
    pub lba: u64,
    pub blocks: u64,
    pub block_size: u32,
}

/// Block lists as an operator gave them, merged: sorted, overlaps and neighbours
/// joined, so every block is visited once and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    runs: Vec<BlockRange>,
}

impl BlockList {
    pub fn new(ranges: &[BlockRange]) -> Self {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        let mut runs: Vec<BlockRange> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match runs.last_mut() {
                Some(prev) if r.first <= prev.last.saturating_add(1) => {
                    prev.last = prev.last.max(r.last);
                }
                _ => runs.push(r),
            }
        }
        BlockList { runs }
    }

    /// Number of distinct blocks.
    pub fn len(&self) -> u64 {
        self.runs
            .iter()
            .map(|r| (r.last - r.first).saturating_add(1))
            .fold(0u64, u64::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Refuse any block at or past `blocks`, naming the first one.
    pub fn check_within(
        &self,
        path: &Path,
        blocks: u64,
        block_size: u32,
    ) -> Result<(), OutOfRange> {
        match self.runs.last() {
            Some(r) if r.last >= blocks => Err(OutOfRange {
                path: path.to_path_buf(),
                lba: r.first.max(blocks),
                blocks,
                block_size,
            }),
            _ => Ok(()),
        }
    }

    /// The merged runs, ascending.
    pub fn runs(&self) -> &[BlockRange] {
        &self.runs
    }

    /// Every block, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|r| r.first..=r.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Result<BlockRange, BlockSyntaxError> {
        s.parse()
    }

    #[test]
    fn parses_numbers_and_ranges() {
        assert_eq!(r("7"), Ok(BlockRange { first: 7, last: 7 }));
        assert_eq!(r("3-9"), Ok(BlockRange { first: 3, last: 9 }));
        assert_eq!(r("5-5"), Ok(BlockRange { first: 5, last: 5 }));
        assert_eq!(
            r("18446744073709551615"),
            Ok(BlockRange {
                first: u64::MAX,
                last: u64::MAX
            })
        );
    }

    #[test]
    fn refuses_bad_syntax() {
        assert_eq!(r(""), Err(BlockSyntaxError::Empty));
        assert_eq!(r("3-"), Err(BlockSyntaxError::Empty));
        assert!(matches!(r("x"), Err(BlockSyntaxError::NotANumber { .. })));
        assert!(matches!(r("+3"), Err(BlockSyntaxError::NotANumber { .. })));
        assert!(matches!(
            r("1-2-3"),
            Err(BlockSyntaxError::NotANumber { .. })
        ));
        assert!(matches!(
            r("18446744073709551616"),
            Err(BlockSyntaxError::NotANumber { .. })
        ));
        assert_eq!(
            r("9-3"),
            Err(BlockSyntaxError::Reversed { first: 9, last: 3 })
        );
    }

    #[test]
    fn decoding_refuses_reversed_ranges() {
        let ok: BlockRange = serde_json::from_str(r#"{"first":3,"last":9}"#).unwrap();
        assert_eq!(ok, BlockRange { first: 3, last: 9 });
        for bad in [
            r#"{"first":9,"last":3}"#,
            r#"{"first":1}"#,
            r#"{"first":1,"last":2,"x":0}"#,
        ] {
            assert!(serde_json::from_str::<BlockRange>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merges_overlaps_and_neighbours() {
        let list = BlockList::new(&[
            r("10-12").unwrap(),
            r("1").unwrap(),
            r("11-20").unwrap(),
            r("21").unwrap(),
            r("2").unwrap(),
            r("5").unwrap(),
        ]);
        assert_eq!(list.len(), 2 + 1 + 12);
        let all: Vec<u64> = list.iter().collect();
        let mut want = vec![1, 2, 5];
        want.extend(10..=21);
        assert_eq!(all, want);
    }

    #[test]
    fn range_check_names_the_first_block_past_the_end() {
        let path = Path::new("/m");
        let list = BlockList::new(&[r("5-100").unwrap()]);
        assert!(list.check_within(path, 101, 4096).is_ok());
        match list.check_within(path, 50, 4096) {
            Err(OutOfRange { lba, blocks, .. }) => {
                assert_eq!((lba, blocks), (50, 50));
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
        let list = BlockList::new(&[r("600").unwrap()]);
        match list.check_within(path, 50, 4096) {
            Err(OutOfRange { lba, .. }) => assert_eq!(lba, 600),
            other => panic!("expected OutOfRange, got {other:?}"),
        }
        // A huge range is counted without overflow and refused without being walked.
        let list = BlockList::new(&[r("0-18446744073709551615").unwrap()]);
        assert_eq!(list.len(), u64::MAX);
        assert!(list.check_within(path, 1 << 40, 4096).is_err());
    }
}
