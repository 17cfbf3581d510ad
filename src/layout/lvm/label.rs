//! The on-disk structures of an LVM2 physical volume: the label in one of the first four
//! sectors, the PV header behind it, and the metadata areas with their `mda_header` and
//! circular buffer of metadata text (layout as in lvm2's `lib/format_text/layout.h`).

use crate::error::{Error, Result};
use crate::image::DiskImage;
use crate::layout::util::{lvm_crc, read_vec, slice, u32_le, u64_le, MAX_READ};
use serde::Serialize;

/// Sector size LVM's label and metadata offsets are counted in.
pub const SECTOR: u64 = 512;
/// How many sectors at the start of a device may hold the label.
pub const LABEL_SCAN_SECTORS: usize = 4;
/// Size of the `mda_header` at the start of each metadata area.
pub const MDA_HEADER_SIZE: u64 = 512;
/// Most data or metadata areas listed in a PV header (the sector holds at most a few).
const MAX_AREAS: usize = 16;
/// `raw_locn` flag: this metadata copy is to be ignored.
const RAW_LOCN_IGNORED: u32 = 1;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";

/// A byte range on the PV: a data area or a metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskArea {
    /// Byte offset from the start of the PV.
    pub offset: u64,
    /// Size in bytes (0 for a data area means "to the end of the device").
    pub size: u64,
}

/// The label and PV header of an LVM2 physical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PvLabel {
    /// Sector (0-3) holding the label.
    pub sector: u64,
    /// PV UUID in LVM's dashed form (6-4-4-4-4-4-6).
    pub uuid: String,
    /// Device size recorded by pvcreate, in bytes.
    pub device_size: u64,
    /// Data areas (normally one, starting at pe_start).
    pub data_areas: Vec<DiskArea>,
    /// Metadata areas (zero, one or two).
    pub metadata_areas: Vec<DiskArea>,
}

/// Puts the dashes into a 32-character LVM UUID; anything else is returned as it is.
pub fn dashed_uuid(raw: &str) -> String {
    if raw.len() != 32 || !raw.is_ascii() {
        return raw.to_string();
    }
    let cuts = [6, 10, 14, 18, 22, 26];
    let mut out = String::with_capacity(38);
    for (i, c) in raw.chars().enumerate() {
        if cuts.contains(&i) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// Finds and checks the LVM label in `head` (the device's first 2 KiB or more).
/// `Ok(None)` when there is none; an error when one is found but is corrupt.
pub fn find_label(head: &[u8]) -> Result<Option<PvLabel>> {
    for sector in 0..LABEL_SCAN_SECTORS {
        let b = slice(head, sector * SECTOR as usize, SECTOR as usize);
        if b.len() == SECTOR as usize && b.starts_with(b"LABELONE") {
            return parse_label(b, sector as u64).map(Some);
        }
    }
    Ok(None)
}

fn corrupt(sector: u64, message: String) -> Error {
    Error::corrupt(format!("LVM label in sector {sector}: {message}")).at(sector * SECTOR)
}

/// Parses the label sector `b` found at `sector`.
fn parse_label(b: &[u8], sector: u64) -> Result<PvLabel> {
    let recorded = u64_le(b, 8);
    if recorded != sector {
        return Err(corrupt(
            sector,
            format!("field sector_xl is {recorded}, expected {sector}"),
        ));
    }
    let (stored, computed) = (u32_le(b, 16), lvm_crc(&[slice(b, 20, 512)]));
    if stored != computed {
        return Err(corrupt(
            sector,
            format!("field crc_xl is {stored:#010x}, the sector's CRC is {computed:#010x}"),
        ));
    }
    if slice(b, 24, 8) != b"LVM2 001" {
        return Err(corrupt(
            sector,
            format!(
                "type is {:?}, expected \"LVM2 001\"",
                String::from_utf8_lossy(slice(b, 24, 8))
            ),
        ));
    }
    let off = u32_le(b, 20) as usize;
    if !(32..=SECTOR as usize - 40).contains(&off) {
        return Err(corrupt(
            sector,
            format!("field offset_xl is {off}, the PV header would not fit"),
        ));
    }
    let raw_uuid = slice(b, off, 32);
    if !raw_uuid.iter().all(|c| c.is_ascii_alphanumeric()) {
        return Err(corrupt(
            sector,
            "PV header field pv_uuid is not alphanumeric".into(),
        ));
    }
    let uuid = dashed_uuid(&String::from_utf8_lossy(raw_uuid));
    let device_size = u64_le(b, off + 32);
    let mut pos = off + 40;
    let mut lists = [Vec::new(), Vec::new()];
    for (which, list) in ["data", "metadata"].iter().zip(lists.iter_mut()) {
        loop {
            if pos + 16 > b.len() || list.len() > MAX_AREAS {
                return Err(corrupt(
                    sector,
                    format!("PV header {which} area list has no terminator"),
                ));
            }
            let area = DiskArea {
                offset: u64_le(b, pos),
                size: u64_le(b, pos + 8),
            };
            pos += 16;
            if area.offset == 0 {
                break;
            }
            list.push(area);
        }
    }
    let [data_areas, metadata_areas] = lists;
    Ok(PvLabel {
        sector,
        uuid,
        device_size,
        data_areas,
        metadata_areas,
    })
}

/// The metadata text of one metadata area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataCopy {
    /// Which area it came from.
    pub area: DiskArea,
    /// The text (trailing NULs removed).
    pub text: String,
}

/// Reads the current metadata text from each metadata area of the PV on `image`. Areas that
/// are corrupt are reported in the returned warnings; empty or ignored areas are skipped.
pub fn read_metadata(image: &dyn DiskImage, label: &PvLabel) -> (Vec<MetadataCopy>, Vec<String>) {
    let mut copies = Vec::new();
    let mut warnings = Vec::new();
    for area in &label.metadata_areas {
        match read_area(image, area) {
            Ok(Some(text)) => copies.push(MetadataCopy { area: *area, text }),
            Ok(None) => {}
            Err(e) => warnings.push(format!(
                "metadata area at byte {} of PV {}: {e}",
                area.offset, label.uuid
            )),
        }
    }
    (copies, warnings)
}

/// Reads the text in `area`, following the wrap at the end of the circular buffer.
fn read_area(image: &dyn DiskImage, area: &DiskArea) -> Result<Option<String>> {
    let h = read_vec(image, area.offset, MDA_HEADER_SIZE, "LVM mda_header")?;
    let bad = |m: String| Err(Error::corrupt(format!("mda_header {m}")).at(area.offset));
    let (stored, computed) = (u32_le(&h, 0), lvm_crc(&[slice(&h, 4, 508)]));
    if stored != computed {
        return bad(format!(
            "field checksum_xl is {stored:#010x}, the header's CRC is {computed:#010x}"
        ));
    }
    if slice(&h, 4, 16) != MDA_MAGIC {
        return bad("field magic is wrong".into());
    }
    let version = u32_le(&h, 20);
    if version != 1 {
        return bad(format!("field version is {version}, expected 1"));
    }
    let (start, size) = (u64_le(&h, 24), u64_le(&h, 32));
    if start != area.offset {
        return bad(format!(
            "field start is {start}, but the header is at byte {}",
            area.offset
        ));
    }
    if size <= MDA_HEADER_SIZE || size > area.size.max(MDA_HEADER_SIZE + 1) {
        return bad(format!(
            "field size is {size}, the PV header says the area is {} bytes",
            area.size
        ));
    }
    let disk = image.virtual_size();
    if !matches!(start.checked_add(size), Some(end) if end <= disk) {
        return bad(format!(
            "field size is {size}: the area lies beyond the end of the {disk}-byte device"
        ));
    }
    // raw_locns[0]: the committed metadata.
    let (offset, len, checksum, flags) = (
        u64_le(&h, 40),
        u64_le(&h, 48),
        u32_le(&h, 56),
        u32_le(&h, 60),
    );
    if offset == 0 || len == 0 || flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    let ring = size - MDA_HEADER_SIZE;
    if offset < MDA_HEADER_SIZE || offset >= size || len > ring || len > MAX_READ {
        return bad(format!(
            "raw_locn offset {offset} size {len} does not fit the {size}-byte metadata area (truncated metadata?)"
        ));
    }
    let first = len.min(size - offset);
    let wrap = len - first;
    let mut text = read_vec(image, start + offset, first, "LVM metadata text")?;
    text.extend(read_vec(
        image,
        start + MDA_HEADER_SIZE,
        wrap,
        "LVM metadata text (wrapped part)",
    )?);
    let computed = lvm_crc(&[&text]);
    if computed != checksum {
        return bad(format!(
            "raw_locn checksum is {checksum:#010x}, the {len}-byte metadata text's CRC is {computed:#010x}"
        ));
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// The label sector of a PV, for tests and fixtures: `uuid` (32 characters, no dashes),
/// `device_size` bytes, one data area at `pe_start` and the given metadata areas.
pub fn encode_label(uuid: &str, device_size: u64, pe_start: u64, mdas: &[DiskArea]) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    b[0..8].copy_from_slice(b"LABELONE");
    b[8..16].copy_from_slice(&1u64.to_le_bytes());
    b[20..24].copy_from_slice(&32u32.to_le_bytes());
    b[24..32].copy_from_slice(b"LVM2 001");
    b[32..64].copy_from_slice(uuid.as_bytes());
    b[64..72].copy_from_slice(&device_size.to_le_bytes());
    let mut pos = 72;
    let areas = [DiskArea {
        offset: pe_start,
        size: 0,
    }];
    for list in [&areas[..], mdas] {
        for a in list {
            b[pos..pos + 8].copy_from_slice(&a.offset.to_le_bytes());
            b[pos + 8..pos + 16].copy_from_slice(&a.size.to_le_bytes());
            pos += 16;
        }
        pos += 16; // terminator
    }
    b[pos..pos + 8].copy_from_slice(&[2, 0, 0, 0, 1, 0, 0, 0]); // extension v2, flags USED
    let crc = lvm_crc(&[&b[20..]]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The bytes of a metadata area of `size` bytes at byte `start` of the PV, holding `text`
/// at `offset` from the area's start (wrapping past its end like LVM's circular buffer).
/// For tests and fuzz seeds.
pub fn encode_area(start: u64, size: u64, offset: u64, text: &str) -> Vec<u8> {
    let mut area = vec![0u8; size as usize];
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    let len = body.len() as u64;
    let first = len.min(size - offset) as usize;
    area[offset as usize..offset as usize + first].copy_from_slice(&body[..first]);
    let rest = body.len() - first;
    area[512..512 + rest].copy_from_slice(&body[first..]);
    let h = &mut area[..512];
    h[4..20].copy_from_slice(MDA_MAGIC);
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&start.to_le_bytes());
    h[32..40].copy_from_slice(&size.to_le_bytes());
    h[40..48].copy_from_slice(&offset.to_le_bytes());
    h[48..56].copy_from_slice(&len.to_le_bytes());
    h[56..60].copy_from_slice(&lvm_crc(&[&body]).to_le_bytes());
    let crc = lvm_crc(&[&h[4..]]);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
    area
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::testutil::mem_image;

    const UUID: &str = "abcdefGHIJKLmnopqrstUVWXyz012345";
    const MDA: DiskArea = DiskArea {
        offset: 4096,
        size: 8192,
    };

    fn pv_bytes(text: &str, ring_offset: u64) -> Vec<u8> {
        let mut disk = vec![0u8; 16384];
        disk[512..1024].copy_from_slice(&encode_label(UUID, 16384, 12288, &[MDA]));
        disk[4096..12288].copy_from_slice(&encode_area(4096, 8192, ring_offset, text));
        disk
    }

    #[test]
    fn label_round_trip() {
        let disk = pv_bytes("vg {\n}\n", 512);
        let l = find_label(&disk).unwrap().unwrap();
        assert_eq!(l.sector, 1);
        assert_eq!(l.uuid, "abcdef-GHIJ-KLmn-opqr-stUV-WXyz-012345");
        assert_eq!(
            l.data_areas,
            vec![DiskArea {
                offset: 12288,
                size: 0
            }]
        );
        assert_eq!(l.metadata_areas, vec![MDA]);
    }

    #[test]
    fn bad_label_crc_and_fields_are_errors() {
        let mut disk = pv_bytes("", 512);
        disk[512 + 40] ^= 1;
        let e = find_label(&disk).unwrap_err().to_string();
        assert!(e.contains("crc_xl"), "{e}");
        let mut disk = pv_bytes("", 512);
        disk[512 + 8] = 3; // sector_xl
        assert!(find_label(&disk)
            .unwrap_err()
            .to_string()
            .contains("sector_xl"));
        assert_eq!(find_label(&disk[..600]).unwrap(), None, "truncated head");
    }

    #[test]
    fn wrapped_metadata_is_joined() {
        let text = "x".repeat(1000);
        let disk = pv_bytes(&text, 8192 - 300);
        let (_t, img) = mem_image(&disk);
        let l = find_label(&disk).unwrap().unwrap();
        let (copies, warnings) = read_metadata(&*img, &l);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(copies[0].text, text);
    }

    #[test]
    fn truncated_or_corrupt_metadata_warns() {
        let text = "vg0 { seqno = 1 }";
        // Text checksum wrong.
        let mut disk = pv_bytes(text, 512);
        disk[4096 + 512] ^= 1;
        // Image cut inside the metadata area.
        let cut = pv_bytes(text, 512)[..4096 + 600].to_vec();
        // raw_locn size larger than the ring.
        let mut huge = pv_bytes(text, 512);
        huge[4096 + 48..4096 + 56].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = lvm_crc(&[&huge[4096 + 4..4096 + 512]]);
        huge[4096..4100].copy_from_slice(&crc.to_le_bytes());
        for (name, bytes, expect) in [
            ("checksum", disk, "checksum"),
            ("cut", cut, "beyond the end"),
            ("huge", huge, "does not fit"),
        ] {
            let (_t, img) = mem_image(&bytes);
            let l = find_label(&bytes).unwrap().unwrap();
            let (copies, warnings) = read_metadata(&*img, &l);
            assert!(copies.is_empty(), "{name}");
            assert!(
                warnings.len() == 1 && warnings[0].contains(expect),
                "{name}: {warnings:?}"
            );
        }
    }
}
