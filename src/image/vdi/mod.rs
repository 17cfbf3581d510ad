//! VDI (VirtualBox disk image), read-only: version 1.1, normal (dynamic) and fixed
//! (static) images. Unallocated and discarded blocks read as zero.

pub mod header;

#[cfg(test)]
mod tests;

use self::header::Header;
use crate::error::Result;
use crate::image::common::chain;
use crate::image::common::walk::{Block, Walker};
use crate::image::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions};

/// A VDI image.
#[derive(Debug)]
pub struct VdiImage {
    file: ImageFile,
    header: Header,
    block_map: Box<[u32]>,
}

impl VdiImage {
    /// Opens the VDI `file` (read-only; a VDI has no parent, so its depth in a chain does
    /// not matter).
    pub fn open(file: ImageFile, options: &OpenOptions) -> Result<Self> {
        chain::refuse_writable(Format::Vdi, file.path(), options)?;
        let header = header::read(&file)?;
        let block_map = header::read_block_map(&file, &header)?;
        Ok(VdiImage {
            file,
            header,
            block_map,
        })
    }

    /// Normal (dynamic) or fixed.
    pub fn image_type(&self) -> header::ImageType {
        self.header.image_type
    }

    /// How the block map maps guest ranges.
    fn walker(&self) -> Walker<'_> {
        Walker {
            parent: None,
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
        vec![chain::entry(&self.file, Format::Vdi, self.header.disk_size)]
    }
}
