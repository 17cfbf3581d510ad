//! Reading fixed-layout on-disk structures without panics: integer fields at byte offsets,
//! checksums over a structure with its checksum field zeroed, tables that must fit in their
//! file, and the string encodings image formats store names in.

use crate::error::{Error, Result};
use crate::image::ImageFile;
use std::ops::Range;

/// The most entries any one table (grain directory, BAT, block map) may have: a bound on
/// what a hostile header can make us allocate (64 Mi entries).
pub const MAX_TABLE_ENTRIES: u64 = 64 << 20;

/// `N` bytes at `at` of `buf`; bytes past the end of `buf` read as zero.
pub fn field<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = at.checked_add(N).and_then(|end| buf.get(at..end)) {
        out.copy_from_slice(src);
    }
    out
}

/// Little-endian u16 at `at`.
pub fn le16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(field(buf, at))
}

/// Little-endian u32 at `at`.
pub fn le32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(field(buf, at))
}

/// Little-endian u64 at `at`.
pub fn le64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(field(buf, at))
}

/// Big-endian u16 at `at`.
pub fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(field(buf, at))
}

/// Big-endian u32 at `at`.
pub fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(field(buf, at))
}

/// Big-endian u64 at `at`.
pub fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(field(buf, at))
}

/// Checks a structure's checksum: `compute` runs over `buf` with the bytes of `field`
/// zeroed and must give `stored`. `what` names the structure in the error.
pub fn verify_checksum(
    buf: &[u8],
    field: Range<usize>,
    stored: u32,
    compute: impl Fn(&[u8]) -> u32,
    what: &str,
) -> Result<()> {
    let mut copy = buf.to_vec();
    if let Some(bytes) = copy.get_mut(field) {
        bytes.fill(0);
    }
    let computed = compute(&copy);
    if computed != stored {
        return Err(Error::corrupt(format!(
            "{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok(())
}

/// Checks that `count` table entries are at most `limit` (what the virtual size needs, and
/// never more than [`MAX_TABLE_ENTRIES`]) and returns the count as a `usize`.
pub fn bounded_count(count: u64, limit: u64, what: &str) -> Result<usize> {
    let limit = limit.min(MAX_TABLE_ENTRIES);
    if count > limit {
        return Err(Error::corrupt(format!(
            "{what} has {count} entries, more than the {limit} allowed"
        )));
    }
    usize::try_from(count).map_err(|_| Error::corrupt(format!("{what} has {count} entries")))
}

/// Checks that `len` bytes at `offset` lie inside `file`.
#[inline]
pub fn check_in_file(file: &ImageFile, offset: u64, len: u64, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file.len() => Ok(()),
        _ => Err(past_file_end(file, offset, len, what)),
    }
}

/// [`check_in_file`]'s error, out of the lookup hot path.
#[cold]
#[inline(never)]
fn past_file_end(file: &ImageFile, offset: u64, len: u64, what: &str) -> Error {
    Error::corrupt(format!(
        "{what} ({len} bytes at offset {offset:#x}) extends past the end of the file ({} bytes)",
        file.len()
    ))
    .at(offset)
    .with_path(file.path())
}

/// Reads `len` bytes at `offset` after checking they lie inside the file (so a hostile
/// length cannot make us allocate more than the file holds).
pub fn read_vec(file: &ImageFile, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    check_in_file(file, offset, len, what)?;
    let len = usize::try_from(len).map_err(|_| Error::corrupt(format!("{what} is too large")))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Decodes UTF-16 (little-endian when `little`), stopping at the first NUL.
pub fn utf16(bytes: &[u8], little: bool) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|p| {
            let pair = [p[0], p[1]];
            if little {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        })
        .take_while(|&u| u != 0);
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// Formats a GUID stored Microsoft-style (first three fields little-endian).
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(g, 0),
        le16(g, 4),
        le16(g, 6),
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Formats a UUID stored big-endian (RFC 4122 byte order).
pub fn uuid_string(g: &[u8; 16]) -> String {
    let hex: Vec<String> = g.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..].concat()
    )
}

/// Whether every byte is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_read_zero() {
        let buf = [1u8, 2, 3];
        assert_eq!(le16(&buf, 1), 0x0302);
        assert_eq!(le32(&buf, 1), 0);
        assert_eq!(be64(&buf, usize::MAX - 2), 0);
    }

    #[test]
    fn checksum_zeroes_its_field() {
        let buf = [1u8, 0xff, 0xff, 4];
        let sum = |b: &[u8]| b.iter().map(|&x| u32::from(x)).sum::<u32>();
        verify_checksum(&buf, 1..3, 5, sum, "test").unwrap();
        let err = verify_checksum(&buf, 1..3, 6, sum, "test header").unwrap_err();
        assert!(
            err.to_string().contains("test header checksum mismatch"),
            "{err}"
        );
    }

    #[test]
    fn counts_are_bounded() {
        assert_eq!(bounded_count(10, 10, "t").unwrap(), 10);
        assert!(bounded_count(11, 10, "t").is_err());
        assert!(bounded_count(MAX_TABLE_ENTRIES + 1, u64::MAX, "t").is_err());
    }

    #[test]
    fn ids_and_names() {
        let g = [
            0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
            0x4a, 0x08,
        ];
        assert_eq!(guid_string(&g), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(uuid_string(&g), "6677c22d-23f6-0042-9d64-115e9bfd4a08");
        assert_eq!(utf16(b"a\0b\0\0\0c\0", true), "ab");
        assert_eq!(utf16(b"\0a\0b", false), "ab");
    }
}
