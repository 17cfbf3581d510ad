//! VDI (VirtualBox disk image), read-only: version 1.1, normal (dynamic), fixed (static)
//! and differencing images. Discarded blocks read as zero; unallocated ones come from the
//! parent of a differencing image ([`parent`] finds it), else read as zero.

pub mod header;
pub mod parent;

#[cfg(test)]
mod tests;

use self::header::Header;
use crate::error::Result;
use crate::image::common::chain;
use crate::image::common::walk::{Block, Walker};
use crate::image::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions};

/// A VDI image, with its parent if it is a differencing image.
pub struct VdiImage {
    file: ImageFile,
    header: Header,
    block_map: Box<[u32]>,
    parent: Option<Box<dyn DiskImage>>,
}

impl std::fmt::Debug for VdiImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiImage")
            .field("path", &self.file.path())
            .field("header", &self.header)
            .finish()
    }
}

impl VdiImage {
    /// Opens the VDI `file` at `depth` in its chain (read-only).
    pub fn open(file: ImageFile, options: &OpenOptions, depth: u32) -> Result<Self> {
        chain::refuse_writable(Format::Vdi, file.path(), options)?;
        let header = header::read(&file)?;
        let block_map = header::read_block_map(&file, &header)?;
        let parent = match header.image_type {
            header::ImageType::Diff => Some(parent::open(&file, &header, options, depth)?),
            header::ImageType::Normal | header::ImageType::Fixed => None,
        };
        Ok(VdiImage {
            file,
            header,
            block_map,
            parent,
        })
    }

    /// Normal (dynamic), fixed or differencing.
    pub fn image_type(&self) -> header::ImageType {
        self.header.image_type
    }

    /// How the block map maps guest ranges.
    fn walker(&self) -> Walker<'_> {
        Walker {
            parent: self.parent.as_deref(),
            block_size: self.header.block_size,
            sector_size: 512,
        }
    }

    fn lookup(&self, block: u64) -> Block<'_> {
        let entry = usize::try_from(block)
            .ok()
            .and_then(|i| self.block_map.get(i))
            .copied()
            .unwrap_or(header::UNALLOCATED);
        match entry {
            header::UNALLOCATED => Block::Absent,
            header::DISCARDED => Block::Zero,
            index => {
                let h = &self.header;
                Block::Data {
                    file: &self.file,
                    offset: h.offset_data
                        + u64::from(index) * (h.block_size + h.block_extra)
                        + h.block_extra,
                }
            }
        }
    }
}

impl DiskImage for VdiImage {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        let size = self.header.disk_size;
        let lookup = |b| Ok(self.lookup(b));
        self.walker()
            .map_image(self.file.path(), size, offset, len, lookup, out)
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        let size = self.header.disk_size;
        let lookup = |b| Ok(self.lookup(b));
        self.walker()
            .data_run_image(self.file.path(), size, offset, len, lookup)
    }

    fn chain(&self) -> Vec<ChainEntry> {
        let own = ChainEntry {
            holes_read_as_zero: true,
            ..chain::entry(&self.file, Format::Vdi, self.header.disk_size)
        };
        chain::chain_with_parent(own, self.parent.as_deref())
    }
}
