//! NTFS through the `ntfs` crate (read-only, `no_std`-capable, no decompression).
//!
//! Without Windows' security descriptors mapped to Unix ones, files show as root's,
//! directories 0755 and files 0644 (0444 when read-only); symbolic links made by ntfs-3g (Interix `IntxLNK` files) and Windows' own
//! symbolic links and junctions (reparse points) are links. Named
//! data streams are listed as `FILE:STREAM` entries of kind [`Kind::Stream`], which
//! `get` reads; compressed and encrypted files are listed with their sizes, but their
//! bytes are refused, for the crate would hand back the stored (compressed) bytes.

use super::adapter::{ImageReader, ImageStream};
use super::entry::Time;
use super::guard::guarded;
use super::{Entry, FileSystem, Kind};
use crate::error::{Error, ErrorKind, Result};
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{
    NtfsFileAttributeFlags, NtfsFileNamespace, NtfsIndexAllocation, NtfsIndexRoot,
};
use ntfs::types::Vcn;
use ntfs::{
    Ntfs, NtfsAttribute, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek,
    NtfsTime,
};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

const FS: &str = "ntfs";

/// MFT records below this are the file system's own ($MFT, $Bitmap, $Extend...), hidden
/// from listings as Linux's ntfs3 and ntfs-3g hide them.
const FIRST_USER_RECORD: u64 = 16;

/// The root directory's MFT record.
const ROOT_RECORD: u64 = 5;

/// Most entries read from one directory index: a B-tree whose nodes point back at each
/// other is cut there.
const MAX_DIR_ENTRIES: usize = 1 << 20;

/// How much of a file one read of the crate fetches.
const CHUNK: usize = 1 << 20;

/// The header of a symbolic link as ntfs-3g (after Interix) stores it: this, then the
/// target in UTF-16LE, in a system file's data.
const INTERIX_LINK: &[u8] = b"IntxLNK\x01";

/// Longest Interix link target read (PATH_MAX in UTF-16).
const MAX_LINK: u64 = INTERIX_LINK.len() as u64 + 2 * 4096;

/// Reparse tags of a Windows symbolic link and of a junction (mount point).
const REPARSE_SYMLINK: u32 = 0xA000_000C;
const REPARSE_MOUNT_POINT: u32 = 0xA000_0003;

/// Most reparse data NTFS allows (16 KiB) and its header.
const MAX_REPARSE: u64 = 16 * 1024 + 8;

/// An NTFS file system of an image.
pub struct NtfsFs {
    ntfs: Ntfs,
    stream: RefCell<ImageStream>,
    name: String,
    /// Directories whose index B-tree [`NtfsFs::check_index`] found free of loops.
    checked: RefCell<BTreeSet<u64>>,
}

/// Where a path leads: an MFT record, and the named data stream when the path ends in
/// `:STREAM`.
struct Found {
    record: u64,
    stream: Option<String>,
}

impl NtfsFs {
    /// Reads the boot sector and the upper-case table of the file system `reader` holds.
    pub fn load(reader: ImageReader) -> Result<Self> {
        let name = reader.name().to_string();
        let mut stream = ImageStream::new(reader);
        let ntfs = guarded(&name, FS, || {
            let mut ntfs = Ntfs::new(&mut stream).map_err(|e| error(&name, Path::new("/"), e))?;
            ntfs.read_upcase_table(&mut stream)
                .map_err(|e| error(&name, Path::new("/"), e))?;
            Ok(ntfs)
        })?;
        Ok(NtfsFs {
            ntfs,
            stream: RefCell::new(stream),
            name,
            checked: RefCell::new(BTreeSet::new()),
        })
    }

    fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guarded(&self.name, FS, f)
    }

    fn fail<'p>(&'p self, path: &'p Path) -> impl Fn(NtfsError) -> Error + 'p {
        move |e| error(&self.name, path, e)
    }

    fn file(&self, record: u64, path: &Path) -> Result<NtfsFile<'_>> {
        self.ntfs
            .file(&mut *self.stream.borrow_mut(), record)
            .map_err(self.fail(path))
    }

    fn not_found(&self, path: &Path) -> Error {
        super::path_error(ErrorKind::NotFound, &self.name, path, "no such file")
    }

    fn not_a_directory(&self, path: &Path) -> Error {
        super::path_error(ErrorKind::InvalidInput, &self.name, path, "not a directory")
    }

    /// The record (and stream) `path` names, looked up directory by directory.
    fn lookup(&self, path: &Path) -> Result<Found> {
        let mut record = ROOT_RECORD;
        let mut components = path.components().peekable();
        while let Some(component) = components.next() {
            let name = match component {
                Component::RootDir => continue,
                Component::Normal(name) => name.to_str().ok_or_else(|| self.not_found(path))?,
                _ => return Err(self.not_found(path)),
            };
            let last = components.peek().is_none();
            match self.child(record, name, path)? {
                Some(child) => record = child,
                None if last => {
                    let (file, stream) = name
                        .rsplit_once(':')
                        .filter(|(_, s)| !s.is_empty())
                        .ok_or_else(|| self.not_found(path))?;
                    let record = self
                        .child(record, file, path)?
                        .ok_or_else(|| self.not_found(path))?;
                    return Ok(Found {
                        record,
                        stream: Some(stream.to_string()),
                    });
                }
                None => return Err(self.not_found(path)),
            }
        }
        Ok(Found {
            record,
            stream: None,
        })
    }

    /// The record of `name` in directory `dir`, if it has one by that name.
    fn child(&self, dir: u64, name: &str, path: &Path) -> Result<Option<u64>> {
        let dir = self.file(dir, path)?;
        if !dir.is_directory() {
            return Err(self.not_a_directory(path));
        }
        self.check_index(&dir, path)?;
        let fs = &mut *self.stream.borrow_mut();
        let index = dir.directory_index(fs).map_err(self.fail(path))?;
        let mut finder = index.finder();
        match NtfsFileNameIndex::find(&mut finder, &self.ntfs, fs, name) {
            None => Ok(None),
            Some(entry) => {
                let record = entry.map_err(self.fail(path))?.file_reference();
                Ok(Some(record.file_record_number()).filter(|&r| r >= FIRST_USER_RECORD))
            }
        }
    }

    /// The entry of record `record` (or of its stream `stream`), named `name`.
    fn entry(
        &self,
        record: u64,
        name: PathBuf,
        stream: Option<&str>,
        path: &Path,
    ) -> Result<Entry> {
        let file = self.file(record, path)?;
        let info = file.info().map_err(self.fail(path))?;
        let flags = info.file_attributes();
        let dir = file.is_directory();
        let data = if dir {
            None
        } else {
            Some(self.data_len(&file, stream.unwrap_or(""), path)?)
        };
        let mut kind = match (dir, stream) {
            (_, Some(_)) => Kind::Stream,
            (true, None) => Kind::Dir,
            (false, None) => Kind::File,
        };
        let target = match data {
            _ if stream.is_some() => None,
            _ if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) => {
                self.reparse_link(&file, path)?
            }
            Some(len) if kind == Kind::File && flags.contains(NtfsFileAttributeFlags::SYSTEM) => {
                self.interix_link(&file, len, path)?
            }
            _ => None,
        };
        let mut size = data.unwrap_or(0);
        if let Some(target) = &target {
            kind = Kind::Symlink;
            size = target.as_os_str().len() as u64;
        }
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            _ if flags.contains(NtfsFileAttributeFlags::READ_ONLY) => 0o444,
            _ => 0o644,
        };
        Ok(Entry {
            name,
            kind,
            size,
            mode,
            uid: 0,
            gid: 0,
            mtime: time(info.modification_time()),
            atime: time(info.access_time()),
            target,
            file_id: Some(record),
            links: u32::from(file.hard_link_count()).max(1),
            device: None,
        })
    }

    /// The length of data stream `stream` (`""`: the file's own bytes) of `file`; a
    /// missing unnamed stream is an empty file, a missing named one no such file.
    fn data_len(&self, file: &NtfsFile<'_>, stream: &str, path: &Path) -> Result<u64> {
        let fs = &mut *self.stream.borrow_mut();
        match file.data(fs, stream) {
            Some(item) => {
                let item = item.map_err(self.fail(path))?;
                let attribute = item.to_attribute().map_err(self.fail(path))?;
                Ok(attribute.value_length())
            }
            None if stream.is_empty() => Ok(0),
            None => Err(self.not_found(path)),
        }
    }

    /// The target of an Interix symbolic link (a system file holding `IntxLNK\1` and
    /// the target in UTF-16LE), or `None` when `file` is not one.
    fn interix_link(&self, file: &NtfsFile<'_>, len: u64, path: &Path) -> Result<Option<PathBuf>> {
        if !(INTERIX_LINK.len() as u64..=MAX_LINK).contains(&len) || len % 2 != 0 {
            return Ok(None);
        }
        let mut bytes = vec![0; len as usize];
        self.read_stream(file, "", 0, &mut bytes, path)?;
        let Some(target) = bytes.strip_prefix(INTERIX_LINK) else {
            return Ok(None);
        };
        let units: Vec<u16> = target
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(Some(PathBuf::from(String::from_utf16_lossy(&units))))
    }

    /// The target of a Windows symbolic link or junction (a reparse point), or `None`
    /// for other reparse points.
    fn reparse_link(&self, file: &NtfsFile<'_>, path: &Path) -> Result<Option<PathBuf>> {
        let mut target = None;
        self.attributes_of(
            file,
            NtfsAttributeType::ReparsePoint,
            path,
            |attribute, fs| {
                let len = attribute.value_length().min(MAX_REPARSE);
                let mut data = vec![0; len as usize];
                let mut value = attribute.value(fs).map_err(self.fail(path))?;
                value.read_exact(fs, &mut data).map_err(self.fail(path))?;
                target = reparse_target(&data);
                Ok(false)
            },
        )?;
        Ok(target)
    }

    /// Calls `f` with each attribute of type `ty` of `file` (and the image to read its
    /// value from) until it returns `false`.
    fn attributes_of(
        &self,
        file: &NtfsFile<'_>,
        ty: NtfsAttributeType,
        path: &Path,
        mut f: impl FnMut(&NtfsAttribute<'_, '_>, &mut ImageStream) -> Result<bool>,
    ) -> Result<()> {
        let fs = &mut *self.stream.borrow_mut();
        let mut attributes = file.attributes();
        while let Some(item) = attributes.next(fs) {
            let item = item.map_err(self.fail(path))?;
            let attribute = item.to_attribute().map_err(self.fail(path))?;
            if attribute.ty().map_err(self.fail(path))? == ty && !f(&attribute, fs)? {
                break;
            }
        }
        Ok(())
    }

    /// Fills `buf` from byte `offset` of data stream `stream` of `file` (as far as the
    /// stream goes); refuses compressed and encrypted streams. Returns the bytes read.
    fn read_stream(
        &self,
        file: &NtfsFile<'_>,
        stream: &str,
        offset: u64,
        buf: &mut [u8],
        path: &Path,
    ) -> Result<usize> {
        let fs = &mut *self.stream.borrow_mut();
        let Some(item) = file.data(fs, stream) else {
            return Ok(0);
        };
        let item = item.map_err(self.fail(path))?;
        let attribute = item.to_attribute().map_err(self.fail(path))?;
        let flags = attribute.flags();
        let refused = if flags.contains(NtfsAttributeFlags::COMPRESSED) {
            Some("compressed (LZNT1), and the ntfs crate cannot decompress")
        } else if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
            Some("encrypted (EFS), which imgblk cannot decrypt")
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: {}: is {why}; `imgblk mount` reads it through the kernel",
                    self.name,
                    super::escape::escape(path)
                ),
            ));
        }
        let mut value = attribute.value(fs).map_err(self.fail(path))?;
        if offset >= value.len() {
            return Ok(0);
        }
        value
            .seek(fs, std::io::SeekFrom::Start(offset))
            .map_err(self.fail(path))?;
        let want = buf
            .len()
            .min(usize::try_from(value.len() - offset).unwrap_or(usize::MAX));
        value
            .read_exact(fs, &mut buf[..want])
            .map_err(self.fail(path))?;
        Ok(want)
    }

    /// The entries of the directory of record `record`.
    fn entries(&self, record: u64, path: &Path) -> Result<Vec<Entry>> {
        let dir = self.file(record, path)?;
        if !dir.is_directory() {
            return Err(self.not_a_directory(path));
        }
        self.check_index(&dir, path)?;
        let mut children = Vec::new();
        {
            let fs = &mut *self.stream.borrow_mut();
            let index = dir.directory_index(fs).map_err(self.fail(path))?;
            let mut iter = index.entries();
            while let Some(item) = iter.next(fs) {
                let item = item.map_err(self.fail(path))?;
                let Some(key) = item.key() else { continue };
                let key = key.map_err(self.fail(path))?;
                let child = item.file_reference().file_record_number();
                if key.namespace() == NtfsFileNamespace::Dos
                    || child < FIRST_USER_RECORD
                    || child == record
                {
                    continue;
                }
                if children.len() == MAX_DIR_ENTRIES {
                    return Err(Error::corrupt(format!(
                        "{}: {}: the ntfs directory has more than {MAX_DIR_ENTRIES} entries \
                         (a loop in its index?)",
                        self.name,
                        super::escape::escape(path)
                    )));
                }
                children.push((child, key.name().to_string_lossy()));
            }
        }
        let mut entries = Vec::with_capacity(children.len());
        for (child, name) in children {
            let at = path.join(&name);
            let entry = self.entry(child, name.clone().into(), None, &at)?;
            if entry.kind == Kind::File {
                for stream in self.stream_names(child, &at)? {
                    let named = format!("{name}:{stream}");
                    entries.push(self.entry(child, named.into(), Some(&stream), &at)?);
                }
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Checks that the index B-tree of directory `dir` is a tree: the crate follows
    /// subnode pointers without remembering where it has been, so a node pointing back at
    /// an ancestor would make it loop (and grow) forever.
    fn check_index(&self, dir: &NtfsFile<'_>, path: &Path) -> Result<()> {
        if self.checked.borrow().contains(&dir.file_record_number()) {
            return Ok(());
        }
        let loop_error = || {
            Error::corrupt(format!(
                "{}: {}: the ntfs directory index loops (a node points back at another)",
                self.name,
                super::escape::escape(path)
            ))
        };
        let subnodes = |entries: ntfs::NtfsIndexNodeEntries<'_, NtfsFileNameIndex>,
                        next: &mut Vec<Vcn>| {
            for entry in entries {
                let entry = entry.map_err(self.fail(path))?;
                if let Some(vcn) = entry.subnode_vcn() {
                    next.push(vcn.map_err(self.fail(path))?);
                }
            }
            Ok::<_, Error>(())
        };
        let is_i30 = |attribute: &NtfsAttribute<'_, '_>| {
            Ok::<_, Error>(attribute.name().map_err(self.fail(path))? == "$I30")
        };
        let mut next: Vec<Vcn> = Vec::new();
        let mut record_size = 0;
        self.attributes_of(dir, NtfsAttributeType::IndexRoot, path, |attribute, _| {
            if !is_i30(attribute)? {
                return Ok(true);
            }
            let root = attribute
                .resident_structured_value::<NtfsIndexRoot>()
                .map_err(self.fail(path))?;
            record_size = root.index_record_size();
            subnodes(root.entries().map_err(self.fail(path))?, &mut next)?;
            Ok(false)
        })?;
        if !next.is_empty() {
            self.attributes_of(
                dir,
                NtfsAttributeType::IndexAllocation,
                path,
                |attribute, fs| {
                    if !is_i30(attribute)? {
                        return Ok(true);
                    }
                    let allocation = attribute
                        .structured_value::<_, NtfsIndexAllocation>(fs)
                        .map_err(self.fail(path))?;
                    let mut seen = BTreeSet::new();
                    while let Some(vcn) = next.pop() {
                        if !seen.insert(vcn) || seen.len() > MAX_DIR_ENTRIES {
                            return Err(loop_error());
                        }
                        let record = allocation
                            .record_from_vcn(fs, record_size, vcn)
                            .map_err(self.fail(path))?;
                        subnodes(record.entries().map_err(self.fail(path))?, &mut next)?;
                    }
                    Ok(false)
                },
            )?;
        }
        self.checked.borrow_mut().insert(dir.file_record_number());
        Ok(())
    }

    /// The names of the named data streams of record `record`.
    fn stream_names(&self, record: u64, path: &Path) -> Result<Vec<String>> {
        let file = self.file(record, path)?;
        let mut names = Vec::new();
        self.attributes_of(&file, NtfsAttributeType::Data, path, |attribute, _| {
            let name = attribute.name().map_err(self.fail(path))?;
            if !name.is_empty() {
                names.push(name.to_string_lossy());
            }
            Ok(true)
        })?;
        Ok(names)
    }
}

impl FileSystem for NtfsFs {
    fn kind(&self) -> &'static str {
        FS
    }

    fn metadata(&self, path: &Path) -> Result<Entry> {
        self.guarded(|| {
            let found = self.lookup(path)?;
            let name = path.file_name().map_or_else(|| "/".into(), PathBuf::from);
            self.entry(found.record, name, found.stream.as_deref(), path)
        })
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<Entry>> {
        self.guarded(|| {
            let found = self.lookup(path)?;
            if found.stream.is_some() {
                return Err(self.not_a_directory(path));
            }
            self.entries(found.record, path)
        })
    }

    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>> {
        let (found, len) = self.guarded(|| {
            let entry = self.metadata(path)?;
            if !matches!(entry.kind, Kind::File | Kind::Stream) {
                return Err(Error::invalid(format!(
                    "{}: {}: is not a regular file or a data stream",
                    self.name,
                    super::escape::escape(path)
                )));
            }
            let found = self.lookup(path)?;
            // Refuses compressed and encrypted files now, before any byte is written.
            let file = self.file(found.record, path)?;
            self.read_stream(
                &file,
                found.stream.as_deref().unwrap_or(""),
                0,
                &mut [],
                path,
            )?;
            Ok((found, entry.size))
        })?;
        Ok(Box::new(StreamRead {
            fs: self,
            found,
            path: path.to_path_buf(),
            pos: 0,
            len,
            chunk: Vec::new(),
            at: 0,
        }))
    }
}

/// One data stream's bytes, fetched a [`CHUNK`] at a time (the crate's readers borrow the
/// file record, so each chunk looks the record up again).
struct StreamRead<'a> {
    fs: &'a NtfsFs,
    found: Found,
    path: PathBuf,
    /// Offset of the end of `chunk` in the stream.
    pos: u64,
    len: u64,
    chunk: Vec<u8>,
    /// Bytes of `chunk` already handed out.
    at: usize,
}

impl Read for StreamRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.pos >= self.len {
                return Ok(0);
            }
            let want = CHUNK.min(usize::try_from(self.len - self.pos).unwrap_or(CHUNK));
            self.chunk.resize(want, 0);
            let (fs, found, path, pos) = (self.fs, &self.found, &self.path, self.pos);
            let chunk = &mut self.chunk;
            let n = fs
                .guarded(|| {
                    let file = fs.file(found.record, path)?;
                    let stream = found.stream.as_deref().unwrap_or("");
                    fs.read_stream(&file, stream, pos, chunk, path)
                })
                .map_err(std::io::Error::other)?;
            self.chunk.truncate(n);
            self.pos += n as u64;
            self.at = 0;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The target a reparse point's data names, for a symbolic link or a junction (mount
/// point): its print name (else its substitute name without `\\??\\`), with `/` for `\\`.
fn reparse_target(data: &[u8]) -> Option<PathBuf> {
    let u16_at = |at: usize| {
        data.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let tag = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    // After the tag, lengths and the four name fields: the names, after a flags word
    // for a symbolic link.
    let names = match tag {
        REPARSE_SYMLINK => 20,
        REPARSE_MOUNT_POINT => 16,
        _ => return None,
    };
    let name = |off: usize, len: usize| {
        let bytes = data.get(names + off..names + off + len)?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Some(String::from_utf16_lossy(&units))
    };
    let printed = name(u16_at(12)?, u16_at(14)?).filter(|p| !p.is_empty());
    let target = match printed {
        Some(p) => p,
        None => {
            let subst = name(u16_at(8)?, u16_at(10)?)?;
            subst.strip_prefix("\\??\\").unwrap_or(&subst).to_string()
        }
    };
    Some(PathBuf::from(target.replace('\\', "/")))
}

/// An NTFS time (100 ns units since 1601) as Unix seconds and nanoseconds.
fn time(t: NtfsTime) -> Time {
    /// 100 ns units from 1601-01-01 to 1970-01-01.
    const EPOCH: i128 = 116_444_736_000_000_000;
    let units = i128::from(t.nt_timestamp()) - EPOCH;
    Time {
        secs: (units.div_euclid(10_000_000)) as i64,
        nanos: (units.rem_euclid(10_000_000) * 100) as u32,
    }
}

/// The crate's error as imgblk's, naming the image and the path.
fn error(image: &str, path: &Path, e: NtfsError) -> Error {
    let at = super::escape::escape(path);
    if let NtfsError::Io(io) = &e {
        if let Some(inner) = io.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return Error::new(inner.kind(), inner.to_string());
        }
    }
    if let NtfsError::NotADirectory { .. } = e {
        return Error::invalid(format!("{image}: {at}: not a directory"));
    }
    Error::corrupt(format!(
        "{image}: {at}: the ntfs file system is corrupt: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reparse data: tag, lengths, then the four name fields (and a flags word).
    fn reparse(tag: u32, subst: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
        let utf16 = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        let (s, p) = (utf16(subst), utf16(print));
        let mut body = Vec::new();
        for n in [0, s.len(), s.len(), p.len()] {
            body.extend((n as u16).to_le_bytes());
        }
        if let Some(flags) = flags {
            body.extend(flags.to_le_bytes());
        }
        body.extend(s);
        body.extend(p);
        let mut data = tag.to_le_bytes().to_vec();
        data.extend((body.len() as u16).to_le_bytes());
        data.extend([0, 0]);
        data.extend(body);
        data
    }

    #[test]
    fn windows_links_and_junctions_point_where_they_say() {
        let link = reparse(REPARSE_SYMLINK, "..\\a.txt", "..\\a.txt", Some(1));
        assert_eq!(reparse_target(&link), Some(PathBuf::from("../a.txt")));
        let junction = reparse(REPARSE_MOUNT_POINT, "\\??\\C:\\Users", "", None);
        assert_eq!(reparse_target(&junction), Some(PathBuf::from("C:/Users")));
        // Other tags (deduplication, cloud files) are no links; short data is nothing.
        assert_eq!(reparse_target(&reparse(0x8000_0013, "x", "x", None)), None);
        assert_eq!(reparse_target(&link[..30]), None);
        assert_eq!(reparse_target(&[]), None);
    }

    #[test]
    fn ntfs_times_count_from_1601() {
        assert_eq!(
            time(NtfsTime::from(116_444_736_000_000_000)),
            Time { secs: 0, nanos: 0 }
        );
        let t = time(NtfsTime::from(
            116_444_736_000_000_000 + 16_000_000_005_000_001,
        ));
        assert_eq!(
            t,
            Time {
                secs: 1_600_000_000,
                nanos: 500_000_100
            }
        );
        assert_eq!(time(NtfsTime::from(0)).secs, -11_644_473_600);
    }
}
