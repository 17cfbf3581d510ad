//! Images made of parts of other images: a partition ([`SliceView`]) and a logical volume
//! ([`SegmentView`], linear and striped segments). Both only translate offsets and hand the
//! request to the inner image's own `map`, so they add no copy and no lock.

use crate::error::{Error, Result};
use crate::image::io::writer_of;
use crate::image::{
    check_range, ChainEntry, DiskImage, Extent, Format, ImageFile, ImageWrite, WritePlan,
};
use std::sync::Arc;

/// Most stripes a segment may have (LVM's own limit).
pub const MAX_STRIPES: usize = 128;

/// A contiguous window `start..start + len` of an inner image, e.g. a partition.
pub struct SliceView {
    inner: Arc<dyn DiskImage>,
    start: u64,
    len: u64,
}

impl SliceView {
    /// A view of `len` bytes of `inner` from byte `start`; the window must lie inside it.
    pub fn new(inner: Arc<dyn DiskImage>, start: u64, len: u64) -> Result<Self> {
        check_range(start, len, inner.virtual_size())?;
        Ok(SliceView { inner, start, len })
    }

    /// Where the window starts in the inner image.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The image the window looks into.
    pub fn inner(&self) -> &Arc<dyn DiskImage> {
        &self.inner
    }
}

impl DiskImage for SliceView {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.len
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        check_range(offset, len, self.len)?;
        self.inner.map(self.start + offset, len, out)
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        check_range(offset, len, self.len)?;
        self.inner.data_run(self.start + offset, len)
    }

    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }

    fn chain(&self) -> Vec<ChainEntry> {
        self.inner.chain()
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        self.inner.writer().map(|_| self as &dyn ImageWrite)
    }

    fn source_ranges<'a>(
        &'a self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&'a dyn DiskImage, u64, u64) -> Result<()>,
    ) -> Result<bool> {
        check_range(offset, len, self.len)?;
        f(&*self.inner, self.start + offset, len)?;
        Ok(true)
    }
}

impl ImageWrite for SliceView {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        check_range(offset, len, self.len)?;
        writer_of(&*self.inner)?.map_write(self.start + offset, len, out)
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        writer_of(&*self.inner)?.write_sync(self.start + offset, buf)
    }

    fn flush(&self) -> Result<()> {
        writer_of(&*self.inner)?.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.len)?;
        writer_of(&*self.inner)?.discard(self.start + offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.len)?;
        writer_of(&*self.inner)?.write_zeroes(self.start + offset, len)
    }
}

/// Where one stripe of a segment lives: bytes of `image` from `offset` on.
#[derive(Clone)]
pub struct Area {
    /// The image holding the stripe (a physical volume).
    pub image: Arc<dyn DiskImage>,
    /// Byte offset of the stripe's first byte in `image`.
    pub offset: u64,
}

/// A run of bytes of a [`SegmentView`], laid out over one area (linear) or over several in
/// `stripe_size`-byte chunks taken round-robin (striped, like dm-stripe).
#[derive(Clone)]
pub struct Segment {
    len: u64,
    stripe_size: u64,
    areas: Vec<Area>,
}

impl Segment {
    /// `len` bytes stored contiguously at `offset` in `image`.
    pub fn linear(len: u64, image: Arc<dyn DiskImage>, offset: u64) -> Result<Self> {
        Self::striped(len, len, vec![Area { image, offset }])
    }

    /// `len` bytes cut in `stripe_size`-byte chunks, chunk *k* going to area *k mod n*.
    /// Each area holds `len / n` bytes; `len` must divide evenly into whole chunks per area.
    pub fn striped(len: u64, stripe_size: u64, areas: Vec<Area>) -> Result<Self> {
        let n = areas.len() as u64;
        if areas.is_empty() || areas.len() > MAX_STRIPES {
            return Err(Error::corrupt(format!(
                "segment has {n} stripes, must be 1..={MAX_STRIPES}"
            )));
        }
        if len == 0 || stripe_size == 0 {
            return Err(Error::corrupt(format!(
                "segment of {len} bytes with stripe size {stripe_size}: both must be non-zero"
            )));
        }
        let per_area = len / n;
        if len % n != 0 || (n > 1 && per_area % stripe_size != 0) {
            return Err(Error::corrupt(format!(
                "segment of {len} bytes does not split into whole {stripe_size}-byte chunks over {n} stripes"
            )));
        }
        for (i, area) in areas.iter().enumerate() {
            check_range(area.offset, per_area, area.image.virtual_size()).map_err(|_| {
                Error::corrupt(format!(
                    "stripe {i} ({per_area} bytes at byte {}) lies beyond the end of its {}-byte volume",
                    area.offset,
                    area.image.virtual_size()
                ))
            })?;
        }
        let stripe_size = if n == 1 { len } else { stripe_size };
        Ok(Segment {
            len,
            stripe_size,
            areas,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: segments are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The area and byte offset in it of byte `rel` of the segment, and how many bytes from
    /// there stay in that area.
    fn locate(&self, rel: u64) -> Option<(&Area, u64, u64)> {
        let n = self.areas.len() as u64;
        let chunk = rel / self.stripe_size;
        let within = rel % self.stripe_size;
        let area = self.areas.get((chunk % n) as usize)?;
        let offset = (chunk / n) * self.stripe_size + within;
        Some((area, area.offset + offset, self.stripe_size - within))
    }
}

/// An image made of segments laid end to end, e.g. a logical volume.
pub struct SegmentView {
    /// Segments with the byte offset each starts at.
    segments: Vec<(u64, Segment)>,
    size: u64,
}

impl SegmentView {
    /// Lays `segments` end to end.
    pub fn new(segments: Vec<Segment>) -> Result<Self> {
        let mut size = 0u64;
        let mut placed = Vec::with_capacity(segments.len());
        for seg in segments {
            let start = size;
            size = size
                .checked_add(seg.len)
                .ok_or_else(|| Error::corrupt("segments add up to more than 2^64 bytes"))?;
            placed.push((start, seg));
        }
        Ok(SegmentView {
            segments: placed,
            size,
        })
    }

    /// Calls `f(image, offset, len)` for each piece of `offset..offset + len`, in order,
    /// cut at segment and stripe-chunk edges.
    fn for_each_piece<'a>(
        &'a self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&'a dyn DiskImage, u64, u64) -> Result<()>,
    ) -> Result<()> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let mut pos = offset;
        let mut idx = self
            .segments
            .partition_point(|(start, seg)| start + seg.len <= pos);
        while pos < end {
            let (start, seg) = self
                .segments
                .get(idx)
                .ok_or_else(|| Error::corrupt("segment map does not cover the request"))?;
            let rel = pos - start;
            let (area, area_offset, in_chunk) = seg
                .locate(rel)
                .ok_or_else(|| Error::corrupt("segment has no stripe for the request"))?;
            let n = in_chunk.min(seg.len - rel).min(end - pos);
            f(&*area.image, area_offset, n)?;
            pos += n;
            if pos >= start + seg.len {
                idx += 1;
            }
        }
        Ok(())
    }

    /// Each distinct image the segments use, once.
    fn images(&self) -> Vec<&Arc<dyn DiskImage>> {
        let mut seen: Vec<&Arc<dyn DiskImage>> = Vec::new();
        for (_, seg) in &self.segments {
            for area in &seg.areas {
                if !seen.iter().any(|s| Arc::ptr_eq(s, &area.image)) {
                    seen.push(&area.image);
                }
            }
        }
        seen
    }
}

impl DiskImage for SegmentView {
    fn format(&self) -> Format {
        self.images().first().map_or(Format::Raw, |i| i.format())
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        self.for_each_piece(offset, len, |image, off, n| image.map(off, n, out))
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        // The only piece, counted rather than collected: no allocation per request.
        let (mut pieces, mut only) = (0, None);
        self.for_each_piece(offset, len, |image, off, n| {
            pieces += 1;
            only = Some((image, off, n));
            Ok(())
        })?;
        match (pieces, only) {
            (1, Some((image, off, n))) => image.data_run(off, n),
            _ => Ok(None),
        }
    }

    fn logical_block_size(&self) -> u32 {
        self.images()
            .iter()
            .map(|i| i.logical_block_size())
            .fold(512, u32::max)
    }

    fn chain(&self) -> Vec<ChainEntry> {
        let mut out: Vec<ChainEntry> = Vec::new();
        for image in self.images() {
            for entry in image.chain() {
                if !out.iter().any(|e| e.path == entry.path) {
                    out.push(entry);
                }
            }
        }
        out
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        let images = self.images();
        let writable = !images.is_empty() && images.iter().all(|i| i.writer().is_some());
        writable.then_some(self)
    }

    fn source_ranges<'a>(
        &'a self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&'a dyn DiskImage, u64, u64) -> Result<()>,
    ) -> Result<bool> {
        self.for_each_piece(offset, len, f)?;
        Ok(true)
    }
}

impl ImageWrite for SegmentView {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        let mut plan = WritePlan::Mapped;
        let first = out.len();
        self.for_each_piece(offset, len, |image, off, n| {
            if writer_of(image)?.map_write(off, n, out)? == WritePlan::Synchronous {
                plan = WritePlan::Synchronous;
            }
            Ok(())
        })?;
        if plan == WritePlan::Synchronous {
            out.truncate(first);
        }
        Ok(plan)
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        self.for_each_piece(offset, buf.len() as u64, |image, off, n| {
            let n = n as usize;
            crate::image::io::write_at(image, &buf[pos..pos + n], off)?;
            pos += n;
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        self.images()
            .iter()
            .try_for_each(|i| writer_of(&***i)?.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.for_each_piece(offset, len, |image, off, n| {
            writer_of(image)?.discard(off, n)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.for_each_piece(offset, len, |image, off, n| {
            writer_of(image)?.write_zeroes(off, n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{io, raw::RawImage, ImageFile};
    use std::io::Write;

    /// A writable raw image of `len` bytes where byte i holds `tag + i / 512` (so every
    /// sector says which image and sector it came from).
    fn image(tag: u8, len: usize) -> (tempfile::NamedTempFile, Arc<dyn DiskImage>) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| tag.wrapping_add((i / 512) as u8))
            .collect();
        tmp.write_all(&data).unwrap();
        let img = RawImage::new(ImageFile::open(tmp.path(), true, false).unwrap());
        (tmp, Arc::new(img))
    }

    fn read(img: &dyn DiskImage, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        io::read_at(img, &mut buf, off).unwrap();
        buf
    }

    #[test]
    fn slice_translates_reads_and_writes() {
        let (_t, disk) = image(0, 8192);
        let part = SliceView::new(disk.clone(), 1024, 2048).unwrap();
        assert_eq!(part.virtual_size(), 2048);
        assert_eq!(read(&part, 0, 2), vec![2, 2]);
        assert_eq!(read(&part, 2047, 1), vec![5]);
        let (file, offset) = part.data_run(512, 1024).unwrap().expect("raw data");
        assert_eq!((file.path(), offset), (_t.path(), 1536));
        assert!(part.data_run(2047, 2).is_err(), "run past the slice");
        io::write_at(&part, &[0xaa], 10).unwrap();
        assert_eq!(read(&*disk, 1034, 1), vec![0xaa]);
        part.write_zeroes(0, 1).unwrap();
        assert_eq!(read(&*disk, 1024, 1), vec![0]);
        part.flush().unwrap();
        let mut buf = [0u8; 2];
        assert!(
            io::read_at(&part, &mut buf, 2047).is_err(),
            "read past the slice"
        );
        assert!(
            SliceView::new(disk, 8000, 1000).is_err(),
            "slice past the disk"
        );
    }

    #[test]
    fn striped_segment_goes_round_robin() {
        let (_a, a) = image(0, 8192);
        let (_b, b) = image(100, 8192);
        // 4 chunks of 1024 bytes: a[0..1024], b[0..1024], a[1024..2048], b[1024..2048];
        // areas start at 2048 (sector 4) in both.
        let areas = vec![
            Area {
                image: a.clone(),
                offset: 2048,
            },
            Area {
                image: b.clone(),
                offset: 2048,
            },
        ];
        let striped = Segment::striped(4096, 1024, areas).unwrap();
        let linear = Segment::linear(1024, a.clone(), 0).unwrap();
        let lv = SegmentView::new(vec![linear, striped]).unwrap();
        assert_eq!(lv.virtual_size(), 5120);
        let all = read(&lv, 0, 5120);
        let sectors: Vec<u8> = all.chunks(512).map(|c| c[0]).collect();
        assert_eq!(sectors, vec![0, 1, 4, 5, 104, 105, 6, 7, 106, 107]);
        // A request crossing a chunk edge in the middle of sectors.
        assert_eq!(
            read(&lv, 1024 + 1020, 8),
            vec![5, 5, 5, 5, 104, 104, 104, 104]
        );
        let mut extents = Vec::new();
        lv.map(0, 5120, &mut extents).unwrap();
        assert_eq!(extents.len(), 5, "one extent per chunk");
        // One chunk is one run of one image; a range across chunks is not.
        let (file, offset) = lv.data_run(2048, 1024).unwrap().expect("in one chunk");
        assert_eq!((file.path(), offset), (_b.path(), 2048));
        assert_eq!(lv.data_run(1024 + 1020, 8).unwrap(), None);
        io::write_at(&lv, &[0xee; 4], 1024 + 1022).unwrap();
        assert_eq!(read(&*a, 2048 + 1022, 2), vec![0xee; 2]);
        assert_eq!(read(&*b, 2048, 2), vec![0xee; 2]);
        assert!(lv.writer().is_some());
        assert_eq!(lv.chain().len(), 2);
        lv.flush().unwrap();
    }

    #[test]
    fn bad_segments_are_refused() {
        let (_a, a) = image(0, 4096);
        let area = |offset| Area {
            image: a.clone(),
            offset,
        };
        assert!(Segment::linear(0, a.clone(), 0).is_err(), "empty");
        assert!(
            Segment::linear(4096, a.clone(), 512).is_err(),
            "past the end"
        );
        assert!(
            Segment::striped(3000, 512, vec![area(0), area(0)]).is_err(),
            "partial chunk"
        );
        assert!(
            Segment::striped(1024, 0, vec![area(0), area(0)]).is_err(),
            "zero stripe"
        );
        assert!(Segment::striped(1024, 512, vec![]).is_err(), "no stripes");
        let many = vec![area(0); MAX_STRIPES + 1];
        assert!(
            Segment::striped(512 * 129, 512, many).is_err(),
            "too many stripes"
        );
        let lv = SegmentView::new(vec![Segment::linear(1024, a, 0).unwrap()]).unwrap();
        let mut out = Vec::new();
        assert!(
            lv.map(1000, 100, &mut out).is_err(),
            "past the end of the LV"
        );
        assert!(lv.map(u64::MAX, 2, &mut out).is_err(), "overflowing range");
    }
}
