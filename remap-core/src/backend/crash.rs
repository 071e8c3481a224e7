//! [`CrashBackend`]: a device that can lose power. It keeps the durable image (what survived
//! the last flush) and the writes since; a crash yields an image holding any chosen subset
//! of those writes, each possibly torn at 512-byte sectors. It also keeps the whole history
//! of writes and flushes, so a test can produce the image of a crash at any earlier point.
//!
//! The medium model: a write lands in 512-byte sectors, each atomically; a flush makes every
//! completed write durable; a FUA write is durable when it completes. A write that is not yet
//! durable may or may not survive a crash, sector by sector, in any combination.

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::{BlockBackend, IoError, IoOp, check_range};

/// The unit a crash can tear a write at.
pub const SECTOR: usize = 512;

/// One operation in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Bytes written (trims and write-zeroes appear as writes of zeroes).
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
}

/// A write not yet durable at the crash point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unflushed<'a> {
    /// Its position in the history.
    pub op_index: usize,
    pub offset: u64,
    pub data: &'a [u8],
}

impl Unflushed<'_> {
    /// Sectors the write touches (a sector partly covered counts).
    pub fn sectors(&self) -> usize {
        sector_spans(self.offset, self.data.len()).count()
    }
}

/// Which sectors of an unflushed write survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Survival {
    None,
    All,
    /// One flag per sector of the write, in order.
    Sectors(Vec<bool>),
}

/// Byte ranges of the write split at 512-byte sector borders: (offset, range in data).
fn sector_spans(offset: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let dev = offset + at as u64;
        let room = SECTOR - (dev % SECTOR as u64) as usize;
        let n = room.min(len - at);
        let r = at..at + n;
        at += n;
        Some((dev, r))
    })
}

#[derive(Debug)]
struct State {
    initial: Vec<u8>,
    current: Vec<u8>,
    history: Vec<Op>,
    /// History index just after the last flush.
    last_flush_end: usize,
}

/// A memory device with a power switch. Flush is cheap, so it suits exhaustive crash tests.
#[derive(Debug)]
pub struct CrashBackend {
    size: u64,
    state: Mutex<State>,
}

impl CrashBackend {
    /// A zero-filled device.
    pub fn new(size_bytes: usize) -> Self {
        Self::from_image(vec![0; size_bytes])
    }

    /// A device whose durable contents are `image`.
    pub fn from_image(image: Vec<u8>) -> Self {
        CrashBackend {
            size: image.len() as u64,
            state: Mutex::new(State {
                current: image.clone(),
                initial: image,
                history: Vec::new(),
                last_flush_end: 0,
            }),
        }
    }

    /// What the device holds now, as a reader would see it.
    pub fn current_image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }

    /// Number of operations (writes and flushes) so far: the crash points are `0..=len`.
    pub fn history_len(&self) -> usize {
        self.state.lock().history.len()
    }

    pub fn history(&self) -> Vec<Op> {
        self.state.lock().history.clone()
    }

    /// The image after a crash now, keeping unflushed writes as `choose` says.
    pub fn crash_image(&self, choose: impl FnMut(&Unflushed<'_>) -> Survival) -> Vec<u8> {
        let n = self.history_len();
        self.crash_image_at(n, choose)
    }

    /// The image after a crash just before history operation `point` (so `point = 0` is the
    /// initial image, `history_len()` is now), keeping unflushed writes as `choose` says.
    /// `choose` is called once per unflushed write, oldest first.
    pub fn crash_image_at(
        &self,
        point: usize,
        mut choose: impl FnMut(&Unflushed<'_>) -> Survival,
    ) -> Vec<u8> {
        let st = self.state.lock();
        let point = point.min(st.history.len());
        let mut image = st.initial.clone();
        // Durable prefix: everything before the last flush preceding `point`, plus FUA writes.
        let last_flush = st.history[..point]
            .iter()
            .rposition(|op| *op == Op::Flush)
            .map_or(0, |i| i + 1);
        for op in &st.history[..last_flush] {
            if let Op::Write { offset, data, .. } = op {
                apply(&mut image, *offset, data);
            }
        }
        for (i, op) in st.history[last_flush..point].iter().enumerate() {
            let Op::Write { offset, data, fua } = op else {
                continue;
            };
            if *fua {
                apply(&mut image, *offset, data);
                continue;
            }
            let w = Unflushed {
                op_index: last_flush + i,
                offset: *offset,
                data,
            };
            match choose(&w) {
                Survival::None => {}
                Survival::All => apply(&mut image, *offset, data),
                Survival::Sectors(keep) => {
                    for ((dev, r), k) in sector_spans(*offset, data.len()).zip(keep) {
                        if k {
                            apply(&mut image, dev, &data[r]);
                        }
                    }
                }
            }
        }
        image
    }

    /// A crash image with a seeded random choice: each unflushed write survives whole with
    /// probability 1/2, and one in four survivors is torn at random sectors.
    pub fn crash_image_seeded(&self, point: usize, seed: u64) -> Vec<u8> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        self.crash_image_at(point, |w| seeded_choice(&mut rng, w))
    }

    /// Writes not yet durable at crash point `point`.
    pub fn unflushed_at(&self, point: usize) -> usize {
        let st = self.state.lock();
        let point = point.min(st.history.len());
        let last_flush = st.history[..point]
            .iter()
            .rposition(|op| *op == Op::Flush)
            .map_or(0, |i| i + 1);
        st.history[last_flush..point]
            .iter()
            .filter(|op| matches!(op, Op::Write { fua: false, .. }))
            .count()
    }

    /// Writes since the last flush, now.
    pub fn unflushed(&self) -> usize {
        let st = self.state.lock();
        st.history[st.last_flush_end..]
            .iter()
            .filter(|op| matches!(op, Op::Write { fua: false, .. }))
            .count()
    }

    fn record_write(&self, offset: u64, data: &[u8], fua: bool) {
        let mut st = self.state.lock();
        apply(&mut st.current, offset, data);
        st.history.push(Op::Write {
            offset,
            data: data.to_vec(),
            fua,
        });
    }
}

/// The choice [`CrashBackend::crash_image_seeded`] makes, for callers that drive their own.
pub fn seeded_choice(rng: &mut Pcg64Mcg, w: &Unflushed<'_>) -> Survival {
    if !rng.random_bool(0.5) {
        return Survival::None;
    }
    if rng.random_range(0..4) != 0 {
        return Survival::All;
    }
    Survival::Sectors((0..w.sectors()).map(|_| rng.random_bool(0.5)).collect())
}

fn apply(image: &mut [u8], offset: u64, data: &[u8]) {
    let at = offset as usize;
    image[at..at + data.len()].copy_from_slice(data);
}

impl BlockBackend for CrashBackend {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(IoOp::Read, offset, buf.len() as u64, self.size)?;
        let st = self.state.lock();
        let at = offset as usize;
        buf.copy_from_slice(&st.current[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        check_range(IoOp::Write, offset, buf.len() as u64, self.size)?;
        self.record_write(offset, buf, false);
        Ok(())
    }

    fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        check_range(IoOp::Write, offset, buf.len() as u64, self.size)?;
        self.record_write(offset, buf, true);
        Ok(())
    }

    fn supports_fua(&self) -> bool {
        true
    }

    fn flush(&self) -> Result<(), IoError> {
        let mut st = self.state.lock();
        st.history.push(Op::Flush);
        st.last_flush_end = st.history.len();
        Ok(())
    }

    fn supports_trim(&self) -> bool {
        true
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.write_zeroes(offset, len)
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size)?;
        self.record_write(offset, &vec![0u8; len as usize], false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_may_vanish_flushed_ones_never() {
        let d = CrashBackend::new(4096);
        d.write_at(0, &[1u8; 1024]).unwrap();
        d.flush().unwrap();
        d.write_at(512, &[2u8; 1024]).unwrap();
        d.write_at_fua(3072, &[3u8; 512]).unwrap();
        assert_eq!(d.unflushed(), 1);
        let none = d.crash_image(|_| Survival::None);
        assert_eq!(&none[..1024], &[1u8; 1024]);
        assert_eq!(&none[3072..3584], &[3u8; 512], "FUA writes are durable");
        let all = d.crash_image(|_| Survival::All);
        assert_eq!(&all[512..1536], &[2u8; 1024]);
        assert_eq!(all, d.current_image());
        // Torn: only the second sector of the write survives.
        let torn = d.crash_image(|_| Survival::Sectors(vec![false, true]));
        assert_eq!(&torn[512..1024], &[1u8; 512]);
        assert_eq!(&torn[1024..1536], &[2u8; 512]);
    }

    #[test]
    fn crash_at_an_earlier_point() {
        let d = CrashBackend::new(1024);
        d.write_at(0, &[1u8; 512]).unwrap(); // op 0
        d.flush().unwrap(); // op 1
        d.write_at(0, &[2u8; 512]).unwrap(); // op 2
        assert_eq!(d.history_len(), 3);
        assert_eq!(d.crash_image_at(0, |_| Survival::All)[0], 0);
        assert_eq!(d.crash_image_at(1, |_| Survival::None)[0], 0);
        assert_eq!(d.crash_image_at(1, |_| Survival::All)[0], 1);
        assert_eq!(d.crash_image_at(2, |_| Survival::None)[0], 1);
        assert_eq!(d.crash_image_at(3, |_| Survival::None)[0], 1);
        assert_eq!(d.crash_image_at(3, |_| Survival::All)[0], 2);
        assert_eq!(d.unflushed_at(1), 1);
    }

    #[test]
    fn unaligned_writes_tear_at_sector_borders() {
        let spans: Vec<_> = sector_spans(500, 600).collect();
        assert_eq!(spans, vec![(500, 0..12), (512, 12..524), (1024, 524..600)]);
    }

    #[test]
    fn seeded_crashes_repeat() {
        let d = CrashBackend::new(1 << 16);
        for i in 0..32u8 {
            d.write_at(u64::from(i) * 2048, &[i + 1; 2048]).unwrap();
        }
        let n = d.history_len();
        assert_eq!(d.crash_image_seeded(n, 9), d.crash_image_seeded(n, 9));
        assert_ne!(d.crash_image_seeded(n, 9), d.crash_image_seeded(n, 10));
    }
}
