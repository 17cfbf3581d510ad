//! qcow2 (versions 2 and 3): a lock-free mapper from guest ranges to host extents over a
//! cached L1/L2 lookup, delegating unallocated ranges to the backing chain, and a write
//! path that allocates and copies on write.
//!
//! - [`header`]: the header, its extensions and every check on them.
//! - [`entry`]: decoding of L1/L2 entries.
//! - [`l2cache`]: the bounded L2 table cache, lock-free for resident tables.
//! - [`snapshot`]: the internal snapshot table; a snapshot opens read-only.
//! - [`refcount`]: refcount blocks and the cluster allocator (write path).
//! - [`write`]: writes, flush ordering and crash consistency.
//! - [`journal`]: the metadata changes since the last flush, kept for a daemon that takes
//!   over from one that died.
//!
//! Depth: the rule of every format, [`chain::map_parent`](super::common::chain::map_parent)'s.

pub mod bitmap;
pub mod create;
pub mod entry;
pub mod guard;
pub mod header;
pub mod journal;
pub mod l2cache;
mod prefetch;
pub mod refcount;
pub mod snapshot;
pub mod stream;
pub mod write;

#[cfg(test)]
mod tests;

use self::entry::Cluster;
use self::header::Header;
use self::l2cache::{L2Cache, L2Ref, L2Table};
use super::common::chain;
use super::common::walk::push;
use super::open::open_at_depth;
use super::policy::Field;
use super::{
    check_range, ChainEntry, CompressedCluster, DiskImage, Extent, Format, ImageFile, ImageWrite,
    OpenOptions, Source, WritePlan,
};
use crate::error::{Error, ErrorKind, Result, ResultExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Largest L2 cache per image unless [`OpenOptions::l2_cache_bytes`] says otherwise:
/// every table of a 128 GiB image with 64 KiB clusters (QEMU caps its default at 32 MiB).
/// Kept small so that a daemon serving a 1 TiB image stays within 64 MiB of memory
/// however much of it is read; a miss costs one table read (from the page cache, where
/// a device reads the tables ahead as it starts). The chain's
/// [`ChainBudget`](super::open::ChainBudget) may leave a layer less.
pub const DEFAULT_L2_CACHE_BYTES: u64 = 16 << 20;

/// What [`Qcow2Image::one_cluster`] found.
enum Lookup {
    /// Plain data at this offset of the data file.
    Data(u64),
    /// Not allocated in this image.
    Unallocated,
}

/// A qcow2 image with its backing chain.
pub struct Qcow2Image {
    file: ImageFile,
    header: Header,
    /// The L1 entries that cover the virtual size (atomics: the write path updates them).
    l1: Box<[AtomicU64]>,
    l2: L2Cache,
    /// The external data file that guest data lives in, if the image has one.
    data_file: Option<ImageFile>,
    backing: Option<Box<dyn DiskImage>>,
    /// Metadata state of the write path; `None` when open read-only.
    writer: Option<Mutex<write::Writer>>,
    /// The clusters writes must keep off; `None` when open read-only.
    guard: Option<guard::MetadataGuard>,
}

impl Qcow2Image {
    /// Opens the qcow2 image in `file`, which sits `depth` levels below the top of its
    /// chain, and its backing chain; writable when `file` was opened for writing.
    pub fn open(file: ImageFile, options: &OpenOptions, depth: u32) -> Result<Qcow2Image> {
        let path = file.path().to_path_buf();
        let mut header = Header::read(&file)?;
        let snapshots = snapshot::read_table(&file, &header)?;
        if let Some(wanted) = &options.snapshot {
            select_snapshot(&mut header, &snapshots, wanted, options, &file)?;
        }
        let mut writer = if options.writable || file.writable() {
            Some(write::Writer::open(&file, &header)?)
        } else {
            None
        };
        let mut replay = Vec::new();
        if let (Some(writer), Some(dir)) = (&mut writer, &options.journal_dir) {
            let (journal, records) = journal::Journal::open(dir, &file, options.tap.clone())?;
            if !records.is_empty() {
                tracing::info!(path = %path.display(), journal = %journal.path().display(),
                    records = records.len(), "replaying the metadata journal of a daemon that died");
            }
            writer.set_journal(journal);
            replay = records;
        }
        if writer.is_none() && header.has_incompatible(header::INCOMPAT_DIRTY) {
            tracing::warn!(path = %path.display(), "qcow2 image is marked dirty (not closed cleanly); reading it anyway");
        }
        let mut budget = options.memory_budget.unwrap_or_default();
        budget.l1_tables =
            take_l1_budget(budget.l1_tables, &header).map_err(|e| e.with_path(&path))?;
        let l1 = read_l1(&file, &header)?;
        let guard = writer
            .as_ref()
            .map(|w| w.metadata_guard(&header, &l1, file.len()))
            .transpose()
            .map_err(|e| e.with_path(&path))?;
        let writer = writer.map(Mutex::new);
        let cache_bytes = options
            .l2_cache_bytes
            .unwrap_or(DEFAULT_L2_CACHE_BYTES.min(budget.l2_caches / 2));
        // A writable image keeps every table it loads: dirty tables are never evicted.
        let capacity = if writer.is_some() {
            l1.len()
        } else {
            usize::try_from(cache_bytes / header.cluster_size())
                .unwrap_or(usize::MAX)
                .min(l1.len())
                .max(1)
        };
        let l2 = L2Cache::new(l1.len(), capacity);
        budget.l2_caches = budget.l2_caches.saturating_sub(match writer {
            Some(_) => cache_bytes,
            None => capacity as u64 * header.cluster_size(),
        });
        let data_file = open_data_file(&path, &header, options)?;
        let below = OpenOptions {
            memory_budget: Some(budget),
            ..options.clone()
        };
        let backing = open_backing(&path, &header, &below, depth)?;
        if writer.is_some() {
            write::Writer::clear_autoclear(&file, &header)?;
        }
        let image = Qcow2Image {
            file,
            header,
            l1,
            l2,
            data_file,
            backing,
            writer,
            guard,
        };
        if !replay.is_empty() {
            image.replay(&replay)?;
            image.flush_impl()?;
        }
        Ok(image)
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The file guest data clusters live in: the external data file, or the image.
    pub fn data_file(&self) -> &ImageFile {
        self.data_file.as_ref().unwrap_or(&self.file)
    }

    /// The backing image, if any.
    pub fn backing(&self) -> Option<&dyn DiskImage> {
        self.backing.as_deref()
    }

    /// The L2 table cache (for statistics).
    pub fn l2_cache(&self) -> &L2Cache {
        &self.l2
    }

    /// The L2 table of L1 entry `l1_index`, or `None` if the entry has none.
    #[inline(always)]
    fn l2_table(&self, l1_index: usize) -> Result<Option<L2Ref<'_>>> {
        let Some(host) = self.l2_offset(l1_index)? else {
            return Ok(None);
        };
        self.l2
            .get(l1_index, || self.load_l2(l1_index, host))
            .map(Some)
    }

    /// Where the L2 table of L1 entry `l1_index` is in the file, or `None` if the entry
    /// has none.
    fn l2_offset(&self, l1_index: usize) -> Result<Option<u64>> {
        let raw = self
            .l1
            .get(l1_index)
            .map(|e| e.load(Ordering::Acquire))
            .ok_or_else(|| Error::invalid(format!("L1 index {l1_index} past the L1 table")))?;
        entry::decode_l1(raw, self.header.cluster_bits, l1_index).map_err(|e| {
            e.at(self.l1_entry_offset(l1_index))
                .with_path(self.file.path())
        })
    }

    /// File offset of L1 entry `l1_index`.
    fn l1_entry_offset(&self, l1_index: usize) -> u64 {
        self.header.l1_table_offset + 8 * l1_index as u64
    }

    /// Reads the L2 table at file offset `host` for L1 entry `l1_index`.
    fn load_l2(&self, l1_index: usize, host: u64) -> Result<L2Table> {
        let size = self.cluster_size();
        if host
            .checked_add(size)
            .is_none_or(|end| end > self.file.len())
        {
            let guest = (l1_index as u64) << (self.header.cluster_bits + self.header.l2_bits());
            return Err(Error::corrupt(format!(
                "qcow2 L2 table for guest offset {guest:#x} (L1 entry {l1_index}) at {host:#x} \
                 lies past the end of the {}-byte file",
                self.file.len()
            ))
            .at(self.l1_entry_offset(l1_index))
            .with_path(self.file.path()));
        }
        let mut buf = vec![0u8; size as usize];
        self.file.read_exact_at(&mut buf, host)?;
        let mut table = L2Table::from_be_bytes(&buf);
        if let Some(guard) = &self.guard {
            let disarmed = guard
                .disarm(&mut table, l1_index, host)
                .map_err(|e| e.with_path(self.file.path()))?;
            if disarmed > 0 {
                tracing::warn!(
                    path = %self.file.path().display(),
                    l1_index,
                    entries = disarmed,
                    "qcow2 L2 table names metadata or clusters past the end of the file as \
                     data: writes to those clusters copy on write instead (the image is corrupt; \
                     see `qemu-img check`)"
                );
            }
        }
        Ok(table)
    }

    /// What this image holds for `offset..offset + len` when the range lies inside one
    /// cluster with a standard L2 entry that stores it as plain data or leaves it
    /// unallocated; `None` for anything else (several clusters, zero, compressed,
    /// extended L2 entries), which `map`'s general path sorts out. Errors as `map` would
    /// give them.
    #[inline(always)]
    fn one_cluster(&self, offset: u64, len: u64) -> Result<Option<Lookup>> {
        let cluster_bits = self.header.cluster_bits;
        let first_cluster = offset & !((1u64 << cluster_bits) - 1);
        let in_one = len > 0
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= first_cluster + (1 << cluster_bits));
        if !in_one || self.header.extended_l2() {
            return Ok(None);
        }
        check_range(offset, len, self.virtual_size()).in_file(self.file.path())?;
        let l1_index = (offset >> (cluster_bits + self.header.l2_bits())) as usize;
        let loaded;
        let table = match self.l2.pinned_table(l1_index) {
            Some(table) => table,
            None => match self.l2_table(l1_index)? {
                Some(table) => {
                    loaded = table;
                    &*loaded
                }
                None => return Ok(Some(Lookup::Unallocated)),
            },
        };
        let l2_mask = (1u64 << self.header.l2_bits()) - 1;
        let raw = table.get(((offset >> cluster_bits) & l2_mask) as usize);
        let data_file = self.data_file.is_some();
        Ok(
            match raw.map(|raw| entry::decode_l2_in(raw, cluster_bits, first_cluster, data_file)) {
                Some(Ok(Cluster::Data(host))) => {
                    Some(Lookup::Data(host + (offset - first_cluster)))
                }
                Some(Ok(Cluster::Unallocated)) => Some(Lookup::Unallocated),
                _ => None,
            },
        )
    }

    /// Appends the extents of `offset..end`, a range this image does not allocate: the
    /// backing image's where it has one, unallocated beyond.
    fn map_unallocated<'a>(
        &'a self,
        offset: u64,
        end: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<()> {
        chain::map_parent(self.backing.as_deref(), offset, end - offset, out)
    }

    /// The source of the guest bytes from `pos` on (`pos < chunk_end`, both inside the
    /// cluster at `cluster_start`, entry `l2_index` of `table`) and where it ends: at
    /// `chunk_end`, or with extended L2 entries at the end of `pos`'s subcluster. `None`
    /// when unallocated here.
    fn piece_source(
        &self,
        table: &L2Ref,
        l2_index: usize,
        cluster_start: u64,
        pos: u64,
        chunk_end: u64,
    ) -> Result<(Option<Source<'_>>, u64)> {
        let missing = || {
            Error::corrupt(format!(
                "qcow2 L2 table for guest offset {cluster_start:#x} has no entry {l2_index}"
            ))
            .with_path(self.file.path())
        };
        if !self.header.extended_l2() {
            let raw = table.get(l2_index).ok_or_else(missing)?;
            let data_file = self.data_file.is_some();
            let cluster =
                entry::decode_l2_in(raw, self.header.cluster_bits, cluster_start, data_file)
                    .map_err(|e| e.with_path(self.file.path()))?;
            return Ok((self.cluster_source(cluster, cluster_start, pos)?, chunk_end));
        }
        let raw = table.get(2 * l2_index).ok_or_else(missing)?;
        let bitmap = table.get(2 * l2_index + 1).ok_or_else(missing)?;
        let sub_bits = self.header.cluster_bits - 5;
        let index = ((pos - cluster_start) >> sub_bits) as u32;
        let cluster = entry::decode_extended_l2(
            raw,
            bitmap,
            index,
            self.header.cluster_bits,
            cluster_start,
            self.data_file.is_some(),
        )
        .map_err(|e| e.with_path(self.file.path()))?;
        let end = match cluster {
            Cluster::Compressed { .. } => chunk_end,
            _ => chunk_end.min(cluster_start + (u64::from(index + 1) << sub_bits)),
        };
        Ok((self.cluster_source(cluster, cluster_start, pos)?, end))
    }

    /// The source of the guest bytes from `pos` on, inside the cluster that starts at
    /// `cluster_start` and that `cluster` describes; `None` when unallocated here.
    fn cluster_source(
        &self,
        cluster: Cluster,
        cluster_start: u64,
        pos: u64,
    ) -> Result<Option<Source<'_>>> {
        let within = pos - cluster_start;
        Ok(match cluster {
            Cluster::Unallocated => None,
            Cluster::Zero => Some(Source::Zero),
            Cluster::Data(host) => Some(Source::Data {
                file: self.data_file(),
                offset: host + within,
            }),
            Cluster::Compressed { .. } if self.data_file.is_some() => {
                return Err(Error::corrupt(format!(
                    "qcow2 L2 entry for guest offset {cluster_start:#x} is compressed, which \
                     an image with an external data file cannot be"
                ))
                .with_path(self.file.path()))
            }
            Cluster::Compressed { offset, stored_len } => {
                Some(Source::Compressed(CompressedCluster::new(
                    &self.file,
                    offset,
                    stored_len,
                    self.cluster_size(),
                    within,
                    self.header.codec,
                )?))
            }
        })
    }
}

impl DiskImage for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        check_range(offset, len, self.virtual_size()).in_file(self.file.path())?;
        let end = offset + len;
        let cluster_bits = self.header.cluster_bits;
        let cluster_size = self.cluster_size();
        let l2_shift = cluster_bits + self.header.l2_bits();
        let l2_mask = (1u64 << self.header.l2_bits()) - 1;
        // Fast path, the common request: inside one cluster that this image stores as
        // plain data. The extent is built in place: going through `piece_source`'s
        // `Result<Option<Source>>` cost a store-forwarding stall on every lookup.
        if let Some(Lookup::Data(host)) = self.one_cluster(offset, len)? {
            push(
                out,
                Extent {
                    len,
                    depth: 0,
                    source: Source::Data {
                        file: self.data_file(),
                        offset: host,
                    },
                },
            );
            return Ok(());
        }
        // Start of a run this image leaves unallocated, mapped once the run ends.
        let mut hole: Option<u64> = None;
        let mut pos = offset;
        while pos < end {
            let l1_index = pos >> l2_shift;
            let table_end = end.min((l1_index + 1) << l2_shift);
            let Some(table) = self.l2_table(l1_index as usize)? else {
                hole.get_or_insert(pos);
                pos = table_end;
                continue;
            };
            while pos < table_end {
                let cluster_start = pos & !(cluster_size - 1);
                let chunk_end = table_end.min(cluster_start + cluster_size);
                let l2_index = ((pos >> cluster_bits) & l2_mask) as usize;
                let (source, run_end) =
                    self.piece_source(&table, l2_index, cluster_start, pos, chunk_end)?;
                match source {
                    None => {
                        hole.get_or_insert(pos);
                    }
                    Some(source) => {
                        if let Some(start) = hole.take() {
                            self.map_unallocated(start, pos, out)?;
                        }
                        push(
                            out,
                            Extent {
                                len: run_end - pos,
                                depth: 0,
                                source,
                            },
                        );
                    }
                }
                pos = run_end;
            }
        }
        if let Some(start) = hole {
            self.map_unallocated(start, end, out)?;
        }
        Ok(())
    }

    fn data_run(&self, offset: u64, len: u64) -> Result<Option<(&ImageFile, u64)>> {
        match self.one_cluster(offset, len)? {
            Some(Lookup::Data(host)) => Ok(Some((self.data_file(), host))),
            Some(Lookup::Unallocated) => match &self.backing {
                Some(backing) if offset + len <= backing.virtual_size() => {
                    backing.data_run(offset, len)
                }
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    fn chain(&self) -> Vec<ChainEntry> {
        let own = chain::entry(&self.file, Format::Qcow2, self.virtual_size());
        chain::chain_with_parent(own, self.backing.as_deref())
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        self.writer.as_ref().map(|_| self as &dyn ImageWrite)
    }

    fn prefetch_metadata(&self, offset: u64, len: u64, budget: &mut u64) -> Result<()> {
        self.prefetch_tables(offset, len, budget)
    }
}

impl ImageWrite for Qcow2Image {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        self.map_write_impl(offset, len, out)
            .map_err(|e| e.with_path(self.file.path()))
    }

    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_sync_impl(offset, buf)
    }

    fn flush(&self) -> Result<()> {
        self.flush_impl()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.discard_impl(offset, len)
            .map_err(|e| e.with_path(self.file.path()))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if self.writer.is_none() {
            return Err(
                Error::new(ErrorKind::ReadOnly, "qcow2 image is open read-only")
                    .with_path(self.file.path()),
            );
        }
        self.write_zeroes_impl(offset, len)
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        match self.flush_impl() {
            Ok(()) => self.close_journal(),
            Err(e) => {
                tracing::error!(path = %self.file.path().display(), "flushing qcow2 image on close failed: {e}")
            }
        }
    }
}

/// Points `header` at snapshot `wanted` (a name, else an id) of `snapshots`, refusing a
/// writable open: a snapshot is read-only.
fn select_snapshot(
    header: &mut Header,
    snapshots: &[snapshot::Snapshot],
    wanted: &str,
    options: &OpenOptions,
    file: &ImageFile,
) -> Result<()> {
    if options.writable || file.writable() {
        return Err(Error::invalid(format!(
            "snapshot '{wanted}' can only be opened read-only (to write to it, use an \
             overlay: `attach --snapshot {wanted} --overlay memory`)"
        ))
        .with_path(file.path()));
    }
    let Some(found) = snapshot::find(snapshots, wanted) else {
        let known: Vec<String> = snapshots
            .iter()
            .map(|s| format!("'{}' (id {})", s.name, s.id))
            .collect();
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no snapshot named or with id '{wanted}'; the image has {}",
                if known.is_empty() {
                    "no snapshots".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
        .with_path(file.path()));
    };
    snapshot::apply(header, found).map_err(|e| e.with_path(file.path()))
}

/// Reads the L1 entries that cover the virtual size (the header check has made sure the
/// whole table lies inside the file and is of bounded size), a bounded piece at a time, so
/// that the table is in memory once (a 32 MiB table is not read into 32 MiB more first).
fn read_l1(file: &ImageFile, header: &Header) -> Result<Box<[AtomicU64]>> {
    let needed = header.l1_entries_needed() as usize;
    let mut l1 = Vec::with_capacity(needed);
    let mut buf = vec![0u8; 64 << 10];
    while l1.len() < needed {
        let bytes = 8 * (needed - l1.len()).min(buf.len() / 8);
        let piece = &mut buf[..bytes];
        file.read_exact_at(piece, header.l1_table_offset + 8 * l1.len() as u64)?;
        l1.extend(piece.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            AtomicU64::new(u64::from_be_bytes(b))
        }));
    }
    Ok(l1.into_boxed_slice())
}

/// What is left of the chain's `budget` for L1 tables once the one that `header` declares
/// is taken from it; an error if the table does not fit.
fn take_l1_budget(budget: u64, header: &Header) -> Result<u64> {
    let l1_bytes = u64::from(header.l1_size) * 8;
    budget.checked_sub(l1_bytes).ok_or_else(|| {
        Error::unsupported(format!(
            "its L1 table ({} MiB) does not fit in what is left for L1 tables ({} MiB) of the \
             backing chain's memory budget (half of memory-mib in the configuration file, \
             {} MiB by default)",
            l1_bytes >> 20,
            budget >> 20,
            super::open::DEFAULT_MEMORY_BUDGET >> 20
        ))
    })
}

/// Where a backing file name stored in the image at `image` points: relative names are
/// relative to the directory of the image that names them, as in QEMU.
pub fn resolve_backing_path(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_path_buf();
    }
    image
        .parent()
        .map_or_else(|| name.to_path_buf(), |dir| dir.join(name))
}

/// Opens the external data file named in `header` (relative to the image's directory),
/// read-only and locked as the image is; `None` when the image keeps its data itself.
fn open_data_file(
    image: &Path,
    header: &Header,
    options: &OpenOptions,
) -> Result<Option<ImageFile>> {
    let Some(name) = header
        .data_file
        .as_ref()
        .filter(|_| header.has_incompatible(header::INCOMPAT_DATA_FILE))
    else {
        return Ok(None);
    };
    let path = resolve_backing_path(image, name);
    let file = ImageFile::open_named(&path, image, Field::DataFile, options).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "external data file {name:?} not found (tried {})",
                    path.display()
                ),
            )
            .with_path(image)
        } else {
            e
        }
    })?;
    file.lock(options.lock_mode())?;
    Ok(Some(file))
}

/// Opens the backing image named in `header`, read-only, one level deeper.
fn open_backing(
    image: &Path,
    header: &Header,
    options: &OpenOptions,
    depth: u32,
) -> Result<Option<Box<dyn DiskImage>>> {
    let Some(name) = &header.backing_file else {
        return Ok(None);
    };
    let path = resolve_backing_path(image, name);
    let backing_options = OpenOptions {
        format: header.backing_format,
        writable: false,
        snapshot: None,
        ..options.clone()
    };
    open_at_depth(&path, &backing_options, depth + 1)
        .map(Some)
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound && e.path() == Some(path.as_path()) {
                Error::new(
                    ErrorKind::NotFound,
                    format!("backing file {name:?} not found (tried {})", path.display()),
                )
                .with_path(image)
            } else {
                e
            }
        })
}
