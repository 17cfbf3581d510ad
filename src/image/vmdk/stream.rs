//! streamOptimized extents written as a stream keep their grain directory offset in a
//! footer: a footer marker, a copy of the header with the real `gdOffset`, and an
//! end-of-stream marker (an all-zero sector).
//!
//! The footer is found the way QEMU finds it (the three sectors at the end; the footer
//! marker's `val` is not checked: VMware and FreeBSD's mkimg write 1, the footer's length
//! in sectors, as the Virtual Disk Format 5.0 specification says), and also when zero
//! sectors follow the end-of-stream marker, as in files padded to a block size by the
//! tools that copy them out of an OVA.

use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le32};
use crate::image::ImageFile;

/// Marker type of the footer.
const MARKER_FOOTER: u32 = 3;
/// Size of a compressed grain's marker (lba u64, size u32) before its data.
pub const GRAIN_MARKER_BYTES: u64 = 12;
/// Sector size of the stream.
const SECTOR: usize = 512;
/// The most zero bytes looked through at the end of the file (the end-of-stream marker
/// and any padding after it) for the footer: a bound on what a hostile file makes us read.
const MAX_ZERO_TAIL: usize = 1 << 20;

/// Reads the footer near the end of `file` and returns its header sector.
pub fn read_footer(file: &ImageFile) -> Result<Vec<u8>> {
    // Whole sectors only, as QEMU: a partial last sector is ignored.
    let end = file.len() / SECTOR as u64 * SECTOR as u64;
    let window = end.min((MAX_ZERO_TAIL + 2 * SECTOR) as u64);
    let start = end - window;
    let tail = bytes::read_vec(file, start, window, "streamOptimized footer")?;
    find_footer(&tail)
        .map(|at| tail[at..at + SECTOR].to_vec())
        .ok_or_else(|| {
            Error::corrupt(
                "header says the grain directory is at the end (GD_AT_END) but the file does \
                 not end with footer marker, footer and end-of-stream marker (followed by at \
                 most 1 MiB of zeroes)",
            )
            .at(start)
        })
}

/// Where in `tail` (the file's last sectors) the footer's header sector starts: the last
/// sector that is not all zero, after which at least one zero sector (the end-of-stream
/// marker) follows, holding the header magic, with a footer marker before it.
fn find_footer(tail: &[u8]) -> Option<usize> {
    let sectors = tail.len() / SECTOR;
    let last = (0..sectors)
        .rev()
        .find(|&s| tail[s * SECTOR..(s + 1) * SECTOR].iter().any(|&b| b != 0))?;
    let zero_sectors_after = sectors - 1 - last;
    if zero_sectors_after == 0 || last == 0 {
        return None;
    }
    let footer = &tail[last * SECTOR..(last + 1) * SECTOR];
    let marker = &tail[(last - 1) * SECTOR..last * SECTOR];
    let marker_ok = le32(marker, 8) == 0 && le32(marker, 12) == MARKER_FOOTER;
    (marker_ok && footer.starts_with(super::header::HOSTED_MAGIC)).then_some(last * SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Footer marker (with `val`), footer, end-of-stream marker and `padding` zero sectors.
    fn tail(val: u64, padding: usize) -> Vec<u8> {
        let mut t = vec![0u8; (3 + padding) * SECTOR];
        t[..8].copy_from_slice(&val.to_le_bytes());
        t[12..16].copy_from_slice(&MARKER_FOOTER.to_le_bytes());
        t[SECTOR..SECTOR + 4].copy_from_slice(super::super::header::HOSTED_MAGIC);
        t
    }

    #[test]
    fn footer_found_with_any_marker_value_and_padding() {
        assert_eq!(find_footer(&tail(0, 0)), Some(SECTOR));
        assert_eq!(find_footer(&tail(1, 0)), Some(SECTOR));
        let mut padded = vec![7u8; SECTOR];
        padded.extend(tail(1, 40));
        assert_eq!(find_footer(&padded), Some(2 * SECTOR));
    }

    #[test]
    fn footer_without_its_marker_or_end_of_stream_is_not_found() {
        let mut no_eos = tail(1, 0);
        no_eos.truncate(2 * SECTOR);
        assert_eq!(find_footer(&no_eos), None);
        let mut bad_marker = tail(1, 0);
        bad_marker[12] = 2;
        assert_eq!(find_footer(&bad_marker), None);
        let mut bad_eos = tail(1, 0);
        bad_eos[2 * SECTOR + 12] = 9;
        assert_eq!(find_footer(&bad_eos), None);
        assert_eq!(find_footer(&vec![0u8; 8 * SECTOR]), None);
        assert_eq!(find_footer(&tail(1, 0)[SECTOR..]), None);
    }
}
