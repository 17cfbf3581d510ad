//! The metadata journal: what a writable qcow2 changed since its last flush, kept where
//! a daemon's death cannot take it, so that the daemon that takes the device over
//! ([`super::Qcow2Image::open`] with [`OpenOptions::journal_dir`]) finds every write
//! that was completed to the kernel.
//!
//! # Why
//!
//! The write path keeps refcount, L2 and L1 changes in memory until a flush writes them
//! in a safe order ([`super::write`]). A power loss may lose them: the kernel was only
//! promised what was flushed. A *daemon's* death is different: the host's page cache
//! survives it, and so does the file system on the device, which goes on believing
//! every completed write. The new daemon must serve those writes.
//!
//! # How
//!
//! Before a request that changed metadata completes, its changes are appended here as
//! records (one `pwrite` per request), in the order they were made: clusters allocated,
//! L1 and L2 entries set, clusters to free after the next flush. The journal lives in
//! `/run/imgblk` (tmpfs): it survives the daemon, never a reboot, which is exactly the
//! life of the promise it keeps. The data clusters themselves were written to the image
//! before the request completed, so they are in the page cache too.
//!
//! A writable open that finds a journal for its file (same device and inode, same boot)
//! replays it into memory, as if the dead daemon's requests had just been made here, and
//! flushes: from then on the image on disk holds everything, in the usual safe order. A
//! completed flush empties the journal. Replay is idempotent, so a daemon that died
//! in the middle of a flush, with part of the journal already on disk, is covered too.
//!
//! A journal of another boot is stale (the page cache it relied on is gone) and is
//! removed; so is one whose records no longer fit the image (someone else changed it
//! in between), with a warning, rather than replayed over someone else's clusters.

use crate::error::{Error, Result};
use crate::image::file::{ImageFile, Tap};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The first bytes of a journal file.
const MAGIC: &[u8; 8] = b"IMGBLKJ1";
/// Header size: magic, device, inode, boot id (36 ASCII bytes, zero-padded).
const HEADER_LEN: u64 = 64;
/// One record: kind (u32), CRC32C of the rest (u32), then three u64 fields.
const RECORD_LEN: usize = 32;

/// One metadata change of the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The cluster at this host offset was allocated (refcount 0 → 1).
    Alloc(u64),
    /// L1 entry `index` now names a new, empty L2 table: `value` is the entry.
    L1 { index: u64, value: u64 },
    /// L2 entry `l2` of the table of L1 entry `l1` became `value`.
    L2 { l1: u64, l2: u64, value: u64 },
    /// The cluster at this host offset is freed once the metadata is durable.
    Free(u64),
}

impl Record {
    fn encode(self) -> [u8; RECORD_LEN] {
        let (kind, a, b, c) = match self {
            Record::Alloc(host) => (1u32, host, 0, 0),
            Record::L1 { index, value } => (2, index, value, 0),
            Record::L2 { l1, l2, value } => (3, l1, l2, value),
            Record::Free(host) => (4, host, 0, 0),
        };
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&kind.to_le_bytes());
        out[8..16].copy_from_slice(&a.to_le_bytes());
        out[16..24].copy_from_slice(&b.to_le_bytes());
        out[24..].copy_from_slice(&c.to_le_bytes());
        let crc = record_crc(&out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The record in `raw`, or `None` where it is torn, damaged or of an unknown kind.
    fn decode(raw: &[u8]) -> Option<Record> {
        let word = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or([0; 8]));
        let kind = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?);
        let crc = u32::from_le_bytes(raw.get(4..8)?.try_into().ok()?);
        if raw.len() != RECORD_LEN || crc != record_crc(raw) {
            return None;
        }
        let (a, b, c) = (word(8), word(16), word(24));
        match kind {
            1 => Some(Record::Alloc(a)),
            2 => Some(Record::L1 { index: a, value: b }),
            3 => Some(Record::L2 {
                l1: a,
                l2: b,
                value: c,
            }),
            4 => Some(Record::Free(a)),
            _ => None,
        }
    }
}

/// CRC32C of a record's bytes other than the CRC field itself.
fn record_crc(raw: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&raw[..4]);
    crc32c::crc32c_append(crc, &raw[8..])
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): a journal of another boot is stale.
fn boot_id() -> [u8; 36] {
    let mut id = [0u8; 36];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let text = text.trim().as_bytes();
        let n = text.len().min(id.len());
        id[..n].copy_from_slice(&text[..n]);
    }
    id
}

/// The journal of one writable qcow2 file.
pub struct Journal {
    file: ImageFile,
    /// Where the next record goes.
    end: u64,
    /// Records of the request being served, written together by [`Journal::commit`].
    pending: Vec<u8>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.file.path())
            .field("end", &self.end)
            .finish()
    }
}

impl Journal {
    /// The journal of `image` in `dir`, with the records a predecessor left to replay
    /// (none for a new journal). A stale journal (another boot, or another file at the
    /// same name) is started afresh.
    pub fn open(dir: &Path, image: &ImageFile, tap: Option<Tap>) -> Result<(Journal, Vec<Record>)> {
        let meta = std::fs::metadata(image.path())
            .map_err(|e| Error::io("cannot stat", e).with_path(image.path()))?;
        let path = dir.join(format!("qcow2-{:x}-{}.journal", meta.dev(), meta.ino()));
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&meta.dev().to_le_bytes());
        header[16..24].copy_from_slice(&meta.ino().to_le_bytes());
        header[24..60].copy_from_slice(&boot_id());

        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("cannot create the journal folder", e).with_path(dir))?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot create the journal", e).with_path(&path))?;
        let file = ImageFile::open(&path, true, false)?.with_tap(tap);
        let mut found = vec![0u8; usize::try_from(file.len()).unwrap_or(0)];
        file.read_exact_at(&mut found, 0)?;
        let records = if found.get(..HEADER_LEN as usize) == Some(&header[..]) {
            found[HEADER_LEN as usize..]
                .chunks(RECORD_LEN)
                .map_while(Record::decode)
                .collect()
        } else {
            if !found.is_empty() {
                tracing::info!(journal = %path.display(),
                    "journal of another boot or file: its page cache is gone, starting afresh");
            }
            Vec::new()
        };
        file.set_len(0)?;
        file.write_all_at(&header, 0)?;
        let mut journal = Journal {
            file,
            end: HEADER_LEN,
            pending: Vec::new(),
        };
        // Until the replay is flushed, the records stay: a death during replay loses none.
        for record in &records {
            journal.log(*record);
        }
        journal.commit()?;
        Ok((journal, records))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes written to the journal file (its header included).
    pub fn bytes(&self) -> u64 {
        self.end
    }

    /// Adds `record` to the ones [`Journal::commit`] writes.
    pub fn log(&mut self, record: Record) {
        self.pending.extend_from_slice(&record.encode());
    }

    /// Writes the logged records: call before the request that made them completes.
    pub fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.pending, self.end)?;
        self.end += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Empties the journal: everything in it is durable in the image.
    pub fn clear(&mut self) -> Result<()> {
        self.pending.clear();
        if self.end > HEADER_LEN {
            self.file.set_len(HEADER_LEN)?;
            self.end = HEADER_LEN;
        }
        Ok(())
    }

    /// Removes the journal file: at a clean close, or when its records must not be
    /// replayed (the image's own sync failed, so what they point at may be lost).
    pub fn remove(self) {
        let path: PathBuf = self.file.path().to_path_buf();
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(journal = %path.display(), error = %e, "cannot remove the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let records = [
            Record::Alloc(0x30000),
            Record::L1 {
                index: 3,
                value: 1 << 63 | 0x40000,
            },
            Record::L2 {
                l1: 3,
                l2: 511,
                value: 1 << 63 | 0x50000,
            },
            Record::Free(0x20000),
        ];
        for record in records {
            let mut raw = record.encode();
            assert_eq!(Record::decode(&raw), Some(record));
            raw[20] ^= 1;
            assert_eq!(Record::decode(&raw), None, "{record:?} with a flipped bit");
        }
        assert_eq!(Record::decode(&[0u8; 16]), None, "a torn record");
    }

    #[test]
    fn a_new_open_finds_what_the_last_one_committed_but_not_what_it_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("img");
        std::fs::write(&image_path, b"x").unwrap();
        let image = ImageFile::open(&image_path, true, false).unwrap();
        let journal_dir = dir.path().join("journal");
        let (mut journal, found) = Journal::open(&journal_dir, &image, None).unwrap();
        assert!(found.is_empty());
        journal.log(Record::Alloc(0x10000));
        journal.log(Record::Free(0x20000));
        journal.commit().unwrap();
        journal.log(Record::Alloc(0x30000)); // logged, never committed: the request failed
        drop(journal); // a daemon's death
        let (mut journal, found) = Journal::open(&journal_dir, &image, None).unwrap();
        assert_eq!(found, [Record::Alloc(0x10000), Record::Free(0x20000)]);
        journal.clear().unwrap();
        drop(journal);
        let (journal, found) = Journal::open(&journal_dir, &image, None).unwrap();
        assert!(found.is_empty());
        let path = journal.path().to_path_buf();
        journal.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_journal_of_another_boot_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("img");
        std::fs::write(&image_path, b"x").unwrap();
        let image = ImageFile::open(&image_path, true, false).unwrap();
        let (mut journal, _) = Journal::open(dir.path(), &image, None).unwrap();
        journal.log(Record::Alloc(0x10000));
        journal.commit().unwrap();
        let path = journal.path().to_path_buf();
        drop(journal);
        // Another boot id in the header.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[24] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let (_, found) = Journal::open(dir.path(), &image, None).unwrap();
        assert!(found.is_empty());
    }
}
