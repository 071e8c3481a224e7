//! [`Replies`]: the way out of one connection. Replies never interleave on the wire, and
//! small replies that complete while another is being sent leave together in one `write`.
//!
//! A worker with a small reply appends it to a queue. If nobody is sending, it becomes the
//! sender: it writes what is queued, then whatever was queued meanwhile, until the queue is
//! empty. If somebody is sending, it leaves its reply to them and goes back to work. So at
//! queue depth 1 a reply is written at once, as before, and under load many replies share
//! one system call (and one wake-up of the client), with no reply waiting for anything but
//! the write in progress. Large replies (and spliced ones) take the socket for themselves.
//!
//! The queue is bounded: a reply that would grow it past [`QUEUE_MAX`] waits for the socket
//! and is written on its own, so a client that stops reading holds at most that much here
//! beyond the replies in the workers' own buffers.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::socket::Socket;

/// Replies up to this size are queued and may share a write with others.
pub(crate) const COMBINE_MAX: usize = 16 * 1024;
/// The most bytes queued for the sender.
pub(crate) const QUEUE_MAX: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<u8>,
    /// Somebody is writing (and will write `pending` before they stop).
    sending: bool,
    /// A write failed: the connection is broken, and every later send fails at once.
    broken: bool,
}

/// The reply side of one connection.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    queue: Mutex<Queue>,
    /// Held while bytes go to the socket.
    wire: Mutex<()>,
}

impl Replies {
    /// Send one complete reply.
    pub fn send(&self, socket: &Socket, reply: &[u8]) -> io::Result<()> {
        if reply.len() > COMBINE_MAX {
            return self.send_alone(socket, reply);
        }
        let batch = {
            let mut q = lock(&self.queue);
            if q.broken {
                return Err(broken());
            }
            if q.pending.len() + reply.len() > QUEUE_MAX {
                drop(q);
                return self.send_alone(socket, reply);
            }
            q.pending.extend_from_slice(reply);
            if q.sending {
                // The sender writes it before it stops.
                return Ok(());
            }
            q.sending = true;
            std::mem::take(&mut q.pending)
        };
        self.send_queued(socket, batch)
    }

    /// The sender's loop: write `batch`, then what was queued meanwhile, until nothing is.
    fn send_queued(&self, socket: &Socket, mut batch: Vec<u8>) -> io::Result<()> {
        loop {
            let written = {
                let _wire = lock(&self.wire);
                (&*socket).write_all(&batch)
            };
            let mut q = lock(&self.queue);
            if let Err(e) = written {
                q.broken = true;
                q.sending = false;
                q.pending.clear();
                return Err(e);
            }
            batch.clear();
            if q.pending.is_empty() {
                q.sending = false;
                // Keep the larger buffer for the next batch.
                if q.pending.capacity() < batch.capacity() {
                    q.pending = batch;
                }
                return Ok(());
            }
            std::mem::swap(&mut q.pending, &mut batch);
        }
    }

    /// Hold small replies back: until [`release`](Self::release), they are queued and
    /// not written. Returns whether this caller holds them; if another is sending at the
    /// moment, it does not, and that sender writes them as usual.
    pub fn hold(&self) -> bool {
        let mut q = lock(&self.queue);
        if q.sending || q.broken {
            return false;
        }
        q.sending = true;
        true
    }

    /// Write what was held back (and whatever is queued meanwhile), then stop holding.
    pub fn release(&self, socket: &Socket) -> io::Result<()> {
        let batch = std::mem::take(&mut lock(&self.queue).pending);
        self.send_queued(socket, batch)
    }

    /// Take the socket for one reply written alone (a large one).
    fn exclusive(&self) -> io::Result<MutexGuard<'_, ()>> {
        if lock(&self.queue).broken {
            return Err(broken());
        }
        Ok(lock(&self.wire))
    }

    /// Record that a write on the socket failed.
    fn mark_broken(&self) {
        lock(&self.queue).broken = true;
    }

    fn send_alone(&self, socket: &Socket, reply: &[u8]) -> io::Result<()> {
        let _wire = self.exclusive()?;
        (&*socket)
            .write_all(reply)
            .inspect_err(|_| self.mark_broken())
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier reply on this connection could not be sent",
    )
}

/// Lock a std mutex. A panic while one was held (a bug) leaves plain bytes behind, which
/// the next holder can still use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    #[test]
    fn replies_from_many_threads_arrive_whole_and_all_of_them() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let socket = Arc::new(Socket::Unix(a));
        let replies = Arc::new(Replies::default());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let (socket, replies) = (Arc::clone(&socket), Arc::clone(&replies));
                std::thread::spawn(move || {
                    for i in 0..500usize {
                        // Sizes on both sides of COMBINE_MAX; each reply is one byte
                        // value, its length in front.
                        let len = if i % 50 == 0 {
                            COMBINE_MAX + 100
                        } else {
                            1 + i % 300
                        };
                        let mut reply = (len as u32).to_le_bytes().to_vec();
                        reply.resize(4 + len, t);
                        replies.send(&socket, &reply).unwrap();
                    }
                })
            })
            .collect();
        let reader = std::thread::spawn(move || {
            let mut counts = [0usize; 8];
            for _ in 0..8 * 500 {
                let mut head = [0u8; 4];
                b.read_exact(&mut head).unwrap();
                let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
                b.read_exact(&mut body).unwrap();
                assert!(body.iter().all(|&x| x == body[0]), "a reply was torn");
                counts[body[0] as usize] += 1;
            }
            counts
        });
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(reader.join().unwrap(), [500; 8]);
        assert!(lock(&replies.queue).pending.is_empty());
    }

    #[test]
    fn a_failed_write_fails_every_later_reply() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let socket = Socket::Unix(a);
        let replies = Replies::default();
        assert!(replies.send(&socket, b"reply").is_err());
        let e = replies.send(&socket, b"next").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(replies.exclusive().is_err());
    }
}
