//! Keeping guest writes off the image's own metadata, as QEMU's `overlap-check` does.
//!
//! The write path overwrites a cluster in place when its L2 entry has the COPIED bit, and
//! frees the clusters of entries it drops. In a corrupt image such an entry may name a
//! cluster that holds metadata (the L1 table, say), or one past the end of the file,
//! where the allocator will place new clusters. A writable open therefore records which
//! clusters held metadata and where the file ended; every L2 table read from the file then
//! loses the COPIED bit of entries naming such a cluster (a write copies on write into a
//! new cluster instead), and no such cluster is ever freed. Tables whose host clusters
//! clash with other metadata make the writable open fail.

use super::entry::{L1_OFFSET_MASK, L2_COMPRESSED, L2_OFFSET_MASK};
use super::header::Header;
use super::l2cache::L2Table;
use super::write::COPIED;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The metadata clusters of a writable image when it was opened, and its end.
#[derive(Debug)]
pub struct MetadataGuard {
    /// Host offsets of the clusters holding metadata, sorted.
    clusters: Box<[u64]>,
    /// File length at open, rounded up to a cluster: new clusters are allocated from here.
    end: u64,
}

impl MetadataGuard {
    /// Records the header cluster, the L1 and refcount tables, the refcount blocks
    /// (`refcount_blocks`) and the L2 tables (`l1`) of an image `file_len` bytes long. Two
    /// of them in one cluster is corruption that writing would make worse: an error. An
    /// empty table has no cluster (QEMU gives an image of size 0 `l1_table_offset` 0).
    pub fn new(
        header: &Header,
        l1: &[AtomicU64],
        refcount_blocks: impl Iterator<Item = u64>,
        file_len: u64,
    ) -> Result<MetadataGuard> {
        let cluster = header.cluster_size();
        let span = |what: &'static str, offset: u64, bytes: u64| {
            let count = bytes.div_ceil(cluster);
            (0..count).map(move |i| (offset + i * cluster, what))
        };
        let mut owned: Vec<(u64, &'static str)> = span("the header", 0, 1)
            .chain(span(
                "the L1 table",
                header.l1_table_offset,
                8 * u64::from(header.l1_size),
            ))
            .chain(span(
                "the refcount table",
                header.refcount_table_offset,
                u64::from(header.refcount_table_clusters) * cluster,
            ))
            .chain(refcount_blocks.map(|offset| (offset, "a refcount block")))
            .chain(
                l1.iter()
                    .map(|e| e.load(Ordering::Relaxed) & L1_OFFSET_MASK)
                    .filter(|&offset| offset != 0)
                    .map(|offset| (offset, "an L2 table")),
            )
            .collect();
        owned.sort_unstable();
        if let Some(pair) = owned.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::corrupt(format!(
                "{} and {} share host cluster {:#x}; writing would corrupt the image further \
                 (repair it with `qemu-img check -r all`, or attach read-only)",
                pair[0].1, pair[1].1, pair[0].0
            )));
        }
        Ok(MetadataGuard {
            clusters: owned.into_iter().map(|(offset, _)| offset).collect(),
            end: file_len.div_ceil(cluster) * cluster,
        })
    }

    /// Whether the cluster at host offset `host`, named by an entry read from the file,
    /// may be overwritten or freed: it held no metadata and lay inside the file at open.
    pub fn may_overwrite(&self, host: u64) -> bool {
        host < self.end && self.clusters.binary_search(&host).is_err()
    }

    /// Clears the COPIED bit of every standard entry of `table` (just read from the file)
    /// whose cluster must not be overwritten; returns how many it cleared.
    pub fn disarm(&self, table: &mut L2Table) -> usize {
        table.rewrite_entries(|raw| {
            let host = raw & L2_OFFSET_MASK;
            match raw & L2_COMPRESSED == 0 && host != 0 && !self.may_overwrite(host) {
                true => raw & !COPIED,
                false => raw,
            }
        })
    }
}
