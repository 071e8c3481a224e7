//! Read replies without copying the data through the server: the backend's file is spliced
//! into a pipe, and the pipe into the socket after the reply header, so a page of the
//! main device goes from the page cache to the socket by reference (`splice(2)`).
//!
//! The data is in the pipe before the reply header is sent, so a read that fails (a bad
//! sector) or races with a remap is answered from the normal path instead, with its real
//! error or its data; nothing has reached the client by then. A pipe holding bytes that
//! were not sent is dropped, never reused.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::SendFlags;
use rustix::pipe::{PipeFlags, SpliceFlags};

/// Reads of at least this many bytes are spliced; smaller ones are copied (for a few
/// KiB, the two extra system calls cost more than the copy they save).
pub(crate) const SPLICE_MIN: usize = 64 * 1024;
/// The capacity asked for each worker's pipe: the largest read spliced. Linux lets an
/// unprivileged process grow a pipe to `/proc/sys/fs/pipe-max-size` (1 MiB by default);
/// a larger read, or one on a smaller pipe, is copied.
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// One worker's pipe.
#[derive(Debug)]
pub(crate) struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes in the pipe.
    held: usize,
}

impl SplicePipe {
    /// A new empty pipe, grown to [`PIPE_SIZE`] if the system allows.
    pub fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let capacity = match rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE) {
            Ok(n) => n,
            // Above pipe-max-size or the user's pipe quota: keep the default size.
            Err(_) => rustix::pipe::fcntl_getpipe_size(&write)?,
        };
        Ok(SplicePipe {
            read,
            write,
            capacity,
            held: 0,
        })
    }

    /// Whether a read of `len` bytes fits.
    pub fn fits(&self, len: usize) -> bool {
        self.held == 0 && len <= self.capacity
    }

    /// Whether the pipe holds bytes that were not sent (then it must not be reused).
    pub fn is_dirty(&self) -> bool {
        self.held != 0
    }

    /// Move `len` bytes of `file` at `offset` into the pipe. An error if fewer arrived
    /// (the end of the file, or a read error part way).
    pub fn fill(&mut self, file: BorrowedFd<'_>, mut offset: u64, len: usize) -> io::Result<()> {
        let want = self.held + len;
        while self.held < want {
            let n = rustix::pipe::splice(
                file,
                Some(&mut offset),
                &self.write,
                None,
                want - self.held,
                SpliceFlags::empty(),
            )?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.held += n;
        }
        Ok(())
    }

    /// Send `header` and then everything in the pipe to `socket`.
    pub fn send(&mut self, socket: BorrowedFd<'_>, header: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < header.len() {
            // MORE: the data follows at once, so the header does not leave as a segment
            // of its own.
            match rustix::net::send(
                socket,
                &header[sent..],
                SendFlags::MORE | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        while self.held > 0 {
            match rustix::pipe::splice(
                &self.read,
                None,
                socket,
                None,
                self.held,
                SpliceFlags::empty(),
            ) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => self.held -= n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl AsFd for SplicePipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_file_range_goes_through_the_pipe_after_the_header() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut pipe = SplicePipe::new().unwrap();
        assert!(pipe.fits(200_000), "capacity {}", pipe.capacity);
        pipe.fill(file.as_fd(), 1000, 200_000).unwrap();
        assert!(pipe.is_dirty() && !pipe.fits(1));
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 4 + 200_000];
            b.read_exact(&mut got).unwrap();
            got
        });
        pipe.send(a.as_fd(), b"head").unwrap();
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == data[1000..201_000]);
        assert!(!pipe.is_dirty());

        // Past the end of the file: an error, and the pipe is dirty with what did arrive.
        let mut pipe = SplicePipe::new().unwrap();
        assert!(pipe.fill(file.as_fd(), 299_000, 4096).is_err());
        assert!(pipe.is_dirty());
    }
}
