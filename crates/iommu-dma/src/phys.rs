//! Physical memory for coherent buffers.

use iommu_core::PhysAddr;
use iommu_iova::{IovaDomain, SingleCpu};

/// Where coherent buffers come from (the page allocator of the kernel or
/// VMM embedding the DMA layer). Memory handed out should be zeroed, as
/// `dma_alloc_coherent` promises.
pub trait PageAllocator: Send + Sync {
    /// `size` bytes (a multiple of 4 KiB) of physically contiguous memory.
    fn alloc_pages(&self, size: u64) -> Option<PhysAddr>;
    /// Returns what `alloc_pages` gave.
    fn free_pages(&self, paddr: PhysAddr, size: u64);
}

/// A simple contiguous-page allocator over one physical window, for
/// simulated platforms and tests.
#[derive(Debug)]
pub struct PhysPool {
    pages: IovaDomain<SingleCpu>,
    end_pfn: u64,
}

impl PhysPool {
    /// A pool of the 4 KiB pages in `[base, base + size)`.
    ///
    /// # Panics
    /// If the window is empty or wraps.
    pub fn new(base: PhysAddr, size: u64) -> Self {
        let start_pfn = base.raw().div_ceil(0x1000);
        let end = base.raw().checked_add(size).expect("window wraps");
        let end_pfn = (end >> 12).checked_sub(1).expect("empty window");
        assert!(end_pfn >= start_pfn, "empty window");
        let pages = IovaDomain::new(0x1000, start_pfn, SingleCpu).expect("4 KiB granule");
        Self { pages, end_pfn }
    }

    /// Pages currently handed out.
    pub fn pages_in_use(&self) -> u64 {
        self.pages.ranges().iter().map(|(r, _)| r.size()).sum()
    }
}

impl PageAllocator for PhysPool {
    fn alloc_pages(&self, size: u64) -> Option<PhysAddr> {
        let pfn = self
            .pages
            .alloc(size.div_ceil(0x1000), self.end_pfn, false)
            .ok()?;
        Some(PhysAddr::new(pfn << 12))
    }

    fn free_pages(&self, paddr: PhysAddr, _size: u64) {
        let _ = self.pages.free(paddr.raw() >> 12);
    }
}
