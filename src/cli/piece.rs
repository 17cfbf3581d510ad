//! Choosing what to serve or read: a whole image, one of its partitions (`--part N`), or a
//! logical volume of a guest VG (`--lv VG/LV`) that may span several images.

use crate::error::{Error, ErrorKind, Result};
use crate::image::{open_image, DiskImage, Format, OpenOptions};
use crate::layout::{discover, Layout, NodeKind};
use std::path::PathBuf;
use std::sync::Arc;

/// `--part` / `--lv`: which piece of the image(s) to use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PieceArgs {
    /// Use partition N of the (first) image, numbered as Linux numbers them
    /// (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1.
    #[arg(long, value_name = "N", conflicts_with = "lv")]
    pub part: Option<u32>,
    /// Use logical volume LV of the guest's volume group VG, found on any of the images
    /// given (for a VG spanning several disks, give them all).
    #[arg(long, value_name = "VG/LV")]
    pub lv: Option<String>,
}

impl PieceArgs {
    /// The layout node name the options designate (`disk0p2`, `vg0/root`), if any.
    pub fn node_name(&self) -> Option<String> {
        match (&self.part, &self.lv) {
            (Some(n), _) => Some(format!("disk0p{n}")),
            (None, Some(lv)) => Some(lv.clone()),
            (None, None) => None,
        }
    }
}

/// What a command serves or reads, once opened: the image (or the piece of it) and where
/// it came from. (Not [`crate::image::Source`], where an extent's bytes come from.)
pub struct Served {
    /// What to serve or read.
    pub image: Arc<dyn DiskImage>,
    /// Format of the first image.
    pub format: Format,
    /// The piece's layout name, when not the whole image.
    pub piece: Option<String>,
}

/// Opens `paths` with `options` and picks the piece named `piece` (a layout node name).
pub fn open_source(
    paths: &[PathBuf],
    options: &OpenOptions,
    piece: Option<&str>,
) -> Result<Served> {
    let mut images: Vec<Arc<dyn DiskImage>> = Vec::with_capacity(paths.len());
    for path in paths {
        images.push(Arc::from(open_image(path, options)?));
    }
    let Some(first) = images.first().cloned() else {
        return Err(Error::invalid("no image given"));
    };
    let format = first.format();
    let Some(name) = piece else {
        if images.len() > 1 {
            return Err(Error::invalid(
                "several images need --lv to say which volume to use",
            ));
        }
        return Ok(Served {
            image: first,
            format,
            piece: None,
        });
    };
    let layout = discover(&images);
    let image = select(&layout, name)?;
    Ok(Served {
        image,
        format,
        piece: Some(name.to_string()),
    })
}

/// The volume called `name` in `layout`, or an error listing what there is.
pub fn select(layout: &Layout, name: &str) -> Result<Arc<dyn DiskImage>> {
    let wanted_lv = name.contains('/');
    let node = layout.find(name).filter(|n| match n.kind {
        NodeKind::LogicalVolume => wanted_lv,
        NodeKind::Partition => !wanted_lv,
        NodeKind::Disk | NodeKind::Extended => false,
    });
    match node {
        Some(node) => node.image(),
        None => {
            let choices: Vec<String> = layout
                .nodes()
                .into_iter()
                .filter(|n| match n.kind {
                    NodeKind::LogicalVolume => wanted_lv,
                    NodeKind::Partition => !wanted_lv,
                    _ => false,
                })
                .map(|n| {
                    if wanted_lv {
                        n.name.clone()
                    } else {
                        n.name.trim_start_matches("disk0p").to_string()
                    }
                })
                .collect();
            let what = if wanted_lv {
                "logical volume"
            } else {
                "partition"
            };
            let shown = name.strip_prefix("disk0p").unwrap_or(name);
            Err(Error::new(
                ErrorKind::NotFound,
                if choices.is_empty() {
                    format!("no {what} {shown}: the image has none")
                } else {
                    format!("no {what} {shown}; there are: {}", choices.join(", "))
                },
            ))
        }
    }
}
