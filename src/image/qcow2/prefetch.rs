//! Reading a qcow2 image's L2 tables ahead into the kernel's page cache as a device
//! starts ([`DiskImage::prefetch_metadata`]).

use super::Qcow2Image;
use crate::error::Result;
use crate::image::check_range;
use crate::image::common::chain;
use crate::image::DiskImage;

impl Qcow2Image {
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
}
