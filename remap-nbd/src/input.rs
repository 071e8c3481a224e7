//! [`Input`]: a read buffer for a connection that never routes a large payload through
//! itself.
//!
//! Small frames (option and request headers, small write payloads) are served from one
//! `read` of up to the buffer's capacity, so pipelined requests cost one system call for
//! many. A payload is copied out of the buffer only for the bytes that arrived with its
//! header; the rest is read straight into the destination. After such a direct read the
//! next refill asks for one header's worth only, so in a stream of large writes the next
//! payload also goes straight to its destination. (`std::io::BufReader` refills its buffer
//! for the tail of a payload, pulling the next request in, and so copies most of every large
//! payload twice.)

use std::io::{self, Read};
use std::os::fd::AsFd;

use crate::splice::SplicePipe;

/// A buffered reader over `R`.
#[derive(Debug)]
pub(crate) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// How much the refill after a direct read asks for (a frame header).
    header_len: usize,
    /// The last read went straight into a caller's buffer.
    after_direct: bool,
}

impl<R: Read> Input<R> {
    /// A reader with a buffer of `capacity` bytes, whose frames start with a header of
    /// `header_len` bytes.
    pub fn new(inner: R, capacity: usize, header_len: usize) -> Self {
        let capacity = capacity.max(64);
        Input {
            inner,
            buf: vec![0u8; capacity].into_boxed_slice(),
            pos: 0,
            end: 0,
            header_len: header_len.clamp(1, capacity),
            after_direct: false,
        }
    }

    /// Whether the peer closed the stream cleanly before sending anything more. Waits for
    /// at least one byte otherwise.
    pub fn at_eof(&mut self) -> io::Result<bool> {
        if self.pos < self.end {
            return Ok(false);
        }
        Ok(self.refill()? == 0)
    }

    /// Read into the empty buffer from its start. Returns the bytes read (0 at end of file).
    fn refill(&mut self) -> io::Result<usize> {
        debug_assert_eq!(self.pos, self.end);
        self.pos = 0;
        self.end = 0;
        let want = if self.after_direct {
            self.header_len
        } else {
            self.buf.len()
        };
        self.after_direct = false;
        loop {
            match self.inner.read(&mut self.buf[..want]) {
                Ok(n) => {
                    self.end = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Fill `out` completely: buffered bytes first; then, for what is left, large reads go
    /// straight into `out` and small ones through the buffer.
    pub fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = self.take_buffered(out);
        while done < out.len() {
            let rest = &mut out[done..];
            if rest.len() >= self.buf.len() / 2 {
                match self.inner.read(rest) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        done += n;
                        self.after_direct = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            } else {
                if self.refill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done += self.take_buffered(rest);
            }
        }
        Ok(())
    }

    /// Bytes read from the stream and not yet taken.
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Move the next `len` bytes into `pipe`: those already buffered by a copy, the rest
    /// spliced from the stream.
    pub fn splice_into(&mut self, pipe: &mut SplicePipe, len: usize) -> io::Result<()>
    where
        R: AsFd,
    {
        let n = (self.end - self.pos).min(len);
        pipe.push(&self.buf[self.pos..self.pos + n])?;
        self.pos += n;
        if n < len {
            pipe.fill_stream(self.inner.as_fd(), len - n)?;
            self.after_direct = true;
        }
        Ok(())
    }

    /// Read and drop `len` bytes.
    pub fn discard(&mut self, mut len: u64) -> io::Result<()> {
        loop {
            let n = ((self.end - self.pos) as u64).min(len);
            self.pos += n as usize;
            len -= n;
            if len == 0 {
                return Ok(());
            }
            if self.refill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Copy what is buffered into the front of `out`; returns how much.
    fn take_buffered(&mut self, out: &mut [u8]) -> usize {
        let n = (self.end - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        n
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end {
            if out.len() >= self.buf.len() / 2 {
                return self.inner.read(out);
            }
            if self.refill()? == 0 {
                return Ok(0);
            }
        }
        Ok(self.take_buffered(out))
    }

    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        Input::read_exact(self, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per call and counts the calls and the
    /// bytes delivered into each call's buffer.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        calls: usize,
        largest_read: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            let n = out.len().min(self.step).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            self.largest_read = self.largest_read.max(n);
            Ok(n)
        }
    }

    fn trickle(len: usize, step: usize) -> Trickle {
        Trickle {
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            at: 0,
            step,
            calls: 0,
            largest_read: 0,
        }
    }

    #[test]
    fn frames_and_payloads_come_out_in_order_whatever_the_read_sizes() {
        for step in [1, 3, 28, 100, 4096, 1 << 20] {
            let t = trickle(300_000, step);
            let expected = t.data.clone();
            let mut input = Input::new(t, 4096, 28);
            let mut got = Vec::new();
            let mut sizes = [28usize, 4096, 28, 200_000, 7, 28].iter().cycle();
            while got.len() < expected.len() {
                let n = (*sizes.next().unwrap()).min(expected.len() - got.len());
                let mut b = vec![0u8; n];
                input.read_exact(&mut b).unwrap();
                got.extend_from_slice(&b);
            }
            assert_eq!(got, expected, "step {step}");
            assert!(input.at_eof().unwrap());
        }
    }

    #[test]
    fn a_large_payload_bypasses_the_buffer() {
        let mut input = Input::new(trickle(1 << 20, 1 << 20), 4096, 28);
        let mut head = [0u8; 28];
        input.read_exact(&mut head).unwrap();
        let mut payload = vec![0u8; 256 << 10];
        input.read_exact(&mut payload).unwrap();
        let t = &input.inner;
        assert_eq!(
            t.calls, 2,
            "one refill for the header, one direct read for the rest"
        );
        assert_eq!(t.at, 28 + (256 << 10), "nothing read beyond the payload");
        assert_eq!(&payload[..4], &t.data[28..32]);
        // The next header is read alone, so the next payload goes direct in full.
        input.read_exact(&mut head).unwrap();
        assert_eq!(input.inner.at, 2 * 28 + (256 << 10));
        input.read_exact(&mut payload).unwrap();
        assert_eq!(
            input.inner.largest_read,
            256 << 10,
            "the whole payload in one direct read"
        );
        assert_eq!(input.inner.at, 2 * (28 + (256 << 10)));
        assert_eq!(input.inner.calls, 4);
    }

    #[test]
    fn discard_and_eof() {
        let mut input = Input::new(trickle(10_000, 999), 512, 28);
        input.discard(9_990).unwrap();
        let mut b = [0u8; 10];
        input.read_exact(&mut b).unwrap();
        assert_eq!(b[0], (9_990 * 7 % 251) as u8);
        assert!(input.at_eof().unwrap());
        assert_eq!(
            input.read_exact(&mut [0u8; 1]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut input = Input::new(trickle(100, 7), 512, 28);
        assert_eq!(
            input.discard(101).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut input = Input::new(trickle(100, 7), 512, 28);
        assert!(!input.at_eof().unwrap());
        let mut all = Vec::new();
        input.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 100);
    }
}
