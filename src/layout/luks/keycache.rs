//! Master keys already derived in this process, so that opening the same LUKS volume
//! again with the same key (a command checks what it was asked for, then opens it for
//! real) does not run the key slot's KDF twice: with Argon2 that costs a second or more.

use super::Metadata;
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// A derived master key, found again by the hash of the key that opened it and the
/// volume's whole header (a changed header never matches).
struct Entry {
    fingerprint: Zeroizing<[u8; 32]>,
    meta: Metadata,
    master: Zeroizing<Vec<u8>>,
}

/// Few volumes are open at once; the oldest entry is dropped beyond this.
const CAPACITY: usize = 16;

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The master key that `key` opened for the volume of `meta` earlier in this process.
pub fn lookup(meta: &Metadata, key: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let fingerprint = fingerprint(meta, key);
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .iter()
        .find(|e| *e.fingerprint == *fingerprint && e.meta == *meta)
        .map(|e| e.master.clone())
}

/// Remembers that `key` opens the volume of `meta` with `master`.
pub fn store(meta: &Metadata, key: &[u8], master: &[u8]) {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CAPACITY {
        cache.remove(0);
    }
    cache.push(Entry {
        fingerprint: fingerprint(meta, key),
        meta: meta.clone(),
        master: Zeroizing::new(master.to_vec()),
    });
}

/// SHA-256 of the volume's UUID and the key: the key itself is not kept.
fn fingerprint(meta: &Metadata, key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update((meta.uuid.len() as u64).to_le_bytes());
    hash.update(meta.uuid.as_bytes());
    hash.update(key);
    Zeroizing::new(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::luks::Segment;

    fn meta(uuid: &str) -> Metadata {
        Metadata {
            version: 2,
            uuid: uuid.into(),
            key_len: 64,
            keyslots: Vec::new(),
            digests: Vec::new(),
            segment: Segment {
                offset: 16 << 20,
                size: 1 << 20,
                iv_tweak: 0,
                cipher: "aes-xts-plain64".into(),
                sector_size: 512,
            },
        }
    }

    #[test]
    fn a_master_key_is_found_only_with_the_same_key_and_header() {
        let volume = meta("3f1c-keycache-test");
        store(&volume, b"right", &[7; 64]);
        assert_eq!(lookup(&volume, b"right").as_deref(), Some(&vec![7; 64]));
        assert!(lookup(&volume, b"wrong").is_none());
        assert!(lookup(&meta("other-volume"), b"right").is_none());
        let mut resized = volume.clone();
        resized.segment.size += 512;
        assert!(lookup(&resized, b"right").is_none());
    }
}
