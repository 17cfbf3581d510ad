//! Disk-image formats behind one trait, [`DiskImage`].
//!
//! A format is first a *mapper*: [`DiskImage::map`] turns a guest byte range into a short
//! list of [`Extent`]s (host file + offset, zero, unallocated, compressed cluster) from
//! in-memory tables. Whoever carries out the I/O (the synchronous helpers in [`io`], or a
//! ublk queue's io_uring) does so without holding any lock of the format.

pub mod common;
pub mod compress;
pub mod decoded;
pub mod file;
pub mod foreign;
pub mod io;
pub mod lock;
pub mod open;
pub mod ordered;
pub mod ova;
pub mod overlay;
pub mod policy;
pub mod qcow2;
pub mod raw;
pub mod safe_open;
pub mod status;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use file::ImageFile;
pub use open::{open_image, OpenOptions};

use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt;

/// The on-disk formats imgblk knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain byte-for-byte disk (or a block device).
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware virtual disk: a descriptor plus flat or sparse extents.
    Vmdk,
    /// Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc".
    Vpc,
    /// Microsoft VHDX (Hyper-V).
    Vhdx,
    /// VirtualBox disk image.
    Vdi,
}

impl Format {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [Format; 6] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vpc,
        Format::Vhdx,
        Format::Vdi,
    ];

    /// The format's name, as qemu-img spells it (and a qcow2 backing format records it).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = Error;

    /// Parses a format's [`name`](Format::name).
    fn from_str(name: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| Error::unsupported(format!("unknown image format `{name}`")))
    }
}

/// How a compressed cluster is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Raw deflate (qcow2's default "zlib" compression has no zlib header).
    Deflate,
    /// Zstandard.
    Zstd,
    /// Deflate inside a zlib wrapper (RFC 1950): VMDK streamOptimized grains.
    Zlib,
}

/// A compressed cluster that guest bytes live in.
///
/// Sizes are `u32` (built through [`CompressedCluster::new`], which bounds them) to keep
/// [`Source`], and so every [`Extent`] a lookup produces, small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedCluster<'a> {
    /// File holding the compressed bytes.
    pub file: &'a ImageFile,
    /// Where the compressed bytes start in `file`.
    pub offset: u64,
    /// How many bytes to read (an upper bound for qcow2: the stream ends before it).
    pub stored_len: u32,
    /// Size of the cluster once decompressed.
    pub cluster_size: u32,
    /// Where the wanted guest bytes start inside the decompressed cluster.
    pub skip: u32,
    /// The encoding.
    pub codec: Codec,
}

impl<'a> CompressedCluster<'a> {
    /// Largest stored or decoded size accepted, so that a hostile image cannot ask for a
    /// huge allocation.
    pub const LIMIT: u64 = 64 << 20;

    /// A compressed cluster of `file` at `offset`; an error naming the file if a size is
    /// over [`Self::LIMIT`] or `skip` lies outside the cluster.
    pub fn new(
        file: &'a ImageFile,
        offset: u64,
        stored_len: u64,
        cluster_size: u64,
        skip: u64,
        codec: Codec,
    ) -> Result<Self> {
        let bounded = |v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|&v| u64::from(v) <= Self::LIMIT)
        };
        match (bounded(stored_len), bounded(cluster_size), bounded(skip)) {
            (Some(stored_len), Some(cluster_size), Some(skip)) if skip < cluster_size => {
                Ok(CompressedCluster {
                    file,
                    offset,
                    stored_len,
                    cluster_size,
                    skip,
                    codec,
                })
            }
            _ => Err(Error::corrupt(format!(
                "compressed cluster of {stored_len} stored bytes, {cluster_size} decoded,                  from byte {skip}: over the 64 MiB limit or outside the cluster"
            ))
            .at(offset)
            .with_path(file.path())),
        }
    }
}

/// Where the bytes of one extent come from.
///
/// `repr(C, u8)` puts the tag in its own leading byte: with the default layout the tag
/// hid in `CompressedCluster::codec`'s niche, and building an extent on the lookup hot
/// path then stalled on partially overlapping stores and loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, u8)]
pub enum Source<'a> {
    /// Bytes stored as they are at `offset` in `file`.
    Data {
        /// The host file.
        file: &'a ImageFile,
        /// Byte offset in it.
        offset: u64,
    },
    /// Explicitly zero (a zero cluster, a ZERO extent).
    Zero,
    /// Allocated nowhere in the chain: reads as zero.
    Unallocated,
    /// Inside a compressed cluster.
    Compressed(CompressedCluster<'a>),
    /// Bytes that need CPU work after reading (decryption, say): read them synchronously
    /// with `layer.read_transformed(offset, ..)`, or, where the layer stages its reads
    /// ([`TransformRead::map_stored`]), read the stored bytes like any other extents and
    /// transform them in place.
    Transformed {
        /// The layer that produces the bytes.
        layer: &'a dyn TransformRead,
        /// Offset in the layer's own address space.
        offset: u64,
    },
}

/// A layer whose bytes cannot be expressed as host extents (they need decrypting, for
/// one). The synchronous executors call [`TransformRead::read_transformed`]; a ublk queue
/// stages the read where the layer allows it: it reads the stored bytes that
/// [`TransformRead::map_stored`] maps on its own ring, then has
/// [`TransformRead::transform_in_place`] turn them into the layer's bytes off the queue
/// thread, so that one read does not stall the queue's other requests.
pub trait TransformRead: Send + Sync {
    /// Fills `buf` with the layer's bytes at `offset`.
    fn read_transformed(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Where the stored bytes of `offset..offset + len` (of the layer's own address
    /// space) are: appends the extents of the image below (in order, adding up to `len`
    /// bytes: the stored bytes have the same length as the layer's) and returns
    /// `Some(unit)`, the size of the pieces the layer transforms independently (a LUKS
    /// sector). The range must then be whole units, and so must every piece later given
    /// to [`TransformRead::transform_in_place`]. `None` (the default, or a range that is
    /// not whole units) appends nothing: read with [`TransformRead::read_transformed`].
    fn map_stored<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<Option<u64>> {
        let _ = (offset, len, out);
        Ok(None)
    }

    /// Turns `buf`, the stored bytes of `offset..offset + buf.len()` read through the
    /// extents [`TransformRead::map_stored`] gave, into the layer's bytes, in place: for
    /// whole units, `read_transformed(offset, buf)` gives the same bytes. Called from any
    /// thread.
    fn transform_in_place(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (offset, buf);
        Err(Error::unsupported("this layer has no staged reads"))
    }
}

impl fmt::Debug for dyn TransformRead + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<transform layer>")
    }
}

impl PartialEq for dyn TransformRead + '_ {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self, other)
    }
}

impl Eq for dyn TransformRead + '_ {}

/// How a write must be carried out, as [`DiskImage::map_write`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePlan {
    /// Write the guest bytes into the `Data` extents `map_write` appended, in order; no
    /// metadata changes are needed (an overwrite in place).
    Mapped,
    /// The write changes metadata (allocates, copies on write, encrypts): hand the whole
    /// request to [`DiskImage::write_sync`], which orders data and metadata itself.
    Synchronous,
}

/// A run of guest bytes that all come from one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent<'a> {
    /// Length in bytes.
    pub len: u64,
    /// Which image of the backing chain supplied it (0 = the top image).
    pub depth: u32,
    /// Where the bytes are.
    pub source: Source<'a>,
}

impl<'a> Extent<'a> {
    /// The extent of `len` bytes that `layer` produces from its own `offset` on: how
    /// images whose bytes need CPU work (decryption, or test images held in memory) map.
    pub fn transformed(layer: &'a dyn TransformRead, offset: u64, len: u64) -> Self {
        Extent {
            len,
            depth: 0,
            source: Source::Transformed { layer, offset },
        }
    }
}

/// One layer of an image chain (index = the depth `map` reports), for `info` and `map`.
#[derive(Debug, Clone, Serialize)]
pub struct ChainEntry {
    /// Path of the file opened for the layer (a VMDK's descriptor): for a backing file,
    /// the name its child gives, joined to the child's directory if relative.
    pub path: std::path::PathBuf,
    /// Where that path led: the file opened, absolute, symlinks resolved.
    pub resolved: std::path::PathBuf,
    /// Its format.
    pub format: Format,
    /// Its virtual size in bytes.
    pub virtual_size: u64,
    /// Size of the host file in bytes.
    pub file_size: u64,
    /// The other files that hold the layer's guest bytes (a VMDK's extent files), in
    /// guest order: parts of this one layer, not layers of the chain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<ExtentFile>,
    /// Whether `map` asks the layer's own file about the data it maps there, reporting
    /// its holes as zero (but still data), as `qemu-img map` does for the formats whose
    /// QEMU driver hands that question to the file: a fixed VHD, a VDI.
    #[serde(skip)]
    pub holes_read_as_zero: bool,
}

/// One extent file of a layer.
#[derive(Debug, Clone, Serialize)]
pub struct ExtentFile {
    /// Path of the file.
    pub path: std::path::PathBuf,
    /// Where that path led: the file opened, absolute, symlinks resolved.
    pub resolved: std::path::PathBuf,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Whether the file holds guest bytes as they are (a flat extent), so that its holes
    /// read as zero; otherwise it is sparse, with tables of its own.
    pub flat: bool,
}

/// A disk image, seen by the guest as `virtual_size()` bytes.
///
/// Implementations are `Send + Sync` and their `map` takes `&self`: every ublk queue maps
/// requests concurrently through one shared instance.
pub trait DiskImage: Send + Sync {
    /// The format of the top file.
    fn format(&self) -> Format;

    /// The guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// Appends to `out` the extents covering `offset..offset + len`, in order and
    /// adding up to exactly `len`. The range must lie within `virtual_size()`.
    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()>;

    /// Where `offset..offset + len` lives when it is one run of plain data in one host
    /// file: that file and the offset in it. The hot path of reading: a request that
    /// maps this way needs no extent list. `None` when it is not (the range spans pieces,
    /// is zero, compressed, unallocated, or needs decrypting) or the format does not say:
    /// [`DiskImage::map`] answers then. A `Some` always agrees with `map`, which would
    /// give exactly one `Data` extent for the range.
    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        let _ = (offset, len);
        Ok(None)
    }

    /// The smallest unit the image can write without reading first, in bytes: a power of
    /// two, at least 512, dividing `virtual_size()`. A layer that transforms data in larger
    /// units (LUKS encrypts whole 4 KiB sectors) reports that unit, so that the ublk
    /// device uses it as its logical block size, as dm-crypt does, and the kernel never
    /// sends a write that would need a read-modify-write. Layers over another image
    /// forward it.
    fn logical_block_size(&self) -> u32 {
        512
    }

    /// The image's write side: `Some` when it was opened for writing (a layer over
    /// another image, when that one was).
    fn writer(&self) -> Option<&dyn ImageWrite> {
        None
    }

    /// The files of the image, top first, backing files after.
    fn chain(&self) -> Vec<ChainEntry>;

    /// For a view onto other images (a partition, a logical volume, a LUKS volume): calls
    /// `f` with each `(image, offset, length)` that `offset..offset + len` is read from,
    /// in order, and returns `true`. An image that stores its own bytes calls nothing and
    /// returns `false`. Lets facts about stored images (which ranges changed since a
    /// backup) be carried up to the view.
    fn source_ranges<'a>(
        &'a self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&'a dyn DiskImage, u64, u64) -> Result<()>,
    ) -> Result<bool> {
        let _ = (offset, len, f);
        Ok(false)
    }

    /// Asks the kernel to read the tables that map `offset..offset + len` into its page
    /// cache, without waiting for them (`POSIX_FADV_WILLNEED`), up to `budget` bytes of
    /// them (less what it asked for). A device does this as it starts, so that its first
    /// reads of a cold image find their tables in memory instead of waiting for a disk
    /// round trip each; the pages are the kernel's to reclaim, not the daemon's memory.
    /// A view asks its sources; a format without tables to read asks nothing.
    fn prefetch_metadata(&self, offset: u64, len: u64, budget: &mut u64) -> Result<()> {
        self.source_ranges(offset, len, &mut |image, at, n| {
            image.prefetch_metadata(at, n, budget)
        })
        .map(drop)
    }
}

/// The write side of an image opened for writing, as [`DiskImage::writer`] gives it.
/// Offsets are guest offsets of that image; a format without writes implements none of it.
pub trait ImageWrite: Send + Sync {
    /// Decides how to write `offset..offset + len`. For [`WritePlan::Mapped`] it appends
    /// the `Data` extents to write the guest bytes into; for [`WritePlan::Synchronous`] it
    /// appends nothing and the caller uses [`ImageWrite::write_sync`].
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan>;

    /// Writes `buf` at `offset` when `map_write` answered [`WritePlan::Synchronous`]:
    /// allocation, copy-on-write and metadata updates happen here, in crash-safe order.
    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Makes every completed write durable, data and metadata.
    fn flush(&self) -> Result<()>;

    /// Tells the image that `offset..offset + len` is no longer needed. A hint: doing
    /// nothing is correct.
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }

    /// Makes `offset..offset + len` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
}

/// Checks that `offset..offset + len` lies inside an image of `size` bytes.
#[inline]
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(range_error(offset, len, size)),
    }
}

/// [`check_range`]'s error, out of the lookup hot path.
#[cold]
#[inline(never)]
fn range_error(offset: u64, len: u64, size: u64) -> Error {
    Error::invalid(format!(
        "range {offset}+{len} lies beyond the end of the {size}-byte image"
    ))
}

#[cfg(test)]
mod layout_tests {
    /// Every lookup builds and copies extents: a variant growing `Source` (as
    /// `CompressedCluster` with `u64` sizes once did, to 72-byte extents) costs the hot path.
    #[test]
    fn extents_stay_small() {
        assert!(std::mem::size_of::<super::Source<'_>>() <= 40);
        assert!(std::mem::size_of::<super::Extent<'_>>() <= 56);
    }
}
