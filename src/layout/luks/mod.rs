//! LUKS1 and LUKS2 encrypted volumes, decrypted in process.
//!
//! [`LuksVolume::open`] reads the header ([`luks1`] or [`luks2`]), derives each key
//! slot's key from the passphrase ([`crypto`]: PBKDF2 or Argon2), decrypts and AF-merges
//! the slot's key material, and keeps the master key whose digest matches. The volume is
//! then a [`DiskImage`](crate::image::DiskImage) of its own whose extents are
//! `Source::Transformed`: every read decrypts the inner image's ciphertext per sector.
//! Every size and cost in a header is bounded before use, so a hostile header cannot
//! make us allocate without limit or spin for hours.

pub mod crypto;
mod keycache;
pub mod luks1;
pub mod luks2;
mod volume;

#[cfg(test)]
mod tests;

pub use volume::LuksVolume;

use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;
use crypto::Hash;
use std::sync::Arc;

/// The magic both LUKS versions start with.
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// The 512-byte sector LUKS counts offsets in.
pub const SECTOR: u64 = 512;
/// Largest key-file or passphrase accepted (cryptsetup's default key-file limit).
pub const MAX_KEY_LEN: usize = 8 << 20;

/// How a key slot turns the passphrase into its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC's hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
    },
    /// Argon2i or Argon2id.
    Argon2 {
        /// Argon2id rather than Argon2i.
        id: bool,
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
        /// Salt.
        salt: Vec<u8>,
    },
}

/// A key slot: where its encrypted, AF-split copy of the master key lives and how to
/// decrypt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyslot {
    /// Slot number.
    pub id: u32,
    /// Key derivation.
    pub kdf: Kdf,
    /// Length of the master key it holds.
    pub key_len: usize,
    /// AF stripes.
    pub stripes: u32,
    /// Hash of the AF diffuse function.
    pub af_hash: Hash,
    /// Byte offset of the key material on the device.
    pub area_offset: u64,
    /// Size of the key-material area.
    pub area_size: u64,
    /// Cipher of the key material (`aes-xts-plain64`).
    pub area_cipher: String,
    /// Key length of that cipher (the derived key's length).
    pub area_key_len: usize,
}

/// A master-key digest: PBKDF2 of the right key gives `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// The HMAC's hash.
    pub hash: Hash,
    /// Iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// Expected output.
    pub digest: Vec<u8>,
    /// Slots whose keys it checks.
    pub keyslots: Vec<u32>,
}

/// The encrypted data area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the first data sector.
    pub offset: u64,
    /// Size in bytes (whole sectors).
    pub size: u64,
    /// Added to the sector number (in 512-byte units) before making the IV.
    pub iv_tweak: u64,
    /// Cipher spec (`aes-xts-plain64`).
    pub cipher: String,
    /// Encryption sector size: 512 to 4096.
    pub sector_size: u32,
}

/// What a LUKS header says, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// 1 or 2.
    pub version: u16,
    /// The volume's UUID.
    pub uuid: String,
    /// Master key length.
    pub key_len: usize,
    /// Active key slots.
    pub keyslots: Vec<Keyslot>,
    /// Master-key digests.
    pub digests: Vec<Digest>,
    /// The data.
    pub segment: Segment,
}

/// Reads the LUKS header of `image`.
pub fn read_metadata(image: &dyn DiskImage) -> Result<Metadata> {
    let mut head = vec![0u8; luks1::PHDR_LEN];
    if image.virtual_size() < head.len() as u64 {
        return Err(Error::corrupt("device too small for a LUKS header"));
    }
    crate::image::io::read_at(image, &mut head, 0)?;
    if &head[..6] != MAGIC {
        return Err(Error::corrupt("no LUKS header (bad magic)"));
    }
    match u16::from_be_bytes([head[6], head[7]]) {
        1 => luks1::parse(&head, image.virtual_size()),
        2 => luks2::read(image),
        v => Err(Error::unsupported(format!("LUKS version {v}"))),
    }
}

/// The error for a key that opens no slot.
pub fn wrong_key() -> Error {
    Error::new(
        ErrorKind::Permission,
        "no key slot matches the passphrase/key file",
    )
}

/// Unlocks the LUKS volume of a discovered node (its content is `crypto_LUKS`), so that
/// [`discover`](crate::layout::discover) can look inside it.
pub fn unlock_node(node: &crate::layout::Node, key: &[u8]) -> Result<Arc<dyn DiskImage>> {
    if node.content.as_ref().map(|c| c.kind) != Some(crate::layout::ContentKind::Luks) {
        return Err(Error::invalid(format!(
            "{} is not a LUKS volume",
            node.name
        )));
    }
    Ok(Arc::new(LuksVolume::open(node.image()?, key)?))
}
