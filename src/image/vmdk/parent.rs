//! Snapshot chains: a child names its parent with `parentFileNameHint` and records the
//! parent's content ID as `parentCID`; a parent changed since (different CID) would show
//! the child's data over the wrong base, so the mismatch is an error.

use super::descriptor::{self, Descriptor};
use super::header;
use crate::error::{Error, Result};
use crate::image::common::chain;
use crate::image::{DiskImage, ImageFile, OpenOptions};
use std::path::Path;

/// Opens the parent `desc` names, if any, after checking its CID.
pub fn open(
    child: &Path,
    desc: &Descriptor,
    options: &OpenOptions,
    depth: u32,
) -> Result<Option<Box<dyn DiskImage>>> {
    let Some(hint) = desc.parent_hint.as_deref() else {
        return Ok(None);
    };
    let mut candidates = vec![chain::relative_to_child(child, hint)];
    if hint.contains('\\') {
        candidates.extend(chain::windows_path_candidates(child, hint));
    }
    let wanted = format!("\"{hint}\" (parentFileNameHint)");
    let expected = desc.parent_cid.unwrap_or(descriptor::NO_PARENT_CID);
    let verify = |file: &ImageFile| {
        let cid = read_cid(file)?;
        Ok((cid != expected)
            .then(|| format!("parentCID {expected:08x} does not match CID {cid:08x}")))
    };
    chain::open_verified(child, &wanted, &candidates, options, depth, verify).map(Some)
}

/// The CID in the descriptor of a VMDK file (a descriptor file or a hosted sparse file
/// with an embedded descriptor).
pub fn read_cid(file: &ImageFile) -> Result<u32> {
    let desc = read_descriptor(file)?;
    desc.and_then(|d| d.cid).ok_or_else(|| {
        Error::corrupt("parent has no VMDK descriptor with a CID to check the child against")
            .with_path(file.path())
    })
}

/// The descriptor of a VMDK file: embedded in a hosted sparse file, or the whole file.
/// COWD and seSparse files have none.
pub fn read_descriptor(file: &ImageFile) -> Result<Option<Descriptor>> {
    let head_len = file.len().min(512);
    let mut head = vec![0u8; head_len as usize];
    file.read_exact_at(&mut head, 0)?;
    if head.starts_with(header::HOSTED_MAGIC) {
        let h = header::parse_hosted(&head).map_err(|e| e.with_path(file.path()))?;
        return h
            .descriptor
            .map(|(offset, len)| descriptor::read(file, offset, len))
            .transpose();
    }
    if header::is_sparse_magic(&head) {
        return Ok(None);
    }
    if !descriptor::looks_like_descriptor(&head) || file.len() > descriptor::MAX_DESCRIPTOR_BYTES {
        return Ok(None);
    }
    descriptor::read(file, 0, file.len()).map(Some)
}
