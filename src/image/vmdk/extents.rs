//! Opening the extents a descriptor lists, and mapping guest ranges across them.

use super::descriptor::{Access, Descriptor, ExtentType};
use super::header;
use super::sparse::SparseExtent;
use crate::error::{Error, Result};
use crate::image::common::chain::relative_to_child;
use crate::image::common::walk::{push, Walker};
use crate::image::policy::Field;
use crate::image::{Extent, ImageFile, OpenOptions, Source};
use std::path::Path;

/// What one extent of the disk is.
#[derive(Debug)]
pub enum ExtentKind {
    /// Raw bytes of `file` from byte `offset`.
    Flat {
        /// The flat file.
        file: ImageFile,
        /// Byte offset of the extent's first byte.
        offset: u64,
    },
    /// Reads as zero.
    Zero,
    /// Cannot be read.
    NoAccess,
    /// A sparse extent with its grain tables.
    Sparse(SparseExtent),
}

/// One extent, placed in the guest address space.
#[derive(Debug)]
pub struct VmdkExtent {
    /// Guest byte offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Contents.
    pub kind: ExtentKind,
}

impl VmdkExtent {
    /// The file behind the extent, if any.
    pub fn file(&self) -> Option<&ImageFile> {
        match &self.kind {
            ExtentKind::Flat { file, .. } => Some(file),
            ExtentKind::Sparse(sparse) => Some(sparse.file()),
            ExtentKind::Zero | ExtentKind::NoAccess => None,
        }
    }

    /// Whether the extent is a flat file (guest bytes as they are).
    pub fn is_flat(&self) -> bool {
        matches!(self.kind, ExtentKind::Flat { .. })
    }
}

/// Opens every extent of `desc`, whose names are relative to `desc_path`'s directory.
pub fn open_all(
    desc: &Descriptor,
    desc_path: &Path,
    options: &OpenOptions,
) -> Result<Vec<VmdkExtent>> {
    let mut extents = Vec::with_capacity(desc.extents.len());
    let mut start = 0u64;
    for (number, line) in desc.extents.iter().enumerate() {
        if line.sectors == 0 {
            continue;
        }
        let context = |e: Error| {
            Error::corrupt(format!("extent {} of the descriptor: {e}", number + 1))
                .with_path(desc_path)
        };
        let len = header::sectors_to_bytes(line.sectors, "extent size").map_err(context)?;
        let kind = if line.access == Access::NoAccess {
            ExtentKind::NoAccess
        } else if line.kind == ExtentType::Zero {
            ExtentKind::Zero
        } else {
            let name = line.file.as_deref().unwrap_or_default();
            let path = relative_to_child(desc_path, name);
            let field = Field::Extent(number + 1);
            let file = ImageFile::open_named(&path, desc_path, field, options)?;
            open_one(file, line.kind, line.offset, len)?
        };
        extents.push(VmdkExtent { start, len, kind });
        start = start.checked_add(len).ok_or_else(|| {
            Error::corrupt("extent sizes add up past 2^64 bytes").with_path(desc_path)
        })?;
    }
    Ok(extents)
}

/// Opens one file-backed extent of `len` bytes.
fn open_one(
    file: ImageFile,
    kind: ExtentType,
    offset_sectors: u64,
    len: u64,
) -> Result<ExtentKind> {
    match kind {
        ExtentType::Flat => {
            let offset = header::sectors_to_bytes(offset_sectors, "extent offset")?;
            match offset.checked_add(len) {
                Some(end) if end <= file.len() => Ok(ExtentKind::Flat { file, offset }),
                _ => Err(Error::corrupt(format!(
                    "flat extent needs {len} bytes from offset {offset}, file has {} bytes",
                    file.len()
                ))
                .with_path(file.path())),
            }
        }
        ExtentType::Sparse | ExtentType::SeSparse => {
            let header = header::read(&file)?;
            let want_se = kind == ExtentType::SeSparse;
            if want_se != (header.kind == "seSparse") {
                return Err(Error::corrupt(format!(
                    "descriptor calls this extent {} but the file is {}",
                    if want_se { "SESPARSE" } else { "SPARSE" },
                    header.kind
                ))
                .with_path(file.path()));
            }
            let sparse = SparseExtent::open(file, header)?;
            if sparse.capacity() < len {
                return Err(Error::corrupt(format!(
                    "descriptor gives the extent {len} bytes, its sparse header only {}",
                    sparse.capacity()
                ))
                .with_path(sparse.file().path()));
            }
            Ok(ExtentKind::Sparse(sparse))
        }
        ExtentType::Zero => Ok(ExtentKind::Zero),
    }
}

/// [`crate::image::DiskImage::data_run`] through `extents`: when `offset..offset + len`
/// (inside the disk) lies in one extent, as one run of data.
#[inline]
pub fn data_run<'a>(
    extents: &'a [VmdkExtent],
    walker: Walker<'a>,
    offset: u64,
    len: u64,
) -> Result<Option<(&'a ImageFile, u64)>> {
    let index = extents.partition_point(|e| e.start + e.len <= offset);
    let Some(extent) = extents.get(index) else {
        return Ok(None);
    };
    let rel = offset - extent.start;
    if rel + len > extent.len {
        return Ok(None);
    }
    match &extent.kind {
        ExtentKind::Flat { file, offset } => Ok(Some((file, offset + rel))),
        ExtentKind::Sparse(sparse) => Walker {
            block_size: sparse.grain_bytes(),
            ..walker
        }
        .data_run(extent.start, rel, len, |grain| sparse.lookup(grain)),
        ExtentKind::Zero | ExtentKind::NoAccess => Ok(None),
    }
}

/// Appends extents for `offset..offset + len` (inside the disk) through `extents`.
// Inlined into `VmdkImage::map`: called out of line, the `Walker` the caller had just
// built field by field was reloaded whole from its stack copy, a store-forwarding stall
// that took a third of this function's time (`cargo bench --bench lookup`, vmdk_sparse).
#[inline]
pub fn map<'a>(
    extents: &'a [VmdkExtent],
    walker: Walker<'a>,
    offset: u64,
    len: u64,
    out: &mut Vec<Extent<'a>>,
) -> Result<()> {
    let mut pos = offset;
    let end = offset + len;
    let mut index = extents.partition_point(|e| e.start + e.len <= pos);
    while pos < end {
        let extent = extents
            .get(index)
            .ok_or_else(|| Error::corrupt(format!("no extent covers guest offset {pos}")))?;
        let rel = pos - extent.start;
        let piece = (extent.len - rel).min(end - pos);
        let source = |source| Extent {
            len: piece,
            depth: 0,
            source,
        };
        match &extent.kind {
            ExtentKind::Flat { file, offset } => push(
                out,
                source(Source::Data {
                    file,
                    offset: offset + rel,
                }),
            ),
            ExtentKind::Zero => push(out, source(Source::Zero)),
            ExtentKind::NoAccess => {
                return Err(Error::unsupported(format!(
                    "guest bytes {pos}..{} lie in a NOACCESS extent",
                    pos + piece
                )))
            }
            ExtentKind::Sparse(sparse) => {
                let walker = Walker {
                    block_size: sparse.grain_bytes(),
                    ..walker
                };
                walker.map(extent.start, rel, piece, |grain| sparse.lookup(grain), out)?
            }
        }
        pos += piece;
        index += 1;
    }
    Ok(())
}
