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
//!
//! Offsets the write path would write, free or punch through are validated as QEMU does
//! (it marks the image corrupt): an L1 entry with reserved bits or an unaligned L2 table
//! offset refuses the writable open, and an L2 table holding a standard entry whose offset
//! is not cluster aligned fails the request that loads it, naming both entries and the
//! offset. (The refcount table is checked as it is loaded: [`super::refcount`].)

use super::entry::{self, L1_OFFSET_MASK, L1_RESERVED, L2_COMPRESSED, L2_OFFSET_MASK};
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
    /// log2 of the cluster size.
    cluster_bits: u32,
    /// log2 of the entries of an L2 table.
    l2_bits: u32,
}

impl MetadataGuard {
    /// Records the header cluster, the L1 and refcount tables, the refcount blocks
    /// (`refcount_blocks`) and the L2 tables (`l1`) of an image `file_len` bytes long. Two
    /// of them in one cluster is corruption that writing would make worse: an error. An
    /// empty table has no cluster (QEMU gives an image of size 0 `l1_table_offset` 0).
    /// An L1 entry with reserved bits set, or naming an unaligned L2 table, is an error too.
    pub fn new(
        header: &Header,
        l1: &[AtomicU64],
        refcount_blocks: impl Iterator<Item = u64>,
        file_len: u64,
    ) -> Result<MetadataGuard> {
        check_l1(header, l1)?;
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
            cluster_bits: header.cluster_bits,
            l2_bits: header.l2_bits(),
        })
    }

    /// Whether the cluster at host offset `host`, named by an entry read from the file,
    /// may be overwritten or freed: it is a cluster's start (an offset inside a cluster
    /// may be inside metadata), held no metadata and lay inside the file at open.
    pub fn may_overwrite(&self, host: u64) -> bool {
        host & ((1 << self.cluster_bits) - 1) == 0
            && host < self.end
            && self.clusters.binary_search(&host).is_err()
    }

    /// Checks `table`, the L2 table of L1 entry `l1_index` just read from `table_offset`
    /// in the file, and clears the COPIED bit of every standard entry whose cluster must
    /// not be overwritten; returns how many it cleared. A standard entry (zero flag or
    /// not) whose offset is not cluster aligned is a corrupt error naming both entries and
    /// the offset, as QEMU's "Data cluster offset ... unaligned": written through, it would
    /// overwrite whatever the cluster it falls in holds.
    pub fn disarm(&self, table: &mut L2Table, l1_index: usize, table_offset: u64) -> Result<usize> {
        let unaligned = |raw: u64| {
            raw & L2_COMPRESSED == 0 && raw & L2_OFFSET_MASK & ((1 << self.cluster_bits) - 1) != 0
        };
        if let Some((l2_index, raw)) = (0..table.len())
            .filter_map(|i| Some((i, table.get(i)?)))
            .find(|&(_, raw)| unaligned(raw))
        {
            let guest = ((l1_index as u64) << self.l2_bits | l2_index as u64) << self.cluster_bits;
            return Err(Error::corrupt(format!(
                "qcow2 L1 entry {l1_index}, L2 entry {l2_index} (guest offset {guest:#x}, L2 \
                 table at {table_offset:#x}) points at host offset {:#x}, which is not cluster \
                 aligned: writing through it would overwrite what that cluster holds (QEMU marks \
                 the image corrupt); repair it with `qemu-img check -r all`, or attach read-only",
                raw & L2_OFFSET_MASK
            ))
            .at(table_offset + 8 * l2_index as u64));
        }
        Ok(table.rewrite_entries(|raw| {
            let host = raw & L2_OFFSET_MASK;
            match raw & L2_COMPRESSED == 0 && host != 0 && !self.may_overwrite(host) {
                true => raw & !COPIED,
                false => raw,
            }
        }))
    }
}

/// Fails on the first entry of `l1` (the image's L1 table) with reserved bits set or an
/// L2 table offset that is not cluster aligned, naming the entry.
fn check_l1(header: &Header, l1: &[AtomicU64]) -> Result<()> {
    for (index, raw) in l1.iter().map(|e| e.load(Ordering::Relaxed)).enumerate() {
        let at = header.l1_table_offset + 8 * index as u64;
        if raw & L1_RESERVED != 0 {
            return Err(Error::corrupt(format!(
                "qcow2 L1 entry {index} ({raw:#018x}) has reserved bits set; writing would \
                 corrupt the image further (repair it with `qemu-img check -r all`, or attach \
                 read-only)"
            ))
            .at(at));
        }
        entry::decode_l1(raw, header.cluster_bits, index).map_err(|e| e.at(at))?;
    }
    Ok(())
}
