//! Opening a host file that an image may name without ever blocking on it: a FIFO, a
//! socket, a terminal or a directory named as a backing file, extent or data file must be
//! refused at once, not hang `open` or the first `read`.
//!
//! The file is opened `O_NONBLOCK | O_NOCTTY` (so opening a FIFO or a tty neither waits
//! for a peer nor becomes the controlling terminal), checked with `fstat` on the open
//! descriptor (so the check is about the file actually opened, not one a path pointed at
//! a moment earlier), and only then set back to blocking for the I/O.

use crate::error::Error;
use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A file's identity on this host (device and inode, from `fstat`): two paths, links or
/// symlinks reaching the same file have the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Which kinds of file an open accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// A regular file or a block device: for a path the user gave.
    FileOrBlockDevice,
    /// A regular file only: for a path an image names, which must not reach the host's
    /// devices.
    RegularFile,
}

/// Opens `path` without blocking (see the module comment) with `custom_flags` added,
/// refuses any kind of file that `accept` does not allow, and returns the descriptor, set
/// back to blocking, with its metadata. The error of a refusal names the kind of file
/// found; the caller adds who named the path.
pub fn open(
    path: &Path,
    writable: bool,
    custom_flags: i32,
    accept: Accept,
) -> std::io::Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(custom_flags | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let refused = if kind.is_file() {
        None
    } else if kind.is_block_device() {
        (accept == Accept::RegularFile).then_some("a block device")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = refused {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{what}, which is refused: only a regular file {}",
                allowed(accept)
            ),
        ));
    }
    set_blocking(&file)?;
    Ok((file, meta))
}

/// The end of a refusal's sentence: what would have been accepted.
fn allowed(accept: Accept) -> &'static str {
    match accept {
        Accept::FileOrBlockDevice => "or a block device can be an image",
        Accept::RegularFile => "can be named by an image (a block device too with --allow-devices)",
    }
}

/// Clears `O_NONBLOCK` on `file`.
fn set_blocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The error of a refused or failed open of `path`, which `named_by` names in its field
/// `field` (`None`: the user gave it). A file that does not exist is left to the caller,
/// which knows what the image called it and where it looked.
pub fn open_error(
    path: &Path,
    named_by: Option<(&Path, super::policy::Field)>,
    error: std::io::Error,
) -> Error {
    // A file of a kind that cannot be an image (see `open_checked`) is an unusable input,
    // not an I/O failure.
    let refused = error.kind() == std::io::ErrorKind::InvalidInput;
    let (what, about) = match named_by {
        Some((image, field)) if error.kind() != std::io::ErrorKind::NotFound => {
            (format!("cannot open its {field} {}", path.display()), image)
        }
        _ => ("cannot open".to_string(), path),
    };
    match refused {
        true => Error::unsupported(format!("{what}: {error}")).with_path(about),
        false => Error::io(what, error).with_path(about),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
            (Path::new("/dev/null"), "a character device"),
        ] {
            let err = open(path, false, 0, Accept::FileOrBlockDevice).unwrap_err();
            assert!(
                err.to_string().starts_with(what),
                "{}: {err}",
                path.display()
            );
        }
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let (opened, meta) = open(&file, false, 0, Accept::RegularFile).unwrap();
        assert_eq!(meta.len(), 1);
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "left non-blocking");
    }
}
