// Copyright 2024 Google LLC
//
// Licensed under the Apache License, Version 2.0 <LICENSE-APACHE or
// https://www.apache.org/licenses/LICENSE-2.0> or the MIT license
// <LICENSE-MIT or https://opensource.org/licenses/MIT>, at your
// option. This file may not be copied, modified, or distributed
// except according to those terms.

//! Access by inode number (imgblk patch): a tree walk that already holds a
//! [`DirEntry`] (and so the inode number) reads the directory, opens the
//! file, reads the link target or the extended attributes without resolving
//! the path again from the root, which rescans every directory on the way.

use crate::dir_entry::DirEntry;
use crate::error::{CorruptKind, Ext4Error};
use crate::file::File;
use crate::inode::{Inode, InodeIndex};
use crate::iters::extents::Extents;
use crate::iters::file_blocks::FileBlocks;
use crate::iters::read_dir::ReadDir;
use crate::metadata::Metadata;
use crate::path::PathBuf;
use crate::xattr::{self, Xattr};
use crate::{Ext4, InodeFlags};
use alloc::vec::Vec;
use core::ops::Range;

impl DirEntry {
    /// The number of the inode the entry names (imgblk patch).
    #[must_use]
    pub fn inode(&self) -> u32 {
        self.inode.get()
    }
}

impl Ext4 {
    fn inode_by_number(&self, inode: u32) -> Result<Inode, Ext4Error> {
        let index =
            InodeIndex::new(inode).ok_or(CorruptKind::InodeNumber(inode))?;
        Inode::read(self, index)
    }

    /// The metadata of inode `inode` (the link itself for a symlink).
    ///
    /// # Errors
    ///
    /// The inode number is out of range, or the inode cannot be read.
    pub fn inode_metadata(&self, inode: u32) -> Result<Metadata, Ext4Error> {
        Ok(self.inode_by_number(inode)?.metadata)
    }

    /// The entries of directory inode `inode`. Their [`DirEntry::path`] is
    /// their name alone, as the directory's path is not known.
    ///
    /// # Errors
    ///
    /// As [`Ext4::read_dir`]; `NotADirectory` for another file type.
    pub fn inode_read_dir(&self, inode: u32) -> Result<ReadDir, Ext4Error> {
        let inode = self.inode_by_number(inode)?;
        if !inode.metadata.is_dir() {
            return Err(Ext4Error::NotADirectory);
        }
        ReadDir::new(self.clone(), &inode, PathBuf::empty())
    }

    /// Opens regular file inode `inode`.
    ///
    /// # Errors
    ///
    /// As [`Ext4::open`].
    pub fn inode_open(&self, inode: u32) -> Result<File, Ext4Error> {
        let inode = self.inode_by_number(inode)?;
        if inode.metadata.is_dir() {
            return Err(Ext4Error::IsADirectory);
        }
        if !inode.metadata.file_type.is_regular_file() {
            return Err(Ext4Error::IsASpecialFile);
        }
        File::open_inode(self, inode)
    }

    /// The target of symlink inode `inode`.
    ///
    /// # Errors
    ///
    /// As [`Ext4::read_link`].
    pub fn inode_read_link(&self, inode: u32) -> Result<PathBuf, Ext4Error> {
        self.inode_by_number(inode)?.symlink_target(self)
    }

    /// The extended attributes of inode `inode`, in the inode and in its
    /// attribute block, with their full names (`user.x`); `system.data`
    /// (inline data) is left out, POSIX ACLs are given in the kernel's
    /// `xattr` form.
    ///
    /// # Errors
    ///
    /// A corrupt attribute area, naming the field; a value in an inode of
    /// its own (`ea_inode`).
    pub fn inode_xattrs(&self, inode: u32) -> Result<Vec<Xattr>, Ext4Error> {
        xattr::read(self, &self.inode_by_number(inode)?)
    }

    /// The byte ranges of inode `inode` that hold data, in order, merged
    /// where they touch and cut at the file's size; the rest of the file is
    /// holes (unallocated or unwritten blocks), which read as zeros. At most
    /// `max_ranges` ranges: `Ok(None)` when there are more.
    ///
    /// # Errors
    ///
    /// The inode cannot be read, or its extent tree or block map is
    /// corrupt.
    pub fn inode_data_ranges(
        &self,
        inode: u32,
        max_ranges: usize,
    ) -> Result<Option<Vec<Range<u64>>>, Ext4Error> {
        let inode = self.inode_by_number(inode)?;
        let size = inode.metadata.size_in_bytes;
        let block_size = self.0.superblock.block_size.to_u64();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut add = |start_block: u64, blocks: u64| -> bool {
            let start = start_block.saturating_mul(block_size).min(size);
            let end = start_block
                .saturating_add(blocks)
                .saturating_mul(block_size)
                .min(size);
            if start >= end {
                return true;
            }
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => {
                    if ranges.len() >= max_ranges {
                        return false;
                    }
                    ranges.push(start..end);
                }
            }
            true
        };
        if inode.has_inline_data() {
            add(0, size.div_ceil(block_size));
        } else if inode.flags.contains(InodeFlags::EXTENTS) {
            for extent in Extents::new(self.clone(), &inode)? {
                let extent = extent?;
                if !extent.uninit
                    && !add(
                        u64::from(extent.block_within_file),
                        u64::from(extent.num_blocks),
                    )
                {
                    return Ok(None);
                }
            }
        } else {
            for (n, block) in FileBlocks::new(self.clone(), &inode)?.enumerate()
            {
                if block? != 0 && !add(n as u64, 1) {
                    return Ok(None);
                }
            }
        }
        // A hostile extent tree may list extents out of order or
        // overlapping.
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => {
                    last.end = last.end.max(r.end);
                }
                _ => merged.push(r),
            }
        }
        Ok(Some(merged))
    }
}
