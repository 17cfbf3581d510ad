//! streamOptimized extents written as a stream keep their grain directory offset in a
//! footer: the last three sectors are a footer marker, a copy of the header with the real
//! `gdOffset`, and an end-of-stream marker.

use crate::error::{Error, Result};
use crate::image::common::bytes::{self, le32, le64};
use crate::image::ImageFile;

/// Marker type of the footer.
const MARKER_FOOTER: u32 = 3;
/// Marker type of the end of the stream.
const MARKER_END_OF_STREAM: u32 = 0;
/// Size of a compressed grain's marker (lba u64, size u32) before its data.
pub const GRAIN_MARKER_BYTES: u64 = 12;

/// Reads the footer at the end of `file` and returns its header sector.
pub fn read_footer(file: &ImageFile) -> Result<Vec<u8>> {
    let at = file
        .len()
        .checked_sub(1536)
        .filter(|&at| at >= 512)
        .ok_or_else(|| Error::corrupt("streamOptimized extent is too short to hold a footer"))?;
    let tail = bytes::read_vec(file, at, 1536, "streamOptimized footer")?;
    let marker_ok = le64(&tail, 0) == 0 && le32(&tail, 8) == 0 && le32(&tail, 12) == MARKER_FOOTER;
    let eos_ok = le64(&tail, 1024) == 0
        && le32(&tail, 1032) == 0
        && le32(&tail, 1036) == MARKER_END_OF_STREAM;
    let header = tail.get(512..1024).unwrap_or_default();
    if !marker_ok || !eos_ok || !header.starts_with(super::header::HOSTED_MAGIC) {
        return Err(Error::corrupt(
            "header says the grain directory is at the end (GD_AT_END) but the file does not \
             end with footer marker, footer and end-of-stream marker",
        )
        .at(at));
    }
    Ok(header.to_vec())
}
