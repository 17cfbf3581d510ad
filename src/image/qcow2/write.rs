//! The qcow2 write path.
//!
//! # Design
//!
//! - Overwrites of clusters that are allocated, standard and not shared (L2 entry with the
//!   COPIED bit) are [`WritePlan::Mapped`]: the caller writes in place, no metadata changes.
//!   `map_write` is as lock-free as `map`. Entries read from the file that name metadata,
//!   or a cluster past the file's end, lose the COPIED bit first ([`super::guard`]).
//! - Everything else goes through `write_sync`, serialised by one mutex per image: it
//!   allocates a cluster (a bump allocator at the end of the file, see [`super::refcount`]),
//!   copies on write the parts of the cluster the request does not cover (read through
//!   this image's own read path: backing chain, compressed or zero cluster), writes the
//!   whole cluster with `pwrite` (where those parts read as zeroes, it punches a hole over
//!   the host cluster, or grows the file past it, and writes only the request's part),
//!   and only then stores the new L2 entry (an atomic) that
//!   makes it visible to `map`. A new L2 table is installed in the cache before its L1
//!   entry is published, so concurrent readers see either the old or the new mapping.
//! - Metadata is write-back: refcount, L2 and L1 changes live in memory (writable images
//!   keep every L2 table they load resident: the cache never evicts a dirty table) and
//!   reach the file in [`Qcow2Image::flush`] (also run on drop), in QEMU's order:
//!
//!   1. refcount blocks, then the refcount table entries pointing at new blocks (or, when
//!      the table has grown, the new table, `fdatasync`, then the header);
//!   2. `fdatasync`: the data written so far and the refcounts of every new cluster are
//!      durable before anything references those clusters;
//!   3. dirty L2 tables, `fdatasync`: a new L2 table is on disk before its L1 entry;
//!   4. dirty L1 entries, `fdatasync`;
//!   5. only now refcounts are decremented (compressed clusters overwritten, an old
//!      refcount table), since nothing on disk references them any more.
//!
//!   Each `pwrite` of those steps leaves a valid image (a torn multi-page write mixes old
//!   and new 8-byte entries, each of them valid), so killing the process at any moment,
//!   or losing power, leaves an image that `qemu-img check` finds free of corruption.
//!   (New refcount blocks get a sync of their own before the table names them.)
//! - A request that changed any of that metadata completes only after its changes are in
//!   the [`super::journal`] (one `pwrite` to tmpfs): a process that takes over from one
//!   that died replays them, so a completed write survives a daemon's death, not only a
//!   flush. `tests/crash.rs` replays recorded runs to every crash point to check both.
//!
//! # Leaks
//!
//! A power loss loses at most what was written since the last completed flush, and leaks the
//! clusters allocated since then whose refcounts already reached the disk (steps 1–4 cut
//! short): data clusters and L2 tables with refcount 1 that nothing references, and an
//! old refcount table, or compressed clusters, whose decrement (step 5) was lost.
//! `qemu-img check -r leaks` reclaims them. Clusters are never reused, and data clusters
//! shared without the COPIED bit (there should be none: images with internal snapshots
//! are refused) are copied and left allocated.
//!
//! `discard` of whole clusters drops them: the L2 entry becomes a zero cluster (where a
//! backing file would otherwise show through; version 3 only, else the cluster is kept) or
//! unallocated, and the host cluster is freed in step 5 of the next flush, its space given
//! back to the file system with a punched hole (the cluster itself is not reused). Parts of
//! clusters are left alone: a discard is only advice. `write_zeroes` sets the zero flag on
//! whole clusters of version 3 images (keeping an unshared cluster allocated, as QEMU's
//! "preallocated zero cluster") and writes zeroes elsewhere. The dirty bit and lazy
//! refcounts are never used: refcounts on disk are always exact or too high.

use super::entry::{self, Cluster, L1_OFFSET_MASK, L2_COMPRESSED, L2_OFFSET_MASK, L2_ZERO};
use super::guard::MetadataGuard;
use super::header::{self, Header};
use super::journal::{Journal, Record};
use super::l2cache::{L2Ref, L2Table};
use super::refcount::Refcounts;
use super::Qcow2Image;
use crate::error::{Error, ErrorKind, Result};
use crate::image::common::walk::push;
use crate::image::{check_range, io, DiskImage, Extent, ImageFile, Source, WritePlan};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;

/// One cluster's part of a guest range (see `Qcow2Image::cluster_chunks`).
struct ClusterChunk {
    l1_index: usize,
    l2_index: usize,
    /// Guest offset of the cluster.
    cluster_start: u64,
    /// The part of the range inside the cluster.
    start: u64,
    end: u64,
    /// Whether that part is the whole cluster (up to the end of the disk).
    whole: bool,
}

/// L1/L2 entry bit 63: the cluster's refcount is exactly 1 (may be written in place).
pub const COPIED: u64 = 1 << 63;
/// Journal size (bytes) past which a request that changed metadata also flushes it.
const JOURNAL_FLUSH_BYTES: u64 = 16 << 20;
/// Header offset of `autoclear_features` (version 3).
const HEADER_AUTOCLEAR: u64 = 88;

/// Metadata state of an image open for writing, behind the image's write mutex.
pub struct Writer {
    refcounts: Refcounts,
    /// Refcount table location the header on disk names.
    header_table: (u64, u64),
    dirty_l1: BTreeSet<usize>,
    dirty_l2: BTreeSet<usize>,
    /// Host clusters to decrement once the metadata no longer referencing them is durable.
    pending_free: Vec<u64>,
    /// Where the changes since the last flush survive this process (see [`super::journal`]).
    journal: Option<Journal>,
}

impl Writer {
    /// Prepares `file` (open read-write, header already parsed) for writing.
    pub fn open(file: &ImageFile, header: &Header) -> Result<Writer> {
        let refuse = |what: &str| {
            Err(Error::unsupported(format!(
                "writing to qcow2 images with {what} is not supported; attach read-only \
                 or with --overlay memory"
            ))
            .with_path(file.path()))
        };
        if header.nb_snapshots > 0 {
            return refuse("internal snapshots");
        }
        if header.data_file.is_some() || header.has_incompatible(header::INCOMPAT_DATA_FILE) {
            return refuse("an external data file");
        }
        if header.has_incompatible(header::INCOMPAT_EXTENDED_L2) {
            return refuse("extended L2 entries");
        }
        if header.has_incompatible(header::INCOMPAT_DIRTY) {
            return Err(Error::corrupt(
                "qcow2 image is marked dirty (not closed cleanly, refcounts may be stale); \
                 repair it with `qemu-img check -r all` before writing to it",
            )
            .with_path(file.path()));
        }
        let refcounts = Refcounts::load(
            file,
            header.cluster_bits,
            header.refcount_order,
            header.refcount_table_offset,
            header.refcount_table_clusters,
        )?;
        Ok(Writer {
            header_table: refcounts.table_location(),
            refcounts,
            dirty_l1: BTreeSet::new(),
            dirty_l2: BTreeSet::new(),
            pending_free: Vec::new(),
            journal: None,
        })
    }

    /// Clears the autoclear bits of `header` (version 3) in `file`: features we do not
    /// maintain (persistent bitmaps) must be marked stale before anything is written. The
    /// open calls this last, so that a refused writable open leaves the file as it was.
    pub fn clear_autoclear(file: &ImageFile, header: &Header) -> Result<()> {
        if header.version >= 3 && header.autoclear_features != 0 {
            file.write_all_at(&0u64.to_be_bytes(), HEADER_AUTOCLEAR)?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// Keeps the changes from now on in `journal` as well.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Notes `record` for the journal (written by [`Writer::commit`]).
    fn log(&mut self, record: Record) {
        if let Some(journal) = &mut self.journal {
            journal.log(record);
        }
    }

    /// Writes the logged changes to the journal: before a change is published to other
    /// queues, and so before the request that made it completes.
    fn commit(&mut self) -> Result<()> {
        match &mut self.journal {
            Some(journal) => journal.commit(),
            None => Ok(()),
        }
    }

    /// Allocates a cluster, journaled.
    fn alloc(&mut self, file: &ImageFile) -> Result<u64> {
        let host = self.refcounts.alloc(file)?;
        self.log(Record::Alloc(host));
        Ok(host)
    }

    /// Frees `clusters` once the metadata no longer naming them is durable, journaled.
    fn free_later(&mut self, clusters: Vec<u64>) {
        for &host in &clusters {
            self.log(Record::Free(host));
        }
        self.pending_free.extend(clusters);
    }

    /// The metadata clusters at open, for [`MetadataGuard`]: the header's, `l1`'s and the
    /// refcount table's, of an image `file_len` bytes long.
    pub fn metadata_guard(
        &self,
        header: &Header,
        l1: &[AtomicU64],
        file_len: u64,
    ) -> Result<MetadataGuard> {
        MetadataGuard::new(header, l1, self.refcounts.block_offsets(), file_len)
    }
}

/// Host cluster offsets that the compressed L2 entry `raw` keeps allocated.
fn compressed_clusters(raw: u64, cluster_bits: u32) -> Vec<u64> {
    let Ok(Cluster::Compressed { offset, stored_len }) = entry::decode_l2(raw, cluster_bits, 0)
    else {
        return Vec::new();
    };
    let first = offset >> cluster_bits;
    let last = (offset + stored_len.max(1) - 1) >> cluster_bits;
    (first..=last).map(|c| c << cluster_bits).collect()
}

impl Qcow2Image {
    /// The host clusters that dropping the compressed entry `raw` frees: those that held
    /// no metadata and lay inside the file at open (a corrupt entry may name others; see
    /// [`super::guard`]). Its decoded bytes leave the file's cache, as the clusters may
    /// hold other data soon.
    fn freed_by_compressed(&self, raw: u64) -> Vec<u64> {
        if let Ok(Cluster::Compressed { offset, .. }) =
            entry::decode_l2(raw, self.header.cluster_bits, 0)
        {
            self.file.decoded_clusters().forget(offset);
        }
        let mut clusters = compressed_clusters(raw, self.header.cluster_bits);
        if let Some(guard) = &self.guard {
            clusters.retain(|&cluster| guard.may_overwrite(cluster));
        }
        clusters
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let writer = self.writer.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::ReadOnly, "qcow2 image is open read-only")
                .with_path(self.file.path())
        })?;
        Ok(writer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Geometry of guest offset `pos`: (L1 index, L2 index, cluster start).
    fn locate(&self, pos: u64) -> (usize, usize, u64) {
        let bits = self.header.cluster_bits;
        let l2_bits = self.header.l2_bits();
        (
            (pos >> (bits + l2_bits)) as usize,
            ((pos >> bits) & ((1u64 << l2_bits) - 1)) as usize,
            pos & !(self.cluster_size() - 1),
        )
    }

    /// End of the cluster starting at `cluster_start`, clipped to the virtual size.
    fn cluster_end(&self, cluster_start: u64) -> u64 {
        (cluster_start + self.cluster_size()).min(self.virtual_size())
    }

    /// The guest range `offset..offset + len` cut at cluster boundaries, checked against
    /// the virtual size: what the range-wide operations walk.
    fn cluster_chunks(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<impl Iterator<Item = ClusterChunk> + '_> {
        check_range(offset, len, self.virtual_size())?;
        let end = offset + len;
        let mut pos = offset;
        Ok(std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let (l1_index, l2_index, cluster_start) = self.locate(pos);
            let chunk_end = end.min(cluster_start + self.cluster_size());
            let chunk = ClusterChunk {
                l1_index,
                l2_index,
                cluster_start,
                start: pos,
                end: chunk_end,
                whole: pos == cluster_start && chunk_end == self.cluster_end(cluster_start),
            };
            pos = chunk_end;
            Some(chunk)
        }))
    }

    pub(super) fn map_write_impl<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        if self.writer.is_none() {
            return Err(
                Error::new(ErrorKind::ReadOnly, "qcow2 image is open read-only")
                    .with_path(self.file.path()),
            );
        }
        check_range(offset, len, self.virtual_size())?;
        let first = out.len();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (l1_index, l2_index, cluster_start) = self.locate(pos);
            let chunk_end = end.min(cluster_start + self.cluster_size());
            let raw = match self.l2_table(l1_index)? {
                Some(table) => table.get(l2_index).unwrap_or(0),
                None => 0,
            };
            let host = raw & L2_OFFSET_MASK;
            if raw & COPIED == 0 || raw & (L2_COMPRESSED | L2_ZERO) != 0 || host == 0 {
                out.truncate(first);
                return Ok(WritePlan::Synchronous);
            }
            push(
                out,
                Extent {
                    len: chunk_end - pos,
                    depth: 0,
                    source: Source::Data {
                        file: &self.file,
                        offset: host + (pos - cluster_start),
                    },
                },
            );
            pos = chunk_end;
        }
        Ok(WritePlan::Mapped)
    }

    /// The L2 table of `l1_index` for modification: created (in memory, published in
    /// the L1 table) if the entry has none.
    fn writable_l2(&self, w: &mut Writer, l1_index: usize) -> Result<L2Ref<'_>> {
        let raw = self
            .l1
            .get(l1_index)
            .map(|e| e.load(Ordering::Acquire))
            .ok_or_else(|| Error::invalid(format!("L1 index {l1_index} past the L1 table")))?;
        if raw & L1_OFFSET_MASK != 0 {
            if raw & COPIED == 0 {
                return Err(Error::unsupported(format!(
                    "qcow2 L2 table {l1_index} is shared (refcount above 1); cannot write to it"
                ))
                .with_path(self.file.path()));
            }
        } else {
            let host = w.alloc(&self.file)?;
            self.install_empty_l2(w, l1_index, host | COPIED)?;
            w.log(Record::L1 {
                index: l1_index as u64,
                value: host | COPIED,
            });
        }
        self.l2_table(l1_index)?.ok_or_else(|| {
            Error::corrupt(format!("qcow2 L2 table {l1_index} vanished"))
                .with_path(self.file.path())
        })
    }

    /// Publishes a new, empty L2 table as L1 entry `l1_index` (the entry `l1_entry`): in
    /// the cache before the L1 entry, so that readers see the old or the new mapping.
    fn install_empty_l2(&self, w: &mut Writer, l1_index: usize, l1_entry: u64) -> Result<()> {
        let zeroes = vec![0u8; self.cluster_size() as usize];
        self.l2.install(l1_index, L2Table::from_be_bytes(&zeroes))?;
        if let Some(entry) = self.l1.get(l1_index) {
            entry.store(l1_entry, Ordering::Release);
        }
        w.dirty_l1.insert(l1_index);
        w.dirty_l2.insert(l1_index);
        Ok(())
    }

    /// Stores `value` as L2 entry `l2_index` of the table of `l1_index`, journaled first
    /// (with every change logged before it): once stored, another queue may complete a
    /// write through the entry without the write mutex ([`WritePlan::Mapped`]), and that
    /// write must survive this process's death as well.
    fn set_l2(
        w: &mut Writer,
        table: &L2Ref<'_>,
        l1_index: usize,
        l2_index: usize,
        value: u64,
    ) -> Result<()> {
        w.log(Record::L2 {
            l1: l1_index as u64,
            l2: l2_index as u64,
            value,
        });
        w.commit()?;
        Self::store_l2(w, table, l1_index, l2_index, value);
        Ok(())
    }

    /// Stores `value` as L2 entry `l2_index` of the table of `l1_index` and marks the
    /// table dirty: the in-memory half of [`Self::set_l2`], which replay does alone.
    fn store_l2(w: &mut Writer, table: &L2Ref<'_>, l1_index: usize, l2_index: usize, value: u64) {
        if let Some(entry) = table.entries().get(l2_index) {
            entry.store(value, Ordering::Release);
        }
        w.dirty_l2.insert(l1_index);
    }

    /// Applies what a journal kept of a daemon that died (see [`super::journal`]): its
    /// allocations, L1 and L2 entries and pending frees, as it had them in memory.
    /// Idempotent, so a journal whose changes partly reached the file already is fine.
    pub(super) fn replay(&self, records: &[Record]) -> Result<()> {
        let mut w = self.writer()?;
        let cs = self.cluster_size();
        // The allocator must not hand out a cluster the journal names, even one that
        // never reached the file (an L2 table still in memory when the daemon died).
        let end = records.iter().fold(0, |end, record| match record {
            Record::Alloc(host) => end.max(host.saturating_add(cs)),
            _ => end,
        });
        w.refcounts.reserve_below(end);
        let bad = |what: String| {
            Error::corrupt(format!(
                "the metadata journal does not fit the image ({what}): was it changed by \
                 another program after imgblk's daemon died?"
            ))
            .with_path(self.file.path())
        };
        for &record in records {
            match record {
                Record::Alloc(host) => w.refcounts.claim(&self.file, host)?,
                Record::L1 { index, value } => {
                    let index = usize::try_from(index)
                        .ok()
                        .filter(|&i| i < self.l1.len())
                        .ok_or_else(|| bad(format!("L1 index {index}")))?;
                    self.install_empty_l2(&mut w, index, value)?;
                }
                Record::L2 { l1, l2, value } => {
                    let (l1_index, l2_index) = (l1 as usize, l2 as usize);
                    let table = self
                        .l2_table(l1_index)?
                        .filter(|t| l2_index < t.entries().len())
                        .ok_or_else(|| bad(format!("L2 entry {l2} of L1 entry {l1}")))?;
                    Self::store_l2(&mut w, &table, l1_index, l2_index, value);
                }
                Record::Free(host) => w.pending_free.push(host),
            }
        }
        Ok(())
    }

    pub(super) fn write_sync_impl(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        let mut w = self.writer()?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (l1_index, l2_index, cluster_start) = self.locate(pos);
            let chunk_end = end.min(cluster_start + self.cluster_size());
            let part = buf
                .get((pos - offset) as usize..(chunk_end - offset) as usize)
                .ok_or_else(|| Error::invalid("write request shorter than its range"))?;
            let within = pos - cluster_start;
            let table = self.writable_l2(&mut w, l1_index)?;
            let raw = table.get(l2_index).unwrap_or(0);
            let host = raw & L2_OFFSET_MASK;
            let compressed = raw & L2_COMPRESSED != 0;
            // In a compressed entry bit 0 belongs to the offset, not the zero flag.
            let zero = !compressed && raw & L2_ZERO != 0;
            if !compressed && host != 0 && raw & COPIED != 0 && !zero {
                self.file.write_all_at(part, host + within)?;
                pos = chunk_end;
                continue;
            }
            let whole = within == 0 && chunk_end == self.cluster_end(cluster_start);
            let target = if !compressed && host != 0 && raw & COPIED != 0 {
                host // a preallocated zero cluster: ours to overwrite
            } else {
                w.alloc(&self.file)?
            };
            // What the request does not cover reads as zeroes here (a zero cluster, or
            // unallocated with no backing file under it): rather than write a cluster of
            // zeroes around the request's few KiB (16x the bytes for 4 KiB in 64 KiB, as
            // QEMU avoids too), make the host cluster read as zeroes and write only the part.
            let reads_zero = zero
                || (raw == 0
                    && self
                        .backing
                        .as_ref()
                        .is_none_or(|b| cluster_start >= b.virtual_size()));
            if whole {
                self.file.write_all_at(part, target)?;
            } else if reads_zero && self.file.zero_range(target, self.cluster_size())? {
                self.file.write_all_at(part, target + within)?;
            } else {
                let mut data =
                    vec![0u8; (self.cluster_end(cluster_start) - cluster_start) as usize];
                if !zero {
                    io::read_at(self, &mut data, cluster_start)?;
                }
                data[within as usize..within as usize + part.len()].copy_from_slice(part);
                self.file.write_all_at(&data, target)?;
            }
            if compressed {
                w.free_later(self.freed_by_compressed(raw));
            }
            Self::set_l2(&mut w, &table, l1_index, l2_index, target | COPIED)?;
            pos = chunk_end;
        }
        self.bound_journal(&mut w)
    }

    /// Whether guest cluster `cluster_start` already reads as zeroes without anything to
    /// do: unallocated here and not covered by a backing file.
    fn reads_as_zero_unallocated(
        &self,
        l1_index: usize,
        l2_index: usize,
        cluster_start: u64,
    ) -> Result<bool> {
        if self
            .backing
            .as_ref()
            .is_some_and(|b| cluster_start < b.virtual_size())
        {
            return Ok(false);
        }
        let raw = match self.l2_table(l1_index)? {
            Some(table) => table.get(l2_index).unwrap_or(0),
            None => 0,
        };
        Ok(raw & !COPIED == 0)
    }

    pub(super) fn write_zeroes_impl(&self, offset: u64, len: u64) -> Result<()> {
        for chunk in self.cluster_chunks(offset, len)? {
            let (l1_index, l2_index, whole) = (chunk.l1_index, chunk.l2_index, chunk.whole);
            let mut w = self.writer()?;
            if whole && self.reads_as_zero_unallocated(l1_index, l2_index, chunk.cluster_start)? {
                continue;
            }
            if !whole || self.header.version < 3 {
                // Zero flags need version 3; partial clusters are written.
                drop(w);
                io::write_zeroes_by_writing(self, chunk.start, chunk.end - chunk.start)?;
                continue;
            }
            let table = self.writable_l2(&mut w, l1_index)?;
            let raw = table.get(l2_index).unwrap_or(0);
            let value = if raw & L2_COMPRESSED != 0 {
                w.free_later(self.freed_by_compressed(raw));
                L2_ZERO
            } else if raw & COPIED != 0 && raw & L2_OFFSET_MASK != 0 {
                (raw & L2_OFFSET_MASK) | COPIED | L2_ZERO
            } else {
                L2_ZERO
            };
            Self::set_l2(&mut w, &table, l1_index, l2_index, value)?;
            self.bound_journal(&mut w)?;
        }
        Ok(())
    }

    pub(super) fn discard_impl(&self, offset: u64, len: u64) -> Result<()> {
        for chunk in self.cluster_chunks(offset, len)? {
            let (l1_index, l2_index, whole) = (chunk.l1_index, chunk.l2_index, chunk.whole);
            if !whole {
                continue;
            }
            let mut w = self.writer()?;
            let backed = self
                .backing
                .as_ref()
                .is_some_and(|b| chunk.cluster_start < b.virtual_size());
            let raw = match self.l2_table(l1_index)? {
                Some(table) => table.get(l2_index).unwrap_or(0),
                None => 0,
            };
            let value = match (backed, self.header.version >= 3) {
                (false, _) => 0,
                (true, true) => L2_ZERO,
                // Unallocated would show the backing file, and v2 has no zero flag.
                (true, false) => continue,
            };
            if raw & !COPIED == value {
                continue;
            }
            let table = self.writable_l2(&mut w, l1_index)?;
            if raw & L2_COMPRESSED != 0 {
                w.free_later(self.freed_by_compressed(raw));
            } else if raw & L2_OFFSET_MASK != 0 && raw & COPIED != 0 {
                // Without COPIED the cluster may be shared, or metadata (see `guard`): kept.
                w.free_later(vec![raw & L2_OFFSET_MASK]);
            }
            Self::set_l2(&mut w, &table, l1_index, l2_index, value)?;
            self.bound_journal(&mut w)?;
        }
        Ok(())
    }

    pub(super) fn flush_impl(&self) -> Result<()> {
        let Some(_) = &self.writer else {
            return Ok(());
        };
        let mut guard = self.writer()?;
        self.flush_locked(&mut guard)
    }

    /// The flush, with the write mutex held: the metadata to the file, then the journal
    /// emptied (or dropped after a failed sync).
    fn flush_locked(&self, w: &mut Writer) -> Result<()> {
        let flushed = self.write_metadata(w);
        match (&flushed, &mut w.journal) {
            (Ok(()), Some(journal)) => journal.clear()?,
            (Err(_), Some(_)) if self.file.sync_failed() => {
                // The data the journal's entries point at may never reach the disk: the
                // image must stay as its last completed flush left it.
                if let Some(journal) = w.journal.take() {
                    journal.remove();
                }
            }
            _ => {}
        }
        flushed
    }

    /// Flushes once the journal has grown past [`JOURNAL_FLUSH_BYTES`], so that it stays
    /// small however long the guest goes without a flush of its own (a flush is always
    /// allowed: it only makes more durable).
    fn bound_journal(&self, w: &mut Writer) -> Result<()> {
        if w.journal
            .as_ref()
            .is_some_and(|j| j.bytes() > JOURNAL_FLUSH_BYTES)
        {
            self.flush_locked(w)?;
        }
        Ok(())
    }

    /// Closes the journal at a clean close, once everything is flushed.
    pub(super) fn close_journal(&self) {
        if let Some(writer) = &self.writer {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(journal) = w.journal.take() {
                journal.remove();
            }
        }
    }

    /// Steps 1-5 of the flush (see the module's documentation).
    fn write_metadata(&self, w: &mut Writer) -> Result<()> {
        let header_table = w.header_table;
        let freed = w.refcounts.write_back(&self.file, header_table)?;
        w.header_table = w.refcounts.table_location();
        w.pending_free.extend(freed);
        self.file.sync_data()?;
        if w.dirty_l2.is_empty() && w.dirty_l1.is_empty() && w.pending_free.is_empty() {
            return Ok(());
        }
        for &l1_index in &w.dirty_l2 {
            let host = self
                .l1
                .get(l1_index)
                .map_or(0, |e| e.load(Ordering::Acquire))
                & L1_OFFSET_MASK;
            let table = self.l2_table(l1_index)?.ok_or_else(|| {
                Error::corrupt(format!("dirty qcow2 L2 table {l1_index} has no L1 entry"))
                    .with_path(self.file.path())
            })?;
            let bytes: Vec<u8> = table
                .entries()
                .iter()
                .flat_map(|e| e.load(Ordering::Acquire).to_be_bytes())
                .collect();
            self.file.write_all_at(&bytes, host)?;
        }
        self.file.sync_data()?;
        w.dirty_l2.clear();
        for &l1_index in &w.dirty_l1 {
            let raw = self
                .l1
                .get(l1_index)
                .map_or(0, |e| e.load(Ordering::Acquire));
            self.file
                .write_all_at(&raw.to_be_bytes(), self.l1_entry_offset(l1_index))?;
        }
        self.file.sync_data()?;
        w.dirty_l1.clear();
        for offset in std::mem::take(&mut w.pending_free) {
            if w.refcounts.decrement(&self.file, offset)? {
                // Never reused, so its space can go back to the file system at once.
                self.file.punch_hole(offset, self.cluster_size())?;
            }
        }
        // Lost decrements only leak: no barrier needed after these.
        w.refcounts.write_back(&self.file, w.header_table)?;
        Ok(())
    }
}
