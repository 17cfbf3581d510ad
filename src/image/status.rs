//! Allocation status of guest ranges, in the shape of `qemu-img map --output=json`: which
//! runs hold data, which read as zero, and which image of the chain supplies them. Used by
//! `imgblk map` and by sparse copies (`imgblk cat --sparse`).

use super::{DiskImage, Extent, Format, Source};
use crate::error::Result;
use serde::Serialize;
use std::path::PathBuf;

/// One run of guest bytes with the same status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Which image of the chain supplies it (0 = top).
    pub depth: u32,
    /// Whether some image of the chain has it allocated.
    pub present: bool,
    /// Whether it reads as zeroes.
    pub zero: bool,
    /// Whether bytes are stored for it.
    pub data: bool,
    /// Whether it is stored compressed.
    pub compressed: bool,
    /// Host offset in the file of `depth`, for uncompressed data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl MapEntry {
    fn from_extent(start: u64, extent: &Extent<'_>) -> Self {
        let (present, zero, data, compressed, offset) = match extent.source {
            Source::Data { offset, .. } => (true, false, true, false, Some(offset)),
            Source::Compressed(_) => (true, false, true, true, None),
            Source::Transformed { .. } => (true, false, true, false, None),
            Source::Zero => (true, true, false, false, None),
            Source::Unallocated => (false, true, false, false, None),
        };
        MapEntry {
            start,
            length: extent.len,
            depth: extent.depth,
            present,
            zero,
            data,
            compressed,
            offset,
        }
    }

    /// Appends `next` to `self` when it continues the same kind of run.
    fn try_merge(&mut self, next: &MapEntry) -> bool {
        let same = (
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed,
        ) == (
            next.depth,
            next.present,
            next.zero,
            next.data,
            next.compressed,
        );
        let contiguous = match (self.offset, next.offset) {
            (Some(a), Some(b)) => a + self.length == b,
            (None, None) => true,
            _ => false,
        };
        if same && contiguous && self.start + self.length == next.start {
            self.length += next.length;
            true
        } else {
            false
        }
    }
}

/// How many doublings [`walk_status`]'s step may grow by over a long run of one kind.
const MAX_STEP_DOUBLINGS: u32 = 10;

/// Walks the whole image and calls `sink` with merged runs, asking the image about `step`
/// bytes at a time (which bounds the extents held at once). Over a long run of one kind
/// (a hole, say) the step doubles after each request that came back as one run, up to
/// 2^[`MAX_STEP_DOUBLINGS`] times `step`, and returns to `step` where runs change: the
/// walk then costs what the image's metadata holds, not what its virtual size claims (an
/// empty image declaring petabytes is walked in a few thousand requests).
///
/// Data in a file that holds guest bytes as they are (a raw layer, a flat VMDK extent) is
/// reported zero where the file has holes, as `qemu-img map` does: not data for a raw
/// layer, whose file is the disk; still data (`data` and `zero`) for a flat extent, a
/// fixed VHD or a VDI ([`ChainEntry::holes_read_as_zero`](super::ChainEntry)), which
/// their formats store.
pub fn walk_status(
    image: &dyn DiskImage,
    step: u64,
    mut sink: impl FnMut(MapEntry) -> Result<()>,
) -> Result<()> {
    let size = image.virtual_size();
    let base_step = step.max(512);
    let max_step = base_step.saturating_mul(1 << MAX_STEP_DOUBLINGS);
    let mut step = base_step;
    let flat_files = flat_files(image);
    let mut pending: Option<MapEntry> = None;
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < size {
        let len = step.min(size - pos);
        extents.clear();
        image.map(pos, len, &mut extents)?;
        let mut start = pos;
        for extent in &extents {
            for entry in entries(start, extent, &flat_files)? {
                if pending.as_mut().is_some_and(|run| run.try_merge(&entry)) {
                    continue;
                }
                if let Some(done) = pending.replace(entry) {
                    sink(done)?;
                }
            }
            start += extent.len;
        }
        pos += len;
        step = match extents.len() {
            1 => step.saturating_mul(2).min(max_step),
            _ => base_step,
        };
    }
    if let Some(done) = pending {
        sink(done)?;
    }
    Ok(())
}

/// The files of `image`'s chain whose holes read as zero, each with whether a hole is
/// still data (true for a flat extent, false for a raw layer).
fn flat_files(image: &dyn DiskImage) -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    for layer in image.chain() {
        if layer.format == Format::Raw {
            files.push((layer.path.clone(), false));
        }
        if layer.holes_read_as_zero {
            files.push((layer.path.clone(), true));
        }
        let flat = layer.extents.into_iter().filter(|e| e.flat);
        files.extend(flat.map(|e| (e.path, true)));
    }
    files
}

/// The runs of `extent` (at guest offset `start`): one, or for data in one of
/// `flat_files` the pieces in data and in holes of the file.
fn entries(
    start: u64,
    extent: &Extent<'_>,
    flat_files: &[(PathBuf, bool)],
) -> Result<Vec<MapEntry>> {
    let whole = MapEntry::from_extent(start, extent);
    let Source::Data { file, offset } = extent.source else {
        return Ok(vec![whole]);
    };
    let Some(&(_, hole_is_data)) = flat_files.iter().find(|(p, _)| p == file.path()) else {
        return Ok(vec![whole]);
    };
    let mut out = Vec::new();
    let mut done = 0;
    while done < extent.len {
        let (is_data, run_end) = file.allocation_at(offset + done)?;
        let piece = run_end.saturating_sub(offset + done).min(extent.len - done);
        let data = is_data || hole_is_data;
        out.push(MapEntry {
            start: start + done,
            length: piece,
            zero: !is_data,
            data,
            offset: data.then_some(offset + done),
            ..whole
        });
        done += piece;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::raw::RawImage;
    use crate::image::ImageFile;

    #[test]
    fn raw_holes_are_zero_runs() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = tmp.as_file();
        f.set_len(4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(f, &[1u8; 65536], 1 << 20).unwrap();
        let img = RawImage::new(ImageFile::open(tmp.path(), false, false).unwrap());
        let mut runs = Vec::new();
        walk_status(&img, 1 << 20, |e| {
            runs.push(e);
            Ok(())
        })
        .unwrap();
        let total: u64 = runs.iter().map(|r| r.length).sum();
        assert_eq!(total, 4 << 20);
        let data: Vec<_> = runs.iter().filter(|r| r.data).collect();
        assert_eq!(data.len(), 1, "{runs:?}");
        assert!(data[0].start <= 1 << 20 && data[0].start + data[0].length >= (1 << 20) + 65536);
        assert!(
            runs.iter().any(|r| r.zero && !r.data && r.present),
            "{runs:?}"
        );
    }
}
