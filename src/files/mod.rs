//! Files inside images without a kernel: the file systems of a whole image, a partition or
//! an LV read in process by crates made for them (`imgblk ls`, `get`, `tar`), so that no
//! ublk, root or mount is needed.
//!
//! [`open`] picks the reader for what the layout probe found; every reader is a
//! [`FileSystem`], which [`walk`] and [`archive`] use without knowing which one it is. Calls
//! into a crate go through [`guard`], so a crate's panic on a hostile file system
//! becomes an error naming the image.

pub mod adapter;
pub mod archive;
pub mod entry;
pub mod escape;
pub mod ext4;
pub mod fat;
pub mod guard;
pub mod mounted;
pub mod ntfs;
pub mod open;
pub mod walk;

pub use entry::{Entry, Kind};
pub use open::open;

use crate::error::Result;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// A read-only file system inside an image, as the file commands need it. Paths are
/// absolute inside the file system; symbolic links are never followed.
pub trait FileSystem {
    /// The file system's name as `blkid` reports it (`ext4`), for messages.
    fn kind(&self) -> &'static str;

    /// What `path` is (the link itself for a symbolic link), named by its last component.
    fn metadata(&self, path: &Path) -> Result<Entry>;

    /// The entries of directory `path`, without `.` and `..`, in no particular order.
    fn read_dir(&self, path: &Path) -> Result<Vec<Entry>>;

    /// The bytes of regular file `path`, as a stream.
    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>>;

    /// [`FileSystem::read_dir`] of directory `path` whose entry the caller already
    /// holds: a reader that gave the entry a `file_id` can go straight to it instead
    /// of resolving the path again.
    fn read_dir_of(&self, path: &Path, _entry: &Entry) -> Result<Vec<Entry>> {
        self.read_dir(path)
    }

    /// [`FileSystem::open_file`] of file `path` whose entry the caller already holds.
    fn open_entry<'a>(&'a self, path: &Path, _entry: &Entry) -> Result<Box<dyn Read + 'a>> {
        self.open_file(path)
    }

    /// The extended attributes of file `path` (full names such as `user.x`, and
    /// values); none when the reader does not give them.
    fn xattrs(&self, _path: &Path, _entry: &Entry) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// The byte ranges of regular file `path` that hold data, in order, when the
    /// reader knows them and there are at most `max` (the rest are holes, which read
    /// as zeros); `None` otherwise.
    fn data_ranges(
        &self,
        _path: &Path,
        _entry: &Entry,
        _max: usize,
    ) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }

    /// The bytes of `ranges` of regular file `path`, one after another (the holes
    /// between them left out).
    fn open_ranges<'a>(
        &'a self,
        path: &Path,
        entry: &Entry,
        ranges: Vec<Range<u64>>,
    ) -> Result<Box<dyn Read + 'a>> {
        Ok(Box::new(Ranges::new(self.open_entry(path, entry)?, ranges)))
    }
}

/// The bytes of some ranges of a stream, one after another: what lies between them
/// is read and dropped.
pub struct Ranges<R> {
    inner: R,
    ranges: std::vec::IntoIter<Range<u64>>,
    at: u64,
    current: Option<Range<u64>>,
}

impl<R: Read> Ranges<R> {
    /// `ranges` (in order, not overlapping) of `inner`, read from its start.
    pub fn new(inner: R, ranges: Vec<Range<u64>>) -> Self {
        Ranges {
            inner,
            ranges: ranges.into_iter(),
            at: 0,
            current: None,
        }
    }
}

impl<R: Read> Read for Ranges<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let range = match &self.current {
                Some(r) if self.at < r.end => r.clone(),
                _ => match self.ranges.next() {
                    Some(r) => {
                        self.current = Some(r);
                        continue;
                    }
                    None => return Ok(0),
                },
            };
            if self.at < range.start {
                let skip = range.start - self.at;
                let copied =
                    std::io::copy(&mut (&mut self.inner).take(skip), &mut std::io::sink())?;
                if copied < skip {
                    return Ok(0);
                }
                self.at = range.start;
            }
            let want = buf
                .len()
                .min(usize::try_from(range.end - self.at).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            self.at += n as u64;
            return Ok(n);
        }
    }
}

/// An I/O error of copying a file's bytes out, as imgblk's error: the file-system
/// reader's own (a corrupt file system, naming the image) when it came from there, else
/// a failed write.
pub fn copy_error(e: std::io::Error) -> crate::error::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::error::Error>())
    {
        Some(inner) => crate::error::Error::new(inner.kind(), inner.to_string()),
        None => crate::error::Error::io("writing the output failed", e),
    }
}

/// An error about file `path` of the file system on `image`: `IMAGE: PATH: what`.
pub fn path_error(
    kind: crate::error::ErrorKind,
    image: &str,
    path: &Path,
    what: &str,
) -> crate::error::Error {
    crate::error::Error::new(kind, format!("{image}: {}: {what}", escape::escape(path)))
}
