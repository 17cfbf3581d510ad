//! GUID partition tables: primary header at LBA 1 and backup at the disk's last LBA, both
//! with CRC-checked headers and entry arrays, on 512- and 4096-byte sector disks.
//!
//! The primary copy is used when it is sound; otherwise the backup, with a warning. A
//! corrupt or missing backup beside a sound primary is a warning too.

use super::table::{
    check_partitions, gpt_type_name, Partition, PartitionTable, TableKind, MAX_PARTITIONS,
};
use super::util::{crc32, field, guid_string, is_zero, read_vec, u32_le, u64_le, utf16_field};
use crate::error::{Error, Result};
use crate::image::DiskImage;

/// Sector sizes tried, in order.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];

/// Most entries a header may declare (a standard table has 128).
pub const MAX_ENTRIES: u32 = 16384;

/// Largest entry size accepted (the standard one is 128).
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// Largest entry array read (a standard one is 16 KiB).
pub const MAX_ARRAY: u64 = 4 << 20;

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// The fields of a GPT header that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// What was found at a header location.
enum Found {
    /// No "EFI PART" signature.
    Missing,
    /// A signature, but the header is unusable for the reason given.
    Bad(String),
    /// A header whose fields and CRC check out.
    Good(Header),
}

/// Reads and checks the header at `lba`.
fn read_header(image: &dyn DiskImage, ss: u64, lba: u64) -> Result<Found> {
    let disk_lbas = image.virtual_size() / ss;
    if lba >= disk_lbas {
        return Ok(Found::Bad(format!(
            "its LBA {lba} lies beyond the disk's last LBA {}",
            disk_lbas.saturating_sub(1)
        )));
    }
    let b = read_vec(image, lba * ss, ss, "GPT header")?;
    if b.get(..8) != Some(&SIGNATURE[..]) {
        return Ok(Found::Missing);
    }
    Ok(check_header(&b, ss, lba, disk_lbas).map_or_else(Found::Bad, Found::Good))
}

/// Checks a header sector read from `lba` on a disk of `disk_lbas` sectors of `ss` bytes.
fn check_header(
    b: &[u8],
    ss: u64,
    lba: u64,
    disk_lbas: u64,
) -> std::result::Result<Header, String> {
    let revision = u32_le(b, 8);
    if revision >> 16 != 1 {
        return Err(format!("field Revision is {revision:#010x}, expected 1.x"));
    }
    let size = u32_le(b, 12);
    if !(92..=ss).contains(&u64::from(size)) {
        return Err(format!("field HeaderSize is {size}, must be 92..={ss}"));
    }
    let mut copy = b.get(..size as usize).unwrap_or_default().to_vec();
    if let Some(crc) = copy.get_mut(16..20) {
        crc.fill(0);
    }
    let (stored, computed) = (u32_le(b, 16), crc32(&copy));
    if stored != computed {
        return Err(format!(
            "field HeaderCRC32 is {stored:#010x}, the header's CRC is {computed:#010x}"
        ));
    }
    let h = Header {
        my_lba: u64_le(b, 24),
        alternate_lba: u64_le(b, 32),
        first_usable: u64_le(b, 40),
        last_usable: u64_le(b, 48),
        disk_guid: field(b, 56),
        entries_lba: u64_le(b, 72),
        num_entries: u32_le(b, 80),
        entry_size: u32_le(b, 84),
        entries_crc: u32_le(b, 88),
    };
    if h.my_lba != lba {
        return Err(format!(
            "field MyLBA is {}, but the header is at LBA {lba}",
            h.my_lba
        ));
    }
    if h.entry_size < 128 || h.entry_size > MAX_ENTRY_SIZE || h.entry_size % 8 != 0 {
        return Err(format!(
            "field SizeOfPartitionEntry is {}, must be a multiple of 8 in 128..={MAX_ENTRY_SIZE}",
            h.entry_size
        ));
    }
    if h.num_entries > MAX_ENTRIES {
        return Err(format!(
            "field NumberOfPartitionEntries is {}, more than {MAX_ENTRIES}",
            h.num_entries
        ));
    }
    let array_bytes = u64::from(h.num_entries) * u64::from(h.entry_size);
    if array_bytes > MAX_ARRAY {
        return Err(format!(
            "the entry array ({} entries of {} bytes) is larger than {MAX_ARRAY} bytes",
            h.num_entries, h.entry_size
        ));
    }
    let array_lbas = array_bytes.div_ceil(ss);
    if h.entries_lba < 2
        || !matches!(h.entries_lba.checked_add(array_lbas), Some(end) if end <= disk_lbas)
    {
        return Err(format!(
            "field PartitionEntryLBA is {}: its {array_lbas}-sector array does not fit on the {disk_lbas}-sector disk",
            h.entries_lba
        ));
    }
    if h.first_usable > h.last_usable.saturating_add(1) {
        return Err(format!(
            "field FirstUsableLBA ({}) lies after LastUsableLBA ({})",
            h.first_usable, h.last_usable
        ));
    }
    Ok(h)
}

/// Reads the entry array of `h` and checks its CRC.
fn read_entries(
    image: &dyn DiskImage,
    ss: u64,
    h: &Header,
) -> Result<std::result::Result<Vec<u8>, String>> {
    let len = u64::from(h.num_entries) * u64::from(h.entry_size);
    let b = read_vec(image, h.entries_lba * ss, len, "GPT partition entry array")?;
    let computed = crc32(&b);
    Ok(if computed == h.entries_crc {
        Ok(b)
    } else {
        Err(format!(
            "field PartitionEntryArrayCRC32 is {:#010x}, the array's CRC is {computed:#010x}",
            h.entries_crc
        ))
    })
}

/// Looks for a GPT on `image`. `Ok(None)` when no GPT signature is found at either header
/// location for any sector size; an error when one is found but no usable copy exists.
pub fn find(image: &dyn DiskImage) -> Result<Option<PartitionTable>> {
    for ss in SECTOR_SIZES {
        let disk_lbas = image.virtual_size() / ss;
        if disk_lbas < 3 {
            continue;
        }
        let primary = read_header(image, ss, 1)?;
        let backup_lba = match &primary {
            Found::Good(h) if h.alternate_lba < disk_lbas => h.alternate_lba,
            _ => disk_lbas - 1,
        };
        let backup = read_header(image, ss, backup_lba)?;
        if matches!((&primary, &backup), (Found::Missing, Found::Missing)) {
            continue;
        }
        return assemble(image, ss, primary, (backup_lba, backup)).map(Some);
    }
    Ok(None)
}

/// Picks the copy to use and reads its partitions.
fn assemble(
    image: &dyn DiskImage,
    ss: u64,
    primary: Found,
    (backup_lba, backup): (u64, Found),
) -> Result<PartitionTable> {
    let mut warnings = Vec::new();
    let mut copies = Vec::new();
    for (name, lba, found) in [("primary", 1, primary), ("backup", backup_lba, backup)] {
        match found {
            Found::Good(h) => copies.push((name, h)),
            Found::Bad(why) => {
                warnings.push(format!("{name} GPT header at LBA {lba} is corrupt: {why}"))
            }
            Found::Missing => warnings.push(format!("{name} GPT header at LBA {lba} is missing")),
        }
    }
    if let [(_, p), (_, b)] = &copies[..] {
        if p.alternate_lba != b.my_lba
            || p.disk_guid != b.disk_guid
            || p.entries_crc != b.entries_crc
        {
            warnings.push(
                "primary and backup GPT headers disagree (AlternateLBA, DiskGUID or entry CRC)"
                    .into(),
            );
        }
    }
    let mut chosen = None;
    for (name, h) in copies {
        match read_entries(image, ss, &h)? {
            Ok(entries) => {
                if name == "backup" {
                    warnings.push(format!("using the backup GPT at LBA {}", h.my_lba));
                }
                chosen = Some((h, entries));
                break;
            }
            Err(why) => warnings.push(format!(
                "{name} GPT partition entry array is corrupt: {why}"
            )),
        }
    }
    let Some((h, entries)) = chosen else {
        return Err(Error::corrupt(format!(
            "no usable GPT: {}",
            warnings.join("; ")
        )));
    };
    let disk_lbas = image.virtual_size() / ss;
    if h.last_usable >= disk_lbas {
        warnings.push(format!(
            "GPT header field LastUsableLBA is {}, beyond the disk's last LBA {} (truncated image?)",
            h.last_usable,
            disk_lbas - 1
        ));
    }
    let mut table = PartitionTable {
        kind: TableKind::Gpt,
        sector_size: ss,
        id: Some(guid_string(&h.disk_guid)),
        partitions: Vec::new(),
        warnings,
    };
    parse_entries(&h, ss, &entries, &mut table);
    check_partitions(
        &mut table.partitions,
        image.virtual_size(),
        &mut table.warnings,
    );
    Ok(table)
}

/// Turns the used entries of the array into partitions.
fn parse_entries(h: &Header, ss: u64, entries: &[u8], table: &mut PartitionTable) {
    for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
        let type_guid: [u8; 16] = field(e, 0);
        if is_zero(&type_guid) {
            continue;
        }
        let number = i as u32 + 1;
        if table.partitions.len() >= MAX_PARTITIONS {
            table.warnings.push(format!(
                "more than {MAX_PARTITIONS} GPT partitions; entry {number} and later ignored"
            ));
            return;
        }
        let (first, last) = (u64_le(e, 32), u64_le(e, 40));
        if first > last {
            table.warnings.push(format!(
                "GPT partition {number}: StartingLBA {first} lies after EndingLBA {last}; ignored"
            ));
            continue;
        }
        if first < h.first_usable || last > h.last_usable {
            table.warnings.push(format!(
                "GPT partition {number} (LBA {first}..={last}) lies outside the usable LBAs {}..={}",
                h.first_usable, h.last_usable
            ));
        }
        let (Some(start), Some(size)) = (
            first.checked_mul(ss),
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(ss)),
        ) else {
            table.warnings.push(format!(
                "GPT partition {number}: LBA {first}..={last} is out of range; ignored"
            ));
            continue;
        };
        let type_id = guid_string(&type_guid);
        table.partitions.push(Partition {
            number,
            start,
            size,
            type_name: gpt_type_name(&type_id),
            type_id,
            name: utf16_field(super::util::slice(e, 56, 72)),
            uuid: Some(guid_string(&field(e, 16))),
            bootable: false,
            container: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::testutil::{assert_warned, gpt_disk, mem_image, GptPart};

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    fn parts() -> Vec<GptPart> {
        vec![
            GptPart {
                first: 34,
                last: 99,
                type_guid: LINUX,
                name: "one",
            },
            GptPart {
                first: 100,
                last: 199,
                type_guid: LINUX,
                name: "two",
            },
        ]
    }

    fn find_in(disk: &[u8]) -> Result<Option<PartitionTable>> {
        let (_t, img) = mem_image(disk);
        find(&*img)
    }

    #[test]
    fn reads_both_sector_sizes() {
        for ss in SECTOR_SIZES {
            let disk = gpt_disk(ss, 256, &parts());
            let t = find_in(&disk).unwrap().unwrap();
            assert_eq!(t.sector_size, ss);
            assert!(t.warnings.is_empty(), "{:?}", t.warnings);
            assert_eq!(t.partitions.len(), 2);
            assert_eq!(t.partitions[1].start, 100 * ss);
            assert_eq!(t.partitions[1].size, 100 * ss);
            assert_eq!(t.partitions[0].name.as_deref(), Some("one"));
            assert_eq!(t.partitions[0].type_name, Some("Linux filesystem"));
        }
    }

    #[test]
    fn bad_primary_crc_falls_back_to_backup() {
        let mut disk = gpt_disk(512, 256, &parts());
        disk[512 + 40] ^= 1; // FirstUsableLBA, so the header CRC no longer matches
        let t = find_in(&disk).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_warned(
            &t.warnings,
            &["primary GPT header at LBA 1 is corrupt", "HeaderCRC32"],
        );
        assert_warned(&t.warnings, &["using the backup"]);
    }

    #[test]
    fn bad_entry_crc_falls_back_to_backup_array() {
        let mut disk = gpt_disk(512, 256, &parts());
        disk[1024 + 56] ^= 1; // name of the primary array's first entry
        let t = find_in(&disk).unwrap().unwrap();
        assert_eq!(t.partitions[0].name.as_deref(), Some("one"));
        assert_warned(&t.warnings, &["PartitionEntryArrayCRC32"]);
    }

    #[test]
    fn missing_backup_is_a_warning() {
        let mut disk = gpt_disk(512, 256, &parts());
        let last = disk.len() - 512;
        disk[last..].fill(0);
        let t = find_in(&disk).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("backup GPT header at LBA 255 is missing"));
    }

    #[test]
    fn both_copies_bad_is_an_error() {
        let mut disk = gpt_disk(512, 256, &parts());
        disk[512 + 40] ^= 1;
        let last = disk.len() - 512;
        disk[last + 40] ^= 1;
        let e = find_in(&disk).unwrap_err();
        assert!(e.to_string().contains("no usable GPT"), "{e}");
        assert!(find_in(&vec![0u8; 4096 * 8]).unwrap().is_none());
    }

    #[test]
    fn absurd_headers_are_refused_without_allocating() {
        // Valid CRC but hostile fields: each must be refused, not trusted.
        for (off, value) in [
            (80usize, u64::from(u32::MAX)),
            (84, 1 << 20),
            (80, 16384), // 16384 entries of 128 bytes: 2 MiB, more than the 256-sector disk
            (72, u64::MAX / 2),
            (24, 7),
        ] {
            let mut disk = gpt_disk(512, 256, &parts());
            let hdr = &mut disk[512..512 + 92];
            let width = if off == 72 || off == 24 { 8 } else { 4 };
            hdr[off..off + width].copy_from_slice(&value.to_le_bytes()[..width]);
            hdr[16..20].fill(0);
            let crc = crc32(hdr);
            hdr[16..20].copy_from_slice(&crc.to_le_bytes());
            let t = find_in(&disk).unwrap().unwrap();
            assert_warned(&t.warnings, &["using the backup"]);
        }
    }

    #[test]
    fn overlapping_and_inverted_entries_warn() {
        let mut p = parts();
        p.push(GptPart {
            first: 150,
            last: 160,
            type_guid: LINUX,
            name: "overlap",
        });
        p.push(GptPart {
            first: 180,
            last: 170,
            type_guid: LINUX,
            name: "inverted",
        });
        p.push(GptPart {
            first: 200,
            last: 1000,
            type_guid: LINUX,
            name: "past end",
        });
        let t = find_in(&gpt_disk(512, 256, &p)).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 4);
        let w = t.warnings.join("\n");
        assert!(w.contains("overlap"), "{w}");
        assert!(w.contains("StartingLBA 180 lies after"), "{w}");
        assert!(w.contains("outside the usable"), "{w}");
        assert!(w.contains("truncated"), "{w}");
    }
}
