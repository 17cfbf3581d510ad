//! The qcow2 header (versions 2 and 3) and its extensions, parsed and checked against
//! hostile input before anything is allocated from it.
//!
//! Layout reference: QEMU's `docs/interop/qcow2.txt`. Every error names the field and its
//! byte offset in the file; the caller adds the file's path.

use crate::error::{Error, Result};
use crate::image::{Codec, Format, ImageFile};

/// The four magic bytes every qcow (v1) and qcow2 file starts with.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header, and of the fixed part every version shares.
pub const V2_HEADER_LEN: usize = 72;
/// Minimum length of a version 3 header.
pub const V3_HEADER_LEN: usize = 104;
/// Smallest cluster size exponent the format allows (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size exponent accepted (2 MiB clusters, QEMU's limit too).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Smallest cluster size exponent with extended L2 entries (16 KiB, as QEMU).
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
/// Most L1 entries accepted: a 32 MiB table, QEMU's limit.
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// Longest backing file name the format allows.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bit: the image was not closed cleanly (refcounts may be stale).
pub const INCOMPAT_DIRTY: u32 = 0;
/// Incompatible feature bit: QEMU found the image corrupt.
pub const INCOMPAT_CORRUPT: u32 = 1;
/// Incompatible feature bit: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u32 = 2;
/// Auto-clear feature bit: the external data file is a raw image of the guest.
pub const AUTOCLEAR_RAW_EXTERNAL: u32 = 1;
/// Auto-clear feature bit: the bitmaps extension is consistent with the image (a program
/// unaware of bitmaps that wrote the image cleared it).
pub const AUTOCLEAR_BITMAPS: u32 = 0;
/// Incompatible feature bit: the `compression_type` field is not zlib.
pub const INCOMPAT_COMPRESSION: u32 = 3;
/// Incompatible feature bit: extended L2 entries (subclusters).
pub const INCOMPAT_EXTENDED_L2: u32 = 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_BITMAPS: u32 = 0x2385_2875;
const FEATURE_NAME_ENTRY: usize = 48;

/// Which feature bitmap a feature-name-table entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// `incompatible_features`.
    Incompatible,
    /// `compatible_features`.
    Compatible,
    /// `autoclear_features`.
    Autoclear,
    /// A kind this version does not know (the raw type byte).
    Other(u8),
}

/// One entry of the feature name table header extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// The bitmap the bit belongs to.
    pub kind: FeatureKind,
    /// The bit number, 0..=63 in a well-formed table.
    pub bit: u8,
    /// The human-readable name.
    pub name: String,
}

/// A parsed and validated qcow2 header with its extensions.
#[derive(Debug, Clone)]
pub struct Header {
    /// Format version: 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// File offset of the active L1 table (cluster aligned).
    pub l1_table_offset: u64,
    /// File offset of the refcount table (cluster aligned).
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// File offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 for version 2).
    pub compatible_features: u64,
    /// Auto-clear feature bits (0 for version 2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for version 2).
    pub refcount_order: u32,
    /// Length of the header structure (72 for version 2).
    pub header_length: u32,
    /// Codec of compressed clusters.
    pub codec: Codec,
    /// The backing file name as stored, if any.
    pub backing_file: Option<String>,
    /// The backing file format from its header extension, if present.
    pub backing_format: Option<Format>,
    /// The external data file name from its header extension, if present.
    pub data_file: Option<String>,
    /// The feature name table, empty if absent.
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps header extension as stored, with its offset in the file: parsed only
    /// by [`super::bitmap`] when asked for, so that a damaged one never hinders reading.
    pub bitmaps_extension: Option<(u64, Vec<u8>)>,
}

/// Reads a big-endian `u32` at `off`; bytes past the end of `buf` read as zero, which is
/// what the format says an absent optional field means. Callers check lengths first.
fn be32(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = buf.get(off + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(b)
}

/// Reads a big-endian `u64` at `off`, like [`be32`].
fn be64(buf: &[u8], off: usize) -> u64 {
    (u64::from(be32(buf, off)) << 32) | u64::from(be32(buf, off + 4))
}

/// A corrupt-header error naming `field`, its offending `value` and the `rule` it breaks.
fn bad_field(field: &str, offset: u64, value: impl std::fmt::Display, rule: &str) -> Error {
    Error::corrupt(format!("qcow2 header field {field} is {value}, {rule}")).at(offset)
}

/// Checks magic, version and cluster size in the first bytes of a file; returns
/// `cluster_bits`. Shared by [`Header::read`] (to learn how much to read) and
/// [`Header::parse`].
fn check_fixed(buf: &[u8]) -> Result<u32> {
    let magic = buf.get(..4).unwrap_or(&[]);
    if magic != MAGIC {
        return Err(Error::corrupt(format!(
            "qcow2 header field magic is {magic:02x?}, must be {MAGIC:02x?} (\"QFI\\xfb\")"
        ))
        .at(0));
    }
    let version = be32(buf, 4);
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::unsupported(
                "qcow version 1 (the original QCOW format, not qcow2) is not supported",
            ))
        }
        v => {
            return Err(Error::unsupported(format!(
                "qcow2 version {v} is not supported (only 2 and 3)"
            )))
        }
    }
    let cluster_bits = be32(buf, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(bad_field(
            "cluster_bits",
            20,
            cluster_bits,
            &format!("must be {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"),
        ));
    }
    Ok(cluster_bits)
}

/// Rounds `n` up to a multiple of 8.
fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Header {
    /// Reads and validates the header of `file` (whose first cluster holds it and its
    /// extensions). Errors name the file.
    pub fn read(file: &ImageFile) -> Result<Header> {
        let path = file.path();
        if file.len() < V2_HEADER_LEN as u64 {
            return Err(Error::corrupt(format!(
                "file is {} bytes, too short for a qcow2 header ({V2_HEADER_LEN} bytes)",
                file.len()
            ))
            .with_path(path));
        }
        let mut fixed = [0u8; V2_HEADER_LEN];
        file.read_exact_at(&mut fixed, 0)?;
        let cluster_bits = check_fixed(&fixed).map_err(|e| e.with_path(path))?;
        // The header, its extensions and the backing file name all live in cluster 0.
        let first = (1u64 << cluster_bits).min(file.len());
        let mut buf = vec![0u8; first as usize];
        file.read_exact_at(&mut buf, 0)?;
        Header::parse(&buf, file.len()).map_err(|e| e.with_path(path))
    }

    /// Parses `first_cluster` (the file's first cluster, or all of a shorter file) of a file
    /// `file_len` bytes long. Validates every field the read path relies on.
    pub fn parse(first_cluster: &[u8], file_len: u64) -> Result<Header> {
        let buf = first_cluster;
        let cluster_bits = check_fixed(buf)?;
        let cluster_size = 1u64 << cluster_bits;
        let version = be32(buf, 4);
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            codec: Codec::Deflate,
            backing_file: None,
            backing_format: None,
            data_file: None,
            feature_names: Vec::new(),
            bitmaps_extension: None,
        };
        if version >= 3 {
            h.header_length = be32(buf, 100);
            let len = h.header_length as usize;
            if len < V3_HEADER_LEN || len % 8 != 0 || len > buf.len() {
                return Err(bad_field(
                    "header_length",
                    100,
                    len,
                    &format!(
                        "must be a multiple of 8, at least {V3_HEADER_LEN} and within the first {} bytes",
                        buf.len()
                    ),
                ));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
        }
        h.check_fields(buf, file_len, cluster_size)?;
        let ext_end = match be64(buf, 8) {
            0 => buf.len(),
            off => off as usize, // checked in check_backing_name
        };
        h.parse_extensions(buf, ext_end)?;
        h.check_incompatible_features(buf)?;
        Ok(h)
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the number of entries in one L2 table (8-byte entries, 16 when extended).
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - 3 - u32::from(self.extended_l2())
    }

    /// Whether L2 entries are extended (128 bits, with subcluster bitmaps).
    pub fn extended_l2(&self) -> bool {
        self.has_incompatible(INCOMPAT_EXTENDED_L2)
    }

    /// How many L1 entries cover the virtual size.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = 1u64 << (self.cluster_bits + self.l2_bits());
        self.size / per_l1 + u64::from(self.size % per_l1 != 0)
    }

    /// Whether incompatible feature `bit` is set.
    pub fn has_incompatible(&self, bit: u32) -> bool {
        self.incompatible_features & (1u64 << bit) != 0
    }

    /// Checks the fixed fields and the backing file name against each other and the file.
    fn check_fields(&mut self, buf: &[u8], file_len: u64, cluster_size: u64) -> Result<()> {
        let crypt = be32(buf, 32);
        if crypt != 0 {
            return Err(Error::unsupported(format!(
                "encrypted qcow2 (crypt_method {crypt}) is not supported"
            )));
        }
        if self.refcount_order > 6 {
            return Err(bad_field(
                "refcount_order",
                96,
                self.refcount_order,
                "must be 0..=6",
            ));
        }
        if self.size > i64::MAX as u64 {
            return Err(bad_field("size", 24, self.size, "must be below 2^63"));
        }
        let l1_size = u64::from(self.l1_size);
        if l1_size > MAX_L1_ENTRIES {
            return Err(bad_field(
                "l1_size",
                36,
                l1_size,
                &format!("must be at most {MAX_L1_ENTRIES}"),
            ));
        }
        let needed = self.l1_entries_needed();
        if l1_size < needed {
            return Err(bad_field(
                "l1_size",
                36,
                l1_size,
                &format!("a {}-byte image needs at least {needed} entries", self.size),
            ));
        }
        let l1 = self.l1_table_offset;
        if l1 % cluster_size != 0 {
            return Err(bad_field(
                "l1_table_offset",
                40,
                l1,
                "must be cluster aligned",
            ));
        }
        if l1_size > 0 && (l1 == 0 || l1.checked_add(l1_size * 8).is_none_or(|end| end > file_len))
        {
            return Err(bad_field(
                "l1_table_offset",
                40,
                format!("{l1:#x} (with l1_size {l1_size})"),
                &format!("the table must lie after the header and inside the {file_len}-byte file"),
            ));
        }
        if self.refcount_table_offset % cluster_size != 0 {
            return Err(bad_field(
                "refcount_table_offset",
                48,
                self.refcount_table_offset,
                "must be cluster aligned",
            ));
        }
        self.check_backing_name(buf)
    }

    /// Reads the backing file name, which must lie after the header inside cluster 0.
    fn check_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        let offset = be64(buf, 8);
        if offset == 0 {
            return Ok(());
        }
        let size = be32(buf, 16);
        if size > MAX_BACKING_NAME {
            return Err(bad_field(
                "backing_file_size",
                16,
                size,
                &format!("must be at most {MAX_BACKING_NAME}"),
            ));
        }
        let start = offset as usize;
        let name = usize::try_from(offset)
            .ok()
            .filter(|&o| o >= self.header_length as usize)
            .and_then(|o| buf.get(o..o.checked_add(size as usize)?))
            .ok_or_else(|| {
                bad_field(
                    "backing_file_offset",
                    8,
                    format!("{offset:#x} (name of {size} bytes)"),
                    &format!(
                        "the name must lie after the header, inside the first {} bytes",
                        buf.len()
                    ),
                )
            })?;
        let name = std::str::from_utf8(name).map_err(|_| {
            Error::corrupt("qcow2 backing file name is not valid UTF-8").at(start as u64)
        })?;
        if !name.is_empty() {
            self.backing_file = Some(name.to_owned());
        }
        Ok(())
    }

    /// Walks the header extensions between the header and `end`.
    fn parse_extensions(&mut self, buf: &[u8], end: usize) -> Result<()> {
        let end = end.min(buf.len());
        let mut pos = self.header_length as usize;
        while pos + 8 <= end {
            let kind = be32(buf, pos);
            let len = be32(buf, pos + 4) as usize;
            if kind == EXT_END {
                return Ok(());
            }
            let data = buf.get(pos + 8..pos + 8 + len).filter(|_| pos + 8 + len <= end).ok_or_else(|| {
                Error::corrupt(format!(
                    "qcow2 header extension {kind:#010x} of {len} bytes overruns the header area ({end} bytes)"
                ))
                .at(pos as u64)
            })?;
            let at = pos as u64 + 8;
            match kind {
                EXT_BACKING_FORMAT => self.backing_format = Some(parse_format(data, at)?),
                EXT_DATA_FILE => {
                    self.data_file = Some(ext_string(data, "external data file name", at)?)
                }
                EXT_FEATURE_NAMES => self.feature_names = parse_feature_names(data),
                EXT_BITMAPS => self.bitmaps_extension = Some((at, data.to_vec())),
                _ => {} // encryption pointer, unknown: ignorable for reading
            }
            pos += 8 + pad8(len);
        }
        Ok(())
    }

    /// Refuses images whose incompatible features the read path cannot honour.
    fn check_incompatible_features(&mut self, buf: &[u8]) -> Result<()> {
        let compression_type = if self.header_length as usize > V3_HEADER_LEN {
            buf.get(V3_HEADER_LEN).copied().unwrap_or(0)
        } else {
            0
        };
        for bit in 0..64 {
            if !self.has_incompatible(bit) {
                continue;
            }
            match bit {
                INCOMPAT_DIRTY => {} // refcounts may be stale: harmless when only reading
                INCOMPAT_CORRUPT => {
                    return Err(Error::corrupt(
                        "qcow2 image is marked corrupt (incompatible feature bit 1); \
                         check it with `qemu-img check`",
                    ))
                }
                INCOMPAT_DATA_FILE if self.data_file.is_none() => {
                    return Err(Error::corrupt(
                        "qcow2 image keeps its data in an external data file (incompatible \
                         feature bit 2) but has no header extension naming it",
                    ))
                }
                INCOMPAT_DATA_FILE => {}
                INCOMPAT_COMPRESSION => {}
                INCOMPAT_EXTENDED_L2 if self.cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS => {
                    return Err(bad_field(
                        "cluster_bits",
                        20,
                        self.cluster_bits,
                        &format!(
                            "must be at least {MIN_EXTENDED_L2_CLUSTER_BITS} with extended L2 \
                             entries (32 subclusters of at least 512 bytes)"
                        ),
                    ))
                }
                INCOMPAT_EXTENDED_L2 => {}
                _ => {
                    let name = self
                        .feature_names
                        .iter()
                        .find(|f| f.kind == FeatureKind::Incompatible && u32::from(f.bit) == bit)
                        .map_or_else(
                            || format!("bit {bit}"),
                            |f| format!("'{}' (bit {bit})", f.name),
                        );
                    return Err(Error::unsupported(format!(
                        "qcow2 image uses unknown incompatible feature {name}"
                    )));
                }
            }
        }
        let flagged = self.has_incompatible(INCOMPAT_COMPRESSION);
        self.codec = match (compression_type, flagged) {
            (0, false) => Codec::Deflate,
            (1, true) => Codec::Zstd,
            (0, true) => {
                return Err(bad_field(
                    "compression_type",
                    V3_HEADER_LEN as u64,
                    0,
                    "must be non-zero when incompatible feature bit 3 is set",
                ))
            }
            (t, false) => {
                return Err(bad_field(
                    "compression_type",
                    V3_HEADER_LEN as u64,
                    t,
                    "must be 0 unless incompatible feature bit 3 is set",
                ))
            }
            (t, true) => {
                return Err(Error::unsupported(format!(
                    "qcow2 compression type {t} is not supported"
                )))
            }
        };
        Ok(())
    }
}

/// Decodes a string header extension.
fn ext_string(data: &[u8], what: &str, at: u64) -> Result<String> {
    std::str::from_utf8(data)
        .map(str::to_owned)
        .map_err(|_| Error::corrupt(format!("qcow2 {what} is not valid UTF-8")).at(at))
}

/// Maps the backing format extension to a [`Format`] this build can open.
fn parse_format(data: &[u8], at: u64) -> Result<Format> {
    let name = ext_string(data, "backing file format", at)?;
    name.parse::<Format>().map_err(|_| {
        Error::unsupported(format!("backing file format '{name}' is not supported")).at(at)
    })
}

/// Decodes the feature name table; a trailing partial entry is ignored.
fn parse_feature_names(data: &[u8]) -> Vec<FeatureName> {
    data.chunks_exact(FEATURE_NAME_ENTRY)
        .map(|entry| {
            let kind = match entry.first().copied().unwrap_or(0) {
                0 => FeatureKind::Incompatible,
                1 => FeatureKind::Compatible,
                2 => FeatureKind::Autoclear,
                k => FeatureKind::Other(k),
            };
            let raw = entry.get(2..).unwrap_or(&[]);
            let text = raw.split(|&b| b == 0).next().unwrap_or(&[]);
            FeatureName {
                kind,
                bit: entry.get(1).copied().unwrap_or(0),
                name: String::from_utf8_lossy(text).into_owned(),
            }
        })
        .collect()
}
