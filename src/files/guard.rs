//! A panic inside a file-system crate, on a file system crafted or damaged to make it
//! panic, becomes an error saying the file system is corrupt and naming the image,
//! instead of ending the process.

use crate::error::{Error, ErrorKind, Result};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `f`, a call into the crate that reads `fs` (a file-system name) on `image`; a
/// panic comes back as a corrupt-file-system error.
///
/// The crate's state after a panic is not trusted (hence `AssertUnwindSafe` is sound
/// here only because every caller gives up on the file system after such an error).
pub fn guarded<T>(image: &str, fs: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(Error::corrupt(format!(
            "{image}: the {fs} file system is corrupt (its reader gave up: {why})"
        )))
    })
}

/// A file's bytes from a crate's reader, each read guarded, errors naming the image and
/// the file.
pub struct GuardedRead<R> {
    inner: R,
    image: String,
    fs: &'static str,
    path: PathBuf,
}

impl<R: Read> GuardedRead<R> {
    /// Reads `inner`, file `path` of the `fs` file system on `image`.
    pub fn new(inner: R, image: &str, fs: &'static str, path: &Path) -> Self {
        GuardedRead {
            inner,
            image: image.to_string(),
            fs,
            path: path.to_path_buf(),
        }
    }
}

impl<R: Read> Read for GuardedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (inner, image, fs, path) = (&mut self.inner, &self.image, self.fs, &self.path);
        guarded(image, fs, || {
            inner.read(buf).map_err(|e| io_error(image, fs, path, e))
        })
        .map_err(std::io::Error::other)
    }
}

/// An I/O error of a crate reading file `path`: imgblk's own error when it came from the
/// image underneath (the adapter), else a missing file or a corrupt file system.
pub fn io_error(image: &str, fs: &str, path: &Path, e: std::io::Error) -> Error {
    let at = super::escape::escape(path);
    if let Some(inner) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        return Error::new(inner.kind(), inner.to_string());
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NotFound, format!("{image}: {at}: no such file"))
        }
        _ => Error::corrupt(format!(
            "{image}: {at}: the {fs} file system is corrupt: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_corrupt_error_naming_the_image() {
        let err =
            guarded::<()>("disk.qcow2", "ext4", || panic!("index out of bounds")).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);
        let text = err.to_string();
        assert!(text.contains("disk.qcow2") && text.contains("ext4 file system is corrupt"));
        assert!(text.contains("index out of bounds"), "{text}");
        assert_eq!(guarded("x", "ext4", || Ok(5)).unwrap(), 5);
    }
}
