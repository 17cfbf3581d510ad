//! Which file system of an image a command works on: the piece `--part`/`--lv` name, or
//! the guest's root by `--auto` (shared by `imgblk mount` and the file commands).

use super::piece::PieceArgs;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{ContentKind, Layout, Node, NodeKind};

/// The file system to use: the piece `--part`/`--lv` name, else the only file system
/// found, else with `auto` the one that looks like the guest's root (an LV called root, a
/// root label); an error listing the choices otherwise.
pub fn choose<'a>(layout: &'a Layout, piece: &PieceArgs, auto: bool) -> Result<&'a Node> {
    if let Some(piece) = piece.piece() {
        crate::serve::select(layout, &piece)?;
        return layout
            .find(&piece.to_string())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no {piece}")));
    }
    let filesystems: Vec<&Node> = layout
        .nodes()
        .into_iter()
        .filter(|n| {
            n.content
                .as_ref()
                .is_some_and(|c| fs_type(c.kind).is_some())
        })
        .collect();
    let listing = || {
        filesystems
            .iter()
            .map(|n| {
                format!(
                    "{} ({}{})",
                    super::Escaped(&n.name),
                    n.content.as_ref().map_or("", |c| c.kind.as_str()),
                    n.label()
                        .map(|l| format!(", label {l}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match filesystems.as_slice() {
        [] => Err(Error::new(
            ErrorKind::NotFound,
            "no file system found in the image",
        )),
        [only] => Ok(only),
        _ if auto => filesystems
            .iter()
            .copied()
            .find(|n| looks_like_root(n))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "cannot tell which file system is the root; choose with --part or --lv: {}",
                    listing()
                ))
            }),
        _ => Err(Error::invalid(format!(
            "the image holds several file systems; choose with --part, --lv or --auto: {}",
            listing()
        ))),
    }
}

/// Root-ness by name: an LV called root, or a label that says so.
fn looks_like_root(node: &Node) -> bool {
    let lv_root = node.kind == NodeKind::LogicalVolume
        && node
            .name
            .rsplit('/')
            .next()
            .is_some_and(|n| n == "root" || n == "lv_root");
    let label_root = node
        .label()
        .is_some_and(|l| matches!(l, "root" | "rootfs" | "/" | "cloudimg-rootfs"));
    lv_root || label_root
}

/// The kernel file system type for content `kind`, if it is a mountable file system.
pub fn fs_type(kind: ContentKind) -> Option<&'static str> {
    Some(match kind {
        ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4 => "ext4",
        ContentKind::Xfs => "xfs",
        ContentKind::Btrfs => "btrfs",
        ContentKind::Vfat => "vfat",
        ContentKind::Ntfs => "ntfs",
        ContentKind::Iso9660 => "iso9660",
        _ => return None,
    })
}
