//! VHDX (Hyper-V virtual disk), read-only: fixed, dynamic and differencing disks. Images
//! whose log still holds entries are refused (replaying the log is a write).
//!
//! Layout: [`header`] reads the identifier, headers and region table, [`metadata`] the
//! metadata items, [`bat`] the BAT and sector bitmaps, [`parent`] a differencing disk's
//! parent.

pub mod bat;
pub mod header;
pub mod metadata;
pub mod parent;

#[cfg(test)]
mod tests;

use self::bat::Bat;
use self::metadata::Metadata;
use crate::error::Result;
use crate::image::common::chain;
use crate::image::common::walk::Walker;
use crate::image::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions};

/// A VHDX image, with its parent if it is a differencing disk.
pub struct VhdxImage {
    file: ImageFile,
    meta: Metadata,
    bat: Bat,
    parent: Option<Box<dyn DiskImage>>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("path", &self.file.path())
            .field("meta", &self.meta)
            .finish()
    }
}

impl VhdxImage {
    /// Opens the VHDX `file` at `depth` in its chain (read-only).
    pub fn open(file: ImageFile, options: &OpenOptions, depth: u32) -> Result<Self> {
        chain::refuse_writable(Format::Vhdx, file.path(), options)?;
        header::read_header(&file)?;
        let regions = header::read_regions(&file)?;
        let meta = metadata::read(&file, regions.metadata)?;
        let bat = Bat::load(&file, regions.bat, &meta)?;
        let parent = if meta.has_parent {
            Some(parent::open(&file, &meta, options, depth)?)
        } else {
            None
        };
        Ok(VhdxImage {
            file,
            meta,
            bat,
            parent,
        })
    }

    /// The logical sector size (512 or 4096).
    pub fn logical_sector_size(&self) -> u64 {
        self.meta.logical_sector_size
    }

    /// How the BAT's blocks map guest ranges.
    fn walker(&self) -> Walker<'_> {
        Walker {
            parent: self.parent.as_deref(),
            block_size: self.bat.block_size(),
            sector_size: self.meta.logical_sector_size,
        }
    }
}

impl DiskImage for VhdxImage {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        let lookup = |block| self.bat.lookup(&self.file, block);
        let size = self.meta.virtual_size;
        self.walker()
            .map_image(self.file.path(), size, offset, len, lookup, out)
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        let lookup = |block| self.bat.lookup(&self.file, block);
        let size = self.meta.virtual_size;
        self.walker()
            .data_run_image(self.file.path(), size, offset, len, lookup)
    }

    fn chain(&self) -> Vec<ChainEntry> {
        let own = chain::entry(&self.file, Format::Vhdx, self.meta.virtual_size);
        chain::chain_with_parent(own, self.parent.as_deref())
    }
}
