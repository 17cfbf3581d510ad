//! A panic inside a file-system crate, on a file system crafted or damaged to make it
//! panic, becomes an error saying the file system is corrupt and naming the image,
//! instead of ending the process.

use crate::error::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

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
