//! A backend over a regular file or a block device: positional I/O, `fdatasync` for flush,
//! `fallocate` for trim and write-zeroes.
//!
//! The size of a block device comes from `lseek(SEEK_END)`, which Linux answers with the
//! device size (the same figure as the `BLKGETSIZE64` ioctl) without any `unsafe` code.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, FlockOperation};

use super::{BlockBackend, IoError, IoOp, check_range, errno};

/// Retries of a lock held by someone else, and the pause between them (about 0.2 s in all).
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Alignment of the bounce buffer used with `O_DIRECT`. 4096 satisfies every logical
/// block size Linux devices report.
const DIRECT_ALIGN: usize = 4096;

/// How to open a [`FileBackend`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    read_only: bool,
    direct: bool,
    exclusive: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            direct: false,
            exclusive: true,
        }
    }
}

impl OpenOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Open read-only; writes, trims and flushes of data fail with `EROFS`.
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Bypass the page cache (`O_DIRECT`), so that a write error is reported by the write
    /// that caused it and not later by a flush that cannot say which block failed. Offsets
    /// and lengths must then be multiples of the device's logical block size.
    pub fn direct(mut self, yes: bool) -> Self {
        self.direct = yes;
        self
    }

    /// Take an exclusive advisory lock (`flock`), and for block devices open with
    /// `O_EXCL`, so that a second process cannot open the same device. On by default.
    pub fn exclusive(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }

    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileBackend, OpenError> {
        FileBackend::open_with(path.as_ref(), self)
    }
}

/// Why a [`FileBackend`] could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is in use by {}", holder.map_or_else(|| "another process".to_string(), |p| format!("pid {p}")))]
    InUse { path: PathBuf, holder: Option<u32> },
    #[error("{path} is neither a regular file nor a block device")]
    NotADevice { path: PathBuf },
    #[error("cannot determine the size of {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A regular file or a block device.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
    block_device: bool,
    read_only: bool,
    direct: bool,
    device_id: (u64, u64),
}

impl FileBackend {
    /// Open read-write with the default options (exclusive, buffered).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        OpenOptions::default().open(path)
    }

    fn open_with(path: &Path, opts: &OpenOptions) -> Result<Self, OpenError> {
        let open_err = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(OpenError::NotADevice {
                path: path.to_path_buf(),
            });
        }
        let mut flags = 0;
        if opts.direct {
            flags |= rustix::fs::OFlags::DIRECT.bits() as i32;
        }
        if opts.exclusive && block_device && !opts.read_only {
            // O_EXCL on a block device: fails with EBUSY if mounted or opened O_EXCL elsewhere.
            // Readers only take the shared lock, so two readers (or a reader of a mounted
            // disk) are not refused.
            flags |= rustix::fs::OFlags::EXCL.bits() as i32;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(16) {
                    // EBUSY from O_EXCL
                    OpenError::InUse {
                        path: path.to_path_buf(),
                        holder: lock_holder(meta.dev(), meta.ino()),
                    }
                } else {
                    open_err(e)
                }
            })?;
        if opts.exclusive {
            let op = if opts.read_only {
                FlockOperation::NonBlockingLockShared
            } else {
                FlockOperation::NonBlockingLockExclusive
            };
            // A lock lives as long as any descriptor of the open file does, and a child
            // process being spawned holds copies of its parent's descriptors until its exec
            // closes them: a holder that just let go may still show for a moment. Retry
            // briefly (bounded) before reporting the device in use.
            let mut attempt = 0;
            loop {
                match rustix::fs::flock(&file, op) {
                    Ok(()) => break,
                    Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                        if attempt == LOCK_RETRIES {
                            return Err(OpenError::InUse {
                                path: path.to_path_buf(),
                                holder: lock_holder(meta.dev(), meta.ino()),
                            });
                        }
                        attempt += 1;
                        std::thread::sleep(LOCK_RETRY_PAUSE);
                    }
                    Err(e) => return Err(open_err(e.into())),
                }
            }
        }
        let size = if block_device {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| OpenError::Size {
                    path: path.to_path_buf(),
                    source,
                })?
        } else {
            meta.len()
        };
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            size,
            block_device,
            read_only: opts.read_only,
            direct: opts.direct,
            device_id: if block_device {
                (
                    u64::from(rustix::fs::major(meta.rdev())),
                    u64::from(rustix::fs::minor(meta.rdev())),
                )
            } else {
                (meta.dev(), meta.ino())
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// For a block device its `(major, minor)`; for a file its `(st_dev, st_ino)`.
    pub fn device_id(&self) -> (u64, u64) {
        self.device_id
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn refuse_if_read_only(&self, op: IoOp, offset: u64, len: u64) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::media(
                op,
                offset,
                len,
                io::Error::from_raw_os_error(errno::EROFS),
            ));
        }
        Ok(())
    }

    fn read_direct(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return self.file.read_exact_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new(buf.len());
        self.file.read_exact_at(bounce.as_mut_slice(), offset)?;
        buf.copy_from_slice(bounce.as_mut_slice());
        Ok(())
    }

    fn write_direct(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return self.file.write_all_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new(buf.len());
        bounce.as_mut_slice().copy_from_slice(buf);
        self.file.write_all_at(bounce.as_mut_slice(), offset)
    }
}

/// A heap buffer whose start is aligned for `O_DIRECT`: an over-sized `Vec` and the aligned
/// window inside it, which needs no `unsafe`.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The pid holding a `flock` on the file `(st_dev, st_ino)`, read from `/proc/locks`.
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        ino
    );
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pos = fields.iter().position(|f| f.matches(':').count() == 2)?;
        if !fields[pos].eq_ignore_ascii_case(&want) {
            return None;
        }
        fields.get(pos.checked_sub(1)?)?.parse().ok()
    })
}

fn os_err(op: IoOp, offset: u64, len: u64, e: io::Error) -> IoError {
    let e = if e.kind() == io::ErrorKind::UnexpectedEof {
        // The file shrank under us (or a short device): report it as an I/O error.
        io::Error::from_raw_os_error(errno::EIO)
    } else {
        e
    };
    IoError::media(op, offset, len, e)
}

impl BlockBackend for FileBackend {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn splice_write_fd(&self) -> Option<BorrowedFd<'_>> {
        (!self.direct && !self.read_only).then(|| self.file.as_fd())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len() as u64;
        check_range(IoOp::Read, offset, len, self.size)?;
        let r = if self.direct {
            self.read_direct(offset, buf)
        } else {
            self.file.read_exact_at(buf, offset)
        };
        r.map_err(|e| os_err(IoOp::Read, offset, len, e))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        let len = buf.len() as u64;
        check_range(IoOp::Write, offset, len, self.size)?;
        self.refuse_if_read_only(IoOp::Write, offset, len)?;
        let r = if self.direct {
            self.write_direct(offset, buf)
        } else {
            self.file.write_all_at(buf, offset)
        };
        r.map_err(|e| os_err(IoOp::Write, offset, len, e))
    }

    fn flush(&self) -> Result<(), IoError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| os_err(IoOp::Flush, 0, 0, e))
    }

    fn supports_trim(&self) -> bool {
        !self.read_only
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::Trim, offset, len, self.size)?;
        self.refuse_if_read_only(IoOp::Trim, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Trim is advisory: a medium that cannot deallocate keeps its data.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::INVAL => Ok(()),
            Err(e) => Err(os_err(IoOp::Trim, offset, len, e.into())),
        }
    }

    fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size)?;
        self.refuse_if_read_only(IoOp::WriteZeroes, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::INVAL => {
                // No fast path on this file system or device: write zero buffers.
                let mut done = 0u64;
                while done < len {
                    let step = (len - done).min(super::ZERO_CHUNK as u64) as usize;
                    self.write_at(offset + done, &super::ZEROES[..step])?;
                    done += step as u64;
                }
                Ok(())
            }
            Err(e) => Err(os_err(IoOp::WriteZeroes, offset, len, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn positional_io_round_trips() {
        let f = temp_file(1 << 20);
        let b = FileBackend::open(f.path()).unwrap();
        assert_eq!(b.size_bytes(), 1 << 20);
        b.write_at(4096 * 3 + 7, b"remap").unwrap();
        b.flush().unwrap();
        let mut out = [0u8; 5];
        b.read_at(4096 * 3 + 7, &mut out).unwrap();
        assert_eq!(&out, b"remap");
        assert!(matches!(
            b.read_at((1 << 20) - 2, &mut out),
            Err(IoError::OutOfRange { .. })
        ));
    }

    #[test]
    fn trim_and_write_zeroes_zero_the_range() {
        let f = temp_file(1 << 20);
        let b = FileBackend::open(f.path()).unwrap();
        b.write_at(0, &vec![0xEE; 1 << 20]).unwrap();
        b.write_zeroes(8192, 8192).unwrap();
        b.trim(65536, 65536).unwrap();
        let mut out = vec![0u8; 1 << 20];
        b.read_at(0, &mut out).unwrap();
        assert!(out[..8192].iter().all(|&x| x == 0xEE));
        assert!(out[8192..16384].iter().all(|&x| x == 0));
        assert!(out[16384..65536].iter().all(|&x| x == 0xEE));
        // Trim may keep data on a medium that cannot punch holes; on tmpfs and ext4 it zeroes.
        assert!(
            out[65536..131072].iter().all(|&x| x == 0)
                || out[65536..131072].iter().all(|&x| x == 0xEE)
        );
    }

    #[test]
    fn second_exclusive_open_names_the_holder() {
        let f = temp_file(4096);
        let _first = FileBackend::open(f.path()).unwrap();
        let err = FileBackend::open(f.path()).unwrap_err();
        match &err {
            OpenError::InUse { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("expected InUse, got {other}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
    }

    #[test]
    fn read_only_refuses_writes() {
        let f = temp_file(4096);
        let b = OpenOptions::new()
            .read_only(true)
            .exclusive(false)
            .open(f.path())
            .unwrap();
        let e = b.write_at(0, b"x").unwrap_err();
        assert_eq!(e.errno(), errno::EROFS);
        assert!(!e.is_media());
    }

    #[test]
    fn refuses_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            FileBackend::open(d.path()),
            Err(OpenError::NotADevice { .. })
        ));
    }
}
