//! The VDI header (version 1.1, little-endian) and its block map.

use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le32, le64};
use crate::image::ImageFile;

/// The signature at byte 0x40 (0xbeda107f little-endian).
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Offset of the signature.
pub const SIGNATURE_OFFSET: usize = 0x40;
const VERSION_1_1: u32 = 0x0001_0001;
const HEADER_BYTES: u64 = 512;
/// Block map entry of a block never written.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// Block map entry of a discarded block (reads as zero).
pub const DISCARDED: u32 = 0xffff_fffe;
/// The largest block we accept (VirtualBox writes 1 MiB).
const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// How the image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// Blocks allocated on write ("normal", dynamic).
    Normal,
    /// Every block allocated up front ("fixed", static).
    Fixed,
    /// A differencing image ("diff", what a VirtualBox snapshot creates): blocks it does
    /// not hold come from the parent whose creation UUID it records.
    Diff,
}

/// The four UUIDs of a version 1.1 header (stored as VirtualBox's `RTUUID`, first three
/// fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uuids {
    /// `uuidCreate`: the image's identity.
    pub create: [u8; 16],
    /// `uuidModify`: changed by VirtualBox whenever the image is written.
    pub modify: [u8; 16],
    /// `uuidLinkage`: a differencing image's parent's `uuidCreate`.
    pub linkage: [u8; 16],
    /// `uuidParentModify`: the parent's `uuidModify` when the child was made.
    pub parent_modify: [u8; 16],
}

/// The header fields a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Normal or fixed.
    pub image_type: ImageType,
    /// Byte offset of the block map.
    pub offset_bmap: u64,
    /// Byte offset of the first block.
    pub offset_data: u64,
    /// Guest-visible size in bytes.
    pub disk_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Bytes before each block's data.
    pub block_extra: u64,
    /// Block map entries.
    pub blocks_in_image: u64,
    /// Identity and parent linkage.
    pub uuids: Uuids,
}

/// Reads and checks the header of `file`.
pub fn read(file: &ImageFile) -> Result<Header> {
    let buf = bytes::read_vec(file, 0, HEADER_BYTES, "VDI header")?;
    parse(&buf).map_err(|e| e.with_path(file.path()))
}

/// Parses and checks a header sector.
pub fn parse(buf: &[u8]) -> Result<Header> {
    if le32(buf, SIGNATURE_OFFSET) != SIGNATURE {
        return Err(Error::corrupt("not a VDI image (bad signature at 0x40)"));
    }
    let version = le32(buf, 0x44);
    if version != VERSION_1_1 {
        return Err(Error::unsupported(format!(
            "VDI version {version:#x} is not 1.1"
        )));
    }
    let image_type = match le32(buf, 0x4c) {
        1 => ImageType::Normal,
        2 => ImageType::Fixed,
        3 => return Err(Error::unsupported("VDI undo images are not supported")),
        4 => ImageType::Diff,
        other => {
            return Err(Error::corrupt(format!(
                "VDI header image type {other} is unknown"
            )))
        }
    };
    let sector_size = le32(buf, 0x168);
    if sector_size != 512 {
        return Err(Error::unsupported(format!(
            "VDI sector size {sector_size} is not 512"
        )));
    }
    let block_size = le32(buf, 0x178);
    if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::corrupt(format!(
            "VDI header block size {block_size} is not a power of two in 512..=256 MiB"
        )));
    }
    let header = Header {
        image_type,
        offset_bmap: u64::from(le32(buf, 0x154)),
        offset_data: u64::from(le32(buf, 0x158)),
        disk_size: le64(buf, 0x170),
        block_size: u64::from(block_size),
        block_extra: u64::from(le32(buf, 0x17c)),
        blocks_in_image: u64::from(le32(buf, 0x180)),
        uuids: Uuids {
            create: bytes::field(buf, 0x188),
            modify: bytes::field(buf, 0x198),
            linkage: bytes::field(buf, 0x1a8),
            parent_modify: bytes::field(buf, 0x1b8),
        },
    };
    if header.offset_bmap % 512 != 0 || header.offset_data % 512 != 0 {
        return Err(Error::corrupt(
            "VDI block map or data offset is not sector aligned",
        ));
    }
    if header.block_extra % 512 != 0 || header.block_extra >= u64::from(MAX_BLOCK_SIZE) {
        return Err(Error::corrupt(format!(
            "VDI block_extra {} is not a sector multiple below 256 MiB",
            header.block_extra
        )));
    }
    if header.blocks_in_image.saturating_mul(header.block_size) < header.disk_size {
        return Err(Error::corrupt(format!(
            "VDI disk size {} needs more than the {} blocks of {} bytes the header has",
            header.disk_size, header.blocks_in_image, header.block_size
        )));
    }
    let linked = header.uuids.linkage != [0; 16];
    match (header.image_type, linked) {
        (ImageType::Diff, false) => {
            return Err(Error::corrupt(
                "VDI differencing image has no parent UUID (uuidLinkage is zero)",
            ))
        }
        (ImageType::Normal | ImageType::Fixed, true) => {
            return Err(Error::unsupported(
                "VDI base image links to a parent (uuidLinkage set)",
            ))
        }
        _ => {}
    }
    Ok(header)
}

/// Reads the block map entries the disk needs, checking that each allocated block lies
/// inside the file.
pub fn read_block_map(file: &ImageFile, h: &Header) -> Result<Box<[u32]>> {
    let needed = h.disk_size.div_ceil(h.block_size);
    bytes::bounded_count(needed, needed, "VDI block map")?;
    let raw = bytes::read_vec(file, h.offset_bmap, needed * 4, "VDI block map")?;
    let map: Box<[u32]> = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
    let stride = h.block_size + h.block_extra;
    for (index, &entry) in map.iter().enumerate() {
        if entry == UNALLOCATED || entry == DISCARDED {
            continue;
        }
        let end = h.offset_data + u64::from(entry) * stride + stride;
        if u64::from(entry) >= h.blocks_in_image || end > file.len() {
            return Err(Error::corrupt(format!(
                "VDI block map entry {index} points to block {entry}, past the end of the file \
                 ({} bytes) or of the image's {} blocks",
                file.len(),
                h.blocks_in_image
            ))
            .at(h.offset_bmap + index as u64 * 4)
            .with_path(file.path()));
        }
    }
    Ok(map)
}
