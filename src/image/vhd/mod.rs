//! VHD (Microsoft Virtual PC, qemu-img's "vpc"), read-only: fixed, dynamic and
//! differencing disks.
//!
//! Layout: [`footer`] reads the footer and the virtual size, [`dynamic`] the dynamic
//! header, BAT and sector bitmaps, [`parent`] finds a differencing disk's parent.

pub mod dynamic;
pub mod footer;
pub mod parent;

#[cfg(test)]
mod tests;

use self::dynamic::Bat;
use self::footer::{DiskType, Footer};
use crate::error::{Error, Result};
use crate::image::common::chain;
use crate::image::common::walk::{Block, Walker};
use crate::image::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions};

/// A VHD image, with its parent if it is a differencing disk.
pub struct VhdImage {
    file: ImageFile,
    footer: Footer,
    size: u64,
    /// The BAT of a dynamic or differencing disk; `None` for a fixed one.
    bat: Option<Bat>,
    parent: Option<Box<dyn DiskImage>>,
}

impl std::fmt::Debug for VhdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdImage")
            .field("path", &self.file.path())
            .field("type", &self.footer.disk_type)
            .field("size", &self.size)
            .finish()
    }
}

impl VhdImage {
    /// Opens the VHD `file` at `depth` in its chain (read-only).
    pub fn open(file: ImageFile, options: &OpenOptions, depth: u32) -> Result<Self> {
        chain::refuse_writable(Format::Vpc, file.path(), options)?;
        let footer = footer::read(&file)?;
        let size = footer
            .virtual_size()
            .map_err(|e| e.with_path(file.path()))?;
        let (bat, parent) = match footer.disk_type {
            DiskType::Fixed => {
                if size > file.len() - footer::FOOTER_BYTES {
                    return Err(Error::corrupt(format!(
                        "fixed VHD of {size} bytes is truncated: file holds {} bytes of data",
                        file.len() - footer::FOOTER_BYTES
                    ))
                    .with_path(file.path()));
                }
                (None, None)
            }
            DiskType::Dynamic | DiskType::Differencing => {
                let header = dynamic::read_header(&file, footer.data_offset)?;
                let bat = Bat::load(&file, &header, size)?;
                let parent = if footer.disk_type == DiskType::Differencing {
                    Some(parent::open(&file, &header, options, depth)?)
                } else {
                    None
                };
                (Some(bat), parent)
            }
        };
        Ok(VhdImage {
            file,
            footer,
            size,
            bat,
            parent,
        })
    }

    /// The disk type from the footer.
    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    /// The footer's unique ID (what a child records as its parent's).
    pub fn unique_id(&self) -> [u8; 16] {
        self.footer.unique_id
    }

    /// How the blocks map guest ranges (a fixed disk is one block holding everything).
    fn walker(&self) -> Walker<'_> {
        let block_size = self
            .bat
            .as_ref()
            .map_or(self.size.max(512), Bat::block_size);
        Walker {
            parent: self.parent.as_deref(),
            block_size,
            sector_size: 512,
        }
    }

    /// What block `block` holds.
    fn block(&self, block: u64) -> Result<Block<'_>> {
        match &self.bat {
            Some(bat) => bat.lookup(&self.file, block),
            None => Ok(Block::Data {
                file: &self.file,
                offset: 0,
            }),
        }
    }
}

impl DiskImage for VhdImage {
    fn format(&self) -> Format {
        Format::Vpc
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        let lookup = |block| self.block(block);
        self.walker()
            .map_image(self.file.path(), self.size, offset, len, lookup, out)
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        let lookup = |block| self.block(block);
        self.walker()
            .data_run_image(self.file.path(), self.size, offset, len, lookup)
    }

    fn chain(&self) -> Vec<ChainEntry> {
        let own = ChainEntry {
            holes_read_as_zero: self.footer.disk_type == DiskType::Fixed,
            ..chain::entry(&self.file, Format::Vpc, self.size)
        };
        chain::chain_with_parent(own, self.parent.as_deref())
    }
}
