// Copyright 2024 Google LLC
//
// Licensed under the Apache License, Version 2.0 <LICENSE-APACHE or
// https://www.apache.org/licenses/LICENSE-2.0> or the MIT license
// <LICENSE-MIT or https://opensource.org/licenses/MIT>, at your
// option. This file may not be copied, modified, or distributed
// except according to those terms.

//! Inline data (imgblk patch): a small file's, directory's or symlink's
//! bytes kept in the inode itself, the first 60 in `i_block` and the rest in
//! the value of the `system.data` attribute (`INCOMPAT_INLINE_DATA`).

use crate::Ext4;
use crate::error::{CorruptKind, Ext4Error};
use crate::inode::{Inode, InodeFlags};
use crate::xattr;
use alloc::vec::Vec;

impl Inode {
    /// Whether the inode keeps its bytes inline.
    pub(crate) fn has_inline_data(&self) -> bool {
        self.flags.contains(InodeFlags::INLINE_DATA)
    }
}

/// The bytes of an inline file or symlink: `i_size` of them, from `i_block`
/// and then `system.data`.
pub(crate) fn read_inline_file(
    fs: &Ext4,
    inode: &Inode,
) -> Result<Vec<u8>, Ext4Error> {
    let mut data = inode.inline_data.to_vec();
    data.extend_from_slice(&xattr::system_data(fs, inode)?);
    let size = usize::try_from(inode.metadata.size_in_bytes)
        .ok()
        .filter(|size| *size <= data.len())
        .ok_or(CorruptKind::InlineData(
            inode.index,
            "i_size larger than i_block and system.data",
        ))?;
    data.truncate(size);
    Ok(data)
}

/// The parent's inode number and the two areas of directory entries of an
/// inline directory: `i_block` after the parent's number, and
/// `system.data`.
pub(crate) fn read_inline_dir(
    fs: &Ext4,
    inode: &Inode,
) -> Result<(u32, [Vec<u8>; 2]), Ext4Error> {
    let parent = u32::from_le_bytes([
        inode.inline_data[0],
        inode.inline_data[1],
        inode.inline_data[2],
        inode.inline_data[3],
    ]);
    Ok((
        parent,
        [
            inode.inline_data[4..].to_vec(),
            xattr::system_data(fs, inode)?,
        ],
    ))
}
