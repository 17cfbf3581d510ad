//! Container formats imgblk cannot decode, recognised by their signatures so that format
//! detection refuses them instead of serving the container file as a raw disk (which
//! would show the guest wrong bytes with no warning).
//!
//! Only formats whose first sectors or trailer say reliably what they are are listed.
//! A LUKS volume or an LVM physical volume at offset 0 is not here: that is a raw disk
//! holding a volume, which imgblk serves (`--luks`, the layout of `inspect`).

use super::common::bytes::be32;
use super::ImageFile;
use crate::error::Result;

/// QED (QEMU enhanced disk): "QED\0" at offset 0.
const QED_MAGIC: &[u8] = b"QED\0";
/// Parallels disk (`.hdd`), the two magics of its versions.
const PARALLELS_MAGICS: [&[u8]; 2] = [b"WithoutFreeSpace", b"WithouFreSpacExt"];
/// Bochs growing/undoable/volatile disk.
const BOCHS_MAGIC: &[u8] = b"Bochs Virtual HD Image\0";
/// A cloop (compressed loop) image starts with a shell script that loads the cloop
/// module; the version line follows the interpreter line.
const CLOOP_SCRIPT: &[u8] = b"#!/bin/sh\n#V";
/// The word every cloop script holds in its first 128 bytes.
const CLOOP_WORD: &[u8] = b"cloop";
/// Apple UDIF (DMG): a 512-byte trailer at the end that starts with "koly".
const UDIF_MAGIC: &[u8] = b"koly";
/// The trailer's size, which the trailer also records at byte 8 (big-endian).
const UDIF_TRAILER_BYTES: u64 = 512;

/// The name of the unreadable format `file` is in, judged from `head` (its first bytes)
/// and its trailer; `None` when it is none of them.
pub fn identify(head: &[u8], file: &ImageFile) -> Result<Option<&'static str>> {
    match identify_head(head) {
        Some(name) => Ok(Some(name)),
        None => Ok(is_udif(file)?.then_some("Apple DMG (UDIF)")),
    }
}

/// The name of the format whose magic a file's first bytes `head` start with, among
/// those [`identify`] knows by their start (all but DMG, known by its trailer).
pub fn identify_head(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(QED_MAGIC) {
        Some("QED")
    } else if PARALLELS_MAGICS.iter().any(|m| head.starts_with(m)) {
        Some("Parallels")
    } else if head.starts_with(BOCHS_MAGIC) {
        Some("Bochs")
    } else if head.starts_with(CLOOP_SCRIPT)
        && head[..head.len().min(128)]
            .windows(CLOOP_WORD.len())
            .any(|w| w == CLOOP_WORD)
    {
        Some("cloop")
    } else {
        None
    }
}

/// Whether `file` ends with a UDIF trailer: "koly" and the trailer's own size.
fn is_udif(file: &ImageFile) -> Result<bool> {
    let Some(at) = file.len().checked_sub(UDIF_TRAILER_BYTES) else {
        return Ok(false);
    };
    let mut trailer = [0u8; 12];
    file.read_exact_at(&mut trailer, at)?;
    Ok(trailer.starts_with(UDIF_MAGIC) && u64::from(be32(&trailer, 8)) == UDIF_TRAILER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, ImageFile) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = ImageFile::open(tmp.path(), false, false).unwrap();
        (tmp, file)
    }

    fn name_of(bytes: &[u8]) -> Option<&'static str> {
        let (_tmp, file) = file_with(bytes);
        identify(&bytes[..bytes.len().min(512)], &file).unwrap()
    }

    #[test]
    fn signatures_name_their_formats() {
        let mut cloop = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0\n".to_vec();
        cloop.resize(1024, 0);
        assert_eq!(name_of(&cloop), Some("cloop"));
        let mut dmg = vec![0u8; 2048];
        dmg[1536..1540].copy_from_slice(b"koly");
        dmg[1544..1548].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(name_of(&dmg), Some("Apple DMG (UDIF)"));
        let mut bochs = BOCHS_MAGIC.to_vec();
        bochs.resize(512, 0);
        assert_eq!(name_of(&bochs), Some("Bochs"));
    }

    #[test]
    fn near_misses_and_short_files_are_not_foreign() {
        // "koly" without the trailer size, a shell script that is not cloop, tiny files.
        let mut dmg = vec![0u8; 1024];
        dmg[512..516].copy_from_slice(b"koly");
        assert_eq!(name_of(&dmg), None);
        let mut script = b"#!/bin/sh\n#V1 echo hello\n".to_vec();
        script.resize(512, b' ');
        assert_eq!(name_of(&script), None);
        // Volumes imgblk serves from a raw disk: LUKS, and an LVM PV's label in sector 1.
        let mut luks = b"LUKS\xba\xbe\x00\x02".to_vec();
        luks.resize(4096, 0);
        assert_eq!(name_of(&luks), None);
        let mut pv = vec![0u8; 4096];
        pv[512..520].copy_from_slice(b"LABELONE");
        assert_eq!(name_of(&pv), None);
        assert_eq!(name_of(b"QE"), None);
        assert_eq!(name_of(b""), None);
    }
}
