//! What a volume holds, from its signature: file systems, swap, LVM PVs, LUKS, ISO 9660,
//! with label and UUID where they sit in the superblock (the names and formats follow
//! `blkid`, so `blkid -p -o export` on the same bytes shows the same values).

use super::lvm::label;
use super::util::{
    field, read_upto, read_vec, slice, text_field, u16_le, u32_le, u64_le, utf16_field, uuid_string,
};
use crate::error::Result;
use crate::image::DiskImage;
use serde::Serialize;

/// How much of the volume's start the probes look at: enough for btrfs's superblock at
/// 64 KiB and swap signatures on 64 KiB pages.
pub const HEAD_LEN: u64 = 0x10000 + 0x1000;

/// The kinds of content recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ContentKind {
    /// ext2.
    #[serde(rename = "ext2")]
    Ext2,
    /// ext3 (ext2 with a journal).
    #[serde(rename = "ext3")]
    Ext3,
    /// ext4 (features beyond ext3).
    #[serde(rename = "ext4")]
    Ext4,
    /// XFS.
    #[serde(rename = "xfs")]
    Xfs,
    /// Btrfs.
    #[serde(rename = "btrfs")]
    Btrfs,
    /// FAT12/16/32.
    #[serde(rename = "vfat")]
    Vfat,
    /// NTFS.
    #[serde(rename = "ntfs")]
    Ntfs,
    /// Linux swap.
    #[serde(rename = "swap")]
    Swap,
    /// An LVM2 physical volume.
    #[serde(rename = "LVM2_member")]
    Lvm2Member,
    /// A LUKS encrypted volume.
    #[serde(rename = "crypto_LUKS")]
    Luks,
    /// An ISO 9660 (CD/DVD) file system.
    #[serde(rename = "iso9660")]
    Iso9660,
}

impl ContentKind {
    /// The name `blkid` reports as TYPE.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Ext2 => "ext2",
            ContentKind::Ext3 => "ext3",
            ContentKind::Ext4 => "ext4",
            ContentKind::Xfs => "xfs",
            ContentKind::Btrfs => "btrfs",
            ContentKind::Vfat => "vfat",
            ContentKind::Ntfs => "ntfs",
            ContentKind::Swap => "swap",
            ContentKind::Lvm2Member => "LVM2_member",
            ContentKind::Luks => "crypto_LUKS",
            ContentKind::Iso9660 => "iso9660",
        }
    }
}

/// What a volume holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Content {
    /// The kind.
    pub kind: ContentKind,
    /// A version where the format has one (`FAT32`, `2` for LUKS2, `1.0` for ext).
    pub version: Option<String>,
    /// The label, if set.
    pub label: Option<String>,
    /// The UUID (or serial number) as blkid formats it.
    pub uuid: Option<String>,
}

impl Content {
    fn new(kind: ContentKind) -> Self {
        Content {
            kind,
            version: None,
            label: None,
            uuid: None,
        }
    }
}

/// Detects what `image` holds. `Ok(None)` for nothing recognised; an error only when
/// reading fails or a signature is found in a corrupt structure (a bad LVM label CRC).
pub fn probe(image: &dyn DiskImage) -> Result<Option<Content>> {
    let head = read_upto(image, 0, HEAD_LEN)?;
    probe_head(&head, image)
}

/// Detects the content from `head`, the volume's first bytes; `image` is used only for the
/// extra read of an NTFS volume label.
pub fn probe_head(head: &[u8], image: &dyn DiskImage) -> Result<Option<Content>> {
    if let Some(c) = luks(head) {
        return Ok(Some(c));
    }
    if let Some(pv) = label::find_label(head)? {
        let mut c = Content::new(ContentKind::Lvm2Member);
        c.version = Some("LVM2 001".into());
        c.uuid = Some(pv.uuid);
        return Ok(Some(c));
    }
    Ok(xfs(head)
        .or_else(|| btrfs(head))
        .or_else(|| ext(head))
        .or_else(|| swap(head))
        .or_else(|| iso9660(head))
        .or_else(|| ntfs(head, image))
        .or_else(|| vfat(head)))
}

fn uuid_at(b: &[u8], off: usize) -> Option<String> {
    let raw: [u8; 16] = field(b, off);
    (raw != [0; 16]).then(|| uuid_string(&raw))
}

fn luks(b: &[u8]) -> Option<Content> {
    if slice(b, 0, 6) != b"LUKS\xba\xbe" {
        return None;
    }
    let version = u16::from_be_bytes(field(b, 6));
    let mut c = Content::new(ContentKind::Luks);
    c.version = Some(version.to_string());
    c.uuid = text_field(slice(b, 168, 40));
    if version == 2 {
        c.label = text_field(slice(b, 24, 48));
    }
    Some(c)
}

fn xfs(b: &[u8]) -> Option<Content> {
    if slice(b, 0, 4) != b"XFSB" {
        return None;
    }
    let mut c = Content::new(ContentKind::Xfs);
    c.uuid = uuid_at(b, 32);
    c.label = text_field(slice(b, 108, 12));
    Some(c)
}

fn btrfs(b: &[u8]) -> Option<Content> {
    const SB: usize = 0x10000;
    if slice(b, SB + 0x40, 8) != b"_BHRfS_M" {
        return None;
    }
    let mut c = Content::new(ContentKind::Btrfs);
    c.uuid = uuid_at(b, SB + 0x20);
    c.label = text_field(slice(b, SB + 0x12b, 256));
    Some(c)
}

fn ext(b: &[u8]) -> Option<Content> {
    const SB: usize = 1024;
    if u16_le(b, SB + 0x38) != 0xef53 {
        return None;
    }
    const HAS_JOURNAL: u32 = 0x4;
    const JOURNAL_DEV: u32 = 0x8;
    // Features ext3 knows: filetype, recover, meta_bg / sparse_super, large_file, btree_dir.
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x10;
    const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;
    let compat = u32_le(b, SB + 0x5c);
    let incompat = u32_le(b, SB + 0x60);
    let ro_compat = u32_le(b, SB + 0x64);
    if incompat & JOURNAL_DEV != 0 {
        return None;
    }
    let kind = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        ContentKind::Ext4
    } else if compat & HAS_JOURNAL != 0 {
        ContentKind::Ext3
    } else {
        ContentKind::Ext2
    };
    let mut c = Content::new(kind);
    c.version = Some(format!("{}.{}", u32_le(b, SB + 0x4c), u16_le(b, SB + 0x3e)));
    c.uuid = uuid_at(b, SB + 0x68);
    c.label = text_field(slice(b, SB + 0x78, 16));
    Some(c)
}

fn swap(b: &[u8]) -> Option<Content> {
    for page in [4096usize, 8192, 16384, 32768, 65536] {
        let magic = slice(b, page - 10, 10);
        if magic == b"SWAP-SPACE" {
            let mut c = Content::new(ContentKind::Swap);
            c.version = Some("0".into());
            return Some(c);
        }
        if magic == b"SWAPSPACE2" {
            let mut c = Content::new(ContentKind::Swap);
            c.version = Some(u32_le(b, 1024).to_string());
            c.uuid = uuid_at(b, 1024 + 12);
            c.label = text_field(slice(b, 1024 + 28, 16));
            return Some(c);
        }
    }
    None
}

fn iso9660(b: &[u8]) -> Option<Content> {
    const PVD: usize = 0x8000;
    if slice(b, PVD, 6) != b"\x01CD001" {
        return None;
    }
    let mut c = Content::new(ContentKind::Iso9660);
    c.label = text_field(slice(b, PVD + 40, 32));
    // blkid makes a UUID of the modification date, else the creation date.
    let date = |off: usize| {
        let d = slice(b, PVD + off, 16);
        (d.len() == 16 && d.iter().all(u8::is_ascii_digit) && d.iter().any(|&x| x != b'0')).then(
            || {
                let s = String::from_utf8_lossy(d);
                format!(
                    "{}-{}-{}-{}-{}-{}-{}",
                    &s[0..4],
                    &s[4..6],
                    &s[6..8],
                    &s[8..10],
                    &s[10..12],
                    &s[12..14],
                    &s[14..16]
                )
            },
        )
    };
    c.uuid = date(830).or_else(|| date(813));
    Some(c)
}

fn ntfs(b: &[u8], image: &dyn DiskImage) -> Option<Content> {
    if slice(b, 3, 8) != b"NTFS    " {
        return None;
    }
    let mut c = Content::new(ContentKind::Ntfs);
    let serial = u64_le(b, 0x48);
    c.uuid = (serial != 0).then(|| format!("{serial:016X}"));
    c.label = ntfs_label(b, image);
    Some(c)
}

/// The volume name attribute of the `$Volume` MFT record (record 3).
fn ntfs_label(b: &[u8], image: &dyn DiskImage) -> Option<String> {
    let sector_size = u64::from(u16_le(b, 0x0b));
    let spc = b.get(0x0d).copied()?;
    let spc = if spc > 0x80 {
        1u64.checked_shl(256 - u32::from(spc))?
    } else {
        u64::from(spc)
    };
    let cluster = sector_size
        .checked_mul(spc)
        .filter(|&c| c > 0 && c <= 1 << 21)?;
    let per_record = b.get(0x40).copied()? as i8;
    let record = if per_record < 0 {
        1u64.checked_shl(u32::from(per_record.unsigned_abs()))?
    } else {
        cluster.checked_mul(per_record as u64)?
    };
    if !(512..=4096).contains(&record) || !sector_size.is_power_of_two() || sector_size < 256 {
        return None;
    }
    let at = u64_le(b, 0x30)
        .checked_mul(cluster)?
        .checked_add(3 * record)?;
    let mut rec = read_vec(image, at, record, "NTFS $Volume record").ok()?;
    if slice(&rec, 0, 4) != b"FILE" {
        return None;
    }
    apply_fixups(&mut rec, sector_size as usize)?;
    let mut pos = usize::from(u16_le(&rec, 0x14));
    for _ in 0..64 {
        let kind = u32_le(&rec, pos);
        let len = u32_le(&rec, pos + 4) as usize;
        if kind == 0xffff_ffff || len < 16 {
            return None;
        }
        let resident = rec.get(pos + 8) == Some(&0);
        if kind == 0x60 && resident {
            let value_len = u32_le(&rec, pos + 0x10) as usize;
            let value_off = usize::from(u16_le(&rec, pos + 0x14));
            return utf16_field(slice(&rec, pos.checked_add(value_off)?, value_len));
        }
        pos = pos.checked_add(len)?;
    }
    None
}

/// Restores the last two bytes of each sector of an MFT record from its update sequence.
fn apply_fixups(rec: &mut [u8], sector_size: usize) -> Option<()> {
    let usa_off = usize::from(u16_le(rec, 4));
    let usa_count = usize::from(u16_le(rec, 6));
    let check: [u8; 2] = field(rec, usa_off);
    for i in 1..usa_count {
        let end = (i * sector_size).checked_sub(2)?;
        let fix: [u8; 2] = field(rec, usa_off + 2 * i);
        let slot = rec.get_mut(end..end + 2)?;
        if slot != check {
            return None;
        }
        slot.copy_from_slice(&fix);
    }
    Some(())
}

fn vfat(b: &[u8]) -> Option<Content> {
    if slice(b, 510, 2) != [0x55, 0xaa] {
        return None;
    }
    let bytes_per_sector = u16_le(b, 11);
    let spc = *b.get(13)?;
    let fats = *b.get(16)?;
    let sane = bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && spc.is_power_of_two()
        && u16_le(b, 14) > 0
        && (1..=4).contains(&fats);
    if !sane {
        return None;
    }
    // FAT32 keeps its extended BPB at 64, FAT12/16 at 36.
    let (ebpb, version) = if slice(b, 82, 5) == b"FAT32" {
        (64, "FAT32".to_string())
    } else if slice(b, 54, 3) == b"FAT" {
        let kind = text_field(slice(b, 54, 8)).unwrap_or_default();
        (
            36,
            if kind == "FAT" {
                "FAT16".to_string()
            } else {
                kind
            },
        )
    } else {
        return None;
    };
    let mut c = Content::new(ContentKind::Vfat);
    c.version = Some(version);
    if b.get(ebpb + 2) == Some(&0x29) {
        let id = u32_le(b, ebpb + 3);
        c.uuid = Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff));
        c.label = text_field(slice(b, ebpb + 7, 11)).filter(|l| l != "NO NAME");
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::testutil::mem_image;

    fn probe_bytes(b: &[u8]) -> Option<Content> {
        let (_t, img) = mem_image(b);
        probe(&*img).unwrap()
    }

    #[test]
    fn ext4_superblock() {
        let mut b = vec![0u8; 8192];
        b[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        b[1024 + 0x4c] = 1;
        b[1024 + 0x60] = 0x40; // extents
        b[1024 + 0x68..1024 + 0x78].copy_from_slice(&[0x11; 16]);
        b[1024 + 0x78..1024 + 0x7d].copy_from_slice(b"rootf");
        let c = probe_bytes(&b).unwrap();
        assert_eq!(c.kind, ContentKind::Ext4);
        assert_eq!(c.label.as_deref(), Some("rootf"));
        assert_eq!(
            c.uuid.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
        assert_eq!(c.version.as_deref(), Some("1.0"));
    }

    #[test]
    fn nothing_and_tiny_volumes() {
        assert_eq!(probe_bytes(&[0u8; 100]), None);
        assert_eq!(probe_bytes(&[]), None);
        assert_eq!(probe_bytes(&vec![0u8; 1 << 20]), None);
    }

    #[test]
    fn hostile_ntfs_boot_sector_does_not_panic() {
        let mut b = vec![0u8; 70000];
        b[3..11].copy_from_slice(b"NTFS    ");
        for (spc, rec) in [(0xffu8, 0x80u8), (1, 0xff), (0x81, 0x01), (8, 0xf6)] {
            b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
            b[0x0d] = spc;
            b[0x30..0x38].copy_from_slice(&u64::MAX.to_le_bytes());
            b[0x40] = rec;
            let c = probe_bytes(&b).unwrap();
            assert_eq!(c.kind, ContentKind::Ntfs);
            assert_eq!(c.label, None);
        }
    }
}
