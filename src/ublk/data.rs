//! Where the bytes of a request live while a queue serves it, and how they move between
//! there and the image, on the queue's io_uring.
//!
//! - **Copy** (every kernel): each tag has a buffer in the daemon. The driver copies a
//!   write's data into it before handing the request over and copies a read's data out of
//!   it at commit; the image I/O goes between that buffer and the image file.
//! - **Zero copy** (Linux 6.16+, `UBLK_F_AUTO_BUF_REG`): the driver registers the request's
//!   own pages as fixed buffer `tag` of the queue's ring before handing the request over,
//!   and releases them at commit. Image data goes straight between those pages and the
//!   image file (`READ_FIXED`/`WRITE_FIXED`), so the request costs no copy in the daemon.
//!   The daemon cannot touch the pages itself: zeroes are read from `/dev/zero`, and bytes
//!   it computes (decompressed, decrypted) or consumes (a write it must handle itself) move
//!   by user copy, `pwrite`/`pread` on `/dev/ublkcN` (`UBLK_F_USER_COPY`), through a scratch
//!   buffer of the queue.

use crate::error::{Error, Result};
use crate::image::ImageFile;
use io_uring::squeue::Entry;
use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;
use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

/// A request's pages, registered by the driver as fixed buffer `index` on the queue's
/// ring, and reachable by user copy at `copy_base` on `/dev/ublkcN`.
#[derive(Debug, Clone, Copy)]
pub struct Registered {
    /// The fixed-buffer index (the tag).
    pub index: u16,
    /// `/dev/ublkcN`, for user copy.
    pub cdev: RawFd,
    /// The user-copy file position of byte 0 of the request.
    pub copy_base: u64,
}

/// Some bytes of a request: in daemon memory (copy mode), or a range of the request's
/// registered pages (zero copy).
#[derive(Debug)]
pub enum Data<'b> {
    /// Bytes in the tag's buffer.
    Memory(&'b mut [u8]),
    /// `len` bytes from `offset` on in the request's pages.
    Pages {
        /// The request's pages.
        pages: Registered,
        /// Where this range starts in the request.
        offset: u32,
        /// Its length.
        len: u32,
    },
}

/// A growable buffer a queue's tasks share for bytes that must pass through daemon memory
/// in zero-copy mode; borrowed only between two awaits, so tasks never contend for it.
pub type Scratch = RefCell<Vec<u8>>;

/// Where a read gets its bytes.
#[derive(Clone, Copy)]
enum Origin<'f> {
    File(&'f ImageFile),
    /// `/dev/zero`: zeroes for pages the daemon cannot write directly.
    Zeroes,
}

/// Which way bytes move.
#[derive(Clone, Copy)]
enum Direction<'f> {
    /// Into the request's bytes.
    Read(Origin<'f>),
    /// From them into a file.
    Write(&'f ImageFile),
}

impl<'b> Data<'b> {
    /// All of the request's `len` bytes in its registered `pages`.
    pub fn pages(pages: Registered, len: u32) -> Self {
        Data::Pages {
            pages,
            offset: 0,
            len,
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        match self {
            Data::Memory(buf) => buf.len(),
            Data::Pages { len, .. } => *len as usize,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `at` bytes and the rest; `at` must not exceed [`Data::len`].
    pub fn split_at(self, at: usize) -> (Data<'b>, Data<'b>) {
        match self {
            Data::Memory(buf) => {
                let (head, tail) = buf.split_at_mut(at);
                (Data::Memory(head), Data::Memory(tail))
            }
            Data::Pages { pages, offset, len } => {
                let at = (at as u32).min(len);
                (
                    Data::Pages {
                        pages,
                        offset,
                        len: at,
                    },
                    Data::Pages {
                        pages,
                        offset: offset + at,
                        len: len - at,
                    },
                )
            }
        }
    }

    /// Reads these bytes from `file` at `offset` (bytes past its end read as zero).
    pub async fn read_from(self, file: &ImageFile, offset: u64) -> Result<()> {
        self.read(Origin::File(file), offset).await
    }

    /// Makes these bytes zero.
    pub async fn zero(self) -> Result<()> {
        match self {
            Data::Memory(buf) => {
                buf.fill(0);
                Ok(())
            }
            pages => pages.read(Origin::Zeroes, 0).await,
        }
    }

    /// Writes these bytes to `file` at `offset`.
    pub async fn write_to(self, file: &ImageFile, offset: u64) -> Result<()> {
        let mut done = 0usize;
        let len = self.len();
        while done < len {
            let pos = offset + done as u64;
            match submit(self.sqe(Direction::Write(file), pos, done)?).await {
                n if n > 0 => done += n as usize,
                e if e == -libc::EINTR || e == -libc::EAGAIN => {}
                0 => {
                    return Err(Error::corrupt("write made no progress")
                        .at(pos)
                        .with_path(file.path()))
                }
                e => {
                    return Err(
                        Error::io("write failed", std::io::Error::from_raw_os_error(-e))
                            .at(pos)
                            .with_path(file.path()),
                    )
                }
            }
        }
        Ok(())
    }

    /// The one SQE that moves all of these bytes between them and `file` at `offset`
    /// (a write when `write`), for a caller that submits it itself.
    pub fn transfer_sqe(&self, file: &ImageFile, offset: u64, write: bool) -> Result<Entry> {
        let direction = if write {
            Direction::Write(file)
        } else {
            Direction::Read(Origin::File(file))
        };
        self.sqe(direction, offset, 0)
    }

    /// The SQE that moves bytes `done..` of these (at most 1 GiB of them) to or from
    /// position `pos` of the transfer's file.
    fn sqe(&self, direction: Direction<'_>, pos: u64, done: usize) -> Result<Entry> {
        let chunk = (self.len() - done).min(1 << 30) as u32;
        let (addr, fixed) = match self {
            Data::Memory(buf) => (buf.as_ptr() as usize + done, None),
            // In a registered buffer, addresses are offsets from the start of the request.
            Data::Pages { pages, offset, .. } => (*offset as usize + done, Some(pages.index)),
        };
        let fd = |file: &ImageFile| types::Fd(file.data_fd(pos, u64::from(chunk), addr));
        Ok(match (direction, fixed) {
            (Direction::Write(file), Some(index)) => {
                opcode::WriteFixed::new(fd(file), addr as *const u8, chunk, index)
                    .offset(file.host_offset(pos))
                    .build()
            }
            (Direction::Write(file), None) => {
                opcode::Write::new(fd(file), addr as *const u8, chunk)
                    .offset(file.host_offset(pos))
                    .build()
            }
            (Direction::Read(origin), fixed) => {
                let (fd, pos) = match origin {
                    Origin::File(file) => (fd(file), file.host_offset(pos)),
                    Origin::Zeroes => (types::Fd(dev_zero()?), pos),
                };
                match fixed {
                    Some(index) => opcode::ReadFixed::new(fd, addr as *mut u8, chunk, index)
                        .offset(pos)
                        .build(),
                    None => opcode::Read::new(fd, addr as *mut u8, chunk)
                        .offset(pos)
                        .build(),
                }
            }
        })
    }

    /// Copies `bytes` (exactly [`Data::len`] of them) into these bytes.
    pub fn put(self, bytes: &[u8]) -> Result<()> {
        match self {
            Data::Memory(buf) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            Data::Pages { pages, offset, .. } => {
                user_copy(pages, offset, bytes.len(), |pos, done| {
                    // SAFETY: pwrite from the initialised bytes `done..` of `bytes`.
                    unsafe {
                        libc::pwrite(
                            pages.cdev,
                            bytes[done..].as_ptr().cast(),
                            bytes.len() - done,
                            pos,
                        )
                    }
                })
            }
        }
    }

    /// Fills these bytes with `fill`, through `scratch` when they are registered pages.
    pub fn fill_with(
        self,
        scratch: &Scratch,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        match self {
            Data::Memory(buf) => fill(buf),
            pages => {
                let mut scratch = scratch.borrow_mut();
                let buf = sized(&mut scratch, pages.len());
                fill(buf)?;
                pages.put(buf)
            }
        }
    }

    /// Calls `consume` with these bytes, fetched into `scratch` when they are registered
    /// pages (a write the daemon must carry out itself).
    pub fn with_bytes<T>(
        &self,
        scratch: &Scratch,
        consume: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        match *self {
            Data::Memory(ref buf) => consume(buf),
            Data::Pages { pages, offset, len } => {
                let len = len as usize;
                let mut scratch = scratch.borrow_mut();
                let buf = sized(&mut scratch, len);
                let ptr = buf.as_mut_ptr();
                user_copy(pages, offset, len, |pos, done| {
                    // SAFETY: pread into bytes `done..len` of `buf`, which `ptr` points at.
                    unsafe { libc::pread(pages.cdev, ptr.add(done).cast(), len - done, pos) }
                })?;
                consume(buf)
            }
        }
    }

    /// Reads these bytes from `origin` at `offset`, resubmitting after short reads; bytes
    /// past the end of a file read as zero (a backing file may be shorter than the disk).
    async fn read(mut self, mut origin: Origin<'_>, offset: u64) -> Result<()> {
        let mut done = 0usize;
        let len = self.len();
        while done < len {
            let pos = offset + done as u64;
            match submit(self.sqe(Direction::Read(origin), pos, done)?).await {
                0 => match (&mut self, origin) {
                    (Data::Memory(buf), _) => {
                        buf[done..].fill(0);
                        return Ok(());
                    }
                    (Data::Pages { .. }, Origin::File(_)) => origin = Origin::Zeroes,
                    (Data::Pages { .. }, Origin::Zeroes) => {
                        return Err(Error::io(
                            "reading /dev/zero made no progress",
                            std::io::Error::from_raw_os_error(libc::EIO),
                        ))
                    }
                },
                n if n > 0 => done += n as usize,
                e if e == -libc::EINTR || e == -libc::EAGAIN => {}
                e => {
                    let err =
                        Error::io("read failed", std::io::Error::from_raw_os_error(-e)).at(pos);
                    return Err(match origin {
                        Origin::File(file) => err.with_path(file.path()),
                        Origin::Zeroes => err.with_path(Path::new("/dev/zero")),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `scratch`, grown if need be, cut to `len` bytes.
fn sized(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    &mut scratch[..len]
}

/// Runs `copy(file_position, done)` (a `pread` or `pwrite` on `/dev/ublkcN`) until `len`
/// bytes from request byte `offset` on have moved.
fn user_copy(
    pages: Registered,
    offset: u32,
    len: usize,
    mut copy: impl FnMut(libc::off_t, usize) -> isize,
) -> Result<()> {
    let mut done = 0usize;
    while done < len {
        let pos = pages.copy_base + u64::from(offset) + done as u64;
        match copy(pos as libc::off_t, done) {
            n if n > 0 => done += n as usize,
            0 => {
                return Err(Error::corrupt(
                    "user copy to the ublk request made no progress",
                ))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::io("user copy to the ublk request failed", e));
                }
            }
        }
    }
    Ok(())
}

/// `/dev/zero`, opened once per daemon.
fn dev_zero() -> Result<RawFd> {
    static DEV_ZERO: OnceLock<std::io::Result<File>> = OnceLock::new();
    match DEV_ZERO.get_or_init(|| File::open("/dev/zero")) {
        Ok(file) => Ok(file.as_raw_fd()),
        Err(e) => Err(Error::io(
            "cannot open /dev/zero",
            std::io::Error::from(e.kind()),
        )),
    }
}

/// Submits one SQE on this queue's ring and waits for its result (negative errno on error).
pub async fn submit(sqe: Entry) -> i32 {
    ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
        .await
        .unwrap_or(-libc::EIO)
}
