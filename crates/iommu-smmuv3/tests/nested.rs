//! Nested translation on the emulated SMMUv3: a host's stage-2 nest
//! parent, a vSMMU over it, and a guest's CD and stage-1 tables (in
//! guest-physical memory the parent maps) installed from the guest's vSTE.
//! The emulator walks the guest's tables through stage 2 exactly as the
//! STE says; these tests check what reaches the hardware.

use iommu_core::{
    Bus, DeviceBuilder, DmaOwner, Domain, Errno, InvalidateError, Iommu, Iova, PagingFlags,
    PhysAddr, Prot, UserData, UserDataArray, Viommu,
};
use iommu_smmuv3::emu::{EmuDomain, EmuLayout, EmuPlatform};
use iommu_smmuv3::nested::{
    Vste, HWPT_DATA_ARM_SMMUV3, VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3,
};
use iommu_smmuv3::testing::{alloc_nested, guest_invalidate, le_bytes, NestedGuest};
use iommu_smmuv3::{Smmuv3Config, StreamLookup};
use iommu_smmuv3_emu::{Access, Features};
use std::sync::Arc;

/// Where the guest keeps its CD and stage-1 tables: guest-physical =
/// host-physical there (the parent maps it 1:1), apart from the driver's.
const GUEST_TABLES: u64 = 0x500_0000;
const GUEST_TABLES_SIZE: u64 = 0x10_0000;
/// A guest page at this IPA is host page `HOST_DATA`.
const GUEST_DATA: u64 = 0x4000_0000;
const HOST_DATA: u64 = 0x600_0000;
/// The guest's VA for it, and its ASID.
const VA: u64 = 0x8000;
const GUEST_ASID: u16 = 7;
const VSID: u64 = 0x33;
const SID: u32 = 0x10;

fn lookup() -> StreamLookup {
    Arc::new(|id: u32| match id >> 8 {
        0 => Some((0, id)),
        1 => Some((1, id & 0xff)),
        _ => None,
    })
}

struct Host {
    plat: EmuPlatform,
    iommu: Iommu,
    bus: Bus,
}

fn host(features: &[Features]) -> Host {
    let plat = EmuPlatform::with_smmus(
        EmuLayout::default(),
        features,
        Smmuv3Config {
            poll_limit: 256,
            ..Smmuv3Config::default()
        },
        Some(lookup()),
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for (name, id) in [("nic", SID), ("gpu", 0x11), ("far", 0x110)] {
        bus.add_device(DeviceBuilder::new(name).stream_ids([id]).pci(true))
            .unwrap();
    }
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    // `far` is behind the second SMMU, when there is one.
    for g in bus.devices().iter().filter_map(|d| d.iommu_group()) {
        iommu.group_claim_dma_owner(&g, DmaOwner::new()).unwrap();
    }
    Host { plat, iommu, bus }
}

/// The guest, with `VA` mapped to its data page.
fn guest(h: &Host) -> NestedGuest {
    let g = NestedGuest::new(&h.plat, GUEST_TABLES, GUEST_TABLES_SIZE, GUEST_ASID);
    g.map(VA, GUEST_DATA).unwrap();
    g
}

/// The host's nest parent with guest memory mapped, and a vSMMU over it
/// naming the NIC `VSID`.
fn parent_and_viommu(h: &Host) -> (Domain, Viommu) {
    let nic = h.bus.find_device("nic").unwrap();
    let parent = h
        .iommu
        .domain_alloc_paging_flags(&nic, PagingFlags::NEST_PARENT, None)
        .unwrap();
    assert!(parent.is_nest_parent());
    parent
        .map(
            Iova::new(GUEST_TABLES),
            PhysAddr::new(GUEST_TABLES),
            GUEST_TABLES_SIZE,
            Prot::RW,
        )
        .unwrap();
    parent
        .map(
            Iova::new(GUEST_DATA),
            PhysAddr::new(HOST_DATA),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    let viommu = h
        .iommu
        .viommu_alloc(&nic, &parent, VIOMMU_TYPE_ARM_SMMUV3, None)
        .unwrap();
    viommu.vdevice_alloc(&nic, VSID).unwrap();
    (parent, viommu)
}

#[test]
fn a_guests_stage_1_translates_through_the_hosts_stage_2() {
    let h = host(&[Features::default()]);
    let (parent, viommu) = parent_and_viommu(&h);
    let g = guest(&h);
    let dom = alloc_nested(&viommu, g.vste()).unwrap();
    assert_eq!(dom.ty(), iommu_core::DomainType::Nested);
    assert_eq!(dom.nest_parent(), Some(&parent));
    let nic = h.bus.find_device("nic").unwrap();
    h.iommu
        .attach_group(&dom, &nic.iommu_group().unwrap())
        .unwrap();
    // The physical STE: nested config, the guest's CD pointer, the
    // parent's VMID and stage-2 table.
    let ste = h.plat.driver.ste(SID).unwrap();
    assert_eq!((ste[0] >> 1) & 7, 0b111);
    assert_eq!(ste[0] & 0x000f_ffff_ffff_ffc0, g.cd.raw());
    let s2 = parent
        .ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<EmuDomain>())
        .unwrap();
    assert_eq!(ste[2] & 0xffff, u64::from(s2.vmid().unwrap()));
    let hw = &h.plat.hw;
    assert_eq!(
        hw.translate(SID, VA + 0x24, Access::Write).unwrap().pa,
        HOST_DATA + 0x24
    );
    // The core cannot map into a nested domain: the guest owns stage 1
    // (Linux 7.3's `iommu_map` refuses a domain that is not paging).
    assert_eq!(
        dom.map(Iova::new(0), PhysAddr::new(0), 0x1000, Prot::RW),
        Err(Errno::EINVAL)
    );

    // The guest unmaps its page: the SMMU may still serve it from its TLB
    // until the guest's TLBI, whose VMID the host replaces with its own.
    g.unmap(VA);
    let stale = hw.translate(SID, VA, Access::Read);
    assert!(stale.is_ok(), "the emulator's TLB holds the leaf");
    let foreign_vmid = 0x77u64 << 32;
    guest_invalidate(
        &viommu,
        &[[0x12 | (u64::from(GUEST_ASID) << 48) | foreign_vmid, VA | 1]],
    )
    .unwrap();
    assert!(hw.translate(SID, VA, Access::Read).is_err());

    // The host unmaps the guest page from stage 2: the combined entry goes
    // with it, whatever the guest did.
    g.map(VA, GUEST_DATA).unwrap();
    guest_invalidate(&viommu, &[[0x11 | (u64::from(GUEST_ASID) << 48), 0]]).unwrap();
    assert_eq!(hw.translate(SID, VA, Access::Read).unwrap().pa, HOST_DATA);
    assert_eq!(parent.unmap(Iova::new(GUEST_DATA), 0x1000), Ok(0x1000));
    assert!(hw.translate(SID, VA, Access::Read).is_err());
}

#[test]
fn bypass_and_abort_vstes_use_stage_2_alone_or_nothing() {
    let h = host(&[Features::default()]);
    let (_parent, viommu) = parent_and_viommu(&h);
    let nic = h.bus.find_device("nic").unwrap();
    let group = nic.iommu_group().unwrap();
    let bypass = alloc_nested(&viommu, [1 | (0b100 << 1), 0]).unwrap();
    h.iommu.attach_group(&bypass, &group).unwrap();
    let hw = &h.plat.hw;
    // Guest bypass: the IPA is the address, stage 2 still applies.
    assert_eq!(
        hw.translate(SID, GUEST_DATA, Access::Read).unwrap().pa,
        HOST_DATA
    );
    assert!(hw.translate(SID, 0x7000_0000, Access::Read).is_err());
    h.iommu.detach_group(&bypass, &group);
    // Not valid: an abort STE.
    let abort = alloc_nested(&viommu, [0, 0]).unwrap();
    let v = abort
        .ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<EmuDomain>());
    assert_eq!(v.unwrap().vste(), Some(Vste::Abort));
    h.iommu.attach_group(&abort, &group).unwrap();
    assert!(hw.translate(SID, GUEST_DATA, Access::Read).is_err());
}

#[test]
fn what_the_guest_may_not_set_is_refused_with_linuxs_errors() {
    let h = host(&[Features::default()]);
    let (parent, viommu) = parent_and_viommu(&h);
    let g = guest(&h);
    let good = g.vste();
    // A stage-2 field, S2 config, EATS = S1CHK, an unknown config: EIO.
    for bad in [
        [good[0], good[1] | (1 << 25)],
        [1 | (0b110 << 1), 0],
        [good[0], good[1] | (2 << 28)],
        [1 | (0b001 << 1), 0],
        [good[0] | (1 << 58), good[1]],
    ] {
        assert_eq!(
            alloc_nested(&viommu, bad).err(),
            Some(Errno::EIO),
            "{bad:x?}"
        );
    }
    // Wrong type, short, long: EINVAL; flags: EOPNOTSUPP.
    let bytes = le_bytes(&good);
    for (ty, len) in [(HWPT_DATA_ARM_SMMUV3 + 1, 16), (HWPT_DATA_ARM_SMMUV3, 8)] {
        let r = viommu.alloc_domain_nested(
            0,
            &UserData {
                ty,
                data: &bytes[..len],
            },
        );
        assert_eq!(r.err(), Some(Errno::EINVAL));
    }
    let long = [bytes.clone(), vec![0; 8]].concat();
    let r = viommu.alloc_domain_nested(
        0,
        &UserData {
            ty: HWPT_DATA_ARM_SMMUV3,
            data: &long,
        },
    );
    assert_eq!(r.err(), Some(Errno::EINVAL));
    let r = viommu.alloc_domain_nested(
        1,
        &UserData {
            ty: HWPT_DATA_ARM_SMMUV3,
            data: &bytes,
        },
    );
    assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));

    // A device the guest has no vSID for cannot use its CD table.
    let gpu = h.bus.find_device("gpu").unwrap();
    let dom = alloc_nested(&viommu, good).unwrap();
    assert_eq!(
        h.iommu.attach_group(&dom, &gpu.iommu_group().unwrap()),
        Err(Errno::ENOENT)
    );
    assert_eq!(viommu.vdevice_alloc(&gpu, VSID), Err(Errno::EEXIST));
    let nic = h.bus.find_device("nic").unwrap();
    assert_eq!(viommu.vdevice_alloc(&nic, VSID + 1), Err(Errno::EEXIST));

    // Commands: a stage-2 TLBI, CFGI_STE, a secure bit, ATC_INV (no ATS),
    // an unknown vSID. The entries before the bad one are done.
    let ok = [0x11 | (u64::from(GUEST_ASID) << 48), 0];
    for (bad, why) in [
        ([0x2a, 0x1000], "TLBI_S2_IPA"),
        ([0x03 | (u64::from(SID) << 32), 0], "CFGI_STE"),
        ([0x11 | (1 << 10), 0], "a RES0 bit"),
        ([0x40 | (VSID << 32), 0], "ATC_INV"),
        ([0x05 | (0x99 << 32), 0], "CFGI_CD of an unknown vSID"),
        ([0x12, 0x1000 | (1 << 8)], "TLBI_NH_VA with TG = 0 and TTL"),
    ] {
        let r = guest_invalidate(&viommu, &[ok, ok, bad, ok]);
        assert_eq!(
            r,
            Err(InvalidateError {
                handled: 2,
                errno: Errno::EIO
            }),
            "{why}"
        );
    }
    // CFGI_CD of a vSID reaches the device's stream.
    guest_invalidate(
        &viommu,
        &[[0x05 | (VSID << 32), 1], [0x06 | (VSID << 32), 0]],
    )
    .unwrap();
    // Array rules: wrong type, no entries, short data.
    let bytes = le_bytes(&ok);
    let arr = |ty, entry_len, entry_num, d: &[u8]| {
        viommu
            .cache_invalidate(&UserDataArray {
                ty,
                data: d,
                entry_len,
                entry_num,
            })
            .map_err(|e| e.errno)
    };
    assert_eq!(arr(9, 16, 1, &bytes), Err(Errno::EINVAL));
    assert_eq!(
        arr(VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16, 0, &bytes),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        arr(VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16, 2, &bytes),
        Err(Errno::EFAULT)
    );
    let long = [bytes.clone(), vec![0, 0, 0, 0, 0, 0, 0, 1]].concat();
    assert_eq!(
        arr(VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 24, 1, &long),
        Err(Errno::E2BIG)
    );
    let long = [bytes.clone(), vec![0; 8]].concat();
    assert_eq!(arr(VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 24, 1, &long), Ok(()));
    drop(parent);
}

#[test]
fn only_a_nest_parent_on_the_devices_smmu_takes_a_viommu() {
    let h = host(&[Features::default(), Features::default()]);
    let nic = h.bus.find_device("nic").unwrap();
    let far = h.bus.find_device("far").unwrap();
    let plain = h
        .iommu
        .domain_alloc_paging_flags(&nic, PagingFlags::empty(), None)
        .unwrap();
    assert_eq!(
        h.iommu
            .viommu_alloc(&nic, &plain, VIOMMU_TYPE_ARM_SMMUV3, None),
        Err(Errno::EINVAL)
    );
    for flags in [PagingFlags::DIRTY_TRACKING, PagingFlags::PASID] {
        assert_eq!(
            h.iommu.domain_alloc_paging_flags(&nic, flags, None).err(),
            Some(Errno::EOPNOTSUPP)
        );
    }
    let parent = h
        .iommu
        .domain_alloc_paging_flags(&nic, PagingFlags::NEST_PARENT, None)
        .unwrap();
    assert_eq!(
        h.iommu.viommu_alloc(&nic, &parent, 2, None),
        Err(Errno::EOPNOTSUPP)
    );
    let viommu = h
        .iommu
        .viommu_alloc(&nic, &parent, VIOMMU_TYPE_ARM_SMMUV3, None)
        .unwrap();
    // The parent is now the first SMMU's; the other SMMU's device cannot
    // be named or attached.
    assert_eq!(
        h.iommu
            .viommu_alloc(&far, &parent, VIOMMU_TYPE_ARM_SMMUV3, None),
        Err(Errno::EINVAL)
    );
    assert_eq!(viommu.vdevice_alloc(&far, 1), Err(Errno::EINVAL));
    let bypass = alloc_nested(&viommu, [1 | (0b100 << 1), 0]).unwrap();
    assert_eq!(
        h.iommu.attach_group(&bypass, &far.iommu_group().unwrap()),
        Err(Errno::EINVAL)
    );
    viommu.vdevice_alloc(&nic, 5).unwrap();
    assert_eq!(viommu.find_dev(5).as_deref().map(|d| d.name()), Some("nic"));
    viommu.vdevice_destroy(5).unwrap();
    assert_eq!(viommu.vdevice_destroy(5), Err(Errno::ENOENT));

    // An SMMU without stage 1 cannot nest.
    let s2_only = Features {
        stage1: false,
        ..Features::default()
    };
    let h = host(&[s2_only]);
    let nic = h.bus.find_device("nic").unwrap();
    assert_eq!(
        h.iommu
            .domain_alloc_paging_flags(&nic, PagingFlags::NEST_PARENT, None)
            .err(),
        Some(Errno::EOPNOTSUPP)
    );
}

/// Deterministic hostile-guest sequences, also the seed corpus of the
/// `smmuv3_nested` fuzz target (`$IOMMU_FUZZ_SEEDS/smmuv3_nested`).
#[test]
fn seed_sequences_of_a_hostile_guest_reach_only_what_the_host_maps() {
    use iommu_soft::testing::{save_seed, seed_bytes};
    let mut total = iommu_smmuv3::testing::NestedRun::default();
    for (n, bytes) in seed_bytes(0x9e37_79b9_7f4a_7c15, 24).iter().enumerate() {
        let run = iommu_smmuv3::testing::run_nested(bytes);
        total.nested_steps += run.nested_steps;
        total.translated += run.translated;
        total.reached_guest_pages += run.reached_guest_pages;
        total.faults += run.faults;
        save_seed("smmuv3_nested", &format!("seq{n:02}"), bytes);
    }
    println!("{total:?}");
    // The sequences reach nesting, DMA through both stages, and faults:
    // the property was checked where it matters.
    assert!(total.nested_steps > 0 && total.reached_guest_pages > 0 && total.faults > 0);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(96))]
    /// Whatever the guest writes, sends or asks for, its DMA reaches only
    /// host memory the nest parent maps at that moment.
    #[test]
    fn a_hostile_guest_reaches_only_what_the_host_maps(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..700)
    ) {
        let run = iommu_smmuv3::testing::run_nested(&data);
        proptest::prop_assert!(run.nested_steps <= run.steps);
    }
}
