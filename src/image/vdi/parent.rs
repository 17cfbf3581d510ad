//! The parent of a differencing VDI. A VDI names its parent by UUID only (VirtualBox
//! keeps the paths in the VM's `.vbox` file), so the parent is looked for among the
//! `*.vdi` files of the child's directory and of the VM's folder layout: a snapshot in
//! `Snapshots/` has its parent beside it or in the VM folder above, a disk in the VM
//! folder may have it in `Snapshots/`. The file whose `uuidCreate` equals the child's
//! `uuidLinkage` is the parent; its `uuidModify` must then equal the child's
//! `uuidParentModify`, as VirtualBox checks, or the parent was written after the child
//! was made from it.

use super::header::{self, Header};
use crate::error::{Error, ErrorKind, Result};
use crate::image::common::bytes::guid_string;
use crate::image::common::chain;
use crate::image::policy::Field;
use crate::image::safe_open::FileId;
use crate::image::{DiskImage, ImageFile, OpenOptions};
use std::path::{Path, PathBuf};

/// The name of the folder VirtualBox keeps a VM's snapshot images in.
const SNAPSHOTS: &str = "Snapshots";
/// The most directory entries looked at per directory, so that a huge directory cannot
/// make opening an image slow.
const MAX_ENTRIES: usize = 4096;

/// Finds, checks and opens the parent of the differencing VDI `file`.
pub fn open(
    file: &ImageFile,
    header: &Header,
    options: &OpenOptions,
    depth: u32,
) -> Result<Box<dyn DiskImage>> {
    let child = file.path();
    let linkage = header.uuids.linkage;
    let dirs = search_dirs(child);
    for path in vdi_files(&dirs) {
        let Some((id, found)) = peek_uuids(&path, child, options) else {
            continue;
        };
        if id == file.id() || found.create != linkage {
            continue;
        }
        let wanted = header.uuids.parent_modify;
        if wanted != [0; 16] && found.modify != wanted {
            return Err(Error::corrupt(format!(
                "uuidParentModify {{{}}} recorded here does not match uuidModify {{{}}} of \
                 parent {}: the parent was written after this image was made from it",
                guid_string(&wanted),
                guid_string(&found.modify),
                path.display()
            ))
            .with_path(child));
        }
        return chain::open_parent(&path, options, depth);
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "parent VDI with uuidCreate {{{}}} (this image's uuidLinkage) not found among the \
             *.vdi files of {}",
            guid_string(&linkage),
            searched.join(", ")
        ),
    )
    .with_path(child))
}

/// The directories the parent of `child` may be in: its own, then the VM folder above a
/// `Snapshots/` folder, or the `Snapshots/` folder below.
fn search_dirs(child: &Path) -> Vec<PathBuf> {
    let dir = chain::base_dir(child);
    let other = if dir.file_name().is_some_and(|n| n == SNAPSHOTS) {
        dir.join("..")
    } else {
        dir.join(SNAPSHOTS)
    };
    let mut dirs = vec![dir];
    if other.is_dir() {
        dirs.push(other);
    }
    dirs
}

/// The `*.vdi` files of `dirs` (any case of the extension), each directory's sorted by
/// name so that the search is repeatable.
fn vdi_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .take(MAX_ENTRIES)
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("vdi")))
            .collect();
        files.sort();
        all.extend(files);
    }
    all
}

/// The identity and UUIDs of the VDI at `path`, or `None` if it is no readable VDI or
/// one that `options`' policy keeps `child` from naming (a file that is not a regular
/// file is not opened).
fn peek_uuids(path: &Path, child: &Path, options: &OpenOptions) -> Option<(FileId, header::Uuids)> {
    let buffered = OpenOptions {
        direct: false,
        ..options.clone()
    };
    let file = ImageFile::open_named(path, child, Field::Parent, &buffered).ok()?;
    let uuids = header::read(&file).ok()?.uuids;
    Some((file.id(), uuids))
}
