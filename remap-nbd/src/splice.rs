//! Reads and writes without copying the data through the server (`splice(2)`).
//!
//! - A read: the backend's file is spliced into a pipe, and the pipe into the socket after
//!   the reply header, so a page of the main device goes from the page cache to the socket
//!   by reference. The data is in the pipe before the reply header is sent, so a read that
//!   fails (a bad sector) or races with a remap is answered from the normal path instead,
//!   with its real error or its data; nothing has reached the client by then.
//! - A write: the payload is spliced from the socket into a pipe and `tee`d into a second
//!   one (a second reference, no copy), then the first is spliced into the backend's file:
//!   one copy, into the page cache, instead of two. If that transfer fails or races with a
//!   remap, the second pipe still holds the payload, and the normal write (which remaps a
//!   failing block) takes it from there.
//!
//! A pipe holding bytes that were not sent or written is dropped, never reused.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

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
    pub fn fill(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<()> {
        self.fill_from(file, Some(offset), len)
    }

    /// Move the next `len` bytes of a stream (a socket) into the pipe.
    pub fn fill_stream(&mut self, stream: BorrowedFd<'_>, len: usize) -> io::Result<()> {
        self.fill_from(stream, None, len)
    }

    fn fill_from(
        &mut self,
        from: BorrowedFd<'_>,
        mut offset: Option<u64>,
        len: usize,
    ) -> io::Result<()> {
        let want = self.held + len;
        while self.held < want {
            match rustix::pipe::splice(
                from,
                offset.as_mut(),
                &self.write,
                None,
                want - self.held,
                SpliceFlags::empty(),
            ) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => self.held += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Copy `bytes` into the pipe (the part of a payload that arrived with its header).
    pub fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match rustix::io::write(&self.write, bytes) {
                Ok(n) => {
                    self.held += n;
                    bytes = &bytes[n..];
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Put a second reference to everything in this pipe into the empty pipe `copy`
    /// (`tee(2)`: no bytes are copied). An error unless all of it went.
    pub fn tee_into(&mut self, copy: &mut SplicePipe) -> io::Result<()> {
        if copy.held != 0 || copy.capacity < self.held {
            return Err(io::Error::other("the copy pipe is busy or too small"));
        }
        let n = loop {
            match rustix::pipe::tee(&self.read, &copy.write, self.held, SpliceFlags::NONBLOCK) {
                Err(rustix::io::Errno::INTR) => {}
                r => break r?,
            }
        };
        copy.held = n;
        if n != self.held {
            return Err(io::Error::other("tee moved part of the pipe"));
        }
        Ok(())
    }

    /// Move everything in the pipe into `file` at `offset`.
    pub fn drain_to_file(&mut self, file: BorrowedFd<'_>, mut offset: u64) -> io::Result<()> {
        while self.held > 0 {
            match rustix::pipe::splice(
                &self.read,
                None,
                file,
                Some(&mut offset),
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

    /// Read everything in the pipe into `buf`, which must be exactly that long.
    pub fn read_into(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() != self.held {
            return Err(io::Error::other("the pipe does not hold the payload"));
        }
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::read(&self.read, &mut buf[done..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    done += n;
                    self.held -= n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Drop what the pipe holds (references; nothing is copied). On an error the pipe
    /// stays dirty, and a dirty pipe is never reused.
    pub fn discard(&mut self) -> io::Result<()> {
        static DEV_NULL: OnceLock<io::Result<File>> = OnceLock::new();
        let null = match DEV_NULL.get_or_init(|| File::options().write(true).open("/dev/null")) {
            Ok(f) => f,
            Err(e) => return Err(io::Error::new(e.kind(), "cannot open /dev/null")),
        };
        while self.held > 0 {
            match rustix::pipe::splice(
                &self.read,
                None,
                null,
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
