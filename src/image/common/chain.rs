//! Parent (backing) images of differencing formats: finding the file a child names,
//! opening it one level deeper, and sending absent ranges to it.

use super::walk::{merge_at, push};
use crate::error::{Error, ErrorKind, Result};
use crate::image::open::open_at_depth;
use crate::image::policy::Field;
use crate::image::{ChainEntry, DiskImage, Extent, Format, ImageFile, OpenOptions, Source};
use std::path::{Path, PathBuf};

/// Refuses to open a read-only format for writing, naming the file.
pub fn refuse_writable(format: Format, path: &Path, options: &OpenOptions) -> Result<()> {
    if options.writable {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            format!("{format} images can only be opened read-only"),
        )
        .with_path(path));
    }
    Ok(())
}

/// The directory a child's relative parent names are resolved against.
pub fn base_dir(child: &Path) -> PathBuf {
    child
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `name` resolved against the child's directory (absolute names stay as they are).
pub fn relative_to_child(child: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        base_dir(child).join(name)
    }
}

/// Where a Windows path (`.\base.vhd`, `C:\VMs\base.vhd`, `\\?\C:\x`) may be here: a
/// relative one against the child's directory; an absolute one by its file name next to
/// the child, as drive letters mean nothing on this host.
pub fn windows_path_candidates(child: &Path, win: &str) -> Vec<PathBuf> {
    let trimmed = win.trim_matches(char::from(0)).trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    if trimmed.starts_with('/') {
        return vec![PathBuf::from(trimmed)];
    }
    let unix = trimmed.replace('\\', "/");
    let unix = unix.strip_prefix("//?/").unwrap_or(&unix);
    let bytes = unix.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if has_drive || unix.starts_with("//") || unix.starts_with('/') {
        match unix.rsplit('/').next() {
            Some(name) if !name.is_empty() => vec![base_dir(child).join(name)],
            _ => Vec::new(),
        }
    } else {
        vec![relative_to_child(
            child,
            unix.strip_prefix("./").unwrap_or(unix),
        )]
    }
}

/// The first of `candidates` that exists; otherwise a not-found error naming the child,
/// what it calls its parent (`wanted`) and every path tried.
pub fn locate_parent(child: &Path, wanted: &str, candidates: &[PathBuf]) -> Result<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "parent image {wanted} not found (tried: {})",
            if tried.is_empty() {
                "nothing usable".to_string()
            } else {
                tried.join(", ")
            }
        ),
    )
    .with_path(child))
}

/// Opens a parent image one level below its child, read-only, detecting its format; the
/// child's other options (direct I/O, sharing) carry over.
pub fn open_parent(
    path: &Path,
    options: &OpenOptions,
    child_depth: u32,
) -> Result<Box<dyn DiskImage>> {
    let options = OpenOptions {
        format: None,
        writable: false,
        ..options.clone()
    };
    open_at_depth(path, &options, child_depth + 1)
}

/// Locates the parent among `candidates`, lets `verify` compare its identity with what
/// the child recorded (`Some(mismatch)` describes a difference), then opens it one level
/// below the child.
pub fn open_verified(
    child: &Path,
    wanted: &str,
    candidates: &[PathBuf],
    options: &OpenOptions,
    child_depth: u32,
    verify: impl FnOnce(&ImageFile) -> Result<Option<String>>,
) -> Result<Box<dyn DiskImage>> {
    let path = locate_parent(child, wanted, candidates)?;
    let buffered = OpenOptions {
        direct: false,
        ..options.clone()
    };
    let file = ImageFile::open_named(&path, child, Field::Parent, &buffered)?;
    if let Some(mismatch) = verify(&file)? {
        return Err(Error::corrupt(format!(
            "{mismatch} of parent {}: the parent changed after this image was made from it, or \
             is another file",
            path.display()
        ))
        .with_path(child));
    }
    drop(file);
    open_parent(&path, options, child_depth)
}

/// How many bytes of `offset..offset + len` lie inside `parent` (a parent smaller than
/// its child reads as zeroes past its end).
pub fn covered_by(parent: &dyn DiskImage, offset: u64, len: u64) -> u64 {
    parent.virtual_size().saturating_sub(offset).min(len)
}

/// Appends the extents for a guest range a layer does not hold: the parent's (up to its
/// size), one level deeper than the parent reports them, or unallocated.
///
/// The one depth rule of all formats: an image reports its own extents at depth 0 and its
/// parent's at the parent's depth plus one, so that at the top of a chain `depth` is the
/// absolute depth of the layer (top = 0), as `qemu-img map` reports it. A range past the
/// end of a shorter parent is unallocated at the depth of the layer that covers it.
pub fn map_parent<'a>(
    parent: Option<&'a dyn DiskImage>,
    offset: u64,
    len: u64,
    out: &mut Vec<Extent<'a>>,
) -> Result<()> {
    let covered = match parent {
        Some(parent) => {
            let covered = covered_by(parent, offset, len);
            if covered > 0 {
                let first = out.len();
                parent.map(offset, covered, out)?;
                for extent in &mut out[first..] {
                    extent.depth = extent.depth.saturating_add(1);
                }
                merge_at(out, first);
            }
            covered
        }
        None => 0,
    };
    if covered < len {
        push(
            out,
            Extent {
                len: len - covered,
                depth: 0,
                source: Source::Unallocated,
            },
        );
    }
    Ok(())
}

/// The chain entry of a layer held in one file.
pub fn entry(file: &ImageFile, format: Format, virtual_size: u64) -> ChainEntry {
    ChainEntry {
        path: file.path().to_path_buf(),
        resolved: file.real_path().to_path_buf(),
        format,
        virtual_size,
        file_size: file.len(),
        extents: Vec::new(),
        holes_read_as_zero: false,
    }
}

/// The chain list of an image: its own layer, then its parent's chain.
pub fn chain_with_parent(own: ChainEntry, parent: Option<&dyn DiskImage>) -> Vec<ChainEntry> {
    let mut chain = vec![own];
    if let Some(parent) = parent {
        chain.extend(parent.chain());
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_names() {
        let child = Path::new("/vm/disks/child.vhd");
        assert_eq!(
            windows_path_candidates(child, ".\\base.vhd"),
            vec![PathBuf::from("/vm/disks/base.vhd")]
        );
        assert_eq!(
            windows_path_candidates(child, "..\\b\\base.vhd"),
            vec![PathBuf::from("/vm/disks/../b/base.vhd")]
        );
        assert_eq!(
            windows_path_candidates(child, "C:\\VMs\\base.vhd"),
            vec![PathBuf::from("/vm/disks/base.vhd")]
        );
        assert_eq!(
            windows_path_candidates(child, "\\\\?\\C:\\VMs\\x.vhdx"),
            vec![PathBuf::from("/vm/disks/x.vhdx")]
        );
        assert!(windows_path_candidates(child, "").is_empty());
    }

    #[test]
    fn missing_parent_names_paths_tried() {
        let err = locate_parent(
            Path::new("/nowhere/child.vmdk"),
            "\"base.vmdk\"",
            &[PathBuf::from("/nowhere/base.vmdk")],
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(
            msg.contains("/nowhere/child.vmdk") && msg.contains("tried: /nowhere/base.vmdk"),
            "{msg}"
        );
    }
}
