//! The VHDX metadata region: a table of items, of which a reader needs the file
//! parameters (block size, has-parent), the virtual disk size, the logical sector size and,
//! for differencing disks, the parent locator.

use super::header::Region;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, field, guid_string, le16, le32, le64};
use crate::image::ImageFile;

const TABLE_BYTES: u64 = 64 << 10;
const MAX_ENTRIES: u16 = 2047;
/// Items are at most 1 MiB (MS-VHDX 2.6.1.2).
const MAX_ITEM_BYTES: u64 = 1 << 20;
/// The largest virtual disk: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA16737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA54224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VIRTUAL_DISK_ID: [u8; 16] = guid(
    0xBECA12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA348C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D35F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// The locator type of a VHDX parent (B04AEFB7-D19E-4A81-B789-25B8E9445913).
pub const VHDX_PARENT_LOCATOR_TYPE: [u8; 16] = guid(
    0xB04AEFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// A GUID in its on-disk (Microsoft mixed-endian) byte order.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The metadata a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Payload block size in bytes (a power of two, 1..=256 MiB).
    pub block_size: u64,
    /// Whether this is a differencing disk.
    pub has_parent: bool,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Logical sector size: 512 or 4096.
    pub logical_sector_size: u64,
    /// The parent locator's key/value pairs (differencing disks).
    pub parent_locator: Vec<(String, String)>,
}

impl Metadata {
    /// The value of parent locator key `key`.
    pub fn locator(&self, key: &str) -> Option<&str> {
        self.parent_locator
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads and checks the metadata region.
pub fn read(file: &ImageFile, region: Region) -> Result<Metadata> {
    read_inner(file, region).map_err(|e| e.with_path(file.path()))
}

fn read_inner(file: &ImageFile, region: Region) -> Result<Metadata> {
    let table = bytes::read_vec(
        file,
        region.offset,
        TABLE_BYTES.min(region.length),
        "VHDX metadata table",
    )?;
    if !table.starts_with(b"metadata") {
        return Err(
            Error::corrupt("VHDX metadata table has no \"metadata\" signature").at(region.offset),
        );
    }
    let count = le16(&table, 10);
    if count > MAX_ENTRIES {
        return Err(Error::corrupt(format!(
            "VHDX metadata table has {count} entries, at most {MAX_ENTRIES} allowed"
        )));
    }
    let mut items: Vec<([u8; 16], Vec<u8>)> = Vec::new();
    for i in 0..usize::from(count) {
        let at = 32 + i * 32;
        let id: [u8; 16] = field(&table, at);
        let offset = u64::from(le32(&table, at + 16));
        let length = u64::from(le32(&table, at + 20));
        let required = le32(&table, at + 24) & 4 != 0;
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            VIRTUAL_DISK_ID,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ]
        .contains(&id);
        if !known {
            if required {
                return Err(Error::unsupported(format!(
                    "VHDX metadata item {} is marked required but unknown",
                    guid_string(&id)
                )));
            }
            continue;
        }
        if length > MAX_ITEM_BYTES || offset.saturating_add(length) > region.length {
            return Err(Error::corrupt(format!(
                "VHDX metadata item {} ({length} bytes at {offset}) does not fit its {}-byte region",
                guid_string(&id),
                region.length
            )));
        }
        items.push((
            id,
            bytes::read_vec(file, region.offset + offset, length, "VHDX metadata item")?,
        ));
    }
    let item = |id: [u8; 16], name: &str, min_len: usize| -> Result<&[u8]> {
        match items.iter().find(|(i, _)| *i == id) {
            Some((_, data)) if data.len() >= min_len => Ok(data),
            Some(_) => Err(Error::corrupt(format!(
                "VHDX metadata item {name} is too short"
            ))),
            None => Err(Error::corrupt(format!(
                "VHDX metadata lacks the {name} item"
            ))),
        }
    };
    let params = item(FILE_PARAMETERS, "file parameters", 8)?;
    let block_size = u64::from(le32(params, 0));
    let has_parent = le32(params, 4) & 2 != 0;
    if !block_size.is_power_of_two() || !((1 << 20)..=(256 << 20)).contains(&block_size) {
        return Err(Error::corrupt(format!(
            "VHDX block size {block_size} is not a power of two in 1..=256 MiB"
        )));
    }
    let logical_sector_size = u64::from(le32(
        item(LOGICAL_SECTOR_SIZE, "logical sector size", 4)?,
        0,
    ));
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(Error::corrupt(format!(
            "VHDX logical sector size {logical_sector_size} is not 512 or 4096"
        )));
    }
    let virtual_size = le64(item(VIRTUAL_DISK_SIZE, "virtual disk size", 8)?, 0);
    if virtual_size > MAX_VIRTUAL_SIZE || virtual_size % logical_sector_size != 0 {
        return Err(Error::corrupt(format!(
            "VHDX virtual disk size {virtual_size} is not a multiple of the sector size up to 64 TiB"
        )));
    }
    let parent_locator = if has_parent {
        parse_locator(item(PARENT_LOCATOR, "parent locator", 20)?)?
    } else {
        Vec::new()
    };
    Ok(Metadata {
        block_size,
        has_parent,
        virtual_size,
        logical_sector_size,
        parent_locator,
    })
}

/// Parses a parent locator item into its key/value pairs (UTF-16LE strings).
fn parse_locator(data: &[u8]) -> Result<Vec<(String, String)>> {
    let kind: [u8; 16] = field(data, 0);
    if kind != VHDX_PARENT_LOCATOR_TYPE {
        return Err(Error::unsupported(format!(
            "VHDX parent locator type {} is not the VHDX one",
            guid_string(&kind)
        )));
    }
    let count = usize::from(le16(data, 18));
    if 20 + count * 12 > data.len() {
        return Err(Error::corrupt(format!(
            "VHDX parent locator has {count} entries but only {} bytes",
            data.len()
        )));
    }
    let mut pairs = Vec::with_capacity(count.min(64));
    for i in 0..count {
        let at = 20 + i * 12;
        let string = |offset: u32, len: u16| -> Result<String> {
            let start = offset as usize;
            data.get(start..start + usize::from(len))
                .map(|b| bytes::utf16(b, true))
                .ok_or_else(|| {
                    Error::corrupt(format!(
                        "VHDX parent locator entry {i} lies outside the item"
                    ))
                })
        };
        let key = string(le32(data, at), le16(data, at + 8))?;
        let value = string(le32(data, at + 4), le16(data, at + 10))?;
        pairs.push((key, value));
    }
    Ok(pairs)
}
