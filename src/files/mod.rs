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
