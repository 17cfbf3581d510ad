//! `imgblk tar`: a tree inside an image as a pax tar stream, without ublk or root (as
//! `virt-tar-out`): file-level backups (`| restic backup --stdin`, `| borg import-tar`).

use super::files::{inside, FsArgs};
use super::{EXIT_FAILURE, EXIT_OK};
use crate::error::{Error, Result};
use crate::files::archive::{write_tar, Skip};
use crate::files::escape::escape;
use crate::files::walk::Limits;
use std::io::Write;
use std::path::PathBuf;

/// Write a directory tree (or one file) of an image's file system as a POSIX pax tar.
///
/// Names are relative (`./etc/fstab`), owners numeric, modes, modification times (with
/// nanoseconds), symbolic links and hard links kept; on ext4 also device nodes, extended
/// attributes (`SCHILY.xattr` records) and holes (sparse files, GNU sparse 1.0). Reads the file system in process (ext2/3/4,
/// FAT12/16/32, NTFS): no ublk, no root, no mount; xfs, btrfs and ISO 9660 through a
/// read-only kernel mount it undoes again (root and ublk needed). Files it cannot hold or read (sockets,
/// NTFS data streams and compressed files) are left out with a warning; when a file's
/// bytes could not be read (compressed or encrypted NTFS files) the archive is finished
/// and the exit status is 1.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk tar guest.qcow2 --part 1 -o root.tar\n  \
imgblk tar --auto guest.vmdk -C /home | restic backup --stdin --stdin-filename home.tar\n  \
imgblk tar --lv vg0/root disk.raw -C /etc | tar -tvf -"
)]
pub struct TarArgs {
    /// The image (or block device); give every disk of the guest for a VG spanning them.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    fs: FsArgs,
    /// The directory (or file) inside the file system to archive.
    #[arg(
        short = 'C',
        long = "directory",
        value_name = "PATH",
        default_value = "/"
    )]
    path: PathBuf,
    /// Write to this file instead of stdout (created or truncated).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Runs `imgblk tar`.
pub fn run(args: TarArgs) -> Result<i32> {
    let path = inside(&args.path)?;
    let fs = args.fs.open(&args.images)?;
    let mut unread = 0u64;
    let mut skipped = |p: &std::path::Path, why: &str, skip: Skip| {
        tracing::warn!("left out {}: {why}", escape(p));
        unread += u64::from(skip == Skip::CannotRead);
    };
    match &args.output {
        Some(out) => {
            let file = std::fs::File::create(out)
                .map_err(|e| Error::io("cannot create output", e).with_path(out))?;
            let file = write_tar(&*fs, path, Limits::default(), file, &mut skipped)
                .map_err(|e| e.with_path(out))?;
            file.sync_all()
                .map_err(|e| Error::io("cannot finish output", e).with_path(out))?;
        }
        None => {
            let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            write_tar(&*fs, path, Limits::default(), stdout, &mut skipped)?
                .flush()
                .map_err(|e| Error::io("writing stdout failed", e))?;
        }
    }
    if unread > 0 {
        // The archive is whole and valid, but a backup of it lacks files: say so in the
        // status, as GNU tar does for files it could not read.
        tracing::error!("{unread} file(s) could not be read and are missing from the archive");
        return Ok(EXIT_FAILURE);
    }
    Ok(EXIT_OK)
}
