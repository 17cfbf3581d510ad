//! qcow2 persistent dirty bitmaps, read-only (QEMU's docs/interop/qcow2.txt, "Bitmaps
//! extension"): the bitmaps QEMU keeps for backup tools (libvirt's incremental backups),
//! each marking the guest ranges written since it was created or last cleared.
//!
//! The header extension points to a bitmap directory; each directory entry names a bitmap
//! and points to its bitmap table, whose entries point to clusters of bits (bit `j` of
//! byte `i` covers guest bytes `(8i + j) * granularity` onwards) or say that a whole
//! cluster of bits is clear or set. Every field is checked against the file and the image
//! before it is used; errors name the field. imgblk never writes bitmaps.

use super::header::{Header, AUTOCLEAR_BITMAPS};
use crate::error::{Error, ErrorKind, Result};
use crate::image::common::bytes::{be16, be32, be64, read_vec};
use crate::image::ImageFile;
use serde::Serialize;
use std::path::Path;

/// Most bitmaps an image may have (QEMU's limit).
const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU writes or reads.
const MAX_DIRECTORY_SIZE: u64 = 64 << 20;
/// Longest bitmap name.
const MAX_NAME: u16 = 1023;
/// Size of the fixed part of a directory entry.
const ENTRY_LEN: usize = 24;
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY_TRACKING: u8 = 1;
const FLAG_IN_USE: u32 = 1 << 0;
const FLAG_AUTO: u32 = 1 << 1;
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// Bits 9..=55 of a bitmap table entry: the offset of a cluster of bits.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// One persistent bitmap, as `imgblk info` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Bitmap {
    /// Its name (what `qemu-img bitmap` and libvirt call it by).
    pub name: String,
    /// Guest bytes one bit covers.
    pub granularity: u64,
    /// Marked in use: a QEMU has it open, or died without saving it (then it is stale).
    pub in_use: bool,
    /// Enabled: QEMU records guest writes in it.
    pub auto: bool,
    #[serde(skip)]
    table_offset: u64,
    #[serde(skip)]
    table_size: u32,
}

/// The persistent bitmaps of the qcow2 image at `path` (empty when it has none).
pub fn list(path: &Path) -> Result<Vec<Bitmap>> {
    let (file, header) = open(path)?;
    directory(&file, &header).map_err(|e| e.with_path(path))
}

/// The guest ranges `(start, end)` that bitmap `name` of the qcow2 image at `path` marks
/// dirty, sorted and merged. A bitmap marked in use is refused, as QEMU does.
pub fn dirty_ranges(path: &Path, name: &str) -> Result<Vec<(u64, u64)>> {
    let (file, header) = open(path)?;
    let bitmaps = directory(&file, &header).map_err(|e| e.with_path(path))?;
    if bitmaps.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no persistent bitmap named {name:?}: the image has none"),
        )
        .with_path(path));
    }
    let Some(bitmap) = bitmaps.iter().find(|b| b.name == name) else {
        let names: Vec<&str> = bitmaps.iter().map(|b| b.name.as_str()).collect();
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no persistent bitmap named {name:?} (bitmaps: {names:?})"),
        )
        .with_path(path));
    };
    if bitmap.in_use {
        return Err(Error::new(
            ErrorKind::Busy,
            format!(
                "bitmap {name:?} is marked in use: a QEMU has it open, or died before saving it \
                 (then it is inconsistent and QEMU refuses it too)"
            ),
        )
        .with_path(path));
    }
    ranges(&file, &header, bitmap).map_err(|e| e.with_path(path))
}

fn open(path: &Path) -> Result<(ImageFile, Header)> {
    let file = ImageFile::open(path, false, false)?;
    let header = Header::read(&file)?;
    Ok((file, header))
}

/// Parses the bitmaps extension and the directory it points to.
fn directory(file: &ImageFile, header: &Header) -> Result<Vec<Bitmap>> {
    let Some((at, ext)) = &header.bitmaps_extension else {
        return Ok(Vec::new());
    };
    if header.autoclear_features & (1 << AUTOCLEAR_BITMAPS) == 0 {
        return Err(Error::corrupt(
            "the bitmaps extension is stale (autoclear bit 0 is clear: a program unaware of \
             bitmaps wrote the image since)",
        ));
    }
    if ext.len() != 24 {
        return Err(bad(
            "bitmaps extension length",
            *at,
            ext.len(),
            "must be 24",
        ));
    }
    let count = be32(ext, 0);
    let size = be64(ext, 8);
    let offset = be64(ext, 16);
    if count == 0 || count > MAX_BITMAPS {
        return Err(bad(
            "nb_bitmaps",
            *at,
            count,
            &format!("must be 1..={MAX_BITMAPS}"),
        ));
    }
    if size > MAX_DIRECTORY_SIZE || size < (count as u64) * ENTRY_LEN as u64 {
        return Err(bad(
            "bitmap_directory_size",
            at + 8,
            size,
            &format!("must hold {count} entries and be at most {MAX_DIRECTORY_SIZE}"),
        ));
    }
    if offset % header.cluster_size() != 0 {
        return Err(bad(
            "bitmap_directory_offset",
            at + 16,
            offset,
            "must be cluster aligned",
        ));
    }
    let dir = read_vec(file, offset, size, "bitmap directory")?;
    let mut bitmaps = Vec::with_capacity(count as usize);
    let mut pos = 0usize;
    for _ in 0..count {
        let (bitmap, len) = entry(&dir, pos, offset, header)?;
        bitmaps.push(bitmap);
        pos += len;
    }
    Ok(bitmaps)
}

/// Parses the directory entry at `pos` of `dir` (read from file offset `base`); returns it
/// and its padded length.
fn entry(dir: &[u8], pos: usize, base: u64, header: &Header) -> Result<(Bitmap, usize)> {
    let at = base + pos as u64;
    if pos + ENTRY_LEN > dir.len() {
        return Err(bad(
            "bitmap directory entry",
            at,
            pos,
            "starts past the end of the directory",
        ));
    }
    let table_offset = be64(dir, pos);
    let table_size = be32(dir, pos + 8);
    let flags = be32(dir, pos + 12);
    let kind = dir[pos + 16];
    let granularity_bits = u32::from(dir[pos + 17]);
    let name_size = be16(dir, pos + 18);
    let extra = be32(dir, pos + 20) as usize;
    let name_at = pos + ENTRY_LEN + extra;
    let end = name_at + name_size as usize;
    if end > dir.len() {
        return Err(bad(
            "bitmap name_size/extra_data_size",
            at + 18,
            format!("{name_size}/{extra}"),
            "overrun the bitmap directory",
        ));
    }
    let name = String::from_utf8_lossy(&dir[name_at..end]).into_owned();
    let field = |what: &str| format!("bitmap {name:?} {what}");
    if name_size == 0 || name_size > MAX_NAME {
        return Err(bad(
            &field("name_size"),
            at + 18,
            name_size,
            &format!("must be 1..={MAX_NAME}"),
        ));
    }
    if kind != TYPE_DIRTY_TRACKING {
        return Err(bad(
            &field("type"),
            at + 16,
            kind,
            "must be 1 (dirty tracking)",
        ));
    }
    if !(9..=31).contains(&granularity_bits) {
        return Err(bad(
            &field("granularity_bits"),
            at + 17,
            granularity_bits,
            "must be 9..=31",
        ));
    }
    if flags & !(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE) != 0 {
        return Err(bad(
            &field("flags"),
            at + 12,
            flags,
            "has reserved bits set",
        ));
    }
    if extra != 0 && flags & FLAG_EXTRA_DATA_COMPATIBLE == 0 {
        return Err(Error::unsupported(format!(
            "{} of {extra} bytes that this reader does not know",
            field("extra data")
        )));
    }
    if table_offset % header.cluster_size() != 0 {
        return Err(bad(
            &field("bitmap_table_offset"),
            at,
            table_offset,
            "must be cluster aligned",
        ));
    }
    let granularity = 1u64 << granularity_bits;
    let bits_per_cluster = header.cluster_size() * 8;
    let needed = header.size.div_ceil(granularity).div_ceil(bits_per_cluster);
    if u64::from(table_size) != needed {
        return Err(bad(
            &field("bitmap_table_size"),
            at + 8,
            table_size,
            &format!("must be {needed} for the image's size and granularity"),
        ));
    }
    let bitmap = Bitmap {
        name,
        granularity,
        in_use: flags & FLAG_IN_USE != 0,
        auto: flags & FLAG_AUTO != 0,
        table_offset,
        table_size,
    };
    Ok((bitmap, (end - pos).div_ceil(8) * 8))
}

/// The dirty ranges of `bitmap`, merged, within the image's size.
fn ranges(file: &ImageFile, header: &Header, bitmap: &Bitmap) -> Result<Vec<(u64, u64)>> {
    let what = format!("bitmap {:?} table", bitmap.name);
    let table = read_vec(
        file,
        bitmap.table_offset,
        u64::from(bitmap.table_size) * 8,
        &what,
    )?;
    let cluster = header.cluster_size();
    let span = cluster * 8 * bitmap.granularity;
    let mut out = Ranges::new(header.size);
    for (i, raw) in table.chunks_exact(8).enumerate() {
        let entry = be64(raw, 0);
        let start = i as u64 * span;
        let at = bitmap.table_offset + i as u64 * 8;
        if entry & !(TABLE_OFFSET_MASK | 1) != 0 {
            return Err(bad(
                &format!("{what} entry {i}"),
                at,
                entry,
                "has reserved bits set",
            ));
        }
        let offset = entry & TABLE_OFFSET_MASK;
        match (offset, entry & 1) {
            (0, 0) => {}
            (0, _) => out.add(start, start + span),
            (_, 1) => {
                return Err(bad(
                    &format!("{what} entry {i}"),
                    at,
                    entry,
                    "has bit 0 set with an offset",
                ))
            }
            (offset, _) => {
                let bits = read_vec(file, offset, cluster, &format!("{what} entry {i} data"))?;
                for (byte_index, &byte) in bits.iter().enumerate() {
                    if byte == 0 {
                        continue;
                    }
                    for bit in 0..8 {
                        if byte & (1 << bit) != 0 {
                            let s = start + (byte_index as u64 * 8 + bit) * bitmap.granularity;
                            out.add(s, s + bitmap.granularity);
                        }
                    }
                }
            }
        }
    }
    Ok(out.done())
}

/// Sorted ranges built in increasing order, merged as they come, cut at `limit`.
struct Ranges {
    limit: u64,
    list: Vec<(u64, u64)>,
}

impl Ranges {
    fn new(limit: u64) -> Self {
        Ranges {
            limit,
            list: Vec::new(),
        }
    }

    fn add(&mut self, start: u64, end: u64) {
        let end = end.min(self.limit);
        if start >= end {
            return;
        }
        match self.list.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.list.push((start, end)),
        }
    }

    fn done(self) -> Vec<(u64, u64)> {
        self.list
    }
}

/// A corrupt-bitmap error naming `field`, its `value` and the `rule` it breaks.
fn bad(field: &str, at: u64, value: impl std::fmt::Display, rule: &str) -> Error {
    Error::corrupt(format!("qcow2 {field} is {value}, {rule}")).at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_stop_at_the_image_end() {
        let mut r = Ranges::new(100);
        r.add(0, 10);
        r.add(10, 20);
        r.add(30, 40);
        r.add(90, 120);
        r.add(120, 130);
        assert_eq!(r.done(), [(0, 20), (30, 40), (90, 100)]);
    }
}
