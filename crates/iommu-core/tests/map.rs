//! Map and unmap through the core: checks, page-size selection, rollback,
//! the IOTLB gather, scatter-gather, reserved regions and faults.

mod common;

use common::{world, world_with};
use iommu_core::testing::{MockConfig, MockIommu, MockOp};
use iommu_core::{
    DeviceBuilder, Domain, DomainType, Errno, FaultAccess, IommuConfig, IotlbGather, Iova,
    PhysAddr, Prot, ReservedRegion, ResvType, SgEntry,
};
use std::sync::Arc;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

fn unmanaged(cfg: MockConfig) -> (common::World, Domain) {
    let w = world_with(IommuConfig::default(), cfg, &[]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    (w, d)
}

fn map(d: &Domain, iova: u64, pa: u64, size: u64) -> Result<(), Errno> {
    d.map(Iova::new(iova), PhysAddr::new(pa), size, Prot::RW)
}

#[test]
fn map_on_a_non_paging_domain_is_einval() {
    let w = world(&[]);
    for ty in [DomainType::Identity, DomainType::Blocked] {
        let d = w.iommu.domain_alloc(&w.bus, ty).unwrap();
        assert_eq!(map(&d, 0, 0, K4).unwrap_err(), Errno::EINVAL, "{ty}");
        assert_eq!(d.unmap(Iova::new(0), K4), Ok(0));
    }
}

#[test]
fn map_without_a_map_op_or_page_sizes_is_enodev() {
    let (_w, d) = unmanaged(MockConfig {
        paging: false,
        ..MockConfig::default()
    });
    assert_eq!(map(&d, 0, 0, K4).unwrap_err(), Errno::ENODEV);
    let (_w, d) = unmanaged(MockConfig {
        pgsize_bitmap: 0,
        ..MockConfig::default()
    });
    assert_eq!(map(&d, 0, 0, K4).unwrap_err(), Errno::ENODEV);
}

#[test]
fn map_misaligned_to_the_smallest_page_is_einval() {
    let (_w, d) = unmanaged(MockConfig::default());
    assert_eq!(map(&d, 0x800, 0, K4).unwrap_err(), Errno::EINVAL);
    assert_eq!(map(&d, 0, 0x800, K4).unwrap_err(), Errno::EINVAL);
    assert_eq!(map(&d, 0, 0, 0x1800).unwrap_err(), Errno::EINVAL);
    assert!(MockIommu::mappings(&d).is_empty());
}

#[test]
fn map_outside_the_aperture_is_erange_and_overflow_is_eoverflow() {
    let (_w, d) = unmanaged(MockConfig::default());
    assert_eq!(
        map(&d, (1 << 48) - K4, 0, 2 * K4).unwrap_err(),
        Errno::ERANGE
    );
    assert_eq!(map(&d, 1 << 48, 0, K4).unwrap_err(), Errno::ERANGE);
    assert_eq!(
        map(&d, u64::MAX - K4 + 1, 0, 2 * K4).unwrap_err(),
        Errno::EOVERFLOW
    );
    assert_eq!(
        map(&d, 0, u64::MAX - K4 + 1, 2 * K4).unwrap_err(),
        Errno::EOVERFLOW
    );
    assert!(MockIommu::mappings(&d).is_empty());
}

#[test]
fn map_picks_the_largest_pages_alignment_allows() {
    let (_w, d) = unmanaged(MockConfig::default());
    // 4K up to the 2M boundary, then 2M blocks, then 4K for the tail.
    let iova = M2 - 2 * K4;
    map(&d, iova, 0x1000_0000 - 2 * K4, 2 * K4 + 2 * M2 + K4).unwrap();
    let sizes: Vec<(u64, u64)> = MockIommu::mappings(&d).iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(
        sizes,
        vec![
            (M2 - 2 * K4, K4),
            (M2 - K4, K4),
            (M2, M2),
            (2 * M2, M2),
            (3 * M2, K4)
        ]
    );
}

#[test]
fn map_uses_1g_pages_when_both_addresses_allow_it() {
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, G1, 3 * G1, G1 + M2).unwrap();
    let sizes: Vec<u64> = MockIommu::mappings(&d).iter().map(|m| m.1).collect();
    assert_eq!(sizes, vec![G1, M2]);
    // Misaligned physical address: no blocks at all.
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, M2, M2 + K4, M2).unwrap();
    assert_eq!(MockIommu::mappings(&d).len(), 512);
}

#[test]
fn map_continues_after_a_short_map_pages() {
    let (_w, d) = unmanaged(MockConfig {
        max_pages_per_call: 3,
        ..MockConfig::default()
    });
    map(&d, 0, 0, 10 * K4).unwrap();
    assert_eq!(MockIommu::mappings(&d).len(), 10);
}

#[test]
fn map_failure_unmaps_everything_this_call_mapped() {
    let (w, d) = unmanaged(MockConfig {
        max_pages_per_call: 4,
        ..MockConfig::default()
    });
    map(&d, 0x10_0000, 0, K4).unwrap();
    w.mock.fail_after(MockOp::Map, 2); // third map_pages call maps 2 of 4, then fails
    assert_eq!(map(&d, 0, 0, 16 * K4).unwrap_err(), Errno::ENOMEM);
    assert_eq!(
        MockIommu::mappings(&d).len(),
        1,
        "only the earlier mapping remains"
    );
    // A collision part-way is EEXIST and also rolls back.
    assert_eq!(
        map(&d, 0x10_0000 - 4 * K4, 0, 8 * K4).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(MockIommu::mappings(&d).len(), 1);
}

#[test]
fn map_calls_iotlb_sync_map_and_undoes_the_map_if_it_fails() {
    let (w, d) = unmanaged(MockConfig::default());
    map(&d, 0, 0, K4).unwrap();
    assert_eq!(w.mock.sync_maps(), 1);
    w.mock.fail_after(MockOp::SyncMap, 0);
    assert_eq!(map(&d, K4, 0, K4).unwrap_err(), Errno::ENOMEM);
    assert_eq!(MockIommu::mappings(&d).len(), 1);
}

#[test]
fn iotlb_sync_map_comes_once_per_map_however_the_driver_is_called() {
    // One driver call for the whole request (the sync rides on it), several
    // page sizes, a driver that maps a few pages per call, and an empty map.
    for max_pages_per_call in [usize::MAX, 3] {
        let (w, d) = unmanaged(MockConfig {
            max_pages_per_call,
            ..MockConfig::default()
        });
        let mut syncs = w.mock.sync_maps();
        for (iova, size) in [(0, K4), (M2, M2), (G1 - K4, M2 + 2 * K4), (4 * G1, 16 * K4)] {
            map(&d, iova, iova, size).unwrap();
            syncs += 1;
            assert_eq!(w.mock.sync_maps(), syncs, "{size:#x} at {iova:#x}");
            assert_eq!(
                d.iova_to_phys(Iova::new(iova + size - K4)),
                Some(PhysAddr::new(iova + size - K4))
            );
        }
        map(&d, 8 * G1, 0, 0).unwrap();
        assert_eq!(w.mock.sync_maps(), syncs + 1, "an empty map is still told");
        // A failed sync takes back all of the map, whichever call carried it.
        let before = MockIommu::mappings(&d).len();
        for (iova, size) in [(9 * G1, K4), (10 * G1 - K4, M2 + 2 * K4)] {
            w.mock.fail_after(MockOp::SyncMap, 0);
            assert_eq!(map(&d, iova, iova, size).unwrap_err(), Errno::ENOMEM);
            assert_eq!(
                MockIommu::mappings(&d).len(),
                before,
                "{size:#x} at {iova:#x}"
            );
        }
    }
}

#[test]
fn unmap_returns_bytes_and_stops_at_the_first_hole() {
    let (w, d) = unmanaged(MockConfig::default());
    map(&d, 0, 0, 3 * K4).unwrap();
    map(&d, 4 * K4, 0, K4).unwrap();
    let syncs = w.mock.iotlb_syncs();
    assert_eq!(d.unmap(Iova::new(0), 5 * K4), Ok(3 * K4));
    assert_eq!(
        w.mock.iotlb_syncs(),
        syncs + 1,
        "one sync for the whole call"
    );
    assert_eq!(d.iova_to_phys(Iova::new(4 * K4)), Some(PhysAddr::new(0)));
    assert_eq!(d.unmap(Iova::new(0), K4), Ok(0), "a hole unmaps nothing");
}

#[test]
fn unmap_of_part_of_a_large_page_removes_and_reports_all_of_it() {
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, M2, M2, M2).unwrap();
    assert_eq!(d.unmap(Iova::new(M2 + 8 * K4), K4), Ok(M2));
    assert_eq!(d.iova_to_phys(Iova::new(M2)), None);
}

#[test]
fn unmap_misaligned_or_wrapping_unmaps_nothing() {
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, 0, 0, K4).unwrap();
    assert_eq!(d.unmap(Iova::new(0x800), K4), Ok(0));
    assert_eq!(d.unmap(Iova::new(0), 0x800), Ok(0));
    assert_eq!(d.unmap(Iova::new(u64::MAX - K4 + 1), 2 * K4), Ok(0));
    assert_eq!(MockIommu::mappings(&d).len(), 1);
}

#[test]
fn unmap_fast_defers_invalidation_to_an_explicit_sync() {
    let (w, d) = unmanaged(MockConfig::default());
    map(&d, 0, 0, 4 * K4).unwrap();
    let syncs = w.mock.iotlb_syncs();
    let mut gather = IotlbGather::new();
    assert_eq!(d.unmap_fast(Iova::new(0), K4, &mut gather), K4);
    assert_eq!(d.unmap_fast(Iova::new(K4), 2 * K4, &mut gather), 2 * K4);
    assert_eq!(w.mock.iotlb_syncs(), syncs, "nothing invalidated yet");
    assert_eq!(
        gather.range(),
        Some((Iova::new(0), Iova::new(3 * K4 - 1))),
        "adjacent ranges merged"
    );
    d.iotlb_sync(&gather).unwrap();
    assert_eq!(w.mock.iotlb_syncs(), syncs + 1);
    d.iotlb_sync(&IotlbGather::new()).unwrap();
    assert_eq!(
        w.mock.iotlb_syncs(),
        syncs + 1,
        "an empty gather needs no sync"
    );
}

#[test]
fn iova_to_phys_is_identity_in_identity_domains_and_none_when_blocked() {
    let w = world(&[]);
    let id = w.iommu.domain_alloc(&w.bus, DomainType::Identity).unwrap();
    assert_eq!(
        id.iova_to_phys(Iova::new(0x1234_5678)),
        Some(PhysAddr::new(0x1234_5678))
    );
    let blocked = w.iommu.domain_alloc(&w.bus, DomainType::Blocked).unwrap();
    assert_eq!(blocked.iova_to_phys(Iova::new(0x1234_5678)), None);
}

#[test]
fn map_sg_merges_contiguous_segments() {
    let (_w, d) = unmanaged(MockConfig::default());
    let sg = [
        SgEntry {
            paddr: PhysAddr::new(0x10_0000),
            len: K4,
        },
        SgEntry {
            paddr: PhysAddr::new(0x10_1000),
            len: K4,
        },
        SgEntry {
            paddr: PhysAddr::new(0x50_0000),
            len: 2 * K4,
        },
    ];
    assert_eq!(
        d.map_sg(Iova::new(0x8000_0000), &sg, Prot::READ),
        Ok(4 * K4)
    );
    assert_eq!(
        d.iova_to_phys(Iova::new(0x8000_1000)),
        Some(PhysAddr::new(0x10_1000))
    );
    assert_eq!(
        d.iova_to_phys(Iova::new(0x8000_2000)),
        Some(PhysAddr::new(0x50_0000))
    );
    assert_eq!(
        d.iova_to_phys(Iova::new(0x8000_3fff)),
        Some(PhysAddr::new(0x50_1fff))
    );
}

#[test]
fn map_sg_is_all_or_nothing() {
    let (_w, d) = unmanaged(MockConfig::default());
    let sg = [
        SgEntry {
            paddr: PhysAddr::new(0x10_0000),
            len: K4,
        },
        SgEntry {
            paddr: PhysAddr::new(0x50_0000),
            len: 0x800,
        }, // misaligned segment
    ];
    assert_eq!(
        d.map_sg(Iova::new(0), &sg, Prot::READ).unwrap_err(),
        Errno::EINVAL
    );
    assert!(MockIommu::mappings(&d).is_empty());
}

#[test]
fn group_reserved_regions_are_the_sorted_merged_union_of_its_devices() {
    let cfg = MockConfig {
        sw_msi: Some((0x800_0000, 0x10_0000)),
        ..MockConfig::default()
    };
    let w = world_with(IommuConfig::default(), cfg, &[]);
    let dev = |name: &str, regions: &[ReservedRegion]| {
        let mut b = DeviceBuilder::new(name).stream_ids([7]);
        for r in regions {
            b = b.resv_region(*r);
        }
        w.bus.add_device(b).unwrap()
    };
    dev(
        "a",
        &[ReservedRegion::new(
            0x1000,
            0x2000,
            Prot::RW,
            ResvType::Direct,
        )],
    );
    dev(
        "b",
        &[
            ReservedRegion::new(0x3000, 0x1000, Prot::RW, ResvType::Direct),
            ReservedRegion::new(0xfee0_0000, 0x10_0000, Prot::RW, ResvType::Reserved),
        ],
    );
    assert_eq!(
        w.iommu
            .sysfs()
            .read("kernel/iommu_groups/0/reserved_regions")
            .unwrap(),
        "0x0000000000001000 0x0000000000003fff direct\n\
         0x0000000008000000 0x00000000080fffff msi\n\
         0x00000000fee00000 0x00000000feefffff reserved\n"
    );
}

#[test]
fn direct_regions_are_identity_mapped_in_the_default_domain() {
    let w = world(&[]);
    let r = ReservedRegion::new(0x8000_0800, 0x2000, Prot::READ, ResvType::Direct);
    let d = w
        .bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]).resv_region(r))
        .unwrap();
    let dd = d.iommu_group().unwrap().default_domain().unwrap();
    // The whole region is covered, rounded out to pages.
    let got: Vec<(u64, u64, u64)> = MockIommu::mappings(&dd)
        .iter()
        .map(|m| (m.0, m.1, m.2))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x8000_0000, K4, 0x8000_0000),
            (0x8000_1000, K4, 0x8000_1000),
            (0x8000_2000, K4, 0x8000_2000)
        ]
    );
    assert!(w.mock.flush_alls() >= 1);
    // A second device with an overlapping region maps only what is missing,
    // and the mapping stays until the last device needing it leaves.
    let r2 = ReservedRegion::new(0x8000_2000, 0x2000, Prot::READ, ResvType::DirectRelaxable);
    let d2 = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]).resv_region(r2))
        .unwrap();
    assert_eq!(MockIommu::mappings(&dd).len(), 4);
    // A mapped run stays whole while any remaining device overlaps it (runs
    // may use blocks, which cannot be split), and goes with the last one.
    w.bus.remove_device(&d).unwrap();
    assert_eq!(MockIommu::mappings(&dd).len(), 4);
    assert_eq!(
        dd.iova_to_phys(Iova::new(0x8000_2000)),
        Some(PhysAddr::new(0x8000_2000))
    );
    let g = d2.iommu_group().unwrap();
    w.bus.remove_device(&d2).unwrap();
    assert!(
        MockIommu::mappings(&dd).is_empty(),
        "no identity maps outlive the devices"
    );
    drop(g);
}

#[test]
fn a_direct_run_no_remaining_device_needs_is_unmapped_on_removal() {
    let w = world(&[]);
    let ra = ReservedRegion::new(0x8000_0000, 0x2000, Prot::READ, ResvType::Direct);
    let rb = ReservedRegion::new(0x9000_0000, 0x1000, Prot::READ, ResvType::Direct);
    let a = w
        .bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]).resv_region(ra))
        .unwrap();
    let _b = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]).resv_region(rb))
        .unwrap();
    let dd = a.iommu_group().unwrap().default_domain().unwrap();
    assert_eq!(MockIommu::mappings(&dd).len(), 3);
    w.bus.remove_device(&a).unwrap();
    let left: Vec<u64> = MockIommu::mappings(&dd).iter().map(|m| m.0).collect();
    assert_eq!(left, vec![0x9000_0000]);
}

#[test]
fn direct_regions_are_not_mapped_into_identity_or_unmanaged_domains() {
    let w = world_with(
        IommuConfig {
            passthrough: true,
            strict: true,
        },
        MockConfig::default(),
        &[],
    );
    let r = ReservedRegion::new(0x8000_0000, 0x1000, Prot::READ, ResvType::Direct);
    let d = w
        .bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]).resv_region(r))
        .unwrap();
    assert_eq!(
        d.iommu_group().unwrap().default_domain().unwrap().ty(),
        DomainType::Identity
    );
    assert_eq!(w.mock.flush_alls(), 0);
}

#[test]
fn fault_report_without_a_handler_is_enosys() {
    let w = world(&[("a", &[1])]);
    let d = w.group_of(0).domain().unwrap();
    assert_eq!(
        d.report_fault(&w.devs[0], Iova::new(0xdead_0000), FaultAccess::Read)
            .unwrap_err(),
        Errno::ENOSYS
    );
}

#[test]
fn fault_report_returns_the_handler_result() {
    let w = world(&[("a", &[1])]);
    let d = w.group_of(0).domain().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    d.set_fault_handler(Some(Arc::new(move |_dom, dev, iova, access| {
        s.lock()
            .unwrap()
            .push((dev.name().to_string(), iova, access));
        if access == FaultAccess::Write {
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    })));
    assert_eq!(
        d.report_fault(&w.devs[0], Iova::new(0x1000), FaultAccess::Read),
        Ok(())
    );
    assert_eq!(
        d.report_fault(&w.devs[0], Iova::new(0x2000), FaultAccess::Write),
        Err(Errno::EACCES)
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    d.set_fault_handler(None);
    assert_eq!(
        d.report_fault(&w.devs[0], Iova::new(0x1000), FaultAccess::Read),
        Err(Errno::ENOSYS)
    );
}

#[test]
fn unmap_that_starts_inside_a_block_goes_on_from_the_end_of_the_block() {
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, M2, M2, M2).unwrap(); // a block [2M, 4M)
    map(&d, 2 * M2, 0x1000_0000, 4 * K4).unwrap(); // pages [4M, 4M + 16K)
                                                   // [2M + 4K, 4M + 4K): the block goes whole, then the page at 4M.
    let removed = d.unmap(Iova::new(M2 + K4), M2);
    assert_eq!(
        removed,
        Ok(M2 + K4),
        "what was removed, the block counted whole"
    );
    for at in [M2, M2 + K4, 2 * M2 - K4, 2 * M2] {
        assert_eq!(
            d.iova_to_phys(Iova::new(at)),
            None,
            "{at:#x} still translates"
        );
    }
    assert_eq!(
        d.iova_to_phys(Iova::new(2 * M2 + K4)),
        Some(PhysAddr::new(0x1000_1000)),
        "past the range stays"
    );
}

#[test]
fn unmap_over_small_pages_at_a_large_page_size_removes_every_page() {
    // The core picks 2 MiB for an aligned 2 MiB unmap even where 4 KiB pages
    // are mapped (as its rollback does when iova and paddr alignments
    // differ): the table there is torn down whole, every page with it.
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, M2, 0x1000, M2).unwrap();
    assert_eq!(MockIommu::mappings(&d).len(), 512);
    assert_eq!(d.unmap(Iova::new(M2), M2), Ok(M2));
    assert!(MockIommu::mappings(&d).is_empty());
    // A failing map at such alignments leaves nothing behind either.
    let (w, d) = unmanaged(MockConfig::default());
    w.mock.fail_after(MockOp::Map, 0);
    assert_eq!(map(&d, M2, 0x1000, M2).unwrap_err(), Errno::ENOMEM);
    assert!(MockIommu::mappings(&d).is_empty());
}

#[test]
fn a_huge_direct_region_is_mapped_by_extent_not_page_by_page() {
    // 64 TiB of firmware-reserved memory: identity-mapped in 1 GiB blocks,
    // found and filled with a handful of lookups.
    let w = world(&[]);
    let tib = 1u64 << 40;
    let huge = ReservedRegion::new(tib, 64 * tib, Prot::RW, ResvType::Direct);
    let before = w.mock.lookups();
    let d = w
        .bus
        .add_device(DeviceBuilder::new("fw").stream_ids([1]).resv_region(huge))
        .unwrap();
    let dd = d.iommu_group().expect("added").default_domain().unwrap();
    assert!(
        w.mock.lookups() - before < 16,
        "{} lookups",
        w.mock.lookups() - before
    );
    for at in [tib, 40 * tib + 0x1234, 65 * tib - 1] {
        assert_eq!(dd.iova_to_phys(Iova::new(at)), Some(PhysAddr::new(at)));
    }
    assert_eq!(dd.iova_to_phys(Iova::new(65 * tib)), None);
    assert_eq!(MockIommu::mappings(&dd).len(), 64 * 1024);
    // Removing the device unmaps it all again.
    w.bus.remove_device(&d).unwrap();
    assert!(MockIommu::mappings(&dd).is_empty());
}

#[test]
fn a_direct_region_fills_only_the_holes_between_existing_mappings() {
    let w = world(&[]);
    let ra = ReservedRegion::new(0x8000_1000, K4, Prot::RW, ResvType::Direct);
    let rb = ReservedRegion::new(0x8000_3000, K4, Prot::RW, ResvType::Direct);
    w.bus
        .add_device(
            DeviceBuilder::new("a")
                .stream_ids([1])
                .resv_region(ra)
                .resv_region(rb),
        )
        .unwrap();
    let wide = ReservedRegion::new(0x8000_0000, 5 * K4, Prot::RW, ResvType::Direct);
    let c = w
        .bus
        .add_device(DeviceBuilder::new("c").stream_ids([1]).resv_region(wide))
        .unwrap();
    let dd = c.iommu_group().unwrap().default_domain().unwrap();
    let got: Vec<u64> = MockIommu::mappings(&dd).iter().map(|m| m.0).collect();
    assert_eq!(
        got,
        (0..5).map(|i| 0x8000_0000 + i * K4).collect::<Vec<_>>()
    );
    // c made three runs (the holes); removing c leaves a's two pages.
    w.bus.remove_device(&c).unwrap();
    let left: Vec<u64> = MockIommu::mappings(&dd).iter().map(|m| m.0).collect();
    assert_eq!(left, vec![0x8000_1000, 0x8000_3000]);
}

#[test]
fn absurd_direct_regions_are_refused_with_a_clear_error() {
    let w = world(&[]);
    // Wrapping past the top of the address space: refused by the bus.
    let wraps = ReservedRegion::new(0x1000, u64::MAX, Prot::RW, ResvType::Direct);
    assert_eq!(
        w.bus
            .add_device(
                DeviceBuilder::new("wrap")
                    .stream_ids([1])
                    .resv_region(wraps)
            )
            .unwrap_err(),
        Errno::EINVAL
    );
    let empty = ReservedRegion::new(0x1000, 0, Prot::RW, ResvType::Direct);
    assert_eq!(
        w.bus
            .add_device(
                DeviceBuilder::new("empty")
                    .stream_ids([1])
                    .resv_region(empty)
            )
            .unwrap_err(),
        Errno::EINVAL
    );
    // Beyond the domain's 48-bit aperture: the device is not translated.
    let beyond = ReservedRegion::new(0, 1 << 63, Prot::RW, ResvType::Direct);
    let d = w
        .bus
        .add_device(
            DeviceBuilder::new("beyond")
                .stream_ids([2])
                .resv_region(beyond),
        )
        .unwrap();
    assert!(d.iommu_group().is_none());
    let log = w.iommu.log_lines().join("\n");
    assert!(
        log.contains(
            "beyond: direct region 0x0+0x8000000000000000 lies outside the domain's aperture"
        ),
        "{log}"
    );
    assert!(
        log.contains("beyond: failed to add device to IOMMU: ERANGE"),
        "{log}"
    );
    assert!(w.iommu.group_ids().is_empty());
}

#[test]
fn an_unmap_whose_invalidation_fails_says_what_it_removed_and_that_it_may_still_translate() {
    let (w, d) = unmanaged(MockConfig::default());
    map(&d, 0x10_0000, 0x8000_0000, 4 * K4).unwrap();
    w.mock.set_wedged(true);
    let e = d.unmap(Iova::new(0x10_0000), 4 * K4).unwrap_err();
    assert_eq!(
        e,
        iommu_core::IotlbSyncError {
            removed: 4 * K4,
            errno: Errno::ETIMEDOUT
        }
    );
    assert_eq!(Errno::from(e), Errno::ETIMEDOUT);
    assert!(e.to_string().contains("may still translate"), "{e}");
    // Out of the tables, but possibly still cached, and the domain knows.
    assert!(MockIommu::mappings(&d).is_empty());
    assert_eq!(
        MockIommu::stale_ranges(&d),
        vec![(0x10_0000, 0x10_0000 + 4 * K4 - 1)]
    );
    assert!(d.invalidation_owed());
    // A flush that does not complete covers nothing.
    assert_eq!(d.flush_iotlb_all(), Err(Errno::ETIMEDOUT));
    assert!(d.invalidation_owed());
    w.mock.set_wedged(false);
    assert_eq!(d.flush_iotlb_all(), Ok(()));
    assert!(!d.invalidation_owed());
    assert!(MockIommu::stale_ranges(&d).is_empty());
}

#[test]
fn only_a_flush_started_after_a_failed_invalidation_covers_it() {
    let (w, d) = unmanaged(MockConfig::default());
    d.flush_iotlb_all().unwrap();
    let before = d.flush_ticket();
    assert!(
        !d.flushed_through(before),
        "no flush started after the ticket"
    );
    map(&d, 0, 0x8000_0000, K4).unwrap();
    w.mock.fail_after(MockOp::IotlbSync, 0);
    d.unmap(Iova::new(0), K4).unwrap_err();
    let owed = d.flush_ticket();
    assert!(d.invalidation_owed());
    // Another invalidation that completes (of another range) is no flush-all.
    map(&d, K4, 0x8000_1000, K4).unwrap();
    assert_eq!(d.unmap(Iova::new(K4), K4), Ok(K4));
    assert!(d.invalidation_owed());
    d.flush_iotlb_all().unwrap();
    assert!(d.flushed_through(owed) && d.flushed_through(before));
    assert!(!d.invalidation_owed());
    assert!(!d.flushed_through(d.flush_ticket()));
}

#[test]
fn a_map_taken_back_without_invalidation_leaves_the_domain_owing_a_flush() {
    let (w, d) = unmanaged(MockConfig {
        max_pages_per_call: 4,
        ..MockConfig::default()
    });
    w.mock.fail_after(MockOp::Map, 1);
    w.mock.set_wedged(true);
    assert_eq!(map(&d, 0, 0x8000_0000, 16 * K4), Err(Errno::ENOMEM));
    assert!(MockIommu::mappings(&d).is_empty(), "nothing stays mapped");
    assert!(d.invalidation_owed(), "the undo's invalidation failed");
    w.mock.set_wedged(false);
    d.flush_iotlb_all().unwrap();
    assert!(!d.invalidation_owed());
}

#[test]
fn the_mock_refuses_a_map_past_its_table_budget_and_changes_nothing() {
    // 8 TiB at a 4 KiB-aligned address: billions of leaves, were there no
    // bound. The budget stops it at a few thousand tables.
    let (_w, d) = unmanaged(MockConfig::default());
    map(&d, 0x1000_0000_0000, 0x2000_0000_0000, K4).unwrap();
    assert_eq!(map(&d, 0, 0x1000, 8 << 40).unwrap_err(), Errno::ENOMEM);
    assert_eq!(
        MockIommu::mappings(&d),
        vec![(0x1000_0000_0000, K4, 0x2000_0000_0000, Prot::RW)],
        "what was mapped before, and only that"
    );
    // Emptied tables stay, as in a real table, within the budget.
    let budget = iommu_core::testing::DEFAULT_TABLE_BUDGET;
    assert!(MockIommu::table_count(&d) < budget);
    // Within the budget a map still works.
    map(&d, 0, 0x1000, 16 * K4).unwrap();
}
