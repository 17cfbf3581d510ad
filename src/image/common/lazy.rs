//! Tables loaded on first use and then read without locks: grain tables, sector bitmaps.
//!
//! Each slot is a [`OnceLock`]. A miss reads the table from the file on the calling thread
//! and publishes it; if two threads race, both read and one copy wins. A hit is one atomic
//! load, which is what the ublk queues' `map` calls need.

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// `len` slots, each holding one lazily loaded table of `T`.
#[derive(Debug)]
pub struct LazyTables<T> {
    slots: Box<[OnceLock<Box<[T]>>]>,
}

impl<T> LazyTables<T> {
    /// `len` empty slots (the caller bounds `len` before calling).
    pub fn new(len: usize) -> Self {
        LazyTables {
            slots: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The table in slot `index`, loading it with `load` on first use.
    #[inline]
    pub fn get_or_load(
        &self,
        index: usize,
        load: impl FnOnce() -> Result<Box<[T]>>,
    ) -> Result<&[T]> {
        let slot = self
            .slots
            .get(index)
            .ok_or_else(|| Error::corrupt(format!("table index {index} is out of range")))?;
        if let Some(table) = slot.get() {
            return Ok(table);
        }
        // Losing a race just drops our copy: both were read from the same bytes.
        let _ = slot.set(load()?);
        slot.get()
            .map(|table| &**table)
            .ok_or_else(|| Error::corrupt("table slot is empty after loading"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn loads_once_and_reports_errors() {
        let tables = LazyTables::<u32>::new(2);
        let loads = AtomicUsize::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::Relaxed);
            Ok(vec![7u32, 8].into_boxed_slice())
        };
        assert_eq!(tables.get_or_load(1, load).unwrap(), &[7, 8]);
        assert_eq!(tables.get_or_load(1, || unreachable!()).unwrap(), &[7, 8]);
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        assert!(tables
            .get_or_load(0, || Err(Error::corrupt("bad table")))
            .is_err());
        assert!(tables.get_or_load(5, || Ok(Box::new([]))).is_err());
    }

    #[test]
    fn concurrent_first_use() {
        let tables = LazyTables::<u64>::new(1);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let t = tables
                        .get_or_load(0, || Ok(vec![42u64; 4].into_boxed_slice()))
                        .unwrap();
                    assert_eq!(t, &[42; 4]);
                });
            }
        });
    }
}
