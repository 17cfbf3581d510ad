//! Which guest ranges changed since a previous backup, for incremental `map` and `cat`:
//! what the top layers of a backing chain hold (a snapshot's overlay holds exactly what
//! the guest wrote since the snapshot was taken), or what a qcow2 persistent dirty bitmap
//! marks (what QEMU tracked for a backup tool since the bitmap was created or cleared).

use crate::error::{Error, Result};
use crate::image::qcow2::bitmap;
use crate::image::status::MapEntry;
use crate::image::{DiskImage, Format};
use std::path::{Path, PathBuf};

/// The options restricting a command to changed ranges.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// Only what the top N layers of the backing chain hold (1 = the top file alone):
    /// ranges supplied by deeper layers are unchanged and left out.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    #[arg(conflicts_with_all = ["since", "bitmap"])]
    top_layers: Option<u32>,
    /// Only what the layers above BACKING-FILE (a file of the image's backing chain) hold:
    /// what the guest wrote since BACKING-FILE was the top.
    #[arg(long, value_name = "BACKING-FILE", conflicts_with = "bitmap")]
    since: Option<PathBuf>,
    /// Only the ranges that the qcow2 persistent dirty bitmap NAME marks dirty (see
    /// `imgblk info`); a bitmap in use by a running or crashed QEMU is refused.
    #[arg(long, value_name = "NAME")]
    bitmap: Option<String>,
}

/// The changed guest ranges a command is restricted to.
#[derive(Debug)]
pub enum Changes {
    /// Everything (no restriction asked for).
    All,
    /// What the top `n` layers of the chain supply (depth below `n`).
    TopLayers(u32),
    /// Sorted, disjoint dirty ranges `(start, end)`.
    Dirty(Vec<(u64, u64)>),
}

impl ChangeArgs {
    /// Whether a restriction was asked for.
    pub fn any(&self) -> bool {
        self.top_layers.is_some() || self.since.is_some() || self.bitmap.is_some()
    }

    /// Refuses a restriction on anything but whole images as stored (`source` with no
    /// piece or snapshot, not `luks`-decrypted): changed ranges are those of the files.
    /// Called before opening, so that the usage error comes first.
    pub fn check(&self, source: &super::SourceArgs, luks: bool) -> Result<()> {
        if self.any() && (luks || source.read.snapshot.is_some() || source.piece.piece().is_some())
        {
            return Err(Error::invalid(
                "--top-layers, --since and --bitmap work on whole images \
                 (not with --part, --lv, --luks or --snapshot)",
            ));
        }
        Ok(())
    }

    /// The restriction these options ask for, on `image` opened as `source` says (see
    /// [`Self::check`]).
    pub fn resolve(&self, image: &dyn DiskImage, source: &super::SourceArgs) -> Result<Changes> {
        if !self.any() {
            return Ok(Changes::All);
        }
        let top = &source.images[0];
        let chain = image.chain();
        let layers = chain.len();
        if let Some(n) = self.top_layers {
            if n as usize >= layers {
                return Err(Error::invalid(format!(
                    "--top-layers {n}: the backing chain of {} has {layers} layer(s), so that is all of it",
                    top.display()
                )));
            }
            return Ok(Changes::TopLayers(n));
        }
        if let Some(since) = &self.since {
            return since_layer(image, since).map(Changes::TopLayers);
        }
        let name = self.bitmap.as_deref().unwrap_or_default();
        match chain.first().map(|layer| layer.format) {
            Some(Format::Qcow2) => bitmap::dirty_ranges(top, name).map(Changes::Dirty),
            format => Err(Error::invalid(format!(
                "--bitmap: {} is {}, and only qcow2 images have persistent bitmaps",
                top.display(),
                format.map_or("not an image file".to_string(), |f| f.to_string())
            ))),
        }
    }
}

impl Changes {
    /// The parts of `run` that changed, in order.
    pub fn select(&self, run: MapEntry) -> Vec<MapEntry> {
        match self {
            Changes::All => vec![run],
            Changes::TopLayers(n) if run.present && run.depth < *n => vec![run],
            Changes::TopLayers(_) => Vec::new(),
            Changes::Dirty(ranges) => {
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

    #[test]
    fn top_layers_keep_what_they_supply() {
        let changes = Changes::TopLayers(2);
        assert_eq!(changes.select(run(0, 10, 1, true)).len(), 1);
        assert!(changes.select(run(0, 10, 2, true)).is_empty());
        assert!(changes.select(run(0, 10, 0, false)).is_empty());
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
