//! `remap-service`: the operator service of a remapped device pair, as a library.
//!
//! Everything an operator does to a pair, and everything a running server offers beside its
//! NBD export, without argument parsing or printing (the `remap` binary in `remap-cli` is
//! one frontend of it; an embedding program is another, see `examples/embed.rs`):
//!
//! - [`devices`]: opening and locking a pair ([`devices::Pair`]), formatting a blank spare;
//! - [`signatures`]: what a device already holds (foreign signatures, remap metadata), asked
//!   before formatting over it;
//! - [`writable`]: refusing a read-only device a command must write;
//! - [`storage`]: whether MAIN and SPARE share storage (loop devices, partitions, stacks);
//! - [`blocks`]: block lists; [`transfer`]: moving blocks to the spare and back;
//!   [`budget`]: whether a map fits the free spare blocks;
//! - [`scrub`] and [`throttle`]: reading every block, rate-limited and resumable;
//! - [`settings`]: health thresholds and read retries, persisted;
//! - [`status`], [`health`], [`smart`], [`predict`], [`window`]: the status figures, the
//!   health report with its reasons, SMART folding, the exhaustion projection and the
//!   minute/hour/day rates;
//! - [`live`]: the running service ([`live::Live`]), generic over the device's backends;
//! - [`control`]: the control protocol, its server and its client; [`metrics`]: the
//!   Prometheus endpoint;
//! - [`notify`]: readiness and stopping reported to systemd (`$NOTIFY_SOCKET`);
//! - [`serve()`]: a pair served over NBD with all of the above, as a stoppable handle;
//! - [`table_line`]: the `dm-remap-v4` table line and device-mapper names;
//!   [`dmsetup`]: device-mapper through `dmsetup`; [`activation`]: a pair brought up as a
//!   kernel device and taken down (`remap table`, `activate`, `deactivate`);
//! - [`remaptab`]: `/etc/remaptab`, the pairs to bring up at boot; [`boot_units`]: the
//!   systemd units its generator writes; [`spare_lookup`]: a spare found by its UUID;
//! - [`probe`]: whether a device holds a remap spare, as udev properties;
//! - [`time`]: times as the reports carry them.
//!
//! Errors are one enum per area, each message naming the device it is about.
#![forbid(unsafe_code)]

pub mod activation;
pub mod blocks;
pub mod boot_units;
pub mod budget;
pub mod control;
pub mod devices;
pub mod dmsetup;
pub mod health;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod predict;
pub mod probe;
pub mod remaptab;
pub mod scrub;
pub mod serve;
pub mod settings;
pub mod signatures;
pub mod smart;
pub mod spare_lookup;
pub mod status;
pub mod storage;
pub mod table_line;
pub mod throttle;
pub mod time;
pub mod transfer;
pub mod window;
pub mod writable;

pub use devices::{Access, Pair, PairError};
pub use live::Live;
pub use serve::{
    ConnectionLimits, FaultPlan, ListenAddr, ServeConfig, ServeError, ServeSummary, Serving,
    Stopper, serve,
};
