//! The block walker: every block-mapped format (VMDK grains, VHD/VHDX blocks, VDI blocks)
//! answers "what does block N hold?" with a [`Block`], and [`Walker::map`] turns a guest
//! range into extents, sending absent blocks and clear bitmap bits to the parent image.
//!
//! Extents carry the depth relative to the image that maps them: its own blocks at 0,
//! its parent's one deeper (see [`chain::map_parent`]), so that at the top of any chain,
//! whatever formats it mixes, `depth` is the absolute depth `qemu-img map` reports.

use super::chain;
use crate::error::{Error, Result};
use crate::image::{Codec, CompressedCluster, DiskImage, Extent, ImageFile, Source};

/// Which bit of a bitmap byte stands for the first sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOrder {
    /// Bit 7 of byte 0 is sector 0 (VHD).
    MsbFirst,
    /// Bit 0 of byte 0 is sector 0 (VHDX).
    LsbFirst,
}

/// What one block of a layer holds.
#[derive(Debug, Clone, Copy)]
pub enum Block<'a> {
    /// Stored as-is; `offset` is where the block starts in `file`.
    Data {
        /// The host file.
        file: &'a ImageFile,
        /// Byte offset of the block's first byte.
        offset: u64,
    },
    /// Reads as zero in this layer; the parent is not consulted.
    Zero,
    /// Not in this layer: the parent's bytes, or unallocated when there is no parent.
    Absent,
    /// Sectors whose bit is set in `bitmap` are stored like [`Block::Data`]; the others
    /// are [`Block::Absent`].
    Partial {
        /// The host file.
        file: &'a ImageFile,
        /// Byte offset of the block's first byte.
        offset: u64,
        /// The bitmap holding the block's bits.
        bitmap: &'a [u8],
        /// Index of the bit for the block's first sector.
        first_bit: u64,
        /// Bit order inside a byte.
        order: BitOrder,
    },
    /// The whole block is one compressed stream.
    Compressed {
        /// The host file.
        file: &'a ImageFile,
        /// Where the stream starts.
        offset: u64,
        /// An upper bound of the stream's length.
        stored_len: u64,
        /// The encoding.
        codec: Codec,
        /// How many bytes the block decompresses to (less than the block size only for a
        /// short last block).
        size: u64,
    },
}

/// Maps guest ranges of one layer through a block lookup.
#[derive(Clone, Copy)]
pub struct Walker<'a> {
    /// The parent image absent blocks fall through to.
    pub parent: Option<&'a dyn DiskImage>,
    /// Block size in bytes (a power of two is not required).
    pub block_size: u64,
    /// Sector size the bitmaps of [`Block::Partial`] count in.
    pub sector_size: u64,
}

impl<'a> Walker<'a> {
    /// Appends extents for `len` bytes starting `rel` bytes into the block-mapped area,
    /// whose byte 0 is guest offset `base`; `lookup` answers for one block index.
    pub fn map(
        &self,
        base: u64,
        rel: u64,
        len: u64,
        mut lookup: impl FnMut(u64) -> Result<Block<'a>>,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<()> {
        if self.block_size == 0 || self.sector_size == 0 {
            return Err(Error::corrupt("block size of zero"));
        }
        let end = rel
            .checked_add(len)
            .ok_or_else(|| Error::invalid("range overflows"))?;
        let mut pos = rel;
        while pos < end {
            let index = pos / self.block_size;
            let within = pos % self.block_size;
            let piece = (self.block_size - within).min(end - pos);
            match lookup(index)? {
                Block::Data { file, offset } => self.data(file, offset + within, piece, out)?,
                Block::Zero => push(out, self.extent(piece, Source::Zero)),
                Block::Absent => self.absent(base + pos, piece, out)?,
                Block::Partial {
                    file,
                    offset,
                    bitmap,
                    first_bit,
                    order,
                } => {
                    let bits = Bits {
                        bitmap,
                        first_bit,
                        order,
                    };
                    self.partial(&bits, file, offset, base + pos - within, within, piece, out)?
                }
                Block::Compressed {
                    file,
                    offset,
                    stored_len,
                    codec,
                    size,
                } => {
                    if within + piece > size {
                        return Err(Error::corrupt(format!(
                            "compressed block {index} holds {size} bytes, {} wanted",
                            within + piece
                        ))
                        .at(offset)
                        .with_path(file.path()));
                    }
                    let cluster =
                        CompressedCluster::new(file, offset, stored_len, size, within, codec)?;
                    out.push(self.extent(piece, Source::Compressed(cluster)));
                }
            }
            pos += piece;
        }
        Ok(())
    }

    /// Maps `offset..offset + len` of a single-file image of `size` bytes whose blocks
    /// start at guest offset 0, checking the range and naming `path` in errors.
    pub fn map_image(
        &self,
        path: &std::path::Path,
        size: u64,
        offset: u64,
        len: u64,
        lookup: impl FnMut(u64) -> Result<Block<'a>>,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<()> {
        crate::image::check_range(offset, len, size)?;
        self.map(0, offset, len, lookup, out)
            .map_err(|e| e.with_path(path))
    }

    /// [`DiskImage::data_run`] of the block-mapped area (as [`Walker::map`] takes it): the
    /// file and offset when all `len` bytes from `rel` on lie in one block that stores
    /// them as data here, or in the parent through an absent block; `None` otherwise.
    #[inline]
    pub fn data_run(
        &self,
        base: u64,
        rel: u64,
        len: u64,
        lookup: impl FnOnce(u64) -> Result<Block<'a>>,
    ) -> Result<Option<(&'a ImageFile, u64)>> {
        if self.block_size == 0 || len == 0 {
            return Ok(None);
        }
        let within = rel % self.block_size;
        if within
            .checked_add(len)
            .is_none_or(|end| end > self.block_size)
        {
            return Ok(None);
        }
        match lookup(rel / self.block_size)? {
            Block::Data { file, offset } => {
                super::bytes::check_in_file(file, offset + within, len, "data block")?;
                Ok(Some((file, offset + within)))
            }
            Block::Absent => match self.parent {
                Some(parent) if base + rel + len <= parent.virtual_size() => {
                    parent.data_run(base + rel, len)
                }
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// [`Walker::data_run`] of a single-file image, checked and named as [`Walker::map_image`].
    pub fn data_run_image(
        &self,
        path: &std::path::Path,
        size: u64,
        offset: u64,
        len: u64,
        lookup: impl FnOnce(u64) -> Result<Block<'a>>,
    ) -> Result<Option<(&'a ImageFile, u64)>> {
        crate::image::check_range(offset, len, size)?;
        self.data_run(0, offset, len, lookup)
            .map_err(|e| e.with_path(path))
    }

    fn extent(&self, len: u64, source: Source<'a>) -> Extent<'a> {
        Extent {
            len,
            depth: 0,
            source,
        }
    }

    /// Data at `offset` of `file`, which must hold all `len` bytes.
    fn data(
        &self,
        file: &'a ImageFile,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<()> {
        super::bytes::check_in_file(file, offset, len, "data block")?;
        push(out, self.extent(len, Source::Data { file, offset }));
        Ok(())
    }

    fn absent(&self, guest: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        chain::map_parent(self.parent, guest, len, out)
    }

    /// A block whose sectors come from here or from the parent, bit by bit. `block_guest`
    /// is the guest offset of the block's first byte.
    #[allow(clippy::too_many_arguments)]
    fn partial(
        &self,
        bits: &Bits<'_>,
        file: &'a ImageFile,
        offset: u64,
        block_guest: u64,
        within: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<()> {
        let ss = self.sector_size;
        let end = within + len;
        let mut pos = within;
        while pos < end {
            let present = bits.get(pos / ss).ok_or_else(|| {
                Error::corrupt("sector bitmap is shorter than its block").with_path(file.path())
            })?;
            let mut run_end = (pos / ss + 1) * ss;
            while run_end < end && bits.get(run_end / ss) == Some(present) {
                run_end += ss;
            }
            let run_end = run_end.min(end);
            if present {
                self.data(file, offset + pos, run_end - pos, out)?;
            } else {
                self.absent(block_guest + pos, run_end - pos, out)?;
            }
            pos = run_end;
        }
        Ok(())
    }
}

/// One block's view of a bitmap.
struct Bits<'b> {
    bitmap: &'b [u8],
    first_bit: u64,
    order: BitOrder,
}

impl Bits<'_> {
    /// The bit of the block's `sector`, or `None` past the bitmap's end.
    fn get(&self, sector: u64) -> Option<bool> {
        let bit = self.first_bit.checked_add(sector)?;
        let byte = *self.bitmap.get(usize::try_from(bit / 8).ok()?)?;
        let shift = match self.order {
            BitOrder::MsbFirst => 7 - (bit % 8),
            BitOrder::LsbFirst => bit % 8,
        };
        Some(byte >> shift & 1 == 1)
    }
}

/// Whether `next` continues `prev`: the same depth, and zero or unallocated runs, or
/// data at consecutive bytes of one file.
fn contiguous(prev: &Extent<'_>, next: &Extent<'_>) -> bool {
    if prev.depth != next.depth {
        return false;
    }
    match (prev.source, next.source) {
        (Source::Zero, Source::Zero) | (Source::Unallocated, Source::Unallocated) => true,
        (Source::Data { file: a, offset: x }, Source::Data { file: b, offset: y }) => {
            std::ptr::eq(a, b) && x.checked_add(prev.len) == Some(y)
        }
        _ => false,
    }
}

/// Appends `ext`, merging it into the previous extent when both continue one another.
// Always inlined: qcow2's lookup fast path ends here (`cargo bench --bench lookup`).
#[inline(always)]
pub fn push<'a>(out: &mut Vec<Extent<'a>>, ext: Extent<'a>) {
    match out.last_mut() {
        Some(last) if contiguous(last, &ext) => last.len += ext.len,
        _ => out.push(ext),
    }
}

/// Merges the extent at `index` into the one before it when contiguous: where extents
/// appended by another image (a parent) meet those before them.
pub fn merge_at(out: &mut Vec<Extent<'_>>, index: usize) {
    let Some(prev_index) = index.checked_sub(1) else {
        return;
    };
    if let (Some(prev), Some(next)) = (out.get(prev_index), out.get(index)) {
        if contiguous(prev, next) {
            let len = next.len;
            out.remove(index);
            out[prev_index].len += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(len: usize) -> (tempfile::NamedTempFile, ImageFile) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&vec![0u8; len]).unwrap();
        let f = ImageFile::open(tmp.path(), false, false).unwrap();
        (tmp, f)
    }

    fn walker() -> Walker<'static> {
        Walker {
            parent: None,
            block_size: 4096,
            sector_size: 512,
        }
    }

    #[test]
    fn merges_contiguous_blocks_and_splits_bitmaps() {
        let (_tmp, f) = file(1 << 16);
        let w = walker();
        let mut out = Vec::new();
        // Blocks 0 and 1 are contiguous in the file; block 2 is absent.
        w.map(
            0,
            100,
            3 * 4096 - 200,
            |i| {
                Ok(match i {
                    0 | 1 => Block::Data {
                        file: &f,
                        offset: 8192 + i * 4096,
                    },
                    _ => Block::Absent,
                })
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len, 2 * 4096 - 100);
        assert_eq!(
            out[0].source,
            Source::Data {
                file: &f,
                offset: 8292
            }
        );
        assert_eq!(out[1].source, Source::Unallocated);

        let bitmap = [0b1100_0000u8];
        out.clear();
        w.map(
            0,
            0,
            4096,
            |_| {
                Ok(Block::Partial {
                    file: &f,
                    offset: 0,
                    bitmap: &bitmap,
                    first_bit: 0,
                    order: BitOrder::MsbFirst,
                })
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].len, out[1].len), (1024, 3072));
        assert_eq!(out[1].source, Source::Unallocated);
    }

    #[test]
    fn data_past_end_of_file_is_corrupt() {
        let (_tmp, f) = file(4096);
        let w = walker();
        let mut out = Vec::new();
        let err = w
            .map(
                0,
                0,
                4096,
                |_| {
                    Ok(Block::Data {
                        file: &f,
                        offset: 512,
                    })
                },
                &mut out,
            )
            .unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}
