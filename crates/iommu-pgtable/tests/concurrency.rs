//! Tables shared between threads: map and unmap of disjoint ranges at once,
//! with threads racing to install the same intermediate tables.

use iommu_pgtable::lpae::Lpae;
use iommu_pgtable::{HeapMemory, IoPageTable, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_4K};
use std::sync::Barrier;
use std::thread;

#[test]
fn threads_map_and_unmap_disjoint_ranges_of_one_table() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = if cfg!(miri) { 6 } else { 300 };
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &mem).unwrap();
    let barrier = Barrier::new(THREADS as usize);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (pt, barrier) = (&pt, &barrier);
            s.spawn(move || {
                barrier.wait();
                for r in 0..ROUNDS {
                    // Interleaved pages: every thread's pages share last-level
                    // tables with the others', and each round starts in a new
                    // 2 MiB region so the threads race to install its table.
                    let base = r * 0x20_0000 * 4;
                    let iova = Iova::new(base + (t * 8) * SZ_4K);
                    let pa = PhysAddr::new((t << 32) + r * SZ_4K * 8);
                    assert_eq!(pt.map_pages(iova, pa, SZ_4K, 8, Prot::RW), Ok(8 * SZ_4K));
                    for k in 0..8 {
                        let got = pt.iova_to_phys(iova.wrapping_add(k * SZ_4K + 5));
                        assert_eq!(got, Some(pa.wrapping_add(k * SZ_4K + 5)));
                    }
                    if r % 2 == 0 {
                        let mut g = IotlbGather::new();
                        assert_eq!(pt.unmap_pages(iova, SZ_4K, 8, &mut g), 8 * SZ_4K);
                        pt.release_gathered(&g);
                        assert_eq!(pt.iova_to_phys(iova), None);
                    }
                }
            });
        }
    });
    // Every odd round of every thread remains, nothing else.
    let leaves = pt.walk(Iova::ZERO, u64::MAX);
    assert_eq!(leaves.len() as u64, THREADS * (ROUNDS / 2) * 8);
    // One level-1..3 path per round: no table was installed twice.
    let tables = mem.table_pages();
    assert!(tables <= 2 + 1 + ROUNDS as usize + 2, "tables {tables}");
    drop(pt);
    assert_eq!(mem.table_pages(), 0);
}

#[test]
fn threads_racing_to_grow_a_table_lose_nothing_and_leak_nothing() {
    // AMD v1 tables start in mode 3 and grow to mode 6: threads map at
    // addresses that each need another level while others translate
    // what is already mapped below.
    use iommu_pgtable::amd::AmdV1;
    const THREADS: u64 = 4;
    let mem = HeapMemory::new();
    {
        let pt = IoPageTable::new(AmdV1::new(6).unwrap(), &mem).unwrap();
        pt.map_pages(Iova::new(0x1000), PhysAddr::new(0x5000), SZ_4K, 1, Prot::RW)
            .unwrap();
        let barrier = Barrier::new(THREADS as usize);
        thread::scope(|s| {
            for t in 0..THREADS {
                let (pt, barrier) = (&pt, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    // Bits 39, 48 and 57: modes 4, 5 and 6.
                    for (k, bit) in [39u32, 48, 57].into_iter().enumerate() {
                        let iova = (1u64 << bit) + (t * 3 + k as u64) * SZ_4K;
                        let pa = PhysAddr::new(iova & 0xf_ffff_ffff);
                        assert_eq!(
                            pt.map_pages(Iova::new(iova), pa, SZ_4K, 1, Prot::RW),
                            Ok(SZ_4K)
                        );
                        assert_eq!(
                            pt.iova_to_phys(Iova::new(iova + 8)),
                            Some(pa.wrapping_add(8))
                        );
                        assert_eq!(
                            pt.iova_to_phys(Iova::new(0x1008)),
                            Some(PhysAddr::new(0x5008))
                        );
                    }
                });
            }
        });
        assert_eq!(pt.format().amd_level(pt.root_level()), 6);
        for t in 0..THREADS {
            for (k, bit) in [39u32, 48, 57].into_iter().enumerate() {
                let iova = (1u64 << bit) + (t * 3 + k as u64) * SZ_4K;
                assert_eq!(
                    pt.iova_to_phys(Iova::new(iova)),
                    Some(PhysAddr::new(iova & 0xf_ffff_ffff))
                );
            }
        }
        assert_eq!(
            pt.walk(Iova::ZERO, u64::MAX).len(),
            1 + 3 * THREADS as usize
        );
    }
    assert_eq!(
        mem.table_pages(),
        0,
        "every table, grown roots included, freed"
    );
}
