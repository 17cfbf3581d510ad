//! FAT12/16/32 through the `fatfs` crate, long file names included. FAT has no owners,
//! modes or links: files show as root's, directories 0755 and files 0644 (without the
//! write bits when read-only), as Linux's vfat driver shows them with its defaults; times
//! are the local times FAT stores, taken as UTC.

use super::adapter::{ImageReader, ImageStream};
use super::entry::Time;
use super::guard::{guarded, io_error, GuardedRead};
use super::{Entry, FileSystem, Kind};
use crate::error::{Error, ErrorKind, Result};
use fatfs::{Date, DirEntry, FileAttributes, FsOptions};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

const FS: &str = "vfat";

/// Most entries one FAT directory can hold (the specification's limit): a directory
/// whose cluster chain loops is cut there.
const MAX_DIR_ENTRIES: usize = 65536;

/// A FAT file system of an image.
pub struct FatFs {
    fs: fatfs::FileSystem<ImageStream>,
    name: String,
}

impl FatFs {
    /// Reads the boot sector (and FSInfo) of the file system `reader` holds.
    pub fn load(reader: ImageReader) -> Result<Self> {
        let name = reader.name().to_string();
        let fs = guarded(&name, FS, || {
            fatfs::FileSystem::new(ImageStream::new(reader), FsOptions::new())
                .map_err(|e| io_error(&name, FS, Path::new("/"), e))
        })?;
        Ok(FatFs { fs, name })
    }

    fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guarded(&self.name, FS, f)
    }

    fn fail(&self, path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
        let path = path.to_path_buf();
        move |e| io_error(&self.name, FS, &path, e)
    }

    /// `path` as fatfs takes it: relative to the root, `/`-separated, UTF-8.
    fn relative<'p>(&self, path: &'p Path) -> Result<&'p str> {
        let bad = || self.not_found(path);
        let text = path.to_str().ok_or_else(bad)?;
        if path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(bad());
        }
        Ok(text.trim_start_matches('/'))
    }

    /// The directory entry `path` names (never the root, which has none).
    fn find(&self, path: &Path) -> Result<DirEntry<'_, ImageStream>> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let wanted = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        self.entries(parent)?
            .into_iter()
            .find(|e| e.file_name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| self.not_found(path))
    }

    fn not_found(&self, path: &Path) -> Error {
        super::path_error(ErrorKind::NotFound, &self.name, path, "no such file")
    }

    /// The entries of directory `path`, without `.`, `..` and the volume label.
    fn entries(&self, path: &Path) -> Result<Vec<DirEntry<'_, ImageStream>>> {
        let relative = self.relative(path)?;
        let dir = if relative.is_empty() {
            self.fs.root_dir()
        } else {
            self.fs
                .root_dir()
                .open_dir(relative)
                .map_err(self.fail(path))?
        };
        let mut entries = Vec::new();
        let mut names = std::collections::HashSet::new();
        for item in dir.iter() {
            let item = item.map_err(self.fail(path))?;
            let name = item.file_name();
            if name == "." || name == ".." || item.attributes().contains(FileAttributes::VOLUME_ID)
            {
                continue;
            }
            if !names.insert(name.to_lowercase()) {
                return Err(Error::corrupt(format!(
                    "{}: {}: the vfat directory holds {} twice (a loop in its cluster chain?)",
                    self.name,
                    super::escape::escape(path),
                    super::escape::escape(Path::new(&name))
                )));
            }
            if entries.len() == MAX_DIR_ENTRIES {
                return Err(Error::corrupt(format!(
                    "{}: {}: the vfat directory has more than {MAX_DIR_ENTRIES} entries \
                     (a loop in its cluster chain?)",
                    self.name,
                    super::escape::escape(path)
                )));
            }
            entries.push(item);
        }
        Ok(entries)
    }
}

impl FileSystem for FatFs {
    fn kind(&self) -> &'static str {
        FS
    }

    fn metadata(&self, path: &Path) -> Result<Entry> {
        self.guarded(|| {
            if self.relative(path)?.is_empty() {
                let epoch = Time { secs: 0, nanos: 0 };
                return Ok(Entry {
                    name: "/".into(),
                    kind: Kind::Dir,
                    size: 0,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: epoch,
                    atime: epoch,
                    target: None,
                    file_id: None,
                    links: 1,
                    device: None,
                });
            }
            Ok(entry(&self.find(path)?))
        })
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<Entry>> {
        self.guarded(|| Ok(self.entries(path)?.iter().map(entry).collect()))
    }

    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>> {
        let file = self.guarded(|| {
            let found = self.find(path)?;
            if found.is_dir() {
                return Err(Error::invalid(format!(
                    "{}: {}: is a directory",
                    self.name,
                    super::escape::escape(path)
                )));
            }
            Ok(found.to_file())
        })?;
        Ok(Box::new(GuardedRead::new(file, &self.name, FS, path)))
    }
}

fn entry(e: &DirEntry<'_, ImageStream>) -> Entry {
    let dir = e.is_dir();
    let writable = !e.attributes().contains(FileAttributes::READ_ONLY);
    let mode = match (dir, writable) {
        (true, true) => 0o755,
        (true, false) => 0o555,
        (false, true) => 0o644,
        (false, false) => 0o444,
    };
    let modified = e.modified();
    let time = |date: Date, secs: i64, millis: u16| Time {
        secs: days_from_civil(date) * 86400 + secs,
        nanos: u32::from(millis.min(999)) * 1_000_000,
    };
    let t = modified.time;
    Entry {
        name: PathBuf::from(e.file_name()),
        kind: if dir { Kind::Dir } else { Kind::File },
        size: if dir { 0 } else { e.len() },
        mode,
        uid: 0,
        gid: 0,
        mtime: time(
            modified.date,
            i64::from(t.hour) * 3600 + i64::from(t.min) * 60 + i64::from(t.sec),
            t.millis,
        ),
        atime: time(e.accessed(), 0, 0),
        target: None,
        file_id: None,
        links: 1,
        device: None,
    }
}

/// Days from 1970-01-01 to `date` (Howard Hinnant's days_from_civil); FAT dates run
/// from 1980 to 2107, so the arithmetic cannot overflow.
fn days_from_civil(date: Date) -> i64 {
    let (m, d) = (i64::from(date.month), i64::from(date.day));
    let y = i64::from(date.year) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_epoch() {
        let day = |year, month, day| days_from_civil(Date { year, month, day });
        assert_eq!(day(1970, 1, 1), 0);
        assert_eq!(day(1980, 1, 1), 3652);
        assert_eq!(day(2000, 2, 29), 11_016);
        assert_eq!(day(2024, 6, 15) * 86400, 1_718_409_600);
    }
}
