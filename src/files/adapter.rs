//! An image (or a piece of one) as the byte source a file-system crate reads from, with
//! every read checked against the image's size, so that a hostile file system pointing
//! past the end gets an error naming the image rather than a read of someone else's bytes.

use crate::error::{Error, Result};
use crate::image::{io::read_at, DiskImage};
use std::sync::Arc;

/// Positioned reads of an image for a file-system crate.
#[derive(Clone)]
pub struct ImageReader {
    image: Arc<dyn DiskImage>,
    name: String,
}

impl ImageReader {
    /// Reads `image`, called `name` (its path and piece) in errors.
    pub fn new(image: Arc<dyn DiskImage>, name: impl Into<String>) -> Self {
        ImageReader {
            image,
            name: name.into(),
        }
    }

    /// What errors call the image.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image's size in bytes.
    pub fn len(&self) -> u64 {
        self.image.virtual_size()
    }

    /// Whether the image has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from byte `offset`; an error naming the image when the range does not
    /// lie inside it.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let inside = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len());
        if !inside {
            return Err(Error::corrupt(format!(
                "{}: the file system asks for {} bytes at offset {offset}, past the end of \
                 its {}-byte volume",
                self.name,
                buf.len(),
                self.len()
            )));
        }
        read_at(&*self.image, buf, offset).map_err(|e| {
            Error::new(
                e.kind(),
                format!("{}: reading the file system: {e}", self.name),
            )
        })
    }
}

/// An image as the `Read + Write + Seek` stream crates such as `fatfs` take: reads go
/// through [`ImageReader::read_at`] (so past the end they end, as a file does), writes are
/// refused, for imgblk's file commands never change an image.
pub struct ImageStream {
    reader: ImageReader,
    pos: u64,
    /// The last [`WINDOW`]-aligned stretch read, from `window_start`: such crates read a
    /// directory entry (32 bytes) at a time, and one image lookup each was most of the
    /// cost of a walk.
    window: Vec<u8>,
    window_start: u64,
}

/// How much [`ImageStream`] reads at once.
const WINDOW: u64 = 64 << 10;

impl ImageStream {
    /// A stream over `reader`, at its start.
    pub fn new(reader: ImageReader) -> Self {
        ImageStream {
            reader,
            pos: 0,
            window: Vec::new(),
            window_start: 0,
        }
    }
}

impl std::io::Read for ImageStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = self.reader.len();
        if buf.is_empty() || self.pos >= len {
            return Ok(0);
        }
        let cached = self.window_start..self.window_start + self.window.len() as u64;
        if !cached.contains(&self.pos) {
            let start = self.pos / WINDOW * WINDOW;
            self.window.clear();
            let mut window = vec![0; (len - start).min(WINDOW) as usize];
            self.reader
                .read_at(start, &mut window)
                .map_err(std::io::Error::other)?;
            (self.window, self.window_start) = (window, start);
        }
        let from = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - from);
        buf[..n].copy_from_slice(&self.window[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for ImageStream {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match pos {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.reader.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::other(Error::corrupt(format!(
                "{}: the file system seeks before the start of its volume",
                self.reader.name
            )))
        })?;
        Ok(self.pos)
    }
}

impl std::io::Write for ImageStream {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(Error::new(
            crate::error::ErrorKind::ReadOnly,
            format!(
                "{}: the file commands never write to an image",
                self.reader.name
            ),
        )))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{open_image, OpenOptions};

    #[test]
    fn reads_past_the_end_are_refused_with_the_image_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, [7u8; 4096]).unwrap();
        let image = open_image(&path, &OpenOptions::default()).unwrap();
        let reader = ImageReader::new(Arc::from(image), "disk.raw --part 1");
        let mut buf = [0u8; 16];
        reader.read_at(4080, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 16]);
        let err = reader.read_at(4081, &mut buf).unwrap_err().to_string();
        assert!(
            err.contains("disk.raw --part 1") && err.contains("past the end"),
            "{err}"
        );
        assert!(reader.read_at(u64::MAX - 4, &mut buf).is_err());

        use std::io::{Read, Seek, SeekFrom, Write};
        let mut stream = ImageStream::new(reader);
        assert_eq!(stream.seek(SeekFrom::End(-10)).unwrap(), 4086);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [7u8; 10]);
        assert!(stream.seek(SeekFrom::Current(-5000)).is_err());
        assert!(stream.write(b"x").is_err());
    }
}
