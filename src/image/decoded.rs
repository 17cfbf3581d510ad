//! A bounded cache of decompressed clusters, one per image file that holds compressed
//! ones (qcow2 compressed clusters, streamOptimized VMDK grains).
//!
//! A guest that reads a compressed cluster in pieces (a file system reading 4 KiB
//! blocks from a 64 KiB cluster) would otherwise read and inflate the whole cluster once
//! per piece. Entries are keyed by where the stored bytes start in the file: imgblk never
//! writes compressed clusters, so those bytes only change after the cluster was freed,
//! and the qcow2 writer forgets the entry when it frees one ([`DecodedClusters::forget`]).

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::{Arc, OnceLock};

/// Bytes of decompressed clusters kept per file: 128 clusters of 64 KiB.
pub const DECODED_CACHE_BYTES: u64 = 8 << 20;

/// Weighs an entry by the bytes it holds, so the cache is bounded in memory.
#[derive(Clone, Copy)]
struct ByBytes;

impl Weighter<u64, Arc<[u8]>> for ByBytes {
    fn weight(&self, _offset: &u64, decoded: &Arc<[u8]>) -> u64 {
        decoded.len().max(1) as u64
    }
}

/// The decompressed clusters of one file, by the offset of their stored bytes; made on
/// first use, so files without compressed clusters cost nothing.
#[derive(Default)]
pub struct DecodedClusters {
    cache: OnceLock<Cache<u64, Arc<[u8]>, ByBytes>>,
}

impl DecodedClusters {
    fn cache(&self) -> &Cache<u64, Arc<[u8]>, ByBytes> {
        self.cache.get_or_init(|| {
            let clusters = (DECODED_CACHE_BYTES >> 16) as usize;
            Cache::with_weighter(clusters, DECODED_CACHE_BYTES, ByBytes)
        })
    }

    /// The decompressed cluster whose stored bytes start at `offset`, if cached.
    pub fn get(&self, offset: u64) -> Option<Arc<[u8]>> {
        self.cache.get()?.get(&offset)
    }

    /// Keeps `decoded`, the cluster whose stored bytes start at `offset`.
    pub fn insert(&self, offset: u64, decoded: Arc<[u8]>) {
        self.cache().insert(offset, decoded);
    }

    /// Forgets the cluster whose stored bytes start at `offset` (it was freed).
    pub fn forget(&self, offset: u64) {
        if let Some(cache) = self.cache.get() {
            cache.remove(&offset);
        }
    }
}

impl std::fmt::Debug for DecodedClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.cache.get().map_or(0, |c| c.len());
        write!(f, "DecodedClusters({cached} cached)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_clusters_until_forgotten_and_stays_within_its_bytes() {
        let clusters = DecodedClusters::default();
        assert!(clusters.get(0).is_none());
        let decoded: Arc<[u8]> = vec![7u8; 65536].into();
        clusters.insert(4096, decoded.clone());
        assert_eq!(clusters.get(4096).as_deref(), Some(&decoded[..]));
        clusters.forget(4096);
        assert!(clusters.get(4096).is_none());
        for i in 0..1000u64 {
            clusters.insert(i << 20, vec![1u8; 65536].into());
        }
        let held = clusters.cache().weight();
        assert!(held <= DECODED_CACHE_BYTES, "{held} bytes held");
        assert!(held >= DECODED_CACHE_BYTES / 2, "only {held} bytes held");
    }
}
