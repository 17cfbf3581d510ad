//! Raw images: guest offset = file offset. Also serves block devices given as images.

use super::{
    check_range, ChainEntry, DiskImage, Extent, Format, ImageFile, ImageWrite, Source, WritePlan,
};
use crate::error::{Error, ErrorKind, Result};

/// The first sector, which format probing reads.
const SECTOR: u64 = 512;

/// A raw disk image file or block device.
#[derive(Debug)]
pub struct RawImage {
    file: ImageFile,
    /// The format was probed, not given: writes to sector 0 are checked (see
    /// [`RawImage::probed`]).
    probed: bool,
}

impl RawImage {
    /// Serves `file` as it is; its size is the virtual size.
    pub fn new(file: ImageFile) -> Self {
        RawImage {
            file,
            probed: false,
        }
    }

    /// Serves `file`, found raw by probing, as [`RawImage::new`] does, except that a write
    /// putting a known format's magic into sector 0 is refused (`EPERM`, as QEMU does):
    /// the next probe would take the disk for an image of that format, whose header a
    /// guest controls (a qcow2 naming any host file as its backing file, say).
    /// `--format raw` allows such writes.
    pub fn probed(file: ImageFile) -> Self {
        RawImage { file, probed: true }
    }
}

impl DiskImage for RawImage {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.file.len()
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        check_range(offset, len, self.virtual_size())?;
        Ok(Some((&self.file, offset)))
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        out.push(Extent {
            len,
            depth: 0,
            source: Source::Data {
                file: &self.file,
                offset,
            },
        });
        Ok(())
    }

    fn chain(&self) -> Vec<ChainEntry> {
        vec![super::common::chain::entry(
            &self.file,
            Format::Raw,
            self.virtual_size(),
        )]
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        self.file.writable().then_some(self)
    }
}

impl ImageWrite for RawImage {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        if !self.file.writable() {
            return Err(
                Error::new(ErrorKind::ReadOnly, "raw image is open read-only")
                    .with_path(self.file.path()),
            );
        }
        if self.probed && offset < SECTOR {
            // Checked in write_sync, which sees the bytes.
            return Ok(WritePlan::Synchronous);
        }
        self.map(offset, len, out)?;
        Ok(WritePlan::Mapped)
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        if self.probed && offset < SECTOR {
            // Sector 0 as it would be after the write.
            let mut head = vec![0u8; SECTOR.min(self.virtual_size()) as usize];
            self.file.read_zero_padded(&mut head, 0)?;
            let start = offset as usize;
            let end = (start + buf.len()).min(head.len());
            head[start..end].copy_from_slice(&buf[..end - start]);
            if let Some(format) = super::open::magic_in_head(&head) {
                return Err(Error::new(
                    ErrorKind::Permission,
                    format!(
                        "refused a write of a {format} header to sector 0 of a raw image \
                         whose format was probed: the next open would take the disk for a \
                         {format} image; give --format raw to allow it"
                    ),
                )
                .with_path(self.file.path()));
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        self.file.punch_hole(offset, len).map(|_| ())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        if self.file.punch_hole(offset, len)? {
            return Ok(());
        }
        super::io::write_zeroes_by_writing(self, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::io;
    use std::io::Write;

    #[test]
    fn reads_and_writes_through_the_file() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&(0..=255u8).collect::<Vec<_>>()).unwrap();
        let img = RawImage::new(ImageFile::open(tmp.path(), true, false).unwrap());
        assert_eq!(img.virtual_size(), 256);
        let mut buf = [0u8; 4];
        io::read_at(&img, &mut buf, 10).unwrap();
        assert_eq!(buf, [10, 11, 12, 13]);
        io::write_at(&img, &[9, 9], 11).unwrap();
        io::read_at(&img, &mut buf, 10).unwrap();
        assert_eq!(buf, [10, 9, 9, 13]);
        img.write_zeroes(12, 2).unwrap();
        io::read_at(&img, &mut buf, 10).unwrap();
        assert_eq!(buf, [10, 9, 0, 0]);
    }

    #[test]
    fn a_probed_raw_image_refuses_format_magic_in_sector_0() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(1 << 20).unwrap();
        let open = |probed| {
            let file = ImageFile::open(tmp.path(), true, false).unwrap();
            if probed {
                RawImage::probed(file)
            } else {
                RawImage::new(file)
            }
        };
        let mut qcow2 = vec![0u8; 512];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        let probed = open(true);
        let refused = io::write_at(&probed, &qcow2, 0).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Permission);
        assert!(refused.to_string().contains("qcow2 header"), "{refused}");
        // the magic completed by a write that starts inside sector 0
        io::write_at(&probed, b"QF", 0).unwrap();
        let completing = io::write_at(&probed, b"I\xfb", 2).unwrap_err();
        assert_eq!(completing.kind(), ErrorKind::Permission);
        io::write_at(&probed, b"QED\0", 0).unwrap_err();
        // anything else in sector 0, and the magic elsewhere, are plain writes
        io::write_at(&probed, &[0x55; 512], 0).unwrap();
        io::write_at(&probed, &qcow2, 512).unwrap();
        // with the format given, the guest may write what it likes
        io::write_at(&open(false), &qcow2, 0).unwrap();
        let mut head = [0u8; 4];
        io::read_at(&probed, &mut head, 0).unwrap();
        assert_eq!(&head, b"QFI\xfb");
    }

    #[test]
    fn range_past_end_is_refused() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(512).unwrap();
        let img = RawImage::new(ImageFile::open(tmp.path(), false, false).unwrap());
        let mut buf = [0u8; 2];
        assert!(io::read_at(&img, &mut buf, 511).is_err());
        assert!(
            io::write_at(&img, &[1], 0).is_err(),
            "read-only image accepted a write"
        );
    }
}
