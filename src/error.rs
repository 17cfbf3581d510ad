//! The crate's one error type: a [`ErrorKind`] callers match on, plus the context a person
//! needs (which file, which field, which offset).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, coarse enough to pick an errno and an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io,
    /// A file does not exist (an image, a backing file, a device node).
    NotFound,
    /// The image's bytes contradict the format (bad magic, a field out of range).
    Corrupt,
    /// A valid image uses a feature this version does not implement.
    Unsupported,
    /// A write was asked of something opened read-only.
    ReadOnly,
    /// The caller asked for something impossible (a range past the end, a bad option).
    InvalidInput,
    /// The operation needs root or a capability.
    Permission,
    /// The kernel lacks something (ublk_drv, io_uring).
    Kernel,
    /// Another process holds the image or device.
    Busy,
}

impl ErrorKind {
    /// The errno a block request failing with this kind is completed with.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::Io | ErrorKind::Corrupt | ErrorKind::Kernel => libc::EIO,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Unsupported => libc::EOPNOTSUPP,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::InvalidInput => libc::EINVAL,
            ErrorKind::Permission => libc::EPERM,
            ErrorKind::Busy => libc::EBUSY,
        }
    }
}

/// An error with its kind, a message, and where it happened.
///
/// Boxed, so that every `Result` of the crate is a word wider than its value: lookups on
/// the I/O hot path return `Result`s, and an inline error (some 90 bytes) made each of
/// them a memory round trip.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, thiserror::Error)]
struct Inner {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    #[source]
    source: Option<io::Error>,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            source: None,
        }))
    }

    /// A corrupt-image error naming the offending field.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// An unsupported-feature error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// An invalid-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Wraps an I/O error, keeping its kind where it says something (not found, permission).
    pub fn io(message: impl Into<String>, source: io::Error) -> Self {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::Permission,
            io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            _ if source.raw_os_error() == Some(libc::EBUSY) => ErrorKind::Busy,
            _ => ErrorKind::Io,
        };
        let mut error = Self::new(kind, message);
        error.0.source = Some(source);
        error
    }

    /// Names the file the error is about, unless one is named already (the innermost wins).
    pub fn with_path(mut self, path: &Path) -> Self {
        self.0.path.get_or_insert_with(|| path.to_path_buf());
        self
    }

    /// Records the byte offset the error is about, unless one is recorded already.
    pub fn at(mut self, offset: u64) -> Self {
        self.0.offset.get_or_insert(offset);
        self
    }

    /// The kind, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The file the error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        f.write_str(&self.message)?;
        if let Some(offset) = self.offset {
            write!(f, " (at byte offset {offset:#x})")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// Adds file context to any `Result<_, Error>`.
pub trait ResultExt<T> {
    /// Names the file an error is about.
    fn in_file(self, path: &Path) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn in_file(self, path: &Path) -> Result<T> {
        self.map_err(|e| e.with_path(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_field_and_offset() {
        let e = Error::corrupt("qcow2 header field cluster_bits is 40, must be 9..=21")
            .at(20)
            .with_path(Path::new("/img/a.qcow2"));
        assert_eq!(
            e.to_string(),
            "/img/a.qcow2: qcow2 header field cluster_bits is 40, must be 9..=21 (at byte offset 0x14)"
        );
        assert_eq!(e.kind().errno(), libc::EIO);
    }

    #[test]
    fn innermost_path_wins() {
        let e = Error::corrupt("x")
            .with_path(Path::new("/inner"))
            .with_path(Path::new("/outer"));
        assert_eq!(e.path(), Some(Path::new("/inner")));
    }

    #[test]
    fn io_not_found_keeps_kind() {
        let e = Error::io("open", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.kind().errno(), libc::ENOENT);
    }
}
