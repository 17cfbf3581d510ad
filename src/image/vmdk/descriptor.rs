//! The VMDK descriptor: the text that names a disk's extents, its content ID (CID) and its
//! parent. It is a file of its own (`# Disk DescriptorFile`) or embedded in a hosted sparse
//! extent at the header's descriptor offset.

use crate::error::{Error, Result};
use crate::image::common::bytes;
use crate::image::ImageFile;

/// The largest descriptor we read (QEMU's bound too).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// The most extent lines a descriptor may have.
pub const MAX_EXTENTS: usize = 16384;

/// The parentCID of an image without a parent.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// How an extent may be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    ReadWrite,
    /// Read-only.
    ReadOnly,
    /// Neither: reading it is an error.
    NoAccess,
}

/// The kind of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// Raw bytes in a file, from a sector offset (`FLAT`, and ESX's `VMFS`).
    Flat,
    /// A hosted sparse file (`SPARSE`, "KDMV") or an ESX sparse file (`VMFSSPARSE`, "COWD").
    Sparse,
    /// An ESXi space-efficient sparse file (`SESPARSE`).
    SeSparse,
    /// No file: reads as zero (`ZERO`).
    Zero,
}

/// One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Kind.
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor's directory unless absolute).
    pub file: Option<String>,
    /// Start of the extent in a flat file, in sectors.
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Content ID of this link of the chain.
    pub cid: Option<u32>,
    /// Content ID the parent had when this child was made.
    pub parent_cid: Option<u32>,
    /// `createType`, if given.
    pub create_type: Option<String>,
    /// `parentFileNameHint`, if given and not empty.
    pub parent_hint: Option<String>,
    /// The extents, in guest order.
    pub extents: Vec<ExtentLine>,
}

/// Whether `head` (the first bytes of a file) looks like a descriptor: after comments
/// and blank lines, the first line is `version=1`, `2` or `3` (as QEMU probes).
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    for line in head.split(|&b| b == b'\n') {
        let line = trim_ascii(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        return matches!(line, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Reads a descriptor of `len` bytes at `offset` of `file` (a whole descriptor file, or
/// the area embedded in a sparse extent) and parses it.
pub fn read(file: &ImageFile, offset: u64, len: u64) -> Result<Descriptor> {
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(Error::corrupt(format!(
            "descriptor of {len} bytes is larger than the {MAX_DESCRIPTOR_BYTES} allowed"
        ))
        .with_path(file.path()));
    }
    let buf = bytes::read_vec(file, offset, len, "descriptor")?;
    parse(&buf).map_err(|e| e.at(offset).with_path(file.path()))
}

/// Parses descriptor text; an embedded descriptor ends at its first NUL byte.
pub fn parse(raw: &[u8]) -> Result<Descriptor> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut desc = Descriptor::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if desc.extents.len() >= MAX_EXTENTS {
                return Err(Error::corrupt(format!(
                    "descriptor has more than {MAX_EXTENTS} extents"
                )));
            }
            let extent = parse_extent(line).map_err(|e| {
                Error::corrupt(format!("descriptor line {}: {e}: {line}", number + 1))
            })?;
            desc.extents.push(extent);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim() {
            "CID" => desc.cid = Some(parse_cid("CID", value)?),
            "parentCID" => desc.parent_cid = Some(parse_cid("parentCID", value)?),
            "createType" => desc.create_type = Some(value.to_string()),
            "parentFileNameHint" if !value.is_empty() => desc.parent_hint = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(desc)
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_cid(key: &str, value: &str) -> Result<u32> {
    u32::from_str_radix(value, 16).map_err(|_| {
        Error::corrupt(format!(
            "descriptor {key} \"{value}\" is not a 32-bit hex number"
        ))
    })
}

/// Parses `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`; the error says what is wrong.
fn parse_extent(line: &str) -> std::result::Result<ExtentLine, String> {
    let (access, rest) = split_word(line);
    let access = match access {
        "RW" => Access::ReadWrite,
        "RDONLY" => Access::ReadOnly,
        _ => Access::NoAccess,
    };
    let (sectors, rest) = split_word(rest);
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| format!("extent size \"{sectors}\" is not a sector count"))?;
    let (kind_word, rest) = split_word(rest);
    let kind = match kind_word {
        "FLAT" | "VMFS" => ExtentType::Flat,
        "SPARSE" | "VMFSSPARSE" => ExtentType::Sparse,
        "SESPARSE" => ExtentType::SeSparse,
        "ZERO" => ExtentType::Zero,
        other => return Err(format!("extent type \"{other}\" is not supported")),
    };
    let rest = rest.trim_start();
    let (file, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let close = quoted.find('"').ok_or("file name has no closing quote")?;
        (Some(quoted[..close].to_string()), &quoted[close + 1..])
    } else {
        (None, rest)
    };
    let (offset_word, trailing) = split_word(rest);
    if !trailing.trim().is_empty() {
        return Err("unexpected text after the extent".to_string());
    }
    let offset = if offset_word.is_empty() {
        0
    } else {
        offset_word
            .parse()
            .map_err(|_| format!("extent offset \"{offset_word}\" is not a sector count"))?
    };
    if kind != ExtentType::Zero && file.is_none() {
        return Err("extent has no file name".to_string());
    }
    if kind_word == "FLAT" && offset_word.is_empty() {
        return Err("FLAT extent has no offset".to_string());
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Rejects `createType`s whose extents we cannot serve (raw device mappings) and ones we
/// do not know.
pub fn check_create_type(create_type: &str) -> Result<()> {
    match create_type {
        "monolithicSparse"
        | "monolithicFlat"
        | "twoGbMaxExtentSparse"
        | "twoGbMaxExtentFlat"
        | "vmfs"
        | "vmfsSparse"
        | "vmfsThin"
        | "vmfsPreallocated"
        | "vmfsEagerZeroedThick"
        | "streamOptimized"
        | "seSparse"
        | "custom" => Ok(()),
        "fullDevice"
        | "partitionedDevice"
        | "vmfsRaw"
        | "vmfsRawDeviceMap"
        | "vmfsPassthroughRawDeviceMap" => Err(Error::unsupported(format!(
            "VMDK createType \"{create_type}\" maps a raw device, which is not supported"
        ))),
        other => Err(Error::unsupported(format!(
            "unknown VMDK createType \"{other}\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=eb93a620\nparentCID=ffffffff\n\
createType=\"monolithicFlat\"\n\n# Extent description\nRW 49152 FLAT \"img-flat.vmdk\" 0\n\
RDONLY 100 ZERO\nNOACCESS 8 SPARSE \"my disk-s002.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
ddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_qemu_descriptor() {
        assert!(looks_like_descriptor(QEMU_FLAT.as_bytes()));
        let d = parse(QEMU_FLAT.as_bytes()).unwrap();
        assert_eq!(d.cid, Some(0xeb93a620));
        assert_eq!(d.parent_cid, Some(NO_PARENT_CID));
        assert_eq!(d.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(d.parent_hint, None);
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("img-flat.vmdk"));
        assert_eq!(d.extents[0].sectors, 49152);
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].file.as_deref(), Some("my disk-s002.vmdk"));
        assert_eq!(d.extents[2].access, Access::NoAccess);
    }

    #[test]
    fn embedded_descriptor_stops_at_nul_and_reads_hint() {
        let mut raw =
            b"version=1\r\nCID=1\r\nparentCID=2\r\nparentFileNameHint=\"../b/base.vmdk\"\r\n"
                .to_vec();
        raw.extend_from_slice(&[0, b'R', b'W', b' ', b'x']);
        let d = parse(&raw).unwrap();
        assert_eq!((d.cid, d.parent_cid), (Some(1), Some(2)));
        assert_eq!(d.parent_hint.as_deref(), Some("../b/base.vmdk"));
        assert!(d.extents.is_empty());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            ("RW x FLAT \"a\" 0", "not a sector count"),
            ("RW 8 FLAT \"a\"", "no offset"),
            ("RW 8 SPARSE", "no file name"),
            ("RW 8 VMFSRDM \"a\"", "not supported"),
            ("RW 8 SPARSE \"a", "closing quote"),
            ("CID=xyz", "not a 32-bit hex"),
        ] {
            let err = parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn probe_and_create_types() {
        assert!(looks_like_descriptor(b"# c\n\n  \nversion=2\r\n"));
        assert!(!looks_like_descriptor(b"hello\nversion=1\n"));
        assert!(!looks_like_descriptor(b"\x00\x01\x02"));
        assert!(check_create_type("twoGbMaxExtentFlat").is_ok());
        assert!(check_create_type("vmfsRawDeviceMap").is_err());
        assert!(check_create_type("bogus").is_err());
    }
}
