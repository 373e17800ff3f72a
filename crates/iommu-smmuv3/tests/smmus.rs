//! One driver over several SMMUs (the IORT's SMMUv3 nodes): each device
//! behind the SMMU and with the stream id the firmware maps its id to, a
//! paging domain bound to the SMMU of its first device (another SMMU's
//! device is refused, as in Linux), blocked and identity domains for all,
//! events read from every SMMU.

use iommu_core::{Bus, DeviceBuilder, DmaOwner, DomainType, Errno, Iommu, Iova, PhysAddr, Prot};
use iommu_smmuv3::emu::{EmuDomain, EmuLayout, EmuPlatform};
use iommu_smmuv3::{ProbeError, Smmuv3Config, StreamLookup, MAX_SMMUS};
use iommu_smmuv3_emu::{Access, Features};
use std::sync::Arc;

/// Ids 0x000-0x0ff reach the first SMMU, 0x100-0x1ff the second, both
/// with stream id = id + 0x40 (an IORT ID mapping with an output base).
fn lookup() -> StreamLookup {
    Arc::new(|id: u32| match id >> 8 {
        0 => Some((0, id + 0x40)),
        1 => Some((1, (id & 0xff) + 0x40)),
        _ => None,
    })
}

fn cfg() -> Smmuv3Config {
    Smmuv3Config {
        poll_limit: 256,
        ..Smmuv3Config::default()
    }
}

fn platform() -> (EmuPlatform, Iommu, Bus) {
    let plat = EmuPlatform::with_smmus(
        EmuLayout::default(),
        &[Features::default(), Features::default()],
        cfg(),
        Some(lookup()),
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for (name, id) in [("a", 0x08u32), ("b", 0x108), ("none", 0x208)] {
        bus.add_device(DeviceBuilder::new(name).stream_ids([id]).pci(true))
            .unwrap();
    }
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    (plat, iommu, bus)
}

fn vdom(d: &iommu_core::Domain) -> &EmuDomain {
    d.ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<EmuDomain>())
        .unwrap()
}

#[test]
fn each_device_is_behind_its_smmu_with_the_stream_id_the_firmware_gives() {
    let (plat, _iommu, bus) = platform();
    assert_eq!(plat.driver.smmus(), 2);
    let (a, b) = (bus.find_device("a").unwrap(), bus.find_device("b").unwrap());
    assert!(bus.find_device("none").unwrap().iommu_group().is_none());
    let da = a.iommu_group().unwrap().default_domain().unwrap();
    let db = b.iommu_group().unwrap().default_domain().unwrap();
    assert_eq!((vdom(&da).smmu(), vdom(&db).smmu()), (Some(0), Some(1)));
    da.map(
        Iova::new(0x1000),
        PhysAddr::new(0x50_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    db.map(
        Iova::new(0x1000),
        PhysAddr::new(0x60_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    let (s0, s1) = (&plat.smmus[0], &plat.smmus[1]);
    // Both devices' stream id is 0x48, each on its own SMMU.
    assert_eq!(
        s0.translate(0x48, 0x1000, Access::Read).unwrap().pa,
        0x50_0000
    );
    assert_eq!(
        s1.translate(0x48, 0x1000, Access::Read).unwrap().pa,
        0x60_0000
    );
    assert!(
        s0.translate(0x08, 0x1000, Access::Read).is_err(),
        "the id is not the stream id"
    );
    assert_eq!(plat.driver.stream_of(0x108), Some((1, 0x48)));
    assert_eq!(plat.driver.stream_domain(0x108), Some(db.clone()));
    // A strict unmap reaches the domain's SMMU.
    assert_eq!(db.unmap(Iova::new(0x1000), 0x1000), Ok(0x1000));
    assert!(s1.translate(0x48, 0x1000, Access::Read).is_err());
    // Events come from both SMMUs, each with its SMMU.
    let _ = s0.translate(0x48, 0x9000, Access::Read);
    let events = plat.driver.handle_irq();
    assert!(events
        .iter()
        .any(|e| e.unit == 0 && e.sid == 0x48 && e.iova == 0x9000));
    assert!(events
        .iter()
        .any(|e| e.unit == 1 && e.sid == 0x48 && e.iova == 0x1000));
}

#[test]
fn a_paging_domain_serves_one_smmu_and_blocked_and_identity_domains_all() {
    let (plat, iommu, bus) = platform();
    let (a, b) = (bus.find_device("a").unwrap(), bus.find_device("b").unwrap());
    let (ga, gb) = (a.iommu_group().unwrap(), b.iommu_group().unwrap());
    let owner = DmaOwner::new();
    iommu.group_claim_dma_owner(&ga, owner).unwrap();
    iommu.group_claim_dma_owner(&gb, owner).unwrap();
    let user = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
    assert_eq!(vdom(&user).smmu(), None, "bound by its first attach");
    iommu.attach_group(&user, &gb).unwrap();
    assert_eq!(vdom(&user).smmu(), Some(1));
    // Behind the other SMMU: refused, as Linux refuses it; the group
    // stays where it was (blocked, while owned).
    assert_eq!(iommu.attach_group(&user, &ga), Err(Errno::EINVAL));
    assert_ne!(ga.domain(), Some(user.clone()));
    assert!(plat.smmus[0].translate(0x48, 0x1000, Access::Read).is_err());
    // Identity and blocked domains hold no tag: one serves both SMMUs.
    iommu.detach_group(&user, &gb);
    let identity = iommu.domain_alloc(&bus, DomainType::Identity).unwrap();
    iommu.attach_group(&identity, &ga).unwrap();
    iommu.attach_group(&identity, &gb).unwrap();
    for s in &plat.smmus {
        assert_eq!(s.translate(0x48, 0x7000, Access::Read).unwrap().pa, 0x7000);
    }
    iommu.detach_group(&identity, &ga);
    iommu.detach_group(&identity, &gb);
    iommu.group_release_dma_owner(&ga);
    iommu.group_release_dma_owner(&gb);
    drop(user);
    assert_eq!(plat.driver.retired_domains(), 0);
}

#[test]
fn a_wedged_smmu_holds_back_only_its_own_domains() {
    let (plat, _iommu, bus) = platform();
    let da = bus
        .find_device("a")
        .unwrap()
        .iommu_group()
        .unwrap()
        .default_domain()
        .unwrap();
    let db = bus
        .find_device("b")
        .unwrap()
        .iommu_group()
        .unwrap()
        .default_domain()
        .unwrap();
    for d in [&da, &db] {
        d.map(
            Iova::new(0x2000),
            PhysAddr::new(0x70_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    }
    plat.smmus[1].pause_commands(true);
    assert_eq!(da.unmap(Iova::new(0x2000), 0x1000), Ok(0x1000));
    assert!(
        db.unmap(Iova::new(0x2000), 0x1000).is_err(),
        "its SMMU did not answer"
    );
    assert_eq!(plat.driver.smmu_stats(0).unwrap().sync_timeouts, 0);
    plat.smmus[1].pause_commands(false);
    plat.driver.sync().unwrap();
    assert!(plat.smmus[1].translate(0x48, 0x2000, Access::Read).is_err());
}

#[test]
fn a_device_whose_ids_reach_two_smmus_is_refused() {
    let (_plat, _iommu, bus) = platform();
    // Added after the driver: the core logs the refusal (EINVAL) and the
    // device gets no group.
    let split = bus
        .add_device(
            DeviceBuilder::new("split")
                .stream_ids([0x10, 0x110])
                .pci(true),
        )
        .unwrap();
    assert!(split.iommu_group().is_none());
}

#[test]
fn no_smmu_or_too_many_is_a_typed_error() {
    let none = EmuPlatform::with_smmus(EmuLayout::default(), &[], cfg(), None);
    assert!(matches!(
        none.err(),
        Some(iommu_hw::emu::EmuError::Probe(ProbeError::Smmus(0)))
    ));
    let many = EmuPlatform::with_smmus(
        EmuLayout::default(),
        &vec![Features::default(); MAX_SMMUS + 1],
        cfg(),
        None,
    );
    assert!(matches!(
        many.err(),
        Some(iommu_hw::emu::EmuError::Probe(ProbeError::Smmus(n))) if n == MAX_SMMUS + 1
    ));
}
