//! Memory a driver shares with its IOMMU: stream or context tables,
//! descriptors, queues.
//!
//! A [`DmaRegion`] is a block from the driver's [`TableMemory`] whose
//! double words are read and written with bounds checks, so the rest of
//! the driver stays safe. It holds its memory and gives the block back
//! when dropped, which is what keeps `TableMemory`'s promise (the block is
//! live) for every access.

use alloc::sync::Arc;
use iommu_pgtable::TableMemory;
use iommu_types::{Errno, PhysAddr};

/// A block of DMA-able memory of `words` double words.
pub struct DmaRegion<M: TableMemory> {
    mem: Arc<M>,
    pa: PhysAddr,
    words: usize,
}

impl<M: TableMemory> core::fmt::Debug for DmaRegion<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DmaRegion({}, {} bytes)", self.pa, self.words * 8)
    }
}

impl<M: TableMemory> DmaRegion<M> {
    /// A zeroed block of `bytes` (rounded up to a power of two, at least
    /// 64), aligned to its size.
    pub fn alloc(mem: &Arc<M>, bytes: usize) -> Result<Self, Errno> {
        let bytes = bytes
            .max(64)
            .checked_next_power_of_two()
            .ok_or(Errno::ENOMEM)?;
        let pa = mem.alloc_table(bytes).ok_or(Errno::ENOMEM)?;
        Ok(DmaRegion {
            mem: mem.clone(),
            pa,
            words: bytes / 8,
        })
    }

    /// Its physical address, as the IOMMU is told.
    pub fn pa(&self) -> PhysAddr {
        self.pa
    }

    /// Double word `word`.
    ///
    /// # Panics
    /// If `word` is outside the region (a driver bug, never input).
    #[inline]
    pub fn read(&self, word: usize) -> u64 {
        assert!(word < self.words, "DMA region read out of bounds");
        // SAFETY: the block was allocated from `self.mem` and is freed only
        // by `drop`; `word` is in bounds.
        unsafe { self.mem.load(self.pa, word) }
    }

    /// Writes double word `word`.
    ///
    /// # Panics
    /// As [`read`](Self::read).
    #[inline]
    pub fn write(&self, word: usize, value: u64) {
        assert!(word < self.words, "DMA region write out of bounds");
        // SAFETY: as in `read`.
        unsafe { self.mem.store(self.pa, word, value) }
    }
}

impl<M: TableMemory> Drop for DmaRegion<M> {
    fn drop(&mut self) {
        // SAFETY: allocated from `self.mem` with this size; freed once.
        unsafe { self.mem.free_table(self.pa, self.words * 8) }
    }
}

/// One domain's share of the driver's memory: its page-table pages are
/// counted (and bounded) on their own, while living in the same DMA-able
/// memory as everything else the IOMMU reads.
pub struct DomainMemory<M: TableMemory> {
    mem: Arc<M>,
    live: core::sync::atomic::AtomicUsize,
    limit: usize,
}

impl<M: TableMemory> DomainMemory<M> {
    /// A share of `mem` holding at most `limit` table pages (`None`: as
    /// many as `mem` gives).
    pub fn new(mem: Arc<M>, limit: Option<usize>) -> Self {
        DomainMemory {
            mem,
            live: core::sync::atomic::AtomicUsize::new(0),
            limit: limit.unwrap_or(usize::MAX),
        }
    }
}

/// Every call is forwarded to the underlying memory with the caller's own
/// promises; only the page count is added here.
impl<M: TableMemory> TableMemory for DomainMemory<M> {
    fn alloc_table(&self, bytes: usize) -> Option<PhysAddr> {
        use core::sync::atomic::Ordering;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        let t = self.mem.alloc_table(bytes);
        if t.is_none() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        t
    }

    unsafe fn free_table(&self, table: PhysAddr, bytes: usize) {
        self.live.fetch_sub(1, core::sync::atomic::Ordering::AcqRel);
        // SAFETY: the caller's promise, passed on.
        unsafe { self.mem.free_table(table, bytes) }
    }

    #[inline]
    unsafe fn load(&self, table: PhysAddr, index: usize) -> u64 {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.mem.load(table, index) }
    }

    #[inline]
    unsafe fn store(&self, table: PhysAddr, index: usize, value: u64) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.mem.store(table, index, value) }
    }

    #[inline]
    unsafe fn compare_exchange(
        &self,
        table: PhysAddr,
        index: usize,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.mem.compare_exchange(table, index, current, new) }
    }

    fn table_pages(&self) -> usize {
        self.live.load(core::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_pgtable::HeapMemory;

    #[test]
    fn a_region_reads_back_what_was_written_and_frees_itself() {
        let mem = Arc::new(HeapMemory::new());
        {
            let r = DmaRegion::alloc(&mem, 100).unwrap();
            assert_eq!(r.pa().raw() % 128, 0, "rounded up to 128 bytes and aligned");
            assert_eq!(r.read(15), 0, "zeroed");
            r.write(15, 0xdead_beef);
            assert_eq!(r.read(15), 0xdead_beef);
            assert_eq!(mem.table_pages(), 1);
        }
        assert_eq!(mem.table_pages(), 0);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_region_refuses_a_word_past_its_end() {
        let mem = Arc::new(HeapMemory::new());
        let r = DmaRegion::alloc(&mem, 64).unwrap();
        r.write(8, 1);
    }

    #[test]
    fn a_domain_counts_and_bounds_its_own_pages_in_shared_memory() {
        let mem = Arc::new(HeapMemory::new());
        let _other = DmaRegion::alloc(&mem, 64).unwrap();
        let d = DomainMemory::new(mem.clone(), Some(2));
        let a = d.alloc_table(4096).unwrap();
        let b = d.alloc_table(4096).unwrap();
        assert_eq!(d.alloc_table(4096), None, "over its budget");
        assert_eq!((d.table_pages(), mem.table_pages()), (2, 3));
        // SAFETY: `a` is a live 4 KiB table of this memory; index 5 is in it.
        unsafe {
            d.store(a, 5, 0x1234);
            assert_eq!(d.load(a, 5), 0x1234);
            assert_eq!(d.compare_exchange(a, 5, 0x1234, 7), Ok(0x1234));
            d.free_table(a, 4096);
            d.free_table(b, 4096);
        }
        assert_eq!((d.table_pages(), mem.table_pages()), (0, 1));
    }

    #[test]
    fn exhausted_memory_is_enomem() {
        let mem = Arc::new(HeapMemory::with_limit(0));
        assert_eq!(DmaRegion::alloc(&mem, 64).err(), Some(Errno::ENOMEM));
    }
}
