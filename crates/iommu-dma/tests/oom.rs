//! Running out of host memory on the table path is `ENOMEM`, not an abort.
//!
//! This test binary has a global allocator that refuses allocations once a
//! test arms it, so the page tables really do meet a full heap mid-map and
//! the rollback that follows runs with no memory to spare.

mod common;

use iommu_core::{Errno, Iova, PhysAddr};
use iommu_dma::{DmaDirection as Dir, DmaError, DmaOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator, with a switch that makes every allocation above a
/// byte budget fail.
struct Refusing {
    live: AtomicUsize,
    budget: AtomicUsize,
    armed: AtomicBool,
    refused: AtomicUsize,
}

// SAFETY: forwards to the system allocator; refusing is returning null,
// which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.armed.load(Ordering::Relaxed)
            && self.live.load(Ordering::Relaxed) + layout.size()
                > self.budget.load(Ordering::Relaxed)
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.live.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static HEAP: Refusing = Refusing {
    live: AtomicUsize::new(0),
    budget: AtomicUsize::new(usize::MAX),
    armed: AtomicBool::new(false),
    refused: AtomicUsize::new(0),
};

#[test]
fn a_map_that_exhausts_host_memory_is_enomem_and_rolls_back_cleanly() {
    // No table budget: only the heap limits the tables.
    let w = common::world_with_budget(1, true, None);
    let dma = w.bind_with(0, DmaOptions::default());
    dma.set_dma_mask(u64::MAX >> 16).unwrap();
    // 64 GiB at a 4 KiB-aligned address needs 4 KiB tables for all of it:
    // 32768 leaf tables, 128 MiB. The heap gets 16 MiB more than now.
    let pa = PhysAddr::new(0x10_0000_1000);
    let size = 64u64 << 30;
    HEAP.budget.store(
        HEAP.live.load(Ordering::Relaxed) + (16 << 20),
        Ordering::Relaxed,
    );
    HEAP.armed.store(true, Ordering::Relaxed);
    let r = dma.map_single(pa, size, Dir::Bidirectional);
    HEAP.armed.store(false, Ordering::Relaxed);
    assert_eq!(r, Err(DmaError::Map(Errno::ENOMEM)));
    // On the SMMUv3 the tables live in simulated memory, which runs out
    // first; the rollback is what is checked either way.
    assert!(
        common::on_smmuv3() || HEAP.refused.load(Ordering::Relaxed) > 0,
        "the heap did run out"
    );
    assert_eq!(dma.live_mappings(), 0);
    assert_eq!(
        dma.domain().first_mapping(Iova::ZERO, Iova::new(u64::MAX)),
        None,
        "nothing of the failed map is left"
    );
    // The device works on.
    let a = dma
        .map_single(PhysAddr::new(0x8000_0000), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
}
