//! The parent of a differencing VHDX: located through the parent locator's
//! `relative_path`, `absolute_win32_path` and `volume_path`, and checked by the parent's
//! DataWriteGuid, which must equal the child's `parent_linkage` (or `parent_linkage2`).

use super::header;
use super::metadata::Metadata;
use crate::error::{Error, Result};
use crate::image::common::bytes::guid_string;
use crate::image::common::chain;
use crate::image::{DiskImage, ImageFile, OpenOptions};

/// Finds, checks and opens the parent of the differencing VHDX `file`.
pub fn open(
    file: &ImageFile,
    meta: &Metadata,
    options: &OpenOptions,
    depth: u32,
) -> Result<Box<dyn DiskImage>> {
    let child = file.path();
    let linkage = meta.locator("parent_linkage").ok_or_else(|| {
        Error::corrupt("VHDX parent locator has no parent_linkage").with_path(child)
    })?;
    let mut candidates = Vec::new();
    for key in ["relative_path", "absolute_win32_path", "volume_path"] {
        if let Some(value) = meta.locator(key) {
            candidates.extend(chain::windows_path_candidates(child, value));
        }
    }
    let shown = meta
        .locator("relative_path")
        .or(meta.locator("absolute_win32_path"))
        .unwrap_or("(no path)");
    let wanted = format!("\"{shown}\" (linkage {linkage})");
    let verify = |parent: &ImageFile| {
        let guid = guid_string(&header::read_header(parent)?.data_write_guid);
        let matches = |value: Option<&str>| {
            value.is_some_and(|v| v.trim_matches(['{', '}']).eq_ignore_ascii_case(&guid))
        };
        let linked = matches(Some(linkage)) || matches(meta.locator("parent_linkage2"));
        Ok((!linked)
            .then(|| format!("parent_linkage {linkage} does not match DataWriteGuid {{{guid}}}")))
    };
    chain::open_verified(child, &wanted, &candidates, options, depth, verify)
}
