//! `remap-kmod`: the logic of the `dm-remap-v4` device-mapper target.
//!
//! The kernel module is a thin C glue (`kernel/dm-remap.c`: target registration, bios, the
//! work queue, synchronous I/O) around this `no_std` crate. What a request or a failure does
//! is decided by `remap_core::policy`, the same code `remap_core::RemapDevice` runs; this
//! crate holds what is the kernel's own: the fast-path routing of bios, the state split
//! between interrupt context and the work queue, the policy's seams over the glue's
//! synchronous bio I/O, the status line and the messages. The table, allocator, statistics
//! and health are `remap-core`'s; the on-disk format is `remap-meta`'s, so a spare formatted
//! by `remap create` works here and `remap dump` reads what the kernel wrote.
//!
//! On the host this is an ordinary library with unit and integration tests (the kernel
//! semantics run against simulated faulty disks). Built by `kernel/Kbuild` with
//! `--features kernel --cfg remap_kernel`, it also carries the C ABI ([`ffi`]), a global
//! allocator over `kmalloc`/`kvmalloc` and a panic handler that stops the kernel loudly.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod io;
pub mod message;
pub mod status;
pub mod target;

#[cfg(all(feature = "kernel", remap_kernel))]
#[allow(unsafe_code)]
pub mod ffi;

pub use io::{BlockIo, Dev, IoFailure, WriteFlags};
pub use message::{Message, MessageError};
pub use remap_meta::table_options::{Options, OptionsError};
pub use target::{Op, OpenError, OpenParams, Route, Shared, SlowError, State, open};
