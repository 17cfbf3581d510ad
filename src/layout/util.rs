//! Small helpers the parsers share: bounded reads through a [`DiskImage`], fixed-width
//! fields that never panic on short input, UUID formatting and the two CRC flavours.

use crate::error::{Error, Result};
use crate::image::{io, DiskImage};

/// The largest single metadata read any parser makes (LVM metadata text, a GPT entry array).
pub const MAX_READ: u64 = 16 << 20;

/// Reads `len` bytes at `offset`, which must lie inside the image; `what` names the
/// structure for the error message.
pub fn read_vec(image: &dyn DiskImage, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    if len > MAX_READ {
        return Err(Error::corrupt(format!(
            "{what} would be {len} bytes, more than the {MAX_READ}-byte limit"
        ))
        .at(offset));
    }
    let size = image.virtual_size();
    if !matches!(offset.checked_add(len), Some(end) if end <= size) {
        return Err(Error::corrupt(format!(
            "{what} ({len} bytes at byte {offset}) lies beyond the end of the {size}-byte disk"
        ))
        .at(offset));
    }
    let mut buf = vec![0u8; len as usize];
    io::read_at(image, &mut buf, offset)?;
    Ok(buf)
}

/// Reads up to `len` bytes at `offset`, fewer if the image ends first.
pub fn read_upto(image: &dyn DiskImage, offset: u64, len: u64) -> Result<Vec<u8>> {
    let avail = image.virtual_size().saturating_sub(offset).min(len);
    read_vec(image, offset, avail, "header")
}

/// The `N` bytes at `off`, or zeroes where `b` is too short.
pub fn field<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

/// Little-endian u16 at `off` (0 past the end).
pub fn u16_le(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(field(b, off))
}

/// Little-endian u32 at `off` (0 past the end).
pub fn u32_le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(field(b, off))
}

/// Little-endian u64 at `off` (0 past the end).
pub fn u64_le(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(field(b, off))
}

/// The bytes `off..off + len` of `b`, clipped to what exists.
pub fn slice(b: &[u8], off: usize, len: usize) -> &[u8] {
    let start = off.min(b.len());
    let end = off.saturating_add(len).min(b.len());
    &b[start..end]
}

/// A 16-byte UUID in the usual big-endian 8-4-4-4-12 lowercase form.
pub fn uuid_string(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A GUID as GPT stores it (first three fields little-endian), in lowercase text form.
pub fn guid_string(b: &[u8; 16]) -> String {
    let mut be = *b;
    be[0..4].reverse();
    be[4..6].reverse();
    be[6..8].reverse();
    uuid_string(&be)
}

/// Whether all bytes are zero.
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// A text field padded with NULs and/or spaces, as most superblocks store labels; `None`
/// when empty. Invalid UTF-8 is replaced rather than refused.
pub fn text_field(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]);
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

/// A UTF-16LE text field ending at the first NUL; `None` when empty.
pub fn utf16_field(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16_lossy(&units);
    (!s.is_empty()).then_some(s)
}

/// The standard CRC-32 (zlib, GPT).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// LVM2's CRC: the same polynomial, seeded with `0xf597a6cf`, without the final inversion.
pub fn lvm_crc(parts: &[&[u8]]) -> u32 {
    const INITIAL_CRC: u32 = 0xf597_a6cf;
    // crc32fast keeps its state inverted; seeding with !INITIAL and inverting the result
    // gives the raw register LVM reports.
    let mut h = crc32fast::Hasher::new_with_initial(!INITIAL_CRC);
    for p in parts {
        h.update(p);
    }
    !h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_read_as_zero() {
        let b = [1u8, 2, 3];
        assert_eq!(u16_le(&b, 1), 0x0302);
        assert_eq!(u32_le(&b, 1), 0);
        assert_eq!(u64_le(&b, usize::MAX), 0);
        assert_eq!(slice(&b, 2, 10), &[3]);
        assert_eq!(slice(&b, usize::MAX, 10), &[] as &[u8]);
    }

    #[test]
    fn guid_is_mixed_endian() {
        // The Linux filesystem type GUID as sgdisk writes it.
        let raw = [
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ];
        assert_eq!(guid_string(&raw), "0fc63daf-8483-4772-8e79-3d69d8477de4");
    }

    #[test]
    fn lvm_crc_matches_bitwise_reference() {
        // Bitwise reference of lib/misc/crc.c: reflected 0xedb88320, no final xor.
        fn reference(data: &[u8]) -> u32 {
            let mut crc = 0xf597_a6cfu32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            crc
        }
        let data = b"vg0 {\nid = \"x\"\n}\n";
        assert_eq!(lvm_crc(&[data]), reference(data));
        assert_eq!(lvm_crc(&[&data[..5], &data[5..]]), reference(data));
    }

    #[test]
    fn text_fields_trim_padding() {
        assert_eq!(text_field(b"NO NAME    "), Some("NO NAME".into()));
        assert_eq!(text_field(b"\0\0\0"), None);
        assert_eq!(
            utf16_field(&[b'h', 0, b'i', 0, 0, 0, b'x', 0]),
            Some("hi".into())
        );
    }
}
