//! Linux's io-pgtable-arm self-test scenario, for every stage, granule and IAS.

use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::{HeapMemory, IoPageTable, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_1G};

fn pa(x: u64) -> PhysAddr {
    PhysAddr::new(x)
}

fn run_selftest(cfg: LpaeConfig) {
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(Lpae::new(cfg).unwrap(), &mem).unwrap();
    let bitmap = pt.pgsize_bitmap();
    let sizes: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|s| bitmap & s != 0)
        .collect();
    let rw = Prot::RW | Prot::NOEXEC | Prot::CACHE;

    // An empty table translates nothing.
    for iova in [42, SZ_1G + 42, 2 * SZ_1G + 42] {
        assert_eq!(
            pt.iova_to_phys(Iova::new(iova)),
            None,
            "{cfg:?}: empty table translates {iova:#x}"
        );
    }

    // Map one page of each size at k * 1 GiB (rounded up to the page for
    // the 4 TiB block, which Linux's own run at OAS 48 never has), identity;
    // mapping again fails.
    let slot = |k: usize, size: u64| (k as u64 * SZ_1G).next_multiple_of(size);
    for (k, &size) in sizes.iter().enumerate() {
        let iova = slot(k, size);
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, rw),
            Ok(size),
            "{cfg:?} size {size:#x}"
        );
        assert!(
            pt.map_pages(Iova::new(iova), pa(iova + size), size, 1, Prot::READ)
                .is_err(),
            "{cfg:?}: overlap of {size:#x}"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }

    // Unmap each, check it is gone, remap it.
    for (k, &size) in sizes.iter().enumerate() {
        let iova = slot(k, size);
        let mut g = IotlbGather::new();
        assert_eq!(
            pt.unmap_pages(Iova::new(iova), size, 1, &mut g),
            size,
            "{cfg:?} unmap {size:#x}"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), None);
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, Prot::WRITE),
            Ok(size)
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }

    // The largest page just below the top of the input space.
    let largest = *sizes.last().unwrap();
    let top = (1u64 << cfg.ias) - largest;
    let mut g = IotlbGather::new();
    assert_eq!(
        pt.map_pages(
            Iova::new(top),
            pa(top % (1 << cfg.oas.min(48))),
            largest,
            1,
            rw
        ),
        Ok(largest),
        "{cfg:?}: top page"
    );
    assert_eq!(pt.unmap_pages(Iova::new(top), largest, 1, &mut g), largest);
    // One page beyond the IAS is out of range.
    assert!(pt
        .map_pages(Iova::new(1u64 << cfg.ias), pa(0), sizes[0], 1, Prot::READ)
        .is_err());
    drop(pt);
    assert_eq!(mem.table_pages(), 0, "{cfg:?}: every table page freed");
}

#[test]
fn linux_selftest_scenario_holds_for_every_stage_granule_and_ias() {
    let mut ran = 0;
    for stage in [Stage::S1, Stage::S2] {
        for granule in [Granule::G4K, Granule::G16K, Granule::G64K] {
            let max = if granule == Granule::G64K { 52 } else { 48 };
            for ias in (32..=48).chain((max == 52).then_some(52)) {
                run_selftest(LpaeConfig {
                    stage,
                    granule,
                    ias,
                    oas: 48,
                });
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 2 * (17 + 17 + 18));
    // And the 52-bit output encoding with its 4 TiB blocks.
    run_selftest(LpaeConfig {
        stage: Stage::S1,
        granule: Granule::G64K,
        ias: 52,
        oas: 52,
    });
}
