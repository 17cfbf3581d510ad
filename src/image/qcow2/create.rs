//! Creating a qcow2 overlay: an empty version 3 image whose backing file is another image,
//! as `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY` makes it. `attach --overlay FILE`
//! uses it so that writes land in the new file and the base is never changed; `convert`
//! creates its output with it (with or without a backing file).
//!
//! Layout (64 KiB clusters): cluster 0 the header, its extensions and the backing file
//! name; cluster 1 the refcount table; cluster 2 its one refcount block (16-bit refcounts,
//! covering the first 2 GiB of the file; the write path adds blocks as the file grows);
//! then the L1 table, all zero. `convert -c` writes its images in one pass with the same
//! header (see `stream`). Every cluster used has refcount 1, so `qemu-img check`
//! finds the new file clean.

use super::header::{INCOMPAT_COMPRESSION, MAGIC, MAX_BACKING_NAME, MAX_L1_ENTRIES, V3_HEADER_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{Codec, Format};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// log2 of the overlay's cluster size (64 KiB, QEMU's default).
pub(super) const CLUSTER_BITS: u32 = 16;
/// The cluster size.
pub(super) const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Length of the header written: version 3 with the `compression_type` field, padded.
const HEADER_LEN: usize = 112;
/// Refcount width: 2^4 = 16 bits, QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
/// Header extension type of the backing file format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Creates the qcow2 file `path` (which must not exist) of `size` bytes over the backing
/// image `backing` (stored as given: pass an absolute path so that the overlay opens from
/// anywhere) in `backing_format`.
///
/// The overlay will hold the image's data, so it gets the backing file's read and write
/// permissions (an image readable only by its owner makes an overlay readable only by
/// its owner), further narrowed by the umask; owner-only if the backing file cannot be
/// examined.
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: Format,
    size: u64,
) -> Result<()> {
    create(path, size, Some((backing, backing_format)))
}

/// Creates the empty qcow2 file `path` (which must not exist) of `size` bytes, over
/// `backing` (its path, stored as given, and format) when given (`imgblk convert`). It
/// gets the backing file's read and write permissions (see [`create_overlay`]); without
/// one, owner-only.
pub fn create(path: &Path, size: u64, backing: Option<(&Path, Format)>) -> Result<()> {
    let (name, l1_size) = check(path, size, backing)?;
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    let clusters = 3 + l1_clusters;
    let image = layout(name, backing.map(|(_, f)| f), size, l1_size, clusters);
    let mut file = new_file(path, backing)?;
    file.write_all(&image)
        .and_then(|()| file.set_len(clusters * CLUSTER))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cannot write the qcow2 image", e).with_path(path))
}

/// Checks that a qcow2 `path` of `size` bytes over `backing` can be made: returns the
/// backing file name to store (empty: none) and the L1 table's entries.
pub(super) fn check<'a>(
    path: &Path,
    size: u64,
    backing: Option<(&'a Path, Format)>,
) -> Result<(&'a str, u64)> {
    let name = match backing {
        Some((file, _)) => file
            .to_str()
            .ok_or_else(|| Error::invalid("backing file name is not UTF-8").with_path(file))?,
        None => "",
    };
    if name.len() > MAX_BACKING_NAME as usize {
        return Err(Error::invalid(format!(
            "backing file name is {} bytes long, more than the {MAX_BACKING_NAME} qcow2 allows",
            name.len()
        ))
        .with_path(path));
    }
    let l2_entries = CLUSTER / 8;
    let l1_size = size.div_ceil(CLUSTER * l2_entries);
    if l1_size > MAX_L1_ENTRIES {
        return Err(Error::invalid(format!(
            "a {size}-byte disk needs {l1_size} L1 entries, more than qcow2 allows"
        ))
        .with_path(path));
    }
    Ok((name, l1_size))
}

/// Creates the file `path`, which must not exist, with `backing`'s permissions (see
/// [`create_overlay`]), owner-only without one.
pub(super) fn new_file(path: &Path, backing: Option<(&Path, Format)>) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(
            backing
                .and_then(|(file, _)| std::fs::metadata(file).ok())
                .map_or(0o600, |m| m.mode() & 0o666),
        )
        .open(path)
        .map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                ErrorKind::Busy
            } else {
                ErrorKind::Io
            };
            Error::new(kind, format!("cannot create the qcow2 image: {e}")).with_path(path)
        })
}

/// The bytes of the metadata clusters (the L1 table's zeroes are left to `set_len`); a
/// backing file `name` (empty: none) in `format`.
fn layout(name: &str, format: Option<Format>, size: u64, l1_size: u64, clusters: u64) -> Vec<u8> {
    let where_ = Placement {
        l1_size,
        l1_offset: 3 * CLUSTER,
        refcount_table_offset: CLUSTER,
        refcount_table_clusters: 1,
    };
    let mut out = header(name, format, size, &where_, Codec::Deflate);
    out.resize(3 * CLUSTER as usize, 0);
    // Refcount table: its one block is cluster 2. Block: 16-bit count 1 per used cluster.
    out[CLUSTER as usize..CLUSTER as usize + 8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    for cluster in 0..clusters as usize {
        out[2 * CLUSTER as usize + 2 * cluster + 1] = 1;
    }
    out
}

/// Where a new image's tables are.
pub(super) struct Placement {
    /// Entries of the L1 table.
    pub l1_size: u64,
    /// File offset of the L1 table.
    pub l1_offset: u64,
    /// File offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u64,
}

/// Cluster 0 of a new image of `size` bytes: the version 3 header (112 bytes, with the
/// `compression_type` field, as QEMU writes it), its extensions and the backing file
/// `name` (empty: none) in `format`. A `codec` other than raw deflate is recorded in the
/// header with incompatible feature bit 3.
pub(super) fn header(
    name: &str,
    format: Option<Format>,
    size: u64,
    at: &Placement,
    codec: Codec,
) -> Vec<u8> {
    let mut out = vec![0u8; CLUSTER as usize];
    let format = format.map(|f| f.to_string()).unwrap_or_default();
    // Extensions right after the header: backing format (padded to 8), then the end.
    let format_ext = match format.len() {
        0 => 0,
        n => 8 + n.next_multiple_of(8),
    };
    let name_offset = HEADER_LEN + format_ext + 8;
    let put32 =
        |out: &mut [u8], at: usize, v: u32| out[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 =
        |out: &mut [u8], at: usize, v: u64| out[at..at + 8].copy_from_slice(&v.to_be_bytes());
    out[..4].copy_from_slice(&MAGIC);
    put32(&mut out, 4, 3); // version
    if !name.is_empty() {
        put64(&mut out, 8, name_offset as u64); // backing_file_offset
        put32(&mut out, 16, name.len() as u32); // backing_file_size
    }
    put32(&mut out, 20, CLUSTER_BITS);
    put64(&mut out, 24, size);
    put32(&mut out, 32, 0); // crypt_method
    put32(&mut out, 36, at.l1_size as u32);
    put64(&mut out, 40, at.l1_offset);
    put64(&mut out, 48, at.refcount_table_offset);
    put32(&mut out, 56, at.refcount_table_clusters as u32);
    // nb_snapshots, snapshots_offset and the compatible/autoclear features stay zero.
    if codec == Codec::Zstd {
        put64(&mut out, 72, 1 << INCOMPAT_COMPRESSION); // incompatible_features
        out[V3_HEADER_LEN] = 1; // compression_type
    }
    put32(&mut out, 96, REFCOUNT_ORDER);
    put32(&mut out, 100, HEADER_LEN as u32); // header_length
    if format_ext > 0 {
        put32(&mut out, HEADER_LEN, EXT_BACKING_FORMAT);
        put32(&mut out, HEADER_LEN + 4, format.len() as u32);
        out[HEADER_LEN + 8..HEADER_LEN + 8 + format.len()].copy_from_slice(format.as_bytes());
    }
    // The end-of-extensions marker is the 8 zero bytes already there.
    out[name_offset..name_offset + name.len()].copy_from_slice(name.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::qcow2::header::Header;

    #[test]
    fn header_round_trips_through_the_parser() {
        let bytes = layout("/images/base.vmdk", Some(Format::Vmdk), 10 << 30, 20, 4);
        let header = Header::parse(&bytes, 4 * CLUSTER).expect("parse");
        assert_eq!(header.version, 3);
        assert_eq!(header.size, 10 << 30);
        assert_eq!(header.l1_size, 20);
        assert_eq!(header.backing_file.as_deref(), Some("/images/base.vmdk"));
        assert_eq!(header.backing_format, Some(Format::Vmdk));
        assert_eq!(header.refcount_order, 4);
        let alone = Header::parse(&layout("", None, 1 << 20, 1, 4), 4 * CLUSTER).expect("parse");
        assert_eq!((alone.backing_file, alone.backing_format), (None, None));
    }

    #[test]
    fn refuses_an_existing_file_and_huge_disks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.qcow2");
        std::fs::write(&path, b"precious").unwrap();
        let err = create_overlay(&path, Path::new("/b.raw"), Format::Raw, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let other = dir.path().join("huge.qcow2");
        assert!(create_overlay(&other, Path::new("/b.raw"), Format::Raw, u64::MAX).is_err());
        assert!(!other.exists());
    }
}
