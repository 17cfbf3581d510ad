//! Raw images: guest offset = file offset. Also serves block devices given as images.

use super::{check_range, ChainEntry, DiskImage, Extent, Format, ImageFile, Source, WritePlan};
use crate::error::{Error, Result};

/// A raw disk image file or block device.
#[derive(Debug)]
pub struct RawImage {
    file: ImageFile,
}

impl RawImage {
    /// Serves `file` as it is; its size is the virtual size.
    pub fn new(file: ImageFile) -> Self {
        RawImage { file }
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

    fn writable(&self) -> bool {
        self.file.writable()
    }

    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        if !self.writable() {
            return Err(Error::new(
                crate::error::ErrorKind::ReadOnly,
                "raw image is open read-only",
            )
            .with_path(self.file.path()));
        }
        self.map(offset, len, out)?;
        Ok(WritePlan::Mapped)
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

    fn chain(&self) -> Vec<ChainEntry> {
        vec![super::common::chain::entry(
            &self.file,
            Format::Raw,
            self.virtual_size(),
        )]
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
