//! Connection slots by phase, so that clients that never finish negotiating cannot take the
//! place of clients that do:
//!
//! - **waiting**: accepted and greeted, nothing received yet. Held by the accept loop in its
//!   poll set, with no thread and no buffer; at most `max_waiting`, the oldest closed to
//!   make room for a new one ([`WaitingPool`]).
//! - **negotiating**: the client has spoken; a thread runs the option haggling. At most
//!   `max_negotiating`; the one negotiating longest is closed to make room ([`Slots`]).
//! - **established**: in the transmission phase. At most `max_connections`; when full, new
//!   connections are closed at once (an established client is never closed for a new one).
//!
//! Waiting and negotiating together must finish within `handshake_timeout` of the accept;
//! the accept loop closes those that do not ([`Slots::expire`], [`WaitingPool::expired`]).

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use crate::error::HandshakeError;
use crate::socket::Socket;

/// A connection that has been greeted and has not sent anything yet.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub id: u64,
    pub socket: Socket,
    pub peer: String,
    /// The end of its negotiation (accept time + `handshake_timeout`).
    pub deadline: Instant,
}

/// The waiting connections, oldest first.
#[derive(Debug)]
pub(crate) struct WaitingPool {
    queue: Vec<Waiting>,
    max: usize,
}

impl WaitingPool {
    pub fn new(max: usize) -> Self {
        WaitingPool {
            queue: Vec::new(),
            max,
        }
    }

    /// Add a connection; returns the oldest one, removed to make room, if the pool was full.
    pub fn push(&mut self, w: Waiting) -> Option<Waiting> {
        let evicted = (self.queue.len() >= self.max).then(|| self.queue.remove(0));
        self.queue.push(w);
        evicted
    }

    /// The earliest deadline (the oldest connection's).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|w| w.deadline)
    }

    /// Remove the connections past their deadline.
    pub fn expired(&mut self, now: Instant) -> Vec<Waiting> {
        let n = self.queue.partition_point(|w| w.deadline <= now);
        self.queue.drain(..n).collect()
    }

    /// Poll entries for every waiting socket, in pool order: readable, or hung up.
    pub fn poll_fds(&self) -> impl Iterator<Item = PollFd<'_>> {
        self.queue
            .iter()
            .map(|w| PollFd::from_borrowed_fd(w.socket.as_fd(), PollFlags::IN | PollFlags::RDHUP))
    }

    /// Remove the connections with events (`revents[i]`, in pool order): those whose client
    /// spoke, and those whose client hung up or failed (a client never closes its side before
    /// it has negotiated), returned apart.
    pub fn take_ready(&mut self, revents: &[PollFlags]) -> (Vec<Waiting>, Vec<Waiting>) {
        let (mut spoke, mut gone) = (Vec::new(), Vec::new());
        let all = std::mem::take(&mut self.queue);
        let events = revents
            .iter()
            .copied()
            .chain(std::iter::repeat(PollFlags::empty()));
        let hung_up = PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL;
        for (w, e) in all.into_iter().zip(events) {
            if e.intersects(hung_up) {
                gone.push(w);
            } else if !e.is_empty() {
                spoke.push(w);
            } else {
                self.queue.push(w);
            }
        }
        (spoke, gone)
    }
}

/// A connection whose thread is negotiating.
#[derive(Debug)]
struct Negotiating {
    socket: Arc<Socket>,
    deadline: Instant,
    started: Instant,
}

/// The negotiating and established connections (shared with the connection threads).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    negotiating: HashMap<u64, Negotiating>,
    established: HashMap<u64, Arc<Socket>>,
}

impl Slots {
    pub fn established(&self) -> usize {
        self.established.len()
    }

    pub fn is_empty(&self) -> bool {
        self.negotiating.is_empty() && self.established.is_empty()
    }

    /// Register a connection whose thread starts negotiating. If `max` are negotiating
    /// already, the one negotiating longest is removed and its socket shut down (its thread
    /// then ends); returns whether that happened.
    pub fn start_negotiating(
        &mut self,
        id: u64,
        socket: Arc<Socket>,
        deadline: Instant,
        max: usize,
    ) -> bool {
        let mut evicted = false;
        if self.negotiating.len() >= max
            && let Some(oldest) = self
                .negotiating
                .iter()
                .min_by_key(|(_, n)| n.started)
                .map(|(id, _)| *id)
            && let Some(n) = self.negotiating.remove(&oldest)
        {
            n.socket.shutdown(Shutdown::Both);
            evicted = true;
        }
        self.negotiating.insert(
            id,
            Negotiating {
                socket,
                deadline,
                started: Instant::now(),
            },
        );
        evicted
    }

    /// Move a connection whose client picked the export to the transmission phase. Fails if
    /// `max` are established already, or if the server has closed it meanwhile.
    pub fn establish(&mut self, id: u64, max: usize) -> Result<(), HandshakeError> {
        if self.established.len() >= max {
            return Err(HandshakeError::NoSlot { max });
        }
        let n = self.negotiating.remove(&id).ok_or(HandshakeError::Closed)?;
        self.established.insert(id, n.socket);
        Ok(())
    }

    /// A negotiation ended without reaching transmission. Returns `false` if the server had
    /// already closed it (evicted or expired, and counted as such).
    pub fn end_negotiating(&mut self, id: u64) -> bool {
        self.negotiating.remove(&id).is_some()
    }

    pub fn end_established(&mut self, id: u64) {
        self.established.remove(&id);
    }

    /// Remove the negotiating connections past their deadline and shut their sockets down;
    /// returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.negotiating.len();
        self.negotiating.retain(|_, n| {
            let keep = n.deadline > now;
            if !keep {
                n.socket.shutdown(Shutdown::Both);
            }
            keep
        });
        before - self.negotiating.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.negotiating.values().map(|n| n.deadline).min()
    }

    /// On shutdown: cut the negotiating connections, and stop reading requests on the
    /// established ones (their requests in flight still get replies).
    pub fn stop_all(&self) {
        for n in self.negotiating.values() {
            n.socket.shutdown(Shutdown::Both);
        }
        for s in self.established.values() {
            s.shutdown(Shutdown::Read);
        }
    }

    /// After the shutdown grace: cut everything.
    pub fn cut_all(&self) {
        for n in self.negotiating.values() {
            n.socket.shutdown(Shutdown::Both);
        }
        for s in self.established.values() {
            s.shutdown(Shutdown::Both);
        }
    }
}
