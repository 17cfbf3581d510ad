//! Helpers the formats' unit tests share: byte patching, temp files, whole-image reads.

use crate::error::Result;
use crate::image::io::read_at;
use crate::image::{DiskImage, ImageFile, OpenOptions};
use std::path::{Path, PathBuf};

/// Copies `bytes` into `buf` at `at`.
pub fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens `path` read-only at depth 0 with a format's `open`.
pub fn open_with<T>(path: &Path, open: fn(ImageFile, &OpenOptions, u32) -> Result<T>) -> Result<T> {
    open(
        ImageFile::open(path, false, false)?,
        &OpenOptions::default(),
        0,
    )
}

/// Reads the whole guest disk.
pub fn read_all(image: &dyn DiskImage) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; image.virtual_size() as usize];
    read_at(image, &mut buf, 0)?;
    Ok(buf)
}

/// Reads the whole guest disk `piece` bytes at a time, as a device's requests do: small
/// ranges take the formats' one-block fast paths that [`read_all`]'s one range skips.
pub fn read_in_pieces(image: &dyn DiskImage, piece: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; image.virtual_size() as usize];
    for (index, chunk) in buf.chunks_mut(piece).enumerate() {
        read_at(image, chunk, (index * piece) as u64)?;
    }
    Ok(buf)
}
