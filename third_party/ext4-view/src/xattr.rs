// Copyright 2024 Google LLC
//
// Licensed under the Apache License, Version 2.0 <LICENSE-APACHE or
// https://www.apache.org/licenses/LICENSE-2.0> or the MIT license
// <LICENSE-MIT or https://opensource.org/licenses/MIT>, at your
// option. This file may not be copied, modified, or distributed
// except according to those terms.

//! Extended attributes (imgblk patch): the entries after `i_extra_isize` in
//! the inode and in the block `i_file_acl` points at. Every offset and
//! length is checked against the area it lies in; a value stored in an
//! inode of its own (`ea_inode`) is refused.

use crate::Ext4;
use crate::checksum::Checksum;
use crate::error::{CorruptKind, Ext4Error};
use crate::inode::Inode;
use crate::util::{read_u16le, read_u32le, usize_from_u32};
use alloc::vec;
use alloc::vec::Vec;

const XATTR_MAGIC: u32 = 0xea02_0000;
/// Size of the header of an attribute block.
const BLOCK_HEADER_LEN: usize = 32;
/// Size of an entry before its name.
const ENTRY_HEADER_LEN: usize = 16;
/// Name index of POSIX access ACLs (`system.posix_acl_access`).
const INDEX_ACL_ACCESS: u8 = 2;
/// Name index of POSIX default ACLs (`system.posix_acl_default`).
const INDEX_ACL_DEFAULT: u8 = 3;
/// Name index of `system.*`, which holds `system.data` (inline data).
const INDEX_SYSTEM: u8 = 7;

/// One extended attribute: its full name (`user.foo`) and value.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Xattr {
    /// The name with its namespace prefix, as `getfattr` shows it.
    pub name: Vec<u8>,
    /// The value; POSIX ACLs in the kernel's `xattr` form (version 2), not
    /// ext4's on-disk form.
    pub value: Vec<u8>,
}

/// One raw entry: name index, name suffix, value.
pub(crate) struct RawXattr {
    pub(crate) index: u8,
    pub(crate) name: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

/// The prefix of name index `index`, as the kernel's `ext4_xattr_handler_map`
/// gives it; `None` for indexes the kernel does not list.
fn prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        INDEX_ACL_ACCESS => b"system.posix_acl_access",
        INDEX_ACL_DEFAULT => b"system.posix_acl_default",
        4 => b"trusted.",
        6 => b"security.",
        INDEX_SYSTEM => b"system.",
        8 => b"system.richacl",
        _ => return None,
    })
}

/// Parses the entries starting at `entries` of `area`, whose values lie at
/// offsets from `values_base`; `end` bounds the values (the area's end).
fn parse_entries(
    inode: &Inode,
    area: &[u8],
    entries: usize,
    values_base: usize,
    out: &mut Vec<RawXattr>,
) -> Result<(), Ext4Error> {
    let err = |field| Ext4Error::from(CorruptKind::Xattr(inode.index, field));
    let mut at = entries;
    loop {
        // The list ends with four zero bytes (or at the end of the area).
        let Some(head) = area.get(at..at + 4) else {
            return Ok(());
        };
        if head == [0, 0, 0, 0] {
            return Ok(());
        }
        let entry = area
            .get(at..at + ENTRY_HEADER_LEN)
            .ok_or_else(|| err("entry header past the end of its area"))?;
        let name_len = usize::from(entry[0]);
        let index = entry[1];
        let value_offs = usize::from(read_u16le(entry, 2));
        let value_inum = read_u32le(entry, 4);
        let value_size = usize_from_u32(read_u32le(entry, 8));
        let name_start = at + ENTRY_HEADER_LEN;
        let name = area
            .get(name_start..name_start + name_len)
            .ok_or_else(|| err("e_name_len past the end of its area"))?;
        if value_inum != 0 {
            return Err(err(
                "e_value_inum: a value in an inode of its own (ea_inode)",
            ));
        }
        let value_start = values_base
            .checked_add(value_offs)
            .ok_or_else(|| err("e_value_offs"))?;
        let value_end = value_start
            .checked_add(value_size)
            .ok_or_else(|| err("e_value_size"))?;
        let value = area.get(value_start..value_end).ok_or_else(|| {
            err("e_value_offs + e_value_size past the end of its area")
        })?;
        out.push(RawXattr {
            index,
            name: name.to_vec(),
            value: value.to_vec(),
        });
        // Entries are padded to four bytes.
        at = (name_start + name_len + 3) & !3;
    }
}

/// The raw attributes of `inode`: those in the inode, then those in its
/// attribute block.
pub(crate) fn read_raw(
    fs: &Ext4,
    inode: &Inode,
) -> Result<Vec<RawXattr>, Ext4Error> {
    let err = |field| Ext4Error::from(CorruptKind::Xattr(inode.index, field));
    let mut out = Vec::new();
    let raw = &inode.raw;
    if raw.len() > 128 + 2 {
        let extra = usize::from(read_u16le(raw, 0x80));
        let start = 128 + extra;
        if extra % 4 != 0 || start > raw.len() {
            return Err(err("i_extra_isize"));
        }
        if raw.len() >= start + 4 && read_u32le(raw, start) == XATTR_MAGIC {
            let area = &raw[start + 4..];
            parse_entries(inode, area, 0, 0, &mut out)?;
        }
    }
    if inode.file_acl != 0 {
        let block_size = fs.0.superblock.block_size;
        let mut block = vec![0; block_size.to_usize()];
        fs.read_from_block(inode.file_acl, 0, &mut block)?;
        if read_u32le(&block, 0) != XATTR_MAGIC {
            return Err(err("h_magic of the attribute block (i_file_acl)"));
        }
        if read_u32le(&block, 8) != 1 {
            return Err(err("h_blocks of the attribute block (i_file_acl)"));
        }
        if fs.has_metadata_checksums() {
            let expected = read_u32le(&block, 0x10);
            let mut checksum =
                Checksum::with_seed(fs.0.superblock.checksum_seed);
            checksum.update(&inode.file_acl.to_le_bytes());
            checksum.update(&block[..0x10]);
            checksum.update_u32_le(0);
            checksum.update(&block[0x14..]);
            if checksum.finalize() != expected {
                return Err(err(
                    "h_checksum of the attribute block (i_file_acl)",
                ));
            }
        }
        parse_entries(inode, &block, BLOCK_HEADER_LEN, 0, &mut out)?;
    }
    Ok(out)
}

/// The value of `system.data` (the rest of an inline file), empty when
/// there is none.
pub(crate) fn system_data(
    fs: &Ext4,
    inode: &Inode,
) -> Result<Vec<u8>, Ext4Error> {
    Ok(read_raw(fs, inode)?
        .into_iter()
        .find(|x| x.index == INDEX_SYSTEM && x.name == b"data")
        .map(|x| x.value)
        .unwrap_or_default())
}

/// The attributes of `inode` with their full names, without `system.data`
/// (which holds inline data, not an attribute) and without entries whose
/// name index the kernel does not know.
pub(crate) fn read(fs: &Ext4, inode: &Inode) -> Result<Vec<Xattr>, Ext4Error> {
    let mut out = Vec::new();
    for raw in read_raw(fs, inode)? {
        if raw.index == INDEX_SYSTEM && raw.name == b"data" {
            continue;
        }
        let Some(prefix) = prefix(raw.index) else {
            continue;
        };
        let value = if raw.index == INDEX_ACL_ACCESS
            || raw.index == INDEX_ACL_DEFAULT
        {
            acl_to_xattr(&raw.value).ok_or(CorruptKind::Xattr(
                inode.index,
                "a POSIX ACL value",
            ))?
        } else {
            raw.value
        };
        let mut name = prefix.to_vec();
        name.extend_from_slice(&raw.name);
        out.push(Xattr { name, value });
    }
    Ok(out)
}

/// An ACL in ext4's on-disk form (version 1; short entries without an id)
/// in the kernel's `xattr` form (version 2; every entry with an id, -1 for
/// none), as `getfattr` reads it.
fn acl_to_xattr(disk: &[u8]) -> Option<Vec<u8>> {
    const ACL_USER: u16 = 2;
    const ACL_GROUP: u16 = 8;
    if disk.len() < 4 || read_u32le(disk, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at < disk.len() {
        let tag = read_u16le(disk.get(at..at + 4)?, 0);
        let perm = read_u16le(disk, at + 2);
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            let id = read_u32le(disk.get(at..at + 8)?, 4);
            at += 8;
            id
        } else {
            at += 4;
            u32::MAX
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}
