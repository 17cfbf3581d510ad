//! Image locking compatible with QEMU's: the same open-file-description (OFD) byte-range
//! locks QEMU's file-posix driver takes, so imgblk refuses to write an image a running VM
//! (or qemu-img, qemu-nbd) has open for writing, and they refuse an image imgblk writes.
//!
//! QEMU's scheme: for each block permission bit `i`, holding the permission takes a shared
//! lock on byte `100 + i`; *not sharing* it with others takes a shared lock on byte
//! `200 + i`. Before taking a permission one checks that nobody locks `200 + i`, and before
//! refusing to share one checks that nobody locks `100 + i`.

use crate::error::{Error, ErrorKind, Result};
use std::os::fd::RawFd;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// Permission to read consistent data (nobody changes it behind our back).
const CONSISTENT_READ: u32 = 1 << 0;
/// Permission to change the guest-visible data.
const WRITE: u32 = 1 << 1;
/// Permission to write without changing guest-visible data.
const WRITE_UNCHANGED: u32 = 1 << 2;
/// Permission to change the file's size.
const RESIZE: u32 = 1 << 3;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// How an image file is used, which decides the locks taken on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Read-only, refusing writers (like a backing file, or `qemu-nbd -r`).
    Shared,
    /// Read-write, refusing other writers but letting readers that tolerate it in.
    Exclusive,
    /// No locks at all: read an image even while something writes it (`--force-share`).
    None,
}

impl LockMode {
    /// (permissions held, permissions shared with others), as QEMU counts them.
    fn permissions(self) -> (u32, u32) {
        match self {
            LockMode::Shared => (CONSISTENT_READ, CONSISTENT_READ | WRITE_UNCHANGED),
            LockMode::Exclusive => (
                CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE,
                CONSISTENT_READ | WRITE_UNCHANGED,
            ),
            LockMode::None => (0, CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE),
        }
    }
}

/// Takes QEMU-compatible locks for `mode` on `fd` and checks that nobody conflicts.
/// The locks live as long as the open file description.
pub fn lock(fd: RawFd, mode: LockMode) -> Result<()> {
    let (held, shared) = mode.permissions();
    for (i, _) in PERM_NAMES.iter().enumerate() {
        let bit = 1u32 << i;
        if held & bit != 0 {
            set_shared_lock(fd, PERM_BASE + i as i64)?;
        }
        if shared & bit == 0 {
            set_shared_lock(fd, SHARED_BASE + i as i64)?;
        }
    }
    for (i, name) in PERM_NAMES.iter().enumerate() {
        let bit = 1u32 << i;
        if held & bit != 0 && someone_locks(fd, SHARED_BASE + i as i64)? {
            return Err(conflict(format!("failed to get \"{name}\" lock")));
        }
        if shared & bit == 0 && someone_locks(fd, PERM_BASE + i as i64)? {
            return Err(conflict(format!("failed to get shared \"{name}\" lock")));
        }
    }
    Ok(())
}

/// Releases every lock on `fd`'s open file description. Called before the descriptor
/// closes: a child process that another thread is just starting holds a copy of it until
/// it execs, and would otherwise keep the locks alive for that moment, so that the next
/// open of the image found it in use.
pub fn unlock(fd: RawFd) {
    let mut fl = flock_at(libc::F_UNLCK, 0);
    fl.l_len = 0;
    // SAFETY: fcntl with a valid flock pointer on a descriptor we own. Unlocking cannot
    // conflict; a failure (a descriptor never locked on a file system without OFD locks)
    // leaves nothing to release.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) };
}

fn conflict(what: String) -> Error {
    Error::new(
        ErrorKind::Busy,
        format!(
            "{what}: is another process (a VM, qemu-nbd, imgblk) using the image? \
             Read-only access can override with --force-share"
        ),
    )
}

fn flock_at(kind: i32, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn set_shared_lock(fd: RawFd, byte: i64) -> Result<()> {
    let fl = flock_at(libc::F_RDLCK, byte);
    // SAFETY: fcntl with a valid flock pointer on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => {
            Err(conflict(format!("failed to lock byte {byte}")))
        }
        _ => Err(Error::io(format!("failed to lock byte {byte}"), err)),
    }
}

/// Whether another open file description holds a lock on `byte`.
fn someone_locks(fd: RawFd, byte: i64) -> Result<bool> {
    let mut fl = flock_at(libc::F_WRLCK, byte);
    // SAFETY: fcntl with a valid, writable flock pointer on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(Error::io(
            format!("failed to test lock byte {byte}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(fl.l_type != libc::F_UNLCK as i16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn open(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_exclude_each_other_and_readers() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(4096).unwrap();
        let writer = open(tmp.path());
        lock(writer.as_raw_fd(), LockMode::Exclusive).unwrap();

        let second = open(tmp.path());
        let err = lock(second.as_raw_fd(), LockMode::Exclusive).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(err.to_string().contains("\"write\""), "{err}");

        let reader = open(tmp.path());
        assert!(lock(reader.as_raw_fd(), LockMode::Shared).is_err());
        let forced = open(tmp.path());
        lock(forced.as_raw_fd(), LockMode::None).unwrap();

        drop(writer);
        drop(second);
        drop(reader);
        let later = open(tmp.path());
        lock(later.as_raw_fd(), LockMode::Exclusive).unwrap();
    }

    #[test]
    fn readers_share() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let a = open(tmp.path());
        let b = open(tmp.path());
        lock(a.as_raw_fd(), LockMode::Shared).unwrap();
        lock(b.as_raw_fd(), LockMode::Shared).unwrap();
        let writer = open(tmp.path());
        assert!(lock(writer.as_raw_fd(), LockMode::Exclusive).is_err());
    }

    #[test]
    fn qemu_io_holding_the_image_blocks_a_writer() {
        // Cross-check against QEMU itself where qemu-io exists.
        let Ok(status) = std::process::Command::new("qemu-io")
            .arg("--version")
            .output()
        else {
            panic!("qemu-io (package qemu-utils) is needed for this test");
        };
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mine = open(&img);
        lock(mine.as_raw_fd(), LockMode::Exclusive).unwrap();
        let out = std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read 0 512"])
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("lock"), "qemu-io was not refused: {text}");
        drop(mine);

        // And the other way round: qemu-io holding the image read-write refuses us.
        let mut holder = std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "sleep 5000"])
            .arg(&img)
            .spawn()
            .unwrap();
        // Wait (without taking locks, which would make qemu-io fail) until it holds "write".
        let probe = open(&img);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
        while !someone_locks(probe.as_raw_fd(), PERM_BASE + 1).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "qemu-io never locked the image"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let refused = lock(probe.as_raw_fd(), LockMode::Shared);
        let _ = holder.kill();
        let _ = holder.wait();
        let err = refused.expect_err("a read-write qemu-io did not block a shared lock");
        assert!(err.to_string().contains("shared \"write\" lock"), "{err}");
    }
}
