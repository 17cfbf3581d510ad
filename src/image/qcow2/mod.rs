//! qcow2 (placeholder until the read path lands).

use super::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions};
use crate::error::{Error, Result};

/// A qcow2 image.
pub struct Qcow2Image {
    file: ImageFile,
}

impl Qcow2Image {
    /// Opens a qcow2 image at `depth` in its chain.
    pub fn open(file: ImageFile, _options: &OpenOptions, _depth: u32) -> Result<Self> {
        Err(Error::unsupported("qcow2 is not implemented yet").with_path(file.path()))
    }
}

impl DiskImage for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn map<'a>(&'a self, _offset: u64, _len: u64, _out: &mut Vec<Extent<'a>>) -> Result<()> {
        Err(Error::unsupported("qcow2").with_path(self.file.path()))
    }
    fn chain(&self) -> Vec<ChainEntry> {
        Vec::new()
    }
}
