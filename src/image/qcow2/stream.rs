//! Writing a new qcow2 image in one pass (`imgblk convert -O qcow2`), with compressed
//! clusters as `qemu-img convert -c` stores them, or plain ones.
//!
//! Guest bytes come in increasing order ([`StreamWriter::write`], [`StreamWriter::zero`]).
//! Each whole cluster goes to a pool of worker threads that compresses it, if asked (zlib:
//! raw deflate; zstd: one frame), and hands it back in guest order; a cluster that does
//! not shrink is stored as it is, one of zeroes is not stored. No cluster is ever
//! rewritten and no table is updated in place, so there is no refcount or L2 ordering to
//! keep: the header, written last after a sync, makes the file an image. The file grows at its end
//! only: compressed clusters packed byte after byte (an L2 entry holds where one starts
//! and how many 512-byte sectors it spans), a plain cluster or a finished L2 table at the
//! next cluster boundary. At the end come the refcount table and blocks (every cluster
//! counted once per compressed cluster or table in it, as `qemu-img check` counts), then
//! the L1 table (cluster 1) and the header (cluster 0).
//!
//! Memory: one L2 table, the L1 table, 2 bytes of refcount per 64 KiB of output, a 4 MiB
//! write buffer and the pool's clusters in flight.
//!
//! A cluster only partly written (a change smaller than a cluster) is completed from the
//! backing file, or with zeroes without one; with a backing file, zero clusters are
//! recorded as such, so that they do not show the backing file's bytes.

use super::create::{check, header, new_file, Placement, CLUSTER, CLUSTER_BITS};
use super::entry::{L2_COMPRESSED, L2_ZERO};
use crate::error::{Error, Result};
use crate::image::common::bytes::is_zero;
use crate::image::compress::compress;
use crate::image::ordered::OrderedPool;
use crate::image::{io::read_at, Codec, DiskImage, Format};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// L1/L2 entry bit 63: the cluster's refcount is exactly 1.
const COPIED: u64 = 1 << 63;
/// Entries of an L2 table.
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts (16 bits each) in a refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// Compressed data is counted in sectors of this size.
const SECTOR: u64 = 512;
/// Bit where a compressed cluster's sector count starts in its L2 entry.
const SECTORS_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
/// Bytes gathered before they are written.
const WRITE_BUFFER: usize = 4 << 20;

/// What a worker made of a cluster.
enum Stored {
    /// All zeroes.
    Zero,
    /// Stored as it is (compression did not shrink it).
    Plain(Vec<u8>),
    /// Compressed.
    Packed(Vec<u8>),
}

/// A guest cluster for the workers: its index and bytes (`None`: all zeroes).
type Job = (u64, Option<Vec<u8>>);

/// A cluster being filled by writes smaller than a cluster.
struct Partial {
    index: u64,
    data: Vec<u8>,
    /// Ranges within the cluster nobody wrote, so far.
    gaps: Vec<(usize, usize)>,
    /// Where the writes so far end.
    filled_to: usize,
}

/// A new qcow2 image written in one pass; see the module documentation.
pub struct StreamWriter {
    layout: Layout,
    pool: OrderedPool<Job, (u64, Stored)>,
    partial: Option<Partial>,
    /// The backing image, which completes partly written clusters.
    backing: Option<Box<dyn DiskImage>>,
    size: u64,
}

impl StreamWriter {
    /// Creates the qcow2 `path` (which must not exist) of `size` bytes, its clusters
    /// compressed with `codec` (raw deflate for zlib, or zstd) or plain (`None`), over
    /// `backing` when given: its name as stored, its format and the image itself.
    pub fn create(
        path: &Path,
        size: u64,
        backing: Option<(&Path, Format, Box<dyn DiskImage>)>,
        codec: Option<Codec>,
    ) -> Result<Self> {
        let named = backing.as_ref().map(|(name, format, _)| (*name, *format));
        let (name, l1_size) = check(path, size, named)?;
        let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
        let file = new_file(path, named)?;
        let header_info = (name.to_string(), named.map(|(_, f)| f));
        let mut layout = Layout {
            file,
            path: path.to_path_buf(),
            header: header_info,
            size,
            codec,
            zero_entries: backing.is_some(),
            l1: vec![0; l1_size as usize],
            l2: vec![0; L2_ENTRIES as usize],
            table: 0,
            refcounts: Vec::new(),
            buf: Vec::with_capacity(WRITE_BUFFER + CLUSTER as usize),
            buf_at: (1 + l1_clusters) * CLUSTER,
        };
        for cluster in 0..1 + l1_clusters {
            layout.count(cluster)?;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = OrderedPool::new(threads, move |(index, data): Job| {
            let stored = match data {
                None => Stored::Zero,
                Some(data) if is_zero(&data) => Stored::Zero,
                Some(data) => match codec.and_then(|c| compress(c, &data, CLUSTER as usize)) {
                    Some(packed) => Stored::Packed(packed),
                    None => Stored::Plain(data),
                },
            };
            (index, stored)
        });
        Ok(StreamWriter {
            layout,
            pool,
            partial: None,
            backing: backing.map(|(_, _, image)| image),
            size,
        })
    }

    /// Writes `data` at guest offset `at`, after everything written so far.
    pub fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        self.put(at, Some(data), data.len() as u64)
    }

    /// Makes guest bytes `at..at + len`, after everything written so far, read as zero.
    pub fn zero(&mut self, at: u64, len: u64) -> Result<()> {
        self.put(at, None, len)
    }

    /// Writes what is left and the tables, and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        self.flush_partial()?;
        let layout = &mut self.layout;
        self.pool
            .finish(|(index, stored)| layout.commit(index, stored))?;
        self.layout.finish()
    }

    fn put(&mut self, start: u64, data: Option<&[u8]>, len: u64) -> Result<()> {
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| Error::invalid(format!("write at {start} past the disk's end")))?;
        let mut at = start;
        while at < end {
            let index = at / CLUSTER;
            let within = (at % CLUSTER) as usize;
            let n = (CLUSTER - within as u64).min(end - at) as usize;
            let piece = data.map(|d| &d[(at - start) as usize..][..n]);
            if within == 0 && self.layout.codec.is_none() && end - at >= CLUSTER {
                // whole clusters, stored as they are: written straight from `data`
                let whole = (end - at) / CLUSTER * CLUSTER;
                self.flush_partial()?;
                let bytes = data.map(|d| &d[(at - start) as usize..][..whole as usize]);
                self.layout.put_plain(index, bytes, whole)?;
                at += whole;
                continue;
            }
            if within == 0 && n == CLUSTER as usize {
                self.flush_partial()?;
                self.submit(index, piece.map(<[u8]>::to_vec))?;
            } else {
                if self.partial.as_ref().is_some_and(|p| p.index != index) {
                    self.flush_partial()?;
                }
                let partial = self.partial.get_or_insert_with(|| Partial {
                    index,
                    data: vec![0; CLUSTER as usize],
                    gaps: Vec::new(),
                    filled_to: 0,
                });
                if within < partial.filled_to {
                    return Err(Error::invalid(format!(
                        "write at {at} before what was already written"
                    )));
                }
                if within > partial.filled_to {
                    partial.gaps.push((partial.filled_to, within));
                }
                let target = &mut partial.data[within..within + n];
                match piece {
                    Some(bytes) => target.copy_from_slice(bytes),
                    None => target.fill(0),
                }
                partial.filled_to = within + n;
                if partial.filled_to == CLUSTER as usize {
                    self.flush_partial()?;
                }
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Completes the cluster being filled (from the backing file, or with zeroes) and
    /// hands it on.
    fn flush_partial(&mut self) -> Result<()> {
        let Some(mut partial) = self.partial.take() else {
            return Ok(());
        };
        let base = partial.index * CLUSTER;
        // Guest bytes past the disk's end stay zero.
        let guest_end = (self.size - base).min(CLUSTER) as usize;
        if partial.filled_to < guest_end {
            partial.gaps.push((partial.filled_to, guest_end));
        }
        if let Some(backing) = &self.backing {
            let readable = backing.virtual_size().saturating_sub(base);
            for &(from, to) in &partial.gaps {
                let to = to.min(readable.min(CLUSTER) as usize);
                if from < to {
                    read_at(&**backing, &mut partial.data[from..to], base + from as u64)?;
                }
            }
        }
        self.submit(partial.index, Some(partial.data))
    }

    fn submit(&mut self, index: u64, data: Option<Vec<u8>>) -> Result<()> {
        if data.is_none() && !self.layout.zero_entries {
            return Ok(()); // an unallocated cluster already reads as zero
        }
        let layout = &mut self.layout;
        self.pool.submit((index, data), |(index, stored)| {
            layout.commit(index, stored)
        })
    }
}

/// The file side: where clusters and tables go, and their refcounts.
struct Layout {
    file: File,
    path: PathBuf,
    /// Backing file name (empty: none) and format, for the header.
    header: (String, Option<Format>),
    size: u64,
    /// The compression recorded in the header (`None`: none, zlib as far as it says).
    codec: Option<Codec>,
    /// Whether zero clusters get zero entries (over a backing file) rather than none.
    zero_entries: bool,
    l1: Vec<u64>,
    /// The L2 table being filled, for guest clusters of L1 entry `table`.
    l2: Vec<u64>,
    table: u64,
    /// Refcount of every cluster of the file so far.
    refcounts: Vec<u16>,
    /// Bytes not written yet, which start at file offset `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
}

impl Layout {
    /// Records guest cluster `index` as `stored`; clusters come in increasing order.
    fn commit(&mut self, index: u64, stored: Stored) -> Result<()> {
        self.switch_table(index)?;
        let entry = match stored {
            Stored::Zero if self.zero_entries => L2_ZERO,
            Stored::Zero => return Ok(()),
            Stored::Plain(data) => {
                let at = self.append_cluster(&data)?;
                at | COPIED
            }
            Stored::Packed(data) => {
                let at = self.end();
                self.append(&data)?;
                let sectors = (at + data.len() as u64 - 1) / SECTOR - at / SECTOR;
                // Counted as qemu-img check counts: every cluster of the sectors spanned.
                let first = at / SECTOR * SECTOR;
                let last = first + (sectors + 1) * SECTOR - 1;
                for cluster in first / CLUSTER..=last / CLUSTER {
                    self.count(cluster)?;
                }
                L2_COMPRESSED | sectors << SECTORS_SHIFT | at
            }
        };
        self.l2[(index % L2_ENTRIES) as usize] = entry;
        Ok(())
    }

    /// Stores `len` bytes of whole clusters from guest cluster `index` on, as they are
    /// (`data`) or zero (`None`): runs of clusters that are not all zero are written
    /// straight from `data` in one write each, without a copy. Only without compression,
    /// when the pool is not used, so clusters still come in order.
    fn put_plain(&mut self, index: u64, data: Option<&[u8]>, len: u64) -> Result<()> {
        let clusters = len / CLUSTER;
        let cluster = |i: u64| data.map(|d| &d[(i * CLUSTER) as usize..][..CLUSTER as usize]);
        let mut i = 0;
        while i < clusters {
            if cluster(i).is_none_or(is_zero) {
                self.commit(index + i, Stored::Zero)?;
                i += 1;
                continue;
            }
            // a run of data clusters within one L2 table
            let table_end = ((index + i) / L2_ENTRIES + 1) * L2_ENTRIES - index;
            let mut j = i + 1;
            while j < clusters.min(table_end) && !cluster(j).is_none_or(is_zero) {
                j += 1;
            }
            self.switch_table(index + i)?;
            let at = self.pad_to_cluster();
            self.flush()?;
            let run = data.map_or(&[][..], |d| {
                &d[(i * CLUSTER) as usize..(j * CLUSTER) as usize]
            });
            self.write_at(run, at)?;
            self.buf_at = at + run.len() as u64;
            for k in i..j {
                let host = at + (k - i) * CLUSTER;
                self.count(host / CLUSTER)?;
                self.l2[((index + k) % L2_ENTRIES) as usize] = host | COPIED;
            }
            i = j;
        }
        Ok(())
    }

    /// Makes the L2 table of guest cluster `index` the one being filled, writing the
    /// previous one.
    fn switch_table(&mut self, index: u64) -> Result<()> {
        let table = index / L2_ENTRIES;
        if table != self.table {
            self.write_l2()?;
            self.table = table;
        }
        Ok(())
    }

    /// Writes the L2 table being filled, unless it is empty, and starts a new one.
    fn write_l2(&mut self) -> Result<()> {
        if self.l2.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
        let at = self.append_cluster(&bytes)?;
        self.l1[self.table as usize] = at | COPIED;
        self.l2.fill(0);
        Ok(())
    }

    /// Where the next byte goes.
    fn end(&self) -> u64 {
        self.buf_at + self.buf.len() as u64
    }

    /// Pads what is written with zeroes to the next cluster boundary; that offset.
    fn pad_to_cluster(&mut self) -> u64 {
        let at = self.end().next_multiple_of(CLUSTER);
        self.buf
            .resize(self.buf.len() + (at - self.end()) as usize, 0);
        at
    }

    /// Adds one to the refcount of `cluster`.
    fn count(&mut self, cluster: u64) -> Result<()> {
        let i = cluster as usize;
        if i >= self.refcounts.len() {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] = self.refcounts[i].checked_add(1).ok_or_else(|| {
            Error::invalid(format!("cluster {cluster} would be used 65536 times"))
                .with_path(&self.path)
        })?;
        Ok(())
    }

    /// Appends `data`, at most a cluster, at the next cluster boundary; its offset.
    fn append_cluster(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.pad_to_cluster();
        self.append(data)?;
        self.count(at / CLUSTER)?;
        Ok(at)
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.write_at(&self.buf, self.buf_at)?;
        self.buf_at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io("cannot write the qcow2 image", e).with_path(&self.path))
    }

    /// Writes the last L2 table, the refcount structures, the L1 table and the header.
    fn finish(mut self) -> Result<()> {
        self.write_l2()?;
        let table_at = self.pad_to_cluster();
        // The refcount table and blocks count themselves: grow them until they cover it.
        let used = table_at / CLUSTER;
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = used + table_clusters + blocks;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER);
            if (need_blocks, need_table) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (need_blocks, need_table);
        }
        for cluster in used..used + table_clusters + blocks {
            self.count(cluster)?;
        }
        let first_block = used + table_clusters;
        let mut table = vec![0u8; (table_clusters * CLUSTER) as usize];
        for (i, slot) in table.chunks_exact_mut(8).take(blocks as usize).enumerate() {
            slot.copy_from_slice(&((first_block + i as u64) * CLUSTER).to_be_bytes());
        }
        self.append(&table)?;
        let mut block = vec![0u8; CLUSTER as usize];
        for b in 0..blocks {
            block.fill(0);
            let from = (b * REFCOUNTS_PER_BLOCK) as usize;
            let counts = self.refcounts.get(from..).unwrap_or(&[]);
            for (slot, count) in block.chunks_exact_mut(2).zip(counts) {
                slot.copy_from_slice(&count.to_be_bytes());
            }
            self.append(&block)?;
        }
        self.flush()?;
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(CLUSTER).max(1);
        let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
        for (slot, entry) in l1.chunks_exact_mut(8).zip(&self.l1) {
            slot.copy_from_slice(&entry.to_be_bytes());
        }
        self.write_at(&l1, CLUSTER)?;
        let placement = Placement {
            l1_size: self.l1.len() as u64,
            l1_offset: CLUSTER,
            refcount_table_offset: table_at,
            refcount_table_clusters: table_clusters,
        };
        let (name, format) = &self.header;
        let codec = self.codec.unwrap_or(Codec::Deflate);
        let head = header(name, *format, self.size, &placement, codec);
        self.write_at(&head, 0)?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("cannot write the qcow2 image", e).with_path(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{open_image, OpenOptions};

    /// One write of plain clusters across the 512 MiB boundary of two L2 tables, with a
    /// zero cluster in it, reads back as written.
    #[test]
    fn plain_run_across_l2_tables_reads_back() {
        const M: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.qcow2");
        let mut data: Vec<u8> = (0..3 * M).map(|i| (i / 4096 % 251) as u8 + 1).collect();
        data[2 * M as usize..][..CLUSTER as usize].fill(0);
        let mut writer = StreamWriter::create(&path, 1024 * M, None, None).unwrap();
        writer.write(511 * M, &data).unwrap();
        writer.finish().unwrap();
        let image = open_image(&path, &OpenOptions::default()).unwrap();
        let mut back = vec![0xffu8; data.len() + 2 * CLUSTER as usize];
        read_at(&*image, &mut back, 511 * M - CLUSTER).unwrap();
        let (before, rest) = back.split_at(CLUSTER as usize);
        let (middle, after) = rest.split_at(data.len());
        assert!(is_zero(before) && is_zero(after), "around the write");
        assert!(middle == &data[..], "the write");
    }
}
