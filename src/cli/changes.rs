//! Which guest ranges changed since a previous backup, for incremental `map`, `cat` and
//! `convert`: what the top layers of a backing chain hold (a snapshot's overlay holds
//! exactly what the guest wrote since the snapshot was taken), or what a qcow2 persistent
//! dirty bitmap marks (what QEMU tracked for a backup tool since the bitmap was created or
//! cleared). Both are facts about the stored images; for a piece of them (a partition, an
//! LV, a LUKS volume) the changed ranges are carried up through the piece's offsets
//! ([`DiskImage::source_ranges`]).

use crate::error::{Error, Result};
use crate::image::qcow2::bitmap;
use crate::image::status::{walk_status, MapEntry};
use crate::image::{DiskImage, Format};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The options restricting a command to changed ranges.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// Only what the top N layers of the backing chain hold (1 = the top file alone):
    /// ranges supplied by deeper layers are unchanged and left out. With --part, --lv or
    /// --luks, the changed ranges of the images, as they fall in that piece.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[arg(conflicts_with_all = ["since", "bitmap"])]
    top_layers: Option<u32>,
    /// Only what the layers above BACKING-FILE (a file of the first image's backing
    /// chain) hold: what the guest wrote since BACKING-FILE was the top.
    #[arg(long, value_name = "BACKING-FILE", conflicts_with = "bitmap")]
    since: Option<PathBuf>,
    /// Only the ranges that the qcow2 persistent dirty bitmap NAME marks dirty (see
    /// `imgblk info`); a bitmap in use by a running or crashed QEMU is refused. Every
    /// image a piece reads from must have the bitmap.
    #[arg(long, value_name = "NAME")]
    bitmap: Option<String>,
}

/// The changed guest ranges a command is restricted to.
#[derive(Debug)]
pub enum Changes {
    /// Everything (no restriction asked for).
    All,
    /// Sorted, disjoint changed ranges `(start, end)` of the image or piece.
    Dirty(Vec<(u64, u64)>),
}

/// Sorted, disjoint `(start, end)` byte ranges.
type Ranges = Vec<(u64, u64)>;

/// Gives the changed ranges of a stored image.
type StoredChanges<'f> = &'f mut dyn FnMut(&dyn DiskImage) -> Result<Ranges>;

/// What makes a range of a stored image count as changed.
enum Rule<'n> {
    /// Supplied by one of the top `n` layers of its chain.
    TopLayers(u32),
    /// Marked in the qcow2 persistent bitmap of this name.
    Bitmap(&'n str),
}

impl ChangeArgs {
    /// Whether a restriction was asked for.
    pub fn any(&self) -> bool {
        self.top_layers.is_some() || self.since.is_some() || self.bitmap.is_some()
    }

    /// Refuses a restriction on an internal snapshot, which is not a layer of the chain
    /// and has no bitmap. Called before opening, so that the usage error comes first.
    pub fn check(&self, source: &super::SourceArgs) -> Result<()> {
        if self.any() && source.read.snapshot.is_some() {
            return Err(Error::invalid(
                "--top-layers, --since and --bitmap work on the images as stored, \
                 not with --snapshot",
            ));
        }
        Ok(())
    }

    /// The restriction these options ask for, on `image` (the whole first image of
    /// `source`, or a piece of its images).
    pub fn resolve(&self, image: &dyn DiskImage, source: &super::SourceArgs) -> Result<Changes> {
        if !self.any() {
            return Ok(Changes::All);
        }
        let top = &source.images[0];
        let layers = image.chain().len();
        let rule = if let Some(n) = self.top_layers {
            if n as usize >= layers {
                return Err(Error::invalid(format!(
                    "--top-layers {n}: the backing chain of {} has {layers} layer(s), so that is all of it",
                    top.display()
                )));
            }
            Rule::TopLayers(n)
        } else if let Some(since) = &self.since {
            Rule::TopLayers(since_layer(image, since)?)
        } else {
            Rule::Bitmap(self.bitmap.as_deref().unwrap_or_default())
        };
        let ranges = changed_ranges(image, &mut |stored| stored_changes(stored, &rule))?;
        Ok(Changes::Dirty(ranges))
    }
}

impl Changes {
    /// The parts of `run` that changed, in order.
    pub fn select(&self, run: MapEntry) -> Vec<MapEntry> {
        let ranges = match self {
            Changes::All => return vec![run],
            Changes::Dirty(ranges) => ranges,
        };
        let end = run.start + run.length;
        let first = ranges.partition_point(|&(_, e)| e <= run.start);
        ranges[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| {
                let (s, e) = (s.max(run.start), e.min(end));
                let mut piece = run.clone();
                piece.offset = run.offset.map(|o| o + (s - run.start));
                piece.start = s;
                piece.length = e - s;
                piece
            })
            .collect()
    }
}

/// The changed ranges of `image`, from those of the stored images under it that
/// `stored` gives (asked once per stored image): carried up through each view's
/// [`DiskImage::source_ranges`], then widened to whole logical blocks (a LUKS sector
/// changes as a whole when any of its ciphertext does).
fn changed_ranges(image: &dyn DiskImage, stored: StoredChanges) -> Result<Ranges> {
    let mut found = Found {
        out: Vec::new(),
        stored: HashMap::new(),
        changes_of: stored,
    };
    found.collect(image, 0, image.virtual_size(), 0)?;
    let block = u64::from(image.logical_block_size());
    let size = image.virtual_size();
    let mut out = Vec::with_capacity(found.out.len());
    for (s, e) in found.out {
        let end = e.div_ceil(block).saturating_mul(block).min(size);
        push_merged(&mut out, s / block * block, end);
    }
    Ok(out)
}

/// The walk of [`changed_ranges`]: the ranges found so far, in the coordinates of the
/// image asked about, and those of each stored image met (by address: one image can
/// lie under several pieces of a view).
struct Found<'f> {
    out: Ranges,
    stored: HashMap<usize, Ranges>,
    changes_of: StoredChanges<'f>,
}

impl Found<'_> {
    /// Adds the changed ranges of `offset..offset + len` of `image`, placed from `at` on
    /// in the image asked about.
    fn collect(&mut self, image: &dyn DiskImage, offset: u64, len: u64, at: u64) -> Result<()> {
        let mut sources = Vec::new();
        if image.source_ranges(offset, len, &mut |inner, off, n| {
            sources.push((inner, off, n));
            Ok(())
        })? {
            let mut pos = at;
            for (inner, off, n) in sources {
                self.collect(inner, off, n, pos)?;
                pos += n;
            }
            return Ok(());
        }
        let key = image as *const dyn DiskImage as *const () as usize;
        if !self.stored.contains_key(&key) {
            let ranges = (self.changes_of)(image)?;
            self.stored.insert(key, ranges);
        }
        let ranges = &self.stored[&key];
        let end = offset + len;
        let first = ranges.partition_point(|&(_, e)| e <= offset);
        for &(s, e) in ranges[first..].iter().take_while(|&&(s, _)| s < end) {
            push_merged(
                &mut self.out,
                at + s.max(offset) - offset,
                at + e.min(end) - offset,
            );
        }
        Ok(())
    }
}

/// The changed ranges of a stored image (one that is no view), by `rule`.
fn stored_changes(image: &dyn DiskImage, rule: &Rule) -> Result<Ranges> {
    let top = image.chain().into_iter().next();
    match rule {
        Rule::TopLayers(n) => {
            let mut out = Vec::new();
            walk_status(image, 1 << 30, |run| {
                if run.present && run.depth < *n {
                    push_merged(&mut out, run.start, run.start + run.length);
                }
                Ok(())
            })?;
            Ok(out)
        }
        Rule::Bitmap(name) => match top {
            Some(layer) if layer.format == Format::Qcow2 => bitmap::dirty_ranges(&layer.path, name),
            layer => Err(Error::invalid(format!(
                "--bitmap: {} is {}, and only qcow2 images have persistent bitmaps",
                layer
                    .as_ref()
                    .map_or("an image".into(), |l| l.path.display().to_string()),
                layer.map_or("not an image file".to_string(), |l| l.format.to_string())
            ))),
        },
    }
}

/// Appends `start..end` to sorted ranges, joined with the last one when they touch.
fn push_merged(out: &mut Ranges, start: u64, end: u64) {
    match out.last_mut() {
        Some(last) if last.1 >= start => last.1 = last.1.max(end),
        _ => out.push((start, end)),
    }
}

/// The depth of `since` in `image`'s chain: how many layers lie above it.
fn since_layer(image: &dyn DiskImage, since: &Path) -> Result<u32> {
    let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let wanted = key(since);
    let chain = image.chain();
    match chain.iter().position(|layer| key(&layer.path) == wanted) {
        Some(0) => Err(Error::invalid(format!(
            "--since {}: that is the top of the chain, which holds every change",
            since.display()
        ))),
        Some(depth) => Ok(depth as u32),
        None => Err(Error::invalid(format!(
            "--since {}: not a backing file of the image (its chain: {})",
            since.display(),
            chain
                .iter()
                .map(|l| l.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::view::{Area, Segment, SegmentView, SliceView};
    use std::sync::Arc;

    fn run(start: u64, length: u64, depth: u32, present: bool) -> MapEntry {
        MapEntry {
            start,
            length,
            depth,
            present,
            zero: !present,
            data: present,
            compressed: false,
            offset: Some(1000 + start),
        }
    }

    /// A raw image of `len` bytes in a temporary file.
    fn raw(len: u64) -> (tempfile::NamedTempFile, Arc<dyn DiskImage>) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(len).unwrap();
        let file = crate::image::ImageFile::open(tmp.path(), false, false).unwrap();
        (tmp, Arc::new(crate::image::raw::RawImage::new(file)))
    }

    #[test]
    fn changes_of_stored_images_are_carried_up_through_pieces() {
        let (_a, a) = raw(64 * 1024);
        let (_b, b) = raw(64 * 1024);
        // changed in a: 4..6 KiB and 40..41 KiB; in b: 0..1 KiB
        let changes_of = |image: &dyn DiskImage| -> Result<Vec<(u64, u64)>> {
            let is_a = std::ptr::addr_eq(image, &*a);
            Ok(if is_a {
                vec![(4096, 6144), (40960, 41984)]
            } else {
                vec![(0, 1024)]
            })
        };
        // a partition of a from 2 KiB on
        let part = SliceView::new(a.clone(), 2048, 32 * 1024).unwrap();
        let ranges = changed_ranges(&part, &mut { changes_of }).unwrap();
        assert_eq!(ranges, [(2048, 4096)], "40 KiB lies outside the partition");
        // an LV striped in 8 KiB chunks over a from 32 KiB and b from 0
        let areas = vec![
            Area {
                image: a.clone(),
                offset: 32 * 1024,
            },
            Area {
                image: b.clone(),
                offset: 0,
            },
        ];
        let lv = SegmentView::new(vec![Segment::striped(32 * 1024, 8192, areas).unwrap()]).unwrap();
        let ranges = changed_ranges(&lv, &mut { changes_of }).unwrap();
        // a's 40..41 KiB is chunk 1 of area a (lv 16..24 KiB), at 8 KiB in; b's 0..1 KiB
        // is chunk 0 of area b (lv 8..16 KiB)
        assert_eq!(ranges, [(8192, 9216), (16384, 17408)]);
    }

    #[test]
    fn dirty_ranges_cut_runs() {
        let changes = Changes::Dirty(vec![(0, 4), (8, 12), (20, 30)]);
        let parts: Vec<(u64, u64, Option<u64>)> = changes
            .select(run(2, 18, 0, true))
            .iter()
            .map(|p| (p.start, p.length, p.offset))
            .collect();
        assert_eq!(
            parts,
            [(2, 2, Some(1002)), (8, 4, Some(1008))],
            "pieces of 2..20"
        );
        assert!(changes.select(run(12, 8, 0, true)).is_empty());
    }
}
