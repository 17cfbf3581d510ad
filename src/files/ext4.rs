//! ext2/3/4 through the `ext4-view` crate (read-only, no unsafe code, journal replayed in
//! memory), patched in `third_party/ext4-view` to give inode numbers (so hard links),
//! link counts, device numbers, extended attributes, inline data and hole maps, and to
//! read a directory or file by inode number, so a walk never resolves a path twice.

use super::adapter::ImageReader;
use super::guard::{guarded, GuardedRead};
use super::{Entry, FileSystem, Kind};
use crate::error::{Error, ErrorKind, Result};
use ext4_view::{Ext4, Ext4Error, Ext4Read, File, FileType, Metadata, ReadDir, Timestamp};
use std::io::Read;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const FS: &str = "ext4";

impl Ext4Read for ImageReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.read_at(start_byte, dst)?)
    }
}

/// An ext2/3/4 file system of an image.
pub struct Ext4Fs {
    fs: Ext4,
    name: String,
}

impl Ext4Fs {
    /// Reads the superblock, group descriptors and journal of the file system `reader`
    /// holds.
    pub fn load(reader: ImageReader) -> Result<Self> {
        let name = reader.name().to_string();
        let fs = guarded(&name, FS, || {
            Ext4::load(Box::new(reader)).map_err(|e| error(&name, Path::new("/"), e))
        })?;
        Ok(Ext4Fs { fs, name })
    }

    fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guarded(&self.name, FS, f)
    }

    fn target(&self, path: &Path, kind: Kind, inode: u32) -> Result<Option<PathBuf>> {
        if kind != Kind::Symlink {
            return Ok(None);
        }
        let target = self
            .fs
            .inode_read_link(inode)
            .map_err(|e| error(&self.name, path, e))?;
        Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(
            target.as_ref(),
        ))))
    }

    fn entry(&self, path: &Path, name: PathBuf, meta: &Metadata) -> Result<Entry> {
        let kind = kind(meta.file_type());
        Ok(Entry {
            name,
            kind,
            size: meta.len(),
            mode: u32::from(meta.mode()),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: time(meta.modified()),
            atime: time(meta.accessed()),
            target: self.target(path, kind, meta.inode())?,
            file_id: Some(u64::from(meta.inode())),
            links: u32::from(meta.links()).max(1),
            device: meta.device(),
        })
    }
}

impl FileSystem for Ext4Fs {
    fn kind(&self) -> &'static str {
        FS
    }

    fn metadata(&self, path: &Path) -> Result<Entry> {
        self.guarded(|| {
            let meta = self
                .fs
                .symlink_metadata(bytes(path))
                .map_err(|e| error(&self.name, path, e))?;
            let name = path.file_name().map_or_else(|| "/".into(), PathBuf::from);
            self.entry(path, name, &meta)
        })
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<Entry>> {
        let dir = self.guarded(|| {
            self.fs
                .read_dir(bytes(path))
                .map_err(|e| error(&self.name, path, e))
        })?;
        self.entries(path, dir)
    }

    fn read_dir_of(&self, path: &Path, entry: &Entry) -> Result<Vec<Entry>> {
        let Some(inode) = inode(entry) else {
            return self.read_dir(path);
        };
        let dir = self.guarded(|| {
            self.fs
                .inode_read_dir(inode)
                .map_err(|e| error(&self.name, path, e))
        })?;
        self.entries(path, dir)
    }

    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>> {
        let file = self.guarded(|| {
            self.fs
                .open(bytes(path))
                .map_err(|e| error(&self.name, path, e))
        })?;
        Ok(Box::new(GuardedRead::new(file, &self.name, FS, path)))
    }

    fn open_entry<'a>(&'a self, path: &Path, entry: &Entry) -> Result<Box<dyn Read + 'a>> {
        let Some(inode) = inode(entry) else {
            return self.open_file(path);
        };
        let file = self.open_inode(path, inode)?;
        Ok(Box::new(GuardedRead::new(file, &self.name, FS, path)))
    }

    fn xattrs(&self, path: &Path, entry: &Entry) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inode = match inode(entry) {
            Some(inode) => inode,
            None => self.metadata(path).map(|e| inode(&e).unwrap_or(0))?,
        };
        self.guarded(|| {
            let xattrs = self
                .fs
                .inode_xattrs(inode)
                .map_err(|e| error(&self.name, path, e))?;
            Ok(xattrs.into_iter().map(|x| (x.name, x.value)).collect())
        })
    }

    fn data_ranges(
        &self,
        path: &Path,
        entry: &Entry,
        max: usize,
    ) -> Result<Option<Vec<Range<u64>>>> {
        let Some(inode) = inode(entry) else {
            return Ok(None);
        };
        self.guarded(|| {
            self.fs
                .inode_data_ranges(inode, max)
                .map_err(|e| error(&self.name, path, e))
        })
    }

    fn open_ranges<'a>(
        &'a self,
        path: &Path,
        entry: &Entry,
        ranges: Vec<Range<u64>>,
    ) -> Result<Box<dyn Read + 'a>> {
        let Some(inode) = inode(entry) else {
            return Ok(Box::new(super::Ranges::new(self.open_file(path)?, ranges)));
        };
        let file = SeekingRanges {
            file: self.open_inode(path, inode)?,
            ranges: ranges.into_iter(),
            left: 0,
        };
        Ok(Box::new(GuardedRead::new(file, &self.name, FS, path)))
    }
}

impl Ext4Fs {
    fn open_inode(&self, path: &Path, inode: u32) -> Result<File> {
        self.guarded(|| {
            self.fs
                .inode_open(inode)
                .map_err(|e| error(&self.name, path, e))
        })
    }

    /// The entries of `dir` (directory `path`), without `.` and `..`.
    fn entries(&self, path: &Path, dir: ReadDir) -> Result<Vec<Entry>> {
        self.guarded(|| {
            let fail = |e| error(&self.name, path, e);
            let mut entries = Vec::new();
            for item in dir {
                let item = item.map_err(fail)?;
                let name = PathBuf::from(std::ffi::OsStr::from_bytes(item.file_name().as_ref()));
                if name == Path::new(".") || name == Path::new("..") {
                    continue;
                }
                let child = path.join(&name);
                let meta = item.metadata().map_err(|e| error(&self.name, &child, e))?;
                entries.push(self.entry(&child, name, &meta)?);
            }
            Ok(entries)
        })
    }
}

/// The inode number a [`Entry`] of this reader carries.
fn inode(entry: &Entry) -> Option<u32> {
    entry.file_id.and_then(|id| u32::try_from(id).ok())
}

/// Some ranges of a file, one after another, each reached by a seek (so a hole costs
/// no reading).
struct SeekingRanges {
    file: File,
    ranges: std::vec::IntoIter<Range<u64>>,
    left: u64,
}

impl Read for SeekingRanges {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            let Some(range) = self.ranges.next() else {
                return Ok(0);
            };
            self.file
                .seek_to(range.start)
                .map_err(std::io::Error::other)?;
            self.left = range.end.saturating_sub(range.start);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn kind(file_type: FileType) -> Kind {
    match file_type {
        FileType::BlockDevice => Kind::BlockDev,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::Directory => Kind::Dir,
        FileType::Fifo => Kind::Fifo,
        FileType::Regular => Kind::File,
        FileType::Socket => Kind::Socket,
        FileType::Symlink => Kind::Symlink,
    }
}

fn time(t: Timestamp) -> super::entry::Time {
    super::entry::Time {
        secs: t.seconds(),
        nanos: t.nanoseconds(),
    }
}

/// The crate's error as imgblk's, naming the image and the path.
fn error(image: &str, path: &Path, e: Ext4Error) -> Error {
    let at = super::escape::escape(path);
    let (kind, what) = match &e {
        Ext4Error::NotFound => (ErrorKind::NotFound, "no such file".to_string()),
        Ext4Error::NotADirectory => (ErrorKind::InvalidInput, "not a directory".to_string()),
        Ext4Error::IsADirectory => (ErrorKind::InvalidInput, "is a directory".to_string()),
        Ext4Error::IsASpecialFile => (
            ErrorKind::InvalidInput,
            "is a device, pipe or socket, which has no bytes to read".to_string(),
        ),
        Ext4Error::Incompatible(i) => (
            ErrorKind::Unsupported,
            format!(
                "the ext4 file system uses a feature imgblk's in-process reader (ext4-view) \
                 lacks ({i}); `imgblk mount` reads it through the kernel"
            ),
        ),
        Ext4Error::Encrypted => (
            ErrorKind::Unsupported,
            "is encrypted (fscrypt), which imgblk cannot read".to_string(),
        ),
        Ext4Error::Io(_) => (ErrorKind::Io, e.to_string()),
        _ => (
            ErrorKind::Corrupt,
            format!("the ext4 file system is corrupt: {e}"),
        ),
    };
    Error::new(kind, format!("{image}: {at}: {what}"))
}
