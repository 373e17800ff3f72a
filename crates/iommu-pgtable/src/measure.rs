//! The workloads the page-table benchmarks time, shared by the criterion
//! benches and `iommu bench pgtable` so both report the same thing.
//!
//! Each function performs `iters` operations on `pt` inside a warm 1 GiB
//! window at `base` (its path of tables already exists), timing only the
//! operation named, and returns the elapsed time read from `now`, a clock
//! the caller supplies (the crate has no clock of its own: it is `no_std`).
//! Work that restores the table for the next round (the unmap after a timed
//! map, say) runs between timed batches of at most 512 operations.

use crate::{Format, IoPageTable, TableMemory};
use core::time::Duration;
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};

const PAGE: u64 = 0x1000;
const BLOCK: u64 = 0x20_0000;
const BATCH: u64 = 512;

/// A monotonic clock: returns time since an arbitrary origin.
pub type Clock<'a> = &'a dyn Fn() -> Duration;

fn unmap(
    pt: &IoPageTable<impl Format, impl TableMemory>,
    iova: u64,
    pgsize: u64,
    count: usize,
) -> u64 {
    let mut g = IotlbGather::new();
    let n = pt.unmap_pages(Iova::new(iova), pgsize, count, &mut g);
    pt.release_gathered(&g);
    n
}

/// Whether `pt` can run these workloads: they are defined in 4 KiB pages and
/// 2 MiB blocks, and a format without them would only time refusals.
///
/// # Errors
/// A description of what the format lacks.
pub fn check<F: Format, M: TableMemory>(pt: &IoPageTable<F, M>) -> Result<(), &'static str> {
    let sizes = pt.pgsize_bitmap();
    if sizes & PAGE == 0 || sizes & BLOCK == 0 {
        return Err("the workloads need 4 KiB pages and 2 MiB blocks");
    }
    Ok(())
}

/// Creates the path of tables for `[base, base + 1 GiB)` so later maps are warm.
pub fn warm_up<F: Format, M: TableMemory>(pt: &IoPageTable<F, M>, base: u64) {
    for i in 0..BATCH {
        let iova = base + i * BLOCK;
        if pt
            .map_pages(Iova::new(iova), PhysAddr::new(0), PAGE, 1, Prot::RW)
            .is_ok()
        {
            unmap(pt, iova, PAGE, 1);
        }
    }
}

/// Runs `iters` operations as batches of at most [`BATCH`]; `batch(n)`
/// performs `n` of them and returns the time of the timed part.
fn in_batches(iters: u64, mut batch: impl FnMut(u64) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        total += batch(n);
        left -= n;
    }
    total
}

/// Maps one 4 KiB page per operation.
pub fn map_4k<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    in_batches(iters, |n| {
        let t0 = now();
        for i in 0..n {
            let _ = pt.map_pages(
                Iova::new(base + i * PAGE),
                PhysAddr::new(i * PAGE),
                PAGE,
                1,
                Prot::RW,
            );
        }
        let t = now() - t0;
        unmap(pt, base, PAGE, n as usize);
        t
    })
}

/// Unmaps one 4 KiB page per operation.
pub fn unmap_4k<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    in_batches(iters, |n| {
        let _ = pt.map_pages(
            Iova::new(base),
            PhysAddr::new(0),
            PAGE,
            n as usize,
            Prot::RW,
        );
        let t0 = now();
        for i in 0..n {
            let mut g = IotlbGather::new();
            pt.unmap_pages(Iova::new(base + i * PAGE), PAGE, 1, &mut g);
            core::hint::black_box(&g);
        }
        now() - t0
    })
}

/// Maps 256 contiguous 4 KiB pages with one `map_pages` call per operation.
pub fn map_256<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let iova = base + (i % 2) * 256 * PAGE;
        let t0 = now();
        let _ = pt.map_pages(Iova::new(iova), PhysAddr::new(0), PAGE, 256, Prot::RW);
        total += now() - t0;
        unmap(pt, iova, PAGE, 256);
    }
    total
}

/// Unmaps 256 contiguous 4 KiB pages with one `unmap_pages` call per operation.
pub fn unmap_256<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let _ = pt.map_pages(Iova::new(base), PhysAddr::new(0), PAGE, 256, Prot::RW);
        let mut g = IotlbGather::new();
        let t0 = now();
        pt.unmap_pages(Iova::new(base), PAGE, 256, &mut g);
        total += now() - t0;
        core::hint::black_box(&g);
    }
    total
}

/// Translates a mapped address per operation.
pub fn iova_to_phys<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    let _ = pt.map_pages(
        Iova::new(base),
        PhysAddr::new(0x1000_0000),
        PAGE,
        64,
        Prot::RW,
    );
    let t0 = now();
    for i in 0..iters {
        core::hint::black_box(pt.iova_to_phys(Iova::new(base + ((i & 63) << 12) + 0x10)));
    }
    let t = now() - t0;
    unmap(pt, base, PAGE, 64);
    t
}

/// Maps 1 GiB as 512 blocks of 2 MiB per operation (`base` 1 GiB aligned).
pub fn map_1g_as_2m<F: Format, M: TableMemory>(
    pt: &IoPageTable<F, M>,
    base: u64,
    iters: u64,
    now: Clock<'_>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut done = 0u64;
        let t0 = now();
        while done < BATCH * BLOCK {
            match pt.map_pages(
                Iova::new(base + done),
                PhysAddr::new(done),
                BLOCK,
                (BATCH - done / BLOCK) as usize,
                Prot::RW,
            ) {
                Ok(n) => done += n,
                Err(_) => break,
            }
        }
        total += now() - t0;
        let mut off = 0;
        while off < done {
            let n = unmap(pt, base + off, BLOCK, ((done - off) / BLOCK) as usize);
            if n == 0 {
                break;
            }
            off += n;
        }
    }
    total
}

/// Table bytes per mapped 4 KiB page when `[base, base + 1 GiB)` is mapped
/// densely with 4 KiB pages (the table memory's overhead), measured on a
/// fresh table of `fmt`.
pub fn table_bytes_per_4k_page<F: Format, M: TableMemory>(
    fmt: F,
    mem: M,
    base: u64,
) -> Option<f64> {
    let pt = IoPageTable::new(fmt, mem).ok()?;
    let before = pt.table_pages();
    let mut done = 0u64;
    while done < BATCH * BLOCK {
        done += pt
            .map_pages(
                Iova::new(base + done),
                PhysAddr::new(done),
                PAGE,
                512,
                Prot::RW,
            )
            .ok()?;
    }
    let bytes = (pt.table_pages() - before) as f64 * pt.geometry().table_bytes(1) as f64;
    Some(bytes / (done / PAGE) as f64)
}

/// Table pages a fresh table of `fmt` holds after `rounds` rounds of "map
/// 4 KiB at `base`, unmap it, map a 2 MiB block there, unmap it", each
/// unmap followed by its sync: what a block replacing an emptied table
/// costs in table memory over time (it must not grow with the rounds).
/// `None` when the format lacks the two sizes.
pub fn table_pages_after_rounds<F: Format, M: TableMemory>(
    fmt: F,
    mem: M,
    base: u64,
    rounds: u64,
) -> Option<usize> {
    let pt = IoPageTable::new(fmt, mem).ok()?;
    check(&pt).ok()?;
    for _ in 0..rounds {
        pt.map_pages(Iova::new(base), PhysAddr::new(0), PAGE, 1, Prot::RW)
            .ok()?;
        unmap(&pt, base, PAGE, 1);
        pt.map_pages(Iova::new(base), PhysAddr::new(0), BLOCK, 1, Prot::RW)
            .ok()?;
        unmap(&pt, base, BLOCK, 1);
    }
    Some(pt.table_pages())
}
