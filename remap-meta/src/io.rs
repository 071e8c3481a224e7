//! [`MetaIo`] over a [`BlockBackend`]: how userspace runs the format code.

use remap_core::{BlockBackend, IoError};

use crate::MetaIo;

/// Metadata I/O on a spare device.
#[derive(Debug)]
pub struct BackendIo<'a, S: ?Sized>(pub &'a S);

impl<S: BlockBackend + ?Sized> MetaIo for BackendIo<'_, S> {
    type Error = IoError;

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_at(offset, buf)
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.0.write_at(offset, buf)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.0.flush()
    }
}
