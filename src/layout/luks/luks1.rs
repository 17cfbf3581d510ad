//! The LUKS1 header (`phdr`): cipher, master-key digest and 8 key slots, big-endian.

use super::{Digest, Kdf, Keyslot, Metadata, Segment, SECTOR};
use crate::error::{Error, Result};
use crate::layout::luks::crypto::{Hash, SectorCipher, MAX_STRIPES};

/// Size of the LUKS1 header proper.
pub const PHDR_LEN: usize = 592;
const SLOT_ENABLED: u32 = 0x00AC_71F3;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses a LUKS1 header from its first [`PHDR_LEN`] bytes, for a device of `size` bytes.
pub fn parse(b: &[u8], size: u64) -> Result<Metadata> {
    if b.len() < PHDR_LEN || &b[..6] != super::MAGIC {
        return Err(Error::corrupt("no LUKS1 header (bad magic)"));
    }
    let cipher = format!("{}-{}", text(&b[8..40]), text(&b[40..72]));
    let hash = Hash::parse(&text(&b[72..104]))?;
    let payload = u64::from(be32(b, 104)) * SECTOR;
    let key_len = be32(b, 108) as usize;
    SectorCipher::check_spec(&cipher, key_len)?;
    if payload == 0 || payload > size {
        return Err(Error::corrupt(format!(
            "LUKS1 payload offset {payload} lies outside the {size}-byte device"
        )));
    }
    let digest = Digest {
        hash,
        iterations: be32(b, 164),
        salt: b[132..164].to_vec(),
        digest: b[112..132].to_vec(),
        keyslots: (0..8).collect(),
    };
    let mut keyslots = Vec::new();
    for i in 0..8 {
        let s = &b[208 + 48 * i..256 + 48 * i];
        if be32(s, 0) != SLOT_ENABLED {
            continue;
        }
        let stripes = be32(s, 44);
        if stripes == 0 || stripes > MAX_STRIPES {
            return Err(Error::corrupt(format!(
                "LUKS1 key slot {i} has {stripes} AF stripes, must be 1..={MAX_STRIPES}"
            )));
        }
        let area_offset = u64::from(be32(s, 40)) * SECTOR;
        let area_size = (key_len as u64 * u64::from(stripes)).div_ceil(SECTOR) * SECTOR;
        keyslots.push(Keyslot {
            id: i as u32,
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations: be32(s, 4),
                salt: s[8..40].to_vec(),
            },
            key_len,
            stripes,
            af_hash: hash,
            area_offset,
            area_size,
            area_cipher: cipher.clone(),
            area_key_len: key_len,
        });
    }
    Ok(Metadata {
        version: 1,
        uuid: text(&b[168..208]),
        key_len,
        keyslots,
        digests: vec![digest],
        segment: Segment {
            offset: payload,
            size: size - payload,
            iv_tweak: 0,
            cipher,
            sector_size: SECTOR as u32,
        },
    })
}
