//! Which L2 tables a lookup needs that are not cached, for a caller that reads them on its
//! own ring ([`metadata`](crate::image::metadata)), and how the tables it read are
//! checked and cached.
//!
//! Only a read-only image defers its loads. A writable image's tables move (a write
//! allocates them, copies them on write) under its writer's lock, and a table read by
//! someone else could be installed after it moved; it keeps loading its own tables as
//! before (the backing images below it are read-only, and defer).

use super::Qcow2Image;
use crate::error::{ErrorKind, Result};
use crate::image::check_range;
use crate::image::common::chain;
use crate::image::metadata::{self, push_load, MetadataLoad, MetadataSink};
use crate::image::DiskImage;
use std::sync::atomic::Ordering;

/// How many L2 tables a run of in-order misses reads ahead ([`Qcow2Image::read_ahead`]).
const READ_AHEAD_TABLES: usize = 4;

impl Qcow2Image {
    /// [`DiskImage::pending_metadata`]: the L2 tables of `offset..offset + len` that are
    /// not cached, then, for the clusters that cached tables leave unallocated, what the
    /// backing image lists for them. A writable image loads its own tables here, as its
    /// lookups do, and lists those of its (read-only) backing image.
    pub(super) fn pending_tables<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<MetadataLoad<'a>>,
    ) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        let end = offset + len;
        let cluster_size = self.cluster_size();
        let l2_shift = self.header.cluster_bits + self.header.l2_bits();
        let l2_mask = (1u64 << self.header.l2_bits()) - 1;
        let mut pos = offset;
        while pos < end {
            let l1_index = (pos >> l2_shift) as usize;
            let table_end = end.min(((l1_index as u64) + 1) << l2_shift);
            let table = match metadata::deferred(|| self.l2_table(l1_index)) {
                Ok(Some(table)) => table,
                Ok(None) => {
                    self.pending_below(pos, table_end, out)?;
                    pos = table_end;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.push_table(l1_index, out)?;
                    self.read_ahead(l1_index, out)?;
                    pos = table_end;
                    continue;
                }
                Err(e) => return Err(e),
            };
            while pos < table_end {
                let cluster_start = pos & !(cluster_size - 1);
                let chunk_end = table_end.min(cluster_start + cluster_size);
                let l2_index = ((pos >> self.header.cluster_bits) & l2_mask) as usize;
                let (source, run_end) =
                    self.piece_source(&table, l2_index, cluster_start, pos, chunk_end)?;
                if source.is_none() {
                    self.pending_below(pos, run_end, out)?;
                }
                pos = run_end;
            }
        }
        Ok(())
    }

    /// [`DiskImage::prefetch_metadata`]: the L2 tables of `offset..offset + len` that are
    /// not cached, in file order, runs of adjacent tables asked for at once; then those
    /// of the backing image.
    pub(super) fn prefetch_tables(&self, offset: u64, len: u64, budget: &mut u64) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        if len == 0 {
            return Ok(());
        }
        let size = self.cluster_size();
        let l2_shift = self.header.cluster_bits + self.header.l2_bits();
        let first = (offset >> l2_shift) as usize;
        let last = ((offset + len - 1) >> l2_shift) as usize;
        let mut tables = Vec::new();
        for l1_index in first..=last.min(self.l1.len().saturating_sub(1)) {
            if let Some(host) = self.l2_offset(l1_index)? {
                if !self.l2.is_cached(l1_index) && host.saturating_add(size) <= self.file.len() {
                    tables.push(host);
                }
            }
        }
        tables.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for host in tables {
            if *budget < size {
                break;
            }
            *budget -= size;
            match runs.last_mut() {
                Some((start, run)) if *start + *run == host => *run += size,
                _ => runs.push((host, size)),
            }
        }
        for (start, run) in runs {
            self.file.will_need(start, run);
        }
        if let Some(backing) = self.backing.as_deref() {
            let covered = chain::covered_by(backing, offset, len);
            if covered > 0 {
                backing.prefetch_metadata(offset, covered, budget)?;
            }
        }
        Ok(())
    }

    /// Lists the L2 table of L1 entry `l1_index`, if it has one.
    fn push_table<'a>(&'a self, l1_index: usize, out: &mut Vec<MetadataLoad<'a>>) -> Result<()> {
        if let Some(host) = self.l2_offset(l1_index)? {
            let load = MetadataLoad {
                file: &self.file,
                offset: host,
                len: self.cluster_size() as usize,
                sink: self,
                key: l1_index as u64,
            };
            push_load(out, load);
        }
        Ok(())
    }

    /// After a miss on table `l1_index` that continues a run of misses in table order (a
    /// walk over the disk, such as e2fsck's over its block groups), lists the next
    /// [`READ_AHEAD_TABLES`] tables that are not cached too, so that the walk waits for
    /// one read in that many; a miss out of order reads ahead nothing.
    fn read_ahead<'a>(&'a self, l1_index: usize, out: &mut Vec<MetadataLoad<'a>>) -> Result<()> {
        let last = self.last_table_miss.load(Ordering::Relaxed);
        if last.wrapping_add(1) != l1_index {
            self.last_table_miss.store(l1_index, Ordering::Relaxed);
            return Ok(());
        }
        let end = (l1_index + 1 + READ_AHEAD_TABLES).min(self.l1.len());
        for next in l1_index + 1..end {
            if !self.l2.is_cached(next) {
                self.push_table(next, out)?;
            }
        }
        self.last_table_miss.store(end - 1, Ordering::Relaxed);
        Ok(())
    }

    /// What the backing image lists for `offset..end`, a range this image leaves
    /// unallocated (the part of it inside the backing image; beyond, it reads as zeroes).
    fn pending_below<'a>(
        &'a self,
        offset: u64,
        end: u64,
        out: &mut Vec<MetadataLoad<'a>>,
    ) -> Result<()> {
        match self.backing.as_deref() {
            Some(backing) => {
                let covered = chain::covered_by(backing, offset, end - offset);
                if covered > 0 {
                    backing.pending_metadata(offset, covered, out)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl MetadataSink for Qcow2Image {
    /// Caches the L2 table of L1 entry `key`, read at `offset`, unless the entry no
    /// longer points there (it cannot in a read-only image, but the check is cheap) or
    /// the table is cached already.
    fn install(&self, key: u64, offset: u64, bytes: &[u8]) -> Result<()> {
        let l1_index = usize::try_from(key).unwrap_or(usize::MAX);
        if self.l2_offset(l1_index)? != Some(offset) || bytes.len() as u64 != self.cluster_size() {
            return Ok(());
        }
        self.check_l2_offset(l1_index, offset)?;
        self.l2
            .get(l1_index, || self.decode_l2_table(l1_index, offset, bytes))
            .map(drop)
    }
}
