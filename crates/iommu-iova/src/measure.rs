//! The workloads the IOVA benchmarks time, shared by the criterion bench and
//! `iommu bench dma` so both report the same thing. The caller supplies the
//! clock (the crate is `no_std`).

use crate::{CpuId, IovaDomain};
use core::time::Duration;

/// A monotonic clock: returns time since an arbitrary origin.
pub type Clock<'a> = &'a dyn Fn() -> Duration;

/// A 32-bit limit, as a device with a 32-bit DMA mask asks for.
fn limit32<C: CpuId>(iovad: &IovaDomain<C>) -> u64 {
    iovad.dma_32bit_pfn() - 1
}

/// `iters` rounds of a one-granule `alloc_fast` + `free_fast` that the
/// calling CPU's cache serves (it is primed first).
pub fn cache_hit<C: CpuId>(iovad: &IovaDomain<C>, iters: u64, now: Clock<'_>) -> Duration {
    let limit = limit32(iovad);
    if let Ok(p) = iovad.alloc_fast(1, limit, true) {
        let _ = iovad.free_fast(p, 1);
    }
    let t0 = now();
    for _ in 0..iters {
        if let Ok(p) = iovad.alloc_fast(1, limit, true) {
            let _ = iovad.free_fast(core::hint::black_box(p), 1);
        }
    }
    now() - t0
}

/// Fills `[limit - 2 * ranges, limit]` with one-granule ranges, then frees
/// every other one: half the space in use, every hole one granule wide.
pub fn fragment<C: CpuId>(iovad: &IovaDomain<C>, ranges: u64) {
    let limit = limit32(iovad);
    let mut all = alloc::vec::Vec::new();
    for _ in 0..ranges * 2 {
        match iovad.alloc(1, limit, false) {
            Ok(p) => all.push(p),
            Err(_) => break,
        }
    }
    for p in all.into_iter().step_by(2) {
        let _ = iovad.free(p);
    }
}

/// `iters` rounds of a one-granule tree `alloc` + `free` (no caches) in a
/// space [`fragment`] left half used.
pub fn tree_fragmented<C: CpuId>(iovad: &IovaDomain<C>, iters: u64, now: Clock<'_>) -> Duration {
    let limit = limit32(iovad);
    let t0 = now();
    for _ in 0..iters {
        if let Ok(p) = iovad.alloc(1, limit, true) {
            let _ = iovad.free(core::hint::black_box(p));
        }
    }
    now() - t0
}
