//! Writes without copying the payload through the server (`splice(2)`): the payload is
//! spliced from the socket into a pipe and `tee`d into a second one (a second reference, no
//! copy), then the first is spliced into the backend's file: one copy, into the page cache,
//! instead of two. If that transfer fails or races with a remap, the second pipe still
//! holds the payload, and the normal write (which remaps a failing block) takes it from
//! there. A pipe left holding bytes that were not written is dropped, never reused.
//!
//! Reads are not spliced: on the benchmark (`benches/nbd/compare.sh`, tmpfs, loopback TCP)
//! a file-to-pipe-to-socket splice cost the server more CPU per MiB than `pread` + `send`,
//! and the same on a loop device opened with `O_DIRECT` (`docs/design.md`, "NBD fast
//! paths").

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags};

/// Writes of at least this many bytes are spliced; smaller ones are copied (for a few
/// KiB, the extra system calls cost more than the copy they save).
pub(crate) const SPLICE_MIN: usize = 64 * 1024;
/// The capacity asked for each pipe: the largest write spliced. Linux lets an
/// unprivileged process grow a pipe to `/proc/sys/fs/pipe-max-size` (1 MiB by default);
/// a larger write, or one on a smaller pipe, is copied.
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// The most pipes this process holds at once. A pipe pins no memory while empty, but Linux
/// counts the capacity of every pipe against its user (`/proc/sys/fs/pipe-user-pages-soft`,
/// 64 MiB by default): beyond that, the user's new pipes, ours and other programs', get one
/// page. Workers beyond this budget copy.
pub(crate) const MAX_PIPES: usize = 32;

static LIVE_PIPES: AtomicUsize = AtomicUsize::new(0);

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
    /// A new empty pipe, grown to [`PIPE_SIZE`] if the system allows; `None` when
    /// [`MAX_PIPES`] are open.
    pub fn new() -> Option<io::Result<Self>> {
        let taken = LIVE_PIPES.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_PIPES).then_some(n + 1)
        });
        if taken.is_err() {
            return None;
        }
        let made = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).and_then(|(read, write)| {
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
        });
        if made.is_err() {
            LIVE_PIPES.fetch_sub(1, Ordering::SeqCst);
        }
        Some(made.map_err(io::Error::from))
    }

    /// Whether a read of `len` bytes fits.
    pub fn fits(&self, len: usize) -> bool {
        self.held == 0 && len <= self.capacity
    }

    /// Whether the pipe holds bytes that were not sent (then it must not be reused).
    pub fn is_dirty(&self) -> bool {
        self.held != 0
    }

    /// Move the next `len` bytes of a stream (a socket) into the pipe. An error if fewer
    /// arrived.
    pub fn fill_stream(&mut self, stream: BorrowedFd<'_>, len: usize) -> io::Result<()> {
        let want = self.held + len;
        while self.held < want {
            match rustix::pipe::splice(
                stream,
                None,
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
    pub fn drain_to_file(&mut self, file: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
        self.drain(file, Some(offset))
    }

    /// Splice everything in the pipe out to `to` (at `offset` for a file).
    fn drain(&mut self, to: BorrowedFd<'_>, mut offset: Option<u64>) -> io::Result<()> {
        while self.held > 0 {
            match rustix::pipe::splice(
                &self.read,
                None,
                to,
                offset.as_mut(),
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
        self.drain(null.as_fd(), None)
    }
}

impl Drop for SplicePipe {
    fn drop(&mut self) {
        LIVE_PIPES.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn pipe() -> SplicePipe {
        SplicePipe::new()
            .expect("under the budget")
            .expect("a pipe")
    }

    #[test]
    fn a_payload_goes_from_the_stream_through_two_pipes_into_the_file() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            std::thread::spawn(move || a.write_all(&payload[1000..]).unwrap())
        };
        let (mut first, mut copy) = (pipe(), pipe());
        assert!(first.fits(300_000), "capacity {}", first.capacity);
        first.push(&payload[..1000]).unwrap();
        first.fill_stream(b.as_fd(), 299_000).unwrap();
        writer.join().unwrap();
        first.tee_into(&mut copy).unwrap();
        assert!(first.is_dirty() && copy.is_dirty() && !first.fits(1));

        let file = tempfile::tempfile().unwrap();
        first.drain_to_file(file.as_fd(), 4096).unwrap();
        let mut back = vec![0u8; payload.len()];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert!(back == payload);
        // The copy still holds the payload, whole.
        let mut again = vec![0u8; payload.len()];
        copy.read_into(&mut again).unwrap();
        assert!(again == payload && !copy.is_dirty());
        assert!(
            copy.read_into(&mut [0u8; 1]).is_err(),
            "nothing is left to read"
        );

        // Discarding drops a copy without reading it.
        first.push(&payload[..5000]).unwrap();
        first.tee_into(&mut copy).unwrap();
        copy.discard().unwrap();
        assert!(!copy.is_dirty());
        assert!(first.tee_into(&mut copy).is_ok());
        let mut busy = pipe();
        busy.push(b"x").unwrap();
        assert!(
            first.tee_into(&mut busy).is_err(),
            "a busy copy pipe is refused"
        );
    }

    #[test]
    fn a_stream_that_ends_early_is_an_error() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[7u8; 100]).unwrap();
        drop(a);
        let mut p = pipe();
        assert!(p.fill_stream(b.as_fd(), 200).is_err());
        assert!(
            p.is_dirty(),
            "what did arrive is in the pipe; it will not be reused"
        );
    }
}
