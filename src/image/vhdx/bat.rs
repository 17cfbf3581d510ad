//! The VHDX block allocation table: payload block entries interleaved with one sector
//! bitmap entry per chunk (`chunk_ratio` payload blocks), and the 1 MiB sector bitmaps of
//! differencing disks, loaded on first use.

use super::header::Region;
use super::metadata::Metadata;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le64};
use crate::image::common::lazy::LazyTables;
use crate::image::common::walk::{BitOrder, Block};
use crate::image::ImageFile;

const MIB: u64 = 1 << 20;
/// A sector bitmap block is 1 MiB: 2^23 bits, one per sector.
const BITMAP_BYTES: u64 = MIB;

const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const UNMAPPED_V095: u64 = 5;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap entry state: the bitmap block is in the file.
const BITMAP_PRESENT: u64 = 6;

/// The BAT and the geometry to index it.
#[derive(Debug)]
pub struct Bat {
    entries: Box<[u64]>,
    block_size: u64,
    chunk_ratio: u64,
    sectors_per_block: u64,
    has_parent: bool,
    /// Per chunk: its sector bitmap.
    bitmaps: LazyTables<u8>,
}

impl Bat {
    /// Loads the BAT region for the disk `meta` describes.
    pub fn load(file: &ImageFile, region: Region, meta: &Metadata) -> Result<Self> {
        let chunk_ratio = ((1u64 << 23) * meta.logical_sector_size) / meta.block_size;
        let payload_blocks = meta.virtual_size.div_ceil(meta.block_size);
        let chunks = payload_blocks.div_ceil(chunk_ratio);
        let total = if meta.has_parent {
            chunks * (chunk_ratio + 1)
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        bytes::bounded_count(total, total, "VHDX BAT")?;
        if total * 8 > region.length {
            return Err(Error::corrupt(format!(
                "VHDX BAT region of {} bytes is too small for {total} entries",
                region.length
            ))
            .at(region.offset)
            .with_path(file.path()));
        }
        let raw = bytes::read_vec(file, region.offset, total * 8, "VHDX BAT")?;
        let entries: Box<[u64]> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        let bitmap_slots = if meta.has_parent { chunks as usize } else { 0 };
        Ok(Bat {
            entries,
            block_size: meta.block_size,
            chunk_ratio,
            sectors_per_block: meta.block_size / meta.logical_sector_size,
            has_parent: meta.has_parent,
            bitmaps: LazyTables::new(bitmap_slots),
        })
    }

    /// Payload block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    fn entry(&self, index: u64, file: &ImageFile) -> Result<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .copied()
            .ok_or_else(|| {
                Error::corrupt(format!("BAT index {index} is out of range")).with_path(file.path())
            })
    }

    /// What payload block `block` holds.
    pub fn lookup<'a>(&'a self, file: &'a ImageFile, block: u64) -> Result<Block<'a>> {
        let index = block + block / self.chunk_ratio;
        let entry = self.entry(index, file)?;
        let offset = (entry >> 20) * MIB;
        let bad = |what: &str| {
            Err(
                Error::corrupt(format!("VHDX BAT entry {index} ({entry:#x}) {what}"))
                    .at(index * 8)
                    .with_path(file.path()),
            )
        };
        match entry & 7 {
            NOT_PRESENT | UNDEFINED | UNMAPPED | UNMAPPED_V095 => Ok(Block::Absent),
            ZERO => Ok(Block::Zero),
            FULLY_PRESENT if offset >= MIB => Ok(Block::Data { file, offset }),
            FULLY_PRESENT => bad("is present at an offset inside the header section"),
            PARTIALLY_PRESENT if !self.has_parent => {
                bad("is partially present in a disk without a parent")
            }
            PARTIALLY_PRESENT if offset < MIB => {
                bad("is present at an offset inside the header section")
            }
            PARTIALLY_PRESENT => {
                let chunk = block / self.chunk_ratio;
                let bitmap = self.bitmap(file, chunk)?;
                Ok(Block::Partial {
                    file,
                    offset,
                    bitmap,
                    first_bit: (block % self.chunk_ratio) * self.sectors_per_block,
                    order: BitOrder::LsbFirst,
                })
            }
            _ => bad("has an invalid payload block state"),
        }
    }

    /// The sector bitmap of `chunk`, loaded on first use.
    fn bitmap<'a>(&'a self, file: &'a ImageFile, chunk: u64) -> Result<&'a [u8]> {
        let slot = usize::try_from(chunk).unwrap_or(usize::MAX);
        self.bitmaps.get_or_load(slot, || {
            let index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
            let entry = self.entry(index, file)?;
            let offset = (entry >> 20) * MIB;
            if entry & 7 != BITMAP_PRESENT || offset < MIB {
                return Err(Error::corrupt(format!(
                    "VHDX sector bitmap entry {index} ({entry:#x}) is not present, but a block of its \
                     chunk is partially present"
                ))
                .with_path(file.path()));
            }
            Ok(bytes::read_vec(file, offset, BITMAP_BYTES, "VHDX sector bitmap")?.into_boxed_slice())
        })
    }
}
