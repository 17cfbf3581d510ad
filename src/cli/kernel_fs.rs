//! `ls`, `get` and `tar` of the file systems no crate reads in process (xfs, btrfs,
//! ISO 9660): where the host has ublk and imgblk runs as root, the piece is mounted
//! read-only (`nosuid,nodev,noexec`) with `imgblk mount` at a private folder under
//! `/run/imgblk`, read there through the kernel's driver, and unmounted and detached
//! again when the command is done.

use super::child;
use crate::error::{Error, Result};
use crate::files::mounted::MountedFs;
use crate::files::FileSystem;
use crate::layout::ContentKind;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file systems read this way.
pub fn kernel_only(kind: ContentKind) -> bool {
    matches!(
        kind,
        ContentKind::Xfs | ContentKind::Btrfs | ContentKind::Iso9660
    )
}

/// Whether this process can mount: root, on a host with ublk.
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && crate::ublk::device::check_available().is_ok()
}

/// Mounts the piece that `piece_args` select of `images` (opened with `open_args`: format,
/// disk, policy), holding a `kind` file system, and reads it; `name` is what errors call it.
pub fn mount_and_read(
    images: &[PathBuf],
    piece_args: Vec<OsString>,
    open_args: Vec<OsString>,
    kind: ContentKind,
    name: String,
) -> Result<Box<dyn FileSystem>> {
    let mountpoint = private_folder()?;
    let mut args = vec![OsString::from("--noexec")];
    args.extend(open_args);
    args.extend(piece_args);
    args.extend(images.iter().map(OsString::from));
    args.push(mountpoint.clone().into());
    tracing::info!(mountpoint = %mountpoint.display(), "{name} holds {}: reading it through a read-only kernel mount", kind.as_str());
    if let Err(e) = child::mount(&args) {
        let _ = std::fs::remove_dir(&mountpoint);
        return Err(e);
    }
    let mount = Mount(mountpoint.clone());
    let fs = MountedFs::new(&mountpoint, kind.as_str(), name, Some(Box::new(mount)))?;
    Ok(Box::new(fs))
}

/// A mount made for one command: unmounted (and its device detached) when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        match child::umount(&self.0) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&self.0);
            }
            Err(e) => tracing::error!(mountpoint = %self.0.display(),
                "cannot unmount: {e}; `imgblk umount {}` does it", self.0.display()),
        }
    }
}

/// A new folder only root can enter, `/run/imgblk/files/PID-N`.
fn private_folder() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = Path::new("/run/imgblk/files");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| Error::io("cannot create a mount folder", e).with_path(parent))?;
    for n in 0..1000 {
        let path = parent.join(format!("{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("cannot create a mount folder", e).with_path(&path)),
        }
    }
    Err(Error::invalid(
        "no free mount folder under /run/imgblk/files",
    ))
}
