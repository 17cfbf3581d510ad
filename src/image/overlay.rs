//! [`MemoryOverlay`]: a throw-away writable layer over any read-only image.
//!
//! Writes land in an unlinked sparse file in `/dev/shm` (or `$TMPDIR` when there is no
//! usable `/dev/shm`), at the same offsets as in the guest, and a bitmap with one bit per
//! 512-byte sector says which sectors the overlay holds. Reads of marked sectors come from
//! the overlay file, the rest from the base image, which is never written. Everything is
//! gone when the overlay is dropped (or its process dies): `flush` has nothing to make
//! durable.
//!
//! # Ordering
//!
//! A sector's bit is set only *after* its bytes are in the overlay file: a write to
//! sectors not yet in the overlay is [`WritePlan::Synchronous`], and
//! [`DiskImage::write_sync`] writes the data with `pwrite` and then sets the bits with
//! `Release` ordering (readers load them with `Acquire`). So a reader racing with the first
//! write of a sector sees either the base's bytes or the new ones, never the zeroes of the
//! overlay file's hole. Only writes that fall entirely in sectors already marked are
//! [`WritePlan::Mapped`] (overwrites in place, old or new bytes either way). Bits are
//! never cleared. Writes that do not cover whole sectors read the rest of the sector
//! first (read-modify-write) under a mutex, so two of them cannot lose each other's bytes.
//!
//! The bitmap costs 1/4096 of the virtual size in RAM (256 MiB for a 1 TiB image).

use super::{
    check_range, io, ChainEntry, DiskImage, Extent, Format, ImageFile, ImageWrite, Source,
    WritePlan,
};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 512;

/// One bit per sector, set once the overlay holds the sector.
#[derive(Debug)]
struct SectorBitmap {
    words: Vec<AtomicU64>,
    sectors: u64,
}

impl SectorBitmap {
    fn new(sectors: u64) -> Self {
        let words = sectors.div_ceil(64) as usize;
        SectorBitmap {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            sectors,
        }
    }

    fn get(&self, sector: u64) -> bool {
        let word = self.words[(sector / 64) as usize].load(Ordering::Acquire);
        word & (1 << (sector % 64)) != 0
    }

    /// Marks `start..end`; `Release` so that readers that see a bit also see the data.
    fn set_range(&self, start: u64, end: u64) {
        let mut sector = start;
        while sector < end {
            let bit = sector % 64;
            let n = (64 - bit).min(end - sector);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[(sector / 64) as usize].fetch_or(mask, Ordering::Release);
            sector += n;
        }
    }

    /// The end of the run of sectors from `start` (before `end`) whose bits all equal
    /// the bit of `start`, and that bit.
    fn run(&self, start: u64, end: u64) -> (bool, u64) {
        let state = self.get(start);
        let mut sector = start;
        while sector < end {
            let bit = sector % 64;
            let word = self.words[(sector / 64) as usize].load(Ordering::Acquire);
            // bits that differ from `state`, from `bit` up
            let differ = (if state { !word } else { word }) >> bit;
            let here = if differ == 0 {
                64 - bit
            } else {
                u64::from(differ.trailing_zeros())
            };
            sector += here;
            if differ != 0 {
                return (state, sector.min(end));
            }
        }
        (state, end.min(self.sectors))
    }
}

/// A writable image whose writes go to memory, over a base that stays untouched.
pub struct MemoryOverlay {
    base: Arc<dyn DiskImage>,
    file: ImageFile,
    bitmap: SectorBitmap,
    /// Serializes read-modify-write of partial sectors.
    partial: Mutex<()>,
}

impl std::fmt::Debug for MemoryOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOverlay")
            .field("size", &self.base.virtual_size())
            .field("file", &self.file.path())
            .finish()
    }
}

impl MemoryOverlay {
    /// An overlay over `base`, its file in /dev/shm (else `$TMPDIR`).
    pub fn new(base: Arc<dyn DiskImage>) -> Result<Self> {
        let mut dirs = vec![PathBuf::from("/dev/shm")];
        dirs.push(std::env::temp_dir());
        let mut last = None;
        for dir in dirs {
            match Self::new_in(base.clone(), &dir) {
                Ok(overlay) => return Ok(overlay),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("no folder for the overlay file")))
    }

    /// An overlay over `base` whose file is made (and at once unlinked) in `dir`.
    pub fn new_in(base: Arc<dyn DiskImage>, dir: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let size = base.virtual_size();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(".imgblk-overlay-{}-{stamp:x}", std::process::id()));
        let created = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot create the overlay file", e).with_path(&path))?;
        let opened = created
            .set_len(size)
            .map_err(|e| Error::io("cannot size the overlay file", e).with_path(&path))
            .and_then(|()| ImageFile::open(&path, true, false));
        let _ = std::fs::remove_file(&path);
        let file = opened?;
        Ok(MemoryOverlay {
            base,
            file,
            bitmap: SectorBitmap::new(size.div_ceil(SECTOR)),
            partial: Mutex::new(()),
        })
    }

    /// Sectors `first..end` touched by `offset..offset + len`.
    fn sectors(offset: u64, len: u64) -> (u64, u64) {
        (offset / SECTOR, (offset + len).div_ceil(SECTOR))
    }

    /// Whether every sector touched by the range is in the overlay.
    fn all_present(&self, offset: u64, len: u64) -> bool {
        let (first, end) = Self::sectors(offset, len);
        first >= end || self.bitmap.run(first, end) == (true, end)
    }

    /// Writes whole sectors into the overlay file, then marks them.
    fn write_sectors(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file.write_all_at(buf, offset)?;
        let (first, end) = Self::sectors(offset, buf.len() as u64);
        self.bitmap.set_range(first, end);
        Ok(())
    }
}

impl DiskImage for MemoryOverlay {
    fn format(&self) -> Format {
        self.base.format()
    }

    fn virtual_size(&self) -> u64 {
        self.base.virtual_size()
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        check_range(offset, len, self.virtual_size())?;
        let (first, end) = Self::sectors(offset, len);
        match self.bitmap.run(first, end) {
            (true, run_end) if run_end >= end => Ok(Some((&self.file, offset))),
            (false, run_end) if run_end >= end => self.base.data_run(offset, len),
            _ => Ok(None),
        }
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (first, last) = Self::sectors(pos, end - pos);
            let (present, run_end) = self.bitmap.run(first, last);
            let next = (run_end * SECTOR).min(end);
            if present {
                out.push(Extent {
                    len: next - pos,
                    depth: 0,
                    source: Source::Data {
                        file: &self.file,
                        offset: pos,
                    },
                });
            } else {
                let from = out.len();
                self.base.map(pos, next - pos, out)?;
                for extent in &mut out[from..] {
                    extent.depth += 1;
                }
            }
            pos = next;
        }
        Ok(())
    }

    fn logical_block_size(&self) -> u32 {
        self.base.logical_block_size()
    }

    fn chain(&self) -> Vec<ChainEntry> {
        self.base.chain()
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        Some(self)
    }
}

impl ImageWrite for MemoryOverlay {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        check_range(offset, len, self.virtual_size())?;
        if !self.all_present(offset, len) {
            return Ok(WritePlan::Synchronous);
        }
        out.push(Extent {
            len,
            depth: 0,
            source: Source::Data {
                file: &self.file,
                offset,
            },
        });
        Ok(WritePlan::Mapped)
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let len = buf.len() as u64;
        check_range(offset, len, self.virtual_size())?;
        if offset % SECTOR == 0 && len % SECTOR == 0 {
            return self.write_sectors(offset, buf);
        }
        // Partial sectors: read what the whole sectors hold now, patch, write them back.
        let _guard = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        let start = offset / SECTOR * SECTOR;
        let end = ((offset + len).div_ceil(SECTOR) * SECTOR).min(self.virtual_size());
        let mut whole = vec![0u8; (end - start) as usize];
        io::read_at(self, &mut whole, start)?;
        let at = (offset - start) as usize;
        whole[at..at + buf.len()].copy_from_slice(buf);
        self.write_sectors(start, &whole)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        let end = offset + len;
        // the whole sectors inside the range: punch them out of the overlay file (which
        // frees their memory), then mark them
        let inner_start = offset.div_ceil(SECTOR) * SECTOR;
        let inner_end = (end / SECTOR * SECTOR).max(inner_start);
        if inner_end > inner_start {
            if !self.file.punch_hole(inner_start, inner_end - inner_start)? {
                let zeroes = vec![0u8; (1 << 20).min(inner_end - inner_start) as usize];
                let mut pos = inner_start;
                while pos < inner_end {
                    let n = (inner_end - pos).min(zeroes.len() as u64);
                    self.file.write_all_at(&zeroes[..n as usize], pos)?;
                    pos += n;
                }
            }
            self.bitmap
                .set_range(inner_start / SECTOR, inner_end / SECTOR);
        }
        // the partial sectors at either end
        let head_end = inner_start.min(end);
        if head_end > offset {
            self.write_sync(offset, &vec![0u8; (head_end - offset) as usize])?;
        }
        if end > inner_end {
            self.write_sync(inner_end, &vec![0u8; (end - inner_end) as usize])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngCore, SeedableRng};

    fn base(len: usize, seed: u64) -> (tempfile::NamedTempFile, Arc<dyn DiskImage>, Vec<u8>) {
        let mut bytes = vec![0u8; len];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        let (tmp, image) = crate::layout::testutil::mem_image(&bytes);
        (tmp, image, bytes)
    }

    fn read(image: &dyn DiskImage, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        io::read_at(image, &mut buf, offset).map(|()| buf).unwrap()
    }

    #[test]
    fn bitmap_runs() {
        let bitmap = SectorBitmap::new(300);
        assert_eq!(bitmap.run(0, 300), (false, 300));
        bitmap.set_range(10, 140);
        assert_eq!(bitmap.run(0, 300), (false, 10));
        assert_eq!(bitmap.run(10, 300), (true, 140));
        assert_eq!(bitmap.run(64, 100), (true, 100));
        assert_eq!(bitmap.run(140, 300), (false, 300));
        bitmap.set_range(0, 300);
        assert_eq!(bitmap.run(0, 300), (true, 300));
        assert_eq!(bitmap.run(299, 300), (true, 300));
    }

    #[test]
    fn writes_stay_in_the_overlay() {
        let (tmp, base, bytes) = base(64 << 10, 1);
        let overlay = MemoryOverlay::new(base.clone()).unwrap();
        assert!(overlay.writer().is_some());
        io::write_at(&overlay, &[7u8; 1024], 4096).unwrap();
        io::write_at(&overlay, &[9u8; 3], 10_000).unwrap();
        let mut expected = bytes.clone();
        expected[4096..5120].fill(7);
        expected[10_000..10_003].fill(9);
        assert_eq!(read(&overlay, 0, bytes.len()), expected);
        assert_eq!(read(base.as_ref(), 0, bytes.len()), bytes);
        assert_eq!(std::fs::read(tmp.path()).unwrap(), bytes);
        // runs merge: one extent from the base, one from the overlay, one from the base
        let mut extents = Vec::new();
        overlay.map(0, 8192, &mut extents).unwrap();
        assert_eq!(extents.len(), 3);
        assert_eq!(extents[1].len, 1024);
        assert_eq!(extents[1].depth, 0);
        assert_eq!(extents[0].depth, 1);
        // the read hot path: written sectors from the overlay, the rest from the base
        let (file, offset) = overlay.data_run(4096, 1024).unwrap().expect("written");
        assert_eq!((file.path(), offset), (overlay.file.path(), 4096));
        let (file, offset) = overlay.data_run(0, 4096).unwrap().expect("from the base");
        assert_eq!((file.path(), offset), (tmp.path(), 0));
        assert_eq!(
            overlay.data_run(4096 - 512, 1024).unwrap(),
            None,
            "half and half"
        );
        // a second write to the same sectors is an overwrite in place
        extents.clear();
        assert_eq!(
            overlay.map_write(4096, 512, &mut extents).unwrap(),
            WritePlan::Mapped
        );
        extents.clear();
        assert_eq!(
            overlay.map_write(8192, 512, &mut extents).unwrap(),
            WritePlan::Synchronous
        );
        overlay.write_zeroes(100, 20_000).unwrap();
        expected[100..20_100].fill(0);
        assert_eq!(read(&overlay, 0, bytes.len()), expected);
        overlay.discard(30_000, 512).unwrap();
        expected[30_000..30_512].fill(0);
        assert_eq!(read(&overlay, 0, bytes.len()), expected);
        assert_eq!(std::fs::read(tmp.path()).unwrap(), bytes);
    }

    #[test]
    fn random_writes_match_a_mirror() {
        let (_tmp, base, bytes) = base(256 << 10, 2);
        let overlay = MemoryOverlay::new(base).unwrap();
        let mut mirror = bytes;
        let mut rng = SmallRng::seed_from_u64(3);
        let size = mirror.len() as u64;
        for round in 0..400 {
            let offset = rng.gen_range(0..size - 1);
            let len = rng.gen_range(1..=(size - offset).min(20_000));
            let (o, l) = (offset as usize, len as usize);
            match rng.gen_range(0..6) {
                0 => {
                    overlay.write_zeroes(offset, len).unwrap();
                    mirror[o..o + l].fill(0);
                }
                1 => {
                    let aligned = offset / SECTOR * SECTOR;
                    let n = (len.div_ceil(SECTOR) * SECTOR).min(size - aligned) as usize;
                    let mut data = vec![0u8; n];
                    rng.fill_bytes(&mut data);
                    io::write_at(&overlay, &data, aligned).unwrap();
                    mirror[aligned as usize..aligned as usize + n].copy_from_slice(&data);
                }
                2 | 3 => {
                    let mut data = vec![0u8; l];
                    rng.fill_bytes(&mut data);
                    io::write_at(&overlay, &data, offset).unwrap();
                    mirror[o..o + l].copy_from_slice(&data);
                }
                _ => assert_eq!(
                    read(&overlay, offset, l),
                    &mirror[o..o + l],
                    "round {round}"
                ),
            }
        }
        assert_eq!(read(&overlay, 0, mirror.len()), mirror);
    }

    #[test]
    fn concurrent_readers_see_old_or_new_sectors() {
        let (_tmp, base, bytes) = base(128 << 10, 4);
        let overlay = Arc::new(MemoryOverlay::new(base).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|seed| {
                let overlay = overlay.clone();
                let stop = stop.clone();
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed);
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads < 100 {
                        let sector = rng.gen_range(0..bytes.len() as u64 / SECTOR);
                        let got = read(overlay.as_ref(), sector * SECTOR, SECTOR as usize);
                        let old = &bytes[(sector * SECTOR) as usize..][..SECTOR as usize];
                        // writers fill a sector with one byte value, never 0
                        assert!(
                            got == old || got.iter().all(|&b| b == got[0] && b != 0),
                            "sector {sector} is neither old nor a written pattern"
                        );
                        reads += 1;
                    }
                })
            })
            .collect();
        // each sector written once, in random order: a racing reader must see the base's
        // bytes or the new ones, never the overlay file's hole
        let mut rng = SmallRng::seed_from_u64(9);
        let mut sectors: Vec<u64> = (0..bytes.len() as u64 / SECTOR).collect();
        for i in (1..sectors.len()).rev() {
            sectors.swap(i, rng.gen_range(0..=i));
        }
        for sector in sectors {
            let value: u8 = rng.gen_range(1..=255);
            io::write_at(overlay.as_ref(), &[value; SECTOR as usize], sector * SECTOR).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
    }

    #[test]
    fn overlay_file_is_unlinked() {
        let (_tmp, base, _) = base(4096, 5);
        let dir = tempfile::tempdir().unwrap();
        let _overlay = MemoryOverlay::new_in(base, dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
