//! What the file commands know of one file: the `lstat` fields a listing and a tar
//! header need, the same for every file system.

use serde::{Serialize, Serializer};
use std::path::{Path, PathBuf};

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device node.
    CharDev,
    /// A block device node.
    BlockDev,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A named data stream of a file (NTFS), listed as `FILE:STREAM`.
    Stream,
}

impl Kind {
    /// The type letter `ls -l` shows.
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::CharDev => 'c',
            Kind::BlockDev => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
            Kind::Stream => '-',
        }
    }
}

/// A point in time: seconds since the Unix epoch (negative before it) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Time {
    /// Whole seconds.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// One file's metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The last component of its path (bytes as stored; JSON shows them lossily as UTF-8).
    #[serde(serialize_with = "lossy")]
    pub name: PathBuf,
    /// Its type.
    pub kind: Kind,
    /// Size in bytes (for a symbolic link, its target's length).
    pub size: u64,
    /// Permission bits with set-uid, set-gid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Last modification.
    pub mtime: Time,
    /// Last access.
    pub atime: Time,
    /// A symbolic link's target.
    #[serde(serialize_with = "lossy_opt", skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// The file's number in its file system (inode, MFT record), when the reader gives
    /// it: names with the same number are hard links of one file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<u64>,
    /// How many names the file has (1 when the reader does not say).
    pub links: u32,
    /// A device node's `(major, minor)` numbers, when the reader gives them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<(u32, u32)>,
}

impl Entry {
    /// The mode as `ls -l` prints it (`drwxr-xr-x`).
    pub fn mode_string(&self) -> String {
        let mut s = String::with_capacity(10);
        s.push(self.kind.letter());
        for (shift, special, set, unset) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S')] {
            let bits = self.mode >> shift;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(exec_char(
                bits & 1 != 0,
                self.mode & special != 0,
                set,
                unset,
            ));
        }
        s.push(if self.mode & 4 != 0 { 'r' } else { '-' });
        s.push(if self.mode & 2 != 0 { 'w' } else { '-' });
        s.push(exec_char(
            self.mode & 1 != 0,
            self.mode & 0o1000 != 0,
            't',
            'T',
        ));
        s
    }
}

/// The execute column of `ls -l`, where a special bit shows as `s`/`t` (or `S`/`T` when
/// the execute bit is off).
fn exec_char(exec: bool, special: bool, set: char, unset: char) -> char {
    match (exec, special) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    }
}

fn lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn lossy_opt<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => lossy(path, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, mode: u32) -> Entry {
        let t = Time { secs: 0, nanos: 0 };
        Entry {
            name: "x".into(),
            kind,
            size: 0,
            mode,
            uid: 0,
            gid: 0,
            mtime: t,
            atime: t,
            target: None,
            file_id: None,
            links: 1,
            device: None,
        }
    }

    #[test]
    fn modes_read_as_ls_prints_them() {
        assert_eq!(entry(Kind::Dir, 0o755).mode_string(), "drwxr-xr-x");
        assert_eq!(entry(Kind::File, 0o4755).mode_string(), "-rwsr-xr-x");
        assert_eq!(entry(Kind::File, 0o2640).mode_string(), "-rw-r-S---");
        assert_eq!(entry(Kind::Dir, 0o1777).mode_string(), "drwxrwxrwt");
        assert_eq!(entry(Kind::Symlink, 0o777).mode_string(), "lrwxrwxrwx");
    }
}
