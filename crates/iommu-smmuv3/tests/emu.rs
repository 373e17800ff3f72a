//! The driver on the emulated SMMUv3, end to end: the core maps through
//! the driver, the emulator translates a device's DMA by reading only what
//! the driver wrote into memory (Arm IHI 0070 sections cited per rule).

use iommu_core::{
    Bus, Device, DeviceBuilder, DmaOwner, Domain, DomainType, Errno, Iommu, Iova, PhysAddr, Prot,
};
use iommu_pgtable::lpae::Stage;
use iommu_smmuv3::emu::{EmuLayout, EmuPlatform};
use iommu_smmuv3::{reg, Smmuv3Config, StreamTableFormat};
use iommu_smmuv3_emu::{Access, DmaError, EventId, Features};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};

const DATA: u64 = 0x800_0000 + 0x100_0000; // past the tables and the MSI window

struct Setup {
    plat: EmuPlatform,
    iommu: Iommu,
    _bus: Bus,
    dev: Arc<Device>,
}

fn setup_with(features: Features, cfg: Smmuv3Config, sids: &[u32]) -> Setup {
    let plat = EmuPlatform::new(EmuLayout::default(), features, cfg).unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("dma0").stream_ids(sids.iter().copied()))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    Setup {
        plat,
        iommu,
        _bus: bus,
        dev,
    }
}

fn setup() -> Setup {
    setup_with(Features::default(), Smmuv3Config::default(), &[7])
}

fn domain(s: &Setup) -> Domain {
    s.dev.iommu_group().unwrap().domain().unwrap()
}

#[test]
fn probe_enables_the_smmu_with_its_queues_6_3_9() {
    let s = setup();
    assert_eq!(
        s.plat.hw.read32(reg::CR0ACK),
        0b1101,
        "SMMUEN, EVTQEN, CMDQEN"
    );
    assert_eq!(
        s.plat.hw.read32(reg::GBPA) & (1 << 20),
        1 << 20,
        "abort while disabled"
    );
    let caps = s.plat.driver.caps();
    assert!(caps.stage1 && caps.stage2 && caps.two_level && caps.range_inv);
    // CFGI_ALL, TLBI_NSNH_ALL and a CMD_SYNC ran at probe.
    assert!(s.plat.hw.stats().commands >= 3);
}

#[test]
fn dma_through_the_default_domain_lands_where_the_core_mapped_it_3_4() {
    let s = setup();
    let d = domain(&s);
    assert_eq!(d.ty(), DomainType::Dma);
    d.map(Iova::new(0x10_0000), PhysAddr::new(DATA), 0x3000, Prot::RW)
        .unwrap();
    s.plat.hw.dma_write(7, 0x10_1ff8, b"across a page").unwrap();
    let mut got = [0u8; 13];
    s.plat
        .memory
        .read_slice(&mut got, GuestAddress(DATA + 0x1ff8))
        .unwrap();
    assert_eq!(&got, b"across a page");
    // The STE is stage 1 through a CD that names the domain's table.
    let ste = s.plat.driver.ste(7).unwrap();
    assert_eq!(ste[0] & 0xf, 1 | (0b101 << 1));
}

#[test]
fn after_unmap_returns_the_device_faults_and_the_handler_hears_of_it_7_3_12() {
    let s = setup();
    let d = domain(&s);
    d.map(Iova::new(0x10_0000), PhysAddr::new(DATA), 0x1000, Prot::RW)
        .unwrap();
    s.plat.hw.translate(7, 0x10_0000, Access::Read).unwrap(); // now in the TLB
    assert_eq!(d.unmap(Iova::new(0x10_0000), 0x1000), Ok(0x1000));
    assert_eq!(
        s.plat.hw.translate(7, 0x10_0000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::Translation),
            fault: Some(EventId::Translation)
        }),
        "the unmap's TLBI reached the SMMU before unmap returned"
    );
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    d.set_fault_handler(Some(Arc::new(move |_, dev, iova, access| {
        h.lock()
            .unwrap()
            .push((dev.name().to_string(), iova, access));
        Ok(())
    })));
    let events = s.plat.driver.handle_irq();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name(), "F_TRANSLATION");
    assert_eq!(heard.lock().unwrap().len(), 1);
    assert_eq!(heard.lock().unwrap()[0].1, Iova::new(0x10_0000));
}

#[test]
fn read_only_mapping_refuses_device_writes_7_3_15() {
    let s = setup();
    let d = domain(&s);
    d.map(Iova::new(0x4000), PhysAddr::new(DATA), 0x1000, Prot::READ)
        .unwrap();
    assert!(s.plat.hw.dma_read(7, 0x4000, &mut [0u8; 8]).is_ok());
    assert!(matches!(
        s.plat.hw.dma_write(7, 0x4000, &[1u8; 8]),
        Err(DmaError::Terminated {
            fault: Some(EventId::Permission),
            ..
        })
    ));
}

#[test]
fn a_cached_stage_2_refusal_records_f_permission_but_qemu_records_nothing_7_3_15() {
    // The architecture records a permission fault whether the leaf was
    // walked or found in the TLB; QEMU 10 blames stage 1 for a cached
    // stage-2 refusal and, a stage-2-only stream recording no stage-1
    // faults, records nothing. It also caches no leaf that refused an
    // access, so each walked refusal records one.
    let s2 = Smmuv3Config {
        stage: Some(Stage::S2),
        ..Smmuv3Config::default()
    };
    for (features, cached_event) in [(Features::default(), true), (Features::qemu(), false)] {
        let s = setup_with(features, s2.clone(), &[7]);
        let d = domain(&s);
        d.map(Iova::new(0x4000), PhysAddr::new(DATA), 0x1000, Prot::READ)
            .unwrap();
        assert!(s.plat.hw.dma_read(7, 0x4000, &mut [0u8; 8]).is_ok());
        assert!(s.plat.hw.dma_write(7, 0x4000, &[1u8; 8]).is_err());
        let evs = s.plat.driver.handle_irq();
        assert_eq!(evs.len(), usize::from(cached_event), "{evs:?}");
        assert!(evs.iter().all(|e| e.id == 0x13 && e.stage2));
        // Walked afresh (after an invalidation), both record it, and both
        // record the next refusal: from the cached leaf, or (QEMU, which
        // cached nothing) from another walk.
        d.flush_iotlb_all().unwrap();
        for _ in 0..2 {
            assert!(s.plat.hw.dma_write(7, 0x4000, &[1u8; 8]).is_err());
        }
        let evs = s.plat.driver.handle_irq();
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert!(evs.iter().all(|e| e.id == 0x13 && e.stage2));
    }
}

#[test]
fn identity_default_domain_is_a_bypass_ste_5_2() {
    let s = setup();
    s.iommu
        .sysfs()
        .write("kernel/iommu_groups/0/type", "identity")
        .unwrap();
    assert_eq!(domain(&s).ty(), DomainType::Identity);
    assert_eq!(
        s.plat.hw.translate(7, DATA + 8, Access::Write).unwrap().pa,
        DATA + 8
    );
}

#[test]
fn blocked_domain_is_an_abort_ste_and_records_nothing_5_2() {
    let s = setup();
    let g = s.dev.iommu_group().unwrap();
    s.iommu.group_claim_dma_owner(&g, DmaOwner::new()).unwrap();
    assert_eq!(
        s.plat.hw.translate(7, 0, Access::Read),
        Err(DmaError::Terminated {
            event: None,
            fault: None
        })
    );
    s.iommu.group_release_dma_owner(&g);
    assert_eq!(domain(&s).ty(), DomainType::Dma);
}

#[test]
fn each_domain_gets_its_own_asid_and_a_freed_one_is_reused_lowest_first() {
    let s = setup();
    let a = s
        .iommu
        .domain_alloc(&s._bus, DomainType::Unmanaged)
        .unwrap();
    let b = s
        .iommu
        .domain_alloc(&s._bus, DomainType::Unmanaged)
        .unwrap();
    let asid = |d: &Domain| {
        d.ops()
            .as_any()
            .unwrap()
            .downcast_ref::<iommu_smmuv3::emu::EmuDomain>()
            .unwrap()
            .asid()
            .unwrap()
    };
    let (x, y) = (asid(&a), asid(&b));
    assert_ne!(x, y);
    drop(a);
    let c = s
        .iommu
        .domain_alloc(&s._bus, DomainType::Unmanaged)
        .unwrap();
    assert_eq!(asid(&c), x);
}

#[test]
fn a_two_level_stream_table_reaches_high_stream_ids_3_3_3() {
    let s = setup_with(
        Features::default(),
        Smmuv3Config {
            stream_table: StreamTableFormat::TwoLevel,
            ..Smmuv3Config::default()
        },
        &[0xbeef],
    );
    domain(&s)
        .map(Iova::new(0x1000), PhysAddr::new(DATA), 0x1000, Prot::RW)
        .unwrap();
    assert_eq!(
        s.plat
            .hw
            .translate(0xbeef, 0x1010, Access::Read)
            .unwrap()
            .pa,
        DATA + 0x10
    );
    assert!(
        s.plat.hw.translate(0xbeee, 0x1010, Access::Read).is_err(),
        "its neighbour aborts"
    );
}

#[test]
fn a_stream_id_beyond_the_stream_table_is_erange() {
    let plat = EmuPlatform::new(
        EmuLayout::default(),
        Features {
            sid_bits: 8,
            ..Features::default()
        },
        Smmuv3Config::default(),
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    bus.add_device(DeviceBuilder::new("far").stream_ids([0x100]))
        .unwrap();
    assert_eq!(
        iommu.bus_set_iommu(&bus, Arc::new(plat.driver.clone())),
        Err(Errno::ERANGE)
    );
}

#[test]
fn stage2_domains_translate_through_a_vmid_tagged_table_3_4() {
    let s = setup_with(
        Features::default(),
        Smmuv3Config {
            stage: Some(Stage::S2),
            ..Smmuv3Config::default()
        },
        &[3],
    );
    let d = domain(&s);
    d.map(
        Iova::new(0x20_0000),
        PhysAddr::new(DATA),
        0x20_0000,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        s.plat.hw.translate(3, 0x3f_fff0, Access::Write).unwrap().pa,
        DATA + 0x1f_fff0
    );
    d.unmap(Iova::new(0x20_0000), 0x20_0000).unwrap();
    assert!(s.plat.hw.translate(3, 0x3f_fff0, Access::Write).is_err());
    let ste = s.plat.driver.ste(3).unwrap();
    assert_eq!((ste[0] >> 1) & 7, 0b110, "stage-2 STE");
}

#[test]
fn switching_domains_goes_through_abort_and_leaves_no_stale_translation_3_21_3() {
    let s = setup();
    let old = domain(&s);
    old.map(Iova::new(0x1000), PhysAddr::new(DATA), 0x1000, Prot::RW)
        .unwrap();
    s.plat.hw.translate(7, 0x1000, Access::Read).unwrap();
    let g = s.dev.iommu_group().unwrap();
    let new = s
        .iommu
        .domain_alloc(&s._bus, DomainType::Unmanaged)
        .unwrap();
    new.map(
        Iova::new(0x1000),
        PhysAddr::new(DATA + 0x5000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    s.iommu.attach_group(&new, &g).unwrap();
    assert_eq!(
        s.plat.hw.translate(7, 0x1000, Access::Read).unwrap().pa,
        DATA + 0x5000
    );
    s.iommu.detach_group(&new, &g);
    assert_eq!(
        s.plat.hw.translate(7, 0x1000, Access::Read).unwrap().pa,
        DATA
    );
}

#[test]
fn a_wedged_command_queue_fails_attach_with_etimedout_and_keeps_the_old_ste() {
    let s = setup_with(
        Features::default(),
        Smmuv3Config {
            poll_limit: 1000,
            ..Smmuv3Config::default()
        },
        &[7],
    );
    let g = s.dev.iommu_group().unwrap();
    let before = s.plat.driver.ste(7).unwrap();
    let new = s
        .iommu
        .domain_alloc(&s._bus, DomainType::Unmanaged)
        .unwrap();
    s.plat.hw.pause_commands(true);
    assert_eq!(s.iommu.attach_group(&new, &g), Err(Errno::ETIMEDOUT));
    assert_eq!(s.plat.driver.ste(7).unwrap(), before);
    assert!(s.plat.driver.stats().sync_timeouts >= 1);
    s.plat.hw.pause_commands(false);
    s.iommu.attach_group(&new, &g).unwrap();
    assert_ne!(s.plat.driver.ste(7).unwrap(), before);
}

/// An unmap of 64 GiB (1 GiB blocks) is invalidated by one TLBI of the
/// whole ASID, with or without range invalidation, and at once: without
/// RIL the driver does not list a TLBI per 4 KiB page (2^24 of them) before
/// finding it needs more than it sends one at a time.
#[test]
fn a_huge_unmap_invalidates_the_whole_asid_in_a_few_commands() {
    const GIB: u64 = 1 << 30;
    for range_inv in [false, true] {
        let features = Features {
            range_inv,
            ..Features::default()
        };
        let s = setup_with(features, Smmuv3Config::default(), &[7]);
        let d = domain(&s);
        let at = 1u64 << 40;
        d.map(Iova::new(at), PhysAddr::new(0), 64 * GIB, Prot::RW)
            .unwrap();
        // The SMMU caches translations at both ends.
        let ends = [at, at + 64 * GIB - 0x1000];
        for iova in ends {
            s.plat.hw.dma(7, iova, 8, Access::Write).unwrap();
        }
        let before = s.plat.hw.stats().commands;
        assert_eq!(d.unmap(Iova::new(at), 64 * GIB), Ok(64 * GIB));
        let sent = s.plat.hw.stats().commands - before;
        assert!(sent <= 4, "range_inv {range_inv}: {sent} commands");
        for iova in ends {
            assert!(
                s.plat.hw.dma(7, iova, 8, Access::Write).is_err(),
                "range_inv {range_inv}: {iova:#x} still reachable"
            );
        }
    }
}

/// Drops everything of `s` (the domain a caller still holds aside): the
/// driver and its SMMU are gone. Returns a handle on the emulated SMMU
/// that says whether anything still keeps it.
fn drop_setup(s: Setup) -> std::sync::Weak<iommu_smmuv3_emu::Smmuv3<iommu_smmuv3::emu::EmuMemory>> {
    let hw = Arc::downgrade(&s.plat.hw);
    drop(s);
    hw
}

#[test]
fn a_domain_that_outlives_its_driver_hears_enodev_and_keeps_no_smmu_alive() {
    let s = setup();
    let d = domain(&s);
    let (iova, pa) = (Iova::new(0x10_0000), PhysAddr::new(DATA));
    d.map(iova, pa, 0x1000, Prot::RW).unwrap();
    assert_eq!(d.unmap(iova, 0x1000), Ok(0x1000));
    d.map(iova, pa, 0x1000, Prot::RW).unwrap();
    let hw = drop_setup(s);
    // The table still unmaps, but no invalidation can reach an SMMU: the
    // caller is told the translation may still be cached.
    let e = d.unmap(iova, 0x1000).unwrap_err();
    assert_eq!((e.removed, e.errno), (0x1000, Errno::ENODEV));
    drop(d);
    assert!(hw.upgrade().is_none(), "the SMMU outlived its last user");
}

#[test]
fn dropping_the_subsystem_frees_the_smmu_its_attached_domains_used() {
    let s = setup();
    let d = domain(&s);
    let (iova, pa) = (Iova::new(0x10_0000), PhysAddr::new(DATA));
    d.map(iova, pa, 0x1000, Prot::RW).unwrap();
    assert_eq!(d.unmap(iova, 0x1000), Ok(0x1000));
    // A device the caller leaks keeps no stream, domain or SMMU alive.
    std::mem::forget(s.dev.clone());
    drop(d);
    let hw = drop_setup(s);
    assert!(hw.upgrade().is_none(), "something still holds the SMMU");
}
