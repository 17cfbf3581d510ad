//! `imgblk cat`: stream an image's guest contents, without ublk (works in containers).

use super::{open_source_for_reading, SourceArgs, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{io::read_at, status::walk_status, DiskImage};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Copy an image's guest contents (the raw disk) to stdout or a file.
///
/// Reads through imgblk's own format code, so no kernel support is needed. With --sparse,
/// runs that read as zero become holes in the output file instead of written zeroes.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk cat disk.qcow2 | zstd > disk.raw.zst\n  \
imgblk cat --sparse -o disk.raw disk.vmdk"
)]
pub struct CatArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// Write to this file instead of stdout (created or truncated).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Leave holes for zero runs in the output file (needs a seekable output).
    #[arg(long)]
    sparse: bool,
    /// Show a progress bar on stderr (default: when stderr is a terminal).
    #[arg(long)]
    progress: bool,
}

const CHUNK: u64 = 4 << 20;

/// Runs `imgblk cat`.
pub fn run(args: CatArgs) -> Result<i32> {
    let image = args.luks.apply(open_source_for_reading(&args.source)?)?;
    let size = image.virtual_size();
    let bar = progress_bar(size, args.progress);
    match &args.output {
        Some(path) => {
            // Not the image's error kinds (missing, unreadable): the output failed.
            let mut file = File::create(path).map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot create output: {e}")).with_path(path)
            })?;
            copy(&*image, &mut file, args.sparse, &bar).map_err(|e| e.with_path(path))?;
            file.set_len(size)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("cannot finish output", e).with_path(path))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(CHUNK as usize, stdout.lock());
            copy_dense(&*image, &mut out, &bar)?;
            out.flush()
                .map_err(|e| Error::io("writing stdout failed", e))?;
        }
    }
    bar.finish_and_clear();
    Ok(EXIT_OK)
}

fn progress_bar(size: u64, forced: bool) -> indicatif::ProgressBar {
    if !forced && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Copies into a seekable file; zero runs become holes when `sparse`.
fn copy(
    image: &dyn DiskImage,
    file: &mut File,
    sparse: bool,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    walk_status(image, 1 << 30, |run| {
        if run.zero && !run.data && sparse {
            file.seek(SeekFrom::Start(run.start + run.length))
                .map_err(|e| Error::io("seek failed", e))?;
            bar.inc(run.length);
            return Ok(());
        }
        copy_run(image, run.start, run.length, &mut buf, file, bar)
    })
}

/// Copies everything, zeroes included, to a stream.
fn copy_dense(
    image: &dyn DiskImage,
    out: &mut impl Write,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    copy_run(image, 0, image.virtual_size(), &mut buf, out, bar)
}

fn copy_run(
    image: &dyn DiskImage,
    start: u64,
    length: u64,
    buf: &mut [u8],
    out: &mut impl Write,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut pos = start;
    let end = start + length;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        read_at(image, &mut buf[..n], pos)?;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write failed", e))?;
        bar.inc(n as u64);
        pos += n as u64;
    }
    Ok(())
}
