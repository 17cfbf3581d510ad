//! One host file of an image stack (the image itself, a backing file, an extent file), opened
//! once buffered for metadata and once with `O_DIRECT` for aligned data I/O where the file
//! system allows it.

use crate::error::{Error, ErrorKind, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment (bytes) of offsets, lengths and buffers that `O_DIRECT` I/O must keep.
pub const DIRECT_ALIGN: u64 = 512;

/// A host file an image's extents point into.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    writable: bool,
    len: u64,
    is_block_device: bool,
}

impl ImageFile {
    /// Opens `path` read-only or read-write; with `want_direct`, also opens an `O_DIRECT` twin
    /// if the file system supports it for 512-byte aligned I/O (tmpfs, for one, does not).
    pub fn open(path: &Path, writable: bool, want_direct: bool) -> Result<Self> {
        let buffered = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io("cannot open", e).with_path(path))?;
        let meta = buffered
            .metadata()
            .map_err(|e| Error::io("cannot stat", e).with_path(path))?;
        let is_block_device = meta.file_type().is_block_device();
        let len = if is_block_device {
            block_device_size(&buffered).map_err(|e| e.with_path(path))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(Error::invalid("not a regular file or block device").with_path(path));
        };
        let direct = if want_direct {
            open_direct(path, writable)
        } else {
            None
        };
        Ok(ImageFile {
            path: path.to_path_buf(),
            buffered,
            direct,
            writable,
            len,
            is_block_device,
        })
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size at open time (for a block device, `BLKGETSIZE64`).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file was opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether this is a block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Whether an `O_DIRECT` descriptor is available.
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The buffered descriptor: for metadata and unaligned I/O.
    pub fn buffered_fd(&self) -> RawFd {
        self.buffered.as_raw_fd()
    }

    /// The descriptor for data I/O of `offset..offset+len` into a buffer at `buf_addr`:
    /// the `O_DIRECT` one when all three are aligned, the buffered one otherwise.
    pub fn data_fd(&self, offset: u64, len: u64, buf_addr: usize) -> RawFd {
        match &self.direct {
            Some(direct)
                if offset % DIRECT_ALIGN == 0
                    && len % DIRECT_ALIGN == 0
                    && buf_addr as u64 % DIRECT_ALIGN == 0 =>
            {
                direct.as_raw_fd()
            }
            _ => self.buffered.as_raw_fd(),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read means the file is truncated.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.buffered.read_exact_at(buf, offset).map_err(|e| {
            let e = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(format!(
                    "file is truncated: {} bytes wanted at offset {offset}, file has {}",
                    buf.len(),
                    self.len
                ))
            } else {
                Error::io("read failed", e)
            };
            e.at(offset).with_path(&self.path)
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`, zero-filling whatever lies past the end.
    pub fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self
                .buffered
                .read_at(&mut buf[done..], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io("read failed", e)
                        .at(offset + done as u64)
                        .with_path(&self.path))
                }
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(
                Error::new(ErrorKind::ReadOnly, "file is open read-only").with_path(&self.path)
            );
        }
        self.buffered.write_all_at(buf, offset).map_err(|e| {
            Error::io("write failed", e)
                .at(offset)
                .with_path(&self.path)
        })
    }

    /// Makes written data durable (`fdatasync`).
    pub fn sync_data(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.buffered
            .sync_data()
            .map_err(|e| Error::io("fdatasync failed", e).with_path(&self.path))
    }
}

/// Two handles are equal when they are the same open file: extents compare by identity.
impl PartialEq for ImageFile {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ImageFile {}

/// Opens an `O_DIRECT` descriptor and checks that a 512-byte aligned read works on it.
fn open_direct(path: &Path, writable: bool) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let mut probe = AlignedBuf::new(DIRECT_ALIGN as usize);
    match file.read_at(probe.as_mut_slice(), 0) {
        Ok(_) => Some(file),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "O_DIRECT unusable, using buffered I/O");
            None
        }
    }
}

/// `BLKGETSIZE64` on an open block device.
fn block_device_size(file: &File) -> Result<u64> {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut size = 0u64;
    // SAFETY: the ioctl writes one u64 through a valid pointer to a local.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }
        .map_err(|e| Error::io("BLKGETSIZE64 failed", e.into()))?;
    Ok(size)
}

/// A heap buffer aligned for `O_DIRECT`.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least 1) aligned to 4096.
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096)
            .expect("buffer length overflows a Layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// The whole buffer, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes, initialised, and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn truncated_read_names_file_and_offset() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&[1u8; 100]).unwrap();
        let f = ImageFile::open(tmp.path(), false, false).unwrap();
        let mut buf = [0u8; 64];
        let err = f.read_exact_at(&mut buf, 50).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        let msg = err.to_string();
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    }

    #[test]
    fn zero_padded_read_past_end() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&[7u8; 10]).unwrap();
        let f = ImageFile::open(tmp.path(), false, false).unwrap();
        let mut buf = [0xffu8; 16];
        f.read_zero_padded(&mut buf, 4).unwrap();
        assert_eq!(&buf[..6], &[7u8; 6]);
        assert_eq!(&buf[6..], &[0u8; 10]);
    }

    #[test]
    fn write_to_read_only_file_is_refused() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = ImageFile::open(tmp.path(), false, false).unwrap();
        assert_eq!(
            f.write_all_at(b"x", 0).unwrap_err().kind(),
            ErrorKind::ReadOnly
        );
    }
}
