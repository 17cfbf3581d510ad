//! `imgblk get`: one file's bytes from inside an image, without ublk or root (as
//! `virt-cat`): a single-file restore.

use super::files::{open_with_path, FsArgs};
use super::EXIT_OK;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Copy one regular file out of an image's file system, to stdout or a file.
///
/// Reads the file system in process (ext2/3/4, FAT12/16/32, NTFS): no ublk, no root, no
/// mount; xfs, btrfs and ISO 9660 through a read-only kernel mount it undoes again (root
/// and ublk needed). An NTFS file's named data stream is `PATH:STREAM`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk get guest.qcow2 --part 1 /etc/fstab\n  \
imgblk get --auto guest.vmdk /home/ann/notes.txt -o notes.txt"
)]
pub struct GetArgs {
    /// The image(s), then the path of the file inside the file system last.
    #[arg(required = true, value_name = "IMAGE... PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    fs: FsArgs,
    /// Write to this file instead of stdout (created or truncated).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Runs `imgblk get`.
pub fn run(args: GetArgs) -> Result<i32> {
    let (fs, path) = open_with_path(&args.fs, &args.paths)?;
    let mut file = fs.open_file(path)?;
    let copied = match &args.output {
        Some(out) => {
            let mut dest = std::fs::File::create(out)
                .map_err(|e| Error::io("cannot create output", e).with_path(out))?;
            std::io::copy(&mut file, &mut dest).and_then(|_| dest.sync_all())
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut file, &mut stdout).and_then(|_| stdout.flush())
        }
    };
    copied.map_err(crate::files::copy_error)?;
    Ok(EXIT_OK)
}
