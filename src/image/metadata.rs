//! Metadata loads that a caller with its own asynchronous I/O carries out itself.
//!
//! A lookup that misses a format's table cache reads the table with a blocking `pread`.
//! On a ublk queue thread that stalls every other request of the queue for a disk round
//! trip (a cold 1 TiB image misses on nearly every random read). So a queue maps reads
//! with loads [`deferred`]: a miss then fails at once with [`ErrorKind::WouldBlock`]
//! instead of reading, the queue asks [`DiskImage::pending_metadata`] which tables the
//! request needs, reads them on its own ring while its other requests go on, hands the
//! bytes to [`MetadataLoad::install`] and maps again. A format that does not defer loads
//! as before, so deferring never changes what a lookup returns, only who waits for it.
//!
//! [`DiskImage::pending_metadata`]: super::DiskImage::pending_metadata

use super::ImageFile;
use crate::error::{Error, ErrorKind, Result};
use std::cell::Cell;

thread_local! {
    /// Whether lookups on this thread fail instead of blocking on a table load.
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `lookup` with table loads deferred: a lookup that would read metadata from a file
/// fails with [`ErrorKind::WouldBlock`] instead (see the module documentation).
pub fn deferred<T>(lookup: impl FnOnce() -> T) -> T {
    /// Restores the previous mode, also when `lookup` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEFERRING.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEFERRING.with(|d| d.replace(true)));
    lookup()
}

/// Whether the current lookup must not block on a table load ([`deferred`]).
pub fn is_deferred() -> bool {
    DEFERRING.with(Cell::get)
}

/// The error of a lookup that needs a table it was told not to load ([`deferred`]).
pub fn would_block() -> Error {
    Error::new(
        ErrorKind::WouldBlock,
        "image metadata needed by this lookup is not in memory (loads deferred)",
    )
}

/// Takes the bytes of a table that a [`MetadataLoad`] read.
pub trait MetadataSink: Send + Sync {
    /// Checks and caches the table `key` read from file offset `offset`. Bytes that no
    /// longer describe the image (the table moved meanwhile) are dropped, not cached.
    fn install(&self, key: u64, offset: u64, bytes: &[u8]) -> Result<()>;
}

/// A table that a lookup needs and that is not in memory: `len` bytes at `offset` of
/// `file`, for `sink` to install under `key`.
pub struct MetadataLoad<'a> {
    /// The file the table is in.
    pub file: &'a ImageFile,
    /// Where it starts.
    pub offset: u64,
    /// Its size in bytes.
    pub len: usize,
    /// Who caches it.
    pub sink: &'a dyn MetadataSink,
    /// Which of the sink's tables it is.
    pub key: u64,
}

impl MetadataLoad<'_> {
    /// Hands the table's `bytes`, read from the file, to its cache.
    pub fn install(&self, bytes: &[u8]) -> Result<()> {
        self.sink.install(self.key, self.offset, bytes)
    }

    /// Reads the table with a blocking read and installs it (for callers without a ring
    /// of their own, and tests).
    pub fn load(&self) -> Result<()> {
        let mut bytes = vec![0u8; self.len];
        self.file.read_exact_at(&mut bytes, self.offset)?;
        self.install(&bytes)
    }
}

/// Adds `load` to `loads` unless it is there already (two pieces of a request, or two
/// images of a chain seen through two pieces, may need the same table).
pub fn push_load<'a>(loads: &mut Vec<MetadataLoad<'a>>, load: MetadataLoad<'a>) {
    let same = |l: &MetadataLoad<'_>| std::ptr::eq(l.file, load.file) && l.offset == load.offset;
    if !loads.iter().any(same) {
        loads.push(load);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferral_is_scoped_and_restored_after_a_panic() {
        assert!(!is_deferred());
        assert!(deferred(is_deferred));
        assert!(deferred(|| deferred(is_deferred)));
        assert!(!is_deferred());
        let unwound = std::panic::catch_unwind(|| deferred(|| panic!("lookup failed")));
        assert!(unwound.is_err());
        assert!(!is_deferred(), "a panicking lookup left loads deferred");
    }
}
