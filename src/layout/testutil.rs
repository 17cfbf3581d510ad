//! Builders of hand-made disk bytes for the layout tests.

use crate::image::{raw::RawImage, DiskImage, ImageFile};
use crate::layout::util::crc32;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A raw image holding `bytes`, kept alive by the returned temp file.
pub fn mem_image(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<dyn DiskImage>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let img = RawImage::new(ImageFile::open(tmp.path(), false, false).unwrap());
    (tmp, Arc::new(img))
}

/// Writes entry `i` of the MBR/EBR at 512-byte `sector` of `disk`, and its signature.
pub fn put_entry(disk: &mut [u8], sector: u64, i: usize, kind: u8, lba: u32, sectors: u32) {
    let at = sector as usize * 512 + 446 + 16 * i;
    disk[at + 4] = kind;
    disk[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
    disk[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
    let sig = sector as usize * 512 + 510;
    disk[sig..sig + 2].copy_from_slice(&[0x55, 0xaa]);
}

/// A GPT partition for [`gpt_disk`].
pub struct GptPart {
    /// First LBA.
    pub first: u64,
    /// Last LBA (inclusive).
    pub last: u64,
    /// Type GUID in text form.
    pub type_guid: &'static str,
    /// Name.
    pub name: &'static str,
}

/// A GUID in text form as GPT stores it (first three fields little-endian).
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// A disk of `lbas` sectors of `ss` bytes with a protective MBR and a primary and backup
/// GPT of 128 entries listing `parts`.
pub fn gpt_disk(ss: u64, lbas: u64, parts: &[GptPart]) -> Vec<u8> {
    let ssz = ss as usize;
    let mut disk = vec![0u8; ssz * lbas as usize];
    put_entry(
        &mut disk,
        0,
        0,
        0xee,
        1,
        (lbas - 1).min(u64::from(u32::MAX)) as u32,
    );
    let mut array = vec![0u8; 128 * 128];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut array[128 * i..128 * (i + 1)];
        e[0..16].copy_from_slice(&guid_bytes(p.type_guid));
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&p.last.to_le_bytes());
        for (j, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_lbas = (array.len() as u64).div_ceil(ss);
    let backup_array = lbas - 1 - array_lbas;
    let header = |my: u64, alt: u64, entries: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_lbas).to_le_bytes());
        h[48..56].copy_from_slice(&(backup_array - 1).to_le_bytes());
        h[56..72].copy_from_slice(&[0x42; 16]);
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let (last, two) = (lbas - 1, 2u64);
    for (my, alt, entries) in [(1, last, two), (last, 1, backup_array)] {
        let at = my as usize * ssz;
        disk[at..at + 92].copy_from_slice(&header(my, alt, entries));
        let at = entries as usize * ssz;
        disk[at..at + array.len()].copy_from_slice(&array);
    }
    disk
}

/// A sparse image file.
pub struct Disk(pub tempfile::NamedTempFile);

impl Disk {
    pub fn new(size: u64) -> Self {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(size).unwrap();
        Disk(tmp)
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let d = Disk::new(bytes.len() as u64);
        d.write(0, bytes);
        d
    }

    pub fn write(&self, offset: u64, bytes: &[u8]) {
        self.0.as_file().write_all_at(bytes, offset).unwrap();
    }

    pub fn image(&self) -> Arc<dyn DiskImage> {
        Arc::new(RawImage::new(
            ImageFile::open(self.0.path(), false, false).unwrap(),
        ))
    }
}

/// Asserts that one of `warnings` contains every string of `needles`.
#[track_caller]
pub fn assert_warned(warnings: &[String], needles: &[&str]) {
    assert!(
        warnings
            .iter()
            .any(|w| needles.iter().all(|n| w.contains(n))),
        "no warning mentions {needles:?}: {warnings:#?}"
    );
}
