//! Headers of the three sparse extent kinds: hosted sparse ("KDMV", VMware Workstation and
//! streamOptimized), ESX sparse ("COWD", vmfsSparse) and ESXi space-efficient sparse
//! (seSparse). Each is reduced to one [`SparseHeader`] the grain lookup works from.

use super::stream;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le16, le32, le64};
use crate::image::ImageFile;

/// `KDMV` as the first four bytes of a hosted sparse extent.
pub const HOSTED_MAGIC: &[u8; 4] = b"KDMV";
/// `COWD` as the first four bytes of an ESX sparse extent.
pub const COWD_MAGIC: &[u8; 4] = b"COWD";
/// The seSparse constant header's magic (a little-endian u64).
pub const SESPARSE_MAGIC: u64 = 0xcafe_babe;
const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;

/// `gdOffset` value meaning "the grain directory is in the footer" (streamOptimized).
pub const GD_AT_END: u64 = u64::MAX;

const FLAG_RGD: u32 = 1 << 1;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESSION_DEFLATE: u16 = 1;

/// The largest grain we accept, in sectors (16 MiB; VMware writes 64 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 32768;

/// How grain directory and grain table entries are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 32-bit sector numbers (hosted sparse and COWD); `zero_grain` makes 1 a zero grain.
    Sectors32 {
        /// Whether a grain table entry of 1 means "zero grain".
        zero_grain: bool,
    },
    /// seSparse's 64-bit entries with a type nibble.
    SeSparse {
        /// Where grain tables start, in sectors.
        tables_offset: u64,
        /// Where grains start, in sectors.
        grains_offset: u64,
    },
}

/// What the grain lookup needs from any sparse header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Which of the three kinds, for messages.
    pub kind: &'static str,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u64,
    /// Grain directory entries (what the capacity needs).
    pub gd_entries: u64,
    /// Byte offset of the grain directory.
    pub gd_offset: u64,
    /// Byte offset of the redundant grain directory, if the header says it is kept.
    pub rgd_offset: Option<u64>,
    /// Entry encoding.
    pub encoding: Encoding,
    /// Grains are zlib-compressed (streamOptimized).
    pub compressed: bool,
    /// Compressed grains start with a 12-byte marker (lba, size).
    pub markers: bool,
    /// Embedded descriptor as (byte offset, byte length), if any.
    pub descriptor: Option<(u64, u64)>,
}

impl SparseHeader {
    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * 512
    }

    /// Bytes per grain directory / grain table entry.
    pub fn entry_bytes(&self) -> u64 {
        match self.encoding {
            Encoding::Sectors32 { .. } => 4,
            Encoding::SeSparse { .. } => 8,
        }
    }
}

/// Whether `head` starts with one of the sparse magics.
pub fn is_sparse_magic(head: &[u8]) -> bool {
    head.starts_with(HOSTED_MAGIC)
        || head.starts_with(COWD_MAGIC)
        || le64(head, 0) == SESPARSE_MAGIC
}

/// Reads and checks the header of the sparse extent `file`.
pub fn read(file: &ImageFile) -> Result<SparseHeader> {
    let sector = bytes::read_vec(file, 0, 512, "sparse extent header")?;
    let header = if sector.starts_with(HOSTED_MAGIC) {
        read_hosted(file, &sector)
    } else if sector.starts_with(COWD_MAGIC) {
        parse_cowd(&sector)
    } else if le64(&sector, 0) == SESPARSE_MAGIC {
        read_sesparse(file, &sector)
    } else {
        Err(Error::corrupt(
            "not a VMDK sparse extent (no KDMV, COWD or seSparse magic)",
        ))
    };
    header.map_err(|e| e.with_path(file.path()))
}

/// A hosted sparse header; with `gdOffset == GD_AT_END` the footer's copy is used.
fn read_hosted(file: &ImageFile, sector: &[u8]) -> Result<SparseHeader> {
    let header = parse_hosted(sector)?;
    if header.gd_offset != GD_AT_END {
        return check_hosted(file, header, sector);
    }
    let footer = stream::read_footer(file)?;
    let from_footer = parse_hosted(&footer)?;
    if from_footer.gd_offset == GD_AT_END {
        return Err(Error::corrupt(
            "streamOptimized footer has no grain directory offset either",
        ));
    }
    check_hosted(file, from_footer, &footer)
}

/// Parses a hosted sparse header sector (from the start of the file or the footer).
pub fn parse_hosted(s: &[u8]) -> Result<SparseHeader> {
    let version = le32(s, 4);
    let flags = le32(s, 8);
    let capacity = le64(s, 12);
    let grain_sectors = le64(s, 20);
    let desc_offset = le64(s, 28);
    let desc_size = le64(s, 36);
    let gtes_per_gt = u64::from(le32(s, 44));
    let rgd_offset = le64(s, 48);
    let gd_offset = le64(s, 56);
    let compression = le16(s, 77);
    if !(1..=3).contains(&version) {
        return Err(Error::unsupported(format!(
            "hosted sparse header version {version} is not 1..=3"
        )));
    }
    if !(1..=512).contains(&gtes_per_gt) {
        return Err(Error::corrupt(format!(
            "hosted sparse header field numGTEsPerGT is {gtes_per_gt}, must be 1..=512"
        )));
    }
    let compressed = flags & FLAG_COMPRESSED != 0 || compression == COMPRESSION_DEFLATE;
    if compressed && compression != COMPRESSION_DEFLATE {
        return Err(Error::unsupported(format!(
            "hosted sparse header compressAlgorithm {compression} is not deflate (1)"
        )));
    }
    let descriptor = (desc_offset != 0 && desc_size != 0)
        .then(|| Some((desc_offset.checked_mul(512)?, desc_size.checked_mul(512)?)))
        .flatten();
    if desc_offset != 0 && desc_size != 0 && descriptor.is_none() {
        return Err(Error::corrupt(
            "hosted sparse header descriptor offset/size overflow",
        ));
    }
    let gd_bytes = if gd_offset == GD_AT_END {
        GD_AT_END
    } else {
        sectors_to_bytes(gd_offset, "gdOffset")?
    };
    finish(SparseHeader {
        kind: "hosted sparse",
        capacity,
        grain_sectors,
        gtes_per_gt,
        gd_entries: 0,
        gd_offset: gd_bytes,
        rgd_offset: if flags & FLAG_RGD != 0 && rgd_offset != 0 {
            Some(sectors_to_bytes(rgd_offset, "rgdOffset")?)
        } else {
            None
        },
        encoding: Encoding::Sectors32 {
            zero_grain: flags & FLAG_ZERO_GRAIN != 0,
        },
        compressed,
        markers: flags & FLAG_MARKERS != 0,
        descriptor,
    })
}

/// File-level checks of a hosted header: the overhead (first grain) lies in the file.
fn check_hosted(file: &ImageFile, header: SparseHeader, sector: &[u8]) -> Result<SparseHeader> {
    let overhead = le64(sector, 64);
    let overhead_bytes = sectors_to_bytes(overhead, "overHead")?;
    if overhead_bytes > file.len() {
        return Err(Error::corrupt(format!(
            "file is truncated: header field overHead says grains start at byte {overhead_bytes}, file has {}",
            file.len()
        )));
    }
    Ok(header)
}

/// An ESX sparse ("COWD", VMDK3) header: fixed 4096-entry grain tables.
fn parse_cowd(s: &[u8]) -> Result<SparseHeader> {
    let capacity = u64::from(le32(s, 12));
    let grain_sectors = u64::from(le32(s, 16));
    let gd_offset = u64::from(le32(s, 20));
    let gd_size = u64::from(le32(s, 24));
    let header = finish(SparseHeader {
        kind: "COWD sparse",
        capacity,
        grain_sectors,
        gtes_per_gt: 4096,
        gd_entries: 0,
        gd_offset: gd_offset * 512,
        rgd_offset: None,
        encoding: Encoding::Sectors32 { zero_grain: false },
        compressed: false,
        markers: false,
        descriptor: None,
    })?;
    if gd_size < header.gd_entries {
        return Err(Error::corrupt(format!(
            "COWD header field l1dir_size is {gd_size}, the capacity needs {}",
            header.gd_entries
        )));
    }
    Ok(header)
}

/// An seSparse header (const header at 0, volatile header where it points).
fn read_sesparse(file: &ImageFile, s: &[u8]) -> Result<SparseHeader> {
    let version = le64(s, 8);
    if version != 0x0000_0002_0000_0001 {
        return Err(Error::unsupported(format!(
            "seSparse version {version:#x} is not 2.1"
        )));
    }
    let grain_sectors = le64(s, 24);
    let gt_sectors = le64(s, 32);
    if grain_sectors != 8 || gt_sectors != 64 || le64(s, 40) != 0 {
        return Err(Error::unsupported(format!(
            "seSparse grain size {grain_sectors}, grain table size {gt_sectors} or flags {:#x} \
             are not the supported 8, 64 and 0",
            le64(s, 40)
        )));
    }
    let volatile_at = sectors_to_bytes(le64(s, 80), "volatile_header_offset")?;
    let volatile = bytes::read_vec(file, volatile_at, 512, "seSparse volatile header")?;
    if le64(&volatile, 0) != SESPARSE_VOLATILE_MAGIC {
        return Err(Error::corrupt("seSparse volatile header has a bad magic").at(volatile_at));
    }
    if le64(&volatile, 24) != 0 {
        return Err(Error::unsupported(
            "seSparse journal needs replaying (the image was not closed cleanly)",
        ));
    }
    let gd_size_sectors = le64(s, 136);
    let header = finish(SparseHeader {
        kind: "seSparse",
        capacity: le64(s, 16),
        grain_sectors,
        gtes_per_gt: gt_sectors * 512 / 8,
        gd_entries: 0,
        gd_offset: sectors_to_bytes(le64(s, 128), "grain_dir_offset")?,
        rgd_offset: None,
        encoding: Encoding::SeSparse {
            tables_offset: le64(s, 144),
            grains_offset: le64(s, 192),
        },
        compressed: false,
        markers: false,
        descriptor: None,
    })?;
    if gd_size_sectors.saturating_mul(512 / 8) < header.gd_entries {
        return Err(Error::corrupt(format!(
            "seSparse grain directory of {gd_size_sectors} sectors is too small for {} entries",
            header.gd_entries
        )));
    }
    Ok(header)
}

/// Common checks; fills in the grain directory size the capacity needs.
fn finish(mut h: SparseHeader) -> Result<SparseHeader> {
    if h.grain_sectors == 0 || h.grain_sectors > MAX_GRAIN_SECTORS {
        return Err(Error::corrupt(format!(
            "{} header grain size is {} sectors, must be 1..={MAX_GRAIN_SECTORS}",
            h.kind, h.grain_sectors
        )));
    }
    sectors_to_bytes(h.capacity, "capacity")?;
    let per_gt = h.gtes_per_gt * h.grain_sectors;
    h.gd_entries = h.capacity.div_ceil(per_gt);
    bytes::bounded_count(
        h.gd_entries,
        u64::MAX,
        &format!("{} grain directory", h.kind),
    )?;
    Ok(h)
}

/// `sectors` in bytes, or an error naming the field when that overflows.
pub fn sectors_to_bytes(sectors: u64, field: &str) -> Result<u64> {
    sectors.checked_mul(512).ok_or_else(|| {
        Error::corrupt(format!(
            "header field {field} ({sectors} sectors) overflows"
        ))
    })
}
