//! Where table pages live.
//!
//! The walker names tables by physical address and touches one 64-bit
//! descriptor at a time, atomically, through [`TableMemory`]. That lets the
//! same walker build tables on the host heap (where a "physical address" is
//! the page's own address, as in a kernel's direct map) or inside simulated
//! guest memory that emulated hardware later walks byte for byte.
//!
//! Descriptor access is `unsafe` to call because the heap backend
//! dereferences the address: the caller promises the table is live and the
//! index in bounds. The walker keeps that promise by construction: it only
//! follows table descriptors it wrote itself, indexes below the level's
//! entry count, and never gives a page back while the table is shared.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use iommu_types::PhysAddr;

/// Storage for table pages, addressed by physical address.
pub trait TableMemory: Send + Sync {
    /// Allocates `bytes` (a power of two, at least 64) of zeroed table memory
    /// aligned to its size; `None` when memory is exhausted.
    fn alloc_table(&self, bytes: usize) -> Option<PhysAddr>;

    /// Frees a table.
    ///
    /// # Safety
    /// `table` was returned by `alloc_table(bytes)` on this memory, is not
    /// freed yet, and is never accessed again.
    unsafe fn free_table(&self, table: PhysAddr, bytes: usize);

    /// Reads descriptor `index` of `table`.
    ///
    /// # Safety
    /// `table` is live (allocated here, not freed) and has more than `index` entries.
    unsafe fn load(&self, table: PhysAddr, index: usize) -> u64;

    /// Writes descriptor `index` of `table`.
    ///
    /// # Safety
    /// As [`load`](Self::load).
    unsafe fn store(&self, table: PhysAddr, index: usize, value: u64);

    /// Replaces descriptor `index` if it still equals `current`; returns the
    /// value found either way (`Ok` when replaced).
    ///
    /// # Safety
    /// As [`load`](Self::load).
    unsafe fn compare_exchange(
        &self,
        table: PhysAddr,
        index: usize,
        current: u64,
        new: u64,
    ) -> Result<u64, u64>;

    /// Table pages (allocations) live now, so tests can prove nothing leaks.
    fn table_pages(&self) -> usize;
}

/// Table pages on the host heap: the fast backend for software-only use.
///
/// A table's physical address is its own address, so a walk is plain pointer
/// chasing, as in a kernel.
#[derive(Debug)]
pub struct HeapMemory {
    live: AtomicUsize,
    /// Most pages that may be live at once (`usize::MAX` = unlimited).
    limit: AtomicUsize,
}

impl Default for HeapMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapMemory {
    /// Unlimited heap-backed table memory.
    pub const fn new() -> Self {
        Self {
            live: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
        }
    }

    /// Table memory that refuses to hold more than `max_tables` pages at once,
    /// for exercising `ENOMEM` paths.
    pub fn with_limit(max_tables: usize) -> Self {
        let m = Self::new();
        m.set_limit(Some(max_tables));
        m
    }

    /// Changes the page limit (`None` = unlimited); existing pages stay.
    pub fn set_limit(&self, max_tables: Option<usize>) {
        self.limit
            .store(max_tables.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    fn layout(bytes: usize) -> Option<Layout> {
        let bytes = bytes.max(64);
        Layout::from_size_align(bytes, bytes).ok()
    }

    #[inline]
    fn slot(table: PhysAddr, index: usize) -> *const AtomicU64 {
        (table.raw() as usize as *const AtomicU64).wrapping_add(index)
    }
}

impl TableMemory for HeapMemory {
    fn alloc_table(&self, bytes: usize) -> Option<PhysAddr> {
        // The layout first: a refused size must not count as a live page.
        let layout = Self::layout(bytes)?;
        let limit = self.limit.load(Ordering::Relaxed);
        if self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            return None;
        }
        // SAFETY: the layout has a non-zero size (at least 64 bytes).
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PhysAddr::new(ptr as usize as u64))
    }

    unsafe fn free_table(&self, table: PhysAddr, bytes: usize) {
        if let Some(layout) = Self::layout(bytes) {
            // SAFETY: the caller guarantees `table` came from `alloc_table(bytes)`,
            // which allocated it with this very layout, and is not used again.
            unsafe { dealloc(table.raw() as usize as *mut u8, layout) };
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
    }

    #[inline]
    unsafe fn load(&self, table: PhysAddr, index: usize) -> u64 {
        // SAFETY: the caller guarantees the table is live and `index` in bounds,
        // so the slot is an initialised, aligned u64 inside our allocation.
        unsafe { (*Self::slot(table, index)).load(Ordering::Acquire) }
    }

    #[inline]
    unsafe fn store(&self, table: PhysAddr, index: usize, value: u64) {
        // SAFETY: as in `load`.
        unsafe { (*Self::slot(table, index)).store(value, Ordering::Release) }
    }

    #[inline]
    unsafe fn compare_exchange(
        &self,
        table: PhysAddr,
        index: usize,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        // SAFETY: as in `load`.
        unsafe {
            (*Self::slot(table, index)).compare_exchange(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
        }
    }

    fn table_pages(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

macro_rules! forward_table_memory {
    ($($ty:ty),*) => {$(
        impl<T: TableMemory + ?Sized> TableMemory for $ty {
            fn alloc_table(&self, bytes: usize) -> Option<PhysAddr> {
                (**self).alloc_table(bytes)
            }
            unsafe fn free_table(&self, table: PhysAddr, bytes: usize) {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { (**self).free_table(table, bytes) }
            }
            #[inline]
            unsafe fn load(&self, table: PhysAddr, index: usize) -> u64 {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { (**self).load(table, index) }
            }
            #[inline]
            unsafe fn store(&self, table: PhysAddr, index: usize, value: u64) {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { (**self).store(table, index, value) }
            }
            #[inline]
            unsafe fn compare_exchange(&self, table: PhysAddr, index: usize, current: u64, new: u64) -> Result<u64, u64> {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { (**self).compare_exchange(table, index, current, new) }
            }
            fn table_pages(&self) -> usize {
                (**self).table_pages()
            }
        }
    )*};
}

// Several tables may share one memory (a driver's page pool), and a test can
// keep the memory to prove a dropped table gave every page back.
forward_table_memory!(&T, alloc::sync::Arc<T>);
