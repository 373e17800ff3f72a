//! Linux's io-pgtable-arm self-test scenario, for every stage-1 4 KiB IAS.

use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_1G};

fn pa(x: u64) -> PhysAddr {
    PhysAddr::new(x)
}

fn run_selftest(ias: u32) {
    let mut pt = IoPageTable::new(Lpae::stage1_4k(ias, 48).unwrap(), HeapMemory::new()).unwrap();
    let bitmap = pt.pgsize_bitmap();
    let sizes: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|s| bitmap & s != 0)
        .collect();

    // An empty table translates nothing.
    for iova in [42, SZ_1G + 42, 2 * SZ_1G + 42] {
        assert_eq!(
            pt.iova_to_phys(Iova::new(iova)),
            None,
            "ias {ias}: empty table translates {iova:#x}"
        );
    }

    // Map one page of each size at k * 1 GiB, identity.
    for (k, &size) in sizes.iter().enumerate() {
        let iova = k as u64 * SZ_1G;
        let prot = Prot::RW | Prot::NOEXEC | Prot::CACHE;
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, prot),
            Ok(size),
            "ias {ias} size {size:#x}"
        );
        assert!(
            pt.map_pages(Iova::new(iova), pa(iova + size), size, 1, Prot::READ)
                .is_err(),
            "ias {ias}: overlapping map of {size:#x} must fail"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }

    // Unmap each, check it is gone, remap it.
    for (k, &size) in sizes.iter().enumerate() {
        let iova = k as u64 * SZ_1G;
        let mut g = IotlbGather::new();
        assert_eq!(
            pt.unmap_pages(Iova::new(iova), size, 1, &mut g),
            size,
            "ias {ias} unmap {size:#x}"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), None);
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, Prot::WRITE),
            Ok(size)
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }

    // The largest page just below the top of the input address space.
    let largest = *sizes.last().unwrap();
    let iova = (1u64 << ias) - largest;
    let mut g = IotlbGather::new();
    let prot = Prot::RW | Prot::NOEXEC | Prot::CACHE;
    assert_eq!(
        pt.map_pages(Iova::new(iova), pa(iova), largest, 1, prot),
        Ok(largest),
        "ias {ias}: top page"
    );
    assert_eq!(pt.unmap_pages(Iova::new(iova), largest, 1, &mut g), largest);
    // One page beyond the IAS is out of range.
    assert!(pt
        .map_pages(Iova::new(1u64 << ias), pa(0), sizes[0], 1, Prot::READ)
        .is_err());
}

#[test]
fn linux_selftest_scenario_holds_for_every_stage1_4k_ias() {
    for ias in 32..=48 {
        run_selftest(ias);
    }
}
