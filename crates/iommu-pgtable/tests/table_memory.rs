//! Table memory stays bounded without maintenance calls: every page that
//! leaves the tree, by unmap or by a block replacing an emptied table,
//! comes back for reuse after the IOTLB sync that covers it.

mod common;

use common::lpae;
use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Stage};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{measure, Format, HeapMemory, IoPageTable, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};

const BASE: u64 = 1 << 30;

/// Unmaps and "syncs": what every caller does after an unmap.
fn unmap(pt: &IoPageTable<impl Format, &HeapMemory>, iova: u64, pgsize: u64, count: usize) -> u64 {
    let mut g = IotlbGather::new();
    let n = pt.unmap_pages(Iova::new(iova), pgsize, count, &mut g);
    pt.release_gathered(&g);
    n
}

#[test]
fn a_block_over_an_emptied_table_does_not_grow_the_table() {
    // Map 4 KiB, unmap it, map a 2 MiB block there, unmap it: the emptied
    // leaf table the block replaced comes back with the block's unmap.
    fn check<F: Format>(fmt: F) {
        let name = fmt.name();
        // Under Miri a few rounds still show growth (one page per round).
        let rounds = if cfg!(miri) { 10 } else { 1000 };
        let pages = measure::table_pages_after_rounds(fmt, HeapMemory::new(), BASE, rounds)
            .expect("4 KiB pages and 2 MiB blocks");
        // Root, the path to the 2 MiB slot, and the one leaf table.
        assert!(
            pages <= 5,
            "{name}: {pages} table pages after {rounds} rounds"
        );
    }
    check(lpae(Stage::S1, Granule::G4K));
    check(AmdV1::new(4).unwrap());
    if !cfg!(miri) {
        check(lpae(Stage::S2, Granule::G4K));
        check(AmdV1::new(3).unwrap());
        check(VtdSl::new(4, 48).unwrap());
        check(Riscv::new(4, RiscvStage::First).unwrap());
        check(X86_64::new(4, 48).unwrap());
    }
}

/// Every leaf size the format has, smallest first.
fn sizes(fmt: &impl Format) -> Vec<u64> {
    let b = fmt.geometry().pgsize_bitmap();
    (0..64).map(|i| 1u64 << i).filter(|s| b & s != 0).collect()
}

/// A long mix of every map and unmap pattern in a window, with the table
/// pages checked against the most the window can need after every step.
fn mixed<F: Format>(fmt: F, reclaim: bool, steps: usize) {
    let name = fmt.name();
    let sz = sizes(&fmt);
    let (page, block) = (sz[0], sz[1.min(sz.len() - 1)]);
    // A window of 8 blocks: room for pages, blocks and runs across tables.
    let window = 8 * block;
    // The most the window can need: a leaf table in each of the 8 block
    // slots, at most two tables per level on the path down (the window may
    // cross a boundary), and what one step has in flight before its sync.
    let levels = fmt.geometry().levels;
    let bound = 8 + 3 * levels;
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(fmt, &mem)
        .unwrap()
        .reclaim_empty_tables(reclaim);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut peak = 0;
    for step in 0..steps {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (x >> 8) % 8;
        let at = BASE + slot * block;
        match x % 7 {
            // Single pages, and a run that crosses into the next leaf table.
            0 => {
                let _ = pt.map_pages(
                    Iova::new(at + (x >> 20) % 8 * page),
                    PhysAddr::new(0),
                    page,
                    1,
                    Prot::RW,
                );
            }
            1 => {
                let start = at + block - 2 * page;
                if start + 4 * page <= BASE + window {
                    let mut off = 0;
                    while off < 4 * page {
                        match pt.map_pages(
                            Iova::new(start + off),
                            PhysAddr::new(off),
                            page,
                            (4 - off / page) as usize,
                            Prot::RW,
                        ) {
                            Ok(n) => off += n,
                            Err(_) => break,
                        }
                    }
                }
            }
            // A block: over an emptied table, or refused over live pages.
            2 => {
                let _ = pt.map_pages(Iova::new(at), PhysAddr::new(0), block, 1, Prot::RW);
            }
            // Unmap one page (which removes a whole block if one is there).
            3 => {
                unmap(&pt, at + (x >> 20) % 8 * page, page, 1);
            }
            // Unmap a block slot as pages, or as a block.
            4 => {
                unmap(&pt, at, page, (block / page) as usize);
            }
            5 => {
                unmap(&pt, at, block, 1);
            }
            // Clear the window the way a domain's unmap walks a range.
            _ => {
                let mut off = 0;
                while off < window {
                    let n = unmap(&pt, BASE + off, page, (block / page) as usize);
                    off += n.max(page);
                }
            }
        }
        let pages = mem.table_pages();
        peak = peak.max(pages);
        assert!(
            pages <= bound,
            "{name} (reclaim {reclaim}): {pages} table pages at step {step}, bound {bound}"
        );
    }
    eprintln!("{name} reclaim={reclaim}: peak {peak} table pages, bound {bound}");
}

#[test]
fn mixed_map_and_unmap_patterns_keep_table_memory_bounded_for_every_format() {
    if cfg!(miri) {
        // Briefly: the point under Miri is the memory model, and each step
        // walks hundreds of entries.
        mixed(lpae(Stage::S1, Granule::G4K), true, 20);
        return;
    }
    let steps = 6_000;
    for reclaim in [false, true] {
        for stage in [Stage::S1, Stage::S2] {
            for granule in [Granule::G4K, Granule::G16K, Granule::G64K] {
                mixed(lpae(stage, granule), reclaim, steps);
            }
        }
        mixed(AmdV1::new(4).unwrap(), reclaim, steps);
        mixed(AmdV1::new(3).unwrap(), reclaim, steps);
        mixed(VtdSl::new(4, 48).unwrap(), reclaim, steps);
        mixed(Riscv::new(3, RiscvStage::First).unwrap(), reclaim, steps);
        mixed(Riscv::new(4, RiscvStage::Second).unwrap(), reclaim, steps);
    }
}
