//! A connected client socket, TCP or Unix, shared by the threads of one connection: one
//! reads requests, others write replies, and the server can shut it down from outside to
//! end a connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connected stream socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Shut down one or both directions. Shutting down reading wakes a thread blocked in
    /// `read` with end-of-file, which is how the server stops a connection's reader.
    pub fn shutdown(&self, how: Shutdown) {
        // Fails only if the peer is already gone, which is what we want anyway.
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(how),
            Socket::Unix(s) => s.shutdown(how),
        };
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Make the socket blocking (accepted sockets come from a non-blocking listener) and,
    /// for TCP, send small replies at once (no Nagle delay on a 16-byte reply).
    pub fn prepare(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)
            }
            Socket::Unix(s) => s.set_nonblocking(false),
        }
    }
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).read(buf),
            Socket::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).write(buf),
            Socket::Unix(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).write_vectored(bufs),
            Socket::Unix(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The read side of a shared socket, for an [`Input`](crate::input::Input), with an optional deadline for all
/// reads together (the negotiation must finish in time even if the client trickles bytes).
#[derive(Debug)]
pub(crate) struct SocketReader {
    socket: Arc<Socket>,
    deadline: Option<Instant>,
}

impl SocketReader {
    pub fn new(socket: Arc<Socket>) -> Self {
        SocketReader {
            socket,
            deadline: None,
        }
    }

    /// Fail every read after `deadline` with `TimedOut`; `None` lifts the deadline.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline = deadline;
        if deadline.is_none() {
            self.socket.set_read_timeout(None)?;
        }
        Ok(())
    }
}

impl Read for SocketReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not finish negotiating in time",
                ));
            }
            self.socket.set_read_timeout(Some(left))?;
        }
        (&*self.socket).read(buf)
    }
}
