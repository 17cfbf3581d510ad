//! The internal snapshot table: parsed with bounded counts and lengths, every offset
//! checked against the file, read entry by entry (never one allocation sized by the file).
//!
//! Layout (QEMU `docs/interop/qcow2.txt`, "Snapshots"): `nb_snapshots` entries from
//! `snapshots_offset`, each 8-byte aligned: a 40-byte fixed part, `extra_data_size` bytes
//! of extra data (large VM state size, disk size, icount), the id string and the name.

use super::header::{Header, MAX_L1_ENTRIES};
use crate::error::{Error, Result};
use crate::image::ImageFile;
use serde::Serialize;

/// Most snapshots an image may have (QEMU's `QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Most extra data bytes per entry (QEMU's `QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Most bytes the whole table may take (QEMU's `QCOW_MAX_SNAPSHOTS_SIZE`).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Length of an entry's fixed part.
const FIXED_LEN: usize = 40;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The snapshot's unique id (`qemu-img snapshot -l` column ID).
    pub id: String,
    /// Its name (column TAG).
    pub name: String,
    /// File offset of its L1 table (cluster aligned, inside the file).
    pub l1_table_offset: u64,
    /// Entries in its L1 table.
    pub l1_size: u32,
    /// When it was taken: seconds since the Unix epoch.
    pub date_sec: u32,
    /// Nanoseconds part of the date.
    pub date_nsec: u32,
    /// The guest clock when it was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state (0 for a disk-only snapshot).
    pub vm_state_size: u64,
    /// The virtual disk size at the time of the snapshot.
    pub disk_size: u64,
}

/// Big-endian field of `width` bytes at `at` in `buf` (callers pass in-bounds ranges).
fn be(buf: &[u8], at: usize, width: usize) -> u64 {
    buf.get(at..at + width)
        .unwrap_or(&[])
        .iter()
        .fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

/// A corrupt-snapshot-table error naming snapshot `index`, `field` and its file `offset`.
fn bad(index: u32, field: &str, offset: u64, what: String) -> Error {
    Error::corrupt(format!("qcow2 snapshot {index}: field {field} {what}")).at(offset)
}

/// The internal snapshots of the qcow2 image at `path`, as `qemu-img snapshot -l` lists
/// them (empty when it has none).
pub fn list(path: &std::path::Path) -> Result<Vec<Snapshot>> {
    let file = ImageFile::open(path, false, false)?;
    let header = Header::read(&file).map_err(|e| e.with_path(path))?;
    read_table(&file, &header)
}

/// Reads the snapshot table `header` describes from `file`. Errors name the file, the
/// snapshot's index, the field and its offset.
pub fn read_table(file: &ImageFile, header: &Header) -> Result<Vec<Snapshot>> {
    read_table_inner(file, header).map_err(|e| e.with_path(file.path()))
}

fn read_table_inner(file: &ImageFile, header: &Header) -> Result<Vec<Snapshot>> {
    let count = header.nb_snapshots;
    if count == 0 {
        return Ok(Vec::new());
    }
    let cluster_size = header.cluster_size();
    let file_len = file.len();
    let start = header.snapshots_offset;
    if count > MAX_SNAPSHOTS {
        return Err(Error::corrupt(format!(
            "qcow2 header field nb_snapshots is {count}, must be at most {MAX_SNAPSHOTS}"
        ))
        .at(60));
    }
    if start == 0 || start % cluster_size != 0 || start >= file_len {
        return Err(Error::corrupt(format!(
            "qcow2 header field snapshots_offset is {start:#x}, must be cluster aligned, \
             non-zero and inside the {file_len}-byte file"
        ))
        .at(64));
    }
    let mut snapshots = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = start;
    for index in 0..count {
        let entry_at = pos;
        let past_end = |what: &str| {
            bad(
                index,
                what,
                entry_at,
                format!("lies past the end of the {file_len}-byte file"),
            )
        };
        if pos + FIXED_LEN as u64 > file_len {
            return Err(past_end("table entry"));
        }
        let mut fixed = [0u8; FIXED_LEN];
        file.read_exact_at(&mut fixed, pos)?;
        let l1_table_offset = be(&fixed, 0, 8);
        let l1_size = be(&fixed, 8, 4) as u32;
        let id_len = be(&fixed, 12, 2) as usize;
        let name_len = be(&fixed, 14, 2) as usize;
        let extra_len = be(&fixed, 36, 4) as u32;
        if extra_len > MAX_EXTRA_DATA {
            return Err(bad(
                index,
                "extra_data_size",
                entry_at + 36,
                format!("is {extra_len}, must be at most {MAX_EXTRA_DATA}"),
            ));
        }
        let var_len = extra_len as usize + id_len + name_len;
        let entry_len = (FIXED_LEN + var_len).div_ceil(8) * 8;
        // The last entry's padding may lie past the end of the file (QEMU writes the
        // table unpadded).
        if pos + (FIXED_LEN + var_len) as u64 > file_len {
            return Err(past_end("table entry (with its id, name and extra data)"));
        }
        if pos + entry_len as u64 - start > MAX_TABLE_BYTES {
            return Err(bad(
                index,
                "table entry",
                entry_at,
                format!("ends more than {MAX_TABLE_BYTES} bytes into the snapshot table"),
            ));
        }
        let mut var = vec![0u8; var_len];
        file.read_exact_at(&mut var, pos + FIXED_LEN as u64)?;
        let (extra, strings) = var.split_at(extra_len as usize);
        let (id, name) = strings.split_at(id_len);
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_table_offset % cluster_size != 0
            || u64::from(l1_size) > MAX_L1_ENTRIES
            || (l1_size > 0
                && (l1_table_offset == 0
                    || l1_table_offset
                        .checked_add(l1_bytes)
                        .is_none_or(|end| end > file_len)))
        {
            return Err(bad(
                index,
                "l1_table_offset",
                entry_at,
                format!(
                    "is {l1_table_offset:#x} (with l1_size {l1_size}): the table must be \
                     cluster aligned, at most {MAX_L1_ENTRIES} entries and inside the \
                     {file_len}-byte file"
                ),
            ));
        }
        let vm_state_size = if extra.len() >= 8 {
            be(extra, 0, 8)
        } else {
            be(&fixed, 32, 4)
        };
        // Without the disk size in the extra data, QEMU takes the image's current size.
        let disk_size = if extra.len() >= 16 {
            be(extra, 8, 8)
        } else {
            header.size
        };
        if disk_size > i64::MAX as u64 {
            return Err(bad(
                index,
                "disk_size",
                entry_at + FIXED_LEN as u64 + 8,
                format!("is {disk_size}, must be below 2^63"),
            ));
        }
        snapshots.push(Snapshot {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_table_offset,
            l1_size,
            date_sec: be(&fixed, 16, 4) as u32,
            date_nsec: be(&fixed, 20, 4) as u32,
            vm_clock_nsec: be(&fixed, 24, 8),
            vm_state_size,
            disk_size,
        });
        pos += entry_len as u64;
    }
    Ok(snapshots)
}

/// The snapshot `wanted` names: by name first, then by id, as
/// `qemu-img convert -l snapshot.name=` / `-l ID` and QEMU's `bdrv_snapshot_find` do.
pub fn find<'a>(snapshots: &'a [Snapshot], wanted: &str) -> Option<&'a Snapshot> {
    snapshots
        .iter()
        .find(|s| s.name == wanted)
        .or_else(|| snapshots.iter().find(|s| s.id == wanted))
}

/// Points `header` at `snapshot`: its L1 table and disk size. The L1 table must cover
/// the snapshot's disk size.
pub fn apply(header: &mut Header, snapshot: &Snapshot) -> Result<()> {
    header.size = snapshot.disk_size;
    header.l1_size = snapshot.l1_size;
    header.l1_table_offset = snapshot.l1_table_offset;
    let needed = header.l1_entries_needed();
    if needed > u64::from(snapshot.l1_size) {
        return Err(Error::corrupt(format!(
            "qcow2 snapshot '{}' (id {}): its L1 table of {} entries cannot cover its \
             {}-byte disk ({needed} entries needed)",
            snapshot.name, snapshot.id, snapshot.l1_size, snapshot.disk_size
        )));
    }
    Ok(())
}

/// Formats `secs` since the Unix epoch (negative before it) as `YYYY-MM-DD HH:MM:SS`
/// (UTC); also the dates `imgblk ls -l` shows.
pub fn format_date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_date(1_718_454_896), "2024-06-15 12:34:56");
        assert_eq!(format_date(-1), "1969-12-31 23:59:59");
    }

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            name: name.into(),
            l1_table_offset: 0,
            l1_size: 0,
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: 0,
        }
    }

    #[test]
    fn find_by_name_then_id() {
        let table = [snap("1", "2"), snap("2", "base")];
        assert_eq!(find(&table, "2").unwrap().id, "1", "a name wins over an id");
        assert_eq!(find(&table, "base").unwrap().id, "2");
        assert_eq!(find(&table, "1").unwrap().name, "2");
        assert!(find(&table, "3").is_none());
    }
}
