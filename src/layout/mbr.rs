//! DOS/MBR partition tables: four primary entries, extended partitions with their chains of
//! EBRs, and the protective MBR in front of a GPT.
//!
//! The walker is tolerant: a bad EBR ends its chain with a warning but keeps the partitions
//! found so far and the other extended partitions; a chain that loops or runs too long stops.

use super::table::{
    check_partitions, mbr_type_name, Partition, PartitionTable, TableKind, MAX_PARTITIONS,
};
use super::util::{read_vec, u32_le};
use crate::error::Result;
use crate::image::DiskImage;
use std::collections::HashSet;

/// MBR sectors are always 512 bytes here (4K-native MBR disks are not handled).
pub const SECTOR: u64 = 512;

/// The GPT protective partition type.
const PROTECTIVE: u8 = 0xee;

/// One 16-byte partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    boot: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

impl Entry {
    fn is_used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }

    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }
}

/// The four entries of an MBR or EBR sector.
fn entries(sector: &[u8]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let at = 446 + 16 * i;
        Entry {
            boot: sector.get(at).copied().unwrap_or(0),
            kind: sector.get(at + 4).copied().unwrap_or(0),
            lba: u32_le(sector, at + 8),
            sectors: u32_le(sector, at + 12),
        }
    })
}

fn has_signature(sector: &[u8]) -> bool {
    sector.get(510..512) == Some(&[0x55, 0xaa][..])
}

/// What sector 0 holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbrKind {
    /// No MBR: no 0x55AA signature, invalid boot flags, or no entries.
    None,
    /// A protective MBR for a GPT; `hybrid` when other entries sit beside the 0xEE one.
    Protective {
        /// Whether other partitions are listed too (a hybrid MBR).
        hybrid: bool,
    },
    /// An ordinary DOS partition table.
    Dos,
}

/// Classifies sector 0 (at least 512 bytes).
pub fn classify(sector0: &[u8]) -> MbrKind {
    if !has_signature(sector0) {
        return MbrKind::None;
    }
    let e = entries(sector0);
    if e.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return MbrKind::None;
    }
    let used = e.iter().filter(|e| e.kind != 0).count();
    if e.iter().any(|e| e.kind == PROTECTIVE) {
        MbrKind::Protective { hybrid: used > 1 }
    } else if e.iter().any(Entry::is_used) {
        MbrKind::Dos
    } else {
        MbrKind::None
    }
}

/// Reads the DOS partition table of `image`, whose first sector is `sector0`.
pub fn parse(image: &dyn DiskImage, sector0: &[u8]) -> Result<PartitionTable> {
    let disk_signature = u32_le(sector0, 440);
    let mut table = PartitionTable {
        kind: TableKind::Mbr,
        sector_size: SECTOR,
        id: (disk_signature != 0).then(|| format!("{disk_signature:08x}")),
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    let mut extended = Vec::new();
    for (i, e) in entries(sector0).iter().enumerate() {
        if !e.is_used() {
            continue;
        }
        let number = i as u32 + 1;
        table
            .partitions
            .push(partition(number, u64::from(e.lba), e, disk_signature));
        if e.is_extended() {
            extended.push((u64::from(e.lba), u64::from(e.sectors)));
        }
    }
    let mut next_number = 5;
    for (start, sectors) in extended {
        walk_chain(
            image,
            start,
            sectors,
            &mut next_number,
            disk_signature,
            &mut table,
        )?;
    }
    check_partitions(
        &mut table.partitions,
        image.virtual_size(),
        &mut table.warnings,
    );
    Ok(table)
}

/// Builds the byte-based partition for entry `e` starting at absolute sector `lba`.
fn partition(number: u32, lba: u64, e: &Entry, disk_signature: u32) -> Partition {
    Partition {
        number,
        start: lba * SECTOR,
        size: u64::from(e.sectors) * SECTOR,
        type_id: format!("0x{:02x}", e.kind),
        type_name: mbr_type_name(e.kind),
        name: None,
        uuid: (disk_signature != 0).then(|| format!("{disk_signature:08x}-{number:02x}")),
        bootable: e.boot == 0x80,
        container: e.is_extended(),
    }
}

/// Follows the EBR chain of the extended partition at sectors `ext_start..+ext_sectors`,
/// adding logical partitions numbered from `next_number`.
fn walk_chain(
    image: &dyn DiskImage,
    ext_start: u64,
    ext_sectors: u64,
    next_number: &mut u32,
    disk_signature: u32,
    table: &mut PartitionTable,
) -> Result<()> {
    let ext_end = ext_start + ext_sectors;
    let disk_sectors = image.virtual_size() / SECTOR;
    let mut visited = HashSet::new();
    let mut ebr = ext_start;
    loop {
        if table.partitions.len() >= MAX_PARTITIONS {
            table.warnings.push(format!(
                "more than {MAX_PARTITIONS} partitions; the extended chain is cut at the EBR at sector {ebr}"
            ));
            return Ok(());
        }
        if !visited.insert(ebr) {
            table.warnings.push(format!(
                "extended partition chain loops back to the EBR at sector {ebr}; stopped there"
            ));
            return Ok(());
        }
        if ebr < ext_start || ebr >= ext_end || ebr >= disk_sectors {
            table.warnings.push(format!(
                "EBR at sector {ebr} lies outside the extended partition (sectors {ext_start}..{ext_end}) or the disk; chain stopped"
            ));
            return Ok(());
        }
        let sector = match read_vec(image, ebr * SECTOR, SECTOR, "EBR") {
            Ok(s) => s,
            Err(e) => {
                table.warnings.push(format!(
                    "cannot read the EBR at sector {ebr}: {e}; chain stopped"
                ));
                return Ok(());
            }
        };
        if !has_signature(&sector) {
            table.warnings.push(format!(
                "EBR at sector {ebr} lacks the 0x55AA signature; chain stopped"
            ));
            return Ok(());
        }
        let [logical, next, ..] = entries(&sector);
        if logical.is_used() {
            let start = ebr + u64::from(logical.lba);
            let part = partition(*next_number, start, &logical, disk_signature);
            if part.end() > ext_end * SECTOR {
                table.warnings.push(format!(
                    "logical partition {} (sectors {start}..{}) extends outside its extended partition",
                    *next_number,
                    start + u64::from(logical.sectors)
                ));
            }
            table.partitions.push(Partition {
                container: false,
                ..part
            });
            *next_number += 1;
        }
        if !(next.is_used() && next.is_extended()) {
            return Ok(());
        }
        ebr = ext_start + u64::from(next.lba);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::testutil::{assert_warned, mem_image, put_entry};

    /// A zeroed disk of `size` bytes with the MBR/EBR entries `(sector, index, type, lba, sectors)`.
    fn disk_with(size: usize, entries: &[(u64, usize, u8, u32, u32)]) -> Vec<u8> {
        let mut disk = vec![0u8; size];
        for &(sector, i, kind, lba, sectors) in entries {
            put_entry(&mut disk, sector, i, kind, lba, sectors);
        }
        disk
    }

    fn parse_bytes(disk: &[u8]) -> PartitionTable {
        let (_t, img) = mem_image(disk);
        assert_eq!(classify(&disk[..512]), MbrKind::Dos);
        parse(&*img, &disk[..512]).unwrap()
    }

    fn numbers(t: &PartitionTable) -> Vec<(u32, u64, u64)> {
        t.partitions
            .iter()
            .map(|p| (p.number, p.start / 512, p.size / 512))
            .collect()
    }

    #[test]
    fn primary_extended_and_logicals() {
        let mut disk = disk_with(
            512 * 200,
            &[
                (0, 0, 0x83, 2, 20),
                (0, 1, 0x05, 30, 100),
                (30, 0, 0x83, 2, 10),  // logical 5 at 32
                (30, 1, 0x05, 20, 30), // next EBR at 50
                (50, 0, 0x82, 4, 20),  // logical 6 at 54
            ],
        );
        disk[440..444].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        let t = parse_bytes(&disk);
        assert_eq!(
            numbers(&t),
            vec![(1, 2, 20), (2, 30, 100), (5, 32, 10), (6, 54, 20)]
        );
        assert!(t.partitions[1].container);
        assert_eq!(t.partitions[3].uuid.as_deref(), Some("1234abcd-06"));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn looping_chain_stops_with_warning() {
        let disk = disk_with(
            512 * 200,
            &[
                (0, 0, 0x0f, 10, 100),
                (10, 0, 0x83, 1, 5),
                (10, 1, 0x05, 20, 10),
                (30, 0, 0x83, 1, 5),
                (30, 1, 0x05, 0, 10), // back to the first EBR
            ],
        );
        let t = parse_bytes(&disk);
        assert_eq!(numbers(&t), vec![(1, 10, 100), (5, 11, 5), (6, 31, 5)]);
        assert_warned(&t.warnings, &["loops"]);
    }

    #[test]
    fn self_loop_and_bad_ebr_keep_earlier_partitions() {
        let disk = disk_with(
            512 * 200,
            &[
                (0, 0, 0x05, 10, 100),
                (0, 1, 0x05, 150, 40),
                (10, 0, 0x83, 1, 5),
                (10, 1, 0x05, 50, 10), // EBR at 60 has no signature
                (150, 0, 0x83, 1, 5),
                (150, 1, 0x05, 0, 5), // points at itself
            ],
        );
        let t = parse_bytes(&disk);
        assert_eq!(
            numbers(&t),
            vec![(1, 10, 100), (2, 150, 40), (5, 11, 5), (6, 151, 5)]
        );
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("sector 60") && t.warnings[0].contains("signature"));
        assert!(t.warnings[1].contains("loops"));
    }

    #[test]
    fn overlap_and_past_end_are_warnings() {
        let disk = disk_with(
            512 * 100,
            &[
                (0, 0, 0x83, 2, 50),
                (0, 1, 0x83, 40, 10),
                (0, 2, 0x83, 90, u32::MAX),
                (0, 3, 0x83, u32::MAX, 1),
            ],
        );
        let t = parse_bytes(&disk);
        assert_eq!(numbers(&t), vec![(1, 2, 50), (2, 40, 10), (3, 90, 10)]);
        assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
    }

    #[test]
    fn long_chain_is_capped() {
        let sectors = 2 * MAX_PARTITIONS as u32 + 10;
        let mut disk = disk_with(512 * (sectors as usize + 2), &[(0, 0, 0x05, 1, sectors)]);
        for i in 0..(sectors / 2) {
            let ebr = 1 + 2 * i;
            put_entry(&mut disk, u64::from(ebr), 0, 0x83, 1, 1);
            put_entry(&mut disk, u64::from(ebr), 1, 0x05, 2 * (i + 1), 2);
        }
        let t = parse_bytes(&disk);
        assert_eq!(t.partitions.len(), MAX_PARTITIONS);
        assert_warned(&t.warnings, &["more than"]);
    }

    #[test]
    fn classify_tells_protective_hybrid_and_junk_apart() {
        let mut s = vec![0u8; 512];
        assert_eq!(classify(&s), MbrKind::None);
        put_entry(&mut s, 0, 0, 0xee, 1, 1000);
        assert_eq!(classify(&s), MbrKind::Protective { hybrid: false });
        put_entry(&mut s, 0, 1, 0x0c, 2048, 1000);
        assert_eq!(classify(&s), MbrKind::Protective { hybrid: true });
        s[446] = 0x12; // boot code, not a table
        assert_eq!(classify(&s), MbrKind::None);
    }
}
