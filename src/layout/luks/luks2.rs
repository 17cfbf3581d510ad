//! The LUKS2 header: a binary header (magic, sizes, checksum) and a JSON area listing key
//! slots, segments and digests.

use super::{Digest, Kdf, Keyslot, Metadata, Segment, SECTOR};
use crate::error::{Error, Result};
use crate::image::{io::read_at, DiskImage};
use crate::layout::luks::crypto::{Hash, SectorCipher, MAX_STRIPES};
use base64ct::Encoding;
use serde_json::Value;
use sha2::Digest as _;

/// Size of the binary header in front of the JSON area.
pub const BIN_LEN: u64 = 4096;
/// Largest header (binary + JSON) accepted: 4 MiB, LUKS2's own maximum.
pub const MAX_HDR: u64 = 4 << 20;
/// Where a secondary header may sit when the primary is damaged.
const SECONDARY: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const MAGIC2: &[u8; 6] = b"SKUL\xba\xbe";

/// Reads the LUKS2 metadata of `image`: the primary header, else a secondary copy.
pub fn read(image: &dyn DiskImage) -> Result<Metadata> {
    let size = image.virtual_size();
    let at = |offset| {
        let (uuid, json) = read_header(image, offset)?;
        Ok(Metadata {
            uuid,
            ..parse_json(&json, size)?
        })
    };
    at(0).or_else(|e| SECONDARY.iter().find_map(|&o| at(o).ok()).ok_or(e))
}

/// Reads and checks the binary header at `at`; returns the UUID and the JSON text.
fn read_header(image: &dyn DiskImage, at: u64) -> Result<(String, Vec<u8>)> {
    let size = image.virtual_size();
    if at + BIN_LEN > size {
        return Err(Error::corrupt("device too small for a LUKS2 header"));
    }
    let mut bin = vec![0u8; BIN_LEN as usize];
    read_at(image, &mut bin, at)?;
    let hdr_size = check_binary(&bin, at)?;
    if hdr_size > size - at {
        return Err(Error::corrupt(
            "LUKS2 header runs past the end of the device",
        ));
    }
    let mut all = vec![0u8; hdr_size as usize];
    read_at(image, &mut all, at)?;
    verify_checksum(&all)?;
    let json = &all[BIN_LEN as usize..];
    let end = json.iter().position(|&c| c == 0).unwrap_or(json.len());
    let uuid = &all[168..208];
    let uuid_end = uuid.iter().position(|&c| c == 0).unwrap_or(uuid.len());
    Ok((
        String::from_utf8_lossy(&uuid[..uuid_end]).into_owned(),
        json[..end].to_vec(),
    ))
}

/// Checks the binary header's magic, version and size; returns the header size.
pub fn check_binary(bin: &[u8], at: u64) -> Result<u64> {
    let magic = if at == 0 { super::MAGIC } else { MAGIC2 };
    if bin.len() < BIN_LEN as usize || &bin[..6] != magic {
        return Err(Error::corrupt("no LUKS2 header (bad magic)").at(at));
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Err(Error::unsupported(format!(
            "LUKS version {version} in a LUKS2 header"
        )));
    }
    let hdr_size = u64::from_be_bytes(bin[8..16].try_into().unwrap_or_default());
    let offset = u64::from_be_bytes(bin[256..264].try_into().unwrap_or_default());
    if !(0x4000..=MAX_HDR).contains(&hdr_size) || !hdr_size.is_power_of_two() || offset != at {
        return Err(Error::corrupt(format!(
            "LUKS2 header size {hdr_size} / offset {offset} invalid"
        ))
        .at(at));
    }
    let alg = &bin[72..104];
    if !alg.starts_with(b"sha256\0") {
        return Err(Error::unsupported(
            "LUKS2 header checksum other than sha256",
        ));
    }
    Ok(hdr_size)
}

fn verify_checksum(all: &[u8]) -> Result<()> {
    let mut h = sha2::Sha256::new();
    h.update(&all[..448]);
    h.update([0u8; 64]);
    h.update(&all[512..]);
    if h.finalize()[..] != all[448..480] {
        return Err(Error::corrupt("LUKS2 header checksum mismatch"));
    }
    Ok(())
}

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value> {
    v.get(key)
        .ok_or_else(|| Error::corrupt(format!("LUKS2 {what} lacks {key:?}")))
}

fn string<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    field(v, key, what)?
        .as_str()
        .ok_or_else(|| Error::corrupt(format!("LUKS2 {what} field {key:?} is not a string")))
}

/// A number stored either as a JSON number or as a decimal string (LUKS2 writes u64s so).
fn number(v: &Value, key: &str, what: &str) -> Result<u64> {
    let f = field(v, key, what)?;
    f.as_u64()
        .or_else(|| f.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| Error::corrupt(format!("LUKS2 {what} field {key:?} is not a number")))
}

fn number32(v: &Value, key: &str, what: &str) -> Result<u32> {
    u32::try_from(number(v, key, what)?)
        .map_err(|_| Error::corrupt(format!("LUKS2 {what} field {key:?} is too large")))
}

fn base64(v: &Value, key: &str, what: &str) -> Result<Vec<u8>> {
    let text = string(v, key, what)?;
    base64ct::Base64::decode_vec(text)
        .map_err(|_| Error::corrupt(format!("LUKS2 {what} field {key:?} is not base64")))
}

/// Parses the JSON area of a device of `size` bytes.
pub fn parse_json(json: &[u8], size: u64) -> Result<Metadata> {
    let root: Value = serde_json::from_slice(json)
        .map_err(|e| Error::corrupt(format!("LUKS2 JSON area: {e}")))?;
    let segment = parse_segment(&root, size)?;
    let mut keyslots = Vec::new();
    let mut key_len = 0;
    if let Some(map) = field(&root, "keyslots", "metadata")?.as_object() {
        for (id, ks) in map {
            let Ok(id) = id.parse::<u32>() else { continue };
            if ks.get("type").and_then(Value::as_str) != Some("luks2") {
                continue;
            }
            let slot = parse_keyslot(id, ks, size)?;
            key_len = slot.key_len;
            keyslots.push(slot);
        }
    }
    let mut digests = Vec::new();
    if let Some(map) = field(&root, "digests", "metadata")?.as_object() {
        for d in map.values() {
            if d.get("type").and_then(Value::as_str) != Some("pbkdf2") {
                continue;
            }
            let what = "digest";
            let ids = field(d, "keyslots", what)?
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
                .unwrap_or_default();
            digests.push(Digest {
                hash: Hash::parse(string(d, "hash", what)?)?,
                iterations: number32(d, "iterations", what)?,
                salt: base64(d, "salt", what)?,
                digest: base64(d, "digest", what)?,
                keyslots: ids,
            });
        }
    }
    Ok(Metadata {
        version: 2,
        uuid: String::new(),
        key_len,
        keyslots,
        digests,
        segment,
    })
}

fn parse_segment(root: &Value, size: u64) -> Result<Segment> {
    let segments = field(root, "segments", "metadata")?
        .as_object()
        .ok_or_else(|| Error::corrupt("LUKS2 segments is not an object"))?;
    let mut crypt = segments
        .iter()
        .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("crypt"));
    let (_, s) = crypt
        .next()
        .ok_or_else(|| Error::unsupported("LUKS2 volume without a crypt segment"))?;
    if segments.len() != 1 {
        return Err(Error::unsupported(
            "LUKS2 volume with several segments (reencryption in progress?)",
        ));
    }
    let what = "segment";
    let offset = number(s, "offset", what)?;
    let sector_size = number32(s, "sector_size", what)?;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) || offset % SECTOR != 0 || offset > size {
        return Err(Error::corrupt(format!(
            "LUKS2 segment offset {offset} / sector size {sector_size} invalid"
        )));
    }
    let len = match string(s, "size", what) {
        Ok("dynamic") => size - offset,
        _ => number(s, "size", what)?,
    };
    if len > size - offset || len % u64::from(sector_size) != 0 {
        return Err(Error::corrupt(format!(
            "LUKS2 segment of {len} bytes at {offset} does not fit the {size}-byte device"
        )));
    }
    Ok(Segment {
        offset,
        size: len - len % u64::from(sector_size),
        iv_tweak: number(s, "iv_tweak", what).unwrap_or(0),
        cipher: string(s, "encryption", what)?.to_string(),
        sector_size,
    })
}

fn parse_keyslot(id: u32, ks: &Value, size: u64) -> Result<Keyslot> {
    let what = "keyslot";
    let key_len = number(ks, "key_size", what)? as usize;
    let af = field(ks, "af", what)?;
    if string(af, "type", "af")? != "luks1" {
        return Err(Error::unsupported(
            "LUKS2 anti-forensic type other than luks1",
        ));
    }
    let stripes = number32(af, "stripes", "af")?;
    let area = field(ks, "area", what)?;
    if string(area, "type", "area")? != "raw" {
        return Err(Error::unsupported("LUKS2 key slot area other than raw"));
    }
    let area_offset = number(area, "offset", "area")?;
    let area_size = number(area, "size", "area")?;
    let area_cipher = string(area, "encryption", "area")?.to_string();
    let area_key_len = number(area, "key_size", "area")? as usize;
    if !(1..=MAX_STRIPES).contains(&stripes)
        || !(16..=128).contains(&key_len)
        || area_offset
            .checked_add(area_size)
            .is_none_or(|end| end > size)
        || (key_len as u64) * u64::from(stripes) > area_size
    {
        return Err(Error::corrupt(format!("LUKS2 key slot {id} is malformed")));
    }
    SectorCipher::check_spec(&area_cipher, area_key_len)?;
    let kdf = field(ks, "kdf", what)?;
    let salt = base64(kdf, "salt", "kdf")?;
    let kdf = match string(kdf, "type", "kdf")? {
        "pbkdf2" => Kdf::Pbkdf2 {
            hash: Hash::parse(string(kdf, "hash", "kdf")?)?,
            iterations: number32(kdf, "iterations", "kdf")?,
            salt,
        },
        t @ ("argon2i" | "argon2id") => Kdf::Argon2 {
            id: t == "argon2id",
            time: number32(kdf, "time", "kdf")?,
            memory_kib: number32(kdf, "memory", "kdf")?,
            lanes: number32(kdf, "cpus", "kdf")?,
            salt,
        },
        other => return Err(Error::unsupported(format!("LUKS2 kdf {other:?}"))),
    };
    Ok(Keyslot {
        id,
        kdf,
        key_len,
        stripes,
        af_hash: Hash::parse(string(af, "hash", "af")?)?,
        area_offset,
        area_size,
        area_cipher,
        area_key_len,
    })
}
