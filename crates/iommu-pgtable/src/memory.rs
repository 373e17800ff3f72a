//! Where table pages live.
//!
//! The walker never holds a pointer: it names tables by physical address and
//! reads or writes one descriptor at a time through [`TableMemory`]. That is
//! what lets the same code build tables in simulated guest memory, where an
//! emulated IOMMU later walks exactly the bytes written.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use iommu_types::PhysAddr;

/// Storage for table pages, addressed by physical address.
pub trait TableMemory {
    /// Allocates a zeroed table of `entries` 64-bit descriptors and returns its
    /// physical address, or `None` when memory is exhausted.
    fn alloc_table(&mut self, entries: usize) -> Option<PhysAddr>;
    /// Frees a table returned by `alloc_table`.
    fn free_table(&mut self, table: PhysAddr);
    /// Reads descriptor `index` of `table`. An address that is not a live table reads as 0.
    fn read(&self, table: PhysAddr, index: usize) -> u64;
    /// Writes descriptor `index` of `table`. Writes outside a live table are ignored.
    fn write(&mut self, table: PhysAddr, index: usize, value: u64);
    /// Live table pages, so tests can prove nothing leaks.
    fn table_pages(&self) -> usize;
}

/// Table pages on the host heap, for software-only use and benchmarks.
///
/// Tables are slots in a vector; a slot's "physical address" is
/// `(slot + 1) << 16`, aligned for any granule up to 64 KiB and never zero.
#[derive(Debug, Default)]
pub struct HeapMemory {
    slots: Vec<Option<Box<[u64]>>>,
    free: Vec<usize>,
    live: usize,
    /// Mirror of `live` that outlives the memory, so a test can see a drop free everything.
    live_shared: Arc<AtomicUsize>,
    limit: Option<usize>,
}

const SLOT_SHIFT: u32 = 16;

impl HeapMemory {
    /// Unlimited heap-backed table memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Table memory that refuses to hold more than `max_tables` pages at once,
    /// for exercising `ENOMEM` paths.
    pub fn with_limit(max_tables: usize) -> Self {
        Self {
            limit: Some(max_tables),
            ..Self::default()
        }
    }

    /// A counter of live table pages that stays readable after this memory
    /// (and the table owning it) is dropped.
    pub fn live_pages_handle(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.live_shared)
    }

    /// Changes the page limit (`None` = unlimited); existing pages stay.
    pub fn set_limit(&mut self, max_tables: Option<usize>) {
        self.limit = max_tables;
    }

    #[inline]
    fn slot_of(table: PhysAddr) -> Option<usize> {
        let raw = table.raw();
        if raw & ((1 << SLOT_SHIFT) - 1) != 0 {
            return None;
        }
        ((raw >> SLOT_SHIFT) as usize).checked_sub(1)
    }
}

impl TableMemory for HeapMemory {
    fn alloc_table(&mut self, entries: usize) -> Option<PhysAddr> {
        if self.limit.is_some_and(|l| self.live >= l) {
            return None;
        }
        let page = vec![0u64; entries].into_boxed_slice();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(page);
                s
            }
            None => {
                self.slots.push(Some(page));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        self.live_shared.store(self.live, Ordering::Relaxed);
        Some(PhysAddr::new(((slot as u64) + 1) << SLOT_SHIFT))
    }

    fn free_table(&mut self, table: PhysAddr) {
        if let Some(slot) = Self::slot_of(table) {
            if let Some(entry) = self.slots.get_mut(slot) {
                if entry.take().is_some() {
                    self.free.push(slot);
                    self.live -= 1;
                    self.live_shared.store(self.live, Ordering::Relaxed);
                }
            }
        }
    }

    #[inline]
    fn read(&self, table: PhysAddr, index: usize) -> u64 {
        Self::slot_of(table)
            .and_then(|s| self.slots.get(s))
            .and_then(|p| p.as_ref())
            .and_then(|p| p.get(index))
            .copied()
            .unwrap_or(0)
    }

    #[inline]
    fn write(&mut self, table: PhysAddr, index: usize, value: u64) {
        if let Some(d) = Self::slot_of(table)
            .and_then(|s| self.slots.get_mut(s))
            .and_then(|p| p.as_mut())
            .and_then(|p| p.get_mut(index))
        {
            *d = value;
        }
    }

    fn table_pages(&self) -> usize {
        self.live
    }
}
