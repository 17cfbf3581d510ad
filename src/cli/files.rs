//! What `imgblk ls`, `get` and `tar` share: which file system of which images to read
//! (decrypted with `--luks`, or inside the LUKS volumes `--key-file` unlocks), opened in
//! process (no ublk, no root).

use super::pick::choose;
use super::piece::PieceArgs;
use super::{child, kernel_fs};
use crate::error::{Error, ErrorKind, Result};
use crate::files::FileSystem;
use crate::image::{open_image, DiskImage};
use crate::layout::probe::probe;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The options of the file commands that say which file system to read.
#[derive(Debug, clap::Args)]
pub struct FsArgs {
    #[command(flatten)]
    piece: PieceArgs,
    /// Pick the guest's root file system (or the only one), or list the choices.
    #[arg(long, conflicts_with_all = ["part", "lv", "luks"])]
    auto: bool,
    #[command(flatten)]
    read: super::ReadArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
}

impl FsArgs {
    /// Opens `images` and the file system these options choose in them.
    pub fn open(&self, images: &[PathBuf]) -> Result<Box<dyn FileSystem>> {
        let first = images
            .first()
            .ok_or_else(|| Error::invalid("no image given"))?;
        let options = self.read.open_options()?;
        let mut opened: Vec<Arc<dyn DiskImage>> = Vec::with_capacity(images.len());
        for path in images {
            opened.push(Arc::from(open_image(path, &options)?));
        }
        let unlock = self.luks.unlock();
        let unlock_file = unlock.as_ref().and(self.luks.key_file.as_deref());
        let layout = crate::serve::discover_with(&opened, unlock.as_ref())?;
        let name = |piece: &str| match piece {
            "disk0" => first.display().to_string(),
            piece => format!("{} ({piece})", first.display()),
        };
        let none = |name: &str| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{name} holds no file system imgblk recognises"),
            )
        };
        if self.luks.luks {
            // The piece named (or the whole image) is a LUKS volume: decrypt, then probe.
            let piece = self.piece.piece();
            let (image, name) = match &piece {
                Some(piece) => (
                    crate::serve::select(&layout, piece)?,
                    name(&piece.to_string()),
                ),
                None => (Arc::clone(&opened[0]), name("disk0")),
            };
            let image = self.luks.apply(image).map_err(|e| e.with_path(first))?;
            let name = format!("{name}, decrypted");
            let kind = probe(&*image)?.map(|c| c.kind).ok_or_else(|| none(&name))?;
            return crate::files::open(image, kind, &name);
        }
        let node = choose(&layout, &self.piece, self.auto).map_err(|e| e.with_path(first))?;
        let name = name(&node.name);
        let kind = node
            .content
            .as_ref()
            .map(|c| c.kind)
            .ok_or_else(|| none(&name))?;
        match crate::files::open(node.image()?, kind, &name) {
            Err(e) if kernel_fs::kernel_only(kind) && kernel_fs::can_mount() => {
                match (
                    self.mount_args(),
                    child::piece_args(&node.name, unlock_file),
                ) {
                    (Some(open_args), Some(piece_args)) => {
                        kernel_fs::mount_and_read(images, piece_args, open_args, kind, name)
                    }
                    _ => Err(e),
                }
            }
            opened => opened,
        }
    }

    /// The options that open the images alike for `imgblk mount`, or `None` if mount
    /// has no such option (`--snapshot`, `--force-share`).
    fn mount_args(&self) -> Option<Vec<OsString>> {
        let read = &self.read;
        if read.snapshot.is_some() || read.force_share {
            return None;
        }
        let mut args = read.policy.cli_args();
        if let Some(format) = read.format {
            args.extend(["--format".into(), format.name().into()]);
        }
        if let Some(disk) = read.disk {
            args.extend(["--disk".into(), disk.to_string().into()]);
        }
        Some(args)
    }
}

/// Splits `paths` (the images, then a path inside the file system last, as `ls` and
/// `get` take them) and opens the file system; returns it with the path.
pub fn open_with_path<'p>(
    args: &FsArgs,
    paths: &'p [PathBuf],
) -> Result<(Box<dyn FileSystem>, &'p Path)> {
    let (path, images) = paths
        .split_last()
        .filter(|(_, images)| !images.is_empty())
        .ok_or_else(|| Error::invalid("give the image(s), then a path inside the image"))?;
    let path = inside(path)?;
    Ok((args.open(images)?, path))
}

/// `path` as the file commands take it: absolute inside the file system.
pub fn inside(path: &Path) -> Result<&Path> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Error::invalid(format!(
            "{}: paths inside the image start with /",
            path.display()
        )))
    }
}
