//! The bounded, lock-free-on-hit cache of L2 tables: the hot path of every qcow2 lookup.
//!
//! There is one slot per L1 entry, allocated lazily a chunk of [`CHUNK`] slots at a time
//! when a table in it is first cached: an image may declare millions of L1 entries in a
//! small file, and the cache's memory must follow the tables it holds, not that claim.
//!
//! When the capacity covers every slot (by default, images up to 128 GiB with 64 KiB
//! clusters) nothing is ever evicted, and a slot is a [`OnceLock`]: a lookup of a resident
//! table is two acquire loads (chunk, slot), and the returned [`L2Ref`] a plain borrow. This
//! is the lookup hot path; an `arc_swap` guard cost two serializing atomic operations per
//! lookup, most of its time.
//!
//! A bounded cache keeps an [`ArcSwapOption`] per slot instead: a lookup is an atomic
//! load (no mutex, no reference-count traffic: the [`L2Ref`] is an `arc_swap` guard). In
//! both modes a miss loads the table outside any lock and installs it atomically; when
//! two threads miss on the same table at once the loser uses the winner's copy.
//!
//! A bounded cache holds at most `capacity` tables. Going over it triggers a clock sweep (second
//! chance on a per-slot `referenced` bit) under a small mutex that only evictors take; a
//! thread that finds the sweep busy just returns. Evicting swaps the slot back to empty;
//! readers still holding the old table keep it alive until they drop their guard.

use arc_swap::{ArcSwapOption, Guard};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use crate::error::{Error, Result};

/// One L2 table, its entries decoded to host byte order.
///
/// Entries are atomics so that a future write path can update a cached table in place
/// while readers look at it.
#[derive(Debug)]
pub struct L2Table {
    entries: Vec<AtomicU64>,
}

/// What an [`L2Ref`] shows should its guard ever be empty (it never is): no entries.
static EMPTY: L2Table = L2Table {
    entries: Vec::new(),
};

impl L2Table {
    /// Decodes a table from its on-disk bytes (big-endian `u64`s; a trailing partial
    /// entry is ignored).
    pub fn from_be_bytes(bytes: &[u8]) -> L2Table {
        let entries = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                AtomicU64::new(u64::from_be_bytes(b))
            })
            .collect();
        L2Table { entries }
    }

    /// Replaces every entry by `rewrite` of it, before the table is shared; returns how
    /// many entries changed.
    pub fn rewrite_entries(&mut self, rewrite: impl Fn(u64) -> u64) -> usize {
        let mut changed = 0;
        for entry in &mut self.entries {
            let raw = entry.get_mut();
            let new = rewrite(*raw);
            if new != *raw {
                *raw = new;
                changed += 1;
            }
        }
        changed
    }

    /// The raw entry at `index`, or `None` past the end of the table.
    pub fn get(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|e| e.load(Ordering::Acquire))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a table without entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, for a write path that updates them in place.
    pub fn entries(&self) -> &[AtomicU64] {
        &self.entries
    }
}

/// A borrowed, resident L2 table; it stays valid even if the cache evicts it meanwhile.
pub enum L2Ref<'a> {
    /// A table of a cache that never evicts.
    Pinned(&'a L2Table),
    /// A table of a bounded cache, kept alive by the guard.
    Guarded(Guard<Option<Arc<L2Table>>>),
}

impl Deref for L2Ref<'_> {
    type Target = L2Table;

    fn deref(&self) -> &L2Table {
        match self {
            L2Ref::Pinned(table) => table,
            L2Ref::Guarded(guard) => guard.as_deref().unwrap_or(&EMPTY),
        }
    }
}

/// Slots allocated together: the unit of the cache's lazy allocation (256 slots of some
/// 56 bytes each, so an unused chunk costs nothing and a used one 14 KiB).
const CHUNK: usize = 1 << CHUNK_BITS;
/// log2 of [`CHUNK`].
const CHUNK_BITS: u32 = 8;

/// One cache slot per L1 entry.
#[derive(Default)]
struct Slot {
    /// The table, in a cache that never evicts.
    pinned: OnceLock<L2Table>,
    /// The table, in a bounded cache.
    table: ArcSwapOption<L2Table>,
    /// Set on every hit, cleared by the clock hand: the table's second chance.
    referenced: AtomicBool,
}

/// A cache of L2 tables indexed by L1 index, bounded to a number of resident tables.
pub struct L2Cache {
    /// The slots, [`CHUNK`] to a chunk, each chunk allocated when first needed.
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    /// How many L1 entries (slots) the cache covers.
    slots: usize,
    capacity: usize,
    /// Whether `capacity` covers every slot, so tables live in `Slot::pinned`.
    pinned: bool,
    /// Tables resident or about to be (a loader counts itself before installing), so never
    /// less than the number of full slots.
    resident: AtomicUsize,
    /// The clock hand; held only while sweeping.
    hand: Mutex<usize>,
}

impl L2Cache {
    /// A cache for `slots` L1 entries keeping at most `capacity` tables (at least one).
    pub fn new(slots: usize, capacity: usize) -> L2Cache {
        let capacity = capacity.max(1);
        L2Cache {
            chunks: (0..slots.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
            slots,
            capacity,
            pinned: capacity >= slots,
            resident: AtomicUsize::new(0),
            hand: Mutex::new(0),
        }
    }

    /// Most tables kept resident.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tables resident now (approximate while loads and evictions are under way).
    pub fn resident(&self) -> usize {
        self.resident.load(Ordering::SeqCst)
    }

    /// Whether the table of L1 entry `index` is resident.
    pub fn is_cached(&self, index: usize) -> bool {
        self.existing_slot(index)
            .is_some_and(|s| s.pinned.get().is_some() || s.table.load().is_some())
    }

    /// The table of L1 entry `index`: from the cache without locking, or loaded by `load`
    /// and installed (evicting others if the cache is full).
    #[inline]
    pub fn get(&self, index: usize, load: impl FnOnce() -> Result<L2Table>) -> Result<L2Ref<'_>> {
        if let Some(table) = self.pinned_table(index) {
            return Ok(L2Ref::Pinned(table));
        }
        self.get_slow(index, load)
    }

    /// The table of L1 entry `index` if this cache never evicts and holds it: the lookup
    /// hot path, a plain borrow. (A cache holds a table only for an L1 entry that points
    /// at it, or, while the write path creates it, is about to.)
    #[inline(always)]
    pub fn pinned_table(&self, index: usize) -> Option<&L2Table> {
        if !self.pinned {
            return None;
        }
        self.existing_slot(index)?.pinned.get()
    }

    /// The slot of L1 entry `index` if its chunk is allocated.
    #[inline(always)]
    fn existing_slot(&self, index: usize) -> Option<&Slot> {
        self.chunks
            .get(index >> CHUNK_BITS)?
            .get()?
            .get(index & (CHUNK - 1))
    }

    /// [`get`](Self::get) for a bounded cache, or a miss: kept out of line so that the
    /// pinned hit inlines into the lookup.
    #[inline(never)]
    fn get_slow(&self, index: usize, load: impl FnOnce() -> Result<L2Table>) -> Result<L2Ref<'_>> {
        let slot = self.slot(index)?;
        if self.pinned {
            let table = load()?;
            if slot.pinned.set(table).is_ok() {
                self.resident.fetch_add(1, Ordering::SeqCst);
            }
            // Ours, or the copy of a thread that installed it first.
            return Ok(L2Ref::Pinned(slot.pinned.get().unwrap_or(&EMPTY)));
        }
        let cached = slot.table.load();
        if cached.is_some() {
            if !slot.referenced.load(Ordering::Relaxed) {
                slot.referenced.store(true, Ordering::Relaxed);
            }
            return Ok(L2Ref::Guarded(cached));
        }
        drop(cached);
        let table = Arc::new(load()?);
        self.resident.fetch_add(1, Ordering::SeqCst);
        let previous = slot
            .table
            .compare_and_swap(&None::<Arc<L2Table>>, Some(Arc::clone(&table)));
        if previous.is_some() {
            // Another thread installed it first: use that copy, and forget ours.
            self.resident.fetch_sub(1, Ordering::SeqCst);
            return Ok(L2Ref::Guarded(previous));
        }
        drop(previous);
        slot.referenced.store(true, Ordering::Relaxed);
        self.evict_over_capacity();
        Ok(L2Ref::Guarded(Guard::from_inner(Some(table))))
    }

    /// The slot of L1 entry `index`, allocating its chunk if need be.
    fn slot(&self, index: usize) -> Result<&Slot> {
        let outside = || Error::invalid(format!("L1 index {index} outside the L2 cache"));
        if index >= self.slots {
            return Err(outside());
        }
        let chunk = self.chunks.get(index >> CHUNK_BITS).ok_or_else(outside)?;
        chunk
            .get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect())
            .get(index & (CHUNK - 1))
            .ok_or_else(outside)
    }

    /// Installs a freshly created `table` for L1 entry `index`, whose slot must be empty
    /// (the write path does this before publishing the L1 entry).
    pub fn install(&self, index: usize, table: L2Table) -> Result<()> {
        let slot = self.slot(index)?;
        let already = || {
            Error::invalid(format!(
                "L2 table {index} is already cached; cannot install a new one"
            ))
        };
        if self.pinned {
            slot.pinned.set(table).map_err(|_| already())?;
            self.resident.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        self.resident.fetch_add(1, Ordering::SeqCst);
        let previous = slot
            .table
            .compare_and_swap(&None::<Arc<L2Table>>, Some(Arc::new(table)));
        if previous.is_some() {
            self.resident.fetch_sub(1, Ordering::SeqCst);
            return Err(already());
        }
        drop(previous);
        slot.referenced.store(true, Ordering::Relaxed);
        self.evict_over_capacity();
        Ok(())
    }

    /// Sweeps the clock until no more than `capacity` tables are resident. Returns at
    /// once if another thread is sweeping; that thread looks again once it is done, so
    /// tables installed meanwhile are accounted for.
    fn evict_over_capacity(&self) {
        for _ in 0..4 {
            if self.resident() <= self.capacity {
                return;
            }
            let mut hand = match self.hand.try_lock() {
                Ok(hand) => hand,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.sweep(&mut hand);
        }
    }

    /// One sweep of the clock hand: two turns honouring second chances, then a third that
    /// evicts regardless, so tables hit all the time by other threads cannot stall it.
    /// The hand skips a chunk never allocated in one step (it holds no table).
    fn sweep(&self, hand: &mut usize) {
        let n = self.slots.max(1);
        for step in 0..3 * n {
            if self.resident() <= self.capacity {
                return;
            }
            let i = *hand % n;
            let Some(slot) = self.existing_slot(i) else {
                *hand = ((i | (CHUNK - 1)) + 1) % n;
                continue;
            };
            *hand = (i + 1) % n;
            let referenced = slot.referenced.swap(false, Ordering::Relaxed);
            if referenced && step < 2 * n {
                continue;
            }
            if slot.table.swap(None).is_some() {
                self.resident.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(fill: u64) -> L2Table {
        let bytes: Vec<u8> = (0..4u64).flat_map(|i| (fill + i).to_be_bytes()).collect();
        L2Table::from_be_bytes(&bytes)
    }

    #[test]
    fn decodes_big_endian_entries() {
        let t = table(0x0102_0304_0506_0708);
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(1), Some(0x0102_0304_0506_0709));
        assert_eq!(t.get(4), None);
    }

    #[test]
    fn hit_does_not_reload() {
        let cache = L2Cache::new(4, 4);
        assert_eq!(cache.get(2, || Ok(table(10))).unwrap().get(0), Some(10));
        let again = cache.get(2, || panic!("cached table reloaded")).unwrap();
        assert_eq!(again.get(3), Some(13));
        assert_eq!(cache.resident(), 1);
    }

    #[test]
    fn load_error_leaves_slot_empty() {
        let cache = L2Cache::new(2, 2);
        assert!(cache.get(0, || Err(Error::corrupt("boom"))).is_err());
        assert!(!cache.is_cached(0));
        assert_eq!(cache.resident(), 0);
        assert!(
            cache.get(5, || Ok(table(0))).is_err(),
            "index past the slots accepted"
        );
    }

    #[test]
    fn stays_within_capacity_and_gives_second_chances() {
        let cache = L2Cache::new(8, 2);
        let held = cache.get(0, || Ok(table(0))).unwrap();
        cache.get(1, || Ok(table(100))).unwrap();
        cache.get(2, || Ok(table(200))).unwrap();
        assert_eq!(cache.resident(), 2);
        // The evicted table stays readable through the reference held on it.
        assert_eq!(held.get(0), Some(0));
        for i in 0..8 {
            cache.get(i, || Ok(table(i as u64))).unwrap();
            assert!(
                cache.resident() <= 2,
                "resident {} after loading {i}",
                cache.resident()
            );
        }
        assert!(cache.is_cached(7), "the table just loaded was evicted");
    }

    #[test]
    fn evicts_across_sparse_chunks() {
        // Millions of L1 entries, tables cached far apart: the sweep finds them.
        let cache = L2Cache::new(4 << 20, 2);
        for (n, i) in [5usize, 3 << 20, 1000, (4 << 20) - 1]
            .into_iter()
            .enumerate()
        {
            cache.get(i, || Ok(table(i as u64))).unwrap();
            assert!(
                cache.resident() <= 2,
                "resident {} after {n} loads",
                cache.resident()
            );
        }
        assert!(cache.is_cached((4 << 20) - 1));
        assert!(!cache.is_cached(6), "an index never loaded is cached");
    }

    #[test]
    fn concurrent_readers_see_right_tables() {
        let cache = L2Cache::new(16, 3);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let cache = &cache;
                s.spawn(move || {
                    for round in 0..2000u64 {
                        let i = ((round * 7 + t * 3) % 16) as usize;
                        let got = cache.get(i, || Ok(table(i as u64 * 1000))).unwrap();
                        assert_eq!(got.get(2), Some(i as u64 * 1000 + 2));
                    }
                });
            }
        });
        // Installs racing with the last sweep may overshoot by one table per thread.
        assert!(cache.resident() <= 3 + 4, "resident {}", cache.resident());
    }

    #[test]
    fn pinned_cache_never_evicts_and_rejects_a_second_install() {
        let cache = L2Cache::new(8, 8);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let cache = &cache;
                s.spawn(move || {
                    for round in 0..500u64 {
                        let i = ((round + t) % 8) as usize;
                        let got = cache.get(i, || Ok(table(i as u64 * 10))).unwrap();
                        assert_eq!(got.get(1), Some(i as u64 * 10 + 1));
                    }
                });
            }
        });
        assert_eq!(cache.resident(), 8);
        assert!((0..8).all(|i| cache.is_cached(i)));
        assert!(
            cache.install(3, table(0)).is_err(),
            "replaced a resident table"
        );
        let other = L2Cache::new(2, 2);
        other.install(1, table(7)).unwrap();
        assert_eq!(
            other
                .get(1, || panic!("installed table reloaded"))
                .unwrap()
                .get(0),
            Some(7)
        );
    }
}
