//! A sparse extent's grain lookup: the grain directory (loaded and checked at open, the
//! redundant copy used when the primary one is damaged) and its grain tables, loaded on
//! first use into lock-free slots.

use super::header::{Encoding, SparseHeader};
use super::stream::GRAIN_MARKER_BYTES;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le32, le64};
use crate::image::common::lazy::LazyTables;
use crate::image::common::walk::Block;
use crate::image::{Codec, ImageFile};

/// The largest compressed grain we read (marker included).
const MAX_COMPRESSED_READ: u64 = 64 << 20;

/// One sparse extent file with its grain directory.
#[derive(Debug)]
pub struct SparseExtent {
    file: ImageFile,
    header: SparseHeader,
    /// Byte offset of each grain table; 0 when the table is not allocated.
    directory: Box<[u64]>,
    tables: LazyTables<u64>,
}

impl SparseExtent {
    /// Loads the grain directory of `file` described by `header`.
    pub fn open(file: ImageFile, header: SparseHeader) -> Result<Self> {
        let directory = match load_directory(&file, &header, header.gd_offset) {
            Ok(dir) => dir,
            Err(primary) => match header.rgd_offset {
                Some(rgd) => match load_directory(&file, &header, rgd) {
                    Ok(dir) => {
                        tracing::warn!(path = %file.path().display(), error = %primary,
                            "primary grain directory unusable, using the redundant one");
                        dir
                    }
                    Err(_) => return Err(primary),
                },
                None => return Err(primary),
            },
        };
        let tables = LazyTables::new(directory.len());
        Ok(SparseExtent {
            file,
            header,
            directory,
            tables,
        })
    }

    /// The extent file.
    pub fn file(&self) -> &ImageFile {
        &self.file
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * 512
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_bytes()
    }

    /// What grain `grain` (counted from the start of the extent) holds.
    #[inline]
    pub fn lookup(&self, grain: u64) -> Result<Block<'_>> {
        let per_gt = self.header.gtes_per_gt;
        // Shift and mask for the power of two every writer uses (512): this division sits
        // on the lookup's critical path (`cargo bench --bench lookup`, vmdk_sparse).
        let (gt, within) = if per_gt.is_power_of_two() {
            (grain >> per_gt.trailing_zeros(), grain & (per_gt - 1))
        } else {
            (grain / per_gt, grain % per_gt)
        };
        let gt_index = usize::try_from(gt).unwrap_or(usize::MAX);
        let Some(&gt_offset) = self.directory.get(gt_index) else {
            return Err(
                Error::corrupt(format!("grain {grain} lies beyond the grain directory"))
                    .with_path(self.file.path()),
            );
        };
        if gt_offset == 0 {
            return Ok(Block::Absent);
        }
        let table = self
            .tables
            .get_or_load(gt_index, || self.load_table(gt_offset))?;
        let entry = table
            .get(usize::try_from(within).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(0);
        self.decode(grain, entry, gt_offset)
    }

    fn load_table(&self, offset: u64) -> Result<Box<[u64]>> {
        let entry_bytes = self.header.entry_bytes();
        let raw = bytes::read_vec(
            &self.file,
            offset,
            self.header.gtes_per_gt * entry_bytes,
            "grain table",
        )?;
        Ok(decode_entries(&raw, entry_bytes))
    }

    /// Turns a grain table entry into a block.
    #[inline]
    fn decode(&self, grain: u64, entry: u64, gt_offset: u64) -> Result<Block<'_>> {
        let bad = |what: String| {
            Err(Error::corrupt(what)
                .at(gt_offset)
                .with_path(self.file.path()))
        };
        let sector = match self.header.encoding {
            Encoding::Sectors32 { zero_grain } => match entry {
                0 => return Ok(Block::Absent),
                1 if zero_grain => return Ok(Block::Zero),
                sector => sector,
            },
            Encoding::SeSparse { grains_offset, .. } => match entry >> 60 {
                0 if entry == 0 => return Ok(Block::Absent),
                1 | 2 => return Ok(Block::Zero),
                3 => {
                    let cluster = ((entry & 0x0fff_0000_0000_0000) >> 48)
                        | ((entry & 0x0000_ffff_ffff_ffff) << 12);
                    match cluster
                        .checked_mul(self.header.grain_sectors)
                        .and_then(|s| s.checked_add(grains_offset))
                    {
                        Some(sector) => sector,
                        None => {
                            return bad(format!("seSparse grain table entry {entry:#x} overflows"))
                        }
                    }
                }
                _ => {
                    return bad(format!(
                        "seSparse grain table entry {entry:#x} has an unknown type"
                    ))
                }
            },
        };
        let Some(offset) = sector.checked_mul(512) else {
            return bad(format!("grain table entry {sector} overflows"));
        };
        if !self.header.compressed {
            return Ok(Block::Data {
                file: &self.file,
                offset,
            });
        }
        let data = if self.header.markers {
            offset + GRAIN_MARKER_BYTES
        } else {
            offset
        };
        let available = self.file.len().saturating_sub(data);
        if available == 0 {
            return bad(format!(
                "compressed grain {grain} at byte {offset} lies past the end of the file ({} bytes)",
                self.file.len()
            ));
        }
        let grain_bytes = self.grain_bytes();
        let grain_start = grain * grain_bytes;
        Ok(Block::Compressed {
            file: &self.file,
            offset: data,
            stored_len: available
                .min(2 * grain_bytes + GRAIN_MARKER_BYTES)
                .min(MAX_COMPRESSED_READ),
            codec: Codec::Zlib,
            size: grain_bytes.min(self.capacity().saturating_sub(grain_start)),
        })
    }
}

/// Little-endian entries of `entry_bytes` (4 or 8) each.
fn decode_entries(raw: &[u8], entry_bytes: u64) -> Box<[u64]> {
    if entry_bytes == 8 {
        raw.chunks_exact(8).map(|c| le64(c, 0)).collect()
    } else {
        raw.chunks_exact(4).map(|c| u64::from(le32(c, 0))).collect()
    }
}

/// Reads the grain directory at `offset` and turns its entries into grain table byte
/// offsets, checking that every table lies inside the file.
fn load_directory(file: &ImageFile, header: &SparseHeader, offset: u64) -> Result<Box<[u64]>> {
    let entry_bytes = header.entry_bytes();
    let raw = bytes::read_vec(
        file,
        offset,
        header.gd_entries * entry_bytes,
        "grain directory",
    )?;
    let table_bytes = header.gtes_per_gt * entry_bytes;
    let mut directory = decode_entries(&raw, entry_bytes);
    for (index, entry) in directory.iter_mut().enumerate() {
        if *entry == 0 {
            continue;
        }
        let table_offset = match header.encoding {
            Encoding::Sectors32 { .. } => entry.checked_mul(512),
            Encoding::SeSparse { tables_offset, .. } => {
                if *entry >> 32 != 0x1000_0000 {
                    return Err(Error::corrupt(format!(
                        "seSparse grain directory entry {index} ({entry:#x}) is not an allocated table"
                    ))
                    .at(offset)
                    .with_path(file.path()));
                }
                (*entry & 0xffff_ffff)
                    .checked_mul(header.gtes_per_gt * 8 / 512)
                    .and_then(|s| s.checked_add(tables_offset))
                    .and_then(|s| s.checked_mul(512))
            }
        };
        match table_offset {
            Some(t)
                if t > 0
                    && t.checked_add(table_bytes)
                        .is_some_and(|end| end <= file.len()) =>
            {
                *entry = t
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "grain directory entry {index} points to a grain table ({entry:#x}) that lies \
                     past the end of the file ({} bytes): truncated?",
                    file.len()
                ))
                .at(offset)
                .with_path(file.path()))
            }
        }
    }
    Ok(directory)
}
