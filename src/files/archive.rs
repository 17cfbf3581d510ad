//! A tree of a [`FileSystem`] as a POSIX pax tar stream (`imgblk tar`): ustar headers, with
//! pax extended records for what they cannot hold (long names and link targets,
//! nanosecond times, large ids and sizes), so that GNU tar, bsdtar, restic and borg read
//! it back attribute for attribute.

use super::walk::{walk, Limits};
use super::{copy_error, Entry, FileSystem, Kind};
use crate::error::{ErrorKind, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

/// Largest value a ustar octal field of 8 bytes holds (uid, gid).
const USTAR_ID_MAX: u64 = 0o7777777;
/// Largest value a ustar octal field of 12 bytes holds (size, mtime).
const USTAR_NUM_MAX: u64 = 0o77777777777;

/// Why [`write_tar`] left a file out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// tar has no entry for it (a socket, a data stream, a device node without its
    /// numbers): the archive is as complete as tar allows.
    CannotHold,
    /// Its bytes could not be read (a compressed or encrypted NTFS file): the archive
    /// lacks a file's contents.
    CannotRead,
}

/// Writes `root` (a directory's whole tree, or one file) of `fs` to `out` as a pax
/// archive; names are `./` plus the path below `root` (a file alone by its own name).
/// Files tar cannot carry, or whose details or bytes the reader does not give (sockets,
/// device nodes without their numbers, NTFS data streams, compressed NTFS files), are
/// left out with a line to `skipped`, which also learns whether the file's bytes are lost
/// ([`Skip`]). Further names of a file the reader gives a number
/// and a link count for are archived as hard links to the first.
pub fn write_tar<W: Write>(
    fs: &dyn FileSystem,
    root: &Path,
    limits: Limits,
    out: W,
    skipped: &mut dyn FnMut(&Path, &str, Skip),
) -> Result<W> {
    let mut builder = tar::Builder::new(Ending {
        inner: out,
        failed: false,
    });
    let mut first_names: HashMap<u64, PathBuf> = HashMap::new();
    let walked = walk(fs, root, limits, &mut |path, entry| {
        let name = archive_name(root, path, entry);
        let (kind, why) = match entry.kind {
            Kind::File => (EntryType::Regular, None),
            Kind::Dir => (EntryType::Directory, None),
            Kind::Symlink => (EntryType::Symlink, None),
            Kind::Fifo => (EntryType::Fifo, None),
            Kind::Socket => (EntryType::Regular, Some("a socket, which tar cannot hold")),
            Kind::Stream => (
                EntryType::Regular,
                Some("a named data stream, which tar cannot hold (`imgblk get` reads it)"),
            ),
            Kind::CharDev if entry.device.is_some() => (EntryType::Char, None),
            Kind::BlockDev if entry.device.is_some() => (EntryType::Block, None),
            Kind::CharDev | Kind::BlockDev => (
                EntryType::Regular,
                Some("a device node, whose device numbers this file-system reader does not give"),
            ),
        };
        if let Some(why) = why {
            skipped(path, why, Skip::CannotHold);
            return Ok(());
        }
        let hard_link = match entry.file_id {
            Some(id) if kind != EntryType::Directory && entry.links > 1 => {
                match first_names.get(&id) {
                    Some(first) => Some(first.clone()),
                    None => {
                        first_names.insert(id, name.clone());
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(first) = hard_link {
            let link = Entry {
                target: Some(first),
                ..entry.clone()
            };
            let (header, records) = header(&name, &link, EntryType::Link, 0);
            return append(&mut builder, header, records, std::io::empty());
        }
        let xattrs = fs.xattrs(path, entry)?;
        if kind == EntryType::Regular {
            if let Some(ranges) = fs.data_ranges(path, entry, MAX_SPARSE_RANGES)? {
                let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                if data < entry.size {
                    let (header, records) = sparse_header(&name, entry, &ranges, &xattrs);
                    let map = sparse_map(&ranges, entry.size);
                    let bytes = fs.open_ranges(path, entry, ranges)?;
                    let body = std::io::Cursor::new(map).chain(Exact {
                        inner: bytes,
                        left: data,
                    });
                    return append(&mut builder, header, records, body);
                }
            }
        }
        let data = if kind == EntryType::Regular {
            match fs.open_entry(path, entry) {
                Ok(data) => Some(data),
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    skipped(path, &e.to_string(), Skip::CannotRead);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let size = if data.is_some() { entry.size } else { 0 };
        let (mut header, mut records) = header(&name, entry, kind, size);
        xattr_records(&mut records, &xattrs);
        if let (EntryType::Char | EntryType::Block, Some((major, minor))) = (kind, entry.device) {
            device(&mut header, &mut records, major, minor);
        }
        match data {
            Some(inner) => append(&mut builder, header, records, Exact { inner, left: size }),
            None => append(&mut builder, header, records, std::io::empty()),
        }
    });
    if let Err(e) = walked {
        builder.get_mut().failed = true;
        return Err(e);
    }
    builder
        .into_inner()
        .map(|ending| ending.inner)
        .map_err(copy_error)
}

/// Appends one entry: its pax records first when it needs them, then its header and
/// bytes.
fn append<W: Write>(
    builder: &mut tar::Builder<Ending<W>>,
    header: Header,
    records: Vec<u8>,
    data: impl Read,
) -> Result<()> {
    if !records.is_empty() {
        builder
            .append(&pax_header(records.len()), records.as_slice())
            .map_err(copy_error)?;
    }
    builder.append(&header, data).map_err(copy_error)
}

/// The output of an archive, which refuses writes once writing the archive failed: the
/// tar builder ends the stream when it is dropped, and a failed backup must not end
/// with the marker that makes a truncated archive look complete.
struct Ending<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for Ending<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::other("the archive failed"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The name `path` (below `root`) gets in the archive.
fn archive_name(root: &Path, path: &Path, entry: &Entry) -> PathBuf {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() && entry.kind == Kind::Dir => "./".into(),
        Ok(rel) if rel.as_os_str().is_empty() => entry.name.clone(),
        Ok(rel) => Path::new(".").join(rel),
        Err(_) => path.to_path_buf(),
    }
}

/// The ustar header of one entry and the pax records it needs besides.
fn header(name: &Path, entry: &Entry, kind: EntryType, size: u64) -> (Header, Vec<u8>) {
    let mut records = Vec::new();
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(entry.mode);
    let mut name_bytes = name.as_os_str().as_bytes().to_vec();
    if kind == EntryType::Directory && !name_bytes.ends_with(b"/") {
        name_bytes.push(b'/');
    }
    field(
        &mut header.as_old_mut().name,
        &name_bytes,
        "path",
        &mut records,
    );
    if let Some(target) = &entry.target {
        let target = target.as_os_str().as_bytes();
        field(
            &mut header.as_old_mut().linkname,
            target,
            "linkpath",
            &mut records,
        );
    }
    for (key, value, set) in [
        (
            "uid",
            u64::from(entry.uid),
            Header::set_uid as fn(&mut Header, u64),
        ),
        ("gid", u64::from(entry.gid), Header::set_gid),
    ] {
        set(&mut header, value.min(USTAR_ID_MAX));
        if value > USTAR_ID_MAX {
            record(&mut records, key, value.to_string().as_bytes());
        }
    }
    header.set_size(size);
    if size > USTAR_NUM_MAX {
        record(&mut records, "size", size.to_string().as_bytes());
    }
    let secs = u64::try_from(entry.mtime.secs).unwrap_or(0);
    header.set_mtime(secs.min(USTAR_NUM_MAX));
    if entry.mtime.nanos != 0 || secs > USTAR_NUM_MAX || entry.mtime.secs < 0 {
        record(&mut records, "mtime", pax_time(entry.mtime).as_bytes());
    }
    header.set_cksum();
    (header, records)
}

/// Most data ranges a sparse file is archived with (its map is held in memory); a file
/// in more pieces is archived dense.
const MAX_SPARSE_RANGES: usize = 1 << 16;

/// Adds a `SCHILY.xattr.NAME` record for each extended attribute, as GNU tar
/// (`--xattrs`), bsdtar and star write them. A name with `=` or NUL cannot be a pax key
/// and is left out.
fn xattr_records(records: &mut Vec<u8>, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    for (name, value) in xattrs {
        if name.contains(&b'=') || name.contains(&0) {
            continue;
        }
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        record_bytes(records, &key, value);
    }
}

/// Puts a device's numbers in the header: the ustar fields hold 21 bits; larger numbers
/// (Linux's go to 12 and 20 bits, so only a hostile file system has them) go to
/// `SCHILY.devmajor`/`SCHILY.devminor` records as star writes them.
fn device(header: &mut Header, records: &mut Vec<u8>, major: u32, minor: u32) {
    let fits = |n: u32| u64::from(n) <= USTAR_ID_MAX;
    let _ = header.set_device_major(if fits(major) { major } else { 0 });
    let _ = header.set_device_minor(if fits(minor) { minor } else { 0 });
    if !fits(major) {
        record(records, "SCHILY.devmajor", major.to_string().as_bytes());
    }
    if !fits(minor) {
        record(records, "SCHILY.devminor", minor.to_string().as_bytes());
    }
    header.set_cksum();
}

/// The header and pax records of a sparse file in the pax format GNU tar calls 1.0: the
/// header names `DIR/GNUSparseFile.0/NAME` and carries the map and the data ranges; the
/// records give the real name and size.
fn sparse_header(
    name: &Path,
    entry: &Entry,
    ranges: &[Range<u64>],
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> (Header, Vec<u8>) {
    let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let map_len = sparse_map(ranges, entry.size).len() as u64;
    let parent = name.parent().unwrap_or(Path::new("."));
    let base = name
        .file_name()
        .map_or_else(|| name.as_os_str().to_owned(), |b| b.to_owned());
    let stored = parent.join("GNUSparseFile.0").join(base);
    // A long stored name gets a `path` record; GNU.sparse.name, after it, wins.
    let (mut header, mut records) = header(&stored, entry, EntryType::Regular, map_len + data);
    record(&mut records, "GNU.sparse.major", b"1");
    record(&mut records, "GNU.sparse.minor", b"0");
    record(&mut records, "GNU.sparse.name", name.as_os_str().as_bytes());
    record(
        &mut records,
        "GNU.sparse.realsize",
        entry.size.to_string().as_bytes(),
    );
    xattr_records(&mut records, xattrs);
    header.set_cksum();
    (header, records)
}
/// Puts `value` in a fixed header field; when it does not fit, its start, and the whole
/// as pax record `key`.
fn field(field: &mut [u8; 100], value: &[u8], key: &str, records: &mut Vec<u8>) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    if value.len() > field.len() {
        record(records, key, value);
    }
}

/// The map at the start of a sparse file's data (GNU sparse 1.0): the number of
/// ranges, then each range's offset and length, in decimal lines, padded with zeros to
/// a 512-byte block. A file that ends in a hole ends its map with an empty range at its
/// size, as GNU tar writes it, so that the size comes back.
fn sparse_map(ranges: &[Range<u64>], size: u64) -> Vec<u8> {
    let mut pairs: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start, r.end - r.start)).collect();
    if ranges.last().is_none_or(|r| r.end < size) {
        pairs.push((size, 0));
    }
    let mut map = format!("{}\n", pairs.len()).into_bytes();
    for (offset, len) in pairs {
        map.extend_from_slice(format!("{offset}\n{len}\n").as_bytes());
    }
    map.resize(map.len().div_ceil(512) * 512, 0);
    map
}

/// Appends one pax record, `LEN key=value\n`, where LEN counts the whole record itself.
fn record(records: &mut Vec<u8>, key: &str, value: &[u8]) {
    record_bytes(records, key.as_bytes(), value);
}

/// [`record`] with a key of any bytes (an extended attribute's name).
fn record_bytes(records: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    records.extend_from_slice(format!("{len} ").as_bytes());
    records.extend_from_slice(key);
    records.push(b'=');
    records.extend_from_slice(value);
    records.push(b'\n');
}

/// A time as pax writes it: seconds, then a fraction when there is one.
fn pax_time(t: super::entry::Time) -> String {
    if t.nanos == 0 {
        return t.secs.to_string();
    }
    let (sign, secs, nanos) = if t.secs < 0 {
        ("-", -(t.secs + 1), 1_000_000_000 - t.nanos)
    } else {
        ("", t.secs, t.nanos)
    };
    let fraction = format!("{nanos:09}");
    format!("{sign}{secs}.{}", fraction.trim_end_matches('0'))
}

/// The header of a pax extended-header entry carrying `len` bytes of records.
fn pax_header(len: usize) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    let name = b"././@PaxHeader";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(0o644);
    header.set_size(len as u64);
    header.set_cksum();
    header
}

/// A file's bytes, exactly as many as its header says: a file system that delivers
/// fewer is an error, not a torn archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended {} bytes before its size", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::entry::Time;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut r = Vec::new();
        record(&mut r, "path", b"a");
        assert_eq!(r, b"9 path=a\n");
        let mut r = Vec::new();
        record(&mut r, "path", &[b'x'; 92]);
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 path="));
    }

    #[test]
    fn sparse_maps_list_ranges_and_end_with_the_size_after_a_hole() {
        let map = sparse_map(&[0..1024, 4096..5000], 8192);
        assert_eq!(map.len(), 512);
        let text = b"3\n0\n1024\n4096\n904\n8192\n0\n";
        assert_eq!(&map[..text.len()], text);
        assert!(map[text.len()..].iter().all(|b| *b == 0));
        // Ending in data: no empty range.
        let map = sparse_map(&[0..10, 4096..8192], 8192);
        assert!(map.starts_with(b"2\n0\n10\n4096\n4096\n\0"));
    }

    #[test]
    fn xattrs_become_schily_records_with_raw_values() {
        let mut r = Vec::new();
        xattr_records(
            &mut r,
            &[
                (b"user.a".to_vec(), b"x\ny".to_vec()),
                (b"user.b=c".to_vec(), b"z".to_vec()),
            ],
        );
        assert_eq!(r, b"27 SCHILY.xattr.user.a=x\ny\n");
    }

    #[test]
    fn times_keep_their_nanoseconds() {
        assert_eq!(pax_time(Time { secs: 5, nanos: 0 }), "5");
        assert_eq!(
            pax_time(Time {
                secs: 5,
                nanos: 250_000_000
            }),
            "5.25"
        );
        assert_eq!(
            pax_time(Time {
                secs: -2,
                nanos: 500_000_000
            }),
            "-1.5"
        );
    }
}
