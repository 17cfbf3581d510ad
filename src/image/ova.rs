//! OVA (Open Virtualization Archive): a tar archive whose first member is the OVF
//! descriptor (`*.ovf`), followed by the disks (streamOptimized VMDKs) and perhaps a
//! manifest and certificate. A tar member's bytes are contiguous, so a disk is served
//! straight from the archive through an [`ImageFile::window`], without extracting it.
//!
//! The disks are the `*.vmdk` members in archive order, which the OVF specification
//! requires to be the order of the descriptor's `References/File` list; `--disk N` picks
//! the Nth (1 = the first, the default).

use super::{DiskImage, ImageFile, OpenOptions};
use crate::error::{Error, ErrorKind, Result};
use std::path::Path;

/// Size of a tar header and the unit member data is padded to.
const BLOCK: u64 = 512;
/// The most members read, so that a hostile archive cannot make us walk forever.
const MAX_MEMBERS: usize = 10_000;
/// The longest long name (GNU `L` member, pax `path`) accepted.
const MAX_NAME: u64 = 64 << 10;

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its name in the archive.
    pub name: String,
    /// Where its bytes start in the archive file.
    pub offset: u64,
    /// How many bytes it holds.
    pub size: u64,
}

/// Whether `head` (the file's first 512 bytes) is a tar header of a member named
/// `*.ovf`: an OVA, whose descriptor comes first.
pub fn is_ova(head: &[u8]) -> bool {
    head.len() >= BLOCK as usize
        && head.get(257..262) == Some(b"ustar")
        && name_field(&head[..100])
            .to_ascii_lowercase()
            .ends_with(".ovf")
}

/// The disks of the file at `path` if it is an OVA archive (else none).
pub fn list(path: &std::path::Path) -> Result<Vec<Member>> {
    let file = ImageFile::open(path, false, false)?;
    match holds_ova(&file) {
        true => disks(&file),
        false => Ok(Vec::new()),
    }
}

/// Whether `file` starts as an OVA does ([`is_ova`]).
fn holds_ova(file: &ImageFile) -> bool {
    let mut head = [0u8; BLOCK as usize];
    file.len() >= BLOCK && file.read_exact_at(&mut head, 0).is_ok() && is_ova(&head)
}

/// The disks (`*.vmdk` members) of the OVA `file`, in archive order.
pub fn disks(file: &ImageFile) -> Result<Vec<Member>> {
    let disks: Vec<Member> = members(file)?
        .into_iter()
        .filter(|m| m.name.to_ascii_lowercase().ends_with(".vmdk"))
        .collect();
    if disks.is_empty() {
        return Err(Error::unsupported("OVA archive holds no .vmdk disk").with_path(file.path()));
    }
    Ok(disks)
}

/// `file` itself, or, if it is an OVA opened at the top of a chain (`depth` 0), its disk
/// `options.disk` (1-based; the first if `None`) as a file of its own. Refused: writing
/// to an OVA, an OVA as a backing file (QEMU would read it as a raw tar file), and
/// `--disk` for a file that is no OVA.
pub fn unpack(file: ImageFile, options: &OpenOptions, depth: u32) -> Result<ImageFile> {
    let number = if depth == 0 { options.disk } else { None };
    if !holds_ova(&file) {
        return match number {
            Some(n) => Err(Error::invalid(format!(
                "--disk {n} picks a disk of an OVA archive, and this is none"
            ))
            .with_path(file.path())),
            None => Ok(file),
        };
    }
    if depth > 0 {
        return Err(Error::unsupported(
            "an OVA archive cannot be a backing file (its disks are served from it only as \
             the image given)",
        )
        .with_path(file.path()));
    }
    if options.writable {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            "the disks of an OVA archive are served read-only",
        )
        .with_path(file.path()));
    }
    open_disk(file, number)
}

/// Refuses a disk of an OVA that names other files (a VMDK descriptor's extents, a
/// parent): they would be looked for beside the archive, not in it.
pub fn refuse_outside_files(image: &dyn DiskImage, ova: &Path) -> Result<()> {
    let chain = image.chain();
    let named = chain
        .iter()
        .flat_map(|layer| layer.extents.iter().map(|e| e.path.clone()))
        .chain(chain.iter().skip(1).map(|layer| layer.path.clone()))
        .next();
    match named {
        Some(other) => Err(Error::unsupported(format!(
            "the OVA's disk names another file, {}: only self-contained disks (sparse or \
             streamOptimized VMDKs) are read from inside an archive",
            other.display()
        ))
        .with_path(ova)),
        None => Ok(()),
    }
}

/// Disk `number` (1-based) of the OVA `file`, as a file of its own.
fn open_disk(file: ImageFile, number: Option<u32>) -> Result<ImageFile> {
    let disks = disks(&file)?;
    let wanted = number.unwrap_or(1);
    let Some(disk) = usize::try_from(wanted)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| disks.get(i))
    else {
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        return Err(Error::invalid(format!(
            "--disk {wanted}: the OVA holds {} disk(s), numbered from 1: {}",
            disks.len(),
            names.join(", ")
        ))
        .with_path(file.path()));
    };
    file.window(disk.offset, disk.size)
}

/// The regular-file members of the tar archive `file`, each checked to lie inside it.
pub fn members(file: &ImageFile) -> Result<Vec<Member>> {
    let corrupt = |at: u64, what: String| Error::corrupt(what).at(at).with_path(file.path());
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    for _ in 0..MAX_MEMBERS {
        if at + BLOCK > file.len() {
            return Err(corrupt(
                at,
                "tar archive ends inside a member header".into(),
            ));
        }
        let mut header = [0u8; BLOCK as usize];
        file.read_exact_at(&mut header, at)?;
        if header.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        if !checksum_ok(&header) {
            return Err(corrupt(at, "tar member header checksum is wrong".into()));
        }
        let size = size_field(&header[124..136])
            .ok_or_else(|| corrupt(at, "tar member size field is not a number".into()))?;
        let data = at + BLOCK;
        let end = data
            .checked_add(size)
            .filter(|&end| end <= file.len())
            .ok_or_else(|| {
                corrupt(
                    at,
                    format!("tar member of {size} bytes runs past the end of the archive"),
                )
            })?;
        match header[156] {
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| full_name(&header));
                out.push(Member {
                    name,
                    offset: data,
                    size,
                });
            }
            kind @ (b'L' | b'x') => {
                if size > MAX_NAME {
                    return Err(corrupt(at, format!("tar long-name member of {size} bytes")));
                }
                let mut text = vec![0u8; size as usize];
                file.read_exact_at(&mut text, data)?;
                long_name = match kind {
                    b'L' => Some(name_field(&text)),
                    _ => pax_path(&text).or(long_name),
                };
            }
            _ => long_name = None,
        }
        at = end.div_ceil(BLOCK) * BLOCK;
    }
    Err(corrupt(
        at,
        format!("tar archive has more than {MAX_MEMBERS} members"),
    ))
}

/// A NUL-terminated name field.
fn name_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The member's name: the ustar prefix, if any, then the name field.
fn full_name(header: &[u8]) -> String {
    let name = name_field(&header[..100]);
    let prefix = name_field(&header[345..500]);
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// A size field: octal digits (space or NUL terminated), or base-256 when the first
/// byte's high bit is set.
fn size_field(bytes: &[u8]) -> Option<u64> {
    if bytes[0] & 0x80 != 0 {
        let mut value = u64::from(bytes[0] & 0x7f);
        for &b in &bytes[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let digits: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// Whether the header's checksum (the sum of its bytes, the checksum field counted as
/// spaces) matches the one it records.
fn checksum_ok(header: &[u8; BLOCK as usize]) -> bool {
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    size_field(&header[148..156]) == Some(sum)
}

/// The `path` record of a pax extended header ("LEN path=NAME\n" records).
fn pax_path(text: &[u8]) -> Option<String> {
    String::from_utf8_lossy(text).lines().find_map(|line| {
        let (_, record) = line.split_once(' ')?;
        record.strip_prefix("path=").map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_fields() {
        assert_eq!(size_field(b"00000001000\0"), Some(512));
        assert_eq!(size_field(b"        \0\0\0\0"), Some(0));
        assert_eq!(
            size_field(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(size_field(b"0000009\0\0\0\0\0"), None);
        assert_eq!(
            pax_path(b"30 path=a/long/name.vmdk\n"),
            Some("a/long/name.vmdk".into())
        );
    }

    /// A window reads its member's bytes only: offsets from the member's start, nothing
    /// past its end.
    #[test]
    fn windows_stay_inside_their_member() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), [1u8, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let open = || ImageFile::open(tmp.path(), false, false).unwrap();
        let file = open().window(2, 4).unwrap();
        assert_eq!((file.len(), file.host_offset(1)), (4, 3));
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [3, 4, 5, 6]);
        assert!(file.read_exact_at(&mut buf, 1).is_err());
        file.read_zero_padded(&mut buf, 2).unwrap();
        assert_eq!(buf, [5, 6, 0, 0]);
        assert!(open().window(6, 4).is_err());
    }

    /// A ustar header for `name` of `size` bytes, checksum as given or computed.
    fn header(name: &str, size: u64, checksum: Option<u64>) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum = checksum.unwrap_or_else(|| h.iter().map(|&b| u64::from(b)).sum());
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn disks_of(bytes: &[u8]) -> Result<Vec<Member>> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        disks(&ImageFile::open(tmp.path(), false, false).unwrap())
    }

    #[test]
    fn hostile_archives_are_errors() {
        let mut good = header("vm.ovf", 3, None);
        good.extend([b'x'; 512]);
        good.extend(header("d.vmdk", 600, None));
        good.extend([0u8; 1024]);
        good.extend([0u8; 1024]);
        assert!(is_ova(&good));
        let found = disks_of(&good).unwrap();
        assert_eq!(found[0].name, "d.vmdk");
        assert_eq!((found[0].offset, found[0].size), (1536, 600));
        let cases: [(Vec<u8>, &str); 4] = [
            (
                [header("vm.ovf", 1 << 32, None), vec![0; 1024]].concat(),
                "past the end",
            ),
            (
                [header("vm.ovf", 3, Some(7)), vec![0; 1024]].concat(),
                "checksum",
            ),
            (
                [header("vm.ovf", 3, None), vec![0; 1024]].concat(),
                "no .vmdk",
            ),
            (header("vm.ovf", 0, None), "ends inside a member header"),
        ];
        for (bytes, want) in cases {
            let msg = disks_of(&bytes).unwrap_err().to_string();
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }
}
