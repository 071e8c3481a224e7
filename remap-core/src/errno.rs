//! `errno` values used on the wire and in the kernel. Linux numbering, which is also what NBD
//! borrows. Every frontend maps errors through these, never through its own numbers.

pub const EPERM: i32 = 1;
pub const EIO: i32 = 5;
pub const ENOMEM: i32 = 12;
pub const EINVAL: i32 = 22;
pub const ENOSPC: i32 = 28;
pub const EROFS: i32 = 30;
pub const EOPNOTSUPP: i32 = 95;
pub const EOVERFLOW: i32 = 75;
