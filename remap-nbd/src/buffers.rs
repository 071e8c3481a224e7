//! Request buffers: each worker holds one [`Buffers`] while it runs, and returns it to the
//! server's [`BufferPool`] when its connection ends, so the workers of the next connection
//! start with memory already faulted in. (A profile of `nbdcopy` writes showed 5 % of the
//! server's CPU in page faults zeroing the first payload buffer of every new worker: each
//! `nbdcopy` run opens four connections.)

use parking_lot::Mutex;

use crate::proto::OFFSET_DATA_HEADER_LEN;
use crate::splice::{SPLICE_MIN, SplicePipe};

/// Where data starts in a worker's buffer: room in front for the largest reply header, so
/// a read reply is one contiguous write.
pub(crate) const DATA_AT: usize = OFFSET_DATA_HEADER_LEN;
/// A worker keeps a data buffer up to this size between requests; larger ones are freed.
const KEEP_BUFFER: usize = DATA_AT + (2 << 20);
/// A worker keeps a small-reply buffer up to this size between requests.
const KEEP_SMALL: usize = 64 * 1024;
/// The most bytes of buffers the pool holds between connections.
pub(crate) const POOL_BYTES: usize = 32 << 20;

/// A worker's reusable buffers: no allocation per request in the steady state.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// `[reply header room | payload]`. Never shrinks below the largest payload since the
    /// last [`Buffers::trim`], so a request smaller than the one before costs no fill.
    pub data: Vec<u8>,
    /// Small replies (errors, block status).
    pub small: Vec<u8>,
    /// The pipe large writes are spliced through, made on the first one.
    pipe: Option<SplicePipe>,
    /// The second pipe of a spliced write, holding a reference to its payload until the
    /// write is done.
    copy: Option<SplicePipe>,
    /// Making a pipe failed (out of file descriptors or pipe quota): copy instead.
    no_pipe: bool,
}

impl Buffers {
    /// Room for a payload of `len` bytes at [`DATA_AT`] (its contents are stale).
    pub fn payload(&mut self, len: usize) -> &mut [u8] {
        if self.data.len() < DATA_AT + len {
            self.data.resize(DATA_AT + len, 0);
        }
        &mut self.data[DATA_AT..DATA_AT + len]
    }

    /// A pipe, unless the process's budget of pipes is spent (then this request is
    /// copied) or making one failed (then this worker copies from now on).
    fn new_pipe(&mut self) -> Option<SplicePipe> {
        match SplicePipe::new()? {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "cannot make a pipe for spliced I/O; copying");
                self.no_pipe = true;
                None
            }
        }
    }

    /// The two pipes a write of `len` bytes is spliced through, if it is large enough and
    /// fits.
    pub fn write_pipes(&mut self, len: usize) -> Option<(&mut SplicePipe, &mut SplicePipe)> {
        if len < SPLICE_MIN || self.no_pipe {
            return None;
        }
        if self.pipe.is_none() {
            self.pipe = self.new_pipe();
        }
        if self.copy.is_none() {
            self.copy = self.new_pipe();
        }
        match (self.pipe.as_mut(), self.copy.as_mut()) {
            (Some(p), Some(c)) if p.fits(len) && c.fits(len) => Some((p, c)),
            _ => None,
        }
    }

    /// Where a spliced write's payload goes if its transfer is not taken, and its pipes.
    pub fn write_target(
        &mut self,
        len: usize,
    ) -> (&mut [u8], Option<&mut SplicePipe>, Option<&mut SplicePipe>) {
        if self.data.len() < DATA_AT + len {
            self.data.resize(DATA_AT + len, 0);
        }
        (
            &mut self.data[DATA_AT..DATA_AT + len],
            self.pipe.as_mut(),
            self.copy.as_mut(),
        )
    }

    /// Free buffers grown past what a worker keeps, and a pipe left holding bytes that were
    /// not written (a transfer that failed part way, a broken connection).
    pub fn trim(&mut self) {
        if self.pipe.as_ref().is_some_and(SplicePipe::is_dirty) {
            self.pipe = None;
        }
        if self.copy.as_ref().is_some_and(SplicePipe::is_dirty) {
            self.copy = None;
        }
        if self.data.capacity() > KEEP_BUFFER {
            self.data = Vec::new();
        }
        if self.small.capacity() > KEEP_SMALL {
            self.small = Vec::new();
        }
    }

    fn bytes(&self) -> usize {
        self.data.capacity() + self.small.capacity()
    }
}

/// Buffers kept between connections, at most [`POOL_BYTES`] of them.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Buffers>>,
}

impl BufferPool {
    /// A worker's buffers: the largest pooled ones, or new empty ones.
    pub fn take(&self) -> Buffers {
        self.free.lock().pop().unwrap_or_default()
    }

    /// Return a worker's buffers; dropped if the pool is full.
    pub fn give(&self, mut buffers: Buffers) {
        buffers.trim();
        let mut free = self.free.lock();
        let held: usize = free.iter().map(Buffers::bytes).sum();
        if held + buffers.bytes() <= POOL_BYTES {
            // Largest last, so `take` hands out the warmest first.
            let at = free.partition_point(|b| b.data.len() <= buffers.data.len());
            free.insert(at, buffers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_reuse_the_buffer_and_the_pool_is_bounded() {
        let mut b = Buffers::default();
        b.payload(4096).fill(7);
        assert_eq!(b.payload(100).len(), 100);
        assert_eq!(b.payload(100)[0], 7, "a smaller payload is not refilled");
        assert_eq!(b.data.len(), DATA_AT + 4096);
        b.payload(KEEP_BUFFER);
        b.trim();
        assert_eq!(b.data.capacity(), 0, "an oversized buffer is freed");

        let pool = BufferPool::default();
        let mut big = Buffers::default();
        big.payload(1 << 20);
        let mut small = Buffers::default();
        small.payload(4096);
        pool.give(small);
        pool.give(big);
        assert_eq!(pool.take().data.len(), DATA_AT + (1 << 20), "largest first");
        for _ in 0..(POOL_BYTES >> 20) + 8 {
            let mut b = Buffers::default();
            b.payload(1 << 20);
            pool.give(b);
        }
        let held: usize = pool.free.lock().iter().map(Buffers::bytes).sum();
        assert!(held <= POOL_BYTES, "{held}");
    }
}
