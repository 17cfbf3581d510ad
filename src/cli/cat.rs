//! `imgblk cat`: stream an image's guest contents, without ublk (works in containers).

use super::output::Output;
use super::progress::{Progress, ProgressArgs};
use super::{open_source_for_reading, SourceArgs, EXIT_OK};
use crate::error::Result;
use crate::image::{io::read_at, status::walk_status, DiskImage};
use std::path::PathBuf;

/// Copy an image's guest contents (the raw disk) to stdout or a file.
///
/// Reads through imgblk's own format code, so no kernel support is needed. With --sparse,
/// runs that read as zero become holes in a file (also a redirected stdout) and are zeroed
/// on a block device (BLKZEROOUT) instead of written; a pipe gets every byte. A block
/// device is never truncated.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk cat disk.qcow2 | zstd > disk.raw.zst\n  \
imgblk cat --sparse -o disk.raw disk.vmdk\n  imgblk cat --sparse -o /dev/sdX disk.qcow2"
)]
pub struct CatArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// Write to this file or block device instead of stdout (a file is created or
    /// truncated; a device must be at least as large as the image).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Leave holes for zero runs in a file, zero them on a block device with BLKZEROOUT
    /// (a pipe still gets every byte).
    #[arg(long)]
    sparse: bool,
    #[command(flatten)]
    progress: ProgressArgs,
}

const CHUNK: u64 = 4 << 20;

/// Runs `imgblk cat`.
pub fn run(args: CatArgs) -> Result<i32> {
    let image = args.luks.apply(open_source_for_reading(&args.source)?)?;
    let size = image.virtual_size();
    let mut out = Output::open(args.output.as_deref(), size, false)?;
    let mut progress = Progress::new(args.progress, size);
    copy(&*image, &mut out, args.sparse, &mut progress)?;
    out.finish(size)?;
    progress.finish();
    Ok(EXIT_OK)
}

/// Copies the guest's bytes into `out`; zero runs through [`Output::zero`] when `sparse`.
fn copy(
    image: &dyn DiskImage,
    out: &mut Output,
    sparse: bool,
    progress: &mut Progress,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    walk_status(image, 1 << 30, |run| {
        if run.zero && sparse {
            out.zero(run.start, run.length)?;
            progress.inc(run.length);
            return Ok(());
        }
        let end = run.start + run.length;
        let mut pos = run.start;
        while pos < end {
            let n = (end - pos).min(CHUNK) as usize;
            read_at(image, &mut buf[..n], pos)?;
            out.write(pos, &buf[..n])?;
            progress.inc(n as u64);
            pos += n as u64;
        }
        Ok(())
    })
}
