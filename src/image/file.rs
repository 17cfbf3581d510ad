//! One host file of an image stack (the image itself, a backing file, an extent file), opened
//! once buffered for metadata and once with `O_DIRECT` for aligned data I/O where the file
//! system allows it.

use super::decoded::DecodedClusters;
use super::policy::Field;
use super::safe_open::{self, Accept, FileId};
use super::OpenOptions;
use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Alignment (bytes) of offsets, lengths and buffers that `O_DIRECT` I/O must keep.
pub const DIRECT_ALIGN: u64 = 512;

/// A change [`ImageFile`] is about to make to its file, as a [`FileTap`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum FileChange<'a> {
    /// `pwrite` of `data` at `offset`.
    Write { offset: u64, data: &'a [u8] },
    /// `fdatasync`.
    Sync,
    /// A hole punched at `offset..offset + len`.
    Punch { offset: u64, len: u64 },
    /// The file cut or grown to `len` bytes.
    SetLen(u64),
}

/// Sees every change a writable [`ImageFile`] makes through its own methods, before it is
/// made, and may fail it: the crash-consistency tests record the changes to replay them
/// to every crash point, and inject I/O errors. (Data that a ublk queue writes with
/// io_uring does not pass through here.)
pub trait FileTap: Send + Sync {
    /// Called before `change` is made to the file at `path`; an error fails the change
    /// instead, as if the system call had.
    fn before(&self, path: &Path, change: FileChange<'_>) -> std::io::Result<()>;
}

/// A shared [`FileTap`] that options can carry (cloned into every file opened with them).
#[derive(Clone)]
pub struct Tap(pub Arc<dyn FileTap>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

/// A host file an image's extents point into.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    /// Where `path` led when the file was opened: the file's absolute path, symlinks
    /// resolved (from `/proc/self/fd`).
    real_path: PathBuf,
    buffered: File,
    direct: Option<File>,
    writable: bool,
    len: u64,
    /// Where the bytes this file serves start in the host file: 0, or the start of an
    /// archive member served as a file of its own (see [`Self::window`]).
    base: u64,
    is_block_device: bool,
    /// Device and inode, to recognise the same file reached by another path.
    id: FileId,
    /// Set once an `fdatasync` failed: from then on every write and sync fails, since the
    /// kernel may have dropped the dirty pages it could not write (see [`Self::sync_data`]).
    sync_failed: AtomicBool,
    tap: Option<Tap>,
    decoded: DecodedClusters,
}

impl ImageFile {
    /// Opens `path` read-only or read-write; with `want_direct`, also opens an `O_DIRECT` twin
    /// if the file system supports it for 512-byte aligned I/O (tmpfs, for one, does not).
    /// `path` is one the user gave: a regular file or a block device, anything else (a
    /// FIFO, a socket, a directory) is refused without blocking ([`safe_open`]).
    ///
    /// A block device opened for writing is opened `O_EXCL`, the kernel's exclusive open:
    /// it fails while the device is mounted, held by device-mapper, or open `O_EXCL`
    /// elsewhere, so imgblk is never a second writer.
    pub fn open(path: &Path, writable: bool, want_direct: bool) -> Result<Self> {
        Self::open_as(path, writable, want_direct, None, Accept::FileOrBlockDevice)
    }

    /// Opens, read-only, a file that the image at `image` names in its field `field` (a
    /// backing file, an extent, an external data file, a parent locator), as far as
    /// `options.policy` allows ([`super::policy`]). Images of unknown origin name what
    /// they like, so only a regular file is accepted (or a block device, where the policy
    /// allows): a FIFO, a socket, a character device or a directory is refused at once,
    /// in an error naming the image, the field and the path.
    pub fn open_named(
        path: &Path,
        image: &Path,
        field: Field,
        options: &OpenOptions,
    ) -> Result<Self> {
        let root = options
            .root
            .clone()
            .unwrap_or_else(|| super::policy::Root::of(image, false));
        options.policy.check_name(&root, image, field, path)?;
        let accept = match options.policy.allows_device(&root) {
            true => Accept::FileOrBlockDevice,
            false => Accept::RegularFile,
        };
        let file = Self::open_as(path, false, options.direct, Some((image, field)), accept)?;
        let fd = file.buffered.as_raw_fd();
        options.policy.check_opened(&root, image, field, path, fd)?;
        Ok(file)
    }

    /// [`Self::open`] of a path the user gave (`named_by` `None`) or [`Self::open_named`].
    fn open_as(
        path: &Path,
        writable: bool,
        want_direct: bool,
        named_by: Option<(&Path, Field)>,
        accept: Accept,
    ) -> Result<Self> {
        let exclusive =
            writable && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let flags = if exclusive { libc::O_EXCL } else { 0 };
        let (buffered, meta) = safe_open::open(path, writable, flags, accept).map_err(|e| {
            if exclusive && e.raw_os_error() == Some(libc::EBUSY) {
                Error::new(
                    ErrorKind::Busy,
                    "block device is in use (mounted, held by device-mapper, or open exclusively)",
                )
                .with_path(path)
            } else {
                safe_open::open_error(path, named_by, e)
            }
        })?;
        let is_block_device = meta.file_type().is_block_device();
        let len = if is_block_device {
            block_device_size(&buffered).map_err(|e| e.with_path(path))?
        } else {
            meta.len()
        };
        let id = FileId::of(&meta);
        let direct = if want_direct {
            open_direct(path, writable, id, accept)
        } else {
            None
        };
        let real_path = std::fs::read_link(format!("/proc/self/fd/{}", buffered.as_raw_fd()))
            .unwrap_or_else(|_| path.to_path_buf());
        Ok(ImageFile {
            path: path.to_path_buf(),
            real_path,
            buffered,
            direct,
            writable,
            len,
            base: 0,
            is_block_device,
            id,
            sync_failed: AtomicBool::new(false),
            tap: None,
            decoded: DecodedClusters::default(),
        })
    }

    /// The `len` bytes of this read-only file from `base` on, as a file of their own (a
    /// disk stored in an archive): offsets are counted from `base`, and nothing past the
    /// window is read. An error naming the file if the window does not fit in it.
    pub fn window(mut self, base: u64, len: u64) -> Result<Self> {
        if self.writable || base.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::invalid(format!(
                "a read-only window of {len} bytes at {base} of a {}-byte file",
                self.len
            ))
            .with_path(&self.path));
        }
        self.base += base;
        self.len = len;
        Ok(self)
    }

    /// Where byte `offset` of this file lies in the host file (see [`Self::window`]).
    pub fn host_offset(&self, offset: u64) -> u64 {
        self.base.saturating_add(offset)
    }

    /// Lets `tap` see (and fail) every change this file makes from now on.
    pub fn with_tap(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// Runs the tap, if any, before `change`.
    fn tapped(&self, change: FileChange<'_>) -> std::io::Result<()> {
        match &self.tap {
            Some(tap) => tap.0.before(&self.path, change),
            None => Ok(()),
        }
    }

    /// Refuses a change to a read-only file, or to one whose earlier sync failed.
    fn check_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(
                Error::new(ErrorKind::ReadOnly, "file is open read-only").with_path(&self.path)
            );
        }
        if self.sync_failed() {
            return Err(Error::io(
                "an earlier fdatasync of this file failed, so data it had acknowledged may be \
                 lost; writes are refused until the image is closed (detach it, check it)",
                std::io::Error::from_raw_os_error(libc::EIO),
            )
            .with_path(&self.path));
        }
        Ok(())
    }

    /// Whether an `fdatasync` of this file has failed: writes and syncs fail from then on.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::Acquire)
    }

    /// The cache of this file's decompressed clusters (see [`super::decoded`]).
    pub fn decoded_clusters(&self) -> &DecodedClusters {
        &self.decoded
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the path led when the file was opened (absolute, symlinks resolved).
    pub fn real_path(&self) -> &Path {
        &self.real_path
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

    /// The file's identity (device and inode): a backing chain that reaches a file it
    /// already holds loops.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Whether an `O_DIRECT` descriptor is available.
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Asks the kernel to read `len` bytes at `offset` into its page cache in the
    /// background (`POSIX_FADV_WILLNEED`); advice only, so a failure is ignored.
    pub fn will_need(&self, offset: u64, len: u64) {
        let (Ok(at), Ok(len)) = (
            libc::off_t::try_from(self.host_offset(offset)),
            libc::off_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open.
        unsafe { libc::posix_fadvise(self.buffered_fd(), at, len, libc::POSIX_FADV_WILLNEED) };
    }

    /// The buffered descriptor: for metadata and unaligned I/O.
    pub fn buffered_fd(&self) -> RawFd {
        self.buffered.as_raw_fd()
    }

    /// The descriptor for data I/O of `offset..offset+len` into a buffer at `buf_addr`:
    /// the `O_DIRECT` one when all three are aligned, the buffered one otherwise. I/O on
    /// the descriptor must be at [`Self::host_offset`]`(offset)`.
    pub fn data_fd(&self, offset: u64, len: u64, buf_addr: usize) -> RawFd {
        let offset = self.host_offset(offset);
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

    /// Copies `len` bytes at `offset` of this file to `out` at `out_offset` inside the
    /// kernel (`copy_file_range`), so that they never pass through user space. `Ok(false)`
    /// when the kernel will not copy between these two files (another file system, a
    /// device, an old kernel) or the file ends early: the caller reads instead, which
    /// reports a truncated file as such.
    pub fn copy_to(&self, offset: u64, len: u64, out: &File, out_offset: u64) -> Result<bool> {
        if offset
            .checked_add(len)
            .is_none_or(|end| self.base > 0 && end > self.len)
        {
            return Ok(false);
        }
        let (mut from, mut to) = (self.host_offset(offset) as i64, out_offset as i64);
        let mut left = len;
        while left > 0 {
            let chunk = left.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the whole call and the offsets are
            // locals the kernel updates.
            let n = unsafe {
                libc::copy_file_range(
                    self.buffered.as_raw_fd(),
                    &mut from,
                    out.as_raw_fd(),
                    &mut to,
                    chunk,
                    0,
                )
            };
            match n {
                0 => return Ok(false),
                n if n > 0 => left -= n as u64,
                _ => {
                    let e = std::io::Error::last_os_error();
                    return match e.raw_os_error() {
                        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                            Ok(false)
                        }
                        Some(libc::EINTR) => continue,
                        _ => Err(Error::io("copy failed", e).at(offset).with_path(&self.path)),
                    };
                }
            }
        }
        Ok(true)
    }

    /// Takes QEMU-compatible image locks on the file (see [`super::lock`]).
    pub fn lock(&self, mode: super::lock::LockMode) -> Result<()> {
        super::lock::lock(self.buffered.as_raw_fd(), mode).map_err(|e| e.with_path(&self.path))
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read means the file is truncated.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let past_window = self.base > 0
            && offset
                .checked_add(buf.len() as u64)
                .is_none_or(|end| end > self.len);
        let result = if past_window {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        } else {
            self.buffered.read_exact_at(buf, self.host_offset(offset))
        };
        result.map_err(|e| {
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
        let wanted = match self.base {
            0 => buf.len(),
            _ => self.len.saturating_sub(offset).min(buf.len() as u64) as usize,
        };
        while done < wanted {
            match self.buffered.read_at(
                &mut buf[done..wanted],
                self.host_offset(offset + done as u64),
            ) {
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
        self.check_writable()?;
        self.tapped(FileChange::Write { offset, data: buf })
            .and_then(|()| self.buffered.write_all_at(buf, offset))
            .map_err(|e| {
                Error::io("write failed", e)
                    .at(offset)
                    .with_path(&self.path)
            })
    }

    /// Deallocates `offset..offset + len` so that it reads as zeroes (`fallocate` punching
    /// a hole). Returns false where the file system or a block device cannot do that, and
    /// the caller must write zeroes instead.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        self.check_writable()?;
        if self.is_block_device {
            return Ok(false);
        }
        let (Ok(off), Ok(length)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::invalid("range too large").with_path(&self.path));
        };
        self.tapped(FileChange::Punch { offset, len })
            .map_err(|e| Error::io("fallocate failed", e).with_path(&self.path))?;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
        let rc = unsafe { libc::fallocate(self.buffered.as_raw_fd(), mode, off, length) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(Error::io("fallocate failed", err)
                .at(offset)
                .with_path(&self.path)),
        }
    }

    /// Makes `offset..offset + len` read as zeroes without writing them: punches a hole in
    /// the part inside the file and grows the file to the range's end if it is shorter (never
    /// shrinks it). Returns false where that cannot be done (a block device, a file system
    /// without hole punching), and the caller must write zeroes instead.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<bool> {
        self.check_writable()?;
        if self.is_block_device {
            return Ok(false);
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::invalid("range too large").with_path(&self.path))?;
        let file_len = self
            .buffered
            .metadata()
            .map_err(|e| Error::io("cannot stat the file", e).with_path(&self.path))?
            .len();
        if offset < file_len && !self.punch_hole(offset, end.min(file_len) - offset)? {
            return Ok(false);
        }
        if end > file_len {
            self.set_len(end)?;
        }
        Ok(true)
    }

    /// Whether `offset` lies in data or in a hole, and where that run ends (`SEEK_DATA` /
    /// `SEEK_HOLE`). Where the file system cannot tell, everything is data.
    pub fn allocation_at(&self, offset: u64) -> Result<(bool, u64)> {
        use nix::unistd::{lseek, Whence};
        let fd = self.buffered.as_raw_fd();
        let Ok(pos) = i64::try_from(offset) else {
            return Ok((true, self.len));
        };
        if self.is_block_device || self.base > 0 {
            return Ok((true, self.len));
        }
        match lseek(fd, pos, Whence::SeekData) {
            Ok(data) if data as u64 == offset => {
                let hole = lseek(fd, pos, Whence::SeekHole).map_or(self.len, |h| h as u64);
                Ok((true, hole.max(offset + 1)))
            }
            Ok(data) => Ok((false, data as u64)),
            Err(nix::errno::Errno::ENXIO) => Ok((false, u64::MAX)),
            Err(_) => Ok((true, self.len.max(offset + 1))),
        }
    }

    /// Makes written data durable (`fdatasync`).
    ///
    /// A failure is sticky: after a failed `fdatasync` Linux may have marked the pages it
    /// could not write clean, so a second sync would "succeed" with the data gone. Every
    /// later write and sync of this file fails instead (PostgreSQL's fsync lesson).
    pub fn sync_data(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.check_writable()?;
        self.tapped(FileChange::Sync)
            .and_then(|()| self.buffered.sync_data())
            .map_err(|e| {
                if !self.sync_failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "fdatasync failed: refusing every further write to this file");
                }
                Error::io("fdatasync failed", e).with_path(&self.path)
            })
    }

    /// Cuts or grows the file to `len` bytes (regular files only).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.check_writable()?;
        self.tapped(FileChange::SetLen(len))
            .and_then(|()| self.buffered.set_len(len))
            .map_err(|e| Error::io("cannot set the file's length", e).with_path(&self.path))
    }
}

/// Two handles are equal when they are the same open file: extents compare by identity.
impl PartialEq for ImageFile {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ImageFile {}

/// Opens an `O_DIRECT` descriptor of the file `id` (without blocking, like the first
/// descriptor, and only if `path` still reaches that file) and checks that a 512-byte
/// aligned read works on it.
fn open_direct(path: &Path, writable: bool, id: FileId, accept: Accept) -> Option<File> {
    let (file, meta) = safe_open::open(path, writable, libc::O_DIRECT, accept).ok()?;
    if FileId::of(&meta) != id {
        tracing::warn!(path = %path.display(), "file replaced while being opened; not using O_DIRECT");
        return None;
    }
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

/// Releases the image locks before the descriptor closes (see [`super::lock::unlock`]).
impl Drop for ImageFile {
    fn drop(&mut self) {
        super::lock::unlock(self.buffered.as_raw_fd());
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
    fn punched_hole_reads_as_zero() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&[5u8; 65536]).unwrap();
        let f = ImageFile::open(tmp.path(), true, false).unwrap();
        if f.punch_hole(4096, 8192).unwrap() {
            let mut buf = vec![1u8; 65536];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert!(buf[..4096].iter().all(|&b| b == 5));
            assert!(buf[4096..12288].iter().all(|&b| b == 0));
            assert!(buf[12288..].iter().all(|&b| b == 5));
        }
        assert_eq!(f.len(), 65536);
    }

    #[test]
    fn a_dropped_file_releases_its_locks_while_another_thread_starts_processes() {
        // A child process holds a copy of every descriptor of its parent from fork to
        // exec; a file dropped meanwhile by another thread kept its locks alive through
        // that copy, and the next open of the image was refused as in use (CI, tests/ova.rs).
        use super::super::lock::LockMode;
        use std::sync::atomic::Ordering;
        const PROCESSES: u32 = 200;
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(4096).unwrap();
        let started = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let spawner = std::thread::spawn({
            let started = started.clone();
            move || {
                while started.load(Ordering::Relaxed) < PROCESSES {
                    std::process::Command::new("true").status().unwrap();
                    started.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let mut round = 0;
        while started.load(Ordering::Relaxed) < PROCESSES {
            let file = ImageFile::open(tmp.path(), true, false).unwrap();
            if let Err(e) = file.lock(LockMode::Exclusive) {
                started.store(PROCESSES, Ordering::Relaxed);
                panic!("round {round}: {e}");
            }
            round += 1;
        }
        spawner.join().unwrap();
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
