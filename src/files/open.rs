//! Choosing the in-process reader for the file system the layout probe found.

use super::adapter::ImageReader;
use super::ext4::Ext4Fs;
use super::fat::FatFs;
use super::ntfs::NtfsFs;
use super::FileSystem;
use crate::error::{Error, Result};
use crate::image::DiskImage;
use crate::layout::ContentKind;
use std::sync::Arc;

/// The file system `kind` on `image` (called `name` in errors), ready to read; an error
/// naming the file system and `imgblk mount` for those read only through the kernel.
pub fn open(
    image: Arc<dyn DiskImage>,
    kind: ContentKind,
    name: &str,
) -> Result<Box<dyn FileSystem>> {
    match kind {
        ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4 => {
            Ok(Box::new(Ext4Fs::load(ImageReader::new(image, name))?))
        }
        ContentKind::Vfat => Ok(Box::new(FatFs::load(ImageReader::new(image, name))?)),
        ContentKind::Ntfs => Ok(Box::new(NtfsFs::load(ImageReader::new(image, name))?)),
        other => Err(Error::unsupported(format!(
            "{name} holds {}, which imgblk reads only through the kernel (in process: \
             ext2/3/4, vfat and ntfs): as root on a host with ublk, ls, get and tar mount \
             it read-only on the way, and `imgblk mount` mounts it",
            other.as_str()
        ))),
    }
}
