//! qcow2 refcounts for the write path: the refcount table and the refcount blocks touched
//! so far, kept in memory and written back by [`Refcounts::write_back`], plus a bump
//! allocator that hands out clusters from the end of the file.
//!
//! Every change is made in memory first. Nothing here reaches the file until the image's
//! flush calls `write_back`, which writes blocks before the table entries (or the new
//! table, then the header) that point at them, so that the on-disk refcount structure is
//! valid after every single `pwrite`.
//!
//! Clusters are never reused: the allocator only moves forwards from the (cluster
//! aligned) end of the file as it was at open time, skipping clusters whose refcount is
//! not zero. Freed clusters (see [`Refcounts::decrement`]) simply stay holes.

use crate::error::{Error, Result};
use crate::image::ImageFile;
use std::collections::{BTreeMap, BTreeSet};

/// Largest refcount table accepted (QEMU's own limit is 8 MiB).
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Header offset of `refcount_table_offset` (followed by `refcount_table_clusters`).
const HEADER_REFTABLE_OFFSET: u64 = 48;

/// One cached refcount block.
struct Block {
    data: Vec<u8>,
    dirty: bool,
}

/// The refcount structure of one image, as far as the write path has touched it.
pub struct Refcounts {
    cluster_bits: u32,
    refcount_order: u32,
    /// Host offsets of the refcount blocks (0 = none), in memory possibly longer than on
    /// disk when the table has been moved.
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    /// The table moved since the last write-back: write it whole and update the header.
    relocated: bool,
    /// Table entries changed since the last write-back.
    dirty_entries: BTreeSet<usize>,
    blocks: BTreeMap<usize, Block>,
    /// Next cluster index the allocator looks at.
    next: u64,
    /// Size of the file when opened: refcount blocks must lie inside it.
    file_len: u64,
}

impl Refcounts {
    /// Loads the refcount table of an image whose header says it lies at `table_offset`
    /// and spans `table_clusters` clusters.
    pub fn load(
        file: &ImageFile,
        cluster_bits: u32,
        refcount_order: u32,
        table_offset: u64,
        table_clusters: u32,
    ) -> Result<Refcounts> {
        let cs = 1u64 << cluster_bits;
        let bytes = u64::from(table_clusters) << cluster_bits;
        if bytes == 0
            || bytes > MAX_TABLE_BYTES
            || table_offset
                .checked_add(bytes)
                .is_none_or(|end| end > file.len())
        {
            return Err(Error::corrupt(format!(
                "qcow2 refcount table at {table_offset:#x} ({table_clusters} clusters) is empty, \
                 too large or lies past the end of the file"
            ))
            .with_path(file.path()));
        }
        let mut buf = vec![0u8; bytes as usize];
        file.read_exact_at(&mut buf, table_offset)?;
        let table: Vec<u64> = buf.chunks_exact(8).map(be64).collect();
        for (index, &entry) in table.iter().enumerate() {
            check_table_entry(index, entry, cs, file.len())
                .map_err(|e| e.at(table_offset + 8 * index as u64).with_path(file.path()))?;
        }
        Ok(Refcounts {
            cluster_bits,
            refcount_order,
            table,
            table_offset,
            table_clusters: u64::from(table_clusters),
            relocated: false,
            dirty_entries: BTreeSet::new(),
            blocks: BTreeMap::new(),
            next: file.len().div_ceil(cs),
            file_len: file.len(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the clusters one refcount block covers.
    fn block_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    /// Host offsets of the refcount blocks the table names.
    pub fn block_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.table.iter().copied().filter(|&offset| offset != 0)
    }

    /// Where the table is now (offset, clusters), as the header should say after the next
    /// write-back.
    pub fn table_location(&self) -> (u64, u64) {
        (self.table_offset, self.table_clusters)
    }

    /// The cached block `index`, loaded from the file if needed; `None` if the table has no
    /// block there.
    fn block(&mut self, file: &ImageFile, index: usize) -> Result<Option<&mut Block>> {
        let offset = self.table.get(index).copied().unwrap_or(0);
        if offset == 0 {
            return Ok(None);
        }
        if !self.blocks.contains_key(&index) {
            let cs = self.cluster_size();
            // Entries read from the file were checked by `load`; the allocator's blocks
            // stay cached. Checked again, as it is read and later written through.
            check_table_entry(index, offset, cs, self.file_len)
                .map_err(|e| e.with_path(file.path()))?;
            let mut data = vec![0u8; cs as usize];
            file.read_exact_at(&mut data, offset)?;
            self.blocks.insert(index, Block { data, dirty: false });
        }
        Ok(self.blocks.get_mut(&index))
    }

    /// The refcount of cluster `cluster` (an index, not an offset).
    pub fn get(&mut self, file: &ImageFile, cluster: u64) -> Result<u64> {
        let (index, entry) = self.split(cluster)?;
        let order = self.refcount_order;
        Ok(self
            .block(file, index)?
            .map_or(0, |b| read_entry(&b.data, order, entry)))
    }

    /// Sets the refcount of `cluster`, whose block must exist.
    pub fn set(&mut self, file: &ImageFile, cluster: u64, value: u64) -> Result<()> {
        let (index, entry) = self.split(cluster)?;
        let order = self.refcount_order;
        let block = self.block(file, index)?.ok_or_else(|| {
            Error::corrupt(format!("no refcount block for cluster {cluster}"))
                .with_path(file.path())
        })?;
        write_entry(&mut block.data, order, entry, value);
        block.dirty = true;
        Ok(())
    }

    /// Decrements the refcount of the cluster at host offset `offset`; true if that freed
    /// it (the count reached zero).
    pub fn decrement(&mut self, file: &ImageFile, offset: u64) -> Result<bool> {
        let cluster = offset >> self.cluster_bits;
        let value = self.get(file, cluster)?;
        if value > 0 {
            self.set(file, cluster, value - 1)?;
        }
        Ok(value == 1)
    }

    /// Block index and entry index inside it of `cluster`.
    fn split(&self, cluster: u64) -> Result<(usize, usize)> {
        let bits = self.block_bits();
        let index = usize::try_from(cluster >> bits)
            .map_err(|_| Error::invalid(format!("cluster {cluster} out of range")))?;
        Ok((index, (cluster & ((1u64 << bits) - 1)) as usize))
    }

    /// Allocates one cluster (refcount 0 → 1) and returns its host offset.
    pub fn alloc(&mut self, file: &ImageFile) -> Result<u64> {
        loop {
            let cluster = self.next;
            let (index, _) = self.split(cluster)?;
            if index >= self.table.len() {
                self.grow_table(file, index)?;
                continue;
            }
            self.next += 1;
            if self.table[index] == 0 {
                // A new block, stored in the first cluster it covers that we reach: itself.
                let mut data = vec![0u8; self.cluster_size() as usize];
                let (_, entry) = self.split(cluster)?;
                write_entry(&mut data, self.refcount_order, entry, 1);
                self.blocks.insert(index, Block { data, dirty: true });
                self.table[index] = cluster << self.cluster_bits;
                self.dirty_entries.insert(index);
                continue;
            }
            if self.get(file, cluster)? != 0 {
                continue;
            }
            self.set(file, cluster, 1)?;
            return Ok(cluster << self.cluster_bits);
        }
    }

    /// Makes the allocator skip every cluster below host offset `end`.
    pub fn reserve_below(&mut self, end: u64) {
        self.next = self.next.max(end.div_ceil(self.cluster_size()));
    }

    /// Marks the cluster at host offset `offset` allocated (refcount 1), as an earlier
    /// writer did whose changes a journal kept (see [`super::journal`]); the allocator
    /// must already skip it ([`Refcounts::reserve_below`]). A count of 1 is left alone
    /// (that writer's flush got that far); a higher one means the cluster is someone
    /// else's now.
    pub fn claim(&mut self, file: &ImageFile, offset: u64) -> Result<()> {
        let cluster = offset >> self.cluster_bits;
        let (index, _) = self.split(cluster)?;
        if index >= self.table.len() {
            self.grow_table(file, index)?;
        }
        while self.table.get(index) == Some(&0) {
            // A new block for this cluster's range, stored at the end of the file.
            let host = self.alloc(file)?;
            if self.table.get(index) == Some(&0) {
                let data = vec![0u8; self.cluster_size() as usize];
                self.blocks.insert(index, Block { data, dirty: true });
                self.table[index] = host;
                self.dirty_entries.insert(index);
            } else {
                self.set(file, host >> self.cluster_bits, 0)?; // alloc made one itself
            }
        }
        match self.get(file, cluster)? {
            0 => self.set(file, cluster, 1),
            1 => Ok(()),
            count => Err(Error::corrupt(format!(
                "cluster at {offset:#x}, allocated by imgblk's daemon before it died, now has \
                 refcount {count}: the image was changed by another program since"
            ))
            .with_path(file.path())),
        }
    }

    /// Allocates `n` contiguous clusters; returns the offset of the first.
    fn alloc_run(&mut self, file: &ImageFile, n: u64) -> Result<u64> {
        let cs = self.cluster_size();
        let mut run: Vec<u64> = Vec::new();
        while (run.len() as u64) < n {
            let c = self.alloc(file)?;
            if run.last().is_some_and(|&last| last + cs != c) {
                // A refcount block landed in the middle: give the run back, start again.
                for old in run.drain(..) {
                    self.set(file, old >> self.cluster_bits, 0)?;
                }
            }
            run.push(c);
        }
        Ok(run.first().copied().unwrap_or(0))
    }

    /// Moves the table to a bigger one, at the end of the file, with room for block
    /// `index`. The old table is freed by the caller once the header points at the new one
    /// ([`Refcounts::write_back`] returns it).
    fn grow_table(&mut self, file: &ImageFile, index: usize) -> Result<()> {
        let per_cluster = (self.cluster_size() / 8) as usize;
        let wanted = (self.table.len() * 2).max(index + 2);
        let entries = wanted.div_ceil(per_cluster) * per_cluster;
        let clusters = (entries / per_cluster) as u64;
        if clusters << self.cluster_bits > MAX_TABLE_BYTES {
            return Err(Error::unsupported(
                "qcow2 refcount table would outgrow 64 MiB",
            ));
        }
        self.table.resize(entries, 0);
        if self.relocated {
            // The current table was never on disk: nothing references it, free it now.
            for i in 0..self.table_clusters {
                self.set(file, (self.table_offset >> self.cluster_bits) + i, 0)?;
            }
        }
        let offset = self.alloc_run(file, clusters)?;
        self.table_offset = offset;
        self.table_clusters = clusters;
        self.relocated = true;
        Ok(())
    }

    /// Writes every change to the file, in an order that keeps the file consistent after
    /// any prefix of the writes: blocks, then table entries (or the new table, a sync and
    /// the header). Returns the clusters of tables that the header no longer points at,
    /// for the caller to free once that is durable.
    pub fn write_back(
        &mut self,
        file: &ImageFile,
        old_header_table: (u64, u64),
    ) -> Result<Vec<u64>> {
        for (&index, block) in self.blocks.iter_mut().filter(|(_, b)| b.dirty) {
            let offset = self.table.get(index).copied().unwrap_or(0);
            file.write_all_at(&block.data, offset)?;
            block.dirty = false;
        }
        let mut freed = Vec::new();
        if self.relocated {
            let bytes: Vec<u8> = self.table.iter().flat_map(|e| e.to_be_bytes()).collect();
            file.write_all_at(&bytes, self.table_offset)?;
            file.sync_data()?;
            let mut header = [0u8; 12];
            header[..8].copy_from_slice(&self.table_offset.to_be_bytes());
            header[8..].copy_from_slice(&(self.table_clusters as u32).to_be_bytes());
            file.write_all_at(&header, HEADER_REFTABLE_OFFSET)?;
            let (old, clusters) = old_header_table;
            freed.extend((0..clusters).map(|i| old + (i << self.cluster_bits)));
            self.relocated = false;
        } else if !self.dirty_entries.is_empty() {
            // New blocks must be on disk before the table names them: a table entry that
            // got there first would point at a block of zeroes, whose own count is 0.
            file.sync_data()?;
            for &index in &self.dirty_entries {
                let entry = self.table.get(index).copied().unwrap_or(0);
                file.write_all_at(&entry.to_be_bytes(), self.table_offset + 8 * index as u64)?;
            }
        }
        self.dirty_entries.clear();
        Ok(freed)
    }

    /// Whether anything awaits [`Refcounts::write_back`].
    pub fn is_dirty(&self) -> bool {
        self.relocated || !self.dirty_entries.is_empty() || self.blocks.values().any(|b| b.dirty)
    }
}

/// Bits 0..=8 of a refcount table entry: reserved, must be zero (QEMU masks them off with
/// `REFT_OFFSET_MASK`, and `qemu-img check` counts them as corruption).
const REFT_RESERVED: u64 = 0x1ff;

/// Checks refcount table entry `index`, `entry`, of an image with `cluster_size`-byte
/// clusters `file_len` bytes long: no reserved bits, and a refcount block offset (if any)
/// cluster aligned and inside the file. The write path writes the block back there.
fn check_table_entry(index: usize, entry: u64, cluster_size: u64, file_len: u64) -> Result<()> {
    let problem = if entry & REFT_RESERVED != 0 {
        "has reserved bits set"
    } else if entry % cluster_size != 0 {
        "names a refcount block offset that is not cluster aligned"
    } else if entry != 0 && entry.checked_add(cluster_size).is_none_or(|e| e > file_len) {
        "names a refcount block past the end of the file"
    } else {
        return Ok(());
    };
    Err(Error::corrupt(format!(
        "qcow2 refcount table entry {index} ({entry:#x}) {problem}; writing would corrupt the \
         image further (repair it with `qemu-img check -r all`, or attach read-only)"
    )))
}

fn be64(c: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(c);
    u64::from_be_bytes(b)
}

/// Entry `index` of a refcount block with `2^order`-bit entries (sub-byte entries are
/// packed least significant bits first, as QEMU does; wider ones are big-endian).
pub fn read_entry(data: &[u8], order: u32, index: usize) -> u64 {
    let bits = 1usize << order;
    if bits < 8 {
        let per_byte = 8 / bits;
        let byte = data.get(index / per_byte).copied().unwrap_or(0);
        return u64::from(byte >> ((index % per_byte) * bits)) & ((1 << bits) - 1);
    }
    let bytes = bits / 8;
    data.get(index * bytes..(index + 1) * bytes)
        .map_or(0, |b| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// Sets entry `index` of a refcount block (see [`read_entry`]); `value` is truncated to
/// the entry width.
pub fn write_entry(data: &mut [u8], order: u32, index: usize, value: u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let per_byte = 8 / bits;
        let shift = (index % per_byte) * bits;
        let mask = (((1u16 << bits) - 1) << shift) as u8;
        if let Some(byte) = data.get_mut(index / per_byte) {
            *byte = (*byte & !mask) | (((value as u8) << shift) & mask);
        }
        return;
    }
    let bytes = bits / 8;
    if let Some(slot) = data.get_mut(index * bytes..(index + 1) * bytes) {
        let be = value.to_be_bytes();
        slot.copy_from_slice(&be[8 - bytes..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 512;

    /// A hand-built image of 512-byte clusters with `order`-refcounts: header (cluster 0),
    /// refcount table (cluster 1), one refcount block (cluster 2) counting clusters 0..=2
    /// and `extra` (a cluster in use beyond the end of the file).
    fn image(order: u32, extra: u64) -> (tempfile::TempDir, ImageFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut data = vec![0u8; 3 * CS as usize];
        data[CS as usize..CS as usize + 8].copy_from_slice(&(2 * CS).to_be_bytes());
        let block = &mut data[2 * CS as usize..];
        for c in [0, 1, 2, extra] {
            write_entry(block, order, c as usize, 1);
        }
        std::fs::write(&path, &data).unwrap();
        let file = ImageFile::open(&path, true, false).unwrap();
        (dir, file)
    }

    #[test]
    fn load_refuses_corrupt_table_entries() {
        for (entry, problem) in [
            ((2 * CS) | 1, "entry 0 (0x401) has reserved bits set"),
            ((2 * CS) | 0x100, "reserved bits"),
            (3 * CS, "past the end of the file"),
        ] {
            let (_dir, file) = image(4, 0);
            file.write_all_at(&entry.to_be_bytes(), CS).unwrap();
            let err = Refcounts::load(&file, 9, 4, CS, 1).err().expect("loaded");
            let text = err.to_string();
            assert!(text.contains(problem), "{text}");
            assert_eq!(err.path(), Some(file.path()));
        }
        // With 1 KiB clusters, an offset without reserved bits may still be unaligned.
        let (_dir, file) = image(4, 0);
        file.write_all_at(&(3 * CS).to_be_bytes(), CS).unwrap();
        let err = Refcounts::load(&file, 10, 4, CS, 1).err().expect("loaded");
        assert!(err.to_string().contains("not cluster aligned"), "{err}");
    }

    #[test]
    fn entries_round_trip_at_every_width() {
        for order in 0..=6u32 {
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            let mut data = vec![0u8; 64];
            for i in 0..8 {
                write_entry(&mut data, order, i, max - (i as u64 % 2).min(max));
            }
            write_entry(&mut data, order, 3, 1);
            for i in 0..8 {
                let want = if i == 3 {
                    1
                } else {
                    max - (i as u64 % 2).min(max)
                };
                assert_eq!(read_entry(&data, order, i), want, "order {order} entry {i}");
            }
        }
        // QEMU packs sub-byte refcounts least significant bits first.
        let mut data = [0u8; 1];
        write_entry(&mut data, 1, 1, 3);
        assert_eq!(data[0], 0b0000_1100);
    }

    #[test]
    fn allocates_from_the_end_skipping_used_clusters() {
        let (_dir, file) = image(4, 4);
        let mut rc = Refcounts::load(&file, 9, 4, CS, 1).unwrap();
        assert_eq!(rc.alloc(&file).unwrap(), 3 * CS);
        assert_eq!(rc.alloc(&file).unwrap(), 5 * CS, "cluster 4 is in use");
        assert_eq!(rc.get(&file, 5).unwrap(), 1);
        rc.decrement(&file, 5 * CS).unwrap();
        assert_eq!(rc.get(&file, 5).unwrap(), 0);
        assert!(rc.is_dirty());
        rc.write_back(&file, (CS, 1)).unwrap();
        assert!(!rc.is_dirty());
        let mut block = vec![0u8; CS as usize];
        file.read_exact_at(&mut block, 2 * CS).unwrap();
        assert_eq!(read_entry(&block, 4, 3), 1);
        assert_eq!(read_entry(&block, 4, 5), 0);
    }

    #[test]
    fn new_blocks_describe_themselves_and_the_table_grows() {
        // 64-bit refcounts: 64 clusters per block, 64 blocks per table cluster.
        let (_dir, file) = image(6, 0);
        let mut rc = Refcounts::load(&file, 9, 6, CS, 1).unwrap();
        let mut last = 0;
        for _ in 0..64 * 64 {
            last = rc.alloc(&file).unwrap();
        }
        // Block 1 went into cluster 64, the first cluster it covers.
        assert_eq!(rc.table[1], 64 * CS);
        assert_eq!(rc.get(&file, 64).unwrap(), 1);
        let (table, clusters) = rc.table_location();
        assert_ne!(table, CS, "table did not move");
        assert!(clusters >= 2);
        assert!(last > table);
        let freed = rc.write_back(&file, (CS, 1)).unwrap();
        assert_eq!(freed, vec![CS]);
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header, HEADER_REFTABLE_OFFSET)
            .unwrap();
        assert_eq!(be64(&header[..8]), table);
        assert_eq!(
            u32::from_be_bytes(header[8..].try_into().unwrap()) as u64,
            clusters
        );
        // Every allocated cluster (and every table and block cluster) counts 1 on disk.
        let file = ImageFile::open(file.path(), false, false).unwrap();
        let mut on_disk = Refcounts::load(&file, 9, 6, table, clusters as u32).unwrap();
        for c in 0..=(last / CS) {
            // Cluster 1, the old table, is for the caller to free.
            assert_eq!(on_disk.get(&file, c).unwrap(), 1, "cluster {c}");
        }
    }
}
