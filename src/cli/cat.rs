//! `imgblk cat`: stream an image's guest contents, without ublk (works in containers).

use super::changes::{ChangeArgs, Changes};
use super::output::{Output, Positional, Sink};
use super::progress::{Progress, ProgressArgs};
use super::{open_source_for_reading, SourceArgs, EXIT_OK};
use crate::error::{Error, Result};
use crate::image::ordered::OrderedPool;
use crate::image::{io::read_at, status::walk_status, DiskImage, Source};
use std::path::PathBuf;
use std::sync::Arc;

/// Copy an image's guest contents (the raw disk) to stdout or a file.
///
/// Reads through imgblk's own format code, so no kernel support is needed. With --sparse,
/// runs that read as zero become holes in a file (also a redirected stdout) and are zeroed
/// on a block device (BLKZEROOUT) instead of written; a pipe gets every byte. A block
/// device is never truncated.
///
/// With --top-layers, --since or --bitmap only the ranges that changed are written, into
/// an existing file (not truncated) or device, and everything else is left as it is: cat
/// of each incremental over the restore of the full backup (in order) gives the image.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk cat disk.qcow2 | zstd > disk.raw.zst\n  \
imgblk cat --sparse -o disk.raw disk.vmdk\n  imgblk cat --sparse -o /dev/sdX disk.qcow2\n  \
imgblk cat --sparse --top-layers 1 -o full.raw overlay.qcow2  # apply an incremental"
)]
pub struct CatArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// Write to this file or block device instead of stdout (a file is created, and
    /// truncated unless only changes are written; a device must be at least as large as
    /// the image).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Leave holes for zero runs in a file, zero them on a block device with BLKZEROOUT
    /// (a pipe still gets every byte).
    #[arg(long)]
    sparse: bool,
    #[command(flatten)]
    changes: ChangeArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// Bytes read in one piece.
const CHUNK: u64 = 1 << 20;
/// Threads reading, whatever the number of cores: reads from a cold disk wait more than
/// they compute, so more are in flight than there are cores (as `qemu-img convert`
/// keeps 8 requests in flight); each holds a piece or two.
const READERS: usize = 8;

/// Runs `imgblk cat`.
pub fn run(args: CatArgs) -> Result<i32> {
    args.changes.check(&args.source)?;
    let image = open_source_for_reading(&args.source, &args.luks)?;
    let size = image.virtual_size();
    let changes = args.changes.resolve(&*image, &args.source)?;
    let mut out = Output::open(args.output.as_deref(), size, args.changes.any())?;
    if args.changes.any() && !out.seekable() {
        return Err(Error::invalid(
            "cat --top-layers, --since or --bitmap writes only what changed, over a previous \
             restore: it needs a file or block device (-o, or stdout redirected to a file)",
        ));
    }
    let mut progress = Progress::new(args.progress, size);
    copy(&image, &changes, &mut out, args.sparse, &mut progress)?;
    out.finish(size)?;
    progress.finish();
    Ok(EXIT_OK)
}

/// What to do with a piece of a copy.
enum Work {
    /// Read into this buffer (made `len` bytes long), then write.
    Read(Vec<u8>),
    /// Make it read as zero.
    Zero,
    /// Leave it (not selected), or it was written already: only counted as done.
    Skip,
}

/// A piece of a copy: guest bytes `at..at + len`.
struct Piece {
    at: u64,
    len: u64,
    work: Work,
}

/// Copies the guest's bytes that `changes` selects into `out`; zero runs through
/// [`Sink::zero`] when `sparse`. Shared with `convert`.
///
/// Reading (and so decompressing compressed clusters) runs on several cores: pieces of
/// [`CHUNK`] bytes are read by a pool of threads ahead of the writer, which takes them in
/// guest order. Into a regular file, a piece that is plain data in one host file is
/// copied by the kernel, on the reading thread, without passing through user space.
pub(super) fn copy(
    image: &Arc<dyn DiskImage>,
    changes: &Changes,
    out: &mut impl Sink,
    sparse: bool,
    progress: &mut Progress,
) -> Result<()> {
    let reader = image.clone();
    let direct = out.positional();
    let mut pool = OrderedPool::new(READERS, move |mut piece: Piece| {
        if let Work::Read(buf) = &mut piece.work {
            if let Some(out) = &direct {
                if copy_in_kernel(&*reader, piece.at, piece.len, out)? {
                    piece.work = Work::Skip;
                    return Ok(piece);
                }
            }
            // a recycled buffer keeps its length: no bytes to clear, no pages to fault in
            buf.resize(piece.len as usize, 0);
            read_at(&*reader, buf, piece.at)?;
        }
        Ok(piece)
    });
    // buffers written out, for the next pieces to read into
    let spare = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
    let mut put = |done: Result<Piece>| -> Result<()> {
        let piece = done?;
        match &piece.work {
            Work::Read(data) => out.write(piece.at, data)?,
            Work::Zero => out.zero(piece.at, piece.len)?,
            Work::Skip => {}
        }
        progress.inc(piece.len);
        if let Work::Read(data) = piece.work {
            spare.borrow_mut().push(data);
        }
        Ok(())
    };
    walk_status(&**image, 1 << 30, |whole| {
        let (start, mut skipped) = (whole.start, whole.length);
        for run in changes.select(whole) {
            skipped -= run.length;
            if run.zero && sparse {
                let (at, len) = (run.start, run.length);
                pool.submit(
                    Piece {
                        at,
                        len,
                        work: Work::Zero,
                    },
                    &mut put,
                )?;
                continue;
            }
            let end = run.start + run.length;
            let mut at = run.start;
            while at < end {
                let len = (end - at).min(CHUNK);
                let buf = spare.borrow_mut().pop().unwrap_or_default();
                let work = Work::Read(buf);
                pool.submit(Piece { at, len, work }, &mut put)?;
                at += len;
            }
        }
        if skipped > 0 {
            let (at, len) = (start, skipped);
            pool.submit(
                Piece {
                    at,
                    len,
                    work: Work::Skip,
                },
                &mut put,
            )?;
        }
        Ok(())
    })?;
    pool.finish(&mut put)
}

/// Copies guest bytes `at..at + len` of `image` into `out` inside the kernel when all of
/// them are plain data in host files; `false` when some are not (zero, compressed,
/// encrypted) or the kernel will not copy, and the caller reads them instead.
fn copy_in_kernel(image: &dyn DiskImage, at: u64, len: u64, out: &Positional) -> Result<bool> {
    let mut extents = Vec::new();
    image.map(at, len, &mut extents)?;
    let mut pos = out.base + at;
    for extent in &extents {
        let Source::Data { file, offset } = extent.source else {
            return Ok(false);
        };
        if !file.copy_to(offset, extent.len, &out.file, pos)? {
            return Ok(false);
        }
        pos += extent.len;
    }
    Ok(true)
}
