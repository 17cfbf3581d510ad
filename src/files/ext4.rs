//! ext2/3/4 through the `ext4-view` crate (read-only, no unsafe code, journal replayed in
//! memory). What the crate does not give (see `src/files/README.md`): inline data,
//! extended attributes, inode numbers (so hard links), device numbers, hole maps.

use super::adapter::ImageReader;
use super::guard::{guarded, GuardedRead};
use super::{Entry, FileSystem, Kind};
use crate::error::{Error, ErrorKind, Result};
use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata, Timestamp};
use std::io::Read;
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

    fn target(&self, path: &Path, kind: Kind) -> Result<Option<PathBuf>> {
        if kind != Kind::Symlink {
            return Ok(None);
        }
        let target = self
            .fs
            .read_link(bytes(path))
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
            target: self.target(path, kind)?,
            file_id: None,
            links: 1,
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
        self.guarded(|| {
            let fail = |e| error(&self.name, path, e);
            let mut entries = Vec::new();
            for item in self.fs.read_dir(bytes(path)).map_err(fail)? {
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

    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>> {
        let file = self.guarded(|| {
            self.fs
                .open(bytes(path))
                .map_err(|e| error(&self.name, path, e))
        })?;
        Ok(Box::new(GuardedRead::new(file, &self.name, FS, path)))
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
