//! Where commands put guest bytes (`imgblk cat`): a block device, a regular file (named, or
//! a redirected stdout) or a stream (a pipe, a terminal), each written so that the result
//! reads back exactly as the image does.
//!
//! - A block device is never truncated; zero runs become zeroes through `BLKZEROOUT`
//!   (which the kernel turns into write-zeroes, or written zeroes where the device has no
//!   faster way), since a restore must not leave the device's old bytes behind.
//! - A regular file gets holes for zero runs: nothing is written past the file's length at
//!   open, and a hole is punched where it held bytes (zeroes are written where the file
//!   system cannot punch).
//! - A stream gets every byte, zero runs as written zeroes.

use crate::error::{Error, ErrorKind, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a copy puts guest bytes, at their guest offsets, in increasing order: an
/// [`Output`] (`cat`), or a new image (`convert`).
pub trait Sink {
    /// Writes `data` at guest offset `at`.
    fn write(&mut self, at: u64, data: &[u8]) -> Result<()>;
    /// Makes guest bytes `at..at + len` read as zero.
    fn zero(&mut self, at: u64, len: u64) -> Result<()>;
    /// A regular file that guest byte `at` may be written to at `base + at`, in any order
    /// and from any thread, for copies that the kernel makes (`copy_file_range`).
    fn positional(&self) -> Option<Positional> {
        None
    }
}

/// An output file written at `base + guest offset` (see [`Sink::positional`]).
pub struct Positional {
    /// The file (a duplicate of the output's descriptor).
    pub file: File,
    /// Where guest byte 0 goes.
    pub base: u64,
}

impl Sink for Output {
    fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        Output::write(self, at, data)
    }

    fn zero(&mut self, at: u64, len: u64) -> Result<()> {
        Output::zero(self, at, len)
    }

    fn positional(&self) -> Option<Positional> {
        if self.kind != Kind::File {
            return None;
        }
        let file = self.file.try_clone().ok()?;
        Some(Positional {
            file,
            base: self.base,
        })
    }
}

impl Sink for crate::image::qcow2::stream::StreamWriter {
    fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        Self::write(self, at, data)
    }

    fn zero(&mut self, at: u64, len: u64) -> Result<()> {
        Self::zero(self, at, len)
    }
}

/// What kind of file an [`Output`] writes to, which decides how it writes zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Device,
    File,
    Stream,
}

/// A destination for a guest's bytes, written in increasing guest order.
pub struct Output {
    file: File,
    kind: Kind,
    /// Where the guest's byte 0 goes in the file (a redirected stdout may start later).
    base: u64,
    /// Guest offsets from here on already read as zero (past the file's length at open).
    zero_from: u64,
    /// Where a stream stands: the next guest byte it takes.
    stream_pos: u64,
    /// For error messages; `None` for stdout.
    path: Option<PathBuf>,
    zeroes: Vec<u8>,
}

const ZERO_CHUNK: usize = 1 << 20;

impl Output {
    /// Opens `path` (stdout when `None`) for `size` guest bytes. A named regular file is
    /// created, and truncated unless `keep` (an incremental restore writes only what
    /// changed, over a previous restore); a block device must hold at least `size` bytes.
    pub fn open(path: Option<&Path>, size: u64, keep: bool) -> Result<Self> {
        let at = |e: Error| match path {
            Some(p) => e.with_path(p),
            None => e,
        };
        let file = match path {
            // Not the kinds of an input's errors (missing, unreadable): the output failed,
            // unless a device is busy (mounted).
            Some(p) => open_named(p, keep).map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => at(Error::io("cannot open output", e)),
                _ => at(Error::new(
                    ErrorKind::Io,
                    format!("cannot create output: {e}"),
                )),
            })?,
            None => std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| Error::io("cannot use stdout", e))?,
        };
        let meta = file
            .metadata()
            .map_err(|e| at(Error::io("cannot stat output", e)))?;
        let kind = if meta.file_type().is_block_device() {
            Kind::Device
        } else if meta.file_type().is_file() && !appends(&file) {
            Kind::File
        } else {
            Kind::Stream
        };
        let mut output = Output {
            kind,
            base: 0,
            zero_from: u64::MAX,
            stream_pos: 0,
            path: path.map(Path::to_path_buf),
            zeroes: Vec::new(),
            file,
        };
        match kind {
            Kind::Device => {
                let len = output.end()?;
                if len < size {
                    return Err(at(Error::invalid(format!(
                        "the device holds {len} bytes, the image {size}"
                    ))));
                }
            }
            Kind::File => {
                output.base = output
                    .file
                    .stream_position()
                    .map_err(|e| output.err("cannot tell the output position", e))?;
                output.zero_from = meta.len().saturating_sub(output.base);
            }
            Kind::Stream => {}
        }
        Ok(output)
    }

    /// Whether ranges can be left unwritten (not a stream).
    pub fn seekable(&self) -> bool {
        self.kind != Kind::Stream
    }

    /// Writes `data` at guest offset `at`. A stream takes only the next bytes in order.
    pub fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        let result = match self.kind {
            Kind::Stream => self.stream_to(at).and_then(|()| {
                self.stream_pos += data.len() as u64;
                self.file.write_all(data)
            }),
            _ => self.file.write_all_at(data, self.base + at),
        };
        result.map_err(|e| self.err("write failed", e).at(at))
    }

    /// Makes guest bytes `at..at + len` read as zero, as cheaply as the output allows.
    pub fn zero(&mut self, at: u64, len: u64) -> Result<()> {
        let done = match self.kind {
            Kind::Stream => 0,
            Kind::Device => self.zero_out(at, len)?,
            Kind::File => {
                let below = self.zero_from.saturating_sub(at).min(len);
                if below == 0 || self.punch(at, below)? {
                    len
                } else {
                    0
                }
            }
        };
        self.write_zeroes(at + done, len - done)
    }

    /// Ends the output: a file is grown to hold the whole guest (holes at its end) and
    /// its position set past it, and what was written is made durable (a stream is
    /// flushed).
    pub fn finish(mut self, size: u64) -> Result<()> {
        let result = match self.kind {
            Kind::Stream => self.stream_to(size).and_then(|()| self.file.flush()),
            Kind::Device => self.file.sync_all(),
            Kind::File => {
                let end = self.base + size;
                let grow = match self.file.metadata() {
                    Ok(meta) if meta.len() < end => self.file.set_len(end),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                // a shared stdout goes on after the guest, as if it had been streamed
                grow.and_then(|()| self.file.seek(SeekFrom::Start(end)))
                    .and_then(|_| self.file.sync_all())
            }
        };
        result.map_err(|e| self.err("cannot finish output", e))
    }

    /// A stream cannot skip: writes zeroes up to guest offset `at`.
    fn stream_to(&mut self, at: u64) -> std::io::Result<()> {
        if at > self.stream_pos {
            let gap = at - self.stream_pos;
            let zeroes = zero_buf(&mut self.zeroes);
            let mut left = gap;
            while left > 0 {
                let n = left.min(zeroes.len() as u64) as usize;
                self.file.write_all(&zeroes[..n])?;
                left -= n as u64;
            }
            self.stream_pos = at;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, at: u64, len: u64) -> Result<()> {
        let mut zeroes = std::mem::take(&mut self.zeroes);
        let buf = zero_buf(&mut zeroes);
        let mut pos = at;
        let result = (|| {
            while pos < at + len {
                let n = (at + len - pos).min(buf.len() as u64) as usize;
                self.write(pos, &buf[..n])?;
                pos += n as u64;
            }
            Ok(())
        })();
        self.zeroes = zeroes;
        result
    }

    /// `BLKZEROOUT` on the whole logical blocks of the range; returns how many bytes from
    /// `at` it zeroed (the rest must be written).
    fn zero_out(&self, at: u64, len: u64) -> Result<u64> {
        // _IO(0x12, 127) and _IO(0x12, 104) from <linux/fs.h>.
        const BLKZEROOUT: libc::c_ulong = 0x127f;
        const BLKSSZGET: libc::c_ulong = 0x1268;
        let fd = self.file.as_raw_fd();
        let mut block: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through a valid pointer to a local.
        if unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut block) } != 0 || block <= 0 {
            block = 512;
        }
        let block = block as u64;
        let start = self.base + at;
        if start % block != 0 {
            return Ok(0);
        }
        let whole = len / block * block;
        if whole == 0 {
            return Ok(0);
        }
        let range = [start, whole];
        // SAFETY: BLKZEROOUT reads two u64 through a valid pointer to a local array.
        if unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) } == 0 {
            return Ok(whole);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL) => Ok(0),
            _ => Err(self.err("BLKZEROOUT failed", err).at(at)),
        }
    }

    /// Punches a hole at guest `at..at + len`; false where the file system cannot.
    fn punch(&self, at: u64, len: u64) -> Result<bool> {
        let (Ok(off), Ok(length)) = (i64::try_from(self.base + at), i64::try_from(len)) else {
            return Ok(false);
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, length) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(self.err("fallocate failed", err).at(at)),
        }
    }

    /// The device's size in bytes.
    fn end(&mut self) -> Result<u64> {
        self.file
            .seek(SeekFrom::End(0))
            .map_err(|e| self.err("cannot size the output device", e))
    }

    fn err(&self, what: &str, e: std::io::Error) -> Error {
        let error = Error::io(what, e);
        match &self.path {
            Some(p) => error.with_path(p),
            None => error.with_path(Path::new("stdout")),
        }
    }
}

/// Opens a named output: never truncating a block device, nor a file when `keep`. A
/// block device is opened exclusively, so that one mounted or in use is refused (EBUSY).
fn open_named(path: &Path, keep: bool) -> std::io::Result<File> {
    let device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    OpenOptions::new()
        .write(true)
        .create(!device)
        .truncate(!device && !keep)
        .custom_flags(if device { libc::O_EXCL } else { 0 })
        .open(path)
}

/// Whether `file` was opened with `O_APPEND` (`>>`), where positioned writes append.
fn appends(file: &File) -> bool {
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_APPEND != 0
}

fn zero_buf(buf: &mut Vec<u8>) -> &[u8] {
    if buf.is_empty() {
        buf.resize(ZERO_CHUNK, 0);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gets_holes_and_punches_over_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, vec![0xffu8; 3 << 20]).unwrap();
        let mut out = Output::open(Some(&path), 4 << 20, true).unwrap();
        out.write(0, &[1u8; 4096]).unwrap();
        out.zero(4096, (4 << 20) - 4096).unwrap();
        out.finish(4 << 20).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert!(data[..4096].iter().all(|&b| b == 1));
        assert!(data[4096..].iter().all(|&b| b == 0));
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
    }
}
