//! The DMA API's rules, one test each.

mod common;

use common::world;
use iommu_core::{DmaOwner, DomainType, Errno, Iova, PhysAddr, SgEntry};
use iommu_dma::{
    ArchSync, DmaAddr, DmaAttrs, DmaDevice, DmaDirection as Dir, DmaError, DmaOptions, PhysPool,
};
use iommu_soft::{Access, TranslateError};
use std::sync::{Arc, Mutex};

const BUF: u64 = 0x1_2345_6000;

#[test]
fn map_single_keeps_the_offset_and_the_device_reaches_exactly_the_buffer() {
    let w = world(1, true);
    let dma = w.bind(0);
    let a = dma
        .map_single(PhysAddr::new(BUF + 0x10), 0x20, Dir::Bidirectional)
        .unwrap();
    assert_eq!(a.raw() & 0xfff, 0x10);
    let dev = &w.devs[0];
    assert_eq!(
        w.hw.translate(dev, a.into(), Access::Write),
        Ok(PhysAddr::new(BUF + 0x10))
    );
    // The whole granule is mapped, nothing beyond it.
    let next = Iova::new((a.raw() & !0xfff) + 0x1000);
    assert!(w.hw.translate(dev, next, Access::Read).is_err());
}

#[test]
fn direction_sets_the_permission_the_device_gets() {
    let w = world(1, true);
    let dma = w.bind(0);
    let dev = &w.devs[0];
    let to = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert!(w.hw.translate(dev, to.into(), Access::Read).is_ok());
    assert!(matches!(
        w.hw.translate(dev, to.into(), Access::Write),
        Err(TranslateError::Permission { .. })
    ));
    let from = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::FromDevice)
        .unwrap();
    assert!(w.hw.translate(dev, from.into(), Access::Write).is_ok());
    let m = dma.domain().ops().paging().unwrap();
    assert!(m.iova_to_phys(from.into()).is_some());
}

#[test]
fn dma_none_zero_sizes_and_wrapping_ranges_are_invalid() {
    let w = world(1, true);
    let dma = w.bind(0);
    let before = dma.domain_stats();
    assert_eq!(
        dma.map_single(PhysAddr::new(BUF), 0x10, Dir::None),
        Err(DmaError::InvalidArgument)
    );
    assert_eq!(
        dma.map_single(PhysAddr::new(BUF), 0, Dir::ToDevice),
        Err(DmaError::InvalidArgument)
    );
    assert_eq!(
        dma.map_single(PhysAddr::new(u64::MAX - 0x10), 0x100, Dir::ToDevice),
        Err(DmaError::InvalidArgument)
    );
    assert_eq!(
        dma.map_sg(&[], Dir::ToDevice).err(),
        Some(DmaError::InvalidArgument)
    );
    assert_eq!(dma.domain_stats(), before, "nothing allocated");
    assert_eq!(DmaError::InvalidArgument.errno(), Errno::EINVAL);
}

#[test]
fn the_default_mask_is_32_bit_and_a_wider_mask_still_prefers_32_bit_for_pci() {
    let w = world(1, true);
    let dma = w.bind(0);
    assert_eq!(dma.dma_mask(), 0xffff_ffff);
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert!(a.raw() <= 0xffff_ffff);
    dma.set_dma_mask(u64::MAX).unwrap();
    let b = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert!(b.raw() <= 0xffff_ffff, "PCI devices use 32-bit IOVAs first");
}

#[test]
fn forcedac_devices_get_addresses_from_the_top_of_their_mask() {
    let w = world(1, true);
    let dma = w.bind_with(
        0,
        DmaOptions {
            forcedac: true,
            ..DmaOptions::default()
        },
    );
    dma.set_dma_mask(u64::MAX).unwrap();
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    // The first IOVA is the aperture's last page: 48 bits on the soft
    // IOMMU, the lower canonical half (47 bits) on first-stage tables.
    let last = dma.domain().geometry().aperture_end.raw();
    assert_eq!(
        last,
        if common::driver() == "vtd-sm" {
            (1 << 47) - 1
        } else {
            (1 << 48) - 1
        }
    );
    assert_eq!(a.raw(), last + 1 - 0x1000);
}

#[test]
fn when_32_bit_space_runs_out_a_pci_device_moves_to_its_full_mask_for_good() {
    let w = world(1, true);
    let dma = w.bind(0);
    dma.set_dma_mask(u64::MAX).unwrap();
    // Ranges are size-aligned: of the four 1 GiB slots below 4 GiB, the top
    // one holds the MSI window and the bottom one page 0, which is never
    // handed out; so the third 1 GiB mapping has to go above 4 GiB.
    let gib = 0x4000_0000;
    let a = dma
        .map_single(PhysAddr::new(0), gib, Dir::ToDevice)
        .unwrap();
    let b = dma
        .map_single(PhysAddr::new(0), gib, Dir::ToDevice)
        .unwrap();
    assert_eq!((a.raw(), b.raw()), (0x8000_0000, 0x4000_0000));
    let high = dma
        .map_single(PhysAddr::new(0), gib, Dir::ToDevice)
        .unwrap();
    assert!(high.raw() >= 1 << 32);
    // Even small ones now come from above 4 GiB.
    let small = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert!(small.raw() >= 1 << 32);
}

#[test]
fn a_32_bit_device_gets_no_space_when_its_range_is_full_and_nothing_leaks() {
    let w = world(1, true);
    let dma = w.bind(0);
    dma.set_dma_mask(0x3f_ffff).unwrap(); // 4 MiB
    let mut live = Vec::new();
    loop {
        match dma.map_single(PhysAddr::new(BUF), 0x10_0000, Dir::ToDevice) {
            Ok(a) => live.push(a),
            Err(e) => {
                assert_eq!(e, DmaError::NoSpace);
                assert_eq!(e.errno(), Errno::ENOMEM);
                break;
            }
        }
    }
    // 4 MiB minus the never-used first page: three 1 MiB ranges.
    assert_eq!(live.len(), 3);
    for a in live.drain(..) {
        dma.unmap_single(a, 0x10_0000, Dir::ToDevice).unwrap();
    }
    assert_eq!(dma.live_mappings(), 0);
    assert!(dma
        .map_single(PhysAddr::new(BUF), 0x10_0000, Dir::ToDevice)
        .is_ok());
}

#[test]
fn a_mask_with_no_usable_iova_is_eio() {
    let w = world(1, true);
    let dma = w.bind(0);
    assert_eq!(dma.set_dma_mask(0xfff), Err(DmaError::MaskTooSmall));
    assert_eq!(DmaError::MaskTooSmall.errno(), Errno::EIO);
    assert_eq!(dma.dma_mask(), 0xffff_ffff, "unchanged");
}

#[test]
fn address_zero_and_the_mapping_error_value_are_never_handed_out() {
    let w = world(1, true);
    let dma = w.bind(0);
    dma.set_dma_mask(0x1fff).unwrap(); // room for exactly one page: 0x1000
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert_eq!(a.raw(), 0x1000);
    assert_eq!(
        dma.map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice),
        Err(DmaError::NoSpace)
    );
    let r = dma.map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice);
    assert!(DmaAddr::new(DmaAddr::raw_or_error(&r)).is_mapping_error());
    assert!(!a.is_mapping_error());
}

#[test]
fn reserved_regions_and_bridge_windows_are_never_iovas_but_sw_msi_is_ordinary_space() {
    let w = world(1, true);
    let dma = w.bind_with(
        0,
        DmaOptions {
            bridge_windows: vec![(0xc000_0000, 0xdfff_ffff)],
            ..DmaOptions::default()
        },
    );
    let iova_ranges = dma.domain_stats();
    assert!(iova_ranges.iova.tree_ranges >= 2);
    // Fill the whole 32-bit space with 16 MiB mappings; none may touch a reservation.
    let mut n = 0;
    while let Ok(a) = dma.map_single(PhysAddr::new(0), 0x100_0000, Dir::ToDevice) {
        let (lo, hi) = (a.raw(), a.raw() + 0xff_ffff);
        assert!(
            hi < 0xc000_0000 || lo > 0xdfff_ffff,
            "bridge window handed out: {a}"
        );
        assert!(
            hi < 0xfee0_0000 || lo > 0xfeef_ffff,
            "MSI window handed out: {a}"
        );
        n += 1;
    }
    // 4 GiB minus 512 MiB of bridge window, minus the 16 MiB slot holding the
    // MSI window, minus the slot holding page 0.
    assert_eq!(n, 256 - 32 - 2);
    let _ = Iova::new(0x0800_0000);
}

#[test]
fn unmap_with_a_bad_handle_size_direction_or_api_is_refused_and_changes_nothing() {
    let w = world(1, true);
    let dma = w.bind(0);
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x2000, Dir::ToDevice)
        .unwrap();
    let dev = &w.devs[0];
    let stats = dma.domain_stats();
    assert_eq!(
        dma.unmap_single(DmaAddr::new(0x5000), 0x1000, Dir::ToDevice),
        Err(DmaError::NotMapped)
    );
    assert_eq!(
        dma.unmap_single(a, 0x1000, Dir::ToDevice),
        Err(DmaError::Mismatch)
    );
    assert_eq!(
        dma.unmap_single(a, 0x2000, Dir::FromDevice),
        Err(DmaError::Mismatch)
    );
    let mid = DmaAddr::new(a.raw() + 0x1000);
    assert_eq!(
        dma.unmap_single(mid, 0x1000, Dir::ToDevice),
        Err(DmaError::NotMapped)
    );
    let fake = iommu_dma::CoherentBuffer {
        paddr: PhysAddr::new(BUF),
        dma: a,
        size: 0x2000,
    };
    assert_eq!(
        dma.free_coherent(&fake),
        Err(DmaError::NotMapped),
        "no allocator, nothing to free"
    );
    assert_eq!(dma.domain_stats(), stats);
    assert!(
        w.hw.translate(dev, a.into(), Access::Read).is_ok(),
        "still mapped"
    );
    dma.unmap_single(a, 0x2000, Dir::ToDevice).unwrap();
    assert_eq!(
        dma.unmap_single(a, 0x2000, Dir::ToDevice),
        Err(DmaError::NotMapped),
        "double unmap"
    );
}

#[test]
fn without_handle_checks_a_double_unmap_is_still_refused_and_frees_nothing_twice() {
    let w = world(1, true);
    let dma = w.bind_unchecked(0);
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    assert_eq!(
        dma.unmap_single(a, 0x1000, Dir::ToDevice),
        Err(DmaError::NotMapped)
    );
    // The range is handed out exactly once more, not twice.
    let b = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    let c = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert_ne!(b, c);
}

#[test]
fn map_sg_uses_one_iova_range_and_merges_what_the_device_can_take_as_one() {
    let w = world(1, true);
    let dma = w.bind(0);
    let sg = [
        SgEntry {
            paddr: PhysAddr::new(0x10_0000),
            len: 0x1000,
        },
        SgEntry {
            paddr: PhysAddr::new(0x30_0000),
            len: 0x1000,
        },
        SgEntry {
            paddr: PhysAddr::new(0x50_0200),
            len: 0x100,
        },
    ];
    let m = dma.map_sg(&sg, Dir::FromDevice).unwrap();
    assert_eq!(m.iova_len(), 0x3000);
    let segs = m.segments();
    assert_eq!(segs.len(), 2);
    assert_eq!((segs[0].addr, segs[0].len), (m.iova(), 0x2000));
    assert_eq!(
        (segs[1].addr.raw(), segs[1].len),
        (m.iova().raw() + 0x2200, 0x100)
    );
    let dev = &w.devs[0];
    for (off, pa) in [(0x0, 0x10_0000), (0x1000, 0x30_0000), (0x2200, 0x50_0200)] {
        let at = Iova::new(m.iova().raw() + off);
        assert_eq!(
            w.hw.translate(dev, at, Access::Write),
            Ok(PhysAddr::new(pa))
        );
    }
    dma.unmap_sg(&m).unwrap();
    assert!(w.hw.translate(dev, m.iova().into(), Access::Write).is_err());
    assert_eq!(dma.unmap_sg(&m), Err(DmaError::NotMapped));
}

#[test]
fn a_failed_map_sg_leaves_nothing_mapped_or_allocated() {
    let w = world(1, true);
    let dma = w.bind(0);
    let before = dma.domain_stats();
    // The second segment lies beyond the 48-bit output space the soft IOMMU has.
    let sg = [
        SgEntry {
            paddr: PhysAddr::new(0x10_0000),
            len: 0x1000,
        },
        SgEntry {
            paddr: PhysAddr::new(1 << 50),
            len: 0x1000,
        },
    ];
    let e = dma.map_sg(&sg, Dir::ToDevice).unwrap_err();
    assert!(matches!(e, DmaError::Map(_)), "{e:?}");
    // The IOVA went back to the cache: allocated in the tree, free to use.
    assert_eq!(dma.live_mappings(), 0);
    let after = dma.domain_stats();
    assert_eq!(
        after.iova.tree_ranges - after.iova.cached,
        before.iova.tree_ranges - before.iova.cached
    );
}

#[test]
fn coherent_buffers_come_from_the_allocator_below_the_coherent_mask_and_go_back() {
    let w = world(1, true);
    let pool = Arc::new(PhysPool::new(PhysAddr::new(0x4000_0000), 0x10_0000));
    let dma = w.bind_with(
        0,
        DmaOptions {
            memory: Some(pool.clone()),
            ..DmaOptions::default()
        },
    );
    dma.set_dma_mask(u64::MAX).unwrap();
    let b = dma.alloc_coherent(0x1800, DmaAttrs::NONE).unwrap();
    assert!(b.dma.raw() <= 0xffff_ffff, "coherent mask stays 32-bit");
    assert_eq!(pool.pages_in_use(), 2);
    let dev = &w.devs[0];
    assert_eq!(
        w.hw.translate(dev, b.dma.into(), Access::Write),
        Ok(b.paddr)
    );
    assert_eq!(
        dma.unmap_single(b.dma, 0x1800, Dir::Bidirectional),
        Err(DmaError::Mismatch)
    );
    dma.free_coherent(&b).unwrap();
    assert_eq!(pool.pages_in_use(), 0);
    assert_eq!(dma.free_coherent(&b), Err(DmaError::NotMapped));
    // An exhausted pool is NoMemory and leaves no IOVA behind.
    assert_eq!(
        dma.alloc_coherent(0x20_0000, DmaAttrs::NONE),
        Err(DmaError::NoMemory)
    );
    let no_pool = w.bind_with(0, DmaOptions::default());
    assert_eq!(
        no_pool.alloc_coherent(0x1000, DmaAttrs::NONE),
        Err(DmaError::NoMemory)
    );
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(&'static str, u64, u64)>>);

impl ArchSync for Recorder {
    fn sync_for_device(&self, paddr: PhysAddr, size: u64, _dir: Dir) {
        self.0.lock().unwrap().push(("device", paddr.raw(), size));
    }
    fn sync_for_cpu(&self, paddr: PhysAddr, size: u64, _dir: Dir) {
        self.0.lock().unwrap().push(("cpu", paddr.raw(), size));
    }
}

#[test]
fn non_coherent_devices_get_cache_maintenance_and_coherent_ones_none() {
    let w = world(1, true);
    let rec = Arc::new(Recorder::default());
    let opts = |coherent| DmaOptions {
        coherent: Some(coherent),
        arch_sync: Some(rec.clone()),
        ..DmaOptions::default()
    };
    let nc = w.bind_with(0, opts(false));
    let a = nc
        .map_single(PhysAddr::new(BUF + 8), 0x40, Dir::FromDevice)
        .unwrap();
    nc.sync_single_for_cpu(a, 0x40, Dir::FromDevice).unwrap();
    nc.sync_single_for_device(a, 0x40, Dir::FromDevice).unwrap();
    nc.unmap_single(a, 0x40, Dir::FromDevice).unwrap();
    let b = nc
        .map_single_attrs(
            PhysAddr::new(BUF),
            0x40,
            Dir::ToDevice,
            DmaAttrs::SKIP_CPU_SYNC,
        )
        .unwrap();
    nc.unmap_single_attrs(b, 0x40, Dir::ToDevice, DmaAttrs::SKIP_CPU_SYNC)
        .unwrap();
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            ("device", BUF + 8, 0x40),
            ("cpu", BUF + 8, 0x40),
            ("device", BUF + 8, 0x40),
            ("cpu", BUF + 8, 0x40)
        ]
    );
    assert_eq!(
        nc.sync_single_for_cpu(a, 0x40, Dir::FromDevice),
        Err(DmaError::NotMapped)
    );
    drop(nc);
    rec.0.lock().unwrap().clear();
    let c = w.bind_with(0, opts(true));
    let a = c
        .map_single(PhysAddr::new(BUF), 0x40, Dir::FromDevice)
        .unwrap();
    c.sync_single_for_cpu(a, 0x40, Dir::FromDevice).unwrap();
    c.unmap_single(a, 0x40, Dir::FromDevice).unwrap();
    assert!(rec.0.lock().unwrap().is_empty());
}

#[test]
fn coherent_devices_map_cacheable_and_privileged_maps_are_privileged() {
    let w = world(1, true);
    let dma = w.bind(0);
    assert!(dma.is_coherent(), "the IOMMU reports cache coherency");
    let a = dma
        .map_single_attrs(
            PhysAddr::new(BUF),
            0x1000,
            Dir::ToDevice,
            DmaAttrs::PRIVILEGED,
        )
        .unwrap();
    let prot = common::leaves(dma.domain())
        .iter()
        .find(|m| m.0.raw() == a.raw())
        .unwrap()
        .3;
    // x86-64 first-stage leaves carry neither: the memory type comes
    // from the PAT, and DMA without a privilege request is a user access.
    let first_stage = common::driver() == "vtd-sm";
    assert!(prot.contains(iommu_core::Prot::READ));
    assert_eq!(prot.contains(iommu_core::Prot::CACHE), !first_stage);
    // VT-d's second level has no privilege bit (Linux drops IOMMU_PRIV there).
    assert_eq!(
        prot.contains(iommu_core::Prot::PRIV),
        !common::driver().starts_with("vtd")
    );
    assert!(!prot.contains(iommu_core::Prot::WRITE));
}

#[test]
fn binding_needs_a_dma_default_domain_and_blocks_user_ownership_until_dropped() {
    let w = world(2, true);
    let g1 = w.devs[1].iommu_group().unwrap();
    w.iommu
        .sysfs()
        .write(&format!("kernel/iommu_groups/{}/type", g1.id()), "identity")
        .unwrap();
    assert_eq!(
        DmaDevice::bind(&w.iommu, &w.devs[1], DmaOptions::default()).err(),
        Some(DmaError::NotTranslated)
    );
    let g0 = w.devs[0].iommu_group().unwrap();
    w.iommu.group_claim_dma_owner(&g0, DmaOwner::new()).unwrap();
    assert_eq!(
        DmaDevice::bind(&w.iommu, &w.devs[0], DmaOptions::default()).err(),
        Some(DmaError::Busy)
    );
    w.iommu.group_release_dma_owner(&g0);
    let dma = w.bind(0);
    assert_eq!(
        w.iommu.group_claim_dma_owner(&g0, DmaOwner::new()),
        Err(Errno::EPERM)
    );
    drop(dma);
    w.iommu.group_claim_dma_owner(&g0, DmaOwner::new()).unwrap();
    w.iommu.group_release_dma_owner(&g0);
}

#[test]
fn a_second_device_in_the_group_shares_the_iova_space() {
    let w = world(1, true);
    let a = w.bind(0);
    let b = w.bind(0);
    let x = a
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    let y = b
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert_ne!(x, y);
    assert_eq!(
        b.unmap_single(x, 0x1000, Dir::ToDevice),
        Err(DmaError::NotMapped),
        "not b's mapping"
    );
}

#[test]
fn switching_dma_to_dma_fq_through_sysfs_makes_a_bound_device_lazy_at_once() {
    let w = world(1, true);
    let dma = w.bind(0);
    assert!(!dma.is_lazy());
    let path = format!(
        "kernel/iommu_groups/{}/type",
        w.devs[0].iommu_group().unwrap().id()
    );
    w.iommu.sysfs().write(&path, "DMA-FQ").unwrap();
    assert_eq!(dma.domain().ty(), DomainType::DmaFq);
    assert!(dma.is_lazy());
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    assert_eq!(dma.domain_stats().fq.queued, 1);
    // Back to DMA needs the driver gone, as in Linux.
    assert_eq!(w.iommu.sysfs().write(&path, "DMA"), Err(Errno::EPERM));
    drop(dma);
    w.iommu.sysfs().write(&path, "DMA").unwrap();
    let dma = w.bind(0);
    assert!(!dma.is_lazy(), "a new strict domain with a new IOVA space");
    assert_eq!(dma.domain_stats().fq.queued, 0);
}

#[test]
fn a_device_without_a_group_is_not_translated() {
    let w = world(1, true);
    let dev = w
        .bus
        .add_device(iommu_core::DeviceBuilder::new("bmc"))
        .unwrap();
    assert_eq!(
        DmaDevice::bind(&w.iommu, &dev, DmaOptions::default()).err(),
        Some(DmaError::NotTranslated)
    );
}

#[test]
fn an_unmap_the_page_tables_disagree_with_still_clears_and_frees_its_iova() {
    // Something unmaps part of a DMA mapping behind the DMA layer's back.
    // The handle record proves the range is this mapping's, so the unmap
    // clears whatever is left and frees the IOVA rather than leaking it.
    let w = world(1, true);
    let dma = w.bind(0);
    let before = dma.domain_stats().iova.tree_ranges;
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x3000, Dir::Bidirectional)
        .unwrap();
    assert_eq!(dma.domain().unmap(Iova::new(a.raw()), 0x1000), Ok(0x1000));
    assert_eq!(
        dma.unmap_single(a, 0x3000, Dir::Bidirectional),
        Err(DmaError::NotMapped),
        "the disagreement is reported"
    );
    for off in [0x1000, 0x2000] {
        assert!(
            w.hw.translate(&w.devs[0], Iova::new(a.raw() + off), Access::Read)
                .is_err(),
            "{off:#x} still translates"
        );
    }
    assert_eq!(dma.live_mappings(), 0);
    dma.flush_queue_now();
    let s = dma.domain_stats().iova;
    assert_eq!(s.tree_ranges - s.cached, before, "the IOVA went back");
    // And it is handed out again.
    let b = dma
        .map_single(PhysAddr::new(BUF), 0x3000, Dir::Bidirectional)
        .unwrap();
    dma.unmap_single(b, 0x3000, Dir::Bidirectional).unwrap();
}

#[test]
fn lazy_domains_share_one_timer_thread_and_a_dropped_domain_is_skipped() {
    let worlds: Vec<_> = (0..3).map(|_| world(2, false)).collect();
    for w in &worlds {
        for i in 0..2 {
            let dma = w.bind(i);
            assert!(dma.is_lazy());
            let a = dma
                .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
                .unwrap();
            dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
        }
    }
    assert_eq!(
        iommu_dma::fq::live_timer_threads(),
        1,
        "one thread for six domains"
    );
    // Dropped with timeouts pending: the thread skips them and stays.
    drop(worlds);
    std::thread::sleep(iommu_dma::fq::DEFAULT_FQ_TIMEOUT * 3);
    assert_eq!(iommu_dma::fq::live_timer_threads(), 1);
    let w = world(1, false);
    let dma = w.bind(0);
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while dma.domain_stats().fq.queued > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        dma.domain_stats().fq.queued,
        0,
        "the shared thread still serves new domains"
    );
}

/// A kernel's own timer: it is told the timeout, and firing it flushes.
#[test]
fn a_flush_queue_runs_on_the_timer_the_caller_brings() {
    use iommu_dma::fq::{FqTimeout, FqTimer};
    use std::sync::Weak;
    #[derive(Default)]
    struct ManualTimer(Mutex<Vec<(std::time::Duration, Weak<dyn FqTimeout>)>>);
    impl FqTimer for ManualTimer {
        fn schedule(&self, after: std::time::Duration, target: Weak<dyn FqTimeout>) {
            self.0.lock().unwrap().push((after, target));
        }
    }
    let timer = Arc::new(ManualTimer::default());
    let w = world(1, false);
    let timeout = std::time::Duration::from_millis(7);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_timer: Some(timer.clone()),
            fq_timeout: timeout,
            ..DmaOptions::default()
        },
    );
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    let b = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(b, 0x1000, Dir::ToDevice).unwrap();
    let pending: Vec<_> = timer.0.lock().unwrap().drain(..).collect();
    assert_eq!(pending.len(), 1, "armed once while pending");
    assert_eq!(pending[0].0, timeout);
    assert_eq!(dma.domain_stats().fq.queued, 2);
    pending[0]
        .1
        .upgrade()
        .expect("the domain is alive")
        .timeout();
    assert_eq!(dma.domain_stats().fq.queued, 0);
    assert_eq!(dma.domain_stats().fq.timeout_flushes, 1);
}

/// A kernel's CPU ids: each CPU the kernel names queues into its own ring,
/// so a ring fills (and flushes) by that CPU's unmaps alone; with one
/// shared CPU the same unmaps fill the one ring sooner.
#[test]
fn flush_queue_rings_follow_the_cpu_ids_the_caller_brings() {
    use iommu_dma::fq::{FqTimeout, FqTimer};
    use iommu_dma::DmaCpus;
    use iommu_iova::CpuId;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Weak;

    /// The kernel's per-CPU register, which the test moves between CPUs.
    struct KernelCpus(AtomicUsize);
    impl CpuId for KernelCpus {
        fn nr_cpus(&self) -> usize {
            2
        }
        fn current(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }
    /// A timer that never fires: only full rings flush.
    struct Never;
    impl FqTimer for Never {
        fn schedule(&self, _: std::time::Duration, _: Weak<dyn FqTimeout>) {}
    }

    let unmap_on = |dma: &iommu_dma::DmaDevice, cpus: Option<&KernelCpus>, cpu: usize| {
        if let Some(c) = cpus {
            c.0.store(cpu, Ordering::Relaxed);
        }
        let a = dma
            .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
            .unwrap();
        dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    };

    let cpus = Arc::new(KernelCpus(AtomicUsize::new(0)));
    let w = world(1, false);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_timer: Some(Arc::new(Never)),
            fq_size: 2,
            cpus: DmaCpus::Kernel(cpus.clone()),
            ..DmaOptions::default()
        },
    );
    for cpu in [0, 0, 1, 1] {
        unmap_on(&dma, Some(&cpus), cpu);
    }
    let fq = dma.domain_stats().fq;
    assert_eq!((fq.queued, fq.full_flushes), (4, 0), "two rings of two");
    unmap_on(&dma, Some(&cpus), 0);
    let fq = dma.domain_stats().fq;
    assert_eq!(fq.full_flushes, 1, "CPU 0's ring was full");
    assert_eq!(
        fq.queued, 3,
        "CPU 0's two freed, its new one and CPU 1's two wait"
    );

    let w = world(1, false);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_timer: Some(Arc::new(Never)),
            fq_size: 2,
            cpus: DmaCpus::Single,
            ..DmaOptions::default()
        },
    );
    for _ in 0..3 {
        unmap_on(&dma, None, 0);
    }
    let fq = dma.domain_stats().fq;
    assert_eq!((fq.queued, fq.full_flushes), (1, 1), "one shared ring");
}
