//! The VHD footer: 512 big-endian bytes at the end of every VHD (and copied to offset 0 of
//! dynamic and differencing ones), with a one's-complement checksum.

use crate::error::{Error, Result};
use crate::image::common::bytes::{self, be16, be32, be64, field};
use crate::image::ImageFile;

/// The footer's first eight bytes.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Footer size in bytes.
pub const FOOTER_BYTES: u64 = 512;
/// The largest VHD: 2040 GiB (as QEMU).
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// The largest CHS geometry: images with it use the footer's size field.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// How the disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Raw bytes followed by the footer.
    Fixed,
    /// Blocks allocated on write, through a BAT.
    Dynamic,
    /// Like dynamic, with unwritten sectors read from a parent.
    Differencing,
}

/// The fields of a footer imgblk uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Byte offset of the dynamic disk header (dynamic and differencing disks).
    pub data_offset: u64,
    /// Four-character creator application ("vpc ", "win ", "qemu", ...).
    pub creator_app: [u8; 4],
    /// Size in bytes as the footer states it.
    pub current_size: u64,
    /// Cylinders, heads, sectors per track.
    pub geometry: (u16, u8, u8),
    /// Storage type.
    pub disk_type: DiskType,
    /// The disk's identity; a child records its parent's.
    pub unique_id: [u8; 16],
}

/// The VHD checksum: one's complement of the byte sum.
pub fn checksum(buf: &[u8]) -> u32 {
    !buf.iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

/// Parses and checks a footer (cookie, checksum, disk type).
pub fn parse(buf: &[u8]) -> Result<Footer> {
    if !buf.starts_with(COOKIE) {
        return Err(Error::corrupt("VHD footer has no \"conectix\" cookie"));
    }
    bytes::verify_checksum(buf, 64..68, be32(buf, 64), checksum, "VHD footer")?;
    let disk_type = match be32(buf, 60) {
        2 => DiskType::Fixed,
        3 => DiskType::Dynamic,
        4 => DiskType::Differencing,
        other => {
            return Err(Error::unsupported(format!(
                "VHD footer disk type {other} is not 2, 3 or 4"
            )))
        }
    };
    Ok(Footer {
        data_offset: be64(buf, 16),
        creator_app: field(buf, 28),
        current_size: be64(buf, 48),
        geometry: (
            be16(buf, 56),
            buf.get(58).copied().unwrap_or(0),
            buf.get(59).copied().unwrap_or(0),
        ),
        disk_type,
        unique_id: field(buf, 68),
    })
}

/// Reads the footer at the end of `file`, falling back to the copy at offset 0 that
/// dynamic and differencing disks keep.
pub fn read(file: &ImageFile) -> Result<Footer> {
    let end = file.len().checked_sub(FOOTER_BYTES).ok_or_else(|| {
        Error::corrupt("file is too short for a VHD footer").with_path(file.path())
    })?;
    let at_end = bytes::read_vec(file, end, FOOTER_BYTES, "VHD footer")?;
    let primary = parse(&at_end).map_err(|e| e.at(end).with_path(file.path()));
    match primary {
        Ok(footer) => Ok(footer),
        Err(err) => {
            let copy = bytes::read_vec(file, 0, FOOTER_BYTES, "VHD footer copy")?;
            match parse(&copy) {
                Ok(footer) if footer.disk_type != DiskType::Fixed => {
                    if file.is_block_device() {
                        // a VHD in a logical volume (Xen LVM SRs) ends before the device does
                        tracing::debug!(path = %file.path().display(),
                            "no VHD footer at the device's end; using the copy at offset 0");
                    } else {
                        tracing::warn!(path = %file.path().display(), error = %err,
                            "VHD footer at the end is damaged, using the copy at offset 0");
                    }
                    Ok(footer)
                }
                _ => Err(err),
            }
        }
    }
}

/// Whether the last 512 bytes of `file` are a valid fixed-disk footer (fixed VHDs have
/// no magic at offset 0).
pub fn is_fixed_vhd(file: &ImageFile) -> bool {
    let Some(end) = file.len().checked_sub(FOOTER_BYTES) else {
        return false;
    };
    let mut buf = [0u8; FOOTER_BYTES as usize];
    file.read_exact_at(&mut buf, end).is_ok()
        && parse(&buf).is_ok_and(|f| f.disk_type == DiskType::Fixed)
}

impl Footer {
    /// The guest-visible size, as QEMU computes it: from the CHS geometry for images made
    /// by Virtual PC and QEMU, from the size field for Hyper-V, Disk2vhd, XenServer and
    /// QEMU with `force_size` ("qem2"), and for images with the largest geometry.
    pub fn virtual_size(&self) -> Result<u64> {
        let (c, h, s) = self.geometry;
        let chs = u64::from(c) * u64::from(h) * u64::from(s);
        let uses_size_field = matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0" | b"wa\0\0"
        );
        let sectors = if uses_size_field || chs == MAX_GEOMETRY {
            self.current_size / 512
        } else {
            chs
        };
        if sectors > MAX_SECTORS {
            return Err(Error::unsupported(format!(
                "VHD of {sectors} sectors is larger than the format's 2040 GiB"
            )));
        }
        Ok(sectors * 512)
    }
}
