//! What MBR and GPT parsing both produce: a [`PartitionTable`] of [`Partition`]s in bytes,
//! checked against the disk's end and for overlaps the same way for both.

use serde::Serialize;

/// Most partitions one table may yield; the rest are dropped with a warning.
pub const MAX_PARTITIONS: usize = 256;

/// Which kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// DOS/MBR, with extended partitions.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// A partition table read from a disk.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// The logical sector size the table was found with (bytes).
    pub sector_size: u64,
    /// Disk identifier: GPT disk GUID, or the MBR disk signature as 8 hex digits.
    pub id: Option<String>,
    /// Partitions in table order (for MBR: primaries, then logicals in chain order).
    pub partitions: Vec<Partition>,
    /// Problems found while reading the table.
    pub warnings: Vec<String>,
}

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// The number Linux gives it (GPT: entry index + 1; MBR: 1-4 primary, 5+ logical).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type: MBR type byte as `0x83`, or the GPT type GUID.
    pub type_id: String,
    /// A readable name for the type, when known.
    pub type_name: Option<&'static str>,
    /// GPT partition name.
    pub name: Option<String>,
    /// PARTUUID as blkid shows it (GPT unique GUID, or `<disk signature>-<nn>` for MBR).
    pub uuid: Option<String>,
    /// MBR active flag.
    pub bootable: bool,
    /// An MBR extended partition: a container of logical partitions, not a volume.
    pub container: bool,
}

impl Partition {
    /// Byte offset one past the end.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// Drops partitions that start past the disk's end, truncates those that run past it, and
/// warns about overlapping ones (containers are exempt: they overlap their logicals).
pub fn check_partitions(parts: &mut Vec<Partition>, disk_size: u64, warnings: &mut Vec<String>) {
    parts.retain_mut(|p| {
        if p.start >= disk_size {
            warnings.push(format!(
                "partition {} starts at byte {}, beyond the end of the {disk_size}-byte disk; ignored",
                p.number, p.start
            ));
            return false;
        }
        if p.end() > disk_size {
            warnings.push(format!(
                "partition {} (bytes {}..{}) runs past the end of the {disk_size}-byte disk; truncated",
                p.number,
                p.start,
                p.end()
            ));
            p.size = disk_size - p.start;
        }
        true
    });
    let mut volumes: Vec<&Partition> = parts.iter().filter(|p| !p.container).collect();
    volumes.sort_by_key(|p| (p.start, p.number));
    let mut furthest: Option<&Partition> = None;
    for p in volumes {
        if let Some(f) = furthest {
            if p.start < f.end() {
                warnings.push(format!(
                    "partitions {} (bytes {}..{}) and {} (bytes {}..{}) overlap",
                    f.number,
                    f.start,
                    f.end(),
                    p.number,
                    p.start,
                    p.end()
                ));
            }
        }
        if furthest.is_none_or(|f| p.end() > f.end()) {
            furthest = Some(p);
        }
    }
}

/// A readable name for an MBR partition type byte.
pub fn mbr_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 => "Extended",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b | 0x0c => "W95 FAT32",
        0x0f => "W95 Extended (LBA)",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID autodetect",
        _ => return None,
    })
}

/// A readable name for a GPT partition type GUID (lowercase text form).
pub fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc" => "Linux LUKS",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::testutil::assert_warned;

    fn part(number: u32, start: u64, size: u64, container: bool) -> Partition {
        Partition {
            number,
            start,
            size,
            type_id: "0x83".into(),
            type_name: None,
            name: None,
            uuid: None,
            bootable: false,
            container,
        }
    }

    #[test]
    fn clamps_drops_and_reports_overlaps() {
        let mut parts = vec![
            part(1, 0, 100, false),
            part(2, 50, 100, false),
            part(3, 900, 200, false),
            part(4, 2000, 10, false),
            part(5, 0, 1000, true),
        ];
        let mut w = Vec::new();
        check_partitions(&mut parts, 1000, &mut w);
        assert_eq!(
            parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
        assert_eq!(parts[2].size, 100);
        assert_eq!(w.len(), 3, "{w:?}");
        assert_warned(&w, &["partitions 1", "overlap"]);
        assert_warned(&w, &["partition 3", "truncated"]);
        assert_warned(&w, &["partition 4", "ignored"]);
    }
}
