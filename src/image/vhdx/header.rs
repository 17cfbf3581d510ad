//! The VHDX header section: the file type identifier, two headers (the valid one with the
//! highest sequence number wins) and two copies of the region table, all CRC-32C checked.

use crate::error::{Error, Result};
use crate::image::common::bytes::{self, field, guid_string, is_zero, le16, le32, le64};
use crate::image::ImageFile;

/// The file type identifier's signature at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
const HEADER_BYTES: u64 = 4096;
const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
const REGION_TABLE_BYTES: u64 = 64 << 10;
const MAX_REGIONS: u32 = 2047;

/// GUID of the BAT region (2DC27766-F623-4200-9D64-115E9BFD4A08), as stored.
pub const BAT_REGION: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
/// GUID of the metadata region (8B7CA206-4790-4B9A-B8FE-575F050F886E), as stored.
pub const METADATA_REGION: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];

/// The fields of the current header imgblk uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sequence number (the higher of two valid headers is current).
    pub sequence: u64,
    /// Changes whenever the data changes; a child records its parent's.
    pub data_write_guid: [u8; 16],
    /// Non-zero while the log holds entries to replay.
    pub log_guid: [u8; 16],
}

/// Where a region lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The regions a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// The block allocation table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// Checks the CRC-32C at bytes 4..8 of a checksummed structure.
pub fn verify_crc(buf: &[u8], what: &str) -> Result<()> {
    bytes::verify_checksum(buf, 4..8, le32(buf, 4), crc32c::crc32c, what)
}

/// Reads the file identifier and both headers; returns the current one. A header whose
/// log is not empty is refused: replaying it is a write.
pub fn read_header(file: &ImageFile) -> Result<Header> {
    let ident = bytes::read_vec(file, 0, 8, "VHDX file identifier")?;
    if ident != FILE_SIGNATURE {
        return Err(
            Error::corrupt("not a VHDX file (no \"vhdxfile\" signature)").with_path(file.path()),
        );
    }
    let mut best: Option<Header> = None;
    let mut errors = Vec::new();
    for (n, &offset) in HEADER_OFFSETS.iter().enumerate() {
        match (read_one_header(file, offset, n + 1), &best) {
            (Ok(h), Some(b)) if h.sequence <= b.sequence => {}
            (Ok(h), _) => best = Some(h),
            (Err(e), _) => errors.push(e.to_string()),
        }
    }
    let header = best.ok_or_else(|| {
        Error::corrupt(format!("no valid VHDX header: {}", errors.join("; ")))
            .with_path(file.path())
    })?;
    if !is_zero(&header.log_guid) {
        return Err(Error::unsupported(format!(
            "VHDX log needs replay (log GUID {}); run qemu-img check -r all on a copy",
            guid_string(&header.log_guid)
        ))
        .with_path(file.path()));
    }
    Ok(header)
}

fn read_one_header(file: &ImageFile, offset: u64, number: usize) -> Result<Header> {
    let buf = bytes::read_vec(file, offset, HEADER_BYTES, "VHDX header")?;
    let what = format!("VHDX header {number}");
    if !buf.starts_with(b"head") {
        return Err(Error::corrupt(format!("{what} has no \"head\" signature")).at(offset));
    }
    verify_crc(&buf, &what).map_err(|e| e.at(offset))?;
    let version = le16(&buf, 66);
    if version != 1 {
        return Err(Error::unsupported(format!("{what} version is {version}, not 1")).at(offset));
    }
    Ok(Header {
        sequence: le64(&buf, 8),
        data_write_guid: field(&buf, 32),
        log_guid: field(&buf, 48),
    })
}

/// Reads the region table (the second copy if the first is damaged) and finds the BAT
/// and metadata regions. An unknown region marked required is refused.
pub fn read_regions(file: &ImageFile) -> Result<Regions> {
    let first = read_region_table(file, REGION_TABLE_OFFSETS[0]);
    match first {
        Ok(regions) => Ok(regions),
        Err(e) => read_region_table(file, REGION_TABLE_OFFSETS[1]).map_err(|_| e),
    }
}

fn read_region_table(file: &ImageFile, offset: u64) -> Result<Regions> {
    let err = |msg: String| Error::corrupt(msg).at(offset).with_path(file.path());
    let buf = bytes::read_vec(file, offset, REGION_TABLE_BYTES, "VHDX region table")?;
    if !buf.starts_with(b"regi") {
        return Err(err("VHDX region table has no \"regi\" signature".into()));
    }
    verify_crc(&buf, "VHDX region table").map_err(|e| e.at(offset).with_path(file.path()))?;
    let count = le32(&buf, 8);
    if count > MAX_REGIONS {
        return Err(err(format!(
            "VHDX region table has {count} entries, at most {MAX_REGIONS} allowed"
        )));
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let at = 16 + i * 32;
        let guid: [u8; 16] = field(&buf, at);
        let region = Region {
            offset: le64(&buf, at + 16),
            length: u64::from(le32(&buf, at + 24)),
        };
        let required = le32(&buf, at + 28) & 1 != 0;
        let slot = match guid {
            BAT_REGION => &mut bat,
            METADATA_REGION => &mut metadata,
            _ if required => {
                return Err(Error::unsupported(format!(
                    "VHDX region {} is marked required but unknown",
                    guid_string(&guid)
                ))
                .with_path(file.path()))
            }
            _ => continue,
        };
        if region.offset < (1 << 20) || region.offset % (1 << 20) != 0 {
            return Err(err(format!(
                "VHDX region {} at offset {:#x} is not 1 MiB aligned past the header section",
                guid_string(&guid),
                region.offset
            )));
        }
        bytes::check_in_file(file, region.offset, region.length, "VHDX region")?;
        *slot = Some(region);
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(Regions { bat, metadata }),
        _ => Err(err(
            "VHDX region table lacks the BAT or the metadata region".into(),
        )),
    }
}
