//! Dynamic and differencing VHDs: the dynamic disk header (1024 big-endian bytes with its
//! own checksum), the block allocation table, and each block's sector bitmap.

use super::footer;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, be32, be64, field};
use crate::image::common::lazy::LazyTables;
use crate::image::common::walk::{BitOrder, Block};
use crate::image::ImageFile;

/// The dynamic header's first eight bytes.
pub const COOKIE: &[u8; 8] = b"cxsparse";
const HEADER_BYTES: u64 = 1024;
const UNALLOCATED: u32 = 0xffff_ffff;
/// The largest block we accept (the spec's default is 2 MiB).
const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// One parent locator entry of a differencing disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// Platform code: `W2ku`, `W2ru`, `MacX`, ...
    pub code: [u8; 4],
    /// Length of the locator data in bytes.
    pub data_len: u32,
    /// Byte offset of the data in the file.
    pub data_offset: u64,
}

/// The fields of a dynamic disk header imgblk uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Byte offset of the BAT.
    pub table_offset: u64,
    /// Entries the BAT has room for.
    pub max_table_entries: u32,
    /// Block size in bytes (a power of two).
    pub block_size: u32,
    /// Unique ID of the parent (differencing disks).
    pub parent_uuid: [u8; 16],
    /// Parent's file name, as the header stores it (UTF-16 big-endian).
    pub parent_name: String,
    /// Parent locators that are in use.
    pub locators: Vec<Locator>,
}

/// Reads and checks the dynamic header at `offset`.
pub fn read_header(file: &ImageFile, offset: u64) -> Result<DynamicHeader> {
    let buf = bytes::read_vec(file, offset, HEADER_BYTES, "VHD dynamic disk header")?;
    parse_header(&buf).map_err(|e| e.at(offset).with_path(file.path()))
}

/// Parses a dynamic header.
pub fn parse_header(buf: &[u8]) -> Result<DynamicHeader> {
    if !buf.starts_with(COOKIE) {
        return Err(Error::corrupt(
            "VHD dynamic disk header has no \"cxsparse\" cookie",
        ));
    }
    bytes::verify_checksum(
        buf,
        36..40,
        be32(buf, 36),
        footer::checksum,
        "VHD dynamic disk header",
    )?;
    let block_size = be32(buf, 32);
    if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::corrupt(format!(
            "VHD dynamic header block size {block_size} is not a power of two in 512..=256 MiB"
        )));
    }
    let locators = (0..8)
        .map(|i| 576 + i * 24)
        .map(|at| Locator {
            code: field(buf, at),
            data_len: be32(buf, at + 8),
            data_offset: be64(buf, at + 16),
        })
        .filter(|l| l.code != [0; 4] && l.data_len != 0)
        .collect();
    Ok(DynamicHeader {
        table_offset: be64(buf, 16),
        max_table_entries: be32(buf, 28),
        block_size,
        parent_uuid: field(buf, 40),
        parent_name: bytes::utf16(buf.get(64..576).unwrap_or_default(), false),
        locators,
    })
}

/// Whether the first `bits` bits of an MSB-first bitmap are all set.
fn all_set(bitmap: &[u8], bits: usize) -> bool {
    let (whole, rest) = (bits / 8, bits % 8);
    let whole_set = bitmap
        .get(..whole)
        .is_some_and(|b| b.iter().all(|&x| x == 0xff));
    // rest is 1..=7 where it is used, so the shift stays inside a byte.
    whole_set
        && (rest == 0
            || bitmap
                .get(whole)
                .is_some_and(|&b| b >> (8 - rest) == 0xff >> (8 - rest)))
}

/// The BAT, with each block's sector bitmap loaded on first use.
#[derive(Debug)]
pub struct Bat {
    entries: Box<[u32]>,
    block_size: u64,
    bitmap_bytes: u64,
    /// Per block: its bitmap, or an empty table when every sector is present.
    bitmaps: LazyTables<u8>,
}

impl Bat {
    /// Loads the BAT entries a disk of `virtual_size` bytes needs and checks that every
    /// allocated block lies inside the file.
    pub fn load(file: &ImageFile, header: &DynamicHeader, virtual_size: u64) -> Result<Self> {
        let block_size = u64::from(header.block_size);
        let needed = virtual_size.div_ceil(block_size);
        if u64::from(header.max_table_entries) < needed {
            return Err(Error::corrupt(format!(
                "VHD BAT has {} entries, the {virtual_size}-byte disk needs {needed}",
                header.max_table_entries
            ))
            .with_path(file.path()));
        }
        let count = bytes::bounded_count(needed, needed, "VHD BAT")?;
        let raw = bytes::read_vec(file, header.table_offset, needed * 4, "VHD BAT")?;
        let entries: Box<[u32]> = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        let bitmap_bytes = (block_size / 512).div_ceil(8).next_multiple_of(512);
        for (index, &sector) in entries.iter().enumerate() {
            if sector == UNALLOCATED {
                continue;
            }
            let end = u64::from(sector) * 512 + bitmap_bytes + block_size;
            if end > file.len() {
                return Err(Error::corrupt(format!(
                    "VHD BAT entry {index} puts block data at sector {sector}, past the end of the \
                     file ({} bytes)",
                    file.len()
                ))
                .at(header.table_offset + index as u64 * 4)
                .with_path(file.path()));
            }
        }
        Ok(Bat {
            entries,
            block_size,
            bitmap_bytes,
            bitmaps: LazyTables::new(count),
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// What block `block` holds: absent, all data, or data where its bitmap says so.
    pub fn lookup<'a>(&'a self, file: &'a ImageFile, block: u64) -> Result<Block<'a>> {
        let index = usize::try_from(block).unwrap_or(usize::MAX);
        let Some(&sector) = self.entries.get(index) else {
            return Err(
                Error::corrupt(format!("block {block} lies beyond the VHD BAT"))
                    .with_path(file.path()),
            );
        };
        if sector == UNALLOCATED {
            return Ok(Block::Absent);
        }
        let bitmap_at = u64::from(sector) * 512;
        let bitmap = self.bitmaps.get_or_load(index, || {
            let raw = bytes::read_vec(file, bitmap_at, self.bitmap_bytes, "VHD sector bitmap")?;
            let sectors = usize::try_from(self.block_size / 512).unwrap_or(usize::MAX);
            Ok(if all_set(&raw, sectors) {
                Box::new([])
            } else {
                raw.into_boxed_slice()
            })
        })?;
        let offset = bitmap_at + self.bitmap_bytes;
        Ok(if bitmap.is_empty() {
            Block::Data { file, offset }
        } else {
            Block::Partial {
                file,
                offset,
                bitmap,
                first_bit: 0,
                order: BitOrder::MsbFirst,
            }
        })
    }
}
