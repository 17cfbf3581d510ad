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
    }
}
