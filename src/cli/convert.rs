//! `imgblk convert`: copy an image's guest contents into a new qcow2 (or raw) image,
//! sparse, whole or only what changed: the incremental backup artifact is a qcow2 that
//! holds the changed clusters, with the previous backup as its backing file.

use super::changes::ChangeArgs;
use super::output::Output;
use super::progress::{Progress, ProgressArgs};
use super::{open_source_for_reading, SourceArgs, EXIT_OK};
use crate::error::{Error, Result};
use crate::image::qcow2::stream::StreamWriter;
use crate::image::{open_image, Codec, DiskImage, OpenOptions};
use std::path::{Path, PathBuf};

/// The formats `convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// qcow2 version 3, 64 KiB clusters.
    Qcow2,
    /// A raw file (holes for zero runs) or block device.
    Raw,
}

/// How `convert -c` compresses clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Compression {
    /// Deflate, QEMU's default (qcow2 compression type zlib).
    Zlib,
    /// Zstandard (qcow2 compression type zstd; QEMU 5.1 and later read it).
    Zstd,
}

/// Copy an image's guest contents into a new qcow2 or raw image.
///
/// Reads any piece imgblk reads (--part, --lv, --luks, --snapshot) and writes only what is
/// allocated. With --top-layers, --since or --bitmap only the ranges that changed are
/// copied, into a qcow2 over -B PREVIOUS-BACKUP: through its backing file it reads as
/// the source does (an incremental backup).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk convert -o full.qcow2 disk.vmdk\n  \
imgblk convert -c zstd -o full.qcow2 disk.vmdk\n  \
imgblk convert --bitmap b0 -B full.qcow2 -o incr1.qcow2 disk.qcow2")]
pub struct ConvertArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// The new image (a qcow2 must not exist yet; a raw file is created or truncated).
    #[arg(short, long, required = true)]
    output: PathBuf,
    /// Format of the new image.
    #[arg(
        short = 'O',
        long = "output-format",
        value_enum,
        default_value = "qcow2"
    )]
    output_format: OutputFormat,
    /// Backing file of the new qcow2 (stored as given, so relative to the new image's
    /// folder): the previous backup, for an incremental one.
    #[arg(short = 'B', long, value_name = "FILE")]
    backing: Option<PathBuf>,
    /// Compress the qcow2's clusters (on every core), as `qemu-img convert -c` does; a
    /// cluster that does not shrink is stored as it is.
    #[arg(short = 'c', long, value_enum, value_name = "TYPE")]
    compress: Option<Compression>,
    #[command(flatten)]
    changes: ChangeArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// Runs `imgblk convert`.
pub fn run(args: ConvertArgs) -> Result<i32> {
    args.changes.check(&args.source)?;
    match (args.output_format, &args.backing, args.changes.any()) {
        (OutputFormat::Raw, Some(_), _) => {
            return Err(Error::invalid("-B needs a qcow2 output (-O qcow2)"))
        }
        (OutputFormat::Raw, _, _) if args.compress.is_some() => {
            return Err(Error::invalid("-c needs a qcow2 output (-O qcow2)"))
        }
        (OutputFormat::Qcow2, None, true) => {
            return Err(Error::invalid(
                "--top-layers, --since and --bitmap need -B PREVIOUS-BACKUP: the ranges \
                 left out must come from it",
            ))
        }
        _ => {}
    }
    let image = open_source_for_reading(&args.source, &args.luks)?;
    let size = image.virtual_size();
    let changes = args.changes.resolve(&*image, &args.source)?;
    let mut progress = Progress::new(args.progress, size);
    match args.output_format {
        OutputFormat::Raw => {
            let mut out = Output::open(Some(&args.output), size, false)?;
            super::cat::copy(&image, &changes, &mut out, true, &mut progress)?;
            out.finish(size)?;
        }
        OutputFormat::Qcow2 => {
            let codec = args.compress.map(|c| match c {
                Compression::Zstd => Codec::Zstd,
                Compression::Zlib => Codec::Deflate,
            });
            let backing = match &args.backing {
                Some(file) => {
                    let image = open_backing(&args.output, file)?;
                    Some((file.as_path(), image.format(), image))
                }
                None => None,
            };
            let mut sink = StreamWriter::create(&args.output, size, backing, codec)?;
            super::cat::copy(&image, &changes, &mut sink, true, &mut progress)?;
            sink.finish()?;
        }
    }
    progress.finish();
    Ok(EXIT_OK)
}

/// Opens `file`, the backing file of the new image `path`, relative to `path`'s folder as
/// the qcow2 will resolve it.
fn open_backing(path: &Path, file: &Path) -> Result<Box<dyn DiskImage>> {
    let from = path.parent().unwrap_or(Path::new(".")).join(file);
    open_image(&from, &OpenOptions::default())
}
