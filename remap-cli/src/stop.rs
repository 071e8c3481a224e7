//! An orderly stop: SIGINT, SIGTERM and SIGHUP ask a long command (map, unmap, scrub,
//! serve) to finish the block in hand, commit, checkpoint, print its summary on stderr and
//! exit with 128 + the signal number (130, 143, 129), as shells report a death by that
//! signal. A second signal exits at once: everything acknowledged is already durable in the
//! journal, which the next open replays. A failed write on stdout stops the same way, with
//! status 1.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The signals that ask for an orderly stop.
pub const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Why a command stopped before its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Stopped {
    /// A signal asked for the stop.
    #[error("stopped by {}: {what}", signal_name(*.signal))]
    Signal { signal: i32, what: String },
    /// Writing the report on stdout failed (a closed pipe: `remap map ... | head -1`).
    #[error("stopped: cannot write the output ({source}): {what}")]
    Output {
        #[source]
        source: io::Error,
        what: String,
    },
}

impl Stopped {
    /// 128 + the signal number for a signal, as shells report a death by it; `None` for an
    /// output error (the command failed: the caller's usual failure status).
    pub fn signal_exit_code(&self) -> Option<u8> {
        match self {
            Stopped::Signal { signal, .. } => u8::try_from(128 + signal).ok(),
            Stopped::Output { .. } => None,
        }
    }
}

/// `SIGINT`, `SIGTERM`, `SIGHUP`.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The stop signals, caught: the first is recorded, the second ends the process.
#[derive(Debug, Clone)]
pub struct StopSignals {
    requested: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl StopSignals {
    /// Catch SIGINT, SIGTERM and SIGHUP from now on.
    pub fn install() -> Result<StopSignals, io::Error> {
        let requested = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        for signal in STOP_SIGNALS {
            // Registered first, so it sees the flag as it was before this signal: the
            // first signal only sets it, a second one exits.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                requested.clone(),
            )?;
            signal_hook::flag::register_usize(signal, which.clone(), signal as usize)?;
            signal_hook::flag::register(signal, requested.clone())?;
        }
        Ok(StopSignals { requested, which })
    }

    /// The flag the first signal sets, for loops that poll one.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.requested
    }

    /// The signal that asked for a stop, if one did.
    pub fn received(&self) -> Option<i32> {
        if !self.requested.load(Ordering::SeqCst) {
            return None;
        }
        i32::try_from(self.which.load(Ordering::SeqCst))
            .ok()
            .filter(|s| *s != 0)
    }

    /// After one block's report (printed and flushed): an output error or a signal that
    /// came in meanwhile asks the loop to stop. `what` says what is kept.
    pub fn after_block(&self, reported: io::Result<()>, what: &str) -> Option<Stopped> {
        match reported {
            Err(source) => Some(Stopped::Output {
                source,
                what: what.to_string(),
            }),
            Ok(()) => self.received().map(|signal| Stopped::Signal {
                signal,
                what: what.to_string(),
            }),
        }
    }
}

/// For a daemon (`serve`, `attach`): a thread that waits for the stop signals. The first
/// tells systemd STOPPING=1 and calls `stop` (which drains, flushes and checkpoints); a
/// second exits at once with 128 + its number. The returned cell holds the first signal
/// (0 while none came), for the daemon's exit status once the drain is done.
pub fn on_daemon_signals(
    stop: impl FnOnce() + Send + 'static,
    doing: &'static str,
) -> Result<Arc<AtomicI32>, io::Error> {
    let mut signals = signal_hook::iterator::Signals::new(STOP_SIGNALS)?;
    let stopped_by = Arc::new(AtomicI32::new(0));
    let seen = stopped_by.clone();
    std::thread::Builder::new()
        .name("remap-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                tracing::info!("{}: {doing}", signal_name(signal));
                seen.store(signal, Ordering::SeqCst);
                if let Err(e) = remap_service::notify::notify("STOPPING=1") {
                    tracing::warn!("{e}");
                }
                stop();
            }
            if let Some(signal) = received.next() {
                eprintln!(
                    "remap: second signal: exiting now; the journal keeps what was made durable"
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(stopped_by)
}

/// Print the closing summary line: on stdout normally, on stderr when the command was
/// stopped (stdout may be gone). A failed write on stdout prints it on stderr too and is
/// returned, so the command does not end with status 0.
pub fn summary(out: &mut dyn Write, line: &str, stopped: bool) -> Result<(), Stopped> {
    if stopped {
        eprintln!("remap: {line}");
        return Ok(());
    }
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(source) => {
            eprintln!("remap: {line}");
            Err(Stopped::Output {
                source,
                what: "the summary went to stderr".to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        let code = |signal| {
            Stopped::Signal {
                signal,
                what: String::new(),
            }
            .signal_exit_code()
        };
        assert_eq!(
            (code(SIGINT), code(SIGTERM), code(SIGHUP)),
            (Some(130), Some(143), Some(129))
        );
        let e = Stopped::Output {
            source: io::Error::from(io::ErrorKind::BrokenPipe),
            what: "x".into(),
        };
        assert_eq!(e.signal_exit_code(), None);
    }
}
