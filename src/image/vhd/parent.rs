//! The parent of a differencing VHD: found through its parent locators (`W2ru` relative
//! and `W2ku` absolute Windows paths in UTF-16LE, `MacX` file URLs in UTF-8) or the parent
//! name in the header, and checked by the unique ID the child recorded.

use super::dynamic::{DynamicHeader, Locator};
use super::footer;
use crate::error::{Error, Result};
use crate::image::common::bytes::{self, uuid_string};
use crate::image::common::chain;
use crate::image::{DiskImage, ImageFile, OpenOptions};
use std::path::PathBuf;

/// The longest locator we read.
const MAX_LOCATOR_BYTES: u32 = 64 << 10;

/// Finds, checks and opens the parent of the differencing VHD `file`.
pub fn open(
    file: &ImageFile,
    header: &DynamicHeader,
    options: &OpenOptions,
    depth: u32,
) -> Result<Box<dyn DiskImage>> {
    let child = file.path();
    let mut candidates = Vec::new();
    for code in [b"W2ru", b"W2ku", b"MacX"] {
        for locator in header.locators.iter().filter(|l| &l.code == code) {
            candidates.extend(locator_paths(file, locator)?);
        }
    }
    candidates.extend(chain::windows_path_candidates(child, &header.parent_name));
    let id = uuid_string(&header.parent_uuid);
    let wanted = if header.parent_name.is_empty() {
        format!("with unique id {id}")
    } else {
        format!("\"{}\" (unique id {id})", header.parent_name)
    };
    let verify = |parent: &ImageFile| {
        let found = footer::read(parent)?.unique_id;
        Ok((found != header.parent_uuid).then(|| {
            format!(
                "parent unique id {id} recorded here does not match unique id {}",
                uuid_string(&found)
            )
        }))
    };
    chain::open_verified(child, &wanted, &candidates, options, depth, verify)
}

/// Where one locator says the parent is.
fn locator_paths(file: &ImageFile, locator: &Locator) -> Result<Vec<PathBuf>> {
    if locator.data_len > MAX_LOCATOR_BYTES {
        return Err(Error::corrupt(format!(
            "VHD parent locator {} has {} bytes, more than {MAX_LOCATOR_BYTES}",
            String::from_utf8_lossy(&locator.code),
            locator.data_len
        ))
        .with_path(file.path()));
    }
    let data = bytes::read_vec(
        file,
        locator.data_offset,
        u64::from(locator.data_len),
        "VHD parent locator",
    )?;
    Ok(match &locator.code {
        b"MacX" => {
            let text = String::from_utf8_lossy(&data);
            let text = text.trim_end_matches('\0');
            let path = text.strip_prefix("file://").unwrap_or(text);
            vec![chain::relative_to_child(file.path(), path)]
        }
        _ => chain::windows_path_candidates(file.path(), &bytes::utf16(&data, true)),
    })
}
