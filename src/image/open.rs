//! The one place that turns a path into a [`DiskImage`]: it detects the format by its
//! magic (unless told), opens backing files, and bounds the chain's depth.

use super::file::Tap;
use super::lock::LockMode;
use super::policy::{Field, NamePolicy, Root};
use super::safe_open::FileId;
use super::vdi::VdiImage;
use super::vhd::VhdImage;
use super::vhdx::VhdxImage;
use super::vmdk::VmdkImage;
use super::{qcow2, raw::RawImage, DiskImage, Format, ImageFile};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// How deep a backing chain may go before we call it a loop.
pub const MAX_CHAIN_DEPTH: u32 = 32;

/// The memory budget of a chain's tables unless [`OpenOptions::memory_budget`] says
/// otherwise.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// What is left of a chain's memory budget for the layers still to be opened. Half of
/// it is for L1 tables, which must fit (an image whose L1 table does not is refused);
/// half for L2 caches, of which each layer may keep at most half of what is left (an
/// explicit [`OpenOptions::l2_cache_bytes`] instead sets each layer's cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBudget {
    /// Bytes left for L1 tables.
    pub l1_tables: u64,
    /// Bytes left for L2 caches.
    pub l2_caches: u64,
}

impl ChainBudget {
    /// The budget of a whole chain of `total` bytes.
    pub fn new(total: u64) -> ChainBudget {
        ChainBudget {
            l1_tables: total / 2,
            l2_caches: total - total / 2,
        }
    }
}

impl Default for ChainBudget {
    fn default() -> Self {
        ChainBudget::new(DEFAULT_MEMORY_BUDGET)
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Skip detection and use this format for the top file.
    pub format: Option<Format>,
    /// Open the top file for writing (backing files are always read-only).
    pub writable: bool,
    /// Use `O_DIRECT` for data I/O where the file system allows it.
    pub direct: bool,
    /// Take no image locks, so that an image in use by a writer can still be read
    /// (what it shows may be inconsistent). Only with `writable: false`.
    pub force_share: bool,
    /// Most bytes of qcow2 L2 tables to keep cached, per image of the chain; `None` for
    /// the default (see `qcow2::DEFAULT_L2_CACHE_BYTES`).
    pub l2_cache_bytes: Option<u64>,
    /// The memory budget of the whole chain's qcow2 tables: [`ChainBudget::new`] of the
    /// total at the top (`None`: [`DEFAULT_MEMORY_BUDGET`]), what is left of it below.
    pub memory_budget: Option<ChainBudget>,
    /// Open this internal snapshot of a qcow2 image (matched by name, then by id)
    /// instead of its active state; read-only. Applies to the top image only.
    pub snapshot: Option<String>,
    /// Where a writable qcow2 keeps the journal of metadata changes not yet flushed, so
    /// that a process that takes over from one that died (ublk recovery) finds every
    /// write that was completed (see `qcow2::journal`); `None`: no journal, as for
    /// library users whose process is the whole life of the image.
    pub journal_dir: Option<PathBuf>,
    /// Which disk of an OVA archive to open (1-based; the first when `None`); an error
    /// for a top file that is no OVA. Applies to the top file only.
    pub disk: Option<u32>,
    /// Sees, and may fail, every change made to the files opened (crash tests).
    pub tap: Option<Tap>,
    /// The files above the one being opened in its chain, top first; the last one names
    /// it. Filled in by [`open_at_depth`] as it descends (empty for the top file): a file
    /// opened below one of these is a loop, and a file named by one is held to what an
    /// image may name ([`ImageFile::open_named`]).
    pub above: Vec<Above>,
    /// Paths the user gave, which an image may name as its backing file even where they
    /// are block devices (an `--overlay FILE` names the image it was made over); any
    /// other file an image names must be a regular file.
    pub user_paths: Vec<PathBuf>,
    /// Which host files the images may name (backing files, parents, data files,
    /// extents): see [`NamePolicy`].
    pub policy: NamePolicy,
    /// The image the user gave that the file being opened descends from, which the
    /// policy holds named files to; filled in by [`open_at_depth`] (`None` above the top).
    pub root: Option<Root>,
}

/// A file higher up the chain being opened.
#[derive(Debug, Clone)]
pub struct Above {
    /// The path it was opened by.
    pub path: PathBuf,
    /// Its identity, which no file below it may have.
    pub id: FileId,
}

impl OpenOptions {
    /// The lock a file opened with these options takes.
    pub fn lock_mode(&self) -> LockMode {
        match (self.writable, self.force_share) {
            (true, _) => LockMode::Exclusive,
            (false, true) => LockMode::None,
            (false, false) => LockMode::Shared,
        }
    }
}

/// Opens the image at `path`.
pub fn open_image(path: &Path, options: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    open_at_depth(path, options, 0)
}

/// Opens an image that sits `depth` levels below the top of a chain. Formats call this for
/// their backing files, with `writable: false`.
pub fn open_at_depth(path: &Path, options: &OpenOptions, depth: u32) -> Result<Box<dyn DiskImage>> {
    if depth > MAX_CHAIN_DEPTH {
        return Err(Error::corrupt(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} files (a loop?)"
        ))
        .with_path(path));
    }
    if options.writable && options.force_share {
        return Err(Error::invalid("--force-share is only allowed read-only"));
    }
    let named = match options.above.last() {
        Some(namer) if !options.user_paths.iter().any(|p| p == path) => Some(namer),
        _ => None,
    };
    let file = match named {
        Some(namer) => ImageFile::open_named(path, &namer.path, Field::BackingFile, options)?,
        None => ImageFile::open(path, options.writable, options.direct)?,
    }
    .with_tap(options.tap.clone());
    refuse_loop(&file, &options.above)?;
    let root = match named {
        Some(_) => options.root.clone(),
        None => Some(Root::of(path, file.is_block_device())),
    };
    let options = &OpenOptions {
        root,
        above: [
            options.above.as_slice(),
            &[Above {
                path: path.to_path_buf(),
                id: file.id(),
            }],
        ]
        .concat(),
        ..options.clone()
    };
    file.lock(options.lock_mode())?;
    // `--format` alone reads the file itself as that format (`--format raw` of an OVA is
    // the archive's bytes); with `--disk` it names the format of the disk inside.
    let file = match (options.format, options.disk) {
        (Some(_), None) => file,
        _ => super::ova::unpack(file, options, depth)?,
    };
    let in_archive = file.host_offset(0) > 0;
    let format = match options.format {
        Some(format) => format,
        None => detect(&file).map_err(|e| e.with_path(path))?,
    };
    if let (Some(name), false) = (&options.snapshot, format == Format::Qcow2) {
        return Err(Error::unsupported(format!(
            "snapshot '{name}' asked for, but only qcow2 images have internal snapshots \
             (this is {format})"
        ))
        .with_path(path));
    }
    let image: Result<Box<dyn DiskImage>> = match format {
        Format::Raw if options.format.is_none() => Ok(Box::new(RawImage::probed(file))),
        Format::Raw => Ok(Box::new(RawImage::new(file))),
        Format::Qcow2 => qcow2::Qcow2Image::open(file, options, depth).map(|i| Box::new(i) as _),
        Format::Vmdk => VmdkImage::open(file, options, depth).map(|i| Box::new(i) as _),
        Format::Vpc => VhdImage::open(file, options, depth).map(|i| Box::new(i) as _),
        Format::Vhdx => VhdxImage::open(file, options, depth).map(|i| Box::new(i) as _),
        Format::Vdi => VdiImage::open(file, options, depth).map(|i| Box::new(i) as _),
    };
    // Every error names a file: the one it is about (a backing file, say) if the format
    // named it, else this one.
    let image = image.map_err(|e| e.with_path(path))?;
    if in_archive {
        super::ova::refuse_outside_files(image.as_ref(), path)?;
    }
    Ok(image)
}

/// Refuses `file` if it is one of the files `above` it in its chain: an image that is its
/// own backing file, directly or through others, would otherwise be opened again and
/// again until the depth limit, holding every layer's tables in memory.
fn refuse_loop(file: &ImageFile, above: &[Above]) -> Result<()> {
    let Some(same) = above.iter().find(|a| a.id == file.id()) else {
        return Ok(());
    };
    let namer = above
        .last()
        .map_or(same.path.as_path(), |a| a.path.as_path());
    let what = if std::ptr::eq(namer, same.path.as_path()) {
        "this image itself".to_string()
    } else {
        format!("{}, which is higher up the chain", same.path.display())
    };
    Err(Error::corrupt(format!(
        "its backing file {} is {what} (same device and inode): the backing chain loops",
        file.path().display(),
    ))
    .with_path(namer))
}

/// The format whose magic a file's first bytes `head` start with, if imgblk reads it
/// (a fixed VHD, whose magic is in its footer, is not known by its start).
pub fn format_of_head(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"QFI\xfb") {
        Some(Format::Qcow2)
    } else if head.starts_with(super::vmdk::header::HOSTED_MAGIC)
        || head.starts_with(super::vmdk::header::COWD_MAGIC)
        || super::vmdk::descriptor::looks_like_descriptor(head)
    {
        Some(Format::Vmdk)
    } else if head.starts_with(super::vhdx::header::FILE_SIGNATURE) {
        Some(Format::Vhdx)
    } else if head.starts_with(super::vhd::footer::COOKIE) {
        Some(Format::Vpc)
    } else if super::common::bytes::le32(head, super::vdi::header::SIGNATURE_OFFSET)
        == super::vdi::header::SIGNATURE
    {
        Some(Format::Vdi)
    } else {
        None
    }
}

/// The name of the image format whose magic `head` (a would-be first sector) starts
/// with, whether imgblk reads that format or refuses it: what a guest must not write to
/// sector 0 of a raw image whose format was probed.
pub fn magic_in_head(head: &[u8]) -> Option<String> {
    format_of_head(head)
        .map(|format| format.to_string())
        .or_else(|| super::foreign::identify_head(head).map(str::to_string))
}

/// Guesses the format from the first bytes of `file` (and, for fixed VHDs, which have no
/// magic at the start, from the footer in its last 512 bytes); anything unrecognised is raw.
/// A container format imgblk cannot decode (see [`foreign`](super::foreign)) is refused
/// rather than served as raw.
pub fn detect(file: &ImageFile) -> Result<Format> {
    let mut head = [0u8; 512];
    let head_len = file.len().min(head.len() as u64) as usize;
    file.read_exact_at(&mut head[..head_len], 0)?;
    let head = &head[..head_len];
    if let Some(name) = super::foreign::identify(head, file)? {
        return Err(Error::unsupported(format!(
            "this is a {name} image, a format imgblk cannot read (convert it with \
             qemu-img convert, or pass --format raw to serve the file's bytes as they are)"
        )));
    }
    let format = match format_of_head(head) {
        Some(format) => format,
        None if super::vhd::footer::is_fixed_vhd(file) => Format::Vpc,
        None => Format::Raw,
    };
    Ok(format)
}
