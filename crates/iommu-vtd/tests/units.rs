//! One driver over several remapping units (the DRHDs of a DMAR), as
//! Linux's intel-iommu drives a machine: each device behind the unit its
//! firmware scope names, one domain shared by groups on different units,
//! invalidations sent to exactly the units that may hold a domain's
//! translations, faults read from every unit.

use iommu_core::{Bus, DeviceBuilder, DmaOwner, Domain, Group, Iommu, Iova, PhysAddr, Prot};
use iommu_vtd::emu::{EmuLayout, EmuPlatform};
use iommu_vtd::{ProbeError, TableMode, UnitLookup, VtdConfig, MAX_UNITS};
use iommu_vtd_emu::{Access, Features};
use std::sync::Arc;

/// Requester ids on bus 0 go to the first unit, bus 1 to the second; bus
/// 2 has none.
fn by_bus() -> UnitLookup {
    Arc::new(|sid: u32| match sid >> 8 {
        0 => Some(0),
        1 => Some(1),
        _ => None,
    })
}

fn cfg() -> VtdConfig {
    VtdConfig {
        host_address_width: 48,
        poll_limit: 256,
        ..VtdConfig::default()
    }
}

fn platform(features: &[Features]) -> (EmuPlatform, Iommu, Bus) {
    let plat = EmuPlatform::with_units(EmuLayout::default(), features, cfg(), Some(by_bus()))
        .expect("two units probe");
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for (name, sid) in [
        ("0000:00:03.0", 0x18u32),
        ("0000:01:00.0", 0x100),
        ("0000:02:00.0", 0x200),
    ] {
        bus.add_device(DeviceBuilder::new(name).stream_ids([sid]).pci(true))
            .unwrap();
    }
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    (plat, iommu, bus)
}

/// An unmanaged domain attached to `groups`, each claimed by one owner.
fn shared_by(iommu: &Iommu, bus: &Bus, groups: [&Group; 2]) -> Domain {
    let owner = DmaOwner::new();
    for g in groups {
        iommu.group_claim_dma_owner(g, owner).unwrap();
    }
    let shared = iommu
        .domain_alloc(bus, iommu_core::DomainType::Unmanaged)
        .unwrap();
    for g in groups {
        iommu.attach_group(&shared, g).unwrap();
    }
    shared
}

#[test]
fn each_device_is_translated_by_its_own_unit_and_one_domain_serves_both() {
    let (plat, iommu, bus) = platform(&[Features::default(), Features::default()]);
    assert_eq!(plat.driver.units(), 2);
    let a = bus.find_device("0000:00:03.0").unwrap();
    let b = bus.find_device("0000:01:00.0").unwrap();
    // No unit covers bus 2: no group, as Linux leaves a device no DRHD
    // covers untranslated.
    assert!(bus
        .find_device("0000:02:00.0")
        .unwrap()
        .iommu_group()
        .is_none());
    assert_eq!(plat.driver.unit_for_source(0x18), Some(0));
    assert_eq!(plat.driver.unit_for_source(0x100), Some(1));
    // Each default domain's entry is on its device's unit only.
    let (u0, u1) = (&plat.units[0], &plat.units[1]);
    let da = a.iommu_group().unwrap().default_domain().unwrap();
    da.map(
        Iova::new(0x1000),
        PhysAddr::new(0x50_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        u0.translate(0x18, 0x1000, Access::Read).unwrap().pa,
        0x50_0000
    );
    assert!(
        u1.translate(0x18, 0x1000, Access::Read).is_err(),
        "not on the other unit"
    );

    // One unmanaged domain for both groups, on both units.
    let (ga, gb) = (a.iommu_group().unwrap(), b.iommu_group().unwrap());
    let shared = shared_by(&iommu, &bus, [&ga, &gb]);
    let vd = shared
        .ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<iommu_vtd::emu::EmuDomain>())
        .unwrap();
    assert_eq!(vd.units(), vec![0, 1]);
    shared
        .map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x60_0000),
            0x2000,
            Prot::RW,
        )
        .unwrap();
    for (unit, sid) in [(u0, 0x18), (u1, 0x100)] {
        assert_eq!(
            unit.translate(sid, 0x10_1000, Access::Write).unwrap().pa,
            0x60_1000
        );
    }
    // A strict unmap reaches both units' IOTLBs: neither serves the page.
    let before = [u0.stats().descriptors, u1.stats().descriptors];
    assert_eq!(shared.unmap(Iova::new(0x10_1000), 0x1000), Ok(0x1000));
    assert!(u0.stats().descriptors > before[0] && u1.stats().descriptors > before[1]);
    for (unit, sid) in [(u0, 0x18), (u1, 0x100)] {
        assert!(
            unit.translate(sid, 0x10_1000, Access::Read).is_err(),
            "stale on a unit"
        );
    }
    // Faults come from both units, each naming its unit.
    let faults = plat.driver.handle_faults();
    let units: Vec<usize> = faults.iter().map(|f| f.unit).collect();
    assert!(units.contains(&0) && units.contains(&1), "{faults:?}");
    assert!(faults.iter().any(|f| f.unit == 0 && f.source_id == 0x18));
    assert!(faults.iter().any(|f| f.unit == 1 && f.source_id == 0x100));

    // The second group goes back to its default domain: the shared
    // domain's unmaps no longer go to the second unit.
    iommu.detach_group(&shared, &gb);
    iommu.group_release_dma_owner(&gb);
    assert_eq!(vd.units(), vec![0]);
    let before = [u0.stats().descriptors, u1.stats().descriptors];
    assert_eq!(shared.unmap(Iova::new(0x10_0000), 0x1000), Ok(0x1000));
    assert!(u0.stats().descriptors > before[0]);
    assert_eq!(
        u1.stats().descriptors,
        before[1],
        "nothing of the domain is on it"
    );
    iommu.detach_group(&shared, &ga);
    iommu.group_release_dma_owner(&ga);
    assert!(vd.units().is_empty());
    drop(shared);
    assert_eq!(plat.driver.retired_domains(), 0);
}

#[test]
fn a_domain_freed_while_one_of_its_units_is_wedged_waits_for_that_unit_only() {
    let (plat, iommu, bus) = platform(&[Features::default(), Features::default()]);
    let a = bus.find_device("0000:00:03.0").unwrap();
    let b = bus.find_device("0000:01:00.0").unwrap();
    let (ga, gb) = (a.iommu_group().unwrap(), b.iommu_group().unwrap());
    let shared = shared_by(&iommu, &bus, [&ga, &gb]);
    shared
        .map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x60_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    assert!(plat.units[1]
        .translate(0x100, 0x10_0000, Access::Read)
        .is_ok());
    // The second unit stops answering and its device goes: its entry is
    // cleared, the invalidation owed (the unit may still hold it).
    plat.units[1].pause_invalidations(true);
    bus.remove_device(&b).unwrap();
    drop(gb);
    iommu.detach_group(&shared, &ga);
    iommu.group_release_dma_owner(&ga);
    drop(shared);
    assert_eq!(
        plat.driver.retired_domains(),
        1,
        "waits on the wedged unit only"
    );
    assert_eq!(plat.driver.unit_stats(0).unwrap().timeouts, 0);
    assert_eq!(
        plat.units[1]
            .translate(0x100, 0x10_0000, Access::Read)
            .map(|s| s.pa)
            .ok(),
        Some(0x60_0000),
        "the unit still serves what it cached: why the tables wait"
    );
    plat.units[1].pause_invalidations(false);
    // The next completed invalidation on that unit lets the domain go,
    // owed context entry included.
    plat.driver
        .invalidate(&[iommu_vtd::Invalidation::IotlbGlobal])
        .unwrap();
    assert_eq!(plat.driver.retired_domains(), 0);
    assert!(plat.units[1]
        .translate(0x100, 0x10_0000, Access::Read)
        .is_err());
}

#[test]
fn domains_use_tables_every_unit_walks() {
    // A scalable unit with first-stage tables beside a legacy-only one:
    // domains are second-stage; the scalable unit runs them in scalable
    // mode, the other in legacy mode.
    let legacy = Features {
        scalable_mode: false,
        first_stage: false,
        ..Features::scalable()
    };
    let (plat, _iommu, bus) = platform(&[Features::scalable(), legacy.clone()]);
    assert_eq!(
        plat.driver.unit_mode(0),
        Some(TableMode::ScalableSecondStage)
    );
    assert_eq!(plat.driver.unit_mode(1), Some(TableMode::Legacy));
    for (dev, sid, unit) in [
        ("0000:00:03.0", 0x18u16, 0usize),
        ("0000:01:00.0", 0x100, 1),
    ] {
        let d = bus.find_device(dev).unwrap();
        let dom = d.iommu_group().unwrap().default_domain().unwrap();
        dom.map(
            Iova::new(0x3000),
            PhysAddr::new(0x70_0000),
            0x1000,
            Prot::READ,
        )
        .unwrap();
        let hw = &plat.units[unit];
        assert_eq!(
            hw.translate(sid, 0x3000, Access::Read).unwrap().pa,
            0x70_0000
        );
        assert!(hw.translate(sid, 0x3000, Access::Write).is_err());
    }
    // Both scalable with first-stage tables: first-stage domains.
    let plat = EmuPlatform::with_units(
        EmuLayout::default(),
        &[Features::scalable(), Features::scalable()],
        cfg(),
        Some(by_bus()),
    )
    .unwrap();
    assert_eq!(
        plat.driver.unit_mode(1),
        Some(TableMode::ScalableFirstStage)
    );
    // Asking for first-stage tables where a unit has none names that unit.
    let asked = VtdConfig {
        mode: Some(TableMode::ScalableFirstStage),
        ..cfg()
    };
    let err = EmuPlatform::with_units(
        EmuLayout::default(),
        &[Features::scalable(), legacy],
        asked.clone(),
        Some(by_bus()),
    )
    .err()
    .expect("the legacy unit cannot");
    assert!(matches!(
        err,
        iommu_hw::emu::EmuError::Probe(ProbeError::Mode(TableMode::ScalableFirstStage))
    ));
}

#[test]
fn no_unit_or_too_many_is_a_typed_error() {
    use iommu_pgtable::HeapMemory;
    type Drv = iommu_vtd::Vtd<Arc<iommu_vtd_emu::Vtd<iommu_vtd::emu::EmuMemory>>, HeapMemory>;
    let none = Drv::probe_units(Vec::new(), Arc::new(HeapMemory::new()), cfg(), None);
    assert_eq!(none.err().map(|e| e.1), Some(ProbeError::NoUnits));
    let memory = EmuLayout::default()
        .build::<iommu_vtd_emu::FeatureError, ProbeError>()
        .unwrap()
        .memory;
    let units: Vec<_> = (0..=MAX_UNITS)
        .map(|_| Arc::new(iommu_vtd_emu::Vtd::new(memory.clone(), Features::default()).unwrap()))
        .collect();
    let many = Drv::probe_units(units, Arc::new(HeapMemory::new()), cfg(), None);
    assert_eq!(
        many.err().map(|e| e.1),
        Some(ProbeError::TooManyUnits(MAX_UNITS + 1))
    );
}

#[test]
fn domain_ids_are_the_narrowest_units() {
    let narrow = Features {
        domain_bits: 4,
        ..Features::default()
    };
    let (plat, iommu, bus) = platform(&[Features::default(), narrow]);
    let _ = plat;
    // 16 ids of which 0 is never used: 15 domains at most, whichever unit
    // they end up on; two default domains hold two.
    let mut held = Vec::new();
    loop {
        match iommu.domain_alloc(&bus, iommu_core::DomainType::Unmanaged) {
            Ok(d) => held.push(d),
            Err(e) => {
                assert_eq!(e, iommu_core::Errno::ENOSPC);
                break;
            }
        }
    }
    assert_eq!(held.len(), 13);
}

#[test]
fn units_of_two_pci_segments_keep_the_same_requester_id_apart() {
    // A DRHD per segment: requester id 00:03.0 on segment 0 and on
    // segment 1 are two devices behind two units, whose stream ids carry
    // the segment above the requester id.
    let by_segment: UnitLookup = Arc::new(|id: u32| match id >> 16 {
        0 => Some(0),
        1 => Some(1),
        _ => None,
    });
    let plat = EmuPlatform::with_units(
        EmuLayout::default(),
        &[Features::default(), Features::default()],
        cfg(),
        Some(by_segment),
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let add = |name: &str, ids: &[u32]| {
        bus.add_device(
            DeviceBuilder::new(name)
                .stream_ids(ids.iter().copied())
                .pci(true),
        )
        .unwrap()
    };
    let a = add("0000:00:03.0", &[0x18]);
    let b = add("0001:00:03.0", &[1 << 16 | 0x18]);
    // A segment no unit has: not translated.
    let lost = add("0002:00:03.0", &[2 << 16 | 0x18]);
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    // Ids on two segments (no PCI device has them): refused (EINVAL, which
    // the core logs for a device added later).
    let split = add("0001:00:04.0", &[1 << 16 | 0x20, 0x20]);
    assert!(split.iommu_group().is_none() && lost.iommu_group().is_none());
    let (da, db) = (
        a.iommu_group().unwrap().default_domain().unwrap(),
        b.iommu_group().unwrap().default_domain().unwrap(),
    );
    assert_ne!(da, db);
    da.map(
        Iova::new(0x1000),
        PhysAddr::new(0x50_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    db.map(
        Iova::new(0x1000),
        PhysAddr::new(0x70_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        plat.units[0]
            .translate(0x18, 0x1000, Access::Read)
            .unwrap()
            .pa,
        0x50_0000
    );
    assert_eq!(
        plat.units[1]
            .translate(0x18, 0x1000, Access::Read)
            .unwrap()
            .pa,
        0x70_0000
    );
    assert_eq!(plat.driver.unit_for_source(0x18), Some(0));
    assert_eq!(plat.driver.unit_for_source(1 << 16 | 0x18), Some(1));
    assert_eq!(plat.driver.source_domain(1 << 16 | 0x18), Some(db));
    assert_eq!(plat.driver.source_domain(0x18), Some(da));
}

#[test]
fn one_unit_without_a_lookup_covers_segment_0_only() {
    let plat = EmuPlatform::new(EmuLayout::default(), Features::default(), cfg()).unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    bus.add_device(
        DeviceBuilder::new("0001:00:03.0")
            .stream_ids([1 << 16 | 0x18])
            .pci(true),
    )
    .unwrap();
    assert_eq!(
        iommu.bus_set_iommu(&bus, Arc::new(plat.driver.clone())),
        Err(iommu_core::Errno::ERANGE)
    );
}
